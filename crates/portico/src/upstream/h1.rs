//! A lean HTTP/1.1 client for plain-TCP upstreams whose targets are IP addresses, with or
//! without a request body. Everything else (upgrades, TLS, HTTP/2, targets named by host
//! name) goes through hyper's client; [`super::Upstream::send`] is where that is decided.
//!
//! Written here rather than taken from hyper because of what hyper-util's pooled client
//! costs per request on a proxy's hot path: every connection runs in a task of its own,
//! each request and each response crosses a channel to it (a task wake-up each way), and
//! the pool does its own bookkeeping on every checkout. Measured on this machine, hyper's
//! server and client with no gateway logic spend 1.2-1.3 times nginx's CPU per proxied
//! request, while a bytes-level loop on the same Tokio runtime spends 0.9 times
//! (docs/benchmarks.md). Here the request's own task writes the head and reads the answer
//! on a connection it holds for the exchange; the response body reads from the socket as
//! the client side polls it and gives the connection back to the pool when it ends.
//! Parsing is httparse, the parser hyper itself uses.
//!
//! What it guarantees: a response is framed by RFC 9112 section 6.3 (HEAD, 1xx, 204 and 304
//! have no body; `Transfer-Encoding` wins over `Content-Length`, which is then removed and
//! the connection not reused; differing `Content-Length` values are an error; otherwise
//! the body runs to the end of the connection); a connection goes back to the pool only
//! after a complete HTTP/1.1 response without `Connection: close` and with nothing left
//! over; a pooled connection the upstream closed while idle is noticed before use, and a
//! request that met one closing anyway (the keep-alive race: the upstream closed it as
//! the request went out, nothing came back) is sent once more on a new connection when
//! that is safe: its head could not be written, or its method is GET, HEAD, OPTIONS or
//! TRACE (Go's HTTP client draws the same line). A new connection that fails is an error.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method, Response, Version};
use http_body::{Frame, SizeHint};
use parking_lot::{Mutex, MutexGuard};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::Error;
use crate::body::{Body, BoxError};
use crate::proto::h1::body::{Decoded, Decoder, Framing};
use crate::proto::h1::encode::{COPY_MAX, encode_chunk_size, write_all_vectored};
pub use crate::proto::h1::encode::{Outgoing, encode_head};
use crate::proto::h1::fields::{NameCache, Span, fill_header_map};
use crate::proto::h1::response::{Parsed, parse};

/// The largest response head read (hyper's default buffer limit).
const MAX_HEAD: usize = 8192 + 4096 * 100;
/// Room made in the buffer before reading a response head.
const HEAD_READ: usize = 8 * 1024;
/// Room made in the buffer before reading body bytes.
const BODY_READ: usize = 32 * 1024;
/// How many closed pooled connections one request may meet before it connects anew.
const MAX_STALE: u32 = 1;

/// How the pool of an upstream behaves.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// Idle connections kept per target (0: none).
    pub max_idle: usize,
    /// An idle connection is closed after this long.
    pub idle_timeout: Duration,
    /// How long a new connection may take.
    pub connect_timeout: Duration,
}

/// One keep-alive connection and the bytes read from it but not yet used.
#[derive(Debug)]
struct Conn {
    io: TcpStream,
    buf: BytesMut,
    /// The request head being sent, kept for the next request's.
    out: Vec<u8>,
    /// The pool's settings as of the last request.
    settings: Settings,
    /// The last response head, while its fields are kept as sent (see [`Parsed::raw`]).
    head: Bytes,
    /// Where those fields lie in `head`.
    fields: Vec<Span>,
    /// The header names of the last response, to reuse.
    names: NameCache,
    /// The deadline of the request on this connection, one timer for the connection's
    /// life: moving it to a later deadline is one atomic update, where a timer per
    /// request is registered with the runtime's timer wheel and removed again.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Conn {
    /// Connects within the connect timeout, and before `deadline` (else
    /// [`Error::Timeout`]). Boxed for its life: the response body that holds it while the
    /// body streams is then small enough to need no allocation of its own.
    async fn connect(addr: SocketAddr, settings: &Settings, deadline: Instant) -> Result<Box<Conn>, Error> {
        let timeout = settings.connect_timeout;
        let connect_by = Instant::now() + timeout;
        let io = match tokio::time::timeout_at(connect_by.min(deadline), TcpStream::connect(addr)).await {
            Err(_) if deadline < connect_by => return Err(Error::Timeout),
            Err(_) => return Err(Error::ConnectTimeout),
            Ok(Err(e)) => return Err(Error::Connect(e)),
            Ok(Ok(io)) => io,
        };
        io.set_nodelay(true).map_err(Error::Connect)?;
        // As hyper's connector was set up: keep-alive probes after a minute of silence.
        let keepalive = socket2::TcpKeepalive::new().with_time(Duration::from_secs(60));
        let _ = socket2::SockRef::from(&io).set_tcp_keepalive(&keepalive);
        Ok(Box::new(Conn {
            io,
            buf: BytesMut::with_capacity(HEAD_READ),
            out: Vec::new(),
            settings: *settings,
            head: Bytes::new(),
            fields: Vec::new(),
            names: NameCache::default(),
            timer: None,
        }))
    }

