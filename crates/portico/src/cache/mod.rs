//! The response cache (`cache` plugin): answers `GET` and `HEAD` from stored upstream
//! responses as RFC 9111 allows, one upstream fetch for many concurrent misses, stale
//! answers while refreshing or when the upstream fails.
//!
//! The cache sits around the handler, after the access phase (so the caller and tenant are
//! known and in the key) and before the request hooks: [`RouteCache::lookup`] either
//! answers (a hit; the handler does not run) or gives a [`Ticket`], which readies the
//! request for the upstream ([`Ticket::prepare`]) and, given the handler's answer, stores
//! it as it streams to the client ([`Ticket::complete`]). The response phase runs on every
//! answer, cached or not, so transforms and security headers apply to hits as well.
//!
//! What a stored answer can be reached by is the key: the route, scheme, host, path, the
//! query (parameters sorted, filtered by `query`), the `key_headers`, and unless `shared`
//! the tenant and the caller; then the fields the answer's `Vary` names. Headers some
//! frameworks read in place of the URL or method (`X-Original-URL`, `X-HTTP-Method-
//! Override`, ...) are taken out of requests on a cached route, so that no unkeyed header
//! can change a stored answer.

pub mod purge;
pub mod rfc;
pub mod store;
pub mod tier;

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use portico_config::cache::{Cache as Settings, Credentialed, RequestCacheControl};
use prometheus_client::metrics::counter::Counter;

use crate::body::{Body, Tap, Tapped};
use crate::error::{ErrorKind, GatewayError, Side};
use crate::identity::Identity;
use rfc::{RequestDirectives, ResponseDirectives};
pub use store::{Entry, Flight, Leader, Store, StoreMetrics};

/// `Cache-Status` (RFC 9211).
pub static CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// Request fields some frameworks take in place of the URL, host, scheme or method. None
/// is part of the key, so on a cached route none reaches the upstream (unless named in
/// `key_headers`): one client's copy could otherwise change the answer stored for all.
static UNKEYED: [HeaderName; 11] = [
    HeaderName::from_static("x-original-url"),
    HeaderName::from_static("x-rewrite-url"),
    HeaderName::from_static("x-http-method-override"),
    HeaderName::from_static("x-http-method"),
    HeaderName::from_static("x-method-override"),
    HeaderName::from_static("x-forwarded-scheme"),
    HeaderName::from_static("x-forwarded-server"),
    HeaderName::from_static("x-forwarded-port"),
    HeaderName::from_static("x-forwarded-prefix"),
    HeaderName::from_static("x-forwarded-ssl"),
    HeaderName::from_static("x-host"),
];

static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Response fields that are not stored (hop-by-hop, or worked out on every answer).
static NOT_STORED: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("proxy-connection"),
    header::AGE,
];

/// A compiled `cache` plugin: its settings and its store (one for every route of a global
/// plugin, kept over reloads while the settings stay the same).
#[derive(Debug)]
pub struct Cache {
    settings: Settings,
    store: Arc<Store>,
    /// The shared tier (`store: redis`).
    tier: Option<Arc<tier::Tier>>,
    key_headers: Box<[HeaderName]>,
    surrogate: HeaderName,
}

impl Cache {
    /// Compiles validated settings, taking `prev`'s store when its settings are the same.
    /// `services` has the shared Redis, for `store: redis`.
    pub fn new(
        settings: &Settings,
        name: &str,
        metrics: &crate::observe::Metrics,
        prev: Option<&Cache>,
        services: Option<&crate::compile::Services>,
    ) -> Self {
        let store = match prev {
            Some(p) if p.settings == *settings => p.store.clone(),
            _ => Store::new(settings.max_size.get(), metrics.cache_store(name)),
        };
        let tier = match (settings.store, services.and_then(|s| s.redis.as_ref())) {
            (portico_config::cache::CacheStore::Redis, Some(redis)) => Some(Arc::new(tier::Tier::new(
                redis.clone(),
                services.and_then(|s| s.cache_purges.clone()),
                name,
                settings.max_object_size.get(),
            ))),
            _ => None,
        };
        Self {
            store,
            tier,
            key_headers: settings
                .key_headers
                .iter()
                .filter_map(|h| HeaderName::from_bytes(h.as_bytes()).ok())
                .collect(),
            surrogate: HeaderName::from_bytes(settings.surrogate_key_header.as_bytes())
                .unwrap_or(HeaderName::from_static("surrogate-key")),
            settings: settings.clone(),
        }
    }

    /// The store.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The shared tier, with `store: redis`.
    pub fn tier(&self) -> Option<&Arc<tier::Tier>> {
        self.tier.as_ref()
    }
}

