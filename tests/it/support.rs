//! Test harness: real upstream servers on loopback, the real `portico` binary, clients.

#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

pub type TestBody = BoxBody<Bytes, Infallible>;

/// FNV-1a over bytes fed in any pieces: a checksum to compare a body the upstream read
/// with the one a test sent.
#[derive(Debug, Clone, Copy)]
pub struct Fnv(pub u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    pub fn add(&mut self, data: &[u8]) {
        for &b in data {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    pub fn of(data: &[u8]) -> String {
        let mut f = Fnv::default();
        f.add(data);
        format!("{:016x}", f.0)
    }
}

fn full(b: impl Into<Bytes>) -> TestBody {
    Full::new(b.into()).boxed()
}

/// A real HTTP/1.1 + h2c upstream server with behaviours chosen by path:
/// - `/slow?ms=N`: answers after N ms
/// - `/stream?bytes=N&type=T`: streams N bytes of `x` in 64 KiB chunks, with a
///   `Content-Length` (and `Content-Type: T` when given)
/// - `/drip?chunks=N&ms=M`: N small chunks, one every M ms
/// - `/upload`: reads the whole body, answers `{"bytes": N}`
/// - `/checksum`: reads the whole body, answers `{"bytes": N, "sum": "<its Fnv>"}`
/// - `/refuse-body`: answers 413 at once, reading none of the body
/// - `/echo-body`: answers the request's body, with its `Content-Type`
/// - `/status/N`: answers status N
/// - `/headers?name=value&..`: answers 200 with those response headers (a header named
///   twice is sent twice; `%20` is a space, nothing else is decoded)
/// - `/ws`: WebSocket echo
/// - anything else: JSON echo of method, path, query, headers, body length, and the
///   server's name
pub struct TestUpstream {
    pub addr: SocketAddr,
    pub name: String,
    pub hits: Arc<AtomicUsize>,
    pub last_headers: Arc<Mutex<Option<HeaderMap>>>,
    pub controls: Arc<Controls>,
    /// Every request but health checks: `METHOD path x-request-id`, in arrival order.
    pub seen: Arc<Mutex<Vec<String>>>,
}

/// Knobs a test turns on a running upstream.
#[derive(Default)]
pub struct Controls {
    /// Added to every answer, in ms.
    pub delay_ms: std::sync::atomic::AtomicU64,
    /// When non-zero, every request (but `/health`) gets this status.
    pub fail_status: std::sync::atomic::AtomicU16,
    /// Status of `/health` (0 means 200).
    pub health_status: std::sync::atomic::AtomicU16,
    /// Requests to `/health`.
    pub health_hits: AtomicUsize,
}

impl Controls {
    pub fn set_delay(&self, ms: u64) {
        self.delay_ms.store(ms, Ordering::SeqCst);
    }
    pub fn set_fail(&self, status: u16) {
        self.fail_status.store(status, Ordering::SeqCst);
    }
    pub fn set_health(&self, status: u16) {
        self.health_status.store(status, Ordering::SeqCst);
    }
}

impl TestUpstream {
    pub async fn start(name: &str) -> TestUpstream {
        Self::start_inner(name, None, "127.0.0.1:0").await
    }

    /// An upstream listening on `addr` (another loopback address, a chosen port).
    pub async fn start_at(name: &str, addr: &str) -> TestUpstream {
        Self::start_inner(name, None, addr).await
    }

    /// An HTTPS upstream (HTTP/1.1 and h2 by ALPN) with the given TLS settings.
    pub async fn start_tls(name: &str, tls: Arc<rustls::ServerConfig>) -> TestUpstream {
        Self::start_inner(name, Some(tokio_rustls::TlsAcceptor::from(tls)), "127.0.0.1:0").await
    }

    async fn start_inner(name: &str, tls: Option<tokio_rustls::TlsAcceptor>, addr: &str) -> TestUpstream {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let last_headers = Arc::new(Mutex::new(None));
        let controls = Arc::new(Controls::default());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (n, h, lh, c, sn) = (name.to_owned(), hits.clone(), last_headers.clone(), controls.clone(), seen.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (n, h, lh, c, sn) = (n.clone(), h.clone(), lh.clone(), c.clone(), sn.clone());
                let tls = tls.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let (n, h, lh, c, sn) = (n.clone(), h.clone(), lh.clone(), c.clone(), sn.clone());
                        async move {
                            if req.uri().path() == "/health" {
                                c.health_hits.fetch_add(1, Ordering::SeqCst);
                                let status = match c.health_status.load(Ordering::SeqCst) {
                                    0 => 200,
                                    s => s,
                                };
                                let mut r = Response::new(full("health"));
                                *r.status_mut() = StatusCode::from_u16(status).unwrap();
                                return Ok::<_, Infallible>(r);
                            }
                            h.fetch_add(1, Ordering::SeqCst);
                            *lh.lock().unwrap() = Some(req.headers().clone());
                            let id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("");
                            let proto =
                                req.headers().get("x-forwarded-proto").and_then(|v| v.to_str().ok()).unwrap_or("");
                            sn.lock().unwrap().push(format!("{} {} {id} {proto}", req.method(), req.uri().path()));
                            let delay = c.delay_ms.load(Ordering::SeqCst);
                            if delay > 0 {
                                tokio::time::sleep(Duration::from_millis(delay)).await;
                            }
                            let fail = c.fail_status.load(Ordering::SeqCst);
                            if fail != 0 {
                                let mut r = Response::new(full("failing on purpose"));
                                *r.status_mut() = StatusCode::from_u16(fail).unwrap();
                                r.headers_mut().insert("x-upstream", n.parse().unwrap());
                                return Ok(r);
                            }
                            Ok::<_, Infallible>(behave(&n, req).await)
                        }
                    });
                    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match tls {
                        None => {
                            let _ = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc).await;
                        }
                        Some(acceptor) => {
                            // A failed handshake (untrusted client) just closes the connection.
                            if let Ok(tls_stream) = acceptor.accept(stream).await {
                                let _ = builder.serve_connection_with_upgrades(TokioIo::new(tls_stream), svc).await;
                            }
                        }
                    }
                });
            }
        });
        TestUpstream { addr, name: name.to_owned(), hits, last_headers, controls, seen }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn https_url(&self) -> String {
        format!("https://{}", self.addr)
    }

    pub fn reset_hits(&self) {
        self.seen.lock().unwrap().clear();
        self.hits.store(0, Ordering::SeqCst);
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Waits up to 5 s until this upstream has counted `n` requests (counted on arrival:
    /// they are in flight from then on).
    pub async fn wait_hits(&self, n: usize) -> bool {
        Gateway::eventually(Duration::from_secs(5), || async { self.hits() >= n }).await
    }

    pub fn last_headers(&self) -> HeaderMap {
        self.last_headers.lock().unwrap().clone().unwrap_or_default()
    }
}

fn query_param(req: &Request<Incoming>, key: &str) -> Option<u64> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.parse().ok()).flatten()
    })
}

