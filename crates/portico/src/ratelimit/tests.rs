//! Tests across algorithms: equivalence, invariants, extremes, memory, threads.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::*;

pub(crate) fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// `n` ms after `t0`.
pub(crate) fn at(t0: Instant, n: u64) -> Instant {
    t0 + ms(n)
}

/// A limiter for `policy` whose epoch is the returned instant.
pub(crate) fn limiter(policy: Policy) -> (LocalLimiter, Instant) {
    let t0 = Instant::now();
    (LocalLimiter::with_epoch(policy, 1000, t0).unwrap(), t0)
}

/// One of each algorithm: 10 per second, burst 5 where it applies, 500 ms of queue.
fn every_algorithm() -> impl Iterator<Item = Policy> {
    LimitAlgorithm::ALL
        .into_iter()
        .map(|a| Policy::new(a, 10, Duration::from_secs(1)).with_burst(5).with_max_delay(ms(500)))
}

#[test]
fn ratelimit_gcra_equals_token_bucket_on_random_arrivals() {
    let mut rng = fastrand::Rng::with_seed(42);
    for round in 0..200 {
        let limit = rng.u64(1..50);
        // Periods that `limit` rarely divides, to catch any rounding of T.
        let period = Duration::from_nanos(rng.u64(1..5_000_000_000));
        let burst = if rng.bool() { 0 } else { rng.u64(0..20) };
        let (tb, t0) = limiter(Policy::new(LimitAlgorithm::TokenBucket, limit, period).with_burst(burst));
        let gcra =
            LocalLimiter::with_epoch(Policy::new(LimitAlgorithm::Gcra, limit, period).with_burst(burst), 1000, t0)
                .unwrap();
        let mut now = t0;
        let mean_gap = period.as_nanos() as u64 / limit;
        for i in 0..500 {
            now += Duration::from_nanos(if rng.u8(..) < 80 { 0 } else { rng.u64(0..2 * mean_gap) });
            let cost = if rng.u8(..) < 200 { 1 } else { rng.u64(0..limit + burst + 2) };
            let key = [rng.u8(0..3)];
            let (a, b) = (tb.check(&key, now, cost), gcra.check(&key, now, cost));
            assert_eq!(a, b, "round {round}, request {i}: limit {limit}, period {period:?}, burst {burst}");
        }
    }
}

#[test]
fn ratelimit_decision_invariants_on_random_traffic() {
    let mut rng = fastrand::Rng::with_seed(3);
    for policy in every_algorithm() {
        let (l, t0) = limiter(policy);
        let period = policy.period;
        let t = Duration::from_millis(100); // period / limit
        let mut now = t0;
        let (mut allowed, mut refused) = (0, 0);
        for _ in 0..20_000 {
            now += Duration::from_micros(rng.u64(0..60_000));
            let cost = if rng.u8(..) < 220 { 1 } else { rng.u64(0..8) };
            let d = l.check(b"k", now, cost);
            assert_eq!(d.limit, policy.capacity());
            assert!(d.remaining <= d.limit, "{policy:?}: {d:?}");
            assert_eq!(d.allowed, d.retry_after.is_none(), "{policy:?}: {d:?}");
            if let Some(r) = d.retry_after {
                assert!(r > Duration::ZERO);
                // Never longer than the budget takes to come back, or a period for a
                // request that can never fit.
                assert!(r <= d.reset_after.max(period) + t, "{policy:?}: {d:?}");
                refused += 1;
            } else {
                allowed += 1;
            }
            let max_reset = match policy.algorithm {
                LimitAlgorithm::TokenBucket | LimitAlgorithm::Gcra => period * 15 / 10,
                LimitAlgorithm::SlidingWindow => period * 2,
                // The queue may hold up to max_delay plus the largest cost (7) behind it.
                LimitAlgorithm::LeakyBucket => policy.max_delay + t * 8,
                LimitAlgorithm::FixedWindow | LimitAlgorithm::SlidingLog => period,
            };
            assert!(d.reset_after <= max_reset, "{policy:?}: {d:?}");
            if policy.algorithm != LimitAlgorithm::LeakyBucket {
                assert_eq!(d.delay, None);
            } else if let Some(delay) = d.delay {
                assert!(d.allowed && delay <= policy.max_delay);
            }
        }
        assert!(allowed > 1000 && refused > 1000, "{policy:?}: {allowed} allowed, {refused} refused");
    }
}

