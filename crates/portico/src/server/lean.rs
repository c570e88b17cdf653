//! A lean HTTP/1.1 server loop for plain listeners and TLS connections that chose
//! HTTP/1.1: requests without a body (most
//! GET, HEAD and DELETE requests) are parsed, handled and answered by the connection's own
//! task; the first request it does not take hands the connection to hyper for the rest of
//! its life, with the bytes already read.
//!
//! Written here rather than left to hyper for the same reason as the upstream client
//! (upstream/h1.rs): on a proxy's hot path hyper's per-message machinery (dispatcher state,
//! body channels, encoders) costs more than the proxying itself; measured in
//! docs/benchmarks.md. Parsing is httparse, hyper's own parser.
//!
//! What it takes: `HTTP/1.1` requests in origin form (`/path?query`) with no body (no
//! `Transfer-Encoding`, no `Content-Length` other than one `0`), no `Expect`, no `Upgrade`,
//! no `Connection: close` or `upgrade`, one `Host` at most, and header names and values the
//! `http` crate accepts. Everything else — HTTP/1.0, bodies, upgrades, h2c prior
//! knowledge, heads over the listener's `max_header_bytes`, anything malformed — goes to
//! hyper, which answers exactly as it always did. So nothing this loop does not fully
//! handle is ever half-handled here.
//!
//! Timeouts match the hyper path: the first request must start within `header_timeout`
//! of the accept, a head must complete within `header_timeout` of its first byte (else
//! the connection closes without an answer: slowloris), and a connection idle for
//! `idle_timeout` between requests closes. At shutdown an idle connection closes at once
//! and a busy one after its response, which carries `connection: close`.

use std::io::Write as _;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri, Version};
use http_body::Body as _;
use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::Shared;
use crate::body::Body;
use crate::error::{ErrorKind, GatewayError};
use crate::pipeline::{self, Completion, ConnInfo, LogPhase};
use crate::upstream::h1::{
    Known, NameCache, Span, content_length, fill_header_map, plain_length, recycle, span_of, write_field,
};

/// The most header fields this loop parses; a request with more goes to hyper.
const MAX_HEADERS: usize = 32;
/// Room made in the buffer before a read.
const READ_ROOM: usize = 8 * 1024;
/// After refusing a head, how long and how much of what the client still sends is read
/// and dropped before the connection closes.
const LINGER: std::time::Duration = std::time::Duration::from_millis(500);
const LINGER_BYTES: usize = 1024 * 1024;
/// Body frames up to this size are copied next to their framing and written in one call.
const COPY_MAX: usize = 16 * 1024;

/// Serves an HTTP/1 connection (plain, or TLS without h2): the lean loop while it can,
/// then hyper.
pub(crate) async fn serve<S>(
    io: S,
    info: Arc<ConnInfo>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut conn = Lean {
        io,
        buf: BytesMut::with_capacity(READ_ROOM),
        out: Vec::with_capacity(1024),
        names: NameCache::default(),
        spare: HeaderMap::new(),
        spans: Vec::with_capacity(16),
        sent: 0,
        upstream_failed: false,
    };
    if let End::HandOver(head_started) = conn.run(&info, &shared, shutdown.clone()).await {
        let start = super::conn::Start { head_started, prefix: conn.buf.freeze() };
        super::conn::serve(conn.io, info, builder, shared, shutdown, start).await;
    }
}

/// How the lean loop ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// The connection is finished (closed, timed out, failed).
    Closed,
    /// The next request (whose bytes are in the buffer, begun at this time) is for hyper.
    HandOver(Instant),
}

struct Lean<S> {
    io: S,
    /// Bytes read and not yet used: the start of the next request.
    buf: BytesMut,
    /// The response head being written.
    out: Vec<u8>,
    /// The header names of the last request, to reuse.
    names: NameCache,
    /// The last response's header map, emptied: the next request's.
    spare: HeaderMap,
    /// Where the last request's fields lay in its head (kept for the allocation).
    spans: Vec<Span>,
    /// Body bytes of the current response handed to the socket.
    sent: u64,
    /// Whether the current response's body failed on the upstream's side.
    upstream_failed: bool,
}

