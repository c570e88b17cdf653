//! Hedged reads against one stalling and one fast real upstream: a read that the first
//! target does not answer within the hedge's delay is sent to the other, and the first
//! answer wins.

use crate::support::*;

/// Two targets, round robin; the whole request may take 1s, so a try left on a target
/// that stalls for 5s ends in 504 unless a hedge answers first.
fn hedged(slow: &TestUpstream, fast: &TestUpstream, retries: &str, hedge: &str) -> String {
    config(&format!(
        "upstreams:\n  u:\n    targets: [{{ url: \"{}\" }}, {{ url: \"{}\" }}]\n    timeouts: {{ request: 1s }}\n    retries: {retries}\nroutes:\n  - {{ name: r, match: {{ prefix: / }}, upstream: u, hedge: {hedge} }}\n",
        slow.url(),
        fast.url()
    ))
}

fn served_by(h: &http::HeaderMap) -> &str {
    h.get("x-upstream").and_then(|v| v.to_str().ok()).unwrap_or("none")
}

#[tokio::test]
async fn a_read_the_first_target_stalls_on_is_answered_by_the_hedge() {
    let slow = TestUpstream::start("slow").await;
    let fast = TestUpstream::start("fast").await;
    slow.controls.set_delay(5_000);
    let gw = Gateway::start(&hedged(&slow, &fast, "{ attempts: 0 }", "{ delay: 30ms }"));
    for i in 0..8 {
        let (s, h, _) = get(&gw.url(&format!("/read/{i}"))).await;
        assert_eq!((s.as_u16(), served_by(&h)), (200, "fast"), "GET {i}");
    }
    // Round robin sent every other first try to the stalling target: each of those was
    // hedged, and the hedge won.
    assert!(slow.hits() >= 4, "the stalling target saw {} first tries", slow.hits());
    let hedges = gw.metric("gateway_upstream_hedges_total{upstream=\"u\"}").await;
    let wins = gw.metric("gateway_upstream_hedge_wins_total{upstream=\"u\"}").await;
    assert_eq!(hedges, slow.hits() as f64, "one hedge per stalled try");
    assert_eq!(wins, hedges, "every hedge won");

    // A POST is not hedged (not in `methods`): a try on the stalling target times out.
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let req = http::Request::post(gw.url("/write")).body(http_body_util::Full::new(bytes::Bytes::new())).unwrap();
        statuses.push(send(req).await.0.as_u16());
    }
    assert!(statuses.contains(&504) && statuses.contains(&200), "{statuses:?}");
    assert_eq!(gw.metric("gateway_upstream_hedges_total{upstream=\"u\"}").await, hedges, "no hedge for a POST");
}

#[tokio::test]
async fn hedges_are_taken_from_the_retry_budget() {
    let slow = TestUpstream::start("slow").await;
    let fast = TestUpstream::start("fast").await;
    slow.controls.set_delay(5_000);
    // A budget of nothing: no hedge may be sent, so reads that land on the stalling target
    // time out.
    let gw = Gateway::start(&hedged(&slow, &fast, "{ attempts: 0, budget: 0%, min_per_second: 0 }", "{ delay: 20ms }"));
    let mut statuses = Vec::new();
    for i in 0..4 {
        statuses.push(get(&gw.url(&format!("/read/{i}"))).await.0.as_u16());
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 200, 504, 504]);
    assert_eq!(gw.metric("gateway_upstream_hedges_total{upstream=\"u\"}").await, 0.0);
    assert!(gw.metric("gateway_upstream_retry_budget_exhausted_total{upstream=\"u\"}").await >= 2.0);
}

#[tokio::test]
async fn a_percentile_delay_is_learned_from_the_routes_answers() {
    let slow = TestUpstream::start("slow").await;
    let fast = TestUpstream::start("fast").await;
    slow.controls.set_delay(5_000);
    // Until 100 answers are known, the delay is max_delay (10s, past the 1s deadline):
    // a read on the stalling target is not saved.
    let gw = Gateway::start(&hedged(&slow, &fast, "{ attempts: 0 }", "{ delay: p95, max_delay: 10s }"));
    let mut statuses = Vec::new();
    for i in 0..2 {
        statuses.push(get(&gw.url(&format!("/early/{i}"))).await.0.as_u16());
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 504], "no percentile yet, so no hedge in time");

    // 150 quick answers teach the route its p95 (a few milliseconds on loopback)...
    slow.controls.set_delay(0);
    for i in 0..150 {
        assert_eq!(get(&gw.url(&format!("/learn/{i}"))).await.0, 200);
    }
    // ...so now a stalled read is hedged after that, well inside the deadline.
    slow.controls.set_delay(5_000);
    for i in 0..6 {
        let (s, h, _) = get(&gw.url(&format!("/late/{i}"))).await;
        assert_eq!((s.as_u16(), served_by(&h)), (200, "fast"), "GET {i}");
    }
    assert!(gw.metric("gateway_upstream_hedge_wins_total{upstream=\"u\"}").await >= 3.0);
}

#[test]
fn validation_names_what_a_hedge_needs() {
    let yaml = |retries: &str, hedge: &str| {
        config(&format!(
            "upstreams:\n  u:\n    targets: [{{ url: \"http://127.0.0.1:1\" }}]\n{retries}routes:\n  - {{ name: r, match: {{ prefix: / }}, upstream: u, hedge: {hedge} }}\n"
        ))
    };
    let e = validation_errors(&yaml("", "{ delay: 30ms }"));
    assert!(e.contains("routes[0].hedge") && e.contains("needs retries"), "{e}");
    let with = "    retries: { attempts: 0 }\n";
    let e = validation_errors(&yaml(with, "{ delay: 30ms, methods: [GET, POST] }"));
    assert!(e.contains("routes[0].hedge.methods[1]") && e.contains("not safe to send twice"), "{e}");
    let e = validation_errors(&yaml(with, "{ delay: p100 }"));
    assert!(e.contains("invalid percentile"), "{e}");
    let e = validation_errors(&yaml(with, "{ delay: p99, min_delay: 2s, max_delay: 1s, max_hedges: 4 }"));
    assert!(e.contains("routes[0].hedge.min_delay") && e.contains("routes[0].hedge.max_hedges"), "{e}");
    let e = validation_errors(&yaml(with, "{ delay: 0ms }"));
    assert!(e.contains("routes[0].hedge.delay"), "{e}");
}
