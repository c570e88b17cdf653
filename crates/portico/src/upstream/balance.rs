//! Load-balancing algorithms. Each picks among *available* targets and never takes a
//! lock: round robin is a precomputed schedule and an atomic counter, the two-choice
//! algorithms read per-target atomics, and the hash ring is built once per config load.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::HeaderMap;
use portico_config::{Balance, HashOn};

use std::sync::Arc;

use super::{LazyMs, Target, TargetSet};

/// What a request offers to the balancer.
#[derive(Debug, Clone, Copy)]
pub struct PickKey<'a> {
    /// Request headers (for `hash_on: header` and `cookie`).
    pub headers: &'a HeaderMap,
    /// The fields the gateway adds, when they are known (`hash_on: header` reads the
    /// request as it is sent).
    pub added: Option<&'a crate::forwarded::Added<'a>>,
    /// The client's IP.
    pub client_ip: IpAddr,
    /// The request path.
    pub path: &'a str,
}

/// Points on the hash ring per unit of weight: enough for an even spread (about ±10% at
/// 10 targets) while a lookup stays a binary search over a few thousand points.
const VNODES_PER_WEIGHT: u32 = 160;

/// Time constant of the peak-EWMA latency estimate.
const EWMA_DECAY: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub(super) enum Balancer {
    RoundRobin { schedule: Vec<u32>, next: AtomicUsize },
    LeastRequest,
    PeakEwma,
    ConsistentHash { ring: Vec<(u64, u32)>, on: HashOn },
    Random { cumulative: Vec<u64> },
}

impl Balancer {
    pub(super) fn new(def: &portico_config::Upstream, targets: &[Arc<Target>]) -> Self {
        let weights: Vec<u32> = targets.iter().map(|t| t.weight).collect();
        match def.balance {
            Balance::RoundRobin => {
                Balancer::RoundRobin { schedule: smooth_wrr_schedule(&weights), next: AtomicUsize::new(0) }
            }
            Balance::LeastRequest => Balancer::LeastRequest,
            Balance::PeakEwma => Balancer::PeakEwma,
            Balance::ConsistentHash => Balancer::ConsistentHash {
                ring: hash_ring(targets.iter().map(|t| (t.authority.as_str(), t.weight))),
                on: def.hash_on.clone().unwrap_or(HashOn::ClientIp),
            },
            Balance::Random => Balancer::Random {
                cumulative: weights
                    .iter()
                    .scan(0u64, |acc, w| {
                        *acc += u64::from(*w);
                        Some(*acc)
                    })
                    .collect(),
            },
        }
    }

    pub(super) fn pick(
        &self,
        set: &TargetSet,
        key: &PickKey<'_>,
        now: &LazyMs,
        exclude: Option<usize>,
    ) -> Option<usize> {
        let n = set.targets.len();
        // A target is usable when available and not the one to avoid; if only the avoided
        // one is available, it is still better than nothing.
        let usable = |i: usize| Some(i) != exclude && set.targets[i].available(now);
        let picked = match self {
            Balancer::RoundRobin { schedule, next } => {
                let start = next.fetch_add(1, Ordering::Relaxed);
                (0..schedule.len()).map(|k| schedule[(start + k) % schedule.len()] as usize).find(|&i| usable(i))
            }
            Balancer::LeastRequest | Balancer::PeakEwma => {
                let ewma = matches!(self, Balancer::PeakEwma);
                let cost = |i: usize| {
                    let t = &set.targets[i];
                    let inflight = f64::from(t.in_flight.load(Ordering::Relaxed)) + 1.0;
                    let c = if ewma { (t.ewma_ns.load(Ordering::Relaxed) as f64 + 1.0) * inflight } else { inflight };
                    c / f64::from(t.weight.max(1))
                };
                // Two distinct draws, so with two targets both are always compared.
                let a = random_usable(n, &usable);
                let b = a.and_then(|a| random_usable(n, &|i| i != a && usable(i)));
                match (a, b) {
                    (Some(a), Some(b)) => Some(if cost(b) < cost(a) { b } else { a }),
                    (a, b) => a.or(b),
                }
            }
            Balancer::ConsistentHash { ring, on } => {
                let h = match request_key(on, key) {
                    Some(bytes) => fnv1a(bytes.as_bytes()),
                    None => fastrand::u64(..),
                };
                ring_lookup(ring, h, usable)
            }
            Balancer::Random { cumulative } => {
                let total = cumulative.last().copied().unwrap_or(0);
                let start = if total == 0 { 0 } else { cumulative.partition_point(|&c| c <= fastrand::u64(..total)) };
                (0..n).map(|k| (start + k) % n).find(|&i| usable(i))
            }
        };
        picked.or_else(|| exclude.filter(|&i| set.targets[i].available(now)))
    }
}

