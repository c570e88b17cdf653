//! `leaky_bucket`: requests leave at one unit per `T = period / limit`; a request that
//! comes early waits for its turn, up to `max_delay`.
//!
//! The state is the time the queue will have drained (in ticks of `1/limit` ns, like
//! `gcra`): a request waits until then, and then holds the next `cost · T`.

use super::time::{clamp64, div, ticks_to_duration};
use super::{Decision, Policy, table::Algo, time};

pub(crate) struct LeakyBucket {
    /// `limit`: ticks per nanosecond.
    limit: u128,
    /// `T` in ticks (`period_ns`).
    interval: u128,
    /// `max_delay` in ticks.
    max_wait: u128,
    /// `1 + max_delay / T`: requests accepted at once by an empty queue.
    capacity: u64,
}

/// When the queue will have drained, in ticks since the epoch.
pub(crate) struct State(u128);

impl LeakyBucket {
    pub(crate) fn new(policy: &Policy) -> Self {
        let limit = u128::from(policy.limit);
        LeakyBucket {
            limit,
            interval: u128::from(time::nanos(policy.period)),
            max_wait: u128::from(time::nanos(policy.max_delay)) * limit,
            capacity: policy.capacity(),
        }
    }

    /// Cost-1 requests that would still be accepted behind a queue draining in `wait`.
    fn room(&self, wait: u128) -> u64 {
        match self.max_wait.checked_sub(wait) {
            Some(slack) => clamp64(div(slack, self.interval)).saturating_add(1).min(self.capacity),
            None => 0,
        }
    }
}

impl Algo for LeakyBucket {
    type State = State;

    fn fresh(&self) -> State {
        State(0)
    }

    fn check(&self, s: &mut State, now: u64, cost: u64) -> Decision {
        let now = u128::from(now) * self.limit;
        let start = s.0.max(now);
        let wait = start - now;
        if wait > self.max_wait {
            let reset_after = ticks_to_duration(wait, self.limit);
            return Decision::refuse(
                self.capacity,
                0,
                reset_after,
                ticks_to_duration(wait - self.max_wait, self.limit),
            );
        }
        s.0 = start.saturating_add(u128::from(cost) * self.interval);
        let queued = s.0 - now;
        let mut d = Decision::allow(self.capacity, self.room(queued), ticks_to_duration(queued, self.limit));
        if wait > 0 {
            d.delay = Some(ticks_to_duration(wait, self.limit));
        }
        d
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
    fn ratelimit_leaky_bucket_delays_grow_linearly_then_refuse() {
        // 10 per second: one every 100 ms; wait at most 1 s.
        let policy = Policy::new(LimitAlgorithm::LeakyBucket, 10, Duration::from_secs(1)).with_max_delay(ms(1000));
        let (l, t0) = limiter(policy);
        for i in 0..=10u64 {
            let d = l.check(b"k", t0, 1);
            assert!(d.allowed, "{i}");
            assert_eq!(d.delay, if i == 0 { None } else { Some(ms(100 * i)) }, "{i}");
            assert_eq!((d.limit, d.remaining, d.reset_after), (11, 10 - i, ms(100 * (i + 1))));
        }
        // The 12th would wait 1.1 s: refused, retry when the wait is back to 1 s.
        let d = l.check(b"k", t0, 1);
        assert_eq!((d.allowed, d.delay, d.retry_after, d.remaining), (false, None, Some(ms(100)), 0));
        let d = l.check(b"k", at(t0, 100), 1);
        assert_eq!((d.allowed, d.delay), (true, Some(ms(1000))));
        // Requests leave at the steady rate: over 10 s, 100 more, each 100 ms apart.
        let mut departures = Vec::new();
        for i in 0..=100_000u64 {
            let now = 100 + i / 10;
            let d = l.check(b"k", at(t0, now), 1);
            if d.allowed {
                departures.push(ms(now) + d.delay.unwrap_or_default());
            }
        }
        assert_eq!(departures.len(), 100);
        assert!(departures.windows(2).all(|w| w[1] - w[0] == ms(100)));
    }

    #[test]
    fn ratelimit_leaky_bucket_no_queue_spaces_requests() {
        let (l, t0) = limiter(Policy::new(LimitAlgorithm::LeakyBucket, 4, Duration::from_secs(1)));
        let d = l.check(b"k", t0, 1);
        assert_eq!((d.allowed, d.delay, d.limit, d.remaining), (true, None, 1, 0));
        let d = l.check(b"k", at(t0, 100), 1);
        assert_eq!((d.allowed, d.retry_after), (false, Some(ms(150))));
        let d = l.check(b"k", at(t0, 250), 2);
        assert_eq!((d.allowed, d.delay, d.reset_after), (true, None, ms(500)));
        assert!(!l.check(b"k", at(t0, 749), 1).allowed);
        assert!(l.check(b"k", at(t0, 750), 1).allowed);
    }
}
