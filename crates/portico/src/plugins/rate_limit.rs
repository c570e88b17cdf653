//! The `rate_limit` plugin: one or more limits per key, all enforced, answered with 429,
//! `Retry-After` and the `RateLimit-*` headers; and the `concurrency_limit` plugin.
//!
//! Limits are checked shortest period first, and the first refusal stops the check, so a
//! request refused by `100/1m` is not charged to `10000/1d`. Counters live in the
//! [`crate::ratelimit`] limiters, one per limit (and per plan), shared by every route that
//! uses the same plugin instance: a global plugin counts across routes unless its key has
//! `route`. A reload keeps the counters of limits whose definition did not change.
//!
//! With `store: redis` every limit is decided by a [`RedisLimiter`] (one round trip each,
//! all instances counting together); when Redis fails or is too slow, by
//! `on_store_error`: pass, 503, or a local limiter allowing `limit / instances`. A failure
//! pauses the use of Redis for [`STORE_PAUSE`], so a hanging Redis costs one timeout per
//! pause rather than one per request. With `mode: batched`, a limit that can reserve
//! (`token_bucket`, `gcra`, `fixed_window`) is decided from this instance's
//! [`Leases`] instead: one reservation of `batch` units per round trip.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use portico_config::{ConfigError, KeyPart, LimitMode, LimitStore, OnStoreError, RateLimitHeaders};
use tokio::time::Instant;

use super::hooks::{AccessCtx, HookCtx, Hooks, Phases, Verdict};
use super::{Passed, Refusal, RequestView};
use crate::body::Body;
use crate::error::{ErrorKind, GatewayError};
use crate::identity::Identity;
use crate::observe::Metrics;
use crate::ratelimit::{Concurrency, ConcurrencyGuard, Decision, Leases, LocalLimiter, Policy, RedisLimiter};
use crate::store::redis::RedisStore;

/// Keys one limiter tracks at most.
const MAX_KEYS: usize = 100_000;

/// What the tightest limit said, for the response headers and the access log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateInfo {
    /// The limit's requests per period.
    pub limit: u64,
    /// Requests left.
    pub remaining: u64,
    /// Seconds until the budget is whole again (rounded up).
    pub reset_secs: u64,
    /// Which headers to send.
    pub headers: RateLimitHeaders,
}

impl RateInfo {
    fn of(d: &Decision, headers: RateLimitHeaders) -> Self {
        Self { limit: d.limit, remaining: d.remaining, reset_secs: ceil_secs(d.reset_after), headers }
    }

    /// Adds the rate-limit headers to `h`.
    pub fn write(&self, h: &mut HeaderMap) {
        static IETF: [HeaderName; 3] = [
            HeaderName::from_static("ratelimit-limit"),
            HeaderName::from_static("ratelimit-remaining"),
            HeaderName::from_static("ratelimit-reset"),
        ];
        static LEGACY: [HeaderName; 3] = [
            HeaderName::from_static("x-ratelimit-limit"),
            HeaderName::from_static("x-ratelimit-remaining"),
            HeaderName::from_static("x-ratelimit-reset"),
        ];
        let values = [self.limit, self.remaining, self.reset_secs].map(HeaderValue::from);
        let sets: &[&[HeaderName; 3]] = match self.headers {
            RateLimitHeaders::Ietf => &[&IETF],
            RateLimitHeaders::Legacy => &[&LEGACY],
            RateLimitHeaders::Both => &[&IETF, &LEGACY],
            RateLimitHeaders::None => &[],
        };
        for names in sets {
            for (name, value) in names.iter().zip(&values) {
                h.insert(name, value.clone());
            }
        }
    }
}

fn ceil_secs(d: Duration) -> u64 {
    let s = d.as_secs();
    if d.subsec_nanos() > 0 { s + 1 } else { s }
}

