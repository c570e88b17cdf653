//! The `aggregate` handler: one client request, several upstream calls, one JSON answer.
//!
//! Each call is built from the client's request (path parameters, query, headers, the
//! caller, the tenant, JWT claims) and from other calls' results (`{profile.id}`), and
//! goes out through [`proxy::forward`], so the upstream's balancing, health, breaker,
//! retries and pool apply exactly as for a proxied request. Calls start as soon as the
//! calls they name have answered: those that name none start at once, together.
//!
//! Failure is explicit. A call fails on a gateway error (unavailable, timed out), a status
//! outside 2xx, a body over its `max_size`, or a body that is not JSON; a call whose inputs
//! failed does not run. A required call's failure is the answer's: 502 (504 for a timeout)
//! with the contract's JSON error naming the call and why, never a backend's address. An
//! optional call's failure leaves its fallback (or nothing) in the answer, which then says
//! so: `X-Aggregate-Partial: true` and an `errors` object naming each failed call.

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use portico_config::transform::{Piece, ValueTemplate};
use serde_json::{Map, Value};
use tokio::time::Instant;

use super::proxy::{self, ProxyCtx};
use crate::body::{Body, Bounded, collect_bounded};
use crate::compile::CompiledRoute;
use crate::error::{ErrorKind, GatewayError, Side};
use crate::observe::access_log::CallLog;
use crate::pipeline::Outcome;
use crate::plugins::hooks::{HookCtx, Template};
use crate::plugins::json_edit::{self, Path};
use crate::upstream::Upstream;

/// What a value may keep unencoded in a path segment or a query value: letters, digits,
/// `-`, `_` and `~`. A `.` is encoded too, so no value can make a dot segment.
const VALUE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'~');

/// A compiled `aggregate`.
#[derive(Debug)]
pub struct Aggregate {
    calls: Box<[Call]>,
    deadline: Duration,
    all_or_nothing: bool,
    shape: Option<Shaping>,
    jq: Option<portico_config::jq::Jq>,
}

/// A compiled `shape`: `extract`, `allow`, `deny`, `rename`, `move`, `wrap`, in order.
#[derive(Debug)]
struct Shaping {
    extract: Option<Path>,
    allow: Box<[Path]>,
    deny: Box<[Path]>,
    rename: Box<[(Path, String)]>,
    moves: Box<[(Path, Path)]>,
    wrap: Option<String>,
}

impl Shaping {
    fn new(s: &portico_config::aggregate::Shape) -> Self {
        Self {
            extract: s.extract.as_deref().map(json_edit::path),
            allow: s.allow.iter().map(|p| json_edit::path(p)).collect(),
            deny: s.deny.iter().map(|p| json_edit::path(p)).collect(),
            rename: s.rename.iter().map(|(p, to)| (json_edit::path(p), to.clone())).collect(),
            moves: s.move_to.iter().map(|(p, to)| (json_edit::path(p), json_edit::path(to))).collect(),
            wrap: s.wrap.clone(),
        }
    }

    /// The value reshaped; `None` when `extract` finds nothing.
    fn apply(&self, mut v: Value) -> Option<Value> {
        if let Some(p) = &self.extract {
            v = json_edit::take(&mut v, p)?;
        }
        if !self.allow.is_empty() {
            let mut kept = Value::Object(Map::new());
            for p in &self.allow {
                if let Some(x) = json_edit::get(&v, p) {
                    json_edit::put(&mut kept, p, x.clone(), true);
                }
            }
            v = kept;
        }
        for p in &self.deny {
            json_edit::take(&mut v, p);
        }
        for (p, to) in &self.rename {
            json_edit::rename(&mut v, p, to);
        }
        for (from, to) in &self.moves {
            if let Some(x) = json_edit::take(&mut v, from) {
                json_edit::put(&mut v, to, x, true);
            }
        }
        if let Some(key) = &self.wrap {
            let mut m = Map::new();
            m.insert(key.clone(), v);
            v = Value::Object(m);
        }
        Some(v)
    }
}

/// A compiled template: its pieces.
type Tpl = Box<[Piece]>;

#[derive(Debug)]
struct Call {
    name: std::sync::Arc<str>,
    upstream: std::sync::Arc<Upstream>,
    method: Method,
    path: Tpl,
    query: Box<[(Box<str>, Tpl)]>,
    headers: Box<[(HeaderName, Tpl)]>,
    body: Option<Shape>,
    /// The calls this one names, by index.
    deps: Box<[usize]>,
    timeout: Option<Duration>,
    required: bool,
    fallback: Option<Value>,
    max_size: u64,
    merge: bool,
    shape: Option<Shaping>,
}

