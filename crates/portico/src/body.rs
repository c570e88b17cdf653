//! The one body type that flows through the gateway in both directions.
//!
//! An enum rather than a boxed trait object: no allocation per request, and every variant
//! is `Unpin`, so polling needs no pinning tricks.

use std::error::Error as _;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;

/// Errors a body can produce while streaming.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request or response body.
#[derive(Debug, Default)]
pub enum Body {
    /// No body.
    #[default]
    Empty,
    /// A complete body held in memory (gateway-made responses).
    Full(Option<Bytes>),
    /// A body streamed from the other side as it arrives.
    Incoming(Incoming),
    /// A client's request body streamed upstream: cut off past the listener's limit, its
    /// failures typed as the client's ([`ClientBodyError`]).
    /// Boxed: only requests with a body take it, and unboxed it made every `Body` (and so
    /// every response moved on the bodiless fast path) larger.
    Client(Box<ClientBody>),
    /// A response body read straight from a pooled HTTP/1.1 upstream connection.
    H1(crate::upstream::h1::ResponseBody),
    /// A client's request body read by the lean HTTP/1.1 loop from the client's connection
    /// and handed over piece by piece (boxed for the same reason as `Client`).
    Streamed(Box<Streamed>),
    /// A body that holds something until it ends or is dropped (a concurrency slot).
    Holding(Box<Body>, Option<Box<dyn std::fmt::Debug + Send + Sync>>),
    /// A body changed piece by piece as it streams (a response compressed).
    Transformed(Box<Transformed>),
    /// A body passed on unchanged while a copy of it is kept (a response being cached).
    Tapped(Box<Tapped>),
}

impl Body {
    /// A body holding `bytes`.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        Body::Full(Some(bytes.into()))
    }
}

impl Body {
    /// This body, holding `held` until it ends or is dropped.
    pub fn holding(self, held: impl std::fmt::Debug + Send + Sync + 'static) -> Self {
        Body::Holding(Box::new(self), Some(Box::new(held)))
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    #[inline]
    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Body::Empty => Poll::Ready(None),
            Body::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Body::Incoming(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Body::Client(b) => Pin::new(&mut **b).poll_frame(cx),
            Body::H1(b) => Pin::new(b).poll_frame(cx),
            Body::Streamed(b) => Pin::new(&mut **b).poll_frame(cx),
            Body::Holding(b, held) => {
                let res = Pin::new(&mut **b).poll_frame(cx);
                if matches!(res, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
                    *held = None;
                }
                res
            }
            Body::Transformed(b) => b.poll(cx),
            Body::Tapped(b) => b.poll(cx),
        }
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        match self {
            Body::Empty => true,
            Body::Full(b) => b.is_none(),
            Body::Incoming(b) => b.is_end_stream(),
            Body::Client(b) => http_body::Body::is_end_stream(&**b),
            Body::H1(b) => b.is_end_stream(),
            Body::Streamed(b) => b.is_end_stream(),
            Body::Holding(b, _) => b.is_end_stream(),
            Body::Transformed(b) => b.done && b.trailers.is_none(),
            Body::Tapped(b) => http_body::Body::is_end_stream(&b.inner),
        }
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Empty => SizeHint::with_exact(0),
            Body::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Body::Incoming(b) => b.size_hint(),
            Body::Client(b) => http_body::Body::size_hint(&**b),
            Body::H1(b) => b.size_hint(),
            Body::Streamed(b) => b.size_hint(),
            Body::Holding(b, _) => b.size_hint(),
            // The length changes with the transform.
            Body::Transformed(_) => SizeHint::default(),
            Body::Tapped(b) => http_body::Body::size_hint(&b.inner),
        }
    }
}

/// What keeps a copy of a body as it passes ([`Tapped`]).
pub trait Tap: Send + Sync + std::fmt::Debug {
    /// A piece of the body went by.
    fn data(&mut self, piece: &Bytes);
    /// The body ended whole (`trailers` when it had some).
    fn end(&mut self, trailers: Option<&http::HeaderMap>);
}

/// A body passed on as it is while a [`Tap`] sees every piece (shared, not copied). A body
/// that fails, or is dropped before its end (the client left), never reaches
/// [`Tap::end`]: the tap learns of it by being dropped.
#[derive(Debug)]
pub struct Tapped {
    inner: Body,
    tap: Option<Box<dyn Tap>>,
}

