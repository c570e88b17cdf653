//! API keys, consumers, `authorize`, the IP filter and security headers.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;

use crate::auth::{SECRET, claims, mint};
use crate::support::*;

fn consumers_yaml(ci_keys: &[&str]) -> String {
    let keys: Vec<String> = ci_keys.iter().map(|k| format!("{{ sha256: {}, name: key-{k} }}", hash_key(k))).collect();
    format!(
        r#"consumers:
  - id: ci-bot
    roles: [deployer]
    groups: [automation]
    tenant: acme
    plan: pro
    api_keys: [{}]
  - id: intern
    roles: [reader]
    api_keys: [{{ sha256: {} }}]
  - id: banned
    roles: [deployer]
    api_keys: [{{ sha256: {} }}]
"#,
        keys.join(", "),
        hash_key("intern-key-0000"),
        hash_key("banned-key-0000")
    )
}

fn api_config(up: &TestUpstream, ci_keys: &[&str]) -> String {
    config(&format!(
        r#"upstreams:
  app: {{ targets: [{{ url: {} }}] }}
{}jwt_providers:
  main:
    issuer: https://idp.test
    audiences: [api]
    consumer_claim: sub
    keys: [{{ alg: HS256, secret: "{SECRET}" }}]
routes:
  - name: deploy
    match: {{ prefix: /deploy }}
    upstream: app
    plugins:
      - api_key: {{ header: x-api-key, query: api_key }}
      - authorize: {{ roles: [deployer], deny: {{ consumers: [banned] }} }}
  - name: reports
    match: {{ prefix: /reports }}
    upstream: app
    plugins:
      - api_key: {{}}
      - jwt: {{ provider: main }}
      - authorize: {{ groups: [automation], consumers: [intern], scopes: [] }}
  - name: orders
    match: {{ prefix: /orders }}
    upstream: app
    plugins:
      - jwt: {{ provider: main }}
      - authorize: {{ scopes: ["orders:read", "orders:write"] }}
  - name: catalog
    match: {{ prefix: /catalog }}
    upstream: app
    plugins:
      - jwt: {{ provider: main }}
      - authorize: {{ anonymous: true }}
"#,
        up.url(),
        consumers_yaml(ci_keys)
    ))
}

