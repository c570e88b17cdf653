//! JWT revocation shared through a real `redis-server`: revocation by `jti` and by subject
//! seen by every instance within a second, the cache, and Redis outages (fail closed or
//! open, logged once, recovered without a restart).

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use serde_json::{Value, json};

use crate::auth::*;
use crate::support::*;

/// A config with provider `main` (revocation with `revocation`) on `/api`, and, when
/// `lenient` is given, provider `lenient` (same keys, `on_error: allow`) on `/lenient`.
fn gateway_config(up: &TestUpstream, redis: Option<&RedisServer>, revocation: &str, lenient: Option<&str>) -> String {
    gateway_config_url(up, redis.map(RedisServer::url), revocation, lenient)
}

fn gateway_config_url(up: &TestUpstream, redis: Option<String>, revocation: &str, lenient: Option<&str>) -> String {
    let redis = redis.map_or(String::new(), |url| format!("redis: {{ url: \"{url}\", timeout: 1s }}\n"));
    gateway_config_redis(up, &redis, revocation, lenient)
}

/// The same, with `redis_yaml` as the top-level `redis` (a cluster, say).
pub fn gateway_config_redis(up: &TestUpstream, redis: &str, revocation: &str, lenient: Option<&str>) -> String {
    let provider = |name: &str, rev: &str| {
        format!(
            "  {name}:\n    issuer: https://idp.test\n    audiences: [api]\n    keys: [{{ alg: HS256, secret: \"{SECRET}\" }}]\n    revocation: {rev}\n"
        )
    };
    let mut providers = provider("main", revocation);
    let mut routes =
        "  - name: api\n    match: { prefix: /api }\n    upstream: app\n    plugins: [{ jwt: { provider: main } }]\n"
            .to_owned();
    if let Some(l) = lenient {
        providers.push_str(&provider("lenient", l));
        routes.push_str(
            "  - name: lenient\n    match: { prefix: /lenient }\n    upstream: app\n    plugins: [{ jwt: { provider: lenient } }]\n",
        );
    }
    config(&format!(
        "upstreams:\n  app: {{ targets: [{{ url: {} }}] }}\n{redis}jwt_providers:\n{providers}routes:\n{routes}",
        up.url()
    ))
}

/// HS256 tokens for the given claims.
pub fn tokens(claims: &[Value]) -> Vec<String> {
    let specs: Vec<Value> = claims.iter().map(|c| json!({ "alg": "HS256", "key": SECRET, "claims": c })).collect();
    mint(json!(specs))
}

pub async fn status(gw: &Gateway, path: &str, token: &str) -> (u16, Value) {
    let req = http::Request::get(gw.url(path))
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (s, _, body) = send(req).await;
    (s.as_u16(), serde_json::from_str(&body).unwrap_or(Value::Null))
}

