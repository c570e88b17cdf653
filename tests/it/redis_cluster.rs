//! Redis Cluster (`redis.cluster`): three real `redis-server` nodes in cluster mode. Rate
//! limits counted exactly across three gateway instances with the keys spread over the
//! nodes, batched leases, revocations (a cross-slot `MGET`, pub/sub through any node), and
//! a node going down and coming back under load.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use serde_json::json;

use crate::revocation;
use crate::support::*;

fn cluster_yaml(cluster: &RedisCluster) -> String {
    let nodes: Vec<String> = cluster.urls().iter().map(|u| format!("\"{u}\"")).collect();
    format!("redis: {{ cluster: [{}], timeout: 1s }}\n", nodes.join(", "))
}

/// Routes `/NAME` with one `rate_limit` each in `cluster`.
fn limits_config(up: &TestUpstream, cluster: &RedisCluster, routes: &[(&str, &str)]) -> String {
    crate::ratelimit_redis::limit_routes(up, &cluster_yaml(cluster), routes)
}

/// `/deny`: a limit per `x-key` that never refuses, 503 when the cluster cannot decide.
fn deny_config(up: &TestUpstream, cluster: &RedisCluster) -> String {
    let plugin = "{ limits: [{ limit: 1000, per: 1m }], key: [{ header: x-key }], store: redis, on_store_error: deny }";
    limits_config(up, cluster, &[("deny", plugin)])
}

async fn get_keyed(gw: &Gateway, path: &str, key: &str) -> u16 {
    let req = http::Request::get(gw.url(path)).header("x-key", key).body(Full::new(Bytes::new())).unwrap();
    send(req).await.0.as_u16()
}

