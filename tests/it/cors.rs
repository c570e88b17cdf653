//! CORS over the wire (a plain HTTP client, so every header is seen as sent) and in a real
//! browser (headless Chromium on one origin calling the gateway on another with `fetch`).

use std::convert::Infallible;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use crate::support::*;

/// An allowed origin of most routes here.
const APP: &str = "https://app.example.com";

async fn request(method: &str, url: &str, headers: &[(&str, &str)]) -> (StatusCode, HeaderMap, String) {
    let mut b = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(b.body(Full::new(Bytes::new())).unwrap()).await
}

/// A preflight from `origin` announcing `method` and, when given, the request headers `asked`.
async fn preflight(url: &str, origin: &str, method: &str, asked: Option<&str>) -> (StatusCode, HeaderMap, String) {
    let mut h = vec![("origin", origin), ("access-control-request-method", method)];
    h.extend(asked.map(|a| ("access-control-request-headers", a)));
    request("OPTIONS", url, &h).await
}

async fn get_from(url: &str, origin: &str) -> (StatusCode, HeaderMap, String) {
    request("GET", url, &[("origin", origin)]).await
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    let mut all = h.get_all(name).iter();
    let first = all.next().map(|v| v.to_str().unwrap());
    assert!(all.next().is_none(), "{name} sent more than once: {h:?}");
    first
}

fn acao(h: &HeaderMap) -> Option<&str> {
    header(h, "access-control-allow-origin")
}

/// Every `Vary` token, lower case.
fn vary(h: &HeaderMap) -> Vec<String> {
    h.get_all("vary")
        .iter()
        .flat_map(|v| v.to_str().unwrap().split(',').map(|t| t.trim().to_ascii_lowercase()).collect::<Vec<_>>())
        .collect()
}

fn varies_by_origin(h: &HeaderMap) -> bool {
    vary(h).iter().any(|t| t == "origin")
}

/// A 403 JSON error answered by the gateway.
fn assert_forbidden(status: StatusCode, h: &HeaderMap, body: &str) {
    assert_eq!(status, 403, "{body}");
    assert_eq!(h["content-type"], "application/json");
    assert_eq!(json(body)["status"], 403, "{body}");
}

fn upstream_yaml(up: &TestUpstream) -> String {
    format!("upstreams:\n  up: {{ targets: [{{ url: \"{}\" }}] }}\n", up.url())
}

#[tokio::test]
async fn preflight_is_answered_at_the_gateway() {
    let up = TestUpstream::start("up").await;
    let gw = Gateway::start(&config(&format!(
        r#"{}routes:
  - name: api
    match: {{ prefix: /api }}
    upstream: up
    plugins:
      - cors:
          origins: ["{APP}"]
          methods: [GET, PUT]
          headers: [content-type, x-custom]
          expose_headers: [x-upstream]
          credentials: true
          max_age: 5m
"#,
        upstream_yaml(&up)
    )));
    let url = gw.url("/api/things");

    let (status, h, body) = preflight(&url, APP, "PUT", Some("Content-Type, X-Custom")).await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(body, "");
    assert_eq!(acao(&h), Some(APP), "the origin is echoed");
    assert_eq!(header(&h, "access-control-allow-methods"), Some("GET, PUT"));
    assert_eq!(header(&h, "access-control-allow-headers"), Some("Content-Type, X-Custom"));
    assert_eq!(header(&h, "access-control-max-age"), Some("300"));
    assert_eq!(header(&h, "access-control-allow-credentials"), Some("true"));
    assert!(varies_by_origin(&h), "{h:?}");
    assert!(h.get("access-control-expose-headers").is_none(), "exposing is for actual responses");
    // Header names are compared without regard to case.
    let (status, _, body) = preflight(&url, APP, "GET", Some("x-custom")).await;
    assert_eq!(status, 204, "{body}");

    // Refused: another origin, a method not listed, a header not listed.
    let (status, h, body) = preflight(&url, "https://evil.example", "PUT", None).await;
    assert_forbidden(status, &h, &body);
    assert_eq!(json(&body)["error"], "CORS origin not allowed");
    assert_eq!(acao(&h), None);
    assert!(varies_by_origin(&h));
    let (status, h, body) = preflight(&url, APP, "DELETE", None).await;
    assert_forbidden(status, &h, &body);
    assert_eq!(json(&body)["error"], "CORS method not allowed");
    let (status, h, body) = preflight(&url, APP, "PUT", Some("content-type, x-secret")).await;
    assert_forbidden(status, &h, &body);
    assert_eq!(json(&body)["error"], "CORS request header not allowed");

    assert_eq!(up.hits(), 0, "no preflight reaches the upstream");

    // An OPTIONS without `Access-Control-Request-Method` is not a preflight: it is proxied.
    let (status, _, body) = request("OPTIONS", &url, &[("origin", APP)]).await;
    assert_eq!(status, 200);
    assert_eq!(json(&body)["method"], "OPTIONS");
    assert_eq!(up.hits(), 1);
}

