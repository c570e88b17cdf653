//! The phase hooks a plugin implements, the context they read, and the one table of the
//! plugins written on them.
//!
//! A plugin on hooks is one file: its compiled form (built from its config struct at load
//! time), its [`Hooks`] implementation, and its unit tests. Adding one touches that file,
//! its line in [`compile`], its config struct in `portico-config`, the schema and docs.
//! Which phases a route runs is derived from the hooks its plugins report in
//! [`Hooks::phases`]; a test runs every registered plugin through every hook and fails
//! when a hook that is not reported changes anything.

use std::fmt;
use std::sync::Arc;

use http::{HeaderMap, HeaderValue, Request, Response};
use portico_config::transform::{Piece, ValueTemplate};

use crate::body::Body;
use crate::identity::Identity;

/// The phases a plugin takes part in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Phases {
    /// [`Hooks::request`] changes something.
    pub request: bool,
    /// [`Hooks::response`] changes something.
    pub response: bool,
}

/// What a hook may read besides the message it changes.
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
}

/// A plugin written on the phase hooks. Every hook does nothing unless implemented.
pub trait Hooks: Send + Sync + fmt::Debug {
    /// The plugin's config key.
    fn kind(&self) -> &'static str;

    /// The hooks this plugin implements: only those are called.
    fn phases(&self) -> Phases;

    /// Request phase, after authentication, authorization, limits and the identity
    /// headers: may change the request's head (not its body) before the handler. Runs in
    /// [`compile`]'s order.
    fn request(&self, _req: &mut Request<Body>, _ctx: &HookCtx<'_>) {}

    /// Response phase, before the gateway's own response headers (rate limits, CORS,
    /// security headers): may change the response's head. Runs in reverse order.
    fn response(&self, _res: &mut Response<Body>, _ctx: &HookCtx<'_>) {}
}

/// The plugins written on hooks, in the order their request hooks run (the response
/// phase runs them in reverse). The one place a new plugin is registered.
pub fn compile(p: &portico_config::Plugin) -> Option<(u8, Arc<dyn Hooks>)> {
    use portico_config::Plugin as P;
    Some(match p {
        P::Query(c) => (0, Arc::new(super::query::Query::new(c))),
        P::RequestHeaders(c) => (1, Arc::new(super::request_headers::RequestHeaders::new(c))),
        P::ResponseHeaders(c) => (2, Arc::new(super::response_headers::ResponseHeaders::new(c))),
        P::SecurityHeaders(c) => (3, Arc::new(super::security_headers::SecurityHeaders::new(c))),
        _ => return None,
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
                Piece::Param(n) => out.push_str(ctx.params.iter().find(|(k, _)| &**k == n)?.1.as_ref()),
                Piece::Query(n) => out.push_str(query_value(query?, n)?),
                Piece::Header(n) => out.push_str(headers?.get(n.as_str())?.to_str().ok()?),
                Piece::Consumer => out.push_str(&ctx.identity?.consumer.as_ref()?.id),
                Piece::Tenant => out.push_str(ctx.tenant?),
                Piece::RequestId => out.push_str(ctx.request_id.to_str().ok()?),
                Piece::Claim(n) => match ctx.identity?.token.as_ref()?.claims.get(n)? {
                    serde_json::Value::String(s) => out.push_str(s),
                    v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_)) => out.push_str(&v.to_string()),
                    _ => return None,
                },
            }
        }
        Some(out)
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

    /// One config per plugin written on hooks, each one that changes what it touches.
    const SAMPLES: [&str; 4] = [
        "query: { set: { page: '1' } }",
        "request_headers: { set: { x-a: '1' } }",
        "response_headers: { set: { x-b: '2' } }",
        "security_headers: {}",
    ];

    fn request() -> Request<Body> {
        Request::builder().uri("/x?q=1").header("x-in", "1").body(Body::Empty).unwrap()
    }

    fn response() -> Response<Body> {
        Response::builder().header("x-out", "1").body(Body::Empty).unwrap()
    }

    /// The phases a plugin reports are the ones its hooks act in: a hook it does not
    /// report changes nothing (it would be skipped on the fast path), and one it reports
    /// changes its message. A plugin whose hook is forgotten in `phases` fails here.
    #[test]
    fn reported_phases_match_the_hooks_that_act() {
        let id = HeaderValue::from_static("r");
        let ctx = HookCtx { params: &[], identity: None, tenant: None, request_id: &id, tls: false };
        let mut kinds = Vec::new();
        for yaml in SAMPLES {
            let p: portico_config::Plugin = serde_saphyr::from_str(yaml).unwrap();
            let (_, h) = compile(&p).unwrap_or_else(|| panic!("{yaml}: not registered"));
            assert_eq!(h.kind(), p.kind());
            kinds.push(h.kind());
            let mut req = request();
            h.request(&mut req, &ctx);
            let changed = req.uri() != request().uri() || req.headers() != request().headers();
            assert_eq!(changed, h.phases().request, "{}: request hook", h.kind());
            let mut res = response();
            h.response(&mut res, &ctx);
            assert_eq!(res.headers() != response().headers(), h.phases().response, "{}: response hook", h.kind());
        }
        kinds.dedup();
        assert_eq!(kinds.len(), SAMPLES.len(), "one sample per plugin");
    }

    #[test]
    fn templates_render_or_give_nothing() {
        let id = HeaderValue::from_static("req-7");
        let params = [("id".into(), "42".into())];
        let ctx = HookCtx { params: &params, identity: None, tenant: Some("acme"), request_id: &id, tls: false };
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
