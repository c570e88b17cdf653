//! The compiled config: everything a request needs, built once per load and swapped
//! atomically. A request holds the snapshot it started with until it finishes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use ipnet::IpNet;
use portico_config::template::{PathTemplate, Segment};

use crate::handlers::Handler;
use portico_config::{Config, ConfigError, ConfigErrors, Listener};

use crate::identity::{Consumers, IdentityHeaders};
use crate::observe::Metrics;
use crate::observe::histogram::Histogram;
use crate::observe::metrics::RouteRequests;
use crate::plugins::Chain;
use crate::plugins::jwt::JwtProvider;
use crate::plugins::rate_limit::{ConcurrencyLimit, RateLimit};
use crate::router::{Params, Router};
use crate::server::tls::ListenerTls;
use crate::upstream::Upstream;

/// Process-wide handles that compiled plugins use. Made once at start (from settings that
/// change only on restart) and kept across reloads.
#[derive(Debug, Default, Clone)]
pub struct Services {
    /// The shared revocation deny-list, when `redis` is configured.
    pub revocations: Option<Arc<crate::identity::revocation::Revocations>>,
    /// The shared Redis, when `redis` is configured (`store: redis` rate limits).
    pub redis: Option<Arc<crate::store::redis::RedisStore>>,
    /// Tenant settings in Redis, when `redis` is configured.
    pub tenants: Option<Arc<crate::identity::tenants::TenantStore>>,
    /// Cache purges from every instance, when `redis` is configured.
    pub cache_purges: Option<Arc<crate::cache::purge::Purges>>,
}

/// A compiled config.
#[derive(Debug)]
pub struct Snapshot {
    /// The config it was compiled from.
    pub config: Arc<Config>,
    /// The route table; its indices point into `routes`.
    pub router: Router,
    /// Compiled routes.
    pub routes: Vec<CompiledRoute>,
    /// Compiled upstreams by name.
    pub upstreams: HashMap<String, Arc<Upstream>>,
    /// The request-ID header.
    pub request_id_header: HeaderName,
    /// Whether a well-formed incoming request ID is kept.
    pub trust_request_id: bool,
    /// Peers whose forwarding headers are believed.
    pub trusted_proxies: Vec<IpNet>,
    /// `route` label value for requests that matched nothing.
    pub no_route: Arc<str>,
    /// Duration histogram for requests that matched nothing.
    pub no_route_duration: Histogram,
    /// Request counters for requests that matched nothing.
    pub no_route_requests: RouteRequests,
    /// JWT providers by name.
    pub jwt_providers: HashMap<String, Arc<JwtProvider>>,
    /// Consumers, by ID and by API key.
    pub consumers: Consumers,
    /// Identity headers: removed from client requests, set from the authenticated caller.
    pub identity: IdentityHeaders,
    /// The global plugins, for requests that match no route.
    pub global_plugins: Chain,
    /// Tenants and their settings.
    pub tenants: crate::identity::tenants::Tenants,
    /// The global `rate_limit` and `concurrency_limit`, shared by the routes that use them.
    pub global_limits: (Option<Arc<RateLimit>>, Option<Arc<ConcurrencyLimit>>),
    /// The global `cache`, whose store the routes that use it share.
    pub global_cache: Option<Arc<crate::cache::Cache>>,
    /// Compiled TLS settings of each TLS listener, by listener name.
    pub listener_tls: HashMap<String, Arc<ListenerTls>>,
}

