//! Hot reload and graceful shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use http_body_util::BodyExt;

use crate::support::*;

const SIGHUP: i32 = 1;
const SIGTERM: i32 = 15;

fn routes_to(up: &TestUpstream, extra: &str) -> String {
    config(&format!(
        "{extra}upstreams:\n  main: {{ targets: [{{ url: \"{}\" }}] }}\nroutes:\n  - {{ name: all, match: {{ prefix: / }}, upstream: main }}\n",
        up.url()
    ))
}

/// Waits up to 5 s until `/` is served by upstream `want`.
async fn wait_served(gw: &Gateway, want: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if served_by(gw, "/").await == want {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Waits up to 5 s until a metric has `value`.
async fn wait_metric(gw: &Gateway, series: &str, value: f64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if gw.metric(series).await == value {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

async fn served_by(gw: &Gateway, path: &str) -> String {
    let (_, h, _) = get(&gw.url(path)).await;
    h.get("x-upstream").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default()
}

#[tokio::test]
async fn sighup_applies_a_valid_config_and_keeps_the_old_one_on_error() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let no_watch = "runtime: { watch_interval: 0s }\n";
    let gw = Gateway::start(&routes_to(&a, no_watch));
    assert_eq!(served_by(&gw, "/").await, "a");

    gw.write_config(&routes_to(&b, no_watch));
    gw.signal(SIGHUP);
    assert!(wait_served(&gw, "b").await);
    assert_eq!(gw.metric("gateway_config_reloads_total{result=\"success\"}").await, 1.0);

    // An invalid file is rejected, logged and counted; traffic keeps flowing to b.
    gw.write_config(&routes_to(&a, no_watch).replace("prefix: /", "prefix: nope"));
    gw.signal(SIGHUP);
    assert!(wait_metric(&gw, "gateway_config_reloads_total{result=\"error\"}", 1.0).await);
    assert_eq!(served_by(&gw, "/").await, "b");
    assert!(gw.logged("routes[0].match.prefix").await, "{}", gw.stderr_text());
}

#[tokio::test]
async fn a_changed_file_is_reloaded_and_a_half_written_one_is_not() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let watch = "runtime: { watch_interval: 100ms }\n";
    let gw = Gateway::start(&routes_to(&a, watch));
    assert_eq!(served_by(&gw, "/").await, "a");

    // An editor's save in progress: the first half of the new file.
    let full = routes_to(&b, watch);
    gw.write_config(&full[..full.len() / 2]);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(served_by(&gw, "/").await, "a", "a half-written file is never applied");

    gw.write_config(&full);
    assert!(wait_served(&gw, "b").await);
}

#[tokio::test]
async fn twenty_reloads_under_load_fail_no_request() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let no_watch = "runtime: { watch_interval: 0s }\n";
    let gw = Arc::new(Gateway::start(&routes_to(&a, no_watch)));
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for w in 0..4 {
        let (gw, stop, ok, failed) = (gw.clone(), stop.clone(), ok.clone(), failed.clone());
        workers.push(tokio::spawn(async move {
            // Half the workers reuse connections, half open a new one per request.
            let shared = client();
            while !stop.load(Ordering::Relaxed) {
                let res = if w % 2 == 0 {
                    shared.get(gw.url("/x").parse().unwrap()).await
                } else {
                    client().get(gw.url("/x").parse().unwrap()).await
                };
                match res {
                    Ok(r) if r.status() == 200 => {
                        let _ = r.into_body().collect().await;
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for i in 0..20 {
        let up = if i % 2 == 0 { &b } else { &a };
        gw.write_config(&routes_to(up, no_watch));
        gw.signal(SIGHUP);
        let want = up.name.clone();
        assert!(wait_served(&gw, &want).await);
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(gw.metric("gateway_config_reloads_total{result=\"success\"}").await, 20.0);
    assert!(ok.load(Ordering::Relaxed) > 100, "load ran: {}", ok.load(Ordering::Relaxed));
    assert_eq!(failed.load(Ordering::Relaxed), 0, "requests failed during reloads");
}

#[tokio::test]
async fn in_flight_requests_websockets_and_streams_survive_a_reload() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let no_watch = "runtime: { watch_interval: 0s }\n";
    let gw = Gateway::start(&routes_to(&a, no_watch));

    let slow_url = gw.url("/slow?ms=1500");
    let slow = tokio::spawn(async move { get(&slow_url).await });
    let drip = client().get(gw.url("/drip?chunks=20&ms=100").parse().unwrap()).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", gw.addr())).await.unwrap();
    // The slow request, the stream and the WebSocket have all reached a.
    assert!(a.wait_hits(3).await, "{}", a.hits());

    // Reload to a config where everything goes to b.
    gw.write_config(&routes_to(&b, no_watch));
    gw.signal(SIGHUP);
    assert!(wait_served(&gw, "b").await);

    // The request in flight finishes on the config it started with.
    let (status, headers, _) = slow.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(headers["x-upstream"], "a");
    // The long streaming response is untouched.
    let body = drip.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(String::from_utf8_lossy(&body).lines().count(), 20);
    // The open WebSocket still echoes.
    ws.send(tokio_tungstenite::tungstenite::Message::text("after reload")).await.unwrap();
    let echo = ws.next().await.unwrap().unwrap();
    assert_eq!(echo.into_text().unwrap().as_str(), "after reload");
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_then_exits() {
    let a = TestUpstream::start("a").await;
    let mut gw = Gateway::start(&routes_to(&a, "runtime: { drain_timeout: 10s }\n"));
    let (s, _, _) = get(&gw.admin_url("/ready")).await;
    assert_eq!(s, 200);

    let slow_url = gw.url("/slow?ms=1500");
    let slow = tokio::spawn(async move { get(&slow_url).await });
    assert!(a.wait_hits(1).await, "never in flight");
    let started = Instant::now();
    gw.signal(SIGTERM);

    // Readiness turns 503 while draining, so load balancers stop sending.
    let admin = gw.admin_url("/ready");
    assert!(
        Gateway::eventually(Duration::from_secs(2), || {
            let admin = admin.clone();
            async move { get(&admin).await.0 == 503 }
        })
        .await
    );
    // New connections are no longer accepted.
    let addr = gw.addr();
    assert!(
        Gateway::eventually(
            Duration::from_secs(2),
            || async move { tokio::net::TcpStream::connect(addr).await.is_err() }
        )
        .await
    );
    // The request in flight completes, and its connection is not kept alive.
    let (status, headers, body) = slow.await.unwrap();
    assert_eq!((status.as_u16(), body.as_str()), (200, "slept 1500ms"));
    assert_eq!(headers.get("connection").and_then(|v| v.to_str().ok()), Some("close"), "{headers:?}");
    let code = tokio::task::spawn_blocking(move || gw.wait_exit(Duration::from_secs(10))).await.unwrap();
    assert_eq!(code, Some(0));
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn drain_timeout_bounds_shutdown() {
    let a = TestUpstream::start("a").await;
    let mut gw = Gateway::start(&routes_to(&a, "runtime: { drain_timeout: 500ms }\n"));
    let slow_url = gw.url("/slow?ms=10000");
    let _slow = tokio::spawn(async move { client().get(slow_url.parse().unwrap()).await });
    assert!(a.wait_hits(1).await, "never in flight");
    let started = Instant::now();
    gw.signal(SIGTERM);
    let code = tokio::task::spawn_blocking(move || gw.wait_exit(Duration::from_secs(10))).await.unwrap();
    assert_eq!(code, Some(0));
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
}

#[tokio::test]
async fn shutdown_delay_keeps_serving_while_ready_says_503() {
    let a = TestUpstream::start("a").await;
    let mut gw = Gateway::start(&routes_to(&a, "runtime: { shutdown_delay: 3s, drain_timeout: 5s }\n"));
    gw.signal(SIGTERM);
    let admin = gw.admin_url("/ready");
    assert!(
        Gateway::eventually(Duration::from_secs(2), || {
            let admin = admin.clone();
            async move { get(&admin).await.0 == 503 }
        })
        .await
    );
    // Not ready, but still serving new connections until the delay has passed.
    let (s, _, _) =
        send(http::Request::get(gw.url("/x")).header("connection", "close").body(Default::default()).unwrap()).await;
    assert_eq!(s, 200);
    let code = tokio::task::spawn_blocking(move || gw.wait_exit(Duration::from_secs(10))).await.unwrap();
    assert_eq!(code, Some(0));
}
