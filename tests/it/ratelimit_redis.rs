//! Rate limits shared through a real `redis-server` (`store: redis`): accuracy across three
//! instances, every algorithm, outages (deny, allow, local) with recovery, and a script
//! flushed from the server.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::support::*;

/// Routes `/NAME` with one `rate_limit` each (`plugin` is its YAML flow mapping), sharing
/// `redis`.
fn redis_config(up: &TestUpstream, redis: &RedisServer, routes: &[(&str, &str)]) -> String {
    limit_routes(up, &format!("redis: {{ url: \"{}\", timeout: 1s }}\n", redis.url()), routes)
}

/// Routes `/NAME` with one `rate_limit` each (`plugin` is its YAML flow mapping) to one
/// upstream, with `redis_yaml` as the top-level `redis`.
pub fn limit_routes(up: &TestUpstream, redis_yaml: &str, routes: &[(&str, &str)]) -> String {
    let mut r = String::new();
    for (name, plugin) in routes {
        r.push_str(&format!(
            "  - name: {name}\n    match: {{ prefix: /{name} }}\n    upstream: app\n    plugins: [{{ rate_limit: {plugin} }}]\n"
        ));
    }
    config(&format!("upstreams:\n  app: {{ targets: [{{ url: {} }}] }}\n{redis_yaml}routes:\n{r}", up.url()))
}

fn remaining(h: &http::HeaderMap) -> Option<u64> {
    h.get("ratelimit-remaining")?.to_str().ok()?.parse().ok()
}

/// Sends `n` GETs of `path`, spread round-robin over `gws`, at most `parallel` at once;
/// returns each answer's status and `RateLimit-Remaining`.
async fn burst(gws: &[&Gateway], path: &str, n: usize, parallel: usize) -> Vec<(u16, Option<u64>)> {
    let sem = Arc::new(tokio::sync::Semaphore::new(parallel));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let url = gws[i % gws.len()].url(path);
        let permit = sem.clone().acquire_owned().await.unwrap();
        tasks.push(tokio::spawn(async move {
            let (s, h, _) = get(&url).await;
            drop(permit);
            (s.as_u16(), remaining(&h))
        }));
    }
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// Successful `EVALSHA` calls (a `NOSCRIPT` answer, before the script is loaded, counts
/// as failed), from `INFO commandstats`.
fn evalsha_ok(redis: &RedisServer) -> u64 {
    let info = redis.cmd(&["INFO", "commandstats"]);
    let Some(line) = info.lines().find_map(|l| l.strip_prefix("cmdstat_evalsha:")) else { return 0 };
    let field = |name: &str| -> u64 {
        line.split(',').find_map(|f| f.strip_prefix(name)?.strip_prefix('=')?.trim().parse().ok()).unwrap_or(0)
    };
    field("calls") - field("failed_calls")
}