/// One compiled limit.
#[derive(Debug)]
struct Limit {
    def: portico_config::Limit,
    /// `store: local`: the limiter. `store: redis`: the fallback of `on_store_error:
    /// local`, sized `limit / instances`.
    limiter: Arc<LocalLimiter>,
    /// `store: redis`: the shared limiter.
    shared: Option<RedisLimiter>,
    /// `mode: batched` (and an algorithm that can reserve): this instance's leases.
    leases: Option<Leases>,
}

/// How long a batched lease may be spent: `min(per, LEASE_TTL)`.
const LEASE_TTL: Duration = Duration::from_secs(1);

/// A key part, compiled.
#[derive(Debug)]
enum Part {
    ClientIp,
    Consumer,
    ApiKey,
    Tenant,
    Route,
    Header(HeaderName),
    Claim(Box<str>),
}

/// After a failed Redis decision, decisions skip Redis for this long (and go as
/// `on_store_error` says at once): a Redis that hangs costs one timeout per pause, not one
/// per request. The first decision after the pause tries Redis again.
const STORE_PAUSE: Duration = Duration::from_millis(200);

/// A compiled `rate_limit` plugin.
#[derive(Debug)]
pub struct RateLimit {
    /// The config it was built from (a reload keeps the counters when it is unchanged).
    pub def: portico_config::RateLimit,
    limits: Box<[Limit]>,
    plans: HashMap<Box<str>, Box<[Limit]>>,
    key: Box<[Part]>,
    /// `store: redis`: the state of the store, shared by this plugin's limits.
    store: Option<StoreState>,
    /// `store: redis`: the shared Redis (tenant limits are compiled on first use).
    redis: Option<Arc<RedisStore>>,
    /// The plugin's place in Redis keys: the route, or `global`.
    scope: Box<str>,
    /// Limiters of tenants with limits of their own, built on first use (bounded).
    tenant_limits: parking_lot::Mutex<HashMap<Box<str>, Arc<[Limit]>>>,
}

/// How the Redis of a `store: redis` plugin is doing.
#[derive(Debug)]
struct StoreState {
    metrics: Arc<Metrics>,
    /// Set while decisions fail, so that an outage is logged once, not per request.
    failing: AtomicBool,
    /// Until when (ms since `epoch`) decisions skip Redis.
    paused_until: AtomicU64,
    epoch: Instant,
}

impl StoreState {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn paused(&self) -> bool {
        self.now_ms() < self.paused_until.load(Ordering::Relaxed)
    }

    fn failed(&self, route: &str, on_error: OnStoreError, why: &dyn std::fmt::Display) {
        self.metrics.rate_limit_store_error(route);
        let pause = u64::try_from(STORE_PAUSE.as_millis()).unwrap_or(u64::MAX);
        self.paused_until.store(self.now_ms().saturating_add(pause), Ordering::Relaxed);
        if !self.failing.swap(true, Ordering::Relaxed) {
            let what = match on_error {
                OnStoreError::Allow => "let through unlimited",
                OnStoreError::Deny => "refused with 503",
                OnStoreError::Local => "limited by this instance alone (limit / instances)",
            };
            tracing::warn!(
                route,
                error = %why,
                "rate limits cannot reach redis; requests are {what} until it answers"
            );
        }
    }

    fn succeeded(&self) {
        if self.failing.load(Ordering::Relaxed) && self.failing.swap(false, Ordering::Relaxed) {
            tracing::info!("rate limits reach redis again");
        }
    }
}

/// Most tenants with limits of their own tracked per plugin; past it the table starts
/// afresh (their counters restart).
const MAX_TENANTS: usize = 10_000;

/// Limiters of the previous config, by limit definition, to carry counters over.
pub type Carried = Vec<(portico_config::Limit, Arc<LocalLimiter>)>;

/// The limiters of `limits`, to carry over.
fn carry(limits: &[Limit]) -> Carried {
    limits.iter().map(|l| (l.def.clone(), l.limiter.clone())).collect()
}

fn policy(def: &portico_config::Limit) -> Policy {
    Policy::new(def.algorithm, def.limit, def.per.get()).with_burst(def.burst).with_max_delay(def.max_delay.get())
}

