//! `validate`: checks a request against its route's API contract before anything else of
//! the route changes it, once the caller is authenticated and within its limits (an
//! anonymous flood costs no schema work). The access hook finds the operation (404 or
//! 405 for none, unless unknown operations pass), checks the path, query and header
//! parameters and the body's media type (415) and presence; the request body hook checks
//! the JSON body. Every problem found is listed in the 400.

use std::sync::Arc;

use bytes::Bytes;
use portico_config::contract::{ResponseCheck, UnknownOperations, Validate as Config};

use super::hooks::{AccessCtx, HookCtx, Hooks, Phases, StreamTransform, Verdict, Whole, is_json};
use super::{Passed, Refusal, RequestView};
use crate::contract::openapi::{Document, Lookup};
use crate::contract::{BodySpec, Inline, Operation, Problem, RequestParts, check_json_body};
use crate::error::{ErrorKind, GatewayError};

/// A compiled contract: an OpenAPI document, or inline schemas.
#[derive(Debug)]
pub struct Contract {
    source: Source,
    base_path: Option<Box<str>>,
    unknown: UnknownOperations,
    max_body: u64,
    /// Answers are checked (log only): where mismatches are counted.
    responses: Option<Arc<crate::observe::Metrics>>,
}

#[derive(Debug)]
enum Source {
    OpenApi(Document),
    /// The schemas, and the one operation they make (its body, when there is a schema).
    Inline(Inline, Arc<Operation>),
}

impl Contract {
    /// Loads and compiles a `validate` plugin's contract; `Err` lists each problem with
    /// its field path under the plugin (`openapi`, `openapi: paths./a.get...`, `schemas.body`).
    /// `metrics` counts answers that break it, when they are checked.
    pub fn compile(c: &Config, metrics: &Arc<crate::observe::Metrics>) -> Result<Self, Vec<(String, String)>> {
        let source = match (&c.openapi, &c.schemas) {
            (Some(file), _) => Source::OpenApi(Document::load(file).map_err(|errors| {
                errors
                    .into_iter()
                    .map(|(at, e)| ("openapi".to_owned(), if at.is_empty() { e } else { format!("{file}: {at}: {e}") }))
                    .collect::<Vec<_>>()
            })?),
            (None, Some(s)) => {
                let inline = Inline::compile(s).map_err(|errors| {
                    errors.into_iter().map(|(at, e)| (format!("schemas.{at}"), e)).collect::<Vec<_>>()
                })?;
                // Required of POST, PUT and PATCH: checked in the access hook.
                let body = inline
                    .body
                    .clone()
                    .map(|schema| BodySpec { required: false, media: vec![("application/json".into(), Some(schema))] });
                let op = Operation { id: "schemas".into(), params: Vec::new(), body, responses: Vec::new() };
                Source::Inline(inline, Arc::new(op))
            }
            (None, None) => return Err(vec![(String::new(), "give openapi or schemas".into())]),
        };
        Ok(Self {
            source,
            base_path: c.base_path.as_deref().map(Box::from),
            unknown: c.unknown_operations,
            max_body: c.max_body.get(),
            responses: (c.responses == ResponseCheck::Log).then(|| metrics.clone()),
        })
    }

    /// The request's operation and its problems so far; `Ok(None)` for an unknown
    /// operation that passes unchecked.
    fn check(&self, req: &RequestView<'_>) -> Result<Option<Arc<Operation>>, GatewayError> {
        let mut problems = Vec::new();
        let op = match &self.source {
            Source::Inline(inline, op) => {
                // Decoded only for a path schema to read.
                let params: Vec<(String, String)> = match inline.path {
                    Some(_) => {
                        req.params.iter().map(|(k, v)| (k.to_owned(), crate::contract::decode_component(v))).collect()
                    }
                    None => Vec::new(),
                };
                let parts = RequestParts { path_params: &params, query: req.uri.query(), headers: req.headers };
                inline.check_params(parts, &mut problems);
                // The body schema applies to any request that sends a body, and requires
                // one of the methods that send one.
                let sends = matches!(*req.method, http::Method::POST | http::Method::PUT | http::Method::PATCH);
                if op.body.is_some() && sends && !sends_body(req) {
                    problems.push(Problem::body_required());
                }
                Some(op.clone())
            }
            Source::OpenApi(doc) => {
                let path = req.uri.path();
                let path = match &self.base_path {
                    None => Some(path),
                    Some(base) => path.strip_prefix(&**base).filter(|rest| rest.is_empty() || rest.starts_with('/')),
                };
                let lookup = match path {
                    Some(p) => {
                        let p = if p.is_empty() { "/" } else { p };
                        match (doc.find(req.method, p), self.unknown) {
                            // Passed unchecked only when no lenient reading of the path is an
                            // operation either: `/orders/` or `/Orders` would reach the
                            // service's `/orders` unchecked otherwise.
                            (Lookup::NoPath, UnknownOperations::Pass) => doc.find_loose(req.method, p),
                            (found, _) => found,
                        }
                    }
                    None => Lookup::NoPath,
                };
                match (lookup, self.unknown) {
                    (Lookup::Found(op, params), _) => {
                        let parts = RequestParts { path_params: &params, query: req.uri.query(), headers: req.headers };
                        op.check_params(parts, &mut problems);
                        Some(op.clone())
                    }
                    (_, UnknownOperations::Pass) => return Ok(None),
                    (Lookup::NoPath, UnknownOperations::Reject) => {
                        return Err(GatewayError::new(ErrorKind::UnknownOperation));
                    }
                    (Lookup::NoMethod(allow), UnknownOperations::Reject) => {
                        return Err(GatewayError::new(ErrorKind::MethodNotAllowed(allow)));
                    }
                }
            }
        };
        if let Some(spec) = op.as_ref().and_then(|o| o.body.as_ref()) {
            let content_type = req.headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
            let sent = sends_body(req);
            if !sent && spec.required {
                problems.push(Problem::body_required());
            } else if sent && spec.for_type(content_type).is_none() && problems.is_empty() {
                return Err(GatewayError::new(ErrorKind::UnsupportedMediaType));
            }
        }
        if problems.is_empty() { Ok(op) } else { Err(violation(problems)) }
    }
}