#[tokio::test]
async fn preflight_is_routed_by_the_announced_method() {
    let up = TestUpstream::start("up").await;
    let gw = Gateway::start(&config(&format!(
        r#"{}routes:
  - name: read
    match: {{ prefix: /items, methods: [GET] }}
    upstream: up
    plugins:
      - cors: {{ origins: ["{APP}"] }}
  - name: write
    match: {{ prefix: /items, methods: [POST] }}
    upstream: up
    plugins:
      - cors: {{ origins: ["https://writer.example"], methods: [POST] }}
"#,
        upstream_yaml(&up)
    )));
    let url = gw.url("/items/1");

    // The route's only method is GET; the preflight (an OPTIONS) still gets its answer.
    let (status, h, body) = preflight(&url, APP, "GET", None).await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(acao(&h), Some(APP));
    // POST announced: the `write` route's CORS answers, which allows another origin.
    let (status, h, body) = preflight(&url, "https://writer.example", "POST", None).await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(acao(&h), Some("https://writer.example"));
    assert_eq!(header(&h, "access-control-allow-methods"), Some("POST"));
    let (status, h, body) = preflight(&url, APP, "POST", None).await;
    assert_forbidden(status, &h, &body);
    // A method no route on the path takes: no CORS answer, the browser gives up.
    let (status, h, _) = preflight(&url, APP, "DELETE", None).await;
    assert_eq!(status, 405);
    assert_eq!(acao(&h), None);
    // Not a preflight (no `Access-Control-Request-Method`): routed as an OPTIONS, which
    // no route takes.
    let (status, _, _) = request("OPTIONS", &url, &[("origin", APP)]).await;
    assert_eq!(status, 405);
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn actual_responses_carry_allow_origin_expose_and_vary() {
    let up = TestUpstream::start("up").await;
    let gw = Gateway::start(&config(&format!(
        r#"{}routes:
  - name: api
    match: {{ prefix: /api }}
    upstream: up
    rewrite: {{ strip_prefix: /api }}
    plugins:
      - cors:
          origins: ["{APP}"]
          expose_headers: [x-upstream, x-request-id]
          credentials: true
"#,
        upstream_yaml(&up)
    )));

    let (status, h, body) = get_from(&gw.url("/api/echo"), APP).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["headers"]["origin"], APP, "Origin goes upstream");
    assert_eq!(acao(&h), Some(APP));
    assert_eq!(header(&h, "access-control-allow-credentials"), Some("true"));
    assert_eq!(header(&h, "access-control-expose-headers"), Some("x-upstream, x-request-id"));
    assert!(varies_by_origin(&h), "{h:?}");

    // Another origin: the response is served (CORS is enforced by the browser) but
    // carries nothing that lets a script read it; it still varies by origin.
    let (status, h, _) = get_from(&gw.url("/api/echo"), "https://evil.example").await;
    assert_eq!(status, 200);
    assert_eq!(acao(&h), None);
    assert!(h.get("access-control-allow-credentials").is_none());
    assert!(h.get("access-control-expose-headers").is_none());
    assert!(varies_by_origin(&h), "{h:?}");
    // No Origin at all (same-origin or not a browser): the same, so a cache keeps them apart.
    let (_, h, _) = get(&gw.url("/api/echo")).await;
    assert_eq!(acao(&h), None);
    assert!(varies_by_origin(&h), "{h:?}");

    // The upstream's own CORS headers are replaced by the gateway's; its Vary is kept.
    let own = "/api/headers?access-control-allow-origin=*&access-control-allow-credentials=false\
               &access-control-expose-headers=x-secret&vary=accept-encoding";
    let (status, h, body) = get_from(&gw.url(own), APP).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(acao(&h), Some(APP));
    assert_eq!(header(&h, "access-control-allow-credentials"), Some("true"));
    assert_eq!(header(&h, "access-control-expose-headers"), Some("x-upstream, x-request-id"));
    assert_eq!(vary(&h), ["accept-encoding", "origin"]);
    let (_, h, _) = get_from(&gw.url(own), "https://evil.example").await;
    assert_eq!(acao(&h), None, "the upstream's `*` must not leak through");
    assert!(h.get("access-control-allow-credentials").is_none());
    assert!(h.get("access-control-expose-headers").is_none());
    assert!(varies_by_origin(&h));
    // An upstream that already varies by origin: said once.
    let (_, h, _) = get_from(&gw.url("/api/headers?vary=Accept-Encoding,%20Origin"), APP).await;
    assert_eq!(acao(&h), Some(APP));
    assert_eq!(vary(&h), ["accept-encoding", "origin"]);
}

