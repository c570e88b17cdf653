//! A lean HTTP/1.1 client for plain-TCP upstreams whose targets are IP addresses, used for
//! requests without a body (most GET, HEAD and DELETE requests). Everything else (request
//! bodies, upgrades, TLS, HTTP/2, targets named by host name) goes through hyper's client.
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

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Version, header};
use http_body::{Frame, SizeHint};
use parking_lot::{Mutex, MutexGuard};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::body::{Body, BoxError};
use crate::forwarded::Added;

/// The largest response head read (hyper's default buffer limit).
const MAX_HEAD: usize = 8192 + 4096 * 100;
/// The most header fields in a response head.
const MAX_HEADERS: usize = 100;
/// Fields parsed without the full array (so the usual head zeroes less stack).
const FEW_HEADERS: usize = 24;
/// Room made in the buffer before reading a response head.
const HEAD_READ: usize = 8 * 1024;
/// Room made in the buffer before reading body bytes.
const BODY_READ: usize = 32 * 1024;
/// The longest chunk-size line (with extensions) accepted.
const MAX_CHUNK_LINE: usize = 4096;
/// The most trailer bytes accepted after the last chunk (they are read and dropped).
const MAX_TRAILERS: usize = 16 * 1024;
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

/// Why an exchange failed.
#[derive(Debug)]
pub enum Error {
    /// No connection could be made.
    Connect(io::Error),
    /// Making a connection took longer than the connect timeout.
    ConnectTimeout,
    /// The connection failed or closed before a whole response head arrived.
    Io(io::Error),
    /// The response is not valid HTTP/1.1, or is larger than the limits.
    Malformed(&'static str),
    /// No response head arrived before the deadline.
    Timeout,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Connect(e) => write!(f, "connect failed: {e}"),
            Error::ConnectTimeout => f.write_str("connect timed out"),
            Error::Io(e) => write!(f, "connection failed: {e}"),
            Error::Malformed(m) => write!(f, "malformed response: {m}"),
            Error::Timeout => f.write_str("no response before the deadline"),
        }
    }
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
            res = self.exchange(method_head, spare) => res,
            () = timer.as_mut() => Err(Failure::Other(Error::Timeout)),
        };
        self.timer = Some(timer);
        res
    }

    /// Writes the request head in `out` and reads the final response head, into `spare`.
    async fn exchange(&mut self, method_head: bool, spare: &mut HeaderMap) -> Result<Parsed, Failure> {
        if let Err(e) = self.io.write_all(&self.out).await {
            return Err(Failure::Stale { error: e, unwritten: true });
        }
        let mut received = 0;
        loop {
            if !self.buf.is_empty() {
                match parse(&mut self.buf, method_head, &mut self.names, spare, &mut self.fields) {
                    Ok(Some(parsed)) => return Ok(parsed),
                    Ok(None) => {}
                    Err(m) => return Err(Failure::Other(Error::Malformed(m))),
                }
                // Informational heads count too: an endless run of them is no answer.
                if received >= MAX_HEAD {
                    return Err(Failure::Other(Error::Malformed("response head too large")));
                }
            }
            let read = std::future::poll_fn(|cx| self.poll_fill(cx, HEAD_READ)).await;
            match read {
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
}

/// How an exchange on a connection failed.
enum Failure {
    /// The connection was found closed before any of the response arrived: a pooled
    /// connection the upstream had just closed. `unwritten` when the head was not sent.
    Stale { error: io::Error, unwritten: bool },
    /// Anything else.
    Other(Error),
}

/// A response head, parsed.
struct Parsed {
    status: StatusCode,
    /// Empty when the fields are kept as sent (`raw`).
    headers: HeaderMap,
    /// The head, when its fields are kept as sent rather than put into `headers`: a
    /// response whose body streams and whose fields include no hop-by-hop field and
    /// nothing the framing needs a map for. Their spans are in the connection's `fields`.
    /// Writing them out as sent (the lean server loop) costs no map; whoever needs them
    /// in the map asks for it ([`ResponseBody::materialise`]).
    raw: Option<Bytes>,
    framing: Framing,
    reusable: bool,
}

/// How a response body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    /// This many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the upstream closes the connection.
    Close,
}

/// Parses a final response head from the start of `buf` and removes it from there
/// (informational 1xx heads before it too). `None` when more bytes are needed. The header
/// map is `spare`'s allocation, taken once the head is complete.
fn parse(
    buf: &mut BytesMut,
    method_head: bool,
    names: &mut NameCache,
    spare: &mut HeaderMap,
    fields: &mut Vec<Span>,
) -> Result<Option<Parsed>, &'static str> {
    loop {
        // Most heads have a few fields: a small array first, the full one when needed.
        let step = match parse_head::<FEW_HEADERS>(buf, method_head, names, spare, fields)? {
            Step::TooMany => parse_head::<MAX_HEADERS>(buf, method_head, names, spare, fields)?,
            step => step,
        };
        match step {
            Step::Final(parsed) => return Ok(Some(parsed)),
            Step::Partial => return Ok(None),
            Step::Informational(len) => buf.advance(len),
            Step::TooMany => return Err("too many header fields"),
        }
    }
}

/// One head parsed with room for `N` fields.
enum Step {
    Final(Parsed),
    /// A 1xx head of this many bytes, to skip.
    Informational(usize),
    Partial,
    TooMany,
}

