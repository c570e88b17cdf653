//! The config of rate limits, concurrency limits and plans.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::units::Duration;

/// The `rate_limit` plugin: one or more limits, all enforced, counted per key.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// The limits (`100/1m` and `10000/1d` together, say); a request must pass every one.
    /// With `plans: true`, a caller whose plan has limits gets the plan's instead.
    #[serde(default)]
    pub limits: Vec<Limit>,
    /// What the limits count per: the parts are combined (`[consumer, route]` gives each
    /// consumer its own budget on each route).
    #[serde(default = "default_key")]
    pub key: Vec<KeyPart>,
    /// Use the limits of the caller's plan (`plans`, by the consumer's `plan`) when it has
    /// some.
    #[serde(default = "yes")]
    pub plans: bool,
    /// Rate-limit response headers: `ietf` (`RateLimit-Limit`, `-Remaining`, `-Reset`),
    /// `legacy` (`X-RateLimit-*`), `both` or `none`.
    #[serde(default)]
    pub headers: RateLimitHeaders,
    /// Where the counters live: `local` (this instance's memory, the default) or `redis`
    /// (the top-level `redis`, shared by every instance; see docs/ratelimit.md#redis).
    #[serde(default)]
    pub store: LimitStore,
    /// `store: redis`: what a limit decides when Redis fails or is slower than
    /// `redis.timeout`: `allow` (the request passes that limit), `deny` (503 `rate limit
    /// store unavailable`) or `local` (this instance decides alone, with `limit / instances`;
    /// the default).
    #[serde(default)]
    pub on_store_error: OnStoreError,
    /// `store: redis`: how many gateway instances share the limits. With
    /// `on_store_error: local`, each instance allows `limit / instances` (at least 1) while
    /// Redis is unavailable, so that together they stay near the limit. Default 1.
    #[serde(default = "one")]
    pub instances: u32,
    /// `store: redis`: `strict` (one Redis round trip per limit and request: exact; the
    /// default) or `batched` (each instance reserves `batch` units of a key's budget in one
    /// round trip and spends them locally; see docs/ratelimit.md#batched-mode for its
    /// bounds). `batched` works with `token_bucket`, `gcra` and `fixed_window`.
    #[serde(default)]
    pub mode: LimitMode,
    /// `mode: batched`: how many units an instance reserves from Redis at once (1 to
    /// 1000; default 10). Larger: fewer round trips, more units left unused when a
    /// reservation expires (after `min(per, 1s)`).
    #[serde(default = "default_batch")]
    pub batch: u32,
}

fn one() -> u32 {
    1
}

fn default_batch() -> u32 {
    10
}

/// Most units a `batched` limit reserves at once.
pub const MAX_BATCH: u32 = 1000;

/// How a `store: redis` limit talks to Redis.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LimitMode {
    /// One round trip per limit and request: exact across instances.
    #[default]
    Strict,
    /// Each instance reserves `batch` units at once and spends them without asking Redis.
    Batched,
}

/// What a `store: redis` limit decides when Redis cannot answer in time.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnStoreError {
    /// The limit lets the request pass (fail open).
    Allow,
    /// The request is refused with 503 (fail closed).
    Deny,
    /// This instance decides alone, allowing `limit / instances` (at least 1).
    #[default]
    Local,
}

fn yes() -> bool {
    true
}

fn default_key() -> Vec<KeyPart> {
    vec![KeyPart::ClientIp]
}

/// One limit.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    /// Requests allowed per `per`.
    pub limit: u64,
    /// The period (`1s`, `1m`, `1h`, `1d`).
    pub per: Duration,
    /// How requests are counted; see docs/ratelimit.md for the burst behaviour of each.
    #[serde(default)]
    pub algorithm: LimitAlgorithm,
    /// `token_bucket` and `gcra`: requests allowed at once beyond the steady rate (the
    /// bucket holds `limit + burst`). Default 0.
    #[serde(default)]
    pub burst: u64,
    /// `leaky_bucket`: a request over the rate waits up to this long to be sent, rather
    /// than being refused at once.
    #[serde(default)]
    pub max_delay: Duration,
    /// A name for logs and metrics (default: `LIMIT/PER`).
    #[serde(default)]
    pub name: Option<String>,
}

