//! The phase hooks a plugin implements, the context they read, and the one table of plugin
//! kinds: [`registry!`]'s list gives each kind its place in the order, and [`compile`]
//! builds a kind from its config.
//!
//! A plugin is one file: its compiled form (built from its config struct at load time), its
//! [`Hooks`] implementation, and its unit tests. Adding one touches that file, its line in
//! the registry and in [`compile`], its config struct in `portico-config`, the schema and
//! docs. Which phases a route runs is derived from the hooks its plugins report in
//! [`Hooks::phases`]; a test runs every registered kind through every hook and fails when a
//! hook that is not reported changes anything, or a reported one changes nothing.
//!
//! The plugins are dispatched over one enum ([`Instance`]) with a `match` per hook,
//! generated from the registry's list: a route's plugins are one slice with no boxing per
//! plugin, and the access hook of any kind is awaited without allocating a future.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use portico_config::transform::{Piece, ValueTemplate};

use super::rate_limit::{ConcurrencyLimit, RateInfo, RateLimit};
use super::{Passed, Refusal, RequestView};
use crate::body::Body;
pub use crate::body::StreamTransform;
use crate::error::{Challenge, GatewayError};
use crate::identity::{Consumers, Identity};

/// The phases a plugin takes part in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Phases {
    /// [`Hooks::access`] may refuse or answer the request, hold it, or write the request's
    /// state ([`Passed`]).
    pub access: bool,
    /// [`Hooks::request`] changes the request's head.
    pub request: bool,
    /// [`Hooks::response`] changes the response's head.
    pub response: bool,
    /// [`Hooks::request_body`] reads or changes the request's whole body.
    pub request_body: bool,
    /// [`Hooks::response_body`] reads or changes the response's whole body.
    pub response_body: bool,
    /// [`Hooks::response_stream`] changes the response's body as it streams.
    pub response_stream: bool,
}

impl Phases {
    /// The phases either takes part in.
    pub fn union(self, other: Phases) -> Phases {
        Phases {
            access: self.access || other.access,
            request: self.request || other.request,
            response: self.response || other.response,
            request_body: self.request_body || other.request_body,
            response_body: self.response_body || other.response_body,
            response_stream: self.response_stream || other.response_stream,
        }
    }
}

/// What a request or response hook may read besides the message it changes.
#[derive(Debug, Clone, Copy)]
pub struct HookCtx<'a> {
    /// Parameters captured by the route's path (empty in the response phase).
    pub params: &'a [(Box<str>, Box<str>)],
    /// The authenticated caller.
    pub identity: Option<&'a Identity>,
    /// The request's tenant.
    pub tenant: Option<&'a str>,
    /// The request's ID.
    pub request_id: &'a HeaderValue,
    /// Whether the client's connection is TLS.
    pub tls: bool,
    /// The request's `Origin`, when a CORS plugin is on the route or global.
    pub origin: Option<&'a HeaderValue>,
    /// Whether the response is the route's answer to a CORS preflight.
    pub preflight: bool,
    /// The tightest rate limit's numbers, when a rate limit decided (allowed or refused).
    pub rate: Option<&'a RateInfo>,
    /// The request's `Accept-Encoding`, when a plugin has a response stream hook.
    pub accept_encoding: Option<&'a HeaderValue>,
    /// The request's `Accept`, in the response body phase.
    pub accept: Option<&'a HeaderValue>,
    /// The API contract's operation the access phase found (`validate`).
    pub operation: Option<&'a Arc<crate::contract::Operation>>,
}

impl<'a> HookCtx<'a> {
    /// A context that knows only the request's ID.
    pub fn new(request_id: &'a HeaderValue) -> Self {
        Self {
            params: &[],
            identity: None,
            tenant: None,
            request_id,
            tls: false,
            origin: None,
            preflight: false,
            rate: None,
            accept_encoding: None,
            accept: None,
            operation: None,
        }
    }
}

/// A message's body, held whole for a body hook, with the message's fields.
#[derive(Debug)]
pub struct Whole<'a> {
    /// The message's fields (its `Content-Length` is set once the hooks are done).
    pub headers: &'a HeaderMap,
    /// The request's query (`None` in the response phase).
    pub query: Option<&'a str>,
    /// The body; a hook changes it by replacing it.
    pub body: bytes::Bytes,
    /// The message's new `Content-Type`, when a hook changes the body's format.
    pub content_type: Option<HeaderValue>,
}

/// Whether a message's body is JSON, as its fields say (`application/json`, or any
/// `+json` type), and not compressed (a `Content-Encoding` other than `identity`).
pub fn is_json(headers: &HeaderMap) -> bool {
    let encoded =
        headers.get(http::header::CONTENT_ENCODING).is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
    let Some(ct) = headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else { return false };
    is_json_media(ct) && !encoded
}

