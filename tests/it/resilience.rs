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

/// Sends `tries` requests for each of `keys` keys in `header`, asserts that each key always
/// reached the same upstream, and returns the upstreams seen.
async fn each_key_sticks(gw: &Gateway, header: &str, keys: usize, tries: usize) -> std::collections::HashSet<String> {
    let mut used = std::collections::HashSet::new();
    for k in 0..keys {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..tries {
            let req =
                Request::get(gw.url("/x")).header(header, format!("key-{k}")).body(Full::new(Bytes::new())).unwrap();
            seen.insert(served_by(req).await);
        }
        assert_eq!(seen.len(), 1, "key-{k} went to {seen:?}");
        used.extend(seen);
    }
    used
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
    // Far slower than any stall of a loaded machine, so one slow answer from `fast`
    // cannot make it look like the slower target.
    slow.controls.set_delay(300);
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
    let used = each_key_sticks(&gw, "x-user", 30, 4).await;
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
        "    outlier_detection: { consecutive_failures: 3, base_ejection: 3s, max_ejection: 30s, max_ejected_percent: 50% }\n",
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
    let (_, _, admin) = get(&gw.admin_url("/upstreams")).await;
    let targets = &json(&admin)["upstreams"][0]["targets"];
    assert_eq!(targets[1]["ejected"], true, "{admin}");
    assert_eq!(targets[1]["available"], false);
    assert_eq!(targets[0]["available"], true);
    for _ in 0..20 {
        assert_eq!(served_by(get_req(&gw, "/x")).await, "a", "an ejected target gets no traffic");
    }
    // After the ejection, b is tried again (and, still failing, ejected for longer).
    tokio::time::sleep(Duration::from_millis(3100)).await;
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
            // At once: not after a connect attempt or a timeout.
            assert!(start.elapsed() < Duration::from_secs(1), "{:?}", start.elapsed());
            assert_eq!(json(&body)["error"], "no upstream target available");
            assert!(h.contains_key("retry-after"));
            break;
        }
        assert!(Instant::now() < deadline, "never answered 503");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn post_req(gw: &Gateway, key: Option<&str>) -> Request<Full<Bytes>> {
    let mut b = Request::post(gw.url("/x"));
    if let Some(k) = key {
        b = b.header("idempotency-key", k);
    }
    b.body(Full::new(Bytes::from_static(b"{\"order\":1}"))).unwrap()
}

const RETRIES: &str = "    retries: { attempts: 2, backoff: 5ms, max_backoff: 20ms, idempotency_key: true }\n";

#[tokio::test]
async fn safe_requests_are_retried_on_another_target_and_unsafe_ones_are_not() {
    let bad = TestUpstream::start("bad").await;
    let good = TestUpstream::start("good").await;
    bad.controls.set_fail(503);
    let gw = Gateway::start(&upstream_config(&[&bad, &good], RETRIES));
    // GET: a 503 from `bad` is retried on `good`, with the body intact.
    for _ in 0..6 {
        let (s, h, _) = send(get_req(&gw, "/x")).await;
        assert_eq!((s.as_u16(), h["x-upstream"].to_str().unwrap()), (200, "good"));
    }
    // POST without an Idempotency-Key: the upstream may have acted on it; never retried.
    bad.reset_hits();
    good.reset_hits();
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(send(post_req(&gw, None)).await.0.as_u16());
    }
    assert_eq!(bad.hits() + good.hits(), 4, "one try each: {statuses:?}");
    assert!(statuses.contains(&503));
    // POST with an Idempotency-Key: retried, and the replayed body arrives whole.
    for i in 0..4 {
        let (s, _, body) = send(post_req(&gw, Some(&format!("k{i}")))).await;
        assert_eq!(s, 200);
        assert_eq!(json(&body)["bodyBytes"], 11);
    }
    assert!(gw.metric("gateway_upstream_retries_total{upstream=\"u\"}").await >= 6.0);
}

#[tokio::test]
async fn a_refused_connection_is_retried_for_any_method() {
    let refused = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let good = TestUpstream::start("good").await;
    let gw = Gateway::start(&config(&format!(
        "upstreams:\n  u:\n    targets: [{{ url: \"http://{refused}\" }}, {{ url: \"{}\" }}]\n{RETRIES}routes:\n  - {{ name: r, match: {{ prefix: / }}, upstream: u }}\n",
        good.url()
    )));
    for _ in 0..4 {
        let (s, _, _) = send(post_req(&gw, None)).await;
        assert_eq!(s, 200, "the request never reached the refusing target, so it is safe to send again");
    }
}

