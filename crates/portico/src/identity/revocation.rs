//! JWT revocation: a deny-list of token IDs (`jti`) and subjects shared by every instance
//! through Redis, with an in-process cache.
//!
//! Keys (`{p}` is `redis.key_prefix`):
//! - `{p}revoked:jti:{jti}`: any value; the token with this `jti` is revoked. Written with
//!   an expiry of the token's remaining lifetime.
//! - `{p}revoked:sub:{sub}`: a Unix time; every token of this subject issued (`iat`) at or
//!   before it is revoked ("log out everywhere", account suspension). A token without
//!   `iat` cannot show it is newer and is revoked too; so is every token of the subject
//!   when the value is not a number.
//!
//! A check is one round trip: `MGET` of the keys whose answer is not cached (a token
//! without `jti` is checked by subject only). Answers are cached per key for the provider's
//! `cache_ttl`. Writers `PUBLISH` `jti:{jti}` or `sub:{sub}` on `{p}revocations`; every
//! instance subscribes and drops the cached answer at once. A lost notice is bounded by
//! `cache_ttl`; a new subscription (after a reconnect) drops the whole cache.
//!
//! The default path (token not revoked, answer cached) takes two shard locks for one hash
//! lookup each and allocates nothing.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use portico_config::RevocationOnError;
use prometheus_client::metrics::counter::Counter;

use crate::error::{Challenge, ErrorKind, GatewayError};
use crate::store::redis::{RedisStore, StoreError, Subscriber};

/// Most cached answers per kind (token IDs, subjects).
pub const CACHE_ENTRIES: usize = 100_000;

/// Keys longer than this are looked up every time rather than cached, so the cache's
/// memory stays bounded (about 100k × 256 bytes per kind at worst).
const MAX_CACHED_KEY: usize = 256;

const SHARDS: usize = 32;

/// Expiry of a subject revocation written through the admin API when none is given: 30
/// days, longer than any access token should live.
pub const DEFAULT_SUB_TTL: Duration = Duration::from_secs(30 * 86_400);

/// Longest expiry the admin API writes (10 years).
const MAX_TTL_SECS: u64 = 315_360_000;

/// One lock's worth of the cache: key → (answer, when it was fetched).
type Shard<V> = Mutex<HashMap<Box<str>, (V, Instant)>>;

/// A bounded map with a time to live, split in shards so that no lock is global.
///
/// Hand-written rather than `moka`: the entries all expire after one short TTL and need
/// only get, insert, remove and clear; moka's admission policy and timer wheel would add
/// crossbeam, uuid and tagptr to the build for none of it. A shard that fills up first
/// drops its expired entries, and if none is expired it is cleared: the cost of a clear is
/// a round of Redis lookups for the keys it held, and a full shard means the cache is too
/// small for the traffic anyway (see `gateway_revocation_cache_clears_total`).
struct Cache<V> {
    shards: Box<[Shard<V>]>,
    hasher: RandomState,
    per_shard: usize,
    /// Bumped by every invalidation: an answer fetched before it is not stored.
    generation: AtomicU64,
    /// Longest TTL any provider uses, in ms: older entries are dead for every reader.
    max_ttl_ms: AtomicU64,
    clears: Counter,
}

impl<V: Copy> Cache<V> {
    fn new(entries: usize, clears: Counter) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            per_shard: entries.div_ceil(SHARDS).max(1),
            generation: AtomicU64::new(0),
            max_ttl_ms: AtomicU64::new(0),
            clears,
        }
    }

    fn shard(&self, key: &str) -> &Shard<V> {
        let i = usize::try_from(self.hasher.hash_one(key) % SHARDS as u64).unwrap_or(0);
        &self.shards[i]
    }

    fn get(&self, key: &str, ttl: Duration, now: Instant) -> Option<V> {
        let shard = self.shard(key).lock().unwrap_or_else(|e| e.into_inner());
        let (v, at) = shard.get(key)?;
        (now.saturating_duration_since(*at) < ttl).then_some(*v)
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Stores an answer fetched when the generation was `seen`, unless something was
    /// invalidated since (the answer may predate the revocation).
    fn insert(&self, key: &str, value: V, fetched: Instant, seen: u64) {
        // No reader would use it: every provider has `cache_ttl: 0s`.
        if key.len() > MAX_CACHED_KEY || self.max_ttl_ms.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut shard = self.shard(key).lock().unwrap_or_else(|e| e.into_inner());
        // Checked under the shard lock: an invalidation bumps the generation before it
        // takes the lock, so either we see the bump or its removal comes after our insert.
        if self.generation() != seen {
            return;
        }
        if shard.len() >= self.per_shard && !shard.contains_key(key) {
            let max_ttl = Duration::from_millis(self.max_ttl_ms.load(Ordering::Relaxed));
            shard.retain(|_, (_, at)| fetched.saturating_duration_since(*at) < max_ttl);
            if shard.len() >= self.per_shard {
                shard.clear();
                self.clears.inc();
            }
        }
        shard.insert(key.into(), (value, fetched));
    }

    fn remove(&self, key: &str) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.shard(key).lock().unwrap_or_else(|e| e.into_inner()).remove(key);
    }

    fn clear(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        for s in &*self.shards {
            s.lock().unwrap_or_else(|e| e.into_inner()).clear();
        }
    }
}

