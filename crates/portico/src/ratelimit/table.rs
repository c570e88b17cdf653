//! The sharded, bounded key → state map behind every [`LocalLimiter`](super::LocalLimiter).
//!
//! Keys are hashed once with std's SipHash-1-3 under a per-limiter random key: the keys
//! come from requests (client addresses, header values), so a hash an attacker can learn
//! and collide would turn each shard into a linked list. foldhash and similar fast
//! hashes say plainly that they do not resist an interactive attacker; SipHash costs
//! ~15 ns on a short key, which this budget affords. The hash picks the shard and is
//! reused by the shard's `hashbrown::HashTable` (std's `HashMap` would hash again).
//!
//! # Bounded memory and eviction
//!
//! Each shard holds at most `max_keys / shards` keys, so the limiter never holds more
//! than `max_keys` (a skewed spread of keys over shards makes a shard full a little
//! before the whole limiter is: give `max_keys` ~25% headroom over the keys you expect).
//! When a new key meets a full shard:
//!
//! 1. Keys whose state is back to a full budget are dropped: forgetting them changes no
//!    decision. The scan is skipped while no key can have become idle yet (the shard
//!    remembers the earliest time one will), so a full shard costs O(1) per new key.
//! 2. If none is idle, the `cap/16` keys with the *least debt* are evicted: those whose
//!    budget will be full soonest. Forgetting a key hands it back the budget it has used
//!    and not yet earned back, so this evicts the keys whose forgetting grants the least.
//!    A flood of random keys therefore evicts its own keys (each has used one request)
//!    and not the heavy keys that are actually being limited: an attacker cannot reset
//!    its own exhausted key by flooding. Evicting a batch keeps the scan amortised to
//!    ~16 entry visits per new key under a flood. Evictions are counted in
//!    [`Stats::evicted`](super::Stats::evicted).
//!
//! We evict rather than fail open (leave the new key untracked and allow it): an
//! untracked key would stay unlimited for as long as an attacker keeps the table full,
//! which it can do with `max_keys` requests per emission interval. We evict rather than
//! fail closed: refusing new keys would turn a full table into an outage for every new
//! client.

use std::hash::{BuildHasher, RandomState};

use hashbrown::HashTable;
use parking_lot::Mutex;

use super::Decision;

/// One rate-limiting algorithm with its compiled parameters: a pure state machine.
pub(crate) trait Algo: Send + Sync + 'static {
    /// The state of one key.
    type State: Send;
    /// The state of a key never seen: a full budget.
    fn fresh(&self) -> Self::State;
    /// Decides on a request of `cost` at `now` (ns since the epoch), updating `state` if
    /// it is allowed. `now` may be slightly earlier than a previous call's (threads read
    /// the clock before taking the lock); each algorithm treats that conservatively.
    fn check(&self, state: &mut Self::State, now: u64, cost: u64) -> Decision;
    /// When `state` will be equivalent to [`fresh`](Self::fresh) (ns since the epoch):
    /// from then on, forgetting the key changes no decision. Never decreases as `check`
    /// is called with non-decreasing times.
    fn idle_at(&self, state: &Self::State) -> u64;
}

/// Shard count and per-shard capacity for `max_keys`: up to 64 shards (enough that
/// threads rarely meet on a lock), fewer for small limiters so that a shard still holds
/// at least 64 keys. `shards * cap <= max_keys`.
pub(crate) fn layout(max_keys: usize) -> (usize, usize) {
    let mut shards = 64;
    while shards > 1 && max_keys / shards < 64 {
        shards /= 2;
    }
    (shards, (max_keys / shards).max(1))
}

/// The shard index of `hash`, from bits the shard's table does not use for its own
/// bucket choice (low bits) or its control byte (top 7 bits).
pub(crate) fn shard_of(hash: u64, shards: usize) -> usize {
    ((hash >> 32) as usize) & (shards - 1)
}

pub(crate) struct Slot<S> {
    hash: u64,
    key: Box<[u8]>,
    state: S,
}

struct ShardState<S> {
    map: HashTable<Slot<S>>,
    /// No entry becomes idle before this time (a lower bound, from the last scan and the
    /// inserts since; states only move their idle time later).
    min_idle_at: u64,
    /// Keys evicted with debt (step 2 above).
    evicted: u64,
}

/// A shard on its own cache lines, so that two threads on two shards do not contend.
#[repr(align(128))]
struct Shard<S>(Mutex<ShardState<S>>);