#[tokio::test]
async fn the_retry_budget_caps_retries_during_an_outage() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    a.controls.set_fail(503);
    b.controls.set_fail(503);
    let gw = Gateway::start(&upstream_config(
        &[&a, &b],
        "    retries: { attempts: 3, backoff: 1ms, max_backoff: 2ms, budget: 20%, min_per_second: 0 }\n",
    ));
    let n = 200;
    for _ in 0..n {
        assert_eq!(send(get_req(&gw, "/x")).await.0, 503);
    }
    let sent = a.hits() + b.hits();
    // Without a budget, 200 requests x 4 tries = 800; with it, at most 20% extra.
    assert!(sent <= n + n / 5 + 1, "upstreams saw {sent} requests for {n}");
    assert!(sent > n, "some retries were allowed");
    assert!(gw.metric("gateway_upstream_retry_budget_exhausted_total{upstream=\"u\"}").await > 0.0);
}

#[tokio::test]
async fn a_slow_try_is_abandoned_for_another_target_within_the_deadline() {
    let slow = TestUpstream::start("slow").await;
    let fast = TestUpstream::start("fast").await;
    slow.controls.set_delay(5_000);
    let gw = Gateway::start(&upstream_config(
        &[&slow, &fast],
        "    timeouts: { try: 200ms, request: 2s }\n    retries: { attempts: 1, backoff: 1ms, max_backoff: 1ms }\n",
    ));
    for _ in 0..4 {
        let start = Instant::now();
        let (s, h, _) = send(get_req(&gw, "/x")).await;
        assert_eq!((s.as_u16(), h["x-upstream"].to_str().unwrap()), (200, "fast"));
        assert!(start.elapsed() < Duration::from_millis(1000));
    }
    // With every target slow, the whole-request deadline answers 504 in time.
    fast.controls.set_delay(5_000);
    let start = Instant::now();
    let (s, _, body) = send(get_req(&gw, "/x")).await;
    assert_eq!(s, 504, "{body}");
    assert!(start.elapsed() < Duration::from_millis(1500), "{:?}", start.elapsed());
}

#[tokio::test]
async fn the_circuit_breaker_opens_answers_at_once_and_closes_after_probes() {
    let up = TestUpstream::start("u").await;
    let gw = Gateway::start(&upstream_config(
        &[&up],
        "    circuit_breaker: { error_rate: 50%, min_requests: 10, window: 10s, open_for: 2s, half_open_requests: 2 }\n",
    ));
    let state = "gateway_circuit_breaker_state{upstream=\"u\"}";
    assert_eq!(gw.metric(state).await, 0.0);
    up.controls.set_fail(500);
    for _ in 0..10 {
        assert_eq!(send(get_req(&gw, "/x")).await.0, 500);
    }
    assert_eq!(gw.metric(state).await, 1.0, "open after 10 failures");
    // Open: answered at once, the upstream is not called.
    let hits = up.hits();
    let (s, h, body) = send(get_req(&gw, "/x")).await;
    assert_eq!(s, 503);
    assert_eq!(json(&body)["error"], "upstream circuit open");
    assert_eq!(h["retry-after"], "2");
    assert_eq!(up.hits(), hits);
    let (_, _, admin) = get(&gw.admin_url("/upstreams")).await;
    assert_eq!(json(&admin)["upstreams"][0]["circuitBreaker"], "open", "{admin}");
    // After open_for, half-open probes: the upstream has recovered, two successes close it.
    up.controls.set_fail(0);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(send(get_req(&gw, "/x")).await.0, 200);
    assert_eq!(gw.metric(state).await, 2.0, "half-open after the first probe");
    assert_eq!(send(get_req(&gw, "/x")).await.0, 200);
    assert_eq!(gw.metric(state).await, 0.0, "closed after both probes passed");
    // A failing probe re-opens it.
    up.controls.set_fail(500);
    for _ in 0..10 {
        send(get_req(&gw, "/x")).await;
    }
    assert_eq!(gw.metric(state).await, 1.0);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(send(get_req(&gw, "/x")).await.0, 500);
    assert_eq!(gw.metric(state).await, 1.0, "a failed probe opens it again");
    let transitions = |to: &str| format!("gateway_circuit_breaker_transitions_total{{upstream=\"u\",to=\"{to}\"}}");
    assert_eq!(gw.metric(&transitions("open")).await, 3.0);
    assert_eq!(gw.metric(&transitions("half_open")).await, 2.0);
    assert_eq!(gw.metric(&transitions("closed")).await, 1.0);
}