fn parse_head<const N: usize>(
    buf: &mut BytesMut,
    method_head: bool,
    names: &mut NameCache,
    spare: &mut HeaderMap,
    kept: &mut Vec<Span>,
) -> Result<Step, &'static str> {
    // Left uninitialised for httparse to fill: no `N` fields written first.
    let mut fields = [const { std::mem::MaybeUninit::uninit() }; N];
    let mut res = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut res, buf, &mut fields) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(Step::Partial),
        Err(httparse::Error::TooManyHeaders) => return Ok(Step::TooMany),
        Err(_) => return Err("invalid response head"),
    };
    let code = res.code.ok_or("invalid response head")?;
    if code == 101 {
        // Upgrades never take this path; an upstream must not switch protocols unasked.
        return Err("unexpected 101 Switching Protocols");
    }
    if (100..200).contains(&code) {
        return Ok(Step::Informational(len));
    }
    let status = StatusCode::from_u16(code).map_err(|_| "invalid status code")?;
    let http11 = res.version == Some(1);
    // Where each field lies in the head, so the values can share the head's bytes.
    // `Connection` fields that say only `keep-alive` or `close` are read here and left out
    // of the map (the hop-by-hop pass would remove them); one that names other fields
    // stays, so that pass removes what it names.
    // The framing fields are noted on the way, so the usual head needs no map lookups.
    // The spans go straight into the connection's list: read as sent, or into the map.
    kept.clear();
    let mut close = false;
    let mut seen = Seen::default();
    // Whether the fields may be kept as sent: none is hop-by-hop, none too long for `http`.
    let mut plain_fields = true;
    for h in res.headers.iter() {
        let name = h.name.as_bytes();
        match Known::of(name) {
            Some(Known::Connection) => {
                let (asks_close, plain) = connection_tokens(h.value);
                close |= asks_close;
                if plain {
                    continue;
                }
                plain_fields = false;
            }
            Some(Known::ContentLength) => {
                seen.lengths += 1;
                seen.length = Some(h.value).filter(|_| seen.lengths == 1).and_then(plain_length);
            }
            Some(Known::TransferEncoding) => seen.codings = true,
            Some(k) if k.is_hop_by_hop() => plain_fields = false,
            _ => plain_fields &= name.len() <= MAX_NAME,
        }
        kept.push(span_of(buf.as_ptr(), name, h.value));
    }
    let head = buf.split_to(len).freeze();
    // Room for the request ID the gateway sets on every response.
    let mut headers = std::mem::take(spare);
    let quick = quick_framing(seen, status, method_head);
    if plain_fields && let Some((framing @ (Framing::Length(1..) | Framing::Close), must_close)) = quick {
        // A body streams and nothing needs the map: the fields stay as sent.
        headers.clear();
        let reusable = http11 && !must_close && !close;
        return Ok(Step::Final(Parsed { status, headers, raw: Some(head), framing, reusable }));
    }
    if !fill_header_map(&mut headers, &head, kept, 2, names) {
        return Err("invalid header field");
    }
    let (framing, must_close) = match quick {
        Some(q) => q,
        None => framing(&mut headers, http11)?,
    };
    let reusable = http11 && !must_close && framing != Framing::Close && !close;
    Ok(Step::Final(Parsed { status, headers, raw: None, framing, reusable }))
}

/// The longest header name `http` takes.
const MAX_NAME: usize = (1 << 16) - 1;

/// Whether a field name that httparse accepted (a token) or `http` made (lowercase) is
/// `lower`, a name of lowercase letters and `-` only, in any case. Setting bit 5 lowercases
/// a letter and leaves `-` as it is, and no other token character becomes a letter or `-`
/// by it, so one OR and one comparison per eight bytes decide it, where
/// `eq_ignore_ascii_case` lowercases both sides byte by byte (a measurable part of every
/// head). Written by hand: no crate does this for short names.
#[inline]
pub(crate) fn is_name(name: &[u8], lower: &[u8]) -> bool {
    debug_assert!(lower.iter().all(|&b| b.is_ascii_lowercase() || b == b'-'), "{lower:?}");
    const CASE: u64 = 0x2020_2020_2020_2020;
    let n = name.len();
    if n != lower.len() {
        return false;
    }
    if n < 8 {
        return name.iter().zip(lower).all(|(&a, &b)| a | 0x20 == b);
    }
    let word = |s: &[u8], at: usize| s.get(at..at + 8).and_then(|w| w.try_into().ok()).map_or(0, u64::from_le_bytes);
    // Eight bytes at a time, the last eight overlapping the ones before when `n` is not a
    // multiple of eight.
    (0..n / 8).all(|i| word(name, i * 8) | CASE == word(lower, i * 8)) && word(name, n - 8) | CASE == word(lower, n - 8)
}

/// The field names the HTTP/1.1 paths act on (the request parse, the response parse and
/// the response writer), told apart by length first: most names then need one comparison
/// or none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Known {
    Te,
    Host,
    Date,
    Expect,
    Trailer,
    Upgrade,
    Connection,
    KeepAlive,
    ContentLength,
    ProxyConnection,
    TransferEncoding,
}

impl Known {
    pub(crate) fn of(name: &[u8]) -> Option<Self> {
        let is = |n: &[u8]| is_name(name, n);
        match name.len() {
            2 if is(b"te") => Some(Self::Te),
            4 if is(b"host") => Some(Self::Host),
            4 if is(b"date") => Some(Self::Date),
            6 if is(b"expect") => Some(Self::Expect),
            7 if is(b"trailer") => Some(Self::Trailer),
            7 if is(b"upgrade") => Some(Self::Upgrade),
            10 if is(b"connection") => Some(Self::Connection),
            10 if is(b"keep-alive") => Some(Self::KeepAlive),
            14 if is(b"content-length") => Some(Self::ContentLength),
            16 if is(b"proxy-connection") => Some(Self::ProxyConnection),
            17 if is(b"transfer-encoding") => Some(Self::TransferEncoding),
            _ => None,
        }
    }

