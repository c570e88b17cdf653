//! `gcra`: the Generic Cell Rate Algorithm; `token_bucket`'s decisions from one
//! timestamp per key.
//!
//! Times are in ticks of `1/limit` ns, so the emission interval `T = period / limit` is
//! exactly `period_ns` ticks and is never rounded.

use super::time::{clamp64, div, ticks_to_duration};
use super::{Decision, Policy, table::Algo, time};

pub(crate) struct Gcra {
    /// `limit`: ticks per nanosecond.
    limit: u128,
    /// The emission interval `T` in ticks (`period_ns`).
    interval: u128,
    /// `limit + burst`.
    capacity: u64,
    /// `capacity * T`: the most debt a key may carry (the tolerance `τ` plus one `T`).
    max_debt: u128,
    period_ns: u64,
}

/// The theoretical arrival time, in ticks since the epoch.
pub(crate) struct State(u128);

impl Gcra {
    pub(crate) fn new(policy: &Policy) -> Self {
        let period_ns = time::nanos(policy.period);
        let capacity = policy.capacity();
        let interval = u128::from(period_ns);
        Gcra {
            limit: u128::from(policy.limit),
            interval,
            capacity,
            max_debt: u128::from(capacity) * interval,
            period_ns,
        }
    }
}

impl Algo for Gcra {
    type State = State;

    fn fresh(&self) -> State {
        State(0)
    }

    fn check(&self, s: &mut State, now: u64, cost: u64) -> Decision {
        let now = u128::from(now) * self.limit;
        let tat = s.0.max(now);
        let new_tat = tat.saturating_add(u128::from(cost) * self.interval);
        // The debt after this request: how far ahead of `now` the TAT would be.
        let debt_after = new_tat - now;
        let allowed = debt_after <= self.max_debt;
        let debt = if allowed {
            s.0 = new_tat;
            debt_after
        } else {
            tat - now
        };
        // (A `now` earlier than the last allowed request's can see more than `max_debt`.)
        let remaining = clamp64(div(self.max_debt.saturating_sub(debt), self.interval));
        let reset_after = ticks_to_duration(debt, self.limit);
        if allowed {
            Decision::allow(self.capacity, remaining, reset_after)
        } else if cost > self.capacity {
            Decision::refuse(self.capacity, remaining, reset_after, time::ns(self.period_ns))
        } else {
            Decision::refuse(
                self.capacity,
                remaining,
                reset_after,
                ticks_to_duration(debt_after - self.max_debt, self.limit),
            )
        }
    }

    fn idle_at(&self, s: &State) -> u64 {
        clamp64(time::div_ceil(s.0, self.limit))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::tests::{at, limiter, ms};
    use super::super::{LimitAlgorithm, Policy};

    #[test]
    fn ratelimit_gcra_limit_at_once_then_one_per_interval() {
        // Burst 0: `limit` at once (tolerance (limit - 1) T), then one per T = 200 ms.
        let (l, t0) = limiter(Policy::new(LimitAlgorithm::Gcra, 5, Duration::from_secs(1)));
        let allowed = (0..10).filter(|_| l.check(b"k", t0, 1).allowed).count();
        assert_eq!(allowed, 5);
        let d = l.check(b"k", at(t0, 199), 1);
        assert_eq!((d.allowed, d.retry_after), (false, Some(ms(1))));
        let d = l.check(b"k", at(t0, 200), 1);
        assert_eq!((d.allowed, d.remaining, d.reset_after), (true, 0, ms(1000)));
        // Over 10 s from exhaustion: exactly 50 more.
        let allowed = (1..=10_000).filter(|i| l.check(b"k", at(t0, 200 + i), 1).allowed).count();
        assert_eq!(allowed, 50);
    }

    #[test]
    fn ratelimit_gcra_burst_adds_capacity() {
        let (l, t0) = limiter(Policy::new(LimitAlgorithm::Gcra, 5, Duration::from_secs(1)).with_burst(3));
        let allowed = (0..20).filter(|_| l.check(b"k", t0, 1).allowed).count();
        assert_eq!(allowed, 8);
        let d = l.check(b"k", t0, 1);
        assert_eq!((d.limit, d.remaining, d.reset_after, d.retry_after), (8, 0, ms(1600), Some(ms(200))));
    }

    #[test]
    fn ratelimit_gcra_interval_not_rounded() {
        // 3 per second: T = 333.33.. ms. Over 300 s from empty, exactly 900 + 3.
        let (l, t0) = limiter(Policy::new(LimitAlgorithm::Gcra, 3, Duration::from_secs(1)));
        let allowed = (0..=300_000u64).filter(|i| l.check(b"k", at(t0, *i), 1).allowed).count();
        assert_eq!(allowed, 903);
    }
}
