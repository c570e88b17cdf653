//! The upstream client's response head parse (`proto::h1::response::parse`) and its
//! framing decision, on arbitrary bytes.
//!
//! Input: a flags byte (bit 0: the request was `HEAD`), then what the upstream sent.
//!
//! Checked against httparse's own parse of the same bytes (1xx heads skipped): the same
//! final status, head length and fields (but the plain `Connection` fields the parse reads
//! and drops, and `Content-Length`, which it may collapse to one); the framing RFC 9112
//! section 6.3 gives; a connection is reused only on HTTP/1.1, without `close`, with a body
//! that ends by its framing; fields kept as sent are the same as those put in a map.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use portico::fuzzing::{self, Framing, Names};
use portico_fuzz::content_length;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, sent)) = data.split_first() else { return };
    let method_head = flags & 1 == 1;
    let mut buf = BytesMut::from(sent);
    let mut names = Names::default();
    let Ok(Some(head)) = fuzzing::h1_response(&mut buf, method_head, &mut names) else { return };
    let consumed = sent.len() - buf.len();

    // The reference: httparse, 1xx heads skipped.
    let mut at = 0;
    let mut fields = vec![httparse::EMPTY_HEADER; 256];
    let (code, version, fields) = loop {
        let mut res = httparse::Response::new(&mut fields);
        let Ok(httparse::Status::Complete(len)) = res.parse(&sent[at..]) else {
            panic!("taken here, not by httparse at {at}")
        };
        let code = res.code.expect("a status");
        assert_ne!(code, 101, "101 taken");
        if !(100..200).contains(&code) {
            let version = res.version;
            let fields: Vec<(String, Vec<u8>)> =
                res.headers.iter().map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec())).collect();
            at += len;
            break (code, version, fields);
        }
        at += len;
    };
    assert_eq!(consumed, at, "a different head length");
    assert_eq!(head.status, code);

    let named = |n: &str| named(&fields, n);
    // The fields: all but Connection and Content-Length exactly, in order per name.
    for (name, _) in &fields {
        if name == "connection" || name == "content-length" {
            continue;
        }
        let got: Vec<&[u8]> = head.headers.get_all(name.as_str()).iter().map(|v| v.as_bytes()).collect();
        assert_eq!(got, named(name).collect::<Vec<_>>(), "field {name}");
    }
    let others = fields.iter().filter(|(n, _)| n != "connection" && n != "content-length").count();
    let kept = head.headers.len()
        - head.headers.get_all("connection").iter().count()
        - head.headers.get_all("content-length").iter().count();
    assert_eq!(kept, others, "fields added or lost");
    for c in head.headers.get_all("connection") {
        assert!(named("connection").any(|v| v == c.as_bytes()), "a Connection value not sent");
    }

    // Framing (RFC 9112 section 6.3).
    let http11 = version == Some(1);
    let close = named("connection")
        .any(|v| v.split(|&b| b == b',').any(|t| String::from_utf8_lossy(t).trim().eq_ignore_ascii_case("close")));
    let lengths: Vec<&[u8]> = named("content-length").collect();
    let codings: Vec<&[u8]> = named("transfer-encoding").collect();
    if method_head || code == 204 || code == 304 {
        assert_eq!(head.framing, Framing::Length(0), "no body after HEAD, 204, 304");
    } else if !codings.is_empty() {
        // Stricter than the RFC (which would read a body with another final coding until
        // the close): only `chunked` alone is taken, on HTTP/1.1.
        assert_eq!(head.framing, Framing::Chunked);
        assert!(
            http11 && codings.len() == 1 && String::from_utf8_lossy(codings[0]).trim().eq_ignore_ascii_case("chunked")
        );
        if !lengths.is_empty() {
            assert!(!head.reusable, "both framing fields, the connection reused");
            assert!(head.headers.get("content-length").is_none(), "both framing fields, the length forwarded");
        }
    } else if !lengths.is_empty() {
        let n = content_length(&lengths).expect("taken with a broken Content-Length").expect("a length");
        assert_eq!(head.framing, Framing::Length(n));
        let forwarded: Vec<_> = head.headers.get_all("content-length").iter().collect();
        assert_eq!(forwarded.len(), 1, "one Content-Length forwarded");
        assert_eq!(content_length(&[forwarded[0].as_bytes()]), Ok(Some(n)));
    } else {
        assert_eq!(head.framing, Framing::Close);
    }
    if head.reusable {
        assert!(http11 && !close && head.framing != Framing::Close, "reused when it must close");
    }

    // Kept as sent only when nothing needs the map: no hop-by-hop field.
    if head.kept_as_sent {
        for hop in ["te", "trailer", "upgrade", "keep-alive", "proxy-connection", "transfer-encoding"] {
            assert!(named(hop).next().is_none(), "{hop} kept as sent");
        }
    }
});

/// The values of the fields named `n` (lowercase), in order.
fn named<'a>(fields: &'a [(String, Vec<u8>)], n: &str) -> impl Iterator<Item = &'a [u8]> + use<'a> {
    let n = n.to_owned();
    fields.iter().filter(move |(k, _)| *k == n).map(|(_, v)| &v[..])
}