fn violation(problems: Vec<Problem>) -> GatewayError {
    GatewayError::new(ErrorKind::ContractViolation(problems.into()))
}

/// Whether the request has a body: its framing says so (HTTP/1.1), or its stream has not
/// ended with its head (HTTP/2, where `Content-Length` is optional).
fn sends_body(req: &RequestView<'_>) -> bool {
    !http_body::Body::is_end_stream(req.body)
}

/// The `validate` plugin.
#[derive(Debug)]
pub struct Validate(Arc<Contract>);

impl Validate {
    /// The plugin over a compiled contract.
    pub fn new(c: Arc<Contract>) -> Self {
        Self(c)
    }
}

impl Hooks for Validate {
    fn kind(&self) -> &'static str {
        "validate"
    }

    fn phases(&self) -> Phases {
        Phases { access: true, request_body: true, response_stream: self.0.responses.is_some(), ..Phases::default() }
    }

    fn body_limit(&self) -> u64 {
        self.0.max_body
    }

    fn wants_body(&self, headers: &http::HeaderMap, request: bool, ctx: &HookCtx<'_>) -> bool {
        let content_type = headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
        request
            && ctx
                .operation
                .and_then(|op| op.body.as_ref())
                .is_some_and(|spec| spec.for_type(content_type).is_some_and(|schema| schema.is_some()))
    }

    fn access(
        &self,
        req: &RequestView<'_>,
        _cx: &AccessCtx<'_>,
        state: &mut Passed,
    ) -> impl Future<Output = Result<Verdict, Refusal>> + Send {
        let result = match self.0.check(req) {
            Ok(op) => {
                state.operation = op;
                Ok(Verdict::Continue)
            }
            Err(e) => {
                tracing::debug!(route = req.route, error = ?e.kind, "request breaks the API contract");
                Err(state.refuse(e))
            }
        };
        std::future::ready(result)
    }

    fn response_stream(
        &self,
        status: http::StatusCode,
        headers: &mut http::HeaderMap,
        ctx: &HookCtx<'_>,
    ) -> Option<Box<dyn StreamTransform>> {
        let metrics = self.0.responses.as_ref()?;
        let op = ctx.operation?;
        if !is_json(headers) || op.response_schema(status.as_u16()).is_none() {
            return None;
        }
        Some(Box::new(Tee {
            op: op.clone(),
            status: status.as_u16(),
            metrics: metrics.clone(),
            request_id: ctx.request_id.to_str().unwrap_or("").into(),
            seen: Vec::new(),
            over: false,
            max: self.0.max_body,
            ready: bytes::BytesMut::new(),
        }))
    }

    fn request_body(&self, msg: &mut Whole<'_>, ctx: &HookCtx<'_>) -> Result<(), GatewayError> {
        let Some(spec) = ctx.operation.and_then(|op| op.body.as_ref()) else { return Ok(()) };
        let mut problems = Vec::new();
        if msg.body.is_empty() {
            if spec.required {
                problems.push(Problem::body_required());
            }
        } else {
            let content_type = msg.headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
            let schema = spec.for_type(content_type).flatten();
            check_json_body(schema.map(|s| &**s), &msg.body, &mut problems);
        }
        if problems.is_empty() { Ok(()) } else { Err(violation(problems)) }
    }
}

/// Passes an answer through unchanged while keeping a copy (up to `max` bytes), checked
/// against the operation's response schema when the answer ends: a mismatch is logged and
/// counted, never answered. An answer past `max` is not checked.
#[derive(Debug)]
struct Tee {
    op: Arc<Operation>,
    status: u16,
    metrics: Arc<crate::observe::Metrics>,
    request_id: Box<str>,
    seen: Vec<u8>,
    over: bool,
    max: u64,
    ready: bytes::BytesMut,
}

impl StreamTransform for Tee {
    fn data(&mut self, piece: &[u8]) -> Result<(), crate::body::BoxError> {
        if !self.over {
            if (self.seen.len() + piece.len()) as u64 > self.max {
                self.over = true;
                self.seen = Vec::new();
            } else {
                self.seen.extend_from_slice(piece);
            }
        }
        // The piece goes on as it came: one copy, into the bytes ready to go.
        self.ready.extend_from_slice(piece);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), crate::body::BoxError> {
        Ok(())
    }

    fn end(&mut self) -> Result<(), crate::body::BoxError> {
        if self.over {
            return Ok(());
        }
        let Some(schema) = self.op.response_schema(self.status) else { return Ok(()) };
        let mut problems = Vec::new();
        check_json_body(Some(schema), &self.seen, &mut problems);
        if !problems.is_empty() {
            self.metrics.response_contract_violation(&self.op.id);
            let list: Vec<String> =
                problems.iter().map(|p| format!("{} ({}): {}", p.pointer, p.rule, p.message)).collect();
            tracing::warn!(
                operation = %self.op.id,
                status = self.status,
                request_id = %self.request_id,
                problems = %list.join("; "),
                "upstream answer breaks the API contract"
            );
        }
        Ok(())
    }

    fn ready(&self) -> usize {
        self.ready.len()
    }

    fn take(&mut self) -> Bytes {
        self.ready.split().freeze()
    }
}
