//! Connection-level limits and streaming.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

fn limited(up: &TestUpstream, limits: &str) -> String {
    format!(
        "version: 1\nlisteners:\n  - name: public\n    bind: 127.0.0.1:0\n    limits: {{ {limits} }}\nadmin: {{ bind: 127.0.0.1:0 }}\naccess_log: {{ enabled: false }}\nupstreams:\n  u: {{ targets: [{{ url: \"{}\" }}] }}\nroutes:\n  - {{ name: r, match: {{ prefix: / }}, upstream: u }}\n",
        up.url()
    )
}

/// Reads until the peer closes; returns the bytes and how long it took.
async fn read_until_closed(s: &mut TcpStream, limit: Duration) -> (Vec<u8>, Option<Duration>) {
    let start = Instant::now();
    let mut out = Vec::new();
    match tokio::time::timeout(limit, s.read_to_end(&mut out)).await {
        Ok(_) => (out, Some(start.elapsed())),
        Err(_) => (out, None),
    }
}

/// With `header_timeout: 500ms, idle_timeout: 2s`: a trickled head on `s` is cut off
/// after header_timeout.
async fn slow_head_is_cut_off(mut s: TcpStream) {
    s.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let _ = s.write_all(b"X-Slow: 1\r\n").await;
    }
    let (_, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    let closed = closed.expect("slow head must be cut off");
    assert!(closed < Duration::from_millis(1500), "{closed:?}");
}

/// With the same limits: `s`, after an answered request, idle for longer than
/// header_timeout but less than idle_timeout still serves the next request, and is closed
/// once idle past idle_timeout.
async fn idle_lives_until_idle_timeout(mut s: TcpStream) {
    tokio::time::sleep(Duration::from_millis(1000)).await;
    s.write_all(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"), "served after 1s idle");
    let (_, closed) = read_until_closed(&mut s, Duration::from_secs(6)).await;
    let closed = closed.expect("idle connection must be closed");
    assert!(closed >= Duration::from_millis(1500) && closed < Duration::from_secs(4), "{closed:?}");
}

/// A connection whose first request `first` was answered 200.
async fn answered(gw: &Gateway, first: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(gw.addr()).await.unwrap();
    s.write_all(first).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    s
}

#[tokio::test]
async fn slowloris_head_is_cut_off_but_idle_keep_alive_lives_until_idle_timeout() {
    let up = TestUpstream::start("u").await;
    let gw = Gateway::start(&limited(&up, "header_timeout: 500ms, idle_timeout: 2s"));
    slow_head_is_cut_off(TcpStream::connect(gw.addr()).await.unwrap()).await;
    idle_lives_until_idle_timeout(answered(&gw, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n").await).await;
}

/// The same timeouts on a connection the lean loop handed to hyper (its first request asks
/// for an upgrade the upstream does not make: hyper keeps the connection, as it would have
/// tunnelled it): the server's two loops keep one set of rules.
#[tokio::test]
async fn the_same_timeouts_hold_on_a_connection_handed_to_hyper() {
    let up = TestUpstream::start("u").await;
    let gw = Gateway::start(&limited(&up, "header_timeout: 500ms, idle_timeout: 2s"));
    let first = b"GET /first HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: nothing\r\n\r\n";
    slow_head_is_cut_off(answered(&gw, first).await).await;
    idle_lives_until_idle_timeout(answered(&gw, first).await).await;
}

#[tokio::test]
async fn max_connections_holds_new_clients_until_a_slot_frees() {
    let up = TestUpstream::start("u").await;
    let gw = Gateway::start(&limited(&up, "max_connections: 1, idle_timeout: 5s"));
    let mut first = TcpStream::connect(gw.addr()).await.unwrap();
    first.write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = first.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));

    // The second connection is accepted by the kernel but not served while the first
    // is open.
    let mut second = TcpStream::connect(gw.addr()).await.unwrap();
    second.write_all(b"GET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let waited = tokio::time::timeout(Duration::from_millis(400), second.read(&mut buf)).await;
    assert!(waited.is_err(), "second connection must wait for a slot");
    drop(first);
    let (out, closed) = read_until_closed(&mut second, Duration::from_secs(5)).await;
    assert!(closed.is_some());
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn one_gib_streams_both_ways_in_bounded_memory() {
    let up = TestUpstream::start("u").await;
    let gw = Gateway::start(&limited(&up, "max_body: 2GiB"));
    let gib: u64 = 1 << 30;

    // Download: the upstream streams 1 GiB; count it as it arrives.
    let res = client().get(gw.url(&format!("/stream?bytes={gib}")).parse().unwrap()).await.unwrap();
    assert_eq!(res.status(), 200);
    let mut body = res.into_body();
    let mut got: u64 = 0;
    let mut peak = 0;
    let mut next_sample = 0;
    while let Some(frame) = body.frame().await {
        got += frame.unwrap().data_ref().map_or(0, |d| d.len() as u64);
        if got >= next_sample {
            peak = peak.max(rss_bytes(gw.pid()));
            next_sample += 64 << 20;
        }
    }
    assert_eq!(got, gib);

    // Upload: 1 GiB generated on the fly, counted by the upstream.
    let chunk = Bytes::from(vec![b'y'; 256 * 1024]);
    let n = gib / chunk.len() as u64;
    let stream = futures_util::stream::iter(
        (0..n).map(move |_| Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(chunk.clone()))),
    );
    let body = http_body_util::StreamBody::new(stream);
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let req = http::Request::post(gw.url("/upload")).body(body).unwrap();
    let pid = gw.pid();
    let upload_peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let p2 = upload_peak.clone();
    let sampler = tokio::spawn(async move {
        loop {
            p2.fetch_max(rss_bytes(pid), std::sync::atomic::Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let res = client.request(req).await.unwrap();
    assert_eq!(res.status(), 200);
    let text = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(String::from_utf8_lossy(&text), format!("{{\"bytes\":{gib}}}"));
    sampler.abort();
    peak = peak.max(upload_peak.load(std::sync::atomic::Ordering::Relaxed)).max(rss_bytes(gw.pid()));
    assert!(peak < 64 << 20, "gateway RSS peaked at {} MiB", peak >> 20);
}
