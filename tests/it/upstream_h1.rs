//! The lean HTTP/1.1 upstream client (requests without a body to IP targets): framing,
//! connection reuse, and what it does with broken or closing upstreams. The upstream here
//! is a scripted TCP server, so each response is exactly the bytes a test needs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

/// A TCP server answering each request with the bytes its path names, counting
/// connections accepted and connections the other side closed.
pub struct Scripted {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    ended: Arc<AtomicUsize>,
}

/// What the server does with one request.
enum Act {
    /// Write these bytes and keep the connection.
    Reply(Vec<u8>),
    /// Write these bytes and close.
    ReplyClose(Vec<u8>),
    /// Write these bytes, close a moment later.
    ReplyLater(Vec<u8>),
    /// Wait this long, then write these bytes and keep the connection.
    ReplyAfter(Duration, Vec<u8>),
    /// Close without answering.
    Drop,
}

fn script(method: &str, path: &str, nth: usize, head: &str) -> Act {
    // HEAD gets the length a GET would, and no body.
    let len = |body: &str| {
        let sent = if method == "HEAD" { "" } else { body };
        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{sent}", body.len()).into_bytes()
    };
    match path.split('?').next().unwrap_or("") {
        "/len" => Act::Reply(len("hello")),
        "/chunked" => Act::Reply(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
                .to_vec(),
        ),
        "/both" => Act::Reply(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_vec(),
        ),
        "/close" => Act::ReplyClose(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil close".to_vec()),
        "/early" => Act::Reply(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"
                .to_vec(),
        ),
        "/nocontent" => Act::Reply(b"HTTP/1.1 204 No Content\r\n\r\n".to_vec()),
        "/conn-close" => Act::Reply(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok".to_vec()),
        "/conflict" => Act::Reply(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nhello".to_vec()),
        "/garbage" => Act::Reply(b"NOT HTTP AT ALL\r\n\r\n".to_vec()),
        "/truncated" => Act::ReplyClose(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc".to_vec()),
        "/second-fails" if nth >= 2 => Act::Drop,
        "/second-fails" => Act::Reply(len("first")),
        "/idle-close" => Act::ReplyLater(len("later")),
        "/slow" => Act::ReplyAfter(Duration::from_secs(2), len("slow")),
        "/fields" => Act::Reply(
            b"HTTP/1.1 200 OK\r\nX-Upstream-A: 1\r\nx-upstream-b: 2\r\nDate: Tue, 01 Dec 2026 12:00:00 GMT\r\nX-Upstream-B: 3\r\nContent-Length: 6\r\n\r\nfields"
                .to_vec(),
        ),
        "/own-id" => Act::Reply(b"HTTP/1.1 200 OK\r\nX-Request-ID: upstream-id\r\nContent-Length: 2\r\n\r\nok".to_vec()),
        "/echo-head" => {
            Act::Reply(format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{head}", head.len()).into_bytes())
        }
        _ => Act::Reply(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec()),
    }
}

impl Scripted {
    pub async fn start() -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let ended = Arc::new(AtomicUsize::new(0));
        let (a, e) = (accepted.clone(), ended.clone());
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(conn, e.clone()));
            }
        });
        Scripted { addr, accepted, ended }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

async fn serve(mut conn: TcpStream, ended: Arc<AtomicUsize>) {
    let mut buf = Vec::new();
    let mut nth = 0;
    loop {
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => {
                    ended.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        nth += 1;
        let mut words = head.split(' ');
        let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        match script(method, path, nth, &head) {
            Act::Reply(bytes) => {
                if conn.write_all(&bytes).await.is_err() {
                    return;
                }
            }
            Act::ReplyClose(bytes) => {
                let _ = conn.write_all(&bytes).await;
                return;
            }
            Act::ReplyLater(bytes) => {
                let _ = conn.write_all(&bytes).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                return;
            }
            Act::ReplyAfter(wait, bytes) => {
                tokio::time::sleep(wait).await;
                if conn.write_all(&bytes).await.is_err() {
                    return;
                }
            }
            Act::Drop => return,
        }
    }
}

/// A config routing everything to one upstream `s` at `url`; `extra` goes into the
/// upstream's definition (`, pool: { ... }`).
pub fn catch_all(url: &str, extra: &str) -> String {
    config(&format!(
        "upstreams:\n  s: {{ targets: [{{ url: \"{url}\" }}]{extra} }}\nroutes:\n  - {{ name: all, match: {{ prefix: / }}, upstream: s }}\n"
    ))
}

pub fn gateway(up: &Scripted, pool: &str) -> Gateway {
    Gateway::start(&catch_all(&up.url(), pool))
}

async fn request(gw: &Gateway, method: &str, path: &str) -> (u16, http::HeaderMap, String) {
    let req = http::Request::builder()
        .method(method)
        .uri(gw.url(path))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let (s, h, b) = send(req).await;
    (s.as_u16(), h, b)
}

#[tokio::test]
async fn responses_are_framed_as_rfc_9112_says_and_connections_reused_when_safe() {
    let up = Scripted::start().await;
    let gw = gateway(&up, "");
    for _ in 0..5 {
        assert_eq!(request(&gw, "GET", "/len").await.2, "hello");
    }
    assert_eq!(up.accepted(), 1, "one keep-alive connection for sequential requests");

    let (s, h, body) = request(&gw, "HEAD", "/len").await;
    assert_eq!((s, body.as_str()), (200, ""));
    assert_eq!(h["content-length"], "5");
    assert_eq!(request(&gw, "GET", "/nocontent").await.0, 204);
    let (s, h, body) = request(&gw, "GET", "/chunked").await;
    assert_eq!((s, body.as_str()), (200, "hello world"));
    assert!(h.get("x-trailer").is_none(), "trailers are dropped: {h:?}");
    let (s, h, body) = request(&gw, "GET", "/early").await;
    assert_eq!((s, body.as_str()), (201, "ok"), "1xx heads are skipped");
    assert!(h.get("link").is_none());
    assert_eq!(request(&gw, "GET", "/len").await.2, "hello");
    assert_eq!(up.accepted(), 1, "HEAD, 204, chunked and 1xx leave the connection usable");

    // Content-Length with Transfer-Encoding: the chunked body, no length, no reuse.
    let (s, h, body) = request(&gw, "GET", "/both").await;
    assert_eq!((s, body.as_str()), (200, "hello"));
    assert!(h.get("content-length").is_none(), "{h:?}");
    assert_eq!(request(&gw, "GET", "/len").await.2, "hello");
    assert_eq!(up.accepted(), 2);
    // A body delimited by the end of the connection.
    assert_eq!(request(&gw, "GET", "/close").await.2, "until close");
    assert_eq!(request(&gw, "GET", "/len").await.2, "hello");
    assert_eq!(up.accepted(), 3);
    // `Connection: close` from the upstream.
    assert_eq!(request(&gw, "GET", "/conn-close").await.2, "ok");
    assert_eq!(request(&gw, "GET", "/len").await.2, "hello");
    assert_eq!(up.accepted(), 4);
}

#[tokio::test]
async fn a_pooled_connection_keeps_each_requests_deadline_also_a_shorter_one() {
    let up = Scripted::start().await;
    let gw = Gateway::start(&config(&format!(
        "upstreams:\n  s: {{ targets: [{{ url: \"{}\" }}] }}\nroutes:\n  - {{ name: short, match: {{ prefix: /slow }}, upstream: s, timeout: 300ms }}\n  - {{ name: all, match: {{ prefix: / }}, upstream: s }}\n",
        up.url()
    )));
    for round in 1..=2 {
        // A pooled connection whose timer was last set to a default (later) deadline...
        assert_eq!(request(&gw, "GET", "/len").await.2, "hello");
        assert_eq!(request(&gw, "GET", "/len").await.2, "hello");
        assert_eq!(up.accepted(), round);
        // ...still times out at this request's earlier one.
        let start = std::time::Instant::now();
        let (s, _, body) = request(&gw, "GET", "/slow").await;
        assert_eq!(s, 504, "{body}");
        assert_eq!(json(&body)["error"], "upstream timeout");
        assert!(start.elapsed() < Duration::from_millis(1500), "{:?}", start.elapsed());
    }
    // A connection that timed out is not used again (its late answer would be taken for
    // the next request's).
    assert_eq!(request(&gw, "GET", "/len").await.2, "hello");
    assert_eq!(up.accepted(), 3);
    assert_eq!(gw.metric("gateway_backend_errors_total{upstream=\"s\",kind=\"timeout\"}").await, 2.0);
}

#[tokio::test]
async fn malformed_or_truncated_responses_fail_cleanly() {
    let up = Scripted::start().await;
    let gw = gateway(&up, "");
    for path in ["/conflict", "/garbage"] {
        let (s, _, body) = request(&gw, "GET", path).await;
        assert_eq!(s, 502, "{path}: {body}");
        assert_eq!(json(&body)["error"], "bad response from upstream", "{path}: {body}");
    }
    // A body cut short: the client sees an incomplete transfer, not a complete answer.
    let (ok, out) = curl(&["-sS", &gw.url("/truncated")]).await;
    assert!(!ok, "{out}");
    assert_eq!(gw.metric("gateway_backend_errors_total{upstream=\"s\",kind=\"bad_response\"}").await, 2.0);
    // The gateway still works with the same upstream afterwards.
    assert_eq!(request(&gw, "GET", "/len").await.2, "hello");
}

#[tokio::test]
async fn a_pooled_connection_closed_by_the_upstream_is_retried_only_when_safe() {
    let up = Scripted::start().await;
    let gw = gateway(&up, "");
    // The second request on a connection meets it closing: a GET goes again on a new one.
    assert_eq!(request(&gw, "GET", "/second-fails").await.2, "first");
    assert_eq!(request(&gw, "GET", "/second-fails").await.2, "first");
    assert_eq!(up.accepted(), 2);
    // A POST may have been seen: not sent twice.
    let (s, _, body) = request(&gw, "POST", "/second-fails").await;
    assert_eq!(s, 502, "{body}");
    assert_eq!(up.accepted(), 2);

    // Closed by the upstream while idle: noticed before use.
    assert_eq!(request(&gw, "GET", "/idle-close").await.2, "later");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(request(&gw, "GET", "/len").await.2, "hello");
    assert_eq!(up.accepted(), 4);
}

#[tokio::test]
async fn idle_connections_close_after_the_idle_timeout() {
    let up = Scripted::start().await;
    let gw = gateway(&up, ", pool: { idle_timeout: 200ms }");
    assert_eq!(request(&gw, "GET", "/len").await.2, "hello");
    assert_eq!(up.ended.load(Ordering::SeqCst), 0);
    let closed = Gateway::eventually(Duration::from_secs(3), || async { up.ended.load(Ordering::SeqCst) == 1 }).await;
    assert!(closed, "the idle connection was not closed");
    assert_eq!(request(&gw, "GET", "/len").await.2, "hello");
    assert_eq!(up.accepted(), 2);
}

#[tokio::test]
async fn the_request_head_carries_the_proxy_edits() {
    let up = Scripted::start().await;
    let gw = gateway(&up, "");
    let req = http::Request::builder()
        .uri(gw.url("/echo-head?q=1&r"))
        .header("connection", "x-drop")
        .header("x-drop", "1")
        .header("x-keep", "2")
        .header("x-request-id", "not well formed")
        .header("x-forwarded-proto", "forged")
        .header("te", "trailers")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let (s, res_headers, head) = send(req).await;
    assert_eq!(s, 200);
    let lines: Vec<&str> = head.split("\r\n").collect();
    assert_eq!(lines[0], "GET /echo-head?q=1&r HTTP/1.1");
    assert_eq!(lines[1], format!("host: {}", up.addr), "Host comes first: {head}");
    assert!(lines.contains(&"x-keep: 2"), "{head}");
    let once = |name: &str| {
        let found: Vec<&str> = lines.iter().filter_map(|l| l.strip_prefix(name)?.strip_prefix(": ")).collect();
        assert_eq!(found.len(), 1, "one {name}: {head}");
        found[0].to_owned()
    };
    assert_eq!(once("x-forwarded-for"), "127.0.0.1");
    assert_eq!(once("x-forwarded-proto"), "http", "the client's copy is replaced");
    assert_eq!(once("x-forwarded-host"), gw.addr().to_string());
    assert_eq!(once("forwarded"), "for=127.0.0.1;proto=http");
    let id = once("x-request-id");
    assert!(id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()), "a malformed ID is replaced: {id}");
    assert_eq!(res_headers["x-request-id"], id.as_str(), "the same ID comes back");
    assert!(!head.contains("x-drop") && !head.contains("connection:") && !head.contains("te:"), "{head}");
    assert!(head.ends_with("\r\n\r\n"));
}

#[tokio::test]
async fn upstream_fields_reach_the_client_with_and_without_response_plugins() {
    let up = Scripted::start().await;
    let plain = gateway(&up, "");
    let with_plugin = Gateway::start(&config(&format!(
        "plugins:\n  - security_headers: {{}}\nupstreams:\n  s: {{ targets: [{{ url: \"{}\" }}] }}\nroutes:\n  - {{ name: all, match: {{ prefix: / }}, upstream: s }}\n",
        up.url()
    )));
    for (gw, plugin) in [(&plain, false), (&with_plugin, true)] {
        for _ in 0..2 {
            let (s, h, body) = request(gw, "GET", "/fields").await;
            assert_eq!((s, body.as_str()), (200, "fields"), "{h:?}");
            assert_eq!(h["x-upstream-a"], "1", "{h:?}");
            assert_eq!(h.get_all("x-upstream-b").iter().collect::<Vec<_>>(), ["2", "3"], "{h:?}");
            assert_eq!(h["date"], "Tue, 01 Dec 2026 12:00:00 GMT", "the upstream's Date is kept: {h:?}");
            assert_eq!(h.get_all("content-length").iter().count(), 1, "{h:?}");
            assert_eq!(h.contains_key("x-content-type-options"), plugin, "{h:?}");
        }
    }
}

#[tokio::test]
async fn the_response_carries_the_gateways_request_id_only() {
    let up = Scripted::start().await;
    let gw = gateway(&up, "");
    for _ in 0..2 {
        let (s, h, body) = request(&gw, "GET", "/own-id").await;
        assert_eq!((s, body.as_str()), (200, "ok"));
        let ids: Vec<_> = h.get_all("x-request-id").iter().collect();
        assert_eq!(ids.len(), 1, "{h:?}");
        assert!(ids[0].len() == 32 && ids[0] != "upstream-id", "{h:?}");
    }
}

/// The idle connections of upstream `s`'s target, as the admin API reports them.
async fn idle_connections(gw: &Gateway) -> serde_json::Value {
    let (_, _, admin) = get(&gw.admin_url("/upstreams")).await;
    let all = json(&admin)["upstreams"].as_array().cloned().unwrap_or_default();
    let s = all.iter().find(|u| u["name"] == "s").cloned().unwrap_or_default();
    s["targets"][0]["idleConnections"].clone()
}

#[tokio::test]
async fn health_checks_mirrored_copies_and_proxied_requests_share_one_pool() {
    let up = Scripted::start().await;
    let other = Scripted::start().await;
    // One health check at start (the next is an hour away), a route to `s`, and a route
    // to `o` that mirrors every request to `s`.
    let gw = Gateway::start(&config(&format!(
        "upstreams:\n  s: {{ targets: [{{ url: \"{}\" }}], health_check: {{ path: /len, interval: 1h }} }}\n  o: {{ targets: [{{ url: \"{}\" }}] }}\nroutes:\n  - {{ name: mirrored, match: {{ prefix: /m }}, upstream: o, mirror: {{ upstream: s, percent: 100% }} }}\n  - {{ name: all, match: {{ prefix: / }}, upstream: s }}\n",
        up.url(),
        other.url()
    )));
    let one_idle = || async { idle_connections(&gw).await == 1 };
    assert!(Gateway::eventually(Duration::from_secs(5), one_idle).await, "the health check's connection is pooled");
    assert_eq!(request(&gw, "GET", "/len").await.2, "hello");
    assert!(Gateway::eventually(Duration::from_secs(5), one_idle).await);
    assert_eq!(request(&gw, "GET", "/m/len").await.0, 404);
    assert_eq!(other.accepted(), 1);
    let pooled = Gateway::eventually(Duration::from_secs(5), one_idle).await;
    assert!(pooled, "the mirrored copy's connection: {} {}", idle_connections(&gw).await, up.accepted());
    assert_eq!(request(&gw, "GET", "/len").await.2, "hello");
    assert_eq!(up.accepted(), 1, "the check, the proxied requests and the mirrored copy used one connection");
}