impl Tapped {
    /// `inner`, seen by `tap`. A body already at its end (an empty one, which a writer never
    /// polls) has ended for the tap at once.
    pub fn new(inner: Body, mut tap: Box<dyn Tap>) -> Self {
        if http_body::Body::is_end_stream(&inner) {
            tap.end(None);
            return Self { inner, tap: None };
        }
        Self { inner, tap: Some(tap) }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let res = http_body::Body::poll_frame(Pin::new(&mut self.inner), cx);
        match &res {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(tap) = &mut self.tap {
                    match frame.data_ref() {
                        Some(data) => {
                            tap.data(data);
                            // A writer stops polling once the body says it has ended.
                            if http_body::Body::is_end_stream(&self.inner)
                                && let Some(mut tap) = self.tap.take()
                            {
                                tap.end(None);
                            }
                        }
                        None => {
                            if let Some(mut tap) = self.tap.take() {
                                tap.end(frame.trailers_ref());
                            }
                        }
                    }
                }
            }
            Poll::Ready(None) => {
                if let Some(mut tap) = self.tap.take() {
                    tap.end(None);
                }
            }
            Poll::Ready(Some(Err(_))) => self.tap = None,
            Poll::Pending => {}
        }
        res
    }
}

/// Why [`collect_bounded`] gave no body.
#[derive(Debug)]
pub enum Bounded {
    /// More than the limit.
    TooLarge,
    /// The body broke off or was malformed (whose fault it is, the caller knows).
    Failed(BoxError),
}

/// A body read whole, refused as soon as it passes `limit` bytes (nothing past the limit is
/// held). For the gateway's own reads of an upstream's answer: the response body phase,
/// an aggregate call's result.
pub async fn collect_bounded(mut body: Body, limit: u64) -> Result<Bytes, Bounded> {
    use http_body_util::BodyExt as _;
    if http_body::Body::size_hint(&body).lower() > limit {
        return Err(Bounded::TooLarge);
    }
    let mut bytes = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.map_err(Bounded::Failed)?.into_data() {
            if (bytes.len() + data.len()) as u64 > limit {
                return Err(Bounded::TooLarge);
            }
            bytes.extend_from_slice(&data);
        }
    }
    Ok(bytes.freeze())
}

/// A change made to a body piece by piece as it streams, without holding it whole (a
/// response body hook that compresses). It keeps what it has made until asked for it.
pub trait StreamTransform: Send + Sync + std::fmt::Debug {
    /// Takes the next piece of the body.
    fn data(&mut self, piece: &[u8]) -> Result<(), BoxError>;
    /// Nothing more is at hand for now (the source is waiting): what the transform holds
    /// back must be made ready, so that a client is not kept waiting for bytes already here.
    fn flush(&mut self) -> Result<(), BoxError>;
    /// The body ended: make the rest ready.
    fn end(&mut self) -> Result<(), BoxError>;
    /// How many bytes are ready to go.
    fn ready(&self) -> usize;
    /// Takes the bytes ready to go.
    fn take(&mut self) -> Bytes;
}

/// A body run through a [`StreamTransform`] as it streams. What arrives together goes
/// through together and out as one piece (up to [`Transformed::PIECE`] bytes); the
/// transform is flushed only when the source has nothing more at hand, so a fast body is
/// transformed and written in large pieces and a slow stream is not held back. Trailers
/// follow the transformed rest.
#[derive(Debug)]
pub struct Transformed {
    inner: Body,
    stage: Box<dyn StreamTransform>,
    /// Input was given since the last flush.
    unflushed: bool,
    /// The source ended (or failed): only what the stage holds and `trailers` are left.
    done: bool,
    trailers: Option<http::HeaderMap>,
}

impl Transformed {
    /// Output is handed on once this much is ready, without waiting for the source to pause.
    const PIECE: usize = 16 * 1024;

