//! The error contract: every gateway-made error is JSON with the right status.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

/// Sends raw bytes and returns what came back before the server closed or 5 s passed.
pub async fn raw(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn assert_json_error(status: StatusCode, headers: &http::HeaderMap, body: &str, want: u16) {
    assert_eq!(status.as_u16(), want, "{body}");
    assert_eq!(headers["content-type"], "application/json");
    let v = json(body);
    assert_eq!(v["status"], want);
    assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()));
    assert_eq!(v["requestId"], headers["x-request-id"].to_str().unwrap());
    assert!(!body.contains("127.0.0.1"), "internal addresses must not leak: {body}");
}

/// An upstream that answers garbage to every connection.
async fn garbage_upstream() -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(b"THIS IS NOT HTTP\r\n\r\n").await;
            });
        }
    });
    format!("http://{addr}")
}

/// An upstream that accepts and closes at once (a reset from the gateway's view).
async fn closing_upstream() -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            drop(s);
        }
    });
    format!("http://{addr}")
}

/// An address where nothing listens.
async fn refused_upstream() -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}")
}

#[tokio::test]
async fn every_contract_status_is_json() {
    let up = TestUpstream::start("ok").await;
    let garbage = garbage_upstream().await;
    let closing = closing_upstream().await;
    let refused = refused_upstream().await;
    let gw = Gateway::start(&config(&format!(
        r#"upstreams:
  ok: {{ targets: [{{ url: "{ok}" }}], timeouts: {{ request: 2s }} }}
  garbage: {{ targets: [{{ url: "{garbage}" }}] }}
  closing: {{ targets: [{{ url: "{closing}" }}] }}
  refused: {{ targets: [{{ url: "{refused}" }}] }}
  empty: {{ targets: [] }}
  slow: {{ targets: [{{ url: "{ok}" }}], timeouts: {{ request: 300ms }} }}
routes:
  - {{ name: ok, match: {{ prefix: /ok, methods: [GET, PUT] }}, upstream: ok }}
  - {{ name: garbage, match: {{ prefix: /garbage }}, upstream: garbage }}
  - {{ name: closing, match: {{ prefix: /closing }}, upstream: closing }}
  - {{ name: refused, match: {{ prefix: /refused }}, upstream: refused }}
  - {{ name: empty, match: {{ prefix: /empty }}, upstream: empty }}
  - {{ name: slow-upstream, match: {{ prefix: /slow }}, upstream: slow }}
  - {{ name: slow-route, match: {{ prefix: /route-timeout }}, upstream: ok, timeout: 200ms,
       rewrite: {{ strip_prefix: /route-timeout }} }}
"#,
        ok = up.url()
    )));

    let (s, h, b) = get(&gw.url("/nothing-here")).await;
    assert_json_error(s, &h, &b, 404);

    let req = Request::delete(gw.url("/ok/1")).body(Full::new(Bytes::new())).unwrap();
    let (s, h, b) = send(req).await;
    assert_json_error(s, &h, &b, 405);
    assert_eq!(h["allow"], "GET, PUT");

    for (path, want) in [("/garbage", 502), ("/closing", 502), ("/refused", 502), ("/empty", 503)] {
        let (s, h, b) = get(&gw.url(path)).await;
        assert_json_error(s, &h, &b, want);
        assert!(h.contains_key("retry-after"), "{path}");
    }

    let start = std::time::Instant::now();
    let (s, h, b) = get(&gw.url("/slow?ms=3000")).await;
    assert_json_error(s, &h, &b, 504);
    assert!(start.elapsed() < Duration::from_millis(2500), "the upstream timeout answers before the upstream does");
    let (s, h, b) = get(&gw.url("/route-timeout/slow?ms=3000")).await;
    assert_json_error(s, &h, &b, 504);
    assert_eq!(json(&b)["error"], "upstream timeout");

    // Error responses are counted per route and kind.
    assert!(gw.metric("gateway_backend_errors_total{upstream=\"refused\",kind=\"connect\"}").await >= 1.0);
    assert!(gw.metric("gateway_backend_errors_total{upstream=\"garbage\",kind=\"bad_response\"}").await >= 1.0);
    assert!(gw.metric("gateway_backend_errors_total{upstream=\"slow\",kind=\"timeout\"}").await >= 1.0);
    assert!(gw.metric("gateway_requests_total{route=\"empty\",method=\"GET\",status=\"503\"}").await >= 1.0);

    // 400: a path that would escape its prefix upstream.
    let out = errors_raw(&gw, b"GET /ok/../admin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(out.contains("\"status\":400"), "{out}");
    // 400: malformed Content-Length is refused by the HTTP parser itself.
    let out = errors_raw(&gw, b"POST /ok HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    // A malformed Host (an unclosed IPv6 bracket) is routed like any unknown host.
    let out = errors_raw(&gw, b"GET /nothing HTTP/1.1\r\nHost: [::1\r\nConnection: close\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 404"), "{out}");
    // Garbage on the wire gets 400 and a closed connection, not a hang.
    let out = errors_raw(&gw, b"\x16\x03\x01 not http at all\r\n\r\n").await;
    assert!(out.is_empty() || out.starts_with("HTTP/1.1 400"), "{out}");
}

async fn errors_raw(gw: &Gateway, bytes: &[u8]) -> String {
    raw(gw.addr(), bytes).await
}

#[tokio::test]
async fn request_body_and_header_limits() {
    let up = TestUpstream::start("u").await;
    let gw = Gateway::start(&format!(
        "version: 1\nlisteners:\n  - name: public\n    bind: 127.0.0.1:0\n    limits: {{ max_body: 64KiB, max_header_bytes: 4KiB }}\nadmin: {{ bind: 127.0.0.1:0 }}\naccess_log: {{ enabled: false }}\nupstreams:\n  u: {{ targets: [{{ url: \"{}\" }}] }}\nroutes:\n  - {{ name: r, match: {{ prefix: / }}, upstream: u }}\n",
        up.url()
    ));
    // Under the limit: passes.
    let req = Request::post(gw.url("/upload")).body(Full::new(Bytes::from(vec![1u8; 60 * 1024]))).unwrap();
    let (s, _, b) = send(req).await;
    assert_eq!((s.as_u16(), b.as_str()), (200, "{\"bytes\":61440}"));

    // Declared too large: 413 at once, the body is not read and the upstream not called.
    let hits = up.hits();
    let req = Request::post(gw.url("/upload")).body(Full::new(Bytes::from(vec![1u8; 100 * 1024]))).unwrap();
    let (s, h, b) = send(req).await;
    assert_json_error(s, &h, &b, 413);
    assert_eq!(up.hits(), hits, "the upstream never saw it");

    // Chunked and too large: cut off at the limit, 413.
    let big = write_temp(gw.dir.path(), "big.bin", &"x".repeat(200 * 1024));
    let data = format!("@{}", big.display());
    let (ok, out) = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        &data,
        &gw.url("/upload"),
    ])
    .await;
    assert!(ok);
    assert_eq!(out, "413");

    // Headers over the limit: 431 (JSON up to the parser's buffer, bare beyond it).
    let req = Request::get(gw.url("/")).header("x-big", "a".repeat(5000)).body(Full::new(Bytes::new())).unwrap();
    let (s, h, b) = send(req).await;
    assert_json_error(s, &h, &b, 431);
    let out =
        raw(gw.addr(), format!("GET / HTTP/1.1\r\nHost: x\r\nx-huge: {}\r\n\r\n", "a".repeat(64 * 1024)).as_bytes())
            .await;
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");
}
