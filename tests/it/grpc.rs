//! gRPC through the gateway, against a real HTTP/2 server speaking gRPC's framing (messages
//! with their 5-byte prefix, `grpc-status` in trailers): trailers passed through, streams in
//! both directions without buffering, `grpc-timeout` honoured and passed on with the time
//! left, and the gateway's own errors answered as gRPC statuses.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;

use crate::support::*;

/// One gRPC message: the 5-byte prefix (not compressed, length) and the payload.
fn message(payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + payload.len());
    b.extend_from_slice(&[0]);
    b.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    b.extend_from_slice(payload);
    b.freeze()
}

type Boxed = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn trailers(status: u32, message: &str) -> http::HeaderMap {
    let mut t = http::HeaderMap::new();
    t.insert("grpc-status", status.into());
    if !message.is_empty() {
        t.insert("grpc-message", message.parse().unwrap());
    }
    t
}

/// An HTTP/2 (h2c) server with gRPC's framing. Methods of `/test.Echo/`: `Unary` (its
/// request's bytes back, then `grpc-status: 0`), `Stream` (five messages 150 ms apart),
/// `Chat` (each request piece echoed as it arrives, for as long as the client sends),
/// `Fail` (a trailers-only NOT_FOUND), `Hang` (answers after 10 s). Every answer tells the
/// `grpc-timeout` and `te` the server was sent.
async fn grpc_server() -> std::net::SocketAddr {
    grpc_server_counting().await.0
}

/// [`grpc_server`], with the count of `Flaky` calls: the first two are answered
/// UNAVAILABLE without a message, the others like `Unary`.
async fn grpc_server_counting() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let flaky = Arc::new(AtomicUsize::new(0));
    let calls = flaky.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let flaky = flaky.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let flaky = flaky.clone();
                    async move {
                        let seen =
                            |n: &str| req.headers().get(n).and_then(|v| v.to_str().ok()).unwrap_or("-").to_owned();
                        let (timeout, te) = (seen("grpc-timeout"), seen("te"));
                        let mut res = http::Response::builder()
                            .header("content-type", "application/grpc")
                            .header("x-seen-timeout", timeout)
                            .header("x-seen-te", te);
                        let flaky_call = req.uri().path() == "/test.Echo/Flaky";
                        if flaky_call && flaky.fetch_add(1, Ordering::SeqCst) < 2 {
                            res = res.header("grpc-status", "14").header("grpc-message", "try again");
                            return Ok::<_, Infallible>(
                                res.body(BodyExt::boxed(http_body_util::Empty::new())).unwrap(),
                            );
                        }
                        let body: Boxed = match req.uri().path() {
                            "/test.Echo/Unary" | "/test.Echo/Flaky" => {
                                let got = req.into_body().collect().await.unwrap().to_bytes();
                                let frames = vec![Ok(Frame::data(got)), Ok(Frame::trailers(trailers(0, "")))];
                                BodyExt::boxed(StreamBody::new(futures_util::stream::iter(frames)))
                            }
                            "/test.Echo/Stream" => {
                                let s = futures_util::stream::unfold(0u32, |i| async move {
                                    match i {
                                        0..5 => {
                                            tokio::time::sleep(Duration::from_millis(150)).await;
                                            Some((Ok(Frame::data(message(format!("m{i}").as_bytes()))), i + 1))
                                        }
                                        5 => Some((Ok(Frame::trailers(trailers(0, ""))), 6)),
                                        _ => None,
                                    }
                                });
                                BodyExt::boxed(StreamBody::new(s))
                            }
                            "/test.Echo/Chat" => {
                                let incoming = req.into_body();
                                let s = futures_util::stream::unfold(Some(incoming), |body| async move {
                                    let mut body = body?;
                                    match body.frame().await {
                                        Some(Ok(f)) => match f.into_data() {
                                            Ok(d) => Some((Ok(Frame::data(d)), Some(body))),
                                            Err(_) => Some((Ok(Frame::trailers(trailers(0, ""))), None)),
                                        },
                                        _ => Some((Ok(Frame::trailers(trailers(0, ""))), None)),
                                    }
                                });
                                BodyExt::boxed(StreamBody::new(s))
                            }
                            "/test.Echo/Down" => {
                                res = res.header("grpc-status", "14").header("grpc-message", "overloaded");
                                BodyExt::boxed(http_body_util::Empty::new())
                            }
                            "/test.Echo/Invalid" => {
                                res = res.header("grpc-status", "3").header("grpc-message", "bad field");
                                BodyExt::boxed(http_body_util::Empty::new())
                            }
                            "/test.Echo/Fail" => {
                                res = res.header("grpc-status", "5").header("grpc-message", "no such thing");
                                BodyExt::boxed(http_body_util::Empty::new())
                            }
                            "/test.Echo/Hang" => {
                                tokio::time::sleep(Duration::from_secs(10)).await;
                                BodyExt::boxed(http_body_util::Empty::new())
                            }
                            _ => {
                                res = res.header("grpc-status", "12");
                                BodyExt::boxed(http_body_util::Empty::new())
                            }
                        };
                        Ok::<_, Infallible>(res.body(body).unwrap())
                    }
                });
                let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, calls)
}