/// The limiter id of a `store: redis` limit: the same on every instance and across
/// reloads for the same limit of the same plugin, whatever the order of the list. `scope`
/// is the route (or `global`), `plan` the plan's name (or `-`), `nth` how many identical
/// limits come before this one in the list (identical limits count apart, as locally).
fn limiter_id(scope: &str, plan: &str, def: &portico_config::Limit, nth: usize) -> String {
    let p = policy(def);
    let canonical =
        format!("{}|{}|{}|{}|{}|{nth}", p.algorithm, p.limit, p.period.as_nanos(), p.burst, p.max_delay.as_nanos());
    format!("{scope}:{plan}:{:016x}", crate::upstream::balance::fnv1a(canonical.as_bytes()))
}

/// `mode: batched`: the units reserved at once.
fn batch(def: &portico_config::RateLimit) -> Option<u64> {
    (def.mode == LimitMode::Batched).then(|| u64::from(def.batch.max(1)))
}

/// Where and how a plugin's limits are counted.
struct Store<'a> {
    /// The shared Redis, for `store: redis` (`None`: counted locally).
    redis: Option<&'a Arc<RedisStore>>,
    /// `instances` (the fallback allows `limit / instances`).
    instances: u64,
    /// The route, or `global`.
    scope: &'a str,
    /// `mode: batched`: the units reserved at once.
    batch: Option<u64>,
}

fn compile_limits(
    path: &str,
    plan: &str,
    defs: &[portico_config::Limit],
    carried: &mut Carried,
    store: &Store<'_>,
) -> Result<Box<[Limit]>, ConfigError> {
    let mut out = Vec::with_capacity(defs.len());
    for (i, def) in defs.iter().enumerate() {
        let full = policy(def);
        let local = match store.redis {
            None => full,
            // The fallback: this instance's share.
            Some(_) => {
                Policy { limit: (full.limit / store.instances).max(1), burst: full.burst / store.instances, ..full }
            }
        };
        let err = |e: crate::ratelimit::PolicyError| ConfigError::new(format!("{path}[{i}]"), e.to_string());
        let limiter = match carried.iter().position(|(d, l)| d == def && *l.policy() == local) {
            Some(j) => carried.swap_remove(j).1,
            None => Arc::new(LocalLimiter::new(local, MAX_KEYS).map_err(err)?),
        };
        let shared = match store.redis {
            None => None,
            Some(r) => {
                let nth = defs[..i].iter().filter(|d| policy(d) == full).count();
                let id = limiter_id(store.scope, plan, def, nth);
                Some(RedisLimiter::new(r.clone(), full, &id, r.timeout()).map_err(err)?)
            }
        };
        let leases = match (&shared, store.batch) {
            (Some(s), Some(batch)) if s.can_reserve() => Some(Leases::new(batch, full.period.min(LEASE_TTL), MAX_KEYS)),
            _ => None,
        };
        out.push(Limit { def: def.clone(), limiter, shared, leases });
    }
    // Shortest period first: a request refused by the minute is not charged to the day.
    out.sort_by_key(|l| l.def.per.get());
    Ok(out.into())
}

