//! Routing and proxying against real upstream servers.

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::Request;
use http_body_util::Full;

use crate::support::*;

fn two_upstreams(a: &TestUpstream, b: &TestUpstream) -> String {
    config(&format!(
        r#"upstreams:
  users: {{ targets: [{{ url: "{}" }}] }}
  orders: {{ targets: [{{ url: "{}" }}] }}
routes:
  - name: user
    match: {{ path: "/api/users/{{id}}", methods: [GET] }}
    upstream: users
    rewrite: {{ path: "/v2/users/{{id}}" }}
  - name: orders
    match: {{ prefix: /api/orders }}
    upstream: orders
    rewrite: {{ strip_prefix: /api }}
  - name: orders-beta
    match: {{ prefix: /api/orders, headers: [{{ name: x-beta, value: "1" }}] }}
    upstream: users
  - name: host
    match: {{ hosts: ["*.example.com"], prefix: / }}
    upstream: users
    preserve_host: true
"#,
        a.url(),
        b.url()
    ))
}

#[tokio::test]
async fn routes_rewrite_and_forward_headers() {
    let users = TestUpstream::start("users").await;
    let orders = TestUpstream::start("orders").await;
    let gw = Gateway::start(&two_upstreams(&users, &orders));

    let (status, headers, body) = get(&gw.url("/api/users/42?x=1")).await;
    assert_eq!(status, 200, "{body}");
    let v = json(&body);
    assert_eq!(v["upstream"], "users");
    assert_eq!(v["path"], "/v2/users/42");
    assert_eq!(v["query"], "x=1");
    assert_eq!(v["headers"]["host"], users.addr.to_string(), "Host is the target's by default");
    assert_eq!(v["headers"]["x-forwarded-for"], "127.0.0.1");
    assert_eq!(v["headers"]["x-forwarded-proto"], "http");
    assert_eq!(v["headers"]["x-forwarded-host"], gw.addr().to_string());
    assert!(v["headers"]["forwarded"].as_str().unwrap().starts_with("for=127.0.0.1;proto=http"));
    let rid = headers["x-request-id"].to_str().unwrap();
    assert_eq!(rid.len(), 32);
    assert_eq!(v["headers"]["x-request-id"], rid, "the same ID goes upstream and back");

    let (_, _, body) = get(&gw.url("/api/orders/7")).await;
    let v = json(&body);
    assert_eq!((v["upstream"].as_str(), v["path"].as_str()), (Some("orders"), Some("/orders/7")));

    // A header condition wins over the same prefix without one.
    let req = Request::get(gw.url("/api/orders/7")).header("x-beta", "1").body(Full::new(Bytes::new())).unwrap();
    let (_, _, body) = send(req).await;
    assert_eq!(json(&body)["upstream"], "users");

    // Wildcard host with preserve_host.
    let req = Request::get(gw.url("/x")).header("host", "shop.example.com").body(Full::new(Bytes::new())).unwrap();
    let (_, _, body) = send(req).await;
    let v = json(&body);
    assert_eq!(v["headers"]["host"], "shop.example.com");
}

#[tokio::test]
async fn forged_forwarding_headers_and_hop_by_hop_headers_are_not_passed_on() {
    let users = TestUpstream::start("users").await;
    let orders = TestUpstream::start("orders").await;
    let gw = Gateway::start(&two_upstreams(&users, &orders));
    let req = Request::get(gw.url("/api/orders"))
        .header("x-forwarded-for", "6.6.6.6")
        .header("forwarded", "for=6.6.6.6")
        .header("x-real-ip", "6.6.6.6")
        .header("connection", "x-hop, keep-alive")
        .header("x-hop", "secret")
        .header("keep-alive", "timeout=5")
        .header("te", "gzip")
        .header("x-request-id", "client-id-1")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (_, headers, body) = send(req).await;
    let v = json(&body);
    let h = &v["headers"];
    assert_eq!(h["x-forwarded-for"], "127.0.0.1", "untrusted peer: XFF replaced");
    assert!(h["forwarded"].as_str().unwrap().starts_with("for=127.0.0.1"));
    assert!(h.get("x-real-ip").is_none());
    assert!(h.get("x-hop").is_none(), "headers named in Connection are hop-by-hop");
    assert!(h.get("keep-alive").is_none());
    assert!(h.get("te").is_none());
    assert_eq!(h["x-request-id"], "client-id-1", "a well-formed incoming ID is kept");
    assert_eq!(headers["x-request-id"], "client-id-1");
}

