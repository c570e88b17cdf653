//! Rate limits and concurrency limits, in one instance's memory.

use std::time::Duration;

use crate::support::*;

fn rl_config(up: &TestUpstream, extra_routes: &str) -> String {
    config(&format!(
        r#"upstreams:
  app: {{ targets: [{{ url: {up} }}] }}
plans:
  free: {{ rate_limit: [{{ limit: 2, per: 1m }}] }}
  pro: {{ rate_limit: [{{ limit: 4, per: 1m }}] }}
consumers:
  - {{ id: acme-bot, tenant: acme, plan: free, api_keys: [{{ sha256: {a} }}] }}
  - {{ id: globex-bot, tenant: globex, plan: pro, api_keys: [{{ sha256: {g} }}] }}
  - {{ id: acme-ci, tenant: acme, api_keys: [{{ sha256: {c} }}] }}
routes:
  - name: ip
    match: {{ prefix: /ip }}
    upstream: app
    plugins: [{{ rate_limit: {{ limits: [{{ limit: 5, per: 1m }}] }} }}]
  - name: two
    match: {{ prefix: /two }}
    upstream: app
    plugins: [{{ rate_limit: {{ limits: [{{ limit: 20, per: 1d, algorithm: fixed_window }}, {{ limit: 3, per: 1m, algorithm: sliding_window }}], headers: both }} }}]
  - name: plans
    match: {{ prefix: /plans }}
    upstream: app
    plugins: [{{ api_key: {{}} }}, {{ rate_limit: {{ limits: [{{ limit: 3, per: 1m }}], key: [consumer] }} }}]
  - name: tenants
    match: {{ prefix: /tenants }}
    upstream: app
    plugins: [{{ api_key: {{}} }}, {{ rate_limit: {{ limits: [{{ limit: 3, per: 1m, algorithm: gcra }}], key: [tenant], plans: false }} }}]
  - name: inflight
    match: {{ prefix: /inflight }}
    upstream: app
    rewrite: {{ strip_prefix: /inflight }}
    plugins: [{{ concurrency_limit: {{ max: 2 }} }}]
  - name: inflight503
    match: {{ prefix: /busy }}
    upstream: app
    rewrite: {{ strip_prefix: /busy }}
    plugins: [{{ concurrency_limit: {{ max: 1, status: 503 }} }}]
{extra_routes}"#,
        up = up.url(),
        a = hash_key("acme-key-000001"),
        g = hash_key("globex-key-00001"),
        c = hash_key("acme-ci-key-0001"),
    ))
}