async fn behave(name: &str, mut req: Request<Incoming>) -> Response<TestBody> {
    let path = req.uri().path().to_owned();
    let mut res = if path.starts_with("/slow") {
        let ms = query_param(&req, "ms").unwrap_or(1000);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Response::new(full(format!("slept {ms}ms")))
    } else if path.starts_with("/stream") {
        let total = query_param(&req, "bytes").unwrap_or(1024);
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        let stream = futures_util::stream::unfold(total, move |left| {
            let chunk = chunk.clone();
            async move {
                if left == 0 {
                    return None;
                }
                let n = left.min(chunk.len() as u64);
                Some((Ok::<_, Infallible>(Frame::data(chunk.slice(..n as usize))), left - n))
            }
        });
        let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
        r.headers_mut().insert("content-length", total.to_string().parse().unwrap());
        if let Some(ty) = req.uri().query().and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("type="))) {
            r.headers_mut().insert("content-type", ty.parse().unwrap());
        }
        r
    } else if path.starts_with("/drip") {
        let chunks = query_param(&req, "chunks").unwrap_or(10);
        let ms = query_param(&req, "ms").unwrap_or(100);
        let stream = futures_util::stream::unfold(0u64, move |i| async move {
            if i == chunks {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Some((Ok::<_, Infallible>(Frame::data(Bytes::from(format!("chunk {i}\n")))), i + 1))
        });
        Response::new(BodyExt::boxed(StreamBody::new(stream)))
    } else if path == "/upload" || path == "/checksum" {
        let mut body = req.into_body();
        let (mut n, mut sum): (u64, Fnv) = (0, Fnv::default());
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => {
                    let data = f.data_ref().map_or(&[][..], |d| &d[..]);
                    n += data.len() as u64;
                    sum.add(data);
                }
                Err(_) => break,
            }
        }
        if path == "/upload" {
            return Response::new(full(format!("{{\"bytes\":{n}}}")));
        }
        return Response::new(full(format!("{{\"bytes\":{n},\"sum\":\"{:016x}\"}}", sum.0)));
    } else if path == "/echo-body" {
        let ct = req.headers().get("content-type").cloned();
        let body = req.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
        let mut r = Response::new(full(body));
        if let Some(ct) = ct {
            r.headers_mut().insert("content-type", ct);
        }
        r.headers_mut().insert("etag", http::HeaderValue::from_static("\"upstream\""));
        return r;
    } else if path == "/refuse-body" {
        let mut r = Response::new(full("body refused unread"));
        *r.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
        return r;
    } else if let Some(code) = path.strip_prefix("/status/") {
        let mut r = Response::new(full(format!("status {code}")));
        *r.status_mut() =
            StatusCode::from_u16(code.parse().unwrap_or(500)).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        r
    } else if path == "/headers" {
        let mut r = Response::new(full("headers set"));
        for (k, v) in req.uri().query().unwrap_or("").split('&').filter_map(|kv| kv.split_once('=')) {
            let v = v.replace("%20", " ");
            r.headers_mut().append(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        r
    } else if path == "/ws" {
        let key = req.headers().get("sec-websocket-key").cloned();
        let Some(key) = key else {
            let mut r = Response::new(full("not a websocket request"));
            *r.status_mut() = StatusCode::BAD_REQUEST;
            return r;
        };
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let Ok(upgraded) = on_upgrade.await else { return };
            let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                TokioIo::new(upgraded),
                tokio_tungstenite::tungstenite::protocol::Role::Server,
                None,
            )
            .await;
            let (mut tx, mut rx) = ws.split();
            while let Some(Ok(msg)) = rx.next().await {
                if msg.is_close() {
                    break;
                }
                if tx.send(msg).await.is_err() {
                    break;
                }
            }
        });
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        let mut r = Response::new(full(""));
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        r.headers_mut().insert("upgrade", "websocket".parse().unwrap());
        r.headers_mut().insert("connection", "Upgrade".parse().unwrap());
        r.headers_mut().insert("sec-websocket-accept", accept.parse().unwrap());
        return r;
    } else {
        let headers: HashMap<String, String> =
            req.headers().iter().map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned())).collect();
        let method = req.method().to_string();
        let query = req.uri().query().map(str::to_owned);
        let version = format!("{:?}", req.version());
        let body = req.into_body().collect().await.map(|b| b.to_bytes().len()).unwrap_or(0);
        let v = serde_json::json!({
            "upstream": name, "method": method, "path": path, "query": query,
            "headers": headers, "bodyBytes": body, "version": version,
        });
        Response::new(full(v.to_string()))
    };
    res.headers_mut().insert("x-upstream", name.parse().unwrap());
    res
}