#[tokio::test]
async fn wildcard_origin_matches_subdomains_only() {
    let up = TestUpstream::start("up").await;
    let gw = Gateway::start(&config(&format!(
        r#"{}routes:
  - name: api
    match: {{ prefix: / }}
    upstream: up
    plugins:
      - cors: {{ origins: ["https://*.example.com", "http://localhost:3000"] }}
"#,
        upstream_yaml(&up)
    )));
    let url = gw.url("/x");
    for ok in ["https://a.example.com", "https://a.b.example.com", "http://localhost:3000"] {
        let (status, h, body) = preflight(&url, ok, "GET", None).await;
        assert_eq!((status, acao(&h)), (StatusCode::NO_CONTENT, Some(ok)), "{ok}: {body}");
        let (_, h, _) = get_from(&url, ok).await;
        assert_eq!(acao(&h), Some(ok), "{ok}");
    }
    for denied in [
        "https://example.com",
        "https://a.example.com.evil.net",
        "https://evilexample.com",
        "http://a.example.com",
        "https://a.example.com:8443",
        "http://localhost:3001",
        "null",
    ] {
        let (status, h, body) = preflight(&url, denied, "GET", None).await;
        assert_forbidden(status, &h, &body);
        let (status, h, _) = get_from(&url, denied).await;
        assert_eq!((status, acao(&h)), (StatusCode::OK, None), "{denied}");
        assert!(varies_by_origin(&h));
    }
    assert_eq!(up.hits(), 10, "only the 3 + 7 actual requests");
}

#[tokio::test]
async fn any_origin_without_credentials_is_a_star_without_vary() {
    let up = TestUpstream::start("up").await;
    let gw = Gateway::start(&config(&format!(
        r#"{}routes:
  - name: public
    match: {{ prefix: / }}
    upstream: up
    plugins:
      - cors: {{ origins: ["*"], max_age: 1h }}
"#,
        upstream_yaml(&up)
    )));
    let url = gw.url("/open");
    let (status, h, _) = get_from(&url, "https://anyone.example").await;
    assert_eq!(status, 200);
    assert_eq!(acao(&h), Some("*"));
    assert!(h.get("access-control-allow-credentials").is_none());
    assert!(!varies_by_origin(&h), "one answer for every origin: {h:?}");
    let (_, h, _) = get(&url).await;
    assert_eq!(acao(&h), None);
    assert!(!varies_by_origin(&h));

    let (status, h, body) = preflight(&url, "https://anyone.example", "DELETE", Some("x-anything")).await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(acao(&h), Some("*"));
    assert_eq!(header(&h, "access-control-allow-methods"), Some("GET, HEAD, POST, PUT, PATCH, DELETE"));
    assert_eq!(header(&h, "access-control-allow-headers"), Some("x-anything"), "no list: what is asked");
    assert_eq!(header(&h, "access-control-max-age"), Some("3600"));
    assert!(!varies_by_origin(&h));
    assert_eq!(up.hits(), 2);
}