#[tokio::test]
async fn api_keys_identify_consumers_and_are_never_forwarded() {
    let up = TestUpstream::start("app").await;
    let gw = Gateway::start(&api_config(&up, &["ci-key-0001", "ci-key-0002"]));
    let (status, _, body) = get_with(&gw.url("/deploy/1"), &[("x-api-key", "ci-key-0001")]).await;
    assert_eq!(status, 200, "{body}");
    let seen = up.last_headers();
    assert_eq!(seen["x-user-id"], "ci-bot");
    assert_eq!(seen["x-user-role"], "deployer");
    assert_eq!(seen["x-tenant-id"], "acme");
    assert_eq!(seen["x-consumer-plan"], "pro");
    assert!(seen.get("x-api-key").is_none(), "the key reached the upstream");
    // The second key of the same consumer, and the query parameter where configured.
    assert_eq!(get_with(&gw.url("/deploy/2"), &[("x-api-key", "ci-key-0002")]).await.0, 200);
    let (status, _, body) = get(&gw.url("/deploy/3?a=1&api_key=ci-key-0001&b=2")).await;
    assert_eq!(status, 200);
    assert_eq!(json(&body)["query"], "a=1&b=2", "the key went upstream in the query");
    // Unknown, empty and huge keys.
    for key in ["ci-key-0003", "CI-KEY-0001", " ", &"k".repeat(2000)] {
        let (status, headers, body) = get_with(&gw.url("/deploy/4"), &[("x-api-key", key)]).await;
        assert_eq!(status, 401, "{key:?}: {body}");
        assert_eq!(headers["www-authenticate"], r#"ApiKey realm="portico""#);
        assert_eq!(json(&body)["error"], "invalid API key");
    }
    let (status, headers, _) = get(&gw.url("/deploy/5")).await;
    assert_eq!((status.as_u16(), headers["www-authenticate"].to_str().unwrap()), (401, r#"ApiKey realm="portico""#));
    // The deny list wins over a matching role.
    let (status, _, body) = get_with(&gw.url("/deploy/6"), &[("x-api-key", "banned-key-0000")]).await;
    assert_eq!((status.as_u16(), json(&body)["error"].as_str().unwrap()), (403, "caller is denied on this route"));
    let (status, _, body) = get_with(&gw.url("/deploy/7"), &[("x-api-key", "intern-key-0000")]).await;
    assert_eq!((status.as_u16(), json(&body)["error"].as_str().unwrap()), (403, "caller is not allowed on this route"));
    assert!(
        Gateway::eventually(std::time::Duration::from_secs(3), || async {
            gw.access_log().iter().any(|l| l["userId"] == "ci-bot" && l["route"] == "deploy")
        })
        .await
    );
    // The key itself is never written to a log.
    assert!(!gw.stderr_text().contains("ci-key-0003"));
    assert!(gw.access_log().iter().all(|l| !l.to_string().contains("ci-key-0001")), "a key in the access log");

    // A reload revokes a key and adds another.
    gw.write_config(&api_config(&up, &["ci-key-0002", "ci-key-0009"]));
    assert!(
        Gateway::eventually(std::time::Duration::from_secs(10), || {
            let url = gw.url("/deploy/8");
            async move { get_with(&url, &[("x-api-key", "ci-key-0001")]).await.0 == 401 }
        })
        .await,
        "a revoked key still works"
    );
    assert_eq!(get_with(&gw.url("/deploy/9"), &[("x-api-key", "ci-key-0009")]).await.0, 200);
    assert_eq!(get_with(&gw.url("/deploy/9"), &[("x-api-key", "ci-key-0002")]).await.0, 200);
}

#[tokio::test]
async fn authorize_by_group_consumer_scope_and_anonymous() {
    let up = TestUpstream::start("app").await;
    let gw = Gateway::start(&api_config(&up, &["ci-key-0001"]));
    let tok =
        |sub: &str, extra: serde_json::Value| json!({ "alg": "HS256", "key": SECRET, "claims": claims(sub, extra) });
    let tokens = mint(json!([
        tok("dana", json!({ "groups": ["automation"] })),
        tok("erin", json!({ "groups": ["sales"] })),
        tok("intern", json!({})),
        tok("frank", json!({ "scope": "orders:read orders:write profile" })),
        tok("gina", json!({ "scp": ["orders:read"] })),
    ]));
    let bearer = |t: &str| format!("Bearer {t}");
    let call = |path: &str, t: &str| {
        let (url, auth) = (gw.url(path), bearer(t));
        async move { get_with(&url, &[("authorization", &auth)]).await.0.as_u16() }
    };
    // Groups from the token or the consumer; consumers by ID (a token whose subject is a
    // consumer gets that consumer's settings).
    assert_eq!(call("/reports/1", &tokens[0]).await, 200);
    assert_eq!(call("/reports/2", &tokens[1]).await, 403);
    assert_eq!(call("/reports/3", &tokens[2]).await, 200);
    assert_eq!(get_with(&gw.url("/reports/4"), &[("x-api-key", "ci-key-0001")]).await.0, 200);
    assert_eq!(get_with(&gw.url("/reports/5"), &[("x-api-key", "intern-key-0000")]).await.0, 200);
    assert_eq!(get_with(&gw.url("/reports/6"), &[("x-api-key", "banned-key-0000")]).await.0, 403);
    // Every listed scope is required (`scope` string or `scp` array).
    assert_eq!(call("/orders/1", &tokens[3]).await, 200);
    let (status, _, body) = get_with(&gw.url("/orders/2"), &[("authorization", &bearer(&tokens[4]))]).await;
    assert_eq!((status.as_u16(), json(&body)["error"].as_str().unwrap()), (403, "token lacks a required scope"));
    // Anonymous where the route says so; a bad token is still refused there.
    assert_eq!(get(&gw.url("/catalog/1")).await.0, 200);
    assert!(up.last_headers().get("x-user-id").is_none());
    assert_eq!(call("/catalog/2", &tokens[1]).await, 200);
    assert_eq!(up.last_headers()["x-user-id"], "erin");
    assert_eq!(call("/catalog/3", "not-a-token").await, 401);
    assert_eq!(get(&gw.url("/orders/3")).await.0, 401);
}

/// An upstream that answers with `Server` and `X-Powered-By`, like many frameworks.
async fn chatty_upstream() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(|_req| async {
                    let mut res = http::Response::new(Full::new(Bytes::from_static(b"{}")));
                    let h = res.headers_mut();
                    h.insert("server", "Apache/2.4.1 (Unix)".parse().unwrap());
                    h.insert("x-powered-by", "PHP/5.6.40".parse().unwrap());
                    h.insert("x-frame-options", "SAMEORIGIN".parse().unwrap());
                    Ok::<_, Infallible>(res)
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn security_headers_and_the_ip_filter() {
    let addr = chatty_upstream().await;
    let gw = Gateway::start(&config(&format!(
        r#"client_ip: {{ trusted_proxies: ["127.0.0.1/32"] }}
plugins:
  - security_headers: {{ content_security_policy: "default-src 'none'" }}
upstreams:
  app: {{ targets: [{{ url: "http://{addr}" }}] }}
routes:
  - name: public
    match: {{ prefix: /public }}
    upstream: app
  - name: internal
    match: {{ prefix: /internal }}
    upstream: app
    plugins:
      - ip_filter: {{ allow: ["10.0.0.0/8", "2001:db8::/32"], deny: ["10.66.0.0/16"] }}
      - security_headers: {{ frame_options: "", remove: [x-powered-by] }}
"#
    )));
    let (status, h, _) = get(&gw.url("/public/x")).await;
    assert_eq!(status, 200);
    assert!(h.get("server").is_none() && h.get("x-powered-by").is_none(), "{h:?}");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["x-frame-options"], "SAMEORIGIN", "the upstream's own value is kept");
    assert_eq!(h["referrer-policy"], "no-referrer");
    assert_eq!(h["content-security-policy"], "default-src 'none'");
    assert!(h.get("strict-transport-security").is_none(), "no HSTS over plain HTTP");
    // Gateway-made answers get them too, even for requests that match no route.
    let (status, h, _) = get(&gw.url("/nowhere")).await;
    assert_eq!((status.as_u16(), h["x-content-type-options"].to_str().unwrap()), (404, "nosniff"));

    // The client address as resolved through the trusted proxy.
    let via = |ip: &'static str| {
        let url = gw.url("/internal/x");
        async move { get_with(&url, &[("x-forwarded-for", ip)]).await }
    };
    let (status, h, _) = via("10.1.2.3").await;
    assert_eq!(status, 200);
    // The route's security_headers replaced the global one: Server stays, no CSP.
    assert_eq!(h["server"], "Apache/2.4.1 (Unix)");
    assert!(h.get("x-powered-by").is_none() && h.get("content-security-policy").is_none());
    assert_eq!(via("2001:db8::7").await.0, 200);
    let (status, _, body) = via("10.66.1.1").await;
    assert_eq!((status.as_u16(), json(&body)["error"].as_str().unwrap()), (403, "client address not allowed"));
    assert_eq!(via("192.0.2.1").await.0, 403);
    assert_eq!(get(&gw.url("/internal/x")).await.0, 403, "127.0.0.1 itself is not allowed");
    assert!(
        Gateway::eventually(std::time::Duration::from_secs(3), || async {
            gw.stderr_text()
                .lines()
                .any(|l| l.contains(r#""clientIp":"10.66.1.1""#) && l.contains("client address not allowed"))
        })
        .await
    );
}

#[test]
fn plugin_config_errors_name_their_field() {
    let yaml = r#"version: 1
listeners: [{ name: public, bind: 127.0.0.1:0 }]
upstreams: { app: { targets: [{ url: http://127.0.0.1:1 }] } }
jwt_providers:
  weak:
    issuer: https://idp.test
    audiences: []
    keys: [{ alg: HS256, secret: short }, { alg: RS256, secret: "0123456789abcdef0123456789abcdef" }]
    jwks: { url: "http://idp.example.com/jwks" }
consumers:
  - { id: a, api_keys: [{ sha256: nothex }] }
  - { id: a }
routes:
  - name: r
    match: { prefix: / }
    upstream: app
    plugins:
      - jwt: { provider: missing }
      - cors: { origins: ["*"], credentials: true }
      - authorize: { tenant: { param: tenant } }
      - ip_filter: {}
"#;
    let err = validation_errors(yaml);
    for want in [
        "jwt_providers.weak.audiences: list at least one audience",
        "jwt_providers.weak.keys[0].secret: must be at least 32 bytes",
        "jwt_providers.weak.keys[1].secret: RS256 needs a public key, not a secret",
        "jwt_providers.weak.jwks.url: use https://",
        "consumers[0].api_keys[0].sha256: must be 64 hex digits",
        "consumers[1].id: duplicate consumer id",
        "routes[0].plugins[0].jwt.provider: unknown jwt provider \"missing\"",
        "routes[0].plugins[1].cors.origins[0]: \"*\" cannot be used with credentials",
        "routes[0].plugins[2].authorize.tenant.param: the route's path does not capture {tenant}",
        "routes[0].plugins[3].ip_filter: give allow or deny networks",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
}

#[tokio::test]
async fn the_admin_token_guards_everything_but_health_and_ready() {
    let up = TestUpstream::start("app").await;
    let yaml = format!(
        "version: 1\nlisteners:\n  - name: public\n    bind: 127.0.0.1:0\nadmin:\n  bind: 127.0.0.1:0\n  token: \"${{ADMIN_TOKEN}}\"\naccess_log:\n  output: ACCESS_LOG\nupstreams:\n  app: {{ targets: [{{ url: {} }}] }}\nroutes:\n  - {{ name: all, match: {{ prefix: / }}, upstream: app }}\n",
        up.url()
    );
    let gw = Gateway::start_with_env(&yaml, &[("ADMIN_TOKEN", "s3cret-admin-token-0001")]);
    for path in ["/health", "/ready"] {
        assert_eq!(get(&gw.admin_url(path)).await.0, 200, "{path}");
    }
    for path in ["/metrics", "/upstreams"] {
        let (s, h, _) = get(&gw.admin_url(path)).await;
        assert_eq!((s.as_u16(), h["www-authenticate"].to_str().unwrap()), (401, r#"Bearer realm="portico-admin""#));
        let wrong = get_with(&gw.admin_url(path), &[("authorization", "Bearer s3cret-admin-token-0002")]).await;
        assert_eq!(wrong.0, 401);
        let right = get_with(&gw.admin_url(path), &[("authorization", "Bearer s3cret-admin-token-0001")]).await;
        assert_eq!(right.0, 200, "{path}");
    }
    let req = http::Request::post(gw.admin_url("/revocations")).body(Full::new(Bytes::from_static(b"{}"))).unwrap();
    assert_eq!(send(req).await.0, 401, "revocations need the token");
}
