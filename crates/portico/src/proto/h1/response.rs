//! Response heads from an upstream: parsed with httparse, framed as RFC 9112 section 6.3
//! says, and kept as sent when nothing needs them in a map.

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, StatusCode, header};

use super::body::Framing;
use super::fields::{Known, MAX_NAME, NameCache, Span, connection_tokens, fill_header_map, span_of};
use super::length::{content_length_of, parse_length};

/// The most header fields in a response head.
pub(crate) const MAX_HEADERS: usize = 100;
/// Fields parsed without the full array (so the usual head zeroes less stack).
const FEW_HEADERS: usize = 24;

/// A response head, parsed.
pub(crate) struct Parsed {
    pub(crate) status: StatusCode,
    /// The head, when its fields are kept as sent rather than put into the map: a
    /// response whose body streams and whose fields include no hop-by-hop field and
    /// nothing the framing needs a map for. Their spans are in the connection's `fields`.
    /// Writing them out as sent (the lean server loop) costs no map; whoever needs them
    /// in the map asks for it ([`crate::upstream::h1::ResponseBody::materialise`]).
    pub(crate) raw: Option<Bytes>,
    pub(crate) framing: Framing,
    pub(crate) reusable: bool,
}

/// Parses a final response head from the start of `buf` and removes it from there
/// (informational 1xx heads before it too). `None` when more bytes are needed. The fields
/// go into `spare` (emptied first), or stay as sent ([`Parsed::raw`]) and leave it empty:
/// the result stays small, as it is moved through several futures.
pub(crate) fn parse(
    buf: &mut BytesMut,
    method_head: bool,
    names: &mut NameCache,
    spare: &mut HeaderMap,
    fields: &mut Vec<Span>,
) -> Result<Option<Parsed>, &'static str> {
    loop {
        // Most heads have a few fields: a small array first, the full one when needed.
        let step = match parse_head::<FEW_HEADERS>(buf, method_head, names, spare, fields)? {
            Step::TooMany => parse_head::<MAX_HEADERS>(buf, method_head, names, spare, fields)?,
            step => step,
        };
        match step {
            Step::Final(parsed) => return Ok(Some(parsed)),
            Step::Partial => return Ok(None),
            Step::Informational(len) => buf.advance(len),
            Step::TooMany => return Err("too many header fields"),
        }
    }
}

/// One head parsed with room for `N` fields.
enum Step {
    Final(Parsed),
    /// A 1xx head of this many bytes, to skip.
    Informational(usize),
    Partial,
    TooMany,
}

fn parse_head<const N: usize>(
    buf: &mut BytesMut,
    method_head: bool,
    names: &mut NameCache,
    spare: &mut HeaderMap,
    kept: &mut Vec<Span>,
) -> Result<Step, &'static str> {
    // Left uninitialised for httparse to fill: no `N` fields written first.
    let mut fields = [const { std::mem::MaybeUninit::uninit() }; N];
    let mut res = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut res, buf, &mut fields) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(Step::Partial),
        Err(httparse::Error::TooManyHeaders) => return Ok(Step::TooMany),
        Err(_) => return Err("invalid response head"),
    };
    let code = res.code.ok_or("invalid response head")?;
    if code == 101 {
        // Upgrades never take this path; an upstream must not switch protocols unasked.
        return Err("unexpected 101 Switching Protocols");
    }
    if (100..200).contains(&code) {
        return Ok(Step::Informational(len));
    }
    let status = StatusCode::from_u16(code).map_err(|_| "invalid status code")?;
    let http11 = res.version == Some(1);
    // Where each field lies in the head, so the values can share the head's bytes.
    // `Connection` fields that say only `keep-alive` or `close` are read here and left out
    // of the map (the hop-by-hop pass would remove them); one that names other fields
    // stays, so that pass removes what it names.
    // The framing fields are noted on the way, so the usual head needs no map lookups.
    // The spans go straight into the connection's list: read as sent, or into the map.
    kept.clear();
    let mut close = false;
    let mut seen = Seen::default();
    // Whether the fields may be kept as sent: none is hop-by-hop, none too long for `http`.
    let mut plain_fields = true;
    for h in res.headers.iter() {
        let name = h.name.as_bytes();
        match Known::of(name) {
            Some(Known::Connection) => {
                let (asks_close, plain) = connection_tokens(h.value);
                close |= asks_close;
                if plain {
                    continue;
                }
                plain_fields = false;
            }
            Some(Known::ContentLength) => {
                seen.lengths += 1;
                seen.length = Some(h.value).filter(|_| seen.lengths == 1).and_then(parse_length);
            }
            Some(Known::TransferEncoding) => seen.codings = true,
            Some(k) if k.is_hop_by_hop() => plain_fields = false,
            _ => plain_fields &= name.len() <= MAX_NAME,
        }
        kept.push(span_of(buf.as_ptr(), name, h.value));
    }
    let head = buf.split_to(len).freeze();
    let headers = spare;
    if !headers.is_empty() {
        // Clearing walks the whole index table even when there is nothing to clear.
        headers.clear();
    }
    let quick = quick_framing(seen, status, method_head);
    if plain_fields && let Some((framing @ (Framing::Length(1..) | Framing::Close), must_close)) = quick {
        // A body streams and nothing needs the map: the fields stay as sent.
        let reusable = http11 && !must_close && !close;
        return Ok(Step::Final(Parsed { status, raw: Some(head), framing, reusable }));
    }
    // Room for the request ID the gateway sets on every response.
    if !fill_header_map(headers, &head, kept, 2, names) {
        return Err("invalid header field");
    }
    let (framing, must_close) = match quick {
        Some(q) => q,
        None => framing(headers, http11)?,
    };
    let reusable = http11 && !must_close && framing != Framing::Close && !close;
    Ok(Step::Final(Parsed { status, raw: None, framing, reusable }))
}

