//! The proxy handler: sends the request to a target of the route's upstream and streams
//! the answer back. Bodies stream without buffering, except a small request body kept for
//! replay when the upstream retries. WebSocket upgrades become a byte tunnel.
//!
//! Order of checks: the route's and the upstream's concurrency limits (wait up to
//! `queue_timeout`, then 503), the circuit breaker (open: 503 or the fallback at once),
//! then tries: pick an available target (another one on a retry), send with the per-try
//! timeout, and retry what is safe to retry while attempts, the retry budget and the
//! request deadline allow.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Version, header};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use portico_config::UpstreamProtocol;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::Shared;
use crate::body::{Body, ClientBody, ClientBodyWatch};
use crate::compile::CompiledRoute;
use crate::error::{ErrorKind, GatewayError, Side};
use crate::forwarded;
use crate::pipeline::{Outcome, host_of};
use crate::proto::grpc;
use crate::upstream::{self, Exchange, PickKey, Upstream, retry};

/// What the proxy needs besides the request.
#[derive(Debug)]
pub struct ProxyCtx<'a> {
    /// The matched route.
    pub route: &'a CompiledRoute,
    /// The rewritten path, when the route rewrites.
    pub new_path: Option<String>,
    /// Forwarding header values of the connection's peer.
    pub peer: &'a forwarded::PeerHeaders,
    /// Whether the peer is a trusted proxy.
    pub peer_trusted: bool,
    /// The client's IP (through trusted proxies), for `hash_on: client_ip`.
    pub client_ip: std::net::IpAddr,
    /// The listener's body limit.
    pub max_body: u64,
    /// Process-wide state.
    pub shared: &'a Shared,
    /// What the connection's TLS handshake established, on a TLS listener.
    pub tls: Option<&'a crate::pipeline::TlsInfo>,
    /// The upstream chosen for this request instead of the route's (a tenant's feature
    /// flag, `flag_upstreams`).
    pub upstream_override: Option<&'a Arc<Upstream>>,
    /// The request ID header and value to send (the request carries none of its own).
    pub request_id: (&'a HeaderName, &'a HeaderValue),
    /// The client's `Host` field, when the request target has no authority.
    pub client_host: Option<&'a HeaderValue>,
    /// Whether the request has an `Upgrade` field.
    pub may_upgrade: bool,
    /// When the request arrived, if nothing since could have made it wait (no request
    /// plugin ran): the upstream's timeouts count from here, without another clock read.
    pub started: Option<Instant>,
    /// The whole request's timeout, instead of the route's or the upstream's (an
    /// aggregate's call).
    pub timeout: Option<Duration>,
}

static IDEMPOTENCY_KEY: header::HeaderName = header::HeaderName::from_static("idempotency-key");

/// The breaker's permission for one request. Dropped without an outcome (the client went
/// away, or the request failed before reaching the upstream), it gives a half-open probe
/// slot back.
struct Ticket<'a> {
    breaker: &'a crate::upstream::breaker::Breaker,
    permit: Option<crate::upstream::breaker::Permit>,
}

impl Ticket<'_> {
    fn record(&mut self, failed: bool) {
        if let Some(p) = self.permit.take() {
            self.breaker.record(p, failed);
        }
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.permit.take() {
            self.breaker.abandon(p);
        }
    }
}

/// Waits for a slot under a concurrency limit; a wait is recorded in `waited`; a full
/// limit answers `full`.
async fn acquire(
    limit: &Option<Arc<Semaphore>>,
    wait: Duration,
    waited: &crate::observe::histogram::Histogram,
    full: ErrorKind,
) -> Result<Option<OwnedSemaphorePermit>, GatewayError> {
    let Some(sem) = limit else { return Ok(None) };
    let overloaded = || GatewayError::new(full.clone());
    if let Ok(p) = sem.clone().try_acquire_owned() {
        return Ok(Some(p));
    }
    if wait.is_zero() {
        return Err(overloaded());
    }
    let start = Instant::now();
    let res = tokio::time::timeout(wait, sem.clone().acquire_owned()).await;
    waited.observe(start.elapsed());
    match res {
        Ok(Ok(p)) => Ok(Some(p)),
        _ => Err(overloaded()),
    }
}

