//! Plugins: what a route does to a request before the handler and to the response after.
//!
//! Each route gets one [`Chain`], compiled at load time from its own plugins and the
//! global ones (a route's plugin of a kind replaces the global one of that kind). The
//! order is fixed here, not taken from the YAML:
//!
//! | phase    | order | plugin             | may answer early with |
//! |----------|-------|--------------------|-----------------------|
//! | request  | 1     | `ip_filter`        | 403 |
//! | request  | 2     | `cors` (preflight) | 204, 403 |
//! | request  | 3     | `mtls`, `jwt`, `api_key` | 401 (first credential found decides); `jwt` with `revocation`: 401 "token revoked", 503 when the deny-list cannot be read and `on_error: deny` |
//! | request  | 4     | `authorize`        | 401 (no credentials), 403 |
//! | request  | 5     | `rate_limit`       | 429 (a leaky bucket may delay instead); 503 with `store: redis` down and `on_store_error: deny` |
//! | request  | 6     | `concurrency_limit` | 429 or 503 |
//! | request  | 7     | `query`            | |
//! | request  | 8     | `request_headers`  | |
//! | response | 1     | `security_headers` | |
//! | response | 2     | `response_headers` | |
//! | response | 3     | `rate_limit` (headers) | |
//! | response | 4     | `cors`             | |
//!
//! `query`, `request_headers`, `response_headers` and `security_headers` are written on the
//! phase hooks ([`hooks::Hooks`]); their order among themselves is [`hooks::compile`]'s (the
//! response phase runs it backwards).
//!
//! The chain is a struct of optional slots rather than a list of trait objects: the order
//! is then the field order, and the request hook is one future with no boxing per plugin.

pub mod api_key;
pub mod authorize;
pub mod cors;
pub mod hooks;
pub mod ip_filter;
pub mod jwt;
pub mod mtls;
pub mod query;
pub mod rate_limit;
pub mod request_headers;
pub mod response_headers;
pub mod security_headers;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, Uri};
use portico_config::Plugin;

use crate::body::Body;
use crate::error::{Challenge, GatewayError};
use crate::identity::{Consumers, Identity};
use crate::router::Params;

/// An authentication plugin.
#[derive(Debug)]
enum Authn {
    Jwt(Arc<jwt::JwtProvider>),
    ApiKey(api_key::ApiKeyAuth),
    Mtls(mtls::MtlsAuth),
}

/// The compiled plugins of a route.
#[derive(Debug, Default)]
pub struct Chain {
    ip_filter: Option<ip_filter::IpFilter>,
    cors: Option<cors::Cors>,
    authn: Box<[Authn]>,
    authorize: Option<authorize::Authorize>,
    rate_limit: Option<Arc<rate_limit::RateLimit>>,
    concurrency: Option<Arc<rate_limit::ConcurrencyLimit>>,
    challenge: Option<Challenge>,
    /// Credential headers not passed upstream (API keys).
    hide: Box<[HeaderName]>,
    /// A credential query parameter not passed upstream nor logged (API keys).
    hide_query: Option<Box<str>>,
    /// Plugins written on [`hooks::Hooks`], in [`hooks::compile`]'s order.
    hooked: Box<[Arc<dyn hooks::Hooks>]>,
    /// Which phases the hooked plugins take part in, derived from them when compiled.
    phases: hooks::Phases,
}

/// What the request phase reads of a request.
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
}

/// What a request that passed the request phase carries on.
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
}