    /// Whether an idle connection is still usable: the upstream has neither closed it nor
    /// sent anything unasked. Costs no system call unless the socket was reported readable.
    fn is_open(&mut self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.io.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Reads more bytes into the buffer; `Ok(0)` at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>, room: usize) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < room / 4 {
            self.buf.reserve(room);
        }
        // `read_buf` is cancel safe: a pending read consumes nothing, so a new future per
        // poll loses no bytes.
        let read = self.io.read_buf(&mut self.buf);
        std::pin::pin!(read).poll(cx)
    }

    /// [`Conn::exchange`] before `deadline`.
    async fn exchange_by(
        &mut self,
        method_head: bool,
        deadline: Instant,
        spare: &mut HeaderMap,
        payload: &mut Payload,
    ) -> Result<Parsed, Failure> {
        let mut timer = match self.timer.take() {
            Some(mut t) => {
                t.as_mut().reset(deadline);
                t
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        };
        let res = tokio::select! {
            biased;
            res = self.exchange(method_head, spare, payload) => res,
            () = timer.as_mut() => Err(Failure::Other(Error::Timeout)),
        };
        self.timer = Some(timer);
        res
    }

    /// Writes the request head in `out` and its body, and reads the final response head,
    /// into `spare`. A streamed body's first piece is awaited before anything is written,
    /// so that a body that fails at once (a malformed chunked coding) sends the upstream
    /// nothing, and the head and that piece go out in one write. The rest of the body is
    /// sent while the response is read: an upstream may answer before it has read the
    /// whole body (a 413, a 401), and that answer is the one to pass on.
    async fn exchange(
        &mut self,
        method_head: bool,
        spare: &mut HeaderMap,
        payload: &mut Payload,
    ) -> Result<Parsed, Failure> {
        // The usual requests, no body or a small one in memory, inline; the rest in a
        // future of its own, boxed: its state (a stream sent while the answer is read)
        // would otherwise make every request's future larger, and futures are moved.
        let small = match payload {
            Payload::None => None,
            Payload::Bytes(b) if b.len() <= COPY_MAX => Some(b),
            _ => return Box::pin(self.exchange_streaming(method_head, spare, payload)).await,
        };
        let head = self.out.len();
        if let Some(b) = small {
            self.out.extend_from_slice(b);
        }
        let written = self.io.write_all(&self.out).await;
        self.out.truncate(head);
        if let Err(e) = written {
            return Err(Failure::Stale { error: e, unwritten: true });
        }
        read_head(&mut self.io, &mut self.buf, method_head, &mut self.names, spare, &mut self.fields).await
    }

    /// [`Conn::exchange`] for a body that is not small and in memory.
    async fn exchange_streaming(
        &mut self,
        method_head: bool,
        spare: &mut HeaderMap,
        payload: &mut Payload,
    ) -> Result<Parsed, Failure> {
        let Conn { io, buf, out, names, fields, .. } = self;
        let head = out.len();
        if let Payload::Stream(st) = payload
            && !st.touched
            && st.first.is_none()
            && !st.ended
        {
            match first_data(&mut st.body).await {
                Ok(Some(data)) => st.first = Some(data),
                Ok(None) => st.ended = true,
                Err(e) => return Err(Failure::Other(Error::Body(e))),
            }
        }
        // What goes out with the head: a small body, or a stream's first piece (framed).
        let mut rest = None;
        match payload {
            Payload::None => {}
            Payload::Bytes(b) if b.len() <= COPY_MAX => out.extend_from_slice(b),
            Payload::Bytes(b) => rest = Some(Body::full(b.clone())),
            Payload::Stream(st) => {
                let chunked = st.chunked;
                if let Some(data) = st.first.as_ref().filter(|d| d.len() <= COPY_MAX) {
                    if chunked {
                        encode_chunk_size(out, data.len());
                    }
                    out.extend_from_slice(data);
                    if chunked {
                        out.extend_from_slice(b"\r\n");
                    }
                } else if let Some(data) = st.first.clone() {
                    rest = Some(Body::full(data));
                }
                if st.ended && chunked && rest.is_none() {
                    out.extend_from_slice(b"0\r\n\r\n");
                }
            }
        }
        let written = io.write_all(out).await;
        out.truncate(head);
        if let Err(e) = written {
            return Err(Failure::Stale { error: e, unwritten: true });
        }
        // From here the body cannot be sent again unless it is in memory. What is left of
        // it: a piece too large to copy next to the head, and the rest of a stream.
        let (first, mut body, chunked) = match payload {
            Payload::Stream(st) => {
                st.touched = true;
                let big = st.first.take().filter(|d| d.len() > COPY_MAX);
                let body = if st.ended { Body::Empty } else { std::mem::take(&mut st.body) };
                (big, body, st.chunked)
            }
            _ => (None, rest.unwrap_or_default(), false),
        };
        if first.is_none() && matches!(body, Body::Empty) {
            return read_head(io, buf, method_head, names, spare, fields).await;
        }
        let (mut rd, mut wr) = io.split();
        let mut sending = std::pin::pin!(send_body(&mut wr, first, &mut body, chunked, out));
        let mut receiving = std::pin::pin!(read_head(&mut rd, buf, method_head, names, spare, fields));
        let (mut sent, mut write_failed) = (false, None);
        loop {
            tokio::select! {
                biased;
                res = &mut receiving => {
                    return match (res, write_failed) {
                        // Answered before the whole body went: the connection cannot be
                        // used again.
                        (Ok(mut parsed), _) => {
                            parsed.reusable &= sent;
                            Ok(parsed)
                        }
                        (Err(_), Some(e)) => Err(Failure::Other(Error::Io(e))),
                        (Err(e), None) => Err(e),
                    };
                }
                r = &mut sending, if !sent && write_failed.is_none() => match r {
                    Ok(()) => sent = true,
                    Err(SendError::Body(e)) => return Err(Failure::Other(Error::Body(e))),
                    // Still read: the upstream may have answered and closed.
                    Err(SendError::Io(e)) => write_failed = Some(e),
                },
            }
        }
    }
}

