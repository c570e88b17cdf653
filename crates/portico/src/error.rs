//! The one error type of the proxy path, and the one place that turns errors into
//! responses, so the contract table in docs/errors.md lives here and nowhere else.

use std::fmt;
use std::time::Duration;

use http::{HeaderValue, Response, StatusCode, header};

use crate::body::Body;

/// nginx's status for a request whose client left before it was answered; never sent.
pub const CLIENT_CLOSED_REQUEST: StatusCode = match StatusCode::from_u16(499) {
    Ok(s) => s,
    Err(_) => StatusCode::BAD_REQUEST,
};

/// Which side of the gateway a failure came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The client sent something we refuse.
    Downstream,
    /// The upstream failed or was too slow.
    Upstream,
    /// The gateway itself (no target, draining).
    Internal,
}

/// What went wrong. Each kind has exactly one HTTP status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// Malformed request (400).
    BadRequest(&'static str),
    /// No route matches (404).
    NotFound,
    /// A route matches the path but not the method (405); carries the `Allow` value.
    MethodNotAllowed(String),
    /// The route's sunset has passed (410); carries what to call instead, when configured.
    Retired(Option<std::sync::Arc<str>>),
    /// The request breaks its route's API contract (400); carries every problem found.
    ContractViolation(std::sync::Arc<[crate::contract::Problem]>),
    /// No operation of the route's API contract matches the request's path (404).
    UnknownOperation,
    /// The request's body has a media type its operation does not take (415).
    UnsupportedMediaType,
    /// Body over the listener's limit (413).
    PayloadTooLarge,
    /// Request head over the listener's limit, in bytes or fields (431).
    HeadersTooLarge,
    /// The request line alone is longer than the listener's head limit (414).
    UriTooLong,
    /// The client closed the connection or reset its stream before its request was whole
    /// (499 in the access log and metrics, as nginx logs it; nobody is there to answer).
    ClientAborted,
    /// The request's deadline passed while the gateway was waiting for the client's body,
    /// not for the upstream (408, as nginx's `client_body_timeout`).
    RequestTimeout,
    /// The deadline the client itself set (gRPC's `grpc-timeout`, shorter than the
    /// route's) passed before the upstream answered (504): the client's choice, never
    /// counted against the upstream.
    ClientDeadline,
    /// The upstream refused the connection or could not be reached (502).
    ConnectFailed,
    /// The upstream reset the connection or sent a malformed response (502).
    BadResponse,
    /// Connecting to the upstream took too long (504).
    ConnectTimeout(Duration),
    /// The upstream did not answer in time (504).
    UpstreamTimeout(Duration),
    /// The upstream has no target to send to (503).
    NoTarget,
    /// The upstream's `max_in_flight` is reached and the wait for a slot timed out (503,
    /// `upstream busy`; metric kind `overloaded`).
    UpstreamMaxInFlight,
    /// The route's `max_in_flight` is reached and the wait for a slot timed out (503,
    /// `route busy`).
    RouteMaxInFlight,
    /// The upstream's circuit breaker is open (503); probes resume after this long.
    CircuitOpen(Duration),
    /// Missing or invalid credentials (401 with `WWW-Authenticate`).
    Unauthorized(Challenge, &'static str),
    /// Authenticated (or not needed) but not allowed (403).
    Forbidden(&'static str),
    /// Over a rate limit (429 with `Retry-After` and the rate-limit headers).
    RateLimited {
        /// The refusing limit's numbers.
        info: crate::plugins::rate_limit::RateInfo,
        /// Seconds until a retry can pass (at least 1).
        retry_after: u64,
    },
    /// The caller's `concurrency_limit` is full: 429, or 503 when `true`.
    ConcurrencyLimited(bool),
    /// The keys to check credentials with are not available yet (503): the identity
    /// provider has not answered since start, or its last answer is too old.
    KeysUnavailable,
    /// The token is valid but whether it was revoked cannot be checked (Redis is down or
    /// too slow) and the provider fails closed (503).
    RevocationUnavailable,
    /// A `store: redis` rate limit cannot reach Redis in time and has `on_store_error:
    /// deny` (503).
    RateLimitUnavailable,
    /// A `publish` route's event was not acknowledged by Redis in time (503).
    BrokerUnavailable,
    /// The client asked for an answer from the cache only (`Cache-Control: only-if-cached`)
    /// and the cache has none (504, as RFC 9111 section 5.2.1.7 says).
    NotCached,
}

/// The `WWW-Authenticate` challenge of a 401.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Challenge {
    /// No bearer token was sent (RFC 6750 section 3: no error code).
    Bearer,
    /// A bearer token was sent and refused (`error="invalid_token"`).
    BearerInvalid,
    /// An API key is expected.
    ApiKey,
}

/// An error on the proxy path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayError {
    /// What went wrong.
    pub kind: ErrorKind,
}

