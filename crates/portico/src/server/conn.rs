//! One client connection: HTTP/1.1 or h2c, with the listener's limits, an idle timeout
//! and a request-head timeout enforced by a per-connection watchdog.
//!
//! hyper's own `header_read_timeout` also runs while a keep-alive connection waits for its
//! next request, which would make the idle timeout meaningless; so the watchdog tracks the
//! phase of the connection itself through [`Tracked`], a transparent wrapper of the socket.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::Shared;
use crate::body::Body;
use crate::pipeline::{self, Completion, ConnInfo, LogPhase};

const IDLE: u8 = 0;
const HEAD: u8 = 1;
const ACTIVE: u8 = 2;

/// The phase of a connection, shared between the socket wrapper, the service and the
/// watchdog. Times are milliseconds since `epoch`.
#[derive(Debug)]
struct Phase {
    epoch: Instant,
    state: AtomicU8,
    in_flight: AtomicU32,
    since_ms: AtomicU64,
    h2: AtomicU8,
}

impl Phase {
    fn new(epoch: Instant) -> Self {
        Self {
            epoch,
            state: AtomicU8::new(IDLE),
            in_flight: AtomicU32::new(0),
            since_ms: AtomicU64::new(0),
            h2: AtomicU8::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.state.store(ACTIVE, Ordering::Relaxed);
    }

    fn request_finished(&self) {
        if self.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.since_ms.store(self.now_ms(), Ordering::Relaxed);
            self.state.store(IDLE, Ordering::Relaxed);
        }
    }
}

/// A request in flight on a connection, from its head to the end of its response body
/// (or until either is dropped): a long streamed response is not "idle".
struct InFlight(Arc<Phase>);

