//! `fixed_window`: a counter per key per window of `period`, windows aligned to the
//! limiter's epoch.

use super::time::ns;
use super::{Decision, Policy, table::Algo, time};

pub(crate) struct FixedWindow {
    limit: u64,
    period: u64,
}

pub(crate) struct State {
    /// The window counted (its index since the epoch).
    window: u64,
    count: u64,
}

impl FixedWindow {
    pub(crate) fn new(policy: &Policy) -> Self {
        FixedWindow { limit: policy.limit, period: time::nanos(policy.period) }
    }

    fn end(&self, window: u64) -> u64 {
        window.saturating_add(1).saturating_mul(self.period)
    }
}

impl Algo for FixedWindow {
    type State = State;

    fn fresh(&self) -> State {
        State { window: 0, count: 0 }
    }

    fn check(&self, s: &mut State, now: u64, cost: u64) -> Decision {
        let window = now / self.period;
        if window > s.window {
            *s = State { window, count: 0 };
        }
        // An earlier `now` (in the previous window) is counted in the current one.
        let end = self.end(s.window);
        let left = end.saturating_sub(now).clamp(1, self.period);
        let after = s.count.checked_add(cost).filter(|&n| n <= self.limit);
        let allowed = after.is_some();
        if let Some(n) = after {
            s.count = n;
        }
        let remaining = self.limit - s.count;
        let reset_after = if s.count == 0 { ns(0) } else { ns(left) };
        if allowed {
            Decision::allow(self.limit, remaining, reset_after)
        } else if cost > self.limit {
            Decision::refuse(self.limit, remaining, reset_after, ns(self.period))
        } else {
            Decision::refuse(self.limit, remaining, reset_after, ns(left))
        }
    }

    fn idle_at(&self, s: &State) -> u64 {
        if s.count == 0 { 0 } else { self.end(s.window) }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::tests::{at, limiter, ms};
    use super::super::{LimitAlgorithm, Policy};

    #[test]
    fn ratelimit_fixed_window_counts_per_window() {
        let (l, t0) = limiter(Policy::new(LimitAlgorithm::FixedWindow, 3, Duration::from_secs(1)));
        let d = l.check(b"k", at(t0, 250), 1);
        assert_eq!((d.allowed, d.remaining, d.reset_after), (true, 2, ms(750)));
        assert!(l.check(b"k", at(t0, 500), 2).allowed);
        let d = l.check(b"k", at(t0, 999), 1);
        assert_eq!((d.allowed, d.remaining, d.retry_after, d.reset_after), (false, 0, Some(ms(1)), ms(1)));
        // The next window starts afresh.
        let d = l.check(b"k", at(t0, 1000), 1);
        assert_eq!((d.allowed, d.remaining, d.reset_after), (true, 2, ms(1000)));
        // Over 100 windows, 3 each, however often we ask.
        let allowed = (0..100_000u64).filter(|i| l.check(b"j", at(t0, 10_000 + i), 1).allowed).count();
        assert_eq!(allowed, 300);
    }

    #[test]
    fn ratelimit_fixed_window_boundary_burst() {
        // The known flaw: `limit` at the end of a window and `limit` at the start of the
        // next: 2 x limit within 2 ms.
        let limit = 100;
        let (l, t0) = limiter(Policy::new(LimitAlgorithm::FixedWindow, limit, Duration::from_secs(60)));
        let boundary = 60_000;
        let before = (0..limit * 2).filter(|_| l.check(b"k", at(t0, boundary - 1), 1).allowed).count();
        let after = (0..limit * 2).filter(|_| l.check(b"k", at(t0, boundary + 1), 1).allowed).count();
        assert_eq!(before + after, 2 * limit as usize);
    }
}