/// Forwards `req` upstream and returns the upstream's response.
/// `primary` is the route's upstream (with `split`: the first share with a weight).
pub async fn forward(
    mut req: Request<Body>,
    primary: &Arc<Upstream>,
    mut ctx: ProxyCtx<'_>,
    outcome: &mut Outcome,
) -> Result<Response<Body>, GatewayError> {
    let route = ctx.route;
    let upstream = match (ctx.upstream_override, &route.split) {
        (Some(up), _) => up,
        (None, None) => primary,
        (None, Some(_)) => {
            let key = PickKey { headers: req.headers(), added: None, client_ip: ctx.client_ip, path: req.uri().path() };
            route.choose_upstream(primary, &key)
        }
    };
    if route.split.is_some() || ctx.upstream_override.is_some() {
        outcome.upstream = Some(upstream.name.clone());
    }
    let started = ctx.started.unwrap_or_else(Instant::now);
    let timeout = ctx.timeout.unwrap_or_else(|| route.timeout_for(upstream));
    // A gRPC client's deadline, when shorter (never longer: the route's is the limit).
    let grpc_call = grpc::is_grpc(req.version(), req.headers());
    // Whether the client gave a deadline, which each try then passes on.
    let mut tells_deadline = false;
    // Whether that deadline is the one in force (shorter than the route's): then its
    // passing is the client's choice, not the upstream's slowness.
    let mut client_deadline = false;
    let mut timeout = timeout;
    if grpc_call && let Some(v) = req.headers().get(&grpc::GRPC_TIMEOUT) {
        tells_deadline = true;
        if let Some(t) = grpc::parse_timeout(v)
            && t < timeout
        {
            timeout = t;
            client_deadline = true;
        }
    }
    let deadline = started + timeout;

    // Without limits (the usual case), no wait is set up at all.
    let _route_slot = match &route.limit {
        None => None,
        limit => acquire(limit, route.queue_timeout, &route.queue_wait, ErrorKind::RouteMaxInFlight).await?,
    };
    let _upstream_slot = match &upstream.limit {
        None => None,
        limit => acquire(limit, upstream.queue_timeout, &upstream.queue_wait, ErrorKind::UpstreamMaxInFlight).await?,
    };
    let permit = match &upstream.breaker {
        Some(b) => match b.allow() {
            Ok(p) => Some(Ticket { breaker: b, permit: Some(p) }),
            Err(wait) => {
                return match upstream.definition.circuit_breaker.as_ref().and_then(|c| c.fallback.as_ref()) {
                    Some(f) => Ok(fallback_response(f, wait)),
                    None => Err(GatewayError::new(ErrorKind::CircuitOpen(wait))),
                };
            }
        },
        None => None,
    };

    let upgrade = req.version() == Version::HTTP_11
        && ctx.may_upgrade
        && upstream.definition.protocol == UpstreamProtocol::Http1
        && forwarded::wants_upgrade(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));

    let pq = match ctx.new_path.take() {
        Some(mut p) => {
            if let Some(q) = req.uri().query() {
                p.push('?');
                p.push_str(q);
            }
            PathAndQuery::try_from(p).map_err(|_| GatewayError::new(ErrorKind::BadRequest("invalid rewritten path")))?
        }
        None => req.uri().path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/")),
    };
    // The client's host: its `Host` header (a cheap clone) or the URI authority (HTTP/2).
    let original_host = match (req.uri().authority(), ctx.client_host) {
        (None, h) => h.cloned(),
        _ => host_of(&req).and_then(|h| HeaderValue::from_str(h).ok()),
    };
    let (parts, body) = req.into_parts();
    let method = parts.method;
    let mut headers = parts.headers;
    forwarded::remove_hop_by_hop(&mut headers, upgrade);
    let added = forwarded::forwarding(&mut headers, ctx.peer, ctx.peer_trusted, original_host.as_ref())
        .with_request_id(ctx.request_id.0, ctx.request_id.1);
    // Client copies of certificate headers were removed with the other identity headers
    // (identity); add the verified subject of this connection's certificate.
    if let Some(tls) = ctx.tls
        && let Some(name) = &tls.forward_header
    {
        headers.remove(name);
        if let Some(subject) = &tls.client_subject_value {
            headers.insert(name.clone(), subject.clone());
        }
    }

    // Can this request be tried more than once? Its body must be replayable, and a retry
    // after the upstream may have seen it needs a method that is safe to repeat.
    let policy = upstream.definition.retries.as_ref().filter(|_| !upgrade);
    let repeatable = policy.is_some_and(|p| {
        p.methods.iter().any(|m| m.as_str() == method.as_str())
            || (p.idempotency_key && headers.contains_key(&IDEMPOTENCY_KEY))
    });
    let mut body = Some(body);
    let mirror = ctx.route.mirror.as_ref().filter(|m| !upgrade && fastrand::f64() < m.fraction);
    let keep = policy.map(|p| p.max_body.get()).max(mirror.map(|m| m.max_body));
    let replay: Option<Bytes> = match keep {
        Some(max) => replayable_body(&mut body, &headers, max.min(ctx.max_body)).await?,
        None => None,
    };
    if let (Some(m), Some(bytes)) = (mirror, &replay)
        && bytes.len() as u64 <= m.max_body
    {
        send_mirror(m, &method, &pq, &headers, &added, bytes.clone(), ctx.client_ip);
    }
    // The body is kept up to the larger of the two limits; each use keeps to its own. A
    // body kept only for the mirror is still sent upstream, tried once.
    let replayable = match (&replay, policy) {
        (Some(bytes), Some(p)) => bytes.len() as u64 <= p.max_body.get(),
        _ => false,
    };
    if let Some(budget) = &upstream.budget {
        budget.record_request();
    }

    // Hedged: a replayable request whose method the route hedges (the upstream's retry
    // budget pays for the hedges).
    let hedge = route.hedge.as_deref().filter(|h| replayable && upstream.budget.is_some() && h.covers(&method));
    let may_have_waited = route.limit.is_some() || upstream.limit.is_some() || keep.is_some();
    // Whether the client's body failed on its way: then a failed exchange is the client's.
    let mut watch: Option<ClientBodyWatch> = None;
    let per_try = route.try_timeout_for(upstream);
    let mut tries = 0u32;
    let mut last_target = None;
    let result = loop {
        tries += 1;
        let key = PickKey { headers: &headers, added: Some(&added), client_ip: ctx.client_ip, path: pq.path() };
        let Some(target) = upstream.pick(&key, last_target.as_ref()) else {
            break Err(GatewayError::new(ErrorKind::NoTarget));
        };
        if policy.is_some() {
            // Only a retry avoids the target it tried.
            last_target = Some(target.clone());
        }
        let can_retry = policy.is_some_and(|p| tries <= p.attempts) && replayable;
        let mut h = if can_retry { headers.clone() } else { std::mem::take(&mut headers) };
        let host = match (&original_host, ctx.route.preserve_host) {
            (Some(host), true) => host,
            _ => &target.host_header,
        };
        let mut attempt_body = match (&replay, body.take()) {
            (Some(bytes), _) if bytes.is_empty() => Body::Empty,
            (Some(bytes), _) => Body::full(bytes.clone()),
            (None, Some(b)) if b.is_end_stream_() => Body::Empty,
            (None, Some(b)) => match ClientBody::new(b, ctx.max_body) {
                Ok((b, w)) => {
                    watch = Some(w);
                    Body::Client(Box::new(b))
                }
                Err(b) => b,
            },
            (None, None) => Body::Empty,
        };

        // The first try goes out right after `started` unless a limit or a body read could
        // have made it wait: no second clock read then.
        let sent = if tries == 1 && !may_have_waited { started } else { Instant::now() };
        let left = deadline.saturating_duration_since(sent);
        let try_timeout = if per_try.is_zero() { left } else { per_try.min(left) };
        // The upstream learns the time this try has left (an unreadable value is replaced).
        if tells_deadline {
            h.insert(grpc::GRPC_TIMEOUT.clone(), grpc::encode_timeout(try_timeout));
        }
        // A hedged request's tries record their own outcomes: no flight here then.
        let mut flight = None;
        let res = match (hedge, &replay) {
            (Some(hedge), Some(body)) => {
                let preserve = original_host.as_ref().filter(|_| ctx.route.preserve_host);
                let r = HedgedRequest { method: &method, pq: &pq, headers: &h, added: &added, preserve, body };
                let key = PickKey { headers: &h, added: Some(&added), client_ip: ctx.client_ip, path: pq.path() };
                race(upstream, hedge, target.clone(), &key, r, sent, (per_try, deadline)).await
            }
            _ => {
                flight = Some(upstream.start_at(&target, sent));
                let x = Exchange { method: &method, pq: &pq, host, headers: &mut h, added: Some(&added), upgrade };
                upstream.send(&target, x, &mut attempt_body, sent, sent + try_timeout).await
            }
        };
        let waited = sent.elapsed();
        upstream.latency.observe(waited);
        outcome.backend_latency = Some(outcome.backend_latency.unwrap_or_default() + waited);

        let (err, sent_upstream) = match res {
            Ok(res) => {
                if let Some(flight) = flight {
                    flight.finish(grpc::upstream_failed(&res, grpc_call, client_deadline));
                }
                let retry_status = policy.is_some_and(|p| p.statuses.contains(&res.status().as_u16()));
                // A gRPC call the service did not start on (a trailers-only answer with a
                // status the policy names) is retried whatever its method.
                let retry_grpc = grpc_call
                    && policy.is_some_and(|p| !p.grpc_statuses.is_empty() && grpc::retryable(&res, &p.grpc_statuses));
                if !((retry_status && repeatable || retry_grpc)
                    && can_retry
                    && retry_allowed(upstream, policy, tries, deadline).await)
                {
                    break Ok(res);
                }
                tracing::debug!(upstream = %upstream.name, target = %target.authority, status = res.status().as_u16(), "retrying");
                continue;
            }
            // The deadline passed while the body was waiting for the client, not for the
            // upstream: the client's doing (408), nothing against the target.
            Err(upstream::Error::Timeout) if watch.as_ref().is_some_and(ClientBodyWatch::waiting_for_client) => {
                drop(flight);
                (GatewayError::new(ErrorKind::RequestTimeout), true)
            }
            // The client's own deadline passed: nothing against the target.
            Err(upstream::Error::Timeout)
                if client_deadline && deadline.saturating_duration_since(Instant::now()).is_zero() =>
            {
                drop(flight);
                (GatewayError::new(ErrorKind::ClientDeadline), true)
            }
            Err(upstream::Error::Timeout) => {
                if let Some(flight) = flight {
                    flight.finish(true);
                }
                let total_left = deadline.saturating_duration_since(Instant::now());
                let e = if total_left.is_zero() {
                    GatewayError::new(ErrorKind::UpstreamTimeout(timeout))
                } else {
                    GatewayError::new(ErrorKind::UpstreamTimeout(try_timeout))
                };
                (e, true)
            }
            Err(e) => {
                tracing::debug!(upstream = %upstream.name, target = %target.authority, error = %e, "upstream exchange failed");
                // The client's body failing makes the upstream exchange fail too: the
                // client's fault, whatever the client reports.
                let e = match watch.as_ref().and_then(ClientBodyWatch::failed) {
                    Some(client) => GatewayError::from(client),
                    None => GatewayError::upstream(&e, upstream.connect_timeout, try_timeout),
                };
                if e.side() == Side::Upstream {
                    if let Some(flight) = flight {
                        flight.finish(true);
                    }
                } else {
                    // Neither a success nor a failure of the target: not recorded.
                    drop(flight);
                }
                let sent = !e.retry_safe();
                (e, sent)
            }
        };
        // A failure before the upstream saw the request may be retried for any method; one
        // after only for requests that are safe to repeat.
        let may = can_retry && (repeatable || !sent_upstream) && err.side() != Side::Downstream;
        if may && retry_allowed(upstream, policy, tries, deadline).await {
            tracing::debug!(upstream = %upstream.name, target = %target.authority, error = %err, "retrying");
            continue;
        }
        break Err(err);
    };

    if let Some(mut ticket) = permit {
        let failed = match &result {
            Ok(res) => Some(grpc::upstream_failed(res, grpc_call, client_deadline)),
            // The client's fault says nothing of the upstream: the ticket is given back.
            Err(e) if e.side() == Side::Downstream => None,
            Err(e) => Some(e.side() == Side::Upstream || e.kind == ErrorKind::NoTarget),
        };
        if let Some(failed) = failed {
            ticket.record(failed);
        }
    }
    let mut res = result?;

    if res.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            // An upstream must not switch protocols unasked.
            return Err(GatewayError::new(ErrorKind::BadResponse));
        };
        let upstream_upgrade = hyper::upgrade::on(&mut res);
        let guard = ctx.shared.tracker.enter();
        tokio::spawn(async move {
            let _guard = guard;
            match tokio::try_join!(client_upgrade, upstream_upgrade) {
                Ok((down, up)) => {
                    let mut down = TokioIo::new(down);
                    let mut up = TokioIo::new(up);
                    let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                }
                Err(e) => tracing::debug!(error = %e, "upgrade failed"),
            }
        });
        let (mut parts, _) = res.into_parts();
        forwarded::remove_hop_by_hop(&mut parts.headers, true);
        return Ok(Response::from_parts(parts, Body::Empty));
    }

    let (mut parts, body) = res.into_parts();
    forwarded::remove_hop_by_hop(&mut parts.headers, false);
    Ok(Response::from_parts(parts, body))
}

