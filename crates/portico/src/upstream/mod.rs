//! Upstreams: how a request reaches a target ([`Upstream::send`]), the choice of target,
//! and target health.
//!
//! Each target's connections live in one pool: the lean HTTP/1.1 client's ([`h1`], one
//! pool per target) for plain HTTP/1.1 to IP addresses, hyper's (one client per upstream,
//! so pool locking is never shared between upstreams) for the rest. [`Upstream::send`]
//! decides which, for proxied requests, mirrored copies and health checks alike. An
//! upstream whose definition did not change keeps its clients, pools, balancing position
//! and target health across reloads.
//!
//! A target takes traffic while it is *available*: not marked down by active health
//! checks ([`health`]) and not ejected by passive outlier detection. When no target is
//! available the request gets 503 at once rather than waiting for a timeout.

pub mod balance;
pub mod breaker;
pub mod discovery;
pub mod h1;
pub mod health;
pub mod hedge;
pub mod retry;
pub mod tls;

use std::future::Future;
use std::sync::Arc;

use arc_swap::ArcSwap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use http::HeaderValue;
use http::uri::{Authority, Scheme};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use portico_config::{UpstreamProtocol, validate::check_target_url};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::time::Instant;

use crate::body::Body;
use crate::observe::Metrics;
use crate::observe::histogram::Histogram;

pub use balance::PickKey;

/// One backend target and its live state.
#[derive(Debug)]
pub struct Target {
    /// `host:port`, as sent in the request URI.
    pub authority: Authority,
    /// `Host` header value when the client's is not preserved.
    pub host_header: HeaderValue,
    /// Relative weight.
    pub weight: u32,
    /// The socket address, when the target is an IP address (then plain HTTP/1.1
    /// requests use [`h1`]).
    pub addr: Option<std::net::SocketAddr>,
    /// Idle connections for [`h1`].
    pub pool: h1::Pool,
    /// Requests in flight to this target.
    pub in_flight: AtomicU32,
    /// Peak-EWMA latency in nanoseconds, and when it was last updated (ms since the
    /// upstream's epoch).
    ewma_ns: AtomicU64,
    ewma_at_ms: AtomicU64,
    /// Marked up by active health checks (always true without them).
    pub healthy: AtomicBool,
    /// Consecutive failures seen by passive outlier detection.
    consecutive_failures: AtomicU32,
    /// Ejected until this time (ms since the upstream's epoch); 0 when not ejected.
    ejected_until_ms: AtomicU64,
    /// How many times this target was ejected (each ejection lasts longer).
    ejections: AtomicU32,
    /// `gateway_upstream_target_healthy{upstream,target}`.
    health_gauge: Gauge,
    /// `gateway_upstream_ejections_total{upstream,target}`.
    ejections_total: Counter,
    /// Consecutive passed and failed active checks.
    health_passes: AtomicU32,
    health_fails: AtomicU32,
}

impl Target {
    /// A target with fresh state (healthy, not ejected).
    pub fn new(upstream: &str, authority: Authority, host_header: HeaderValue, weight: u32, metrics: &Metrics) -> Self {
        let health_gauge = metrics.target_healthy(upstream, authority.as_str());
        health_gauge.set(1);
        let host = authority.host().trim_start_matches('[').trim_end_matches(']');
        let addr = host
            .parse::<std::net::IpAddr>()
            .ok()
            .map(|ip| std::net::SocketAddr::new(ip, authority.port_u16().unwrap_or(80)));
        Target {
            ejections_total: metrics.target_ejections(upstream, authority.as_str()),
            addr,
            pool: h1::Pool::default(),
            authority,
            host_header,
            weight,
            in_flight: AtomicU32::new(0),
            ewma_ns: AtomicU64::new(0),
            ewma_at_ms: AtomicU64::new(0),
            healthy: AtomicBool::new(true),
            consecutive_failures: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            health_gauge,
            health_passes: AtomicU32::new(0),
            health_fails: AtomicU32::new(0),
        }
    }

