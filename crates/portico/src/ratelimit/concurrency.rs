//! Concurrency limits: at most `max` requests in flight per key.

use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use hashbrown::HashTable;
use parking_lot::Mutex;

use super::PolicyError;
use super::table::{layout, shard_of};

/// At most `max` requests in flight per key, for at most `max_keys` keys at once.
///
/// [`acquire`](Self::acquire) takes a slot and returns a guard that gives it back when
/// dropped (hold it until the response is sent), or `None` when the key is at `max`. A
/// key takes memory only while it has requests in flight: its entry goes with its last
/// guard, so there is nothing to sweep.
///
/// When `max_keys` keys already have requests in flight (more precisely, when the new
/// key's shard is full: see the rate limiter's notes on headroom), a new key is let
/// through *untracked*: its guard counts nothing, and [`untracked`](Self::untracked) counts
/// these. Unlike a rate limiter's, these entries cannot be evicted (their requests are
/// still running), and refusing would turn a full table into an outage for every new
/// client; letting the new key through is bounded by the gateway's connection limits,
/// which a full table of in-flight requests is already pressing against.
pub struct Concurrency {
    max: u64,
    hasher: RandomState,
    shards: Box<[Arc<Shard>]>,
    cap: usize,
    untracked: AtomicU64,
}

#[repr(align(128))]
struct Shard(Mutex<ShardState>);

struct ShardState {
    map: HashTable<Slot>,
    /// Identifies slots for guards (which keep no copy of the key).
    next_id: u64,
}

struct Slot {
    hash: u64,
    id: u64,
    key: Box<[u8]>,
    in_flight: u64,
}

/// A slot taken by [`Concurrency::acquire`], given back on drop. It keeps its shard alive,
/// so it may outlive the [`Concurrency`] (a config reload that builds a new one).
#[must_use = "the slot is released when the guard is dropped"]
pub struct ConcurrencyGuard {
    /// `None` when untracked.
    slot: Option<(Arc<Shard>, u64, u64)>,
}

// Not derived: the keys (consumer names, addresses, key digests) stay out of logs.
impl std::fmt::Debug for Concurrency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Concurrency")
            .field("max", &self.max)
            .field("shards", &self.shards.len())
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for ConcurrencyGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConcurrencyGuard").field("tracked", &self.is_tracked()).finish()
    }
}

impl Concurrency {
    /// At most `max` in flight per key (0 refuses everything), for at most `max_keys` keys.
    pub fn new(max: u64, max_keys: usize) -> Result<Self, PolicyError> {
        if max_keys == 0 {
            return Err(PolicyError::ZeroMaxKeys);
        }
        let (n, cap) = layout(max_keys);
        let shards =
            (0..n).map(|_| Arc::new(Shard(Mutex::new(ShardState { map: HashTable::new(), next_id: 0 })))).collect();
        Ok(Concurrency { max, hasher: RandomState::new(), shards, cap, untracked: AtomicU64::new(0) })
    }

    /// The most requests in flight per key.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Takes a slot for `key`, or `None` if it already has `max` in flight.
    pub fn acquire(&self, key: &[u8]) -> Option<ConcurrencyGuard> {
        if self.max == 0 {
            return None;
        }
        let hash = self.hasher.hash_one(key);
        let shard = &self.shards[shard_of(hash, self.shards.len())];
        let mut state = shard.0.lock();
        if let Some(slot) = state.map.find_mut(hash, |s| s.hash == hash && *s.key == *key) {
            if slot.in_flight >= self.max {
                return None;
            }
            slot.in_flight += 1;
            let id = slot.id;
            drop(state);
            return Some(ConcurrencyGuard { slot: Some((shard.clone(), hash, id)) });
        }
        if state.map.len() >= self.cap {
            drop(state);
            self.untracked.fetch_add(1, Ordering::Relaxed);
            return Some(ConcurrencyGuard { slot: None });
        }
        let id = state.next_id;
        state.next_id = state.next_id.wrapping_add(1);
        state.map.insert_unique(hash, Slot { hash, id, key: key.into(), in_flight: 1 }, |s| s.hash);
        drop(state);
        Some(ConcurrencyGuard { slot: Some((shard.clone(), hash, id)) })
    }

