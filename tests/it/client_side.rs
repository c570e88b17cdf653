//! Failures the client causes are the client's: a malformed request body is a 400, a
//! client that hangs up mid-upload is logged as 499 and counted as a client abort, and a
//! client that stops reading a response leaves no trace on the upstream. None of them
//! moves a circuit breaker, ejects a target or counts as a backend error, on any listener
//! kind: without that, one anonymous client could take any upstream offline for everyone.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    H1,
    H1Tls,
    H2c,
    H2Tls,
}

const ALL: [Transport; 4] = [Transport::H1, Transport::H1Tls, Transport::H2c, Transport::H2Tls];

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// A gateway with a breaker that six upstream failures would open (and outlier detection
/// that two would trip) in front of two healthy targets, on a listener of one kind.
struct Setup {
    gw: Gateway,
    ups: [TestUpstream; 2],
    tls: Option<Arc<rustls::ClientConfig>>,
    transport: Transport,
    _dir: tempfile::TempDir,
}

impl Setup {
    async fn start(transport: Transport) -> Setup {
        let ups = [TestUpstream::start("a").await, TestUpstream::start("b").await];
        let dir = tempfile::tempdir().unwrap();
        let tls_on = matches!(transport, Transport::H1Tls | Transport::H2Tls);
        let mut listener_tls = String::new();
        let mut tls = None;
        if tls_on {
            let t = LocalhostTls::new(dir.path());
            listener_tls = t.listener_yaml.clone();
            tls = Some(t.client(if transport == Transport::H2Tls { b"h2" } else { b"http/1.1" }));
        }
        let yaml = format!(
            "version: 1\nlisteners:\n  - name: public\n    bind: 127.0.0.1:0\n    limits: {{ max_body: 64MiB }}\n{listener_tls}admin:\n  bind: 127.0.0.1:0\naccess_log:\n  output: ACCESS_LOG\nupstreams:\n  u:\n    targets: [{{ url: \"{}\" }}, {{ url: \"{}\" }}]\n    circuit_breaker: {{ error_rate: 50%, min_requests: 5, window: 10s, open_for: 30s }}\n    outlier_detection: {{ consecutive_failures: 2, max_ejected_percent: 100% }}\nroutes:\n  - {{ name: stall, match: {{ prefix: /stall }}, upstream: u, rewrite: {{ path: /upload }}, timeout: 1s }}\n  - {{ name: slow, match: {{ prefix: /slow }}, upstream: u, timeout: 1s }}\n  - {{ name: all, match: {{ prefix: / }}, upstream: u }}\n",
            ups[0].url(),
            ups[1].url()
        );
        Setup { gw: Gateway::start(&yaml), ups, tls, transport, _dir: dir }
    }

    async fn connect(&self) -> Box<dyn Stream> {
        let tcp = TcpStream::connect(self.gw.addr()).await.unwrap();
        match &self.tls {
            None => Box::new(tcp),
            Some(c) => {
                let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
                Box::new(tokio_rustls::TlsConnector::from(c.clone()).connect(name, tcp).await.unwrap())
            }
        }
    }

    fn hits(&self) -> usize {
        self.ups.iter().map(TestUpstream::hits).sum()
    }

    /// Waits until the upstreams have seen `n` requests in all.
    async fn wait_hits(&self, n: usize) {
        let seen = Gateway::eventually(Duration::from_secs(5), || async { self.hits() >= n }).await;
        assert!(seen, "{:?}: the upstream never saw the request ({} < {n})", self.transport, self.hits());
    }

    /// An HTTP/2 connection to the gateway (h2c or TLS h2).
    async fn h2(&self) -> hyper::client::conn::http2::SendRequest<TestBody> {
        let io = TokioIo::new(self.connect().await);
        let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.unwrap();
        tokio::spawn(conn);
        send
    }

    /// The upstream is untouched by what the clients did: no backend error, no ejection,
    /// the breaker closed, and a plain request still answered by it.
    async fn assert_upstream_untouched(&self, what: &str) {
        let gw = &self.gw;
        let t = self.transport;
        let (_, _, text) = get(&gw.admin_url("/metrics")).await;
        let errors: Vec<&str> =
            text.lines().filter(|l| l.starts_with("gateway_backend_errors_total{") && !l.ends_with(" 0")).collect();
        assert!(errors.is_empty(), "{t:?} {what}: counted against the upstream: {errors:?}");
        let ejections: Vec<&str> =
            text.lines().filter(|l| l.starts_with("gateway_target_ejections_total{") && !l.ends_with(" 0")).collect();
        assert!(ejections.is_empty(), "{t:?} {what}: a target was ejected: {ejections:?}");
        assert_eq!(gw.metric("gateway_circuit_breaker_state{upstream=\"u\"}").await, 0.0, "{t:?} {what}");
        let answer = self.get("/after").await;
        assert!(
            answer.starts_with("HTTP/1.1 200") || answer == "HTTP/2 200",
            "{t:?} {what}: a good request after them: {answer}"
        );
    }

