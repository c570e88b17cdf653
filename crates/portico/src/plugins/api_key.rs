//! API-key authentication: the key from a header (or a query parameter, when configured)
//! is hashed with SHA-256 and looked up among the consumers' key digests. Keys are never
//! held in plain text, in the config or in memory; see [`super::identity::Consumers`].

use http::{HeaderMap, HeaderName, Uri};

use super::hooks::{AccessCtx, Hooks, Phases, Verdict};
use super::{Passed, Refusal, RequestView};
use crate::error::{Challenge, ErrorKind, GatewayError};
use crate::identity::{Consumers, Identity};

/// A compiled `api_key` plugin.
#[derive(Debug)]
pub struct ApiKeyAuth {
    header: Option<HeaderName>,
    query: Option<Box<str>>,
}

/// Longest key looked at; longer values are refused without hashing.
const MAX_KEY_BYTES: usize = 1024;

impl ApiKeyAuth {
    /// Compiles the plugin config (validated).
    pub fn new(cfg: &portico_config::ApiKeyAuth) -> Self {
        Self {
            header: cfg.header.as_deref().and_then(|h| HeaderName::from_bytes(h.as_bytes()).ok()),
            query: cfg.query.as_deref().map(Into::into),
        }
    }

    /// The query parameter that carries keys, if any (never forwarded upstream).
    pub fn query(&self) -> Option<&str> {
        self.query.as_deref()
    }

    /// The header that carries keys, if any (never forwarded upstream).
    pub fn header(&self) -> Option<&HeaderName> {
        self.header.as_ref()
    }

    /// The caller of a request with a key; `Ok(None)` when it carries none.
    pub fn check(
        &self,
        headers: &HeaderMap,
        uri: &Uri,
        consumers: &Consumers,
    ) -> Result<Option<Identity>, GatewayError> {
        let from_header = self.header.as_ref().and_then(|h| headers.get(h)).map(|v| v.as_bytes());
        let from_query = || {
            let name = self.query.as_deref()?;
            uri.query()?.split('&').find_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                (k == name).then_some(v.as_bytes())
            })
        };
        let Some(key) = from_header.or_else(from_query) else { return Ok(None) };
        let refuse = |m| GatewayError::new(ErrorKind::Unauthorized(Challenge::ApiKey, m));
        if key.is_empty() || key.len() > MAX_KEY_BYTES {
            return Err(refuse("invalid API key"));
        }
        let owner = consumers.by_api_key(key).ok_or_else(|| refuse("invalid API key"))?;
        Ok(Some(Identity {
            method: "api_key",
            user_id: owner.consumer.id.clone(),
            consumer: Some(owner.consumer.clone()),
            token: None,
            key_name: owner.name.clone(),
        }))
    }
}

impl Hooks for ApiKeyAuth {
    fn kind(&self) -> &'static str {
        "api_key"
    }

    fn phases(&self) -> Phases {
        Phases { access: true, ..Phases::default() }
    }

    fn authenticates(&self) -> bool {
        true
    }

    fn challenge(&self) -> Option<Challenge> {
        Some(Challenge::ApiKey)
    }

    fn credential_header(&self) -> Option<&HeaderName> {
        self.header()
    }

    fn credential_query(&self) -> Option<&str> {
        self.query()
    }

    async fn access(&self, req: &RequestView<'_>, cx: &AccessCtx<'_>, state: &mut Passed) -> Result<Verdict, Refusal> {
        state.authenticated(self.check(req.headers, req.uri, cx.consumers), self.kind())
    }
}
