//! Active health checks: a background task per upstream requests `health_check.path` on
//! every target at each interval and marks targets down after `unhealthy_after`
//! consecutive failures and up again after `healthy_after` consecutive passes.
//!
//! Targets start healthy, so a fresh gateway takes traffic at once. The task holds only a
//! weak reference: when a reload replaces the upstream, the task ends.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::{Method, header};
use http_body_util::BodyExt;
use portico_config::validate::parse_status_range;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::{Exchange, Target, Upstream};
use crate::body::Body;

/// Starts the health-check task of `up`, if it has `health_check` configured.
pub fn spawn(up: &Arc<Upstream>) {
    let Some(hc) = up.definition.health_check.clone() else { return };
    let ranges: Vec<(u16, u16)> = hc.expected_statuses.iter().filter_map(|r| parse_status_range(r)).collect();
    let path = http::uri::PathAndQuery::try_from(hc.path.as_str()).map_err(|e| format!("bad check path: {e}"));
    let weak = Arc::downgrade(up);
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(hc.interval.get());
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let Some(up) = weak.upgrade() else { return };
            // The targets of this moment (discovery may change them between rounds).
            let set = up.targets();
            let mut checks = JoinSet::new();
            for t in &set.targets {
                let (up, target, path, ranges) = (up.clone(), t.clone(), path.clone(), ranges.clone());
                let timeout = hc.timeout.get();
                let grpc = hc.grpc.clone();
                checks.spawn(async move {
                    let outcome = match (grpc, path) {
                        (Some(g), _) => probe_grpc(&up, &target, &g.service, timeout).await,
                        (None, Ok(path)) => probe(&up, &target, &path, timeout, &ranges).await,
                        (None, Err(e)) => Err(e),
                    };
                    (target, outcome)
                });
            }
            let name = up.name.clone();
            drop(up);
            drop(set);
            while let Some(r) = checks.join_next().await {
                let Ok((t, outcome)) = r else { continue };
                let healthy = t.healthy.load(Ordering::Relaxed);
                match outcome {
                    Ok(()) => {
                        t.health_fails.store(0, Ordering::Relaxed);
                        let passes = t.health_passes.fetch_add(1, Ordering::Relaxed) + 1;
                        if !healthy && passes >= hc.healthy_after {
                            t.healthy.store(true, Ordering::Relaxed);
                            t.health_gauge.set(1);
                            tracing::info!(upstream = %name, target = %t.authority, "target healthy again");
                        }
                    }
                    Err(why) => {
                        t.health_passes.store(0, Ordering::Relaxed);
                        let fails = t.health_fails.fetch_add(1, Ordering::Relaxed) + 1;
                        if healthy && fails >= hc.unhealthy_after {
                            t.healthy.store(false, Ordering::Relaxed);
                            t.health_gauge.set(0);
                            tracing::warn!(upstream = %name, target = %t.authority, reason = %why, "target unhealthy");
                        }
                    }
                }
            }
        }
    });
}

/// One check: GET the path, answer within the timeout with an expected status. It goes
/// the way a proxied request to the target goes ([`Upstream::send`]), on the same pool.
async fn probe(
    up: &Upstream,
    target: &Target,
    path: &http::uri::PathAndQuery,
    timeout: Duration,
    ranges: &[(u16, u16)],
) -> Result<(), String> {
    let mut headers = http::HeaderMap::new();
    headers.insert(header::USER_AGENT, http::HeaderValue::from_static("portico-health-check"));
    let headers = &mut headers;
    let x =
        Exchange { method: &Method::GET, pq: path, host: &target.host_header, headers, added: None, upgrade: false };
    let now = Instant::now();
    let res = match up.send(target, x, &mut Body::Empty, now, now + timeout).await {
        Err(super::Error::Timeout) => return Err(format!("no answer within {timeout:?}")),
        Err(e) => return Err(format!("request failed: {e}")),
        Ok(res) => res,
    };
    let status = res.status().as_u16();
    // Read (and discard) the body so the connection can be reused.
    let _ = tokio::time::timeout(timeout, res.into_body().collect()).await;
    if ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&status)) { Ok(()) } else { Err(format!("status {status}")) }
}

/// One gRPC check (`grpc.health.v1.Health/Check`): healthy when the target answers, within
/// the timeout, `grpc-status: 0` and a `HealthCheckResponse` whose status is `SERVING`.
async fn probe_grpc(up: &Upstream, target: &Target, service: &str, timeout: Duration) -> Result<(), String> {
    use crate::proto::grpc;
    let mut headers = http::HeaderMap::new();
    headers.insert(header::USER_AGENT, http::HeaderValue::from_static("portico-health-check"));
    headers.insert(header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
    headers.insert(header::TE, http::HeaderValue::from_static("trailers"));
    headers.insert(grpc::GRPC_TIMEOUT.clone(), grpc::encode_timeout(timeout));
    let pq = http::uri::PathAndQuery::from_static("/grpc.health.v1.Health/Check");
    let x = Exchange {
        method: &Method::POST,
        pq: &pq,
        host: &target.host_header,
        headers: &mut headers,
        added: None,
        upgrade: false,
    };
    let mut body = Body::full(grpc::message(&grpc::health_request(service)));
    let now = Instant::now();
    let res = match up.send(target, x, &mut body, now, now + timeout).await {
        Err(super::Error::Timeout) => return Err(format!("no answer within {timeout:?}")),
        Err(e) => return Err(format!("request failed: {e}")),
        Ok(res) => res,
    };
    if res.status() != http::StatusCode::OK {
        return Err(format!("status {}", res.status().as_u16()));
    }
    let head_status = res.headers().get(&grpc::GRPC_STATUS).cloned();
    let collected = match tokio::time::timeout(timeout, res.into_body().collect()).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Err(format!("answer broke off: {e}")),
        Err(_) => return Err(format!("no whole answer within {timeout:?}")),
    };
    let status = head_status.or_else(|| collected.trailers().and_then(|t| t.get(&grpc::GRPC_STATUS).cloned()));
    match status.as_ref().map(http::HeaderValue::as_bytes) {
        Some(b"0") => {}
        Some(other) => return Err(format!("grpc-status {}", String::from_utf8_lossy(other))),
        None => return Err("no grpc-status".into()),
    }
    match grpc::health_status(&collected.to_bytes()) {
        Some(1) => Ok(()),
        Some(s) => Err(format!("serving status {s} (not SERVING)")),
        None => Err("not a HealthCheckResponse".into()),
    }
}
