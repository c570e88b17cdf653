//! The compression plugin with real clients: curl `--compressed` over every transport, a
//! slow stream that reaches the client piece by piece while the upstream is still writing
//! it, and the answers it must leave alone.

use std::io::Write as _;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::matrix::{MatrixGateway, Transport};
use crate::support::*;

/// `/plain/..` without the plugin, `/small/..` and `/down` (a refused upstream) with
/// `min_size: 0`, everything else with the defaults.
fn yaml(up: &str) -> String {
    let refused = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    config(&format!(
        r#"upstreams:
  u: {{ targets: [{{ url: "{up}" }}] }}
  d: {{ targets: [{{ url: "http://{refused}" }}] }}
routes:
  - {{ name: plain, match: {{ prefix: /plain }}, upstream: u, rewrite: {{ strip_prefix: /plain }} }}
  - name: small
    match: {{ prefix: /small }}
    upstream: u
    rewrite: {{ strip_prefix: /small }}
    plugins: [{{ compression: {{ min_size: 0B }} }}]
  - {{ name: down, match: {{ prefix: /down }}, upstream: d, plugins: [{{ compression: {{ min_size: 0B }} }}] }}
  - {{ name: gz, match: {{ prefix: / }}, upstream: u, plugins: [{{ compression: {{}} }}] }}
"#
    ))
}

/// curl over `t` with `args` before the URL; (status, lowercased head, body).
async fn curl_over(mx: &MatrixGateway, t: Transport, args: &[&str], path: &str) -> (u16, String, String) {
    let resolve = format!("localhost:{}:127.0.0.1", mx.gateway(t).addr().port());
    let url = format!("{}://{}{path}", t.scheme(), mx.authority(t));
    let mut all = vec!["-s", "-i", "--resolve", &resolve];
    all.extend_from_slice(t.curl_args());
    if t.with_body() {
        all.extend_from_slice(&["-X", "GET", "--data-binary", "x"]);
    }
    all.extend_from_slice(args);
    all.push(&url);
    let (ok, out) = curl(&all).await;
    assert!(ok, "[{t}] curl {all:?}\n{out}");
    let (head, body) = out.rsplit_once("\r\n\r\n").unwrap_or((&out, ""));
    let head = head.rsplit("\r\n\r\n").next().unwrap_or(head).to_ascii_lowercase();
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, head, body.to_owned())
}

#[tokio::test]
async fn answers_are_compressed_for_clients_that_accept_gzip_on_every_transport() {
    let up = TestUpstream::start("u").await;
    let mx = MatrixGateway::start(&yaml(&up.url()));
    let big = "/stream?bytes=300000&type=text/plain;%20charset=utf-8";
    for t in Transport::ALL {
        // curl asks for gzip and decodes it: the body arrives whole.
        let (status, head, body) = curl_over(&mx, t, &["--compressed"], big).await;
        assert_eq!(status, 200, "[{t}] {head}");
        assert!(head.contains("content-encoding: gzip"), "[{t}] {head}");
        assert!(head.contains("vary: accept-encoding"), "[{t}] {head}");
        assert!(!head.contains("content-length"), "[{t}] {head}");
        assert_eq!(body.len(), 300_000, "[{t}]");
        assert!(body.bytes().all(|b| b == b'x'), "[{t}]");
        // What went over the wire is the compressed form.
        let (_, _, raw) = curl_over(&mx, t, &["-H", "Accept-Encoding: gzip"], big).await;
        assert!(raw.len() < 5_000, "[{t}] {} bytes on the wire", raw.len());

        // A client that does not ask, or refuses gzip, gets the body as it is, and `Vary`.
        for args in [&[][..], &["-H", "Accept-Encoding: br, gzip;q=0"]] {
            let (status, head, body) = curl_over(&mx, t, args, big).await;
            assert_eq!(status, 200, "[{t}] {head}");
            assert!(!head.contains("content-encoding"), "[{t}] {args:?} {head}");
            assert!(head.contains("vary: accept-encoding"), "[{t}] {head}");
            assert!(head.contains("content-length: 300000"), "[{t}] {head}");
            assert_eq!(body.len(), 300_000, "[{t}]");
        }
        // A route without the plugin is untouched.
        let (_, head, body) = curl_over(&mx, t, &["-H", "Accept-Encoding: gzip"], &format!("/plain{big}")).await;
        assert!(!head.contains("content-encoding") && !head.contains("vary"), "[{t}] {head}");
        assert_eq!(body.len(), 300_000, "[{t}]");
    }
}

