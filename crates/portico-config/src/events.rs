//! Event routes: `publish` turns a request into an event on a Redis stream and answers
//! 202 once Redis has it.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::units::Duration;

/// `publish` on a route: the request becomes an event on a Redis stream (the deployment's
/// `redis`), answered 202 with the event's ID once Redis acknowledged it, 503 when it did
/// not in time.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Publish {
    /// The stream's key (`redis.key_prefix` goes in front).
    pub stream: String,
    /// Keep about this many events in the stream (`XADD MAXLEN ~`: Redis trims whole
    /// nodes, so a few more may stay). At least 1.
    #[serde(default = "default_max_len")]
    pub max_len: u64,
    /// Request headers copied into the event, each as a field `header.<name>`.
    #[serde(default)]
    pub headers: Vec<String>,
    /// How long Redis has to acknowledge the event (default: `redis.timeout`); past it the
    /// answer is 503, and the client may retry with the same `Idempotency-Key`.
    #[serde(default)]
    pub timeout: Option<Duration>,
}

fn default_max_len() -> u64 {
    1_000_000
}

/// Checks a route's `publish` (at `path`); `has_redis`: whether `redis` is configured.
pub fn check(path: &str, p: &Publish, has_redis: bool, err: &mut impl FnMut(String, String)) {
    if !has_redis {
        err(path.to_owned(), "publishes to Redis: configure redis (url or cluster)".into());
    }
    if p.stream.trim().is_empty() {
        err(format!("{path}.stream"), "must not be empty".into());
    }
    if p.max_len == 0 {
        err(format!("{path}.max_len"), "must be at least 1".into());
    }
    for (i, h) in p.headers.iter().enumerate() {
        if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
            err(format!("{path}.headers[{i}]"), format!("{h:?} is not a header name"));
        }
    }
    if p.timeout.is_some_and(|t| t.get().is_zero()) {
        err(format!("{path}.timeout"), "must be more than 0s".into());
    }
}