/// The first data of a body (frames without data skipped); `None` when it has none.
async fn first_data(body: &mut Body) -> Result<Option<Bytes>, BoxError> {
    use http_body_util::BodyExt as _;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data()
            && !data.is_empty()
        {
            return Ok(Some(data));
        }
    }
    Ok(None)
}

/// A request body on its way to [`Conn::exchange`].
enum Payload {
    None,
    /// In memory: written with the head, and sent again as it is when a stale connection
    /// makes the request go once more.
    Bytes(Bytes),
    /// Streamed from the client, in the chunked coding unless its length is declared.
    /// `first` is its first piece, read before the head is written; `ended` once it has
    /// no more; `touched` once it went out and cannot be sent again.
    /// Boxed: only requests with such a body pay for its room.
    Stream(Box<StreamState>),
}

/// The state of a streamed request body (see [`Payload::Stream`]).
struct StreamState {
    body: Body,
    first: Option<Bytes>,
    ended: bool,
    chunked: bool,
    touched: bool,
}

/// Why sending a request body stopped.
enum SendError {
    /// The connection failed.
    Io(io::Error),
    /// The body itself failed.
    Body(BoxError),
}

/// Sends (the rest of) a request body, `first` and then `body`: as it comes when its
/// length is declared (the head carries it, and `body` knows what is left of it), else in
/// the chunked coding. `scratch` is for the chunk framing.
async fn send_body<W: AsyncWrite + Unpin>(
    wr: &mut W,
    mut first: Option<Bytes>,
    body: &mut Body,
    chunked: bool,
    scratch: &mut Vec<u8>,
) -> Result<(), SendError> {
    use http_body_util::BodyExt as _;
    let mut left = match chunked {
        true => None,
        false => http_body::Body::size_hint(body).exact().map(|n| n + first.as_ref().map_or(0, |d| d.len() as u64)),
    };
    loop {
        let data = match first.take() {
            Some(data) => data,
            None => match body.frame().await {
                None => break,
                Some(frame) => match frame.map_err(SendError::Body)?.into_data() {
                    Ok(data) => data,
                    Err(_) => continue,
                },
            },
        };
        if data.is_empty() {
            continue;
        }
        if let Some(left) = &mut left {
            *left = left.checked_sub(data.len() as u64).ok_or_else(|| SendError::Body(too_long()))?;
        }
        if chunked {
            scratch.clear();
            encode_chunk_size(scratch, data.len());
            let mut slices = [io::IoSlice::new(scratch), io::IoSlice::new(&data), io::IoSlice::new(b"\r\n")];
            write_all_vectored(wr, &mut slices).await.map_err(SendError::Io)?;
        } else {
            wr.write_all(&data).await.map_err(SendError::Io)?;
        }
    }
    if left.is_some_and(|l| l > 0) {
        return Err(SendError::Body("request body shorter than its content-length".into()));
    }
    if chunked {
        wr.write_all(b"0\r\n\r\n").await.map_err(SendError::Io)?;
    }
    Ok(())
}