    /// Requests in flight for `key` now.
    pub fn in_flight(&self, key: &[u8]) -> u64 {
        let hash = self.hasher.hash_one(key);
        let state = self.shards[shard_of(hash, self.shards.len())].0.lock();
        state.map.find(hash, |s| s.hash == hash && *s.key == *key).map_or(0, |s| s.in_flight)
    }

    /// Keys with requests in flight now (locks every shard in turn).
    pub fn keys(&self) -> usize {
        self.shards.iter().map(|s| s.0.lock().map.len()).sum()
    }

    /// Requests let through untracked because the table was full.
    pub fn untracked(&self) -> u64 {
        self.untracked.load(Ordering::Relaxed)
    }
}

impl ConcurrencyGuard {
    /// Whether this request is counted (false when it was let through a full table).
    pub fn is_tracked(&self) -> bool {
        self.slot.is_some()
    }
}

impl Drop for ConcurrencyGuard {
    fn drop(&mut self) {
        let Some((shard, hash, id)) = self.slot.take() else { return };
        let mut state = shard.0.lock();
        // Slots are found by hash and id: ids are unique within a shard for 2^64 keys.
        if let Ok(mut entry) = state.map.find_entry(hash, |s| s.id == id) {
            let slot = entry.get_mut();
            slot.in_flight -= 1;
            if slot.in_flight == 0 {
                entry.remove();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratelimit_concurrency_guard_releases_on_drop() {
        let c = Concurrency::new(2, 1000).unwrap();
        let a = c.acquire(b"alice").unwrap();
        let b = c.acquire(b"alice").unwrap();
        assert!(a.is_tracked() && b.is_tracked());
        assert!(c.acquire(b"alice").is_none());
        assert_eq!(c.in_flight(b"alice"), 2);
        // Another key is independent.
        let other = c.acquire(b"bob").unwrap();
        drop(a);
        assert_eq!(c.in_flight(b"alice"), 1);
        let again = c.acquire(b"alice").unwrap();
        assert!(c.acquire(b"alice").is_none());
        drop((b, again, other));
        assert_eq!((c.in_flight(b"alice"), c.keys()), (0, 0));
    }

    #[test]
    fn ratelimit_concurrency_zero_and_bounded_keys() {
        let c = Concurrency::new(0, 10).unwrap();
        assert!(c.acquire(b"k").is_none());
        assert_eq!(Concurrency::new(1, 0).unwrap_err(), PolicyError::ZeroMaxKeys);

        let c = Concurrency::new(1, 64).unwrap();
        let held: Vec<_> = (0..1000u32).filter_map(|i| c.acquire(&i.to_be_bytes())).collect();
        assert_eq!(held.len(), 1000);
        assert_eq!(c.keys(), 64);
        assert_eq!(c.untracked(), 1000 - 64);
        assert_eq!(held.iter().filter(|g| g.is_tracked()).count(), 64);
        drop(held);
        assert_eq!(c.keys(), 0);
    }

    #[test]
    fn ratelimit_concurrency_threads() {
        let c = Arc::new(Concurrency::new(3, 1000).unwrap());
        let peak = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (c, peak) = (c.clone(), peak.clone());
                std::thread::spawn(move || {
                    for _ in 0..20_000 {
                        if let Some(g) = c.acquire(b"hot") {
                            peak.fetch_max(c.in_flight(b"hot"), Ordering::Relaxed);
                            drop(g);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(peak.load(Ordering::Relaxed) <= 3);
        assert_eq!(c.keys(), 0);
    }
}
