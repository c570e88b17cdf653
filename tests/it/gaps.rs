//! Behaviour the code had but no test checked: rate-limit keys by JWT claim and by route,
//! the access log dropping (and counting) lines while requests keep flowing, a route's own
//! per-try timeout, and SRV priorities (documented as not used).

use std::time::{Duration, Instant};

use serde_json::json;

use crate::auth::{SECRET, claims, mint};
use crate::support::*;

fn bearer(token: &str) -> (&'static str, String) {
    ("authorization", format!("Bearer {token}"))
}

async fn get_as(url: &str, token: &str) -> u16 {
    let (name, value) = bearer(token);
    get_with(url, &[(name, &value)]).await.0.as_u16()
}

#[tokio::test]
async fn rate_limit_keys_by_jwt_claim_and_by_route() {
    let up = TestUpstream::start("u").await;
    let gw = Gateway::start(&config(&format!(
        r#"upstreams:
  app: {{ targets: [{{ url: "{}" }}] }}
jwt_providers:
  main:
    issuer: https://idp.test
    audiences: [api]
    keys: [{{ kid: hs, alg: HS256, secret: "{SECRET}" }}]
routes:
  - name: by-org
    match: {{ prefix: /org }}
    upstream: app
    plugins:
      - jwt: {{ provider: main }}
      - rate_limit: {{ limits: [{{ limit: 2, per: 1m }}], key: [{{ claim: org }}], plans: false }}
  - name: by-route-a
    match: {{ prefix: /a }}
    upstream: app
    plugins: [{{ rate_limit: {{ limits: [{{ limit: 3, per: 1m }}], key: [route], plans: false }} }}]
  - name: by-route-b
    match: {{ prefix: /b }}
    upstream: app
    plugins: [{{ rate_limit: {{ limits: [{{ limit: 3, per: 1m }}], key: [route], plans: false }} }}]
"#,
        up.url()
    )));
    let token = |sub: &str, org: &str| {
        let spec = json!([{ "alg": "HS256", "key": SECRET, "headers": { "kid": "hs" }, "claims": claims(sub, json!({ "org": org })) }]);
        mint(spec).remove(0)
    };
    let (alice, bob, carol) = (token("alice", "acme"), token("bob", "acme"), token("carol", "globex"));
    let url = gw.url("/org/x");
    // Two users of one organisation share its budget of two; another organisation has its own.
    assert_eq!(get_as(&url, &alice).await, 200);
    assert_eq!(get_as(&url, &bob).await, 200);
    assert_eq!(get_as(&url, &alice).await, 429, "acme's budget is spent, by alice and bob together");
    assert_eq!(get_as(&url, &bob).await, 429);
    assert_eq!(get_as(&url, &carol).await, 200, "globex counts apart");
    // Per route: every client shares one budget per route, and the routes count apart.
    for i in 0..3 {
        assert_eq!(get(&gw.url("/a")).await.0, 200, "a #{i}");
    }
    assert_eq!(get(&gw.url("/a")).await.0, 429);
    let (status, headers, _) = get_with(&gw.url("/a"), &[("x-forwarded-for", "203.0.113.9")]).await;
    assert_eq!(status, 429, "another client address shares the route's budget");
    assert!(headers.contains_key("retry-after"));
    assert_eq!(get(&gw.url("/b")).await.0, 200, "route b has its own budget");
    assert_eq!(gw.metric("gateway_rate_limit_exceeded_total{route=\"by-org\"}").await, 2.0);
    assert_eq!(gw.metric("gateway_rate_limit_exceeded_total{route=\"by-route-a\"}").await, 2.0);
}