/// A request head this loop takes.
struct Head {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}

/// What parsing the buffer gave.
#[allow(clippy::large_enum_variant, reason = "returned once per request, and the large variant is the usual one")]
enum Parse {
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

impl<S: AsyncRead + AsyncWrite + Unpin> Lean<S> {
    async fn run(&mut self, info: &Arc<ConnInfo>, shared: &Arc<Shared>, shutdown: watch::Receiver<bool>) -> End {
        let limits = &info.listener;
        let mut first = true;
        // One timer per connection, not one per request: the wait for the next request
        // moves `deadline`, and the timer, when it fires early, is set to it again.
        let accepted = Instant::now();
        let mut deadline = accepted + limits.header_timeout;
        let timer = tokio::time::sleep_until(deadline);
        tokio::pin!(timer);
        // One wait for the shutdown signal for the connection's life, not one per request
        // (each registers with the signal and leaves again).
        let mut watcher = shutdown.clone();
        let stopping = watcher.changed();
        tokio::pin!(stopping);
        loop {
            if self.buf.is_empty() {
                if *shutdown.borrow() {
                    return End::Closed;
                }
                loop {
                    tokio::select! {
                        biased;
                        r = self.fill() => match r {
                            Ok(n) if n > 0 => break,
                            _ => return End::Closed,
                        },
                        () = &mut timer => {
                            if Instant::now() >= deadline {
                                // The first request did not start in time, or idle too long.
                                return End::Closed;
                            }
                            timer.as_mut().reset(deadline);
                        }
                        _ = &mut stopping => return End::Closed,
                    }
                }
            }
            // The first head is due `header_timeout` after the accept, as on hyper's path.
            // Read from the clock only when a head is not complete at once.
            let mut started = first.then_some(accepted);
            let mut head_started = move || *started.get_or_insert_with(Instant::now);
            if self.buf.starts_with(b"PRI") {
                if first {
                    // HTTP/2 with prior knowledge (or junk): hyper's protocol detection decides.
                    return End::HandOver(head_started());
                }
                // Not a protocol switch in the middle of an HTTP/1.1 connection.
                return End::Closed;
            }
            first = false;
            let head = loop {
                match parse(&mut self.buf, &mut self.names, &mut self.spare, &mut self.spans, limits.max_header_fields)
                {
                    Parse::Complete(head) => break head,
                    Parse::Other => return End::HandOver(head_started()),
                    Parse::Refused(error) => return self.refuse(error, info, shared).await,
                    Parse::Rejected(head) => {
                        // Put the head back in front of what follows it, for hyper.
                        let mut all = BytesMut::with_capacity(head.len() + self.buf.len());
                        all.extend_from_slice(&head);
                        all.extend_from_slice(&self.buf);
                        self.buf = all;
                        return End::HandOver(head_started());
                    }
                    Parse::Partial if self.buf.len() > limits.max_header_bytes => {
                        // Over the limit before its end: 414 while the request line is not
                        // even complete, else 431.
                        let kind = match self.buf.contains(&b'\n') {
                            true => ErrorKind::HeadersTooLarge,
                            false => ErrorKind::UriTooLong,
                        };
                        return self.refuse(GatewayError::new(kind), info, shared).await;
                    }
                    Parse::Partial => {
                        let until = head_started() + limits.header_timeout;
                        match tokio::time::timeout_at(until, self.fill()).await {
                            Ok(Ok(n)) if n > 0 => {}
                            // A stalled or abandoned head: close without an answer.
                            _ => return End::Closed,
                        }
                    }
                }
            };
            let method_head = head.method == Method::HEAD;
            let mut req = Request::new(Body::Empty);
            *req.method_mut() = head.method;
            *req.uri_mut() = head.uri;
            *req.version_mut() = Version::HTTP_11;
            *req.headers_mut() = head.headers;
            let Some((res, id, log)) = self.handle(req, info, shared).await else { return End::Closed };
            let close = *shutdown.borrow();
            let written = self.respond(res, &id, method_head, close).await;
            log.end(self.sent, self.completion(&written));
            if written.is_err() || close {
                let _ = self.io.shutdown().await;
                return End::Closed;
            }
            deadline = Instant::now() + limits.idle_timeout;
            if deadline < timer.deadline() {
                timer.as_mut().reset(deadline);
            }
        }
    }

