//! Doors for the fuzz targets in `fuzz/` (cargo fuzz) into the parsers that meet untrusted
//! input and are `pub(crate)`. Built only with the `fuzzing` feature, which is off by
//! default; not an API. Each item calls the production function and only turns what it
//! returns into public types: a target must exercise the code that runs, never a copy.
//! docs/fuzzing.md says what each target checks.

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method, Request, Uri};

use crate::compile::ListenerSettings;
pub use crate::proto::h1::body::Framing;
use crate::proto::h1::body::{Decoded, Decoder};
use crate::proto::h1::fields::{NameCache, fill_header_map};
use crate::proto::h1::{length, request, response};

/// A connection's cache of header names by position, kept from one head to the next as the
/// server loop and the upstream client keep it.
#[derive(Debug, Default)]
pub struct Names(NameCache);

/// What [`h1_request`] gave (`proto::h1::request::Parse`).
#[derive(Debug)]
pub enum RequestHead {
    /// The lean loop takes it; the head is gone from the buffer.
    Complete {
        /// The method.
        method: Method,
        /// The target.
        uri: Uri,
        /// The fields, in the map the pipeline gets.
        headers: HeaderMap,
        /// The body's framing, `None` without a body.
        body: Option<Framing>,
        /// HTTP/1.0 (else 1.1).
        http10: bool,
        /// The connection ends after this exchange.
        close: bool,
        /// `Expect: 100-continue` with a body.
        expect_continue: bool,
    },
    /// More bytes are needed.
    Partial,
    /// Left to hyper, the buffer untouched.
    Other,
    /// Refused with this status and public message.
    Refused(u16, &'static str),
}

/// `proto::h1::request::parse` on the front of `buf`, as the lean server loop calls it.
pub fn h1_request(buf: &mut BytesMut, names: &mut Names, max_fields: usize) -> RequestHead {
    let (mut spare, mut spans) = (HeaderMap::new(), Vec::new());
    match request::parse(buf, &mut names.0, &mut spare, &mut spans, max_fields) {
        request::Parse::Complete(h) => RequestHead::Complete {
            method: h.method,
            uri: h.uri,
            headers: h.headers,
            body: h.body,
            http10: h.http10,
            close: h.close,
            expect_continue: h.expect_continue,
        },
        request::Parse::Partial => RequestHead::Partial,
        request::Parse::Other { .. } => RequestHead::Other,
        request::Parse::Refused(e) => RequestHead::Refused(e.status().as_u16(), e.public_message()),
    }
}

/// The most fields the lean loop parses in a request head.
pub const H1_REQUEST_FIELDS: usize = request::MAX_HEADERS;

/// What one step of [`BodyDecoder::decode`] gave (`proto::h1::body::Decoded`).
#[derive(Debug, PartialEq, Eq)]
pub enum Piece {
    /// Body bytes.
    Data(Bytes),
    /// More bytes are needed.
    Need,
    /// The body is complete.
    End,
}

/// The one body decoder (`proto::h1::body::Decoder`).
#[derive(Debug)]
pub struct BodyDecoder(Decoder);

impl BodyDecoder {
    /// A decoder for a body with this framing.
    pub fn new(framing: Framing) -> Self {
        Self(Decoder::new(framing))
    }

    /// One step of decoding from the front of `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Piece, &'static str> {
        Ok(match self.0.decode(buf)? {
            Decoded::Data(b) => Piece::Data(b),
            Decoded::Need => Piece::Need,
            Decoded::End => Piece::End,
        })
    }

    /// The connection ended: whether that completes the body.
    pub fn at_eof(&mut self) -> bool {
        self.0.at_eof()
    }

    /// Whether the body is complete.
    pub fn is_done(&self) -> bool {
        self.0.is_done()
    }

    /// The bytes still to come, when known.
    pub fn remaining(&self) -> Option<u64> {
        self.0.remaining()
    }
}

/// `proto::h1::body::chunk_size`.
pub fn chunk_size(buf: &[u8]) -> Result<Option<(usize, u64)>, &'static str> {
    crate::proto::h1::body::chunk_size(buf)
}

/// A response head from [`h1_response`].
#[derive(Debug)]
pub struct ResponseHead {
    /// The status.
    pub status: u16,
    /// The fields, put into the map also when the parse kept them as sent.
    pub headers: HeaderMap,
    /// Whether the parse kept the fields as sent (no map).
    pub kept_as_sent: bool,
    /// The body's framing.
    pub framing: Framing,
    /// Whether the connection may carry another request.
    pub reusable: bool,
}

