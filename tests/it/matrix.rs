//! The behaviour tests over every transport, as linkerd2-proxy's `http1_tests!` does: each
//! scenario runs over the HTTP/1.1 fast path (the lean loop, no body), HTTP/1.1 with a body
//! (the lean loop's body path), h2c (prior knowledge), TLS with HTTP/1.1 and TLS with h2, against one plain and
//! one TLS gateway started once from the same YAML. The client is curl, so every header is
//! seen as it went over the wire; each response's status line is checked against the
//! transport, so a transport that silently fell back (h2 to HTTP/1.1, say) fails.
//!
//! Where a behaviour differs by transport on purpose (413 needs a body; HSTS only on TLS;
//! HTTP/2 has no hop-by-hop headers), the scenario branches on the transport and says why.

use std::fmt;
use std::sync::Arc;

use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::support::*;

/// One way a client reaches the gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// Plain HTTP/1.1 without a body: answered by the lean loop (server/lean.rs).
    H1Fast,
    /// Plain HTTP/1.1 with a small body: the lean loop's body path.
    H1Body,
    /// Plain HTTP/2 with prior knowledge.
    H2c,
    /// TLS, ALPN `http/1.1`, no body (the lean loop again, behind TLS).
    TlsH1,
    /// TLS, ALPN `h2`.
    TlsH2,
}

impl Transport {
    pub const ALL: [Transport; 5] =
        [Transport::H1Fast, Transport::H1Body, Transport::H2c, Transport::TlsH1, Transport::TlsH2];

    pub fn tls(self) -> bool {
        matches!(self, Transport::TlsH1 | Transport::TlsH2)
    }

    pub fn h2(self) -> bool {
        matches!(self, Transport::H2c | Transport::TlsH2)
    }

    /// Whether every request on this transport carries a body (one byte when the scenario
    /// gives none), which takes the lean loop's body path rather than the bodiless one.
    pub fn with_body(self) -> bool {
        self == Transport::H1Body
    }

    pub fn scheme(self) -> &'static str {
        if self.tls() { "https" } else { "http" }
    }

    pub fn curl_args(self) -> &'static [&'static str] {
        match self {
            Transport::H1Fast | Transport::H1Body => &["--http1.1"],
            Transport::H2c => &["--http2-prior-knowledge"],
            Transport::TlsH1 => &["--http1.1", "-k"],
            Transport::TlsH2 => &["--http2", "-k"],
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::H1Fast => "http/1.1 fast path",
            Transport::H1Body => "http/1.1 with a body",
            Transport::H2c => "h2c",
            Transport::TlsH1 => "tls http/1.1",
            Transport::TlsH2 => "tls h2",
        })
    }
}

/// A response as curl printed it. Its `Display` names the transport and shows the whole
/// exchange, so `assert!(.., "{r}")` always says which transport failed.
pub struct Resp {
    pub transport: Transport,
    pub status: u16,
    /// Header names lower case, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: String,
    raw: String,
}

impl Resp {
    /// The only value of `name`; panics if it came more than once.
    pub fn header(&self, name: &str) -> Option<&str> {
        let all = self.all(name);
        assert!(all.len() <= 1, "{name} sent more than once: {self}");
        all.first().copied()
    }

    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_str()).collect()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self}"))
    }

    /// The error contract (docs/errors.md): a JSON body with `status`, a non-empty `error`
    /// and the `requestId` that is also the `X-Request-ID` header, nothing internal.
    pub fn assert_error(&self, want: u16) {
        assert_eq!(self.status, want, "{self}");
        assert_eq!(self.header("content-type"), Some("application/json"), "{self}");
        let v = self.json();
        assert_eq!(v["status"], want, "{self}");
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{self}");
        let id = self.header("x-request-id").unwrap_or_else(|| panic!("no x-request-id: {self}"));
        assert_eq!(v["requestId"], id, "{self}");
        assert!(!self.body.contains("127.0.0.1"), "internal addresses must not leak: {self}");
    }
}

impl fmt::Display for Resp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}]\n{}", self.transport, self.raw)
    }
}

