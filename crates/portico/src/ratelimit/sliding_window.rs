//! `sliding_window`: Cloudflare's sliding-window counter, `current + previous × (1 −
//! elapsed / period)`, compared exactly in integers.

use super::time::{clamp64, div, ns};
use super::{Decision, Policy, table::Algo, time};

pub(crate) struct SlidingWindow {
    limit: u64,
    period: u64,
}

pub(crate) struct State {
    /// The current window (index since the epoch).
    window: u64,
    current: u64,
    previous: u64,
}

impl SlidingWindow {
    pub(crate) fn new(policy: &Policy) -> Self {
        SlidingWindow { limit: policy.limit, period: time::nanos(policy.period) }
    }

    /// The start of `window` (ns since the epoch).
    fn start(&self, window: u64) -> u64 {
        window.saturating_mul(self.period)
    }
}

impl Algo for SlidingWindow {
    type State = State;

    fn fresh(&self) -> State {
        State { window: 0, current: 0, previous: 0 }
    }

    fn check(&self, s: &mut State, now: u64, cost: u64) -> Decision {
        let window = now / self.period;
        if window > s.window {
            let previous = if window == s.window + 1 { s.current } else { 0 };
            *s = State { window, current: 0, previous };
        }
        // An earlier `now` (in the previous window) counts as the current window's start.
        let elapsed = now.saturating_sub(self.start(s.window));
        let (p, limit) = (u128::from(self.period), u128::from(self.limit));
        // The previous window's weight, scaled by `period`: `previous * (period - elapsed)`.
        let weighted = |previous: u64, elapsed: u64| u128::from(previous) * u128::from(self.period - elapsed);
        let wanted = (u128::from(s.current) + u128::from(cost)).saturating_mul(p);
        let allowed = wanted.saturating_add(weighted(s.previous, elapsed)) <= limit * p;
        if allowed {
            s.current += cost;
        }
        let used = (u128::from(s.current) * p).saturating_add(weighted(s.previous, elapsed));
        let remaining = clamp64(div((limit * p).saturating_sub(used), p));
        let to_end = self.period - elapsed;
        let reset_after = if s.current > 0 {
            ns(to_end.saturating_add(self.period))
        } else if s.previous > 0 {
            ns(to_end)
        } else {
            ns(0)
        };
        if allowed {
            return Decision::allow(self.limit, remaining, reset_after);
        }
        if cost > self.limit {
            return Decision::refuse(self.limit, remaining, reset_after, ns(self.period));
        }
        // The earliest elapsed time `e` in a window at which `previous`'s weight has faded
        // enough to leave `room`: `previous * (period - e) <= room * period`, i.e.
        // `period - e` at most `floor(room * period / previous)`.
        let fade = |previous: u64, room: u64| -> u64 {
            if previous == 0 {
                return 0;
            }
            let keep = div(u128::from(room) * p, u128::from(previous));
            self.period - clamp64(keep.min(p))
        };
        let retry = match self.limit.checked_sub(s.current.saturating_add(cost)) {
            // Later in this window.
            Some(room) => fade(s.previous, room).saturating_sub(elapsed),
            // In the next one, where `current` becomes the previous window.
            None => to_end.saturating_add(fade(s.current, self.limit - cost)),
        };
        Decision::refuse(self.limit, remaining, reset_after, ns(retry))
    }

    fn idle_at(&self, s: &State) -> u64 {
        if s.current > 0 {
            self.start(s.window.saturating_add(2))
        } else if s.previous > 0 {
            self.start(s.window.saturating_add(1))
        } else {
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::tests::{at, limiter, ms};
    use super::super::{LimitAlgorithm, Policy};

    #[test]
    fn ratelimit_sliding_window_weighted_estimate() {
        let (l, t0) = limiter(Policy::new(LimitAlgorithm::SlidingWindow, 10, Duration::from_secs(1)));
        assert!(l.check(b"k", at(t0, 500), 10).allowed);
        let d = l.check(b"k", at(t0, 600), 1);
        assert_eq!((d.allowed, d.remaining, d.reset_after), (false, 0, ms(1400)));
        // Next window, 1 s elapsed: current becomes previous; 10 x (1 - e) + 1 <= 10 at e = 100 ms.
        assert_eq!(d.retry_after, Some(ms(400 + 100)));
        assert!(!l.check(b"k", at(t0, 1099), 1).allowed);
        let d = l.check(b"k", at(t0, 1100), 1);
        assert_eq!((d.allowed, d.remaining, d.reset_after), (true, 0, ms(1900)));
        // At 1500: 10 x 0.5 + 1 = 6 used, 4 left.
        let d = l.check(b"k", at(t0, 1500), 4);
        assert_eq!((d.allowed, d.remaining), (true, 0));
        // Refused within the window: wait for the previous window's weight to fade.
        let d = l.check(b"k", at(t0, 1500), 1);
        assert_eq!((d.allowed, d.retry_after), (false, Some(ms(100))));
        // Two quiet windows forget everything.
        let d = l.check(b"k", at(t0, 4000), 10);
        assert_eq!((d.allowed, d.remaining), (true, 0));
    }

    #[test]
    fn ratelimit_sliding_window_no_boundary_burst() {
        // Where fixed_window lets 2 x limit through in 2 ms, this allows at most
        // limit x (1 + d / period) within any d: here limit + 1.
        let limit = 100;
        let (l, t0) = limiter(Policy::new(LimitAlgorithm::SlidingWindow, limit, Duration::from_secs(60)));
        let boundary = 60_000;
        let before = (0..limit * 2).filter(|_| l.check(b"k", at(t0, boundary - 1), 1).allowed).count();
        let after = (0..limit * 2).filter(|_| l.check(b"k", at(t0, boundary + 1), 1).allowed).count();
        assert_eq!(before, limit as usize);
        assert!(before + after <= limit as usize + 1, "{after}");
    }

    #[test]
    fn ratelimit_sliding_window_bound_on_random_traffic() {
        // The stated bound, checked on random bunched arrivals for several lengths d.
        let (limit, period) = (50u64, 10_000u64);
        let (l, t0) = limiter(Policy::new(LimitAlgorithm::SlidingWindow, limit, Duration::from_millis(period)));
        let mut rng = fastrand::Rng::with_seed(11);
        let (mut t, mut allowed) = (0u64, Vec::new());
        for _ in 0..40_000 {
            t += if rng.u8(..) < 220 { 0 } else { rng.u64(0..800) };
            if l.check(b"k", at(t0, t), 1).allowed {
                allowed.push(t);
            }
        }
        for d in [1, 100, 1_000, 5_000, 10_000] {
            let bound = limit + (limit * d).div_ceil(period);
            for (i, &start) in allowed.iter().enumerate() {
                let n = allowed[i..].iter().take_while(|&&x| x < start + d).count() as u64;
                assert!(n <= bound, "{n} > {bound} within {d} ms from {start}");
            }
        }
    }
}