impl GatewayError {
    /// Wraps a kind.
    pub fn new(kind: ErrorKind) -> Self {
        Self { kind }
    }

    /// The side that caused it.
    pub fn side(&self) -> Side {
        match self.kind {
            ErrorKind::BadRequest(_)
            | ErrorKind::NotFound
            | ErrorKind::Retired(_)
            | ErrorKind::ContractViolation(_)
            | ErrorKind::UnknownOperation
            | ErrorKind::UnsupportedMediaType
            | ErrorKind::MethodNotAllowed(_)
            | ErrorKind::PayloadTooLarge
            | ErrorKind::HeadersTooLarge
            | ErrorKind::UriTooLong
            | ErrorKind::ClientAborted
            | ErrorKind::RequestTimeout
            | ErrorKind::ClientDeadline
            | ErrorKind::Unauthorized(..)
            | ErrorKind::Forbidden(_)
            | ErrorKind::RateLimited { .. }
            | ErrorKind::ConcurrencyLimited(_)
            | ErrorKind::NotCached => Side::Downstream,
            ErrorKind::ConnectFailed
            | ErrorKind::BadResponse
            | ErrorKind::ConnectTimeout(_)
            | ErrorKind::UpstreamTimeout(_) => Side::Upstream,
            ErrorKind::NoTarget
            | ErrorKind::UpstreamMaxInFlight
            | ErrorKind::RouteMaxInFlight
            | ErrorKind::CircuitOpen(_)
            | ErrorKind::KeysUnavailable
            | ErrorKind::RevocationUnavailable
            | ErrorKind::RateLimitUnavailable
            | ErrorKind::BrokerUnavailable => Side::Internal,
        }
    }

    /// Whether the request may be retried elsewhere without risk of doing its work twice:
    /// only when the upstream cannot have seen it.
    pub fn retry_safe(&self) -> bool {
        matches!(self.kind, ErrorKind::ConnectFailed | ErrorKind::ConnectTimeout(_))
    }

