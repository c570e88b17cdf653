//! Upstreams: a pooled HTTP client per upstream, the choice of target, and target health.
//!
//! One hyper client (and so one connection pool) per upstream, so pool locking is never
//! shared between upstreams. An upstream whose definition did not change keeps its client,
//! pool, balancing position and target health across reloads.
//!
//! A target takes traffic while it is *available*: not marked down by active health
//! checks ([`health`]) and not ejected by passive outlier detection. When no target is
//! available the request gets 503 at once rather than waiting for a timeout.

pub mod balance;
pub mod breaker;
pub mod health;
pub mod retry;
pub mod tls;

use std::sync::Arc;
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
use prometheus_client::metrics::histogram::Histogram;
use tokio::time::Instant;

use crate::body::Body;
use crate::observe::Metrics;

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
}

/// A compiled upstream.
#[derive(Debug)]
pub struct Upstream {
    /// The upstream's name (`backendService` in logs, `upstream` label in metrics).
    pub name: Arc<str>,
    /// The definition it was built from, to decide reuse on reload.
    pub definition: portico_config::Upstream,
    /// The pooled client (plain or TLS, per the targets' scheme).
    pub client: Client<HttpsConnector<HttpConnector>, Body>,
    /// Targets, in config order.
    pub targets: Vec<Target>,
    balancer: balance::Balancer,
    /// Scheme toward targets.
    pub scheme: Scheme,
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
}

impl Upstream {
    /// Builds an upstream from its (validated) definition. Fails when TLS material named
    /// in the config cannot be read.
    pub fn new(
        name: &str,
        def: &portico_config::Upstream,
        metrics: &Metrics,
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
        let targets: Vec<Target> = def
            .targets
            .iter()
            .filter_map(|t| {
                // Validation has already checked every URL.
                let authority: Authority = check_target_url(&t.url).ok()?.parse().ok()?;
                let host_header = HeaderValue::from_str(authority.as_str()).ok()?;
                let health_gauge = metrics.target_healthy(name, authority.as_str());
                health_gauge.set(1);
                Some(Target {
                    ejections_total: metrics.target_ejections(name, authority.as_str()),
                    authority,
                    host_header,
                    weight: t.weight,
                    in_flight: AtomicU32::new(0),
                    ewma_ns: AtomicU64::new(0),
                    ewma_at_ms: AtomicU64::new(0),
                    healthy: AtomicBool::new(true),
                    consecutive_failures: AtomicU32::new(0),
                    ejected_until_ms: AtomicU64::new(0),
                    ejections: AtomicU32::new(0),
                    health_gauge,
                })
            })
            .collect();
        let balancer = balance::Balancer::new(def, &targets);
        Ok(Self {
            name: name.into(),
            definition: def.clone(),
            client,
            targets,
            balancer,
            scheme: if https { Scheme::HTTPS } else { Scheme::HTTP },
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
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Whether target `i` may take traffic now.
    #[inline]
    pub fn available(&self, i: usize, now_ms: u64) -> bool {
        let t = &self.targets[i];
        t.healthy.load(Ordering::Relaxed) && t.ejected_until_ms.load(Ordering::Relaxed) <= now_ms
    }

    /// The live state of the upstream and its targets, for the admin API.
    pub fn status(&self) -> serde_json::Value {
        let now = self.now_ms();
        let targets: Vec<serde_json::Value> = self
            .targets
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let until = t.ejected_until_ms.load(Ordering::Relaxed);
                serde_json::json!({
                    "target": t.authority.as_str(),
                    "weight": t.weight,
                    "healthy": t.healthy.load(Ordering::Relaxed),
                    "ejected": until > now,
                    "ejectedForMs": until.saturating_sub(now),
                    "ejections": t.ejections.load(Ordering::Relaxed),
                    "available": self.available(i, now),
                    "inFlight": t.in_flight.load(Ordering::Relaxed),
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
            "balance": format!("{:?}", self.definition.balance),
            "circuitBreaker": breaker,
            "targets": targets,
        })
    }

    /// Picks an available target for a request; `None` when no target is available.
    /// `exclude` names a target to avoid when another is available (for retries).
    pub fn pick(&self, key: &PickKey<'_>, exclude: Option<usize>) -> Option<usize> {
        if self.targets.is_empty() {
            return None;
        }
        let now = self.now_ms();
        self.balancer.pick(self, key, now, exclude)
    }

    /// Marks the start of a request to target `i`; the guard records its end.
    pub fn start(&self, i: usize) -> InFlight<'_> {
        self.start_at(i, Instant::now())
    }

    /// As [`Upstream::start`], with the start time the caller already read.
    pub fn start_at(&self, i: usize, now: Instant) -> InFlight<'_> {
        self.targets[i].in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight { upstream: self, target: i, started: now }
    }

    /// Records the outcome of a request to target `i` for passive outlier detection and
    /// the latency estimate.
    fn record(&self, i: usize, latency: Duration, failed: bool) {
        let t = &self.targets[i];
        if self.definition.balance == portico_config::Balance::PeakEwma {
            balance::update_ewma(t, latency, self.now_ms());
        }
        let Some(od) = &self.definition.outlier_detection else { return };
        let now = self.now_ms();
        if !failed {
            t.consecutive_failures.store(0, Ordering::Relaxed);
            return;
        }
        let n = t.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n < od.consecutive_failures || t.ejected_until_ms.load(Ordering::Relaxed) > now {
            return;
        }
        // Never eject more than the allowed share of targets.
        let ejected =
            (0..self.targets.len()).filter(|&j| self.targets[j].ejected_until_ms.load(Ordering::Relaxed) > now).count();
        let max = (self.targets.len() as f64 * od.max_ejected_percent.fraction()).floor() as usize;
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
}

/// A request in flight to a target. Call [`InFlight::finish`] with the outcome; dropped
/// without it (the client went away), the request counts as neither success nor failure.
#[derive(Debug)]
pub struct InFlight<'a> {
    upstream: &'a Upstream,
    target: usize,
    started: Instant,
}

impl InFlight<'_> {
    /// Records the outcome: `failed` for connect failures, timeouts and 5xx answers.
    pub fn finish(self, failed: bool) {
        self.upstream.record(self.target, self.started.elapsed(), failed);
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.upstream.targets[self.target].in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