#[tokio::test]
async fn a_full_access_log_queue_drops_and_counts_lines_while_requests_flow() {
    let up = TestUpstream::start("u").await;
    let dir = tempfile::tempdir().unwrap();
    // A FIFO nobody reads: the writer thread blocks on it, so the queue fills.
    let fifo = dir.path().join("log.fifo");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    // Something must hold the FIFO open for reading or opening it for writing blocks; this
    // reader never reads.
    let _reader = std::fs::OpenOptions::new().read(true).write(true).open(&fifo).unwrap();
    let yaml = config(&format!(
        "upstreams:\n  u: {{ targets: [{{ url: \"{}\" }}] }}\nroutes:\n  - {{ name: all, match: {{ prefix: / }}, upstream: u }}\n",
        up.url()
    ))
    .replace("access_log:\n  output: ACCESS_LOG\n", &format!("access_log:\n  output: {}\n  queue_size: 16\n", fifo.display()));
    let gw = Gateway::start(&yaml);
    let started = Instant::now();
    // Far more lines than the pipe (64 KiB) and the queue (16) hold.
    let mut ok = 0;
    for _ in 0..2000 {
        if get(&gw.url("/x")).await.0 == 200 {
            ok += 1;
        }
    }
    assert_eq!(ok, 2000, "every request answered while the log is stuck");
    let dropped = gw.metric("gateway_access_log_dropped_total").await;
    assert!(dropped >= 1000.0, "lines dropped and counted: {dropped}");
    assert!(started.elapsed() < Duration::from_secs(60), "the requests never waited on the log");
}

#[tokio::test]
async fn a_routes_try_timeout_overrides_the_upstreams() {
    let up = TestUpstream::start("u").await;
    let gw = Gateway::start(&config(&format!(
        "upstreams:\n  u:\n    targets: [{{ url: \"{}\" }}]\n    timeouts: {{ try: 5s, request: 10s }}\nroutes:\n  - {{ name: quick, match: {{ prefix: /quick }}, upstream: u, try_timeout: 300ms, rewrite: {{ strip_prefix: /quick }} }}\n  - {{ name: patient, match: {{ prefix: /patient }}, upstream: u, rewrite: {{ strip_prefix: /patient }} }}\n",
        up.url()
    )));
    let t = Instant::now();
    let (status, _, body) = get(&gw.url("/quick/slow?ms=2000")).await;
    let took = t.elapsed();
    assert_eq!(status, 504, "{body}");
    assert_eq!(json(&body)["error"], "upstream timeout");
    assert!(took < Duration::from_millis(1500), "the route's 300ms try, not the upstream's 5s: {took:?}");
    let (status, _, _) = get(&gw.url("/patient/slow?ms=700")).await;
    assert_eq!(status, 200, "the upstream's own try timeout (5s) elsewhere");
}

/// A listener whose accept queue is full and never drained: further connection attempts get
/// no answer at all, so connecting times out (the kernel drops their SYNs).
fn unanswering_upstream() -> (std::net::SocketAddr, Vec<std::net::TcpStream>, socket2::Socket) {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&"127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap().into()).unwrap();
    s.listen(0).unwrap();
    let addr = s.local_addr().unwrap().as_socket().unwrap();
    // Fill the queue (a backlog of 0 holds one connection; two to be sure).
    let held: Vec<_> =
        (0..2).filter_map(|_| std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)).ok()).collect();
    (addr, held, s)
}

#[tokio::test]
async fn a_connect_timeout_is_a_504_of_its_own_kind_on_both_upstream_clients() {
    let (addr, _held, _listener) = unanswering_upstream();
    let gw = Gateway::start(&config(&format!(
        "upstreams:\n  slow:\n    targets: [{{ url: \"http://{addr}\" }}]\n    timeouts: {{ connect: 300ms, request: 5s }}\nroutes:\n  - {{ name: all, match: {{ prefix: / }}, upstream: slow }}\n"
    )));
    // Without a body: the lean HTTP/1.1 client; with one: hyper's.
    let (status, _, body) = get(&gw.url("/x")).await;
    assert_eq!((status.as_u16(), json(&body)["error"].as_str()), (504, Some("upstream connect timeout")), "{body}");
    let req =
        http::Request::post(gw.url("/x")).body(http_body_util::Full::new(bytes::Bytes::from_static(b"hello"))).unwrap();
    let (status, _, body) = send(req).await;
    assert_eq!((status.as_u16(), json(&body)["error"].as_str()), (504, Some("upstream connect timeout")), "{body}");
    let series = "gateway_backend_errors_total{upstream=\"slow\",kind=\"connect_timeout\"}";
    assert_eq!(gw.metric(series).await, 2.0);
}
