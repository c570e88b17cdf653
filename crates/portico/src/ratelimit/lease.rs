//! The batched mode of Redis limits: each instance holds, per key, a *lease* of units
//! reserved from Redis in one round trip
//! ([`RedisLimiter::reserve`](super::RedisLimiter::reserve)) and spends it locally.
//!
//! - A request takes one unit of its key's lease, without Redis, while the lease has units
//!   and has not expired.
//! - When it is empty or expired, one request reserves `batch` units (Redis grants
//!   `min(batch, available)`), takes the first, and leaves the rest as the new lease.
//!   Requests for the same key arriving meanwhile wait for that reservation rather than
//!   sending their own (one reservation in flight per key and instance), so a lease never
//!   holds more than `batch - 1` units.
//! - A lease expires `ttl` after it was granted (and at the end of its window for
//!   `fixed_window`): its unused units are not given back, they are simply spent.
//! - A reservation granting nothing is a refusal, remembered for `min(retry_after, ttl)`:
//!   refused requests do not each cost a round trip either.
//!
//! The table is sharded, each shard behind a `parking_lot` mutex held for a few
//! instructions, and bounded: a full shard drops its expired leases (scanning at most
//! every 100 ms), and a key that still finds no room is decided by a reservation of one
//! unit, not remembered.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::time::Instant;

use super::Decision;
use super::redis::Reservation;

const SHARDS: usize = 16;

/// How often at most a full shard is scanned for expired leases (a scan holds its lock
/// for the whole shard).
const PURGE_EVERY: Duration = Duration::from_millis(100);

/// One shard of the table: leases by key.
#[derive(Debug)]
struct Table {
    map: HashMap<Box<[u8]>, Lease>,
    /// When a full shard may be scanned again.
    next_purge: Option<Instant>,
}

type Shard = Mutex<Table>;

#[derive(Debug)]
struct Lease {
    /// Units left to spend.
    units: u64,
    /// Until when they may be spent.
    until: Instant,
    /// The shared budget's remaining units when the lease was granted (the lease's own
    /// not included).
    remaining: u64,
    limit: u64,
    /// When the shared budget is full again (as of the reservation).
    reset_at: Instant,
    /// The last reservation granted nothing: refused until then, with that decision.
    refused: Option<(Instant, Decision)>,
    /// A reservation in flight: closed (the sender dropped) when it ends.
    pending: Option<watch::Receiver<()>>,
}

impl Lease {
    fn in_flight(&self) -> Option<watch::Receiver<()>> {
        self.pending.as_ref().filter(|rx| rx.has_changed().is_ok()).cloned()
    }

    fn idle(&self, now: Instant) -> bool {
        (self.units == 0 || self.until <= now)
            && self.refused.is_none_or(|(until, _)| until <= now)
            && self.in_flight().is_none()
    }
}

/// The leases of one batched limit, by key.
#[derive(Debug)]
pub struct Leases {
    shards: Box<[Shard]>,
    batch: u64,
    ttl: Duration,
    per_shard: usize,
}

enum Step {
    Done(Decision),
    Wait(watch::Receiver<()>),
    Reserve(watch::Sender<()>),
    Unstored,
}

impl Leases {
    /// Leases of `batch` units (at least 1), valid for `ttl`, for at most about
    /// `max_keys` keys.
    pub fn new(batch: u64, ttl: Duration, max_keys: usize) -> Self {
        let shards = (0..SHARDS).map(|_| Mutex::new(Table { map: HashMap::new(), next_purge: None })).collect();
        Self { shards, batch: batch.max(1), ttl, per_shard: max_keys.div_ceil(SHARDS).max(1) }
    }

    fn shard(&self, key: &[u8]) -> &Shard {
        let h = crate::upstream::balance::fnv1a(key);
        &self.shards[(h % SHARDS as u64) as usize]
    }