/// A route's counters of what its cache did.
#[derive(Debug, Clone)]
pub struct Counters {
    /// Answered from a fresh entry.
    pub hit: Counter,
    /// Answered by the upstream, no usable entry.
    pub miss: Counter,
    /// Answered from a stale entry (while refreshing, or the upstream failed).
    pub stale: Counter,
    /// A stale entry the upstream confirmed (304) and that answered.
    pub revalidated: Counter,
    /// Not for the cache (method, credentials, a client's `no-store` ...).
    pub bypass: Counter,
    /// Waited for another request's fetch instead of fetching.
    pub coalesced: Counter,
}

/// The cache as one route uses it: the compiled plugin and the route's counters.
#[derive(Debug, Clone)]
pub struct RouteCache {
    cache: Arc<Cache>,
    route: Arc<str>,
    counters: Arc<Counters>,
}

impl crate::plugins::hooks::Hooks for RouteCache {
    fn kind(&self) -> &'static str {
        "cache"
    }

    /// None: the pipeline calls the cache around the handler ([`RouteCache::lookup`]).
    fn phases(&self) -> crate::plugins::hooks::Phases {
        crate::plugins::hooks::Phases::default()
    }
}

/// Who and where a request comes from, as far as the key needs.
#[derive(Debug, Clone, Copy)]
pub struct Who<'a> {
    /// The request's host, with its port when it had one.
    pub host: &'a str,
    /// Whether the client's connection is TLS.
    pub tls: bool,
    /// The authenticated caller.
    pub identity: Option<&'a Identity>,
    /// The request's tenant.
    pub tenant: Option<&'a str>,
    /// Whether the peer is a trusted proxy (whose `X-Forwarded-Host`/`-Proto` go upstream).
    pub peer_trusted: bool,
    /// Whether the route's handler can refresh an entry in the background (a proxy): else
    /// a stale entry is fetched again in the foreground.
    pub refreshes: bool,
    /// The identity headers the gateway sets for the caller (roles, plan, forwarded
    /// claims): their values are part of a caller's key, since the upstream sees them.
    pub identity_fields: &'a [HeaderName],
}

/// What the cache decided for a request.
#[derive(Debug)]
pub struct Step {
    /// The answer, when the cache has one (a hit, a stale entry, a shared error).
    pub answer: Option<Result<Response<Body>, GatewayError>>,
    /// The fetch to make: in place of an answer, or (with one: a stale answer while
    /// refreshing) in the background.
    pub ticket: Option<Ticket>,
    /// The answer's `Cache-Status` (a ticket sets its own when it completes).
    pub status: HeaderValue,
}

/// Whether a stored entry may answer a request now.
enum Use {
    /// Fresh (or stale within the client's `max-stale`): answer; the `ttl` to report.
    Answer(i64),
    /// Stale within `stale-while-revalidate`: answer, and refresh in the background.
    Refresh,
    /// Must be validated with (or fetched again from) the upstream.
    Validate,
}

impl RouteCache {
    /// The cache as `route` uses it.
    pub fn new(cache: Arc<Cache>, route: &Arc<str>, metrics: &crate::observe::Metrics) -> Self {
        Self { counters: Arc::new(metrics.cache_counters(route)), cache, route: route.clone() }
    }

    /// The compiled plugin.
    pub fn cache(&self) -> &Arc<Cache> {
        &self.cache
    }

    fn settings(&self) -> &Settings {
        &self.cache.settings
    }

