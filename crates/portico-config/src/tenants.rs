//! The config of tenants: how a request's tenant is found, and each tenant's plan, rate
//! limits and feature flags (in the config, or in Redis).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ratelimit::Limit;
use crate::units::Duration;

/// Tenants.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Tenants {
    /// Where a request's tenant comes from, tried in order: `token` (the JWT provider's
    /// `tenant_claim`), `consumer` (the consumer's `tenant`), `subdomain` (the first label
    /// of the host: `acme.api.example.com` is `acme`). Default: `[token, consumer]`.
    pub from: Vec<TenantSource>,
    /// Settings per tenant ID.
    pub settings: BTreeMap<String, TenantSettings>,
    /// Read tenant settings from Redis too (the top-level `redis`): the hash
    /// `{key_prefix}tenant:{id}` with fields `plan`, `flags` (comma-separated) and
    /// `rate_limit` (`LIMIT/PER`, e.g. `500/1m`); it wins over `settings`. Cached per
    /// instance for `cache_ttl`, dropped at once on a message on `{key_prefix}tenants`.
    pub redis: Option<TenantsRedis>,
}

/// A source of the tenant.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TenantSource {
    /// The caller's token's tenant claim.
    Token,
    /// The caller's consumer's `tenant`.
    Consumer,
    /// The first label of the request's host (with at least three labels).
    Subdomain,
}

/// One tenant's settings.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TenantSettings {
    /// The tenant's plan (a key of `plans`): its rate limits apply to the tenant's callers
    /// that have no plan of their own.
    pub plan: Option<String>,
    /// Rate limits of this tenant, replacing every plan's and route's limits for its
    /// callers (on routes whose `rate_limit` has `plans: true`).
    pub rate_limit: Vec<Limit>,
    /// Feature flags: a route's `flag_upstreams` sends the tenant's requests elsewhere.
    pub flags: Vec<String>,
}

/// Tenant settings in Redis.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TenantsRedis {
    /// How long an instance keeps settings read from Redis before reading them again
    /// (a published change drops them at once).
    pub cache_ttl: Duration,
}

impl Default for TenantsRedis {
    fn default() -> Self {
        Self { cache_ttl: Duration::from_secs(5) }
    }
}

/// Checks `tenants` and routes' `flag_upstreams`.
pub(crate) fn check(config: &crate::Config, err: &mut impl FnMut(String, String)) {
    let t = &config.tenants;
    for (i, s) in t.from.iter().enumerate() {
        if t.from[..i].contains(s) {
            err(format!("tenants.from[{i}]"), "listed twice".into());
        }
    }
    for (id, s) in &t.settings {
        let p = format!("tenants.settings.{id}");
        if let Some(plan) = &s.plan
            && !config.plans.contains_key(plan)
        {
            err(format!("{p}.plan"), format!("unknown plan {plan:?}"));
        }
        crate::ratelimit::check_limit_list(&format!("{p}.rate_limit"), &s.rate_limit, err);
        for (j, f) in s.flags.iter().enumerate() {
            if f.is_empty() || f.contains(',') {
                err(format!("{p}.flags[{j}]"), "a flag is a non-empty word without commas".into());
            }
        }
    }
    if let Some(r) = &t.redis {
        if config.redis.is_none() {
            err("tenants.redis".into(), "needs the top-level redis".into());
        }
        if r.cache_ttl.get().is_zero() || r.cache_ttl.get() > std::time::Duration::from_secs(300) {
            err("tenants.redis.cache_ttl".into(), "must be from 1ms to 5m".into());
        }
    }
    for (i, r) in config.routes.iter().enumerate() {
        for (flag, up) in &r.flag_upstreams {
            if !config.upstreams.contains_key(up) {
                err(format!("routes[{i}].flag_upstreams.{flag}"), format!("unknown upstream {up:?}"));
            }
        }
    }
}
