//! The cache's in-memory store: entries by key (moka, bounded by bytes, each entry kept as
//! long as it may still answer), and the fetches in flight, by key, that concurrent misses
//! wait for.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;

use crate::error::GatewayError;

/// A stored response and what was worked out about it when it was stored.
#[derive(Debug)]
pub struct Entry {
    /// The response's status.
    pub status: StatusCode,
    /// The response's fields, without the hop-by-hop ones, with its `Content-Length`.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
    /// When the response was received (or last validated).
    pub received: SystemTime,
    /// Its age when received (RFC 9111 section 4.2.3).
    pub initial_age: Duration,
    /// How long it is fresh, counted from age 0.
    pub fresh_for: Duration,
    /// How long past its freshness it answers while being refreshed in the background.
    pub stale_while_revalidate: Duration,
    /// How long past its freshness it answers when the upstream fails.
    pub stale_if_error: Duration,
    /// Never answered stale (`must-revalidate`, `proxy-revalidate`, `no-cache`).
    pub revalidate: bool,
    /// Its `ETag`.
    pub etag: Option<HeaderValue>,
    /// Its `Last-Modified`.
    pub last_modified: Option<SystemTime>,
    /// The fields its `Vary` names, with the values the request that fetched it had.
    pub vary: Box<[(HeaderName, Option<HeaderValue>)]>,
    /// Its surrogate keys (purge by tag).
    pub tags: Box<[Box<str>]>,
    /// The request's host and path (purge by prefix).
    pub path: Box<str>,
}

impl Entry {
    /// Its age now.
    pub fn age(&self, now: SystemTime) -> Duration {
        self.initial_age + now.duration_since(self.received).unwrap_or_default()
    }

    /// How long it stays fresh from now; `None` once stale, with how long it has been.
    pub fn freshness(&self, now: SystemTime) -> Result<Duration, Duration> {
        let age = self.age(now);
        match self.fresh_for.checked_sub(age) {
            Some(left) if !left.is_zero() => Ok(left),
            _ => Err(age.saturating_sub(self.fresh_for)),
        }
    }

    /// Whether the request's fields match the ones the entry varies on.
    pub fn matches(&self, request: &HeaderMap) -> bool {
        self.vary.iter().all(|(name, stored)| joined(request, name).as_ref() == stored.as_ref())
    }

    /// The memory it takes, roughly: body, fields, and what is around them.
    pub fn weight(&self) -> u64 {
        let fields: usize = self.headers.iter().map(|(k, v)| k.as_str().len() + v.len() + 32).sum();
        (self.body.len() + fields + self.path.len() + 256) as u64
    }

    /// How long it may be of use from now: while it may answer fresh or stale, or be
    /// validated (an entry with a validator is kept a while longer for a cheap 304).
    fn keep(&self, now: SystemTime) -> Duration {
        let stale = self.stale_while_revalidate.max(self.stale_if_error);
        let validatable = if self.etag.is_some() || self.last_modified.is_some() {
            self.fresh_for.clamp(Duration::from_secs(10), Duration::from_secs(3600))
        } else {
            Duration::ZERO
        };
        (self.fresh_for + stale + validatable).saturating_sub(self.age(now))
    }
}

/// A request's values of a field, as one value (lines joined with `, `), to compare for
/// `Vary`.
pub fn joined(headers: &HeaderMap, name: &HeaderName) -> Option<HeaderValue> {
    let mut all = headers.get_all(name).iter();
    let first = all.next()?;
    let Some(second) = all.next() else { return Some(first.clone()) };
    let mut out = first.as_bytes().to_vec();
    for v in std::iter::once(second).chain(all) {
        out.extend_from_slice(b", ");
        out.extend_from_slice(v.as_bytes());
    }
    HeaderValue::from_bytes(&out).ok()
}

/// The variants stored under one key (one per set of `Vary` values), newest first.
#[derive(Debug)]
pub struct Slot {
    /// The entries.
    pub variants: Box<[Arc<Entry>]>,
    /// How long from its insertion the slot is kept.
    keep: Duration,
}

impl Slot {
    /// How long from its insertion the slot is kept.
    pub fn keep(&self) -> Duration {
        self.keep
    }
}

/// Variants kept per key: past this, the oldest is dropped.
const MAX_VARIANTS: usize = 8;

