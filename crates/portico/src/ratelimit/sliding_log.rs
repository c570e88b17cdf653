//! `sliding_log`: the exact sliding window, from a log of the allowed requests of the
//! last `period`.

use std::collections::VecDeque;

use super::time::ns;
use super::{Decision, Policy, table::Algo, time};

pub(crate) struct SlidingLog {
    limit: u64,
    period: u64,
}

pub(crate) struct State {
    /// `(time, cost)` of each allowed request still in the window, oldest first. At most
    /// `limit` entries (each costs at least 1; cost-0 requests are not logged).
    log: VecDeque<(u64, u64)>,
    /// The sum of the costs in `log`.
    used: u64,
}

impl SlidingLog {
    pub(crate) fn new(policy: &Policy) -> Self {
        SlidingLog { limit: policy.limit, period: time::nanos(policy.period) }
    }
}

impl Algo for SlidingLog {
    type State = State;

    fn fresh(&self) -> State {
        State { log: VecDeque::new(), used: 0 }
    }

    fn check(&self, s: &mut State, now: u64, cost: u64) -> Decision {
        // An earlier `now` than the newest entry counts as the newest entry's time.
        let now = s.log.back().map_or(now, |&(t, _)| now.max(t));
        while let Some(&(t, c)) = s.log.front() {
            if t.saturating_add(self.period) > now {
                break;
            }
            s.log.pop_front();
            s.used -= c;
        }
        let allowed = s.used.checked_add(cost).is_some_and(|n| n <= self.limit);
        if allowed && cost > 0 {
            s.log.push_back((now, cost));
            s.used += cost;
        }
        let remaining = self.limit - s.used;
        let expires = |t: u64| ns(t.saturating_add(self.period) - now);
        let reset_after = s.log.back().map_or(ns(0), |&(t, _)| expires(t));
        if allowed {
            return Decision::allow(self.limit, remaining, reset_after);
        }
        if cost > self.limit {
            return Decision::refuse(self.limit, remaining, reset_after, ns(self.period));
        }
        // When enough of the oldest entries will have left the window.
        let mut free = remaining;
        for &(t, c) in &s.log {
            free += c;
            if free >= cost {
                return Decision::refuse(self.limit, remaining, reset_after, expires(t));
            }
        }
        Decision::refuse(self.limit, remaining, reset_after, reset_after)
    }

    fn idle_at(&self, s: &State) -> u64 {
        s.log.back().map_or(0, |&(t, _)| t.saturating_add(self.period))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::tests::{at, limiter, ms};
    use super::super::{LimitAlgorithm, Policy};

    #[test]
    fn ratelimit_sliding_log_exact_window() {
        let (l, t0) = limiter(Policy::new(LimitAlgorithm::SlidingLog, 3, Duration::from_secs(1)));
        assert!(l.check(b"k", at(t0, 100), 1).allowed);
        assert!(l.check(b"k", at(t0, 400), 2).allowed);
        let d = l.check(b"k", at(t0, 500), 1);
        assert_eq!((d.allowed, d.remaining, d.retry_after, d.reset_after), (false, 0, Some(ms(600)), ms(900)));
        // The first leaves at 1100: one unit back, not two.
        let d = l.check(b"k", at(t0, 1100), 2);
        assert_eq!((d.allowed, d.remaining, d.retry_after), (false, 1, Some(ms(300))));
        let d = l.check(b"k", at(t0, 1100), 1);
        assert_eq!((d.allowed, d.remaining, d.reset_after), (true, 0, ms(1000)));
        assert!(l.check(b"k", at(t0, 1400), 2).allowed);
    }

    #[test]
    fn ratelimit_sliding_log_no_boundary_burst() {
        // Whatever the arrivals, no window of length `period` holds more than `limit`.
        let limit = 100u64;
        let period = 60_000u64;
        let (l, t0) = limiter(Policy::new(LimitAlgorithm::SlidingLog, limit, Duration::from_millis(period)));
        let mut rng = fastrand::Rng::with_seed(7);
        let mut allowed = Vec::new();
        let mut t = 0u64;
        for _ in 0..50_000 {
            // Bunches at the would-be window boundaries, and random gaps elsewhere.
            t += if rng.u8(..) < 200 { 0 } else { rng.u64(0..3_000) };
            if l.check(b"k", at(t0, t), 1).allowed {
                allowed.push(t);
            }
        }
        assert!(allowed.len() > 1000);
        for (i, &start) in allowed.iter().enumerate() {
            let n = allowed[i..].iter().take_while(|&&x| x < start + period).count();
            assert!(n as u64 <= limit, "{n} in the window from {start}");
        }
        // And around a boundary: `limit` before, nothing more after.
        let (l, t0) = limiter(Policy::new(LimitAlgorithm::SlidingLog, limit, Duration::from_millis(period)));
        let before = (0..limit * 2).filter(|_| l.check(b"k", at(t0, period - 1), 1).allowed).count();
        let after = (0..limit * 2).filter(|_| l.check(b"k", at(t0, period + 1), 1).allowed).count();
        assert_eq!((before, after), (limit as usize, 0));
    }
}