    /// Looks the request up: an answer, a fetch to make, or both. Waits (up to
    /// `lock_timeout`) while another request fetches the same entry.
    pub async fn lookup(&self, req: &Request<Body>, who: &Who<'_>) -> Step {
        let headers = req.headers();
        let head = req.method() == Method::HEAD;
        if req.method() != Method::GET && !head {
            return self.bypass("method", None);
        }
        if headers.contains_key(header::UPGRADE) || has_body(req) {
            return self.bypass("request", Some("body or upgrade"));
        }
        let s = self.settings();
        let per_caller = !s.shared && who.identity.is_some();
        let authorization = headers.contains_key(header::AUTHORIZATION);
        if !per_caller
            && s.credentialed == Credentialed::Bypass
            && (authorization || headers.contains_key(header::COOKIE))
        {
            return self.bypass("request", Some("credentials"));
        }
        let directives = match s.request_cache_control {
            RequestCacheControl::Honor => RequestDirectives::of(headers),
            RequestCacheControl::Ignore => None,
        };
        let key: Arc<str> = self.key(req, who).into();
        let store = &self.cache.store;
        let deadline = tokio::time::Instant::now() + s.lock_timeout.get();
        let mut collapsed = false;
        loop {
            let now = SystemTime::now();
            let mut slot = store.get(&key);
            // Not in memory: the shared tier, where another instance may have stored it.
            if slot.is_none()
                && let Some(tier) = &self.cache.tier
                && let Some(entries) = Box::pin(tier.get(&key)).await
            {
                slot = Some(store.insert_all(key.clone(), entries));
            }
            let found = slot.as_ref().and_then(|s| s.variants.iter().find(|e| e.matches(headers)).cloned());
            let fwd = match (&slot, &found) {
                (None, _) => "uri-miss",
                (Some(_), None) => "vary-miss",
                (Some(_), Some(_)) => "stale",
            };
            if let Some(e) = &found {
                let usable = match usable(e, directives.as_ref(), now) {
                    Use::Refresh if !who.refreshes => Use::Validate,
                    other => other,
                };
                match usable {
                    Use::Answer(ttl) => {
                        self.counters.hit.inc();
                        let status =
                            status_value(&format!("hit; ttl={ttl}{}", if collapsed { "; collapsed" } else { "" }));
                        return Step { answer: Some(Ok(answer(e, headers, head, now))), ticket: None, status };
                    }
                    Use::Refresh => {
                        self.counters.stale.inc();
                        let ttl = ttl_of(e, now);
                        let status = status_value(&format!("hit; ttl={ttl}; detail=stale-while-revalidate"));
                        // One refresh at a time: if a fetch is under way, it will do. A HEAD
                        // does not refresh (only a GET's answer fills the entry).
                        let lead = if head { None } else { store.lead(&key, s.lock_timeout.get()).ok() };
                        let ticket = match lead {
                            Some(leader) => {
                                let mut t = self.ticket(key.clone(), req, who, directives.as_ref(), "stale");
                                t.leader = Some(leader);
                                t.stale = Some(e.clone());
                                t.background = true;
                                Some(t)
                            }
                            None => None,
                        };
                        return Step { answer: Some(Ok(answer(e, headers, head, now))), ticket, status };
                    }
                    Use::Validate => {}
                }
            }
            if directives.as_ref().is_some_and(|d| d.only_if_cached) {
                self.counters.miss.inc();
                let status = status_value(&format!("fwd={fwd}; detail=only-if-cached"));
                return Step { answer: Some(Err(GatewayError::new(ErrorKind::NotCached))), ticket: None, status };
            }
            let fwd = if directives.as_ref().is_some_and(|d| d.no_cache || d.max_age.is_some()) && found.is_some() {
                "request"
            } else {
                fwd
            };
            let mut ticket = self.ticket(key.clone(), req, who, directives.as_ref(), fwd);
            ticket.stale = found.clone();
            ticket.collapsed = collapsed;
            // A HEAD is answered by the upstream as it is; only a GET fills the entry.
            if head || s.lock_timeout.get().is_zero() {
                ticket.store &= !head;
                return Step { answer: None, ticket: Some(ticket), status: HeaderValue::from_static("Portico") };
            }
            let mut rx = match store.lead(&key, s.lock_timeout.get()) {
                Ok(leader) => {
                    ticket.leader = Some(leader);
                    return Step { answer: None, ticket: Some(ticket), status: HeaderValue::from_static("Portico") };
                }
                Err(rx) => rx,
            };
            if !collapsed {
                collapsed = true;
                self.counters.coalesced.inc();
            }
            let flight = tokio::time::timeout_at(deadline, rx.wait_for(|f| !matches!(f, Flight::Pending)))
                .await
                .map(|r| r.map(|f| f.clone()));
            match flight {
                // Waited long enough: fetch without waiting for anyone.
                Err(_) | Ok(Ok(Flight::NotStored)) => {
                    return Step { answer: None, ticket: Some(ticket), status: HeaderValue::from_static("Portico") };
                }
                Ok(Ok(Flight::Failed(e))) => {
                    let e = &e;
                    let now = SystemTime::now();
                    if let Some(stale) = found.as_ref().filter(|e| serves_on_error(e, now)) {
                        self.counters.stale.inc();
                        let status = stale_status(stale, e.status().as_u16(), now);
                        return Step { answer: Some(Ok(answer(stale, headers, head, now))), ticket: None, status };
                    }
                    self.counters.miss.inc();
                    let status = status_value(&format!("fwd={fwd}; fwd-status={}; collapsed", e.status().as_u16()));
                    return Step { answer: Some(Err(e.clone())), ticket: None, status };
                }
                // Stored (look again), abandoned (one of the waiters fetches), or the
                // sender gone (as abandoned).
                _ => continue,
            }
        }
    }

    fn bypass(&self, fwd: &str, detail: Option<&str>) -> Step {
        self.counters.bypass.inc();
        let status = match detail {
            Some(d) => status_value(&format!("fwd={fwd}; detail={d}")),
            None => status_value(&format!("fwd={fwd}")),
        };
        Step { answer: None, ticket: None, status }
    }

