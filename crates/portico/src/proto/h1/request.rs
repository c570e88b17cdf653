//! Request heads from clients: parsed with httparse, checked for broken framing, and
//! sorted into what the lean loop takes and what it leaves to hyper.

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method, Uri};

use super::body::Framing;
use super::fields::{Known, NameCache, Span, fill_header_map, span_of};
use super::length::{length_of_values, parse_length};
use crate::error::{ErrorKind, GatewayError};

/// The most header fields the lean loop parses; a request with more goes to hyper.
pub(crate) const MAX_HEADERS: usize = 32;

/// A request head the lean loop takes.
pub(crate) struct Head {
    pub(crate) method: Method,
    pub(crate) uri: Uri,
    pub(crate) headers: HeaderMap,
    /// How its body is framed; `None` without one (no framing field, or a length of 0).
    pub(crate) body: Option<Framing>,
}

/// What parsing the buffer gave.
#[allow(clippy::large_enum_variant, reason = "returned once per request, and the large variant is the usual one")]
pub(crate) enum Parse {
    Complete(Head),
    Partial,
    /// For hyper: not something this loop takes, or not valid at all.
    Other,
    /// For hyper too, found only once the head was taken out of the buffer: here it is.
    Rejected(Bytes),
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
    // Left uninitialised for httparse to fill: no 32 fields written first.
    let mut fields = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut fields) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parse::Partial,
        // More than this loop parses: hyper's if within the listener's limit.
        Err(httparse::Error::TooManyHeaders) => {
            return match field_lines(buf) {
                None => Parse::Partial,
                Some(n) if n > max_fields => Parse::Refused(GatewayError::new(ErrorKind::HeadersTooLarge)),
                Some(_) => Parse::Other,
            };
        }
        // hyper parses with httparse and the same settings, and would refuse it too.
        Err(_) => return Parse::Refused(GatewayError::new(ErrorKind::BadRequest("malformed request"))),
    };
    let (Some(method), Some(path), Some(1)) = (req.method, req.path, req.version) else { return Parse::Other };
    if !path.starts_with('/') {
        return Parse::Other;
    }
    let (mut hosts, mut lengths, mut codings) = (0, 0, 0);
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
            Some(Known::TransferEncoding) => {
                codings += 1;
                body = Some(Framing::Chunked);
                codings == 1 && h.value.eq_ignore_ascii_case(b"chunked")
            }
            // `100-continue` is answered by hyper, upgrades are tunnelled by it.
            Some(Known::Expect | Known::Upgrade) => false,
            Some(Known::Connection) => !h.value.split(|&b| b == b',').any(|t| {
                let t = t.trim_ascii();
                t.eq_ignore_ascii_case(b"close") || t.eq_ignore_ascii_case(b"upgrade")
            }),
            Some(Known::Host) => {
                hosts += 1;
                hosts == 1
            }
            _ => true,
        };
        if !takes || (lengths > 0 && codings > 0) {
            // hyper's, unless its framing is broken: then the contract's 400 from here.
            return framing_error(req.headers).map_or(Parse::Other, Parse::Refused);
        }
    }
    let body = body.filter(|&f| f != Framing::Length(0));
    let Ok(method) = Method::from_bytes(method.as_bytes()) else { return Parse::Other };
    if method == Method::CONNECT {
        // A tunnel: hyper's.
        return Parse::Other;
    }
    // Where each piece lies, so the head's bytes can be shared by the values.
    let (p0, p1, ..) = span_of(buf.as_ptr(), path.as_bytes(), path.as_bytes());
    spans.clear();
    spans.extend(req.headers.iter().map(|h| span_of(buf.as_ptr(), h.name.as_bytes(), h.value)));
    // A head that does not convert goes back.
    let head = buf.split_to(len).freeze();
    let Ok(uri) = Uri::from_maybe_shared(head.slice(p0..p1)) else { return Parse::Rejected(head) };
    // Room for what the proxy adds (forwarding headers, request ID, Host) without growing.
    let mut headers = std::mem::take(spare);
    if !fill_header_map(&mut headers, &head, spans, 8, names) {
        return Parse::Rejected(head);
    }
    Parse::Complete(Head { method, uri, headers, body })
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
/// is not complete yet).
pub(crate) fn field_lines(buf: &[u8]) -> Option<usize> {
    let mut lines = 0usize;
    let mut at = 0;
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
        for text in [
            "GET /a HTTP/1.0\r\n\r\n",
            "POST /a HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
            "POST /a HTTP/1.1\r\nContent-Length: 2, 2\r\n\r\nab",
            "POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "PUT /a HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            "GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            "GET /a HTTP/1.1\r\nConnection: keep-alive, close\r\n\r\n",
            "GET /a HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET http://x/a HTTP/1.1\r\n\r\n",
            "OPTIONS * HTTP/1.1\r\n\r\n",
            "CONNECT /a HTTP/1.1\r\n\r\n",
        ] {
            let (p, rest) = parsed(text);
            assert!(matches!(p, Parse::Other), "{text:?}");
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
        let many = format!("GET / HTTP/1.1\r\n{}\r\n", "x-a: 1\r\n".repeat(MAX_HEADERS + 1));
        assert!(matches!(parsed(&many).0, Parse::Other), "more than this loop parses, within the limit: hyper's");
        let too_many = format!("GET / HTTP/1.1\r\n{}\r\n", "x-a: 1\r\n".repeat(101));
        let Parse::Refused(e) = parsed(&too_many).0 else { panic!("over the limit") };
        assert_eq!(e.status(), 431);
        assert!(matches!(parsed(&too_many[..too_many.len() - 2]).0, Parse::Partial), "counted once complete");
        for text in
            ["GET /a HTTP/1.1\r\nBad Header\r\n\r\n", "GET /a HTTP/9.9\r\n\r\n", "GET /a HTTP/1.1\r\nx: a\0b\r\n\r\n"]
        {
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
            assert!(matches!(parsed(text).0, Parse::Other), "{text:?}: hyper's");
        }
    }

    #[test]
    fn field_lines_are_counted_once_the_head_is_complete() {
        assert_eq!(field_lines(b"GET / HTTP/1.1\r\na: 1\r\nb: 2\r\n\r\nbody"), Some(2));
        assert_eq!(field_lines(b"GET / HTTP/1.1\r\n\r\n"), Some(0));
        assert_eq!(field_lines(b"GET / HTTP/1.1\na: 1\n\n"), Some(1));
        assert_eq!(field_lines(b"GET / HTTP/1.1\r\na: 1\r\n"), None);
    }

    #[test]
    fn a_head_the_http_types_refuse_comes_back_whole() {
        // httparse takes a backtick in the target; `http::Uri` does not.
        let text = "GET /a`b HTTP/1.1\r\nHost: x\r\n\r\n";
        let (p, rest) = parsed(text);
        let Parse::Rejected(head) = p else { panic!("not rejected") };
        assert_eq!(&head[..], text.as_bytes());
        assert!(rest.is_empty());
    }
}
