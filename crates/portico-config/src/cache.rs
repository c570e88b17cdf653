//! Response caching: the `cache` plugin's settings and their checks.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::units::{ByteSize, Duration};

/// `cache`: answers `GET` and `HEAD` from stored upstream responses, as HTTP caching
/// (RFC 9111) allows, and stores what the upstream lets it. An entry belongs to one caller
/// and one tenant unless `shared` says otherwise. Concurrent misses for one entry make one
/// upstream request.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Cache {
    /// How long a response stays fresh when the upstream gives no freshness of its own
    /// (no `Cache-Control: max-age`/`s-maxage`, no `Expires`). `0s`: such responses are not
    /// stored.
    pub ttl: Duration,
    /// The longest any response stays fresh, whatever the upstream says.
    pub max_ttl: Duration,
    /// Response statuses that may be stored. Others pass through and are never stored.
    pub statuses: Vec<u16>,
    /// Which query parameters are part of the key. Parameters are sorted by name (the
    /// order of repeated ones is kept), so `?a=1&b=2` and `?b=2&a=1` are one entry.
    pub query: QueryKey,
    /// Request headers whose values are part of the key, besides the fields the upstream
    /// names in `Vary` (which are always honoured).
    pub key_headers: Vec<String>,
    /// One entry for every caller and tenant. Off (the default), the caller and the
    /// tenant are part of the key, so an authenticated route's answers are never served to
    /// another caller or tenant.
    pub shared: bool,
    /// What a `shared` cache does with requests that carry `Authorization` or `Cookie`:
    /// `bypass` (forwarded, never answered from or stored in the cache) or `cache` (then an
    /// answer to a request with `Authorization` is stored only when the upstream marks it
    /// `public`, `s-maxage` or `must-revalidate`, as RFC 9111 section 3.5 asks).
    pub credentialed: Credentialed,
    /// Whether a client's `Cache-Control` (`no-cache`, `max-age`, `min-fresh`,
    /// `only-if-cached`, `no-store`) is obeyed (`honor`) or ignored (`ignore`, so that no
    /// client can make every request go to the upstream).
    pub request_cache_control: RequestCacheControl,
    /// How long past its freshness an entry is still answered at once while one request
    /// refreshes it in the background, when the upstream's `Cache-Control` gives no
    /// `stale-while-revalidate` of its own.
    pub stale_while_revalidate: Duration,
    /// How long past its freshness an entry is still answered when the upstream fails
    /// (times out, refuses, resets, answers 5xx, or its circuit breaker is open), when the
    /// upstream's `Cache-Control` gives no `stale-if-error` of its own. Never for an entry
    /// marked `must-revalidate`, `proxy-revalidate` or `no-cache`.
    pub serve_stale_on_error: Duration,
    /// How long concurrent misses for one entry wait for the one request that fetches it,
    /// before each goes to the upstream itself. `0s`: misses are not coalesced.
    pub lock_timeout: Duration,
    /// The most memory the cache's entries take, bodies and fields counted; the least
    /// used entries are evicted past it. A global `cache` has one store for all its routes.
    pub max_size: ByteSize,
    /// The largest body that is stored. A larger answer streams to the client and is not
    /// stored.
    pub max_object_size: ByteSize,
    /// Where entries live: `memory` (this instance only) or `redis` (this instance's memory
    /// first, then the top-level `redis`, shared by every instance: an answer one instance
    /// fetched is served by all). With Redis down, the cache works from memory alone.
    pub store: CacheStore,
    /// The response header that lists an answer's surrogate keys (tags, space separated)
    /// for purging by tag. Taken out of the answer the client gets.
    pub surrogate_key_header: String,
}

impl Default for Cache {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(60),
            max_ttl: Duration::from_secs(24 * 3600),
            statuses: vec![200, 203, 204, 300, 301, 308, 404, 410],
            query: QueryKey::default(),
            key_headers: Vec::new(),
            shared: false,
            credentialed: Credentialed::Bypass,
            request_cache_control: RequestCacheControl::Honor,
            stale_while_revalidate: Duration::default(),
            serve_stale_on_error: Duration::default(),
            lock_timeout: Duration::from_secs(5),
            max_size: ByteSize::mib(64),
            max_object_size: ByteSize::mib(1),
            store: CacheStore::Memory,
            surrogate_key_header: "Surrogate-Key".into(),
        }
    }
}

/// Which query parameters make up the key (at most one list).
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct QueryKey {
    /// Only these parameters are part of the key (others are still sent upstream).
    pub include: Vec<String>,
    /// These parameters are left out of the key (tracking parameters such as `utm_source`).
    pub exclude: Vec<String>,
}

/// See [`Cache::store`].
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CacheStore {
    /// In this instance's memory.
    #[default]
    Memory,
    /// In memory, then in the shared Redis.
    Redis,
}

/// See [`Cache::credentialed`].
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Credentialed {
    /// Requests with `Authorization` or `Cookie` go to the upstream and are not stored.
    #[default]
    Bypass,
    /// They are cached like any other (RFC 9111 section 3.5 still applies).
    Cache,
}

/// See [`Cache::request_cache_control`].
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RequestCacheControl {
    /// A client's directives are obeyed.
    #[default]
    Honor,
    /// A client's directives are ignored.
    Ignore,
}

/// Checks a `cache` plugin (at `path`); `redis` tells whether a top-level `redis` is
/// configured.
pub fn check(path: &str, c: &Cache, redis: bool, err: &mut impl FnMut(String, String)) {
    if c.store == CacheStore::Redis && !redis {
        err(format!("{path}.store"), "store: redis needs a top-level redis (the entries are shared through it)".into());
    }
    if c.max_ttl.get().is_zero() {
        err(format!("{path}.max_ttl"), "must be above 0".into());
    }
    if c.ttl > c.max_ttl {
        err(format!("{path}.ttl"), format!("must not be above max_ttl ({})", c.max_ttl));
    }
    if c.statuses.is_empty() {
        err(format!("{path}.statuses"), "list at least one status".into());
    }
    for (i, s) in c.statuses.iter().enumerate() {
        if !(200..=599).contains(s) {
            err(format!("{path}.statuses[{i}]"), format!("{s} is not a final response status (200 to 599)"));
        } else if matches!(s, 206 | 304) {
            err(
                format!("{path}.statuses[{i}]"),
                format!("{s} answers a conditional or range request and is never stored as it is"),
            );
        }
    }
    if !c.query.include.is_empty() && !c.query.exclude.is_empty() {
        err(format!("{path}.query"), "give include or exclude, not both".into());
    }
    for (i, h) in c.key_headers.iter().enumerate() {
        if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
            err(format!("{path}.key_headers[{i}]"), format!("{h:?} is not a valid header name"));
        }
    }
    if http::HeaderName::from_bytes(c.surrogate_key_header.as_bytes()).is_err() {
        err(format!("{path}.surrogate_key_header"), format!("{:?} is not a valid header name", c.surrogate_key_header));
    }
    if c.max_object_size.get() == 0 {
        err(format!("{path}.max_object_size"), "must be more than 0".into());
    }
    if c.max_object_size > c.max_size {
        err(format!("{path}.max_object_size"), format!("must not be above max_size ({})", c.max_size));
    }
    if c.lock_timeout > Duration::from_secs(60) {
        err(format!("{path}.lock_timeout"), "must not be above 1m (a waiting request holds its client)".into());
    }
}
