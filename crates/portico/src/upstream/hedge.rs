//! A route's hedging: which requests are hedged and after how long.
//!
//! A percentile delay is read from this route's recent answer times, kept in a
//! log-linear histogram of two ten-second generations (so the window is 10 to 20
//! seconds). Written by hand: the exported latency histograms have a dozen coarse
//! buckets (25 ms next to 50 ms), too coarse to place a hedge, and the crates with fine
//! histograms (hdrhistogram) take a lock or `&mut` per record.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use portico_config::hedge::{Hedge, HedgeDelay};
use tokio::time::Instant;

/// Answers needed in the window before a percentile is trusted; until then the delay is
/// `max_delay`.
const MIN_SAMPLES: u64 = 100;
/// Sub-buckets per power of two: bounds 9% apart.
const SUB: u32 = 8;
/// The first bucket ends at 2^10 ns (1 µs); the last begins at 2^36 ns (69 s).
const FIRST_OCTAVE: u32 = 10;
const OCTAVES: u32 = 26;
const BUCKETS: usize = (OCTAVES * SUB) as usize + 1;
/// A generation covers this many seconds.
const GENERATION_SECS: u64 = 10;
/// How long a computed percentile is reused before it is computed again.
const RECOMPUTE_MS: u64 = 100;

/// A compiled `hedge`.
#[derive(Debug)]
pub struct Hedging {
    delay: HedgeDelay,
    min: Duration,
    max: Duration,
    /// Hedges per request after the first try.
    pub max_hedges: u32,
    methods: Vec<http::Method>,
    window: Option<Box<Window>>,
    /// The percentile delay last computed, in nanoseconds, and when (ms since `epoch`,
    /// plus one so that 0 means never).
    cached_ns: AtomicU64,
    cached_at: AtomicU64,
    epoch: Instant,
}