    /// The hop-by-hop fields but `Connection` and `Transfer-Encoding`, which the parse
    /// reads itself (RFC 9110 section 7.6.1, as [`crate::forwarded::remove_hop_by_hop`]
    /// removes them).
    fn is_hop_by_hop(self) -> bool {
        matches!(self, Self::Te | Self::Trailer | Self::Upgrade | Self::KeepAlive | Self::ProxyConnection)
    }
}

/// What a head's fields said about its framing, noted while its fields were read.
#[derive(Clone, Copy, Debug, Default)]
struct Seen {
    /// `Content-Length` fields.
    lengths: u32,
    /// The value of the only `Content-Length` field, when it is plain digits.
    length: Option<u64>,
    /// Whether there is a `Transfer-Encoding` field.
    codings: bool,
}

/// A `Content-Length` value of 1 to 19 digits (no overflow possible); `None` for anything
/// else, which the general reader takes.
pub(crate) fn plain_length(b: &[u8]) -> Option<u64> {
    (!b.is_empty() && b.len() <= 19 && b.iter().all(u8::is_ascii_digit))
        .then(|| b.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

/// The response's framing and whether the connection must close after it, when the fields
/// noted on the way settle it: a response without a body, or the usual head (no coding, no
/// length or one plain one). `None` sends the head to [`framing`].
fn quick_framing(seen: Seen, status: StatusCode, method_head: bool) -> Option<(Framing, bool)> {
    if method_head || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Some((Framing::Length(0), false));
    }
    match (seen.codings, seen.lengths, seen.length) {
        (false, 0, _) => Some((Framing::Close, true)),
        (false, 1, Some(n)) => Some((Framing::Length(n), false)),
        _ => None,
    }
}

/// The framing of a response with a body (RFC 9112 section 6.3) that [`quick_framing`]
/// did not settle, and whether the connection must close after it. Leaves one
/// unambiguous `Content-Length` in `headers`, or none.
fn framing(headers: &mut HeaderMap, http11: bool) -> Result<(Framing, bool), &'static str> {
    let mut codings = headers.get_all(header::TRANSFER_ENCODING).iter();
    if let Some(first) = codings.next() {
        // Only `chunked` alone, as nginx requires: any other coding would reach the
        // client undeclared once the hop-by-hop header is gone.
        if !http11 || codings.next().is_some() || !first.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked") {
            return Err("unsupported transfer-encoding");
        }
        // Both headers: a smuggling attempt or a broken upstream. The length is not
        // forwarded, and the connection is not used again.
        let both = headers.remove(header::CONTENT_LENGTH).is_some();
        return Ok((Framing::Chunked, both));
    }
    match content_length_of(headers)? {
        Some((n, plain)) => {
            if !plain {
                // A list of equal values, or several fields: forwarded as one.
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
            }
            Ok((Framing::Length(n), false))
        }
        None => Ok((Framing::Close, true)),
    }
}

/// A message's `Content-Length`: one number, or a list of equal ones (`5, 5`, or the same
/// value in several fields); `None` without the header; an error for anything else (a
/// sign, a non-digit, values that disagree).
pub(crate) fn content_length(headers: &HeaderMap) -> Result<Option<u64>, &'static str> {
    Ok(content_length_of(headers)?.map(|(n, _)| n))
}

/// [`content_length`], and whether it was written plainly (one field, one number).
fn content_length_of(headers: &HeaderMap) -> Result<Option<(u64, bool)>, &'static str> {
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    let first = match (values.next(), values.next()) {
        (None, _) => return Ok(None),
        (Some(first), None) => first,
        _ => return Ok(content_length_list(headers)?.map(|n| (n, false))),
    };
    // The usual case: one field of up to 19 digits, read without the general path's
    // splitting and trimming.
    let b = first.as_bytes();
    if let Some(n) = plain_length(b) {
        return Ok(Some((n, true)));
    }
    Ok(content_length_list(headers)?.map(|n| (n, !b.contains(&b','))))
}

/// [`content_length`] for any number of fields, each a list.
fn content_length_list(headers: &HeaderMap) -> Result<Option<u64>, &'static str> {
    let mut length = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        let text = value.to_str().map_err(|_| "invalid content-length")?;
        for part in text.split(',') {
            let part = part.trim();
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err("invalid content-length");
            }
            let n: u64 = part.parse().map_err(|_| "invalid content-length")?;
            if length.is_some_and(|l| l != n) {
                return Err("conflicting content-length values");
            }
            length = Some(n);
        }
    }
    Ok(length)
}

/// Where one header field lies in a head: name start and end, value start and end.
pub(crate) type Span = (usize, usize, usize, usize);

/// The span of an httparse field in the head that starts at `base`.
pub(crate) fn span_of(base: *const u8, name: &[u8], value: &[u8]) -> Span {
    let (n, v) = (name.as_ptr() as usize - base as usize, value.as_ptr() as usize - base as usize);
    (n, n + name.len(), v, v + value.len())
}

/// Fills `headers` with the fields of a parsed head, the values sharing the head's bytes;
/// `extra` is room for fields the gateway adds. The map is emptied first and its
/// allocation reused: a connection passes one map from each message to the next (request,
/// upstream response, next request), so the usual request allocates none. `false` when a
/// name or value is not valid for `http`.
pub(crate) fn fill_header_map(
    headers: &mut HeaderMap,
    head: &Bytes,
    spans: &[Span],
    extra: usize,
    names: &mut NameCache,
) -> bool {
    headers.clear();
    headers.reserve(spans.len() + extra);
    for (i, &(n0, n1, v0, v1)) in spans.iter().enumerate() {
        let Some(name) = names.name(i, &head[n0..n1]) else { return false };
        let Ok(value) = HeaderValue::from_maybe_shared(head.slice(v0..v1)) else { return false };
        headers.append(name, value);
    }
    true
}