/// The deny-list service of a gateway: the Redis handle, the key names and the cache.
/// One per process; every provider with `revocation` shares it.
pub struct Revocations {
    store: Arc<RedisStore>,
    channel: String,
    jti_prefix: String,
    sub_prefix: String,
    /// Whether `jti` is revoked.
    jti: Cache<bool>,
    /// The subject's cut-off (`f64::INFINITY`: every token), if any.
    sub: Cache<Option<f64>>,
    /// Set while checks fail, so an outage is logged once, not per request.
    failing: AtomicBool,
}

impl std::fmt::Debug for Revocations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Revocations").field("channel", &self.channel).finish()
    }
}

/// Which token a revocation names.
#[derive(Debug, Clone, PartialEq)]
pub enum Revoke {
    /// One token, by `jti`, which expires at `exp` (Unix time).
    Token {
        /// The token's ID.
        jti: String,
        /// The token's expiry: the key lives until then (at least 1 s).
        exp: u64,
    },
    /// Every token of `sub` issued at or before `before` (Unix time).
    Subject {
        /// The subject (the provider's `subject_claim`).
        sub: String,
        /// The cut-off.
        before: u64,
        /// How long the key lives.
        ttl: Duration,
    },
}

impl Revocations {
    /// The service over `store`; subscribes to the revocation channel.
    pub fn start(store: Arc<RedisStore>, metrics: &crate::observe::Metrics) -> Arc<Self> {
        let p = store.prefix().to_owned();
        let me = Arc::new(Self {
            channel: format!("{p}revocations"),
            jti_prefix: format!("{p}revoked:jti:"),
            sub_prefix: format!("{p}revoked:sub:"),
            jti: Cache::new(CACHE_ENTRIES, metrics.revocation_cache_clears("jti")),
            sub: Cache::new(CACHE_ENTRIES, metrics.revocation_cache_clears("sub")),
            failing: AtomicBool::new(false),
            store,
        });
        let sub: Arc<dyn Subscriber> = me.clone();
        me.store.subscribe(me.channel.clone(), &sub, metrics.redis_subscribed("revocations"));
        me
    }

    /// A provider's check over this service.
    pub fn check_for(
        self: &Arc<Self>,
        provider: &str,
        def: &portico_config::Revocation,
        metrics: &crate::observe::Metrics,
    ) -> RevocationCheck {
        let ttl = def.cache_ttl.get();
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        self.jti.max_ttl_ms.fetch_max(ms, Ordering::Relaxed);
        self.sub.max_ttl_ms.fetch_max(ms, Ordering::Relaxed);
        RevocationCheck {
            service: self.clone(),
            ttl,
            timeout: def.timeout.map_or(self.store.timeout(), |t| t.get()),
            on_error: def.on_error,
            counters: metrics.revocation_checks(provider),
        }
    }

    /// Writes a revocation and publishes it (one round trip), and drops this instance's
    /// cached answer at once.
    pub async fn revoke(&self, what: &Revoke) -> Result<(), StoreError> {
        let now = unix_now();
        let mut pipe = redis::pipe();
        let notice = match what {
            Revoke::Token { jti, exp } => {
                let ttl = exp.saturating_sub(now).clamp(1, MAX_TTL_SECS);
                pipe.set_ex(format!("{}{jti}", self.jti_prefix), 1, ttl);
                format!("jti:{jti}")
            }
            Revoke::Subject { sub, before, ttl } => {
                let ttl = ttl.as_secs().clamp(1, MAX_TTL_SECS);
                pipe.set_ex(format!("{}{sub}", self.sub_prefix), *before, ttl);
                format!("sub:{sub}")
            }
        };
        pipe.publish(&self.channel, &notice);
        self.store.exec(&pipe, self.store.timeout().max(Duration::from_secs(1))).await?;
        self.message(notice.as_bytes());
        Ok(())
    }