#[tokio::test]
async fn a_limit_answers_429_with_retry_after_and_ratelimit_headers() {
    let up = TestUpstream::start("app").await;
    let gw = Gateway::start(&rl_config(&up, ""));
    for left in (0..5).rev() {
        let (status, h, _) = get(&gw.url("/ip/x")).await;
        assert_eq!(status, 200);
        assert_eq!(h["ratelimit-limit"], "5");
        assert_eq!(h["ratelimit-remaining"], left.to_string().as_str());
        let reset: u64 = h["ratelimit-reset"].to_str().unwrap().parse().unwrap();
        assert!((1..=60).contains(&reset), "{reset}");
        assert!(h.get("x-ratelimit-limit").is_none());
    }
    let hits = up.hits();
    let (status, h, body) = get(&gw.url("/ip/x")).await;
    assert_eq!(status, 429);
    let v = json(&body);
    assert_eq!((v["error"].as_str(), v["status"].as_u64()), (Some("rate limit exceeded"), Some(429)));
    assert!(v["requestId"].is_string());
    let retry: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!((h["ratelimit-limit"].to_str().unwrap(), h["ratelimit-remaining"].to_str().unwrap()), ("5", "0"));
    assert_eq!(up.hits(), hits, "a refused request reached the upstream");
    // Another client address has its own budget.
    let (status, _, _) = get_with(&gw.url("/ip/x"), &[("x-forwarded-for", "192.0.2.1")]).await;
    assert_eq!(status, 429, "X-Forwarded-For from an untrusted peer is not believed");
    assert!(gw.metric(r#"gateway_rate_limit_exceeded_total{route="ip"}"#).await >= 2.0);
    assert_eq!(gw.metric(r#"gateway_rate_limit_exceeded_total{route="two"}"#).await, 0.0);
    assert!(
        Gateway::eventually(Duration::from_secs(3), || async {
            let log = gw.access_log();
            log.iter().any(|l| l["route"] == "ip" && l["statusCode"] == 200 && l["rateLimitRemaining"] == 0)
                && log.iter().any(|l| l["route"] == "ip" && l["statusCode"] == 429)
        })
        .await
    );
    // A reload keeps the counters of unchanged limits.
    gw.write_config(&rl_config(&up, "  - { name: extra, match: { prefix: /extra }, upstream: app }\n"));
    assert!(
        Gateway::eventually(Duration::from_secs(10), || async { get(&gw.url("/extra")).await.0 == 200 }).await,
        "the reload did not apply"
    );
    assert_eq!(get(&gw.url("/ip/x")).await.0, 429, "a reload reset the counters");
}

#[tokio::test]
async fn every_limit_of_a_route_is_enforced() {
    let up = TestUpstream::start("app").await;
    let gw = Gateway::start(&rl_config(&up, ""));
    // 3/1m (sliding window) is the tighter of 3/1m and 20/1d, and is reported.
    for left in [2, 1, 0] {
        let (status, h, _) = get(&gw.url("/two")).await;
        assert_eq!(status, 200);
        assert_eq!(h["ratelimit-limit"], "3");
        assert_eq!(h["ratelimit-remaining"], left.to_string().as_str());
        assert_eq!(h["x-ratelimit-remaining"], left.to_string().as_str(), "headers: both");
    }
    let (status, h, _) = get(&gw.url("/two")).await;
    assert_eq!(status, 429);
    assert_eq!(h["ratelimit-limit"], "3");
    assert_eq!(h["x-ratelimit-limit"], "3");
}

#[tokio::test]
async fn consumers_get_their_plans_and_tenants_are_isolated() {
    let up = TestUpstream::start("app").await;
    let gw = Gateway::start(&rl_config(&up, ""));
    let count_ok = |path: &'static str, key: &'static str, n: usize| {
        let url = gw.url(path);
        async move {
            let mut ok = 0;
            for _ in 0..n {
                if get_with(&url, &[("x-api-key", key)]).await.0 == 200 {
                    ok += 1;
                }
            }
            ok
        }
    };
    // Plans: free 2, pro 4; a consumer without a plan gets the route's 3.
    assert_eq!(count_ok("/plans", "acme-key-000001", 6).await, 2);
    assert_eq!(count_ok("/plans", "globex-key-00001", 6).await, 4);
    assert_eq!(count_ok("/plans", "acme-ci-key-0001", 6).await, 3);
    // Per tenant (plans off): acme's two consumers share acme's 3; globex is untouched.
    assert_eq!(count_ok("/tenants", "acme-key-000001", 2).await, 2);
    assert_eq!(count_ok("/tenants", "acme-ci-key-0001", 3).await, 1);
    assert_eq!(count_ok("/tenants", "globex-key-00001", 3).await, 3);
}

#[tokio::test]
async fn concurrency_limits_count_requests_in_flight() {
    let up = TestUpstream::start("app").await;
    let gw = Gateway::start(&rl_config(&up, ""));
    let slow = |path: &str| {
        let url = gw.url(path);
        tokio::spawn(async move { get(&url).await.0 })
    };
    let a = slow("/inflight/slow?ms=2000");
    let b = slow("/inflight/slow?ms=2000");
    // Wait until both are in flight at the upstream.
    assert!(up.wait_hits(2).await);
    let (status, h, body) = get(&gw.url("/inflight/x")).await;
    assert_eq!((status.as_u16(), json(&body)["error"].as_str().unwrap()), (429, "too many requests in flight"));
    assert!(h.contains_key("retry-after"));
    assert_eq!((a.await.unwrap(), b.await.unwrap()), (http::StatusCode::OK, http::StatusCode::OK));
    // The slots are free again once the responses have ended.
    assert_eq!(get(&gw.url("/inflight/x")).await.0, 200);
    // A streamed response holds its slot until its body ends.
    let before = up.hits();
    let stream = slow("/busy/drip?chunks=5&ms=150");
    // Poll only once the stream holds the slot (else a poll could take it first).
    assert!(Gateway::eventually(Duration::from_secs(3), || async { up.hits() > before }).await);
    assert!(
        Gateway::eventually(Duration::from_secs(3), || async { get(&gw.url("/busy/x")).await.0 == 503 }).await,
        "the streaming request did not hold its slot"
    );
    assert_eq!(stream.await.unwrap(), 200);
    assert!(Gateway::eventually(Duration::from_secs(3), || async { get(&gw.url("/busy/x")).await.0 == 200 }).await);
}

#[tokio::test]
async fn a_leaky_bucket_delays_instead_of_refusing() {
    let up = TestUpstream::start("app").await;
    let gw = Gateway::start(&rl_config(
        &up,
        "  - name: smooth\n    match: { prefix: /smooth }\n    upstream: app\n    plugins: [{ rate_limit: { limits: [{ limit: 10, per: 1s, algorithm: leaky_bucket, max_delay: 2s }] } }]\n",
    ));
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let url = gw.url("/smooth");
        tasks.push(tokio::spawn(async move { get(&url).await.0 }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200, "delayed, not refused");
    }
    // Six requests at 10/s leave at least 100 ms apart: the last waits about half a second.
    assert!(started.elapsed() >= Duration::from_millis(400), "{:?}", started.elapsed());
    // Past max_delay they are refused.
    let mut refused = 0;
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let url = gw.url("/smooth");
        tasks.push(tokio::spawn(async move { get(&url).await.0 }));
    }
    for t in tasks {
        if t.await.unwrap() == 429 {
            refused += 1;
        }
    }
    assert!(refused >= 10, "only {refused} of 40 refused");
}

#[test]
fn rate_limit_config_errors_name_their_field() {
    let yaml = r#"version: 1
listeners: [{ name: public, bind: 127.0.0.1:0 }]
upstreams: { app: { targets: [{ url: http://127.0.0.1:1 }] } }
consumers: [{ id: a, plan: gold }]
plans: { free: { rate_limit: [{ limit: 0, per: 1m }] } }
routes:
  - name: r
    match: { prefix: / }
    upstream: app
    plugins:
      - rate_limit: { limits: [{ limit: 5, per: 1m, algorithm: fixed_window, burst: 3 }], key: [] }
      - concurrency_limit: { max: 0, status: 500 }
"#;
    let err = validation_errors(yaml);
    for want in [
        "consumers[0].plan: unknown plan \"gold\"",
        "plans.free.rate_limit[0].limit: must be at least 1",
        "routes[0].plugins[0].rate_limit.limits[0].burst: only token_bucket and gcra have a burst",
        "routes[0].plugins[0].rate_limit.key: give at least one key part",
        "routes[0].plugins[1].concurrency_limit.max: must be at least 1",
        "routes[0].plugins[1].concurrency_limit.status: must be 429 or 503",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
}
