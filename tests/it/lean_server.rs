//! The lean HTTP/1.1 server loop of cleartext listeners, seen from a raw TCP client:
//! pipelining, response framing, bodies, HTTP/1.0, `Connection: close`, `Expect`, the
//! hand-over to hyper for what the loop does not take (h2c, tunnels), and its timeouts.

use std::collections::HashMap;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;
use crate::upstream_h1::{self, Scripted, catch_all};

/// A client speaking HTTP/1.1 by hand, so the test sees exactly what came back.
struct Raw {
    io: TcpStream,
    buf: Vec<u8>,
}

/// One response: status line, headers (lower-case names), body (de-chunked).
#[derive(Debug)]
struct Answer {
    status_line: String,
    headers: HashMap<String, String>,
    body: String,
}

impl Raw {
    async fn connect(gw: &Gateway) -> Raw {
        Raw { io: TcpStream::connect(gw.addr()).await.unwrap(), buf: Vec::new() }
    }

    async fn send(&mut self, bytes: &str) {
        self.io.write_all(bytes.as_bytes()).await.unwrap();
    }

    /// Reads more; false at the end of the stream.
    async fn more(&mut self) -> bool {
        let mut chunk = [0u8; 16384];
        match tokio::time::timeout(Duration::from_secs(10), self.io.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            _ => false,
        }
    }

    /// Whether the server closes the connection (without sending anything) within `wait`.
    async fn closed_within(&mut self, wait: Duration) -> bool {
        let mut chunk = [0u8; 1024];
        matches!(tokio::time::timeout(wait, self.io.read(&mut chunk)).await, Ok(Ok(0)) | Ok(Err(_)))
    }

    /// Reads one response to a request (`head`: a HEAD request's, without a body).
    async fn answer(&mut self, head: bool) -> Option<Answer> {
        let end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if !self.more().await {
                return None;
            }
        };
        let text = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        self.buf.drain(..end);
        let mut lines = text.split("\r\n");
        let status_line = lines.next().unwrap_or("").to_owned();
        let mut headers = HashMap::new();
        for line in lines.filter(|l| !l.is_empty()) {
            let (k, v) = line.split_once(':').unwrap();
            assert!(headers.insert(k.to_ascii_lowercase(), v.trim().to_owned()).is_none(), "repeated {k}: {text}");
        }
        let code: u16 = status_line.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let mut body = Vec::new();
        if head || code == 204 || code == 304 || (100..200).contains(&code) {
        } else if let Some(len) = headers.get("content-length") {
            let len: usize = len.parse().unwrap();
            while self.buf.len() < len {
                if !self.more().await {
                    return None;
                }
            }
            body = self.buf.drain(..len).collect();
        } else if headers.get("transfer-encoding").map(String::as_str) == Some("chunked") {
            loop {
                let line_end = loop {
                    if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                        break i;
                    }
                    if !self.more().await {
                        return None;
                    }
                };
                let size = usize::from_str_radix(std::str::from_utf8(&self.buf[..line_end]).unwrap(), 16).unwrap();
                while self.buf.len() < line_end + 2 + size + 2 {
                    if !self.more().await {
                        return None;
                    }
                }
                body.extend_from_slice(&self.buf[line_end + 2..line_end + 2 + size]);
                assert_eq!(&self.buf[line_end + 2 + size..line_end + 4 + size], b"\r\n");
                self.buf.drain(..line_end + 4 + size);
                if size == 0 {
                    break;
                }
            }
        } else {
            while self.more().await {}
            body = std::mem::take(&mut self.buf);
        }
        Some(Answer { status_line, headers, body: String::from_utf8_lossy(&body).into_owned() })
    }
}