/// Rate-limiting algorithms.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LimitAlgorithm {
    /// A bucket of `limit + burst` tokens refilled at `limit` per `per`.
    #[default]
    TokenBucket,
    /// The generic cell rate algorithm: a token bucket kept as one timestamp per key.
    Gcra,
    /// A counter per fixed window: cheap, but allows up to twice the limit across a
    /// window boundary.
    FixedWindow,
    /// Exact: the times of the allowed requests in the last `per`.
    SlidingLog,
    /// The weighted count of the current and the previous window: cheap and close.
    SlidingWindow,
    /// Smoothing: requests leave at a steady rate, waiting up to `max_delay`.
    LeakyBucket,
}

impl LimitAlgorithm {
    /// Every algorithm, in the order of the docs.
    pub const ALL: [LimitAlgorithm; 6] = [
        LimitAlgorithm::TokenBucket,
        LimitAlgorithm::Gcra,
        LimitAlgorithm::FixedWindow,
        LimitAlgorithm::SlidingLog,
        LimitAlgorithm::SlidingWindow,
        LimitAlgorithm::LeakyBucket,
    ];

    /// The algorithm's name in config, metrics and docs (`token_bucket`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            LimitAlgorithm::TokenBucket => "token_bucket",
            LimitAlgorithm::Gcra => "gcra",
            LimitAlgorithm::FixedWindow => "fixed_window",
            LimitAlgorithm::SlidingLog => "sliding_log",
            LimitAlgorithm::SlidingWindow => "sliding_window",
            LimitAlgorithm::LeakyBucket => "leaky_bucket",
        }
    }
}

impl std::fmt::Display for LimitAlgorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A part of a rate-limit key.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum KeyPart {
    /// The client IP (through `client_ip.trusted_proxies`).
    ClientIp,
    /// The authenticated caller (consumer ID, token subject or certificate subject);
    /// anonymous callers share the key of their client IP.
    Consumer,
    /// The API key the caller used (its label, else its consumer); none: the client IP.
    ApiKey,
    /// The caller's tenant; none: the client IP.
    Tenant,
    /// The route: one budget per route.
    Route,
    /// A request header's value (absent: empty).
    Header(String),
    /// A claim of the caller's token (absent: empty).
    Claim(String),
}

/// Which rate-limit headers answers carry.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitHeaders {
    /// `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset` (IETF draft).
    #[default]
    Ietf,
    /// `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset`.
    Legacy,
    /// Both sets.
    Both,
    /// None (429 still carries `Retry-After`).
    None,
}

/// Where rate-limit counters live.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LimitStore {
    /// In this instance's memory.
    #[default]
    Local,
    /// In the top-level `redis`, shared by every instance: one Lua script (one round trip)
    /// per limit and request (`mode: strict`) or per `batch` requests (`mode: batched`),
    /// timed by the Redis server's clock.
    Redis,
}

/// The `concurrency_limit` plugin: most requests in flight at once per key.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConcurrencyLimit {
    /// Requests in flight at once per key (until the response body has been sent).
    pub max: u32,
    /// What is counted per (see `rate_limit.key`).
    #[serde(default = "default_key")]
    pub key: Vec<KeyPart>,
    /// Status answered past the limit: 429 or 503.
    #[serde(default = "default_concurrency_status")]
    pub status: u16,
}

fn default_concurrency_status() -> u16 {
    429
}

/// A plan: what its consumers may do.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Plan {
    /// Rate limits for callers on this plan, used by `rate_limit` plugins with `plans: true`.
    pub rate_limit: Vec<Limit>,
}