/// The `portico` binary, started with a YAML config; stopped (SIGKILL) when dropped.
pub struct Gateway {
    pub child: Option<Child>,
    pub addrs: HashMap<String, SocketAddr>,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub stderr: Arc<Mutex<Vec<String>>>,
}

/// A config with a `public` listener on a free port, the admin on a free port, the
/// access log in a file, and `body` appended (upstreams, routes).
pub fn config(body: &str) -> String {
    format!(
        "version: 1\nlisteners:\n  - name: public\n    bind: 127.0.0.1:0\nadmin:\n  bind: 127.0.0.1:0\naccess_log:\n  output: ACCESS_LOG\n{body}"
    )
}

impl Gateway {
    /// Starts the binary with `yaml` (ACCESS_LOG is replaced by a file in a temp dir) and
    /// waits until every listener and the admin report their addresses.
    pub fn start(yaml: &str) -> Gateway {
        Self::start_with_env(yaml, &[])
    }

    pub fn start_with_env(yaml: &str, env: &[(&str, &str)]) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("access.log");
        let yaml = yaml.replace("ACCESS_LOG", log.to_str().unwrap());
        let config_path = dir.path().join("portico.yaml");
        std::fs::write(&config_path, &yaml).unwrap();
        let expected = yaml.matches("bind:").count();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_portico"));
        cmd.args(["run", "-c", config_path.to_str().unwrap()])
            .env("PORTICO_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start portico");
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let l2 = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                l2.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        let mut addrs = HashMap::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while addrs.len() < expected {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some((name, addr)) = parse_listening(&line) {
                        addrs.insert(name, addr);
                    }
                }
                Err(_) => panic!("gateway did not start; stderr:\n{}", lines.lock().unwrap().join("\n")),
            }
        }
        Gateway { child: Some(child), addrs, dir, config_path, stderr: lines }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addrs["public"]
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr())
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addrs["admin"])
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    pub fn signal(&self, sig: i32) {
        let r = Command::new("kill").args([&format!("-{sig}"), &self.pid().to_string()]).status().unwrap();
        assert!(r.success());
    }

    pub fn access_log(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default();
        // A line being written as this reads is not complete yet: skip it.
        text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// Rewrites the config file (atomically, by rename).
    pub fn write_config(&self, yaml: &str) {
        let log = self.dir.path().join("access.log");
        let yaml = yaml.replace("ACCESS_LOG", log.to_str().unwrap());
        let tmp = self.dir.path().join("portico.yaml.tmp");
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(&tmp, &self.config_path).unwrap();
    }

    /// Waits for the process to exit and returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let child = self.child.as_mut().unwrap();
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code();
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            #[allow(clippy::disallowed_methods)] // called from spawn_blocking, off the runtime
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Current value of a Prometheus series, 0 when absent.
    pub async fn metric(&self, series: &str) -> f64 {
        let (_, _, body) = get(&self.admin_url("/metrics")).await;
        body.lines()
            .find_map(|l| {
                l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')).map(|v| v.trim().parse().unwrap())
            })
            .unwrap_or(0.0)
    }

    /// Waits up to 5 s until the gateway's stderr holds `needle`. Log lines are written
    /// by the gateway's logging thread and read by this process's reader thread, so a
    /// line may trail the answer or the metric that its event also produced.
    pub async fn logged(&self, needle: &str) -> bool {
        Self::eventually(Duration::from_secs(5), || async { self.stderr_text().contains(needle) }).await
    }

    /// Polls until `f` holds or `timeout` passes.
    pub async fn eventually<F, Fut>(timeout: Duration, mut f: F) -> bool
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if f().await {
                return true;
            }
            if tokio::time::Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn parse_listening(line: &str) -> Option<(String, SocketAddr)> {
    if !line.contains("listening") {
        return None;
    }
    let field =
        |k: &str| line.split_whitespace().find_map(|w| w.strip_prefix(k)).map(|v| v.trim_matches('"').to_owned());
    Some((field("listener=")?, field("addr=")?.parse().ok()?))
}

/// A shared HTTP/1.1 client with keep-alive.
pub fn client() -> hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>> {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http()
}

/// GET `url` and return status, headers, body.
pub async fn get(url: &str) -> (StatusCode, HeaderMap, String) {
    send(Request::get(url).body(Full::new(Bytes::new())).unwrap()).await
}

/// GET `url` with `headers`.
pub async fn get_with(url: &str, headers: &[(&str, &str)]) -> (StatusCode, HeaderMap, String) {
    let mut b = Request::get(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(b.body(Full::new(Bytes::new())).unwrap()).await
}

pub async fn send(req: Request<Full<Bytes>>) -> (StatusCode, HeaderMap, String) {
    let res = client().request(req).await.expect("request failed");
    let status = res.status();
    let headers = res.headers().clone();
    let body = res.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

pub fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

/// Runs curl with `args` off the async runtime (the test's upstreams live on it);
/// returns (exit ok, stdout).
pub async fn curl(args: &[&str]) -> (bool, String) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    run_tool("curl", &["-s", "--max-time", "20"], args).await
}

/// Runs a command off the async runtime; returns (exit ok, stdout).
pub async fn run_tool(program: &str, first: &[&str], args: Vec<String>) -> (bool, String) {
    let program = program.to_owned();
    let first: Vec<String> = first.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let out = Command::new(&program)
            .args(&first)
            .args(&args)
            .output()
            .unwrap_or_else(|e| panic!("{program} must be installed: {e}"));
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
    })
    .await
    .unwrap()
}