/// Parses curl's `-i` output: skips interim (1xx) heads, checks the final status line's
/// version against the transport (`HTTP/1.1 200` or `HTTP/2 200`).
fn parse(t: Transport, out: String) -> Resp {
    let mut rest = out.as_str();
    loop {
        let (head, body) = rest.split_once("\r\n\r\n").unwrap_or_else(|| panic!("[{t}] no response head:\n{out}"));
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let mut words = status_line.split_whitespace();
        let version = words.next().unwrap_or_default();
        let status: u16 = words.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        if (100..200).contains(&status) {
            rest = body;
            continue;
        }
        let want = if t.h2() { "HTTP/2" } else { "HTTP/1.1" };
        assert_eq!(version, want, "[{t}] answered in another version:\n{out}");
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        return Resp { transport: t, status, headers, body: body.to_owned(), raw: out.clone() };
    }
}

/// The same config served twice: on a plain listener and on a TLS one (a self-signed
/// certificate for `localhost`, made by rcgen).
pub struct MatrixGateway {
    pub plain: Gateway,
    pub tls: Gateway,
    /// A client config that trusts the TLS gateway's certificate, ALPN `h2`.
    h2_tls: Arc<rustls::ClientConfig>,
    _dir: tempfile::TempDir,
}

impl MatrixGateway {
    /// `yaml` must have its `public` listener first, as [`config`] writes it; the TLS
    /// gateway gets a `tls:` section added to that listener.
    pub fn start(yaml: &str) -> MatrixGateway {
        let dir = tempfile::tempdir().unwrap();
        let t = LocalhostTls::new(dir.path());
        let listener = "  - name: public\n    bind: 127.0.0.1:0\n";
        assert!(yaml.contains(listener), "the matrix needs a `public` listener as config() writes it:\n{yaml}");
        let tls_yaml = yaml.replacen(listener, &format!("{listener}{}", t.listener_yaml), 1);
        MatrixGateway {
            plain: Gateway::start(yaml),
            tls: Gateway::start(&tls_yaml),
            h2_tls: t.client(b"h2"),
            _dir: dir,
        }
    }

    pub fn gateway(&self, t: Transport) -> &Gateway {
        if t.tls() { &self.tls } else { &self.plain }
    }

    /// `host:port` the client names (curl resolves `localhost` to 127.0.0.1).
    pub fn authority(&self, t: Transport) -> String {
        format!("localhost:{}", self.gateway(t).addr().port())
    }

    /// One request over `t`. On the body transport a scenario without a body sends one
    /// byte; a body on the fast path is a mistake in the scenario (it would not be the
    /// fast path), so it panics.
    pub async fn request(
        &self,
        t: Transport,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Resp {
        assert!(!(t == Transport::H1Fast && body.is_some()), "[{t}] the fast path takes no body");
        let body = body.or(t.with_body().then_some("x"));
        let resolve = format!("localhost:{}:127.0.0.1", self.gateway(t).addr().port());
        let url = format!("{}://{}{path}", t.scheme(), self.authority(t));
        let mut args: Vec<String> = ["-s", "-i", "--resolve", &resolve, "-X", method].map(String::from).to_vec();
        args.extend(t.curl_args().iter().map(|a| a.to_string()));
        for (k, v) in headers {
            args.push("-H".into());
            args.push(format!("{k}: {v}"));
        }
        if let Some(b) = body {
            args.push("--data-binary".into());
            args.push(b.to_owned());
        }
        args.push(url);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, out) = curl(&refs).await;
        assert!(
            ok,
            "[{t}] curl failed: {method} {path} {headers:?} with a body of {} bytes\n{out}",
            body.map_or(0, str::len)
        );
        parse(t, out)
    }