fn too_long() -> BoxError {
    "request body longer than its content-length".into()
}

/// Reads the final response head from `rd` into `spare`.
async fn read_head<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    method_head: bool,
    names: &mut NameCache,
    spare: &mut HeaderMap,
    fields: &mut Vec<Span>,
) -> Result<Parsed, Failure> {
    let mut received = 0;
    loop {
        if !buf.is_empty() {
            match parse(buf, method_head, names, spare, fields) {
                Ok(Some(parsed)) => return Ok(parsed),
                Ok(None) => {}
                Err(m) => return Err(Failure::Other(Error::Malformed(m))),
            }
            // Informational heads count too: an endless run of them is no answer.
            if received >= MAX_HEAD {
                return Err(Failure::Other(Error::Malformed("response head too large")));
            }
        }
        if buf.capacity() - buf.len() < HEAD_READ / 4 {
            buf.reserve(HEAD_READ);
        }
        match rd.read_buf(buf).await {
            Ok(0) if received == 0 => {
                let error = io::Error::new(io::ErrorKind::UnexpectedEof, "closed before responding");
                return Err(Failure::Stale { error, unwritten: false });
            }
            Ok(0) => {
                let e = io::Error::new(io::ErrorKind::UnexpectedEof, "closed in the response head");
                return Err(Failure::Other(Error::Io(e)));
            }
            Ok(n) => received += n,
            Err(error) if received == 0 => return Err(Failure::Stale { error, unwritten: false }),
            Err(e) => return Err(Failure::Other(Error::Io(e))),
        }
    }
}

/// How an exchange on a connection failed.
enum Failure {
    /// The connection was found closed before any of the response arrived: a pooled
    /// connection the upstream had just closed. `unwritten` when the head was not sent.
    Stale { error: io::Error, unwritten: bool },
    /// Anything else.
    Other(Error),
}

/// The idle connections to one target.
#[derive(Default)]
pub struct Pool {
    inner: Arc<PoolInner>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("idle", &self.inner.lock().idle.len()).finish()
    }
}

#[derive(Default)]
struct PoolInner {
    state: Mutex<PoolState>,
}

#[derive(Default)]
struct PoolState {
    /// Oldest first; taken from the back (the warmest connection).
    idle: Vec<Idle>,
    /// Whether a task is closing expired connections.
    sweeping: bool,
}

struct Idle {
    conn: Box<Conn>,
    since: Instant,
}