    /// Runs the pipeline for a request. Like hyper, watches the connection meanwhile: a
    /// client that goes away cancels its request (`None`), freeing its concurrency slots
    /// at once; bytes that arrive (a pipelined request) are kept for later.
    async fn handle(
        &mut self,
        req: Request<Body>,
        info: &Arc<ConnInfo>,
        shared: &Arc<Shared>,
    ) -> Option<(http::Response<Body>, (HeaderName, HeaderValue), Box<LogPhase>)> {
        // Pinned where it is made: a `let` and then `tokio::pin!` moved the whole future
        // (4.8 KB) once more per request.
        let mut handling = std::pin::pin!(pipeline::handle_unsent_id(req, info, shared, true));
        let mut watching = self.buf.is_empty();
        loop {
            tokio::select! {
                biased;
                res = &mut handling => return Some(res),
                r = self.fill(), if watching => match r {
                    Ok(n) if n > 0 => watching = false,
                    _ => return None,
                },
            }
        }
    }

    /// Answers a request refused before routing with the contract's answer (counted and
    /// logged by the pipeline), then closes: its head cannot be trusted to say where the
    /// next request starts. What the client still sends is read and dropped for a moment
    /// first, so that closing with unread bytes does not reset the connection before the
    /// client has read the answer.
    async fn refuse(&mut self, error: GatewayError, info: &Arc<ConnInfo>, shared: &Arc<Shared>) -> End {
        let method = self.buf[..]
            .split(|&b| b == b' ')
            .next()
            .filter(|m| m.len() <= 16)
            .and_then(|m| Method::from_bytes(m).ok())
            .unwrap_or_else(|| Method::from_bytes(b"-").unwrap_or_default());
        let (res, id, log) = pipeline::refuse(&error, method, info, shared);
        let written = self.respond(res, &id, false, true).await;
        log.end(self.sent, self.completion(&written));
        if written.is_ok() {
            let _ = self.io.shutdown().await;
            let drain = async {
                let mut left = LINGER_BYTES;
                while left > 0 {
                    self.buf.clear();
                    match self.fill().await {
                        Ok(n) if n > 0 => left = left.saturating_sub(n),
                        _ => break,
                    }
                }
            };
            let _ = tokio::time::timeout(LINGER, drain).await;
        }
        End::Closed
    }

    /// How the response just written ended, for its log record.
    fn completion(&self, written: &io::Result<()>) -> Completion {
        match (written, self.upstream_failed) {
            (Ok(()), _) => Completion::Complete,
            (Err(_), true) => Completion::UpstreamAbort,
            (Err(_), false) => Completion::ClientAbort,
        }
    }

    /// Reads more bytes into the buffer; `Ok(0)` at the end of the stream.
    async fn fill(&mut self) -> io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < READ_ROOM / 4 {
            self.buf.reserve(READ_ROOM);
        }
        self.io.read_buf(&mut self.buf).await
    }