    fn ticket(
        &self,
        key: Arc<str>,
        req: &Request<Body>,
        who: &Who<'_>,
        directives: Option<&RequestDirectives>,
        fwd: &'static str,
    ) -> Ticket {
        Ticket {
            cache: self.clone(),
            key,
            store: !directives.is_some_and(|d| d.no_store),
            leader: None,
            stale: None,
            fwd,
            collapsed: false,
            background: false,
            requested: SystemTime::now(),
            request: HeaderMap::new(),
            conditional: HeaderMap::new(),
            validated: false,
            per_caller: !self.settings().shared && who.identity.is_some(),
            authorization: req.headers().contains_key(header::AUTHORIZATION),
            path: format!("{}{}", who.host.to_ascii_lowercase(), req.uri().path()).into(),
            head: req.method() == Method::HEAD,
        }
    }

    /// The request's key: every part length-prefixed, so that no value (a token's
    /// subject, a header) can forge the boundary to the next.
    fn key(&self, req: &Request<Body>, who: &Who<'_>) -> String {
        let s = self.settings();
        let mut k = String::with_capacity(96 + req.uri().path().len());
        let mut part = |v: &str| {
            let _ = write!(k, "{}:", v.len());
            k.push_str(v);
        };
        // A field's bytes as text: visible ASCII as it is, anything else (and `%`) as
        // `%XX`, so that two values are one part only when they are the same bytes.
        let bytes = |v: Option<&HeaderValue>| -> String {
            let mut out = String::new();
            for &b in v.map_or(&[][..], HeaderValue::as_bytes) {
                if b.is_ascii_graphic() && b != b'%' || b == b' ' {
                    out.push(char::from(b));
                } else {
                    let _ = write!(out, "%{b:02X}");
                }
            }
            out
        };
        part(&self.route);
        part(if who.tls { "https" } else { "http" });
        part(&who.host.to_ascii_lowercase());
        part(req.uri().path());
        part(&sorted_query(req.uri().query().unwrap_or(""), &s.query.include, &s.query.exclude));
        if !s.shared {
            part(who.tenant.unwrap_or(""));
            match who.identity {
                Some(id) => {
                    part(id.method);
                    part(&id.user_id);
                    // What else the upstream learns of the caller (two tokens of one
                    // subject may carry other roles or claims).
                    for name in who.identity_fields {
                        part(&bytes(store::joined(req.headers(), name).as_ref()));
                    }
                }
                None => part(""),
            }
        }
        let value = |name: &HeaderName| store::joined(req.headers(), name);
        for name in &*self.cache.key_headers {
            part(&bytes(value(name).as_ref()));
        }
        if who.peer_trusted {
            for name in [&X_FORWARDED_HOST, &X_FORWARDED_PROTO] {
                part(&bytes(value(name).as_ref()));
            }
        }
        k
    }
}

/// Whether the request comes with a body (a `GET` with one is not cached).
fn has_body(req: &Request<Body>) -> bool {
    let h = req.headers();
    h.contains_key(header::TRANSFER_ENCODING)
        || h.get(header::CONTENT_LENGTH).is_some_and(|v| v.as_bytes() != b"0")
        || !http_body::Body::is_end_stream(req.body())
}

/// The query's parameters sorted by name (repeated ones in their order), without the ones
/// left out of the key. Names are compared percent-decoded (`i%64` is `id`). A query with
/// `;` keeps every parameter: some servers split on it too, and a parameter hidden in an
/// excluded one (`utm_source=x;id=5`) must not leave the key.
fn sorted_query(query: &str, include: &[String], exclude: &[String]) -> String {
    let filtered = (!include.is_empty() || !exclude.is_empty()) && !query.contains(';');
    let keyed = |p: &&str| {
        if !filtered {
            return true;
        }
        let raw = p.split_once('=').map_or(*p, |(n, _)| n);
        let name = percent_encoding::percent_decode_str(raw).decode_utf8_lossy();
        (include.is_empty() || include.iter().any(|i| *i == name)) && !exclude.iter().any(|e| *e == name)
    };
    let mut params: Vec<&str> = query.split('&').filter(|p| !p.is_empty()).filter(keyed).collect();
    params.sort_by_key(|p| p.split_once('=').map_or(*p, |(n, _)| n));
    params.join("&")
}

/// Whether `e` may answer now, given the client's directives.
fn usable(e: &Entry, d: Option<&RequestDirectives>, now: SystemTime) -> Use {
    let fresh = e.freshness(now);
    if let Some(d) = d {
        if d.no_cache {
            return Use::Validate;
        }
        if d.max_age.is_some_and(|max| e.age(now) > Duration::from_secs(max)) {
            return Use::Validate;
        }
        if let (Some(min), Ok(left)) = (d.min_fresh, fresh)
            && left < Duration::from_secs(min)
        {
            return Use::Validate;
        }
        if let (Some(max), Err(by)) = (d.max_stale, fresh)
            && !e.revalidate
            && by <= Duration::from_secs(max)
        {
            return Use::Answer(ttl_of(e, now));
        }
    }
    match fresh {
        Ok(left) => Use::Answer(i64::try_from(left.as_secs()).unwrap_or(i64::MAX)),
        Err(by) if !e.revalidate && by <= e.stale_while_revalidate => Use::Refresh,
        Err(_) => Use::Validate,
    }
}

