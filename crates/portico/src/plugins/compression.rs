//! Response compression: a handler's answer is gzip-compressed as it streams, for a client
//! that accepts gzip, when its media type is listed, it is not encoded already, its
//! declared length is at least `min_size`, and it does not forbid transforms
//! (`Cache-Control: no-transform`). The body is never held whole: pieces that arrive
//! together are compressed together, and what is compressed is flushed to the client
//! whenever the upstream pauses ([`crate::body::Transformed`]), so a slow stream is not
//! held back.
//!
//! What the head says of it, as nginx's gzip module and Envoy's compressor do:
//! `Content-Encoding: gzip`, no `Content-Length` (the body goes chunked on HTTP/1.1) and
//! no `Accept-Ranges` (ranges of the compressed body are not served); a strong `ETag`
//! becomes weak (the bytes differ from the upstream's, the meaning does not); and every
//! response of a listed type gets `Vary: Accept-Encoding`, compressed or not, so that a
//! shared cache keeps the two forms apart.
//!
//! gzip through flate2 on its zlib-rs back end (a pure-Rust port of zlib-ng, about three
//! times miniz_oxide's speed here: docs/benchmarks.md): the encoding every client takes.
//! Brotli and zstd are not offered yet.

use std::io::Write as _;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header};

use super::hooks::{HookCtx, Hooks, Phases, StreamTransform};
use crate::body::BoxError;

/// A compiled `compression` plugin.
#[derive(Debug)]
pub struct Compression {
    min_size: u64,
    level: flate2::Compression,
    types: Box<[MediaType]>,
}

/// One entry of `content_types`, lowercased.
#[derive(Debug)]
enum MediaType {
    /// `type/subtype`.
    Exact(Box<str>),
    /// `type/*`: the type, with its slash.
    Type(Box<str>),
    /// `+suffix`, with its plus.
    Suffix(Box<str>),
}

impl Compression {
    /// Compiles the plugin config (validated).
    pub fn new(cfg: &portico_config::plugins::Compression) -> Self {
        let types = cfg
            .content_types
            .iter()
            .map(|t| {
                let t = t.to_ascii_lowercase();
                if t.starts_with('+') {
                    MediaType::Suffix(t.into())
                } else if let Some(ty) = t.strip_suffix('*') {
                    MediaType::Type(ty.into())
                } else {
                    MediaType::Exact(t.into())
                }
            })
            .collect();
        Self { min_size: cfg.min_size.get(), level: flate2::Compression::new(cfg.level.clamp(1, 9)), types }
    }

    /// Whether a `Content-Type` is one of the listed media types.
    fn listed(&self, content_type: &HeaderValue) -> bool {
        let Ok(ct) = content_type.to_str() else { return false };
        let essence = ct.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
        self.types.iter().any(|t| match t {
            MediaType::Exact(e) => essence == **e,
            MediaType::Type(prefix) => essence.starts_with(&**prefix),
            MediaType::Suffix(suffix) => essence.contains('/') && essence.ends_with(&**suffix),
        })
    }
}

impl Hooks for Compression {
    fn kind(&self) -> &'static str {
        "compression"
    }

    fn phases(&self) -> Phases {
        Phases { response_stream: true, ..Phases::default() }
    }

    fn response_stream(
        &self,
        status: StatusCode,
        headers: &mut HeaderMap,
        ctx: &HookCtx<'_>,
    ) -> Option<Box<dyn StreamTransform>> {
        if headers.contains_key(header::CONTENT_ENCODING) {
            return None;
        }
        if !headers.get(header::CONTENT_TYPE).is_some_and(|ct| self.listed(ct)) {
            return None;
        }
        add_vary(headers);
        let no_transform = headers
            .get_all(header::CACHE_CONTROL)
            .iter()
            .any(|v| v.to_str().is_ok_and(|v| v.split(',').any(|d| d.trim().eq_ignore_ascii_case("no-transform"))));
        let partial = status == StatusCode::PARTIAL_CONTENT || headers.contains_key(header::CONTENT_RANGE);
        let small = crate::proto::h1::length::content_length(headers).ok().flatten().is_some_and(|n| n < self.min_size);
        if no_transform || partial || small || !ctx.accept_encoding.is_some_and(accepts_gzip) {
            return None;
        }
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        headers.remove(header::CONTENT_LENGTH);
        headers.remove(header::ACCEPT_RANGES);
        if let Some(etag) = headers.get(header::ETAG)
            && !etag.as_bytes().starts_with(b"W/")
            && let Ok(weak) = HeaderValue::from_bytes(&[b"W/", etag.as_bytes()].concat())
        {
            headers.insert(header::ETAG, weak);
        }
        Some(Box::new(Gzip(flate2::write::GzEncoder::new(Vec::new(), self.level))))
    }
}

