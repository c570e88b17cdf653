//! The request head checks: what a request must be before it is routed. The head within
//! the listener's size limit, a readable `Content-Length` within the body limit, exactly
//! one valid `Host` on HTTP/1.1 (RFC 9112 section 3.2), an absolute path with no dot
//! segments, also none that any number of percent-decodings would reveal, and the
//! listener's (or the route's) policy for escaped slashes.
//!
//! Why the path checks: a gateway routes on the path it sees and the service behind it acts
//! on the path it decodes. `/public/..%2fadmin/x` matches a public route here and is
//! `/admin/x` to a framework that decodes `%2F` before it resolves `..` (the class of
//! Envoy's CVE-2021-29492). Refusing what would be read differently on the two sides is
//! the only policy that does not depend on the service.

use std::borrow::Cow;

use http::{HeaderValue, Request, Version, header};
use percent_encoding::percent_decode;
use portico_config::EscapedSlashes;

use crate::compile::ListenerSettings;
use crate::error::{ErrorKind, GatewayError};

/// Fields [`check_request`] noted on its way through the request's fields, so that what
/// follows needs no lookups for them when they are absent (the usual case).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Seen {
    /// A `Connection` field.
    pub connection: bool,
    /// An `Upgrade` field.
    pub upgrade: bool,
    /// The path holds `%2F` or `%5C` (either case).
    pub escaped_slash: bool,
}

fn bad(message: &'static str) -> GatewayError {
    GatewayError::new(ErrorKind::BadRequest(message))
}

/// Limits and sanity checks before routing.
pub(crate) fn check_request<B>(req: &Request<B>, limits: &ListenerSettings) -> Result<Seen, GatewayError> {
    // Request head size: the request line and every header line.
    let mut head = req.uri().path().len() + req.uri().query().map_or(0, |q| q.len() + 1) + 16;
    let mut seen = Seen { connection: false, upgrade: false, escaped_slash: false };
    let mut length = None;
    let mut host: Option<&HeaderValue> = None;
    let mut hosts = 0u32;
    for (name, value) in req.headers() {
        head += name.as_str().len() + value.len() + 4;
        if name == header::CONTENT_LENGTH {
            length = length.or(Some(value));
        } else if name == header::HOST {
            hosts += 1;
            host = Some(value);
        }
        seen.connection |= name == header::CONNECTION;
        seen.upgrade |= name == header::UPGRADE;
    }
    if head > limits.max_header_bytes || req.headers().len() > limits.max_header_fields {
        return Err(GatewayError::new(ErrorKind::HeadersTooLarge));
    }
    check_host(req, hosts, host)?;
    if let Some(len) = length {
        let len = crate::proto::h1::length::parse_length(len.as_bytes()).ok_or(bad("invalid content-length"))?;
        if len > limits.max_body {
            return Err(GatewayError::new(ErrorKind::PayloadTooLarge));
        }
    }
    let path = req.uri().path();
    if !path.starts_with('/') {
        return Err(bad("request target must be an absolute path"));
    }
    // One pass, stopping at the first byte the slower checks look for (most paths have none).
    if path.bytes().any(|b| CLASS[usize::from(b)] & PATH_SPECIAL != 0) {
        if has_dot_segment(path) {
            // `/api/../admin` would match `/api` here and reach `/admin` upstream.
            return Err(bad("path contains dot segments"));
        }
        seen.escaped_slash = has_escaped_slash(path);
    }
    Ok(seen)
}

/// RFC 9112 section 3.2: an HTTP/1.1 request has exactly one `Host`; no request has two;
/// the value is a host with an optional port. On HTTP/2 a `Host` beside `:authority` must
/// name the same (RFC 9113 section 8.3.1).
fn check_host<B>(req: &Request<B>, hosts: u32, host: Option<&HeaderValue>) -> Result<(), GatewayError> {
    match (hosts, req.version()) {
        (0, Version::HTTP_11) => return Err(bad("missing Host field")),
        (2.., _) => return Err(bad("more than one Host field")),
        _ => {}
    }
    let Some(host) = host else { return Ok(()) };
    if !host.as_bytes().iter().all(|&b| is_authority_byte(b)) {
        return Err(bad("invalid Host field"));
    }
    if req.version() == Version::HTTP_2
        && let Some(a) = req.uri().authority()
        && !a.as_str().eq_ignore_ascii_case(&String::from_utf8_lossy(host.as_bytes()))
    {
        return Err(bad("Host differs from :authority"));
    }
    Ok(())
}

/// Byte classes of the head checks, one table lookup a byte: they run over every `Host`
/// and every path.
const AUTHORITY: u8 = 1;
const PATH_SPECIAL: u8 = 2;
static CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0usize;
    while b < 256 {
        let c = b as u8;
        // `uri-host [ ":" port ]`: RFC 3986 reg-name, IP literal, port; no userinfo.
        if c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b'%'
                    | b':'
                    | b'['
                    | b']'
            )
        {
            t[b] |= AUTHORITY;
        }
        // What the path checks look for: dot segments and escapes.
        if matches!(c, b'.' | b'%' | b'\\') {
            t[b] |= PATH_SPECIAL;
        }
        b += 1;
    }
    t
};

fn is_authority_byte(b: u8) -> bool {
    CLASS[usize::from(b)] & AUTHORITY != 0
}

/// True when the path holds `%2F` or `%5C`, in either case.
fn has_escaped_slash(path: &str) -> bool {
    let b = path.as_bytes();
    b.windows(3).any(|w| w[0] == b'%' && matches!((w[1], w[2] | 0x20), (b'2', b'f') | (b'5', b'c')))
}