/// A random usable index: a few random draws, then a scan from a random start.
fn random_usable(n: usize, usable: &impl Fn(usize) -> bool) -> Option<usize> {
    if n == 0 {
        return None;
    }
    for _ in 0..3 {
        let i = fastrand::usize(..n);
        if usable(i) {
            return Some(i);
        }
    }
    let start = fastrand::usize(..n);
    (0..n).map(|k| (start + k) % n).find(|&i| usable(i))
}

/// The key `hash_on` names, from the request.
pub(crate) fn request_key<'a>(on: &HashOn, key: &PickKey<'a>) -> Option<std::borrow::Cow<'a, str>> {
    match on {
        HashOn::Header(name) => match key.added {
            Some(added) => added.get(key.headers, name),
            None => key.headers.get(name.as_str()),
        }
        .and_then(|v| v.to_str().ok())
        .map(Into::into),
        HashOn::Cookie(name) => key
            .headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|kv| {
                let (k, v) = kv.trim().split_once('=')?;
                (k == name).then_some(v)
            })
            .map(Into::into),
        HashOn::ClientIp => Some(key.client_ip.to_string().into()),
        HashOn::Path => Some(key.path.into()),
    }
}

/// Builds a hash ring: `VNODES_PER_WEIGHT * weight` points per target, placed by hashing
/// `authority#n`, so a target's points do not depend on the other targets and removing
/// one target moves only the keys that were on it.
pub fn hash_ring<'a>(targets: impl Iterator<Item = (&'a str, u32)>) -> Vec<(u64, u32)> {
    let mut ring = Vec::new();
    for (i, (authority, weight)) in targets.enumerate() {
        for v in 0..VNODES_PER_WEIGHT * weight {
            ring.push((fnv1a(format!("{authority}#{v}").as_bytes()), i as u32));
        }
    }
    ring.sort_unstable();
    ring
}

/// The first usable target at or after `h` on the ring, wrapping around.
fn ring_lookup(ring: &[(u64, u32)], h: u64, usable: impl Fn(usize) -> bool) -> Option<usize> {
    if ring.is_empty() {
        return None;
    }
    let start = ring.partition_point(|(p, _)| *p < h);
    (0..ring.len()).map(|k| ring[(start + k) % ring.len()].1 as usize).find(|&i| usable(i))
}

/// 64-bit FNV-1a with a final avalanche: a stable hash, so every instance maps a key to
/// the same target (std's hashers are not promised to be stable across releases).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // splitmix64 finalizer: FNV alone clusters similar short keys on the ring.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Folds a latency sample into the target's peak-EWMA estimate: a slower sample takes
/// effect at once (the peak), faster ones pull the estimate down with a 10 s decay.
pub(super) fn update_ewma(t: &Target, latency: Duration, now_ms: u64) {
    let sample = latency.as_nanos().min(u128::from(u64::MAX)) as u64;
    let prev = t.ewma_ns.load(Ordering::Relaxed);
    let last = t.ewma_at_ms.swap(now_ms, Ordering::Relaxed);
    let next = if sample >= prev || prev == 0 {
        sample
    } else {
        let dt = now_ms.saturating_sub(last) as f64;
        let w = (-dt / EWMA_DECAY.as_millis() as f64).exp();
        (prev as f64 * w + sample as f64 * (1.0 - w)) as u64
    };
    t.ewma_ns.store(next, Ordering::Relaxed);
}