#[tokio::test]
async fn global_cors_applies_unless_the_route_sets_its_own() {
    let up = TestUpstream::start("up").await;
    let gw = Gateway::start(&config(&format!(
        r#"{}plugins:
  - cors: {{ origins: ["https://global.example"], expose_headers: [x-upstream] }}
routes:
  - name: plain
    match: {{ prefix: /plain }}
    upstream: up
  - name: own
    match: {{ prefix: /own }}
    upstream: up
    plugins:
      - cors: {{ origins: ["https://route.example"] }}
"#,
        upstream_yaml(&up)
    )));
    let (plain, own) = (gw.url("/plain/x"), gw.url("/own/x"));

    let (_, h, _) = get_from(&plain, "https://global.example").await;
    assert_eq!(acao(&h), Some("https://global.example"));
    assert_eq!(header(&h, "access-control-expose-headers"), Some("x-upstream"));
    let (status, h, _) = preflight(&plain, "https://global.example", "POST", None).await;
    assert_eq!((status, acao(&h)), (StatusCode::NO_CONTENT, Some("https://global.example")));
    let (status, h, body) = preflight(&plain, "https://route.example", "POST", None).await;
    assert_forbidden(status, &h, &body);

    // The route's cors replaces the global one whole (no merging of lists or fields).
    let (_, h, _) = get_from(&own, "https://route.example").await;
    assert_eq!(acao(&h), Some("https://route.example"));
    assert!(h.get("access-control-expose-headers").is_none(), "the global expose_headers is not merged in");
    let (_, h, _) = get_from(&own, "https://global.example").await;
    assert_eq!(acao(&h), None);
    assert!(varies_by_origin(&h));
    let (status, h, body) = preflight(&own, "https://global.example", "POST", None).await;
    assert_forbidden(status, &h, &body);
    let (status, _, _) = preflight(&own, "https://route.example", "POST", None).await;
    assert_eq!(status, 204);
    assert_eq!(up.hits(), 3);

    // The gateway's own errors outside any route answer with the global CORS headers
    // too, so a script can read a 404 instead of seeing a network error.
    let (status, h, body) = get_from(&gw.url("/nowhere"), "https://global.example").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(json(&body)["status"], 404);
    assert_eq!(acao(&h), Some("https://global.example"));
    assert_eq!(header(&h, "access-control-expose-headers"), Some("x-upstream"));
    assert!(varies_by_origin(&h));
    let (status, h, _) = get_from(&gw.url("/nowhere"), "https://route.example").await;
    assert_eq!((status, acao(&h)), (StatusCode::NOT_FOUND, None));
    assert!(varies_by_origin(&h));
}

#[tokio::test]
async fn without_cors_the_gateway_leaves_cors_to_the_upstream() {
    let up = TestUpstream::start("up").await;
    let gw = Gateway::start(&config(&format!(
        "{}routes:\n  - {{ name: plain, match: {{ prefix: / }}, upstream: up }}\n",
        upstream_yaml(&up)
    )));
    let url = gw.url("/headers?access-control-allow-origin=https://up.example");
    let (status, h, _) = preflight(&url, APP, "PUT", None).await;
    assert_eq!(status, 200, "the preflight is proxied");
    assert_eq!(acao(&h), Some("https://up.example"));
    assert!(!varies_by_origin(&h));
    let (_, h, _) = get_from(&url, APP).await;
    assert_eq!(acao(&h), Some("https://up.example"));
    assert_eq!(up.hits(), 2);
}