/// The path with `%2F` and `%5C` (either case) decoded to `/`; nothing else decoded.
pub(crate) fn unescape_slashes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut rest = path;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let esc = rest.get(i + 1..i + 3).map(str::to_ascii_lowercase);
        if matches!(esc.as_deref(), Some("2f" | "5c")) {
            out.push('/');
            rest = &rest[i + 3..];
        } else {
            out.push('%');
            rest = &rest[i + 1..];
        }
    }
    out.push_str(rest);
    out
}

/// The most percent-decodings a path is looked through for dot segments. A path still
/// changing after them is refused as well: no service decodes that often by accident.
const DECODINGS: usize = 4;

/// True for `.` and `..` segments, as sent or after one or more percent-decodings, with
/// `/` and `\` both taken as separators (`..%2f`, `%2e%2e`, `%252e%252e`, `..\`).
pub(crate) fn has_dot_segment(path: &str) -> bool {
    if !path.bytes().any(|b| matches!(b, b'.' | b'%' | b'\\')) {
        return false;
    }
    let mut current: Cow<'_, [u8]> = Cow::Borrowed(path.as_bytes());
    for _ in 0..=DECODINGS {
        if current.split(|&b| b == b'/' || b == b'\\').any(|s| s == b"." || s == b"..") {
            return true;
        }
        let next: Cow<'_, [u8]> = percent_decode(&current).into();
        if next.len() == current.len() {
            // Nothing was decoded: this is what every decoder ends with.
            return false;
        }
        current = Cow::Owned(next.into_owned());
    }
    true
}

/// What a request with an escaped slash gets.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum SlashAction {
    /// Route and forward it as it is.
    Keep,
    /// Route and forward this path instead.
    Forward(String),
    /// Answer 307 to this path (with the query).
    Redirect(String),
}

/// Applies `policy` to a path holding an escaped slash.
pub(super) fn escaped_slashes(policy: EscapedSlashes, path: &str) -> Result<SlashAction, GatewayError> {
    match policy {
        EscapedSlashes::Keep => Ok(SlashAction::Keep),
        EscapedSlashes::Reject => Err(bad("path contains an escaped slash")),
        EscapedSlashes::UnescapeAndForward => Ok(SlashAction::Forward(unescape_slashes(path))),
        EscapedSlashes::UnescapeAndRedirect => Ok(SlashAction::Redirect(unescape_slashes(path))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_are_found_behind_any_decoding() {
        for p in [
            "/a/../b",
            "/..",
            "/a/./b",
            "/a/%2e%2E/b",
            "/a/%2e/",
            "/public/..%2fadmin/x",
            "/public/%2E%2E%2Fadmin/x",
            "/public/..%5cadmin",
            "/public/%252e%252e/admin",
            "/public/%25252e%25252e%25252fadmin",
            "/a\\..\\b",
        ] {
            assert!(has_dot_segment(p), "{p}");
        }
        for p in ["/a/b", "/a/.well-known/x", "/a/..b", "/v1.2/x", "/", "/a%2fb", "/files/100%25/x", "/a/%2e%2ex"] {
            assert!(!has_dot_segment(p), "{p}");
        }
    }

    #[test]
    fn escaped_slashes_are_found_in_either_case() {
        for p in ["/a%2fb", "/a%2Fb", "/a%5cb", "/a%5Cb", "/%2F"] {
            assert!(has_escaped_slash(p), "{p}");
        }
        for p in ["/a/b", "/a%2", "/a%25", "/a%2e", "/%3f", "/a%252fb"] {
            assert!(!has_escaped_slash(p), "{p}");
        }
    }

    #[test]
    fn unescaping_decodes_only_slashes() {
        assert_eq!(unescape_slashes("/a%2Fb%5cc%20d%2"), "/a/b/c%20d%2");
        assert_eq!(unescape_slashes("/%2f%2F"), "///");
        assert_eq!(unescape_slashes("/plain"), "/plain");
    }

    #[test]
    fn host_rules_follow_rfc_9112() {
        let req = |version, hosts: &[&str], uri: &str| {
            let mut b = Request::builder().uri(uri).version(version);
            for h in hosts {
                b = b.header("host", *h);
            }
            b.body(()).unwrap()
        };
        let check = |r: &Request<()>| {
            let hosts = r.headers().get_all(header::HOST).iter().count() as u32;
            check_host(r, hosts, r.headers().get(header::HOST)).map_err(|e| e.public_message())
        };
        assert_eq!(check(&req(Version::HTTP_11, &[], "/")), Err("missing Host field"));
        assert_eq!(check(&req(Version::HTTP_11, &["a", "b"], "/")), Err("more than one Host field"));
        assert_eq!(check(&req(Version::HTTP_10, &["a", "a"], "/")), Err("more than one Host field"));
        assert_eq!(check(&req(Version::HTTP_11, &["a@b"], "/")), Err("invalid Host field"));
        assert_eq!(check(&req(Version::HTTP_11, &["a/b"], "/")), Err("invalid Host field"));
        assert_eq!(check(&req(Version::HTTP_2, &["b.test"], "https://a.test/")), Err("Host differs from :authority"));
        assert!(check(&req(Version::HTTP_11, &["api.test:8080"], "/")).is_ok());
        assert!(check(&req(Version::HTTP_11, &["[::1]:80"], "/")).is_ok());
        assert!(check(&req(Version::HTTP_11, &[""], "/")).is_ok());
        assert!(check(&req(Version::HTTP_10, &[], "/")).is_ok());
        assert!(check(&req(Version::HTTP_2, &[], "https://a.test/")).is_ok());
        assert!(check(&req(Version::HTTP_2, &["A.test"], "https://a.test/")).is_ok());
    }
}
