//! `request_body`: changes a JSON request body before it goes upstream (remove, rename,
//! move, set, add fields, in that order). Values may use every template placeholder. Only
//! JSON bodies are read (by `Content-Type`, not compressed), up to `max_size` (413 past
//! it); a body that says it is JSON and is not is refused with 400. Any other body streams
//! through untouched.

use portico_config::BodyTransform;

use super::hooks::{HookCtx, Hooks, Phases, Whole, is_json};
use super::json_edit::{self, JsonEdit};
use crate::error::{ErrorKind, GatewayError};

/// The `request_body` plugin.
#[derive(Debug)]
pub struct RequestBody(JsonEdit);

impl RequestBody {
    /// Compiles the plugin's config.
    pub fn new(c: &BodyTransform) -> Self {
        Self(JsonEdit::new(c))
    }
}

impl Hooks for RequestBody {
    fn kind(&self) -> &'static str {
        "request_body"
    }

    fn phases(&self) -> Phases {
        Phases { request_body: true, ..Phases::default() }
    }

    fn body_limit(&self) -> u64 {
        self.0.max_size
    }

    fn wants_body(&self, headers: &http::HeaderMap, _request: bool, _ctx: &HookCtx<'_>) -> bool {
        is_json(headers)
    }

    fn request_body(&self, msg: &mut Whole<'_>, ctx: &HookCtx<'_>) -> Result<(), GatewayError> {
        let mut doc: serde_json::Value = serde_json::from_slice(&msg.body)
            .map_err(|_| GatewayError::new(ErrorKind::BadRequest("request body is not valid JSON")))?;
        let req = json_edit::Request { headers: Some(msg.headers), query: msg.query };
        self.0.apply(&mut doc, ctx, req).map_err(|e| {
            tracing::debug!(error = %e, "request body transform failed");
            GatewayError::new(ErrorKind::BadRequest("request body could not be transformed"))
        })?;
        msg.body = doc.to_string().into();
        Ok(())
    }
}