#[test]
fn ratelimit_retry_after_is_when_it_would_pass() {
    // Retrying exactly at `retry_after` passes (for a request that can fit), and 1 ns
    // earlier does not (leaky_bucket: the delay is then exactly `max_delay`).
    let mut rng = fastrand::Rng::with_seed(5);
    for policy in every_algorithm() {
        let (l, t0) = limiter(policy);
        let mut now = t0;
        let mut checked = 0;
        for _ in 0..5_000 {
            now += Duration::from_micros(rng.u64(0..40_000));
            let cost = rng.u64(1..4);
            let d = l.check(b"k", now, cost);
            if let Some(r) = d.retry_after {
                let early = l.check(b"k", now + r - Duration::from_nanos(1), cost);
                assert!(!early.allowed, "{policy:?}: {d:?} then {early:?}");
                let ok = l.check(b"k", now + r, cost);
                assert!(ok.allowed, "{policy:?}: refused {d:?}, at retry_after {ok:?}");
                now += r;
                checked += 1;
            }
        }
        assert!(checked > 100, "{policy:?}");
    }
}

#[test]
fn ratelimit_cost_above_one() {
    for policy in every_algorithm() {
        let (l, t0) = limiter(policy);
        let cap = policy.capacity();
        if policy.algorithm == LimitAlgorithm::LeakyBucket {
            // Any cost is taken by an empty queue; the next request waits for all of it.
            assert!(l.check(b"k", t0, 4).allowed);
            let d = l.check(b"k", t0, 1);
            assert_eq!(d.delay, Some(ms(400)), "{policy:?}");
            continue;
        }
        let d = l.check(b"k", t0, cap - 1);
        assert_eq!((d.allowed, d.remaining), (true, 1), "{policy:?}");
        let d = l.check(b"k", t0, 2);
        assert_eq!((d.allowed, d.remaining), (false, 1), "{policy:?}");
        assert!(l.check(b"k", t0, 1).allowed);
        // A cost that can never fit: refused with a period, even from a full budget.
        let d = l.check(b"fresh", t0, cap + 1);
        assert_eq!((d.allowed, d.remaining, d.retry_after), (false, cap, Some(policy.period)), "{policy:?}");
        assert_eq!(d.reset_after, Duration::ZERO);
    }
}

#[test]
fn ratelimit_cost_zero_and_refusals_store_nothing() {
    for policy in every_algorithm() {
        let (l, t0) = limiter(policy);
        let d = l.check(b"k", t0, 0);
        assert_eq!((d.allowed, d.remaining, d.reset_after), (true, policy.capacity(), Duration::ZERO), "{policy:?}");
        if policy.algorithm != LimitAlgorithm::LeakyBucket {
            assert!(!l.check(b"k", t0, u64::MAX).allowed);
        }
        assert!(l.is_empty(), "{policy:?}");
        assert!(l.check(b"k", t0, 1).allowed);
        assert_eq!(l.len(), 1);
        // A cost-0 query on an exhausted key is allowed and changes nothing.
        while l.check(b"k", t0, 1).allowed {}
        let before = l.check(b"k", t0, 1);
        // (leaky_bucket refuses it too when the queue is already longer than max_delay.)
        assert_eq!(l.check(b"k", t0, 0).allowed, policy.algorithm != LimitAlgorithm::LeakyBucket);
        assert_eq!(l.check(b"k", t0, 1), before, "{policy:?}");
    }
}

#[test]
fn ratelimit_limit_zero_refuses_everything() {
    for policy in every_algorithm() {
        let policy = Policy { limit: 0, ..policy };
        assert_eq!(policy.capacity(), 0);
        let (l, t0) = limiter(policy);
        for cost in [0, 1, u64::MAX] {
            let d = l.check(b"k", t0, cost);
            assert_eq!(d, Decision::refuse(0, 0, policy.period, policy.period), "{policy:?}");
        }
        assert!(l.is_empty());
    }
}

#[test]
fn ratelimit_rejected_at_construction() {
    let zero = Policy::new(LimitAlgorithm::Gcra, 10, Duration::ZERO);
    assert_eq!(LocalLimiter::new(zero, 10).unwrap_err(), PolicyError::ZeroPeriod);
    let p = Policy::new(LimitAlgorithm::Gcra, 10, ms(1));
    assert_eq!(LocalLimiter::new(p, 0).unwrap_err(), PolicyError::ZeroMaxKeys);
    let log = Policy::new(LimitAlgorithm::SlidingLog, SLIDING_LOG_MAX_LIMIT + 1, ms(1));
    assert!(matches!(LocalLimiter::new(log, 10), Err(PolicyError::SlidingLogLimit { .. })));
    let log = Policy::new(LimitAlgorithm::SlidingLog, SLIDING_LOG_MAX_LIMIT, ms(1));
    assert!(LocalLimiter::new(log, 10).is_ok());
}