#[tokio::test]
async fn trusted_proxies_pass_the_client_address_through() {
    let up = TestUpstream::start("u").await;
    let gw = Gateway::start(&config(&format!(
        "client_ip: {{ trusted_proxies: [127.0.0.0/8] }}\nupstreams:\n  u: {{ targets: [{{ url: \"{}\" }}] }}\nroutes:\n  - {{ name: r, match: {{ prefix: / }}, upstream: u }}\n",
        up.url()
    )));
    let req =
        Request::get(gw.url("/")).header("x-forwarded-for", "198.51.100.7").body(Full::new(Bytes::new())).unwrap();
    let (_, _, body) = send(req).await;
    assert_eq!(json(&body)["headers"]["x-forwarded-for"], "198.51.100.7, 127.0.0.1");
    let logged = Gateway::eventually(std::time::Duration::from_secs(5), || async {
        gw.access_log().iter().any(|l| l["clientIp"] == "198.51.100.7")
    })
    .await;
    assert!(logged, "{:?}", gw.access_log());
}

#[tokio::test]
async fn weighted_round_robin_respects_weights() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let c = TestUpstream::start("c").await;
    let gw = Gateway::start(&config(&format!(
        "upstreams:\n  u:\n    targets: [{{ url: \"{}\", weight: 5 }}, {{ url: \"{}\", weight: 3 }}, {{ url: \"{}\", weight: 2 }}]\nroutes:\n  - {{ name: r, match: {{ prefix: / }}, upstream: u }}\n",
        a.url(),
        b.url(),
        c.url()
    )));
    for _ in 0..1000 {
        let (s, _, _) = get(&gw.url("/")).await;
        assert_eq!(s, 200);
    }
    // Smooth WRR is exact over whole periods: 1000 requests = 100 periods of 10.
    assert_eq!((a.hits(), b.hits(), c.hits()), (500, 300, 200));
}

#[tokio::test]
async fn http2_cleartext_clients_are_served() {
    let up = TestUpstream::start("u").await;
    let gw = Gateway::start(&config(&format!(
        "upstreams:\n  u: {{ targets: [{{ url: \"{}\" }}] }}\nroutes:\n  - {{ name: r, match: {{ prefix: / }}, upstream: u }}\n",
        up.url()
    )));
    // curl, speaking HTTP/2 with prior knowledge.
    let url = gw.url("/hello");
    let (ok, out) = curl(&["--http2-prior-knowledge", "-w", "\n%{http_version}", &url]).await;
    assert!(ok, "curl failed: {out}");
    let (body, version) = out.rsplit_once('\n').unwrap();
    assert_eq!(version, "2");
    assert_eq!(json(body)["path"], "/hello");
    assert_eq!(json(body)["version"], "HTTP/1.1", "upstream is HTTP/1.1");

    // h2load: many streams over a few connections, all must succeed.
    let args = ["-n", "2000", "-c", "4", "-m", "16", &url].map(String::from).to_vec();
    let (_, text) = run_tool("h2load", &[], args).await;
    assert!(text.contains("2000 succeeded, 0 failed, 0 errored"), "{text}");
    assert!(text.contains("status codes: 2000 2xx"), "{text}");
}

#[tokio::test]
async fn http2_upstreams_are_spoken_to_in_http2() {
    let up = TestUpstream::start("u").await;
    let gw = Gateway::start(&config(&format!(
        "upstreams:\n  u: {{ targets: [{{ url: \"{}\" }}], protocol: http2 }}\nroutes:\n  - {{ name: r, match: {{ prefix: / }}, upstream: u }}\n",
        up.url()
    )));
    for _ in 0..3 {
        let (s, _, body) = get(&gw.url("/x")).await;
        assert_eq!(s, 200);
        assert_eq!(json(&body)["version"], "HTTP/2.0");
    }
}

#[tokio::test]
async fn websocket_frames_are_proxied() {
    let up = TestUpstream::start("u").await;
    let gw = Gateway::start(&config(&format!(
        "upstreams:\n  u: {{ targets: [{{ url: \"{}\" }}] }}\nroutes:\n  - {{ name: ws, match: {{ path: /ws }}, upstream: u }}\n",
        up.url()
    )));
    let (mut ws, res) = tokio_tungstenite::connect_async(format!("ws://{}/ws", gw.addr())).await.unwrap();
    assert_eq!(res.status(), 101);
    for i in 0..20 {
        let msg = format!("frame {i}");
        ws.send(tokio_tungstenite::tungstenite::Message::text(msg.clone())).await.unwrap();
        let echo = ws.next().await.unwrap().unwrap();
        assert_eq!(echo.into_text().unwrap().as_str(), msg);
    }
    let big = vec![7u8; 200_000];
    ws.send(tokio_tungstenite::tungstenite::Message::binary(big.clone())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap().into_data().as_ref(), &big[..]);
    ws.close(None).await.unwrap();
}
