//! A lean HTTP/1.1 server loop for plain listeners and TLS connections that chose
//! HTTP/1.1: requests, with or without a body, are parsed (proto/h1/), handled and answered
//! by the connection's own task; the first request it does not take hands the connection
//! to hyper for the rest of its life, with the bytes already read.
//!
//! Written here rather than left to hyper for the same reason as the upstream client
//! (upstream/h1.rs): on a proxy's hot path hyper's per-message machinery (dispatcher state,
//! body channels, encoders) costs more than the proxying itself; measured in
//! docs/benchmarks.md. Parsing is httparse, hyper's own parser.
//!
//! What it takes is decided in one place, `proto::h1::request::parse`: HTTP/1.1 and
//! HTTP/1.0 requests in origin form (`/path?query`) whose body, if any, is framed by one
//! plain `Content-Length` or by `Transfer-Encoding: chunked` alone, with no `Upgrade` and
//! no `Connection: upgrade`. `Expect: 100-continue` is answered here when the handler
//! first reads the body; `Connection: close` and HTTP/1.0 (keep-alive only when asked)
//! end the connection after the answer, and an HTTP/1.0 answer of unknown length is
//! delimited by the close, never chunked. Every head that does not parse, that the `http`
//! types refuse, with broken framing or over the listener's limits is refused here with
//! the contract's JSON answer. What is left goes to hyper for that one request, after
//! which the connection closes (so no later request meets hyper's bare error answers):
//! tunnels (`CONNECT`, upgrades), targets that are not a path (absolute and asterisk
//! form), sound framing this loop does not forward (a list of equal lengths, codings before
//! `chunked`); and h2c prior knowledge, for the connection's life. A body arrives whole
//! with its head (the usual small upload: handed over in memory) or streams through a
//! one-piece channel as the handler reads it; a body left unread closes the connection
//! after the answer.
//!
//! Timeouts match the hyper path: the first request must start within `header_timeout`
//! of the accept, a head must complete within `header_timeout` of its first byte (else
//! the connection closes without an answer: slowloris), and a connection idle for
//! `idle_timeout` between requests closes. At shutdown an idle connection closes at once
//! and a busy one after its response, which carries `connection: close`.

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Version};
use http_body::Body as _;
use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::Shared;
use crate::body::{Body, ClientBodyError, Piece, Streamed};
use crate::error::{ErrorKind, GatewayError};
use crate::pipeline::{self, Completion, ConnInfo, LogPhase};
use crate::proto::h1::body::{Decoded, Decoder, Framing};
use crate::proto::h1::encode::{COPY_MAX, Fields, encode_chunk_size, http_date, write_all_vectored, write_field};
use crate::proto::h1::fields::{NameCache, Span, recycle};
use crate::proto::h1::length::content_length;
use crate::proto::h1::request::{Parse, parse};

/// Room made in the buffer before a read.
const READ_ROOM: usize = 8 * 1024;
/// Room made in the buffer before reading a request body's bytes.
const BODY_ROOM: usize = 32 * 1024;
/// After refusing a head, how long and how much of what the client still sends is read
/// and dropped before the connection closes.
const LINGER: std::time::Duration = std::time::Duration::from_millis(500);
const LINGER_BYTES: usize = 1024 * 1024;

/// Serves an HTTP/1 connection (plain, or TLS without h2): the lean loop while it can,
/// then hyper.
pub(crate) async fn serve<S>(
    io: S,
    info: Arc<ConnInfo>,
    (builder, http1_once): (Arc<auto::Builder<TokioExecutor>>, Arc<auto::Builder<TokioExecutor>>),
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
        unread_body: false,
        must_close: false,
    };
    if let End::HandOver(head_started, once) = conn.run(&info, &shared, shutdown.clone()).await {
        let start = super::conn::Start { head_started, prefix: conn.buf.freeze() };
        let builder = if once { http1_once } else { builder };
        super::conn::serve(conn.io, info, builder, shared, shutdown, start).await;
    }
}

/// How the lean loop ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// The connection is finished (closed, timed out, failed).
    Closed,
    /// The next request (whose bytes are in the buffer, begun at this time) is for hyper:
    /// that one HTTP/1 request only (`true`), or the connection (h2c prior knowledge).
    HandOver(Instant, bool),
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
    /// Whether the current request's body was not read to its end (the handler answered
    /// without it, or it was broken): the connection closes after the response.
    unread_body: bool,
    /// The response just written is delimited by the connection's close (HTTP/1.0).
    must_close: bool,
}

/// The lean loop's side of a request body it streams to the handler: the decoder that
/// finds the body's bytes in the connection's buffer, and the channel they go through.
struct Pump {
    decoder: Decoder,
    tx: Option<mpsc::Sender<Piece>>,
    /// A piece decoded and waiting for room in the channel.
    pending: Option<Piece>,
    /// `Expect: 100-continue` not answered yet: fires when the handler first reads the
    /// body (a sender dropped: the body was let go unread, and no `100` is due).
    wanted: Option<oneshot::Receiver<()>>,
}