#[test]
fn ratelimit_extreme_values_do_not_overflow() {
    let t0 = Instant::now();
    // Far in the future, if the platform's Instant reaches that far.
    let late = [100u64, 10_000 * 365 * 86_400].map(|s| t0.checked_add(Duration::from_secs(s)));
    for algorithm in LimitAlgorithm::ALL {
        let huge = if algorithm == LimitAlgorithm::SlidingLog { SLIDING_LOG_MAX_LIMIT } else { u64::MAX };
        let policies = [
            Policy::new(algorithm, huge, Duration::MAX).with_burst(u64::MAX).with_max_delay(Duration::MAX),
            Policy::new(algorithm, huge, Duration::from_nanos(1)).with_burst(u64::MAX).with_max_delay(Duration::MAX),
            Policy::new(algorithm, 1, Duration::MAX).with_max_delay(Duration::MAX),
            Policy::new(algorithm, 1, Duration::from_nanos(1)),
            Policy::new(algorithm, 3, Duration::MAX).with_burst(u64::MAX - 1),
        ];
        for policy in policies {
            let l = LocalLimiter::with_epoch(policy, 100, t0).unwrap();
            for now in std::iter::once(Some(t0)).chain(late).flatten() {
                for cost in [0, 1, 2, u64::MAX / 2, u64::MAX] {
                    for _ in 0..3 {
                        let d = l.check(b"k", now, cost);
                        assert!(d.remaining <= d.limit, "{policy:?}: {d:?}");
                        assert_eq!(d.allowed, d.retry_after.is_none());
                        assert!(d.retry_after.is_none_or(|r| r > Duration::ZERO));
                    }
                }
                l.sweep(now);
            }
            // A time before the epoch counts as the epoch.
            if let Some(early) = t0.checked_sub(ms(1)) {
                assert!(l.check(b"early", early, 1).allowed || policy.limit == 1);
            }
        }
    }
}

#[test]
fn ratelimit_memory_bounded_under_a_million_random_keys() {
    // 10 per minute: a key used once stays in debt for 6 s, far longer than the flood
    // takes, so no key is idle and the table has to evict with debt.
    let max_keys = 10_000;
    let policy = Policy::new(LimitAlgorithm::Gcra, 10, Duration::from_secs(60));
    let t0 = Instant::now();
    let l = LocalLimiter::with_epoch(policy, max_keys, t0).unwrap();
    let mut rng = fastrand::Rng::with_seed(1);
    let mut heavy_allowed = 0;
    for i in 0..1_000_000u64 {
        let now = t0 + Duration::from_micros(i);
        assert!(l.check(&rng.u64(..).to_le_bytes(), now, 1).allowed);
        if i % 100 == 0 {
            // The attacker's own key, exhausted and kept so by the flood's least-debt eviction.
            heavy_allowed += usize::from(l.check(b"attacker", now, 1).allowed);
        }
        if i % 50_000 == 0 {
            assert!(l.len() <= max_keys, "{} keys", l.len());
        }
    }
    let stats = l.stats();
    assert!(stats.keys <= max_keys && stats.keys > max_keys * 9 / 10, "{stats:?}");
    assert!(stats.evicted >= 1_000_000 - max_keys as u64, "{stats:?}");
    assert_eq!(heavy_allowed, 10, "the flood reset the attacker's key");
    l.sweep(t0 + Duration::from_secs(3600));
    assert!(l.is_empty());
}

#[test]
fn ratelimit_full_table_drops_idle_keys_first() {
    // 1000 per second: a key used once is idle 1 ms later. With 1 us between new keys,
    // about 1000 keys are in debt at a time: room comes from idle keys, nothing is lost.
    let policy = Policy::new(LimitAlgorithm::Gcra, 1000, Duration::from_secs(1));
    let t0 = Instant::now();
    let l = LocalLimiter::with_epoch(policy, 10_000, t0).unwrap();
    for i in 0..200_000u64 {
        let _ = l.check(&i.to_le_bytes(), t0 + Duration::from_micros(i), 1);
    }
    let stats = l.stats();
    assert_eq!(stats.evicted, 0, "{stats:?}");
    assert!(stats.keys <= 10_000);
    // sweep drops exactly the idle ones.
    let end = t0 + Duration::from_micros(200_000);
    l.sweep(end);
    assert!(l.len() <= 1001, "{}", l.len());
    l.sweep(end + ms(1));
    assert!(l.is_empty());
}

#[test]
fn ratelimit_sweep_keeps_keys_in_debt() {
    for policy in every_algorithm() {
        let (l, t0) = limiter(policy);
        assert!(l.check(b"a", t0, 1).allowed);
        l.sweep(at(t0, 50));
        assert_eq!(l.len(), 1, "{policy:?}");
        l.sweep(at(t0, 3000));
        assert!(l.is_empty(), "{policy:?}");
    }
}

