//! The `rate_limit` plugin: one or more limits per key, all enforced, answered with 429,
//! `Retry-After` and the `RateLimit-*` headers; and the `concurrency_limit` plugin.
//!
//! Limits are checked shortest period first, and the first refusal stops the check, so a
//! request refused by `100/1m` is not charged to `10000/1d`. Counters live in the
//! [`crate::ratelimit`] limiters, one per limit (and per plan), shared by every route that
//! uses the same plugin instance: a global plugin counts across routes unless its key has
//! `route`. A reload keeps the counters of limits whose definition did not change.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use portico_config::{ConfigError, KeyPart, LimitAlgorithm, RateLimitHeaders};
use tokio::time::Instant;

use super::identity::Identity;
use crate::error::{ErrorKind, GatewayError};
use crate::ratelimit::{Algorithm, Concurrency, ConcurrencyGuard, Decision, LocalLimiter, Policy};

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
    limiter: Arc<LocalLimiter>,
}

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

/// A compiled `rate_limit` plugin.
#[derive(Debug)]
pub struct RateLimit {
    /// The config it was built from (a reload keeps the counters when it is unchanged).
    pub def: portico_config::RateLimit,
    limits: Box<[Limit]>,
    plans: HashMap<Box<str>, Box<[Limit]>>,
    key: Box<[Part]>,
    /// Limiters of tenants with limits of their own, built on first use (bounded).
    tenant_limits: parking_lot::Mutex<HashMap<Box<str>, Arc<[Limit]>>>,
}

/// Most tenants with limits of their own tracked per plugin; past it the table starts
/// afresh (their counters restart).
const MAX_TENANTS: usize = 10_000;

fn algorithm(a: LimitAlgorithm) -> Algorithm {
    match a {
        LimitAlgorithm::TokenBucket => Algorithm::TokenBucket,
        LimitAlgorithm::Gcra => Algorithm::Gcra,
        LimitAlgorithm::FixedWindow => Algorithm::FixedWindow,
        LimitAlgorithm::SlidingLog => Algorithm::SlidingLog,
        LimitAlgorithm::SlidingWindow => Algorithm::SlidingWindow,
        LimitAlgorithm::LeakyBucket => Algorithm::LeakyBucket,
    }
}

/// Limiters of the previous config, by limit definition, to carry counters over.
pub type Carried = Vec<(portico_config::Limit, Arc<LocalLimiter>)>;

fn compile_limits(
    path: &str,
    defs: &[portico_config::Limit],
    carried: &mut Carried,
) -> Result<Box<[Limit]>, ConfigError> {
    let mut out = Vec::with_capacity(defs.len());
    for (i, def) in defs.iter().enumerate() {
        let limiter = match carried.iter().position(|(d, _)| d == def) {
            Some(j) => carried.swap_remove(j).1,
            None => {
                let policy = Policy::new(algorithm(def.algorithm), def.limit, def.per.get())
                    .with_burst(def.burst)
                    .with_max_delay(def.max_delay.get());
                Arc::new(
                    LocalLimiter::new(policy, MAX_KEYS)
                        .map_err(|e| ConfigError::new(format!("{path}[{i}]"), e.to_string()))?,
                )
            }
        };
        out.push(Limit { def: def.clone(), limiter });
    }
    // Shortest period first: a request refused by the minute is not charged to the day.
    out.sort_by_key(|l| l.def.per.get());
    Ok(out.into())
}

impl RateLimit {
    /// Compiles the plugin; `prev` is the same plugin of the previous config, whose
    /// limiters are reused for unchanged limits.
    pub fn new(
        path: &str,
        def: &portico_config::RateLimit,
        plans: &std::collections::BTreeMap<String, portico_config::Plan>,
        prev: Option<&RateLimit>,
    ) -> Result<Self, ConfigError> {
        let mut carried: Carried =
            prev.map(|p| p.limits.iter().map(|l| (l.def.clone(), l.limiter.clone())).collect()).unwrap_or_default();
        let limits = compile_limits(&format!("{path}.limits"), &def.limits, &mut carried)?;
        let mut compiled_plans = HashMap::new();
        if def.plans {
            for (name, plan) in plans {
                if plan.rate_limit.is_empty() {
                    continue;
                }
                let mut carried: Carried = prev
                    .and_then(|p| p.plans.get(name.as_str()))
                    .map(|l| l.iter().map(|l| (l.def.clone(), l.limiter.clone())).collect())
                    .unwrap_or_default();
                let compiled = compile_limits(&format!("plans.{name}.rate_limit"), &plan.rate_limit, &mut carried)?;
                compiled_plans.insert(name.as_str().into(), compiled);
            }
        }
        Ok(Self {
            def: def.clone(),
            limits,
            plans: compiled_plans,
            key: compile_key(&def.key),
            tenant_limits: parking_lot::Mutex::new(prev.map(|p| p.tenant_limits.lock().clone()).unwrap_or_default()),
        })
    }

    /// Checks the limits for this request: the tightest limit's numbers when allowed (and
    /// how long a leaky bucket wants the request held), 429 when refused.
    pub fn check(&self, req: &KeyInput<'_>) -> Result<(RateInfo, Option<Duration>), GatewayError> {
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
        let now = Instant::now();
        let mut tightest: Option<Decision> = None;
        let mut delay = None;
        for l in limits {
            let d = l.limiter.check(&key, now, 1);
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

    /// The limiters of a tenant with limits of its own, made when first needed and made
    /// again when its limits change (settings in Redis may change at any time).
    fn tenant_limits(&self, t: &super::tenants::Tenant) -> Option<Arc<[Limit]>> {
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
        let mut carried: Carried = table
            .get(&*t.id)
            .map(|l| l.iter().map(|l| (l.def.clone(), l.limiter.clone())).collect())
            .unwrap_or_default();
        let compiled: Arc<[Limit]> = compile_limits("tenants", defs, &mut carried).ok()?.into();
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
        }
        let tenants: Vec<Arc<[Limit]>> = self.tenant_limits.lock().values().cloned().collect();
        for l in tenants.iter().flat_map(|t| t.iter()) {
            l.limiter.sweep(now);
        }
    }

    /// This plugin's limiters, for a later reload.
    pub fn limiters(&self) -> impl Iterator<Item = &Arc<LocalLimiter>> {
        self.limits.iter().chain(self.plans.values().flat_map(|p| p.iter())).map(|l| &l.limiter)
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
    pub tenant: Option<&'a super::tenants::Tenant>,
    /// The route's name.
    pub route: &'a str,
    /// Request headers.
    pub headers: &'a HeaderMap,
}

/// The key bytes: each part tagged and separated, so `("a", "bc")` and `("ab", "c")`
/// never collide. A part the caller lacks (no consumer, no tenant) falls back to the
/// client IP, so anonymous callers are limited per address, not all together.
fn build_key(parts: &[Part], req: &KeyInput<'_>) -> Vec<u8> {
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
        self.limiter.acquire(&key).ok_or_else(|| GatewayError::new(ErrorKind::InFlightLimit(self.def.status == 503)))
    }
}
