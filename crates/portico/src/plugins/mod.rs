//! Plugins: what a route does to a request before the handler and to the response after.
//!
//! Each route gets one [`Chain`], compiled at load time from its own plugins and the
//! global ones (a route's plugin of a kind replaces the global one of that kind). Every
//! plugin is written on the phase hooks ([`hooks::Hooks`]), and runs in a fixed order, not
//! the YAML's: the order of [`hooks`]' registry, which this table follows (a test checks
//! it). The access hooks run in this order and may answer early; the request hooks change
//! the request in this order; the response hooks run in the reverse order.
//!
//! | order | plugin              | access: may answer early with | request | response |
//! |-------|---------------------|-------------------------------|---------|----------|
//! | 1     | `ip_filter`         | 403 | | |
//! | 2     | `cors`              | 204, 403 (preflights) | | CORS headers |
//! | 3     | `mtls`              | 401 | | |
//! | 4     | `jwt`               | 401; with `revocation`: 401 "token revoked", 503 when the deny-list cannot be read and `on_error: deny` | | |
//! | 5     | `api_key`           | 401 | | |
//! | 6     | `authorize`         | 401 (no credentials), 403 | | |
//! | 7     | `rate_limit`        | 429 (a leaky bucket may delay instead); 503 with `store: redis` down and `on_store_error: deny` | | `RateLimit-*` headers |
//! | 8     | `concurrency_limit` | 429 or 503 | | |
//! | 9     | `validate`          | 404, 405, 415, 400 (path, query, headers) | the JSON body (400, 413) | |
//! | 10    | `cache`             | a stored answer (the handler does not run); 504 for `only-if-cached` | takes out unkeyed headers | stores the handler's answer |
//! | 11    | `query`             | | the query | |
//! | 12    | `request_headers`   | | headers | |
//! | 13    | `xml`               | | an XML body as JSON (400) | a JSON answer as XML, an XML one as JSON (502) |
//! | 14    | `request_body`      | | the JSON body (413, 400) | |
//! | 15    | `response_body`     | | | the JSON body (502) |
//! | 16    | `compression`       | | | the body, compressed as it streams |
//! | 17    | `response_headers`  | | | headers |
//! | 18    | `security_headers`  | | | headers |
//!
//! So the response phase writes `security_headers`, then `response_headers` (which can
//! adjust a security header), then the rate-limit and CORS headers (which it cannot remove
//! or forge). Of the authentication plugins (`mtls`, `jwt`, `api_key`) the first credential
//! found decides; a route with one and no `authorize` gets the default `authorize` (any
//! authenticated caller). The request's tenant is settled after `authorize`, before
//! `rate_limit` ([`hooks::TENANT_SETTLED_BEFORE`]).
//!
//! Which phases a route runs is derived from what its plugins report
//! ([`hooks::Hooks::phases`]): a route whose plugins have no access hook skips the access
//! phase (unless tenants may come from the host, which any request can name), one with no
//! response hook keeps the upstream's response fields as sent.

pub mod api_key;
pub mod authorize;
pub mod compression;
pub mod cors;
pub mod hooks;
pub mod ip_filter;
pub mod json_edit;
pub mod jwt;
pub mod mtls;
pub mod query;
pub mod rate_limit;
pub mod request_body;
pub mod request_headers;
pub mod response_body;
pub mod response_headers;
pub mod security_headers;
pub mod validate;
pub mod xml;

use std::net::IpAddr;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, Method, Response, Uri};
use portico_config::Plugin;

use crate::body::Body;
use crate::error::{Challenge, GatewayError};
use crate::identity::{Consumers, Identity};
use crate::router::Params;
use hooks::{AccessCtx, HookCtx, Instance, Phases, Verdict};

/// The compiled plugins of a route.
#[derive(Debug)]
pub struct Chain {
    /// The plugins, in the registry's order.
    plugins: Box<[Instance]>,
    /// Where the request's tenant is settled: before `plugins[tenant_at]`.
    tenant_at: usize,
    /// Which phases the plugins take part in, derived from them when compiled.
    phases: Phases,
    /// The challenge of the route's 401s.
    challenge: Challenge,
    /// Whether a plugin reads the tenant's settings.
    tenant_settings: bool,
    /// Whether the chain answers CORS preflights.
    cors: bool,
    /// Whether the chain has a `cache`.
    cache: bool,
    /// Credential headers not passed upstream (API keys).
    hide: Box<[HeaderName]>,
    /// A credential query parameter not passed upstream nor logged (API keys).
    hide_query: Option<Box<str>>,
}

/// What the access phase reads of a request.
#[derive(Debug)]
pub struct RequestView<'a> {
    /// Method.
    pub method: &'a Method,
    /// URI as received.
    pub uri: &'a Uri,
    /// Headers as received.
    pub headers: &'a HeaderMap,
    /// Host without port.
    pub host: &'a str,
    /// Parameters captured by the route's path.
    pub params: &'a Params<'a, 'a>,
    /// The client IP (through trusted proxies).
    pub client_ip: IpAddr,
    /// What the TLS handshake established, on a TLS listener.
    pub tls: Option<&'a crate::pipeline::TlsInfo>,
    /// The route's name.
    pub route: &'a str,
    /// Whether the route has `flag_upstreams` (so tenant settings are needed).
    pub flag_upstreams: bool,
    /// The request's body, not yet read (whether there is one).
    pub body: &'a Body,
}