    /// A GET over this setup's transport: the whole HTTP/1.1 answer, or `HTTP/2 {status}`.
    async fn get(&self, path: &str) -> String {
        match self.transport {
            Transport::H1 | Transport::H1Tls => {
                let mut s = self.connect().await;
                let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
                s.write_all(req.as_bytes()).await.unwrap();
                read_all(&mut s).await
            }
            Transport::H2c | Transport::H2Tls => {
                let mut send = self.h2().await;
                let req = Request::get(format!("http://localhost{path}")).body(empty()).unwrap();
                let res = send.send_request(req).await.unwrap();
                format!("HTTP/2 {}", res.status().as_u16())
            }
        }
    }
}

fn empty() -> TestBody {
    http_body_util::Empty::new().map_err(|e| match e {}).boxed()
}

/// Reads until the peer closes or 5 s pass.
async fn read_all(s: &mut Box<dyn Stream>) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A request body the test feeds by hand; an `Err` item makes the client reset the stream.
type Feed = tokio::sync::mpsc::Sender<Result<Frame<Bytes>, std::convert::Infallible>>;

fn fed_body() -> (Feed, TestBody) {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) });
    (tx, StreamBody::new(stream).boxed())
}

/// Access-log lines of `status` (waits up to 5 s for `want` of them).
async fn logged_with_status(gw: &Gateway, status: u64, want: usize) -> usize {
    let count = || gw.access_log().iter().filter(|l| l["statusCode"] == status).count();
    Gateway::eventually(Duration::from_secs(5), || async { count() >= want }).await;
    count()
}

const ROUNDS: usize = 6;

#[tokio::test]
async fn a_malformed_request_body_is_the_clients_400_on_every_listener() {
    for t in ALL {
        let s = Setup::start(t).await;
        for _ in 0..ROUNDS {
            match t {
                Transport::H1 | Transport::H1Tls => {
                    // `ZZ` is no chunk size.
                    let mut c = s.connect().await;
                    let req = "POST /upload HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\nhello\r\n0\r\n\r\n";
                    c.write_all(req.as_bytes()).await.unwrap();
                    let answer = read_all(&mut c).await;
                    assert!(
                        answer.is_empty() || answer.starts_with("HTTP/1.1 400"),
                        "{t:?}: a malformed chunked body: {answer}"
                    );
                }
                Transport::H2c | Transport::H2Tls => {
                    // A declared length the DATA frames do not match (RFC 9113 section 8.1.1).
                    let mut send = s.h2().await;
                    let (tx, body) = fed_body();
                    let req =
                        Request::post("http://localhost/upload").header("content-length", "1000").body(body).unwrap();
                    let res = tokio::spawn(send.send_request(req));
                    tx.send(Ok(Frame::data(Bytes::from_static(b"0123456789")))).await.unwrap();
                    drop(tx);
                    let res = tokio::time::timeout(Duration::from_secs(5), res).await.unwrap().unwrap();
                    if let Ok(r) = res {
                        assert_eq!(r.status(), 400, "{t:?}: a body shorter than its content-length");
                    }
                }
            }
        }
        s.assert_upstream_untouched("malformed bodies").await;
        // An HTTP/2 stream with a broken body is reset at once, so that request may end as
        // the client's 499 rather than a 400 nobody can receive: the client's, either way.
        let client_side =
            || s.gw.access_log().iter().filter(|l| l["statusCode"] == 400 || l["statusCode"] == 499).count();
        Gateway::eventually(Duration::from_secs(5), || async { client_side() >= ROUNDS }).await;
        assert_eq!(client_side(), ROUNDS, "{t:?}: every one logged as the client's: {:?}", s.gw.access_log());
        if matches!(t, Transport::H1 | Transport::H1Tls) {
            assert_eq!(logged_with_status(&s.gw, 400, ROUNDS).await, ROUNDS, "{t:?}: every one logged as 400");
        }
    }
}