    /// Whether the target may take traffic now (`now` reads the upstream's clock, only
    /// for a target that has been ejected).
    #[inline]
    pub fn available(&self, now: &LazyMs) -> bool {
        if !self.healthy.load(Ordering::Relaxed) {
            return false;
        }
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        until == 0 || until <= now.get()
    }
}

/// An upstream's clock (milliseconds since its epoch), read at most once and only when
/// asked: most picks never need it, and a clock read is a measurable part of a request.
#[derive(Debug)]
pub struct LazyMs {
    epoch: Instant,
    ms: std::cell::Cell<Option<u64>>,
}

impl LazyMs {
    fn new(epoch: Instant) -> Self {
        Self { epoch, ms: std::cell::Cell::new(None) }
    }

    /// The clock's reading (the same on every call).
    pub fn get(&self) -> u64 {
        match self.ms.get() {
            Some(ms) => ms,
            None => {
                let ms = self.epoch.elapsed().as_millis() as u64;
                self.ms.set(Some(ms));
                ms
            }
        }
    }
}

/// The targets of an upstream at one moment, with the balancer built over them. Replaced
/// as a whole when service discovery changes the targets; a target present before and
/// after keeps its state (health, ejection, latency).
#[derive(Debug)]
pub struct TargetSet {
    /// The targets.
    pub targets: Vec<Arc<Target>>,
    balancer: balance::Balancer,
}

/// A compiled upstream.
#[derive(Debug)]
pub struct Upstream {
    /// The upstream's name (`backendService` in logs, `upstream` label in metrics).
    pub name: Arc<str>,
    /// The definition it was built from, to decide reuse on reload.
    pub definition: portico_config::Upstream,
    /// hyper's pooled client (plain or TLS, per the targets' scheme), for what the lean
    /// client does not carry; used only by [`Upstream::send`].
    client: Client<HttpsConnector<HttpConnector>, Body>,
    /// The current targets.
    set: ArcSwap<TargetSet>,
    /// Metrics, to label targets that discovery adds.
    metrics: Arc<Metrics>,
    /// Set once service discovery has produced its first answer (or immediately without
    /// discovery).
    pub(crate) resolved: tokio::sync::watch::Sender<bool>,
    /// Scheme toward targets.
    pub scheme: Scheme,
    /// Set for plain-TCP HTTP/1.1 upstreams: their requests to targets given as IP
    /// addresses go through [`h1`] with these settings.
    pub h1: Option<h1::Settings>,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Default request timeout (time to response head).
    pub request_timeout: Duration,
    /// `gateway_backend_latency_seconds{upstream}`.
    pub latency: Histogram,
    /// Start of the millisecond clock used for ejections and EWMA.
    epoch: Instant,
    /// The retry budget, when retries are configured.
    pub budget: Option<retry::RetryBudget>,
    /// The circuit breaker, when configured.
    pub breaker: Option<breaker::Breaker>,
    /// The in-flight limit, when configured.
    pub limit: Option<Arc<tokio::sync::Semaphore>>,
    /// How long a request waits for a slot under `limit`.
    pub queue_timeout: Duration,
    /// `gateway_queue_wait_seconds{scope="upstream",name}`.
    pub queue_wait: Histogram,
    /// `gateway_upstream_retries_total{upstream}`.
    pub retries_total: Counter,
    /// `gateway_upstream_retry_budget_exhausted_total{upstream}`.
    pub retries_exhausted: Counter,
    /// `gateway_upstream_hedges_total{upstream}`.
    pub hedges_total: Counter,
    /// `gateway_upstream_hedge_wins_total{upstream}`.
    pub hedge_wins: Counter,
    /// What the TLS files held when they were loaded.
    pub tls_files: Vec<Vec<u8>>,
}