impl PoolInner {
    fn lock(&self) -> MutexGuard<'_, PoolState> {
        self.state.lock()
    }

    fn checkout(&self, s: &Settings, now: Instant) -> Option<Box<Conn>> {
        let mut st = self.lock();
        while let Some(mut idle) = st.idle.pop() {
            if now.saturating_duration_since(idle.since) >= s.idle_timeout {
                // The warmest one expired: so did every older one.
                st.idle.clear();
                return None;
            }
            if idle.conn.is_open() {
                return Some(idle.conn);
            }
        }
        None
    }

    fn checkin(self: &Arc<Self>, conn: Box<Conn>) {
        let s = conn.settings;
        if s.max_idle == 0 || !conn.buf.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut st = self.lock();
        let expired = st.idle.iter().take_while(|i| now.saturating_duration_since(i.since) >= s.idle_timeout).count();
        st.idle.drain(..expired);
        if st.idle.len() >= s.max_idle {
            return;
        }
        st.idle.push(Idle { conn, since: now });
        if !st.sweeping
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            st.sweeping = true;
            runtime.spawn(sweep(Arc::downgrade(self), s.idle_timeout));
        }
    }
}

/// Closes idle connections that expired or that the upstream closed, while any are left.
async fn sweep(pool: Weak<PoolInner>, idle_timeout: Duration) {
    let every = (idle_timeout / 2).max(Duration::from_millis(100));
    loop {
        tokio::time::sleep(every).await;
        let Some(pool) = pool.upgrade() else { return };
        let now = Instant::now();
        let mut st = pool.lock();
        st.idle.retain_mut(|i| now.saturating_duration_since(i.since) < idle_timeout && i.conn.is_open());
        if st.idle.is_empty() {
            st.sweeping = false;
            return;
        }
    }
}

impl Pool {
    /// Idle connections in the pool now.
    pub fn idle(&self) -> usize {
        self.inner.lock().idle.len()
    }

    /// Sends a request to `addr` on a pooled or new connection and returns the response
    /// with its body streaming from the connection; the head must arrive before
    /// `deadline`. `now` is the caller's clock reading, for the pool's idle times. The
    /// response's header map is the request's allocation.
    pub async fn send(
        &self,
        addr: SocketAddr,
        s: &Settings,
        mut r: Outgoing<'_>,
        body: &mut Body,
        now: Instant,
        deadline: Instant,
    ) -> Result<Response<Body>, Error> {
        // The body is taken by reference: the future of this call is moved into its
        // caller's, and a body by value made it larger.
        let mut payload = match body {
            Body::Empty | Body::Full(None) => Payload::None,
            Body::Full(Some(b)) => Payload::Bytes(std::mem::take(b)),
            body => {
                let chunked = http_body::Body::size_hint(&*body).exact().is_none();
                let body = std::mem::take(body);
                Payload::Stream(Box::new(StreamState { body, first: None, ended: false, chunked, touched: false }))
            }
        };
        r.framing = match &payload {
            Payload::None => None,
            Payload::Bytes(b) => Some(Framing::Length(b.len() as u64)),
            Payload::Stream(st) if st.chunked => Some(Framing::Chunked),
            Payload::Stream(st) => http_body::Body::size_hint(&st.body).exact().map(Framing::Length),
        };
        let method = r.method;
        let idempotent = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE);
        let method_head = *method == Method::HEAD;
        let mut stale = 0;
        // The head once written, while it moves to a second connection.
        let mut written: Option<Vec<u8>> = None;
        loop {
            let pooled = if stale < MAX_STALE { self.inner.checkout(s, now) } else { None };
            let reused = pooled.is_some();
            let mut conn = match pooled {
                Some(c) => c,
                None => Conn::connect(addr, s, deadline).await?,
            };
            conn.settings = *s;
            match written.take() {
                Some(head) => conn.out = head,
                None => {
                    // Written into the connection's own buffer; the map's fields are done.
                    encode_head(&mut conn.out, &r);
                    r.headers.clear();
                }
            }
            let res = conn.exchange_by(method_head, deadline, r.headers, &mut payload).await;
            // A body that streamed cannot go again; one in memory can.
            let replayable = !matches!(&payload, Payload::Stream(st) if st.touched);
            match res {
                Ok(parsed) => return Ok(self.response(conn, parsed, std::mem::take(r.headers))),
                Err(Failure::Stale { unwritten, .. }) if reused && (unwritten || (idempotent && replayable)) => {
                    written = Some(std::mem::take(&mut conn.out));
                    stale += 1;
                }
                Err(Failure::Stale { error, .. }) => return Err(Error::Io(error)),
                Err(Failure::Other(e)) => return Err(e),
            }
        }
    }

    /// The response of `p`, with its fields in `headers` (empty when kept as sent).
    fn response(&self, mut conn: Box<Conn>, p: Parsed, headers: HeaderMap) -> Response<Body> {
        let body = match p.framing {
            Framing::Length(0) => {
                if p.reusable {
                    self.inner.checkin(conn);
                }
                Body::Empty
            }
            framing => {
                let decoder = Decoder::new(framing);
                let raw = p.raw.is_some();
                if let Some(head) = p.raw {
                    conn.head = head;
                }
                Body::H1(ResponseBody {
                    conn: Some(conn),
                    pool: self.inner.clone(),
                    decoder,
                    reusable: p.reusable,
                    raw,
                })
            }
        };
        let mut res = Response::new(body);
        *res.status_mut() = p.status;
        *res.version_mut() = Version::HTTP_11;
        *res.headers_mut() = headers;
        res
    }
}