/// The request's state: what the access hooks write, for later hooks, the handler and the
/// response phase; what a request that passed the access phase carries on.
#[derive(Debug, Default)]
pub struct Passed {
    /// The caller (`None`: anonymous, or no authentication).
    pub identity: Option<Identity>,
    /// The tightest rate limit's numbers, for the response headers and the access log.
    pub rate: Option<rate_limit::RateInfo>,
    /// The caller's concurrency slot, held until the response ends.
    pub slot: Option<crate::ratelimit::ConcurrencyGuard>,
    /// The request's tenant.
    pub tenant: Option<crate::identity::tenants::Tenant>,
    /// The API contract's operation the request was found to be (`validate`), whose body
    /// the request body phase checks.
    pub operation: Option<std::sync::Arc<crate::contract::Operation>>,
}

impl Passed {
    /// The refusal of a request with this state: the caller, when known, is named in it.
    pub fn refuse(&self, error: GatewayError) -> Refusal {
        Refusal {
            error,
            credential: self.identity.as_ref().map(|i| i.method),
            user: self.identity.as_ref().map(|i| i.user_id.clone()),
        }
    }

    /// What an authentication plugin of kind `credential` found: no credential (on to the
    /// next), a caller (written here), or a credential refused.
    pub fn authenticated(
        &mut self,
        found: Result<Option<Identity>, GatewayError>,
        credential: &'static str,
    ) -> Result<Verdict, Refusal> {
        match found {
            Ok(None) => Ok(Verdict::Continue),
            Ok(Some(id)) => {
                self.identity = Some(id);
                Ok(Verdict::Continue)
            }
            Err(error) => Err(Refusal { error, credential: Some(credential), user: None }),
        }
    }
}

/// What the access phase decided.
#[derive(Debug)]
pub enum Flow {
    /// Go on to the handler.
    Continue(Passed),
    /// Answer with this response (a CORS preflight).
    Respond(Response<Body>),
}

/// A request the plugins refused, with what the audit log needs.
#[derive(Debug)]
pub struct Refusal {
    /// The error answered.
    pub error: GatewayError,
    /// The credential kind presented, if any.
    pub credential: Option<&'static str>,
    /// The authenticated caller, when authentication succeeded.
    pub user: Option<Arc<str>>,
}

impl From<GatewayError> for Refusal {
    fn from(error: GatewayError) -> Self {
        Self { error, credential: None, user: None }
    }
}

impl Chain {
    /// Compiles the plugins that apply to a route (see [`portico_config::effective`]);
    /// `built` holds what the compile stage built for them (JWT providers, limits).
    pub fn compile(plugins: &[&Plugin], built: &hooks::Built<'_>) -> Chain {
        let mut list: Vec<Instance> = plugins.iter().filter_map(|p| hooks::compile(p, built)).collect();
        // A route that authenticates requires a caller: without an `authorize` of its own
        // it gets the default one (any authenticated caller), so that a request without a
        // credential is refused rather than let through. Decided from the config, not from
        // what compiled: an authentication plugin that could not be built (a JWT provider
        // missing) leaves the route refusing everyone, never open.
        let authenticates = plugins.iter().any(|p| matches!(p, Plugin::Jwt(_) | Plugin::ApiKey(_) | Plugin::Mtls(_)))
            || list.iter().any(Instance::authenticates);
        if authenticates && !list.iter().any(|p| matches!(p, Instance::Authorize(_))) {
            list.push(Instance::Authorize(authorize::Authorize::default()));
        }
        // Stable: two plugins of one kind (which validation refuses) keep the file's order.
        list.sort_by_key(Instance::order);
        let hide = list.iter().filter_map(Instance::credential_header).cloned().collect();
        let hide_query = list.iter().filter_map(Instance::credential_query).last().map(Into::into);
        Chain {
            tenant_at: list.partition_point(|p| p.order() < hooks::TENANT_SETTLED_BEFORE),
            phases: list.iter().fold(Phases::default(), |acc, p| acc.union(p.phases())),
            challenge: list.iter().find_map(Instance::challenge).unwrap_or(Challenge::Bearer),
            tenant_settings: list.iter().any(Instance::tenant_settings),
            cors: list.iter().any(|p| matches!(p, Instance::Cors(_))),
            cache: list.iter().any(|p| matches!(p, Instance::Cache(_))),
            hide,
            hide_query,
            plugins: list.into(),
        }
    }

    /// The chain's rate limit, if any.
    pub fn rate_limit(&self) -> Option<&Arc<rate_limit::RateLimit>> {
        self.plugins.iter().find_map(|p| match p {
            Instance::RateLimit(r) => Some(r),
            _ => None,
        })
    }

    /// The chain's concurrency limit, if any.
    pub fn concurrency_limit(&self) -> Option<&Arc<rate_limit::ConcurrencyLimit>> {
        self.plugins.iter().find_map(|p| match p {
            Instance::ConcurrencyLimit(c) => Some(c),
            _ => None,
        })
    }

