//! Upstreams: a pooled HTTP client per upstream and the choice of target.
//!
//! One hyper client (and so one connection pool) per upstream, so pool locking is never
//! shared between upstreams. An upstream whose definition did not change keeps its client,
//! pool and balancing position across reloads.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::HeaderValue;
use http::uri::{Authority, Scheme};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use portico_config::{UpstreamProtocol, validate::check_target_url};

use crate::body::Body;
use crate::observe::Metrics;
use prometheus_client::metrics::histogram::Histogram;

/// One backend target.
#[derive(Debug)]
pub struct Target {
    /// `host:port`, as sent in the request URI.
    pub authority: Authority,
    /// `Host` header value when the client's is not preserved.
    pub host_header: HeaderValue,
    /// Relative weight.
    pub weight: u32,
}

/// A compiled upstream.
#[derive(Debug)]
pub struct Upstream {
    /// The upstream's name (`backendService` in logs, `upstream` label in metrics).
    pub name: Arc<str>,
    /// The definition it was built from, to decide reuse on reload.
    pub definition: portico_config::Upstream,
    /// The pooled client.
    pub client: Client<HttpConnector, Body>,
    /// Targets, in config order.
    pub targets: Vec<Target>,
    /// Smooth weighted round-robin order, precomputed (indices into `targets`).
    schedule: Vec<u32>,
    next: AtomicUsize,
    /// Scheme toward targets.
    pub scheme: Scheme,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Default request timeout (time to response head).
    pub request_timeout: Duration,
    /// `gateway_backend_latency_seconds{upstream}`.
    pub latency: Histogram,
}

impl Upstream {
    /// Builds an upstream from its (validated) definition.
    pub fn new(name: &str, def: &portico_config::Upstream, metrics: &Metrics) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(def.timeouts.connect.get()));
        connector.set_keepalive(Some(Duration::from_secs(60)));
        connector.enforce_http(true);
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
                Some(Target { authority, host_header, weight: t.weight })
            })
            .collect();
        let schedule = smooth_wrr_schedule(&targets.iter().map(|t| t.weight).collect::<Vec<_>>());
        Self {
            name: name.into(),
            definition: def.clone(),
            client,
            targets,
            schedule,
            next: AtomicUsize::new(0),
            scheme: Scheme::HTTP,
            connect_timeout: def.timeouts.connect.get(),
            request_timeout: def.timeouts.request.get(),
            latency: metrics.backend_latency(name),
        }
    }

    /// The next target in smooth weighted round-robin order; `None` when there are none.
    #[inline]
    pub fn pick(&self) -> Option<&Target> {
        if self.schedule.is_empty() {
            return None;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let i = self.schedule[n % self.schedule.len()];
        self.targets.get(i as usize)
    }
}

/// The smooth weighted round-robin sequence (the nginx algorithm), computed once.
///
/// Each step adds every target's weight to its current value, picks the largest, and
/// subtracts the total from it. The sequence repeats with period `sum(weights) / gcd`, so
/// it is precomputed and a pick is one atomic increment: no lock on the request path.
pub fn smooth_wrr_schedule(weights: &[u32]) -> Vec<u32> {
    if weights.is_empty() {
        return Vec::new();
    }
    let g = weights.iter().copied().fold(0, gcd).max(1);
    let w: Vec<i64> = weights.iter().map(|&x| i64::from(x / g)).collect();
    let total: i64 = w.iter().sum();
    let mut current = vec![0i64; w.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..w.len() {
            current[i] += w[i];
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        out.push(best as u32);
    }
    out
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smooth_wrr_interleaves_and_respects_weights() {
        // nginx's documented example: weights 5, 1, 1 -> a a b a c a a
        assert_eq!(smooth_wrr_schedule(&[5, 1, 1]), [0, 0, 1, 0, 2, 0, 0]);
        let s = smooth_wrr_schedule(&[300, 200, 100]);
        assert_eq!(s.len(), 6, "reduced by the gcd");
        let count = |t| s.iter().filter(|&&x| x == t).count();
        assert_eq!((count(0), count(1), count(2)), (3, 2, 1));
        assert_eq!(smooth_wrr_schedule(&[1]), [0]);
        assert!(smooth_wrr_schedule(&[]).is_empty());
    }
}