    /// One request over h2c or TLS h2 with hyper's HTTP/2 client instead of curl: for an
    /// answer that comes before the request body is all sent. The gateway then ends the
    /// stream with RST_STREAM(NO_ERROR), as RFC 9113 section 8.1 allows; hyper reads the
    /// complete response, but curl 7.88 sometimes reports that reset as its error 92
    /// ("Stream error in the HTTP/2 framing layer") and drops the response.
    pub async fn h2_request(&self, t: Transport, method: &str, path: &str, body: &str) -> Resp {
        assert!(t.h2(), "[{t}] not an HTTP/2 transport");
        let tcp = tokio::net::TcpStream::connect(self.gateway(t).addr()).await.unwrap();
        let req = http::Request::builder()
            .method(method)
            .uri(format!("{}://{}{path}", t.scheme(), self.authority(t)))
            .body(http_body_util::Full::new(bytes::Bytes::from(body.to_owned())))
            .unwrap();
        let res = if t.tls() {
            let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
            let tls = tokio_rustls::TlsConnector::from(self.h2_tls.clone()).connect(name, tcp).await.unwrap();
            h2_send(TokioIo::new(tls), req).await
        } else {
            h2_send(TokioIo::new(tcp), req).await
        };
        let (parts, body) = res.unwrap_or_else(|e| panic!("[{t}] {method} {path}: {e}")).into_parts();
        let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        let body = String::from_utf8_lossy(&body).into_owned();
        let headers: Vec<(String, String)> =
            parts.headers.iter().map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned())).collect();
        assert_eq!(parts.version, http::Version::HTTP_2, "[{t}]");
        let raw = format!("{:?} {}\n{headers:?}\n\n{body}", parts.version, parts.status);
        Resp { transport: t, status: parts.status.as_u16(), headers, body, raw }
    }

    pub async fn get(&self, t: Transport, path: &str) -> Resp {
        self.request(t, "GET", path, &[], None).await
    }
}

async fn h2_send<I>(
    io: I,
    req: http::Request<http_body_util::Full<bytes::Bytes>>,
) -> hyper::Result<http::Response<hyper::body::Incoming>>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
    tokio::spawn(conn);
    send.send_request(req).await
}

