//! The lean server loop's request head parse (`proto::h1::request::parse`) on arbitrary
//! bytes, as a connection sees them: up to four pipelined requests, the header-name cache
//! kept from one to the next, each body decoded in between.
//!
//! Checked, differentially against httparse's own parse of the same bytes (with room for
//! any number of fields): a head the loop takes is one httparse takes, of the same length,
//! with the same method, target and fields in the same order per name; its framing is the
//! one RFC 9112 section 6.3 gives, its version, `close` and `100-continue` flags are what
//! its fields say, and it is nothing the loop must leave to hyper (a tunnel, a target that
//! is not a path). A head left to hyper (or partial) stays in the buffer untouched; one
//! refused as malformed is one httparse or the `http` types refuse; one refused for its
//! framing has broken framing.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use portico::fuzzing::{self, BodyDecoder, Framing, Names, Piece, RequestHead};
use portico_fuzz::content_length;

/// A listener's default `max_header_fields`.
const MAX_FIELDS: usize = 100;

fuzz_target!(|data: &[u8]| {
    let mut names = Names::default();
    let mut buf = BytesMut::from(data);
    for _ in 0..4 {
        let before = buf.clone();
        match fuzzing::h1_request(&mut buf, &mut names, MAX_FIELDS) {
            RequestHead::Complete { method, uri, headers, body, http10, close, expect_continue } => {
                let consumed = before.len() - buf.len();
                check_taken(&before, consumed, &method, &uri, &headers, body);
                check_flags(&before, http10, close, expect_continue, body.is_some());
                if let Some(framing) = body
                    && !skip_body(&mut buf, framing)
                {
                    return;
                }
            }
            RequestHead::Partial => {
                assert_eq!(buf, before, "a partial head took bytes");
                let mut fields = vec![httparse::EMPTY_HEADER; 1024];
                let complete = httparse::Request::new(&mut fields).parse(&before).is_ok_and(|s| s.is_complete());
                // More fields than fit on the stack are counted by their lines only, until
                // the head is complete.
                let many = before.iter().filter(|&&b| b == b'\n').count() > fuzzing::H1_REQUEST_FIELDS;
                assert!(!complete || many, "partial here, complete for httparse");
                return;
            }
            RequestHead::Other => {
                assert_eq!(buf, before, "a head left to hyper must stay in the buffer");
                return;
            }
            RequestHead::Refused(status, message) => {
                check_refused(&before, status, message);
                return;
            }
        }
    }
});

fn check_taken(
    sent: &[u8],
    consumed: usize,
    method: &http::Method,
    uri: &http::Uri,
    headers: &http::HeaderMap,
    body: Option<Framing>,
) {
    let mut fields = vec![httparse::EMPTY_HEADER; 1024];
    let mut req = httparse::Request::new(&mut fields);
    let status = req.parse(sent).expect("taken here, refused by httparse");
    assert_eq!(status, httparse::Status::Complete(consumed), "a different head length");
    assert!(matches!(req.version, Some(0 | 1)), "HTTP/1.0 and 1.1 only");
    assert_eq!(Some(method.as_str()), req.method, "a different method");
    assert_ne!(*method, http::Method::CONNECT, "CONNECT is hyper's");
    let target = req.path.expect("a target");
    // http::Uri drops a fragment (no origin-form has one, RFC 9112 section 3.2.1), as hyper
    // does; the checks and the upstream see the same path without it.
    let target = target.split_once('#').map_or(target, |(t, _)| t);
    assert!(target.starts_with('/'), "only origin-form is taken: {target:?}");
    assert_eq!(uri.path_and_query().map(|p| p.as_str()), Some(target), "a different target");
    assert!(uri.scheme().is_none() && uri.authority().is_none());

    // The same fields, in the same order per name.
    assert_eq!(headers.len(), req.headers.len(), "a different number of fields");
    assert!(req.headers.len() <= MAX_FIELDS);
    for h in req.headers.iter() {
        let want: Vec<&[u8]> =
            req.headers.iter().filter(|o| o.name.eq_ignore_ascii_case(h.name)).map(|o| o.value).collect();
        let got: Vec<&[u8]> = headers.get_all(h.name).iter().map(|v| v.as_bytes()).collect();
        assert_eq!(got, want, "field {:?}", h.name);
    }

    // Nothing hyper must see: upgrades.
    let named = |n: &str| values(req.headers, n);
    assert_eq!(named("upgrade").count(), 0);
    for t in tokens(req.headers, "connection") {
        assert!(t != "upgrade", "Connection: {t} taken");
    }
    if req.version == Some(0) {
        assert_eq!(named("transfer-encoding").count(), 0, "HTTP/1.0 with Transfer-Encoding taken");
    }

    // The framing, by RFC 9112 section 6.3, from the fields as httparse saw them.
    let lengths: Vec<&[u8]> = named("content-length").collect();
    let codings: Vec<&[u8]> = named("transfer-encoding").collect();
    let want = match (&lengths[..], &codings[..]) {
        ([], []) => None,
        ([], [te]) if te.eq_ignore_ascii_case(b"chunked") => Some(Framing::Chunked),
        ([_], []) => match content_length(&lengths) {
            Ok(Some(0)) => None,
            Ok(Some(n)) => Some(Framing::Length(n)),
            other => panic!("taken with Content-Length {other:?}"),
        },
        _ => panic!("taken with framing fields {lengths:?} {codings:?}"),
    };
    assert_eq!(body, want, "a different body framing");
}