/// What each try of a hedged request sends.
#[derive(Clone, Copy)]
struct HedgedRequest<'a> {
    method: &'a http::Method,
    pq: &'a PathAndQuery,
    headers: &'a HeaderMap,
    added: &'a forwarded::Added<'a>,
    /// The client's `Host`, when the route preserves it; else each target's own.
    preserve: Option<&'a HeaderValue>,
    body: &'a Bytes,
}

/// Sends `r` to `first`, then to another target each time the tries so far have gone
/// unanswered for the hedge's delay (while the retry budget and the deadline allow), and
/// answers with the first good answer; the other tries are cancelled. A failed try (an
/// error, or a status the upstream retries) waits for the others; when none is left, the
/// last failure is the answer, for the retry policy to judge.
///
/// Each try records its own outcome on its target; a cancelled one records none. Boxed and
/// out of line: only hedged routes pay for its future.
#[inline(never)]
fn race<'a>(
    upstream: &'a Upstream,
    hedge: &'a crate::upstream::hedge::Hedging,
    first: Arc<upstream::Target>,
    key: &'a PickKey<'a>,
    r: HedgedRequest<'a>,
    sent: Instant,
    (per_try, deadline): (Duration, Instant),
) -> std::pin::Pin<Box<dyn Future<Output = Result<Response<Body>, upstream::Error>> + Send + 'a>> {
    use futures_util::StreamExt;
    use futures_util::stream::FuturesUnordered;

    let statuses: &[u16] = upstream.definition.retries.as_ref().map_or(&[], |p| &p.statuses);
    let one = move |i: usize, t: Arc<upstream::Target>, at: Instant| {
        let mut h = r.headers.clone();
        let mut body = if r.body.is_empty() { Body::Empty } else { Body::full(r.body.clone()) };
        let left = deadline.saturating_duration_since(at);
        let until = at + if per_try.is_zero() { left } else { per_try.min(left) };
        async move {
            let host = r.preserve.unwrap_or(&t.host_header);
            // Cancelled (another try won) while in flight: the guard records the wait.
            let mut flight = CancelGuard(Some(upstream.start_at(&t, at)));
            let x =
                Exchange { method: r.method, pq: r.pq, host, headers: &mut h, added: Some(r.added), upgrade: false };
            let res = upstream.send(&t, x, &mut body, at, until).await;
            match (&res, flight.0.take()) {
                (_, None) => {}
                (Ok(res), Some(f)) => {
                    f.finish(res.status().is_server_error());
                    // Answers only: a fast failure (a refused connection) says nothing of
                    // how long an answer takes, and would pull the delay down.
                    hedge.observe(at.elapsed());
                }
                // The request itself, not the target: nothing to record.
                (Err(upstream::Error::Invalid(_) | upstream::Error::Body(_)), Some(f)) => drop(f),
                (Err(_), Some(f)) => f.finish(true),
            }
            (i, res)
        }
    };
    Box::pin(async move {
        let mut tries = FuturesUnordered::new();
        tries.push(one(0, first.clone(), sent));
        // When each try went out; `None` once it answered.
        let mut pending = vec![Some(sent)];
        let mut last = first;
        let mut next = sent + hedge.delay();
        let mut hedging = true;
        let mut failed = None;
        loop {
            let more = hedging && pending.len() <= hedge.max_hedges as usize && next < deadline;
            tokio::select! {
                biased;
                Some((i, res)) = tries.next() => {
                    if let Some(p) = pending.get_mut(i) {
                        *p = None;
                    }
                    let retry_status = matches!(&res, Ok(r) if statuses.contains(&r.status().as_u16()));
                    if res.is_ok() && !retry_status {
                        if i > 0 {
                            upstream.hedge_wins.inc();
                        }
                        // The others are cancelled as `tries` drops. How long they had
                        // waited is a time they would have taken at least: recorded, or a
                        // percentile delay would only ever see the fast answers.
                        pending.iter().flatten().for_each(|at| hedge.observe(at.elapsed()));
                        return res;
                    }
                    if tries.is_empty() {
                        // The upstream's own answer (a 503) over a try's error.
                        return match (res, failed) {
                            (Err(_), Some(Ok(kept))) => Ok(kept),
                            (res, _) => res,
                        };
                    }
                    if res.is_ok() || !matches!(failed, Some(Ok(_))) {
                        failed = Some(res);
                    }
                }
                () = tokio::time::sleep_until(next), if more => {
                    // The budget first: a pick moves the balancer (round robin's turn), which a
                    // hedge that is not sent must not do. A budget token is lost only when no
                    // target is available at all.
                    if !upstream.budget.as_ref().is_some_and(|b| b.try_retry()) {
                        upstream.retries_exhausted.inc();
                        hedging = false;
                        continue;
                    }
                    let Some(target) = upstream.pick(key, Some(&last)) else {
                        hedging = false;
                        continue;
                    };
                    upstream.hedges_total.inc();
                    let at = Instant::now();
                    tries.push(one(pending.len(), target.clone(), at));
                    pending.push(Some(at));
                    last = target;
                    next = at + hedge.delay();
                }
                else => return failed.unwrap_or(Err(upstream::Error::Timeout)),
            }
        }
    })
}