/// `matrix_test!(name, { setup statements }, |t| { scenario })`: a `#[tokio::test]` that
/// runs the setup once (start upstreams and a [`MatrixGateway`]) and then the scenario
/// once per transport, `t` bound to each of [`Transport::ALL`] in turn.
macro_rules! matrix_test {
    ($(#[$meta:meta])* $name:ident, { $($setup:tt)* }, |$t:ident| $body:block) => {
        $(#[$meta])*
        #[tokio::test]
        async fn $name() {
            $($setup)*
            for $t in Transport::ALL {
                $body
            }
        }
    };
}

/// The echo upstream's view of a forwarded request.
fn echo(r: &Resp) -> serde_json::Value {
    assert_eq!(r.status, 200, "{r}");
    let v = r.json();
    // The body transport's byte (or the scenario's body) reached the upstream, and nothing
    // else did: proof the request went the way the transport says.
    let sent = if r.transport.with_body() { 1 } else { 0 };
    assert_eq!(v["bodyBytes"], sent, "{r}");
    v
}

fn routing_yaml(users: &TestUpstream, orders: &TestUpstream) -> String {
    config(&format!(
        r#"upstreams:
  users: {{ targets: [{{ url: "{}" }}] }}
  orders: {{ targets: [{{ url: "{}" }}] }}
routes:
  - name: user
    match: {{ path: "/api/users/{{id}}", methods: [GET, PUT] }}
    upstream: users
    rewrite: {{ path: "/v2/users/{{id}}" }}
  - name: orders
    match: {{ prefix: /api/orders }}
    upstream: orders
    rewrite: {{ strip_prefix: /api }}
  - name: host
    match: {{ hosts: ["*.example.com"], prefix: / }}
    upstream: users
    preserve_host: true
"#,
        users.url(),
        orders.url()
    ))
}

matrix_test!(
    routing_rewrites_and_forwarding_headers,
    {
        let users = TestUpstream::start("users").await;
        let orders = TestUpstream::start("orders").await;
        let gw = MatrixGateway::start(&routing_yaml(&users, &orders));
    },
    |t| {
        // Path template, method condition and rewrite.
        let r = gw.request(t, "GET", "/api/users/42?x=1", &[], None).await;
        let v = echo(&r);
        assert_eq!((v["upstream"].as_str(), v["path"].as_str()), (Some("users"), Some("/v2/users/42")), "{r}");
        assert_eq!((v["method"].as_str(), v["query"].as_str()), (Some("GET"), Some("x=1")), "{r}");
        let h = &v["headers"];
        assert_eq!(h["host"], users.addr.to_string(), "Host is the target's by default: {r}");
        assert_eq!(h["x-forwarded-for"], "127.0.0.1", "{r}");
        assert_eq!(h["x-forwarded-proto"], t.scheme(), "{r}");
        assert_eq!(h["x-forwarded-host"], gw.authority(t), "{r}");
        let forwarded = format!("for=127.0.0.1;proto={}", t.scheme());
        assert!(h["forwarded"].as_str().is_some_and(|f| f.starts_with(&forwarded)), "{r}");
        let rid = r.header("x-request-id").unwrap_or_default();
        assert_eq!(rid.len(), 32, "{r}");
        assert_eq!(h["x-request-id"], rid, "the same ID goes upstream and back: {r}");

        // Prefix with strip_prefix, to the other upstream.
        let r = gw.request(t, "PUT", "/api/orders/7", &[], None).await;
        let v = echo(&r);
        assert_eq!((v["upstream"].as_str(), v["path"].as_str()), (Some("orders"), Some("/orders/7")), "{r}");
        assert_eq!(v["method"], "PUT", "{r}");

        // A wildcard host with preserve_host. Over HTTP/2 curl sends the -H host as :authority.
        let r = gw.request(t, "GET", "/x", &[("host", "shop.example.com")], None).await;
        let v = echo(&r);
        assert_eq!(
            (v["upstream"].as_str(), v["headers"]["host"].as_str()),
            (Some("users"), Some("shop.example.com")),
            "{r}"
        );

        // A method the route does not take: 405 with Allow.
        let r = gw.request(t, "DELETE", "/api/users/42", &[], None).await;
        r.assert_error(405);
        assert_eq!(r.header("allow"), Some("GET, PUT"), "{r}");

        // No route: 404.
        gw.request(t, "GET", "/nothing-here", &[], None).await.assert_error(404);

        // Forged forwarding headers are replaced (the peer is not a trusted proxy); a client's
        // well-formed request ID is kept.
        let forged = [
            ("x-forwarded-for", "6.6.6.6"),
            ("forwarded", "for=6.6.6.6"),
            ("x-real-ip", "6.6.6.6"),
            ("x-request-id", "client-id-1"),
        ];
        let r = gw.request(t, "GET", "/api/orders", &forged, None).await;
        let v = echo(&r);
        let h = &v["headers"];
        assert_eq!(h["x-forwarded-for"], "127.0.0.1", "{r}");
        assert!(h["forwarded"].as_str().is_some_and(|f| f.starts_with("for=127.0.0.1")), "{r}");
        assert!(h.get("x-real-ip").is_none(), "{r}");
        assert_eq!(
            (h["x-request-id"].as_str(), r.header("x-request-id")),
            (Some("client-id-1"), Some("client-id-1")),
            "{r}"
        );

        // Hop-by-hop headers: HTTP/1.1 clients may send them and the gateway must drop them;
        // HTTP/2 forbids connection-specific headers altogether (RFC 9113 8.2.2), so there the
        // check is that none comes back.
        if t.h2() {
            let r = gw.get(t, "/api/orders").await;
            echo(&r);
            assert!(r.header("connection").is_none() && r.header("keep-alive").is_none(), "{r}");
        } else {
            let hop =
                [("connection", "x-hop, keep-alive"), ("x-hop", "secret"), ("keep-alive", "timeout=5"), ("te", "gzip")];
            let r = gw.request(t, "GET", "/api/orders", &hop, None).await;
            let v = echo(&r);
            for name in ["x-hop", "keep-alive", "te"] {
                assert!(v["headers"].get(name).is_none(), "{name} is hop-by-hop: {r}");
            }
        }
    }
);

/// An address where nothing listens.
async fn refused_upstream() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}")
}