/// `proto::h1::response::parse` on the front of `buf`, as the upstream client calls it.
pub fn h1_response(
    buf: &mut BytesMut,
    method_head: bool,
    names: &mut Names,
) -> Result<Option<ResponseHead>, &'static str> {
    let (mut spare, mut fields) = (HeaderMap::new(), Vec::new());
    let Some(mut p) = response::parse(buf, method_head, &mut names.0, &mut spare, &mut fields)? else {
        return Ok(None);
    };
    let kept_as_sent = p.raw.is_some();
    if let Some(head) = p.raw.take()
        && !fill_header_map(&mut spare, &head, &fields, 0, &mut names.0)
    {
        return Err("fields kept as sent do not fit a header map");
    }
    Ok(Some(ResponseHead {
        status: p.status.as_u16(),
        headers: spare,
        kept_as_sent,
        framing: p.framing,
        reusable: p.reusable,
    }))
}

/// `proto::h1::length::parse_length`.
pub fn parse_length(b: &[u8]) -> Option<u64> {
    length::parse_length(b)
}

/// `proto::h1::length::length_of_values`.
pub fn length_of_values(values: &[&[u8]]) -> Result<Option<u64>, &'static str> {
    length::length_of_values(values.iter().copied())
}

/// `proto::h1::length::content_length_of`.
pub fn content_length_of(headers: &HeaderMap) -> Result<Option<(u64, bool)>, &'static str> {
    length::content_length_of(headers)
}

/// What [`check_request`] noted of a request that passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// A `Connection` field.
    pub connection: bool,
    /// An `Upgrade` field.
    pub upgrade: bool,
    /// The path holds `%2F` or `%5C`.
    pub escaped_slash: bool,
}

/// `pipeline::checks::check_request` with a listener's limits; an error is the status and
/// public message of the refusal.
pub fn check_request<B>(req: &Request<B>, listener: &ListenerSettings) -> Result<Seen, (u16, &'static str)> {
    crate::pipeline::checks::check_request(req, listener)
        .map(|s| Seen { connection: s.connection, upgrade: s.upgrade, escaped_slash: s.escaped_slash })
        .map_err(|e| (e.status().as_u16(), e.public_message()))
}

/// `pipeline::checks::has_dot_segment`.
pub fn has_dot_segment(path: &str) -> bool {
    crate::pipeline::checks::has_dot_segment(path)
}

/// `pipeline::checks::unescape_slashes`.
pub fn unescape_slashes(path: &str) -> String {
    crate::pipeline::checks::unescape_slashes(path)
}

/// `compile::Rewrite::compile`: a route's path rewrite, as the compile stage builds it.
pub fn rewrite(route: &portico_config::Route) -> crate::compile::Rewrite {
    crate::compile::Rewrite::compile(route)
}

/// `plugins::compression::accepts_gzip`: whether an `Accept-Encoding` value takes gzip.
pub fn accepts_gzip(value: &http::HeaderValue) -> bool {
    crate::plugins::compression::accepts_gzip(value)
}

/// `plugins::xml::prefers_xml`: whether an `Accept` value weighs XML above JSON.
pub fn prefers_xml(value: &http::HeaderValue) -> bool {
    crate::plugins::xml::prefers_xml(value)
}

/// `plugins::jwt::keys_of_set`: the usable keys of a JWKS document, with a provider that
/// takes every asymmetric algorithm; each as its `kid` and the algorithms it verifies.
pub fn jwks(body: &[u8]) -> Result<Vec<(Option<String>, Vec<jsonwebtoken::Algorithm>)>, String> {
    use jsonwebtoken::Algorithm as A;
    let algorithms = [A::RS256, A::RS384, A::RS512, A::PS256, A::PS384, A::PS512, A::ES256, A::ES384, A::EdDSA];
    let base = jsonwebtoken::Validation::new(A::RS256);
    let keys = crate::plugins::jwt::keys_of_set(body, &algorithms, &base)?;
    Ok(keys
        .iter()
        .map(|k| {
            let (kid, algs) = k.describe();
            (kid.map(str::to_owned), algs.to_vec())
        })
        .collect())
}

/// `cache::tier::decode` and `encode`: a value of the cache's shared tier, as read back from
/// Redis (which any instance, or anyone who can write to that Redis, may have written),
/// encoded again when it decodes.
pub fn cache_value(value: &[u8]) -> Option<Vec<u8>> {
    let entries = crate::cache::tier::decode(value).ok()?;
    let entries: Vec<std::sync::Arc<crate::cache::Entry>> = entries.into_iter().map(std::sync::Arc::new).collect();
    Some(crate::cache::tier::encode(&entries))
}