    /// Writes the response: its head (with the request ID field `id`), then its body with
    /// the framing it calls for.
    async fn respond(
        &mut self,
        res: http::Response<Body>,
        id: &(HeaderName, HeaderValue),
        method_head: bool,
        close: bool,
    ) -> io::Result<()> {
        self.sent = 0;
        self.upstream_failed = false;
        let (parts, mut body) = res.into_parts();
        let status = parts.status;
        let out = &mut self.out;
        out.clear();
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
        out.extend_from_slice(b"\r\n");
        if status.is_informational() {
            // Neither upstream client passes 1xx on; a final answer must follow one.
            return Err(io::Error::other("informational response without a final one"));
        }
        // The fields that matter here are noted on the way, so the usual head needs no
        // map lookups. An upstream's fields kept as it sent them (none hop-by-hop) come
        // first, written as they are; then the map's (empty then).
        let mut fields = Fields { id: id.0.as_str().as_bytes(), dated: false, lengths: 0, length: None };
        if let Body::H1(b) = &body
            && let Some((head, spans)) = b.raw_fields()
        {
            for &(n0, n1, v0, v1) in spans {
                fields.write(out, &head[n0..n1], &head[v0..v1]);
            }
        }
        for (name, value) in &parts.headers {
            fields.write(out, name.as_str().as_bytes(), value.as_bytes());
        }
        let Fields { dated, lengths, length, .. } = fields;
        write_field(out, id.0.as_str().as_bytes(), id.1.as_bytes());
        if !dated {
            write_field(out, b"date", &http_date());
        }
        if close {
            write_field(out, b"connection", b"close");
        }
        // One length, written here: a value that does not parse as one is dropped and
        // the body framed by what it is.
        let length = match (lengths, length) {
            (0, _) => None,
            (1, Some(n)) => Some(n),
            _ => content_length(&parts.headers).ok().flatten(),
        };
        let declared = length.or_else(|| body.size_hint().exact());
        recycle(&mut self.spare, parts.headers);
        let bodiless = status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
        if let Some(n) = declared.filter(|_| !bodiless) {
            // HEAD keeps the length a GET would have.
            write_field(out, b"content-length", itoa::Buffer::new().format(n).as_bytes());
        }
        let framing = if bodiless || method_head {
            Framing::None
        } else if let Some(n) = declared {
            Framing::Length(n)
        } else {
            write_field(out, b"transfer-encoding", b"chunked");
            Framing::Chunked
        };
        out.extend_from_slice(b"\r\n");
        if framing == Framing::None {
            return self.io.write_all(&self.out).await;
        }
        self.send_body(&mut body, framing).await
    }

    /// Streams the body after the head in `out`; the head goes out with the first frame.
    async fn send_body(&mut self, body: &mut Body, framing: Framing) -> io::Result<()> {
        let mut left = match framing {
            Framing::Length(n) => n,
            _ => u64::MAX,
        };
        let mut pending_head = true;
        loop {
            let frame = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *body).poll_frame(cx))).await;
            if frame.is_pending() && pending_head {
                // The body is not ready yet (a stream, a long poll): the head goes now.
                pending_head = false;
                self.io.write_all(&self.out).await?;
            }
            let frame = match frame {
                Poll::Ready(f) => f,
                Poll::Pending => std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await,
            };
            let data = match frame {
                None => break,
                Some(Err(e)) => {
                    self.upstream_failed = true;
                    return Err(io::Error::other(e));
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(d) => d,
                    // Trailers are not sent on HTTP/1.1 responses.
                    Err(_) => continue,
                },
            };
            if data.is_empty() {
                continue;
            }
            if let Framing::Length(_) = framing {
                if data.len() as u64 > left {
                    // More than the declared length: the response cannot be framed.
                    self.upstream_failed = true;
                    return Err(io::Error::other("body longer than its content-length"));
                }
                left -= data.len() as u64;
            }
            // Counted as handed to the socket; a write that fails is the client's end.
            self.sent += data.len() as u64;
            let end = body.is_end_stream();
            self.write_frame(&mut pending_head, &data, framing, end).await?;
            if end {
                return self.finish(framing, left, pending_head, true).await;
            }
        }
        self.finish(framing, left, pending_head, false).await
    }

    /// Writes one body frame (with the head when it is still waiting, and the chunked
    /// terminator when it is the last).
    async fn write_frame(
        &mut self,
        pending_head: &mut bool,
        data: &Bytes,
        framing: Framing,
        last: bool,
    ) -> io::Result<()> {
        if !*pending_head {
            self.out.clear();
        }
        *pending_head = false;
        if framing == Framing::Chunked {
            let _ = write!(self.out, "{:x}\r\n", data.len());
        }
        let tail: &[u8] = match (framing, last) {
            (Framing::Chunked, true) => b"\r\n0\r\n\r\n",
            (Framing::Chunked, false) => b"\r\n",
            _ => b"",
        };
        if data.len() <= COPY_MAX {
            self.out.extend_from_slice(data);
            self.out.extend_from_slice(tail);
            return self.io.write_all(&self.out).await;
        }
        write_all_vectored(&mut self.io, &mut [IoSlice::new(&self.out), IoSlice::new(data), IoSlice::new(tail)]).await
    }

    /// After the last frame: the chunked terminator if not written yet, and a check that a
    /// declared length was met.
    async fn finish(&mut self, framing: Framing, left: u64, pending_head: bool, terminated: bool) -> io::Result<()> {
        if pending_head {
            // No data at all: the head alone (and an empty chunked body).
            if framing == Framing::Chunked {
                self.out.extend_from_slice(b"0\r\n\r\n");
            }
            self.io.write_all(&self.out).await?;
        } else if framing == Framing::Chunked && !terminated {
            self.io.write_all(b"0\r\n\r\n").await?;
        }
        if matches!(framing, Framing::Length(_)) && left > 0 {
            // Shorter than declared: the client must see the connection end.
            self.upstream_failed = true;
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "body shorter than its content-length"));
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    /// No body (HEAD, 1xx, 204, 304).
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
}