/// Whether `e` may answer when the upstream fails.
fn serves_on_error(e: &Entry, now: SystemTime) -> bool {
    match e.freshness(now) {
        Ok(_) => true,
        Err(by) => !e.revalidate && by <= e.stale_if_error,
    }
}

/// The entry's remaining freshness in whole seconds, negative once stale (RFC 9211's `ttl`).
fn ttl_of(e: &Entry, now: SystemTime) -> i64 {
    match e.freshness(now) {
        Ok(left) => i64::try_from(left.as_secs()).unwrap_or(i64::MAX),
        Err(by) => -i64::try_from(by.as_secs()).unwrap_or(i64::MAX),
    }
}

fn status_value(params: &str) -> HeaderValue {
    HeaderValue::try_from(format!("Portico; {params}")).unwrap_or(HeaderValue::from_static("Portico"))
}

fn stale_status(e: &Entry, fwd_status: u16, now: SystemTime) -> HeaderValue {
    status_value(&format!("fwd=stale; fwd-status={fwd_status}; ttl={}; detail=stale-if-error", ttl_of(e, now)))
}

/// The answer from an entry: 304 when the client's conditional request matches it, else
/// the whole entry (without its body for `HEAD`), with its `Age`.
fn answer(e: &Entry, request: &HeaderMap, head: bool, now: SystemTime) -> Response<Body> {
    let age = HeaderValue::from(e.age(now).as_secs());
    let conditional = request.contains_key(header::IF_NONE_MATCH) || request.contains_key(header::IF_MODIFIED_SINCE);
    if conditional && e.status == StatusCode::OK && rfc::not_modified(request, e.etag.as_ref(), e.last_modified) {
        let mut res = Response::new(Body::Empty);
        *res.status_mut() = StatusCode::NOT_MODIFIED;
        for name in &rfc::NOT_MODIFIED_FIELDS {
            for v in e.headers.get_all(name) {
                res.headers_mut().append(name.clone(), v.clone());
            }
        }
        if let Some(lm) = e.headers.get(header::LAST_MODIFIED) {
            res.headers_mut().insert(header::LAST_MODIFIED, lm.clone());
        }
        res.headers_mut().insert(header::AGE, age);
        return res;
    }
    let body = if head || e.body.is_empty() { Body::Empty } else { Body::full(e.body.clone()) };
    let mut res = Response::new(body);
    *res.status_mut() = e.status;
    *res.headers_mut() = e.headers.clone();
    res.headers_mut().insert(header::AGE, age);
    res
}

/// A fetch the cache waits on: readies the request, and stores the answer.
#[derive(Debug)]
pub struct Ticket {
    cache: RouteCache,
    key: Arc<str>,
    /// Whether the answer may be stored (a GET without the client's `no-store`).
    store: bool,
    /// The lead of the fetch that concurrent misses wait for.
    leader: Option<Leader>,
    /// A stale entry: validated with the upstream, or the answer when it fails.
    stale: Option<Arc<Entry>>,
    /// `Cache-Status`'s `fwd`.
    fwd: &'static str,
    collapsed: bool,
    /// A refresh in the background (the client has its answer).
    background: bool,
    requested: SystemTime,
    /// The request's fields (for the answer's `Vary`), kept by [`Ticket::prepare`].
    request: HeaderMap,
    /// The client's conditional fields, taken out of the request (the upstream's whole
    /// answer is stored, and the client answered 304 from it).
    conditional: HeaderMap,
    /// Whether the stale entry's validators were sent.
    validated: bool,
    per_caller: bool,
    authorization: bool,
    path: Box<str>,
    head: bool,
}

/// What a ticket made of the handler's answer.
#[derive(Debug)]
pub struct Completed {
    /// The answer for the client.
    pub result: Result<Response<Body>, GatewayError>,
    /// Its `Cache-Status`.
    pub status: HeaderValue,
    /// Whether a stale entry answered in place of an upstream error.
    pub stale_for_error: bool,
}

impl Ticket {
    /// Whether this is a refresh in the background.
    pub fn background(&self) -> bool {
        self.background
    }

    /// Readies the request for the upstream: headers that are not in the key go, so do
    /// the client's conditional fields (kept to answer them from the stored answer), and
    /// the stale entry's validators are sent instead.
    pub fn prepare(&mut self, req: &mut Request<Body>) {
        let keyed = &self.cache.cache.key_headers;
        let headers = req.headers_mut();
        for name in &UNKEYED {
            if !keyed.contains(name) {
                headers.remove(name);
            }
        }
        // CGI-style servers read `X_Original_URL` as `X-Original-URL`: those spellings go too.
        crate::forwarded::remove_cgi_spellings(headers, &UNKEYED);
        if !self.store {
            return;
        }
        for name in [header::IF_NONE_MATCH, header::IF_MODIFIED_SINCE] {
            for v in headers.get_all(&name) {
                self.conditional.append(name.clone(), v.clone());
            }
            headers.remove(&name);
        }
        if let Some(stale) = &self.stale {
            if let Some(etag) = &stale.etag {
                headers.insert(header::IF_NONE_MATCH, etag.clone());
                self.validated = true;
            }
            if let Some(lm) = stale.headers.get(header::LAST_MODIFIED) {
                headers.insert(header::IF_MODIFIED_SINCE, lm.clone());
                self.validated = true;
            }
        }
        self.request = headers.clone();
    }