/// A hedged try's flight until it answers; dropped before (the try was cancelled), it
/// records the time waited as a latency ([`upstream::InFlight::cancelled`]).
struct CancelGuard<'a>(Option<upstream::InFlight<'a>>);

impl Drop for CancelGuard<'_> {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f.cancelled();
        }
    }
}

/// Sends a copy of the request to the mirror upstream in a task of its own; the answer
/// is read and dropped. The client's request never waits for it.
fn send_mirror(
    m: &crate::compile::MirrorTo,
    method: &http::Method,
    pq: &PathAndQuery,
    headers: &HeaderMap,
    added: &forwarded::Added<'_>,
    body: Bytes,
    client_ip: std::net::IpAddr,
) {
    let Ok(slot) = m.slots.clone().try_acquire_owned() else {
        m.skipped.inc();
        return;
    };
    let up = m.upstream.clone();
    let key = PickKey { headers, added: Some(added), client_ip, path: pq.path() };
    let Some(target) = up.pick(&key, None) else { return };
    let mut h = headers.clone();
    added.insert_into(&mut h);
    let (method, pq) = (method.clone(), pq.clone());
    let mut body = if body.is_empty() { Body::Empty } else { Body::full(body) };
    tokio::spawn(async move {
        let _slot = slot;
        let now = Instant::now();
        let flight = up.start_at(&target, now);
        let x = Exchange {
            method: &method,
            pq: &pq,
            host: &target.host_header,
            headers: &mut h,
            added: None,
            upgrade: false,
        };
        match up.send(&target, x, &mut body, now, now + up.request_timeout).await {
            Ok(res) => {
                flight.finish(res.status().is_server_error());
                let _ = res.into_body().collect().await;
            }
            Err(_) => flight.finish(true),
        }
    });
}

