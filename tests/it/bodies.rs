//! Request bodies on the lean HTTP/1.1 path, server loop and upstream client both: every
//! size and framing arrives whole, a long body streams rather than waits, an upstream that
//! answers before reading the body is heard, and a body the gateway does not read closes
//! the connection after the answer instead of being taken for the next request. Through
//! real sockets, on a plain and a TLS listener.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

struct Listener(RawListener);

impl Listener {
    fn start(up: &TestUpstream, tls: bool) -> Listener {
        Listener(RawListener::start(tls, |section| {
            format!(
                r#"version: 1
listeners:
  - name: public
    bind: 127.0.0.1:0
    limits: {{ max_body: 64MiB }}
{section}admin:
  bind: 127.0.0.1:0
upstreams:
  u: {{ targets: [{{ url: "{}" }}] }}
routes:
  - name: fixed
    match: {{ prefix: /fixed }}
    respond: {{ status: 200, body: "fixed" }}
  - {{ name: all, match: {{ prefix: / }}, upstream: u }}
"#,
                up.url()
            )
        }))
    }

    async fn connect(&self) -> Conn {
        Conn { io: self.0.connect().await, buf: Vec::new() }
    }
}

struct Conn {
    io: Box<dyn RawStream>,
    buf: Vec<u8>,
}

/// One response: status, head (lowercased), body.
struct Answer {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Conn {
    /// Reads one response framed by its `Content-Length` (all the gateway's answers here
    /// carry one); `None` when the connection closes first.
    async fn answer(&mut self) -> Option<Answer> {
        let end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            self.more().await?;
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).to_ascii_lowercase();
        let status = head.get(9..12)?.parse().ok()?;
        let len: usize =
            head.lines().find_map(|l| l.strip_prefix("content-length:")).map_or(0, |v| v.trim().parse().unwrap());
        while self.buf.len() < end + len {
            self.more().await?;
        }
        let body = self.buf[end..end + len].to_vec();
        self.buf.drain(..end + len);
        Some(Answer { status, head, body })
    }

    async fn more(&mut self) -> Option<()> {
        let mut chunk = [0u8; 64 * 1024];
        match tokio::time::timeout(Duration::from_secs(10), self.io.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => {
                self.buf.extend_from_slice(&chunk[..n]);
                Some(())
            }
            _ => None,
        }
    }