/// A route ready to serve.
#[derive(Debug)]
pub struct CompiledRoute {
    /// Name (the `route` label).
    pub name: Arc<str>,
    /// What answers its requests: the proxy to an upstream, or a fixed response.
    pub handler: Handler,
    /// Weighted shares over several upstreams.
    pub split: Option<Split>,
    /// Traffic copied to a shadow upstream.
    pub mirror: Option<MirrorTo>,
    /// Hedged reads.
    pub hedge: Option<Box<crate::upstream::hedge::Hedging>>,
    /// Path rewriting.
    pub rewrite: Rewrite,
    /// Send the client's `Host` upstream.
    pub preserve_host: bool,
    /// The route's own `escaped_slashes`, overriding the listener's.
    pub escaped_slashes: Option<portico_config::EscapedSlashes>,
    /// Deadline for the upstream's response head, all tries included (the route's own;
    /// else each upstream's, see [`CompiledRoute::timeout_for`]).
    pub timeout_override: Option<Duration>,
    /// Time allowed for one try, when the route sets it.
    pub try_timeout_override: Option<Duration>,
    /// The route's in-flight limit, when configured.
    pub limit: Option<Arc<tokio::sync::Semaphore>>,
    /// How long a request waits for a slot under `limit`.
    pub queue_timeout: Duration,
    /// `gateway_queue_wait_seconds{scope="route",name}`.
    pub queue_wait: Histogram,
    /// `gateway_request_duration_seconds{route}`.
    pub duration: Histogram,
    /// `gateway_requests_total{route,..}`.
    pub requests: RouteRequests,
    /// The route's plugins (its own and the global ones).
    pub plugins: Chain,
    /// Feature flag to upstream (`flag_upstreams`).
    pub flag_upstreams: Vec<(Box<str>, Arc<Upstream>)>,
    /// The route's `deprecated`: lifecycle fields on its responses, 410 after its sunset.
    pub lifecycle: Option<Box<crate::lifecycle::Lifecycle>>,
}

/// A compiled `split`.
#[derive(Debug)]
pub struct Split {
    /// Upstreams with their cumulative weights.
    shares: Vec<(Arc<Upstream>, u64)>,
    total: u64,
    sticky: Option<portico_config::HashOn>,
}

/// A compiled `mirror`.
#[derive(Debug)]
pub struct MirrorTo {
    /// The shadow upstream.
    pub upstream: Arc<Upstream>,
    /// Share of requests copied, 0 to 1.
    pub fraction: f64,
    /// Largest body copied.
    pub max_body: u64,
    /// Copies in flight.
    pub slots: Arc<tokio::sync::Semaphore>,
    /// `gateway_mirror_skipped_total{route}`.
    pub skipped: prometheus_client::metrics::counter::Counter,
}

impl CompiledRoute {
    /// The route's upstream, when it forwards (with `split`: the first share with a weight).
    pub fn upstream(&self) -> Option<&Arc<Upstream>> {
        self.handler.upstream()
    }

    /// The request deadline toward `up`: the route's own, else the upstream's.
    pub fn timeout_for(&self, up: &Upstream) -> Duration {
        self.timeout_override.unwrap_or(up.request_timeout)
    }

    /// The per-try timeout toward `up` (zero: the whole deadline).
    pub fn try_timeout_for(&self, up: &Upstream) -> Duration {
        self.try_timeout_override.unwrap_or(up.definition.timeouts.per_try.get())
    }

    /// The upstream for this request: `primary` (the route's), or a share of its split (by
    /// the sticky key's hash when configured, else at random).
    pub fn choose_upstream<'a>(
        &'a self,
        primary: &'a Arc<Upstream>,
        key: &crate::upstream::PickKey<'_>,
    ) -> &'a Arc<Upstream> {
        let Some(split) = &self.split else { return primary };
        let point = match split.sticky.as_ref().and_then(|on| crate::upstream::balance::request_key(on, key)) {
            Some(k) => crate::upstream::balance::fnv1a(k.as_bytes()) % split.total,
            None => fastrand::u64(..split.total),
        };
        let i = split.shares.partition_point(|(_, c)| *c <= point);
        split.shares.get(i).map_or(primary, |(u, _)| u)
    }
}

/// Compiled path rewriting.
#[derive(Debug)]
pub enum Rewrite {
    /// Path sent as received.
    None,
    /// Remove this prefix.
    StripPrefix(Box<str>),
    /// Build the path from literal pieces and captured parameters.
    Template(Vec<Piece>),
}

/// A piece of a rewrite template.
#[derive(Debug)]
pub enum Piece {
    /// Literal text.
    Literal(Box<str>),
    /// A captured parameter.
    Param(Box<str>),
}

impl Rewrite {
    pub(crate) fn compile(route: &portico_config::Route) -> Rewrite {
        let Some(rw) = &route.rewrite else { return Rewrite::None };
        if let Some(p) = &rw.strip_prefix {
            return Rewrite::StripPrefix(p.trim_end_matches('/').into());
        }
        let Some(tpl) = rw.path.as_deref().and_then(|p| PathTemplate::parse(p).ok()) else {
            return Rewrite::None;
        };
        let mut pieces = Vec::new();
        let mut lit = String::new();
        for seg in tpl.segments() {
            lit.push('/');
            match seg {
                Segment::Literal(s) => lit.push_str(s),
                Segment::Param(n) | Segment::CatchAll(n) => {
                    pieces.push(Piece::Literal(std::mem::take(&mut lit).into()));
                    pieces.push(Piece::Param(n.as_str().into()));
                }
            }
        }
        if !lit.is_empty() {
            pieces.push(Piece::Literal(lit.into()));
        }
        Rewrite::Template(pieces)
    }

