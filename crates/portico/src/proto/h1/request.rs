//! Request heads from clients: parsed with httparse, checked for broken framing, and
//! sorted into what the lean loop takes and what it leaves to hyper (tunnels, and targets
//! that are not a path).

use bytes::BytesMut;
use http::{HeaderMap, Method, Uri};

use super::body::Framing;
use super::fields::{Known, NameCache, Span, fill_header_map, span_of};
use super::length::{length_of_values, parse_length};
use crate::error::{ErrorKind, GatewayError};

/// The header fields parsed on the stack; a request with more (up to the listener's
/// `max_header_fields`) is parsed again with room for them all.
pub(crate) const MAX_HEADERS: usize = 32;

/// A request head the lean loop takes.
pub(crate) struct Head {
    pub(crate) method: Method,
    pub(crate) uri: Uri,
    pub(crate) headers: HeaderMap,
    /// How its body is framed; `None` without one (no framing field, or a length of 0).
    pub(crate) body: Option<Framing>,
    /// An HTTP/1.0 request (else HTTP/1.1).
    pub(crate) http10: bool,
    /// The connection ends after this exchange: `Connection: close`, or HTTP/1.0 without
    /// `Connection: keep-alive`.
    pub(crate) close: bool,
    /// `Expect: 100-continue` with a body: the client waits for `100 Continue` (or a
    /// final answer) before it sends the body.
    pub(crate) expect_continue: bool,
}

/// What parsing the buffer gave.
#[allow(clippy::large_enum_variant, reason = "returned once per request, and the large variant is the usual one")]
pub(crate) enum Parse {
    Complete(Head),
    Partial,
    /// For hyper: a tunnel (`CONNECT`, `Upgrade`), a target that is not a path
    /// (absolute or asterisk form), or sound framing this loop does not forward (a list of
    /// equal lengths, codings before `chunked`). The buffer is untouched. `tunnel`: the
    /// connection may become one, so hyper keeps it after this request.
    Other {
        tunnel: bool,
    },
    /// Refused here, with the contract's answer: a head that does not parse (400), or one
    /// with more fields than the listener allows (431).
    Refused(GatewayError),
}

/// Parses a request head at the start of `buf`; a complete one this loop takes is removed
/// from the buffer.
pub(crate) fn parse(
    buf: &mut BytesMut,
    names: &mut NameCache,
    spare: &mut HeaderMap,
    spans: &mut Vec<Span>,
    max_fields: usize,
) -> Parse {
    parse_with(buf, names, spare, spans, MAX_HEADERS, max_fields)
}

/// [`parse`] for a head with more fields than fit on the stack: once complete, counted
/// against the listener's limit and parsed again with room for them all. Out of line, so
/// that the usual parse stays small.
#[inline(never)]
fn parse_many(
    buf: &mut BytesMut,
    names: &mut NameCache,
    spare: &mut HeaderMap,
    spans: &mut Vec<Span>,
    max_fields: usize,
) -> Parse {
    match field_lines(buf) {
        None => Parse::Partial,
        Some(n) if n > max_fields => Parse::Refused(GatewayError::new(ErrorKind::HeadersTooLarge)),
        Some(n) => parse_with(buf, names, spare, spans, n.max(MAX_HEADERS + 1), max_fields),
    }
}

/// The answer to a head that does not parse, or that the `http` types refuse (a target or
/// a field value they do not take): hyper would refuse it too, without the contract's body.
fn malformed() -> Parse {
    Parse::Refused(GatewayError::new(ErrorKind::BadRequest("malformed request")))
}

/// A head the `http` types refuse, found once it was taken out of `buf`: put back in front
/// of what follows it (the refusal reads its method from there), and refused as malformed.
fn put_back(buf: &mut BytesMut, head: &[u8]) -> Parse {
    let mut all = BytesMut::with_capacity(head.len() + buf.len());
    all.extend_from_slice(head);
    all.extend_from_slice(buf);
    *buf = all;
    malformed()
}