#[test]
fn config_check_refuses_what_would_not_work_in_a_browser() {
    let dir = tempfile::tempdir().unwrap();
    let f = write_temp(
        dir.path(),
        "cors.yaml",
        r#"version: 1
listeners: [{ name: public, bind: 127.0.0.1:8080 }]
upstreams:
  u: { targets: [{ url: http://127.0.0.1:9000 }] }
plugins:
  - cors: { origins: ["*"], expose_headers: ["*"] }
routes:
  - name: r
    match: { prefix: / }
    upstream: u
    plugins:
      - cors:
          origins: ["*", "https://app.example.com/", "https://*.*.example.com"]
          headers: [content-type, "*"]
          expose_headers: ["*"]
          credentials: true
"#,
    );
    let out = portico().args(["validate", f.to_str().unwrap()]).output().unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    for expected in [
        "routes[0].plugins[0].cors.origins[0]",
        "cannot be used with credentials",
        "routes[0].plugins[0].cors.origins[1]",
        "routes[0].plugins[0].cors.origins[2]",
        "routes[0].plugins[0].cors.headers[1]",
        "leave headers empty",
        "routes[0].plugins[0].cors.expose_headers[0]",
        "exposes nothing with credentials",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    // Without credentials `expose_headers: ["*"]` means every header, as browsers read it.
    assert!(!text.lines().any(|l| l.starts_with("plugins[0]")), "the global cors is fine: {text}");
}

/// `browser-key-1`; its SHA-256 is `printf %s browser-key-1 | sha256sum`.
const KEY: &str = "browser-key-1";
const KEY_SHA256: &str = "a45db6f03a529ebee3aaffabc9fddcc4a2015a5c8781c8ee7aab476f8f01d5af";

#[tokio::test]
async fn errors_of_authenticated_routes_carry_cors_headers() {
    let up = TestUpstream::start("up").await;
    let gw = Gateway::start(&config(&format!(
        r#"{}consumers:
  - id: alice
    api_keys: [{{ sha256: "{KEY_SHA256}" }}]
routes:
  - name: api
    match: {{ prefix: /api }}
    upstream: up
    plugins:
      - api_key: {{}}
      - cors: {{ origins: ["{APP}"], headers: [x-api-key, content-type], credentials: true }}
"#,
        upstream_yaml(&up)
    )));
    let url = gw.url("/api/me");

    // The preflight carries no credentials (browsers never send them on one): answered
    // before authentication.
    let (status, h, body) = preflight(&url, APP, "GET", Some("x-api-key")).await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(acao(&h), Some(APP));

    // The 401 carries the CORS headers, so the page can read why it was refused.
    let (status, h, body) = get_from(&url, APP).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(json(&body)["status"], 401);
    assert_eq!(acao(&h), Some(APP));
    assert_eq!(header(&h, "access-control-allow-credentials"), Some("true"));
    assert!(varies_by_origin(&h));
    let (status, h, _) = request("GET", &url, &[("origin", APP), ("x-api-key", "wrong")]).await;
    assert_eq!((status, acao(&h)), (StatusCode::UNAUTHORIZED, Some(APP)));
    let (status, h, _) = get_from(&url, "https://evil.example").await;
    assert_eq!((status, acao(&h)), (StatusCode::UNAUTHORIZED, None));
    assert!(varies_by_origin(&h));
    assert_eq!(up.hits(), 0);

    let (status, h, body) = request("GET", &url, &[("origin", APP), ("x-api-key", KEY)]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(acao(&h), Some(APP));
    assert!(json(&body)["headers"].get("x-api-key").is_none(), "the key is not passed upstream");
    assert_eq!(up.hits(), 1);
}

/// The page the browser loads: three cross-origin `PUT`s with credentials and a
/// non-safelisted header (so each needs a preflight); each outcome goes into `#result`
/// as JSON and the title turns to `done`.
fn page(gateway: &str) -> String {
    format!(
        r#"<!doctype html>
<html><head><title>running</title></head><body><pre id="result"></pre><script>
async function call(path) {{
  try {{
    const res = await fetch('{gateway}' + path, {{
      method: 'PUT',
      credentials: 'include',
      headers: {{ 'Content-Type': 'application/json', 'X-Custom': '1' }},
      body: '{{"n":1}}',
    }});
    return {{ status: res.status, body: await res.text(),
             exposed: res.headers.get('x-upstream'), unexposed: res.headers.get('x-request-id') }};
  }} catch (e) {{
    return {{ error: e.name, message: e.message }};
  }}
}}
(async () => {{
  const out = {{}};
  for (const p of ['/allowed/echo', '/denied/echo', '/auth/echo']) out[p] = await call(p);
  document.getElementById('result').textContent = JSON.stringify(out);
  document.title = 'done';
}})();
</script></body></html>
"#
    )
}

/// Serves `/page.html` on `listener` (HTTP/1.1) with the page for `gateway`.
fn serve_page(listener: tokio::net::TcpListener, gateway: String) {
    let html = Bytes::from(page(&gateway));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let html = html.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let html = html.clone();
                    async move {
                        let mut res = http::Response::new(Full::new(if req.uri().path() == "/page.html" {
                            html
                        } else {
                            Bytes::new()
                        }));
                        if req.uri().path() == "/page.html" {
                            res.headers_mut().insert("content-type", "text/html; charset=utf-8".parse().unwrap());
                        } else {
                            *res.status_mut() = StatusCode::NOT_FOUND;
                        }
                        Ok::<_, Infallible>(res)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
}

/// Runs headless Chromium on `url` and returns the DOM after the page's scripts ran
/// (`--dump-dom` with a virtual time budget: network waits do not use it up, so the
/// fetches finish first). The run is bounded: on timeout, its whole process group is killed.
async fn chromium_dump_dom(url: String) -> String {
    tokio::task::spawn_blocking(move || {
        let profile = tempfile::tempdir().unwrap();
        let out_path = profile.path().join("dom.html");
        let err_path = profile.path().join("chromium.err");
        let mut child = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                // Without these Chromium dials out at start, and the closed network refuses it.
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--virtual-time-budget=10000",
                "--dump-dom",
            ])
            .arg(format!("--user-data-dir={}", profile.path().join("profile").display()))
            .arg(&url)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_path).unwrap())
            .stderr(std::fs::File::create(&err_path).unwrap())
            // Its own process group, so that a kill reaches the renderer and helper processes.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("chromium must be installed (scripts/test.sh installs it): {e}"));
        let pgid = child.id().to_string();
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break Some(s);
            }
            if Instant::now() > deadline {
                break None;
            }
            #[allow(clippy::disallowed_methods)] // in spawn_blocking, off the runtime
            std::thread::sleep(Duration::from_millis(50));
        };
        // Whatever is left of the group (helpers outliving the browser, or all of it).
        let _ = Command::new("kill").args(["-KILL", "--", &format!("-{pgid}")]).stderr(Stdio::null()).status();
        let _ = child.wait();
        let dom = std::fs::read_to_string(&out_path).unwrap_or_default();
        let err = std::fs::read_to_string(&err_path).unwrap_or_default();
        let tail: String = err.lines().rev().take(20).collect::<Vec<_>>().join("\n");
        match status {
            None => {
                panic!("chromium did not finish in 60 s; DOM so far:\n{dom}\nstderr (last lines, reversed):\n{tail}")
            }
            Some(s) if !s.success() => panic!("chromium failed ({s}); stderr (last lines, reversed):\n{tail}"),
            Some(_) => dom,
        }
    })
    .await
    .unwrap()
}