/// Resident set size of a process, in bytes.
pub fn rss_bytes(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

/// What `portico validate` prints for `yaml`, which must be refused.
pub fn validation_errors(yaml: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let f = write_temp(dir.path(), "bad.yaml", yaml);
    let out = portico().args(["validate", f.to_str().unwrap()]).output().unwrap();
    assert!(!out.status.success(), "the config was accepted");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// SHA-256 hex of an API key, by `portico hash-key` (the command operators use).
pub fn hash_key(key: &str) -> String {
    use std::io::Write;
    let mut child = portico().arg("hash-key").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    writeln!(child.stdin.take().unwrap(), "{key}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

pub fn portico() -> Command {
    Command::new(env!("CARGO_BIN_EXE_portico"))
}

pub fn write_temp(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// A test PKI made fresh for each test: a CA, a server certificate for
/// `upstream.internal`, `localhost` and 127.0.0.1, and a client certificate, all signed by
/// the CA; PEM files in a temp dir.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca_pem: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// The server certificate (for `upstream.internal`, `localhost`, 127.0.0.1) and its
    /// key, as PEM files, for servers the tests start as child processes.
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    ca_der: rustls_pki_types::CertificateDer<'static>,
    server_chain: Vec<rustls_pki_types::CertificateDer<'static>>,
    server_key_der: Vec<u8>,
}

impl Pki {
    pub fn new() -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType};
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, "Portico Test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();

        let mut server_params =
            CertificateParams::new(vec!["upstream.internal".to_owned(), "localhost".to_owned()]).unwrap();
        server_params.subject_alt_names.push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        let server_key = KeyPair::generate().unwrap();
        let server = server_params.signed_by(&server_key, &ca).unwrap();

        let mut client_params = CertificateParams::new(vec!["portico-gateway".to_owned()]).unwrap();
        client_params.distinguished_name.push(DnType::CommonName, "portico-gateway");
        let client_key = KeyPair::generate().unwrap();
        let client = client_params.signed_by(&client_key, &ca).unwrap();

        let dir = tempfile::tempdir().unwrap();
        let ca_pem = write_temp(dir.path(), "ca.pem", &ca.pem());
        let client_cert = write_temp(dir.path(), "client.pem", &client.pem());
        let client_key_path = write_temp(dir.path(), "client.key", &client_key.serialize_pem());
        let server_cert = write_temp(dir.path(), "server.pem", &server.pem());
        let server_key_pem = write_temp(dir.path(), "server.key", &server_key.serialize_pem());
        Pki {
            server_cert,
            server_key: server_key_pem,
            ca_pem,
            client_cert,
            client_key: client_key_path,
            ca_der: ca.der().clone(),
            server_chain: vec![server.der().clone()],
            server_key_der: server_key.serialize_der(),
            dir,
        }
    }

    /// Server TLS settings; with `require_client_cert`, clients must present a
    /// certificate signed by this CA.
    pub fn server_config(&self, require_client_cert: bool) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = if require_client_cert {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(self.ca_der.clone()).unwrap();
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build().unwrap();
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let key = rustls_pki_types::PrivateKeyDer::try_from(self.server_key_der.clone()).unwrap();
        let mut config = builder.with_single_cert(self.server_chain.clone(), key).unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

/// A real `redis-server` on a free loopback port, without persistence; killed when dropped.
/// `stop` and `restart` (same port) play an outage.
pub struct RedisServer {
    child: Option<Child>,
    /// The plain port (the tests' own commands use it).
    pub port: u16,
    /// With `start_tls` (or a TLS cluster): its TLS port and files.
    tls: Option<RedisTlsFiles>,
    /// A Redis Cluster node (its cluster bus on `port` + 10000, or the TLS port + 10000
    /// in a TLS cluster).
    cluster: bool,
    /// Every write in the append-only file, synced before the reply (`appendfsync
    /// always`): what was acknowledged survives a kill and a restart.
    durable: bool,
    dir: tempfile::TempDir,
}

/// The TLS side of a test redis-server.
struct RedisTlsFiles {
    port: u16,
    cert: PathBuf,
    key: PathBuf,
    /// The CA of client certificates (and, in a cluster, of the other nodes).
    ca: PathBuf,
    /// Whether clients must present a certificate.
    client_auth: bool,
}

impl RedisTlsFiles {
    fn new(port: u16, pki: &Pki, client_auth: bool) -> Self {
        Self { port, cert: pki.server_cert.clone(), key: pki.server_key.clone(), ca: pki.ca_pem.clone(), client_auth }
    }
}

/// A free loopback port: the OS picks it; the listener is dropped just before the server
/// binds it.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let mut r = RedisServer {
            child: None,
            port: free_port(),
            tls: None,
            cluster: false,
            durable: false,
            dir: tempfile::tempdir().unwrap(),
        };
        r.restart();
        r
    }

    /// A server whose acknowledged writes survive [`RedisServer::stop`] and a restart.
    pub fn start_durable() -> RedisServer {
        let mut r = RedisServer {
            child: None,
            port: free_port(),
            tls: None,
            cluster: false,
            durable: true,
            dir: tempfile::tempdir().unwrap(),
        };
        r.restart();
        r
    }

    /// Also serving TLS with `pki`'s server certificate; with `client_auth`, only to
    /// clients with a certificate from `pki`'s CA.
    pub fn start_tls(pki: &Pki, client_auth: bool) -> RedisServer {
        let tls = Some(RedisTlsFiles::new(free_port(), pki, client_auth));
        let mut r = RedisServer {
            child: None,
            port: free_port(),
            tls,
            cluster: false,
            durable: false,
            dir: tempfile::tempdir().unwrap(),
        };
        r.restart();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The `rediss://` URL of the TLS port.
    pub fn tls_url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.tls.as_ref().unwrap().port)
    }

    /// Starts redis (again) on the same port and waits until it answers PING.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "redis is running");
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(match self.durable {
                true => ["--appendonly", "yes", "--appendfsync", "always"].as_slice(),
                false => ["--appendonly", "no"].as_slice(),
            })
            .arg("--dir")
            .arg(self.dir.path());
        if let Some(t) = &self.tls {
            cmd.args(["--tls-port", &t.port.to_string(), "--tls-cert-file"])
                .arg(&t.cert)
                .arg("--tls-key-file")
                .arg(&t.key);
            cmd.arg("--tls-ca-cert-file").arg(&t.ca);
            cmd.args(["--tls-auth-clients", if t.client_auth { "yes" } else { "no" }]);
            if self.cluster {
                // The cluster bus speaks TLS too; TLS clients are told the TLS ports.
                cmd.args(["--tls-cluster", "yes"]);
            }
        }
        if self.cluster {
            // nodes.conf stays in `dir`: a restarted node rejoins with its slots (its
            // data is gone: no persistence). A short node timeout makes a test's outage
            // visible quickly. The bus port is the default, port + 10000
            // (`--cluster-port` would need Redis 7).
            cmd.args(["--cluster-enabled", "yes", "--cluster-node-timeout", "1000"]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("redis-server must be installed (scripts/test.sh installs it): {e}"));
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if self.try_cmd(&["PING"]).is_ok_and(|r| r == "PONG") {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "redis-server did not answer PING on port {}", self.port);
            #[allow(clippy::disallowed_methods)] // a readiness poll in a sync helper
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills redis (an outage: connections reset, data gone).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Runs one command and returns its reply as text (simple string, integer or bulk;
    /// nil is empty). Panics on an error reply.
    pub fn cmd(&self, args: &[&str]) -> String {
        self.try_cmd(args).unwrap()
    }

    fn try_cmd(&self, args: &[&str]) -> std::io::Result<String> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(req.as_bytes())?;
        let mut r = BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line)?;
        let line = line.trim_end();
        let (kind, rest) = line.split_at(1);
        match kind {
            "+" | ":" => Ok(rest.to_owned()),
            // An error reply (`-LOADING` while a restarted server reads its append-only
            // file, too): `restart` waits it out, `cmd` panics with it.
            "-" => Err(std::io::Error::other(format!("redis error reply to {args:?}: {rest}"))),
            "$" if rest == "-1" => Ok(String::new()),
            "$" => {
                let n: usize = rest.parse().unwrap();
                let mut buf = vec![0; n + 2];
                r.read_exact(&mut buf)?;
                buf.truncate(n);
                Ok(String::from_utf8_lossy(&buf).into_owned())
            }
            _ => panic!("unexpected redis reply to {args:?}: {line}"),
        }
    }

    /// How many times `command` (lower case) ran, from `INFO commandstats`.
    pub fn calls(&self, command: &str) -> u64 {
        let info = self.cmd(&["INFO", "commandstats"]);
        let prefix = format!("cmdstat_{command}:calls=");
        info.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |n| n.parse().unwrap())
    }
}

