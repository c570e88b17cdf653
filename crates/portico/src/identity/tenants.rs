//! Tenants: which tenant a request belongs to, and its settings (plan, rate limits,
//! feature flags), from the config or from Redis through a short-lived cache.
//!
//! Settings in Redis live in the hash `{p}tenant:{id}` (fields `plan`, `flags` as a comma
//! list, `rate_limit` as `LIMIT/PER`); they win over the config's. Each instance caches
//! what it read for `tenants.redis.cache_ttl`; a writer PUBLISHes the tenant ID on
//! `{p}tenants` and every instance drops its copy at once (a new subscription, after a
//! reconnect, drops them all). While Redis does not answer, the config's settings apply.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use portico_config::TenantSource;

use super::Identity;
use crate::store::redis::{RedisStore, Subscriber};

/// Most tenants cached from Redis; past it the cache starts afresh.
const CACHE_ENTRIES: usize = 10_000;

/// A tenant's settings, ready for request time.
#[derive(Debug, Default, PartialEq)]
pub struct TenantSettings {
    /// The tenant's plan.
    pub plan: Option<Arc<str>>,
    /// The tenant's own rate limits.
    pub rate_limit: Vec<portico_config::Limit>,
    /// Feature flags.
    pub flags: Box<[Box<str>]>,
}

impl TenantSettings {
    fn of(cfg: &portico_config::TenantSettings) -> Self {
        Self {
            plan: cfg.plan.as_deref().map(Into::into),
            rate_limit: cfg.rate_limit.clone(),
            flags: cfg.flags.iter().map(|f| f.as_str().into()).collect(),
        }
    }

    /// Whether the tenant has `flag`.
    pub fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| &**f == flag)
    }
}

/// The tenant of a request.
#[derive(Debug, Clone)]
pub struct Tenant {
    /// Its ID.
    pub id: Arc<str>,
    /// Its settings, when it has any.
    pub settings: Option<Arc<TenantSettings>>,
}

/// The compiled `tenants`.
#[derive(Debug, Default)]
pub struct Tenants {
    from: Box<[TenantSource]>,
    settings: HashMap<Box<str>, Arc<TenantSettings>>,
    redis: Option<(Arc<TenantStore>, Duration)>,
}

impl Tenants {
    /// Compiles the config's `tenants`; `store` is the Redis-backed settings, when
    /// `tenants.redis` is set and the gateway has Redis.
    pub fn compile(cfg: &portico_config::Tenants, store: Option<Arc<TenantStore>>) -> Self {
        let from: Box<[TenantSource]> = if cfg.from.is_empty() {
            [TenantSource::Token, TenantSource::Consumer].into()
        } else {
            cfg.from.clone().into()
        };
        Self {
            from,
            settings: cfg.settings.iter().map(|(k, v)| (k.as_str().into(), Arc::new(TenantSettings::of(v)))).collect(),
            redis: cfg.redis.as_ref().and_then(|r| Some((store?, r.cache_ttl.get()))),
        }
    }

    /// Whether a tenant may come from the host (a subdomain), without any caller.
    pub fn from_host(&self) -> bool {
        self.from.contains(&TenantSource::Subdomain)
    }

    /// The request's tenant ID, from the first source that names one, and whether it came
    /// from the host (which anyone can choose: such a tenant counts only when it has
    /// settings, see [`Tenants::settle`]).
    pub fn resolve(&self, identity: Option<&Identity>, host: &str) -> Option<(Arc<str>, bool)> {
        for s in &*self.from {
            let found: Option<(Arc<str>, bool)> = match s {
                TenantSource::Token => {
                    identity.and_then(|i| i.token.as_ref()).and_then(|t| t.tenant.as_deref()).map(|t| (t.into(), false))
                }
                TenantSource::Consumer => {
                    identity.and_then(|i| i.consumer.as_ref()).and_then(|c| c.tenant.clone()).map(|t| (t, false))
                }
                TenantSource::Subdomain => subdomain(host).map(|t| (t.into(), true)),
            };
            if found.is_some() {
                return found;
            }
        }
        None
    }