    /// The upstream path for `path`, or `None` when it is unchanged.
    pub fn apply(&self, path: &str, params: &Params<'_, '_>) -> Option<String> {
        match self {
            Rewrite::None => None,
            Rewrite::StripPrefix(prefix) => {
                let rest = path.strip_prefix(&**prefix)?;
                // Only on a segment boundary: `/api` strips `/api/x`, never `/apix`.
                if !(rest.is_empty() || rest.starts_with('/')) {
                    return None;
                }
                Some(if rest.starts_with('/') { rest.to_owned() } else { format!("/{rest}") })
            }
            Rewrite::Template(pieces) => {
                let mut out = String::with_capacity(path.len() + 16);
                for p in pieces {
                    match p {
                        Piece::Literal(s) => out.push_str(s),
                        Piece::Param(n) => out.push_str(params.get(n).unwrap_or("")),
                    }
                }
                if out.is_empty() {
                    out.push('/');
                }
                Some(out)
            }
        }
    }
}

/// Per-listener settings, captured by each connection when it is accepted.
#[derive(Clone, Debug)]
pub struct ListenerSettings {
    /// Listener name.
    pub name: Arc<str>,
    /// Largest request body.
    pub max_body: u64,
    /// Largest request head.
    pub max_header_bytes: usize,
    /// Most header fields in a request.
    pub max_header_fields: usize,
    /// Time allowed to receive a request head.
    pub header_timeout: Duration,
    /// Keep-alive idle timeout.
    pub idle_timeout: Duration,
    /// Accept h2c.
    pub http2: bool,
    /// HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// Connections at once.
    pub max_connections: usize,
    /// `redirect_https.port`: every request is redirected to HTTPS.
    pub redirect_https: Option<u16>,
    /// What a path with `%2F` or `%5C` gets, unless its route says otherwise.
    pub escaped_slashes: portico_config::EscapedSlashes,
    /// TLS termination, on a TLS listener.
    pub tls: Option<Arc<ListenerTls>>,
}

impl ListenerSettings {
    /// From the config.
    pub fn new(l: &Listener) -> Self {
        Self {
            name: l.name.as_str().into(),
            max_body: l.limits.max_body.get(),
            max_header_bytes: usize::try_from(l.limits.max_header_bytes.get()).unwrap_or(usize::MAX),
            max_header_fields: l.limits.max_header_fields as usize,
            header_timeout: l.limits.header_timeout.get(),
            idle_timeout: l.limits.idle_timeout.get(),
            http2: l.http2,
            max_concurrent_streams: l.limits.max_concurrent_streams,
            max_connections: l.limits.max_connections as usize,
            redirect_https: l.redirect_https.as_ref().map(|r| r.port),
            escaped_slashes: l.escaped_slashes,
            tls: None,
        }
    }

    /// With the compiled TLS settings of the listener.
    pub fn with_tls(self, tls: Option<Arc<ListenerTls>>) -> Self {
        Self { tls, ..self }
    }
}

impl Snapshot {
    /// Compiles a validated config without process services: what `portico validate`
    /// needs (revocation checks are left out). See [`Snapshot::compile_with`].
    pub fn compile(config: Config, prev: Option<&Snapshot>, metrics: &Arc<Metrics>) -> Result<Snapshot, ConfigErrors> {
        Self::compile_with(config, prev, metrics, None)
    }