fn gateway(server: std::net::SocketAddr, extra_routes: &str) -> Gateway {
    Gateway::start(&config(&format!(
        "upstreams:\n  g:\n    targets: [{{ url: \"http://{server}\" }}]\n    protocol: http2\n    timeouts: {{ request: 5s }}\n  down:\n    targets: [{{ url: \"http://127.0.0.1:9\" }}]\n    protocol: http2\n{extra_routes}"
    )))
}

fn h2() -> hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Boxed> {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).http2_only(true).build_http()
}

fn call(url: &str, body: Boxed, extra: &[(&str, &str)]) -> http::Request<Boxed> {
    let mut b = http::Request::post(url).header("content-type", "application/grpc").header("te", "trailers");
    for (k, v) in extra {
        b = b.header(*k, *v);
    }
    b.body(body).unwrap()
}

fn full(b: Bytes) -> Boxed {
    BodyExt::boxed(http_body_util::Full::new(b))
}

/// A call's answer: its head fields, the data, and the trailers.
async fn unary(url: &str, payload: &[u8], extra: &[(&str, &str)]) -> (http::HeaderMap, Bytes, http::HeaderMap) {
    let res = h2().request(call(url, full(message(payload)), extra)).await.unwrap();
    assert_eq!(res.status(), 200);
    let head = res.headers().clone();
    let collected = res.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().unwrap_or_default();
    (head, collected.to_bytes(), trailers)
}

const ROUTES: &str = "routes:\n  - { name: echo, match: { prefix: /test.Echo/ }, upstream: g }\n";

#[tokio::test]
async fn unary_calls_and_their_trailers_pass_through() {
    let gw = gateway(grpc_server().await, ROUTES);
    let (head, data, trailers) = unary(&gw.url("/test.Echo/Unary"), b"hello", &[]).await;
    assert_eq!(data, message(b"hello"));
    assert_eq!(trailers["grpc-status"], "0", "{trailers:?}");
    assert_eq!(head["x-seen-te"], "trailers", "the upstream is told the client takes trailers");
    // A trailers-only error answer from the upstream reaches the client as it is.
    let (head, data, _) = unary(&gw.url("/test.Echo/Fail"), b"x", &[]).await;
    assert!(data.is_empty());
    assert_eq!((head["grpc-status"].to_str().unwrap(), head["grpc-message"].to_str().unwrap()), ("5", "no such thing"));
}

#[tokio::test]
async fn streams_flow_both_ways_without_buffering() {
    let gw = gateway(grpc_server().await, ROUTES);
    // Server streaming: each message arrives as it is sent, not all at the end.
    let res = h2().request(call(&gw.url("/test.Echo/Stream"), full(message(b"go")), &[])).await.unwrap();
    let mut body = res.into_body();
    let start = Instant::now();
    let mut arrivals = Vec::new();
    let mut trailers = None;
    while let Some(f) = body.frame().await {
        let f = f.unwrap();
        match f.into_data() {
            Ok(d) => arrivals.push((start.elapsed(), d)),
            Err(f) => trailers = f.into_trailers().ok(),
        }
    }
    let all: BytesMut = arrivals.iter().fold(BytesMut::new(), |mut acc, (_, d)| {
        acc.extend_from_slice(d);
        acc
    });
    let want: BytesMut = (0..5).fold(BytesMut::new(), |mut acc, i| {
        acc.extend_from_slice(&message(format!("m{i}").as_bytes()));
        acc
    });
    assert_eq!(all, want);
    assert!(arrivals.len() >= 3, "the messages came in pieces: {}", arrivals.len());
    let (first, last) = (arrivals[0].0, arrivals[arrivals.len() - 1].0);
    assert!(last - first >= Duration::from_millis(400), "spread over the stream: {first:?} .. {last:?}");
    assert_eq!(trailers.unwrap()["grpc-status"], "0");

    // Bidirectional: each message is echoed before the next is sent, so neither side can
    // be buffered whole by the gateway.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
    let req_body: Boxed = BodyExt::boxed(StreamBody::new(tokio_stream_from(rx)));
    let res = h2().request(call(&gw.url("/test.Echo/Chat"), req_body, &[])).await.unwrap();
    let mut body = res.into_body();
    for i in 0..3 {
        let m = message(format!("turn {i}").as_bytes());
        tx.send(Ok(Frame::data(m.clone()))).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), body.frame()).await.expect("echoed before the next");
        assert_eq!(got.unwrap().unwrap().into_data().unwrap(), m, "turn {i}");
    }
    drop(tx);
    let mut trailers = None;
    while let Some(f) = body.frame().await {
        if let Ok(t) = f.unwrap().into_trailers() {
            trailers = Some(t);
        }
    }
    assert_eq!(trailers.unwrap()["grpc-status"], "0");
}