impl Upstream {
    /// Builds an upstream from its (validated) definition. Fails when TLS material named
    /// in the config cannot be read.
    pub fn new(
        name: &str,
        def: &portico_config::Upstream,
        metrics: &Arc<Metrics>,
    ) -> Result<Self, portico_config::ConfigError> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(def.timeouts.connect.get()));
        connector.set_keepalive(Some(Duration::from_secs(60)));
        connector.enforce_http(false);
        let https = def.targets.iter().any(|t| t.url.starts_with("https://"));
        let connector = tls::connector(name, def, https, connector)?;
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(def.pool.idle_timeout.get())
            .pool_max_idle_per_host(def.pool.max_idle_per_target)
            .retry_canceled_requests(false)
            .set_host(true);
        if def.protocol == UpstreamProtocol::Http2 {
            builder.http2_only(true).http2_keep_alive_interval(Duration::from_secs(30));
        }
        let client = builder.build(connector);
        // Targets named by a host name wait for discovery; IPs (and everything without
        // discovery) are used as written.
        let discovered = def.discovery.is_some();
        let targets: Vec<Arc<Target>> = def
            .targets
            .iter()
            .filter_map(|t| {
                // Validation has already checked every URL.
                let authority: Authority = check_target_url(&t.url).ok()?.parse().ok()?;
                if discovered && !is_ip_host(authority.host()) {
                    return None;
                }
                let host_header = HeaderValue::from_str(authority.as_str()).ok()?;
                Some(Arc::new(Target::new(name, authority, host_header, t.weight, metrics)))
            })
            .collect();
        let balancer = balance::Balancer::new(def, &targets);
        Ok(Self {
            name: name.into(),
            definition: def.clone(),
            client,
            set: ArcSwap::from_pointee(TargetSet { targets, balancer }),
            metrics: metrics.clone(),
            resolved: tokio::sync::watch::Sender::new(!discovered),
            scheme: if https { Scheme::HTTPS } else { Scheme::HTTP },
            h1: (!https && def.protocol == UpstreamProtocol::Http1).then(|| h1::Settings {
                max_idle: def.pool.max_idle_per_target,
                idle_timeout: def.pool.idle_timeout.get(),
                connect_timeout: def.timeouts.connect.get(),
            }),
            connect_timeout: def.timeouts.connect.get(),
            request_timeout: def.timeouts.request.get(),
            latency: metrics.backend_latency(name),
            epoch: Instant::now(),
            budget: def.retries.as_ref().map(|r| retry::RetryBudget::new(r.budget.fraction(), r.min_per_second)),
            breaker: def.circuit_breaker.as_ref().map(|cb| {
                breaker::Breaker::new(
                    cb.clone(),
                    metrics.breaker_state(name),
                    metrics.breaker_transitions(name),
                    name.into(),
                )
            }),
            limit: (def.max_in_flight > 0).then(|| Arc::new(tokio::sync::Semaphore::new(def.max_in_flight as usize))),
            queue_timeout: def.queue_timeout.get(),
            queue_wait: metrics.queue_wait("upstream", name),
            retries_total: metrics.retries(name),
            retries_exhausted: metrics.retries_exhausted(name),
            hedges_total: metrics.hedges(name),
            hedge_wins: metrics.hedge_wins(name),
            tls_files: tls::files_fingerprint(def),
        })
    }

    /// The current targets.
    pub fn targets(&self) -> Arc<TargetSet> {
        self.set.load_full()
    }

    /// Replaces the targets (service discovery). Targets that stay keep their state.
    pub fn replace_targets(&self, list: Vec<(Authority, HeaderValue, u32)>) {
        let old = self.set.load();
        let targets: Vec<Arc<Target>> = list
            .into_iter()
            .map(|(authority, host, weight)| {
                old.targets
                    .iter()
                    .find(|t| t.authority == authority && t.weight == weight && t.host_header == host)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(Target::new(&self.name, authority, host, weight, &self.metrics)))
            })
            .collect();
        for t in &old.targets {
            if !targets.iter().any(|n| Arc::ptr_eq(n, t)) {
                self.metrics.forget_target(&self.name, t.authority.as_str());
            }
        }
        let balancer = balance::Balancer::new(&self.definition, &targets);
        self.set.store(Arc::new(TargetSet { targets, balancer }));
    }

    /// Picks an available target for a request; `None` when no target is available.
    /// `exclude` names a target to avoid when another is available (for retries).
    pub fn pick(&self, key: &PickKey<'_>, exclude: Option<&Arc<Target>>) -> Option<Arc<Target>> {
        let set = self.set.load();
        if set.targets.is_empty() {
            return None;
        }
        let exclude = exclude.and_then(|e| set.targets.iter().position(|t| Arc::ptr_eq(t, e)));
        let i = set.balancer.pick(&set, key, &LazyMs::new(self.epoch), exclude)?;
        set.targets.get(i).cloned()
    }

    /// Marks the start of a request to `target`; the guard records its end.
    pub fn start<'a>(&'a self, target: &'a Target) -> InFlight<'a> {
        self.start_at(target, Instant::now())
    }

    /// As [`Upstream::start`], with the start time the caller already read.
    pub fn start_at<'a>(&'a self, target: &'a Target, now: Instant) -> InFlight<'a> {
        target.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight { upstream: self, target, started: now }
    }

    /// Records the outcome of a request to `t` for passive outlier detection and the
    /// latency estimate.
    fn record(&self, t: &Target, latency: Duration, failed: bool) {
        // One clock reading for both uses, none when neither is configured.
        let clock = LazyMs::new(self.epoch);
        if self.definition.balance == portico_config::Balance::PeakEwma {
            balance::update_ewma(t, latency, clock.get());
        }
        let Some(od) = &self.definition.outlier_detection else { return };
        let now = clock.get();
        if !failed {
            t.consecutive_failures.store(0, Ordering::Relaxed);
            // A target that has stayed in for a whole max_ejection since its last ejection
            // starts again from the base ejection time.
            let until = t.ejected_until_ms.load(Ordering::Relaxed);
            if until > 0 && now > until + od.max_ejection.get().as_millis() as u64 {
                t.ejections.store(0, Ordering::Relaxed);
                t.ejected_until_ms.store(0, Ordering::Relaxed);
            }
            return;
        }
        let n = t.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n < od.consecutive_failures || t.ejected_until_ms.load(Ordering::Relaxed) > now {
            return;
        }
        // Never eject more than the allowed share of targets.
        let set = self.set.load();
        let ejected = set.targets.iter().filter(|x| x.ejected_until_ms.load(Ordering::Relaxed) > now).count();
        let max = (set.targets.len() as f64 * od.max_ejected_percent.fraction()).floor() as usize;
        if ejected + 1 > max {
            return;
        }
        let times = t.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let base = od.base_ejection.get().as_millis() as u64;
        let length = (base.saturating_mul(u64::from(times))).min(od.max_ejection.get().as_millis() as u64);
        t.ejected_until_ms.store(now + length, Ordering::Relaxed);
        t.consecutive_failures.store(0, Ordering::Relaxed);
        t.ejections_total.inc();
        tracing::warn!(upstream = %self.name, target = %t.authority, ejection_ms = length, "target ejected after consecutive failures");
    }

    /// The live state of the upstream and its targets, for the admin API.
    pub fn status(&self) -> serde_json::Value {
        let clock = LazyMs::new(self.epoch);
        let now = clock.get();
        let set = self.set.load();
        let targets: Vec<serde_json::Value> = set
            .targets
            .iter()
            .map(|t| {
                let until = t.ejected_until_ms.load(Ordering::Relaxed);
                serde_json::json!({
                    "target": t.authority.as_str(),
                    "host": t.host_header.to_str().unwrap_or(""),
                    "weight": t.weight,
                    "healthy": t.healthy.load(Ordering::Relaxed),
                    "ejected": until > now,
                    "ejectedForMs": until.saturating_sub(now),
                    "ejections": t.ejections.load(Ordering::Relaxed),
                    "available": t.available(&clock),
                    "inFlight": t.in_flight.load(Ordering::Relaxed),
                    // Only the lean client's pool is the target's own; hyper's is not
                    // counted per target.
                    "idleConnections": (self.h1.is_some() && t.addr.is_some()).then(|| t.pool.idle()),
                    "latencyEwmaMs": t.ewma_ns.load(Ordering::Relaxed) as f64 / 1e6,
                })
            })
            .collect();
        let breaker = self.breaker.as_ref().map(|b| match b.state() {
            breaker::CLOSED => "closed",
            breaker::OPEN => "open",
            _ => "half_open",
        });
        serde_json::json!({
            "name": &*self.name,
            "balance": serde_json::to_value(self.definition.balance).unwrap_or_default(),
            "circuitBreaker": breaker,
            "targets": targets,
        })
    }
}