    /// The HTTP status answered to the client.
    pub fn status(&self) -> StatusCode {
        match self.kind {
            ErrorKind::BadRequest(_) => StatusCode::BAD_REQUEST,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::Retired(_) => StatusCode::GONE,
            ErrorKind::ContractViolation(_) => StatusCode::BAD_REQUEST,
            ErrorKind::UnknownOperation => StatusCode::NOT_FOUND,
            ErrorKind::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorKind::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ErrorKind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ErrorKind::UriTooLong => StatusCode::URI_TOO_LONG,
            ErrorKind::ClientAborted => CLIENT_CLOSED_REQUEST,
            ErrorKind::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorKind::ClientDeadline => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::ConnectFailed | ErrorKind::BadResponse => StatusCode::BAD_GATEWAY,
            ErrorKind::ConnectTimeout(_) | ErrorKind::UpstreamTimeout(_) | ErrorKind::NotCached => {
                StatusCode::GATEWAY_TIMEOUT
            }
            ErrorKind::Unauthorized(..) => StatusCode::UNAUTHORIZED,
            ErrorKind::Forbidden(_) => StatusCode::FORBIDDEN,
            ErrorKind::RateLimited { .. } | ErrorKind::ConcurrencyLimited(false) => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::ConcurrencyLimited(true) => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::NoTarget
            | ErrorKind::UpstreamMaxInFlight
            | ErrorKind::RouteMaxInFlight
            | ErrorKind::CircuitOpen(_)
            | ErrorKind::KeysUnavailable
            | ErrorKind::RevocationUnavailable
            | ErrorKind::RateLimitUnavailable
            | ErrorKind::BrokerUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The message shown to the client. Never includes addresses or internal detail.
    pub fn public_message(&self) -> &'static str {
        match self.kind {
            ErrorKind::BadRequest(m) => m,
            ErrorKind::NotFound => "no route matches this request",
            ErrorKind::Retired(_) => "this API version is retired",
            ErrorKind::ContractViolation(_) => "request does not match the API contract",
            ErrorKind::UnknownOperation => "no operation of the API contract matches this request",
            ErrorKind::UnsupportedMediaType => "content type not accepted by the API contract",
            ErrorKind::MethodNotAllowed(_) => "method not allowed for this route",
            ErrorKind::PayloadTooLarge => "request body too large",
            ErrorKind::HeadersTooLarge => "request headers too large",
            ErrorKind::UriTooLong => "request target too long",
            ErrorKind::ClientAborted => "client closed request",
            ErrorKind::RequestTimeout => "request body not received in time",
            ErrorKind::ClientDeadline => "the call's deadline passed",
            ErrorKind::ConnectFailed => "upstream unavailable",
            ErrorKind::BadResponse => "bad response from upstream",
            ErrorKind::ConnectTimeout(_) => "upstream connect timeout",
            ErrorKind::UpstreamTimeout(_) => "upstream timeout",
            ErrorKind::NoTarget => "no upstream target available",
            ErrorKind::UpstreamMaxInFlight => "upstream busy",
            ErrorKind::RouteMaxInFlight => "route busy",
            ErrorKind::CircuitOpen(_) => "upstream circuit open",
            ErrorKind::Unauthorized(_, m) | ErrorKind::Forbidden(m) => m,
            ErrorKind::RateLimited { .. } => "rate limit exceeded",
            ErrorKind::ConcurrencyLimited(_) => "too many requests in flight",
            ErrorKind::KeysUnavailable | ErrorKind::RevocationUnavailable => "credentials cannot be checked right now",
            ErrorKind::RateLimitUnavailable => "rate limit store unavailable",
            ErrorKind::BrokerUnavailable => "event broker unavailable",
            ErrorKind::NotCached => "not in the cache (only-if-cached)",
        }
    }

    /// Whether this error counts in `gateway_backend_errors_total` for the upstream the
    /// request went to: not the client's doing, and not the gateway's own state (a full
    /// route limit, missing token keys, an unreadable revocation list, an unreachable
    /// rate-limit store). The one rule for proxied requests and aggregate calls alike.
    pub fn counts_against_upstream(&self) -> bool {
        self.side() != Side::Downstream
            && !matches!(
                self.kind,
                ErrorKind::RouteMaxInFlight
                    | ErrorKind::KeysUnavailable
                    | ErrorKind::RevocationUnavailable
                    | ErrorKind::RateLimitUnavailable
                    | ErrorKind::BrokerUnavailable
            )
    }

    /// The `kind` label of `gateway_backend_errors_total`, for upstream-side errors.
    pub fn metric_kind(&self) -> &'static str {
        match self.kind {
            ErrorKind::ConnectFailed => "connect",
            ErrorKind::ConnectTimeout(_) => "connect_timeout",
            ErrorKind::UpstreamTimeout(_) => "timeout",
            ErrorKind::BadResponse => "bad_response",
            ErrorKind::NoTarget => "no_target",
            ErrorKind::UpstreamMaxInFlight => "overloaded",
            ErrorKind::RouteMaxInFlight => "route_busy",
            ErrorKind::CircuitOpen(_) => "circuit_open",
            _ => "other",
        }
    }

    /// The `Retry-After` of this error's answer: a rate limit's wait, 1 s for a full
    /// concurrency limit, the breaker's time until probes (whole seconds, rounded up), and a
    /// short, honest 1 s for every other error not of the client's making.
    pub fn retry_after(&self) -> Option<HeaderValue> {
        match self.kind {
            ErrorKind::RateLimited { retry_after, .. } => Some(HeaderValue::from(retry_after)),
            ErrorKind::ConcurrencyLimited(_) => Some(HeaderValue::from_static("1")),
            ErrorKind::CircuitOpen(wait) => {
                HeaderValue::from_str(&wait.as_millis().div_ceil(1000).max(1).to_string()).ok()
            }
            _ if self.side() != Side::Downstream => Some(HeaderValue::from_static("1")),
            _ => None,
        }
    }

