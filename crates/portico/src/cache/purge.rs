//! Purges and inspection of the cache stores, for the admin API; with Redis, a purge
//! reaches every instance through pub/sub (`{prefix}cache:purge`).

use std::sync::{Arc, OnceLock, Weak};

use serde::Deserialize;

use super::{Cache, Entry};
use crate::compile::Snapshot;
use crate::store::redis::{RedisStore, Subscriber};

/// What a purge removes: entries whose key is this, whose host and path start with this,
/// or that carry this surrogate key; in one store, or in all.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Purge {
    /// An entry's whole key, as `GET /cache/entries` lists it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The start of the host and path (`api.example.com/products/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// A surrogate key the upstream gave the answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Only this store (a route's name, or `plugins` for the global cache).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    /// When it was made (ms since the epoch), set by the instance that publishes it: an
    /// entry in the shared tier stored before then is gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<u64>,
}

impl Purge {
    /// Reads a purge request: exactly one of `key`, `prefix`, `tag`, none empty.
    pub fn parse(body: &[u8]) -> Result<Self, String> {
        let p: Purge = serde_json::from_slice(body).map_err(|e| format!("invalid purge request: {e}"))?;
        let given = [&p.key, &p.prefix, &p.tag].iter().filter(|v| v.is_some()).count();
        if given != 1 {
            return Err("give exactly one of key, prefix and tag".into());
        }
        if [&p.key, &p.prefix, &p.tag, &p.store].iter().any(|v| v.as_deref() == Some("")) {
            return Err("an empty value would purge nothing or everything: give one".into());
        }
        Ok(p)
    }

    /// Whether it removes `e` (by prefix or tag: a key purge removes the key itself).
    fn covers(&self, store: &str, e: &Entry) -> bool {
        if self.store.as_deref().is_some_and(|s| s != store) || self.key.is_some() {
            return false;
        }
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(self.at.unwrap_or(0));
        e.received <= at && self.matches("", e)
    }

    fn matches(&self, key: &str, e: &Entry) -> bool {
        match (&self.key, &self.prefix, &self.tag) {
            (Some(k), ..) => k == key,
            (_, Some(p), _) => e.path.starts_with(p.as_str()),
            (.., Some(t)) => e.tags.iter().any(|x| **x == *t),
            _ => false,
        }
    }

    /// Removes what the purge covers from the shared tiers: a key's Redis value at once; for
    /// a prefix or a tag, the purge is kept in Redis (`{prefix}cache:purges`, a week), so
    /// every instance refuses the older entries it reads, resubscribed ones included.
    pub async fn apply_shared(&self, snap: &Snapshot, purges: &Purges) -> Result<(), crate::store::redis::StoreError> {
        let tiers: Vec<_> = stores(snap)
            .into_iter()
            .filter(|(name, _)| self.store.as_deref().is_none_or(|s| s == &**name))
            .filter_map(|(_, c)| c.tier().cloned())
            .collect();
        if let Some(key) = &self.key {
            for t in &tiers {
                t.delete(key).await?;
            }
            return Ok(());
        }
        purges.remember(self).await
    }

