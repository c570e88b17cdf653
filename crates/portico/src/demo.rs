//! `portico demo`: built-in demo services and a gateway in front of them, on loopback,
//! with an embedded config. Needs no files and no other software.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use crate::body::Body;

/// The demo's config. `${NAME}` placeholders are filled with the demo services' ports.
pub const DEMO_CONFIG: &str = r#"version: 1
listeners:
  - name: public
    bind: "${GATEWAY_ADDR}"
admin:
  bind: "${ADMIN_ADDR}"
access_log:
  output: stderr
plugins:
  - security_headers: {}
jwt_providers:
  demo:
    issuer: https://demo.portico.local
    audiences: [demo-api]
    # A secret made at start; the demo prints a token signed with it.
    keys: [{ kid: demo, alg: HS256, secret: "${JWT_SECRET}" }]
consumers:
  - id: partner-app
    roles: [partner]
    plan: pro
    # SHA-256 of the demo key printed at start; the key itself is not in the config.
    api_keys: [{ sha256: "${PARTNER_KEY_SHA256}", name: demo }]
upstreams:
  users:
    targets: [{ url: "http://${USERS}" }]
  orders:
    targets: [{ url: "http://${ORDERS}" }]
  products:
    # Two instances, 3:1: watch the "instance" field alternate a, a, b, a, ...
    targets: [{ url: "http://${PRODUCTS_A}", weight: 3 }, { url: "http://${PRODUCTS_B}", weight: 1 }]
  recommendations:
    targets: [{ url: "http://${RECOMMENDATIONS}" }]
    timeouts: { request: 2s }
routes:
  - name: users
    match: { path: "/api/users/{id}", methods: [GET] }
    upstream: users
    rewrite: { path: "/users/{id}" }
  - name: orders
    match: { prefix: /api/orders, methods: [GET, POST] }
    upstream: orders
    rewrite: { strip_prefix: /api }
  - name: products
    match: { prefix: /api/products }
    upstream: products
    rewrite: { strip_prefix: /api }
  - name: catalog
    # The product list from a cache: one entry for everyone, fresh for 30s.
    match: { path: /api/catalog, methods: [GET] }
    upstream: products
    rewrite: { path: /products }
    plugins: [{ cache: { shared: true, ttl: 30s } }]
  - name: recommendations
    match: { path: "/api/recommendations/{user}", methods: [GET] }
    upstream: recommendations
    rewrite: { path: "/recommendations/{user}" }
  - name: account
    match: { path: /api/account, methods: [GET] }
    upstream: users
    rewrite: { path: /account }
    plugins: [{ jwt: { provider: demo } }]
  - name: admin
    match: { prefix: /api/admin }
    upstream: users
    plugins: [{ jwt: { provider: demo } }, { authorize: { roles: [admin] } }]
  - name: home
    # One request, three services: the user and the recommendations together, the
    # recommended products once those are in; only the fields the screen shows.
    match: { path: "/api/home/{user}", methods: [GET] }
    aggregate:
      deadline: 2s
      calls:
        - { name: user, upstream: users, path: "/users/{param.user}", shape: { extract: data, allow: [name, plan] } }
        - { name: recommended, upstream: recommendations, path: "/recommendations/{param.user}", shape: { extract: data.items } }
        - name: top_product
          upstream: products
          path: "/products/{recommended.0}"
          required: false
          shape: { extract: data }
        - { name: orders, upstream: orders, path: /orders, query: { user: "{param.user}" }, required: false, fallback: [], shape: { extract: data } }
  - name: partner
    match: { prefix: /api/partner/products, methods: [GET] }
    upstream: products
    rewrite: { strip_prefix: /api/partner }
    plugins: [{ api_key: { header: x-api-key } }]
"#;

/// The demo's API key (not a secret: the demo prints it).
pub const DEMO_API_KEY: &str = "demo-partner-key-0123456789";

/// One demo service: answers JSON that says who it is and what it received.
async fn demo_service(name: &'static str, instance: &'static str, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let header = |n: &str| req.headers().get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let seen = serde_json::json!({
        "requestId": header("x-request-id"),
        "forwardedFor": header("x-forwarded-for"),
        "host": header("host"),
        "userId": header("x-user-id"),
        "roles": header("x-user-role"),
    });
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (status, body) = match (name, segments.as_slice()) {
        (_, ["health"]) => (StatusCode::OK, serde_json::json!({ "status": "ok" })),
        ("users", ["account"]) => match header("x-user-id").as_deref() {
            Some("1") => (StatusCode::OK, serde_json::json!({ "id": "1", "name": "Ada Lovelace", "plan": "pro" })),
            _ => (StatusCode::NOT_FOUND, serde_json::json!({ "error": "no such user" })),
        },
        ("users", ["users", id]) => match *id {
            "1" => (StatusCode::OK, serde_json::json!({ "id": "1", "name": "Ada Lovelace", "plan": "pro" })),
            "2" => (StatusCode::OK, serde_json::json!({ "id": "2", "name": "Alan Turing", "plan": "free" })),
            _ => (StatusCode::NOT_FOUND, serde_json::json!({ "error": "no such user" })),
        },
        ("orders", ["orders", ..]) => (
            StatusCode::OK,
            serde_json::json!([{ "id": "o-100", "user": "1", "total": 42.5 }, { "id": "o-101", "user": "1", "total": 7.0 }]),
        ),
        ("products", ["products"]) => {
            (StatusCode::OK, serde_json::json!([{ "id": "p-1", "name": "Keyboard" }, { "id": "p-2", "name": "Mouse" }]))
        }
        ("products", ["products", id]) => (StatusCode::OK, serde_json::json!({ "id": id, "name": "Keyboard" })),
        ("recommendations", ["recommendations", user]) => {
            (StatusCode::OK, serde_json::json!({ "user": user, "items": ["p-2", "p-1"] }))
        }
        _ => (StatusCode::NOT_FOUND, serde_json::json!({ "error": "not found" })),
    };
    let body = serde_json::json!({ "service": name, "instance": instance, "path": path, "data": body, "seen": seen });
    let mut res = Response::new(Body::full(body.to_string()));
    *res.status_mut() = status;
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res
}

