//! `token_bucket`: a bucket of `limit + burst` tokens refilled continuously at `limit`
//! per `period`.
//!
//! The level is kept in units of `1/period_ns` token, so that one nanosecond refills
//! exactly `limit` units and a token is exactly `period_ns` units: no rounding, ever.

use super::time::{clamp64, div, ticks_to_duration};
use super::{Decision, Policy, table::Algo, time};

pub(crate) struct TokenBucket {
    /// `limit`, the refill per nanosecond in level units.
    rate: u128,
    /// `period` in ns: one token in level units.
    token: u128,
    /// `limit + burst`.
    capacity: u64,
    /// The full level: `capacity * token`.
    full: u128,
    period_ns: u64,
}

pub(crate) struct State {
    level: u128,
    /// When `level` was last brought up to date (ns since the epoch).
    at: u64,
}

impl TokenBucket {
    pub(crate) fn new(policy: &Policy) -> Self {
        let period_ns = time::nanos(policy.period);
        let capacity = policy.capacity();
        let token = u128::from(period_ns);
        TokenBucket { rate: u128::from(policy.limit), token, capacity, full: u128::from(capacity) * token, period_ns }
    }
}

impl Algo for TokenBucket {
    type State = State;

    fn fresh(&self) -> State {
        State { level: self.full, at: 0 }
    }

    fn check(&self, s: &mut State, now: u64, cost: u64) -> Decision {
        // An earlier `now` than the last update refills nothing (decides as of `s.at`).
        if now > s.at {
            let refill = u128::from(now - s.at) * self.rate;
            s.level = s.level.saturating_add(refill).min(self.full);
            s.at = now;
        }
        let need = u128::from(cost) * self.token;
        let allowed = s.level >= need;
        if allowed {
            s.level -= need;
        }
        let remaining = clamp64(div(s.level, self.token));
        let reset_after = ticks_to_duration(self.full - s.level, self.rate);
        if allowed {
            Decision::allow(self.capacity, remaining, reset_after)
        } else if cost > self.capacity {
            Decision::refuse(self.capacity, remaining, reset_after, time::ns(self.period_ns))
        } else {
            let retry = ticks_to_duration(need - s.level, self.rate);
            Decision::refuse(self.capacity, remaining, reset_after, retry)
        }
    }

    fn idle_at(&self, s: &State) -> u64 {
        let to_full = clamp64(time::div_ceil(self.full - s.level, self.rate));
        s.at.saturating_add(to_full)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::tests::{at, limiter, ms};
    use super::super::{LimitAlgorithm, Policy};

    #[test]
    fn ratelimit_token_bucket_burst_then_steady_rate() {
        // 10 per second (one every 100 ms), 5 more of burst.
        let (l, t0) = limiter(Policy::new(LimitAlgorithm::TokenBucket, 10, Duration::from_secs(1)).with_burst(5));
        for i in 0..15 {
            let d = l.check(b"k", t0, 1);
            assert!(d.allowed, "{i}");
            assert_eq!((d.limit, d.remaining), (15, 14 - i));
        }
        let d = l.check(b"k", t0, 1);
        assert!(!d.allowed);
        assert_eq!(d.retry_after, Some(ms(100)));
        assert_eq!(d.reset_after, ms(1500));
        // Then exactly one per 100 ms.
        for step in 1..=20u64 {
            assert!(!l.check(b"k", at(t0, step * 100 - 1), 1).allowed, "{step}");
            let d = l.check(b"k", at(t0, step * 100), 1);
            assert!(d.allowed, "{step}");
            assert_eq!(d.remaining, 0);
        }
        // A quiet second and a half fills it again, not more.
        let d = l.check(b"k", at(t0, 2000 + 1500 + 10_000), 1);
        assert_eq!(d.remaining, 14);
    }

    #[test]
    fn ratelimit_token_bucket_partial_refill() {
        let (l, t0) = limiter(Policy::new(LimitAlgorithm::TokenBucket, 4, Duration::from_secs(1)));
        assert!(l.check(b"k", t0, 4).allowed);
        // 250 ms per token; at 600 ms, 2.4 tokens: 2 whole.
        let d = l.check(b"k", at(t0, 600), 3);
        assert!(!d.allowed);
        assert_eq!(d.remaining, 2);
        assert_eq!(d.retry_after, Some(ms(150)));
        assert_eq!(d.reset_after, ms(400));
        let d = l.check(b"k", at(t0, 750), 3);
        assert!(d.allowed);
        assert_eq!((d.remaining, d.reset_after), (0, ms(1000)));
    }
}