pub async fn revoke(gw: &Gateway, body: &str) -> (u16, String) {
    let req = http::Request::post(gw.admin_url("/revocations"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    let (s, _, body) = send(req).await;
    (s.as_u16(), body)
}

/// Waits until the gateway's subscription to the revocation notices is open.
async fn subscribed(gw: &Gateway) {
    let ok = Gateway::eventually(Duration::from_secs(10), || async {
        gw.metric(r#"gateway_redis_subscribed{channel="revocations"}"#).await == 1.0
    })
    .await;
    assert!(ok, "no subscription; stderr:\n{}", gw.stderr_text());
}

/// Polls until every gateway answers `path` with `token` as `want` (401 "token revoked");
/// returns how long that took.
async fn until_revoked_everywhere(gws: &[&Gateway], token: &str, within: Duration) -> Duration {
    let start = Instant::now();
    let ok = Gateway::eventually(within, || async {
        for gw in gws {
            let (s, body) = status(gw, "/api/x", token).await;
            if s != 401 {
                return false;
            }
            assert_eq!(body["error"], "token revoked");
        }
        true
    })
    .await;
    assert!(ok, "token still accepted somewhere after {within:?}");
    start.elapsed()
}

fn checks(provider: &str, result: &str, source: &str) -> String {
    format!(r#"gateway_revocation_checks_total{{provider="{provider}",result="{result}",source="{source}"}}"#)
}

#[tokio::test]
async fn a_revoked_jti_is_refused_by_every_instance_within_a_second() {
    let redis = RedisServer::start();
    let up = TestUpstream::start("app").await;
    // A long cache TTL: only the published notice can make the revocation visible in time.
    let cfg = gateway_config(&up, Some(&redis), "{ cache_ttl: 30s }", None);
    let (a, b) = (Gateway::start(&cfg), Gateway::start(&cfg));
    subscribed(&a).await;
    subscribed(&b).await;
    let t = tokens(&[claims("alice", json!({ "jti": "alice-1" })), claims("alice", json!({ "jti": "alice-2" }))]);
    for gw in [&a, &b] {
        for tok in &t {
            assert_eq!(status(gw, "/api/x", tok).await.0, 200);
        }
    }
    // Both answers are now cached on both instances.
    assert_eq!(b.metric(&checks("main", "not_revoked", "redis")).await, 2.0);

    let (s, body) = revoke(&a, &format!(r#"{{"jti":"alice-1","exp":{}}}"#, now() + 600)).await;
    assert_eq!(s, 204, "{body}");
    let took = until_revoked_everywhere(&[&a, &b], &t[0], Duration::from_secs(1)).await;
    eprintln!("revocation seen by both instances after {took:?}");
    // The other token of the same user still works, everywhere.
    for gw in [&a, &b] {
        assert_eq!(status(gw, "/api/x", &t[1]).await.0, 200);
    }
    // The key carries the token's remaining lifetime.
    let ttl: i64 = redis.cmd(&["TTL", "portico:revoked:jti:alice-1"]).parse().unwrap();
    assert!((590..=600).contains(&ttl), "{ttl}");
    // The refused request is in the access log as a 401 of the route.
    assert!(
        Gateway::eventually(Duration::from_secs(3), || async {
            b.access_log().iter().any(|l| l["statusCode"] == 401 && l["route"] == "api")
        })
        .await
    );

    // Bad input is a 400 with a reason; other methods a 405.
    for bad in ["nope", r#"{"jti":"x"}"#, r#"{"sub":""}"#, r#"{"sub":"a","extra":1}"#] {
        let (s, body) = revoke(&a, bad).await;
        assert_eq!(s, 400, "{bad}: {body}");
        assert!(json(&body)["error"].is_string(), "{body}");
    }
    let (s, _, _) = get(&a.admin_url("/revocations")).await;
    assert_eq!(s, 405);
}

#[tokio::test]
async fn revoking_a_subject_refuses_its_older_tokens_everywhere() {
    let redis = RedisServer::start();
    let up = TestUpstream::start("app").await;
    let cfg = gateway_config(&up, Some(&redis), "{ cache_ttl: 30s }", None);
    let (a, b) = (Gateway::start(&cfg), Gateway::start(&cfg));
    subscribed(&a).await;
    subscribed(&b).await;
    let old = now() - 60;
    let t = tokens(&[
        claims("bob", json!({ "jti": "bob-1", "iat": old })),
        claims("bob", json!({ "iat": old })), // no jti: checked by subject only
        claims("carol", json!({ "jti": "carol-1", "iat": old })),
    ]);
    for gw in [&a, &b] {
        for tok in &t {
            assert_eq!(status(gw, "/api/x", tok).await.0, 200);
        }
    }
    let (s, body) = revoke(&b, r#"{"sub":"bob"}"#).await;
    assert_eq!(s, 204, "{body}");
    until_revoked_everywhere(&[&a, &b], &t[0], Duration::from_secs(5)).await;
    until_revoked_everywhere(&[&a, &b], &t[1], Duration::from_secs(5)).await;
    // Another user is untouched.
    for gw in [&a, &b] {
        assert_eq!(status(gw, "/api/x", &t[2]).await.0, 200);
    }
    // A token issued after the cut-off (which is inclusive, in whole seconds) works.
    let before: u64 = redis.cmd(&["GET", "portico:revoked:sub:bob"]).parse().unwrap();
    assert!(before.abs_diff(now()) <= 2, "{before}");
    let fresh = tokens(&[claims("bob", json!({ "jti": "bob-2", "iat": before + 1 }))]);
    for gw in [&a, &b] {
        assert_eq!(status(gw, "/api/x", &fresh[0]).await.0, 200);
    }
    // The key expires by itself (30 days by default).
    let ttl: i64 = redis.cmd(&["TTL", "portico:revoked:sub:bob"]).parse().unwrap();
    assert!(ttl > 29 * 86_400, "{ttl}");

    // A revocation written with redis-cli (SET + PUBLISH, as docs/auth.md shows) works too.
    redis.cmd(&["SET", "portico:revoked:sub:carol", &now().to_string(), "EX", "600"]);
    redis.cmd(&["PUBLISH", "portico:revocations", "sub:carol"]);
    until_revoked_everywhere(&[&a, &b], &t[2], Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_redis_outage_fails_closed_or_open_as_configured_and_recovers() {
    let mut redis = RedisServer::start();
    let up = TestUpstream::start("app").await;
    let cfg = gateway_config(&up, Some(&redis), "{ on_error: deny }", Some("{ on_error: allow }"));
    let gw = Gateway::start(&cfg);
    subscribed(&gw).await;
    // Signed before the cached answer starts its 2 s: signing starts a Python process.
    let mut signed = vec![claims("dave", json!({ "jti": "dave-0" }))];
    signed.extend((1..=4).map(|i| claims(&format!("user-{i}"), json!({ "jti": format!("u-{i}") }))));
    let mut fresh = tokens(&signed);
    let warm = fresh.remove(0);
    assert_eq!(status(&gw, "/api/x", &warm).await.0, 200);
    redis.stop();
    // A cached answer still serves (cache_ttl 2s, fetched just now).
    assert_eq!(status(&gw, "/api/x", &warm).await.0, 200);
    for tok in &fresh {
        let (s, body) = status(&gw, "/api/x", tok).await;
        assert_eq!(s, 503, "{body}");
        assert_eq!(body["error"], "credentials cannot be checked right now");
        assert_eq!(status(&gw, "/lenient/x", tok).await.0, 200, "on_error: allow lets the token through");
    }
    assert_eq!(gw.metric(&checks("main", "error", "redis")).await, 4.0);
    assert_eq!(gw.metric(&checks("lenient", "error", "redis")).await, 4.0);
    // The gateway's own state, not the upstream's failure; an authentication refusal.
    let (_, _, metrics) = get(&gw.admin_url("/metrics")).await;
    assert!(!metrics.contains("gateway_backend_errors_total{"), "{metrics}");
    let refused =
        r#"gateway_auth_failures_total{route="api",status="503",reason="credentials cannot be checked right now"}"#;
    assert_eq!(gw.metric(refused).await, 4.0);
    assert!(gw.logged("revocation checks cannot reach redis").await, "{}", gw.stderr_text());
    let warnings = gw.stderr_text().matches("revocation checks cannot reach redis").count();
    assert_eq!(warnings, 1, "logged once per outage, not per request:\n{}", gw.stderr_text());

    redis.restart();
    let ok = Gateway::eventually(Duration::from_secs(10), || async { status(&gw, "/api/x", &fresh[0]).await.0 == 200 })
        .await;
    assert!(ok, "checks did not recover; stderr:\n{}", gw.stderr_text());
    assert!(gw.logged("revocation checks reach redis again").await, "stderr:\n{}", gw.stderr_text());
    // The subscription is back too: a revocation reaches the cache of this instance.
    subscribed(&gw).await;
    let (s, body) = revoke(&gw, &format!(r#"{{"jti":"u-2","exp":{}}}"#, now() + 60)).await;
    assert_eq!(s, 204, "{body}");
    until_revoked_everywhere(&[&gw], &fresh[1], Duration::from_secs(5)).await;
}

#[tokio::test]
async fn answers_are_cached_for_cache_ttl() {
    let redis = RedisServer::start();
    let up = TestUpstream::start("app").await;
    let cfg = gateway_config(&up, Some(&redis), "{ cache_ttl: 30s }", Some("{ cache_ttl: 500ms }"));
    let gw = Gateway::start(&cfg);
    subscribed(&gw).await;
    let t = tokens(&[
        claims("erin", json!({ "jti": "erin-1" })),
        claims("frank", json!({})), // no jti: the subject's answer alone
        claims("gina", json!({ "jti": "gina-1" })),
    ]);
    let before = redis.calls("mget");
    for tok in &t[..2] {
        for _ in 0..5 {
            assert_eq!(status(&gw, "/api/x", tok).await.0, 200);
        }
    }
    assert_eq!(redis.calls("mget") - before, 2, "one lookup per token, then the cache");
    assert_eq!(gw.metric(&checks("main", "not_revoked", "redis")).await, 2.0);
    assert_eq!(gw.metric(&checks("main", "not_revoked", "cache")).await, 8.0);

    // With a short TTL, the answer is looked up again once it is older than that.
    let start = Instant::now();
    assert_eq!(status(&gw, "/lenient/x", &t[2]).await.0, 200);
    let first = redis.calls("mget");
    let again = Gateway::eventually(Duration::from_secs(5), || async {
        assert_eq!(status(&gw, "/lenient/x", &t[2]).await.0, 200);
        redis.calls("mget") > first
    })
    .await;
    assert!(again);
    let after = start.elapsed();
    assert!(after >= Duration::from_millis(450), "looked up again after {after:?}, within the TTL");
    assert!(gw.metric(&checks("lenient", "not_revoked", "cache")).await >= 1.0);
}

#[tokio::test]
async fn without_redis_the_admin_endpoint_answers_503() {
    let up = TestUpstream::start("app").await;
    let cfg = config(&format!("upstreams:\n  app: {{ targets: [{{ url: {} }}] }}\n", up.url()));
    let gw = Gateway::start(&cfg);
    let (s, body) = revoke(&gw, r#"{"sub":"x"}"#).await;
    assert_eq!(s, 503, "{body}");
    assert_eq!(json(&body)["error"], "no redis configured");
}

#[tokio::test]
async fn rediss_urls_speak_tls_to_redis_and_check_its_certificate() {
    let pki = Pki::new();
    let redis = RedisServer::start_tls(&pki, false);
    let up = TestUpstream::start("app").await;
    let cfg = gateway_config_url(&up, Some(redis.tls_url()), "{ cache_ttl: 30s }", None);
    // The system roots, as rustls-native-certs reads them: here only the test CA.
    let gw = Gateway::start_with_env(&cfg, &[("SSL_CERT_FILE", pki.ca_pem.to_str().unwrap())]);
    subscribed(&gw).await;
    let t = tokens(&[claims("hank", json!({ "jti": "hank-1" }))]).remove(0);
    assert_eq!(status(&gw, "/api/x", &t).await.0, 200, "{}", gw.stderr_text());
    let (s, body) = revoke(&gw, &format!(r#"{{"jti":"hank-1","exp":{}}}"#, now() + 60)).await;
    assert_eq!(s, 204, "{body}");
    until_revoked_everywhere(&[&gw], &t, Duration::from_secs(5)).await;
    assert_eq!(redis.cmd(&["EXISTS", "portico:revoked:jti:hank-1"]), "1");

    // A server certificate from a CA the roots do not hold: no connection, fail closed.
    let other = Gateway::start_with_env(&cfg, &[("SSL_CERT_FILE", "/dev/null")]);
    let (s, body) = status(&other, "/api/x", &t).await;
    assert_eq!(s, 503, "{body}");
    assert!(other.logged("UnknownIssuer").await, "{}", other.stderr_text());
}

#[tokio::test]
async fn redis_tls_takes_a_private_ca_and_a_client_certificate() {
    let pki = Pki::new();
    // Redis asks for a client certificate from the test CA.
    let redis = RedisServer::start_tls(&pki, true);
    let up = TestUpstream::start("app").await;
    let url = redis.tls_url();
    let base = gateway_config_url(&up, Some(url.clone()), "{ cache_ttl: 30s }", None);
    let with_tls = |tls: &str| base.replace(&format!("url: \"{url}\""), &format!("url: \"{url}\", tls: {tls}"));
    let full = with_tls(&format!(
        "{{ ca: \"{}\", client_cert: \"{}\", client_key: \"{}\" }}",
        pki.ca_pem.display(),
        pki.client_cert.display(),
        pki.client_key.display()
    ));
    assert_ne!(full, base);
    // No system roots at all: only `redis.tls.ca` can make the server's certificate good.
    let gw = Gateway::start_with_env(&full, &[("SSL_CERT_FILE", "/dev/null")]);
    subscribed(&gw).await;
    let t = tokens(&[claims("ivy", json!({ "jti": "ivy-1" }))]).remove(0);
    assert_eq!(status(&gw, "/api/x", &t).await.0, 200, "{}", gw.stderr_text());
    let (s, body) = revoke(&gw, &format!(r#"{{"jti":"ivy-1","exp":{}}}"#, now() + 60)).await;
    assert_eq!(s, 204, "{body}");
    until_revoked_everywhere(&[&gw], &t, Duration::from_secs(5)).await;
    assert_eq!(redis.cmd(&["EXISTS", "portico:revoked:jti:ivy-1"]), "1");

    // The CA without the client certificate: Redis ends the handshake, so nothing is
    // checked and the token is refused (fail closed).
    let no_cert = with_tls(&format!("{{ ca: \"{}\" }}", pki.ca_pem.display()));
    let other = Gateway::start_with_env(&no_cert, &[("SSL_CERT_FILE", "/dev/null")]);
    let (s, body) = status(&other, "/api/x", &t).await;
    assert_eq!(s, 503, "{body}");
    // Because Redis wants a certificate, not for any other reason: the subscription never
    // opens, and the log says why.
    let refused = Gateway::eventually(Duration::from_secs(5), || async {
        other.stderr_text().to_ascii_lowercase().contains("certificaterequired")
    })
    .await;
    assert!(refused, "{}", other.stderr_text());
    assert_eq!(other.metric(r#"gateway_redis_subscribed{channel="revocations"}"#).await, 0.0);

    // A file that cannot serve is a start-up error that names the field.
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    for (tls, want) in [
        ("{ ca: /nonexistent/ca.pem }".to_owned(), "redis.tls.ca: cannot read /nonexistent/ca.pem".to_owned()),
        (format!("{{ ca: \"{}\" }}", empty.display()), "redis.tls.ca: holds no PEM certificate".to_owned()),
        (
            format!("{{ client_cert: \"{}\", client_key: \"{}\" }}", pki.client_cert.display(), empty.display()),
            "redis.tls.client_key: no usable PEM private key".to_owned(),
        ),
    ] {
        let f = dir.path().join("portico.yaml");
        std::fs::write(&f, with_tls(&tls)).unwrap();
        let out = portico().args(["run", "-c", f.to_str().unwrap()]).current_dir(dir.path()).output().unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&want), "{want} not in:\n{err}");
    }
}