/// Whether a media type (parameters allowed) is JSON: `application/json` or any `+json`
/// type, in any case.
pub fn is_json_media(media_type: &str) -> bool {
    let essence = media_type.split(';').next().unwrap_or_default().trim();
    essence.eq_ignore_ascii_case("application/json")
        || essence.rsplit_once('+').is_some_and(|(_, suffix)| suffix.eq_ignore_ascii_case("json"))
}

/// What the access phase reads besides the request: the same for every request of a route.
#[derive(Debug, Clone, Copy)]
pub struct AccessCtx<'a> {
    /// The consumers (API keys, certificates, plans).
    pub consumers: &'a Consumers,
    /// The `WWW-Authenticate` challenge of the route's 401s: the first authentication
    /// plugin's that asks for a credential ([`Hooks::challenge`]), else `Bearer`.
    pub challenge: Challenge,
}

/// What an access hook decided.
#[derive(Debug)]
pub enum Verdict {
    /// On to the next plugin, then the handler.
    Continue,
    /// Answer with this response (a CORS preflight): no later plugin nor the handler runs,
    /// the response phase does.
    Respond(Response<Body>),
}

/// A plugin written on the phase hooks. Every hook does nothing unless implemented, and is
/// called only when [`Hooks::phases`] reports it.
pub trait Hooks: Send + Sync + fmt::Debug {
    /// The plugin's config key.
    fn kind(&self) -> &'static str;

    /// The hooks this plugin implements: only those are called.
    fn phases(&self) -> Phases;

    /// Whether the plugin authenticates: it writes [`Passed::identity`] when it finds its
    /// credential. The first credential found decides (later authentication plugins are
    /// not called once a caller is known), and a route with one requires a caller
    /// (`authorize`, by default any authenticated caller).
    fn authenticates(&self) -> bool {
        false
    }

    /// The `WWW-Authenticate` challenge this plugin's credential is asked for with, when a
    /// 401 can ask for it.
    fn challenge(&self) -> Option<Challenge> {
        None
    }

    /// Whether the access hook reads the tenant's settings, which the access phase then
    /// looks up before it (from Redis, when tenants are there).
    fn tenant_settings(&self) -> bool {
        false
    }

    /// A request header that carries this plugin's credential, which the upstream must not
    /// see.
    fn credential_header(&self) -> Option<&HeaderName> {
        None
    }

    /// A query parameter that carries this plugin's credential, which neither the upstream
    /// nor the access log may see.
    fn credential_query(&self) -> Option<&str> {
        None
    }

    /// Access phase, before the request is changed: may refuse it (`Err`, the answer is the
    /// refusal's error), answer it ([`Verdict::Respond`]), wait (a key fetch, a Redis round
    /// trip, a leaky bucket's delay), and write what later hooks and the response phase read
    /// into `state`. Runs in the registry's order; the request's tenant is settled before
    /// the kinds from [`TENANT_SETTLED_BEFORE`] on.
    fn access(
        &self,
        _req: &RequestView<'_>,
        _cx: &AccessCtx<'_>,
        _state: &mut Passed,
    ) -> impl Future<Output = Result<Verdict, Refusal>> + Send {
        async { Ok(Verdict::Continue) }
    }