/// A JSON body template: every string a template.
#[derive(Debug)]
enum Shape {
    Value(Value),
    Text(Tpl),
    Array(Vec<Shape>),
    Object(Vec<(String, Shape)>),
}

/// Why a call failed, as the answer names it.
#[derive(Clone, Debug, PartialEq)]
enum Failure {
    /// No answer in time (the call's timeout, or the answer's deadline).
    Timeout,
    /// The upstream could not be reached or answered badly (no target, breaker open,
    /// connection refused, malformed answer).
    Unavailable,
    /// The upstream answered with a status outside 2xx.
    Status(u16),
    /// The body was larger than the call's `max_size`.
    TooLarge,
    /// The body was not JSON.
    InvalidJson,
    /// A call this one needs failed.
    Dependency(std::sync::Arc<str>),
    /// A value this call needs is not there (a placeholder with nothing behind it).
    MissingValue,
    /// The client's own request failed (its body, its limits): the client's error.
    Client(GatewayError),
}

impl Failure {
    fn reason(&self) -> &'static str {
        match self {
            Failure::Timeout => "timeout",
            Failure::Unavailable => "unavailable",
            Failure::Status(_) => "status",
            Failure::TooLarge => "too_large",
            Failure::InvalidJson => "invalid_json",
            Failure::Dependency(_) => "dependency_failed",
            Failure::MissingValue => "missing_value",
            Failure::Client(_) => "client_error",
        }
    }

    /// The `errors` entry: `{"reason": .., "upstreamStatus": N}` or `{"reason": .., "call": ..}`.
    fn describe(&self) -> Value {
        let mut m = Map::new();
        m.insert("reason".into(), self.reason().into());
        match self {
            Failure::Status(s) => {
                m.insert("upstreamStatus".into(), (*s).into());
            }
            Failure::Dependency(c) => {
                m.insert("call".into(), (**c).into());
            }
            _ => {}
        }
        Value::Object(m)
    }
}

/// What the handler needs of the request and the connection.
#[derive(Debug)]
pub struct Ctx<'a> {
    /// The matched route.
    pub route: &'a CompiledRoute,
    /// Path parameters, caller, tenant, request ID: what templates read.
    pub hook: HookCtx<'a>,
    /// The client's request headers (after the request plugins).
    pub headers: &'a HeaderMap,
    /// The client's query.
    pub query: Option<&'a str>,
    /// Forwarding headers of the connection's peer.
    pub peer: &'a crate::forwarded::PeerHeaders,
    /// Whether the peer is a trusted proxy.
    pub peer_trusted: bool,
    /// The client's IP.
    pub client_ip: std::net::IpAddr,
    /// Process-wide state.
    pub shared: &'a crate::Shared,
    /// The connection's TLS facts.
    pub tls: Option<&'a crate::pipeline::TlsInfo>,
    /// The request ID header and value.
    pub request_id: (&'a HeaderName, &'a HeaderValue),
    /// The identity headers to send each call (the caller and tenant as verified).
    pub identity: &'a crate::identity::IdentityHeaders,
}

impl Aggregate {
    /// Compiles what validation accepted; `upstreams` finds each call's upstream.
    pub fn new(
        c: &portico_config::aggregate::Aggregate,
        upstreams: &dyn Fn(&str) -> Option<std::sync::Arc<Upstream>>,
    ) -> Option<Self> {
        let names: Vec<&str> = c.calls.iter().map(|c| c.name.as_str()).collect();
        let tpl = |s: &str| -> Box<[Piece]> {
            match ValueTemplate::parse_with_calls(s, &names) {
                Ok(t) => t.pieces.into(),
                Err(_) => Box::new([Piece::Text(s.to_owned())]),
            }
        };
        let mut calls = Vec::with_capacity(c.calls.len());
        for call in &c.calls {
            let deps = portico_config::aggregate::dependencies(call, &names)
                .iter()
                .filter_map(|d| names.iter().position(|n| n == d))
                .collect::<std::collections::BTreeSet<_>>();
            calls.push(Call {
                name: call.name.as_str().into(),
                upstream: upstreams(&call.upstream)?,
                method: Method::from_bytes(call.method.as_bytes()).ok()?,
                path: tpl(&call.path),
                query: call.query.iter().map(|(k, v)| (k.as_str().into(), tpl(v))).collect(),
                headers: call
                    .headers
                    .iter()
                    .filter_map(|(k, v)| Some((HeaderName::from_bytes(k.as_bytes()).ok()?, tpl(v))))
                    .collect(),
                body: call.body.as_ref().map(|b| shape(b, &tpl)),
                deps: deps.into_iter().collect(),
                timeout: call.timeout.map(|t| t.get()),
                required: call.required,
                fallback: call.fallback.clone(),
                max_size: call.max_size.get(),
                merge: call.merge,
                shape: call.shape.as_ref().map(Shaping::new),
            });
        }
        Some(Self {
            calls: calls.into(),
            deadline: c.deadline.get(),
            all_or_nothing: c.on_failure == portico_config::aggregate::OnFailure::AllOrNothing,
            shape: c.shape.as_ref().map(Shaping::new),
            // Validation compiled it already.
            jq: c.jq.as_deref().and_then(|code| portico_config::jq::Jq::new(code).ok()),
        })
    }

