//! The admin listener: `/health` (the process is up), `/ready` (it takes traffic; 503
//! while draining), `/metrics` (Prometheus text format) and `/upstreams` (live target
//! health, ejections, in-flight counts and circuit-breaker states, as JSON).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
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
                async move { Ok::<_, Infallible>(handle(&req, &shared)) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .http1_only()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
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
        "/metrics" => {
            text(StatusCode::OK, "application/openmetrics-text; version=1.0.0; charset=utf-8", shared.metrics.encode())
        }
        _ => text(StatusCode::NOT_FOUND, "application/json", r#"{"error":"not found"}"#.into()),
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut res = Response::new(Body::full(body));
    *res.status_mut() = status;
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}