/// A response body read straight from the upstream connection. Complete, it returns the
/// connection to its pool; dropped early, it closes it.
pub struct ResponseBody {
    conn: Option<Box<Conn>>,
    pool: Arc<PoolInner>,
    /// Whether the response's fields are still only in the connection (`Parsed::raw`).
    raw: bool,
    decoder: Decoder,
    reusable: bool,
}

impl std::fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody").field("decoder", &self.decoder).finish()
    }
}

fn broken(message: &'static str) -> BoxError {
    Box::new(io::Error::new(io::ErrorKind::InvalidData, message))
}

fn eof() -> BoxError {
    Box::new(io::Error::new(io::ErrorKind::UnexpectedEof, "upstream closed in the middle of the body"))
}

impl ResponseBody {
    /// The response's fields as the upstream sent them (the head and where each field lies
    /// in it), when they are not in the response's map. None are hop-by-hop, and each is
    /// valid for `http` (httparse takes the same bytes in names and values). Read them
    /// before polling the body: once it ends, the connection is gone.
    pub(crate) fn raw_fields(&self) -> Option<(&Bytes, &[Span])> {
        let conn = self.conn.as_ref().filter(|_| self.raw)?;
        Some((&conn.head, &conn.fields))
    }

    /// Puts fields kept as sent into `headers` (the response's empty map), for whoever
    /// needs them there. `false` when one is not valid for `http` after all.
    pub(crate) fn materialise(&mut self, headers: &mut HeaderMap) -> bool {
        if !self.raw {
            return true;
        }
        self.raw = false;
        let Some(conn) = self.conn.as_mut() else { return false };
        let head = std::mem::take(&mut conn.head);
        fill_header_map(headers, &head, &conn.fields, 2, &mut conn.names)
    }

    /// The body ended: the connection goes back to the pool when it may be used again.
    fn finish(&mut self) {
        self.raw = false;
        if let Some(mut conn) = self.conn.take()
            && self.reusable
        {
            conn.head = Bytes::new();
            self.pool.checkin(conn);
        }
    }

    /// The body failed: the connection is closed.
    fn fail(&mut self, e: BoxError) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.decoder = Decoder::new(Framing::Length(0));
        self.conn = None;
        Poll::Ready(Some(Err(e)))
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            let Some(conn) = this.conn.as_mut() else {
                // Ended, failed, or read to the close.
                return Poll::Ready(None);
            };
            match this.decoder.decode(&mut conn.buf) {
                Ok(Decoded::Data(data)) => {
                    if this.decoder.is_done() {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Decoded::End) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(Decoded::Need) => match ready!(conn.poll_fill(cx, BODY_READ)) {
                    Ok(0) if this.decoder.at_eof() => {
                        // A body that runs to the close: complete, and the connection gone.
                        this.conn = None;
                        return Poll::Ready(None);
                    }
                    Ok(0) => return this.fail(eof()),
                    Ok(_) => {}
                    Err(e) => return this.fail(Box::new(e)),
                },
                Err(m) => return this.fail(broken(m)),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.decoder.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder.remaining() {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}