    /// Request phase, after the access phase, the credentials' removal and the identity
    /// headers: may change the request's head (not its body) before the handler. Runs in
    /// the registry's order.
    fn request(&self, _req: &mut Request<Body>, _ctx: &HookCtx<'_>) {}

    /// Response phase: may change the response's head, whoever made it (the handler, a
    /// refusal, a preflight answer). Runs in the registry's reverse order.
    fn response(&self, _res: &mut Response<Body>, _ctx: &HookCtx<'_>) {}

    /// The most bytes of a body this plugin's body hooks read: a larger body is the
    /// client's error (413) in the request phase, the upstream's (502) in the response
    /// phase.
    fn body_limit(&self) -> u64 {
        0
    }

    /// Whether the body hooks read a message with these fields (a JSON plugin: a JSON
    /// body), in the request body phase (`request`) or the response body phase. A message
    /// no plugin wants streams through untouched.
    fn wants_body(&self, _headers: &HeaderMap, _request: bool, _ctx: &HookCtx<'_>) -> bool {
        false
    }

    /// Request body phase, after the request phase and before the handler: the request's
    /// whole body (read up to [`Hooks::body_limit`]), to read or change. Runs in the
    /// registry's order; an error is the answer.
    fn request_body(&self, _msg: &mut Whole<'_>, _ctx: &HookCtx<'_>) -> Result<(), GatewayError> {
        Ok(())
    }

    /// Response body phase, on the handler's answer before the response phase: its whole
    /// body, to read or change. Runs in the registry's reverse order; an error is the
    /// answer.
    fn response_body(&self, _msg: &mut Whole<'_>, _ctx: &HookCtx<'_>) -> Result<(), GatewayError> {
        Ok(())
    }

    /// Response stream phase, on a handler's answer after the response body phase and
    /// before the response phase: may change the head and return a transform that the
    /// body then streams through (compression), or `None` to leave the body as it is. Runs
    /// in the registry's reverse order; each transform wraps the body the ones before it
    /// made. On a response to HEAD the head changes as for GET and the transform is
    /// dropped.
    fn response_stream(
        &self,
        _status: StatusCode,
        _headers: &mut HeaderMap,
        _ctx: &HookCtx<'_>,
    ) -> Option<Box<dyn StreamTransform>> {
        None
    }
}

/// The plugin kinds: one enum variant each, in the order their hooks run (the response
/// phase runs them backwards). [`Instance`], [`Order`] and the dispatch of every hook are
/// generated from this one list.
macro_rules! registry {
    ($($(#[doc = $doc:literal])* $kind:ident($ty:ty),)+) => {
        /// A compiled plugin of one of the registered kinds.
        #[derive(Debug)]
        pub enum Instance {
            $($(#[doc = $doc])* $kind($ty),)+
        }

        /// A plugin kind's place in the order: the registry's list order.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
        pub enum Order {
            $($(#[doc = $doc])* $kind,)+
        }

        impl Order {
            /// Every kind, in order.
            pub const ALL: &[Order] = &[$(Order::$kind,)+];
        }

        impl Instance {
            /// The plugin's place in the order.
            pub fn order(&self) -> Order {
                match self { $(Self::$kind(_) => Order::$kind,)+ }
            }

            /// See [`Hooks::kind`].
            pub fn kind(&self) -> &'static str {
                match self { $(Self::$kind(p) => p.kind(),)+ }
            }

            /// See [`Hooks::phases`].
            pub fn phases(&self) -> Phases {
                match self { $(Self::$kind(p) => p.phases(),)+ }
            }

            /// See [`Hooks::authenticates`].
            pub fn authenticates(&self) -> bool {
                match self { $(Self::$kind(p) => p.authenticates(),)+ }
            }

            /// See [`Hooks::challenge`].
            pub fn challenge(&self) -> Option<Challenge> {
                match self { $(Self::$kind(p) => p.challenge(),)+ }
            }

            /// See [`Hooks::tenant_settings`].
            pub fn tenant_settings(&self) -> bool {
                match self { $(Self::$kind(p) => p.tenant_settings(),)+ }
            }

            /// See [`Hooks::credential_header`].
            pub fn credential_header(&self) -> Option<&HeaderName> {
                match self { $(Self::$kind(p) => p.credential_header(),)+ }
            }

            /// See [`Hooks::credential_query`].
            pub fn credential_query(&self) -> Option<&str> {
                match self { $(Self::$kind(p) => p.credential_query(),)+ }
            }

            /// See [`Hooks::access`].
            pub async fn access(
                &self,
                req: &RequestView<'_>,
                cx: &AccessCtx<'_>,
                state: &mut Passed,
            ) -> Result<Verdict, Refusal> {
                match self { $(Self::$kind(p) => p.access(req, cx, state).await,)+ }
            }

            /// See [`Hooks::request`].
            pub fn request(&self, req: &mut Request<Body>, ctx: &HookCtx<'_>) {
                match self { $(Self::$kind(p) => p.request(req, ctx),)+ }
            }

            /// See [`Hooks::response`].
            pub fn response(&self, res: &mut Response<Body>, ctx: &HookCtx<'_>) {
                match self { $(Self::$kind(p) => p.response(res, ctx),)+ }
            }

            /// See [`Hooks::body_limit`].
            pub fn body_limit(&self) -> u64 {
                match self { $(Self::$kind(p) => p.body_limit(),)+ }
            }

            /// See [`Hooks::wants_body`].
            pub fn wants_body(&self, headers: &HeaderMap, request: bool, ctx: &HookCtx<'_>) -> bool {
                match self { $(Self::$kind(p) => p.wants_body(headers, request, ctx),)+ }
            }

            /// See [`Hooks::request_body`].
            pub fn request_body(&self, msg: &mut Whole<'_>, ctx: &HookCtx<'_>) -> Result<(), GatewayError> {
                match self { $(Self::$kind(p) => p.request_body(msg, ctx),)+ }
            }

            /// See [`Hooks::response_body`].
            pub fn response_body(&self, msg: &mut Whole<'_>, ctx: &HookCtx<'_>) -> Result<(), GatewayError> {
                match self { $(Self::$kind(p) => p.response_body(msg, ctx),)+ }
            }

            /// See [`Hooks::response_stream`].
            pub fn response_stream(
                &self,
                status: StatusCode,
                headers: &mut HeaderMap,
                ctx: &HookCtx<'_>,
            ) -> Option<Box<dyn StreamTransform>> {
                match self { $(Self::$kind(p) => p.response_stream(status, headers, ctx),)+ }
            }
        }
    };
}

registry! {
    /// `ip_filter`: 403 for a client address not allowed.
    IpFilter(super::ip_filter::IpFilter),
    /// `cors`: answers preflights (204, 403); CORS headers on every other response.
    Cors(super::cors::Cors),
    /// `mtls`: the verified client certificate, looked at first (the handshake already
    /// proved it).
    Mtls(super::mtls::MtlsAuth),
    /// `jwt`: a bearer token.
    Jwt(super::jwt::JwtAuth),
    /// `api_key`: a consumer's API key.
    ApiKey(super::api_key::ApiKeyAuth),
    /// `authorize`: 401 without a caller, 403 for a caller not allowed (also the default
    /// one, any authenticated caller, on a route that authenticates without its own).
    Authorize(super::authorize::Authorize),
    /// `rate_limit`: 429, or a delay; `RateLimit-*` response headers.
    RateLimit(Arc<RateLimit>),
    /// `concurrency_limit`: 429 or 503; the slot is held until the response ends.
    ConcurrencyLimit(Arc<ConcurrencyLimit>),
    /// `validate`: the request against its API contract, as the client sent it, once the
    /// caller is known and within its limits.
    Validate(super::validate::Validate),
    /// `cache`: answers from stored responses, around the handler (the pipeline calls it
    /// after the access phase, before the request hooks; it has no hooks of its own).
    Cache(crate::cache::RouteCache),
    /// `query`: changes the request's query.
    Query(super::query::Query),
    /// `request_headers`: changes the request's headers.
    RequestHeaders(super::request_headers::RequestHeaders),
    /// `xml`: XML request bodies to JSON going up; JSON answers to XML (or XML answers to
    /// JSON) coming down, after `response_body` changed them.
    Xml(super::xml::Xml),
    /// `request_body`: changes a JSON request body (after `xml` made it JSON).
    RequestBody(super::request_body::RequestBody),
    /// `response_body`: changes a JSON response body.
    ResponseBody(super::response_body::ResponseBody),
    /// `compression`: compresses the response body as it streams, after the body
    /// plugins changed it (the stream phase follows the body phase).
    Compression(super::compression::Compression),
    /// `response_headers`: changes the response's headers.
    ResponseHeaders(super::response_headers::ResponseHeaders),
    /// `security_headers`: security response headers, first of the response phase so that
    /// `response_headers` can adjust them.
    SecurityHeaders(super::security_headers::SecurityHeaders),
}

/// The request's tenant is settled (named, and its settings looked up when a plugin reads
/// them) in the access phase after authentication and authorization, which it may depend
/// on, and before the kinds from this one on, which may read it.
pub const TENANT_SETTLED_BEFORE: Order = Order::RateLimit;

/// What compiling a plugin needs besides its config: what the compile stage owns.
#[derive(Debug, Clone, Copy)]
pub struct Built<'a> {
    /// The JWT providers, by name.
    pub providers: &'a std::collections::HashMap<String, Arc<super::jwt::JwtProvider>>,
    /// The list's `rate_limit`, compiled by the compile stage (its counters are shared by
    /// the routes of a global plugin and carried over reloads).
    pub rate_limit: Option<&'a Arc<RateLimit>>,
    /// The list's `concurrency_limit`, compiled likewise.
    pub concurrency_limit: Option<&'a Arc<ConcurrencyLimit>>,
    /// The list's `validate` contract, loaded by the compile stage (which reports a bad
    /// document).
    pub contract: Option<&'a Arc<crate::plugins::validate::Contract>>,
    /// The list's `cache`, compiled by the compile stage for the route (its store is shared
    /// by the routes of a global plugin and carried over reloads).
    pub cache: Option<&'a crate::cache::RouteCache>,
}

/// Compiles one plugin of a validated config. `None` when what it names is not there: a
/// JWT provider, or a limit the compile stage did not build (the global list's, which
/// count per route).
pub fn compile(p: &portico_config::Plugin, built: &Built<'_>) -> Option<Instance> {
    use portico_config::Plugin as P;
    // No wildcard arm: a new config variant does not compile until it is registered here.
    Some(match p {
        P::IpFilter(c) => Instance::IpFilter(super::ip_filter::IpFilter::new(c)),
        P::Cors(c) => Instance::Cors(super::cors::Cors::new(c)),
        P::Mtls(c) => Instance::Mtls(super::mtls::MtlsAuth::new(c)),
        P::Jwt(c) => Instance::Jwt(super::jwt::JwtAuth::new(built.providers.get(&c.provider)?.clone())),
        P::ApiKey(c) => Instance::ApiKey(super::api_key::ApiKeyAuth::new(c)),
        P::Authorize(c) => Instance::Authorize(super::authorize::Authorize::new(c)),
        P::RateLimit(_) => Instance::RateLimit(built.rate_limit?.clone()),
        P::ConcurrencyLimit(_) => Instance::ConcurrencyLimit(built.concurrency_limit?.clone()),
        P::Validate(_) => Instance::Validate(super::validate::Validate::new(built.contract?.clone())),
        P::Cache(_) => Instance::Cache(built.cache?.clone()),
        P::Query(c) => Instance::Query(super::query::Query::new(c)),
        P::RequestHeaders(c) => Instance::RequestHeaders(super::request_headers::RequestHeaders::new(c)),
        P::ResponseHeaders(c) => Instance::ResponseHeaders(super::response_headers::ResponseHeaders::new(c)),
        P::RequestBody(c) => Instance::RequestBody(super::request_body::RequestBody::new(c)),
        P::Xml(c) => Instance::Xml(super::xml::Xml::new(c)),
        P::ResponseBody(c) => Instance::ResponseBody(super::response_body::ResponseBody::new(c)),
        P::Compression(c) => Instance::Compression(super::compression::Compression::new(c)),
        P::SecurityHeaders(c) => Instance::SecurityHeaders(super::security_headers::SecurityHeaders::new(c)),
    })
}

/// A value template compiled for requests: its pieces, rendered per request.
#[derive(Debug, Clone)]
pub struct Template(Box<[Piece]>);

impl Template {
    /// Compiles a template validation accepted (an unparsable one renders as its text).
    pub fn new(s: &str) -> Self {
        match ValueTemplate::parse(s) {
            Ok(t) => Self(t.pieces.into()),
            Err(_) => Self(Box::new([Piece::Text(s.to_owned())])),
        }
    }

    /// The value for one request; `None` when a placeholder has no value here. `headers`
    /// and `query` are the request's, when the request phase renders.
    pub fn render(&self, ctx: &HookCtx<'_>, headers: Option<&HeaderMap>, query: Option<&str>) -> Option<String> {
        let mut out = String::new();
        for p in &*self.0 {
            match p {
                Piece::Text(t) => out.push_str(t),
                other => out.push_str(&Self::piece(other, ctx, headers, query)?),
            }
        }
        Some(out)
    }

    /// The value of one placeholder for a request; `None` when it has none here (and for
    /// a call's result, which only an `aggregate` handler knows).
    pub fn piece<'v>(
        p: &'v Piece,
        ctx: &HookCtx<'v>,
        headers: Option<&'v HeaderMap>,
        query: Option<&'v str>,
    ) -> Option<std::borrow::Cow<'v, str>> {
        use std::borrow::Cow;
        Some(match p {
            Piece::Text(t) => Cow::Borrowed(t.as_str()),
            Piece::Param(n) => Cow::Borrowed(ctx.params.iter().find(|(k, _)| &**k == n)?.1.as_ref()),
            Piece::Query(n) => Cow::Borrowed(query_value(query?, n)?),
            Piece::Header(n) => Cow::Borrowed(headers?.get(n.as_str())?.to_str().ok()?),
            Piece::Consumer => Cow::Borrowed(ctx.identity?.consumer.as_ref()?.id.as_ref()),
            Piece::Tenant => Cow::Borrowed(ctx.tenant?),
            Piece::RequestId => Cow::Borrowed(ctx.request_id.to_str().ok()?),
            Piece::Claim(n) => match ctx.identity?.token.as_ref()?.claims.get(n)? {
                serde_json::Value::String(s) => Cow::Borrowed(s.as_str()),
                v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_)) => Cow::Owned(v.to_string()),
                _ => return None,
            },
            Piece::Call(..) => return None,
        })
    }
}

/// The first value of parameter `name` in `query`, as sent.
pub fn query_value<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query.split('&').find_map(|pair| match pair.split_once('=') {
        Some((k, v)) if k == name => Some(v),
        None if pair == name => Some(""),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::collections::HashMap;

    use portico_config::Plugin as P;

    use crate::identity::{hex, sha256};
    use crate::pipeline::TlsInfo;
    use crate::router::Params;

    /// One config per plugin kind, each one that acts on the sample request (the access
    /// hooks: refuses, answers or writes the request's state; the request hooks: changes
    /// the request) and on the sample response.
    const SAMPLES: &[&str] = &[
        "ip_filter: { deny: ['192.0.2.0/24'] }",
        "cors: { origins: ['https://app.test'] }",
        "mtls: {}",
        "jwt: { provider: idp }",
        "api_key: { header: x-api-key }",
        "authorize: {}",
        "rate_limit: { limits: [{ limit: 10, per: 1m }] }",
        "concurrency_limit: { max: 1 }",
        "query: { set: { page: '1' } }",
        "request_headers: { set: { x-a: '1' } }",
        "response_headers: { set: { x-b: '2' } }",
        "security_headers: {}",
        "request_body: { set: { a: 1 } }",
        "response_body: { set: { b: 2 } }",
        "compression: { min_size: 0B }",
        "xml: { response: to_xml }",
        "validate: { schemas: { query: { properties: { q: { type: integer } } }, body: { type: array } } }",
        "cache: { ttl: 10s }",
    ];

    /// The config variant's place: a variant added to `portico_config::Plugin` does not
    /// compile until it is given one here, and the tests below then fail until it has a
    /// sample that [`compile`] registers.
    fn variant(p: &P) -> usize {
        match p {
            P::IpFilter(_) => 0,
            P::Cors(_) => 1,
            P::Mtls(_) => 2,
            P::Jwt(_) => 3,
            P::ApiKey(_) => 4,
            P::Authorize(_) => 5,
            P::RateLimit(_) => 6,
            P::ConcurrencyLimit(_) => 7,
            P::Query(_) => 8,
            P::RequestHeaders(_) => 9,
            P::ResponseHeaders(_) => 10,
            P::SecurityHeaders(_) => 11,
            P::RequestBody(_) => 12,
            P::ResponseBody(_) => 13,
            P::Compression(_) => 14,
            P::Xml(_) => 15,
            P::Validate(_) => 16,
            P::Cache(_) => 17,
        }
    }
    const VARIANTS: usize = 18;

    const JWT_SECRET: &str = "0123456789abcdef0123456789abcdef";
    const API_KEY: &str = "k-1";

    /// What the samples need: a JWT provider (a static HS256 key), and the limits each
    /// sample's config makes (in memory, as the compile stage would build them).
    struct Fixture {
        providers: HashMap<String, Arc<super::super::jwt::JwtProvider>>,
        consumers: Consumers,
        token: String,
    }

    impl Fixture {
        fn new() -> Self {
            let metrics = crate::observe::Metrics::new();
            let def = serde_saphyr::from_str(&format!(
                "{{ issuer: iss, audiences: [aud], keys: [{{ alg: HS256, secret: {JWT_SECRET} }}] }}"
            ))
            .unwrap();
            let provider = super::super::jwt::JwtProvider::new("idp", &def, &metrics).unwrap();
            let now = jsonwebtoken::get_current_timestamp();
            let claims = serde_json::json!({ "iss": "iss", "aud": "aud", "sub": "u1", "exp": now + 600 });
            let key = jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()).unwrap();
            let token = jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256), &claims, &key)
                .unwrap();
            let consumers: Vec<portico_config::Consumer> = serde_saphyr::from_str(&format!(
                "[{{ id: c1, api_keys: [{{ sha256: {} }}] }}]",
                hex(&sha256(API_KEY.as_bytes()))
            ))
            .unwrap();
            Self {
                providers: HashMap::from([("idp".to_owned(), Arc::new(provider))]),
                consumers: Consumers::compile(&consumers).unwrap(),
                token,
            }
        }

        /// The sample compiled, with the limit it names built as the compile stage does.
        fn compile(&self, p: &P) -> Option<Instance> {
            let metrics = Arc::new(crate::observe::Metrics::new());
            let rate = match p {
                P::RateLimit(def) => {
                    Some(Arc::new(RateLimit::new("t", "t", def, &Default::default(), None, None, &metrics).unwrap()))
                }
                _ => None,
            };
            let concurrency = match p {
                P::ConcurrencyLimit(def) => Some(Arc::new(ConcurrencyLimit::new("t", def, None).unwrap())),
                _ => None,
            };
            let contract = match p {
                P::Validate(def) => Some(Arc::new(super::super::validate::Contract::compile(def, &metrics).unwrap())),
                _ => None,
            };
            let cache = match p {
                P::Cache(def) => Some(crate::cache::RouteCache::new(
                    Arc::new(crate::cache::Cache::new(def, "t", &metrics, None, None)),
                    &Arc::from("t"),
                    &metrics,
                )),
                _ => None,
            };
            let built = Built {
                providers: &self.providers,
                rate_limit: rate.as_ref(),
                concurrency_limit: concurrency.as_ref(),
                contract: contract.as_ref(),
                cache: cache.as_ref(),
            };
            compile(p, &built)
        }

        /// A request every sample's hooks act on: a CORS preflight from an allowed origin,
        /// with a token, an API key, a query and a header, from a denied address.
        fn request(&self) -> Request<Body> {
            Request::builder()
                .method("OPTIONS")
                .uri("/x?q=1")
                .header("x-in", "1")
                .header("origin", "https://app.test")
                .header("access-control-request-method", "GET")
                .header("authorization", format!("Bearer {}", self.token))
                .header("x-api-key", API_KEY)
                .body(Body::Empty)
                .unwrap()
        }
    }