#[tokio::test]
async fn an_open_breaker_can_answer_with_a_fallback() {
    let up = TestUpstream::start("u").await;
    up.controls.set_fail(500);
    let gw = Gateway::start(&upstream_config(
        &[&up],
        "    circuit_breaker:\n      min_requests: 2\n      open_for: 10s\n      fallback: { status: 200, body: '{\"items\":[],\"degraded\":true}' }\n",
    ));
    send(get_req(&gw, "/x")).await;
    send(get_req(&gw, "/x")).await;
    let (s, h, body) = send(get_req(&gw, "/x")).await;
    assert_eq!(s, 200);
    assert_eq!(json(&body)["degraded"], true);
    assert_eq!(h["content-type"], "application/json");
    assert!(h.contains_key("retry-after"));
}

#[tokio::test]
async fn a_hanging_upstream_does_not_slow_other_routes() {
    let hung = TestUpstream::start("hung").await;
    let ok = TestUpstream::start("ok").await;
    hung.controls.set_delay(60_000);
    let gw = Gateway::start(&config(&format!(
        r#"upstreams:
  hung: {{ targets: [{{ url: "{}" }}], max_in_flight: 5, queue_timeout: 100ms, timeouts: {{ request: 30s }} }}
  ok: {{ targets: [{{ url: "{}" }}] }}
routes:
  - {{ name: hung, match: {{ prefix: /hung }}, upstream: hung }}
  - {{ name: ok, match: {{ prefix: /ok }}, upstream: ok }}
"#,
        hung.url(),
        ok.url()
    )));
    // Fill the hung upstream's slots.
    let mut stuck = Vec::new();
    for _ in 0..5 {
        let url = gw.url("/hung");
        stuck.push(tokio::spawn(async move { client().get(url.parse().unwrap()).await }));
    }
    assert!(hung.wait_hits(5).await, "{}", hung.hits());
    // Past the limit: 503 after the queue wait, not a hang.
    let start = Instant::now();
    let (s, _, body) = get(&gw.url("/hung")).await;
    assert_eq!(s, 503, "{body}");
    assert_eq!(json(&body)["error"], "upstream busy");
    assert!(start.elapsed() < Duration::from_millis(600));
    assert_eq!(gw.metric("gateway_queue_wait_seconds_count{scope=\"upstream\",name=\"hung\"}").await, 1.0);
    // Other routes keep their latency.
    for _ in 0..50 {
        let start = Instant::now();
        assert_eq!(get(&gw.url("/ok")).await.0, 200);
        // Not stuck behind the hung upstream's slots or its queue: far below its 30 s.
        assert!(start.elapsed() < Duration::from_secs(1), "{:?}", start.elapsed());
    }
    for t in stuck {
        t.abort();
    }
}

fn split_config(v1: &TestUpstream, v2: &TestUpstream, shadow: &TestUpstream, route_extra: &str) -> String {
    config(&format!(
        r#"upstreams:
  v1: {{ targets: [{{ url: "{}" }}] }}
  v2: {{ targets: [{{ url: "{}" }}] }}
  shadow: {{ targets: [{{ url: "{}" }}] }}
routes:
  - name: beta-cookie
    match: {{ prefix: /, cookies: [{{ name: canary, value: "1" }}] }}
    upstream: v2
  - name: main
    match: {{ prefix: / }}
{route_extra}"#,
        v1.url(),
        v2.url(),
        shadow.url()
    ))
}