/// How a fetch that concurrent misses wait for ended.
#[derive(Clone, Debug)]
pub enum Flight {
    /// Still going.
    Pending,
    /// The answer was stored: look again.
    Stored,
    /// The answer is not for the cache (or too large, or a 5xx): each waiter goes to
    /// the upstream itself.
    NotStored,
    /// The fetch failed upstream: the waiters answer with the same error.
    Failed(GatewayError),
    /// The fetch was dropped (its client left): one of the waiters fetches again.
    Abandoned,
}

/// The right to fetch a key for everyone waiting on it. Dropped without an end, the
/// waiters are told [`Flight::Abandoned`].
#[derive(Debug)]
pub struct Leader {
    store: Arc<Store>,
    key: Arc<str>,
    tx: Arc<watch::Sender<Flight>>,
    done: bool,
}

impl Leader {
    /// Ends the fetch: the waiters learn how.
    pub fn finish(mut self, how: Flight) {
        self.end(how);
    }

    fn end(&mut self, how: Flight) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let mut flights = self.store.flights.lock();
        if flights.get(&self.key).is_some_and(|(f, _)| Arc::ptr_eq(f, &self.tx)) {
            flights.remove(&self.key);
        }
        drop(flights);
        self.tx.send_replace(how);
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        self.end(Flight::Abandoned);
    }
}

/// Counters and gauges of one store.
#[derive(Debug, Clone)]
pub struct StoreMetrics {
    /// `gateway_cache_bytes{store}`.
    pub bytes: Gauge,
    /// `gateway_cache_entries{store}`.
    pub entries: Gauge,
    /// `gateway_cache_evictions_total{store,reason="size"}`.
    pub evicted_size: Counter,
    /// `gateway_cache_evictions_total{store,reason="expired"}`.
    pub evicted_expired: Counter,
    /// `gateway_cache_evictions_total{store,reason="purged"}`.
    pub purged: Counter,
}

/// A fetch under way: what its waiters watch, and when it began.
type InFlight = (Arc<watch::Sender<Flight>>, std::time::Instant);

/// One cache's entries and fetches in flight.
pub struct Store {
    entries: moka::sync::Cache<Arc<str>, Arc<Slot>>,
    /// The fetches under way, with when each began.
    flights: Mutex<HashMap<Arc<str>, InFlight>>,
    metrics: StoreMetrics,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("entries", &self.entries.entry_count()).finish_non_exhaustive()
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // A store replaced by a reload with other settings: its entries leave the gauges
        // (expired ones through the listener first: the iterator does not see them).
        self.entries.run_pending_tasks();
        for (_, slot) in self.entries.iter() {
            let w: u64 = slot.variants.iter().map(|e| e.weight()).sum();
            self.metrics.bytes.dec_by(i64::try_from(w).unwrap_or(i64::MAX));
            self.metrics.entries.dec_by(slot.variants.len() as i64);
        }
    }
}

/// Each slot expires when its entries are of no more use.
struct KeepFor;

impl moka::Expiry<Arc<str>, Arc<Slot>> for KeepFor {
    fn expire_after_create(&self, _: &Arc<str>, slot: &Arc<Slot>, _: Instant) -> Option<Duration> {
        Some(slot.keep)
    }

    fn expire_after_update(&self, _: &Arc<str>, slot: &Arc<Slot>, _: Instant, _: Option<Duration>) -> Option<Duration> {
        Some(slot.keep)
    }
}