/// The configured answer while the breaker is open, with `Retry-After`.
fn fallback_response(f: &portico_config::Fallback, wait: Duration) -> Response<Body> {
    let mut res = Response::new(Body::full(f.body.clone()));
    *res.status_mut() = StatusCode::from_u16(f.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    if let Ok(v) = HeaderValue::from_str(&f.content_type) {
        res.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    if let Ok(v) = HeaderValue::from_str(&wait.as_millis().div_ceil(1000).max(1).to_string()) {
        res.headers_mut().insert(header::RETRY_AFTER, v);
    }
    res
}

/// Whether one more try may go: the budget has room and time is left. Waits the backoff.
async fn retry_allowed(
    upstream: &Upstream,
    policy: Option<&portico_config::Retries>,
    tries: u32,
    deadline: Instant,
) -> bool {
    let (Some(p), Some(budget)) = (policy, &upstream.budget) else { return false };
    let wait = retry::backoff(tries, p.backoff.get(), p.max_backoff.get());
    if Instant::now() + wait >= deadline {
        // No time left for another try: do not spend budget on it.
        return false;
    }
    if !budget.try_retry() {
        upstream.retries_exhausted.inc();
        return false;
    }
    upstream.retries_total.inc();
    tokio::time::sleep(wait).await;
    true
}

/// Reads a small body into memory so it can be sent again. `None` when the body is too
/// large (or of unknown length) to keep: such a request is tried once.
async fn replayable_body(
    body: &mut Option<Body>,
    headers: &HeaderMap,
    max: u64,
) -> Result<Option<Bytes>, GatewayError> {
    let Some(b) = body.as_ref() else { return Ok(Some(Bytes::new())) };
    if b.is_end_stream_() {
        *body = None;
        return Ok(Some(Bytes::new()));
    }
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(n) if n <= max => {}
        _ => return Ok(None),
    }
    let Some(b) = body.take() else { return Ok(Some(Bytes::new())) };
    let b = match ClientBody::new(b, max) {
        Ok((b, _)) => Body::Client(Box::new(b)),
        Err(other) => other,
    };
    match b.collect().await {
        Ok(collected) => Ok(Some(collected.to_bytes())),
        Err(e) => Err(GatewayError::request_body(&*e)),
    }
}

/// `is_end_stream` without importing the trait name over our `Body`.
trait EndStream {
    fn is_end_stream_(&self) -> bool;
}

impl EndStream for Body {
    fn is_end_stream_(&self) -> bool {
        http_body::Body::is_end_stream(self)
    }
}
