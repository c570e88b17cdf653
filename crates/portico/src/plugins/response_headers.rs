//! `response_headers`: changes the response's headers before they reach the client
//! (remove, rename, set, add, append, in that order; the same operations as
//! `request_headers`). Values may use `{consumer}`, `{tenant}`, `{claim.NAME}` and
//! `{request_id}`: what is still known when the response is written.

use http::Response;
use portico_config::HeaderTransform;

use super::hooks::{HookCtx, Hooks, Phases};
use super::request_headers::HeaderOps;
use crate::body::Body;

/// The `response_headers` plugin.
#[derive(Debug)]
pub struct ResponseHeaders(HeaderOps);

impl ResponseHeaders {
    /// Compiles the plugin's config.
    pub fn new(c: &HeaderTransform) -> Self {
        Self(HeaderOps::new(c))
    }
}

impl Hooks for ResponseHeaders {
    fn kind(&self) -> &'static str {
        "response_headers"
    }

    fn phases(&self) -> Phases {
        Phases { response: true, ..Phases::default() }
    }

    fn response(&self, res: &mut Response<Body>, ctx: &HookCtx<'_>) {
        self.0.apply(res.headers_mut(), ctx, None, None);
    }
}