/// What a head's fields said about its framing, noted while its fields were read.
#[derive(Clone, Copy, Debug, Default)]
struct Seen {
    /// `Content-Length` fields.
    lengths: u32,
    /// The value of the only `Content-Length` field, when it is plain digits.
    length: Option<u64>,
    /// Whether there is a `Transfer-Encoding` field.
    codings: bool,
}

/// The response's framing and whether the connection must close after it, when the fields
/// noted on the way settle it: a response without a body, or the usual head (no coding, no
/// length or one plain one). `None` sends the head to [`framing`].
fn quick_framing(seen: Seen, status: StatusCode, method_head: bool) -> Option<(Framing, bool)> {
    if method_head || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Some((Framing::Length(0), false));
    }
    match (seen.codings, seen.lengths, seen.length) {
        (false, 0, _) => Some((Framing::Close, true)),
        (false, 1, Some(n)) => Some((Framing::Length(n), false)),
        _ => None,
    }
}

/// The framing of a response with a body (RFC 9112 section 6.3) that [`quick_framing`]
/// did not settle, and whether the connection must close after it. Leaves one
/// unambiguous `Content-Length` in `headers`, or none.
fn framing(headers: &mut HeaderMap, http11: bool) -> Result<(Framing, bool), &'static str> {
    let mut codings = headers.get_all(header::TRANSFER_ENCODING).iter();
    if let Some(first) = codings.next() {
        // Only `chunked` alone, as nginx requires: any other coding would reach the
        // client undeclared once the hop-by-hop header is gone.
        if !http11 || codings.next().is_some() || !first.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked") {
            return Err("unsupported transfer-encoding");
        }
        // Both headers: a smuggling attempt or a broken upstream. The length is not
        // forwarded, and the connection is not used again.
        let both = headers.remove(header::CONTENT_LENGTH).is_some();
        return Ok((Framing::Chunked, both));
    }
    match content_length_of(headers)? {
        Some((n, plain)) => {
            if !plain {
                // A list of equal values, or several fields: forwarded as one.
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
            }
            Ok((Framing::Length(n), false))
        }
        None => Ok((Framing::Close, true)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::h1::fields::{NAMES_KEPT, SPARE_MAX, recycle};

    /// A parsed head with its fields.
    struct Head {
        p: Parsed,
        headers: HeaderMap,
    }

    impl std::ops::Deref for Head {
        type Target = Parsed;
        fn deref(&self) -> &Parsed {
            &self.p
        }
    }

    fn parsed(head: &str, method_head: bool) -> Result<Option<Head>, &'static str> {
        let mut buf = BytesMut::from(head.as_bytes());
        parse_in_map(&mut buf, method_head, &mut NameCache::default())
    }

    /// Parses a head, its fields put into the map also when they were kept as sent.
    fn parse_in_map(
        buf: &mut BytesMut,
        method_head: bool,
        names: &mut NameCache,
    ) -> Result<Option<Head>, &'static str> {
        let (mut fields, mut headers) = (Vec::new(), HeaderMap::new());
        let p = parse(buf, method_head, names, &mut headers, &mut fields)?;
        Ok(p.map(|mut p| {
            if let Some(head) = p.raw.take() {
                assert!(headers.is_empty());
                assert!(fill_header_map(&mut headers, &head, &fields, 0, names));
            }
            Head { p, headers }
        }))
    }

    #[test]
    fn fields_are_kept_as_sent_only_when_nothing_needs_the_map() {
        let raw = |head: &str| {
            let mut buf = BytesMut::from(head.as_bytes());
            let mut fields = Vec::new();
            let p =
                parse(&mut buf, false, &mut NameCache::default(), &mut HeaderMap::new(), &mut fields).unwrap().unwrap();
            p.raw.map(|h| {
                fields
                    .iter()
                    .map(|&(n0, n1, v0, v1)| {
                        format!("{}={}", String::from_utf8_lossy(&h[n0..n1]), String::from_utf8_lossy(&h[v0..v1]))
                    })
                    .collect::<Vec<_>>()
            })
        };
        let kept =
            raw("HTTP/1.1 200 OK\r\nServer: a\r\nContent-Length: 5\r\nConnection: keep-alive\r\nX-A: 1\r\n\r\nhello");
        assert_eq!(kept.unwrap(), ["Server=a", "Content-Length=5", "X-A=1"], "as sent, but the plain Connection");
        assert!(raw("HTTP/1.1 200 OK\r\nServer: a\r\n\r\nuntil close").is_some());
        // Names as long as the hop-by-hop and framing ones are kept as sent.
        let same_lengths = "HTTP/1.1 200 OK\r\nTk: a\r\nX-Cache: b\r\nSet-Cookie: c\r\n\
             Accept-Charset: d\r\nContent-Language: e\r\nIf-Modified-Since: f\r\nContent-Length: 2\r\n\r\nok";
        let expected = ["Tk=a", "X-Cache=b", "Set-Cookie=c", "Accept-Charset=d", "Content-Language=e"];
        assert_eq!(raw(same_lengths).unwrap()[..5], expected);
        for head in [
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 204 No Content\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok",
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: x-hop\r\nx-hop: 1\r\n\r\nok",
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nKeep-Alive: timeout=5\r\n\r\nok",
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nProxy-Connection: x\r\n\r\nok",
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTrailer: x\r\n\r\nok",
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTE: x\r\n\r\nok",
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nUpgrade: x\r\n\r\nok",
        ] {
            assert!(raw(head).is_none(), "{head:?}");
        }
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"[..]);
        let mut headers = HeaderMap::new();
        let p = parse(&mut buf, true, &mut NameCache::default(), &mut headers, &mut Vec::new()).unwrap().unwrap();
        assert!(p.raw.is_none() && headers["content-length"] == "5", "HEAD: no body to carry the fields");
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let p = parsed("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", false).unwrap().unwrap();
        assert_eq!((p.framing, p.reusable), (Framing::Length(5), true));
        let p = parsed("HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n", false).unwrap().unwrap();
        assert_eq!((p.framing, p.reusable), (Framing::Chunked, true));
        // Both: chunked wins, the length is dropped, the connection is not reused.
        let p = parsed("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert_eq!((p.framing, p.reusable), (Framing::Chunked, false));
        assert!(p.headers.get("content-length").is_none());
        let p = parsed("HTTP/1.1 200 OK\r\nServer: x\r\n\r\n", false).unwrap().unwrap();
        assert_eq!((p.framing, p.reusable), (Framing::Close, false));
        let p = parsed("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true).unwrap().unwrap();
        assert_eq!((p.framing, p.reusable), (Framing::Length(0), true));
        assert_eq!(p.headers["content-length"], "5");
        let p = parsed("HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n", false).unwrap().unwrap();
        assert_eq!(p.framing, Framing::Length(0));
        let p = parsed("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false).unwrap().unwrap();
        assert!(!p.reusable);
        let p = parsed("HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nContent-Length: 1\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert!(!p.reusable);
        assert!(p.headers.get("connection").is_none());
        let p =
            parsed("HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n", false).unwrap().unwrap();
        assert!(p.reusable && p.headers.get("connection").is_none());
        // A `Connection` that names another field stays for the hop-by-hop pass.
        let head = "HTTP/1.1 200 OK\r\nConnection: x-hop\r\nConnection: close\r\nx-hop: 1\r\nContent-Length: 1\r\n\r\n";
        let p = parsed(head, false).unwrap().unwrap();
        assert!(!p.reusable);
        assert_eq!(p.headers.get_all("connection").iter().collect::<Vec<_>>(), ["x-hop"]);
        // Repeated equal lengths collapse to one.
        let p = parsed("HTTP/1.1 200 OK\r\nContent-Length: 4, 4\r\nContent-Length: 4\r\n\r\n", false).unwrap().unwrap();
        assert_eq!(p.framing, Framing::Length(4));
        assert_eq!(p.headers.get_all("content-length").iter().count(), 1);
    }

    #[test]
    fn header_names_are_reused_by_position_only_when_the_bytes_match() {
        let mut names = NameCache::default();
        let map = |names: &mut NameCache, head: &str| {
            let mut buf = BytesMut::from(head.as_bytes());
            parse_in_map(&mut buf, false, names).map(|p| p.unwrap().headers)
        };
        let many: String = (0..20).map(|i| format!("X-F{i}: {i}\r\n")).collect();
        let first = format!("HTTP/1.1 200 OK\r\nServer: a\r\nX-Custom: 1\r\n{many}Content-Length: 0\r\n\r\n");
        let h = map(&mut names, &first).unwrap();
        assert_eq!((h["server"].to_str().unwrap(), h["x-custom"].to_str().unwrap(), h.len()), ("a", "1", 23));
        assert_eq!(names.names.len(), NAMES_KEPT);
        // Same names: the kept ones are used; other names at the same places are parsed anew.
        let h = map(&mut names, &first).unwrap();
        assert_eq!((h["x-f19"].to_str().unwrap(), h.len()), ("19", 23));
        let h = map(&mut names, "HTTP/1.1 200 OK\r\nSERVER: b\r\nX-Other: 2\r\nContent-Length: 0\r\n\r\n").unwrap();
        assert_eq!((h["server"].to_str().unwrap(), h["x-other"].to_str().unwrap()), ("b", "2"));
        assert!(h.get("x-custom").is_none());
        assert_eq!(&*names.names[1].0, b"X-Other");
    }

    #[test]
    fn a_response_head_reuses_the_spare_map_and_none_of_its_fields() {
        let mut spare = HeaderMap::with_capacity(40);
        spare.insert("x-request-field", HeaderValue::from_static("stale"));
        let room = spare.capacity();
        let mut buf = BytesMut::from(&b"HTTP/1.1 204 No Content\r\nServer: a\r\nX-B: 2\r\n\r\n"[..]);
        parse(&mut buf, false, &mut NameCache::default(), &mut spare, &mut Vec::new()).unwrap().unwrap();
        assert_eq!(spare.len(), 2);
        assert!(spare.get("x-request-field").is_none());
        assert_eq!(spare.capacity(), room, "the same allocation");
        let filled = std::mem::take(&mut spare);
        // Fields kept as sent: the map is the spare one, emptied, for later.
        let mut spare2 = HeaderMap::with_capacity(40);
        spare2.insert("x-request-field", HeaderValue::from_static("stale"));
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\nServer: a\r\nContent-Length: 2\r\n\r\nok"[..]);
        let q = parse(&mut buf, false, &mut NameCache::default(), &mut spare2, &mut Vec::new()).unwrap().unwrap();
        assert!(q.raw.is_some() && spare2.is_empty() && spare2.capacity() == room);
        // A partial head leaves the spare map where it was.
        let mut spare = HeaderMap::with_capacity(40);
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\nServer: a\r\n"[..]);
        assert!(parse(&mut buf, false, &mut NameCache::default(), &mut spare, &mut Vec::new()).unwrap().is_none());
        assert_eq!(spare.capacity(), room);
        // Kept for reuse only up to a size.
        let mut kept = HeaderMap::new();
        recycle(&mut kept, filled);
        assert!(kept.is_empty() && kept.capacity() == room);
        let mut kept = HeaderMap::new();
        recycle(&mut kept, HeaderMap::with_capacity(SPARE_MAX * 2));
        assert_eq!(kept.capacity(), 0);
    }

    #[test]
    fn bad_heads_are_errors() {
        for head in [
            "HTTP/1.1 200 OK\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: +4\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
            "HTTX/1.1 200 OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert!(parsed(head, false).is_err(), "{head:?}");
        }
        let enough = format!("HTTP/1.1 200 OK\r\n{}Content-Length: 0\r\n\r\n", "x-a: 1\r\n".repeat(MAX_HEADERS - 1));
        assert_eq!(parsed(&enough, false).unwrap().unwrap().headers.len(), MAX_HEADERS);
        let many = format!("HTTP/1.1 200 OK\r\n{}\r\n", "x-a: 1\r\n".repeat(MAX_HEADERS + 1));
        assert_eq!(parsed(&many, false).err(), Some("too many header fields"));
        assert!(parsed("HTTP/1.1 200 OK\r\nContent-Len", false).unwrap().is_none());
    }

    #[test]
    fn informational_heads_are_skipped() {
        let mut buf = BytesMut::from(&b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"[..]);
        let p = parse_in_map(&mut buf, false, &mut NameCache::default()).unwrap().unwrap();
        assert_eq!(p.status, 201);
        assert!(p.headers.get("link").is_none());
        assert_eq!(&buf[..], b"ok");
    }
}