/// A stream of the frames sent on `rx`.
fn tokio_stream_from(
    rx: tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, Infallible>>,
) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, Infallible>> {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) })
}

#[tokio::test]
async fn grpc_timeout_is_the_deadline_and_goes_on_with_the_time_left() {
    let gw = gateway(grpc_server().await, ROUTES);
    let (head, ..) = unary(&gw.url("/test.Echo/Unary"), b"x", &[("grpc-timeout", "2S")]).await;
    let sent = head["x-seen-timeout"].to_str().unwrap();
    let left = parse(sent);
    assert!(left <= Duration::from_secs(2) && left > Duration::from_millis(1500), "{sent}");
    // No deadline from the client: none invented for the upstream.
    let (head, ..) = unary(&gw.url("/test.Echo/Unary"), b"x", &[]).await;
    assert_eq!(head["x-seen-timeout"], "-");
    // A deadline longer than the upstream's 5s is cut to it.
    let (head, ..) = unary(&gw.url("/test.Echo/Unary"), b"x", &[("grpc-timeout", "1H")]).await;
    assert!(parse(head["x-seen-timeout"].to_str().unwrap()) <= Duration::from_secs(5));
    // The deadline passes: DEADLINE_EXCEEDED from the gateway, as a gRPC status.
    let started = Instant::now();
    let (head, data, _) = unary(&gw.url("/test.Echo/Hang"), b"x", &[("grpc-timeout", "300m")]).await;
    assert!(started.elapsed() < Duration::from_secs(5), "the client's deadline, not the upstream's 5s");
    assert!(data.is_empty());
    assert_eq!(head["grpc-status"], "4", "{head:?}");
    assert_eq!(head["content-type"], "application/grpc");
    // The client's own deadline: nothing counted against the upstream.
    assert_eq!(gw.metric("gateway_backend_errors_total{upstream=\"g\",kind=\"timeout\"}").await, 0.0);
}

fn parse(v: &str) -> Duration {
    let (n, unit) = v.split_at(v.len() - 1);
    let n: u64 = n.parse().unwrap();
    match unit {
        "u" => Duration::from_micros(n),
        "m" => Duration::from_millis(n),
        "S" => Duration::from_secs(n),
        "n" => Duration::from_nanos(n),
        other => panic!("unit {other}"),
    }
}