#[tokio::test]
async fn a_canary_split_sends_its_share_and_a_cookie_picks_the_version() {
    let v1 = TestUpstream::start("v1").await;
    let v2 = TestUpstream::start("v2").await;
    let shadow = TestUpstream::start("shadow").await;
    let gw = Gateway::start(&split_config(
        &v1,
        &v2,
        &shadow,
        "    split: [{ upstream: v1, weight: 95 }, { upstream: v2, weight: 5 }]\n",
    ));
    let n = 2000;
    for _ in 0..n {
        get(&gw.url("/x")).await;
    }
    let share = v2.hits() as f64 / n as f64;
    // Binomial(2000, 0.05): sd ~0.005; allow 3 sd.
    assert!((0.035..=0.065).contains(&share), "canary got {share:.3}");
    assert_eq!(v1.hits() + v2.hits(), n);
    // `canary=1` always reaches v2.
    for _ in 0..20 {
        let req = Request::get(gw.url("/x")).header("cookie", "canary=1").body(Full::new(Bytes::new())).unwrap();
        assert_eq!(served_by(req).await, "v2");
    }
    // The access log names the upstream the split chose.
    let logged = Gateway::eventually(Duration::from_secs(5), || async {
        gw.access_log().iter().any(|l| l["backendService"] == "v2" && l["route"] == "main")
    })
    .await;
    assert!(logged);
}

#[tokio::test]
async fn a_sticky_split_keeps_each_user_on_one_upstream() {
    let v1 = TestUpstream::start("v1").await;
    let v2 = TestUpstream::start("v2").await;
    let shadow = TestUpstream::start("shadow").await;
    let gw = Gateway::start(&split_config(
        &v1,
        &v2,
        &shadow,
        "    split: [{ upstream: v1, weight: 50 }, { upstream: v2, weight: 50 }]\n    sticky: { header: x-session }\n",
    ));
    let seen_versions = each_key_sticks(&gw, "x-session", 20, 5).await;
    assert_eq!(seen_versions.len(), 2);
}

#[tokio::test]
async fn mirrored_traffic_reaches_the_shadow_and_never_slows_the_client() {
    let v1 = TestUpstream::start("v1").await;
    let v2 = TestUpstream::start("v2").await;
    let shadow = TestUpstream::start("shadow").await;
    // Copies stay in flight for the whole test, so max_in_flight is reached for sure.
    shadow.controls.set_delay(30_000);
    let gw = Gateway::start(&split_config(
        &v1,
        &v2,
        &shadow,
        "    upstream: v1\n    mirror: { upstream: shadow, percent: 100%, max_in_flight: 20 }\n",
    ));
    for i in 0..10 {
        let start = Instant::now();
        let req = Request::post(gw.url("/orders")).body(Full::new(Bytes::from(format!("{{\"n\":{i}}}")))).unwrap();
        let (s, h, body) = send(req).await;
        assert_eq!((s.as_u16(), h["x-upstream"].to_str().unwrap()), (200, "v1"));
        assert_eq!(json(&body)["bodyBytes"], 7, "the main request keeps its body");
        assert!(start.elapsed() < Duration::from_millis(500), "a slow shadow never delays the client");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while shadow.hits() < 10 {
        assert!(Instant::now() < deadline, "shadow saw {}", shadow.hits());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(shadow.last_headers().get("content-length").map(|v| v.to_str().unwrap().to_owned()), Some("7".into()));
    // Past max_in_flight copies are skipped, and counted; the clients never notice.
    for _ in 0..30 {
        assert_eq!(get(&gw.url("/orders")).await.0, 200);
    }
    assert!(gw.metric("gateway_mirror_skipped_total{route=\"main\"}").await >= 10.0);
}

#[tokio::test]
async fn a_full_route_limit_answers_route_busy_and_blames_no_upstream() {
    let up = TestUpstream::start("u").await;
    up.controls.set_delay(1_000);
    let gw = Gateway::start(&config(&format!(
        "upstreams:\n  u: {{ targets: [{{ url: \"{}\" }}] }}\nroutes:\n  - {{ name: r, match: {{ prefix: / }}, upstream: u, max_in_flight: 1, queue_timeout: 50ms }}\n",
        up.url()
    )));
    let url = gw.url("/x");
    let held = tokio::spawn(async move { get(&url).await.0 });
    assert!(up.wait_hits(1).await, "never in flight");
    let (s, _, body) = get(&gw.url("/x")).await;
    assert_eq!(s, 503);
    assert_eq!(json(&body)["error"], "route busy");
    assert_eq!(held.await.unwrap(), 200);
    let (_, _, text) = get(&gw.admin_url("/metrics")).await;
    assert!(!text.contains("gateway_backend_errors_total{upstream=\"u\""), "{text}");
    assert_eq!(gw.metric("gateway_queue_wait_seconds_count{scope=\"route\",name=\"r\"}").await, 1.0);
}