fn errors_yaml(up: &TestUpstream, refused: &str) -> String {
    format!(
        r#"version: 1
listeners:
  - name: public
    bind: 127.0.0.1:0
    limits: {{ max_body: 1KiB }}
admin:
  bind: 127.0.0.1:0
access_log:
  output: ACCESS_LOG
upstreams:
  ok: {{ targets: [{{ url: "{ok}" }}] }}
  refused: {{ targets: [{{ url: "{refused}" }}] }}
  slow: {{ targets: [{{ url: "{ok}" }}], timeouts: {{ request: 300ms }} }}
consumers:
  - {{ id: ci-bot, roles: [deployer], api_keys: [{{ sha256: {key} }}] }}
jwt_providers:
  main:
    issuer: https://idp.test
    audiences: [api]
    keys: [{{ alg: HS256, secret: "{secret}" }}]
routes:
  - {{ name: ok, match: {{ prefix: /ok, methods: [GET, PUT] }}, upstream: ok }}
  - {{ name: upload, match: {{ prefix: /upload }}, upstream: ok }}
  - {{ name: refused, match: {{ prefix: /refused }}, upstream: refused }}
  - {{ name: slow, match: {{ prefix: /slow }}, upstream: slow }}
  - name: jwt
    match: {{ prefix: /jwt }}
    upstream: ok
    plugins: [{{ jwt: {{ provider: main }} }}]
  - name: key
    match: {{ prefix: /key }}
    upstream: ok
    plugins: [{{ api_key: {{ header: x-api-key }} }}]
  - name: denied
    match: {{ prefix: /denied }}
    upstream: ok
    plugins: [{{ ip_filter: {{ deny: ["127.0.0.0/8"] }} }}]
  - name: limited
    match: {{ prefix: /limited }}
    upstream: ok
    plugins: [{{ rate_limit: {{ limits: [{{ limit: 2, per: 1m }}], key: [{{ header: x-bucket }}] }} }}]
"#,
        ok = up.url(),
        key = hash_key("ci-key-0001"),
        secret = crate::auth::SECRET,
    )
}

matrix_test!(
    gateway_made_errors_follow_the_contract,
    {
        let up = TestUpstream::start("ok").await;
        let refused = refused_upstream().await;
        let gw = MatrixGateway::start(&errors_yaml(&up, &refused));
    },
    |t| {
        gw.get(t, "/nothing-here").await.assert_error(404);
        // A head over `max_header_bytes` (16KiB here) but under what the HTTP layer itself
        // refuses: the contract's 431 on every transport (on HTTP/2, h2's own limit is set
        // at four times the listener's, and answered bare only past that).
        let big = "b".repeat(20_000);
        gw.request(t, "GET", "/ok/1", &[("x-big", big.as_str())], None).await.assert_error(431);
        let r = gw.request(t, "DELETE", "/ok/1", &[], None).await;
        r.assert_error(405);
        assert_eq!(r.header("allow"), Some("GET, PUT"), "{r}");

        // Authentication: no token, a bad token, no key, a wrong key; then the good key, whose
        // consumer the upstream is told, and never the key itself.
        gw.get(t, "/jwt/x").await.assert_error(401);
        gw.request(t, "GET", "/jwt/x", &[("authorization", "Bearer not-a-token")], None).await.assert_error(401);
        gw.get(t, "/key/x").await.assert_error(401);
        let r = gw.request(t, "GET", "/key/x", &[("x-api-key", "wrong-key-0000")], None).await;
        r.assert_error(401);
        assert_eq!(r.header("www-authenticate"), Some("ApiKey realm=\"portico\""), "{r}");
        let r = gw.request(t, "GET", "/key/x", &[("x-api-key", "ci-key-0001")], None).await;
        let v = echo(&r);
        assert_eq!(v["headers"]["x-user-id"], "ci-bot", "{r}");
        assert!(v["headers"].get("x-api-key").is_none(), "{r}");

        // The IP filter.
        let r = gw.get(t, "/denied/x").await;
        r.assert_error(403);
        assert_eq!(r.json()["error"], "client address not allowed", "{r}");

        // A rate limit: each transport counts in its own bucket (the key is a header), so the
        // order of transports does not matter.
        let bucket = [("x-bucket", t.to_string())];
        let bucket: Vec<(&str, &str)> = bucket.iter().map(|(k, v)| (*k, v.as_str())).collect();
        for left in ["1", "0"] {
            let r = gw.request(t, "GET", "/limited/x", &bucket, None).await;
            echo(&r);
            assert_eq!((r.header("ratelimit-limit"), r.header("ratelimit-remaining")), (Some("2"), Some(left)), "{r}");
        }
        let hits = up.hits();
        let r = gw.request(t, "GET", "/limited/x", &bucket, None).await;
        r.assert_error(429);
        assert_eq!(r.json()["error"], "rate limit exceeded", "{r}");
        let retry: u64 = r.header("retry-after").and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("{r}"));
        assert!((1..=60).contains(&retry), "{r}");
        assert_eq!((r.header("ratelimit-limit"), r.header("ratelimit-remaining")), (Some("2"), Some("0")), "{r}");
        assert!(r.header("ratelimit-reset").is_some(), "{r}");
        assert_eq!(up.hits(), hits, "a refused request reached the upstream: {r}");

        // 413: a declared body over the listener's max_body, refused before the upstream. The
        // fast path carries no body by definition, so there the check is the other side of the
        // limit: a bodyless request on the same route goes through.
        if t == Transport::H1Fast {
            echo(&gw.get(t, "/upload/x").await);
        } else {
            let big = "b".repeat(2048);
            let hits = up.hits();
            let r = if t.h2() {
                // The 413 comes before the body is all sent; see h2_request for why not curl.
                gw.h2_request(t, "POST", "/upload/x", &big).await
            } else {
                gw.request(t, "POST", "/upload/x", &[], Some(&big)).await
            };
            r.assert_error(413);
            assert_eq!(up.hits(), hits, "the upstream never saw it");
            let r = gw.request(t, "POST", "/upload/x", &[], Some(&big[..1000])).await;
            assert_eq!((r.status, r.json()["bodyBytes"].as_u64()), (200, Some(1000)), "under the limit: {r}");
        }

        // 502 from a refused connection, with Retry-After; 504 from a slow upstream.
        let r = gw.get(t, "/refused/x").await;
        r.assert_error(502);
        assert!(r.header("retry-after").is_some(), "{r}");
        let start = std::time::Instant::now();
        let r = gw.get(t, "/slow?ms=3000").await;
        r.assert_error(504);
        assert!(start.elapsed() < std::time::Duration::from_millis(2500), "the timeout answers first: {r}");
    }
);