#[tokio::test]
async fn the_gateways_own_errors_are_grpc_statuses() {
    let server = grpc_server().await;
    let gw = gateway(
        server,
        &format!(
            "consumers:\n  - {{ id: c1, api_keys: [{{ sha256: {} }}] }}\nroutes:\n  - {{ name: echo, match: {{ prefix: /test.Echo/ }}, upstream: g }}\n  - {{ name: locked, match: {{ path: \"/test.Locked/{{m}}\" }}, upstream: g, rewrite: {{ path: \"/test.Echo/{{m}}\" }}, plugins: [{{ api_key: {{ header: x-api-key }} }}] }}\n  - {{ name: limited, match: {{ path: \"/test.Limited/{{m}}\" }}, upstream: g, rewrite: {{ path: \"/test.Echo/{{m}}\" }}, plugins: [{{ rate_limit: {{ limits: [{{ limit: 1, per: 1m }}] }} }}] }}\n  - {{ name: down, match: {{ prefix: /test.Down/ }}, upstream: down }}\n",
            hash_key("k1")
        ),
    );
    let status = |h: &http::HeaderMap| h.get("grpc-status").map(|v| v.to_str().unwrap().to_owned());
    let (h, ..) = unary(&gw.url("/nothing.Here/Call"), b"x", &[]).await;
    assert_eq!(status(&h).as_deref(), Some("12"), "no route: UNIMPLEMENTED {h:?}");
    assert!(h.contains_key("x-request-id") && h["content-type"] == "application/grpc");
    let (h, ..) = unary(&gw.url("/test.Locked/Call"), b"x", &[]).await;
    assert_eq!(status(&h).as_deref(), Some("16"), "no key: UNAUTHENTICATED");
    assert_eq!(h["grpc-message"], "credentials required");
    let (h, _, t) = unary(&gw.url("/test.Locked/Unary"), b"x", &[("x-api-key", "k1")]).await;
    assert!(status(&h).is_none() && t["grpc-status"] == "0", "with the key: the upstream's answer");
    unary(&gw.url("/test.Limited/Unary"), b"x", &[]).await;
    let (h, ..) = unary(&gw.url("/test.Limited/Unary"), b"x", &[]).await;
    assert_eq!(status(&h).as_deref(), Some("8"), "over the limit: RESOURCE_EXHAUSTED");
    let (h, ..) = unary(&gw.url("/test.Down/Call"), b"x", &[]).await;
    assert_eq!(status(&h).as_deref(), Some("14"), "upstream down: UNAVAILABLE");
    // A plain HTTP/1.1 client on the same route still gets the JSON error.
    let (s, _, body) = get(&gw.url("/test.Down/Call")).await;
    assert_eq!((s.as_u16(), json(&body)["status"].as_u64()), (502, Some(502)));
}