pub(crate) struct Table<A: Algo> {
    pub(crate) algo: A,
    hasher: RandomState,
    shards: Box<[Shard<A::State>]>,
    cap: usize,
}

impl<A: Algo> Table<A> {
    pub(crate) fn new(algo: A, max_keys: usize) -> Self {
        let (n, cap) = layout(max_keys);
        let shards = (0..n)
            .map(|_| Shard(Mutex::new(ShardState { map: HashTable::new(), min_idle_at: 0, evicted: 0 })))
            .collect();
        Table { algo, hasher: RandomState::new(), shards, cap }
    }

    fn shard(&self, hash: u64) -> &Shard<A::State> {
        &self.shards[shard_of(hash, self.shards.len())]
    }

    pub(crate) fn check(&self, key: &[u8], now: u64, cost: u64) -> Decision {
        let hash = self.hasher.hash_one(key);
        let mut shard = self.shard(hash).0.lock();
        if let Some(slot) = shard.map.find_mut(hash, |s| s.hash == hash && *s.key == *key) {
            return self.algo.check(&mut slot.state, now, cost);
        }
        let mut state = self.algo.fresh();
        let decision = self.algo.check(&mut state, now, cost);
        let idle_at = self.algo.idle_at(&state);
        // A refused request, or one of cost 0, leaves a fresh state: nothing to remember,
        // so a flood of refused or zero-cost requests takes no memory.
        if idle_at > now {
            shard.make_room(&self.algo, now, self.cap);
            shard.min_idle_at = shard.min_idle_at.min(idle_at);
            shard.map.insert_unique(hash, Slot { hash, key: key.into(), state }, |s| s.hash);
        }
        decision
    }

    /// Drops every key whose state is back to a full budget at `now`.
    pub(crate) fn sweep(&self, now: u64) {
        for shard in self.shards.iter() {
            let mut shard = shard.0.lock();
            shard.drop_idle(&self.algo, now);
            // Give back the memory of a table that a burst of keys grew.
            let len = shard.map.len();
            if shard.map.capacity() > 4 * len.max(16) {
                shard.map.shrink_to(2 * len, |s| s.hash);
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.0.lock().map.len()).sum()
    }

    pub(crate) fn evicted(&self) -> u64 {
        self.shards.iter().map(|s| s.0.lock().evicted).sum()
    }
}

impl<S> ShardState<S> {
    /// Step 1 of the eviction policy: drops idle keys; recomputes `min_idle_at`.
    fn drop_idle<A: Algo<State = S>>(&mut self, algo: &A, now: u64) {
        let mut min = u64::MAX;
        self.map.retain(|s| {
            let t = algo.idle_at(&s.state);
            min = min.min(t);
            t > now
        });
        self.min_idle_at = min;
    }

    /// Makes room for one more key if the shard is full (see the module docs).
    fn make_room<A: Algo<State = S>>(&mut self, algo: &A, now: u64, cap: usize) {
        if self.map.len() < cap {
            return;
        }
        if now >= self.min_idle_at {
            self.drop_idle(algo, now);
            if self.map.len() < cap {
                return;
            }
        }
        // Step 2: evict exactly `k` keys among those with the earliest idle time.
        let k = (cap / 16).clamp(1, self.map.len());
        let mut times: Vec<u64> = self.map.iter().map(|s| algo.idle_at(&s.state)).collect();
        let (below, &mut threshold, _) = times.select_nth_unstable(k - 1);
        let mut ties = k - below.iter().filter(|&&t| t < threshold).count();
        let mut min = u64::MAX;
        self.map.retain(|s| {
            let t = algo.idle_at(&s.state);
            let evict = t < threshold || (t == threshold && ties > 0);
            if t == threshold && evict {
                ties -= 1;
            }
            if !evict {
                min = min.min(t);
            }
            !evict
        });
        self.evicted += k as u64;
        self.min_idle_at = min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratelimit_layout_bounds() {
        for max in [1, 2, 63, 64, 100, 1000, 4095, 4096, 10_000, 1_000_000] {
            let (n, cap) = layout(max);
            assert!(n.is_power_of_two() && n <= 64);
            assert!(n * cap <= max, "{max}: {n} x {cap}");
            assert!(cap >= 64 || n == 1, "{max}");
        }
        assert_eq!(layout(10_000), (64, 156));
        assert_eq!(layout(0), (1, 1));
    }
}