impl RateLimit {
    /// Compiles the plugin; `prev` is the same plugin of the previous config, whose
    /// limiters are reused for unchanged limits. `scope` names the plugin's place (the
    /// route, or `global`) in the Redis keys of `store: redis`; `redis` is the shared
    /// store (`None` with `store: redis`: compiled only to be checked, counted locally).
    pub fn new(
        path: &str,
        scope: &str,
        def: &portico_config::RateLimit,
        plans: &std::collections::BTreeMap<String, portico_config::Plan>,
        prev: Option<&RateLimit>,
        redis: Option<&Arc<RedisStore>>,
        metrics: &Arc<Metrics>,
    ) -> Result<Self, ConfigError> {
        let redis = redis.filter(|_| def.store == LimitStore::Redis);
        let store = Store { redis, instances: u64::from(def.instances.max(1)), scope, batch: batch(def) };
        let mut carried: Carried = prev.map(|p| carry(&p.limits)).unwrap_or_default();
        let limits = compile_limits(&format!("{path}.limits"), "-", &def.limits, &mut carried, &store)?;
        let mut compiled_plans = HashMap::new();
        if def.plans {
            for (name, plan) in plans {
                if plan.rate_limit.is_empty() {
                    continue;
                }
                let mut carried: Carried =
                    prev.and_then(|p| p.plans.get(name.as_str())).map(|l| carry(l)).unwrap_or_default();
                let compiled =
                    compile_limits(&format!("plans.{name}.rate_limit"), name, &plan.rate_limit, &mut carried, &store)?;
                compiled_plans.insert(name.as_str().into(), compiled);
            }
        }
        let store = redis.map(|_| StoreState {
            metrics: metrics.clone(),
            failing: AtomicBool::new(false),
            paused_until: AtomicU64::new(0),
            epoch: Instant::now(),
        });
        Ok(Self {
            def: def.clone(),
            limits,
            plans: compiled_plans,
            key: compile_key(&def.key),
            tenant_limits: parking_lot::Mutex::new(prev.map(|p| p.tenant_limits.lock().clone()).unwrap_or_default()),
            store,
            redis: redis.cloned(),
            scope: scope.into(),
        })
    }

    /// Whether the limits are counted in Redis.
    pub fn uses_redis(&self) -> bool {
        self.store.is_some()
    }

    /// Checks the limits for this request: the tightest limit's numbers when allowed (and
    /// how long a leaky bucket wants the request held), 429 when refused. With `store:
    /// redis`, one round trip per limit; when Redis fails, as `on_store_error` says (503
    /// for `deny`).
    pub async fn check(&self, req: &KeyInput<'_>) -> Result<(RateInfo, Option<Duration>), GatewayError> {
        // The tenant's own limits, else the caller's plan, else the tenant's plan, else
        // the plugin's limits.
        let tenant_own = if self.def.plans { req.tenant.and_then(|t| self.tenant_limits(t)) } else { None };
        let settings = req.tenant.and_then(|t| t.settings.as_deref());
        let plan = req.identity.and_then(Identity::plan).or_else(|| settings.and_then(|s| s.plan.as_deref()));
        let limits: &[Limit] = match (&tenant_own, plan.and_then(|p| self.plans.get(p))) {
            (Some(own), _) => own,
            (None, Some(plan_limits)) => plan_limits,
            (None, None) => &self.limits,
        };
        let key = build_key(&self.key, req);
        let mut tightest: Option<Decision> = None;
        let mut delay = None;
        for l in limits.iter() {
            let d = match (&l.shared, &self.store) {
                (Some(shared), Some(state)) => match self.check_shared(l, shared, state, &key, req.route).await {
                    Some(d) => d,
                    None => match self.def.on_store_error {
                        OnStoreError::Allow => continue,
                        OnStoreError::Deny => return Err(GatewayError::new(ErrorKind::RateLimitUnavailable)),
                        OnStoreError::Local => l.limiter.check(&key, Instant::now(), 1),
                    },
                },
                _ => l.limiter.check(&key, Instant::now(), 1),
            };
            if !d.allowed {
                let info = RateInfo::of(&d, self.def.headers);
                let retry_after = ceil_secs(d.retry_after.unwrap_or(d.reset_after)).max(1);
                return Err(GatewayError::new(ErrorKind::RateLimited { info, retry_after }));
            }
            delay = delay.max(d.delay);
            if tightest.is_none_or(|t| d.remaining < t.remaining) {
                tightest = Some(d);
            }
        }
        let info = tightest
            .map_or(RateInfo { limit: 0, remaining: 0, reset_secs: 0, headers: RateLimitHeaders::None }, |d| {
                RateInfo::of(&d, self.def.headers)
            });
        Ok((info, delay))
    }