    /// Compiles a validated config. Upstreams whose definition is unchanged since `prev`
    /// are reused, with their pools and balancing state. `services`: the process's shared
    /// handles (`None`: compile only to check, without them).
    pub fn compile_with(
        config: Config,
        prev: Option<&Snapshot>,
        metrics: &Arc<Metrics>,
        services: Option<&Services>,
    ) -> Result<Snapshot, ConfigErrors> {
        let router = Router::new(config.routes.iter().map(|r| &r.matcher))?;
        let mut listener_tls = HashMap::new();
        let mut client_cert_headers = vec![HeaderName::from_static(portico_config::DEFAULT_CLIENT_CERT_HEADER)];
        let mut tls_errors = Vec::new();
        for (i, l) in config.listeners.iter().enumerate() {
            let prev_tls = prev.and_then(|p| p.listener_tls.get(&l.name));
            match ListenerTls::compile(i, l, prev_tls) {
                Ok(Some(tls)) => {
                    if let Some(h) = &tls.forward_header
                        && !client_cert_headers.contains(h)
                    {
                        client_cert_headers.push(h.clone());
                    }
                    listener_tls.insert(l.name.clone(), tls);
                }
                Ok(None) => {}
                Err(e) => tls_errors.extend(e),
            }
        }
        let mut upstreams = HashMap::new();
        for (name, def) in &config.upstreams {
            // Reused when the definition is the same and the TLS files it names still hold
            // what was loaded (a certificate replaced in place is picked up by a reload).
            let reused = prev
                .and_then(|p| p.upstreams.get(name))
                .filter(|u| u.definition == *def && u.tls_files == crate::upstream::tls::files_fingerprint(def))
                .cloned();
            let up = match reused {
                Some(up) => up,
                None => match Upstream::new(name, def, metrics) {
                    Ok(up) => Arc::new(up),
                    Err(e) => {
                        tls_errors.push(e);
                        continue;
                    }
                },
            };
            upstreams.insert(name.clone(), up);
        }
        let mut jwt_providers = HashMap::new();
        for (name, def) in &config.jwt_providers {
            let reused = prev
                .and_then(|p| p.jwt_providers.get(name))
                .filter(|j| j.definition == *def && j.files == crate::plugins::jwt::files_fingerprint(def))
                .cloned();
            match reused {
                Some(j) => {
                    jwt_providers.insert(name.clone(), j);
                }
                None => {
                    let revocation = match (&def.revocation, services) {
                        (Some(r), Some(svc)) => match &svc.revocations {
                            Some(rv) => Some(rv.check_for(name, r, metrics)),
                            None => {
                                tls_errors.push(ConfigError::new(
                                    format!("jwt_providers.{name}.revocation"),
                                    "needs the top-level redis, which is read only at start: restart to turn it on",
                                ));
                                continue;
                            }
                        },
                        _ => None,
                    };
                    match JwtProvider::new(name, def, metrics) {
                        Ok(j) => {
                            jwt_providers.insert(name.clone(), Arc::new(j.with_revocation(revocation)));
                        }
                        Err(e) => tls_errors.push(e),
                    }
                }
            }
        }
        if !tls_errors.is_empty() {
            return Err(ConfigErrors(tls_errors));
        }
        let consumers = Consumers::compile(&config.consumers)?;
        let identity = IdentityHeaders::compile(
            &config.identity_headers,
            jwt_providers
                .values()
                .flat_map(|p| p.forwarded_headers().collect::<Vec<_>>())
                .chain(client_cert_headers.iter().cloned()),
        )?;
        let mut routes = Vec::with_capacity(config.routes.len());
        let mut errors = Vec::new();
        // Stateful limits: the global ones once, so every route that uses them shares the
        // counters; each compiled against the previous config's to carry counters over.
        let prev_global = prev.map(|p| &p.global_limits);
        let limits_ctx = LimitsCtx { plans: &config.plans, services, metrics };
        let global_limits = compile_limits(
            "plugins",
            "global",
            &config.plugins,
            &limits_ctx,
            prev_global.and_then(|g| g.0.as_deref()),
            prev_global.and_then(|g| g.1.as_deref()),
            &mut errors,
        );
        // The global `validate` contract once, shared by every route without its own.
        // Contracts by their settings: routes made by `routes-from-openapi` name one
        // document each, which is compiled once.
        let mut contracts = HashMap::new();
        let global_contract = compile_contract("plugins", &config.plugins, metrics, &mut contracts, &mut errors);
        // The global `cache` once: one store for every route that uses it, carried over a
        // reload that leaves its settings as they were.
        let prev_global_cache = prev.and_then(|p| p.global_cache.as_deref());
        let global_cache = config.plugins.iter().find_map(|p| match p {
            portico_config::Plugin::Cache(c) => {
                Some(Arc::new(crate::cache::Cache::new(c, "plugins", metrics, prev_global_cache, services)))
            }
            _ => None,
        });
        for (i, r) in config.routes.iter().enumerate() {
            // Validation allows one of publish, respond, aggregate and forwarding.
            let handler = match (&r.publish, &r.respond, &r.aggregate) {
                (Some(p), ..) => {
                    let store = services.and_then(|s| s.redis.clone());
                    Handler::Publish(Box::new(crate::handlers::publish::Publish::new(p, store)))
                }
                (None, Some(respond), _) => Handler::Respond(crate::handlers::respond::Respond::new(respond)),
                (None, None, Some(a)) => {
                    let find = |name: &str| upstreams.get(name).cloned();
                    match crate::handlers::aggregate::Aggregate::new(a, &find) {
                        Some(a) => Handler::Aggregate(Box::new(a)),
                        None => {
                            errors.push(ConfigError::new(format!("routes[{i}].aggregate"), "unknown upstream"));
                            continue;
                        }
                    }
                }
                (None, None, None) => {
                    let primary = r
                        .upstream
                        .clone()
                        .or_else(|| r.split.iter().find(|s| s.weight > 0).map(|s| s.upstream.clone()));
                    let Some(up) = primary.as_ref().and_then(|p| upstreams.get(p)) else {
                        errors.push(ConfigError::new(format!("routes[{i}].upstream"), "unknown upstream"));
                        continue;
                    };
                    Handler::Proxy(up.clone())
                }
            };
            // Only a route that forwards has answers to cache: a global `cache` passes the others by.
            let forwards = matches!(handler, Handler::Proxy(_) | Handler::Aggregate(_));
            let split = (!r.split.is_empty()).then(|| {
                let mut total = 0u64;
                let shares = r
                    .split
                    .iter()
                    .filter(|s| s.weight > 0)
                    .filter_map(|s| {
                        total += u64::from(s.weight);
                        Some((upstreams.get(&s.upstream)?.clone(), total))
                    })
                    .collect();
                Split { shares, total: total.max(1), sticky: r.sticky.clone() }
            });
            let mirror = r.mirror.as_ref().and_then(|m| {
                Some(MirrorTo {
                    upstream: upstreams.get(&m.upstream)?.clone(),
                    fraction: m.percent.fraction(),
                    max_body: m.max_body.get(),
                    slots: Arc::new(tokio::sync::Semaphore::new(m.max_in_flight as usize)),
                    skipped: metrics.mirror_skipped(&r.name),
                })
            });
            routes.push(CompiledRoute {
                name: r.name.as_str().into(),
                handler,
                split,
                mirror,
                hedge: r.hedge.as_ref().map(|h| Box::new(crate::upstream::hedge::Hedging::new(h))),
                rewrite: Rewrite::compile(r),
                preserve_host: r.preserve_host,
                escaped_slashes: r.escaped_slashes,
                lifecycle: r.deprecated.as_ref().map(|d| {
                    metrics.deprecated_init(&r.name);
                    Box::new(crate::lifecycle::Lifecycle::new(d))
                }),
                timeout_override: r.timeout.map(|t| t.get()),
                try_timeout_override: r.try_timeout.map(|t| t.get()),
                limit: (r.max_in_flight > 0).then(|| Arc::new(tokio::sync::Semaphore::new(r.max_in_flight as usize))),
                queue_timeout: r.queue_timeout.get(),
                queue_wait: metrics.queue_wait("route", &r.name),
                duration: metrics.route_duration(&r.name),
                requests: metrics.route_requests(&r.name),
                flag_upstreams: r
                    .flag_upstreams
                    .iter()
                    .filter_map(|(flag, up)| Some((flag.as_str().into(), upstreams.get(up)?.clone())))
                    .collect(),
                plugins: {
                    // The route's own limits, carried from the same route's own limits.
                    let prev_own = prev
                        .and_then(|p| p.routes.iter().find(|pr| *pr.name == *r.name))
                        .map(|pr| &pr.plugins)
                        .map(|c| {
                            (
                                own_of(c.rate_limit(), prev_global.and_then(|g| g.0.as_ref())),
                                own_of(c.concurrency_limit(), prev_global.and_then(|g| g.1.as_ref())),
                            )
                        });
                    let (own_rate, own_conc) = compile_limits(
                        &format!("routes[{i}].plugins"),
                        &r.name,
                        &r.plugins,
                        &limits_ctx,
                        prev_own.as_ref().and_then(|o| o.0.as_deref()),
                        prev_own.as_ref().and_then(|o| o.1.as_deref()),
                        &mut errors,
                    );
                    let has = |kind: &str| r.plugins.iter().any(|p| p.kind() == kind);
                    let rate = if has("rate_limit") { own_rate } else { global_limits.0.clone() };
                    let conc = if has("concurrency_limit") { own_conc } else { global_limits.1.clone() };
                    if let Some(rl) = &rate {
                        metrics.rate_limited_init(&r.name);
                        if rl.uses_redis() {
                            metrics.rate_limit_store_errors_init(&r.name);
                        }
                    }
                    let contract = match has("validate") {
                        true => {
                            let path = format!("routes[{i}].plugins");
                            compile_contract(&path, &r.plugins, metrics, &mut contracts, &mut errors)
                        }
                        false => global_contract.clone(),
                    };
                    let cache = match r.plugins.iter().find_map(|p| match p {
                        portico_config::Plugin::Cache(c) => Some(c),
                        _ => None,
                    }) {
                        Some(c) => {
                            // The same route's own store, when it had one.
                            let prev_own = prev
                                .and_then(|p| p.routes.iter().find(|pr| *pr.name == *r.name))
                                .and_then(|pr| pr.plugins.cache())
                                .map(|c| c.cache())
                                .filter(|c| {
                                    !prev.and_then(|p| p.global_cache.as_ref()).is_some_and(|g| Arc::ptr_eq(g, c))
                                });
                            Some(Arc::new(crate::cache::Cache::new(
                                c,
                                &r.name,
                                metrics,
                                prev_own.map(|c| &**c),
                                services,
                            )))
                        }
                        None if forwards => global_cache.clone(),
                        None => None,
                    };
                    let route_name: Arc<str> = r.name.as_str().into();
                    let cache = cache.map(|c| crate::cache::RouteCache::new(c, &route_name, metrics));
                    let built = crate::plugins::hooks::Built {
                        providers: &jwt_providers,
                        rate_limit: rate.as_ref(),
                        concurrency_limit: conc.as_ref(),
                        contract: contract.as_ref(),
                        cache: cache.as_ref(),
                    };
                    Chain::compile(&portico_config::effective(&config.plugins, &r.plugins), &built)
                },
            });
        }
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        // The default name as a static one: its clones, two per request, then count no
        // references.
        let request_id_header = if config.request_id.header.eq_ignore_ascii_case("x-request-id") {
            HeaderName::from_static("x-request-id")
        } else {
            HeaderName::from_bytes(config.request_id.header.as_bytes())
                .map_err(|_| ConfigErrors(vec![ConfigError::new("request_id.header", "invalid header name")]))?
        };
        let no_route: Arc<str> = "none".into();
        // Without limits: this chain answers outside any route, where nothing is counted (a
        // global limit counts on the routes, in their chains).
        let built = crate::plugins::hooks::Built {
            providers: &jwt_providers,
            rate_limit: None,
            concurrency_limit: None,
            contract: None,
            cache: None,
        };
        let global_plugins = Chain::compile(&config.plugins.iter().collect::<Vec<_>>(), &built);
        Ok(Snapshot {
            jwt_providers,
            consumers,
            identity,
            global_plugins,
            global_limits,
            global_cache,
            tenants: crate::identity::tenants::Tenants::compile(
                &config.tenants,
                services.and_then(|s| s.tenants.clone()),
            ),
            router,
            routes,
            upstreams,
            request_id_header,
            trust_request_id: config.request_id.trust_incoming,
            trusted_proxies: config.client_ip.trusted_proxies.clone(),
            no_route_duration: metrics.route_duration(&no_route),
            no_route_requests: metrics.route_requests(&no_route),
            no_route,
            listener_tls,
            config: Arc::new(config),
        })
    }
}

