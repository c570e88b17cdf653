//! What the service behind the gateway makes of the path and host it receives: encoded
//! separators and dot segments never carry a request from a public route into a protected
//! one, and a request with no `Host` or two is refused (RFC 9112 section 3.2), on plain
//! and TLS listeners alike.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

/// A public route on `/public`, a protected one on `/admin` (whose `ip_filter` refuses
/// loopback), a `keep` route on `/projects`, an `unescape_and_forward` route on `/files`
/// and an `unescape_and_redirect` route on `/docs`; the listener's policy is `listener`
/// (or the default when `None`); `tls` is the listener's TLS section, if any.
fn yaml(up: &TestUpstream, listener: Option<&str>, tls: &str) -> String {
    let policy = listener.map(|p| format!("    escaped_slashes: {p}\n")).unwrap_or_default();
    format!(
        "version: 1\nlisteners:\n  - name: public\n    bind: 127.0.0.1:0\n{policy}{tls}admin:\n  bind: 127.0.0.1:0\naccess_log:\n  output: ACCESS_LOG\nupstreams:\n  u:\n    targets: [{{ url: \"{}\" }}]\nroutes:\n  - {{ name: public, match: {{ prefix: /public }}, upstream: u }}\n  - name: admin\n    match: {{ prefix: /admin }}\n    upstream: u\n    plugins:\n      - ip_filter: {{ deny: [\"127.0.0.0/8\"] }}\n  - {{ name: projects, match: {{ prefix: /projects }}, upstream: u, escaped_slashes: keep }}\n  - {{ name: files, match: {{ prefix: /files }}, upstream: u, escaped_slashes: unescape_and_forward }}\n  - {{ name: docs, match: {{ prefix: /docs }}, upstream: u, escaped_slashes: unescape_and_redirect }}\n",
        up.url()
    )
}