    /// The request's tenant with its settings. `needed`: whether the route uses settings
    /// (rate limits, flags); a tenant named by the host is checked to exist either way.
    pub async fn settle(&self, identity: Option<&Identity>, host: &str, needed: bool) -> Option<Tenant> {
        let (id, from_host) = self.resolve(identity, host)?;
        if !needed && !from_host {
            return Some(Tenant { id, settings: None });
        }
        let settings = self.settings(&id).await;
        if from_host && settings.is_none() {
            // An unknown subdomain names no tenant: it must not pick another's budget or
            // flags, nor mint fresh counters per random label.
            return None;
        }
        Some(Tenant { id, settings })
    }

    /// The tenant's settings: from Redis (cached) when configured, else from the config.
    pub async fn settings(&self, id: &str) -> Option<Arc<TenantSettings>> {
        if let Some((store, ttl)) = &self.redis
            && let Some(found) = store.get(id, *ttl).await
        {
            return found.or_else(|| self.settings.get(id).cloned());
        }
        self.settings.get(id).cloned()
    }
}

/// The tenant a host names: its first label, lower case, when the host has at least three
/// labels, is not an address, and the label is a DNS label (letters, digits, `-`, at most
/// 63).
fn subdomain(host: &str) -> Option<String> {
    if host.starts_with('[') || host.parse::<std::net::IpAddr>().is_ok() || host.split('.').count() < 3 {
        return None;
    }
    let label = host.split('.').next()?;
    let ok = !label.is_empty() && label.len() <= 63 && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    ok.then(|| label.to_ascii_lowercase())
}

type CacheMap = HashMap<Box<str>, (Option<Arc<TenantSettings>>, Instant)>;

/// After a failed read, Redis is not asked again for this long (the config's settings
/// apply), so a Redis that does not answer costs one timeout per period, not per request.
const ERROR_BACKOFF: Duration = Duration::from_secs(5);

/// Tenant settings read from Redis, cached, invalidated by published notices.
pub struct TenantStore {
    store: Arc<RedisStore>,
    cache: parking_lot::Mutex<CacheMap>,
    failing: AtomicBool,
    /// When the last read failed (for the backoff).
    failed_at: parking_lot::Mutex<Option<Instant>>,
    /// Bumped by every notice: an answer read while a notice arrived is not cached (it may
    /// predate the change).
    generation: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for TenantStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantStore").field("cached", &self.cache.lock().len()).finish()
    }
}

impl TenantStore {
    /// Starts the store and its subscription to `{p}tenants`.
    pub fn start(store: Arc<RedisStore>, metrics: &crate::observe::Metrics) -> Arc<Self> {
        let me = Arc::new(Self {
            store: store.clone(),
            cache: parking_lot::Mutex::new(HashMap::new()),
            failing: AtomicBool::new(false),
            failed_at: parking_lot::Mutex::new(None),
            generation: std::sync::atomic::AtomicU64::new(0),
        });
        let sub: Arc<dyn Subscriber> = me.clone();
        store.subscribe(format!("{}tenants", store.prefix()), &sub, metrics.redis_subscribed("tenants"));
        me
    }

    /// The settings Redis has for `id` (`Some(None)`: Redis has none), or `None` when
    /// Redis could not be asked.
    async fn get(&self, id: &str, ttl: Duration) -> Option<Option<Arc<TenantSettings>>> {
        if let Some((s, at)) = self.cache.lock().get(id)
            && at.elapsed() < ttl
        {
            return Some(s.clone());
        }
        if self.failed_at.lock().is_some_and(|at| at.elapsed() < ERROR_BACKOFF) {
            return None;
        }
        let key = format!("{}tenant:{id}", self.store.prefix());
        let asked = Instant::now();
        let generation = self.generation.load(Ordering::Acquire);
        match self.store.query::<HashMap<String, String>>(redis::cmd("HGETALL").arg(&key), self.store.timeout()).await {
            Ok(fields) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("tenant settings are read from redis again");
                }
                *self.failed_at.lock() = None;
                let settings = parse(&fields).map(Arc::new);
                if id.len() <= 256 {
                    let mut cache = self.cache.lock();
                    if cache.len() >= CACHE_ENTRIES {
                        cache.retain(|_, (_, at)| at.elapsed() < ttl);
                    }
                    // Full of live entries: serve without caching rather than evicting
                    // the tenants in use.
                    if cache.len() < CACHE_ENTRIES && self.generation.load(Ordering::Acquire) == generation {
                        cache.insert(id.into(), (settings.clone(), asked));
                    }
                }
                Some(settings)
            }
            Err(e) => {
                *self.failed_at.lock() = Some(Instant::now());
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "tenant settings cannot be read from redis; using the config's");
                }
                None
            }
        }
    }
}