#[tokio::test]
async fn answers_that_must_stay_as_they_are_are_left_alone() {
    let up = TestUpstream::start("u").await;
    let mx = MatrixGateway::start(&yaml(&up.url()));
    let gzip = ["-H", "Accept-Encoding: gzip"];
    for t in [Transport::H1Fast, Transport::TlsH2] {
        // Smaller than min_size (1 KiB by default).
        let (_, head, body) = curl_over(&mx, t, &gzip, "/stream?bytes=1000&type=text/plain").await;
        assert!(!head.contains("content-encoding") && head.contains("content-length: 1000"), "[{t}] {head}");
        assert_eq!(body.len(), 1000);
        // Not a listed type, or no type.
        for path in ["/stream?bytes=5000&type=image/png", "/stream?bytes=5000"] {
            let (_, head, body) = curl_over(&mx, t, &gzip, path).await;
            assert!(!head.contains("content-encoding") && !head.contains("vary"), "[{t}] {path} {head}");
            assert_eq!(body.len(), 5000);
        }
        // Compressed by the upstream already.
        let (_, head, body) = curl_over(&mx, t, &gzip, "/headers?content-type=text/plain&content-encoding=br").await;
        assert!(head.contains("content-encoding: br") && !head.contains("gzip"), "[{t}] {head}");
        assert_eq!(body, "headers set");
        // `Cache-Control: no-transform`.
        let (_, head, _) =
            curl_over(&mx, t, &gzip, "/headers?content-type=text/plain&cache-control=no-transform").await;
        assert!(!head.contains("content-encoding"), "[{t}] {head}");
        // HEAD: the head a GET would get, no body.
        let (status, head, body) =
            curl_over(&mx, t, &["-I", "-H", "Accept-Encoding: gzip"], "/stream?bytes=300000&type=text/plain").await;
        assert_eq!(status, 200, "[{t}] {head}");
        assert!(head.contains("content-encoding: gzip"), "[{t}] {head}");
        assert_eq!(body, "");
        // The gateway's own errors are not the handler's answer (`min_size: 0` there).
        let (status, head, body) = curl_over(&mx, t, &gzip, "/down").await;
        assert_eq!(status, 502, "[{t}] {head}");
        assert!(!head.contains("content-encoding"), "[{t}] {head}");
        assert!(body.contains("requestId"), "[{t}] {body}");
    }
    // An `ETag` becomes weak when the body is compressed; the body transport's one byte
    // comes back through the echo.
    let (_, head, body) = curl_over(
        &mx,
        Transport::H1Body,
        &["--compressed", "-H", "Content-Type: application/json"],
        "/small/echo-body",
    )
    .await;
    assert_eq!(body, "x");
    assert!(head.contains("content-encoding: gzip"), "{head}");
    assert!(head.contains("etag: w/\"upstream\""), "{head}");
}

/// A scripted upstream for the streaming test: answers one chunked `text/plain` response,
/// its first piece at once, the second only when `go` fires.
async fn two_piece_upstream(go: tokio::sync::oneshot::Receiver<()>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            if conn.read(&mut b).await.unwrap_or(0) == 0 {
                return;
            }
            head.push(b[0]);
        }
        let first = "part one\n".repeat(200);
        let _ = conn
            .write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{first}\r\n",
                    first.len()
                )
                .as_bytes(),
            )
            .await;
        let _ = go.await;
        let _ = conn.write_all(b"9\r\npart two\n\r\n0\r\n\r\n").await;
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn a_slow_stream_reaches_the_client_as_it_comes_not_when_it_ends() {
    let (go, wait) = tokio::sync::oneshot::channel();
    let up = two_piece_upstream(wait).await;
    let gw = Gateway::start(&yaml(&up));
    let tcp = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("/live")
        .header("host", "localhost")
        .header("accept-encoding", "gzip")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let res = send.send_request(req).await.unwrap();
    assert_eq!(res.headers()["content-encoding"], "gzip");
    let mut body = res.into_body();
    let mut decoded = flate2::write::GzDecoder::new(Vec::new());
    let first = "part one\n".repeat(200);
    // The first piece decodes while the upstream still holds the second: the gateway
    // flushed when the upstream paused. A gateway that held the body would hang here.
    let got_first = tokio::time::timeout(Duration::from_secs(10), async {
        while decoded.get_ref().len() < first.len() {
            let Some(Ok(frame)) = body.frame().await else { break };
            if let Ok(data) = frame.into_data() {
                decoded.write_all(&data).unwrap();
                decoded.flush().unwrap();
            }
        }
    })
    .await;
    assert!(got_first.is_ok(), "the first piece did not arrive before the upstream went on");
    assert_eq!(String::from_utf8_lossy(decoded.get_ref()), first);
    go.send(()).unwrap();
    while let Some(Ok(frame)) = body.frame().await {
        if let Ok(data) = frame.into_data() {
            decoded.write_all(&data).unwrap();
        }
    }
    let all = decoded.finish().unwrap();
    assert_eq!(String::from_utf8_lossy(&all), format!("{first}part two\n"));
}