/// [`parse`] with room for `room` fields: on the stack up to [`MAX_HEADERS`]. Inlined:
/// as a call, its large result was copied once more per request.
#[inline(always)]
fn parse_with(
    buf: &mut BytesMut,
    names: &mut NameCache,
    spare: &mut HeaderMap,
    spans: &mut Vec<Span>,
    room: usize,
    max_fields: usize,
) -> Parse {
    // Left uninitialised for httparse to fill: no 32 fields written first.
    let mut stack = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut heap = Vec::new();
    let fields = match room <= MAX_HEADERS {
        true => &mut stack[..],
        false => {
            heap.resize_with(room, std::mem::MaybeUninit::uninit);
            &mut heap[..]
        }
    };
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, fields) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parse::Partial,
        Err(httparse::Error::TooManyHeaders) if room <= MAX_HEADERS => {
            return parse_many(buf, names, spare, spans, max_fields);
        }
        // More than the lines counted: never, as both count one field per line.
        Err(httparse::Error::TooManyHeaders) => return Parse::Refused(GatewayError::new(ErrorKind::HeadersTooLarge)),
        // hyper parses with httparse and the same settings, and would refuse it too.
        Err(_) => return malformed(),
    };
    let (Some(method), Some(path), Some(version)) = (req.method, req.path, req.version) else { return malformed() };
    if !path.starts_with('/') {
        return Parse::Other { tunnel: false };
    }
    let http10 = version == 0;
    // Several `Host` fields are taken: the request head checks refuse them with the rest.
    let (mut lengths, mut codings) = (0, 0);
    let (mut close, mut keep_alive, mut expect_continue, mut tunnel) = (false, false, false, false);
    let mut body = None;
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        let takes = match Known::of(name) {
            // One plain length, or `chunked` alone: anything else that is sound (a list
            // of equal lengths, other codings before `chunked`) is hyper's.
            Some(Known::ContentLength) => {
                lengths += 1;
                body = parse_length(h.value).map(Framing::Length);
                lengths == 1 && body.is_some()
            }
            Some(Known::TransferEncoding) if http10 => {
                // RFC 9112 section 6.1: faulty framing, whatever else the head says.
                let e = GatewayError::new(ErrorKind::BadRequest("transfer-encoding in an HTTP/1.0 request"));
                return Parse::Refused(e);
            }
            Some(Known::TransferEncoding) => {
                codings += 1;
                body = Some(Framing::Chunked);
                codings == 1 && h.value.eq_ignore_ascii_case(b"chunked")
            }
            // Other expectations are ignored, as RFC 9110 section 10.1.1 allows.
            Some(Known::Expect) => {
                expect_continue |= h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue");
                true
            }
            // Upgrades are tunnelled by hyper.
            Some(Known::Upgrade) => {
                tunnel = true;
                false
            }
            Some(Known::Connection) => h.value.split(|&b| b == b',').all(|t| {
                let t = t.trim_ascii();
                close |= t.eq_ignore_ascii_case(b"close");
                keep_alive |= t.eq_ignore_ascii_case(b"keep-alive");
                let upgrade = t.eq_ignore_ascii_case(b"upgrade");
                tunnel |= upgrade;
                !upgrade
            }),
            _ => true,
        };
        if !takes || (lengths > 0 && codings > 0) {
            // hyper's, unless its framing is broken: then the contract's 400 from here.
            return framing_error(req.headers).map_or(Parse::Other { tunnel }, Parse::Refused);
        }
    }
    let body = body.filter(|&f| f != Framing::Length(0));
    let Ok(method) = Method::from_bytes(method.as_bytes()) else { return malformed() };
    if method == Method::CONNECT {
        // A tunnel: hyper's.
        return Parse::Other { tunnel: true };
    }
    // Where each piece lies, so the head's bytes can be shared by the values.
    let (p0, p1, ..) = span_of(buf.as_ptr(), path.as_bytes(), path.as_bytes());
    spans.clear();
    spans.extend(req.headers.iter().map(|h| span_of(buf.as_ptr(), h.name.as_bytes(), h.value)));
    let head = buf.split_to(len).freeze();
    let Ok(uri) = Uri::from_maybe_shared(head.slice(p0..p1)) else { return put_back(buf, &head) };
    // Room for what the proxy adds (forwarding headers, request ID, Host) without growing.
    let mut headers = std::mem::take(spare);
    if !fill_header_map(&mut headers, &head, spans, 8, names) {
        return put_back(buf, &head);
    }
    let close = close || (http10 && !keep_alive);
    let expect_continue = expect_continue && body.is_some();
    Parse::Complete(Head { method, uri, headers, body, http10, close, expect_continue })
}