impl Store {
    /// A store of at most `max_bytes`.
    pub fn new(max_bytes: u64, metrics: StoreMetrics) -> Arc<Self> {
        let m = metrics.clone();
        let entries = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_: &Arc<str>, slot: &Arc<Slot>| {
                let w: u64 = slot.variants.iter().map(|e| e.weight()).sum();
                u32::try_from(w).unwrap_or(u32::MAX)
            })
            .expire_after(KeepFor)
            .eviction_listener(move |_key, slot: Arc<Slot>, cause| {
                let w: u64 = slot.variants.iter().map(|e| e.weight()).sum();
                m.bytes.dec_by(i64::try_from(w).unwrap_or(i64::MAX));
                m.entries.dec_by(slot.variants.len() as i64);
                match cause {
                    moka::notification::RemovalCause::Size => {
                        m.evicted_size.inc();
                    }
                    moka::notification::RemovalCause::Expired => {
                        m.evicted_expired.inc();
                    }
                    moka::notification::RemovalCause::Explicit => {
                        m.purged.inc();
                    }
                    moka::notification::RemovalCause::Replaced => {}
                }
            })
            .build();
        Arc::new(Self { entries, flights: Mutex::new(HashMap::new()), metrics })
    }

    /// The entries stored under `key`.
    pub fn get(&self, key: &str) -> Option<Arc<Slot>> {
        self.entries.get(key)
    }

    /// Stores `entry` under `key`, replacing the variant with the same `Vary` values; the
    /// key's entries as they now are.
    pub fn insert(&self, key: Arc<str>, entry: Arc<Entry>) -> Arc<Slot> {
        let mut variants = vec![entry.clone()];
        if let Some(old) = self.entries.get(&key) {
            let same = |e: &Entry| {
                e.vary.len() == entry.vary.len() && e.vary.iter().zip(entry.vary.iter()).all(|(a, b)| a == b)
            };
            variants
                .extend(old.variants.iter().filter(|e| !same(e) && !e.vary.is_empty()).take(MAX_VARIANTS - 1).cloned());
        }
        self.insert_all(key, variants)
    }

    /// Stores `variants` as the key's entries (from the shared tier).
    pub fn insert_all(&self, key: Arc<str>, mut variants: Vec<Arc<Entry>>) -> Arc<Slot> {
        let now = SystemTime::now();
        variants.truncate(MAX_VARIANTS);
        let keep = variants.iter().map(|e| e.keep(now)).max().unwrap_or_default();
        let w: u64 = variants.iter().map(|e| e.weight()).sum();
        self.metrics.bytes.inc_by(i64::try_from(w).unwrap_or(i64::MAX));
        self.metrics.entries.inc_by(variants.len() as i64);
        let slot = Arc::new(Slot { variants: variants.into(), keep });
        self.entries.insert(key, slot.clone());
        slot
    }

    /// Removes the entries under `key`; whether there were any.
    pub fn remove(&self, key: &str) -> bool {
        self.entries.remove(key).is_some()
    }

    /// Removes every key with an entry `f` picks (the key and the entry); how many.
    pub fn purge(&self, f: impl Fn(&str, &Entry) -> bool) -> usize {
        let keys: Vec<Arc<str>> = self
            .entries
            .iter()
            .filter(|(k, slot)| slot.variants.iter().any(|e| f(k, e)))
            .map(|(k, _)| (*k).clone())
            .collect();
        keys.iter().filter(|k| self.entries.remove(&***k).is_some()).count()
    }

    /// Up to `limit` entries that `f` picks, with their keys.
    pub fn list(&self, limit: usize, f: impl Fn(&Entry) -> bool) -> Vec<(Arc<str>, Arc<Entry>)> {
        self.entries
            .iter()
            .flat_map(|(k, slot)| {
                slot.variants.iter().filter(|e| f(e)).map(|e| ((*k).clone(), e.clone())).collect::<Vec<_>>()
            })
            .take(limit)
            .collect()
    }

    /// How many keys are stored.
    pub fn entry_count(&self) -> u64 {
        self.entries.entry_count()
    }

    /// How many bytes the entries weigh.
    pub fn weighted_size(&self) -> u64 {
        self.entries.weighted_size()
    }

    /// Settles pending evictions (for tests and the admin API's counts).
    pub fn sync(&self) {
        self.entries.run_pending_tasks();
    }

    /// Takes the lead of the fetch for `key`, or the fetch already under way to wait for.
    /// A fetch that has led for longer than `max_lead` (its client stopped reading, say) is
    /// taken over: its waiters have given up on it by then, and it no longer holds up
    /// everyone else.
    pub fn lead(self: &Arc<Self>, key: &Arc<str>, max_lead: Duration) -> Result<Leader, watch::Receiver<Flight>> {
        let mut flights = self.flights.lock();
        if let Some((tx, since)) = flights.get(key)
            && since.elapsed() < max_lead
        {
            return Err(tx.subscribe());
        }
        let tx = Arc::new(watch::channel(Flight::Pending).0);
        flights.insert(key.clone(), (tx.clone(), std::time::Instant::now()));
        Ok(Leader { store: self.clone(), key: key.clone(), tx, done: false })
    }

    /// Whether a fetch for `key` is under way.
    pub fn in_flight(&self, key: &str) -> bool {
        self.flights.lock().contains_key(key)
    }
}