    /// [`Aggregate::answer`], boxed: only aggregate routes pay for its room in the
    /// request's future, and out of line, so the pipeline's own code stays small.
    #[inline(never)]
    pub fn answer_boxed<'a>(
        &'a self,
        cx: Ctx<'a>,
        outcome: &'a mut Outcome,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response<Body>, GatewayError>> + Send + 'a>> {
        Box::pin(self.answer(cx, outcome))
    }

    /// Answers one request.
    pub async fn answer(&self, cx: Ctx<'_>, outcome: &mut Outcome) -> Result<Response<Body>, GatewayError> {
        let deadline = Instant::now() + self.deadline;
        let n = self.calls.len();
        let mut results: Vec<Option<Result<Value, Failure>>> = vec![None; n];
        let mut started = vec![false; n];
        // How long each call that was sent took (to its whole body, or to the deadline).
        let mut took: Vec<Option<Duration>> = vec![None; n];
        let mut statuses: Vec<Option<u16>> = vec![None; n];
        let mut sent_at: Vec<Option<Instant>> = vec![None; n];
        let mut running = FuturesUnordered::new();
        loop {
            // Start every call whose inputs are in; settle those whose inputs failed. A
            // settled call may unblock others: go round until nothing changes.
            let mut changed = true;
            while changed {
                changed = false;
                for (i, call) in self.calls.iter().enumerate() {
                    if started[i] || call.deps.iter().any(|&d| results[d].is_none()) {
                        continue;
                    }
                    started[i] = true;
                    changed = true;
                    if let Some(&d) = call.deps.iter().find(|&&d| matches!(results[d], Some(Err(_)))) {
                        results[i] = Some(Err(Failure::Dependency(self.calls[d].name.clone())));
                        continue;
                    }
                    match self.request(call, &cx, &results) {
                        Some(req) => {
                            sent_at[i] = Some(Instant::now());
                            running.push(self.call(i, req, &cx, deadline));
                        }
                        None => results[i] = Some(Err(Failure::MissingValue)),
                    }
                }
            }
            if running.is_empty() {
                break;
            }
            match tokio::time::timeout_at(deadline, running.next()).await {
                Ok(Some((i, r, status))) => {
                    took[i] = sent_at[i].map(|at| at.elapsed());
                    statuses[i] = status;
                    results[i] = Some(r);
                }
                Ok(None) => break,
                // The deadline: whatever has not answered has failed.
                Err(_) => break,
            }
        }
        drop(running);
        for (i, at) in sent_at.iter().enumerate() {
            if results[i].is_none() {
                took[i] = at.map(|at| at.elapsed());
            }
        }
        let results: Vec<Result<Value, Failure>> =
            results.into_iter().map(|r| r.unwrap_or(Err(Failure::Timeout))).collect();
        let mut log = Vec::with_capacity(n);
        for (i, (call, r)) in self.calls.iter().zip(&results).enumerate() {
            let reason = r.as_ref().err().map_or("ok", Failure::reason);
            cx.shared.metrics.aggregate_call(&cx.route.name, &call.name, reason, took[i]);
            log.push(CallLog {
                call: call.name.clone(),
                upstream: call.upstream.name.clone(),
                outcome: reason,
                status: statuses[i],
                duration_ms: took[i].map(crate::observe::access_log::ms),
            });
        }
        outcome.calls = Some(log.into());
        self.assemble(results, &cx)
    }