/// Adds `Accept-Encoding` to `Vary` unless it is there already (or `Vary: *`).
fn add_vary(headers: &mut HeaderMap) {
    let listed = headers.get_all(header::VARY).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|f| f.trim() == "*" || f.trim().eq_ignore_ascii_case("accept-encoding")))
    });
    if !listed {
        headers.append(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    }
}

/// Whether an `Accept-Encoding` value accepts gzip (RFC 9110 section 12.5.3): `gzip` (or
/// its old name `x-gzip`) with a weight above 0, or else `*` with one.
pub(crate) fn accepts_gzip(value: &HeaderValue) -> bool {
    let Ok(value) = value.to_str() else { return false };
    let mut star = false;
    for item in value.split(',') {
        let mut parts = item.split(';');
        let coding = parts.next().unwrap_or_default().trim();
        let weight = parts.find_map(|p| {
            let p = p.trim();
            p.strip_prefix("q=").or_else(|| p.strip_prefix("Q="))
        });
        // A weight of 0 refuses; one that does not parse is not taken as a yes (sending
        // the body as it is is always safe).
        let accepted = weight.is_none_or(|q| q.trim().parse::<f32>().is_ok_and(|q| q > 0.0));
        if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
            return accepted;
        }
        if coding == "*" {
            star = accepted;
        }
    }
    star
}

/// The gzip transform: compressed bytes into a buffer that each call empties.
struct Gzip(flate2::write::GzEncoder<Vec<u8>>);

impl std::fmt::Debug for Gzip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Gzip")
    }
}

impl StreamTransform for Gzip {
    fn data(&mut self, piece: &[u8]) -> Result<(), BoxError> {
        Ok(self.0.write_all(piece)?)
    }

    fn flush(&mut self) -> Result<(), BoxError> {
        // A sync flush: everything given so far can be decompressed by the client now.
        Ok(self.0.flush()?)
    }

    fn end(&mut self) -> Result<(), BoxError> {
        Ok(self.0.try_finish()?)
    }

    fn ready(&self) -> usize {
        self.0.get_ref().len()
    }

    fn take(&mut self) -> Bytes {
        Bytes::from(std::mem::take(self.0.get_mut()))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;

    fn plugin() -> Compression {
        Compression::new(&portico_config::plugins::Compression::default())
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (http::HeaderName::from_static(k), HeaderValue::from_static(v))).collect()
    }

    #[test]
    fn accept_encoding_weights_decide() {
        let ok = |v: &'static str| accepts_gzip(&HeaderValue::from_static(v));
        assert!(ok("gzip"));
        assert!(ok("br, GZIP;q=0.5"));
        assert!(ok("x-gzip"));
        assert!(ok("*"));
        assert!(ok("deflate, *;q=0.1"));
        assert!(ok("gzip;q=1.000"));
        assert!(ok("gzip;q=0.001"));
        assert!(!ok("gzip;q=0"));
        assert!(!ok("gzip;q=0.000"));
        assert!(!ok("gzip; q=0.0, *"), "an explicit refusal wins over *");
        assert!(!ok("*;q=0"));
        assert!(!ok("br, deflate"));
        assert!(!ok("identity"));
        assert!(!ok(""));
    }

    #[test]
    fn media_types_match_exactly_by_type_or_by_suffix() {
        let p = Compression::new(&portico_config::plugins::Compression {
            content_types: vec!["application/json".into(), "text/*".into(), "+xml".into()],
            ..Default::default()
        });
        let listed = |v: &'static str| p.listed(&HeaderValue::from_static(v));
        assert!(listed("application/json"));
        assert!(listed("Application/JSON; charset=utf-8"));
        assert!(listed("text/plain"));
        assert!(listed("text/html;charset=utf-8"));
        assert!(listed("application/atom+xml"));
        assert!(!listed("application/jsonp"));
        assert!(!listed("image/png"));
        assert!(!listed("textual/plain"));
        assert!(!listed("+xml"));
    }