    /// The decision of Redis, or `None` when it failed (counted and logged).
    async fn check_shared(
        &self,
        limit: &Limit,
        shared: &RedisLimiter,
        state: &StoreState,
        key: &[u8],
        route: &str,
    ) -> Option<Decision> {
        if let Some(leases) = &limit.leases {
            // Batched: from this instance's lease, or a reservation (the same error
            // handling as a strict decision).
            return leases
                .decide(key, |n| async move {
                    if state.paused() {
                        state.metrics.rate_limit_store_error(route);
                        return None;
                    }
                    match shared.reserve(key, n).await {
                        Ok(r) => {
                            state.succeeded();
                            Some(r)
                        }
                        Err(e) => {
                            state.failed(route, self.def.on_store_error, &e);
                            None
                        }
                    }
                })
                .await;
        }
        if state.paused() {
            // Counted, but the pause is not extended: with requests arriving more often than
            // the pause lasts, extending it would never let Redis be tried again.
            state.metrics.rate_limit_store_error(route);
            return None;
        }
        match shared.check(key, 1).await {
            Ok(d) => {
                state.succeeded();
                Some(d)
            }
            Err(e) => {
                state.failed(route, self.def.on_store_error, &e);
                None
            }
        }
    }

    /// The limiters of a tenant with limits of its own, made when first needed and made
    /// again when its limits change (settings in Redis may change at any time).
    fn tenant_limits(&self, t: &crate::identity::tenants::Tenant) -> Option<Arc<[Limit]>> {
        let defs = &t.settings.as_ref()?.rate_limit;
        if defs.is_empty() {
            return None;
        }
        let mut table = self.tenant_limits.lock();
        if let Some(l) = table.get(&*t.id)
            && l.len() == defs.len()
            && l.iter().all(|l| defs.contains(&l.def))
        {
            return Some(l.clone());
        }
        let mut carried: Carried = table.get(&*t.id).map(|l| carry(l)).unwrap_or_default();
        let store = Store {
            redis: self.redis.as_ref(),
            instances: u64::from(self.def.instances.max(1)),
            scope: &self.scope,
            batch: batch(&self.def),
        };
        let plan = format!("tenant={}", t.id);
        let compiled: Arc<[Limit]> = compile_limits("tenants", &plan, defs, &mut carried, &store).ok()?.into();
        if table.len() >= MAX_TENANTS {
            table.clear();
        }
        table.insert(t.id.as_ref().into(), compiled.clone());
        Some(compiled)
    }

    /// Drops idle keys from every limiter (run by a periodic task).
    pub fn sweep(&self) {
        let now = Instant::now();
        for l in self.limits.iter().chain(self.plans.values().flat_map(|p| p.iter())) {
            l.limiter.sweep(now);
            if let Some(leases) = &l.leases {
                leases.sweep();
            }
        }
        let tenants: Vec<Arc<[Limit]>> = self.tenant_limits.lock().values().cloned().collect();
        for l in tenants.iter().flat_map(|t| t.iter()) {
            l.limiter.sweep(now);
            if let Some(leases) = &l.leases {
                leases.sweep();
            }
        }
    }

    /// This plugin's limiters, for a later reload.
    pub fn limiters(&self) -> impl Iterator<Item = &Arc<LocalLimiter>> {
        self.limits.iter().chain(self.plans.values().flat_map(|p| p.iter())).map(|l| &l.limiter)
    }
}

impl Hooks for RateLimit {
    fn kind(&self) -> &'static str {
        "rate_limit"
    }

    fn phases(&self) -> Phases {
        Phases { access: true, response: true, ..Phases::default() }
    }

    fn tenant_settings(&self) -> bool {
        true
    }

    /// Counts the request: 429 (or 503) when refused; the tightest limit's numbers into
    /// `state.rate`; a leaky bucket's delay waited here.
    async fn access(&self, req: &RequestView<'_>, _cx: &AccessCtx<'_>, state: &mut Passed) -> Result<Verdict, Refusal> {
        let checked = self.check(&KeyInput::of(req, state)).await;
        match checked {
            Ok((info, delay)) => {
                state.rate = Some(info);
                if let Some(d) = delay {
                    tokio::time::sleep(d).await;
                }
                Ok(Verdict::Continue)
            }
            Err(e) => Err(state.refuse(e)),
        }
    }

    /// The `RateLimit-*` headers, on answers and refusals alike.
    fn response(&self, res: &mut http::Response<Body>, ctx: &HookCtx<'_>) {
        if let Some(r) = ctx.rate {
            r.write(res.headers_mut());
        }
    }
}