    /// The access phase's view of a sample request, from a denied address.
    fn view<'a>(req: &'a Request<Body>, params: &'a Params, tls: Option<&'a TlsInfo>) -> RequestView<'a> {
        RequestView {
            method: req.method(),
            uri: req.uri(),
            headers: req.headers(),
            host: "api.test",
            params,
            client_ip: "192.0.2.1".parse().unwrap(),
            tls,
            route: "r",
            flag_upstreams: false,
            body: req.body(),
        }
    }

    fn response() -> Response<Body> {
        Response::builder().header("x-out", "1").body(Body::Empty).unwrap()
    }

    /// The phases a plugin reports are the ones its hooks act in: a hook it does not
    /// report changes nothing (it would be skipped on the fast path), and one it reports
    /// acts. A plugin whose hook is forgotten in `phases` fails here, and so does a config
    /// variant without a sample or not registered in [`compile`].
    #[tokio::test]
    async fn reported_phases_match_the_hooks_that_act() {
        let f = Fixture::new();
        let tls = TlsInfo { client_subject: Some("CN=alice".into()), ..TlsInfo::default() };
        let id = HeaderValue::from_static("r");
        let origin = HeaderValue::from_static("https://app.test");
        let rate =
            RateInfo { limit: 10, remaining: 9, reset_secs: 6, headers: portico_config::RateLimitHeaders::default() };
        let gzip = HeaderValue::from_static("gzip");
        let ctx =
            HookCtx { origin: Some(&origin), rate: Some(&rate), accept_encoding: Some(&gzip), ..HookCtx::new(&id) };
        let cx = AccessCtx { consumers: &f.consumers, challenge: Challenge::Bearer };
        let mut seen = [false; VARIANTS];
        for yaml in SAMPLES {
            let p: P = serde_saphyr::from_str(yaml).unwrap();
            seen[variant(&p)] = true;
            let h = f.compile(&p).unwrap_or_else(|| panic!("{yaml}: not registered"));
            assert_eq!(h.kind(), p.kind());

            let req = f.request();
            let params = Params::new();
            let view = view(&req, &params, Some(&tls));
            let mut state = Passed::default();
            let verdict = h.access(&view, &cx, &mut state).await;
            let wrote =
                state.identity.is_some() || state.rate.is_some() || state.slot.is_some() || state.operation.is_some();
            let acted = wrote || !matches!(verdict, Ok(Verdict::Continue));
            if h.authenticates() {
                assert!(state.identity.is_some(), "{}: the sample's credential is valid", h.kind());
            }
            assert_eq!(acted, h.phases().access, "{}: access hook", h.kind());

            let mut changed = f.request();
            h.request(&mut changed, &ctx);
            let acted = changed.uri() != req.uri() || changed.headers() != req.headers();
            assert_eq!(acted, h.phases().request, "{}: request hook", h.kind());

            let mut res = response();
            h.response(&mut res, &ctx);
            assert_eq!(res.headers() != response().headers(), h.phases().response, "{}: response hook", h.kind());

            // The body hooks, on a JSON body of each message.
            let mut json = HeaderMap::new();
            json.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            // What the access hook found (the API contract's operation) reaches the body hook.
            let body_ctx = HookCtx { operation: state.operation.as_ref(), ..ctx };
            let mut msg =
                Whole { headers: &json, query: None, body: bytes::Bytes::from_static(b"{}"), content_type: None };
            // A body hook acts by changing the body, or by refusing it (a contract check).
            let refused = h.wants_body(&json, true, &body_ctx) && h.request_body(&mut msg, &body_ctx).is_err();
            let acted = refused || &msg.body[..] != b"{}";
            assert_eq!(acted, h.phases().request_body, "{}: request body hook", h.kind());
            let mut msg =
                Whole { headers: &json, query: None, body: bytes::Bytes::from_static(b"{}"), content_type: None };
            if h.wants_body(&json, false, &ctx) {
                h.response_body(&mut msg, &ctx).unwrap();
            }
            assert_eq!(&msg.body[..] != b"{}", h.phases().response_body, "{}: response body hook", h.kind());

            // The stream hook, on a JSON response.
            let mut headers = json.clone();
            let stage = h.response_stream(http::StatusCode::OK, &mut headers, &ctx);
            let acted = stage.is_some() || headers != json;
            assert_eq!(acted, h.phases().response_stream, "{}: response stream hook", h.kind());
        }
        assert_eq!(seen, [true; VARIANTS], "a sample per config variant");
    }

    /// Every config variant is registered, as exactly one kind, and every kind in the
    /// registry is reachable from the config.
    #[test]
    fn every_config_variant_is_registered() {
        let f = Fixture::new();
        let mut orders = Vec::new();
        let mut seen = [false; VARIANTS];
        for yaml in SAMPLES {
            let p: P = serde_saphyr::from_str(yaml).unwrap();
            seen[variant(&p)] = true;
            orders.push(f.compile(&p).unwrap_or_else(|| panic!("{yaml}: not registered")).order());
        }
        assert_eq!(seen, [true; VARIANTS], "a sample per config variant");
        orders.sort();
        assert_eq!(orders, Order::ALL, "one kind per config variant");
    }

    /// A `jwt` plugin whose provider is not there (the compile stage could not build it)
    /// leaves the route closed: the default `authorize` still requires a caller, and no
    /// plugin can name one.
    #[tokio::test]
    async fn an_authentication_plugin_that_did_not_build_fails_closed() {
        let f = Fixture::new();
        let jwt: P = serde_saphyr::from_str("jwt: { provider: gone }").unwrap();
        let built = Built {
            providers: &HashMap::new(),
            rate_limit: None,
            concurrency_limit: None,
            contract: None,
            cache: None,
        };
        let chain = super::super::Chain::compile(&[&jwt], &built);
        assert!(chain.plugins().iter().any(|p| matches!(p, Instance::Authorize(_))), "{chain:?}");
        let req = f.request();
        let params = Params::new();
        let view = view(&req, &params, None);
        let tenants = crate::identity::tenants::Tenants::default();
        let refused = chain.request(&view, &f.consumers, &tenants).await;
        assert!(matches!(refused, Err(ref r) if r.error.status() == 401), "{refused:?}");
    }

    /// The order tables in the docs (the module doc of `plugins/mod.rs`, docs/plugins.md)
    /// list the kinds in the registry's order.
    #[test]
    fn documented_order_is_the_registry_order() {
        let f = Fixture::new();
        let mut kinds: Vec<(Order, &str)> = SAMPLES
            .iter()
            .map(|y| {
                let h = f.compile(&serde_saphyr::from_str(y).unwrap()).unwrap();
                (h.order(), h.kind())
            })
            .collect();
        kinds.sort();
        let registry: Vec<&str> = kinds.iter().map(|(_, k)| *k).collect();
        // Rows `| N | ... `kind` ...`: the kind is the first name in backquotes.
        let table = |text: &str, prefix: &str| -> Vec<String> {
            text.lines()
                .filter_map(|l| l.strip_prefix(prefix))
                .filter_map(|l| {
                    let mut cells = l.split('|').map(str::trim);
                    cells.next()?.parse::<u32>().ok()?;
                    Some(cells.next()?.split('`').nth(1)?.to_owned())
                })
                .collect()
        };
        assert_eq!(table(include_str!("mod.rs"), "//! | "), registry, "plugins/mod.rs");
        assert_eq!(table(include_str!("../../../../docs/plugins.md"), "| "), registry, "docs/plugins.md");
    }

    #[test]
    fn json_is_told_by_the_content_type_and_no_compression() {
        let h = |pairs: &[(&str, &str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.append(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
            }
            is_json(&h)
        };
        assert!(h(&[("content-type", "application/json")]));
        assert!(h(&[("content-type", "Application/JSON; charset=utf-8")]));
        assert!(h(&[("content-type", "application/problem+json")]));
        assert!(h(&[("content-type", "application/json"), ("content-encoding", "identity")]));
        assert!(!h(&[("content-type", "application/json"), ("content-encoding", "gzip")]));
        assert!(!h(&[("content-type", "text/plain")]));
        assert!(!h(&[("content-type", "application/jsonx")]));
        assert!(!h(&[]));
    }

    #[test]
    fn templates_render_or_give_nothing() {
        let id = HeaderValue::from_static("req-7");
        let params = [("id".into(), "42".into())];
        let ctx = HookCtx { params: &params, tenant: Some("acme"), ..HookCtx::new(&id) };
        let mut h = HeaderMap::new();
        h.insert("x-a", HeaderValue::from_static("va"));
        let r = |t: &str| Template::new(t).render(&ctx, Some(&h), Some("a=1&b&c=3"));
        assert_eq!(r("{param.id}/{tenant}/{request_id}/{header.x-a}").as_deref(), Some("42/acme/req-7/va"));
        assert_eq!(r("{query.a}-{query.b}-{query.c}").as_deref(), Some("1--3"));
        assert_eq!(r("{query.d}"), None);
        assert_eq!(r("{consumer}"), None);
        assert_eq!(r("{claim.sub}"), None);
        assert_eq!(r("{param.other}"), None);
    }
}
