//! The `publish` handler: the request becomes an event on a Redis stream (`XADD` with a
//! bounded `MAXLEN`), answered 202 with the event's ID only once Redis acknowledged it. When
//! Redis is slow or down the answer is 503 within the route's timeout: never a 202 for an
//! event Redis did not take. Each event carries an idempotency key (the client's
//! `Idempotency-Key`, else the request ID), so that a client may retry a 503 and consumers
//! drop what they have seen.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderName, HeaderValue, Request, Response, StatusCode, header};

use crate::body::{Body, Bounded, collect_bounded};
use crate::error::{ErrorKind, GatewayError};
use crate::identity::Identity;
use crate::store::redis::RedisStore;

/// The longest `Idempotency-Key` taken; a longer one is refused (400).
const MAX_KEY: usize = 256;

/// A compiled `publish`.
#[derive(Debug)]
pub struct Publish {
    /// The stream's key, with `redis.key_prefix`.
    key: String,
    /// The stream as configured, for the answer.
    stream: Arc<str>,
    max_len: u64,
    /// Headers copied, with their field names (`header.<name>`).
    headers: Box<[(HeaderName, String)]>,
    timeout: Option<Duration>,
    /// The deployment's Redis; `None` when compiled only to be checked.
    store: Option<Arc<RedisStore>>,
}

/// What the handler reads of the request's state.
#[derive(Debug, Clone, Copy)]
pub struct Ctx<'a> {
    /// The request's ID.
    pub request_id: &'a HeaderValue,
    /// The authenticated caller.
    pub identity: Option<&'a Identity>,
    /// The request's tenant.
    pub tenant: Option<&'a str>,
    /// The largest body taken (the listener's `max_body`).
    pub max_body: u64,
}

impl Publish {
    /// Compiles a validated `publish`.
    pub fn new(p: &portico_config::events::Publish, store: Option<Arc<RedisStore>>) -> Self {
        let prefix = store.as_ref().map_or("", |s| s.prefix());
        let headers = p
            .headers
            .iter()
            .filter_map(|h| {
                let name = HeaderName::from_bytes(h.as_bytes()).ok()?;
                let field = format!("header.{}", name.as_str());
                Some((name, field))
            })
            .collect();
        Self {
            key: format!("{prefix}{}", p.stream),
            stream: p.stream.as_str().into(),
            max_len: p.max_len,
            headers,
            timeout: p.timeout.map(|t| t.get()),
            store,
        }
    }

    /// [`Publish::answer`], boxed: only publish routes pay for its room in the request's
    /// future, and out of line, so the pipeline's own code stays small.
    #[inline(never)]
    pub fn answer_boxed<'a>(
        &'a self,
        req: Request<Body>,
        cx: Ctx<'a>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response<Body>, GatewayError>> + Send + 'a>> {
        Box::pin(self.answer(req, cx))
    }

    /// Publishes the request and answers 202, or fails with the contract's error: 413 for a
    /// body over the limit, 400 for a bad `Idempotency-Key`, 503 when Redis did not
    /// acknowledge in time.
    pub async fn answer(&self, req: Request<Body>, cx: Ctx<'_>) -> Result<Response<Body>, GatewayError> {
        let (parts, body) = req.into_parts();
        let idempotency_key = match parts.headers.get("idempotency-key") {
            Some(v) if v.is_empty() || v.len() > MAX_KEY => {
                return Err(GatewayError::new(ErrorKind::BadRequest("invalid Idempotency-Key")));
            }
            Some(v) => v.as_bytes(),
            None => cx.request_id.as_bytes(),
        };
        let body = match collect_bounded(body, cx.max_body).await {
            Ok(b) => b,
            Err(Bounded::TooLarge) => return Err(GatewayError::new(ErrorKind::PayloadTooLarge)),
            Err(Bounded::Failed(e)) => return Err(GatewayError::request_body(&*e)),
        };
        let Some(store) = &self.store else { return Err(GatewayError::new(ErrorKind::BrokerUnavailable)) };
        let millis = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&self.key).arg("MAXLEN").arg("~").arg(self.max_len).arg("*");
        cmd.arg("idempotencyKey").arg(idempotency_key);
        cmd.arg("requestId").arg(cx.request_id.as_bytes());
        cmd.arg("time").arg(millis.to_string());
        cmd.arg("method").arg(parts.method.as_str());
        cmd.arg("path").arg(parts.uri.path());
        if let Some(q) = parts.uri.query() {
            cmd.arg("query").arg(q);
        }
        if let Some(id) = cx.identity {
            cmd.arg("userId").arg(&*id.user_id);
        }
        if let Some(t) = cx.tenant {
            cmd.arg("tenant").arg(t);
        }
        if let Some(ct) = parts.headers.get(header::CONTENT_TYPE) {
            cmd.arg("contentType").arg(ct.as_bytes());
        }
        for (name, field) in &*self.headers {
            for v in parts.headers.get_all(name) {
                cmd.arg(field).arg(v.as_bytes());
            }
        }
        cmd.arg("body").arg(&body[..]);
        let timeout = self.timeout.unwrap_or_else(|| store.timeout());
        let id: String = match store.query(&cmd, timeout).await {
            Ok(id) => id,
            Err(e) => {
                tracing::warn!(stream = %self.stream, error = %e, "event not published");
                return Err(GatewayError::new(ErrorKind::BrokerUnavailable));
            }
        };
        let answer = serde_json::json!({
            "eventId": id,
            "stream": &*self.stream,
            "requestId": cx.request_id.to_str().unwrap_or(""),
        });
        Ok(crate::error::json_response(StatusCode::ACCEPTED, answer.to_string()))
    }
}