/// Sends `raw` over a plain connection and returns the whole answer.
async fn raw(gw: &Gateway, raw: &str) -> String {
    let mut s = TcpStream::connect(gw.addr()).await.unwrap();
    s.write_all(raw.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
}

/// The JSON error body of a raw answer.
fn error_of(answer: &str) -> String {
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or("");
    json(body)["error"].as_str().unwrap_or("").to_owned()
}

#[tokio::test]
async fn encoded_separators_never_reach_a_protected_route_through_a_public_one() {
    let up = TestUpstream::start("u").await;
    for listener in [None, Some("keep"), Some("unescape_and_forward"), Some("unescape_and_redirect")] {
        let gw = Gateway::start(&yaml(&up, listener, ""));
        // The protected route refuses this client.
        let direct = raw(&gw, &get("/admin/x")).await;
        assert!(direct.starts_with("HTTP/1.1 403"), "{listener:?}: {direct}");
        up.reset_hits();
        for path in [
            "/public/..%2fadmin/x",
            "/public/%2E%2E%2Fadmin/x",
            "/public/..%5cadmin/x",
            "/public/%252e%252e%252fadmin/x",
            "/public/%2e%2e/admin/x",
            "/public/x/..%2F..%2Fadmin/x",
        ] {
            let answer = raw(&gw, &get(path)).await;
            assert!(answer.starts_with("HTTP/1.1 400"), "{listener:?} {path}: {answer}");
            assert_eq!(error_of(&answer), "path contains dot segments", "{listener:?} {path}");
        }
        assert_eq!(up.hits(), 0, "{listener:?}: none of them reached the upstream");
    }
}

#[tokio::test]
async fn escaped_slashes_follow_the_listener_and_the_route() {
    let up = TestUpstream::start("u").await;
    // The default: refused, on a route without its own setting.
    let gw = Gateway::start(&yaml(&up, None, ""));
    let answer = raw(&gw, &get("/public/a%2Fb")).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(error_of(&answer), "path contains an escaped slash");
    assert!(raw(&gw, &get("/public/a%5cb")).await.starts_with("HTTP/1.1 400"));
    // A route that keeps them: forwarded as sent.
    let answer = raw(&gw, &get("/projects/group%2Fname?x=1")).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let v = json(answer.split("\r\n\r\n").nth(1).unwrap());
    assert_eq!(v["path"], "/projects/group%2Fname", "{v}");
    // A route that decodes them: the upstream gets slashes, the query is kept.
    let answer = raw(&gw, &get("/files/a%2Fb%5Cc%20d?q=1")).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let v = json(answer.split("\r\n\r\n").nth(1).unwrap());
    assert_eq!((v["path"].as_str(), v["query"].as_str()), (Some("/files/a/b/c%20d"), Some("q=1")), "{v}");
    // A route that redirects to the decoded path.
    let answer = raw(&gw, &get("/docs/a%2fb?q=1")).await;
    assert!(answer.starts_with("HTTP/1.1 307"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("\r\nlocation: /docs/a/b?q=1\r\n"), "{answer}");
    // No escape: untouched by any of this.
    assert!(raw(&gw, &get("/public/a/b")).await.starts_with("HTTP/1.1 200"));
    drop(gw);

    // The listener's policy applies where the route has none; the route's wins.
    let gw = Gateway::start(&yaml(&up, Some("unescape_and_forward"), ""));
    let answer = raw(&gw, &get("/public/a%2Fb")).await;
    let v = json(answer.split("\r\n\r\n").nth(1).unwrap());
    assert_eq!(v["path"], "/public/a/b", "{answer}");
    let answer = raw(&gw, &get("/projects/g%2Fn")).await;
    let v = json(answer.split("\r\n\r\n").nth(1).unwrap());
    assert_eq!(v["path"], "/projects/g%2Fn", "{answer}");
    // Decoding can move a request to another route, whose plugins then apply: `/public%2F..`
    // is not a way around them.
    let answer = raw(&gw, &get("/public%2F..%2Fadmin")).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    let answer = raw(&gw, &get("/admin%2Fx")).await;
    assert!(answer.starts_with("HTTP/1.1 403"), "the decoded path is the protected route's: {answer}");
    drop(gw);

    let gw = Gateway::start(&yaml(&up, Some("keep"), ""));
    let answer = raw(&gw, &get("/public/a%2Fb")).await;
    let v = json(answer.split("\r\n\r\n").nth(1).unwrap());
    assert_eq!(v["path"], "/public/a%2Fb", "{answer}");
    // In the access log and metrics like any request of its route.
    let logged = Gateway::eventually(Duration::from_secs(5), || async {
        gw.access_log().iter().any(|l| l["path"] == "/public/a%2Fb" && l["statusCode"] == 200)
    })
    .await;
    assert!(logged);
}

#[tokio::test]
async fn a_request_without_host_or_with_two_is_refused_on_every_listener() {
    let up = TestUpstream::start("u").await;
    let dir = tempfile::tempdir().unwrap();
    let t = LocalhostTls::new(dir.path());
    let (tls, connector) = (t.listener_yaml.clone(), tokio_rustls::TlsConnector::from(t.client(b"http/1.1")));
    for on_tls in [false, true] {
        let gw = Gateway::start(&yaml(&up, None, if on_tls { &tls } else { "" }));
        let send = |head: &'static str| {
            let connector = connector.clone();
            let addr = gw.addr();
            async move {
                let tcp = TcpStream::connect(addr).await.unwrap();
                let mut out = Vec::new();
                if on_tls {
                    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
                    let mut s = connector.connect(name, tcp).await.unwrap();
                    s.write_all(head.as_bytes()).await.unwrap();
                    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
                } else {
                    let mut s = tcp;
                    s.write_all(head.as_bytes()).await.unwrap();
                    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
                }
                String::from_utf8_lossy(&out).into_owned()
            }
        };
        up.reset_hits();
        for (head, error) in [
            ("GET /public/x HTTP/1.1\r\nConnection: close\r\n\r\n", "missing Host field"),
            (
                "GET /public/x HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\nConnection: close\r\n\r\n",
                "more than one Host field",
            ),
            ("GET /public/x HTTP/1.0\r\nHost: a.test\r\nHost: a.test\r\n\r\n", "more than one Host field"),
            ("GET /public/x HTTP/1.1\r\nHost: evil.test@a.test\r\nConnection: close\r\n\r\n", "invalid Host field"),
            (
                "POST /public/x HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
                "more than one Host field",
            ),
        ] {
            let answer = send(head).await;
            assert!(
                answer.starts_with("HTTP/1.1 400") || answer.starts_with("HTTP/1.0 400"),
                "tls {on_tls}: {head:?}: {answer}"
            );
            assert_eq!(error_of(&answer), error, "tls {on_tls}: {head:?}");
            assert!(answer.to_ascii_lowercase().contains("x-request-id:"), "{answer}");
        }
        assert_eq!(up.hits(), 0, "tls {on_tls}: none reached the upstream");
        // HTTP/1.0 may leave Host out; one Host is fine.
        let answer = send("GET /public/x HTTP/1.0\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200"), "{answer}");
        let answer = send("GET /public/x HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let counted = gw.metric("gateway_requests_total{route=\"none\",method=\"GET\",status=\"400\"}").await;
        assert_eq!(counted, 4.0, "tls {on_tls}: counted under route=\"none\"");
    }
}
