//! The one HTTP/1.1 codec, used by the server side (server/lean.rs reads requests and
//! writes responses) and by the upstream client (upstream/h1.rs writes requests and reads
//! responses):
//!
//! - [`length`]: the one `Content-Length` reader (RFC 9110 section 8.6);
//! - [`body`]: the chunked coding and the one body decoder for every framing;
//! - [`fields`]: the field names the codec acts on and header maps filled without copies;
//! - [`request`]: request heads from clients, and which of them the lean loop takes;
//! - [`response`]: response heads from upstreams, framed by RFC 9112 section 6.3;
//! - [`encode`]: request heads, response heads and body framing written out.
//!
//! Parsing is httparse, the parser hyper itself uses. Written here rather than left to
//! hyper because of what hyper's per-message machinery (a task per client connection,
//! channels for bodies, dispatcher state) costs on a proxy's hot path: measured in
//! docs/benchmarks.md.

pub mod body;
pub mod encode;
pub mod fields;
pub mod length;
pub mod request;
pub mod response;