fn compile_key(parts: &[KeyPart]) -> Box<[Part]> {
    parts
        .iter()
        .filter_map(|p| {
            Some(match p {
                KeyPart::ClientIp => Part::ClientIp,
                KeyPart::Consumer => Part::Consumer,
                KeyPart::ApiKey => Part::ApiKey,
                KeyPart::Tenant => Part::Tenant,
                KeyPart::Route => Part::Route,
                KeyPart::Header(h) => Part::Header(HeaderName::from_bytes(h.as_bytes()).ok()?),
                KeyPart::Claim(c) => Part::Claim(c.as_str().into()),
            })
        })
        .collect()
}

/// What a key is made of.
#[derive(Debug)]
pub struct KeyInput<'a> {
    /// The client IP.
    pub client_ip: IpAddr,
    /// The caller, when authenticated.
    pub identity: Option<&'a Identity>,
    /// The request's tenant.
    pub tenant: Option<&'a crate::identity::tenants::Tenant>,
    /// The route's name.
    pub route: &'a str,
    /// Request headers.
    pub headers: &'a HeaderMap,
}

impl<'a> KeyInput<'a> {
    /// What the key of a request with this state is made of.
    pub fn of(req: &'a RequestView<'_>, state: &'a Passed) -> Self {
        KeyInput {
            client_ip: req.client_ip,
            identity: state.identity.as_ref(),
            tenant: state.tenant.as_ref(),
            route: req.route,
            headers: req.headers,
        }
    }
}

/// Keys longer than this are kept as a digest: header values and claims are the client's
/// to choose, and 100,000 keys of 16 KiB would be 1.6 GB.
const MAX_RAW_KEY: usize = 64;

/// The key bytes: each part tagged and separated, so `("a", "bc")` and `("ab", "c")`
/// never collide. A part the caller lacks (no consumer, no tenant) falls back to the
/// client IP, so anonymous callers are limited per address, not all together. A key over
/// [`MAX_RAW_KEY`] bytes becomes `0xff` and the first 16 bytes of its SHA-256 (the same on
/// every instance, so Redis counts it as one; `0xff` never appears in the UTF-8 of a raw
/// key, so the two forms cannot collide).
fn build_key(parts: &[Part], req: &KeyInput<'_>) -> Vec<u8> {
    let raw = raw_key(parts, req);
    if raw.len() <= MAX_RAW_KEY {
        return raw;
    }
    let mut out = Vec::with_capacity(17);
    out.push(0xff);
    out.extend_from_slice(&crate::identity::sha256(&raw)[..16]);
    out
}

