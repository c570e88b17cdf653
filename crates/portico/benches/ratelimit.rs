//! What a rate-limit decision costs, per algorithm, on one thread: one hot key (every
//! request on the same key and shard), and 10,000 keys visited in turn (a table that no
//! longer fits in L1). Also a concurrency-limit acquire + release. Throughput is in
//! decisions per second on one core. Time is injected (an `Instant` plus a counter), as the
//! plugin will do with `Instant::now()` (add ~20 ns for reading the clock).
//!
//! `cargo bench -p portico --bench ratelimit -- --warm-up-time 1 --measurement-time 3`

#![allow(clippy::unwrap_used, missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use portico::ratelimit::{Concurrency, LimitAlgorithm, LocalLimiter, Policy};
use tokio::time::Instant;

/// 1,000 per second (T = 1 ms), 100 of burst, 1 s of queue for leaky_bucket.
fn policy(algorithm: LimitAlgorithm) -> Policy {
    Policy::new(algorithm, 1000, Duration::from_secs(1)).with_burst(100).with_max_delay(Duration::from_secs(1))
}

fn bench(c: &mut Criterion) {
    let keys: Vec<Vec<u8>> = (0..10_000).map(|i| format!("consumer:{i:05}").into_bytes()).collect();

    let mut group = c.benchmark_group("ratelimit_one_key");
    group.throughput(Throughput::Elements(1));
    for algorithm in LimitAlgorithm::ALL {
        let t0 = Instant::now();
        let limiter = LocalLimiter::with_epoch(policy(algorithm), 100_000, t0).unwrap();
        // 500 us per request, two per emission interval: half allowed, half refused once
        // the burst is spent.
        let mut ns = 0u64;
        group.bench_function(algorithm.as_str(), |b| {
            b.iter(|| {
                ns += 500_000;
                black_box(limiter.check(black_box(b"consumer:00042"), t0 + Duration::from_nanos(ns), 1))
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("ratelimit_10k_keys");
    group.throughput(Throughput::Elements(1));
    for algorithm in LimitAlgorithm::ALL {
        let t0 = Instant::now();
        let limiter = LocalLimiter::with_epoch(policy(algorithm), 100_000, t0).unwrap();
        // 1 us per request: each key comes back every 10 ms, 10 units later.
        let (mut ns, mut i) = (0u64, 0usize);
        group.bench_function(algorithm.as_str(), |b| {
            b.iter(|| {
                ns += 1_000;
                i = if i + 1 == keys.len() { 0 } else { i + 1 };
                black_box(limiter.check(&keys[i], t0 + Duration::from_nanos(ns), 1))
            })
        });
    }
    group.finish();

    // A flood of keys never seen before, into a full 10,000-key table: the cost of the
    // attack path (copying the key, making room). `idle`: keys are idle 1 ms after their
    // one request, so room comes from idle keys; `evicting`: keys stay in debt for 6 s, so
    // every 1/16 of the table is evicted with debt (least debt first).
    let mut group = c.benchmark_group("ratelimit_new_key_flood");
    group.throughput(Throughput::Elements(1));
    for (name, per_minute) in [("gcra_idle", 60_000), ("gcra_evicting", 10)] {
        let t0 = Instant::now();
        let limiter = LocalLimiter::with_epoch(
            Policy::new(LimitAlgorithm::Gcra, per_minute, Duration::from_secs(60)),
            10_000,
            t0,
        )
        .unwrap();
        let mut n = 0u64;
        group.bench_function(name, |b| {
            b.iter(|| {
                n += 1;
                black_box(limiter.check(&n.to_le_bytes(), t0 + Duration::from_nanos(n * 1_000), 1))
            })
        });
        assert!(limiter.len() <= 10_000);
    }
    group.finish();

    let mut group = c.benchmark_group("concurrency");
    group.throughput(Throughput::Elements(1));
    let limit = Concurrency::new(100, 100_000).unwrap();
    // A key that already has a request in flight: acquire finds its entry.
    let _held = limit.acquire(b"consumer:00042").unwrap();
    group.bench_function("acquire_release_one_key", |b| {
        b.iter(|| drop(black_box(limit.acquire(black_box(b"consumer:00042")))))
    });
    // Keys with nothing in flight: acquire inserts the entry, release removes it.
    let mut i = 0usize;
    group.bench_function("acquire_release_10k_keys", |b| {
        b.iter(|| {
            i = if i + 1 == keys.len() { 0 } else { i + 1 };
            drop(black_box(limit.acquire(&keys[i])))
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