fn count(answers: &[(u16, Option<u64>)], status: u16) -> usize {
    answers.iter().filter(|(s, _)| *s == status).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_share_one_limit_within_one_percent() {
    let redis = RedisServer::start();
    let up = TestUpstream::start("app").await;
    let cfg = redis_config(
        &up,
        &redis,
        &[("strict", "{ limits: [{ limit: 200, per: 1m, algorithm: sliding_log }], store: redis, instances: 3 }")],
    );
    let gws = [Gateway::start(&cfg), Gateway::start(&cfg), Gateway::start(&cfg)];
    let gws: Vec<&Gateway> = gws.iter().collect();
    let before = evalsha_ok(&redis);
    let start = Instant::now();
    let answers = burst(&gws, "/strict/x", 600, 48).await;
    let took = start.elapsed();
    let allowed = count(&answers, 200);
    eprintln!("600 requests over 3 instances in {took:?}: {allowed} allowed");
    assert_eq!(allowed + count(&answers, 429), 600, "{answers:?}");
    assert!((198..=202).contains(&allowed), "{allowed} allowed, limit 200");
    // One decision per request, one round trip each.
    assert_eq!(evalsha_ok(&redis) - before, 600);
    // Every instance reports the shared count: the 200s carry each remaining value once.
    let mut left: Vec<u64> = answers.iter().filter(|(s, _)| *s == 200).filter_map(|(_, r)| *r).collect();
    left.sort_unstable();
    assert_eq!(left, (0..allowed as u64).collect::<Vec<_>>());
    for gw in &gws {
        let (s, h, _) = get(&gw.url("/strict/x")).await;
        assert_eq!((s.as_u16(), remaining(&h)), (429, Some(0)));
        assert_eq!(gw.metric(r#"gateway_rate_limit_store_errors_total{route="strict"}"#).await, 0.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_algorithm_counts_in_redis_across_instances() {
    let redis = RedisServer::start();
    let up = TestUpstream::start("app").await;
    let cfg = redis_config(
        &up,
        &redis,
        &[
            ("fixed", "{ limits: [{ limit: 5, per: 1h, algorithm: fixed_window }], store: redis }"),
            ("sliding", "{ limits: [{ limit: 5, per: 1h, algorithm: sliding_window }], store: redis }"),
            ("log", "{ limits: [{ limit: 5, per: 1h, algorithm: sliding_log }], store: redis }"),
            ("gcra", "{ limits: [{ limit: 5, per: 1h, algorithm: gcra, burst: 3 }], store: redis }"),
            ("bucket", "{ limits: [{ limit: 5, per: 1h, algorithm: token_bucket }], store: redis }"),
            ("leaky", "{ limits: [{ limit: 2, per: 1s, algorithm: leaky_bucket, max_delay: 1600ms }], store: redis }"),
        ],
    );
    let (a, b) = (Gateway::start(&cfg), Gateway::start(&cfg));
    let gws = [&a, &b];
    for (route, want) in [("fixed", 5), ("sliding", 5), ("log", 5), ("gcra", 8), ("bucket", 5)] {
        let mut statuses = Vec::new();
        for i in 0..12 {
            let (s, h, _) = get(&gws[i % 2].url(&format!("/{route}/x"))).await;
            statuses.push(s.as_u16());
            if s == 429 {
                let retry: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
                // At most the period, but for sliding_window: its weighted estimate can
                // need up to two periods to fall below the limit.
                let most = if route == "sliding" { 7200 } else { 3600 };
                assert!((1..=most).contains(&retry), "{route}: {retry}");
            }
        }
        let allowed = statuses.iter().filter(|s| **s == 200).count();
        assert_eq!(allowed, want, "{route}: {statuses:?}");
        assert!(statuses[..want].iter().all(|s| *s == 200), "{route}: {statuses:?}");
    }
    // The leaky bucket holds requests: 6 at once, 4 are accepted (delays 0 to 1.5 s, one
    // each 500 ms), the others refused. Arrivals may spread over 400 ms and still give 4.
    let start = Instant::now();
    let timed = futures_util::future::join_all((0..6).map(|i| {
        let url = gws[i % 2].url("/leaky/x");
        async move {
            let t = Instant::now();
            let (s, _, _) = get(&url).await;
            (s.as_u16(), t.elapsed())
        }
    }))
    .await;
    let accepted: Vec<Duration> = timed.iter().filter(|(s, _)| *s == 200).map(|(_, d)| *d).collect();
    assert_eq!(accepted.len(), 4, "{timed:?}");
    assert_eq!(timed.iter().filter(|(s, _)| *s == 429).count(), 2, "{timed:?}");
    let slowest = accepted.iter().max().copied().unwrap_or_default();
    assert!(slowest >= Duration::from_millis(250), "no request was held: {timed:?}");
    assert!(start.elapsed() < Duration::from_secs(4));
    // Every key has an expiry.
    let keys = redis.cmd(&["DBSIZE"]);
    assert!(keys.parse::<u64>().unwrap() >= 6, "{keys}");
    let scan = redis.cmd(&["RANDOMKEY"]);
    let pttl: i64 = redis.cmd(&["PTTL", &scan]).parse().unwrap();
    assert!(pttl > 0, "{scan} has no expiry ({pttl})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_is_handled_as_configured_and_recovers_without_a_restart() {
    let mut redis = RedisServer::start();
    let up = TestUpstream::start("app").await;
    let cfg = redis_config(
        &up,
        &redis,
        &[
            ("deny", "{ limits: [{ limit: 3, per: 1h }], store: redis, on_store_error: deny }"),
            ("allow", "{ limits: [{ limit: 2, per: 1h }], store: redis, on_store_error: allow }"),
            ("local", "{ limits: [{ limit: 10, per: 1h }], store: redis, instances: 2 }"),
            ("load", "{ limits: [{ limit: 1000000, per: 1s }], store: redis, on_store_error: local }"),
        ],
    );
    let (a, b) = (Gateway::start(&cfg), Gateway::start(&cfg));
    // Up: shared counting.
    for gw in [&a, &b] {
        assert_eq!(get(&gw.url("/allow/x")).await.0, 200);
    }
    assert_eq!(get(&a.url("/allow/x")).await.0, 429);
    assert_eq!(get(&a.url("/deny/x")).await.0, 200);

    // Load on `a` all along: no request may hang or fail while Redis goes and comes back.
    let stop = Arc::new(AtomicBool::new(false));
    let slowest_ms = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let load = {
        let (url, stop, slowest_ms, failures) = (a.url("/load/x"), stop.clone(), slowest_ms.clone(), failures.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let (s, _, _) = get(&url).await;
                slowest_ms.fetch_max(t.elapsed().as_millis() as u64, Ordering::Relaxed);
                if s != 200 {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                n += 1;
            }
            n
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;

    redis.stop();
    // deny: 503 with a clear message, not an upstream error.
    let (s, h, body) = get(&a.url("/deny/x")).await;
    assert_eq!(s, 503, "{body}");
    assert_eq!(json(&body)["error"], "rate limit store unavailable");
    assert_eq!(h["retry-after"], "1");
    // allow: the exhausted limit lets everything through.
    for _ in 0..5 {
        assert_eq!(get(&a.url("/allow/x")).await.0, 200);
    }
    // local: limit / instances on each instance.
    for gw in [&a, &b] {
        let statuses = {
            let mut v = Vec::new();
            for _ in 0..8 {
                v.push(get(&gw.url("/local/x")).await.0.as_u16());
            }
            v
        };
        assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429, 429], "local fallback of 10 / 2");
    }
    assert!(a.metric(r#"gateway_rate_limit_store_errors_total{route="deny"}"#).await >= 1.0);
    assert!(a.metric(r#"gateway_rate_limit_store_errors_total{route="allow"}"#).await >= 5.0);
    assert!(b.metric(r#"gateway_rate_limit_store_errors_total{route="local"}"#).await >= 8.0);
    assert_eq!(a.metric(r#"gateway_backend_errors_total{upstream="app",kind="other"}"#).await, 0.0);

    redis.restart();
    // Shared limiting resumes by itself (the data is gone with the restart: a fresh budget).
    let back = Gateway::eventually(Duration::from_secs(10), || async { get(&a.url("/deny/x")).await.0 == 200 }).await;
    assert!(back, "never recovered; stderr:\n{}", a.stderr_text());
    assert!(Gateway::eventually(Duration::from_secs(10), || async { get(&b.url("/deny/y")).await.0 == 200 }).await);
    let statuses: Vec<u16> = {
        let mut v = Vec::new();
        for i in 0..4 {
            v.push(get(&[&a, &b][i % 2].url("/deny/x")).await.0.as_u16());
        }
        v
    };
    // 3 per hour, shared, one spent by `a`'s first answer after the restart (and `b`'s
    // probe counted too: same client address, same key).
    assert_eq!(statuses, [200, 429, 429, 429], "{statuses:?}");

    stop.store(true, Ordering::Relaxed);
    let n = load.await.unwrap();
    let slowest = slowest_ms.load(Ordering::Relaxed);
    eprintln!("{n} requests under load, slowest {slowest} ms");
    assert_eq!(failures.load(Ordering::Relaxed), 0);
    assert!(slowest < 1_000, "a request waited {slowest} ms");
    // Logged once per outage (per plugin), and the recovery too.
    assert!(a.logged("rate limits reach redis again").await, "{}", a.stderr_text());
    let text = a.stderr_text();
    let warned = text.matches("rate limits cannot reach redis").count();
    assert_eq!(warned, 4, "one warning per plugin:\n{text}");
    assert!(text.contains("rate limits reach redis again"), "{text}");
}

#[tokio::test]
async fn a_flushed_script_is_loaded_again() {
    let redis = RedisServer::start();
    let up = TestUpstream::start("app").await;
    let cfg = redis_config(&up, &redis, &[("r", "{ limits: [{ limit: 10, per: 1h }], store: redis }")]);
    let gw = Gateway::start(&cfg);
    let (s, h, _) = get(&gw.url("/r/x")).await;
    assert_eq!((s.as_u16(), remaining(&h)), (200, Some(9)));
    redis.cmd(&["SCRIPT", "FLUSH"]);
    let loads = redis.calls("script|load");
    let (s, h, _) = get(&gw.url("/r/x")).await;
    assert_eq!((s.as_u16(), remaining(&h)), (200, Some(8)));
    assert_eq!(redis.calls("script|load"), loads + 1);
    assert_eq!(gw.metric(r#"gateway_rate_limit_store_errors_total{route="r"}"#).await, 0.0);
}

#[test]
fn store_redis_without_redis_is_refused_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_temp(
        dir.path(),
        "p.yaml",
        "version: 1\nlisteners: [{ name: public, bind: 127.0.0.1:0 }]\nupstreams: { app: { targets: [{ url: http://127.0.0.1:9 }] } }\nroutes:\n  - { name: r, match: { prefix: / }, upstream: app, plugins: [{ rate_limit: { limits: [{ limit: 1, per: 1s }], store: redis } }] }\n",
    );
    let out = portico().args(["validate", path.to_str().unwrap()]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("routes[0].plugins[0].rate_limit.store"), "{text}");
}

/// `mode: batched`: 600 requests for one key, round-robin over three instances, against a
/// `200/1m` token bucket with `batch: 10`. The bound of docs/ratelimit.md#batched-mode: no
/// more than the limit plus what refills while the test runs (Redis never grants more
/// than a strict decision would), no fewer than the limit minus `instances × (batch - 1)`
/// (units left in leases); and far fewer round trips than requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_mode_stays_within_its_bound_with_few_round_trips() {
    let redis = RedisServer::start();
    let up = TestUpstream::start("app").await;
    let cfg = redis_config(
        &up,
        &redis,
        &[("batched", "{ limits: [{ limit: 200, per: 1m }], store: redis, instances: 3, mode: batched, batch: 10 }")],
    );
    let gws = [Gateway::start(&cfg), Gateway::start(&cfg), Gateway::start(&cfg)];
    let gws: Vec<&Gateway> = gws.iter().collect();
    let before = evalsha_ok(&redis);
    let start = Instant::now();
    let answers = burst(&gws, "/batched/x", 600, 48).await;
    let took = start.elapsed();
    let calls = evalsha_ok(&redis) - before;
    let allowed = count(&answers, 200);
    // 200 per minute refill: one unit per 300 ms.
    let refilled = (took.as_millis() / 300) as usize + 1;
    eprintln!("batched: 600 requests over 3 instances in {took:?}: {allowed} allowed, {calls} EVALSHA calls");
    assert_eq!(allowed + count(&answers, 429), 600, "{answers:?}");
    assert!(allowed <= 200 + refilled, "{allowed} allowed, limit 200 (+{refilled} refilled)");
    assert!(allowed >= 200 - 3 * 9, "{allowed} allowed, limit 200, at most 27 left in leases");
    assert!(calls < 100, "{calls} round trips for 600 requests");
    for gw in &gws {
        assert_eq!(gw.metric(r#"gateway_rate_limit_store_errors_total{route="batched"}"#).await, 0.0);
    }
}

/// `mode: batched` when Redis goes away: the units already leased are spent, then
/// `on_store_error` decides, as in strict mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_mode_spends_its_lease_then_follows_on_store_error() {
    let mut redis = RedisServer::start();
    let up = TestUpstream::start("app").await;
    let cfg = redis_config(
        &up,
        &redis,
        &[(
            "deny",
            "{ limits: [{ limit: 100, per: 1h, algorithm: fixed_window }], store: redis, mode: batched, batch: 5, on_store_error: deny }",
        )],
    );
    let gw = Gateway::start(&cfg);
    let (s, h, _) = get(&gw.url("/deny/x")).await;
    assert_eq!((s.as_u16(), remaining(&h)), (200, Some(99)));
    assert_eq!(evalsha_ok(&redis), 1);
    redis.stop();
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(get(&gw.url("/deny/x")).await.0.as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 200, 503, 503]);
    assert!(gw.metric(r#"gateway_rate_limit_store_errors_total{route="deny"}"#).await >= 2.0);
    redis.restart();
    assert!(Gateway::eventually(Duration::from_secs(10), || async { get(&gw.url("/deny/x")).await.0 == 200 }).await);
}

#[test]
fn batched_mode_is_refused_where_it_cannot_work() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("{ limits: [{ limit: 1, per: 1s }], mode: batched }", "rate_limit.mode"),
        (
            "{ limits: [{ limit: 1, per: 1s, algorithm: sliding_log }], store: redis, mode: batched }",
            "rate_limit.limits[0].algorithm",
        ),
        ("{ limits: [{ limit: 1, per: 1s }], store: redis, mode: batched, batch: 0 }", "rate_limit.batch"),
    ];
    for (plugin, path) in cases {
        let file = write_temp(
            dir.path(),
            "p.yaml",
            &format!(
                "version: 1\nlisteners: [{{ name: public, bind: 127.0.0.1:0 }}]\nredis: {{ url: \"redis://127.0.0.1:9\" }}\nupstreams: {{ app: {{ targets: [{{ url: http://127.0.0.1:9 }}] }} }}\nroutes:\n  - {{ name: r, match: {{ prefix: / }}, upstream: app, plugins: [{{ rate_limit: {plugin} }}] }}\n"
            ),
        );
        let out = portico().args(["validate", file.to_str().unwrap()]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{plugin}: {text}");
        assert!(text.contains(&format!("routes[0].plugins[0].{path}")), "{plugin}: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_share_one_token_bucket() {
    let redis = RedisServer::start();
    let up = TestUpstream::start("app").await;
    let cfg = redis_config(
        &up,
        &redis,
        &[("bucket", "{ limits: [{ limit: 200, per: 1m, algorithm: gcra }], store: redis }")],
    );
    let gws = [Gateway::start(&cfg), Gateway::start(&cfg), Gateway::start(&cfg)];
    let gws: Vec<&Gateway> = gws.iter().collect();
    let start = Instant::now();
    let answers = burst(&gws, "/bucket/x", 600, 48).await;
    let took = start.elapsed();
    let allowed = count(&answers, 200) as u64;
    // The bucket holds 200 and refills 200 per minute: during the burst, at most the
    // tokens refilled meanwhile come on top (one every 300 ms).
    let refilled = (took.as_millis() as u64).div_ceil(300);
    eprintln!("600 requests over 3 instances in {took:?}: {allowed} allowed (refill bound {refilled})");
    assert_eq!(allowed as usize + count(&answers, 429), 600, "{answers:?}");
    assert!((200..=200 + refilled).contains(&allowed), "{allowed} allowed, limit 200, {took:?}");
    if took < Duration::from_millis(600) {
        assert!(allowed <= 202, "not within 1% of the limit: {allowed}");
    }
}