#[tokio::test]
async fn a_call_the_service_did_not_start_on_is_retried_on_the_named_statuses() {
    let (server, calls) = grpc_server_counting().await;
    let gw = Gateway::start(&config(&format!(
        "upstreams:\n  g:\n    targets: [{{ url: \"http://{server}\" }}]\n    protocol: http2\n    retries: {{ attempts: 2, grpc_statuses: [UNAVAILABLE], backoff: 1ms }}\n  plain:\n    targets: [{{ url: \"http://{server}\" }}]\n    protocol: http2\n    retries: {{ attempts: 2, backoff: 1ms }}\nroutes:\n  - {{ name: retried, match: {{ prefix: /test.Echo/ }}, upstream: g }}\n  - {{ name: plain, match: {{ path: \"/plain/{{m}}\" }}, upstream: plain, rewrite: {{ path: \"/test.Echo/{{m}}\" }} }}\n"
    )));
    let (head, data, trailers) = unary(&gw.url("/test.Echo/Flaky"), b"once more", &[]).await;
    assert!(head.get("grpc-status").is_none(), "{head:?}");
    assert_eq!((data, trailers["grpc-status"].to_str().unwrap()), (message(b"once more"), "0"));
    assert_eq!(calls.load(Ordering::SeqCst), 3, "two UNAVAILABLE answers, then the call");
    assert_eq!(gw.metric("gateway_upstream_retries_total{upstream=\"g\"}").await, 2.0);
    // Without grpc_statuses, a POST is not retried: the client gets the UNAVAILABLE.
    calls.store(0, Ordering::SeqCst);
    let (head, ..) = unary(&gw.url("/plain/Flaky"), b"x", &[]).await;
    assert_eq!(head["grpc-status"], "14");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[test]
fn grpc_statuses_are_checked() {
    let e = validation_errors(&config(
        "upstreams:\n  g:\n    targets: [{ url: \"http://127.0.0.1:9\" }]\n    retries: { grpc_statuses: [UNAVAILABLE, OK, unavailable] }\nroutes:\n  - { name: r, match: { prefix: / }, upstream: g }\n",
    ));
    assert!(e.contains("upstreams.g.retries.grpc_statuses[1]: OK is not a failure to retry"), "{e}");
    assert!(e.contains("upstreams.g.retries.grpc_statuses[2]"), "{e}");
    assert!(!e.contains("grpc_statuses[0]"), "{e}");
}

/// An HTTP/2 server that answers the gRPC health protocol with `serving` (1 SERVING,
/// 2 NOT_SERVING) for the service it is asked about, and `/test.Echo/Unary` with an empty
/// OK. Records the services it was asked about.
async fn health_server(serving: Arc<AtomicUsize>, asked: Arc<std::sync::Mutex<Vec<Vec<u8>>>>) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (serving, asked) = (serving.clone(), asked.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let (serving, asked) = (serving.clone(), asked.clone());
                    async move {
                        let path = req.uri().path().to_owned();
                        let got = req.into_body().collect().await.unwrap().to_bytes();
                        let reply = match path.as_str() {
                            "/grpc.health.v1.Health/Check" => {
                                asked.lock().unwrap().push(got.get(5..).unwrap_or_default().to_vec());
                                message(&[0x08, serving.load(Ordering::SeqCst) as u8])
                            }
                            _ => message(b""),
                        };
                        let frames = vec![Ok(Frame::data(reply)), Ok(Frame::trailers(trailers(0, "")))];
                        let body: Boxed = BodyExt::boxed(StreamBody::new(futures_util::stream::iter(frames)));
                        Ok::<_, Infallible>(
                            http::Response::builder().header("content-type", "application/grpc").body(body).unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn targets_are_checked_with_the_grpc_health_protocol() {
    let serving = Arc::new(AtomicUsize::new(1));
    let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let server = health_server(serving.clone(), asked.clone()).await;
    let gw = Gateway::start(&config(&format!(
        "upstreams:\n  g:\n    targets: [{{ url: \"http://{server}\" }}]\n    protocol: http2\n    health_check: {{ interval: 100ms, timeout: 100ms, unhealthy_after: 1, healthy_after: 1, grpc: {{ service: orders.v1.Orders }} }}\nroutes:\n  - {{ name: r, match: {{ prefix: /test.Echo/ }}, upstream: g }}\n"
    )));
    let healthy =
        || async { gw.metric(&format!("gateway_upstream_target_healthy{{upstream=\"g\",target=\"{server}\"}}")).await };
    assert!(Gateway::eventually(Duration::from_secs(5), || async { !asked.lock().unwrap().is_empty() }).await);
    assert_eq!(asked.lock().unwrap()[0], b"\x0a\x10orders.v1.Orders", "HealthCheckRequest {{ service }}");
    assert_eq!(healthy().await, 1.0);
    let (_, _, t) = unary(&gw.url("/test.Echo/Unary"), b"x", &[]).await;
    assert_eq!(t["grpc-status"], "0");
    // NOT_SERVING: the target leaves the rotation, and the call is the gateway's UNAVAILABLE.
    serving.store(2, Ordering::SeqCst);
    assert!(Gateway::eventually(Duration::from_secs(5), || async { healthy().await == 0.0 }).await);
    let (h, ..) = unary(&gw.url("/test.Echo/Unary"), b"x", &[]).await;
    assert_eq!(h["grpc-status"], "14", "{h:?}");
    assert!(gw.stderr_text().contains("serving status 2 (not SERVING)"), "the reason is logged");
    serving.store(1, Ordering::SeqCst);
    assert!(Gateway::eventually(Duration::from_secs(5), || async { healthy().await == 1.0 }).await);
}

#[test]
fn a_grpc_health_check_needs_http2() {
    let e = validation_errors(&config(
        "upstreams:\n  g:\n    targets: [{ url: \"http://127.0.0.1:9\" }]\n    health_check: { grpc: {} }\nroutes:\n  - { name: r, match: { prefix: / }, upstream: g }\n",
    ));
    assert!(
        e.contains("upstreams.g.health_check.grpc: the gRPC health protocol needs the upstream's protocol: http2"),
        "{e}"
    );
}

#[tokio::test]
async fn the_services_failures_open_the_breaker_and_the_callers_do_not() {
    let server = grpc_server().await;
    let gw = Gateway::start(&config(&format!(
        "upstreams:\n  g:\n    targets: [{{ url: \"http://{server}\" }}]\n    protocol: http2\n    circuit_breaker: {{ error_rate: 50%, min_requests: 4, window: 10s, open_for: 30s }}\nroutes:\n  - {{ name: r, match: {{ prefix: /test.Echo/ }}, upstream: g }}\n"
    )));
    let breaker = || async { gw.metric("gateway_circuit_breaker_state{upstream=\"g\"}").await };
    // The caller's mistakes (INVALID_ARGUMENT) say nothing of the service.
    for _ in 0..6 {
        let (h, ..) = unary(&gw.url("/test.Echo/Invalid"), b"x", &[]).await;
        assert_eq!(h["grpc-status"], "3");
    }
    assert_eq!(breaker().await, 0.0, "closed");
    // The service's own failures (UNAVAILABLE) open it, and then the gateway answers.
    for _ in 0..6 {
        unary(&gw.url("/test.Echo/Down"), b"x", &[]).await;
    }
    assert_eq!(breaker().await, 1.0, "open");
    let (h, ..) = unary(&gw.url("/test.Echo/Unary"), b"x", &[]).await;
    assert_eq!(
        (h["grpc-status"].to_str().unwrap(), h["grpc-message"].to_str().unwrap()),
        ("14", "upstream circuit open")
    );
}
