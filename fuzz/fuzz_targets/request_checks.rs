//! The request head checks (`pipeline::checks::check_request`) every request passes before
//! it is routed, on any transport: head size, `Host` rules, `Content-Length`, absolute path,
//! dot segments behind any number of decodings, escaped slashes.
//!
//! Input (structured, with `arbitrary`): a path and query, the HTTP version, an authority,
//! fields and the listener's limits. Checked: no panic; a request that passes has a path
//! that starts with `/` and shows no `.` or `..` segment after up to four percent-decodings
//! (`/` and `\` both separators), at most one valid `Host` (exactly one on HTTP/1.1), a
//! `Content-Length` of digits within the body limit; the escaped-slash note is right, and
//! decoding escaped slashes changes a path only when it has one.
#![no_main]

use std::sync::OnceLock;

use arbitrary::Arbitrary;
use http::{HeaderName, HeaderValue, Request, Version};
use libfuzzer_sys::fuzz_target;
use portico::compile::ListenerSettings;
use portico::fuzzing;

#[derive(Arbitrary, Debug)]
struct Input {
    path: String,
    query: Option<String>,
    version: u8,
    authority: Option<String>,
    fields: Vec<(String, Vec<u8>)>,
    max_header_bytes: u16,
    max_header_fields: u8,
    max_body: u32,
}

fn listener() -> &'static portico_config::Listener {
    static L: OnceLock<portico_config::Listener> = OnceLock::new();
    L.get_or_init(|| serde_saphyr::from_str("{ name: l, bind: \"127.0.0.1:1\" }").expect("a listener"))
}

fuzz_target!(|input: Input| {
    let version = match input.version % 3 {
        0 => Version::HTTP_10,
        1 => Version::HTTP_11,
        _ => Version::HTTP_2,
    };
    let target = match (&input.authority, &input.query) {
        (Some(a), Some(q)) => format!("http://{a}{}?{q}", input.path),
        (Some(a), None) => format!("http://{a}{}", input.path),
        (None, Some(q)) => format!("{}?{q}", input.path),
        (None, None) => input.path.clone(),
    };
    let mut builder = Request::builder().uri(target.as_str()).version(version);
    for (name, value) in &input.fields {
        let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_bytes(value)) else { return };
        builder = builder.header(n, v);
    }
    let Ok(req) = builder.body(()) else { return };
    let mut limits = ListenerSettings::new(listener());
    limits.max_header_bytes = usize::from(input.max_header_bytes);
    limits.max_header_fields = usize::from(input.max_header_fields);
    limits.max_body = u64::from(input.max_body);

    let path = req.uri().path();
    let escaped = has_escaped_slash(path);
    let unescaped = fuzzing::unescape_slashes(path);
    assert!(escaped || unescaped == path, "{path:?} unescaped to {unescaped:?}");
    assert!(unescaped.len() <= path.len());

    let Ok(seen) = fuzzing::check_request(&req, &limits) else { return };
    assert!(path.starts_with('/'));
    assert!(!dot_segment_within_decodings(path), "a dot segment passed: {path:?}");
    assert!(!fuzzing::has_dot_segment(path));
    if path.contains(['.', '%', '\\']) {
        assert_eq!(seen.escaped_slash, escaped, "{path:?}");
    }
    let hosts = req.headers().get_all(http::header::HOST).iter().count();
    assert!(hosts <= 1 && (version != Version::HTTP_11 || hosts == 1), "{hosts} Host fields passed");
    if let Some(cl) = req.headers().get(http::header::CONTENT_LENGTH) {
        let n = portico_fuzz::one_length(cl.as_bytes()).expect("a Content-Length that is not digits passed");
        assert!(n <= limits.max_body);
    }
    assert!(req.headers().len() <= limits.max_header_fields);
});

fn has_escaped_slash(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    lower.contains("%2f") || lower.contains("%5c")
}

/// Whether a `.` or `..` segment shows in `path` as sent or after up to four decodings.
fn dot_segment_within_decodings(path: &str) -> bool {
    let mut p = path.as_bytes().to_vec();
    for _ in 0..=4 {
        if p.split(|&b| b == b'/' || b == b'\\').any(|s| s == b"." || s == b"..") {
            return true;
        }
        p = decode(&p);
    }
    false
}

/// One percent-decoding, written here rather than taken from the crate the gateway uses.
fn decode(p: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(p.len());
    let mut i = 0;
    while i < p.len() {
        if p[i] == b'%'
            && let (Some(h), Some(l)) = (p.get(i + 1).copied().and_then(hex), p.get(i + 2).copied().and_then(hex))
        {
            out.push(h << 4 | l);
            i += 3;
        } else {
            out.push(p[i]);
            i += 1;
        }
    }
    out
}
