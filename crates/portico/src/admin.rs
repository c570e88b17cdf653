//! The admin listener: `/health` (the process is up), `/ready` (it takes traffic; 503
//! while draining), `/metrics` (Prometheus text format) and `/upstreams` (live target
//! health, ejections, in-flight counts and circuit-breaker states, as JSON), and
//! `POST /revocations` (revoke a JWT by `jti`, or every token of a subject, through the
//! shared Redis: see docs/auth.md#revocation), `GET /cache` and `POST /cache/purge` (the
//! response cache's stores and entries; purges reach every instance through Redis: see
//! docs/caching.md#purges-and-inspection).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::Shared;
use crate::body::Body;

/// Serves the admin endpoints until `stop` changes.
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(_) => {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let shared = shared.clone();
                async move {
                    if let Some(refused) = refuse_without_token(&req, &shared) {
                        return Ok::<_, Infallible>(refused);
                    }
                    if req.uri().path() == "/revocations" {
                        return Ok::<_, Infallible>(revocations(req, &shared).await);
                    }
                    if req.uri().path() == "/cache/purge" {
                        return Ok::<_, Infallible>(purge(req, &shared).await);
                    }
                    Ok::<_, Infallible>(handle(&req, &shared))
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .http1_only()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// With `admin.token`, a request for anything but `/health` and `/ready` without
/// `Authorization: Bearer <token>` gets 401. Compared as SHA-256 digests in constant time,
/// so neither the content nor the length of the token leaks through timing.
fn refuse_without_token(req: &Request<Incoming>, shared: &Shared) -> Option<Response<Body>> {
    if matches!(req.uri().path(), "/health" | "/ready") {
        return None;
    }
    let snap = shared.snapshot.load();
    let want = snap.config.admin.token.as_deref()?;
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
        .unwrap_or("");
    let (a, b) = (crate::identity::sha256(want.as_bytes()), crate::identity::sha256(given.as_bytes()));
    if aws_lc_rs::constant_time::verify_slices_are_equal(&a, &b).is_ok() {
        return None;
    }
    let mut res = text(StatusCode::UNAUTHORIZED, "application/json", r#"{"error":"admin token required"}"#.into());
    res.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(r#"Bearer realm="portico-admin""#));
    Some(res)
}

fn handle(req: &Request<Incoming>, shared: &Shared) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "application/json", r#"{"error":"method not allowed"}"#.into());
    }
    match req.uri().path() {
        "/health" => text(StatusCode::OK, "application/json", r#"{"status":"ok"}"#.into()),
        "/ready" => {
            if shared.draining.load(Ordering::SeqCst) {
                text(StatusCode::SERVICE_UNAVAILABLE, "application/json", r#"{"status":"draining"}"#.into())
            } else {
                text(StatusCode::OK, "application/json", r#"{"status":"ready"}"#.into())
            }
        }
        "/upstreams" => {
            let snap = shared.snapshot.load();
            let mut names: Vec<&String> = snap.upstreams.keys().collect();
            names.sort();
            let list: Vec<serde_json::Value> = names.iter().map(|n| snap.upstreams[*n].status()).collect();
            text(StatusCode::OK, "application/json", serde_json::json!({ "upstreams": list }).to_string())
        }
        "/cache" => {
            let q: std::collections::HashMap<String, String> =
                form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()).into_owned().collect();
            let limit = q.get("limit").and_then(|l| l.parse().ok()).unwrap_or(100).min(10_000);
            let snap = shared.snapshot.load();
            let body = crate::cache::purge::inspect(
                &snap,
                q.get("store").map(String::as_str),
                q.get("prefix").map(String::as_str),
                limit,
            );
            text(StatusCode::OK, "application/json", body.to_string())
        }
        "/metrics" => {
            text(StatusCode::OK, "application/openmetrics-text; version=1.0.0; charset=utf-8", shared.metrics.encode())
        }
        _ => text(StatusCode::NOT_FOUND, "application/json", r#"{"error":"not found"}"#.into()),
    }
}

/// Largest `POST /revocations` body.
const MAX_REVOCATION_BODY: usize = 4096;

/// `POST /revocations`: 204 written and published; 400 bad input; 503 no Redis configured
/// or Redis failed.
async fn revocations(req: Request<Incoming>, shared: &Shared) -> Response<Body> {
    let json = "application/json";
    if let Some(refused) = only_post(&req) {
        return refused;
    }
    let Some(service) = &shared.services.revocations else {
        return text(StatusCode::SERVICE_UNAVAILABLE, json, r#"{"error":"no redis configured"}"#.into());
    };
    let body = match post_body(req, MAX_REVOCATION_BODY).await {
        Ok(b) => b,
        Err(refused) => return refused,
    };
    let what = match crate::identity::revocation::parse_request(&body) {
        Ok(w) => w,
        Err(msg) => return text(StatusCode::BAD_REQUEST, json, serde_json::json!({ "error": msg }).to_string()),
    };
    match service.revoke(&what).await {
        Ok(()) => {
            tracing::info!(revocation = ?what, "revocation written and published");
            let mut res = Response::new(Body::Empty);
            *res.status_mut() = StatusCode::NO_CONTENT;
            res
        }
        Err(e) => {
            tracing::warn!(error = %e, "revocation could not be written");
            text(StatusCode::SERVICE_UNAVAILABLE, json, r#"{"error":"redis unavailable"}"#.into())
        }
    }
}

/// Largest `POST /cache/purge` body.
const MAX_PURGE_BODY: usize = 16 * 1024;

/// `POST /cache/purge`: removes entries by key, host-and-path prefix or surrogate key, here
/// and (through Redis, when configured) on every instance. 200 with how many keys this
/// instance removed; 400 bad input; 503 when Redis is configured and the purge could not
/// be published (this instance's stores are purged all the same).
async fn purge(req: Request<Incoming>, shared: &Shared) -> Response<Body> {
    let json = "application/json";
    if let Some(refused) = only_post(&req) {
        return refused;
    }
    let body = match post_body(req, MAX_PURGE_BODY).await {
        Ok(b) => b,
        Err(refused) => return refused,
    };
    let mut p = match crate::cache::purge::Purge::parse(&body) {
        Ok(p) => p,
        Err(msg) => return text(StatusCode::BAD_REQUEST, json, serde_json::json!({ "error": msg }).to_string()),
    };
    let removed = p.apply(&shared.snapshot.load());
    tracing::info!(purge = ?p, removed, "cache purged");
    let Some(purges) = &shared.services.cache_purges else {
        return text(StatusCode::OK, json, serde_json::json!({ "purged": removed, "published": false }).to_string());
    };
    p.at = Some(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64));
    let published = async {
        p.apply_shared(&shared.snapshot.load_full(), purges).await?;
        purges.publish(&p).await
    };
    match published.await {
        Ok(()) => text(StatusCode::OK, json, serde_json::json!({ "purged": removed, "published": true }).to_string()),
        Err(e) => {
            tracing::warn!(error = %e, "cache purge not published to the other instances");
            let body = serde_json::json!({ "purged": removed, "published": false, "error": "redis unavailable: other instances keep their entries" });
            text(StatusCode::SERVICE_UNAVAILABLE, json, body.to_string())
        }
    }
}

/// 405 with `Allow: POST` for anything but a POST.
fn only_post(req: &Request<Incoming>) -> Option<Response<Body>> {
    if req.method() == Method::POST {
        return None;
    }
    let mut res = text(StatusCode::METHOD_NOT_ALLOWED, "application/json", r#"{"error":"method not allowed"}"#.into());
    res.headers_mut().insert(header::ALLOW, HeaderValue::from_static("POST"));
    Some(res)
}

/// A POST's body, up to `max` bytes; 400 past it or when it breaks off.
async fn post_body(req: Request<Incoming>, max: usize) -> Result<bytes::Bytes, Response<Body>> {
    match Limited::new(req.into_body(), max).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(_) => {
            let msg = format!("body unreadable or over {max} bytes");
            Err(text(StatusCode::BAD_REQUEST, "application/json", serde_json::json!({ "error": msg }).to_string()))
        }
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut res = Response::new(Body::full(body));
    *res.status_mut() = status;
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}