    /// The response for this error.
    pub fn to_response(&self, request_id: &HeaderValue) -> Response<Body> {
        if let ErrorKind::Retired(Some(replacement)) = &self.kind {
            // The contract's body, with what to call instead.
            let body = serde_json::json!({
                "error": self.public_message(),
                "status": 410,
                "requestId": request_id.to_str().unwrap_or(""),
                "replacement": &**replacement,
            });
            return json_response(self.status(), body.to_string());
        }
        if let ErrorKind::ContractViolation(problems) = &self.kind {
            // The contract's body, with each problem: where, which rule, what is wrong.
            let list: Vec<serde_json::Value> = problems
                .iter()
                .map(|p| serde_json::json!({"pointer": p.pointer, "rule": p.rule, "message": p.message}))
                .collect();
            let body = serde_json::json!({
                "error": self.public_message(),
                "status": 400,
                "requestId": request_id.to_str().unwrap_or(""),
                "problems": list,
            });
            return json_response(self.status(), body.to_string());
        }
        let mut res = error_response(self.status(), self.public_message(), request_id);
        if let ErrorKind::MethodNotAllowed(allow) = &self.kind
            && let Ok(v) = HeaderValue::from_str(allow)
        {
            res.headers_mut().insert(header::ALLOW, v);
        }
        if let ErrorKind::Unauthorized(challenge, message) = self.kind {
            res.headers_mut().insert(header::WWW_AUTHENTICATE, challenge.header(message));
        }
        if let ErrorKind::RateLimited { info, .. } = &self.kind {
            info.write(res.headers_mut());
        }
        if let Some(v) = self.retry_after() {
            res.headers_mut().insert(header::RETRY_AFTER, v);
        }
        res
    }
}