/// Why one exchange with a target failed, whichever client carried it.
#[derive(Debug)]
pub enum Error {
    /// No connection could be made.
    Connect(std::io::Error),
    /// Making a connection took longer than the connect timeout.
    ConnectTimeout,
    /// The connection failed or closed before a whole response head arrived.
    Io(std::io::Error),
    /// The response is not valid HTTP/1.1, or is larger than the limits.
    Malformed(&'static str),
    /// No response head arrived before the deadline.
    Timeout,
    /// The request's body failed while it was being sent (the client's body broke off or
    /// was malformed: who caused it is the body's to say).
    Body(crate::body::BoxError),
    /// The request cannot be put in the form the client takes (its target): the
    /// client's to fix.
    Invalid(&'static str),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Connect(e) => write!(f, "connect failed: {e}"),
            Error::ConnectTimeout => f.write_str("connect timed out"),
            Error::Io(e) => write!(f, "connection failed: {e}"),
            Error::Malformed(m) => write!(f, "malformed response: {m}"),
            Error::Timeout => f.write_str("no response before the deadline"),
            Error::Body(e) => write!(f, "request body failed: {e}"),
            Error::Invalid(m) => write!(f, "request not sendable: {m}"),
        }
    }
}

impl Error {
    /// Sorts an error of hyper's client into the same kinds. A failure of the client's
    /// own body is not told apart here: its [`crate::body::ClientBodyWatch`] says so.
    fn from_hyper(e: hyper_util::client::legacy::Error) -> Self {
        use std::error::Error as _;
        if !e.is_connect() {
            return Error::Io(std::io::Error::other(e));
        }
        // hyper-util's own connect timeout is an `io::ErrorKind::TimedOut` in the chain
        // (tests/it/gaps.rs: a_connect_timeout_is_a_504_of_its_own_kind_...).
        let mut source = e.source();
        while let Some(s) = source {
            if s.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut) {
                return Error::ConnectTimeout;
            }
            source = s.source();
        }
        Error::Connect(std::io::Error::other(e))
    }
}