/// A Redis Cluster of real `redis-server` nodes on loopback, each a primary with a third of
/// the slots (no replicas), made with `redis-cli --cluster create`.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start(n: usize) -> RedisCluster {
        let mut c = Self::planned(n);
        c.create();
        c
    }

    /// Nodes with their ports chosen, none started yet (see [`RedisCluster::create`]).
    pub fn planned(n: usize) -> RedisCluster {
        Self::planned_with(n, None)
    }

    /// A cluster whose nodes also serve TLS with `pki`'s certificate, and talk TLS to
    /// each other; the tests' own commands use the plain ports.
    pub fn start_tls(n: usize, pki: &Pki) -> RedisCluster {
        let mut c = Self::planned_with(n, Some(pki));
        c.create();
        c
    }

    fn planned_with(n: usize, pki: Option<&Pki>) -> RedisCluster {
        // A free port whose bus port (+10000) is free too, both below the kernel's ephemeral
        // range (32768 and up): a port handed out for `bind(0)` or an outgoing connection
        // could otherwise take the bus port between this check and the node's start (a CI
        // run once saw "the cluster did not become ok" that way). One counter for the test
        // process, so parallel tests never plan the same port.
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let bus_port = || loop {
            let offset = (std::process::id() as usize * 7 + NEXT.fetch_add(1, Ordering::Relaxed)) % 2_700;
            let p = 20_000 + offset as u16;
            if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()
                && std::net::TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok()
            {
                break p;
            }
        };
        let nodes = (0..n)
            .map(|_| {
                let (port, tls) = match pki {
                    None => (bus_port(), None),
                    Some(pki) => (free_port(), Some(RedisTlsFiles::new(bus_port(), pki, false))),
                };
                RedisServer { child: None, port, tls, cluster: true, durable: false, dir: tempfile::tempdir().unwrap() }
            })
            .collect();
        RedisCluster { nodes }
    }

    /// Starts the planned nodes and makes them a cluster.
    pub fn create(&mut self) {
        for r in &mut self.nodes {
            r.restart();
        }
        let mut cli = Command::new("redis-cli");
        // Over TLS when the nodes speak it: they then announce their TLS ports.
        if let Some(t) = &self.nodes[0].tls {
            cli.args(["--tls", "--cacert"]).arg(&t.ca);
        }
        let out = cli
            .arg("--cluster")
            .arg("create")
            .args(self.nodes.iter().map(|r| format!("127.0.0.1:{}", r.tls.as_ref().map_or(r.port, |t| t.port))))
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli must be installed (scripts/test.sh installs redis-server, which has it)");
        assert!(out.status.success(), "redis-cli --cluster create: {}", String::from_utf8_lossy(&out.stdout));
        self.wait_ok();
    }

    /// The index of the node that serves `key`'s slot, from `CLUSTER NODES`.
    pub fn owner_of(&self, key: &str) -> usize {
        let slot: u16 = self.nodes[0].cmd(&["CLUSTER", "KEYSLOT", key]).parse().unwrap();
        let table = self.nodes[0].cmd(&["CLUSTER", "NODES"]);
        for line in table.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            let port: u16 = fields[1].split(['@', ',']).next().unwrap().rsplit(':').next().unwrap().parse().unwrap();
            let serves = fields[8..].iter().any(|r| match r.split_once('-') {
                Some((a, b)) => (a.parse().unwrap()..=b.parse().unwrap()).contains(&slot),
                None => r.parse::<u16>().is_ok_and(|s| s == slot),
            });
            if serves {
                return self.nodes.iter().position(|n| n.port == port).unwrap();
            }
        }
        panic!("no node serves slot {slot}:\n{table}");
    }

    /// The nodes' URLs, as `redis.cluster` takes them (`rediss://` in a TLS cluster).
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|r| if r.tls.is_some() { r.tls_url() } else { r.url() }).collect()
    }

    /// Waits until every running node says `cluster_state:ok` and knows every node.
    pub fn wait_ok(&self) {
        // Generous: the nodes gossip over their bus while the whole suite runs on two cores.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let ok = self.nodes.iter().filter(|r| r.child.is_some()).all(|r| {
                r.try_cmd(&["CLUSTER", "INFO"]).is_ok_and(|i| {
                    i.contains("cluster_state:ok") && i.contains(&format!("cluster_known_nodes:{}", self.nodes.len()))
                })
            });
            if ok {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "the cluster did not become ok");
            #[allow(clippy::disallowed_methods)] // a readiness poll in a sync helper
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Keys (of any kind) stored on each node.
    pub fn keys_per_node(&self) -> Vec<u64> {
        self.nodes.iter().map(|r| r.cmd(&["DBSIZE"]).parse().unwrap()).collect()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A self-signed certificate for `localhost`, written to `dir`: the listener's `tls:` line
/// (indented for a listener entry) and a client config that trusts it, with `alpn`.
pub struct LocalhostTls {
    /// `    tls: { certificates: [...] }\n`
    pub listener_yaml: String,
    /// What the certificate is trusted by, before ALPN is set.
    roots: rustls::RootCertStore,
}

impl LocalhostTls {
    pub fn new(dir: &Path) -> LocalhostTls {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let cert = write_temp(dir, "gw.pem", &ck.cert.pem());
        let key = write_temp(dir, "gw.key", &ck.signing_key.serialize_pem());
        let listener_yaml =
            format!("    tls: {{ certificates: [{{ cert: \"{}\", key: \"{}\" }}] }}\n", cert.display(), key.display());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ck.cert.der().clone()).unwrap();
        LocalhostTls { listener_yaml, roots }
    }

    /// A client config trusting the certificate and offering `alpn` (`b"h2"`, `b"http/1.1"`).
    pub fn client(&self, alpn: &[u8]) -> Arc<rustls::ClientConfig> {
        let mut c =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(self.roots.clone())
                .with_no_client_auth();
        c.alpn_protocols = vec![alpn.to_vec()];
        Arc::new(c)
    }
}