    fn status(&self, params: &str) -> HeaderValue {
        let collapsed = if self.collapsed { "; collapsed" } else { "" };
        status_value(&format!("fwd={}{params}{collapsed}", self.fwd))
    }

    /// Takes the handler's answer: a 304 refreshes the stale entry, which answers; an
    /// upstream failure is answered by the stale entry when it may; a storable answer
    /// streams to the client and is stored when it has ended whole.
    pub fn complete(mut self, result: Result<Response<Body>, GatewayError>) -> Completed {
        let now = SystemTime::now();
        let head = self.head;
        let counters = self.cache.counters.clone();
        let mut res = match result {
            Ok(res) => res,
            Err(e) => {
                if e.side() != Side::Downstream
                    && let Some(stale) = self.stale.as_ref().filter(|s| serves_on_error(s, now))
                {
                    counters.stale.inc();
                    let status = stale_status(stale, e.status().as_u16(), now);
                    let res = answer(stale, &self.conditional, head, now);
                    self.finish(Flight::Failed(e));
                    return Completed { result: Ok(res), status, stale_for_error: true };
                }
                counters.miss.inc();
                let status = self.status(&format!("; fwd-status={}", e.status().as_u16()));
                // The upstream's failure is every waiter's answer; the client's own (a body
                // it broke off) is not: another waiter fetches.
                match e.side() {
                    Side::Downstream => self.finish(Flight::Abandoned),
                    _ => self.finish(Flight::Failed(e.clone())),
                }
                return Completed { result: Err(e), status, stale_for_error: false };
            }
        };
        if !crate::pipeline::materialise(&mut res) {
            counters.miss.inc();
            let e = GatewayError::new(ErrorKind::BadResponse);
            let status = self.status("; fwd-status=502");
            self.finish(Flight::Failed(e.clone()));
            return Completed { result: Err(e), status, stale_for_error: false };
        }
        let code = res.status();
        if code == StatusCode::NOT_MODIFIED
            && self.validated
            && let Some(stale) = self.stale.take()
        {
            let entry = Arc::new(refreshed(&stale, res.headers(), self.requested, now, self.cache.settings()));
            let slot = self.cache.cache.store.insert(self.key.clone(), entry.clone());
            if let Some(tier) = &self.cache.cache.tier {
                tier.put(&self.key, &slot);
            }
            counters.revalidated.inc();
            self.finish(Flight::Stored);
            let status = self.status("; fwd-status=304; stored");
            return Completed {
                result: Ok(answer(&entry, &self.conditional, head, now)),
                status,
                stale_for_error: false,
            };
        }
        if matches!(code.as_u16(), 500 | 502 | 503 | 504)
            && let Some(stale) = self.stale.as_ref().filter(|s| serves_on_error(s, now))
        {
            counters.stale.inc();
            let status = stale_status(stale, code.as_u16(), now);
            let answer = answer(stale, &self.conditional, head, now);
            self.finish(Flight::NotStored);
            return Completed { result: Ok(answer), status, stale_for_error: true };
        }
        let tags = surrogate_keys(res.headers(), &self.cache.cache.surrogate);
        res.headers_mut().remove(&self.cache.cache.surrogate);
        counters.miss.inc();
        let fwd_status = code.as_u16();
        match self.storable(&res, now, tags) {
            Some(entry) => {
                let status = self.status(&format!("; fwd-status={fwd_status}; stored"));
                let max = self.cache.settings().max_object_size.get();
                let body = std::mem::take(res.body_mut());
                let filler = Filler {
                    store: self.cache.cache.store.clone(),
                    tier: self.cache.cache.tier.clone(),
                    key: self.key.clone(),
                    entry: Some(entry),
                    pieces: Vec::new(),
                    size: 0,
                    max,
                    leader: self.leader.take(),
                };
                *res.body_mut() = Body::Tapped(Box::new(Tapped::new(body, Box::new(filler))));
                Completed { result: Ok(res), status, stale_for_error: false }
            }
            None => {
                let status = self.status(&format!("; fwd-status={fwd_status}"));
                self.finish(Flight::NotStored);
                Completed { result: Ok(res), status, stale_for_error: false }
            }
        }
    }

    fn finish(&mut self, how: Flight) {
        if let Some(l) = self.leader.take() {
            l.finish(how);
        }
    }