/// Sends `per_key` requests for each of `keys`, 32 at a time, each key's requests spread
/// round-robin over `gws`; returns how many each key had allowed (200) and refused (429).
async fn spread(gws: &[&Gateway], path: &str, keys: &[String], per_key: usize) -> Vec<(usize, usize)> {
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(32));
    let mut tasks = Vec::new();
    for i in 0..per_key * keys.len() {
        // Key `i % n` for the `i / n`-th time: its turn picks the instance, so every key
        // reaches every instance whatever the number of keys.
        let gw = gws[(i / keys.len()) % gws.len()];
        let (url, key) = (gw.url(path), keys[i % keys.len()].clone());
        let permit = sem.clone().acquire_owned().await.unwrap();
        tasks.push(tokio::spawn(async move {
            let req = http::Request::get(url).header("x-key", &key).body(Full::new(Bytes::new())).unwrap();
            let s = send(req).await.0.as_u16();
            drop(permit);
            s
        }));
    }
    let mut out = vec![(0, 0); keys.len()];
    for (i, t) in tasks.into_iter().enumerate() {
        match t.await.unwrap() {
            200 => out[i % keys.len()].0 += 1,
            429 => out[i % keys.len()].1 += 1,
            other => panic!("status {other}"),
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_count_exactly_in_a_cluster_with_keys_on_every_node() {
    let cluster = RedisCluster::start(3);
    let up = TestUpstream::start("app").await;
    let cfg = limits_config(
        &up,
        &cluster,
        &[
            (
                "strict",
                "{ limits: [{ limit: 20, per: 1m, algorithm: sliding_log }], key: [{ header: x-key }], store: redis, on_store_error: deny }",
            ),
            (
                "batched",
                "{ limits: [{ limit: 30, per: 1m }], key: [{ header: x-key }], store: redis, mode: batched, batch: 5, on_store_error: deny }",
            ),
        ],
    );
    let gws = [Gateway::start(&cfg), Gateway::start(&cfg), Gateway::start(&cfg)];
    let gws: Vec<&Gateway> = gws.iter().collect();
    // 12 keys: the chance that their slots all fall on one node is about 1 in 177,000.
    let keys: Vec<String> = (0..12).map(|i| format!("caller-{i}")).collect();

    let strict = spread(&gws, "/strict/x", &keys, 45).await;
    for (key, (allowed, refused)) in keys.iter().zip(&strict) {
        assert_eq!((*allowed, *refused), (20, 25), "sliding_log 20/1m for {key}");
    }
    let per_node = cluster.keys_per_node();
    eprintln!("rate-limit keys per node: {per_node:?}");
    assert_eq!(per_node.iter().sum::<u64>(), 12, "one sorted set per key: {per_node:?}");
    assert!(per_node.iter().filter(|&&n| n > 0).count() >= 2, "the keys did not spread: {per_node:?}");

    // Batched: each instance leases 5 units at a time; within the bound of docs/ratelimit.md
    // (no more than the limit plus what refills meanwhile; at most 3 × 4 units left unspent).
    let start = Instant::now();
    let batched = spread(&gws, "/batched/x", &keys, 40).await;
    let refilled = (start.elapsed().as_millis() / 2_000) as usize + 1;
    for (key, (allowed, _)) in keys.iter().zip(&batched) {
        assert!(*allowed <= 30 + refilled && *allowed >= 30 - 12, "{allowed} allowed for {key}, limit 30");
    }
    for gw in &gws {
        for route in ["strict", "batched"] {
            let errors = gw.metric(&format!(r#"gateway_rate_limit_store_errors_total{{route="{route}"}}"#)).await;
            assert_eq!(errors, 0.0, "{route}: {}", gw.stderr_text());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_reach_every_instance_through_a_cluster_and_survive_the_subscribed_node() {
    use crate::auth::claims;
    let mut cluster = RedisCluster::start(3);
    // The other nodes keep serving their slots while one is down (so the subscription can
    // be shown moving to another node).
    for n in &cluster.nodes {
        n.cmd(&["CONFIG", "SET", "cluster-require-full-coverage", "no"]);
    }
    // PUBLISH goes to the node that owns the channel's slot; the gateways subscribe on the
    // first node of their list: make that another one, so a notice must cross the cluster.
    let owner = cluster.owner_of("portico:revocations");
    let order: Vec<usize> = (0..3).filter(|&i| i != owner).chain([owner]).collect();
    let first = order[0];
    let urls = cluster.urls();
    let nodes: Vec<String> = order.iter().map(|&i| format!("\"{}\"", urls[i])).collect();
    let up = TestUpstream::start("app").await;
    let redis = format!("redis: {{ cluster: [{}], timeout: 1s }}\n", nodes.join(", "));
    let cfg = revocation::gateway_config_redis(&up, &redis, "{ cache_ttl: 30s }", None);
    let (a, b) = (Gateway::start(&cfg), Gateway::start(&cfg));
    for gw in [&a, &b] {
        assert!(subscription_is(gw, 1.0).await, "no subscription; stderr:\n{}", gw.stderr_text());
    }
    // Users whose jti and subject keys live away from the node stopped below, so their
    // checks keep working while it is down.
    let away = |u: &str| {
        cluster.owner_of(&format!("portico:revoked:jti:{u}-1")) != first
            && cluster.owner_of(&format!("portico:revoked:sub:{u}")) != first
    };
    let users: Vec<String> = (0..200).map(|i| format!("user{i}")).filter(|u| away(u)).take(3).collect();
    assert_eq!(users.len(), 3);
    let tokens =
        revocation::tokens(&users.iter().map(|u| claims(u, json!({ "jti": format!("{u}-1") }))).collect::<Vec<_>>());
    // Each check is one MGET of a jti key and a subject key, in different slots: the
    // client splits it per node.
    for gw in [&a, &b] {
        for t in &tokens {
            assert_eq!(status_of(gw, t).await, 200, "{}", gw.stderr_text());
        }
    }
    // The cache TTL is 30 s: only the notice, published on the channel's node and
    // delivered by the cluster to the subscriber on another node, makes `b` see it soon.
    revoke_jti(&a, &format!("{}-1", users[0])).await;
    let start = Instant::now();
    // (5 s leaves room for a loaded machine; the time taken is printed.)
    let seen = Gateway::eventually(Duration::from_secs(5), || async { status_of(&b, &tokens[0]).await == 401 }).await;
    assert!(seen, "b still accepts the revoked token after 5 s");
    eprintln!("revocation seen through the cluster after {:?}", start.elapsed());
    assert_eq!(status_of(&b, &tokens[1]).await, 200);
    let slot = cluster.nodes[0].cmd(&["CLUSTER", "KEYSLOT", &format!("portico:revoked:jti:{}-1", users[0])]);
    // Each node counts only its own keys in the slot: stored once.
    let stored: u64 =
        cluster.nodes.iter().map(|n| n.cmd(&["CLUSTER", "COUNTKEYSINSLOT", &slot]).parse::<u64>().unwrap()).sum();
    assert_eq!(stored, 1);

    // The node holding both subscriptions goes: each gateway subscribes on the next node
    // of its list, and notices arrive again.
    cluster.nodes[first].stop();
    for gw in [&a, &b] {
        assert!(subscription_is(gw, 0.0).await, "the lost subscription was not noticed");
    }
    for gw in [&a, &b] {
        assert!(subscription_is(gw, 1.0).await, "no subscription on another node; stderr:\n{}", gw.stderr_text());
    }
    revoke_jti(&a, &format!("{}-1", users[1])).await;
    let seen = Gateway::eventually(Duration::from_secs(5), || async { status_of(&b, &tokens[1]).await == 401 }).await;
    assert!(seen, "b missed a revocation after its subscription moved; stderr:\n{}", b.stderr_text());
    assert_eq!(status_of(&b, &tokens[2]).await, 200);
}

/// The gateway may start before its cluster exists: commands fail as configured, then
/// work once the cluster is up, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_started_before_its_cluster_uses_it_once_it_is_up() {
    let mut cluster = RedisCluster::planned(3);
    let up = TestUpstream::start("app").await;
    let cfg = deny_config(&up, &cluster);
    let gw = Gateway::start(&cfg);
    assert_eq!(get_keyed(&gw, "/deny/x", "k").await, 503);
    cluster.create();
    let start = Instant::now();
    let up =
        Gateway::eventually(Duration::from_secs(15), || async { get_keyed(&gw, "/deny/x", "k").await == 200 }).await;
    assert!(up, "never used the cluster; stderr:\n{}", gw.stderr_text());
    eprintln!("cluster used {:?} after it was created", start.elapsed());
}

/// The status of `/api/x` with `token`.
async fn status_of(gw: &Gateway, token: &str) -> u16 {
    revocation::status(gw, "/api/x", token).await.0
}

/// Revokes `jti` (for ten minutes) through `gw`'s admin API.
async fn revoke_jti(gw: &Gateway, jti: &str) {
    let (s, body) = revocation::revoke(gw, &format!(r#"{{"jti":"{jti}","exp":{}}}"#, crate::auth::now() + 600)).await;
    assert_eq!(s, 204, "{body}");
}

/// Waits until `gw`'s subscription to the revocation notices is `up` (1) or down (0).
async fn subscription_is(gw: &Gateway, up: f64) -> bool {
    Gateway::eventually(Duration::from_secs(10), || async {
        gw.metric(r#"gateway_redis_subscribed{channel="revocations"}"#).await == up
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_going_down_fails_as_configured_and_recovers_without_a_restart() {
    let mut cluster = RedisCluster::start(3);
    let up = TestUpstream::start("app").await;
    let cfg = deny_config(&up, &cluster);
    let gw = Gateway::start(&cfg);
    let keys: Vec<String> = (0..12).map(|i| format!("k{i}")).collect();
    for k in &keys {
        assert_eq!(get_keyed(&gw, "/deny/x", k).await, 200, "{}", gw.stderr_text());
    }

    // One primary goes (no replica takes over): its slots have no owner, and the cluster
    // stops serving (full coverage is required by default).
    cluster.nodes[1].stop();
    let refused = Gateway::eventually(Duration::from_secs(10), || async {
        let mut any = false;
        for k in &keys {
            let s = get_keyed(&gw, "/deny/x", k).await;
            assert!(s == 200 || s == 503, "status {s}");
            any |= s == 503;
        }
        any
    })
    .await;
    assert!(refused, "no request was refused while a node was down");
    assert!(gw.metric(r#"gateway_rate_limit_store_errors_total{route="deny"}"#).await >= 1.0);

    // It comes back (empty, with its slots from nodes.conf); the gateway follows by itself.
    cluster.nodes[1].restart();
    cluster.wait_ok();
    let start = Instant::now();
    let back = Gateway::eventually(Duration::from_secs(15), || async {
        let mut all = true;
        for k in &keys {
            all &= get_keyed(&gw, "/deny/x", k).await == 200;
        }
        all
    })
    .await;
    assert!(back, "never recovered; stderr:\n{}", gw.stderr_text());
    eprintln!("every key decided by the cluster again {:?} after it was whole", start.elapsed());
    assert!(cluster.keys_per_node()[1] > 0, "the restarted node holds keys again");
}

/// A cluster whose nodes speak TLS (to clients and on the cluster bus): `rediss://` seeds
/// and `redis.tls.ca`, no system roots; the slot map's TLS ports are followed and the
/// counts are exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_is_used_with_the_configured_ca() {
    let pki = Pki::new();
    let cluster = RedisCluster::start_tls(3, &pki);
    let up = TestUpstream::start("app").await;
    let nodes: Vec<String> = cluster.urls().iter().map(|u| format!("\"{u}\"")).collect();
    assert!(nodes.iter().all(|u| u.starts_with("\"rediss://")), "{nodes:?}");
    let redis = format!(
        "redis: {{ cluster: [{}], timeout: 1s, tls: {{ ca: \"{}\" }} }}\n",
        nodes.join(", "),
        pki.ca_pem.display()
    );
    let cfg = crate::ratelimit_redis::limit_routes(
        &up,
        &redis,
        &[(
            "strict",
            "{ limits: [{ limit: 10, per: 1m, algorithm: sliding_log }], key: [{ header: x-key }], store: redis, on_store_error: deny }",
        )],
    );
    let gws = [
        Gateway::start_with_env(&cfg, &[("SSL_CERT_FILE", "/dev/null")]),
        Gateway::start_with_env(&cfg, &[("SSL_CERT_FILE", "/dev/null")]),
    ];
    let gws: Vec<&Gateway> = gws.iter().collect();
    let keys: Vec<String> = (0..12).map(|i| format!("tls-caller-{i}")).collect();
    let counts = spread(&gws, "/strict/x", &keys, 16).await;
    for (key, (allowed, refused)) in keys.iter().zip(&counts) {
        assert_eq!((*allowed, *refused), (10, 6), "sliding_log 10/1m for {key}; stderr:\n{}", gws[0].stderr_text());
    }
    let per_node = cluster.keys_per_node();
    assert_eq!(per_node.iter().sum::<u64>(), 12, "{per_node:?}");
    assert!(per_node.iter().filter(|&&n| n > 0).count() >= 2, "the keys did not spread: {per_node:?}");
}