/// Checks a list of limits.
/// Limits written as text, as a tenant's Redis hash carries them: limits separated by
/// commas, each `LIMIT/PER` with optional `key=value` options separated by spaces
/// (`algorithm`, `burst`, `max_delay`, `name`):
/// `100/1m algorithm=gcra burst=20, 10000/1d`. The result is checked as a config's
/// `limits` list is; the error names the limit and the problem.
pub fn parse_limits(text: &str) -> Result<Vec<Limit>, String> {
    let mut out = Vec::new();
    for (i, item) in text.split(',').map(str::trim).enumerate() {
        let at = |m: String| format!("limit {} ({item:?}): {m}", i + 1);
        let mut words = item.split_whitespace();
        let rate = words.next().ok_or_else(|| at("empty".into()))?;
        let (n, per) = rate.split_once('/').ok_or_else(|| at("not LIMIT/PER".into()))?;
        let mut limit = Limit {
            limit: n.parse().map_err(|_| at(format!("{n:?} is not a number")))?,
            per: Duration::parse(per).map_err(at)?,
            algorithm: LimitAlgorithm::default(),
            burst: 0,
            max_delay: Duration::from_secs(0),
            name: None,
        };
        for w in words {
            let (k, v) = w.split_once('=').ok_or_else(|| at(format!("{w:?} is not key=value")))?;
            match k {
                "algorithm" => {
                    limit.algorithm = serde_json::from_value(serde_json::Value::String(v.to_owned())).map_err(|_| {
                        at(format!("unknown algorithm {v:?} (token_bucket, gcra, fixed_window, sliding_window, sliding_log, leaky_bucket)"))
                    })?;
                }
                "burst" => limit.burst = v.parse().map_err(|_| at(format!("burst {v:?} is not a number")))?,
                "max_delay" => limit.max_delay = Duration::parse(v).map_err(at)?,
                "name" => limit.name = Some(v.to_owned()),
                _ => return Err(at(format!("unknown option {k:?} (algorithm, burst, max_delay, name)"))),
            }
        }
        out.push(limit);
    }
    let mut first = None;
    check_limit_list("", &out, &mut |path, message| {
        first.get_or_insert_with(|| {
            // `[0].burst` -> `limit 1: burst ...`
            let (index, field) = path.trim_start_matches('[').split_once(']').unwrap_or(("0", &path));
            let i: usize = index.parse().unwrap_or(0);
            format!("limit {}: {} {message}", i + 1, field.trim_start_matches('.'))
        });
    });
    match first {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

pub(crate) fn check_limit_list(p: &str, limits: &[Limit], err: &mut impl FnMut(String, String)) {
    for (i, l) in limits.iter().enumerate() {
        let lp = format!("{p}[{i}]");
        if l.limit == 0 {
            err(format!("{lp}.limit"), "must be at least 1 (remove the route or deny it instead)".into());
        }
        if l.per.get() < std::time::Duration::from_millis(1) {
            err(format!("{lp}.per"), "must be at least 1ms".into());
        }
        if l.per.get() > std::time::Duration::from_secs(366 * 86_400) {
            err(format!("{lp}.per"), "must be at most 366d".into());
        }
        if l.burst > 0 && !matches!(l.algorithm, LimitAlgorithm::TokenBucket | LimitAlgorithm::Gcra) {
            err(format!("{lp}.burst"), "only token_bucket and gcra have a burst".into());
        }
        if !l.max_delay.get().is_zero() && l.algorithm != LimitAlgorithm::LeakyBucket {
            err(format!("{lp}.max_delay"), "only leaky_bucket delays requests".into());
        }
        if l.algorithm == LimitAlgorithm::SlidingLog && l.limit > 10_000 {
            err(
                format!("{lp}.limit"),
                "sliding_log keeps one timestamp per request: at most 10000; use sliding_window".into(),
            );
        }
    }
}

fn check_key(p: &str, key: &[KeyPart], err: &mut impl FnMut(String, String)) {
    if key.is_empty() {
        err(p.into(), "give at least one key part (client_ip, consumer, route, ...)".into());
    }
    for (i, k) in key.iter().enumerate() {
        match k {
            KeyPart::Header(h) if http::HeaderName::from_bytes(h.as_bytes()).is_err() => {
                err(format!("{p}[{i}].header"), format!("{h:?} is not a valid header name"));
            }
            KeyPart::Claim(c) if c.is_empty() => err(format!("{p}[{i}].claim"), "must not be empty".into()),
            _ => {}
        }
        if key[..i].contains(k) {
            err(format!("{p}[{i}]"), "listed twice".into());
        }
    }
}

/// Checks a `rate_limit` plugin.
pub(crate) fn check_rate_limit(p: &str, r: &RateLimit, config: &crate::Config, err: &mut impl FnMut(String, String)) {
    let plan_limits = config.plans.values().any(|p| !p.rate_limit.is_empty())
        || config.tenants.settings.values().any(|t| !t.rate_limit.is_empty())
        || config.tenants.redis.is_some();
    if r.limits.is_empty() && !(r.plans && plan_limits) {
        err(format!("{p}.limits"), "give at least one limit (or plans with rate_limit)".into());
    }
    check_limit_list(&format!("{p}.limits"), &r.limits, err);
    check_key(&format!("{p}.key"), &r.key, err);
    if r.store == LimitStore::Redis && config.redis.is_none() {
        err(format!("{p}.store"), "store: redis needs a top-level redis (the counters are shared through it)".into());
    }
    if r.instances == 0 {
        err(format!("{p}.instances"), "must be at least 1".into());
    }
    if r.mode == LimitMode::Batched {
        if r.store != LimitStore::Redis {
            err(format!("{p}.mode"), "mode: batched needs store: redis (it batches Redis round trips)".into());
        }
        let batched_ok = |l: &Limit| {
            matches!(l.algorithm, LimitAlgorithm::TokenBucket | LimitAlgorithm::Gcra | LimitAlgorithm::FixedWindow)
        };
        for (i, l) in r.limits.iter().enumerate() {
            if !batched_ok(l) {
                err(
                    format!("{p}.limits[{i}].algorithm"),
                    "mode: batched supports token_bucket, gcra and fixed_window only (use mode: strict)".into(),
                );
            }
        }
        for (name, plan) in &config.plans {
            if r.plans && plan.rate_limit.iter().any(|l| !batched_ok(l)) {
                err(
                    format!("plans.{name}.rate_limit"),
                    format!("{p} has mode: batched, which supports token_bucket, gcra and fixed_window only"),
                );
            }
        }
    }
    if !(1..=MAX_BATCH).contains(&r.batch) {
        err(format!("{p}.batch"), format!("must be 1 to {MAX_BATCH}"));
    }
}

/// Checks a `concurrency_limit` plugin.
pub(crate) fn check_concurrency(p: &str, c: &ConcurrencyLimit, err: &mut impl FnMut(String, String)) {
    if c.max == 0 {
        err(format!("{p}.max"), "must be at least 1".into());
    }
    if !matches!(c.status, 429 | 503) {
        err(format!("{p}.status"), "must be 429 or 503".into());
    }
    check_key(&format!("{p}.key"), &c.key, err);
}

/// Checks `plans`, and that every consumer's plan exists.
pub(crate) fn check_plans(config: &crate::Config, err: &mut impl FnMut(String, String)) {
    for (name, plan) in &config.plans {
        check_limit_list(&format!("plans.{name}.rate_limit"), &plan.rate_limit, err);
    }
    for (i, c) in config.consumers.iter().enumerate() {
        if let Some(plan) = &c.plan
            && !config.plans.is_empty()
            && !config.plans.contains_key(plan)
        {
            let known: Vec<&str> = config.plans.keys().map(String::as_str).collect();
            err(format!("consumers[{i}].plan"), format!("unknown plan {plan:?} (defined: {})", known.join(", ")));
        }
    }
}