impl Challenge {
    /// The `WWW-Authenticate` value. `message` is a static text without quotes.
    fn header(self, message: &'static str) -> HeaderValue {
        let v = match self {
            Challenge::Bearer => return HeaderValue::from_static(r#"Bearer realm="portico""#),
            Challenge::ApiKey => return HeaderValue::from_static(r#"ApiKey realm="portico""#),
            Challenge::BearerInvalid => {
                format!(r#"Bearer realm="portico", error="invalid_token", error_description="{message}""#)
            }
        };
        HeaderValue::from_str(&v).unwrap_or(HeaderValue::from_static(r#"Bearer realm="portico""#))
    }
}

impl fmt::Display for GatewayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ErrorKind::ConnectTimeout(d) => write!(f, "upstream connect timeout after {d:?}"),
            ErrorKind::UpstreamTimeout(d) => write!(f, "upstream timeout after {d:?}"),
            _ => f.write_str(self.public_message()),
        }
    }
}

impl std::error::Error for GatewayError {}

impl From<crate::body::ClientBodyError> for GatewayError {
    fn from(e: crate::body::ClientBodyError) -> Self {
        use crate::body::ClientBodyError as C;
        GatewayError::new(match e {
            C::TooLarge => ErrorKind::PayloadTooLarge,
            C::Malformed => ErrorKind::BadRequest("malformed request body"),
            C::Aborted => ErrorKind::ClientAborted,
        })
    }
}

impl GatewayError {
    /// The answer to a request body that failed while the gateway read it: what its
    /// [`crate::body::ClientBodyError`] says, or a 400 when the error says no more.
    pub fn request_body(e: &(dyn std::error::Error + 'static)) -> Self {
        match e.downcast_ref::<crate::body::ClientBodyError>() {
            Some(client) => GatewayError::from(*client),
            None => GatewayError::new(ErrorKind::BadRequest("request body could not be read")),
        }
    }

    /// The answer to a failed exchange with a target, whichever client carried it:
    /// refused or reset connections and malformed answers 502, a connect timeout 504, the
    /// client's body or target the client's 4xx. `waited` is how long the deadline that
    /// passed (on [`crate::upstream::Error::Timeout`]) or the connect timeout allowed.
    pub fn upstream(e: &crate::upstream::Error, connect_timeout: Duration, waited: Duration) -> Self {
        use crate::upstream::Error as E;
        GatewayError::new(match e {
            E::Connect(_) => ErrorKind::ConnectFailed,
            E::ConnectTimeout => ErrorKind::ConnectTimeout(connect_timeout),
            E::Io(_) | E::Malformed(_) => ErrorKind::BadResponse,
            E::Timeout => ErrorKind::UpstreamTimeout(waited),
            // The client's body; its watch has usually said so already.
            E::Body(e) => return GatewayError::request_body(&**e),
            E::Invalid(m) => ErrorKind::BadRequest(m),
        })
    }
}

/// A gateway-made JSON error: `{"error": "...", "status": N, "requestId": "..."}`.
///
/// `message` is a static string without quotes or backslashes; the request ID is either
/// generated or checked to be `[A-Za-z0-9._:-]`, so neither needs JSON escaping.
pub fn error_response(status: StatusCode, message: &'static str, request_id: &HeaderValue) -> Response<Body> {
    let id = request_id.to_str().unwrap_or("");
    let body = format!(r#"{{"error":"{message}","status":{},"requestId":"{id}"}}"#, status.as_u16());
    json_response(status, body)
}

/// An answer the gateway makes itself: `status` with the JSON `body`, not to be cached.
pub fn json_response(status: StatusCode, body: String) -> Response<Body> {
    let mut res = Response::new(Body::full(body));
    *res.status_mut() = status;
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_maps_to_the_contract_status() {
        let table = [
            (ErrorKind::BadRequest("bad"), 400),
            (ErrorKind::NotFound, 404),
            (ErrorKind::Retired(None), 410),
            (ErrorKind::ContractViolation(std::sync::Arc::from([])), 400),
            (ErrorKind::UnknownOperation, 404),
            (ErrorKind::UnsupportedMediaType, 415),
            (ErrorKind::BrokerUnavailable, 503),
            (ErrorKind::NotCached, 504),
            (ErrorKind::ClientDeadline, 504),
            (ErrorKind::MethodNotAllowed("GET".into()), 405),
            (ErrorKind::PayloadTooLarge, 413),
            (ErrorKind::HeadersTooLarge, 431),
            (ErrorKind::UriTooLong, 414),
            (ErrorKind::ClientAborted, 499),
            (ErrorKind::ConnectFailed, 502),
            (ErrorKind::BadResponse, 502),
            (ErrorKind::NoTarget, 503),
            (ErrorKind::UpstreamMaxInFlight, 503),
            (ErrorKind::RouteMaxInFlight, 503),
            (ErrorKind::CircuitOpen(Duration::from_secs(3)), 503),
            (ErrorKind::Unauthorized(Challenge::Bearer, "missing credentials"), 401),
            (ErrorKind::Forbidden("not allowed"), 403),
            (
                ErrorKind::RateLimited {
                    info: crate::plugins::rate_limit::RateInfo {
                        limit: 10,
                        remaining: 0,
                        reset_secs: 5,
                        headers: portico_config::RateLimitHeaders::Ietf,
                    },
                    retry_after: 5,
                },
                429,
            ),
            (ErrorKind::ConcurrencyLimited(false), 429),
            (ErrorKind::ConcurrencyLimited(true), 503),
            (ErrorKind::KeysUnavailable, 503),
            (ErrorKind::RevocationUnavailable, 503),
            (ErrorKind::RateLimitUnavailable, 503),
            (ErrorKind::ConnectTimeout(Duration::from_secs(1)), 504),
            (ErrorKind::UpstreamTimeout(Duration::from_secs(1)), 504),
        ];
        for (kind, status) in table {
            assert_eq!(GatewayError::new(kind.clone()).status().as_u16(), status, "{kind:?}");
        }
    }

    #[test]
    fn error_body_is_json_with_the_request_id() {
        let id = HeaderValue::from_static("abc-123");
        let res = GatewayError::new(ErrorKind::MethodNotAllowed("GET, PUT".into())).to_response(&id);
        assert_eq!(res.headers()[header::ALLOW], "GET, PUT");
        let Body::Full(Some(b)) = res.body() else { panic!("full body expected") };
        let v: serde_json::Value = serde_json::from_slice(b).unwrap();
        assert_eq!(v["status"], 405);
        assert_eq!(v["requestId"], "abc-123");
        assert_eq!(v["error"], "method not allowed for this route");
    }
}