    /// Applies the purge to this instance's stores; how many keys it removed.
    pub fn apply(&self, snap: &Snapshot) -> usize {
        stores(snap)
            .into_iter()
            .filter(|(name, _)| self.store.as_deref().is_none_or(|s| s == &**name))
            .map(|(_, c)| c.store.purge(|k, e| self.matches(k, e)))
            .sum()
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The distinct cache stores of a snapshot, by name.
pub fn stores(snap: &Snapshot) -> Vec<(Arc<str>, Arc<Cache>)> {
    let mut out: Vec<(Arc<str>, Arc<Cache>)> = Vec::new();
    for r in &snap.routes {
        if let Some(c) = r.plugins.cache()
            && !out.iter().any(|(_, o)| Arc::ptr_eq(o, c.cache()))
        {
            let name = match &snap.global_cache {
                Some(g) if Arc::ptr_eq(g, c.cache()) => Arc::from("plugins"),
                _ => r.name.clone(),
            };
            out.push((name, c.cache().clone()));
        }
    }
    out
}

/// The stores' sizes, and the entries of one store (up to `limit`, those whose host and
/// path start with `prefix`), as JSON for the admin API.
pub fn inspect(snap: &Snapshot, store: Option<&str>, prefix: Option<&str>, limit: usize) -> serde_json::Value {
    let now = std::time::SystemTime::now();
    let list: Vec<serde_json::Value> = stores(snap)
        .into_iter()
        .filter(|(name, _)| store.is_none_or(|s| s == &**name))
        .map(|(name, c)| {
            c.store.sync();
            let mut v = serde_json::json!({
                "store": &*name,
                "entries": c.store.entry_count(),
                "bytes": c.store.weighted_size(),
                "max_bytes": c.settings.max_size.get(),
            });
            if store.is_some() {
                let entries: Vec<serde_json::Value> = c
                    .store
                    .list(limit, |e| prefix.is_none_or(|p| e.path.starts_with(p)))
                    .into_iter()
                    .map(|(key, e)| {
                        serde_json::json!({
                            "key": &*key,
                            "path": &*e.path,
                            "status": e.status.as_u16(),
                            "bytes": e.body.len(),
                            "age": e.age(now).as_secs(),
                            "ttl": super::ttl_of(&e, now),
                            "tags": e.tags.iter().map(|t| &**t).collect::<Vec<_>>(),
                            "vary": e.vary.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
                        })
                    })
                    .collect();
                v["list"] = entries.into();
            }
            v
        })
        .collect();
    serde_json::json!({ "stores": list })
}

/// The purge channel's subscriber: applies every instance's purges to this one's stores.
pub struct Purges {
    store: Arc<RedisStore>,
    channel: String,
    /// The prefix and tag purges of the last week, for entries read from the shared tier.
    recent: parking_lot::RwLock<Vec<Purge>>,
    shared: OnceLock<Weak<crate::Shared>>,
    /// Itself, for the tasks it starts.
    me: OnceLock<Weak<Purges>>,
    /// Set once the first subscription is made: a later one may have missed purges.
    subscribed: std::sync::atomic::AtomicBool,
    /// The purges kept in Redis have been read since the last (re)subscription: until
    /// then, entries read from the shared tier cannot be checked against them.
    ready: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Purges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Purges").field("channel", &self.channel).finish_non_exhaustive()
    }
}

impl Purges {
    /// Subscribes to the purge channel of `store`. [`Purges::attach`] gives it the stores.
    pub fn start(store: Arc<RedisStore>, metrics: &crate::observe::Metrics) -> Arc<Self> {
        let channel = format!("{}cache:purge", store.prefix());
        let me = Arc::new(Self {
            store: store.clone(),
            channel: channel.clone(),
            recent: parking_lot::RwLock::new(Vec::new()),
            shared: OnceLock::new(),
            me: OnceLock::new(),
            subscribed: std::sync::atomic::AtomicBool::new(false),
            ready: std::sync::atomic::AtomicBool::new(false),
        });
        let _ = me.me.set(Arc::downgrade(&me));
        let sub: Arc<dyn Subscriber> = me.clone();
        store.subscribe(channel, &sub, metrics.redis_subscribed("cache_purge"));
        me
    }

    /// Gives the subscriber the process's state, whose current stores it purges.
    pub fn attach(&self, shared: Weak<crate::Shared>) {
        let _ = self.shared.set(shared);
    }

    /// How long prefix and tag purges are kept: past any entry's life.
    const KEPT: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

    /// The most recent purges kept in memory.
    const MAX_KEPT: usize = 10_000;

    fn zset(&self) -> String {
        format!("{}cache:purges", self.store.prefix())
    }

    /// Whether a prefix or tag purge since it was stored removed `e` (of store `store`).
    pub fn purged(&self, store: &str, e: &Entry) -> bool {
        self.recent.read().iter().any(|p| p.covers(store, e))
    }