/// An allowed origin.
const APP: &str = "https://app.example.com";

fn plugins_yaml(up: &TestUpstream) -> String {
    config(&format!(
        r#"plugins:
  - security_headers: {{ content_security_policy: "default-src 'none'" }}
upstreams:
  app: {{ targets: [{{ url: "{}" }}] }}
jwt_providers:
  main:
    issuer: https://idp.test
    audiences: [api]
    forward_claims: {{ email: X-User-Email }}
    keys: [{{ alg: HS256, secret: "{secret}" }}]
routes:
  - name: api
    match: {{ prefix: /api }}
    upstream: app
    rewrite: {{ strip_prefix: /api }}
    plugins:
      - cors:
          origins: ["{APP}"]
          methods: [GET, PUT]
          headers: [content-type, x-custom]
          expose_headers: [x-upstream]
          credentials: true
          max_age: 5m
  - name: users
    match: {{ path: "/users/{{id}}" }}
    upstream: app
    plugins:
      - request_headers: {{ remove: [x-drop], set: {{ x-user: "u-{{param.id}}" }} }}
      - query: {{ remove: [debug], set: {{ page: "1" }} }}
      - response_headers: {{ remove: [x-upstream], set: {{ x-request: "{{request_id}}" }} }}
  - name: secure
    match: {{ prefix: /secure }}
    upstream: app
    plugins: [{{ jwt: {{ provider: main }} }}]
  - {{ name: open, match: {{ prefix: /open }}, upstream: app }}
"#,
        up.url(),
        secret = crate::auth::SECRET,
    ))
}

