//! The log phase: the request's metrics and its access-log line, each written exactly once.
//!
//! Metrics (`gateway_requests_total`, the duration histograms) are written when the response
//! head is ready ([`LogPhase::head`]). The access-log line waits for the end of the response
//! body ([`LogPhase::end`]): it records the bytes sent, the whole duration and how the
//! exchange ended (`complete`, `client_abort`, `upstream_abort`). Whoever writes the body
//! calls `end`: the lean HTTP/1.1 loop after its last write, hyper's path when the response
//! body ends, fails or is dropped (server/conn.rs).
//!
//! A record dropped before its head (an HTTP/2 client reset its stream, or hyper's HTTP/1
//! connection ended under a request whose body was still arriving) is written on drop as
//! 499, nginx's "client closed request", and counted in `gateway_client_aborts_total`,
//! never against the upstream. One dropped after its head but before `end` is a client that
//! stopped reading: written with `client_abort`.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderName, HeaderValue, Method, StatusCode, Uri, Version};
use tokio::time::Instant;

use super::{ConnInfo, Outcome};
use crate::Shared;
use crate::compile::Snapshot;
use crate::error::CLIENT_CLOSED_REQUEST;
use crate::observe::AccessRecord;

/// How a response ended, for the access log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Completion {
    /// Every byte of the body was written.
    Complete,
    /// The client went away (or stopped reading) before the body's end.
    ClientAbort,
    /// The upstream's body failed part-way (reset, closed early, malformed).
    UpstreamAbort,
}

impl Completion {
    fn as_str(self) -> &'static str {
        match self {
            Completion::Complete => "complete",
            Completion::ClientAbort => "client_abort",
            Completion::UpstreamAbort => "upstream_abort",
        }
    }
}

/// What the log phase writes, filled in as the request goes through the other phases.
/// Owns what it needs, so the record can follow the response body past the handler.
pub struct LogPhase {
    shared: Arc<Shared>,
    snap: Arc<Snapshot>,
    conn: Arc<ConnInfo>,
    /// When the request head arrived.
    pub(super) start: Instant,
    /// The wall-clock start, when the access log is on.
    wall_start: Option<SystemTime>,
    /// The request's ID (the one sent upstream and answered).
    pub(super) request_id: HeaderValue,
    /// Method.
    pub(super) method: Method,
    /// The URI to log (credentials hidden), when the access log is on.
    pub(super) uri: Option<Uri>,
    version: Version,
    user_agent: Option<HeaderValue>,
    client_ip: IpAddr,
    /// The matched route's index.
    pub(super) route: Option<usize>,
    /// The authenticated caller.
    pub(super) user_id: Option<Arc<str>>,
    /// What the handler learned.
    pub(super) outcome: Outcome,
    /// Requests left in the tightest rate limit.
    pub(super) rate_remaining: Option<u64>,
    /// The answer's status and the time to its head, once [`LogPhase::head`] ran.
    head: Option<(u16, Duration)>,
    written: bool,
}

impl LogPhase {
    /// Starts the record of a request that arrived at `start` with this head. Boxed: it
    /// follows the response out of the pipeline, and moving 400 bytes by value through
    /// the return, the lean loop's `select!` and `end` cost more than the allocation.
    #[allow(clippy::too_many_arguments, reason = "each is one fact of the request, read once here")]
    pub(super) fn new(
        shared: &Arc<Shared>,
        snap: &Arc<Snapshot>,
        conn: &Arc<ConnInfo>,
        start: Instant,
        req: &http::Request<crate::body::Body>,
        request_id: HeaderValue,
        client_ip: IpAddr,
    ) -> Box<Self> {
        let wall_start = shared.access_log.enabled().then(SystemTime::now);
        Box::new(Self {
            shared: shared.clone(),
            snap: snap.clone(),
            conn: conn.clone(),
            start,
            wall_start,
            request_id,
            method: req.method().clone(),
            uri: wall_start.map(|_| req.uri().clone()),
            version: req.version(),
            user_agent: wall_start.and_then(|_| req.headers().get(http::header::USER_AGENT).cloned()),
            client_ip,
            route: None,
            user_id: None,
            outcome: Outcome::default(),
            rate_remaining: None,
            head: None,
            written: false,
        })
    }

    /// The response head of `status` is ready: counts the request and its durations.
    pub(super) fn head(&mut self, status: StatusCode) {
        let elapsed = self.start.elapsed();
        let status = status.as_u16();
        self.head = Some((status, elapsed));
        let route = self.route.map(|i| &self.snap.routes[i]);
        route.map_or(&self.snap.no_route_requests, |r| &r.requests).count(&self.method, status);
        route.map_or(&self.snap.no_route_duration, |r| &r.duration).observe(elapsed);
        if let Some(b) = self.outcome.backend_latency {
            self.shared.metrics.overhead.observe(elapsed.saturating_sub(b));
        }
    }

    /// The request ID field to answer with: the configured name and this request's ID.
    pub fn request_id_field(&self) -> (&HeaderName, &HeaderValue) {
        (&self.snap.request_id_header, &self.request_id)
    }

    /// The response body ended, after `bytes` bytes: writes the access-log line.
    #[inline]
    pub fn end(mut self: Box<Self>, bytes: u64, how: Completion) {
        if self.wall_start.is_none() {
            // No access log: the metrics were written with the head.
            self.written = true;
            return;
        }
        self.write(bytes, how);
    }

    fn write(&mut self, bytes: u64, how: Completion) {
        self.written = true;
        let Some((status, latency)) = self.head else { return };
        let (Some(start), Some(uri)) = (self.wall_start, self.uri.take()) else { return };
        let route = self.route.map(|i| &self.snap.routes[i]);
        self.shared.access_log.log(AccessRecord {
            start,
            request_id: self.request_id.clone(),
            method: self.method.clone(),
            uri,
            version: self.version,
            status,
            latency,
            client_ip: self.client_ip,
            user_agent: self.user_agent.take(),
            user_id: self.user_id.take(),
            rate_limit_remaining: self.rate_remaining,
            route: route.map(|r| r.name.clone()),
            backend_service: self
                .outcome
                .upstream
                .take()
                .or_else(|| route.and_then(|r| r.upstream()).map(|u| u.name.clone())),
            backend_latency: self.outcome.backend_latency,
            listener: self.conn.listener.name.clone(),
            bytes_sent: bytes,
            duration: self.start.elapsed(),
            completion: how.as_str(),
            calls: self.outcome.calls.take(),
        });
    }
}

impl Drop for LogPhase {
    fn drop(&mut self) {
        if self.written {
            return;
        }
        if self.head.is_none() {
            // Gone before there was an answer: the client closed the request.
            if let Some(r) = self.route.map(|i| &self.snap.routes[i]) {
                self.shared.metrics.client_aborted(&r.name);
            }
            self.head(CLIENT_CLOSED_REQUEST);
        }
        self.write(0, Completion::ClientAbort);
    }
}

impl std::fmt::Debug for LogPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogPhase").field("request_id", &self.request_id).field("head", &self.head).finish()
    }
}
