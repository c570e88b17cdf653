//! `response_body`: changes a JSON response body before it reaches the client (remove,
//! rename, move, set, add fields, in that order). Values may use `{consumer}`, `{tenant}`,
//! `{claim.NAME}` and `{request_id}`. Only JSON bodies are read (by `Content-Type`, not
//! compressed), up to `max_size`: a larger one, or one that says it is JSON and is not,
//! is answered 502 (the upstream's answer cannot be shaped as the route promises). Any
//! other body streams through untouched.

use portico_config::BodyTransform;

use super::hooks::{HookCtx, Hooks, Phases, Whole, is_json};
use super::json_edit::{self, JsonEdit};
use crate::error::{ErrorKind, GatewayError};

/// The `response_body` plugin.
#[derive(Debug)]
pub struct ResponseBody(JsonEdit);

impl ResponseBody {
    /// Compiles the plugin's config.
    pub fn new(c: &BodyTransform) -> Self {
        Self(JsonEdit::new(c))
    }
}

impl Hooks for ResponseBody {
    fn kind(&self) -> &'static str {
        "response_body"
    }

    fn phases(&self) -> Phases {
        Phases { response_body: true, ..Phases::default() }
    }

    fn body_limit(&self) -> u64 {
        self.0.max_size
    }

    fn wants_body(&self, headers: &http::HeaderMap, _request: bool, _ctx: &HookCtx<'_>) -> bool {
        is_json(headers)
    }

    fn response_body(&self, msg: &mut Whole<'_>, ctx: &HookCtx<'_>) -> Result<(), GatewayError> {
        let mut doc: serde_json::Value =
            serde_json::from_slice(&msg.body).map_err(|_| GatewayError::new(ErrorKind::BadResponse))?;
        self.0.apply(&mut doc, ctx, json_edit::Request::default()).map_err(|e| {
            tracing::debug!(error = %e, "response body transform failed");
            GatewayError::new(ErrorKind::BadResponse)
        })?;
        msg.body = doc.to_string().into();
        Ok(())
    }
}