/// Settings from a Redis hash; `None` when it is empty. Unparsable fields are ignored
/// (and logged), so one bad write does not take a tenant down.
fn parse(fields: &HashMap<String, String>) -> Option<TenantSettings> {
    if fields.is_empty() {
        return None;
    }
    let mut s = TenantSettings::default();
    if let Some(p) = fields.get("plan").filter(|p| !p.is_empty()) {
        s.plan = Some(p.as_str().into());
    }
    if let Some(f) = fields.get("flags") {
        s.flags = f.split(',').map(str::trim).filter(|f| !f.is_empty()).map(Into::into).collect();
    }
    if let Some(r) = fields.get("rate_limit") {
        // The config's own syntax and checks, as text (portico_config::parse_limits).
        match portico_config::parse_limits(r) {
            Ok(limits) => s.rate_limit = limits,
            Err(e) => tracing::warn!(value = %r, error = %e, "tenant rate_limit in redis ignored"),
        }
    }
    Some(s)
}

impl Subscriber for TenantStore {
    fn message(&self, payload: &[u8]) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        if let Ok(id) = std::str::from_utf8(payload) {
            self.cache.lock().remove(id.trim());
        }
    }

    fn resync(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.cache.lock().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_fields_parse_and_bad_ones_are_ignored() {
        let mut f = HashMap::new();
        assert!(parse(&f).is_none());
        f.insert("plan".to_owned(), "pro".to_owned());
        f.insert("flags".to_owned(), "beta, dark-mode,".to_owned());
        f.insert("rate_limit".to_owned(), "500/1m".to_owned());
        let s = parse(&f).unwrap();
        assert_eq!(s.plan.as_deref(), Some("pro"));
        assert!(s.has_flag("beta") && s.has_flag("dark-mode") && !s.has_flag(""));
        assert_eq!((s.rate_limit[0].limit, s.rate_limit[0].per.get()), (500, Duration::from_secs(60)));
        for bad in ["", "0/1m", "x/1m", "5/0s", "5", "5/forever", "5/1m burst=2 algorithm=fixed_window"] {
            f.insert("rate_limit".to_owned(), bad.to_owned());
            assert!(parse(&f).unwrap().rate_limit.is_empty(), "{bad}: ignored");
        }
        f.insert("rate_limit".to_owned(), "100/1m algorithm=gcra burst=20, 10000/1d".to_owned());
        let s = parse(&f).unwrap();
        assert_eq!(s.rate_limit.len(), 2);
        assert_eq!((s.rate_limit[0].algorithm, s.rate_limit[0].burst), (portico_config::LimitAlgorithm::Gcra, 20));
        assert_eq!((s.rate_limit[1].limit, s.rate_limit[1].per.get()), (10_000, Duration::from_secs(86_400)));
    }

    #[test]
    fn the_tenant_comes_from_the_first_source_that_names_one() {
        let cfg: portico_config::Tenants = serde_saphyr::from_str("{ from: [subdomain] }").unwrap();
        let t = Tenants::compile(&cfg, None);
        let id = |h: &str| t.resolve(None, h).map(|(id, from_host)| (id.to_string(), from_host));
        assert_eq!(id("acme.api.example.com"), Some(("acme".into(), true)));
        assert_eq!(id("ACME.api.example.com"), Some(("acme".into(), true)), "lower case");
        assert_eq!(id("example.com"), None);
        assert_eq!(id("[::1]"), None);
        assert_eq!(id("127.0.0.1"), None, "an address names no tenant");
        assert_eq!(id("a_b.api.example.com"), None, "not a DNS label");
        assert_eq!(id(&format!("{}.api.example.com", "a".repeat(64))), None);
    }
}