    fn note(&self, p: Purge) {
        if p.key.is_some() {
            return;
        }
        let mut recent = self.recent.write();
        let horizon = now_ms().saturating_sub(Self::KEPT.as_millis() as u64);
        recent.retain(|q| q.at.unwrap_or(0) >= horizon && *q != p);
        recent.push(p);
        let over = recent.len().saturating_sub(Self::MAX_KEPT);
        recent.drain(..over);
    }

    /// Keeps a prefix or tag purge in Redis for a week.
    async fn remember(&self, p: &Purge) -> Result<(), crate::store::redis::StoreError> {
        let at = p.at.unwrap_or_else(now_ms);
        let horizon = at.saturating_sub(Self::KEPT.as_millis() as u64);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("ZADD")
            .arg(self.zset())
            .arg(at)
            .arg(serde_json::to_string(p).unwrap_or_default())
            .ignore()
            .cmd("ZREMRANGEBYSCORE")
            .arg(self.zset())
            .arg("-inf")
            .arg(format!("({horizon}"))
            .ignore();
        self.store.exec(&pipe, self.store.timeout()).await
    }

    /// Whether entries read from the shared tier can be checked against the purges.
    pub fn ready(&self) -> bool {
        self.ready.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Reads the purges kept in Redis (after a (re)subscription), trying again until it
    /// can; then the shared tier is read again.
    async fn reload(&self) {
        let horizon = now_ms().saturating_sub(Self::KEPT.as_millis() as u64);
        let cmd = redis::cmd("ZRANGEBYSCORE").arg(self.zset()).arg(horizon).arg("+inf").clone();
        let mut wait = std::time::Duration::from_millis(100);
        loop {
            match self.store.query::<Vec<Vec<u8>>>(&cmd, self.store.timeout()).await {
                Ok(list) => {
                    let n = list.len();
                    for p in list.iter().filter_map(|v| Purge::parse(v).ok()) {
                        self.note(p);
                    }
                    self.ready.store(true, std::sync::atomic::Ordering::SeqCst);
                    tracing::info!(purges = n, "cache purges kept in redis read; the shared tier is in use");
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cache purges kept in redis could not be read; the shared tier waits for them");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(std::time::Duration::from_secs(5));
                }
            }
        }
    }

    /// Publishes a purge for every instance (this one included, through the channel).
    pub async fn publish(&self, p: &Purge) -> Result<(), crate::store::redis::StoreError> {
        let payload = serde_json::to_string(p).unwrap_or_default();
        let cmd = redis::cmd("PUBLISH").arg(&self.channel).arg(payload).clone();
        self.store.query::<i64>(&cmd, self.store.timeout()).await.map(|_| ())
    }
}

impl Subscriber for Purges {
    fn message(&self, payload: &[u8]) {
        let Some(shared) = self.shared.get().and_then(Weak::upgrade) else { return };
        match Purge::parse(payload) {
            Ok(p) => {
                self.note(p.clone());
                let n = p.apply(&shared.snapshot.load());
                tracing::info!(purge = ?p, removed = n, "cache purge applied");
            }
            Err(e) => tracing::warn!(error = %e, "cache purge message ignored"),
        }
    }

    /// Purges published while there was no subscription are lost: every store is emptied
    /// rather than kept with entries that should be gone.
    fn resync(&self) {
        let first = !self.subscribed.swap(true, std::sync::atomic::Ordering::SeqCst);
        self.ready.store(false, std::sync::atomic::Ordering::SeqCst);
        if let Some(me) = self.me.get().and_then(Weak::upgrade) {
            tokio::spawn(async move { me.reload().await });
        }
        if first {
            return;
        }
        let Some(shared) = self.shared.get().and_then(Weak::upgrade) else { return };
        let mut n = 0;
        for (_, c) in stores(&shared.snapshot.load()) {
            n += c.store.purge(|_, _| true);
        }
        tracing::warn!(removed = n, "cache purge channel resubscribed: purges may have been missed, stores emptied");
    }
}