/// What the request phase decided.
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
    /// Compiles the plugins that apply to a route (see [`portico_config::effective`]).
    pub fn compile(plugins: &[&Plugin], providers: &HashMap<String, Arc<jwt::JwtProvider>>) -> Chain {
        let mut chain = Chain::default();
        let mut authn = Vec::new();
        let mut hide = Vec::new();
        let mut hooked = Vec::new();
        for p in plugins {
            if let Some(h) = hooks::compile(p) {
                hooked.push(h);
                continue;
            }
            match p {
                Plugin::IpFilter(c) => chain.ip_filter = Some(ip_filter::IpFilter::new(c)),
                Plugin::Cors(c) => chain.cors = Some(cors::Cors::new(c)),
                Plugin::Jwt(c) => {
                    if let Some(p) = providers.get(&c.provider) {
                        authn.push(Authn::Jwt(p.clone()));
                    }
                }
                Plugin::ApiKey(c) => {
                    let a = api_key::ApiKeyAuth::new(c);
                    hide.extend(a.header().cloned());
                    if let Some(q) = a.query() {
                        chain.hide_query = Some(q.into());
                    }
                    authn.push(Authn::ApiKey(a));
                }
                Plugin::Mtls(c) => authn.push(Authn::Mtls(mtls::MtlsAuth::new(c))),
                Plugin::Authorize(c) => chain.authorize = Some(authorize::Authorize::new(c)),
                // Stateful: compiled by the snapshot (shared, carried over reloads), see
                // `with_limits`.
                Plugin::RateLimit(_) | Plugin::ConcurrencyLimit(_) => {}
                // Written on hooks: compiled by `hooks::compile` above.
                Plugin::RequestHeaders(_)
                | Plugin::ResponseHeaders(_)
                | Plugin::Query(_)
                | Plugin::SecurityHeaders(_) => {}
            }
        }
        hooked.sort_by_key(|(order, _)| *order);
        chain.phases = hooked.iter().fold(hooks::Phases::default(), |acc, (_, h)| {
            let p = h.phases();
            hooks::Phases { request: acc.request || p.request, response: acc.response || p.response }
        });
        chain.hooked = hooked.into_iter().map(|(_, h)| h).collect();
        // A verified certificate first (the handshake already proved it), then a bearer
        // token, then an API key.
        authn.sort_by_key(|a| match a {
            Authn::Mtls(_) => 0,
            Authn::Jwt(_) => 1,
            Authn::ApiKey(_) => 2,
        });
        chain.challenge = authn.iter().find(|a| !matches!(a, Authn::Mtls(_))).or(authn.first()).map(|a| match a {
            Authn::Jwt(_) | Authn::Mtls(_) => Challenge::Bearer,
            Authn::ApiKey(_) => Challenge::ApiKey,
        });
        // An `authorize` without any authentication still decides (everyone is anonymous),
        // rather than being skipped (validation refuses such a config; this is the backstop).
        if chain.challenge.is_none() && chain.authorize.is_some() {
            chain.challenge = Some(Challenge::Bearer);
        }
        chain.authn = authn.into();
        chain.hide = hide.into();
        chain
    }

    /// Sets the chain's rate and concurrency limits (compiled by the snapshot, so that a
    /// global plugin's counters are shared by the routes that use it).
    pub fn with_limits(
        mut self,
        rate: Option<Arc<rate_limit::RateLimit>>,
        concurrency: Option<Arc<rate_limit::ConcurrencyLimit>>,
    ) -> Self {
        self.rate_limit = rate;
        self.concurrency = concurrency;
        self
    }

    /// The chain's rate limit, if any.
    pub fn rate_limit(&self) -> Option<&Arc<rate_limit::RateLimit>> {
        self.rate_limit.as_ref()
    }

    /// The chain's concurrency limit, if any.
    pub fn concurrency_limit(&self) -> Option<&Arc<rate_limit::ConcurrencyLimit>> {
        self.concurrency.as_ref()
    }

    /// Whether the chain answers CORS preflights.
    pub fn has_cors(&self) -> bool {
        self.cors.is_some()
    }

    /// Whether the request phase has nothing to do: no request plugin, and no tenant that
    /// a request without a caller could have (one named by the host). The pipeline then
    /// skips it.
    pub fn passes_all(&self, tenants: &crate::identity::tenants::Tenants) -> bool {
        self.ip_filter.is_none()
            && self.cors.is_none()
            && self.challenge.is_none()
            && self.rate_limit.is_none()
            && self.concurrency.is_none()
            && !tenants.from_host()
    }

    /// The request phase.
    pub async fn request(
        &self,
        req: &RequestView<'_>,
        consumers: &Consumers,
        tenants: &crate::identity::tenants::Tenants,
    ) -> Result<Flow, Refusal> {
        if let Some(f) = &self.ip_filter {
            f.check(req.client_ip)?;
        }
        if let Some(c) = &self.cors
            && cors::Cors::is_preflight(req.method, req.headers)
        {
            return Ok(Flow::Respond(c.preflight(req.headers)?));
        }
        let identity = match self.challenge {
            Some(challenge) => self.authenticate(req, consumers, challenge).await?,
            None => None,
        };
        let needed = self.rate_limit.is_some() || req.flag_upstreams;
        let tenant = tenants.settle(identity.as_ref(), req.host, needed).await;
        let input = rate_limit::KeyInput {
            client_ip: req.client_ip,
            identity: identity.as_ref(),
            tenant: tenant.as_ref(),
            route: req.route,
            headers: req.headers,
        };
        let refused = |error, identity: &Option<Identity>| Refusal {
            error,
            credential: identity.as_ref().map(|i| i.method),
            user: identity.as_ref().map(|i| i.user_id.clone()),
        };
        let mut rate = None;
        if let Some(r) = &self.rate_limit {
            match r.check(&input).await {
                Ok((info, delay)) => {
                    rate = Some(info);
                    if let Some(d) = delay {
                        tokio::time::sleep(d).await;
                    }
                }
                Err(e) => return Err(refused(e, &identity)),
            }
        }
        let slot = match &self.concurrency {
            Some(c) => Some(c.acquire(&input).map_err(|e| refused(e, &identity))?),
            None => None,
        };
        Ok(Flow::Continue(Passed { identity, rate, slot, tenant }))
    }

    /// Authentication and authorization: the caller, or the refusal.
    async fn authenticate(
        &self,
        req: &RequestView<'_>,
        consumers: &Consumers,
        challenge: Challenge,
    ) -> Result<Option<Identity>, Refusal> {
        let mut identity = None;
        for a in &*self.authn {
            let (found, credential) = match a {
                Authn::Jwt(p) => (
                    p.check(req.headers, req.uri, consumers).await.map(|c| match c {
                        jwt::Checked::Absent => None,
                        jwt::Checked::Valid(id) => Some(id),
                    }),
                    "jwt",
                ),
                Authn::ApiKey(k) => (k.check(req.headers, req.uri, consumers), "api_key"),
                Authn::Mtls(m) => (m.check(req.tls, consumers), "mtls"),
            };
            match found {
                Ok(None) => continue,
                Ok(Some(id)) => {
                    identity = Some(id);
                    break;
                }
                Err(error) => return Err(Refusal { error, credential: Some(credential), user: None }),
            }
        }
        let subject = authorize::Subject { headers: req.headers, host: req.host, params: req.params };
        let checked = match &self.authorize {
            Some(a) => a.check(identity.as_ref(), &subject, challenge),
            None => authorize::Authorize::default().check(identity.as_ref(), &subject, challenge),
        };
        match checked {
            Ok(()) => Ok(identity),
            Err(error) => Err(Refusal {
                error,
                credential: identity.as_ref().map(|i| i.method),
                user: identity.map(|i| i.user_id),
            }),
        }
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

    /// Whether a hooked plugin has a request hook: the pipeline then gives them what
    /// they read ([`hooks::HookCtx`]).
    pub fn has_request_hooks(&self) -> bool {
        self.phases.request
    }

    /// The request hooks of the hooked plugins, in order.
    pub fn request_hooks(&self, req: &mut http::Request<Body>, ctx: &hooks::HookCtx<'_>) {
        for h in self.hooked.iter().filter(|h| h.phases().request) {
            h.request(req, ctx);
        }
    }

    /// Whether [`Chain::response`] would touch the response's fields.
    pub fn touches_response(&self, preflight: bool, rate: Option<&rate_limit::RateInfo>) -> bool {
        rate.is_some() || (self.cors.is_some() && !preflight) || self.phases.response
    }

    /// The response phase. `origin` is the request's `Origin`; `preflight` whether `res` is
    /// this chain's preflight answer; `ctx` what the hooks read.
    pub fn response(
        &self,
        res: &mut Response<Body>,
        origin: Option<&HeaderValue>,
        preflight: bool,
        rate: Option<&rate_limit::RateInfo>,
        ctx: &hooks::HookCtx<'_>,
    ) {
        if self.phases.response {
            for h in self.hooked.iter().rev().filter(|h| h.phases().response) {
                h.response(res, ctx);
            }
        }
        if let Some(r) = rate {
            r.write(res.headers_mut());
        }
        if let Some(c) = &self.cors
            && !preflight
        {
            c.apply(origin, res);
        }
    }
}