fn gateway_for(up: &TestUpstream, limits: &str) -> Gateway {
    let yaml = catch_all(&up.url(), "");
    Gateway::start(&yaml.replace("    bind: 127.0.0.1:0\n", &format!("    bind: 127.0.0.1:0\n{limits}")))
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let up = TestUpstream::start("u").await;
    let gw = gateway_for(&up, "");
    let mut c = Raw::connect(&gw).await;
    c.send(
        "GET /a HTTP/1.1\r\nHost: x\r\n\r\nHEAD /b HTTP/1.1\r\nHost: x\r\n\r\nGET /c?q=1 HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    let a = c.answer(false).await.unwrap();
    let b = c.answer(true).await.unwrap();
    let cc = c.answer(false).await.unwrap();
    assert_eq!(a.status_line, "HTTP/1.1 200 OK");
    assert_eq!(json(&a.body)["path"], "/a");
    assert_eq!(b.status_line, "HTTP/1.1 200 OK");
    assert!(b.body.is_empty() && b.headers.contains_key("content-length"), "{b:?}");
    assert_eq!(json(&cc.body)["query"], "q=1");
    for r in [&a, &b, &cc] {
        assert!(r.headers.contains_key("date") && r.headers.contains_key("x-request-id"), "{r:?}");
    }
    assert_eq!(up.hits(), 3);
    // Gateway-made answers are framed too.
    c.send("GET /nothing-here/.. HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let e = c.answer(false).await.unwrap();
    assert_eq!(e.status_line, "HTTP/1.1 400 Bad Request");
    assert_eq!(json(&e.body)["status"], 400);
}

#[tokio::test]
async fn upstream_framing_is_rewritten_for_the_client() {
    let up = Scripted::start().await;
    let gw = upstream_h1::gateway(&up, "");
    let mut c = Raw::connect(&gw).await;
    for (path, body) in [("/chunked", "hello world"), ("/close", "until close"), ("/len", "hello"), ("/both", "hello")]
    {
        c.send(&format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n")).await;
        let r = c.answer(false).await.unwrap();
        assert_eq!((r.status_line.as_str(), r.body.as_str()), ("HTTP/1.1 200 OK", body), "{path}: {r:?}");
        // Exactly one framing for the client: a length or chunks, never both.
        assert!(r.headers.contains_key("content-length") != r.headers.contains_key("transfer-encoding"), "{r:?}");
    }
    c.send("GET /nocontent HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let r = c.answer(false).await.unwrap();
    assert_eq!(r.status_line, "HTTP/1.1 204 No Content");
    assert!(!r.headers.contains_key("content-length") && !r.headers.contains_key("transfer-encoding"));
    // Still one connection, still answering.
    c.send("GET /len HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(c.answer(false).await.unwrap().body, "hello");
    // A body cut short upstream: the client's connection ends with the answer incomplete.
    c.send("GET /truncated HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(c.answer(false).await.is_none());
}

#[tokio::test]
async fn bodies_expect_http10_and_close_on_the_lean_loop_and_h2c_on_hyper() {
    let up = TestUpstream::start("u").await;
    let gw = gateway_for(&up, "");
    let mut c = Raw::connect(&gw).await;
    c.send("GET /first HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(json(&c.answer(false).await.unwrap().body)["path"], "/first");
    // A body, and a request pipelined behind it.
    c.send("POST /second HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloGET /third HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let second = c.answer(false).await.unwrap();
    assert_eq!(json(&second.body)["bodyBytes"], 5, "{second:?}");
    assert_eq!(json(&c.answer(false).await.unwrap().body)["path"], "/third");
    // Expect: 100-continue: the interim answer once the body is wanted.
    c.send("PUT /fourth HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n").await;
    let cont = c.answer(false).await.unwrap();
    assert_eq!(cont.status_line, "HTTP/1.1 100 Continue");
    c.send("abc").await;
    assert_eq!(json(&c.answer(false).await.unwrap().body)["bodyBytes"], 3);

    // HTTP/1.0 and Connection: close: answered, then the connection ends.
    for req in ["GET /old HTTP/1.0\r\n\r\n", "GET /bye HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"] {
        let mut c = Raw::connect(&gw).await;
        c.send(req).await;
        let r = c.answer(false).await.unwrap();
        assert!(r.status_line.ends_with(" 200 OK"), "{req:?}: {r:?}");
        assert!(c.closed_within(Duration::from_secs(2)).await, "{req:?}");
    }
    // h2c with prior knowledge on the same listener.
    let (ok, out) = curl(&[
        "-sS",
        "--http2-prior-knowledge",
        "-o",
        "/dev/null",
        "-w",
        "%{http_version} %{http_code}",
        &gw.url("/h2"),
    ])
    .await;
    assert!(ok, "{out}");
    assert_eq!(out, "2 200");
    // Malformed requests get the contract's 400, also after lean ones on the same
    // connection and when only the `http` types refuse the head (a backtick in the target).
    let mut c = Raw::connect(&gw).await;
    c.send("GET /x HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n").await;
    let bad = c.answer(false).await.unwrap();
    assert!(bad.status_line.starts_with("HTTP/1.1 400"));
    assert_eq!(json(&bad.body)["error"], "malformed request", "{bad:?}");
    let mut c = Raw::connect(&gw).await;
    c.send("GET /ok HTTP/1.1\r\nHost: x\r\n\r\nGET /a`b HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(json(&c.answer(false).await.unwrap().body)["path"], "/ok");
    let bad = c.answer(false).await.unwrap();
    assert!(bad.status_line.starts_with("HTTP/1.1 400"));
    assert_eq!(json(&bad.body)["error"], "malformed request", "{bad:?}");
}

#[tokio::test]
async fn heads_must_arrive_in_time_and_idle_connections_close() {
    let up = TestUpstream::start("u").await;
    // The idle timeout is far off: a close within seconds is the head timeout's.
    let gw = gateway_for(&up, "    limits: { header_timeout: 300ms, idle_timeout: 30s }\n");
    // A second head that stalls: closed without an answer.
    let mut c = Raw::connect(&gw).await;
    c.send("GET /a HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(c.answer(false).await.is_some());
    c.send("GET /b HTTP/1.1\r\nHost: x\r\n").await;
    assert!(c.closed_within(Duration::from_secs(5)).await);
    assert!(c.buf.is_empty());
    // A connection that never sends: closed too.
    let mut c = Raw::connect(&gw).await;
    assert!(c.closed_within(Duration::from_secs(5)).await);
    // A head larger than max_header_bytes: 431.
    let mut c = Raw::connect(&gw).await;
    c.send(&format!("GET /a HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "b".repeat(40_000))).await;
    assert!(c.answer(false).await.unwrap().status_line.starts_with("HTTP/1.1 431"));

    // An idle keep-alive connection closes after the idle timeout, not before.
    let gw = gateway_for(&up, "    limits: { idle_timeout: 500ms }\n");
    let mut c = Raw::connect(&gw).await;
    c.send("GET /a HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(c.answer(false).await.is_some());
    let started = std::time::Instant::now();
    assert!(c.closed_within(Duration::from_secs(5)).await);
    assert!(started.elapsed() >= Duration::from_millis(250), "closed too early: {:?}", started.elapsed());
}

#[tokio::test]
async fn a_client_that_goes_away_cancels_its_request_and_streams_start_at_once() {
    let up = TestUpstream::start("u").await;
    let gw = Gateway::start(&catch_all(&up.url(), ", max_in_flight: 1, queue_timeout: 0s"));
    // The only upstream slot is taken by a slow request whose client leaves.
    let mut c = Raw::connect(&gw).await;
    c.send("GET /slow?ms=20000 HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let taken = Gateway::eventually(Duration::from_secs(5), || async { up.hits() == 1 }).await;
    assert!(taken);
    let mut busy = Raw::connect(&gw).await;
    busy.send("GET /a HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(busy.answer(false).await.unwrap().status_line, "HTTP/1.1 503 Service Unavailable");
    drop(c);
    // Its slot is free again long before the upstream would have answered.
    let mut freed = false;
    for _ in 0..50 {
        busy.send("GET /a HTTP/1.1\r\nHost: x\r\n\r\n").await;
        if busy.answer(false).await.unwrap().status_line == "HTTP/1.1 200 OK" {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(freed, "the abandoned request kept its slot");

    // A streamed response: the head comes before the first body bytes exist.
    let mut c = Raw::connect(&gw).await;
    c.send("GET /drip?chunks=2&ms=500 HTTP/1.1\r\nHost: x\r\n\r\n").await;
    while !c.buf.windows(4).any(|w| w == b"\r\n\r\n") {
        assert!(c.more().await);
    }
    let text = String::from_utf8_lossy(&c.buf).into_owned();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n") && !text.contains("chunk 0"), "{text}");
    let r = c.answer(false).await.unwrap();
    assert_eq!(r.body, "chunk 0\nchunk 1\n");

    // HTTP/2's preface in the middle of an HTTP/1.1 connection ends it.
    let mut c = Raw::connect(&gw).await;
    c.send("GET /a HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(c.answer(false).await.is_some());
    c.send("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
    assert!(c.closed_within(Duration::from_secs(5)).await);
}