/// Loads the contract of a plugin list's `validate` (`path` names the list for errors).
fn compile_contract(
    path: &str,
    plugins: &[portico_config::Plugin],
    metrics: &Arc<Metrics>,
    compiled: &mut HashMap<String, Arc<crate::plugins::validate::Contract>>,
    errors: &mut Vec<ConfigError>,
) -> Option<Arc<crate::plugins::validate::Contract>> {
    let (i, v) = plugins.iter().enumerate().find_map(|(i, p)| match p {
        portico_config::Plugin::Validate(v) => Some((i, v)),
        _ => None,
    })?;
    let key = serde_json::to_string(v).unwrap_or_default();
    if let Some(c) = compiled.get(&key) {
        return Some(c.clone());
    }
    match crate::plugins::validate::Contract::compile(v, metrics) {
        Ok(c) => {
            let c = Arc::new(c);
            compiled.insert(key, c.clone());
            Some(c)
        }
        Err(problems) => {
            for (at, e) in problems {
                let field = if at.is_empty() { String::new() } else { format!(".{at}") };
                errors.push(ConfigError::new(format!("{path}[{i}].validate{field}"), e));
            }
            None
        }
    }
}

/// What the limits of every plugin list are compiled with.
struct LimitsCtx<'a> {
    plans: &'a std::collections::BTreeMap<String, portico_config::Plan>,
    services: Option<&'a Services>,
    metrics: &'a Arc<Metrics>,
}