    /// `inner` run through `stage`.
    pub fn new(inner: Body, stage: Box<dyn StreamTransform>) -> Self {
        Self { inner, stage, unflushed: false, done: false, trailers: None }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.step(cx) {
            Ok(Poll::Ready(Some(data))) => Poll::Ready(Some(Ok(Frame::data(data)))),
            Ok(Poll::Ready(None)) => Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t)))),
            Ok(Poll::Pending) => Poll::Pending,
            Err(e) => {
                self.done = true;
                self.trailers = None;
                Poll::Ready(Some(Err(e)))
            }
        }
    }

    /// The next piece of output, `None` once there is no more (trailers may follow).
    fn step(&mut self, cx: &mut Context<'_>) -> Result<Poll<Option<Bytes>>, BoxError> {
        loop {
            if self.done {
                let ready = self.stage.ready() > 0;
                return Ok(Poll::Ready(ready.then(|| self.stage.take())));
            }
            match http_body::Body::poll_frame(Pin::new(&mut self.inner), cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        self.unflushed = true;
                        self.stage.data(&data)?;
                        if self.stage.ready() >= Self::PIECE {
                            return Ok(Poll::Ready(Some(self.stage.take())));
                        }
                    }
                    Err(frame) => {
                        self.trailers = frame.into_trailers().ok();
                        self.done = true;
                        self.stage.end()?;
                    }
                },
                Poll::Ready(Some(Err(e))) => return Err(e),
                Poll::Ready(None) => {
                    self.done = true;
                    self.stage.end()?;
                }
                Poll::Pending => {
                    if std::mem::take(&mut self.unflushed) {
                        self.stage.flush()?;
                    }
                    return Ok(match self.stage.ready() {
                        0 => Poll::Pending,
                        _ => Poll::Ready(Some(self.stage.take())),
                    });
                }
            }
        }
    }
}

/// Why a client's request body ended before it was whole. The client caused it: it is
/// answered as the client's error (413, 400, or logged as 499) and never counts against
/// the upstream (breaker, outlier detection, `gateway_backend_errors_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientBodyError {
    /// More bytes than the listener's `max_body`.
    #[error("request body over the limit")]
    TooLarge,
    /// Framing the gateway cannot read (a bad chunk size, an HTTP/2 length mismatch).
    #[error("malformed request body")]
    Malformed,
    /// The client closed the connection or reset the stream before the body's end.
    #[error("client closed the request before its body ended")]
    Aborted,
}

impl ClientBodyError {
    fn code(self) -> u8 {
        match self {
            ClientBodyError::TooLarge => 1,
            ClientBodyError::Malformed => 2,
            ClientBodyError::Aborted => 3,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(ClientBodyError::TooLarge),
            2 => Some(ClientBodyError::Malformed),
            3 => Some(ClientBodyError::Aborted),
            _ => None,
        }
    }

    /// What a failure of hyper's incoming body means: the peer went away, or sent what
    /// cannot be read.
    pub fn of(e: &hyper::Error) -> Self {
        if e.is_incomplete_message() || e.is_canceled() {
            return ClientBodyError::Aborted;
        }
        let mut source = e.source();
        while let Some(s) = source {
            if let Some(h2) = s.downcast_ref::<h2::Error>() {
                // A reset or GOAWAY from the client, or its connection gone: it left. A
                // reset of our own making: it broke the protocol (a length mismatch).
                return if h2.is_remote() || h2.is_io() || h2.is_go_away() {
                    ClientBodyError::Aborted
                } else {
                    ClientBodyError::Malformed
                };
            }
            if let Some(io) = s.downcast_ref::<std::io::Error>() {
                use std::io::ErrorKind as K;
                return match io.kind() {
                    K::UnexpectedEof | K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe => {
                        ClientBodyError::Aborted
                    }
                    _ => ClientBodyError::Malformed,
                };
            }
            source = s.source();
        }
        ClientBodyError::Malformed
    }
}

/// A client's request body on its way upstream. What went wrong with it is also written
/// to its [`ClientBodyWatch`]: a client library that fails because the body failed does not
/// always say why (an HTTP/2 upstream stream is reset), and the proxy must still know
/// whose fault it was.
#[derive(Debug)]
pub struct ClientBody {
    inner: Source,
    left: u64,
    watch: Arc<AtomicU8>,
}

/// Where a client's request body comes from.
#[derive(Debug)]
enum Source {
    /// hyper's server (HTTP/2, and the HTTP/1.1 requests the lean loop leaves to it).
    Hyper(Incoming),
    /// The lean HTTP/1.1 loop.
    Lean(Box<Streamed>),
}

/// The proxy's side of a [`ClientBody`]: whether, and how, the body failed, and whether
/// it is waiting for the client.
#[derive(Clone, Debug)]
pub struct ClientBodyWatch(Arc<AtomicU8>);

/// In the watch's byte, beside the failure's code (the low bits): the body has ended.
const COMPLETE: u8 = 0x10;
/// The last time the body was asked for more, the client had not sent it yet.
const STARVED: u8 = 0x20;
/// The failure's code.
const FAILURE: u8 = 0x0f;

impl ClientBodyWatch {
    /// How the body failed, if it did.
    pub fn failed(&self) -> Option<ClientBodyError> {
        ClientBodyError::from_code(self.0.load(Ordering::Acquire) & FAILURE)
    }

