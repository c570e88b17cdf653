//! The body phases: a message's whole body for the plugins' body hooks, read under the
//! bound they ask for, when one of them wants it (a JSON plugin: a JSON body). Any other
//! body streams through untouched, and a route without body plugins never comes here.
//! Then the response stream phase: transforms a response body streams through (a
//! compression), set up by the plugins' stream hooks.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::BodyExt as _;

use crate::body::{Body, ClientBody, Transformed, collect_bounded};
use crate::error::{ErrorKind, GatewayError};
use crate::plugins::Chain;
use crate::plugins::hooks::{HookCtx, Instance, Whole};

/// The smallest limit of the plugins that want a body with these fields, for the request
/// (`request`) or the response body phase; `None` when none wants it.
fn limit(chain: &Chain, headers: &HeaderMap, request: bool, ctx: &HookCtx<'_>) -> Option<u64> {
    chain.plugins().iter().filter(|p| wants(p, headers, request, ctx)).map(Instance::body_limit).min()
}

fn wants(p: &Instance, headers: &HeaderMap, request: bool, ctx: &HookCtx<'_>) -> bool {
    let phases = p.phases();
    (if request { phases.request_body } else { phases.response_body }) && p.wants_body(headers, request, ctx)
}

/// Runs the body hooks of `plugins` that want the message, in the given order, on its
/// whole body; returns the new body and, when a hook changed its format, its new type. A
/// hook after one that changed the type sees the new one (an XML request made JSON is
/// then changed by the JSON plugins).
fn run_hooks<'p>(
    plugins: impl Iterator<Item = &'p Instance>,
    headers: &HeaderMap,
    query: Option<&str>,
    mut body: Bytes,
    request: bool,
    ctx: &HookCtx<'_>,
) -> Result<(Bytes, Option<HeaderValue>), GatewayError> {
    let mut retyped: Option<HeaderMap> = None;
    let mut content_type = None;
    for p in plugins {
        let headers = retyped.as_ref().unwrap_or(headers);
        if !wants(p, headers, request, ctx) {
            continue;
        }
        let mut msg = Whole { headers, query, body, content_type: None };
        match request {
            true => p.request_body(&mut msg, ctx)?,
            false => p.response_body(&mut msg, ctx)?,
        }
        body = msg.body;
        if let Some(ct) = msg.content_type {
            let mut h = headers.clone();
            h.insert(header::CONTENT_TYPE, ct.clone());
            retyped = Some(h);
            content_type = Some(ct);
        }
    }
    Ok((body, content_type))
}

/// The message's new body and its length (and its new type, when a hook changed it).
fn replace(headers: &mut HeaderMap, body: Bytes, content_type: Option<HeaderValue>) -> Body {
    if let Some(ct) = content_type {
        headers.insert(header::CONTENT_TYPE, ct);
    }
    headers.remove(header::TRANSFER_ENCODING);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    if body.is_empty() { Body::Empty } else { Body::full(body) }
}

/// The request body phase: the body read whole (past the smallest limit of the plugins
/// that want it, or the listener's `max_body`: 413; a client that breaks it off or sends
/// it malformed: its own error), changed by the hooks in order, and sent on from memory
/// with its new `Content-Length`.
pub(super) async fn request(
    req: &mut Request<Body>,
    chain: &Chain,
    ctx: &HookCtx<'_>,
    max_body: u64,
) -> Result<(), GatewayError> {
    if http_body::Body::is_end_stream(req.body()) {
        return Ok(());
    }
    let Some(limit) = limit(chain, req.headers(), true, ctx) else { return Ok(()) };
    let limit = limit.min(max_body);
    let body = std::mem::take(req.body_mut());
    let bytes = match ClientBody::new(body, limit) {
        Ok((client, _)) => client.collect().await.map(|c| c.to_bytes()).map_err(|e| GatewayError::request_body(&*e))?,
        // In memory already (the lean loop's whole body).
        Err(other) => other.collect().await.map(|c| c.to_bytes()).unwrap_or_default(),
    };
    if bytes.len() as u64 > limit {
        return Err(GatewayError::new(ErrorKind::PayloadTooLarge));
    }
    let (body, ct) = run_hooks(chain.plugins().iter(), req.headers(), req.uri().query(), bytes, true, ctx)?;
    *req.body_mut() = replace(req.headers_mut(), body, ct);
    Ok(())
}

/// The response body phase, on a handler's answer: the body read whole (past the smallest
/// limit of the plugins that want it, or when the upstream breaks it off: 502), changed by
/// the hooks in reverse order, and answered from memory with its new `Content-Length`.
/// The `ETag` goes: it named the body the upstream sent. Answers without a body (to HEAD,
/// 1xx, 204, 304) are left alone.
pub(super) async fn response(
    res: &mut Response<Body>,
    chain: &Chain,
    ctx: &HookCtx<'_>,
    head: bool,
) -> Result<(), GatewayError> {
    let status = res.status();
    if head || status.is_informational() || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok(());
    }
    let Some(limit) = limit(chain, res.headers(), false, ctx) else { return Ok(()) };
    // Too large or broken off: the upstream's answer cannot be shaped (502).
    let bytes = collect_bounded(std::mem::take(res.body_mut()), limit)
        .await
        .map_err(|_| GatewayError::new(ErrorKind::BadResponse))?;
    let (body, ct) = run_hooks(chain.plugins().iter().rev(), res.headers(), None, bytes, false, ctx)?;
    res.headers_mut().remove(header::ETAG);
    *res.body_mut() = replace(res.headers_mut(), body, ct);
    Ok(())
}

/// The response stream phase, on a handler's answer after the body phase: each stream
/// hook (in the registry's reverse order) may change the head and wrap the body in a
/// transform. Answers without a body (1xx, 204, 304) are left alone; on an answer to HEAD
/// the head changes and no transform is kept.
pub(super) fn stream(res: &mut Response<Body>, chain: &Chain, ctx: &HookCtx<'_>, head: bool) {
    let status = res.status();
    if status.is_informational() || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return;
    }
    for p in chain.plugins().iter().rev().filter(|p| p.phases().response_stream) {
        if let Some(stage) = p.response_stream(status, res.headers_mut(), ctx)
            && !head
        {
            let body = std::mem::take(res.body_mut());
            *res.body_mut() = Body::Transformed(Box::new(Transformed::new(body, stage)));
        }
    }
}