    /// Looks up the keys whose answers are not cached, caches the answers, and tells
    /// whether the token is revoked.
    async fn lookup(
        &self,
        jti: Option<(&str, Option<bool>)>,
        sub: (&str, Option<Option<f64>>),
        timeout: Duration,
    ) -> Result<(bool, Option<f64>), StoreError> {
        let seen = (self.jti.generation(), self.sub.generation());
        let mut cmd = redis::cmd("MGET");
        if let Some((j, None)) = jti {
            cmd.arg(format!("{}{j}", self.jti_prefix));
        }
        if sub.1.is_none() {
            cmd.arg(format!("{}{}", self.sub_prefix, sub.0));
        }
        let values: Vec<Option<Vec<u8>>> = self.store.query(&cmd, timeout).await?;
        let fetched = Instant::now();
        let mut values = values.into_iter();
        let jti_revoked = match jti {
            Some((j, None)) => {
                let revoked = values.next().flatten().is_some();
                self.jti.insert(j, revoked, fetched, seen.0);
                revoked
            }
            Some((_, Some(r))) => r,
            None => false,
        };
        let cutoff = match sub.1 {
            Some(c) => c,
            None => {
                let c = values.next().flatten().map(|v| {
                    std::str::from_utf8(&v).ok().and_then(|s| s.trim().parse::<f64>().ok()).unwrap_or_else(|| {
                        tracing::warn!(subject = %sub.0, "revocation value is not a Unix time; every token of the subject is refused");
                        f64::INFINITY
                    })
                });
                self.sub.insert(sub.0, c, fetched, seen.1);
                c
            }
        };
        Ok((jti_revoked, cutoff))
    }
}

impl Subscriber for Revocations {
    fn message(&self, payload: &[u8]) {
        match std::str::from_utf8(payload).ok().and_then(|s| s.split_once(':')) {
            Some(("jti", j)) => self.jti.remove(j),
            Some(("sub", s)) => self.sub.remove(s),
            // Something we do not understand: forget everything rather than miss a revocation.
            _ => self.resync(),
        }
    }

    fn resync(&self) {
        self.jti.clear();
        self.sub.clear();
    }
}

/// The revocation check of one provider.
#[derive(Debug)]
pub struct RevocationCheck {
    service: Arc<Revocations>,
    ttl: Duration,
    timeout: Duration,
    on_error: RevocationOnError,
    /// `gateway_revocation_checks_total{provider,result,source}`.
    counters: RevocationCounters,
}

/// The counters of a provider's checks.
#[derive(Debug, Clone)]
pub struct RevocationCounters {
    /// Answered from Redis: not revoked.
    pub not_revoked: Counter,
    /// Answered from Redis: revoked.
    pub revoked: Counter,
    /// Answered from the cache: not revoked.
    pub cached_not_revoked: Counter,
    /// Answered from the cache: revoked.
    pub cached_revoked: Counter,
    /// Redis failed or was too slow.
    pub error: Counter,
}

fn revoked() -> GatewayError {
    GatewayError::new(ErrorKind::Unauthorized(Challenge::BearerInvalid, "token revoked"))
}