/// What is wrong with an HTTP/1.1 request's body framing (RFC 9112 section 6), if anything:
/// a `Content-Length` that is not digits, several that differ, a `Transfer-Encoding` whose
/// last coding is not `chunked`, or both fields at once (refused outright, as Envoy does:
/// the classic way to make two parsers disagree about where a request ends).
pub(crate) fn framing_error(fields: &[httparse::Header<'_>]) -> Option<GatewayError> {
    let bad = |m| Some(GatewayError::new(ErrorKind::BadRequest(m)));
    let lengths = fields.iter().filter(|h| Known::of(h.name.as_bytes()) == Some(Known::ContentLength));
    let length = match length_of_values(lengths.map(|h| h.value)) {
        Ok(length) => length,
        Err(m) => return bad(m),
    };
    // The last coding of the last field is the one that frames the body.
    let chunked = fields.iter().rfind(|h| Known::of(h.name.as_bytes()) == Some(Known::TransferEncoding)).map(|h| {
        h.value.rsplit(|&b| b == b',').next().unwrap_or_default().trim_ascii().eq_ignore_ascii_case(b"chunked")
    });
    match (length, chunked) {
        (Some(_), Some(_)) => bad("both content-length and transfer-encoding"),
        (_, Some(false)) => bad("transfer-encoding must end with chunked"),
        _ => None,
    }
}

/// The number of field lines of the complete head at the start of `buf` (`None`: the head
/// is not complete yet). Empty lines before the request line are skipped, as httparse
/// skips them (RFC 9112 section 2.2).
pub(crate) fn field_lines(buf: &[u8]) -> Option<usize> {
    let mut lines = 0usize;
    let mut at = buf.iter().position(|&b| b != b'\r' && b != b'\n').unwrap_or(buf.len());
    while let Some(i) = buf[at..].iter().position(|&b| b == b'\n') {
        let line = &buf[at..at + i];
        if line.is_empty() || line == b"\r" {
            // The empty line that ends the head; the request line is not a field.
            return Some(lines.saturating_sub(1));
        }
        lines += 1;
        at += i + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> (Parse, BytesMut) {
        let mut buf = BytesMut::from(text.as_bytes());
        let p = parse(&mut buf, &mut NameCache::default(), &mut HeaderMap::new(), &mut Vec::new(), 100);
        (p, buf)
    }

    #[test]
    fn plain_http11_requests_are_taken_with_their_body_framing() {
        let (p, rest) = parsed("GET /a?b=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\nGET /next");
        let Parse::Complete(head) = p else { panic!("not taken") };
        assert_eq!((head.method, head.uri.to_string()), (Method::GET, "/a?b=1".to_owned()));
        assert_eq!((head.headers["host"].to_str().unwrap(), head.body), ("x", None));
        assert_eq!(&rest[..], b"GET /next", "the next request stays in the buffer");
        for (text, body) in [
            ("POST /a HTTP/1.1\r\nContent-Length: 1\r\n\r\nx", Some(Framing::Length(1))),
            ("POST /a HTTP/1.1\r\nContent-Length: 00\r\n\r\n", None),
            ("POST /a HTTP/1.1\r\ntransfer-encoding: Chunked\r\n\r\n0\r\n\r\n", Some(Framing::Chunked)),
        ] {
            let (p, rest) = parsed(text);
            let Parse::Complete(head) = p else { panic!("{text:?}: not taken") };
            assert_eq!(head.body, body, "{text:?}");
            assert_eq!(rest.len(), text.len() - text.find("\r\n\r\n").unwrap() - 4, "the body stays: {text:?}");
        }
        // HTTP/1.0, `Connection: close`, `Expect: 100-continue`, several `Host` fields.
        for (text, http10, close, expect_continue) in [
            ("GET /a HTTP/1.0\r\n\r\n", true, true, false),
            ("GET /a HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", true, false, false),
            ("POST /a HTTP/1.0\r\nContent-Length: 1\r\n\r\nx", true, true, false),
            ("GET /a HTTP/1.1\r\nConnection: keep-alive, close\r\n\r\n", false, true, false),
            ("GET /a HTTP/1.1\r\nConnection: x-a\r\n\r\n", false, false, false),
            ("PUT /a HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\n", false, false, true),
            ("PUT /a HTTP/1.1\r\nExpect: 100-continue\r\n\r\n", false, false, false),
            ("PUT /a HTTP/1.1\r\nExpect: later\r\nContent-Length: 3\r\n\r\n", false, false, false),
            ("GET /a HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", false, false, false),
        ] {
            let Parse::Complete(head) = parsed(text).0 else { panic!("{text:?}: not taken") };
            assert_eq!((head.http10, head.close, head.expect_continue), (http10, close, expect_continue), "{text:?}");
        }
        for text in [
            "POST /a HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
            "POST /a HTTP/1.1\r\nContent-Length: 2, 2\r\n\r\nab",
            "POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            "GET http://x/a HTTP/1.1\r\n\r\n",
            "OPTIONS * HTTP/1.1\r\n\r\n",
            "CONNECT /a HTTP/1.1\r\n\r\n",
        ] {
            let (p, rest) = parsed(text);
            let tunnel = text.contains("Upgrade") || text.starts_with("CONNECT");
            assert!(matches!(p, Parse::Other { tunnel: t } if t == tunnel), "{text:?}");
            assert_eq!(&rest[..], text.as_bytes(), "left for hyper untouched: {text:?}");
        }
        // Names as long as the ones that send a request to hyper, in any case, are taken.
        let (p, _) = parsed(
            "GET / HTTP/1.1\r\nFROM: a\r\nAccept: b\r\nReferer: c\r\nUser-Agent: d\r\n\
             accept-charset: e\r\nIf-Modified-Since: f\r\nCONTENT-LENGTH: 0\r\n\r\n",
        );
        let Parse::Complete(head) = p else { panic!("not taken") };
        let names: Vec<_> = head.headers.keys().map(|k| k.as_str()).collect();
        let expected =
            ["from", "accept", "referer", "user-agent", "accept-charset", "if-modified-since", "content-length"];
        assert_eq!(names, expected);
        let (p, _) = parsed("GET /a HTTP/1.1\r\nHost: x\r\n");
        assert!(matches!(p, Parse::Partial));
        // More fields than fit on the stack, within the limit: parsed again with room.
        let many = format!("GET / HTTP/1.1\r\n{}x-b: 2\r\n\r\n", "x-a: 1\r\n".repeat(99));
        let Parse::Complete(head) = parsed(&many).0 else { panic!("100 fields not taken") };
        // Also behind empty lines before the request line, which httparse skips (found by
        // the h1_request_head fuzz target: the lines were miscounted and the head refused).
        let behind = format!("\r\n\r\nGET / HTTP/1.1\r\n{}\r\n", "x-a: 1\r\n".repeat(40));
        assert!(matches!(parsed(&behind).0, Parse::Complete(_)), "40 fields after empty lines");
        assert_eq!((head.headers.len(), head.headers.get_all("x-a").iter().count()), (100, 99));
        assert_eq!(head.headers["x-b"], "2");
        let too_many = format!("GET / HTTP/1.1\r\n{}\r\n", "x-a: 1\r\n".repeat(101));
        let Parse::Refused(e) = parsed(&too_many).0 else { panic!("over the limit") };
        assert_eq!(e.status(), 431);
        assert!(matches!(parsed(&too_many[..too_many.len() - 2]).0, Parse::Partial), "counted once complete");
        for text in [
            "GET /a HTTP/1.1\r\nBad Header\r\n\r\n",
            "GET /a HTTP/9.9\r\n\r\n",
            "GET /a HTTP/1.1\r\nx: a\0b\r\n\r\n",
            "POST /a HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "POST /a HTTP/1.0\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            let Parse::Refused(e) = parsed(text).0 else { panic!("{text:?}: refused") };
            assert_eq!(e.status(), 400, "{text:?}");
        }
    }

    #[test]
    fn broken_body_framing_is_refused_here_and_sound_framing_left_to_hyper() {
        for (text, want) in [
            ("POST /a HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", "conflicting content-length values"),
            ("POST /a HTTP/1.1\r\nContent-Length: 5, 6\r\n\r\n", "conflicting content-length values"),
            ("POST /a HTTP/1.1\r\nContent-Length: +5\r\n\r\n", "invalid content-length"),
            (
                "POST /a HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
                "both content-length and transfer-encoding",
            ),
            ("POST /a HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", "transfer-encoding must end with chunked"),
        ] {
            let Parse::Refused(e) = parsed(text).0 else { panic!("{text:?}: refused") };
            assert_eq!(e.public_message(), want, "{text:?}");
        }
        for text in [
            "POST /a HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
            "POST /a HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n",
            "POST /a HTTP/1.1\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n",
        ] {
            assert!(matches!(parsed(text).0, Parse::Other { tunnel: false }), "{text:?}: hyper's");
        }
    }

    #[test]
    fn field_lines_are_counted_once_the_head_is_complete() {
        assert_eq!(field_lines(b"GET / HTTP/1.1\r\na: 1\r\nb: 2\r\n\r\nbody"), Some(2));
        assert_eq!(field_lines(b"GET / HTTP/1.1\r\n\r\n"), Some(0));
        assert_eq!(field_lines(b"GET / HTTP/1.1\na: 1\n\n"), Some(1));
        assert_eq!(field_lines(b"GET / HTTP/1.1\r\na: 1\r\n"), None);
        assert_eq!(field_lines(b"\r\n\nGET / HTTP/1.1\r\na: 1\r\nb: 2\r\n\r\n"), Some(2), "leading empty lines");
    }

    #[test]
    fn a_head_the_http_types_refuse_is_malformed() {
        // httparse takes a backtick in the target; `http::Uri` does not (nor does hyper).
        let text = "GET /a`b HTTP/1.1\r\nHost: x\r\n\r\nGET /next";
        let (p, rest) = parsed(text);
        let Parse::Refused(e) = p else { panic!("not refused") };
        assert_eq!((e.status().as_u16(), e.public_message()), (400, "malformed request"));
        assert_eq!(&rest[..], text.as_bytes(), "the head is back where it was, for the refusal");
    }
}