/// The text of `<pre id="result">` in a serialized DOM, unescaped.
fn result_text(dom: &str) -> &str {
    let start = dom.find(r#"<pre id="result">"#).map(|i| i + r#"<pre id="result">"#.len());
    let text = start.and_then(|s| dom[s..].find("</pre>").map(|e| &dom[s..s + e]));
    text.unwrap_or_else(|| panic!("no result in the DOM:\n{dom}"))
}

#[tokio::test]
async fn real_browser_is_allowed_or_blocked_by_origin() {
    let up = TestUpstream::start("up").await;
    let page_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    // The page's origin; the gateway is called as `localhost`, another origin.
    let page_origin = format!("http://{}", page_listener.local_addr().unwrap());
    let cors = "methods: [PUT], headers: [content-type, x-custom], expose_headers: [x-upstream], credentials: true";
    // Each route takes only PUT: the preflight (OPTIONS) is routed by the method it announces.
    let gw = Gateway::start(&config(&format!(
        r#"{}consumers:
  - id: alice
    api_keys: [{{ sha256: "{KEY_SHA256}" }}]
routes:
  - name: allowed
    match: {{ prefix: /allowed, methods: [PUT] }}
    upstream: up
    rewrite: {{ strip_prefix: /allowed }}
    plugins:
      - cors: {{ origins: ["{page_origin}"], {cors} }}
  - name: denied
    match: {{ prefix: /denied, methods: [PUT] }}
    upstream: up
    rewrite: {{ strip_prefix: /denied }}
    plugins:
      - cors: {{ origins: ["https://other.example"], {cors} }}
  - name: auth
    match: {{ prefix: /auth, methods: [PUT] }}
    upstream: up
    plugins:
      - api_key: {{}}
      - cors: {{ origins: ["{page_origin}"], {cors} }}
"#,
        upstream_yaml(&up)
    )));
    serve_page(page_listener, format!("http://localhost:{}", gw.addr().port()));

    let dom = chromium_dump_dom(format!("{page_origin}/page.html")).await;
    assert!(dom.contains("<title>done</title>"), "the page's script did not finish:\n{dom}");
    let text = result_text(&dom).replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&");
    let out = json(&text);

    // Allowed: the upstream's answer reaches the script, with the exposed header only.
    let allowed = &out["/allowed/echo"];
    assert_eq!(allowed["status"], 200, "{out:#}");
    let answer = json(allowed["body"].as_str().unwrap());
    assert_eq!(answer["upstream"], "up");
    assert_eq!(answer["method"], "PUT");
    assert_eq!(answer["path"], "/echo");
    assert_eq!(answer["headers"]["origin"], page_origin.as_str());
    assert_eq!(answer["headers"]["x-custom"], "1");
    assert_eq!(answer["bodyBytes"], 7);
    assert_eq!(allowed["exposed"], "up", "x-upstream is exposed");
    assert!(allowed["unexposed"].is_null(), "x-request-id is not exposed: {out:#}");

    // Denied: the preflight is refused and fetch rejects; the script sees nothing else.
    assert_eq!(out["/denied/echo"]["error"], "TypeError", "{out:#}");

    // Refused by authentication: the script can read the 401 and its JSON.
    let auth = &out["/auth/echo"];
    assert_eq!(auth["status"], 401, "{out:#}");
    assert_eq!(json(auth["body"].as_str().unwrap())["status"], 401);

    // What the gateway saw: three preflights, then the two actual requests allowed to go.
    let mut log = Vec::new();
    let saw_all = Gateway::eventually(Duration::from_secs(5), || {
        log = gw.access_log();
        let n = log.len();
        async move { n >= 5 }
    })
    .await;
    assert!(saw_all, "{log:#?}");
    let seen: Vec<(String, String, u64)> = log
        .iter()
        .map(|l| {
            (
                l["method"].as_str().unwrap().to_owned(),
                l["path"].as_str().unwrap().to_owned(),
                l["statusCode"].as_u64().unwrap(),
            )
        })
        .collect();
    let line = |m: &str, p: &str, s: u64| (m.to_owned(), p.to_owned(), s);
    for expected in [
        line("OPTIONS", "/allowed/echo", 204),
        line("PUT", "/allowed/echo", 200),
        line("OPTIONS", "/denied/echo", 403),
        line("OPTIONS", "/auth/echo", 204),
        line("PUT", "/auth/echo", 401),
    ] {
        assert!(seen.contains(&expected), "missing {expected:?} in {seen:?}");
    }
    assert!(!seen.iter().any(|(m, p, _)| m == "PUT" && p == "/denied/echo"), "{seen:?}");
    assert_eq!(up.hits(), 1, "only the allowed PUT reaches the upstream");
}