fn raw_key(parts: &[Part], req: &KeyInput<'_>) -> Vec<u8> {
    let mut key = String::with_capacity(64);
    let ip = |key: &mut String| {
        let _ = write!(key, "ip={}", req.client_ip);
    };
    for p in parts {
        match p {
            Part::ClientIp => ip(&mut key),
            Part::Consumer => match req.identity {
                Some(id) => {
                    key.push_str("user=");
                    key.push_str(&id.user_id);
                }
                None => ip(&mut key),
            },
            Part::ApiKey => match req.identity.filter(|i| i.method == "api_key") {
                Some(id) => {
                    key.push_str("key=");
                    key.push_str(&id.user_id);
                    key.push('/');
                    key.push_str(id.key_name.as_deref().unwrap_or(""));
                }
                None => ip(&mut key),
            },
            Part::Tenant => match req.tenant.map(|t| &*t.id) {
                Some(t) => {
                    key.push_str("tenant=");
                    key.push_str(t);
                }
                None => ip(&mut key),
            },
            Part::Route => {
                key.push_str("route=");
                key.push_str(req.route);
            }
            Part::Header(h) => {
                key.push_str("h=");
                key.push_str(req.headers.get(h).and_then(|v| v.to_str().ok()).unwrap_or(""));
            }
            Part::Claim(c) => {
                key.push_str("claim=");
                let v = req.identity.and_then(|i| i.token.as_ref()).and_then(|t| t.claims.get(&**c));
                match v {
                    Some(serde_json::Value::String(s)) => key.push_str(s),
                    Some(other) => {
                        let _ = write!(key, "{other}");
                    }
                    None => {}
                }
            }
        }
        key.push('\u{1f}');
    }
    key.into_bytes()
}

/// A compiled `concurrency_limit` plugin.
#[derive(Debug)]
pub struct ConcurrencyLimit {
    /// The config it was built from.
    pub def: portico_config::ConcurrencyLimit,
    limiter: Arc<Concurrency>,
    key: Box<[Part]>,
}

impl ConcurrencyLimit {
    /// Compiles the plugin; the in-flight counts of `prev` carry over when unchanged.
    pub fn new(
        path: &str,
        def: &portico_config::ConcurrencyLimit,
        prev: Option<&ConcurrencyLimit>,
    ) -> Result<Self, ConfigError> {
        let limiter = match prev.filter(|p| p.def.max == def.max) {
            Some(p) => p.limiter.clone(),
            None => Arc::new(
                Concurrency::new(u64::from(def.max), MAX_KEYS).map_err(|e| ConfigError::new(path, e.to_string()))?,
            ),
        };
        Ok(Self { def: def.clone(), limiter, key: compile_key(&def.key) })
    }

    /// A slot for this request, held until its response ends; 429 or 503 when full.
    pub fn acquire(&self, req: &KeyInput<'_>) -> Result<ConcurrencyGuard, GatewayError> {
        let key = build_key(&self.key, req);
        self.limiter
            .acquire(&key)
            .ok_or_else(|| GatewayError::new(ErrorKind::ConcurrencyLimited(self.def.status == 503)))
    }
}

impl Hooks for ConcurrencyLimit {
    fn kind(&self) -> &'static str {
        "concurrency_limit"
    }

    fn phases(&self) -> Phases {
        Phases { access: true, ..Phases::default() }
    }

    /// Takes a slot (into `state.slot`, which the pipeline holds until the response body
    /// ends), or refuses with 429 or 503.
    async fn access(&self, req: &RequestView<'_>, _cx: &AccessCtx<'_>, state: &mut Passed) -> Result<Verdict, Refusal> {
        let acquired = self.acquire(&KeyInput::of(req, state));
        state.slot = Some(acquired.map_err(|e| state.refuse(e))?);
        Ok(Verdict::Continue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_keys_are_kept_as_digests_and_short_ones_as_text() {
        let key = |h: &HeaderMap| {
            let input = KeyInput {
                client_ip: "192.0.2.1".parse().unwrap(),
                identity: None,
                tenant: None,
                route: "r",
                headers: h,
            };
            build_key(&[Part::ClientIp, Part::Header(HeaderName::from_static("x-k"))], &input)
        };
        let mut headers = HeaderMap::new();
        headers.insert("x-k", HeaderValue::from_static("short"));
        assert_eq!(key(&headers), "ip=192.0.2.1\u{1f}h=short\u{1f}".as_bytes());
        headers.insert("x-k", HeaderValue::from_str(&"a".repeat(16_000)).unwrap());
        let long = key(&headers);
        assert_eq!((long.len(), long[0]), (17, 0xff));
        headers.insert("x-k", HeaderValue::from_str(&"a".repeat(15_999)).unwrap());
        assert_ne!(key(&headers), long);
    }
}