matrix_test!(
    plugins_and_identity_headers,
    {
        let up = TestUpstream::start("app").await;
        let gw = MatrixGateway::start(&plugins_yaml(&up));
        let token = crate::auth::mint(serde_json::json!([{
            "alg": "HS256", "key": crate::auth::SECRET,
            "claims": crate::auth::claims("carol", serde_json::json!({ "email": "carol@example.com" })),
        }]))
        .remove(0);
        let bearer = format!("Bearer {token}");
    },
    |t| {
        // CORS preflight, answered at the gateway.
        let hits = up.hits();
        let asked = [
            ("origin", APP),
            ("access-control-request-method", "PUT"),
            ("access-control-request-headers", "Content-Type, X-Custom"),
        ];
        let r = gw.request(t, "OPTIONS", "/api/things", &asked, None).await;
        assert_eq!((r.status, r.body.as_str()), (204, ""), "{r}");
        assert_eq!(r.header("access-control-allow-origin"), Some(APP), "{r}");
        assert_eq!(r.header("access-control-allow-methods"), Some("GET, PUT"), "{r}");
        assert_eq!(r.header("access-control-allow-headers"), Some("Content-Type, X-Custom"), "{r}");
        assert_eq!(r.header("access-control-max-age"), Some("300"), "{r}");
        assert_eq!(r.header("access-control-allow-credentials"), Some("true"), "{r}");
        assert!(r.all("vary").iter().any(|v| v.to_ascii_lowercase().contains("origin")), "{r}");
        let evil = [("origin", "https://evil.example"), ("access-control-request-method", "PUT")];
        let r = gw.request(t, "OPTIONS", "/api/things", &evil, None).await;
        r.assert_error(403);
        assert_eq!(
            (r.json()["error"].as_str(), r.header("access-control-allow-origin")),
            (Some("CORS origin not allowed"), None),
            "{r}"
        );
        assert_eq!(up.hits(), hits, "no preflight reaches the upstream");

        // CORS on an actual response; the global security headers on it too, HSTS only over
        // TLS (browsers ignore it over plain HTTP; docs/plugins.md#security_headers).
        let r = gw.request(t, "GET", "/api/echo", &[("origin", APP)], None).await;
        let v = echo(&r);
        assert_eq!((v["path"].as_str(), v["headers"]["origin"].as_str()), (Some("/echo"), Some(APP)), "{r}");
        assert_eq!(r.header("access-control-allow-origin"), Some(APP), "{r}");
        assert_eq!(r.header("access-control-expose-headers"), Some("x-upstream"), "{r}");
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"), "{r}");
        assert_eq!(r.header("content-security-policy"), Some("default-src 'none'"), "{r}");
        assert!(r.header("x-frame-options").is_some(), "{r}");
        if t.tls() {
            assert!(r.header("strict-transport-security").is_some_and(|v| v.starts_with("max-age=")), "{r}");
        } else {
            assert!(r.header("strict-transport-security").is_none(), "{r}");
        }

        // Request headers, query and response headers transforms.
        let r = gw.request(t, "GET", "/users/42?debug=1&q=a", &[("x-drop", "1")], None).await;
        let v = echo(&r);
        assert!(v["headers"].get("x-drop").is_none(), "{r}");
        assert_eq!((v["headers"]["x-user"].as_str(), v["query"].as_str()), (Some("u-42"), Some("q=a&page=1")), "{r}");
        assert!(r.header("x-upstream").is_none(), "{r}");
        assert_eq!(r.header("x-request"), r.header("x-request-id"), "{r}");

        // Identity headers: the client's copies never reach the upstream, on a route without
        // authentication and on one with it, where the gateway's values replace them.
        let forged = [
            ("x-user-id", "admin"),
            ("x-user-role", "admin"),
            ("x-tenant-id", "acme"),
            ("x-consumer-plan", "enterprise"),
            ("x-user-email", "ceo@example.com"),
        ];
        let r = gw.request(t, "GET", "/open/x", &forged, None).await;
        let v = echo(&r);
        for (name, _) in forged {
            assert!(v["headers"].get(name).is_none(), "{name} reached the upstream: {r}");
        }
        let mut with_token = forged.to_vec();
        with_token.push(("authorization", &bearer));
        let r = gw.request(t, "GET", "/secure/x", &with_token, None).await;
        let v = echo(&r);
        let h = &v["headers"];
        assert_eq!(
            (h["x-user-id"].as_str(), h["x-user-email"].as_str()),
            (Some("carol"), Some("carol@example.com")),
            "{r}"
        );
        for name in ["x-user-role", "x-tenant-id", "x-consumer-plan"] {
            assert!(h.get(name).is_none(), "{name} reached the upstream: {r}");
        }
    }
);