    /// The entry the answer would make, without its body; `None` when it may not be
    /// stored.
    fn storable(&self, res: &Response<Body>, now: SystemTime, tags: Box<[Box<str>]>) -> Option<Entry> {
        let s = self.cache.settings();
        let h = res.headers();
        if !self.store
            || self.head
            || !s.statuses.contains(&res.status().as_u16())
            || h.contains_key(header::SET_COOKIE)
        {
            return None;
        }
        if h.contains_key(header::CONTENT_RANGE) {
            return None;
        }
        let d = ResponseDirectives::of(h);
        if d.no_store || (d.private && !self.per_caller) {
            return None;
        }
        // RFC 9111 section 3.5: an answer to a request with credentials is for everyone
        // only when the upstream says so.
        if self.authorization && !self.per_caller && !(d.public || d.s_maxage.is_some() || d.must_revalidate) {
            return None;
        }
        let mut vary = Vec::new();
        for v in h.get_all(header::VARY) {
            for name in v.to_str().ok()?.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                if name == "*" {
                    return None;
                }
                let name = HeaderName::from_bytes(name.as_bytes()).ok()?;
                let value = store::joined(&self.request, &name);
                vary.push((name, value));
            }
        }
        if let Some(len) =
            h.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok())
            && len > s.max_object_size.get()
        {
            return None;
        }
        let fresh_for = match rfc::explicit_lifetime(&d, h, now) {
            Some(l) => l,
            None if s.ttl.get().is_zero() => return None,
            None => s.ttl.get(),
        }
        .min(s.max_ttl.get());
        let fresh_for = if d.no_cache { Duration::ZERO } else { fresh_for };
        let etag = h.get(header::ETAG).cloned();
        let last_modified = rfc::date(h, &header::LAST_MODIFIED);
        let secs = |v: Option<u64>, default: Duration| v.map_or(default, Duration::from_secs);
        let entry = Entry {
            status: res.status(),
            headers: stored_fields(h),
            body: Bytes::new(),
            received: now,
            initial_age: rfc::initial_age(h, self.requested, now),
            fresh_for,
            stale_while_revalidate: secs(d.stale_while_revalidate, s.stale_while_revalidate.get()),
            stale_if_error: secs(d.stale_if_error, s.serve_stale_on_error.get()),
            revalidate: d.must_revalidate || d.no_cache,
            etag,
            last_modified,
            vary: vary.into(),
            tags,
            path: self.path.clone(),
        };
        // Of no use: stale at once, nothing to validate it with, no stale window.
        let useless = entry.fresh_for <= entry.initial_age
            && entry.etag.is_none()
            && entry.last_modified.is_none()
            && (entry.revalidate || (entry.stale_if_error.is_zero() && entry.stale_while_revalidate.is_zero()));
        (!useless).then_some(entry)
    }
}

/// The fields of an answer as stored.
fn stored_fields(h: &HeaderMap) -> HeaderMap {
    let mut out = h.clone();
    for name in &NOT_STORED {
        out.remove(name);
    }
    out
}

/// The answer's surrogate keys (space separated, as Fastly and Varnish read them).
fn surrogate_keys(h: &HeaderMap, name: &HeaderName) -> Box<[Box<str>]> {
    h.get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split_ascii_whitespace())
        .map(Box::from)
        .collect()
}

/// A stale entry refreshed by a 304: the 304's fields replace the stored ones of the same
/// names (RFC 9111 section 4.3.4), and freshness starts again.
fn refreshed(stale: &Entry, fields: &HeaderMap, requested: SystemTime, now: SystemTime, s: &Settings) -> Entry {
    let mut headers = stale.headers.clone();
    for name in fields.keys() {
        if NOT_STORED.contains(name) || *name == header::CONTENT_LENGTH {
            continue;
        }
        headers.remove(name);
        for v in fields.get_all(name) {
            headers.append(name.clone(), v.clone());
        }
    }
    let d = ResponseDirectives::of(&headers);
    let fresh_for = rfc::explicit_lifetime(&d, &headers, now).unwrap_or(s.ttl.get()).min(s.max_ttl.get());
    let secs = |v: Option<u64>, default: Duration| v.map_or(default, Duration::from_secs);
    Entry {
        status: stale.status,
        initial_age: rfc::initial_age(fields, requested, now),
        received: now,
        fresh_for: if d.no_cache { Duration::ZERO } else { fresh_for },
        stale_while_revalidate: secs(d.stale_while_revalidate, s.stale_while_revalidate.get()),
        stale_if_error: secs(d.stale_if_error, s.serve_stale_on_error.get()),
        revalidate: d.must_revalidate || d.no_cache,
        etag: headers.get(header::ETAG).cloned(),
        last_modified: rfc::date(&headers, &header::LAST_MODIFIED),
        headers,
        body: stale.body.clone(),
        vary: stale.vary.clone(),
        tags: stale.tags.clone(),
        path: stale.path.clone(),
    }
}