/// What the response's own fields said, noted while they are written.
struct Fields<'a> {
    /// The request ID header's name: the gateway writes its own.
    id: &'a [u8],
    /// Whether a `Date` came with them.
    dated: bool,
    /// `Content-Length` fields, and the value of the last when it is plain digits.
    lengths: u32,
    length: Option<u64>,
}

impl Fields<'_> {
    /// Writes one field, but the framing (`Content-Length`, noted; `Transfer-Encoding`),
    /// the connection's fate (`Connection`) and the request ID: this side's own business.
    fn write(&mut self, out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
        match Known::of(name) {
            Some(Known::ContentLength) => {
                self.lengths += 1;
                self.length = plain_length(value);
                return;
            }
            Some(Known::TransferEncoding | Known::Connection) => return,
            // Any name the config allows, so the general comparison.
            _ if name.len() == self.id.len() && name.eq_ignore_ascii_case(self.id) => return,
            Some(Known::Date) => self.dated = true,
            _ => {}
        }
        write_field(out, name, value);
    }
}

/// Writes every slice, however the socket splits the writes.
async fn write_all_vectored<S: AsyncWrite + Unpin>(io: &mut S, mut slices: &mut [IoSlice<'_>]) -> io::Result<()> {
    IoSlice::advance_slices(&mut slices, 0);
    while !slices.is_empty() {
        let n = io.write_vectored(slices).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut slices, n);
    }
    Ok(())
}

/// Parses a request head at the start of `buf`; a complete one this loop takes is removed
/// from the buffer.
fn parse(
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
    let (mut hosts, mut lengths) = (0, 0);
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        let takes = match Known::of(name) {
            Some(Known::ContentLength) => {
                lengths += 1;
                h.value == b"0" && lengths == 1
            }
            Some(Known::TransferEncoding | Known::Expect | Known::Upgrade) => false,
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
        if !takes {
            // hyper's, unless its framing is broken: then the contract's 400 from here.
            return framing_error(req.headers).map_or(Parse::Other, Parse::Refused);
        }
    }
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
    Parse::Complete(Head { method, uri, headers })
}