#[tokio::test]
async fn a_client_that_hangs_up_mid_upload_is_logged_as_499_on_every_listener() {
    for t in ALL {
        let s = Setup::start(t).await;
        for i in 0..ROUNDS {
            let before = s.hits();
            match t {
                Transport::H1 | Transport::H1Tls => {
                    let mut c = s.connect().await;
                    let req = "POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000\r\n\r\n0123456789";
                    c.write_all(req.as_bytes()).await.unwrap();
                    // The upload has reached the upstream; then the client is gone.
                    s.wait_hits(before + 1).await;
                    drop(c);
                }
                Transport::H2c | Transport::H2Tls => {
                    let mut send = s.h2().await;
                    let (tx, body) = fed_body();
                    let req = Request::post("http://localhost/upload").body(body).unwrap();
                    let res = tokio::spawn(send.send_request(req));
                    tx.send(Ok(Frame::data(Bytes::from_static(b"0123456789")))).await.unwrap();
                    s.wait_hits(before + 1).await;
                    // Every other round resets the stream only, the others close the
                    // whole connection.
                    if i % 2 == 0 {
                        res.abort();
                        drop(tx);
                        drop(send);
                    } else {
                        drop(send);
                        res.abort();
                        drop(tx);
                    }
                }
            }
        }
        let aborts = "gateway_client_aborts_total{route=\"all\"}";
        let counted =
            Gateway::eventually(Duration::from_secs(5), || async { s.gw.metric(aborts).await >= ROUNDS as f64 }).await;
        assert!(counted, "{t:?}: client aborts counted: {}", s.gw.metric(aborts).await);
        assert_eq!(logged_with_status(&s.gw, 499, ROUNDS).await, ROUNDS, "{t:?}: every one logged as 499");
        s.assert_upstream_untouched("abandoned uploads").await;
    }
}

#[tokio::test]
async fn a_client_that_stops_reading_a_response_leaves_the_upstream_untouched() {
    for t in ALL {
        let s = Setup::start(t).await;
        for _ in 0..ROUNDS {
            match t {
                Transport::H1 | Transport::H1Tls => {
                    let mut c = s.connect().await;
                    c.write_all(b"GET /stream?bytes=50000000 HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
                    let mut buf = vec![0u8; 16 * 1024];
                    let n = c.read(&mut buf).await.unwrap();
                    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"), "{t:?}");
                    drop(c);
                }
                Transport::H2c | Transport::H2Tls => {
                    let mut send = s.h2().await;
                    let req = Request::get("http://localhost/stream?bytes=50000000").body(empty()).unwrap();
                    let res = send.send_request(req).await.unwrap();
                    assert_eq!(res.status(), 200, "{t:?}");
                    let mut body = res.into_body();
                    let first = body.frame().await;
                    assert!(first.is_some_and(|f| f.is_ok()), "{t:?}: the first bytes arrive");
                    drop(body);
                    drop(send);
                }
            }
        }
        s.assert_upstream_untouched("responses not read to the end").await;
        // The log phase ran when the client went away: each line says so, with the bytes
        // that left before it did.
        let aborted = || {
            s.gw.access_log()
                .into_iter()
                .filter(|l| l["path"] == "/stream" && l["completion"] == "client_abort")
                .collect::<Vec<_>>()
        };
        Gateway::eventually(Duration::from_secs(5), || async { aborted().len() >= ROUNDS }).await;
        let lines = aborted();
        assert_eq!(lines.len(), ROUNDS, "{t:?}: {:?}", s.gw.access_log());
        for l in &lines {
            let sent = l["bytesSent"].as_u64().unwrap_or(u64::MAX);
            assert!(sent < 50_000_000, "{t:?}: {l}");
            assert_eq!(l["statusCode"], 200, "{t:?}: the head was sent: {l}");
            assert!(l["durationMs"].as_f64() >= l["latencyMs"].as_f64(), "{t:?}: {l}");
        }
        // A response read to its end is complete, with every byte counted.
        let after = || s.gw.access_log().into_iter().find(|l| l["path"] == "/after").unwrap_or_default();
        Gateway::eventually(Duration::from_secs(5), || async { !after().is_null() }).await;
        let after = after();
        assert_eq!(after["completion"], "complete", "{t:?}: {after}");
        assert!(after["bytesSent"].as_u64().is_some_and(|n| n > 100), "{t:?}: {after}");
    }
}

/// An upstream that declares 100 body bytes, sends 10 and hangs up.
async fn truncating_upstream() -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = c.read(&mut buf).await;
                let _ = c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789").await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn an_upstream_that_breaks_off_its_body_is_logged_as_such() {
    let addr = truncating_upstream().await;
    let gw = Gateway::start(&config(&format!(
        "upstreams:\n  u: {{ targets: [{{ url: \"http://{addr}\" }}] }}\nroutes:\n  - {{ name: all, match: {{ prefix: / }}, upstream: u }}\n"
    )));
    for proto in ["--http1.1", "--http2-prior-knowledge"] {
        let (_, out) =
            curl(&["-s", "-o", "/dev/null", "-w", "%{http_code} %{size_download}", proto, &gw.url("/cut")]).await;
        // HTTP/1.1: the head, then the connection closes short of the length. HTTP/2: the
        // stream is reset, which curl may report before the head it carried.
        if proto == "--http1.1" {
            assert!(out.starts_with("200"), "{proto}: {out}");
        }
    }
    let cut = || gw.access_log().into_iter().filter(|l| l["completion"] == "upstream_abort").collect::<Vec<_>>();
    Gateway::eventually(Duration::from_secs(5), || async { cut().len() >= 2 }).await;
    let lines = cut();
    assert_eq!(lines.len(), 2, "{:?}", gw.access_log());
    for l in lines {
        assert!(l["bytesSent"].as_u64().is_some_and(|n| n <= 10), "{l}");
    }
}

