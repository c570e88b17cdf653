//! The log phase: the request's metrics and its access-log line, written exactly once.
//!
//! Normally when the handler has answered ([`LogPhase::finish`]). When the request's future
//! is dropped before that (an HTTP/2 client reset its stream, or hyper's HTTP/1 connection
//! ended under a request whose body was still arriving), on drop: status 499, nginx's
//! "client closed request", counted in `gateway_client_aborts_total` and never against the
//! upstream.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use http::{HeaderValue, Method, StatusCode, Uri, Version};
use tokio::time::Instant;

use super::{ConnInfo, Outcome};
use crate::Shared;
use crate::compile::Snapshot;
use crate::error::CLIENT_CLOSED_REQUEST;
use crate::observe::AccessRecord;

/// What the log phase writes, filled in as the request goes through the other phases.
pub(super) struct LogPhase<'a> {
    shared: &'a Shared,
    snap: &'a Snapshot,
    conn: &'a ConnInfo,
    /// When the request head arrived.
    pub start: Instant,
    /// The wall-clock start, when the access log is on.
    wall_start: Option<SystemTime>,
    /// The request's ID (the one sent upstream and answered).
    pub request_id: HeaderValue,
    /// Method.
    pub method: Method,
    /// The URI to log (credentials hidden), when the access log is on.
    pub uri: Option<Uri>,
    version: Version,
    user_agent: Option<HeaderValue>,
    client_ip: IpAddr,
    /// The matched route's index.
    pub route: Option<usize>,
    /// The authenticated caller.
    pub user_id: Option<Arc<str>>,
    /// What the handler learned.
    pub outcome: Outcome,
    /// Requests left in the tightest rate limit.
    pub rate_remaining: Option<u64>,
    written: bool,
}

impl<'a> LogPhase<'a> {
    /// Starts the record of a request that arrived at `start` with this head. Inlined, so
    /// the record is built where it lives rather than copied there.
    #[inline(always)]
    pub(super) fn new(
        shared: &'a Shared,
        snap: &'a Snapshot,
        conn: &'a ConnInfo,
        start: Instant,
        req: &http::Request<crate::body::Body>,
        request_id: HeaderValue,
        client_ip: IpAddr,
    ) -> Self {
        let wall_start = shared.access_log.enabled().then(SystemTime::now);
        Self {
            shared,
            snap,
            conn,
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
            written: false,
        }
    }

    /// Writes the record for an answer of `status`, and gives back the request ID. By
    /// reference: taking the record by value would copy it once more per request.
    pub(super) fn finish(&mut self, status: StatusCode) -> HeaderValue {
        self.write(status);
        // Moved out rather than cloned: a static placeholder is left for the drop.
        std::mem::replace(&mut self.request_id, HeaderValue::from_static(""))
    }

    fn write(&mut self, status: StatusCode) {
        self.written = true;
        let route = self.route.map(|i| &self.snap.routes[i]);
        let elapsed = self.start.elapsed();
        let status = status.as_u16();
        route.map_or(&self.snap.no_route_requests, |r| &r.requests).count(&self.method, status);
        route.map_or(&self.snap.no_route_duration, |r| &r.duration).observe(elapsed);
        if let Some(b) = self.outcome.backend_latency {
            self.shared.metrics.overhead.observe(elapsed.saturating_sub(b));
        }
        let (Some(start), Some(uri)) = (self.wall_start, self.uri.take()) else { return };
        self.shared.access_log.log(AccessRecord {
            start,
            request_id: self.request_id.clone(),
            method: self.method.clone(),
            uri,
            version: self.version,
            status,
            latency: elapsed,
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
        });
    }
}

impl Drop for LogPhase<'_> {
    fn drop(&mut self) {
        if self.written {
            return;
        }
        if let Some(r) = self.route.map(|i| &self.snap.routes[i]) {
            self.shared.metrics.client_aborted(&r.name);
        }
        self.write(CLIENT_CLOSED_REQUEST);
    }
}