    /// Decides on one request for `key`: from the lease when it has a unit, else by
    /// `reserve(n)` (a reservation of `n` units from Redis; `None` when Redis failed, which
    /// is returned as is, for `on_store_error`).
    pub async fn decide<F, Fut>(&self, key: &[u8], reserve: F) -> Option<Decision>
    where
        F: Fn(u64) -> Fut,
        Fut: Future<Output = Option<Reservation>>,
    {
        loop {
            match self.step(key) {
                Step::Done(d) => return Some(d),
                Step::Wait(mut rx) => {
                    // Returns when the reservation ends (its sender is dropped), even if
                    // it was cancelled; then look again.
                    let _ = rx.changed().await;
                }
                Step::Unstored => return reserve(1).await.map(|r| r.decision),
                Step::Reserve(tx) => {
                    let r = reserve(self.batch).await;
                    self.settle(key, r.as_ref());
                    drop(tx);
                    return r.map(|r| r.decision);
                }
            }
        }
    }

    fn step(&self, key: &[u8]) -> Step {
        let now = Instant::now();
        let mut guard = self.shard(key).lock();
        let table = &mut *guard;
        if !table.map.contains_key(key) && table.map.len() >= self.per_shard {
            if table.next_purge.is_none_or(|t| t <= now) {
                table.map.retain(|_, l| !l.idle(now));
                table.next_purge = Some(now + PURGE_EVERY);
            }
            if table.map.len() >= self.per_shard {
                return Step::Unstored;
            }
        }
        let lease = table.map.entry(key.into()).or_insert_with(|| Lease {
            units: 0,
            until: now,
            remaining: 0,
            limit: 0,
            reset_at: now,
            refused: None,
            pending: None,
        });
        if lease.units > 0 && lease.until > now {
            lease.units -= 1;
            let remaining = lease.remaining.saturating_add(lease.units).min(lease.limit);
            return Step::Done(Decision::allow(lease.limit, remaining, lease.reset_at.saturating_duration_since(now)));
        }
        lease.units = 0;
        if let Some((until, d)) = lease.refused {
            if until > now {
                let retry = until.saturating_duration_since(now).max(Duration::from_micros(1));
                return Step::Done(Decision::refuse(d.limit, d.remaining, d.reset_after, retry));
            }
            lease.refused = None;
        }
        if let Some(rx) = lease.in_flight() {
            return Step::Wait(rx);
        }
        let (tx, rx) = watch::channel(());
        lease.pending = Some(rx);
        Step::Reserve(tx)
    }

    /// Records a reservation's outcome as the key's lease.
    fn settle(&self, key: &[u8], r: Option<&Reservation>) {
        let now = Instant::now();
        let mut shard = self.shard(key).lock();
        let Some(lease) = shard.map.get_mut(key) else { return };
        lease.pending = None;
        let Some(r) = r else { return };
        let d = r.decision;
        if r.granted > 0 {
            lease.units = r.granted - 1;
            lease.until = now + r.valid_for.map_or(self.ttl, |v| v.min(self.ttl));
            lease.limit = d.limit;
            lease.remaining = d.remaining.saturating_sub(lease.units);
            lease.reset_at = now + d.reset_after;
            lease.refused = None;
        } else {
            let retry = d.retry_after.unwrap_or(self.ttl).min(self.ttl);
            lease.units = 0;
            lease.refused = Some((now + retry, d));
        }
    }

    /// Drops the leases that have nothing left to spend.
    pub fn sweep(&self) {
        let now = Instant::now();
        for s in &*self.shards {
            s.lock().map.retain(|_, l| !l.idle(now));
        }
    }