/// Decodes the body the head announced from the buffer; `false` when the connection could
/// not go on (cut short or broken framing).
fn skip_body(buf: &mut BytesMut, framing: Framing) -> bool {
    let mut d = BodyDecoder::new(framing);
    loop {
        match d.decode(buf) {
            Ok(Piece::Data(_)) => {}
            Ok(Piece::End) => return true,
            Ok(Piece::Need) | Err(_) => return false,
        }
    }
}

fn check_refused(sent: &[u8], status: u16, message: &str) {
    let mut fields = vec![httparse::EMPTY_HEADER; 1024];
    let mut req = httparse::Request::new(&mut fields);
    let parsed = req.parse(sent);
    match (status, message) {
        (431, _) => {
            if let Ok(httparse::Status::Complete(_)) = parsed {
                assert!(req.headers.len() > MAX_FIELDS, "431 for {} fields", req.headers.len());
            }
        }
        (400, "malformed request") => {
            // httparse refuses it, or the `http` types refuse its target or a field.
            if let Ok(httparse::Status::Complete(_)) = parsed {
                let target_ok = req.path.is_some_and(|p| http::Uri::try_from(p).is_ok());
                let fields_ok = req.headers.iter().all(|h| {
                    http::HeaderName::from_bytes(h.name.as_bytes()).is_ok()
                        && http::HeaderValue::from_bytes(h.value).is_ok()
                });
                assert!(!target_ok || !fields_ok, "refused as malformed, taken by httparse and http");
            }
        }
        (400, "transfer-encoding in an HTTP/1.0 request") => {
            let Ok(httparse::Status::Complete(_)) = parsed else { panic!("refused a head httparse refuses") };
            assert_eq!(req.version, Some(0));
            assert!(values(req.headers, "transfer-encoding").count() > 0);
        }
        (400, framing) => {
            let Ok(httparse::Status::Complete(_)) = parsed else { panic!("{framing} for a head httparse refuses") };
            let named = |n: &str| values(req.headers, n);
            let lengths: Vec<&[u8]> = named("content-length").collect();
            let last_coding = named("transfer-encoding").last().map(|v| {
                let last = v.rsplit(|&b| b == b',').next().unwrap_or_default();
                String::from_utf8_lossy(last).trim_matches([' ', '\t']).to_ascii_lowercase()
            });
            let broken = match (content_length(&lengths), last_coding.as_deref()) {
                (Err(_), _) => true,
                (Ok(Some(_)), Some(_)) => true,
                (_, Some(c)) => c != "chunked",
                (Ok(_), None) => false,
            };
            assert!(broken, "{framing}: the framing is sound ({lengths:?}, {last_coding:?})");
        }
        other => panic!("refused with {other:?}"),
    }
}

/// Checks the version, `close` and `100-continue` flags of a taken head against its fields.
fn check_flags(sent: &[u8], http10: bool, close: bool, expect_continue: bool, has_body: bool) {
    let mut fields = vec![httparse::EMPTY_HEADER; 1024];
    let mut req = httparse::Request::new(&mut fields);
    req.parse(sent).expect("taken here, refused by httparse");
    assert_eq!(http10, req.version == Some(0), "the version");
    let conn: Vec<String> = tokens(req.headers, "connection").collect();
    let keep_alive = conn.iter().any(|t| t == "keep-alive");
    let asks_close = conn.iter().any(|t| t == "close");
    assert_eq!(close, asks_close || (http10 && !keep_alive), "close: {conn:?}");
    let continues = values(req.headers, "expect")
        .any(|v| String::from_utf8_lossy(v).trim_matches([' ', '\t']).eq_ignore_ascii_case("100-continue"));
    assert_eq!(expect_continue, continues && has_body, "100-continue");
}

/// The comma-separated tokens of the fields named `n`, trimmed and lowercased.
fn tokens<'a>(fields: &'a [httparse::Header<'a>], n: &str) -> impl Iterator<Item = String> + use<'a> {
    values(fields, n).flat_map(|v| {
        v.split(|&b| b == b',').map(|t| String::from_utf8_lossy(t).trim_matches([' ', '\t']).to_ascii_lowercase())
    })
}

/// The values of the fields named `n` (any case), in order.
fn values<'a>(fields: &'a [httparse::Header<'a>], n: &str) -> impl Iterator<Item = &'a [u8]> + use<'a> {
    let n = n.to_owned();
    fields.iter().filter(move |h| h.name.eq_ignore_ascii_case(&n)).map(|h| h.value)
}