impl InFlight {
    fn start(phase: &Arc<Phase>) -> Self {
        phase.request_started();
        Self(phase.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

/// A response body that ends its request's [`InFlight`] when it ends, and writes its log
/// record then (boxed: hyper moves the body around, and the record is large), with the
/// bytes it carried and how it ended.
pub(crate) struct TrackedBody {
    inner: Body,
    in_flight: Option<InFlight>,
    log: Option<Box<LogPhase>>,
    sent: u64,
}

impl TrackedBody {
    fn end(&mut self, how: Completion) {
        self.in_flight = None;
        if let Some(log) = self.log.take() {
            log.end(self.sent, how);
        }
    }
}

impl Drop for TrackedBody {
    fn drop(&mut self) {
        // Dropped before its end: hyper stopped sending it (the client went away).
        self.end(Completion::ClientAbort);
    }
}

impl http_body::Body for TrackedBody {
    type Data = bytes::Bytes;
    type Error = crate::body::BoxError;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let res = http_body::Body::poll_frame(Pin::new(&mut this.inner), cx);
        match &res {
            Poll::Ready(Some(Ok(frame))) => {
                this.sent += frame.data_ref().map_or(0, |d| d.len() as u64);
                // hyper stops polling a body that says it has ended.
                if http_body::Body::is_end_stream(&this.inner) {
                    this.end(Completion::Complete);
                }
            }
            Poll::Ready(None) => this.end(Completion::Complete),
            Poll::Ready(Some(Err(_))) => this.end(Completion::UpstreamAbort),
            Poll::Pending => {}
        }
        res
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        http_body::Body::is_end_stream(&self.inner)
    }

    #[inline]
    fn size_hint(&self) -> http_body::SizeHint {
        http_body::Body::size_hint(&self.inner)
    }
}

/// A socket (or TLS stream) that reports the first bytes of each new request head to its
/// [`Phase`]. Generic, so the plain path stays a `TcpStream` without dynamic dispatch.
/// Reads start with `prefix`: bytes the lean loop had read before it handed over.
struct Tracked<S> {
    inner: S,
    phase: Arc<Phase>,
    first: bool,
    prefix: bytes::Bytes,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let res = if this.prefix.is_empty() {
            Pin::new(&mut this.inner).poll_read(cx, buf)
        } else {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
            Poll::Ready(Ok(()))
        };
        if buf.filled().len() > before {
            if this.first {
                this.first = false;
                if buf.filled()[before..].starts_with(b"PRI * HTTP/2") {
                    this.phase.h2.store(1, Ordering::Relaxed);
                }
            }
            if this.phase.state.load(Ordering::Relaxed) == IDLE {
                this.phase.since_ms.store(this.phase.now_ms(), Ordering::Relaxed);
                this.phase.state.store(HEAD, Ordering::Relaxed);
            }
        }
        res
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// The least header list size an HTTP/2 connection accepts before h2 answers by itself.
const H2_HEADER_LIST_FLOOR: usize = 64 * 1024;

/// Builds the protocol settings of a listener, for both protocols: the caller restricts
/// it to one (`http1_only`, `http2_only`; hyper-util allows only one such call).
pub(crate) fn builder(info: &ConnInfo) -> auto::Builder<TokioExecutor> {
    let l = &info.listener;
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .keep_alive(true)
        // hyper answers 431 itself past this; below it the pipeline answers a JSON 431.
        .max_buf_size((l.max_header_bytes + 8192).max(8192));
    // hyper parses up to 100 fields on the stack (any setting moves them to the heap, for
    // every request); under that, the pipeline's check answers the limit with the JSON 431.
    // A limit above 100 is hyper's to enforce too, one field further.
    if l.max_header_fields > 100 {
        b.http1().max_headers(l.max_header_fields + 1);
    }
    // h2 answers a bare 431 itself past its header list limit. Set well above the
    // listener's, so that the pipeline's check answers the usual oversized head with the
    // contract's JSON 431 (counted and logged); the h2 limit stays as the bound on what one
    // stream may make the connection hold while its header block is decoded.
    let h2_list = (l.max_header_bytes.saturating_mul(4)).max(H2_HEADER_LIST_FLOOR);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(l.max_concurrent_streams)
        .max_header_list_size(u32::try_from(h2_list).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    b
}

/// Where hyper takes a connection up: at its start, or from the lean loop (server/lean.rs)
/// with the bytes that loop read and did not use.
pub(crate) struct Start {
    /// When the first request head began: it is due `header_timeout` after this.
    pub(crate) head_started: Instant,
    /// Bytes read from the connection, not yet used.
    pub(crate) prefix: bytes::Bytes,
}

impl Start {
    /// A connection just accepted.
    pub(crate) fn now() -> Self {
        Start { head_started: Instant::now(), prefix: bytes::Bytes::new() }
    }
}

/// Serves one connection until it closes, is timed out, or the gateway shuts down.
pub(crate) async fn serve<S>(
    stream: S,
    info: Arc<ConnInfo>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
    start: Start,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let phase = Arc::new(Phase::new(start.head_started));
    phase.since_ms.store(0, Ordering::Relaxed);
    // A new connection counts as receiving a head: the client must start promptly.
    phase.state.store(HEAD, Ordering::Relaxed);
    let io = TokioIo::new(Tracked { inner: stream, phase: phase.clone(), first: true, prefix: start.prefix });

    let head_ms = info.listener.header_timeout.as_millis() as u64;
    let idle_ms = info.listener.idle_timeout.as_millis() as u64;
    let svc_phase = phase.clone();
    let service = service_fn(move |req| {
        let info = info.clone();
        let shared = shared.clone();
        let phase = svc_phase.clone();
        async move {
            let in_flight = InFlight::start(&phase);
            let head = req.method() == http::Method::HEAD;
            let (res, log) = pipeline::handle(req.map(Body::Incoming), &info, &shared).await;
            // No body will be polled for these: the exchange ends with the head.
            let log = match head || matches!(res.status().as_u16(), 204 | 304) {
                true => {
                    log.end(0, Completion::Complete);
                    None
                }
                false => Some(log),
            };
            Ok::<_, std::convert::Infallible>(res.map(|inner| TrackedBody {
                inner,
                in_flight: Some(in_flight),
                log,
                sent: 0,
            }))
        }
    });

    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    let mut closing = false;
    loop {
        let deadline = next_deadline(&phase, head_ms, idle_ms);
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::trace!(error = %e, "connection ended with an error");
                }
                return;
            }
            changed = shutdown.changed(), if !closing => {
                let _ = changed;
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            () = tokio::time::sleep_until(deadline) => {
                let now = phase.now_ms();
                let since = phase.since_ms.load(Ordering::Relaxed);
                match phase.state.load(Ordering::Relaxed) {
                    HEAD if phase.h2.load(Ordering::Relaxed) == 0 && now.saturating_sub(since) >= head_ms => {
                        // Slow or stalled request head: close without ceremony.
                        tracing::debug!("request head timeout");
                        return;
                    }
                    IDLE | HEAD if !closing && now.saturating_sub(since) >= idle_ms => {
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    }
                    _ => {}
                }
            }
        }
    }
}

/// When the watchdog should look next.
fn next_deadline(phase: &Phase, head_ms: u64, idle_ms: u64) -> Instant {
    let since = phase.since_ms.load(Ordering::Relaxed);
    let wait = match phase.state.load(Ordering::Relaxed) {
        HEAD if phase.h2.load(Ordering::Relaxed) == 0 => head_ms.min(idle_ms),
        IDLE | HEAD => idle_ms,
        // A request is in flight: nothing to time here; look again later.
        _ => return Instant::now() + Duration::from_millis(idle_ms.max(1000)),
    };
    phase.epoch + Duration::from_millis(since + wait)
}
