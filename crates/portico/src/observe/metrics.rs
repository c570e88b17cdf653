//! Prometheus metrics. The names are a contract (docs/metrics.md).
//!
//! Label values are bounded by construction: route and upstream names come from config,
//! methods outside the standard set are reported as `other`, and status is a number.

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::histogram::Histogram;

/// Labels of `gateway_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Route name, or `none` when nothing matched.
    pub route: Arc<str>,
    /// Request method (`other` for non-standard ones).
    pub method: &'static str,
    /// Response status.
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeprecatedLabels {
    route: Arc<str>,
    consumer: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabel {
    upstream: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabel {
    operation: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendErrorLabels {
    upstream: Arc<str>,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AggregateCallLabels {
    route: Arc<str>,
    call: Arc<str>,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    route: Arc<str>,
    call: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabels {
    upstream: Arc<str>,
    target: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AuthFailureLabels {
    route: Arc<str>,
    status: u16,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChannelLabel {
    channel: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderLabels {
    provider: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderResultLabels {
    provider: Arc<str>,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RevocationLabels {
    provider: Arc<str>,
    result: &'static str,
    source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransitionLabels {
    upstream: Arc<str>,
    to: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    scope: &'static str,
    name: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    route: Arc<str>,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreLabel {
    store: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EvictionLabels {
    store: Arc<str>,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabel {
    listener: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CertificateLabels {
    listener: Arc<str>,
    name: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerResultLabels {
    listener: Arc<str>,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandshakeErrorLabels {
    listener: Arc<str>,
    reason: &'static str,
}

#[derive(Clone, Copy, Debug)]
struct Buckets(&'static [f64]);

impl MetricConstructor<Histogram> for Buckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(self.0)
    }
}

/// Request durations: 100 µs to 60 s.
/// The `consumer` label of a caller without a user ID.
static ANONYMOUS: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from("anonymous"));

const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Gateway overhead: 10 µs to 100 ms.
const OVERHEAD_BUCKETS: &[f64] =
    &[0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1];

/// Every metric the gateway exports. Lives for the whole process, across reloads.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: Family<RouteLabel, Histogram, Buckets>,
    backend_latency: Family<UpstreamLabel, Histogram, Buckets>,
    /// `gateway_overhead_seconds`: total time minus time waiting for the upstream.
    pub overhead: Histogram,
    /// `gateway_active_connections`.
    pub active_connections: Gauge,
    backend_errors: Family<BackendErrorLabels, Counter>,
    reloads: Family<ResultLabel, Counter>,
    /// `gateway_access_log_dropped_total`.
    pub access_log_dropped: Counter,
    connections_total: Family<ListenerLabel, Counter>,
    target_healthy: Family<TargetLabels, Gauge>,
    target_ejections: Family<TargetLabels, Counter>,
    breaker_state: Family<UpstreamLabel, Gauge>,
    breaker_transitions: Family<TransitionLabels, Counter>,
    queue_wait: Family<QueueLabels, Histogram, Buckets>,
    retries: Family<UpstreamLabel, Counter>,
    retries_exhausted: Family<UpstreamLabel, Counter>,
    hedges: Family<UpstreamLabel, Counter>,
    response_contract_violations: Family<OperationLabel, Counter>,
    hedge_wins: Family<UpstreamLabel, Counter>,
    mirror_skipped: Family<RouteLabel, Counter>,
    auth_failures: Family<AuthFailureLabels, Counter>,
    rate_limited: Family<RouteLabel, Counter>,
    client_aborts: Family<RouteLabel, Counter>,
    deprecated_requests: Family<DeprecatedLabels, Counter>,
    aggregate_calls: Family<AggregateCallLabels, Counter>,
    aggregate_call_duration: Family<CallLabels, Histogram, Buckets>,
    rate_limit_store_errors: Family<RouteLabel, Counter>,
    jwks_fetches: Family<ProviderResultLabels, Counter>,
    jwks_last_success: Family<ProviderLabels, Gauge>,
    revocation_checks: Family<RevocationLabels, Counter>,
    revocation_cache_clears: Family<KindLabel, Counter>,
    redis_subscribed: Family<ChannelLabel, Gauge>,
    /// `gateway_audit_log_dropped_total`.
    pub audit_log_dropped: Counter,
    tls_expiry: Family<CertificateLabels, Gauge>,
    tls_reloads: Family<ListenerResultLabels, Counter>,
    tls_handshake_errors: Family<HandshakeErrorLabels, Counter>,
    cache_lookups: Family<CacheLabels, Counter>,
    cache_coalesced: Family<RouteLabel, Counter>,
    cache_bytes: Family<StoreLabel, Gauge>,
    cache_entries: Family<StoreLabel, Gauge>,
    cache_evictions: Family<EvictionLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("gateway_requests", "Requests handled, by route, method and status", requests.clone());
        let duration = Family::new_with_constructor(Buckets(LATENCY_BUCKETS));
        registry.register(
            "gateway_request_duration_seconds",
            "Time from request head received to response head sent, by route",
            duration.clone(),
        );
        let backend_latency = Family::new_with_constructor(Buckets(LATENCY_BUCKETS));
        registry.register(
            "gateway_backend_latency_seconds",
            "Time from sending a request upstream to receiving its response head, by upstream",
            backend_latency.clone(),
        );
        let overhead = Histogram::new(OVERHEAD_BUCKETS);
        registry.register(
            "gateway_overhead_seconds",
            "Time the gateway itself adds: total minus upstream time",
            overhead.clone(),
        );
        let active_connections = Gauge::default();
        registry.register("gateway_active_connections", "Open client connections", active_connections.clone());
        let backend_errors = Family::<BackendErrorLabels, Counter>::default();
        registry.register(
            "gateway_backend_errors",
            "Failed upstream requests, by upstream and kind (connect, connect_timeout, timeout, bad_response, no_target, overloaded, circuit_open)",
            backend_errors.clone(),
        );
        let reloads = Family::<ResultLabel, Counter>::default();
        registry.register("gateway_config_reloads", "Config reloads, by result (success, error)", reloads.clone());
        let access_log_dropped = Counter::default();
        registry.register(
            "gateway_access_log_dropped",
            "Access-log lines dropped because the writer queue was full",
            access_log_dropped.clone(),
        );
        let connections_total = Family::<ListenerLabel, Counter>::default();
        registry.register("gateway_connections", "Client connections accepted, by listener", connections_total.clone());
        let target_healthy = Family::<TargetLabels, Gauge>::default();
        registry.register(
            "gateway_upstream_target_healthy",
            "1 while active health checks consider a target healthy, else 0",
            target_healthy.clone(),
        );
        let target_ejections = Family::<TargetLabels, Counter>::default();
        registry.register(
            "gateway_upstream_ejections",
            "Times passive outlier detection ejected a target",
            target_ejections.clone(),
        );
        let breaker_state = Family::<UpstreamLabel, Gauge>::default();
        registry.register(
            "gateway_circuit_breaker_state",
            "Circuit breaker state by upstream: 0 closed, 1 open, 2 half-open",
            breaker_state.clone(),
        );
        let breaker_transitions = Family::<TransitionLabels, Counter>::default();
        registry.register(
            "gateway_circuit_breaker_transitions",
            "Circuit breaker state changes, by upstream and new state (open, half_open, closed)",
            breaker_transitions.clone(),
        );
        let queue_wait = Family::new_with_constructor(Buckets(LATENCY_BUCKETS));
        registry.register(
            "gateway_queue_wait_seconds",
            "Time requests waited for a slot under max_in_flight, by scope (upstream, route) and name",
            queue_wait.clone(),
        );
        let retries = Family::<UpstreamLabel, Counter>::default();
        registry.register("gateway_upstream_retries", "Retries sent, by upstream", retries.clone());
        let retries_exhausted = Family::<UpstreamLabel, Counter>::default();
        registry.register(
            "gateway_upstream_retry_budget_exhausted",
            "Retries not sent because the retry budget was spent, by upstream",
            retries_exhausted.clone(),
        );
        let hedges = Family::<UpstreamLabel, Counter>::default();
        registry.register(
            "gateway_upstream_hedges",
            "Hedged tries sent (a read sent again while the first try had not answered), by upstream",
            hedges.clone(),
        );
        let hedge_wins = Family::<UpstreamLabel, Counter>::default();
        registry.register(
            "gateway_upstream_hedge_wins",
            "Answers that came from a hedged try rather than the first, by upstream",
            hedge_wins.clone(),
        );
        let response_contract_violations = Family::<OperationLabel, Counter>::default();
        registry.register(
            "gateway_response_contract_violations",
            "Upstream answers that broke the API contract's response schema (validate with responses: log), by operation",
            response_contract_violations.clone(),
        );
        let mirror_skipped = Family::<RouteLabel, Counter>::default();
        registry.register(
            "gateway_mirror_skipped",
            "Mirror copies not sent because the route's mirror.max_in_flight was reached",
            mirror_skipped.clone(),
        );
        let auth_failures = Family::<AuthFailureLabels, Counter>::default();
        registry.register(
            "gateway_auth_failures",
            "Requests refused by authentication (401) or authorization (403), or that could not be checked (503), by route, status and reason",
            auth_failures.clone(),
        );
        let rate_limited = Family::<RouteLabel, Counter>::default();
        registry.register(
            "gateway_rate_limit_exceeded",
            "Requests refused by a rate limit or a concurrency limit (429, or 503 when configured), by route",
            rate_limited.clone(),
        );
        let client_aborts = Family::<RouteLabel, Counter>::default();
        registry.register(
            "gateway_client_aborts",
            "Requests whose client closed the connection or reset the stream before its request body ended (logged with status 499), by route; never counted against an upstream",
            client_aborts.clone(),
        );
        let deprecated_requests = Family::<DeprecatedLabels, Counter>::default();
        registry.register(
            "gateway_deprecated_requests",
            "Requests to routes with `deprecated`, by route and consumer (the caller's user ID, or `anonymous`), the 410s after the sunset included: who still calls an old version",
            deprecated_requests.clone(),
        );
        let aggregate_calls = Family::<AggregateCallLabels, Counter>::default();
        registry.register(
            "gateway_aggregate_calls",
            "Calls of aggregate routes, by route, call and outcome (ok, or why it failed: timeout, unavailable, status, too_large, invalid_json, dependency_failed, missing_value, client_error)",
            aggregate_calls.clone(),
        );
        let aggregate_call_duration = Family::new_with_constructor(Buckets(LATENCY_BUCKETS));
        registry.register(
            "gateway_aggregate_call_duration_seconds",
            "Time from sending an aggregate route's call to having its whole body, by route and call (calls that were sent)",
            aggregate_call_duration.clone(),
        );
        let rate_limit_store_errors = Family::<RouteLabel, Counter>::default();
        registry.register(
            "gateway_rate_limit_store_errors",
            "Rate-limit decisions of store: redis limits that Redis did not make (an error, a timeout, or skipped just after one), decided as on_store_error says, by route",
            rate_limit_store_errors.clone(),
        );
        let jwks_fetches = Family::<ProviderResultLabels, Counter>::default();
        registry.register(
            "gateway_jwks_fetches",
            "JWKS fetches, by JWT provider and result (success, error)",
            jwks_fetches.clone(),
        );
        let jwks_last_success = Family::<ProviderLabels, Gauge>::default();
        registry.register(
            "gateway_jwks_last_success_timestamp_seconds",
            "Unix time of the last successful JWKS fetch, by JWT provider",
            jwks_last_success.clone(),
        );
        let revocation_checks = Family::<RevocationLabels, Counter>::default();
        registry.register(
            "gateway_revocation_checks",
            "JWT revocation checks, by provider, result (not_revoked, revoked, error) and source (redis, cache)",
            revocation_checks.clone(),
        );
        let revocation_cache_clears = Family::<KindLabel, Counter>::default();
        registry.register(
            "gateway_revocation_cache_clears",
            "Times a shard of the revocation cache was full of live answers and was cleared, by kind (jti, sub)",
            revocation_cache_clears.clone(),
        );
        let redis_subscribed = Family::<ChannelLabel, Gauge>::default();
        registry.register(
            "gateway_redis_subscribed",
            "1 while the subscription to a Redis notice channel is open, else 0, by channel (revocations, tenants)",
            redis_subscribed.clone(),
        );
        let audit_log_dropped = Counter::default();
        registry.register(
            "gateway_audit_log_dropped",
            "Audit log lines dropped because the queue was full",
            audit_log_dropped.clone(),
        );
        let tls_expiry = Family::<CertificateLabels, Gauge>::default();
        registry.register(
            "gateway_tls_certificate_expiry_seconds",
            "notAfter of each listener certificate, as Unix time in seconds, by listener and name (first subject alternative name, else common name)",
            tls_expiry.clone(),
        );
        let tls_reloads = Family::<ListenerResultLabels, Counter>::default();
        registry.register(
            "gateway_tls_reloads",
            "Listener certificates reloaded after their files changed on disk, by listener and result (success, error)",
            tls_reloads.clone(),
        );
        let tls_handshake_errors = Family::<HandshakeErrorLabels, Counter>::default();
        registry.register(
            "gateway_tls_handshake_errors",
            "TLS handshakes that failed, by listener and reason (timeout, error)",
            tls_handshake_errors.clone(),
        );
        // Pre-create the reload series so dashboards see zeros, not gaps.
        for result in ["success", "error"] {
            reloads.get_or_create(&ResultLabel { result }).get();
        }
        let cache_lookups = Family::<CacheLabels, Counter>::default();
        registry.register(
            "gateway_cache_lookups",
            "Requests on cached routes by what the cache did: hit, miss, stale (answered stale while refreshing or for a failed upstream), revalidated (a 304 renewed the entry) or bypass (not for the cache)",
            cache_lookups.clone(),
        );
        let cache_coalesced = Family::<RouteLabel, Counter>::default();
        registry.register(
            "gateway_cache_coalesced",
            "Cache misses that waited for another request's fetch of the same entry instead of fetching, by route",
            cache_coalesced.clone(),
        );
        let cache_bytes = Family::<StoreLabel, Gauge>::default();
        registry.register(
            "gateway_cache_bytes",
            "Memory taken by a cache store's entries (bodies and fields), by store",
            cache_bytes.clone(),
        );
        let cache_entries = Family::<StoreLabel, Gauge>::default();
        registry.register("gateway_cache_entries", "Entries in a cache store, by store", cache_entries.clone());
        let cache_evictions = Family::<EvictionLabels, Counter>::default();
        registry.register(
            "gateway_cache_evictions",
            "Entries removed from a cache store, by store and reason: size (the store was full), expired, purged",
            cache_evictions.clone(),
        );
        Self {
            cache_lookups,
            cache_coalesced,
            cache_bytes,
            cache_entries,
            cache_evictions,
            registry,
            requests,
            duration,
            backend_latency,
            overhead,
            active_connections,
            backend_errors,
            reloads,
            access_log_dropped,
            connections_total,
            target_healthy,
            target_ejections,
            breaker_state,
            breaker_transitions,
            queue_wait,
            retries,
            retries_exhausted,
            hedges,
            hedge_wins,
            response_contract_violations,
            mirror_skipped,
            auth_failures,
            rate_limited,
            client_aborts,
            deprecated_requests,
            aggregate_calls,
            aggregate_call_duration,
            rate_limit_store_errors,
            jwks_fetches,
            jwks_last_success,
            revocation_checks,
            revocation_cache_clears,
            redis_subscribed,
            audit_log_dropped,
            tls_expiry,
            tls_reloads,
            tls_handshake_errors,
        }
    }

    /// Sets the expiry gauge of a listener's certificate.
    pub fn tls_certificate_expiry(&self, listener: &Arc<str>, name: &Arc<str>, not_after: i64) {
        self.tls_expiry
            .get_or_create(&CertificateLabels { listener: listener.clone(), name: name.clone() })
            .set(not_after);
    }

    /// Drops the expiry series of a certificate that was replaced or removed.
    pub fn forget_tls_certificate(&self, listener: &Arc<str>, name: &Arc<str>) {
        self.tls_expiry.remove(&CertificateLabels { listener: listener.clone(), name: name.clone() });
    }

    /// Counts a reload of certificates from disk; `tls_listener_init` creates both series.
    pub fn tls_reload(&self, listener: &Arc<str>, ok: bool) {
        let result = if ok { "success" } else { "error" };
        self.tls_reloads.get_or_create(&ListenerResultLabels { listener: listener.clone(), result }).inc();
    }

    /// Creates a TLS listener's reload and handshake-error series at 0.
    pub fn tls_listener_init(&self, listener: &Arc<str>) {
        for result in ["success", "error"] {
            self.tls_reloads.get_or_create(&ListenerResultLabels { listener: listener.clone(), result }).get();
        }
        for reason in ["timeout", "error"] {
            self.tls_handshake_errors.get_or_create(&HandshakeErrorLabels { listener: listener.clone(), reason }).get();
        }
    }

    /// Counts a failed handshake (`reason`: `timeout` or `error`).
    pub fn tls_handshake_error(&self, listener: &Arc<str>, reason: &'static str) {
        self.tls_handshake_errors.get_or_create(&HandshakeErrorLabels { listener: listener.clone(), reason }).inc();
    }

    /// The breaker-state gauge of an upstream.
    pub fn breaker_state(&self, upstream: &str) -> Gauge {
        self.breaker_state.get_or_create_owned(&UpstreamLabel { upstream: upstream.into() })
    }

    /// The transition counters of an upstream's breaker: to closed, open, half-open.
    pub fn breaker_transitions(&self, upstream: &str) -> [Counter; 3] {
        ["closed", "open", "half_open"]
            .map(|to| self.breaker_transitions.get_or_create_owned(&TransitionLabels { upstream: upstream.into(), to }))
    }

    /// The queue-wait histogram of a concurrency limit (`scope` is `upstream` or `route`).
    pub fn queue_wait(&self, scope: &'static str, name: &str) -> Histogram {
        self.queue_wait.get_or_create_owned(&QueueLabels { scope, name: name.into() })
    }

    /// The counter of mirror copies skipped, of a route.
    pub fn mirror_skipped(&self, route: &str) -> Counter {
        self.mirror_skipped.get_or_create_owned(&RouteLabel { route: route.into() })
    }

    /// Counts a request refused by authentication or authorization.
    pub fn auth_failure(&self, route: &Arc<str>, status: u16, reason: &'static str) {
        self.auth_failures.get_or_create(&AuthFailureLabels { route: route.clone(), status, reason }).inc();
    }

    /// Creates a route's rate-limit series at 0.
    pub fn rate_limited_init(&self, route: &str) {
        self.rate_limited.get_or_create(&RouteLabel { route: route.into() }).get();
    }

    /// Creates the store-error series of a route whose rate limit uses Redis, at 0.
    pub fn rate_limit_store_errors_init(&self, route: &str) {
        self.rate_limit_store_errors.get_or_create(&RouteLabel { route: route.into() }).get();
    }

    /// Counts a rate-limit decision that Redis did not make. (Allocates the label: only on
    /// the error path.)
    pub fn rate_limit_store_error(&self, route: &str) {
        self.rate_limit_store_errors.get_or_create(&RouteLabel { route: route.into() }).inc();
    }

    /// Counts a request refused by a rate or concurrency limit.
    pub fn rate_limited(&self, route: &Arc<str>) {
        self.rate_limited.get_or_create(&RouteLabel { route: route.clone() }).inc();
    }

    /// Counts a request to a deprecated route by its caller's user ID (`anonymous`
    /// without one).
    pub fn deprecated_request(&self, route: &Arc<str>, user_id: Option<&Arc<str>>) {
        let consumer = user_id.unwrap_or(&ANONYMOUS).clone();
        self.deprecated_requests.get_or_create(&DeprecatedLabels { route: route.clone(), consumer }).inc();
    }

    /// Shows a deprecated route's anonymous series at 0 from the start.
    pub fn deprecated_init(&self, route: &str) {
        let labels = DeprecatedLabels { route: route.into(), consumer: ANONYMOUS.clone() };
        let _ = self.deprecated_requests.get_or_create(&labels);
    }

    /// Counts a request whose client left before its request body ended.
    pub fn client_aborted(&self, route: &Arc<str>) {
        self.client_aborts.get_or_create(&RouteLabel { route: route.clone() }).inc();
    }

    /// The fetch counters of a JWT provider's JWKS: success, error.
    pub fn jwks_fetches(&self, provider: &str) -> [Counter; 2] {
        ["success", "error"].map(|result| {
            self.jwks_fetches.get_or_create_owned(&ProviderResultLabels { provider: provider.into(), result })
        })
    }

    /// The revocation-check counters of a JWT provider.
    pub fn revocation_checks(&self, provider: &str) -> crate::identity::revocation::RevocationCounters {
        let c = |result, source| {
            self.revocation_checks.get_or_create_owned(&RevocationLabels { provider: provider.into(), result, source })
        };
        crate::identity::revocation::RevocationCounters {
            not_revoked: c("not_revoked", "redis"),
            revoked: c("revoked", "redis"),
            cached_not_revoked: c("not_revoked", "cache"),
            cached_revoked: c("revoked", "cache"),
            error: c("error", "redis"),
        }
    }

    /// The clear counter of a revocation cache (`jti` or `sub`).
    pub fn revocation_cache_clears(&self, kind: &'static str) -> Counter {
        self.revocation_cache_clears.get_or_create_owned(&KindLabel { kind })
    }

    /// The gauge of a Redis subscription (`revocations`, `tenants`).
    pub fn redis_subscribed(&self, channel: &'static str) -> Gauge {
        self.redis_subscribed.get_or_create_owned(&ChannelLabel { channel })
    }

    /// The last-success gauge of a JWT provider's JWKS.
    pub fn jwks_last_success(&self, provider: &str) -> Gauge {
        self.jwks_last_success.get_or_create_owned(&ProviderLabels { provider: provider.into() })
    }

    /// The retry counter of an upstream.
    pub fn retries(&self, upstream: &str) -> Counter {
        self.retries.get_or_create_owned(&UpstreamLabel { upstream: upstream.into() })
    }

    /// The counter of retries refused by the budget, of an upstream.
    pub fn retries_exhausted(&self, upstream: &str) -> Counter {
        self.retries_exhausted.get_or_create_owned(&UpstreamLabel { upstream: upstream.into() })
    }

    /// Counts an upstream answer that broke its operation's response schema.
    pub fn response_contract_violation(&self, operation: &str) {
        self.response_contract_violations.get_or_create(&OperationLabel { operation: operation.into() }).inc();
    }

    /// A route's cache counters.
    pub fn cache_counters(&self, route: &Arc<str>) -> crate::cache::Counters {
        let c = |result| self.cache_lookups.get_or_create_owned(&CacheLabels { route: route.clone(), result });
        crate::cache::Counters {
            hit: c("hit"),
            miss: c("miss"),
            stale: c("stale"),
            revalidated: c("revalidated"),
            bypass: c("bypass"),
            coalesced: self.cache_coalesced.get_or_create_owned(&RouteLabel { route: route.clone() }),
        }
    }

    /// A cache store's gauges and counters.
    pub fn cache_store(&self, store: &str) -> crate::cache::StoreMetrics {
        let store: Arc<str> = store.into();
        let evictions =
            |reason| self.cache_evictions.get_or_create_owned(&EvictionLabels { store: store.clone(), reason });
        crate::cache::StoreMetrics {
            bytes: self.cache_bytes.get_or_create_owned(&StoreLabel { store: store.clone() }),
            entries: self.cache_entries.get_or_create_owned(&StoreLabel { store: store.clone() }),
            evicted_size: evictions("size"),
            evicted_expired: evictions("expired"),
            purged: evictions("purged"),
        }
    }

    /// The counter of hedged tries, of an upstream.
    pub fn hedges(&self, upstream: &str) -> Counter {
        self.hedges.get_or_create_owned(&UpstreamLabel { upstream: upstream.into() })
    }

    /// The counter of answers won by a hedged try, of an upstream.
    pub fn hedge_wins(&self, upstream: &str) -> Counter {
        self.hedge_wins.get_or_create_owned(&UpstreamLabel { upstream: upstream.into() })
    }

    /// The health gauge of a target (fetched once per config load).
    pub fn target_healthy(&self, upstream: &str, target: &str) -> Gauge {
        self.target_healthy.get_or_create_owned(&TargetLabels { upstream: upstream.into(), target: target.into() })
    }

    /// Drops the series of a target that service discovery removed.
    pub fn forget_target(&self, upstream: &str, target: &str) {
        let labels = TargetLabels { upstream: upstream.into(), target: target.into() };
        self.target_healthy.remove(&labels);
        self.target_ejections.remove(&labels);
    }

    /// The ejection counter of a target (fetched once per config load).
    pub fn target_ejections(&self, upstream: &str, target: &str) -> Counter {
        self.target_ejections.get_or_create_owned(&TargetLabels { upstream: upstream.into(), target: target.into() })
    }

    /// The request counters of a route (made once per config load).
    pub fn route_requests(&self, route: &str) -> RouteRequests {
        RouteRequests { route: route.into(), family: self.requests.clone(), seen: Default::default() }
    }

    /// The duration histogram of a route (fetched once per config load).
    pub fn route_duration(&self, route: &str) -> Histogram {
        self.duration.get_or_create_owned(&RouteLabel { route: route.into() })
    }

    /// The latency histogram of an upstream (fetched once per config load).
    pub fn backend_latency(&self, upstream: &str) -> Histogram {
        self.backend_latency.get_or_create_owned(&UpstreamLabel { upstream: upstream.into() })
    }

    /// Counts a call of an aggregate route, and its time when it was sent.
    pub fn aggregate_call(&self, route: &Arc<str>, call: &Arc<str>, outcome: &'static str, took: Option<Duration>) {
        let labels = AggregateCallLabels { route: route.clone(), call: call.clone(), outcome };
        self.aggregate_calls.get_or_create(&labels).inc();
        if let Some(took) = took {
            self.aggregate_call_duration
                .get_or_create(&CallLabels { route: route.clone(), call: call.clone() })
                .observe(took);
        }
    }

    /// Counts an upstream failure.
    pub fn backend_error(&self, upstream: &Arc<str>, kind: &'static str) {
        self.backend_errors.get_or_create(&BackendErrorLabels { upstream: upstream.clone(), kind }).inc();
    }

    /// Counts a reload attempt.
    pub fn reload(&self, ok: bool) {
        let result = if ok { "success" } else { "error" };
        self.reloads.get_or_create(&ResultLabel { result }).inc();
    }

    /// Counts an accepted connection.
    pub fn connection_accepted(&self, listener: &Arc<str>) {
        self.connections_total.get_or_create(&ListenerLabel { listener: listener.clone() }).inc();
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// `gateway_requests_total` of one route, with the counters it has used at hand: the
/// family's own lookup hashes all the labels (SipHash) under its lock on every request.
#[derive(Debug)]
pub struct RouteRequests {
    route: Arc<str>,
    family: Family<RequestLabels, Counter>,
    /// (method index << 16 | status, counter) for the combinations seen, up to `SEEN_MAX`.
    seen: parking_lot::RwLock<Vec<(u32, Counter)>>,
}

/// Method and status pairs kept per route; rarer ones go through the family's lookup.
const SEEN_MAX: usize = 32;

impl RouteRequests {
    /// Counts a finished request.
    pub fn count(&self, method: &Method, status: u16) {
        let (index, label) = method_index_label(method);
        let key = u32::from(index) << 16 | u32::from(status);
        if let Some((_, c)) = self.seen.read().iter().find(|(k, _)| *k == key) {
            c.inc();
            return;
        }
        let c = self.family.get_or_create_owned(&RequestLabels { route: self.route.clone(), method: label, status });
        c.inc();
        let mut seen = self.seen.write();
        if seen.len() < SEEN_MAX && !seen.iter().any(|(k, _)| *k == key) {
            seen.push((key, c));
        }
    }
}

/// A bounded label for a method.
pub fn method_label(m: &Method) -> &'static str {
    method_index_label(m).1
}

/// A method's label and its place in the list of labels.
fn method_index_label(m: &Method) -> (u8, &'static str) {
    match *m {
        Method::GET => (0, "GET"),
        Method::POST => (1, "POST"),
        Method::PUT => (2, "PUT"),
        Method::DELETE => (3, "DELETE"),
        Method::PATCH => (4, "PATCH"),
        Method::HEAD => (5, "HEAD"),
        Method::OPTIONS => (6, "OPTIONS"),
        Method::CONNECT => (7, "CONNECT"),
        Method::TRACE => (8, "TRACE"),
        _ => (9, "other"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line_value(text: &str, prefix: &str) -> Option<u64> {
        text.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }

    #[test]
    fn route_counters_count_every_pair_also_beyond_the_kept_ones() {
        let m = Metrics::new();
        let r = m.route_requests("users");
        // More distinct pairs than are kept at hand, each counted a different number of times.
        for status in 200..(200 + SEEN_MAX as u16 + 8) {
            for _ in 0..(status - 199) {
                r.count(&Method::GET, status);
            }
        }
        r.count(&Method::from_bytes(b"PURGE").unwrap(), 204);
        r.count(&Method::DELETE, 204);
        // A second handle on the same route (a reloaded config) adds to the same series.
        m.route_requests("users").count(&Method::DELETE, 204);
        let text = m.encode();
        for status in 200..(200 + SEEN_MAX as u16 + 8) {
            let prefix = format!("gateway_requests_total{{route=\"users\",method=\"GET\",status=\"{status}\"}}");
            assert_eq!(line_value(&text, &prefix), Some(u64::from(status - 199)), "{prefix}");
        }
        let other = "gateway_requests_total{route=\"users\",method=\"other\",status=\"204\"}";
        assert_eq!(line_value(&text, other), Some(1));
        let delete = "gateway_requests_total{route=\"users\",method=\"DELETE\",status=\"204\"}";
        assert_eq!(line_value(&text, delete), Some(2));
    }
}