    #[test]
    fn the_head_says_what_was_done() {
        let p = plugin();
        let ae = HeaderValue::from_static("gzip, br");
        let ctx = HookCtx { accept_encoding: Some(&ae), ..HookCtx::new(&ae) };
        let mut h = headers(&[
            ("content-type", "application/json"),
            ("content-length", "5000"),
            ("etag", "\"v1\""),
            ("accept-ranges", "bytes"),
            ("vary", "Origin"),
        ]);
        assert!(p.response_stream(StatusCode::OK, &mut h, &ctx).is_some());
        assert_eq!(h["content-encoding"], "gzip");
        assert!(h.get("content-length").is_none() && h.get("accept-ranges").is_none());
        assert_eq!(h["etag"], "W/\"v1\"");
        let vary: Vec<_> = h.get_all("vary").iter().collect();
        assert_eq!(vary, ["Origin", "Accept-Encoding"]);

        // Left alone, with `Vary` for a listed type: small, no-transform, partial, not
        // accepted, encoded already, unlisted.
        for (status, pairs, accept) in [
            (200, &[("content-type", "text/plain"), ("content-length", "1023")][..], Some(&ae)),
            (200, &[("content-type", "text/plain"), ("cache-control", "public, No-Transform")][..], Some(&ae)),
            (206, &[("content-type", "text/plain"), ("content-range", "bytes 0-9/100")][..], Some(&ae)),
            (200, &[("content-type", "text/plain")][..], None),
        ] {
            let mut h = headers(pairs);
            let ctx = HookCtx { accept_encoding: accept, ..HookCtx::new(&ae) };
            assert!(p.response_stream(StatusCode::from_u16(status).unwrap(), &mut h, &ctx).is_none(), "{pairs:?}");
            assert!(h.get("content-encoding").is_none());
            assert_eq!(h["vary"], "Accept-Encoding", "{pairs:?}");
        }
        for pairs in
            [&[("content-type", "text/plain"), ("content-encoding", "br")][..], &[("content-type", "image/png")]]
        {
            let mut h = headers(pairs);
            assert!(p.response_stream(StatusCode::OK, &mut h, &ctx).is_none());
            assert!(h.get("vary").is_none(), "{pairs:?}");
        }
        // `Vary` is not repeated.
        let mut h = headers(&[("content-type", "text/plain"), ("vary", "accept-encoding")]);
        p.response_stream(StatusCode::OK, &mut h, &ctx);
        assert_eq!(h.get_all("vary").iter().count(), 1);
    }

    #[test]
    fn pieces_flushes_and_the_end_make_one_gzip_stream() {
        let p = plugin();
        let ae = HeaderValue::from_static("gzip");
        let ctx = HookCtx { accept_encoding: Some(&ae), ..HookCtx::new(&ae) };
        let mut h = headers(&[("content-type", "text/plain")]);
        let mut gz = p.response_stream(StatusCode::OK, &mut h, &ctx).expect("compressed");
        let mut out = Vec::new();
        gz.data(b"first piece, ").unwrap();
        gz.flush().unwrap();
        let flushed = gz.take();
        assert!(!flushed.is_empty() && gz.ready() == 0, "a flush makes what was given ready");
        out.extend_from_slice(&flushed);
        // What was flushed decompresses on its own already.
        let mut partial = String::new();
        let _ = flate2::read::GzDecoder::new(&out[..]).read_to_string(&mut partial);
        assert_eq!(partial, "first piece, ");
        for _ in 0..1000 {
            gz.data(b"then the same again and again ").unwrap();
        }
        gz.end().unwrap();
        out.extend_from_slice(&gz.take());
        let mut whole = String::new();
        flate2::read::GzDecoder::new(&out[..]).read_to_string(&mut whole).unwrap();
        assert_eq!(whole, format!("first piece, {}", "then the same again and again ".repeat(1000)));
        assert!(out.len() < 1000, "{} bytes", out.len());
    }
}