/// Keeps the pieces of an answer as it streams to the client, and stores it once whole.
#[derive(Debug)]
struct Filler {
    store: Arc<Store>,
    tier: Option<Arc<tier::Tier>>,
    key: Arc<str>,
    entry: Option<Entry>,
    pieces: Vec<Bytes>,
    size: u64,
    max: u64,
    leader: Option<Leader>,
}

impl Tap for Filler {
    fn data(&mut self, piece: &Bytes) {
        if self.entry.is_none() {
            return;
        }
        self.size += piece.len() as u64;
        if self.size > self.max {
            // Too large to store: it streams on, and the waiters fetch for themselves.
            self.entry = None;
            self.pieces = Vec::new();
            if let Some(l) = self.leader.take() {
                l.finish(Flight::NotStored);
            }
            return;
        }
        self.pieces.push(piece.clone());
    }

    fn end(&mut self, trailers: Option<&HeaderMap>) {
        let Some(mut entry) = self.entry.take() else { return };
        let declared =
            entry.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
        // A body shorter or longer than it said, or with trailers, is not stored.
        if trailers.is_some() || declared.is_some_and(|d| d != self.size) {
            if let Some(l) = self.leader.take() {
                l.finish(Flight::NotStored);
            }
            return;
        }
        entry.body = match self.pieces.len() {
            1 => self.pieces.pop().unwrap_or_default(),
            _ => {
                let mut all = bytes::BytesMut::with_capacity(self.size as usize);
                for p in self.pieces.drain(..) {
                    all.extend_from_slice(&p);
                }
                all.freeze()
            }
        };
        entry.headers.insert(header::CONTENT_LENGTH, HeaderValue::from(self.size));
        let slot = self.store.insert(self.key.clone(), Arc::new(entry));
        if let Some(tier) = &self.tier {
            tier.put(&self.key, &slot);
        }
        if let Some(l) = self.leader.take() {
            l.finish(Flight::Stored);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_are_sorted_by_name_and_filtered() {
        let none: [String; 0] = [];
        assert_eq!(sorted_query("b=2&a=1", &none, &none), "a=1&b=2");
        assert_eq!(sorted_query("a=2&b&a=1", &none, &none), "a=2&a=1&b", "repeated names keep their order");
        assert_eq!(sorted_query("&&a=1&", &none, &none), "a=1");
        assert_eq!(sorted_query("utm_source=x&id=1", &none, &["utm_source".into()]), "id=1");
        assert_eq!(sorted_query("utm_source=x&id=1&q=2", &["q".into(), "id".into()], &none), "id=1&q=2");
        assert_eq!(sorted_query("", &none, &none), "");
        assert_eq!(sorted_query("i%64=7&x=1", &["id".into()], &none), "i%64=7", "names compared decoded");
        assert_eq!(sorted_query("utm_source=x;id=5&a=1", &none, &["utm_source".into()]), "a=1&utm_source=x;id=5");
    }

    fn entry(fresh: u64, age: u64) -> Entry {
        Entry {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: Bytes::from_static(b"x"),
            received: SystemTime::now(),
            initial_age: Duration::from_secs(age),
            fresh_for: Duration::from_secs(fresh),
            stale_while_revalidate: Duration::from_secs(10),
            stale_if_error: Duration::from_secs(100),
            revalidate: false,
            etag: None,
            last_modified: None,
            vary: Box::new([]),
            tags: Box::new([]),
            path: "h/p".into(),
        }
    }

    #[test]
    fn an_entry_answers_fresh_refreshes_within_its_window_then_validates() {
        let now = SystemTime::now();
        assert!(matches!(usable(&entry(60, 0), None, now), Use::Answer(59 | 60)));
        assert!(matches!(usable(&entry(60, 65), None, now), Use::Refresh));
        assert!(matches!(usable(&entry(60, 75), None, now), Use::Validate));
        let mut strict = entry(60, 65);
        strict.revalidate = true;
        assert!(matches!(usable(&strict, None, now), Use::Validate));
        assert!(serves_on_error(&entry(60, 150), now) && !serves_on_error(&entry(60, 170), now));
        assert!(!serves_on_error(&strict, now));
        let d = |s: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::CACHE_CONTROL, HeaderValue::from_str(s).unwrap());
            RequestDirectives::of(&h).unwrap()
        };
        assert!(matches!(usable(&entry(60, 0), Some(&d("no-cache")), now), Use::Validate));
        assert!(matches!(usable(&entry(60, 30), Some(&d("max-age=10")), now), Use::Validate));
        assert!(matches!(usable(&entry(60, 30), Some(&d("min-fresh=40")), now), Use::Validate));
        assert!(matches!(usable(&entry(60, 90), Some(&d("max-stale=60")), now), Use::Answer(-30 | -31)));
        assert_eq!(ttl_of(&entry(60, 90), now), -30);
    }
}