#[tokio::test]
async fn a_client_that_stalls_mid_upload_gets_408_and_leaves_the_upstream_untouched() {
    for t in ALL {
        let s = Setup::start(t).await;
        for _ in 0..ROUNDS {
            match t {
                Transport::H1 | Transport::H1Tls => {
                    let mut c = s.connect().await;
                    let req = "POST /stall HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000\r\n\r\n0123456789";
                    c.write_all(req.as_bytes()).await.unwrap();
                    // The rest of the body never comes; the route's 1 s deadline passes.
                    let answer = read_all(&mut c).await;
                    assert!(answer.starts_with("HTTP/1.1 408"), "{t:?}: {answer}");
                    assert!(answer.contains("request body not received in time"), "{t:?}: {answer}");
                }
                Transport::H2c | Transport::H2Tls => {
                    let mut send = s.h2().await;
                    let (tx, body) = fed_body();
                    let req = Request::post("http://localhost/stall").body(body).unwrap();
                    let res = tokio::spawn(send.send_request(req));
                    tx.send(Ok(Frame::data(Bytes::from_static(b"0123456789")))).await.unwrap();
                    let res = tokio::time::timeout(Duration::from_secs(5), res).await.unwrap().unwrap().unwrap();
                    assert_eq!(res.status(), 408, "{t:?}");
                    drop(tx);
                }
            }
        }
        assert_eq!(logged_with_status(&s.gw, 408, ROUNDS).await, ROUNDS, "{t:?}: every one logged as 408");
        s.assert_upstream_untouched("stalled uploads").await;
    }
}

#[tokio::test]
async fn an_upstream_that_stops_reading_the_body_is_still_the_upstreams_timeout() {
    // `/slow` answers after a while and reads no body: a body larger than the socket
    // buffers leaves the gateway waiting on the upstream, not on the client, which keeps
    // sending.
    let s = Setup::start(Transport::H1).await;
    let mut c = s.connect().await;
    let n = 16 << 20;
    let head = format!("POST /slow?ms=3000 HTTP/1.1\r\nHost: localhost\r\nContent-Length: {n}\r\n\r\n");
    let (mut rd, mut wr) = tokio::io::split(c);
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(head.as_bytes()).await;
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..n / chunk.len() {
            if wr.write_all(&chunk).await.is_err() {
                break;
            }
        }
    });
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), rd.read_to_end(&mut out)).await;
    writer.abort();
    let answer = String::from_utf8_lossy(&out);
    assert!(answer.starts_with("HTTP/1.1 504"), "{answer}");
    let (_, _, text) = get(&s.gw.admin_url("/metrics")).await;
    assert!(
        text.lines()
            .any(|l| l.starts_with("gateway_backend_errors_total{") && l.contains("timeout") && !l.ends_with(" 0")),
        "counted against the upstream:\n{text}"
    );
    c = s.connect().await;
    drop(c);
}