    /// The chain's cache, if any.
    #[inline]
    pub fn cache(&self) -> Option<&crate::cache::RouteCache> {
        if !self.cache {
            return None;
        }
        self.plugins.iter().find_map(|p| match p {
            Instance::Cache(c) => Some(c),
            _ => None,
        })
    }

    /// Whether the chain answers CORS preflights.
    pub fn has_cors(&self) -> bool {
        self.cors
    }

    /// Whether the access phase has nothing to do: no plugin with an access hook, and no
    /// tenant that a request without a caller could have (one named by the host). The
    /// pipeline then skips it.
    pub fn passes_all(&self, tenants: &crate::identity::tenants::Tenants) -> bool {
        !self.phases.access && !tenants.from_host()
    }

    /// The access phase: the plugins' access hooks in order, with the request's tenant
    /// settled between authorization and the limits.
    pub async fn request(
        &self,
        req: &RequestView<'_>,
        consumers: &Consumers,
        tenants: &crate::identity::tenants::Tenants,
    ) -> Result<Flow, Refusal> {
        let cx = AccessCtx { consumers, challenge: self.challenge };
        let mut state = Passed::default();
        // One loop in this function rather than a helper called twice: each level of
        // nesting moves the access hook's future once more per request.
        for (i, p) in self.plugins.iter().enumerate() {
            if i == self.tenant_at {
                self.settle_tenant(req, tenants, &mut state).await;
            }
            // The first credential found decides: once a caller is known, later
            // authentication plugins do not look for theirs.
            if !p.phases().access || (state.identity.is_some() && p.authenticates()) {
                continue;
            }
            if let Verdict::Respond(res) = p.access(req, &cx, &mut state).await? {
                return Ok(Flow::Respond(res));
            }
        }
        if self.tenant_at == self.plugins.len() {
            self.settle_tenant(req, tenants, &mut state).await;
        }
        Ok(Flow::Continue(state))
    }

    /// Names the request's tenant, with its settings when a plugin or the route reads them.
    async fn settle_tenant(
        &self,
        req: &RequestView<'_>,
        tenants: &crate::identity::tenants::Tenants,
        state: &mut Passed,
    ) {
        let needed = self.tenant_settings || req.flag_upstreams;
        state.tenant = tenants.settle(state.identity.as_ref(), req.host, needed).await;
    }

    /// The URI without the credential query parameter, when it has one (for the upstream
    /// request and the access log); `None` when there is nothing to remove.
    pub fn hide_query(&self, uri: &Uri) -> Option<Uri> {
        let name = self.hide_query.as_deref()?;
        let query = uri.query()?;
        let is_key = |pair: &&str| pair.split_once('=').map_or(*pair, |(k, _)| k) == name;
        if !query.split('&').any(|p| is_key(&p)) {
            return None;
        }
        let kept: Vec<&str> = query.split('&').filter(|p| !is_key(p)).collect();
        let pq = if kept.is_empty() { uri.path().to_owned() } else { format!("{}?{}", uri.path(), kept.join("&")) };
        let mut parts = uri.clone().into_parts();
        parts.path_and_query = pq.parse().ok();
        Uri::from_parts(parts).ok()
    }

    /// Removes credentials that the upstream must not see (API keys).
    #[inline]
    pub fn hide_credentials(&self, headers: &mut HeaderMap) {
        for h in &*self.hide {
            headers.remove(h);
        }
    }

    /// Whether a plugin has a request hook: the pipeline then gives them what they read
    /// ([`hooks::HookCtx`]).
    pub fn has_request_hooks(&self) -> bool {
        self.phases.request
    }

    /// The request phase: the plugins' request hooks, in order.
    pub fn request_hooks(&self, req: &mut http::Request<Body>, ctx: &HookCtx<'_>) {
        for p in self.plugins.iter().filter(|p| p.phases().request) {
            p.request(req, ctx);
        }
    }

    /// Whether [`Chain::response`] or the response body phase may touch the response's
    /// fields: a plugin has a response hook or a response body hook.
    pub fn touches_response(&self) -> bool {
        self.phases.response || self.phases.response_body || self.phases.response_stream
    }

    /// Whether a plugin has a request body hook.
    pub fn has_request_body_hooks(&self) -> bool {
        self.phases.request_body
    }

    /// Whether a plugin has a response body hook.
    pub fn has_response_body_hooks(&self) -> bool {
        self.phases.response_body
    }

    /// Whether a plugin has a response stream hook.
    pub fn has_response_stream_hooks(&self) -> bool {
        self.phases.response_stream
    }

    /// The plugins, in the registry's order.
    pub fn plugins(&self) -> &[Instance] {
        &self.plugins
    }

    /// The response phase: the plugins' response hooks, in reverse order.
    pub fn response(&self, res: &mut Response<Body>, ctx: &HookCtx<'_>) {
        if !self.phases.response {
            return;
        }
        for p in self.plugins.iter().rev().filter(|p| p.phases().response) {
            p.response(res, ctx);
        }
    }
}