/// One request for one target, as [`Upstream::send`] takes it.
#[derive(Debug)]
pub struct Exchange<'a> {
    /// The method.
    pub method: &'a http::Method,
    /// The path and query to send.
    pub pq: &'a http::uri::PathAndQuery,
    /// The `Host` to send; any in `headers` is left out.
    pub host: &'a HeaderValue,
    /// The client's fields that go on (hop-by-hop ones removed). Taken: the response's
    /// fields come back in a map of their own. By reference, so that the futures that
    /// carry an exchange stay small to move.
    pub headers: &'a mut http::HeaderMap,
    /// The gateway's fields (forwarding, request ID), sent after the client's; `None`
    /// for the gateway's own requests (health checks) and copies that carry them already.
    pub added: Option<&'a crate::forwarded::Added<'a>>,
    /// The request asks to switch protocols: hyper's client carries it, as it hands the
    /// connection over when the upstream agrees.
    pub upgrade: bool,
}

impl Upstream {
    /// Sends one request to `target` and returns the response head, its body streaming;
    /// the head must arrive before `deadline` (`sent` is the caller's clock reading of
    /// now). This is the one place that chooses the client: plain HTTP/1.1 to a target
    /// given as an IP address goes through the lean client [`h1`] (the target's pool),
    /// anything else (TLS, HTTP/2, targets named by host name, upgrades and `CONNECT`)
    /// through hyper's. So every target's connections live in one pool, whatever sends on
    /// them: proxied requests, mirrored copies and health checks alike.
    ///
    /// Not an `async fn`: the choice is made before the first poll, and the lean client's
    /// future is returned as it is, with no state machine of its own around it (that cost
    /// 180 instructions per proxied request).
    pub fn send<'a>(
        &'a self,
        target: &'a Target,
        x: Exchange<'a>,
        body: &'a mut Body,
        sent: Instant,
        deadline: Instant,
    ) -> impl Future<Output = Result<http::Response<Body>, Error>> + Send + 'a {
        use futures_util::future::Either;
        match (&self.h1, target.addr) {
            (Some(settings), Some(addr)) if !x.upgrade && *x.method != http::Method::CONNECT => {
                // The lean client writes `Host`, the added fields and the body's framing
                // itself, keeps the deadline on the connection's own timer, and leaves
                // `TE` out (it reads no trailers).
                let request = h1::Outgoing {
                    method: x.method,
                    target: x.pq.as_str(),
                    host: x.host,
                    headers: x.headers,
                    added: x.added,
                    framing: None,
                };
                Either::Left(target.pool.send(addr, settings, request, body, sent, deadline))
            }
            // Boxed: hyper's request future is large, and inline it would make the future
            // of every call (the lean client's included) larger to move.
            _ => Either::Right(Box::pin(self.send_hyper(target, x, std::mem::take(body), deadline))),
        }
    }

    /// The part of [`Upstream::send`] that goes through hyper's client.
    async fn send_hyper(
        &self,
        target: &Target,
        x: Exchange<'_>,
        body: Body,
        deadline: Instant,
    ) -> Result<http::Response<Body>, Error> {
        let uri = http::Uri::builder()
            .scheme(self.scheme.clone())
            .authority(target.authority.clone())
            .path_and_query(x.pq.clone())
            .build()
            .map_err(|_| Error::Invalid("invalid request target"))?;
        let mut headers = std::mem::take(x.headers);
        headers.insert(http::header::HOST, x.host.clone());
        if let Some(added) = x.added {
            added.insert_into(&mut headers);
        }
        let mut req = http::Request::new(body);
        *req.method_mut() = x.method.clone();
        *req.uri_mut() = uri;
        *req.version_mut() = match self.definition.protocol {
            UpstreamProtocol::Http1 => http::Version::HTTP_11,
            UpstreamProtocol::Http2 => http::Version::HTTP_2,
        };
        *req.headers_mut() = headers;
        match tokio::time::timeout_at(deadline, self.client.request(req)).await {
            Err(_) => Err(Error::Timeout),
            Ok(Err(e)) => Err(Error::from_hyper(e)),
            Ok(Ok(res)) => Ok(res.map(Body::Incoming)),
        }
    }
}