/// The smooth weighted round-robin sequence (the nginx algorithm), computed once.
///
/// Each step adds every target's weight to its current value, picks the largest, and
/// subtracts the total from it. The sequence repeats with period `sum(weights) / gcd`, so
/// it is precomputed and a pick is one atomic increment: no lock on the request path.
pub fn smooth_wrr_schedule(weights: &[u32]) -> Vec<u32> {
    if weights.is_empty() {
        return Vec::new();
    }
    let g = weights.iter().copied().fold(0, gcd).max(1);
    let w: Vec<i64> = weights.iter().map(|&x| i64::from(x / g)).collect();
    let total: i64 = w.iter().sum();
    let mut current = vec![0i64; w.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..w.len() {
            current[i] += w[i];
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        out.push(best as u32);
    }
    out
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smooth_wrr_interleaves_and_respects_weights() {
        // nginx's documented example: weights 5, 1, 1 -> a a b a c a a
        assert_eq!(smooth_wrr_schedule(&[5, 1, 1]), [0, 0, 1, 0, 2, 0, 0]);
        let s = smooth_wrr_schedule(&[300, 200, 100]);
        assert_eq!(s.len(), 6, "reduced by the gcd");
        let count = |t| s.iter().filter(|&&x| x == t).count();
        assert_eq!((count(0), count(1), count(2)), (3, 2, 1));
        assert_eq!(smooth_wrr_schedule(&[1]), [0]);
        assert!(smooth_wrr_schedule(&[]).is_empty());
    }

    fn owner(ring: &[(u64, u32)], key: &str, names: &[String]) -> String {
        names[ring_lookup(ring, fnv1a(key.as_bytes()), |_| true).unwrap()].clone()
    }

    #[test]
    fn removing_one_of_n_targets_moves_only_its_keys() {
        let names: Vec<String> = (0..10).map(|i| format!("10.0.0.{i}:8080")).collect();
        let ring = hash_ring(names.iter().map(|n| (n.as_str(), 1)));
        let fewer: Vec<String> = names.iter().filter(|n| *n != "10.0.0.3:8080").cloned().collect();
        let ring2 = hash_ring(fewer.iter().map(|n| (n.as_str(), 1)));
        let keys: Vec<String> = (0..20_000).map(|k| format!("user-{k}")).collect();
        let mut moved = 0;
        let mut on_removed = 0;
        let mut per_target = std::collections::HashMap::new();
        for k in &keys {
            let before = owner(&ring, k, &names);
            let after = owner(&ring2, k, &fewer);
            *per_target.entry(before.clone()).or_insert(0) += 1;
            if before == "10.0.0.3:8080" {
                on_removed += 1;
            }
            if before != after {
                moved += 1;
                assert_eq!(before, "10.0.0.3:8080", "only keys of the removed target move");
            }
        }
        assert_eq!(moved, on_removed);
        let share = moved as f64 / keys.len() as f64;
        assert!((0.07..0.13).contains(&share), "moved {share:.3} of keys, expected about 1/10");
        // And the spread is even: every target within ±20% of its fair share.
        for (t, n) in per_target {
            assert!((1600..=2400).contains(&n), "{t} got {n} of 20000");
        }
    }

    #[test]
    fn ring_lookup_skips_unusable_targets() {
        let names: Vec<String> = (0..3).map(|i| format!("t{i}")).collect();
        let ring = hash_ring(names.iter().map(|n| (n.as_str(), 1)));
        for k in 0..100 {
            let i = ring_lookup(&ring, fnv1a(format!("k{k}").as_bytes()), |i| i != 1).unwrap();
            assert_ne!(i, 1);
        }
        assert_eq!(ring_lookup(&ring, 42, |_| false), None);
    }
}