/// A map kept for reuse holds at most this many fields' room: an unusually large one is
/// let go rather than kept for the connection's life.
pub(crate) const SPARE_MAX: usize = 64;

/// Keeps `headers`' allocation in `spare` for the next message, emptied.
pub(crate) fn recycle(spare: &mut HeaderMap, mut headers: HeaderMap) {
    if headers.capacity() <= SPARE_MAX {
        headers.clear();
        *spare = headers;
    }
}

/// The header names of the last message on a connection, by position. A client or an
/// upstream sends the same names in the same order on every message of a connection, so a
/// byte comparison replaces parsing a name again (lower-casing it and matching it against
/// the standard names), which was a measurable part of every request.
#[derive(Debug, Default)]
pub(crate) struct NameCache {
    names: Vec<(Box<[u8]>, HeaderName)>,
}

/// Positions kept per connection: the usual heads fit, and a connection's cache stays
/// small (a few hundred bytes).
const NAMES_KEPT: usize = 16;

impl NameCache {
    /// The name at position `i` of a head, `raw` as sent; `None` when it is not valid.
    fn name(&mut self, i: usize, raw: &[u8]) -> Option<HeaderName> {
        if let Some((seen, name)) = self.names.get(i)
            && **seen == *raw
        {
            return Some(name.clone());
        }
        let name = HeaderName::from_bytes(raw).ok()?;
        if i < NAMES_KEPT {
            let entry = (Box::from(raw), name.clone());
            match i.cmp(&self.names.len()) {
                std::cmp::Ordering::Less => self.names[i] = entry,
                std::cmp::Ordering::Equal => self.names.push(entry),
                std::cmp::Ordering::Greater => {}
            }
        }
        Some(name)
    }
}

/// What a `Connection` value says: whether it carries `close`, and whether it carries
/// nothing but `close` and `keep-alive` (names no other field).
fn connection_tokens(value: &[u8]) -> (bool, bool) {
    // The usual values, whole.
    if value.eq_ignore_ascii_case(b"keep-alive") {
        return (false, true);
    }
    if value.eq_ignore_ascii_case(b"close") {
        return (true, true);
    }
    let (mut close, mut plain) = (false, true);
    for t in value.split(|&b| b == b',') {
        let t = t.trim_ascii();
        if t.eq_ignore_ascii_case(b"close") {
            close = true;
        } else if !t.is_empty() && !t.eq_ignore_ascii_case(b"keep-alive") {
            plain = false;
        }
    }
    (close, plain)
}

/// A request for [`Pool::send`]: no body.
#[derive(Debug)]
pub struct Outgoing<'a> {
    /// The method.
    pub method: &'a Method,
    /// The request target (origin form).
    pub target: &'a str,
    /// The `Host` to send; any in `headers` is left out.
    pub host: &'a HeaderValue,
    /// The client's fields that go on. The response's header map reuses the allocation.
    pub headers: HeaderMap,
    /// The gateway's fields, written after the client's.
    pub added: &'a Added<'a>,
}

/// Writes a request head into `out` (emptied first): `METHOD target HTTP/1.1`, `Host`,
/// the request's fields but `Host` and `TE` (trailers are not read on this path: none are
/// invited), then the added ones.
pub fn encode_head(out: &mut Vec<u8>, r: &Outgoing<'_>) {
    out.clear();
    // Room for typical fields without a pass to measure them; a longer head grows once.
    out.reserve(r.method.as_str().len() + r.target.len() + 14 + 64 * (r.headers.len() + 6));
    out.extend_from_slice(r.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(r.target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    write_field(out, b"host", r.host.as_bytes());
    for (name, value) in &r.headers {
        if name == header::HOST || name == header::TE {
            continue;
        }
        write_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    for (name, value) in r.added.fields() {
        write_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes one header line, `name: value` and CRLF, in either direction.
pub(crate) fn write_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
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
        now: Instant,
        deadline: Instant,
    ) -> Result<Response<Body>, Error> {
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
            match conn.exchange_by(method_head, deadline, &mut r.headers).await {
                Ok(parsed) => return Ok(self.response(conn, parsed)),
                Err(Failure::Stale { unwritten, .. }) if reused && (unwritten || idempotent) => {
                    written = Some(std::mem::take(&mut conn.out));
                    stale += 1;
                }
                Err(Failure::Stale { error, .. }) => return Err(Error::Io(error)),
                Err(Failure::Other(e)) => return Err(e),
            }
        }
    }

    fn response(&self, mut conn: Box<Conn>, p: Parsed) -> Response<Body> {
        let body = match p.framing {
            Framing::Length(0) => {
                if p.reusable {
                    self.inner.checkin(conn);
                }
                Body::Empty
            }
            framing => {
                let state = match framing {
                    Framing::Length(n) => State::Length(n),
                    Framing::Chunked => State::ChunkSize,
                    Framing::Close => State::UntilClose,
                };
                let raw = p.raw.is_some();
                if let Some(head) = p.raw {
                    conn.head = head;
                }
                Body::H1(ResponseBody { conn: Some(conn), pool: self.inner.clone(), state, reusable: p.reusable, raw })
            }
        };
        let mut res = Response::new(body);
        *res.status_mut() = p.status;
        *res.version_mut() = Version::HTTP_11;
        *res.headers_mut() = p.headers;
        res
    }
}

/// Parses a chunk-size line (`1a;name=value CRLF`): the bytes it takes and the size, or
/// `None` when the line is not complete yet. Stricter than httparse's version, as hyper
/// is: at least one hex digit, no bare LF, no control bytes in extensions (a lenient
/// parser here is how chunk-extension smuggling desynchronises a reused connection).
fn chunk_size(buf: &[u8]) -> Result<Option<(usize, u64)>, &'static str> {
    let mut size: u64 = 0;
    let mut digits = 0;
    let mut i = 0;
    while let Some(&b) = buf.get(i) {
        let v = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            b'A'..=b'F' => b - b'A' + 10,
            _ => break,
        };
        digits += 1;
        if digits > 16 {
            return Err("chunk size too large");
        }
        size = size << 4 | u64::from(v);
        i += 1;
    }
    if i == buf.len() {
        return Ok(None);
    }
    if digits == 0 {
        return Err("invalid chunk size");
    }
    // Optional whitespace, then extensions up to the CRLF.
    let mut in_ext = false;
    while let Some(&b) = buf.get(i) {
        match b {
            b'\r' => {
                return match buf.get(i + 1) {
                    None => Ok(None),
                    Some(b'\n') => Ok(Some((i + 2, size))),
                    Some(_) => Err("invalid chunk size line"),
                };
            }
            b';' => in_ext = true,
            b' ' | b'\t' => {}
            0x21..=0x7e | 0x80..=0xff if in_ext => {}
            _ => return Err("invalid chunk size line"),
        }
        i += 1;
    }
    Ok(None)
}