    /// Whether whoever sends the body upstream is waiting for the client: the body is not
    /// complete, and the last time it was asked for more the client had not sent it. A
    /// deadline that passes then is the client's doing, not the upstream's (an upstream
    /// that stops reading the body leaves it unasked, not starved).
    pub fn waiting_for_client(&self) -> bool {
        let v = self.0.load(Ordering::Acquire);
        v & STARVED != 0 && v & COMPLETE == 0
    }
}

impl ClientBody {
    /// Streams a client's body, failing with [`ClientBodyError::TooLarge`] past `max`
    /// bytes; `Err` gives back a body that is not a client's.
    pub fn new(body: Body, max: u64) -> Result<(Self, ClientBodyWatch), Body> {
        let inner = match body {
            Body::Incoming(b) => Source::Hyper(b),
            Body::Streamed(b) => Source::Lean(b),
            other => return Err(other),
        };
        let watch = Arc::new(AtomicU8::new(0));
        Ok((Self { inner, left: max, watch: watch.clone() }, ClientBodyWatch(watch)))
    }

    fn fail(&self, e: ClientBodyError) -> BoxError {
        self.watch.fetch_or(e.code(), Ordering::Release);
        Box::new(e)
    }

    /// Notes how the last poll went: `Some(starved)` (pending: starved; data: fed), or the
    /// end of the body.
    fn note(&self, starved: Option<bool>) {
        match starved {
            Some(true) => self.watch.fetch_or(STARVED, Ordering::Release),
            Some(false) => self.watch.fetch_and(!STARVED, Ordering::Release),
            None => self.watch.fetch_or(COMPLETE, Ordering::Release),
        };
    }
}

impl http_body::Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = match &mut self.inner {
            Source::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(|e| ClientBodyError::of(&e)),
            Source::Lean(b) => b.poll(cx),
        };
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                let n = frame.data_ref().map_or(0, |d| d.len() as u64);
                if n > self.left {
                    return Poll::Ready(Some(Err(self.fail(ClientBodyError::TooLarge))));
                }
                self.left -= n;
                self.note(if http_body::Body::is_end_stream(&*self) { None } else { Some(false) });
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(self.fail(e)))),
            Poll::Ready(None) => {
                self.note(None);
                Poll::Ready(None)
            }
            Poll::Pending => {
                self.note(Some(true));
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Source::Hyper(b) => b.is_end_stream(),
            Source::Lean(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Source::Hyper(b) => b.size_hint(),
            Source::Lean(b) => b.size_hint(),
        }
    }
}

/// One piece of a [`Streamed`] body, or why it ended early.
pub type Piece = Result<Bytes, ClientBodyError>;

/// A client's request body that the lean HTTP/1.1 loop reads from the connection (the
/// one decoder, `proto::h1::body`) and hands over through a channel as the handler asks
/// for it: the channel holds one piece, so a client uploads no faster than the upstream
/// takes its bytes. Its failures are already the client's (a broken chunked coding, a
/// connection that ended early).
#[derive(Debug)]
pub struct Streamed {
    rx: tokio::sync::mpsc::Receiver<Piece>,
    /// The bytes still to come, when the length was declared.
    left: Option<u64>,
    done: bool,
    /// Told when the body is first read (the lean loop's `100 Continue`).
    on_first_read: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Streamed {
    /// A body fed through `rx`, of `length` bytes when that is declared.
    pub fn new(rx: tokio::sync::mpsc::Receiver<Piece>, length: Option<u64>) -> Self {
        Self { rx, left: length, done: false, on_first_read: None }
    }

    /// The same body, telling `tx` when it is first read.
    pub fn on_first_read(mut self, tx: tokio::sync::oneshot::Sender<()>) -> Self {
        self.on_first_read = Some(tx);
        self
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        if let Some(tx) = self.on_first_read.take() {
            let _ = tx.send(());
        }
        if self.done {
            return Poll::Ready(None);
        }
        match std::task::ready!(self.rx.poll_recv(cx)) {
            Some(Ok(data)) => {
                if let Some(left) = &mut self.left {
                    *left = left.saturating_sub(data.len() as u64);
                    self.done = *left == 0;
                }
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Some(Err(e)) => {
                self.done = true;
                Poll::Ready(Some(Err(e)))
            }
            None => {
                self.done = true;
                Poll::Ready(None)
            }
        }
    }
}

impl http_body::Body for Streamed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.poll(cx).map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        match self.left {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}