#[test]
fn ratelimit_threads_never_exceed_the_limit() {
    // N threads hammering one key at one instant: exactly the capacity is allowed.
    for policy in every_algorithm() {
        let (l, t0) = limiter(policy);
        let l = Arc::new(l);
        let allowed = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (l, allowed) = (l.clone(), allowed.clone());
                std::thread::spawn(move || {
                    for _ in 0..5_000 {
                        if l.check(b"hot", t0, 1).allowed {
                            allowed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(allowed.load(Ordering::Relaxed), policy.capacity(), "{policy:?}");
    }
}

#[test]
fn ratelimit_threads_with_a_moving_clock() {
    // Threads read a shared clock before deciding, so their times arrive slightly out of
    // order: still never more than capacity + elapsed x rate.
    for policy in every_algorithm() {
        let (l, t0) = limiter(policy);
        let l = Arc::new(l);
        let clock = Arc::new(AtomicU64::new(0));
        let allowed = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (l, clock, allowed) = (l.clone(), clock.clone(), allowed.clone());
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        let now = t0 + Duration::from_micros(clock.fetch_add(100, Ordering::Relaxed));
                        if l.check(b"hot", now, 1).allowed {
                            allowed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        // 40,000 x 100 us = 4 s: 40 at the rate.
        let elapsed_units = 40;
        let bound = match policy.algorithm {
            LimitAlgorithm::FixedWindow => 10 * 5,            // windows 0..=4
            LimitAlgorithm::SlidingWindow => 10 * 5,          // never more than a fixed window would
            LimitAlgorithm::LeakyBucket => 6 + elapsed_units, // 1 + 500 ms / 100 ms queued
            _ => policy.capacity() + elapsed_units,
        };
        let n = allowed.load(Ordering::Relaxed);
        assert!(n <= bound && n >= 30, "{policy:?}: {n} not in 30..={bound}");
    }
}

#[test]
fn ratelimit_exact_counts_one_request_per_ms_for_ten_seconds() {
    // 10 per second, burst 5, 500 ms of queue; a request every ms from 0 to 9,999 ms.
    for policy in every_algorithm() {
        let (l, t0) = limiter(policy);
        let allowed = (0..10_000).filter(|&i| l.check(b"k", at(t0, i), 1).allowed).count();
        let expected = match policy.algorithm {
            // 15 at once, then 99.99 earned over 9.999 s.
            LimitAlgorithm::TokenBucket | LimitAlgorithm::Gcra => 15 + 99,
            // 10 per window, 10 windows.
            LimitAlgorithm::FixedWindow => 100,
            // 10 at the start of each second, as the previous 10 leave.
            LimitAlgorithm::SlidingLog => 100,
            // 10 in the first window; then the previous window's weight leaves room for 9
            // per window (n <= 1 + 9 x 0.999 with the 9 spread over the previous one).
            LimitAlgorithm::SlidingWindow => 10 + 9 * 9,
            // 6 queued at once (delays 0, 99, .., 495 ms), then one per 100 ms from 100 ms.
            LimitAlgorithm::LeakyBucket => 6 + 99,
        };
        assert_eq!(allowed, expected, "{policy:?}");
    }
}

#[test]
fn ratelimit_entry_sizes_match_the_docs() {
    use std::mem::size_of;
    use table::Slot;
    assert_eq!(size_of::<token_bucket::State>(), 32);
    assert_eq!(size_of::<gcra::State>(), 16);
    assert_eq!(size_of::<fixed_window::State>(), 16);
    assert_eq!(size_of::<sliding_log::State>(), 40);
    assert_eq!(size_of::<sliding_window::State>(), 24);
    assert_eq!(size_of::<leaky_bucket::State>(), 16);
    let slots = [
        size_of::<Slot<token_bucket::State>>(),
        size_of::<Slot<gcra::State>>(),
        size_of::<Slot<fixed_window::State>>(),
        size_of::<Slot<sliding_log::State>>(),
        size_of::<Slot<sliding_window::State>>(),
        size_of::<Slot<leaky_bucket::State>>(),
    ];
    assert!(slots.iter().all(|&s| (40..=64).contains(&s)), "{slots:?}");
}

#[test]
fn ratelimit_types_are_shareable_and_debug_shows_no_keys() {
    fn shared<T: Send + Sync>() {}
    shared::<LocalLimiter>();
    shared::<Concurrency>();
    // Held across `.await` on a multi-threaded runtime.
    fn sendable<T: Send + 'static>() {}
    sendable::<ConcurrencyGuard>();

    let (l, t0) = limiter(Policy::new(LimitAlgorithm::Gcra, 1, ms(1)));
    let _ = l.check(b"secret-key", t0, 1);
    let c = Concurrency::new(1, 10).unwrap();
    let g = c.acquire(b"secret-key").unwrap();
    for text in [format!("{l:?}"), format!("{c:?}"), format!("{g:?}")] {
        assert!(!text.contains("secret") && !text.contains("115, 101"), "{text}");
    }
}