/// A byte stream to a listener: TCP, or TLS over it.
pub trait RawStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> RawStream for T {}

/// A gateway whose one listener is plain or TLS (a `localhost` certificate), and raw
/// connections to it, for tests that write HTTP/1.1 bytes by hand.
pub struct RawListener {
    pub gw: Gateway,
    tls: Option<tokio_rustls::TlsConnector>,
    _dir: tempfile::TempDir,
}

impl RawListener {
    /// Starts a gateway from the config `yaml` makes of the listener's TLS lines (empty
    /// when `tls` is false; to be put under the listener, after its `bind`).
    pub fn start(tls: bool, yaml: impl FnOnce(&str) -> String) -> RawListener {
        Self::start_with_env(tls, &[], yaml)
    }

    /// [`RawListener::start`] with environment variables for the gateway.
    pub fn start_with_env(tls: bool, env: &[(&str, &str)], yaml: impl FnOnce(&str) -> String) -> RawListener {
        let dir = tempfile::tempdir().unwrap();
        let (section, connector) = if tls {
            let t = LocalhostTls::new(dir.path());
            (t.listener_yaml.clone(), Some(tokio_rustls::TlsConnector::from(t.client(b"http/1.1"))))
        } else {
            (String::new(), None)
        };
        RawListener { gw: Gateway::start_with_env(&yaml(&section), env), tls: connector, _dir: dir }
    }

    /// A new connection to the listener, through TLS when it has it.
    pub async fn connect(&self) -> Box<dyn RawStream> {
        let tcp = tokio::net::TcpStream::connect(self.gw.addr()).await.unwrap();
        match &self.tls {
            None => Box::new(tcp),
            Some(c) => {
                let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
                Box::new(c.connect(name, tcp).await.unwrap())
            }
        }
    }
}