/// Starts a demo service on an OS-chosen loopback port.
pub async fn start_service(name: &'static str, instance: &'static str) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc =
                    service_fn(move |req| async move { Ok::<_, Infallible>(demo_service(name, instance, req).await) });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// Starts every demo service and returns the placeholder values for [`DEMO_CONFIG`].
pub async fn start_services() -> std::io::Result<HashMap<&'static str, String>> {
    let mut vars = HashMap::new();
    for (key, name, instance) in [
        ("USERS", "users", "a"),
        ("ORDERS", "orders", "a"),
        ("PRODUCTS_A", "products", "a"),
        ("PRODUCTS_B", "products", "b"),
        ("RECOMMENDATIONS", "recommendations", "a"),
    ] {
        vars.insert(key, start_service(name, instance).await?.to_string());
    }
    let secret = crate::identity::hex(&crate::identity::sha256(&fastrand::u128(..).to_le_bytes()));
    vars.insert("JWT_SECRET", secret);
    vars.insert("PARTNER_KEY_SHA256", crate::identity::hex(&crate::identity::sha256(DEMO_API_KEY.as_bytes())));
    Ok(vars)
}

/// A demo token for user `1` (Ada), valid for a day, signed with the demo's secret.
pub fn demo_token(vars: &HashMap<&'static str, String>) -> String {
    let secret = vars.get("JWT_SECRET").map_or("", String::as_str);
    let now = jsonwebtoken::get_current_timestamp();
    let claims = serde_json::json!({
        "iss": "https://demo.portico.local", "aud": "demo-api", "sub": "1",
        "roles": ["customer"], "iat": now, "exp": now + 86_400,
    });
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some("demo".into());
    jsonwebtoken::EncodingKey::from_secret(secret.as_bytes())
        .and_then(|key| jsonwebtoken::encode(&header, &claims, &key))
        .unwrap_or_default()
}

/// The `curl` lines printed by `portico demo`.
pub fn instructions(gateway: SocketAddr, admin: Option<SocketAddr>, token: &str) -> String {
    let g = format!("http://{gateway}");
    let key = DEMO_API_KEY;
    let mut s = format!(
        "Portico demo: gateway on {g}\n\nTry:\n\
         \x20 curl -s {g}/api/users/1                      # route with a captured id, rewritten to /users/1\n\
         \x20 curl -s {g}/api/orders?user=1                # prefix route, /api stripped\n\
         \x20 for i in 1 2 3 4; do curl -s {g}/api/products | grep -o '\"instance\":\"[ab]\"'; done   # weighted 3:1\n\
         \x20 curl -s -H 'X-Request-ID: my-trace-1' -i {g}/api/users/2   # request ID kept and echoed\n\
         \x20 curl -s -i -X DELETE {g}/api/users/1         # 405 with Allow\n\
         \x20 curl -s -i {g}/nope                          # 404, JSON error with requestId\n\
         \x20 curl -s --http2-prior-knowledge {g}/api/users/1   # HTTP/2 cleartext\n\
         \x20 curl -s {g}/api/home/1                       # one answer from four services, shaped\n\
         \x20 for i in 1 2; do curl -s -o /dev/null -D - {g}/api/catalog | grep -i cache-status; done   # a miss, then a hit\n\n\
         With a demo JWT (HS256, user 1, role customer, valid for a day):\n\
         \x20 TOKEN={token}\n\
         \x20 curl -s -H \"Authorization: Bearer $TOKEN\" {g}/api/account   # the service sees X-User-ID: 1\n\
         \x20 curl -s -i {g}/api/account                   # 401 with WWW-Authenticate\n\
         \x20 curl -s -i -H \"Authorization: Bearer $TOKEN\" {g}/api/admin/stats   # 403: not an admin\n\
         \x20 curl -s -H 'X-User-ID: admin' {g}/api/users/1   # a forged identity header never reaches the service\n\n\
         With an API key (consumer partner-app):\n\
         \x20 curl -s -H 'x-api-key: {key}' {g}/api/partner/products\n"
    );
    if let Some(a) = admin {
        s.push_str(&format!(
            "\nAdmin:\n\x20 curl -s http://{a}/metrics | grep gateway_requests_total\n\x20 curl -s http://{a}/ready\n"
        ));
    }
    s.push_str("\nAccess log lines go to stderr. Ctrl-C stops the demo.\n");
    s
}

/// The demo config with the services' and gateway's addresses filled in.
pub fn config(vars: &HashMap<&'static str, String>) -> Result<portico_config::Config, portico_config::ConfigErrors> {
    let vars = Arc::new(vars.clone());
    portico_config::parse(DEMO_CONFIG, move |k| vars.get(k).cloned()).map(|p| p.config)
}