    /// Whether the gateway closes the connection (within 3 s).
    async fn closes(&mut self) -> bool {
        let mut chunk = [0u8; 1024];
        loop {
            match tokio::time::timeout(Duration::from_secs(3), self.io.read(&mut chunk)).await {
                Ok(Ok(0) | Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    }
}

/// A body of `n` bytes that is not all one byte.
fn body_of(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// `body` in the chunked coding, in chunks of varying size, some with extensions, and a
/// trailer.
fn chunked(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut at, mut i) = (0, 0usize);
    while at < body.len() {
        let n = (1 + i * 3797 % 40_000).min(body.len() - at);
        let ext = if i % 3 == 0 { ";name=value" } else { "" };
        out.extend_from_slice(format!("{n:x}{ext}\r\n").as_bytes());
        out.extend_from_slice(&body[at..at + n]);
        out.extend_from_slice(b"\r\n");
        at += n;
        i += 1;
    }
    out.extend_from_slice(b"0\r\nx-trailer: t\r\n\r\n");
    out
}

fn upload_answer(a: &Answer) -> (u64, String) {
    let v = json(&String::from_utf8_lossy(&a.body));
    (v["bytes"].as_u64().unwrap_or(u64::MAX), v["sum"].as_str().unwrap_or("").to_owned())
}

#[tokio::test]
async fn bodies_of_every_size_and_framing_reach_the_upstream_whole_on_one_connection() {
    let up = TestUpstream::start("u").await;
    for tls in [false, true] {
        let l = Listener::start(&up, tls);
        let mut c = l.connect().await;
        for n in [1, 1000, 70_000, 3_000_000] {
            let body = body_of(n);
            for framing in ["length", "chunked"] {
                let (field, wire) = match framing {
                    "length" => (format!("Content-Length: {n}"), body.clone()),
                    _ => ("Transfer-Encoding: chunked".to_owned(), chunked(&body)),
                };
                let head = format!("POST /checksum HTTP/1.1\r\nHost: localhost\r\n{field}\r\n\r\n");
                // The head and the start of the body together, the rest in pieces.
                let mut all = head.into_bytes();
                all.extend_from_slice(&wire);
                for piece in all.chunks(1 << 20) {
                    c.io.write_all(piece).await.unwrap();
                }
                let a = c.answer().await.unwrap_or_else(|| panic!("tls {tls}, {n} bytes {framing}: no answer"));
                assert_eq!(a.status, 200, "tls {tls}, {n} bytes {framing}");
                assert_eq!(upload_answer(&a), (n as u64, Fnv::of(&body)), "tls {tls}, {n} bytes {framing}");
                assert!(!a.head.contains("connection: close"), "tls {tls}, {n} bytes {framing}: kept alive");
            }
        }
        // A bodiless request after them on the same connection.
        c.io.write_all(b"GET /after HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
        let a = c.answer().await.unwrap();
        assert_eq!((a.status, json(&String::from_utf8_lossy(&a.body))["path"].as_str()), (200, Some("/after")));
    }
}

#[tokio::test]
async fn a_long_body_streams_to_the_upstream_before_the_client_has_sent_it_all() {
    let up = TestUpstream::start("u").await;
    for tls in [false, true] {
        let l = Listener::start(&up, tls);
        for framing in ["length", "chunked"] {
            up.reset_hits();
            let mut c = l.connect().await;
            let body = body_of(200_000);
            let (field, wire) = match framing {
                "length" => ("Content-Length: 200000".to_owned(), body.clone()),
                _ => ("Transfer-Encoding: chunked".to_owned(), chunked(&body)),
            };
            let head = format!("POST /checksum HTTP/1.1\r\nHost: localhost\r\n{field}\r\n\r\n");
            c.io.write_all(head.as_bytes()).await.unwrap();
            c.io.write_all(&wire[..50_000]).await.unwrap();
            // Were the body held until it is whole, the upstream would see nothing now.
            assert!(up.wait_hits(1).await, "tls {tls}, {framing}: the request did not reach the upstream yet");
            c.io.write_all(&wire[50_000..]).await.unwrap();
            let a = c.answer().await.unwrap();
            assert_eq!(upload_answer(&a), (200_000, Fnv::of(&body)), "tls {tls}, {framing}");
        }
    }
}

#[tokio::test]
async fn an_upstream_that_answers_before_reading_the_body_is_heard() {
    let up = TestUpstream::start("u").await;
    for tls in [false, true] {
        let l = Listener::start(&up, tls);
        let c = l.connect().await;
        let n = 20 << 20;
        let head = format!("POST /refuse-body HTTP/1.1\r\nHost: localhost\r\nContent-Length: {n}\r\n\r\n");
        let (rd, mut wr) = tokio::io::split(c.io);
        // The client keeps sending while it waits, as clients do.
        let writer = tokio::spawn(async move {
            let _ = wr.write_all(head.as_bytes()).await;
            let chunk = vec![b'x'; 64 * 1024];
            for _ in 0..n / chunk.len() {
                if wr.write_all(&chunk).await.is_err() {
                    break;
                }
            }
            wr
        });
        let mut c = Conn { io: Box::new(tokio::io::join(rd, tokio::io::sink())), buf: Vec::new() };
        let a = c.answer().await.unwrap_or_else(|| panic!("tls {tls}: no answer"));
        assert_eq!((a.status, &a.body[..]), (413, &b"body refused unread"[..]), "tls {tls}: the upstream's answer");
        assert!(a.head.contains("connection: close"), "tls {tls}: the rest of the body is never read: {}", a.head);
        assert!(c.closes().await, "tls {tls}: closed after the answer");
        writer.abort();
        let (_, _, metrics) = get(&l.0.gw.admin_url("/metrics")).await;
        let failed = metrics.lines().filter(|l| l.starts_with("gateway_backend_errors_total{") && !l.ends_with(" 0"));
        assert_eq!(failed.count(), 0, "tls {tls}: the upstream's answer is no failure:\n{metrics}");
    }
}

#[tokio::test]
async fn a_body_the_gateway_does_not_read_closes_the_connection_after_the_answer() {
    let up = TestUpstream::start("u").await;
    for tls in [false, true] {
        let l = Listener::start(&up, tls);
        // Most of a large body still to come when the route answers by itself.
        let mut c = l.connect().await;
        c.io.write_all(b"POST /fixed HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000000\r\n\r\n0123456789")
            .await
            .unwrap();
        let a = c.answer().await.unwrap();
        assert_eq!((a.status, &a.body[..]), (200, &b"fixed"[..]), "tls {tls}");
        assert!(a.head.contains("connection: close"), "tls {tls}: {}", a.head);
        assert!(c.closes().await, "tls {tls}: the rest of the body is not taken for a request");
        // A small body that came whole with its head: read, and the connection goes on,
        // with a request pipelined behind it.
        let mut c = l.connect().await;
        c.io.write_all(
            b"POST /fixed HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nhelloGET /fixed HTTP/1.1\r\nHost: localhost\r\n\r\n",
        )
        .await
        .unwrap();
        for i in 0..2 {
            let a = c.answer().await.unwrap();
            assert_eq!((a.status, a.head.contains("connection: close")), (200, false), "tls {tls}: answer {i}");
        }
        // The same with a chunked body that has not ended: closed after the answer.
        let mut c = l.connect().await;
        c.io.write_all(b"POST /fixed HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel")
            .await
            .unwrap();
        let a = c.answer().await.unwrap();
        assert!(a.status == 200 && a.head.contains("connection: close"), "tls {tls}: {}", a.head);
        assert!(c.closes().await, "tls {tls}");
        assert_eq!(up.hits(), 0, "tls {tls}: no request reached the upstream");
    }
}
