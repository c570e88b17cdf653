//! A Prometheus histogram of durations that takes no lock.
//!
//! Written by hand because `prometheus_client`'s `Histogram` locks a mutex on every
//! observation, checks for a scheduled native-histogram reset and searches `f64` bounds;
//! a proxied request makes three observations, so that was about 300 instructions and
//! six atomic operations per request, and with several workers every request of a route
//! met on one lock. Here an observation is a search of integer bounds, a relaxed atomic
//! addition and a compare-and-swap for the sum. It encodes through `prometheus_client`'s
//! own encoder, so the text exposition is the same as before.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// A histogram of durations with fixed buckets; clones share the counts.
#[derive(Clone, Debug)]
pub struct Histogram(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    /// Upper bounds in seconds, as exported (`le`); `+Inf` is implied.
    bounds: &'static [f64],
    /// The same bounds in nanoseconds, for the search.
    bounds_ns: Box<[u64]>,
    /// Observations per bucket, not cumulative; one more than `bounds`, for `+Inf`.
    counts: Box<[AtomicU64]>,
    /// Sum of all observations in seconds, as the bits of an `f64`: an integer sum of
    /// nanoseconds would wrap within a year on a busy gateway (584 years of request time
    /// are observed in 213 days at 1,000 requests in flight).
    sum: AtomicU64,
}

impl Histogram {
    /// A histogram with these upper bounds (seconds, ascending, finite).
    pub fn new(bounds: &'static [f64]) -> Self {
        assert!(bounds.iter().all(|b| b.is_finite() && *b >= 0.0), "bounds must be finite: +Inf is implied");
        assert!(bounds.windows(2).all(|w| w[0] < w[1]), "bounds must ascend");
        // `as` saturates; the bounds are our own constants, well inside u64 nanoseconds.
        let bounds_ns = bounds.iter().map(|b| (b * 1e9).round() as u64).collect();
        let counts = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        Self(Arc::new(Inner { bounds, bounds_ns, counts, sum: AtomicU64::new(0f64.to_bits()) }))
    }

    /// Records one duration.
    pub fn observe(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let inner = &*self.0;
        // Most observations fall in the first few buckets, so a forward scan beats a binary
        // search here; a value equal to a bound belongs to that bound's bucket (`le`).
        let i = inner.bounds_ns.iter().position(|&b| ns <= b).unwrap_or(inner.bounds_ns.len());
        if let Some(c) = inner.counts.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        // Uncontended, the update is one compare-and-swap, like an atomic add.
        let add = |bits| Some((f64::from_bits(bits) + d.as_secs_f64()).to_bits());
        let _ = inner.sum.fetch_update(Ordering::Relaxed, Ordering::Relaxed, add);
    }
}

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let inner = &*self.0;
        // The encoder makes the counts cumulative; the count is their total, so `_count`
        // always equals the `+Inf` bucket even while observations land during a scrape.
        let buckets: Vec<(f64, u64)> = inner
            .bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(inner.counts.iter().map(|c| c.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, c)| c).sum();
        let sum = f64::from_bits(inner.sum.load(Ordering::Relaxed));
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;

    fn exposition(h: &Histogram) -> String {
        let mut registry = Registry::default();
        registry.register("t_seconds", "test", h.clone());
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        out
    }

    fn value(text: &str, prefix: &str) -> f64 {
        let line = text.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("{prefix} in {text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    }

    #[test]
    fn observations_land_in_le_buckets_and_are_exported_cumulatively() {
        let h = Histogram::new(&[0.001, 0.01, 0.1]);
        let ms = Duration::from_millis;
        // 0.5 ms and exactly 1 ms in the first bucket, 5 ms in the second, 1 s in +Inf.
        for d in [Duration::from_micros(500), ms(1), ms(5), ms(1000)] {
            h.observe(d);
        }
        let text = exposition(&h);
        assert!(text.contains("# TYPE t_seconds histogram"), "{text}");
        assert_eq!(value(&text, "t_seconds_bucket{le=\"0.001\"}"), 2.0);
        assert_eq!(value(&text, "t_seconds_bucket{le=\"0.01\"}"), 3.0);
        assert_eq!(value(&text, "t_seconds_bucket{le=\"0.1\"}"), 3.0);
        assert_eq!(value(&text, "t_seconds_bucket{le=\"+Inf\"}"), 4.0);
        assert_eq!(value(&text, "t_seconds_count"), 4.0);
        assert!((value(&text, "t_seconds_sum") - 1.0065).abs() < 1e-9, "{text}");
    }

    #[test]
    fn the_exposition_is_prometheus_clients_own() {
        const BOUNDS: &[f64] = &[0.0001, 0.00025, 0.001, 0.5, 10.0];
        let ours = Histogram::new(BOUNDS);
        let theirs = prometheus_client::metrics::histogram::Histogram::new(BOUNDS.iter().copied());
        for us in [0, 50, 100, 101, 250, 999, 1000, 1001, 400_000, 500_000, 9_999_999, 60_000_000] {
            let d = Duration::from_micros(us);
            ours.observe(d);
            theirs.observe(d.as_secs_f64());
        }
        let mut registry = Registry::default();
        registry.register("t_seconds", "test", theirs);
        let mut expected = String::new();
        prometheus_client::encoding::text::encode(&mut expected, &registry).unwrap();
        assert_eq!(exposition(&ours), expected);
    }

    #[test]
    fn clones_share_counts_and_huge_durations_do_not_overflow_the_search() {
        let h = Histogram::new(&[0.001]);
        let other = h.clone();
        other.observe(Duration::MAX);
        h.observe(Duration::ZERO);
        let text = exposition(&h);
        assert_eq!(value(&text, "t_seconds_bucket{le=\"0.001\"}"), 1.0);
        assert_eq!(value(&text, "t_seconds_bucket{le=\"+Inf\"}"), 2.0);
        assert_eq!(value(&text, "t_seconds_count"), 2.0);
        // The sum is a float, as Prometheus expects: it does not wrap.
        h.observe(Duration::MAX);
        assert!(value(&exposition(&h), "t_seconds_sum") > 3.6e19);
    }
}