    /// The answer from the calls' results.
    fn assemble(&self, results: Vec<Result<Value, Failure>>, cx: &Ctx<'_>) -> Result<Response<Body>, GatewayError> {
        let mut doc = Map::new();
        let mut errors = Map::new();
        for (call, result) in self.calls.iter().zip(results) {
            match result {
                Ok(Value::Object(fields)) if call.merge => doc.extend(fields),
                Ok(v) => {
                    doc.insert(call.name.to_string(), v);
                }
                Err(Failure::Client(e)) => return Err(e),
                Err(f) if call.required || self.all_or_nothing => return Ok(failed(&call.name, &f, cx)),
                Err(f) => {
                    if let Some(v) = &call.fallback {
                        doc.insert(call.name.to_string(), v.clone());
                    }
                    errors.insert(call.name.to_string(), f.describe());
                }
            }
        }
        let mut doc = Value::Object(doc);
        if let Some(shape) = &self.shape {
            doc = shape.apply(doc).unwrap_or(Value::Null);
        }
        if let Some(jq) = &self.jq {
            doc = match jq.run(&doc) {
                Ok(v) => v,
                Err(e) => {
                    tracing::debug!(route = %cx.route.name, error = %e, "aggregate jq failed");
                    return Err(GatewayError::new(ErrorKind::BadResponse));
                }
            };
        }
        let partial = !errors.is_empty();
        if partial {
            match &mut doc {
                Value::Object(m) => {
                    m.insert("errors".into(), Value::Object(errors));
                }
                other => {
                    let mut m = Map::new();
                    m.insert("result".into(), std::mem::take(other));
                    m.insert("errors".into(), Value::Object(errors));
                    *other = Value::Object(m);
                }
            }
        }
        let body = serde_json::to_vec(&doc).unwrap_or_default();
        let mut res = Response::new(Body::full(body));
        res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if partial {
            res.headers_mut().insert("x-aggregate-partial", HeaderValue::from_static("true"));
        }
        Ok(res)
    }

    /// The request of `call`, or `None` when a value it needs is not there.
    fn request(&self, call: &Call, cx: &Ctx<'_>, results: &[Option<Result<Value, Failure>>]) -> Option<Request<Body>> {
        let value = |name: &str, path: &str| -> Option<&Value> {
            let i = self.calls.iter().position(|c| &*c.name == name)?;
            let Some(Ok(v)) = &results[i] else { return None };
            json_edit::get_by(v, path.split('.').filter(|s| !s.is_empty()))
        };
        let render = |pieces: &[Piece], encode: bool| -> Option<String> {
            let mut out = String::new();
            for p in pieces {
                let text = match p {
                    Piece::Text(t) => {
                        out.push_str(t);
                        continue;
                    }
                    Piece::Call(name, path) => scalar(value(name, path)?)?,
                    other => Template::piece(other, &cx.hook, Some(cx.headers), cx.query)?.into_owned(),
                };
                match encode {
                    true => out.extend(utf8_percent_encode(&text, VALUE)),
                    false => out.push_str(&text),
                }
            }
            Some(out)
        };
        let mut target = render(&call.path, true)?;
        for (i, (k, v)) in call.query.iter().enumerate() {
            target.push(if i == 0 { '?' } else { '&' });
            target.extend(utf8_percent_encode(k, VALUE));
            target.push('=');
            target.push_str(&render(v, true)?);
        }
        let mut headers = HeaderMap::new();
        for (name, v) in &*call.headers {
            headers.insert(name, HeaderValue::from_str(&render(v, false)?).ok()?);
        }
        if let Some(id) = cx.hook.identity {
            cx.identity.apply(id, &mut headers);
        }
        if let Some(t) = cx.hook.tenant {
            cx.identity.set_tenant(t, &mut headers);
        }
        let body = match &call.body {
            None => Body::Empty,
            Some(shape) => {
                let v = fill(shape, &|pieces| {
                    // One placeholder naming a call's value alone: that value, as it is.
                    if let [Piece::Call(name, path)] = pieces {
                        return value(name, path).cloned();
                    }
                    render(pieces, false).map(Value::String)
                })?;
                headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
                let bytes = serde_json::to_vec(&v).ok()?;
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
                Body::full(bytes)
            }
        };
        let mut req = Request::new(body);
        *req.method_mut() = call.method.clone();
        *req.uri_mut() = target.parse().ok()?;
        *req.headers_mut() = headers;
        Some(req)
    }