/// What is wrong with an HTTP/1.1 request's body framing (RFC 9112 section 6), if anything:
/// a `Content-Length` that is not digits, several that differ, a `Transfer-Encoding` whose
/// last coding is not `chunked`, or both fields at once (refused outright, as Envoy does:
/// the classic way to make two parsers disagree about where a request ends).
fn framing_error(fields: &[httparse::Header<'_>]) -> Option<GatewayError> {
    let bad = |m| Some(GatewayError::new(ErrorKind::BadRequest(m)));
    let (mut length, mut chunked) = (None, None);
    for h in fields {
        match Known::of(h.name.as_bytes()) {
            Some(Known::ContentLength) => {
                for v in h.value.split(|&b| b == b',') {
                    let Some(n) = crate::pipeline::parse_content_length(v.trim_ascii()) else {
                        return bad("invalid content-length");
                    };
                    if length.is_some_and(|l| l != n) {
                        return bad("conflicting content-length values");
                    }
                    length = Some(n);
                }
            }
            Some(Known::TransferEncoding) => {
                let last = h.value.rsplit(|&b| b == b',').next().unwrap_or_default().trim_ascii();
                chunked = Some(last.eq_ignore_ascii_case(b"chunked"));
            }
            _ => {}
        }
    }
    match (length, chunked) {
        (Some(_), Some(_)) => bad("both content-length and transfer-encoding"),
        (_, Some(false)) => bad("transfer-encoding must end with chunked"),
        _ => None,
    }
}

/// The number of field lines of the complete head at the start of `buf` (`None`: the head
/// is not complete yet).
fn field_lines(buf: &[u8]) -> Option<usize> {
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

thread_local! {
    /// The `Date` value for the current second (one format per second per thread).
    static DATE: std::cell::RefCell<(u64, [u8; 29])> = const { std::cell::RefCell::new((u64::MAX, [0; 29])) };
}

/// The current time as an HTTP date (`Tue, 01 Dec 2026 14:00:00 GMT`).
fn http_date() -> [u8; 29] {
    let now = SystemTime::now();
    let secs = now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != secs {
            let text = httpdate::fmt_http_date(now);
            let mut out = [b' '; 29];
            let n = text.len().min(29);
            out[..n].copy_from_slice(&text.as_bytes()[..n]);
            *d = (secs, out);
        }
        d.1
    })
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
    fn only_plain_bodiless_http11_requests_are_taken() {
        let (p, rest) = parsed("GET /a?b=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\nGET /next");
        let Parse::Complete(head) = p else { panic!("not taken") };
        assert_eq!((head.method, head.uri.to_string()), (Method::GET, "/a?b=1".to_owned()));
        assert_eq!(head.headers["host"], "x");
        assert_eq!(&rest[..], b"GET /next", "the next request stays in the buffer");
        for text in [
            "GET /a HTTP/1.0\r\n\r\n",
            "POST /a HTTP/1.1\r\nContent-Length: 1\r\n\r\nx",
            "POST /a HTTP/1.1\r\nContent-Length: 00\r\n\r\n",
            "POST /a HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
            "POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
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
    fn the_writer_keeps_its_own_fields_whatever_the_request_ids_length() {
        // IDs as long as `connection`, `date` and `content-length`, and `date` itself.
        for id in ["request-id", "x-id", "x-request-id-2", "date"] {
            let mut f = Fields { id: id.as_bytes(), dated: false, lengths: 0, length: None };
            let mut out = Vec::new();
            let upper = id.to_ascii_uppercase();
            for (n, v) in [
                ("Connection", "close"),
                ("Content-Length", "5"),
                ("Transfer-Encoding", "chunked"),
                ("Date", "d"),
                (upper.as_str(), "forged"),
                ("Set-Cookie", "a"),
                ("X-Cache", "b"),
            ] {
                f.write(&mut out, n.as_bytes(), v.as_bytes());
            }
            let date = if id == "date" { "" } else { "Date: d\r\n" };
            assert_eq!(String::from_utf8(out).unwrap(), format!("{date}Set-Cookie: a\r\nX-Cache: b\r\n"), "{id}");
            assert_eq!((f.dated, f.lengths, f.length), (id != "date", 1, Some(5)), "{id}");
        }
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