    /// Keys with a lease (for tests).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().map.len()).sum()
    }

    /// Whether no key has a lease.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    /// A shared budget of `left` units, granting as the reservation scripts do, counting
    /// the calls.
    struct Budget {
        left: AtomicU64,
        calls: AtomicU64,
        sizes: Mutex<Vec<u64>>,
    }

    impl Budget {
        fn new(left: u64) -> Arc<Self> {
            Arc::new(Self { left: AtomicU64::new(left), calls: AtomicU64::new(0), sizes: Mutex::new(Vec::new()) })
        }

        async fn reserve(&self, n: u64) -> Option<Reservation> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.sizes.lock().push(n);
            tokio::time::sleep(Duration::from_millis(5)).await;
            let left = self.left.load(Ordering::SeqCst);
            let granted = n.min(left);
            self.left.store(left - granted, Ordering::SeqCst);
            let reset = Duration::from_secs(60);
            Some(if granted > 0 {
                let remaining = left - granted + granted - 1;
                Reservation { granted, decision: Decision::allow(100, remaining, reset), valid_for: None }
            } else {
                Reservation {
                    granted,
                    decision: Decision::refuse(100, 0, reset, Duration::from_millis(300)),
                    valid_for: None,
                }
            })
        }
    }

    async fn decide(l: &Leases, b: &Budget, key: &[u8]) -> Decision {
        l.decide(key, |n| b.reserve(n)).await.unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn units_are_spent_locally_and_refusals_remembered() {
        let (l, b) = (Leases::new(10, Duration::from_secs(1), 100), Budget::new(25));
        let mut remaining = Vec::new();
        for _ in 0..25 {
            let d = decide(&l, &b, b"k").await;
            assert!(d.allowed);
            remaining.push(d.remaining);
        }
        assert_eq!(b.calls.load(Ordering::SeqCst), 3);
        // The shared remaining, the lease's units included, counts down.
        assert_eq!(remaining, (0..25).rev().collect::<Vec<_>>());
        let d = decide(&l, &b, b"k").await;
        assert!(!d.allowed);
        assert_eq!(b.calls.load(Ordering::SeqCst), 4);
        // Remembered for retry_after (300 ms): no round trip meanwhile.
        for _ in 0..10 {
            assert!(!decide(&l, &b, b"k").await.allowed);
        }
        assert_eq!(b.calls.load(Ordering::SeqCst), 4);
        tokio::time::advance(Duration::from_millis(300)).await;
        b.left.store(3, Ordering::SeqCst);
        assert!(decide(&l, &b, b"k").await.allowed);
        assert_eq!(b.calls.load(Ordering::SeqCst), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_lease_is_spent() {
        let (l, b) = (Leases::new(10, Duration::from_secs(1), 100), Budget::new(100));
        assert!(decide(&l, &b, b"k").await.allowed);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(decide(&l, &b, b"k").await.allowed);
        // The 9 units of the first lease were not used and are not given back.
        assert_eq!((b.calls.load(Ordering::SeqCst), b.left.load(Ordering::SeqCst)), (2, 80));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_reservation_in_flight_per_key() {
        let l = Arc::new(Leases::new(10, Duration::from_secs(1), 100));
        let b = Budget::new(1000);
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let (l, b) = (l.clone(), b.clone());
                tokio::spawn(async move { decide(&l, &b, b"k").await.allowed })
            })
            .collect();
        for t in tasks {
            assert!(t.await.unwrap());
        }
        assert_eq!(b.calls.load(Ordering::SeqCst), 2);
        assert_eq!(b.left.load(Ordering::SeqCst), 980);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_reservation_does_not_block_the_key() {
        let (l, b) = (Leases::new(10, Duration::from_secs(1), 100), Budget::new(100));
        // Dropped while waiting for Redis.
        let _ = tokio::time::timeout(Duration::from_millis(1), decide(&l, &b, b"k")).await;
        assert!(decide(&l, &b, b"k").await.allowed);
        assert_eq!(b.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_table_is_bounded() {
        let (l, b) = (Leases::new(10, Duration::from_secs(1), 16), Budget::new(100_000));
        for i in 0..200u32 {
            assert!(decide(&l, &b, &i.to_be_bytes()).await.allowed);
        }
        assert!(l.len() <= 16, "{}", l.len());
        // Keys without room were decided by a reservation of one unit.
        assert!(b.sizes.lock().contains(&1));
        // Expired leases make room, without a sweep.
        tokio::time::advance(Duration::from_secs(1)).await;
        let calls = b.sizes.lock().len();
        assert!(decide(&l, &b, b"new").await.allowed);
        assert_eq!(b.sizes.lock()[calls..], [10]);
        l.sweep();
        assert_eq!(l.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_reservation_is_returned() {
        let l = Leases::new(10, Duration::from_secs(1), 100);
        assert!(l.decide(b"k", |_| async { None }).await.is_none());
        assert!(l.decide(b"k", |_| async { None }).await.is_none());
    }
}
