//! Authentication and authorization: JWT (static keys and JWKS), API keys, consumers,
//! `authorize`, identity headers and the audit log. Keys and tokens are made by PyJWT and
//! cryptography (tests/it/jwt_tool.py), an implementation independent of the gateway's.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};

use crate::support::*;

const TOOL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/jwt_tool.py");
pub const SECRET: &str = "an-hs256-secret-of-at-least-32-bytes!";

/// Key pairs made by the Python tool in a temp dir.
pub struct Keys {
    pub dir: tempfile::TempDir,
}

impl Keys {
    pub fn new() -> Keys {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("python3").args([TOOL, "keys"]).arg(dir.path()).output().unwrap();
        assert!(out.status.success(), "jwt_tool keys: {}", String::from_utf8_lossy(&out.stderr));
        Keys { dir }
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    pub fn p(&self, file: &str) -> String {
        self.path(file).to_str().unwrap().to_owned()
    }

    pub fn jwk(&self, name: &str) -> Value {
        serde_json::from_str(&std::fs::read_to_string(self.path(&format!("{name}.jwk"))).unwrap()).unwrap()
    }
}

/// Tokens for `specs` (`{alg, key, claims, headers?, forge?}`), minted by PyJWT.
pub fn mint(specs: Value) -> Vec<String> {
    use std::io::Write;
    let mut child = std::process::Command::new("python3")
        .args([TOOL, "mint"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(specs.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "jwt_tool mint: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(str::to_owned).collect()
}

pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// Good claims for subject `sub`, merged with `extra`.
pub fn claims(sub: &str, extra: Value) -> Value {
    let mut c = json!({ "iss": "https://idp.test", "aud": "api", "sub": sub, "iat": now(), "exp": now() + 600 });
    if let (Some(c), Some(e)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            c.insert(k.clone(), v.clone());
        }
    }
    c
}

async fn bearer(url: &str, token: &str) -> (http::StatusCode, http::HeaderMap, String) {
    get_with(url, &[("authorization", &format!("Bearer {token}"))]).await
}

fn static_keys_config(up: &TestUpstream, k: &Keys) -> String {
    let pem = |f: &str| k.p(f);
    config(&format!(
        r#"upstreams:
  app: {{ targets: [{{ url: {up} }}] }}
jwt_providers:
  main:
    issuer: https://idp.test
    audiences: [api, other-api]
    forward_claims: {{ email: X-User-Email }}
    keys:
      - {{ kid: hs256, alg: HS256, secret: "{SECRET}" }}
      - {{ kid: hs384, alg: HS384, secret: "{SECRET}" }}
      - {{ kid: hs512, alg: HS512, secret: "{SECRET}" }}
      - {{ kid: rs256, alg: RS256, pem_file: {rsa} }}
      - {{ kid: rs384, alg: RS384, pem_file: {rsa} }}
      - {{ kid: rs512, alg: RS512, pem_file: {rsa} }}
      - {{ kid: ps256, alg: PS256, pem_file: {rsa} }}
      - {{ kid: es256, alg: ES256, pem_file: {ec256} }}
      - {{ kid: es384, alg: ES384, jwk: {ec384jwk} }}
      - {{ kid: eddsa, alg: EdDSA, pem_file: {ed} }}
routes:
  - name: api
    match: {{ prefix: /api }}
    upstream: app
    plugins: [{{ jwt: {{ provider: main }} }}]
  - name: tenants
    match: {{ path: "/t/{{tenant}}/{{*rest}}" }}
    upstream: app
    plugins: [{{ jwt: {{ provider: main }} }}, {{ authorize: {{ tenant: {{ param: tenant }} }} }}]
  - name: open
    match: {{ prefix: /open }}
    upstream: app
"#,
        up = up.url(),
        rsa = pem("rsa.pub"),
        ec256 = pem("ec256.pub"),
        ec384jwk = k.jwk("ec384"),
        ed = pem("ed25519.pub"),
    ))
}

#[tokio::test]
async fn every_algorithm_is_accepted_with_its_pinned_key() {
    let up = TestUpstream::start("app").await;
    let k = Keys::new();
    let gw = Gateway::start(&static_keys_config(&up, &k));
    let algs = [
        ("HS256", SECRET.to_owned(), "hs256"),
        ("HS384", SECRET.to_owned(), "hs384"),
        ("HS512", SECRET.to_owned(), "hs512"),
        ("RS256", k.p("rsa.key"), "rs256"),
        ("RS384", k.p("rsa.key"), "rs384"),
        ("RS512", k.p("rsa.key"), "rs512"),
        ("PS256", k.p("rsa.key"), "ps256"),
        ("ES256", k.p("ec256.key"), "es256"),
        ("ES384", k.p("ec384.key"), "es384"),
        ("EdDSA", k.p("ed25519.key"), "eddsa"),
    ];
    let specs: Vec<Value> = algs
        .iter()
        .map(|(alg, key, kid)| {
            json!({ "alg": alg, "key": key, "headers": { "kid": kid },
                    "claims": claims(&format!("user-{kid}"), json!({ "email": format!("{kid}@example.com") })) })
        })
        .collect();
    let tokens = mint(json!(specs));
    for ((alg, _, kid), token) in algs.iter().zip(&tokens) {
        let (status, _, body) = bearer(&gw.url("/api/me"), token).await;
        assert_eq!(status, 200, "{alg}: {body}");
        let seen = up.last_headers();
        assert_eq!(seen["x-user-id"], format!("user-{kid}").as_str(), "{alg}");
        assert_eq!(seen["x-user-email"], format!("{kid}@example.com").as_str(), "{alg}");
        // The token still reaches the upstream (it may want more claims).
        assert!(seen["authorization"].to_str().unwrap().ends_with(token.as_str()));
    }
    // A token without kid is checked against the keys of its algorithm.
    let no_kid = mint(json!([{ "alg": "ES256", "key": k.p("ec256.key"), "claims": claims("nokid", json!({})) }]));
    assert_eq!(bearer(&gw.url("/api/x"), &no_kid[0]).await.0, 200);
    // The access log names the user.
    assert!(
        Gateway::eventually(Duration::from_secs(3), || async {
            gw.access_log().iter().any(|l| l["userId"] == "nokid" && l["route"] == "api")
        })
        .await
    );
}

#[tokio::test]
async fn forged_expired_and_misdirected_tokens_are_refused() {
    let up = TestUpstream::start("app").await;
    let k = Keys::new();
    let gw = Gateway::start(&static_keys_config(&up, &k));
    let rsa = k.p("rsa.key");
    let t = now();
    let es = |c: Value, kid: &str| json!({ "alg": "ES256", "key": k.p("ec256.key"), "headers": { "kid": kid }, "claims": c });
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "alg none",
            json!({ "alg": "none", "forge": "none", "key": "", "headers": { "kid": "rs256" }, "claims": claims("a", json!({})) }),
            "malformed token",
        ),
        (
            "HS256 keyed with the RSA public key",
            json!({ "alg": "HS256", "forge": "hmac", "key": k.p("rsa.pub"), "headers": { "kid": "rs256" }, "claims": claims("a", json!({})) }),
            "token algorithm not allowed",
        ),
        ("expired", es(claims("a", json!({ "exp": t - 120 })), "es256"), "token expired"),
        ("not yet valid", es(claims("a", json!({ "nbf": t + 600 })), "es256"), "token not valid yet"),
        ("issued in the future", es(claims("a", json!({ "iat": t + 600 })), "es256"), "token issued in the future"),
        ("wrong issuer", es(claims("a", json!({ "iss": "https://evil.test" })), "es256"), "wrong token issuer"),
        ("wrong audience", es(claims("a", json!({ "aud": "someone-else" })), "es256"), "wrong token audience"),
        (
            "no exp",
            json!({ "alg": "ES256", "key": k.p("ec256.key"), "headers": { "kid": "es256" }, "claims": { "iss": "https://idp.test", "aud": "api", "sub": "a" } }),
            "token lacks a required claim",
        ),
        ("unknown kid", es(claims("a", json!({})), "nope"), "unknown token key"),
        ("injected kid", es(claims("a", json!({})), "../../../../etc/passwd' OR 1=1 --"), "unknown token key"),
        (
            "signed by another key",
            json!({ "alg": "RS256", "key": k.p("rsa2.key"), "headers": { "kid": "rs256" }, "claims": claims("a", json!({})) }),
            "invalid token signature",
        ),
        (
            "kid of another algorithm",
            json!({ "alg": "RS256", "key": rsa, "headers": { "kid": "es256" }, "claims": claims("a", json!({})) }),
            "token algorithm not allowed",
        ),
        (
            "no subject",
            es(json!({ "iss": "https://idp.test", "aud": "api", "exp": t + 60 }), "es256"),
            "token has no subject",
        ),
        (
            "control character in the subject",
            es(claims("bob\r\nX-User-Role: admin", json!({})), "es256"),
            "token has no subject",
        ),
    ];
    let specs: Vec<Value> = cases.iter().map(|(_, s, _)| s.clone()).collect();
    let mut tokens = mint(json!(specs));
    let mut names: Vec<&str> = cases.iter().map(|(n, _, _)| *n).collect();
    let mut reasons: Vec<&str> = cases.iter().map(|(_, _, r)| *r).collect();

    // A valid token, then the same one with its payload changed.
    let good = mint(json!([es(claims("alice", json!({ "role": "user" })), "es256")])).remove(0);
    assert_eq!(bearer(&gw.url("/api/x"), &good).await.0, 200);
    let parts: Vec<&str> = good.split('.').collect();
    let payload = claims("admin", json!({}));
    let tampered = format!("{}.{}.{}", parts[0], base64url(payload.to_string().as_bytes()), parts[2]);
    tokens.push(tampered);
    names.push("tampered payload");
    reasons.push("invalid token signature");
    tokens.push(format!("{good}{}", "A".repeat(9000)));
    names.push("oversized");
    reasons.push("token too large");
    for junk in ["abc", "a.b", "a.b.c", "....", "eyJhbGciOiJFUzI1NiJ9.%%%.x"] {
        tokens.push(junk.to_owned());
        names.push("malformed");
        reasons.push("malformed token");
    }

    let before = up.hits();
    for ((name, token), reason) in names.iter().zip(&tokens).zip(&reasons) {
        let (status, headers, body) = bearer(&gw.url("/api/x"), token).await;
        assert_eq!(status, 401, "{name}: {body}");
        let challenge = headers["www-authenticate"].to_str().unwrap();
        assert!(challenge.starts_with("Bearer realm=\"portico\", error=\"invalid_token\""), "{name}: {challenge}");
        assert_eq!(json(&body)["error"], *reason, "{name}");
        assert!(json(&body)["requestId"].is_string());
    }
    assert_eq!(up.hits(), before, "a refused request reached the upstream");

    // No token at all: 401 with a plain challenge.
    let (status, headers, _) = get(&gw.url("/api/x")).await;
    assert_eq!(status, 401);
    assert_eq!(headers["www-authenticate"], r#"Bearer realm="portico""#);

    // A token for another tenant.
    let acme = mint(json!([es(claims("bob", json!({ "tenant": "acme" })), "es256")])).remove(0);
    assert_eq!(bearer(&gw.url("/t/acme/orders"), &acme).await.0, 200);
    assert_eq!(up.last_headers()["x-tenant-id"], "acme");
    let (status, _, body) = bearer(&gw.url("/t/globex/orders"), &acme).await;
    assert_eq!((status.as_u16(), json(&body)["error"].as_str().unwrap()), (403, "caller belongs to another tenant"));
    let no_tenant = good.clone();
    assert_eq!(bearer(&gw.url("/t/acme/orders"), &no_tenant).await.0, 403);

    // Every refusal has an audit line; none carries the token.
    let expected = tokens.len() + 3;
    assert!(
        Gateway::eventually(Duration::from_secs(3), || async {
            gw.stderr_text().lines().filter(|l| l.contains(r#""audit":"#)).count() >= expected
        })
        .await,
        "audit lines: {}",
        gw.stderr_text()
    );
    let text = gw.stderr_text();
    assert!(!text.contains(&good[good.len() - 20..]), "a token leaked into the logs");
    let tenant_line = text.lines().find(|l| l.contains("another tenant")).unwrap();
    let v = json(tenant_line);
    assert_eq!(
        (v["audit"].as_str(), v["userId"].as_str(), v["status"].as_u64()),
        (Some("authorization"), Some("bob"), Some(403))
    );
    assert_eq!(v["path"], "/t/globex/orders");
    assert!(gw.metric(r#"gateway_auth_failures_total{route="api",status="401",reason="token expired"}"#).await >= 1.0);
}

#[tokio::test]
async fn forged_identity_headers_never_reach_an_upstream() {
    let up = TestUpstream::start("app").await;
    let k = Keys::new();
    let gw = Gateway::start(&static_keys_config(&up, &k));
    let forged = [
        ("x-user-id", "admin"),
        ("x-user-role", "admin"),
        ("x-tenant-id", "acme"),
        ("x-consumer-plan", "enterprise"),
        ("x-user-email", "ceo@example.com"),
    ];
    // On a route without authentication...
    let (status, _, _) = get_with(&gw.url("/open/x"), &forged).await;
    assert_eq!(status, 200);
    let seen = up.last_headers();
    for (h, _) in forged {
        assert!(seen.get(h).is_none(), "{h} reached the upstream");
    }
    // ...and on one with it: the gateway's values replace the client's.
    let token = mint(
        json!([{ "alg": "HS256", "key": SECRET, "headers": { "kid": "hs256" }, "claims": claims("carol", json!({})) }]),
    )
    .remove(0);
    let auth = format!("Bearer {token}");
    let mut with_token = forged.to_vec();
    with_token.push(("authorization", &auth));
    assert_eq!(get_with(&gw.url("/api/x"), &with_token).await.0, 200);
    let seen = up.last_headers();
    assert_eq!(seen["x-user-id"], "carol");
    // A UTF-8 subject is forwarded as its bytes.
    let token = mint(
        json!([{ "alg": "HS256", "key": SECRET, "headers": { "kid": "hs256" }, "claims": claims("jörg", json!({})) }]),
    )
    .remove(0);
    assert_eq!(bearer(&gw.url("/api/x"), &token).await.0, 200);
    assert_eq!(up.last_headers()["x-user-id"].as_bytes(), "jörg".as_bytes());
    for h in ["x-user-role", "x-tenant-id", "x-consumer-plan", "x-user-email"] {
        assert!(seen.get(h).is_none(), "{h} reached the upstream");
    }
}

/// A JWKS endpoint whose document, status and liveness the test controls.
struct JwksServer {
    addr: std::net::SocketAddr,
    body: Arc<Mutex<String>>,
    hits: Arc<AtomicUsize>,
    failing: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    async fn start(keys: Vec<Value>) -> JwksServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let body = Arc::new(Mutex::new(json!({ "keys": keys }).to_string()));
        let hits = Arc::new(AtomicUsize::new(0));
        let failing = Arc::new(AtomicBool::new(false));
        let (b, h, f) = (body.clone(), hits.clone(), failing.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (b, h, f) = (b.clone(), h.clone(), f.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |_req| {
                        h.fetch_add(1, Ordering::SeqCst);
                        let mut res = http::Response::new(Full::new(Bytes::from(b.lock().unwrap().clone())));
                        if f.load(Ordering::SeqCst) {
                            *res.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                        }
                        async move { Ok::<_, Infallible>(res) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        JwksServer { addr, body, hits, failing, task }
    }

    fn set(&self, keys: Vec<Value>) {
        *self.body.lock().unwrap() = json!({ "keys": keys }).to_string();
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Stops accepting; connections the gateway keeps alive answer 503 from now on.
    fn stop(&self) {
        self.failing.store(true, Ordering::SeqCst);
        self.task.abort();
    }
}

fn jwks_config(up: &TestUpstream, jwks: &JwksServer, settings: &str) -> String {
    config(&format!(
        r#"upstreams:
  app: {{ targets: [{{ url: {} }}] }}
jwt_providers:
  idp:
    issuer: https://idp.test
    audiences: [api]
    algorithms: [RS256, ES256]
    jwks: {{ url: "http://{}/.well-known/jwks.json", {settings} }}
routes:
  - name: api
    match: {{ prefix: /api }}
    upstream: app
    plugins: [{{ jwt: {{ provider: idp }} }}]
"#,
        up.url(),
        jwks.addr
    ))
}

fn signed(k: &Keys, key: &str, alg: &str, kid: &str, sub: &str) -> Value {
    json!({ "alg": alg, "key": k.p(&format!("{key}.key")), "headers": { "kid": kid }, "claims": claims(sub, json!({})) })
}

// Multi-threaded: the JWKS server must answer while the test blocks in Gateway::start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_keys_rotate_unknown_kids_are_rate_limited_and_an_outage_keeps_valid_tokens_working() {
    let up = TestUpstream::start("app").await;
    let k = Keys::new();
    let jwks = JwksServer::start(vec![k.jwk("rsa")]).await;
    let gw = Gateway::start(&jwks_config(&up, &jwks, "refresh_interval: 60s, min_refresh_interval: 1s, max_stale: 1h"));
    // Fetched once at start, before traffic.
    assert_eq!(jwks.hits(), 1);
    let tokens = mint(json!([
        signed(&k, "rsa", "RS256", "rsa", "u1"),
        signed(&k, "ec256", "ES256", "ec256", "u2"),
        signed(&k, "rsa", "RS256", "rsa2", "u3"),
    ]));
    assert_eq!(bearer(&gw.url("/api/a"), &tokens[0]).await.0, 200);
    assert_eq!(jwks.hits(), 1, "a known kid needs no fetch");

    // The identity provider rotates in a new key; the first token with its kid makes the
    // gateway fetch again (the cooldown since the start has passed).
    jwks.set(vec![k.jwk("rsa"), k.jwk("ec256")]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, _, body) = bearer(&gw.url("/api/b"), &tokens[1]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(jwks.hits(), 2);
    assert_eq!(up.last_headers()["x-user-id"], "u2");

    // Random kids: many requests, at most one fetch per min_refresh_interval.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let random: Vec<Value> = (0..20).map(|i| signed(&k, "rsa", "RS256", &format!("random-{i}"), "x")).collect();
    let random = mint(json!(random));
    for t in &random {
        assert_eq!(bearer(&gw.url("/api/c"), t).await.0, 401);
    }
    assert!(jwks.hits() <= 3, "random kids made {} fetches", jwks.hits() - 2);

    // The identity provider fails, then goes away entirely: valid tokens keep working from
    // the last good key set, and a new kid cannot be learned.
    jwks.failing.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(bearer(&gw.url("/api/d"), &tokens[2]).await.0, 401, "rsa2 is not in the set");
    assert_eq!(bearer(&gw.url("/api/e"), &tokens[0]).await.0, 200);
    assert!(gw.metric(r#"gateway_jwks_fetches_total{provider="idp",result="error"}"#).await >= 1.0);
    jwks.stop();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(bearer(&gw.url("/api/f"), &tokens[2]).await.0, 401);
    for path in ["/api/g", "/api/h", "/api/i"] {
        assert_eq!(bearer(&gw.url(path), &tokens[0]).await.0, 200);
        assert_eq!(bearer(&gw.url(path), &tokens[1]).await.0, 200);
    }
    assert!(gw.metric(r#"gateway_jwks_last_success_timestamp_seconds{provider="idp"}"#).await > 1.7e9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_set_older_than_max_stale_is_not_trusted() {
    let up = TestUpstream::start("app").await;
    let k = Keys::new();
    let jwks = JwksServer::start(vec![k.jwk("ec256")]).await;
    let gw = Gateway::start(&jwks_config(
        &up,
        &jwks,
        "refresh_interval: 1s, min_refresh_interval: 1s, max_stale: 2s, timeout: 500ms",
    ));
    let token = mint(json!([signed(&k, "ec256", "ES256", "ec256", "u")])).remove(0);
    assert_eq!(bearer(&gw.url("/api/a"), &token).await.0, 200);
    // The identity provider withdraws the key: the token, verified and remembered, is
    // refused once the new set is fetched (background refresh every second).
    jwks.set(vec![k.jwk("rsa")]);
    assert!(
        Gateway::eventually(Duration::from_secs(5), || {
            let (url, token) = (gw.url("/api/w"), token.clone());
            async move { bearer(&url, &token).await.0 == 401 }
        })
        .await,
        "a withdrawn key still verifies"
    );
    jwks.set(vec![k.jwk("ec256")]);
    assert!(
        Gateway::eventually(Duration::from_secs(5), || {
            let (url, token) = (gw.url("/api/r"), token.clone());
            async move { bearer(&url, &token).await.0 == 200 }
        })
        .await
    );
    jwks.stop();
    // Within max_stale the last set serves; past it, the gateway says it cannot check.
    assert_eq!(bearer(&gw.url("/api/b"), &token).await.0, 200);
    assert!(
        Gateway::eventually(Duration::from_secs(6), || {
            let (url, token) = (gw.url("/api/c"), token.clone());
            async move {
                let (status, headers, _) = bearer(&url, &token).await;
                status == 503 && headers.contains_key("retry-after")
            }
        })
        .await
    );
    // The gateway's own state, not the upstream's failure.
    let (_, _, metrics) = get(&gw.admin_url("/metrics")).await;
    assert!(!metrics.contains("gateway_backend_errors_total{"), "{metrics}");
    assert!(
        gw.metric(
            r#"gateway_auth_failures_total{route="api",status="503",reason="credentials cannot be checked right now"}"#
        )
        .await
            >= 1.0
    );
}

/// Unpadded base64url, for hand-made token parts.
fn base64url(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}