/// The interim answer to `Expect: 100-continue`.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Waits until the handler first reads the body: `true`, or `false` when it let go of the
/// body unread.
async fn wanted(w: &mut Option<oneshot::Receiver<()>>) -> bool {
    match w {
        Some(w) => w.await.is_ok(),
        None => false,
    }
}

/// Sends a piece of a body once the channel has room; whether the body goes on (not
/// when the piece was its failure, or the handler let go of the body).
async fn send(tx: &Option<mpsc::Sender<Piece>>, piece: Option<Piece>) -> bool {
    let (Some(tx), Some(piece)) = (tx, piece) else { return false };
    let failed = piece.is_err();
    tx.send(piece).await.is_ok() && !failed
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
                    return End::HandOver(head_started(), false);
                }
                // Not a protocol switch in the middle of an HTTP/1.1 connection.
                return End::Closed;
            }
            first = false;
            let head = loop {
                match parse(&mut self.buf, &mut self.names, &mut self.spare, &mut self.spans, limits.max_header_fields)
                {
                    Parse::Complete(head) => break head,
                    // A tunnel keeps hyper's connection; anything else is one request.
                    Parse::Other { tunnel } => return End::HandOver(head_started(), !tunnel),
                    Parse::Refused(error) => return self.refuse(error, info, shared).await,
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
            let (http10, asks_close) = (head.http10, head.close);
            let (body, pump) = self.request_body(head.body, head.expect_continue);
            let mut req = Request::new(body);
            *req.method_mut() = head.method;
            *req.uri_mut() = head.uri;
            *req.version_mut() = if http10 { Version::HTTP_10 } else { Version::HTTP_11 };
            *req.headers_mut() = head.headers;
            let Some((res, log)) = self.handle(req, info, shared, pump).await else { return End::Closed };
            // A body not read to its end leaves no way to find the next request.
            let close = asks_close || *shutdown.borrow() || self.unread_body;
            let written = self.respond(res, log.request_id_field(), method_head, close, http10).await;
            log.end(self.sent, self.completion(&written));
            if written.is_err() || close || self.must_close {
                let _ = self.io.shutdown().await;
                if written.is_ok() && self.unread_body {
                    self.linger().await;
                }
                return End::Closed;
            }
            deadline = Instant::now() + limits.idle_timeout;
            if deadline < timer.deadline() {
                timer.as_mut().reset(deadline);
            }
        }
    }

    /// The request's body: none; the whole of it when it came with the head (the usual
    /// small upload: no channel, no task wake-ups); else a stream that [`Lean::handle`]
    /// feeds from the connection as the handler reads it.
    /// With `expect_continue`, `100 Continue` is sent when the handler first reads the body,
    /// unless some of it has arrived already (RFC 9110 section 10.1.1): a request refused
    /// before its body is read (401, 413) never makes the client send it.
    fn request_body(&mut self, framing: Option<Framing>, expect_continue: bool) -> (Body, Option<Box<Pump>>) {
        let Some(framing) = framing else { return (Body::Empty, None) };
        if let Framing::Length(n) = framing
            && let Ok(n) = usize::try_from(n)
            && n <= self.buf.len()
        {
            return (Body::full(self.buf.split_to(n).freeze()), None);
        }
        let (tx, rx) = mpsc::channel(1);
        let length = match framing {
            Framing::Length(n) => Some(n),
            _ => None,
        };
        let mut body = Streamed::new(rx, length);
        let mut wanted = None;
        if expect_continue && self.buf.is_empty() {
            let (on_read, read) = oneshot::channel();
            body = body.on_first_read(on_read);
            wanted = Some(read);
        }
        let pump = Box::new(Pump { decoder: Decoder::new(framing), tx: Some(tx), pending: None, wanted });
        (Body::Streamed(Box::new(body)), Some(pump))
    }

    /// Runs the pipeline for a request, feeding its body (`pump`) from the connection as
    /// the handler reads it. Like hyper, watches the connection meanwhile: a client that
    /// goes away while nothing is read from it cancels its request (`None`), freeing its
    /// concurrency slots at once; one that goes away in the middle of its body makes the
    /// body fail as the client's doing; bytes that arrive after the request (a pipelined
    /// one) are kept for later.
    async fn handle(
        &mut self,
        req: Request<Body>,
        info: &Arc<ConnInfo>,
        shared: &Arc<Shared>,
        pump: Option<Box<Pump>>,
    ) -> Option<(http::Response<Body>, Box<LogPhase>)> {
        // Pinned where it is made: a `let` and then `tokio::pin!` moved the whole future
        // (4.8 KB) once more per request.
        let mut handling = std::pin::pin!(pipeline::handle_unsent_id(req, info, shared, true));
        if let Some(pump) = pump {
            return self.feed(handling, pump).await;
        }
        self.unread_body = false;
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

    /// [`Lean::handle`] for a request whose body streams: its pieces go to the handler as
    /// it reads them, through `pump`.
    async fn feed<F: Future>(&mut self, mut handling: Pin<&mut F>, mut pump: Box<Pump>) -> Option<F::Output> {
        self.unread_body = true;
        let mut watching = false;
        loop {
            if pump.tx.is_some() && pump.pending.is_none() {
                match pump.decoder.decode(&mut self.buf) {
                    Ok(Decoded::Data(data)) => pump.pending = Some(Ok(data)),
                    Ok(Decoded::End) => {
                        // Complete: the channel closes behind the last piece.
                        pump.tx = None;
                        self.unread_body = false;
                        watching = self.buf.is_empty();
                    }
                    Ok(Decoded::Need) => {}
                    Err(_) => pump.pending = Some(Err(ClientBodyError::Malformed)),
                }
            }
            let sending = pump.pending.is_some();
            let reading = pump.tx.is_some() && !sending;
            let waiting_read = pump.wanted.is_some();
            tokio::select! {
                biased;
                res = &mut handling => return Some(res),
                read = wanted(&mut pump.wanted), if waiting_read => {
                    pump.wanted = None;
                    if read && self.buf.is_empty() && self.io.write_all(CONTINUE).await.is_err() {
                        pump.pending = Some(Err(ClientBodyError::Aborted));
                    }
                },
                // The piece moves into the send: only a return drops this future unfinished.
                more = send(&pump.tx, pump.pending.take()), if sending => if !more {
                    pump.tx = None;
                },
                r = self.fill_body(), if reading || watching => match r {
                    Ok(n) if n > 0 => watching = false,
                    _ if reading => pump.pending = Some(Err(ClientBodyError::Aborted)),
                    _ => return None,
                },
            }
        }
    }

    /// Reads whatever the client still sends and drops it, for a moment, after the
    /// connection was shut down for writing: closing with unread bytes would reset the
    /// connection before the client has read the answer.
    async fn linger(&mut self) {
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
        let (res, log) = pipeline::refuse(&error, method, info, shared);
        let written = self.respond(res, log.request_id_field(), false, true, false).await;
        log.end(self.sent, self.completion(&written));
        if written.is_ok() {
            let _ = self.io.shutdown().await;
            self.linger().await;
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

    /// [`Lean::fill`] with room for a request body's bytes.
    async fn fill_body(&mut self) -> io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < BODY_ROOM / 4 {
            self.buf.reserve(BODY_ROOM);
        }
        self.io.read_buf(&mut self.buf).await
    }

    /// Writes the response: its head (with the request ID field `id`), then its body with
    /// the framing it calls for.
    async fn respond(
        &mut self,
        res: http::Response<Body>,
        id: (&HeaderName, &HeaderValue),
        method_head: bool,
        close: bool,
        http10: bool,
    ) -> io::Result<()> {
        self.sent = 0;
        self.upstream_failed = false;
        self.must_close = false;
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
            OutFraming::None
        } else if let Some(n) = declared {
            OutFraming::Length(n)
        } else if http10 {
            // An HTTP/1.0 client reads no chunked coding: the close ends the body.
            self.must_close = true;
            OutFraming::Close
        } else {
            write_field(out, b"transfer-encoding", b"chunked");
            OutFraming::Chunked
        };
        if close || self.must_close {
            write_field(out, b"connection", b"close");
        } else if http10 {
            write_field(out, b"connection", b"keep-alive");
        }
        out.extend_from_slice(b"\r\n");
        if framing == OutFraming::None {
            return self.io.write_all(&self.out).await;
        }
        self.send_body(&mut body, framing).await
    }

    /// Streams the body after the head in `out`; the head goes out with the first frame.
    async fn send_body(&mut self, body: &mut Body, framing: OutFraming) -> io::Result<()> {
        let mut left = match framing {
            OutFraming::Length(n) => n,
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
            if let OutFraming::Length(_) = framing {
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
        framing: OutFraming,
        last: bool,
    ) -> io::Result<()> {
        if !*pending_head {
            self.out.clear();
        }
        *pending_head = false;
        if framing == OutFraming::Chunked {
            encode_chunk_size(&mut self.out, data.len());
        }
        let tail: &[u8] = match (framing, last) {
            (OutFraming::Chunked, true) => b"\r\n0\r\n\r\n",
            (OutFraming::Chunked, false) => b"\r\n",
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
    async fn finish(&mut self, framing: OutFraming, left: u64, pending_head: bool, terminated: bool) -> io::Result<()> {
        if pending_head {
            // No data at all: the head alone (and an empty chunked body).
            if framing == OutFraming::Chunked {
                self.out.extend_from_slice(b"0\r\n\r\n");
            }
            self.io.write_all(&self.out).await?;
        } else if framing == OutFraming::Chunked && !terminated {
            self.io.write_all(b"0\r\n\r\n").await?;
        }
        if matches!(framing, OutFraming::Length(_)) && left > 0 {
            // Shorter than declared: the client must see the connection end.
            self.upstream_failed = true;
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "body shorter than its content-length"));
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OutFraming {
    /// No body (HEAD, 1xx, 204, 304).
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the connection closes (an HTTP/1.0 client, a body of unknown length).
    Close,
}
