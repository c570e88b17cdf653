//! The retry budget: retries stay under a share of recent requests (plus a small floor),
//! so retries cannot multiply the load on an upstream that is already failing.
//!
//! Ten one-second slots of atomic counters; no lock. A slot is reset by the first request
//! that finds it holding an older second (two threads racing there may lose a count or
//! two, which a budget tolerates).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

const SLOTS: usize = 10;

#[derive(Debug, Default)]
struct Slot {
    second: AtomicU64,
    requests: AtomicU32,
    retries: AtomicU32,
}

/// A retry budget over the last ten seconds.
#[derive(Debug)]
pub struct RetryBudget {
    slots: [Slot; SLOTS],
    ratio: f64,
    min_per_second: u32,
    epoch: Instant,
}

impl RetryBudget {
    /// Retries may be `ratio` of requests, plus `min_per_second` each second.
    pub fn new(ratio: f64, min_per_second: u32) -> Self {
        Self { slots: Default::default(), ratio, min_per_second, epoch: Instant::now() }
    }

    fn current(&self) -> (u64, &Slot) {
        // Seconds start at 1 so a fresh slot (second 0) never looks current.
        let now = self.epoch.elapsed().as_secs() + 1;
        let slot = &self.slots[(now % SLOTS as u64) as usize];
        if slot.second.load(Ordering::Relaxed) != now {
            slot.second.store(now, Ordering::Relaxed);
            slot.requests.store(0, Ordering::Relaxed);
            slot.retries.store(0, Ordering::Relaxed);
        }
        (now, slot)
    }

    /// Counts a first attempt.
    pub fn record_request(&self) {
        self.current().1.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one retry from the budget if there is one left.
    pub fn try_retry(&self) -> bool {
        let (now, slot) = self.current();
        let (mut requests, mut retries) = (0u64, 0u64);
        for s in &self.slots {
            if now.checked_sub(s.second.load(Ordering::Relaxed)).is_some_and(|age| age < SLOTS as u64) {
                requests += u64::from(s.requests.load(Ordering::Relaxed));
                retries += u64::from(s.retries.load(Ordering::Relaxed));
            }
        }
        let allowed = self.ratio * requests as f64 + f64::from(self.min_per_second) * SLOTS as f64;
        if (retries as f64) < allowed {
            slot.retries.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            false
        }
    }
}

/// Backoff before retry `n` (1-based): a random time up to `min(max, base * 2^(n-1))`
/// ("full jitter"), so clients that failed together do not retry together.
pub fn backoff(n: u32, base: Duration, max: Duration) -> Duration {
    let exp = base.saturating_mul(1u32 << n.saturating_sub(1).min(16));
    let cap = exp.min(max).as_micros() as u64;
    Duration::from_micros(if cap == 0 { 0 } else { fastrand::u64(..=cap) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn budget_caps_retries_at_a_share_of_requests() {
        let b = RetryBudget::new(0.2, 0);
        for _ in 0..100 {
            b.record_request();
        }
        let granted = (0..100).filter(|_| b.try_retry()).count();
        assert_eq!(granted, 20);
        // Ten seconds later the old requests no longer count.
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(!b.try_retry());
    }

    #[tokio::test(start_paused = true)]
    async fn the_floor_allows_retries_at_low_traffic() {
        let b = RetryBudget::new(0.2, 1);
        b.record_request();
        let granted = (0..100).filter(|_| b.try_retry()).count();
        // The floor (1/s over the 10 s window) plus 20% of one request: 10.2 allowed.
        assert_eq!(granted, 11, "granted while fewer than 10.2 have been taken");
    }

    #[test]
    fn backoff_is_bounded_and_grows() {
        let base = Duration::from_millis(10);
        let max = Duration::from_millis(100);
        for n in 1..10 {
            let cap = (base * (1 << (n - 1))).min(max);
            for _ in 0..50 {
                assert!(backoff(n, base, max) <= cap);
            }
        }
    }
}