impl RevocationCheck {
    /// Checks a token that passed every other check: `Ok` when it may pass.
    pub async fn check(
        &self,
        provider: &str,
        jti: Option<&str>,
        sub: &str,
        iat: Option<u64>,
    ) -> Result<(), GatewayError> {
        let s = &self.service;
        let now = Instant::now();
        let jti = jti.map(|j| (j, s.jti.get(j, self.ttl, now)));
        let cached_sub = s.sub.get(sub, self.ttl, now);
        let is_revoked = |jti_revoked: bool, cutoff: Option<f64>| {
            jti_revoked || cutoff.is_some_and(|c| iat.is_none_or(|i| i as f64 <= c))
        };
        if let (None | Some((_, Some(_))), Some(cutoff)) = (jti, cached_sub) {
            let r = is_revoked(jti.and_then(|(_, r)| r).unwrap_or(false), cutoff);
            return if r {
                self.counters.cached_revoked.inc();
                Err(revoked())
            } else {
                self.counters.cached_not_revoked.inc();
                Ok(())
            };
        }
        match s.lookup(jti, (sub, cached_sub), self.timeout).await {
            Ok((jti_revoked, cutoff)) => {
                if s.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(provider, "revocation checks reach redis again");
                }
                if is_revoked(jti_revoked, cutoff) {
                    self.counters.revoked.inc();
                    Err(revoked())
                } else {
                    self.counters.not_revoked.inc();
                    Ok(())
                }
            }
            Err(e) => {
                self.counters.error.inc();
                let deny = self.on_error == RevocationOnError::Deny;
                if !s.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        provider,
                        error = %e,
                        on_error = if deny { "deny" } else { "allow" },
                        "revocation checks cannot reach redis; tokens not in the cache are {} until it answers",
                        if deny { "refused with 503" } else { "accepted unchecked" }
                    );
                }
                if deny { Err(GatewayError::new(ErrorKind::RevocationUnavailable)) } else { Ok(()) }
            }
        }
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Parses the body of `POST /revocations`:
/// `{"jti": "...", "exp": <unix>}` or `{"sub": "...", "before": <unix, default now>, "ttl": <seconds>}`.
pub fn parse_request(body: &[u8]) -> Result<Revoke, String> {
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let obj = v.as_object().ok_or("expected a JSON object")?;
    let text = |k: &str, max: usize| -> Result<Option<String>, String> {
        match obj.get(k) {
            None => Ok(None),
            Some(serde_json::Value::String(s))
                if !s.is_empty() && s.len() <= max && !s.chars().any(char::is_control) =>
            {
                Ok(Some(s.clone()))
            }
            Some(_) => Err(format!("{k} must be a string of 1 to {max} bytes without control characters")),
        }
    };
    let number = |k: &str| -> Result<Option<u64>, String> {
        match obj.get(k) {
            None => Ok(None),
            Some(n) => n.as_u64().map(Some).ok_or_else(|| format!("{k} must be a non-negative integer")),
        }
    };
    let allowed: &[&str] = if obj.contains_key("jti") { &["jti", "exp"] } else { &["sub", "before", "ttl"] };
    if let Some(k) = obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(format!("unexpected field {k:?}: give {{\"jti\", \"exp\"}} or {{\"sub\", \"before\", \"ttl\"}}"));
    }
    if let Some(jti) = text("jti", 1024)? {
        let exp = number("exp")?.ok_or("exp (the token's expiry, Unix time) is required with jti")?;
        return Ok(Revoke::Token { jti, exp });
    }
    let sub = text("sub", 256)?.ok_or("give jti or sub")?;
    let before = number("before")?.unwrap_or_else(unix_now);
    let ttl = match number("ttl")? {
        None => DEFAULT_SUB_TTL,
        Some(0) => return Err("ttl must be at least 1".into()),
        Some(t) if t > MAX_TTL_SECS => return Err(format!("ttl must be at most {MAX_TTL_SECS}")),
        Some(t) => Duration::from_secs(t),
    };
    Ok(Revoke::Subject { sub, before, ttl })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_answers_within_ttl_and_forgets_after() {
        let c: Cache<bool> = Cache::new(100, Counter::default());
        c.max_ttl_ms.store(1000, Ordering::Relaxed);
        let t0 = Instant::now();
        c.insert("a", true, t0, c.generation());
        assert_eq!(c.get("a", Duration::from_secs(1), t0), Some(true));
        assert_eq!(c.get("a", Duration::from_secs(1), t0 + Duration::from_millis(999)), Some(true));
        assert_eq!(c.get("a", Duration::from_secs(1), t0 + Duration::from_secs(1)), None);
        assert_eq!(c.get("a", Duration::ZERO, t0), None, "a zero TTL never answers from the cache");
        c.remove("a");
        assert_eq!(c.get("a", Duration::from_secs(1), t0), None);
    }

    #[test]
    fn an_answer_fetched_before_an_invalidation_is_not_stored() {
        let c: Cache<bool> = Cache::new(100, Counter::default());
        c.max_ttl_ms.store(1000, Ordering::Relaxed);
        let t0 = Instant::now();
        let seen = c.generation();
        c.insert("b", false, t0, seen);
        assert_eq!(c.get("b", Duration::from_secs(1), t0), Some(false));
        c.remove("other");
        c.insert("a", false, t0, seen);
        assert_eq!(c.get("a", Duration::from_secs(1), t0), None);
        let seen = c.generation();
        c.clear();
        c.insert("a", false, t0, seen);
        assert_eq!(c.get("a", Duration::from_secs(1), t0), None);
    }

    #[test]
    fn cache_stays_bounded() {
        let clears = Counter::default();
        let c: Cache<bool> = Cache::new(SHARDS * 4, clears.clone());
        c.max_ttl_ms.store(60_000, Ordering::Relaxed);
        let t0 = Instant::now();
        for i in 0..10_000 {
            c.insert(&format!("k{i}"), false, t0, c.generation());
        }
        let total: usize = c.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert!(total <= SHARDS * 4, "{total}");
        assert!(clears.get() > 0);
        // Expired entries go first: a full shard of old entries is pruned, not cleared.
        let c: Cache<bool> = Cache::new(SHARDS, Counter::default());
        c.max_ttl_ms.store(1000, Ordering::Relaxed);
        for i in 0..1000 {
            c.insert(&format!("k{i}"), false, t0, c.generation());
        }
        let later = t0 + Duration::from_secs(2);
        c.insert("fresh", true, later, c.generation());
        assert_eq!(c.get("fresh", Duration::from_secs(1), later), Some(true));
        // Keys too long to cache are not stored.
        let long = "x".repeat(MAX_CACHED_KEY + 1);
        c.insert(&long, true, later, c.generation());
        assert_eq!(c.get(&long, Duration::from_secs(1), later), None);
    }

    /// The cost of a check answered from the cache (`cargo test -p portico --release --lib
    /// cached_check_cost -- --ignored --nocapture`). No Redis is contacted: the answers are
    /// put in the cache first.
    #[tokio::test]
    #[ignore = "a measurement, not a test"]
    async fn cached_check_cost() {
        let cfg: portico_config::Redis = serde_saphyr::from_str("{ url: redis://127.0.0.1:1 }").unwrap();
        let metrics = crate::observe::Metrics::new();
        let service = Arc::new(Revocations {
            store: RedisStore::new(&cfg).unwrap(),
            channel: "c".into(),
            jti_prefix: "j".into(),
            sub_prefix: "s".into(),
            jti: Cache::new(CACHE_ENTRIES, Counter::default()),
            sub: Cache::new(CACHE_ENTRIES, Counter::default()),
            failing: AtomicBool::new(false),
        });
        let def =
            portico_config::Revocation { cache_ttl: portico_config::Duration::from_secs(60), ..Default::default() };
        let check = service.check_for("p", &def, &metrics);
        let now = Instant::now();
        for i in 0..50_000 {
            service.jti.insert(&format!("token-{i}"), false, now, service.jti.generation());
            service.sub.insert(&format!("user-{i}"), None, now, service.sub.generation());
        }
        let n = 1_000_000u32;
        let start = Instant::now();
        for i in 0..n {
            let k = i % 50_000;
            let (jti, sub) = (format!("token-{k}"), format!("user-{k}"));
            std::hint::black_box(check.check("p", Some(&jti), &sub, Some(1)).await).unwrap();
        }
        let with_keys = start.elapsed() / n;
        let (jti, sub) = ("token-7".to_owned(), "user-7".to_owned());
        let start = Instant::now();
        for _ in 0..n {
            std::hint::black_box(check.check("p", Some(&jti), &sub, Some(1)).await).unwrap();
        }
        let one = start.elapsed() / n;
        assert_eq!(check.counters.cached_not_revoked.get(), 2 * u64::from(n));
        eprintln!("cached check: {one:?} (one hot key), {with_keys:?} (50k keys, incl. formatting them)");
    }

    #[test]
    fn admin_requests_are_parsed_strictly() {
        assert_eq!(parse_request(br#"{"jti":"abc","exp":123}"#), Ok(Revoke::Token { jti: "abc".into(), exp: 123 }));
        assert_eq!(
            parse_request(br#"{"sub":"alice","before":100,"ttl":60}"#),
            Ok(Revoke::Subject { sub: "alice".into(), before: 100, ttl: Duration::from_secs(60) })
        );
        let Ok(Revoke::Subject { before, ttl, .. }) = parse_request(br#"{"sub":"alice"}"#) else { panic!() };
        assert!(before.abs_diff(unix_now()) <= 1);
        assert_eq!(ttl, DEFAULT_SUB_TTL);
        for bad in [
            &b"nope"[..],
            br#"[]"#,
            br#"{}"#,
            br#"{"jti":"abc"}"#,
            br#"{"jti":"","exp":1}"#,
            br#"{"jti":"a","exp":-1}"#,
            br#"{"jti":"a","exp":"soon"}"#,
            br#"{"jti":"a","exp":1,"sub":"b"}"#,
            br#"{"sub":"a","ttl":0}"#,
            br#"{"sub":"a\nb"}"#,
            br#"{"sub":7}"#,
            br#"{"user":"a"}"#,
        ] {
            assert!(parse_request(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