/// A route's plugin instance when it is its own, not the global one it shares.
fn own_of<T>(route: Option<&Arc<T>>, global: Option<&Arc<T>>) -> Option<Arc<T>> {
    route.filter(|r| !global.is_some_and(|g| Arc::ptr_eq(r, g))).cloned()
}

/// Compiles the `rate_limit` and `concurrency_limit` of a plugin list (`path` names the
/// list for errors, `scope` its place in Redis keys: the route or `global`), reusing the
/// counters of `prev_rate` and `prev_conc`.
fn compile_limits(
    path: &str,
    scope: &str,
    plugins: &[portico_config::Plugin],
    ctx: &LimitsCtx<'_>,
    prev_rate: Option<&RateLimit>,
    prev_conc: Option<&ConcurrencyLimit>,
    errors: &mut Vec<ConfigError>,
) -> (Option<Arc<RateLimit>>, Option<Arc<ConcurrencyLimit>>) {
    let mut rate = None;
    let mut conc = None;
    for (j, p) in plugins.iter().enumerate() {
        match p {
            portico_config::Plugin::RateLimit(def) => {
                let path = format!("{path}[{j}].rate_limit");
                // Without services (compiled only to be checked), counted locally.
                let redis = match ctx.services {
                    Some(svc) if def.store == portico_config::LimitStore::Redis => match &svc.redis {
                        Some(r) => Some(r),
                        None => {
                            errors.push(ConfigError::new(
                                format!("{path}.store"),
                                "needs the top-level redis, which is read only at start: restart to turn it on",
                            ));
                            continue;
                        }
                    },
                    _ => None,
                };
                match RateLimit::new(&path, scope, def, ctx.plans, prev_rate, redis, ctx.metrics) {
                    Ok(r) => rate = Some(Arc::new(r)),
                    Err(e) => errors.push(e),
                }
            }
            portico_config::Plugin::ConcurrencyLimit(def) => {
                match ConcurrencyLimit::new(&format!("{path}[{j}].concurrency_limit"), def, prev_conc) {
                    Ok(c) => conc = Some(Arc::new(c)),
                    Err(e) => errors.push(e),
                }
            }
            _ => {}
        }
    }
    (rate, conc)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewrite(yaml: &str) -> Rewrite {
        let r: portico_config::Route = serde_saphyr::from_str(yaml).unwrap();
        Rewrite::compile(&r)
    }

    #[test]
    fn strip_prefix_keeps_a_leading_slash() {
        let rw = rewrite("{ name: r, upstream: u, match: { prefix: /api }, rewrite: { strip_prefix: /api } }");
        let p = Params::new();
        assert_eq!(rw.apply("/api/users/1", &p).as_deref(), Some("/users/1"));
        assert_eq!(rw.apply("/api", &p).as_deref(), Some("/"));
        assert_eq!(rw.apply("/apix", &p), None);
    }

    #[test]
    fn template_inserts_captured_params() {
        let rw = rewrite(
            "{ name: r, upstream: u, match: { path: '/u/{id}/{*rest}' }, rewrite: { path: '/v2/users/{id}/x/{rest}' } }",
        );
        let mut router = matchit::Router::new();
        router.insert("/u/{id}/{*rest}", ()).unwrap();
        let m = router.at("/u/42/a/b").unwrap();
        assert_eq!(rw.apply("/u/42/a/b", &m.params.into()).as_deref(), Some("/v2/users/42/x/a/b"));
    }
}