/// Where a response body's reader is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// This many body bytes are still to come.
    Length(u64),
    /// A chunk-size line is next.
    ChunkSize,
    /// This many bytes of the current chunk are still to come.
    ChunkData(u64),
    /// The CRLF after a chunk's data is next.
    ChunkEnd,
    /// Trailer lines after the last chunk, this many bytes of them read so far.
    Trailers(usize),
    /// Everything until the connection closes.
    UntilClose,
    /// The body is complete.
    Done,
}

/// A response body read straight from the upstream connection. Complete, it returns the
/// connection to its pool; dropped early, it closes it.
pub struct ResponseBody {
    conn: Option<Box<Conn>>,
    pool: Arc<PoolInner>,
    /// Whether the response's fields are still only in the connection (`Parsed::raw`).
    raw: bool,
    state: State,
    reusable: bool,
}

impl std::fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody").field("state", &self.state).finish()
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
        self.state = State::Done;
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
        self.state = State::Done;
        self.conn = None;
        Poll::Ready(Some(Err(e)))
    }

    /// Takes up to `want` buffered bytes (reading when none are buffered).
    fn poll_data(&mut self, cx: &mut Context<'_>, want: u64) -> Poll<Result<Bytes, BoxError>> {
        let Some(conn) = self.conn.as_mut() else { return Poll::Ready(Err(eof())) };
        if conn.buf.is_empty() {
            match ready!(conn.poll_fill(cx, BODY_READ)) {
                Ok(0) => return Poll::Ready(Err(eof())),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Err(Box::new(e))),
            }
        }
        let n = usize::try_from(want).unwrap_or(usize::MAX).min(conn.buf.len());
        Poll::Ready(Ok(conn.buf.split_to(n).freeze()))
    }

    /// Makes sure at least `n` bytes are buffered (an error when the stream ends first).
    fn poll_need(&mut self, cx: &mut Context<'_>, n: usize) -> Poll<Result<(), BoxError>> {
        let Some(conn) = self.conn.as_mut() else { return Poll::Ready(Err(eof())) };
        while conn.buf.len() < n {
            match ready!(conn.poll_fill(cx, HEAD_READ)) {
                Ok(0) => return Poll::Ready(Err(eof())),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Err(Box::new(e))),
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            match this.state {
                State::Done => return Poll::Ready(None),
                State::Length(0) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                State::Length(left) => {
                    let data = match ready!(this.poll_data(cx, left)) {
                        Ok(d) => d,
                        Err(e) => return this.fail(e),
                    };
                    let left = left - data.len() as u64;
                    this.state = State::Length(left);
                    if left == 0 {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                State::UntilClose => {
                    let Some(conn) = this.conn.as_mut() else { return Poll::Ready(None) };
                    if conn.buf.is_empty() {
                        match ready!(conn.poll_fill(cx, BODY_READ)) {
                            Ok(0) => {
                                this.state = State::Done;
                                this.conn = None;
                                return Poll::Ready(None);
                            }
                            Ok(_) => {}
                            Err(e) => return this.fail(Box::new(e)),
                        }
                    }
                    let data = conn.buf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                State::ChunkSize => {
                    let Some(buf) = this.conn.as_mut().map(|c| &mut c.buf) else {
                        return Poll::Ready(Some(Err(eof())));
                    };
                    match chunk_size(buf) {
                        Ok(Some((used, size))) => {
                            buf.advance(used);
                            this.state = if size == 0 { State::Trailers(0) } else { State::ChunkData(size) };
                        }
                        Ok(None) => {
                            if buf.len() > MAX_CHUNK_LINE {
                                return this.fail(broken("chunk size line too long"));
                            }
                            let more = buf.len() + 1;
                            if let Err(e) = ready!(this.poll_need(cx, more)) {
                                return this.fail(e);
                            }
                        }
                        Err(m) => return this.fail(broken(m)),
                    }
                }
                State::ChunkData(left) => {
                    let data = match ready!(this.poll_data(cx, left)) {
                        Ok(d) => d,
                        Err(e) => return this.fail(e),
                    };
                    let left = left - data.len() as u64;
                    this.state = if left == 0 { State::ChunkEnd } else { State::ChunkData(left) };
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                State::ChunkEnd => {
                    if let Err(e) = ready!(this.poll_need(cx, 2)) {
                        return this.fail(e);
                    }
                    let Some(buf) = this.conn.as_mut().map(|c| &mut c.buf) else {
                        return Poll::Ready(Some(Err(eof())));
                    };
                    if &buf[..2] != b"\r\n" {
                        return this.fail(broken("missing CRLF after chunk data"));
                    }
                    buf.advance(2);
                    this.state = State::ChunkSize;
                }
                State::Trailers(seen) => {
                    let Some(buf) = this.conn.as_mut().map(|c| &mut c.buf) else {
                        return Poll::Ready(Some(Err(eof())));
                    };
                    match buf.windows(2).position(|w| w == b"\r\n") {
                        Some(0) => {
                            buf.advance(2);
                            this.finish();
                            return Poll::Ready(None);
                        }
                        Some(i) => {
                            buf.advance(i + 2);
                            let seen = seen + i + 2;
                            if seen > MAX_TRAILERS {
                                return this.fail(broken("trailers too large"));
                            }
                            this.state = State::Trailers(seen);
                        }
                        None => {
                            if seen + buf.len() > MAX_TRAILERS {
                                return this.fail(broken("trailers too large"));
                            }
                            let more = buf.len() + 1;
                            if let Err(e) = ready!(this.poll_need(cx, more)) {
                                return this.fail(e);
                            }
                        }
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.state == State::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Length(n) => SizeHint::with_exact(n),
            State::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_in_any_case_and_no_other_token_matches() {
        // Every character RFC 9110 allows in a field name.
        let token: Vec<u8> = (0x21..0x7f).filter(|b| !b"\"(),/:;<=>?@[\\]{}".contains(b)).collect();
        let names: [&[u8]; 9] = [
            b"te",
            b"host",
            b"upgrade",
            b"connection",
            b"keep-alive",
            b"content-length",
            b"proxy-connection",
            b"transfer-encoding",
            b"x-much-longer-than-sixteen-bytes",
        ];
        for lower in names {
            assert!(is_name(lower, lower));
            assert!(is_name(&lower.to_ascii_uppercase(), lower));
            let mixed: Vec<u8> =
                lower.iter().enumerate().map(|(i, b)| if i % 2 == 0 { b.to_ascii_uppercase() } else { *b }).collect();
            assert!(is_name(&mixed, lower));
            assert!(!is_name(&lower[1..], lower) && !is_name(&[lower, b"x"].concat(), lower));
            // Any other token character anywhere makes another name.
            for at in 0..lower.len() {
                for &c in &token {
                    if c.to_ascii_lowercase() == lower[at] {
                        continue;
                    }
                    let mut other = lower.to_vec();
                    other[at] = c;
                    assert!(!is_name(&other, lower), "{:?}", String::from_utf8_lossy(&other));
                }
            }
        }
    }

    fn parsed(head: &str, method_head: bool) -> Result<Option<Parsed>, &'static str> {
        let mut buf = BytesMut::from(head.as_bytes());
        parse_in_map(&mut buf, method_head, &mut NameCache::default())
    }

    /// Parses a head, its fields put into the map also when they were kept as sent.
    fn parse_in_map(
        buf: &mut BytesMut,
        method_head: bool,
        names: &mut NameCache,
    ) -> Result<Option<Parsed>, &'static str> {
        let mut fields = Vec::new();
        let p = parse(buf, method_head, names, &mut HeaderMap::new(), &mut fields)?;
        Ok(p.map(|mut p| {
            if let Some(head) = p.raw.take() {
                assert!(fill_header_map(&mut p.headers, &head, &fields, 0, names));
            }
            p
        }))
    }

    #[test]
    fn fields_are_kept_as_sent_only_when_nothing_needs_the_map() {
        let raw = |head: &str| {
            let mut buf = BytesMut::from(head.as_bytes());
            let mut fields = Vec::new();
            let p =
                parse(&mut buf, false, &mut NameCache::default(), &mut HeaderMap::new(), &mut fields).unwrap().unwrap();
            p.raw.map(|h| {
                fields
                    .iter()
                    .map(|&(n0, n1, v0, v1)| {
                        format!("{}={}", String::from_utf8_lossy(&h[n0..n1]), String::from_utf8_lossy(&h[v0..v1]))
                    })
                    .collect::<Vec<_>>()
            })
        };
        let kept =
            raw("HTTP/1.1 200 OK\r\nServer: a\r\nContent-Length: 5\r\nConnection: keep-alive\r\nX-A: 1\r\n\r\nhello");
        assert_eq!(kept.unwrap(), ["Server=a", "Content-Length=5", "X-A=1"], "as sent, but the plain Connection");
        assert!(raw("HTTP/1.1 200 OK\r\nServer: a\r\n\r\nuntil close").is_some());
        // Names as long as the hop-by-hop and framing ones are kept as sent.
        let same_lengths = "HTTP/1.1 200 OK\r\nTk: a\r\nX-Cache: b\r\nSet-Cookie: c\r\n\
             Accept-Charset: d\r\nContent-Language: e\r\nIf-Modified-Since: f\r\nContent-Length: 2\r\n\r\nok";
        let expected = ["Tk=a", "X-Cache=b", "Set-Cookie=c", "Accept-Charset=d", "Content-Language=e"];
        assert_eq!(raw(same_lengths).unwrap()[..5], expected);
        for head in [
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 204 No Content\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok",
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: x-hop\r\nx-hop: 1\r\n\r\nok",
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nKeep-Alive: timeout=5\r\n\r\nok",
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nProxy-Connection: x\r\n\r\nok",
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTrailer: x\r\n\r\nok",
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTE: x\r\n\r\nok",
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nUpgrade: x\r\n\r\nok",
        ] {
            assert!(raw(head).is_none(), "{head:?}");
        }
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"[..]);
        let p =
            parse(&mut buf, true, &mut NameCache::default(), &mut HeaderMap::new(), &mut Vec::new()).unwrap().unwrap();
        assert!(p.raw.is_none() && p.headers["content-length"] == "5", "HEAD: no body to carry the fields");
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let p = parsed("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", false).unwrap().unwrap();
        assert_eq!((p.framing, p.reusable), (Framing::Length(5), true));
        let p = parsed("HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n", false).unwrap().unwrap();
        assert_eq!((p.framing, p.reusable), (Framing::Chunked, true));
        // Both: chunked wins, the length is dropped, the connection is not reused.
        let p = parsed("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert_eq!((p.framing, p.reusable), (Framing::Chunked, false));
        assert!(p.headers.get("content-length").is_none());
        let p = parsed("HTTP/1.1 200 OK\r\nServer: x\r\n\r\n", false).unwrap().unwrap();
        assert_eq!((p.framing, p.reusable), (Framing::Close, false));
        let p = parsed("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true).unwrap().unwrap();
        assert_eq!((p.framing, p.reusable), (Framing::Length(0), true));
        assert_eq!(p.headers["content-length"], "5");
        let p = parsed("HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n", false).unwrap().unwrap();
        assert_eq!(p.framing, Framing::Length(0));
        let p = parsed("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false).unwrap().unwrap();
        assert!(!p.reusable);
        let p = parsed("HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nContent-Length: 1\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert!(!p.reusable);
        assert!(p.headers.get("connection").is_none());
        let p =
            parsed("HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n", false).unwrap().unwrap();
        assert!(p.reusable && p.headers.get("connection").is_none());
        // A `Connection` that names another field stays for the hop-by-hop pass.
        let head = "HTTP/1.1 200 OK\r\nConnection: x-hop\r\nConnection: close\r\nx-hop: 1\r\nContent-Length: 1\r\n\r\n";
        let p = parsed(head, false).unwrap().unwrap();
        assert!(!p.reusable);
        assert_eq!(p.headers.get_all("connection").iter().collect::<Vec<_>>(), ["x-hop"]);
        // Repeated equal lengths collapse to one.
        let p = parsed("HTTP/1.1 200 OK\r\nContent-Length: 4, 4\r\nContent-Length: 4\r\n\r\n", false).unwrap().unwrap();
        assert_eq!(p.framing, Framing::Length(4));
        assert_eq!(p.headers.get_all("content-length").iter().count(), 1);
    }

    #[test]
    fn header_names_are_reused_by_position_only_when_the_bytes_match() {
        let mut names = NameCache::default();
        let map = |names: &mut NameCache, head: &str| {
            let mut buf = BytesMut::from(head.as_bytes());
            parse_in_map(&mut buf, false, names).map(|p| p.unwrap().headers)
        };
        let many: String = (0..20).map(|i| format!("X-F{i}: {i}\r\n")).collect();
        let first = format!("HTTP/1.1 200 OK\r\nServer: a\r\nX-Custom: 1\r\n{many}Content-Length: 0\r\n\r\n");
        let h = map(&mut names, &first).unwrap();
        assert_eq!((h["server"].to_str().unwrap(), h["x-custom"].to_str().unwrap(), h.len()), ("a", "1", 23));
        assert_eq!(names.names.len(), NAMES_KEPT);
        // Same names: the kept ones are used; other names at the same places are parsed anew.
        let h = map(&mut names, &first).unwrap();
        assert_eq!((h["x-f19"].to_str().unwrap(), h.len()), ("19", 23));
        let h = map(&mut names, "HTTP/1.1 200 OK\r\nSERVER: b\r\nX-Other: 2\r\nContent-Length: 0\r\n\r\n").unwrap();
        assert_eq!((h["server"].to_str().unwrap(), h["x-other"].to_str().unwrap()), ("b", "2"));
        assert!(h.get("x-custom").is_none());
        assert_eq!(&*names.names[1].0, b"X-Other");
    }

    #[test]
    fn a_response_head_reuses_the_spare_map_and_none_of_its_fields() {
        let mut spare = HeaderMap::with_capacity(40);
        spare.insert("x-request-field", HeaderValue::from_static("stale"));
        let room = spare.capacity();
        let mut buf = BytesMut::from(&b"HTTP/1.1 204 No Content\r\nServer: a\r\nX-B: 2\r\n\r\n"[..]);
        let p = parse(&mut buf, false, &mut NameCache::default(), &mut spare, &mut Vec::new()).unwrap().unwrap();
        assert_eq!(p.headers.len(), 2);
        assert!(p.headers.get("x-request-field").is_none());
        assert_eq!(p.headers.capacity(), room, "the same allocation");
        // Fields kept as sent: the map is the spare one, emptied, for later.
        let mut spare2 = HeaderMap::with_capacity(40);
        spare2.insert("x-request-field", HeaderValue::from_static("stale"));
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\nServer: a\r\nContent-Length: 2\r\n\r\nok"[..]);
        let q = parse(&mut buf, false, &mut NameCache::default(), &mut spare2, &mut Vec::new()).unwrap().unwrap();
        assert!(q.raw.is_some() && q.headers.is_empty() && q.headers.capacity() == room);
        // A partial head leaves the spare map where it was.
        let mut spare = HeaderMap::with_capacity(40);
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\nServer: a\r\n"[..]);
        assert!(parse(&mut buf, false, &mut NameCache::default(), &mut spare, &mut Vec::new()).unwrap().is_none());
        assert_eq!(spare.capacity(), room);
        // Kept for reuse only up to a size.
        let mut kept = HeaderMap::new();
        recycle(&mut kept, p.headers);
        assert!(kept.is_empty() && kept.capacity() == room);
        let mut kept = HeaderMap::new();
        recycle(&mut kept, HeaderMap::with_capacity(SPARE_MAX * 2));
        assert_eq!(kept.capacity(), 0);
    }

    #[test]
    fn connection_values_are_read_as_tokens() {
        for (v, want) in [
            (&b"keep-alive"[..], (false, true)),
            (b"Keep-Alive", (false, true)),
            (b"close", (true, true)),
            (b"CLOSE", (true, true)),
            (b" close ", (true, true)),
            (b"keep-alive, Close", (true, true)),
            (b"x-hop", (false, false)),
            (b"close, x-hop", (true, false)),
            (b"", (false, true)),
        ] {
            assert_eq!(connection_tokens(v), want, "{:?}", String::from_utf8_lossy(v));
        }
    }

    #[test]
    fn content_lengths_are_read_strictly() {
        let cl = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(header::CONTENT_LENGTH, HeaderValue::from_str(v).unwrap());
            }
            content_length_of(&h)
        };
        assert_eq!(cl(&[]), Ok(None));
        assert_eq!(cl(&["0"]), Ok(Some((0, true))));
        assert_eq!(cl(&["218"]), Ok(Some((218, true))));
        assert_eq!(cl(&["9999999999999999999"]), Ok(Some((9_999_999_999_999_999_999, true))));
        // Past the plain reader's 19 digits, the general one: u64::MAX still fits.
        assert_eq!(cl(&["18446744073709551615"]), Ok(Some((u64::MAX, true))));
        assert_eq!(cl(&["00000000000000000000005"]), Ok(Some((5, true))));
        assert_eq!(cl(&["5, 5"]), Ok(Some((5, false))));
        assert_eq!(cl(&["5", "5"]), Ok(Some((5, false))));
        for bad in [&["18446744073709551616"][..], &["+5"], &["-1"], &["5a"], &[""], &["5,6"], &["5", "6"], &["5,"]] {
            assert!(cl(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bad_heads_are_errors() {
        for head in [
            "HTTP/1.1 200 OK\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: +4\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
            "HTTX/1.1 200 OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert!(parsed(head, false).is_err(), "{head:?}");
        }
        let enough = format!("HTTP/1.1 200 OK\r\n{}Content-Length: 0\r\n\r\n", "x-a: 1\r\n".repeat(MAX_HEADERS - 1));
        assert_eq!(parsed(&enough, false).unwrap().unwrap().headers.len(), MAX_HEADERS);
        let many = format!("HTTP/1.1 200 OK\r\n{}\r\n", "x-a: 1\r\n".repeat(MAX_HEADERS + 1));
        assert_eq!(parsed(&many, false).err(), Some("too many header fields"));
        assert!(parsed("HTTP/1.1 200 OK\r\nContent-Len", false).unwrap().is_none());
    }

    #[test]
    fn chunk_size_lines_are_parsed_strictly() {
        assert_eq!(chunk_size(b"1a\r\nxx"), Ok(Some((4, 26))));
        assert_eq!(chunk_size(b"FF;name=\"v\" ;x\r\n"), Ok(Some((16, 255))));
        assert_eq!(chunk_size(b"0\r\n"), Ok(Some((3, 0))));
        assert_eq!(chunk_size(b"1a"), Ok(None));
        assert_eq!(chunk_size(b"1a;ext"), Ok(None));
        assert_eq!(chunk_size(b"1a\r"), Ok(None));
        for bad in [
            &b"\r\n"[..],
            b";x\r\n",
            b"1a\n",
            b"1a;x\ny\r\n",
            b"1a;\x01\r\n",
            b"1a\rx",
            b"g\r\n",
            b"12345678901234567\r\n",
        ] {
            assert!(chunk_size(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn informational_heads_are_skipped() {
        let mut buf = BytesMut::from(&b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"[..]);
        let p = parse_in_map(&mut buf, false, &mut NameCache::default()).unwrap().unwrap();
        assert_eq!(p.status, 201);
        assert!(p.headers.get("link").is_none());
        assert_eq!(&buf[..], b"ok");
    }

    #[test]
    fn heads_are_encoded_as_given() {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("client.test"));
        h.append("x-m", HeaderValue::from_static("1"));
        h.append("x-m", HeaderValue::from_static("2"));
        h.append("te", HeaderValue::from_static("trailers"));
        h.append("forwarded", HeaderValue::from_static("for=10.0.0.9"));
        let peer = crate::forwarded::PeerHeaders::new("10.0.0.1".parse().unwrap(), "http");
        let id = (HeaderName::from_static("x-request-id"), HeaderValue::from_static("r1"));
        let added = crate::forwarded::forwarding(&mut h, &peer, true, None).with_request_id(&id.0, &id.1);
        let host = HeaderValue::from_static("a:1");
        let mut r = Outgoing { method: &Method::DELETE, target: "/p?q=1", host: &host, headers: h, added: &added };
        let mut out = b"left from before".to_vec();
        encode_head(&mut out, &r);
        let fields = "x-m: 1\r\nx-m: 2\r\nforwarded: for=10.0.0.9\r\n";
        let ours = "x-forwarded-for: 10.0.0.1\r\nx-forwarded-proto: http\r\nforwarded: for=10.0.0.1;proto=http\r\nx-request-id: r1\r\n";
        let want = format!("DELETE /p?q=1 HTTP/1.1\r\nhost: a:1\r\n{fields}{ours}\r\n");
        assert_eq!(String::from_utf8(out.clone()).unwrap(), want, "Host first, no TE, the gateway's fields last");
        // Longer than the room made up front: the head grows and stays whole.
        let long = "c".repeat(5000);
        r.headers.insert("cookie", HeaderValue::from_str(&long).unwrap());
        r.method = &Method::GET;
        encode_head(&mut out, &r);
        let want = format!("GET /p?q=1 HTTP/1.1\r\nhost: a:1\r\n{fields}cookie: {long}\r\n{ours}\r\n");
        assert_eq!(String::from_utf8(out).unwrap(), want);
    }
}
