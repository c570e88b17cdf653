//! Balancing and target health against real upstreams that the tests slow down and break.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use crate::support::*;

fn upstream_config(targets: &[&TestUpstream], extra: &str) -> String {
    let list: Vec<String> = targets.iter().map(|t| format!("{{ url: \"{}\" }}", t.url())).collect();
    config(&format!(
        "upstreams:\n  u:\n    targets: [{}]\n{extra}routes:\n  - {{ name: r, match: {{ prefix: / }}, upstream: u }}\n",
        list.join(", ")
    ))
}

async fn served_by(req: Request<Full<Bytes>>) -> String {
    let (s, h, b) = send(req).await;
    assert!(s.is_success() || s.is_server_error(), "{s} {b}");
    h.get("x-upstream").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_else(|| format!("{}", s.as_u16()))
}

fn get_req(gw: &Gateway, path: &str) -> Request<Full<Bytes>> {
    Request::get(gw.url(path)).body(Full::new(Bytes::new())).unwrap()
}

#[tokio::test]
async fn least_request_steers_away_from_a_target_holding_requests() {
    let slow = TestUpstream::start("slow").await;
    let fast = TestUpstream::start("fast").await;
    slow.controls.set_delay(400);
    let gw = Gateway::start(&upstream_config(&[&slow, &fast], "    balance: least_request\n"));
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let url = gw.url("/x");
        tasks.push(tokio::spawn(async move { get(&url).await.1["x-upstream"].to_str().unwrap().to_owned() }));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut fast_n = 0;
    for t in tasks {
        if t.await.unwrap() == "fast" {
            fast_n += 1;
        }
    }
    assert!(fast_n >= 30, "fast target served {fast_n} of 40");
}

#[tokio::test]
async fn peak_ewma_prefers_the_faster_target() {
    let slow = TestUpstream::start("slow").await;
    let fast = TestUpstream::start("fast").await;
    slow.controls.set_delay(40);
    let gw = Gateway::start(&upstream_config(&[&slow, &fast], "    balance: peak_ewma\n"));
    let mut fast_n = 0;
    for _ in 0..60 {
        if served_by(get_req(&gw, "/x")).await == "fast" {
            fast_n += 1;
        }
    }
    assert!(fast_n >= 55, "fast target served {fast_n} of 60");
}

#[tokio::test]
async fn consistent_hash_keeps_each_key_on_one_target() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let c = TestUpstream::start("c").await;
    let gw = Gateway::start(&upstream_config(
        &[&a, &b, &c],
        "    balance: consistent_hash\n    hash_on: { header: x-user }\n",
    ));
    let mut used = std::collections::HashSet::new();
    for user in 0..30 {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..4 {
            let req = Request::get(gw.url("/x"))
                .header("x-user", format!("user-{user}"))
                .body(Full::new(Bytes::new()))
                .unwrap();
            seen.insert(served_by(req).await);
        }
        assert_eq!(seen.len(), 1, "user-{user} went to {seen:?}");
        used.extend(seen);
    }
    assert_eq!(used.len(), 3, "30 keys spread over all targets: {used:?}");
}

#[tokio::test]
async fn weighted_random_respects_weights_within_tolerance() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let gw = Gateway::start(&config(&format!(
        "upstreams:\n  u:\n    targets: [{{ url: \"{}\", weight: 3 }}, {{ url: \"{}\", weight: 1 }}]\n    balance: random\nroutes:\n  - {{ name: r, match: {{ prefix: / }}, upstream: u }}\n",
        a.url(),
        b.url()
    )));
    let n = 2000;
    for _ in 0..n {
        get(&gw.url("/x")).await;
    }
    let share = a.hits() as f64 / n as f64;
    // Binomial(2000, 0.75): sd ~0.0097; 0.05 is more than 5 sd.
    assert!((0.70..=0.80).contains(&share), "weight-3 target got {share:.3}");
}

#[tokio::test]
async fn active_health_checks_take_a_target_out_and_bring_it_back() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let gw = Gateway::start(&upstream_config(
        &[&a, &b],
        "    health_check: { path: /health, interval: 100ms, timeout: 100ms, unhealthy_after: 2, healthy_after: 2 }\n",
    ));
    let gauge = format!("gateway_upstream_target_healthy{{upstream=\"u\",target=\"{}\"}}", b.addr);
    assert_eq!(gw.metric(&gauge).await, 1.0);
    b.controls.set_health(503);
    let deadline = Instant::now() + Duration::from_secs(5);
    while gw.metric(&gauge).await != 0.0 {
        assert!(Instant::now() < deadline, "b never marked unhealthy");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    b.reset_hits();
    for _ in 0..20 {
        assert_eq!(served_by(get_req(&gw, "/x")).await, "a");
    }
    assert_eq!(b.hits(), 0, "an unhealthy target gets no traffic");
    assert!(b.controls.health_hits.load(std::sync::atomic::Ordering::SeqCst) > 0);

    b.controls.set_health(200);
    let deadline = Instant::now() + Duration::from_secs(5);
    while gw.metric(&gauge).await != 1.0 {
        assert!(Instant::now() < deadline, "b never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..10 {
        get(&gw.url("/x")).await;
    }
    assert!(b.hits() >= 4, "a healthy target gets traffic again: {}", b.hits());
}

#[tokio::test]
async fn passive_outlier_detection_ejects_a_failing_target_for_a_while() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let gw = Gateway::start(&upstream_config(
        &[&a, &b],
        "    outlier_detection: { consecutive_failures: 3, base_ejection: 1s, max_ejection: 10s, max_ejected_percent: 50% }\n",
    ));
    b.controls.set_fail(500);
    // Round robin sends b every other request: after 3 failures it is ejected.
    let mut failures = 0;
    for _ in 0..6 {
        if served_by(get_req(&gw, "/x")).await == "b" {
            failures += 1;
        }
    }
    assert_eq!(failures, 3);
    let ejections = format!("gateway_upstream_ejections_total{{upstream=\"u\",target=\"{}\"}}", b.addr);
    assert_eq!(gw.metric(&ejections).await, 1.0);
    for _ in 0..20 {
        assert_eq!(served_by(get_req(&gw, "/x")).await, "a", "an ejected target gets no traffic");
    }
    // After the ejection, b is tried again (and, still failing, ejected for longer).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    b.reset_hits();
    for _ in 0..10 {
        get(&gw.url("/x")).await;
    }
    assert_eq!(b.hits(), 3, "back after the ejection, ejected again after 3 more failures");
    assert_eq!(gw.metric(&ejections).await, 2.0);
}

#[tokio::test]
async fn all_targets_down_answers_503_at_once() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    a.controls.set_health(500);
    b.controls.set_health(500);
    let gw = Gateway::start(&upstream_config(
        &[&a, &b],
        "    health_check: { path: /health, interval: 100ms, timeout: 100ms, unhealthy_after: 1, healthy_after: 1 }\n",
    ));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let start = Instant::now();
        let (s, h, body) = get(&gw.url("/x")).await;
        if s == 503 {
            assert!(start.elapsed() < Duration::from_millis(200));
            assert_eq!(json(&body)["error"], "no upstream target available");
            assert!(h.contains_key("retry-after"));
            break;
        }
        assert!(Instant::now() < deadline, "never answered 503");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