/// Whether a URI host is an IP literal (IPv6 ones come in brackets).
pub(crate) fn is_ip_host(host: &str) -> bool {
    host.trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>().is_ok()
}

/// A request in flight to a target. Call [`InFlight::finish`] with the outcome; dropped
/// without it (the client went away), the request counts as neither success nor failure.
#[derive(Debug)]
pub struct InFlight<'a> {
    upstream: &'a Upstream,
    target: &'a Target,
    started: Instant,
}

impl InFlight<'_> {
    /// Records the outcome: `failed` for connect failures, timeouts and 5xx answers.
    pub fn finish(self, failed: bool) {
        // The latency feeds only the peak-EWMA balancer: no clock read for the others.
        let latency = match self.upstream.definition.balance {
            portico_config::Balance::PeakEwma => self.started.elapsed(),
            _ => Duration::ZERO,
        };
        self.upstream.record(self.target, latency, failed);
    }
}

impl InFlight<'_> {
    /// A try given up on before it answered (a hedge won): neither a success nor a
    /// failure of the target, but the time it had taken at least feeds the latency
    /// estimate, so that `peak_ewma` sees a target that stalls.
    pub fn cancelled(self) {
        if self.upstream.definition.balance == portico_config::Balance::PeakEwma {
            balance::update_ewma(self.target, self.started.elapsed(), LazyMs::new(self.upstream.epoch).get());
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.target.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