impl Hedging {
    /// Compiles a route's `hedge`.
    pub fn new(h: &Hedge) -> Self {
        Self {
            delay: h.delay,
            min: h.min_delay.get(),
            max: h.max_delay.get(),
            max_hedges: h.max_hedges,
            methods: h.methods.iter().filter_map(|m| http::Method::from_bytes(m.as_bytes()).ok()).collect(),
            window: matches!(h.delay, HedgeDelay::Percentile(_)).then(|| Box::new(Window::new())),
            cached_ns: AtomicU64::new(0),
            cached_at: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// Whether requests with this method are hedged.
    pub fn covers(&self, method: &http::Method) -> bool {
        self.methods.contains(method)
    }

    /// How long a try may go unanswered before the next hedge is sent.
    pub fn delay(&self) -> Duration {
        let (HedgeDelay::Percentile(p), Some(w)) = (self.delay, &self.window) else {
            return match self.delay {
                HedgeDelay::Fixed(d) => d.get(),
                HedgeDelay::Percentile(_) => self.max,
            };
        };
        let now = self.epoch.elapsed().as_millis() as u64 + 1;
        let at = self.cached_at.load(Ordering::Relaxed);
        if at != 0 && now.saturating_sub(at) < RECOMPUTE_MS {
            return Duration::from_nanos(self.cached_ns.load(Ordering::Relaxed));
        }
        // Too few answers yet: not cached, so the first request after the hundredth
        // answer already uses the percentile.
        let Some(ns) = w.percentile(p, self.generation()) else { return self.max };
        let d = Duration::from_nanos(ns).clamp(self.min, self.max);
        self.cached_ns.store(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
        self.cached_at.store(now, Ordering::Relaxed);
        d
    }

    /// Records how long a try took (or had taken when it was cancelled: a time it
    /// would have taken at least). Only percentile delays keep a window.
    pub fn observe(&self, took: Duration) {
        if let Some(w) = &self.window {
            w.observe(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX), self.generation());
        }
    }

    /// The current generation's number (1-based, so 0 marks an unused one).
    fn generation(&self) -> u64 {
        self.epoch.elapsed().as_secs() / GENERATION_SECS + 1
    }
}

/// Two generations of counts; the older one is reset when its slot is reused.
#[derive(Debug)]
struct Window {
    generations: [Generation; 2],
}

#[derive(Debug)]
struct Generation {
    number: AtomicU64,
    counts: Box<[AtomicU64]>,
}

impl Window {
    fn new() -> Self {
        let generation =
            || Generation { number: AtomicU64::new(0), counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect() };
        Self { generations: [generation(), generation()] }
    }

    fn observe(&self, ns: u64, now: u64) {
        let g = &self.generations[(now % 2) as usize];
        if g.number.load(Ordering::Relaxed) != now {
            // Two threads racing here may lose a count or two, which a percentile of
            // thousands tolerates; no lock on the request path.
            g.number.store(now, Ordering::Relaxed);
            g.counts.iter().for_each(|c| c.store(0, Ordering::Relaxed));
        }
        if let Some(c) = g.counts.get(bucket(ns)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The `p`th percentile over the current and the previous generation, as the upper
    /// bound of its bucket; `None` below [`MIN_SAMPLES`].
    fn percentile(&self, p: f64, now: u64) -> Option<u64> {
        let live: Vec<&Generation> = self
            .generations
            .iter()
            .filter(|g| {
                let n = g.number.load(Ordering::Relaxed);
                n != 0 && now.saturating_sub(n) <= 1
            })
            .collect();
        let count = |i: usize| live.iter().map(|g| g.counts[i].load(Ordering::Relaxed)).sum::<u64>();
        let counts: Vec<u64> = (0..BUCKETS).map(count).collect();
        let total: u64 = counts.iter().sum();
        if total < MIN_SAMPLES {
            return None;
        }
        let rank = ((p / 100.0) * total as f64).ceil() as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank.max(1) {
                return Some(upper_bound(i));
            }
        }
        Some(upper_bound(BUCKETS - 1))
    }
}

/// The bucket of a time in nanoseconds: everything under 1 µs in bucket 0, then eight
/// per power of two.
fn bucket(ns: u64) -> usize {
    if ns < 1 << FIRST_OCTAVE {
        return 0;
    }
    let octave = 63 - ns.leading_zeros();
    if octave >= FIRST_OCTAVE + OCTAVES {
        return BUCKETS - 1;
    }
    let sub = (ns >> (octave - 3)) & u64::from(SUB - 1);
    ((octave - FIRST_OCTAVE) * SUB) as usize + sub as usize + 1
}

/// The exclusive upper bound of bucket `i`, in nanoseconds.
fn upper_bound(i: usize) -> u64 {
    if i == 0 {
        return 1 << FIRST_OCTAVE;
    }
    let i = (i - 1) as u32;
    let (octave, sub) = (i / SUB + FIRST_OCTAVE, u64::from(i % SUB));
    (SUB as u64 + sub + 1) << (octave - 3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_hold_their_values_within_nine_percent() {
        for ns in [0u64, 1023, 1024, 1500, 999_999, 1_000_000, 37_000_000, 1_000_000_000, 68_000_000_000] {
            let i = bucket(ns);
            let hi = upper_bound(i);
            assert!(ns < hi, "{ns} not under its bucket's bound {hi}");
            if i > 0 {
                let lo = upper_bound(i - 1);
                assert!(ns >= lo, "{ns} under its bucket's lower bound {lo}");
                assert!((hi - lo) as f64 / lo as f64 <= 0.126, "bucket {i} is {lo}..{hi}");
            }
        }
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn the_percentile_comes_from_the_window_and_needs_enough_answers() {
        let w = Window::new();
        for _ in 0..50 {
            w.observe(2_000_000, 1);
        }
        assert_eq!(w.percentile(95.0, 1), None, "50 answers are too few");
        for _ in 0..45 {
            w.observe(2_000_000, 1);
        }
        for _ in 0..5 {
            w.observe(300_000_000, 1);
        }
        // 95 of 100 answers took 2 ms: the 95th percentile is in their bucket, the 99th in
        // the slow one's.
        let p95 = w.percentile(95.0, 1).unwrap_or(0);
        assert!((2_000_000..2_300_000).contains(&p95), "p95 {p95}");
        let p99 = w.percentile(99.0, 1).unwrap_or(0);
        assert!((300_000_000..340_000_000).contains(&p99), "p99 {p99}");
        // Still counted one generation later, gone two later.
        assert!(w.percentile(95.0, 2).is_some());
        assert_eq!(w.percentile(95.0, 3), None);
        // A new generation in the same slot starts from nothing.
        w.observe(1_000_000, 3);
        assert_eq!(w.percentile(95.0, 3), None);
    }
}