    /// Runs call `i` through the proxy and reads its JSON answer.
    async fn call(
        &self,
        i: usize,
        req: Request<Body>,
        cx: &Ctx<'_>,
        deadline: Instant,
    ) -> (usize, Result<Value, Failure>, Option<u16>) {
        let call = &self.calls[i];
        let left = deadline.saturating_duration_since(Instant::now());
        let timeout = call.timeout.unwrap_or_else(|| cx.route.timeout_for(&call.upstream)).min(left);
        let ctx = ProxyCtx {
            route: cx.route,
            new_path: None,
            peer: cx.peer,
            peer_trusted: cx.peer_trusted,
            client_ip: cx.client_ip,
            // The body is the gateway's own, already in memory.
            max_body: u64::MAX,
            shared: cx.shared,
            tls: cx.tls,
            upstream_override: None,
            request_id: cx.request_id,
            client_host: None,
            may_upgrade: false,
            started: None,
            timeout: Some(timeout),
        };
        let mut outcome = Outcome::default();
        let res = match proxy::forward(req, &call.upstream, ctx, &mut outcome).await {
            Ok(res) => res,
            Err(e) => {
                if e.counts_against_upstream() {
                    cx.shared.metrics.backend_error(&call.upstream.name, e.metric_kind());
                }
                let failure = match e.kind {
                    ErrorKind::UpstreamTimeout(_) | ErrorKind::ConnectTimeout(_) => Failure::Timeout,
                    _ if e.side() == Side::Downstream => Failure::Client(e),
                    _ => Failure::Unavailable,
                };
                return (i, Err(failure), None);
            }
        };
        let status = res.status().as_u16();
        if !res.status().is_success() {
            return (i, Err(Failure::Status(status)), Some(status));
        }
        let result = read_json(res.into_body(), call.max_size).await.and_then(|v| match &call.shape {
            Some(shape) => shape.apply(v).ok_or(Failure::MissingValue),
            None => Ok(v),
        });
        (i, result, Some(status))
    }
}

/// The response body as JSON, read up to `max` bytes.
async fn read_json(body: Body, max: u64) -> Result<Value, Failure> {
    let bytes = collect_bounded(body, max).await.map_err(|e| match e {
        Bounded::TooLarge => Failure::TooLarge,
        Bounded::Failed(_) => Failure::Unavailable,
    })?;
    serde_json::from_slice(&bytes).map_err(|_| Failure::InvalidJson)
}

/// A value as text in a path, a query or a header: strings as they are, numbers and
/// booleans as JSON writes them; anything else has no text.
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(_) | Value::Bool(_) => Some(v.to_string()),
        _ => None,
    }
}

/// A required call's failure as the answer: the contract's JSON error, naming the call.
fn failed(call: &str, f: &Failure, cx: &Ctx<'_>) -> Response<Body> {
    let status = match f {
        Failure::Timeout => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::BAD_GATEWAY,
    };
    let mut v = serde_json::json!({
        "error": "aggregate call failed",
        "status": status.as_u16(),
        "requestId": cx.request_id.1.to_str().unwrap_or(""),
        "call": call,
    });
    if let (Value::Object(m), Value::Object(d)) = (&mut v, f.describe()) {
        m.extend(d);
    }
    let mut res = Response::new(Body::full(Bytes::from(serde_json::to_vec(&v).unwrap_or_default())));
    *res.status_mut() = status;
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res
}

fn shape(v: &Value, tpl: &dyn Fn(&str) -> Box<[Piece]>) -> Shape {
    match v {
        Value::String(s) => Shape::Text(tpl(s)),
        Value::Array(a) => Shape::Array(a.iter().map(|v| shape(v, tpl)).collect()),
        Value::Object(o) => Shape::Object(o.iter().map(|(k, v)| (k.clone(), shape(v, tpl))).collect()),
        other => Shape::Value(other.clone()),
    }
}

fn fill(s: &Shape, text: &dyn Fn(&[Piece]) -> Option<Value>) -> Option<Value> {
    Some(match s {
        Shape::Value(v) => v.clone(),
        Shape::Text(pieces) => text(pieces)?,
        Shape::Array(a) => Value::Array(a.iter().map(|s| fill(s, text)).collect::<Option<_>>()?),
        Shape::Object(o) => {
            Value::Object(o.iter().map(|(k, s)| Some((k.clone(), fill(s, text)?))).collect::<Option<_>>()?)
        }
    })
}
