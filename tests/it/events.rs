//! Event routes (`publish`): requests become events on a Redis stream of a real
//! redis-server, answered 202 only once Redis has them; 503 in bounded time when it does not.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use crate::support::*;

fn yaml(redis: &RedisServer, extra: &str) -> String {
    config(&format!(
        r#"redis: {{ url: "{}", key_prefix: "t:", timeout: 300ms }}
routes:
  - name: orders-created
    match: {{ path: /events/orders, methods: [POST] }}
    publish:
      stream: orders.created
      headers: [x-source]
{extra}"#,
        redis.url()
    ))
}

/// The stream's entries as `(id, fields)`, read with redis-cli as a consumer would.
fn entries(redis: &RedisServer, key: &str) -> Vec<(String, Vec<(String, String)>)> {
    let out = Command::new("redis-cli")
        .args(["-p", &redis.port.to_string(), "--raw", "XRANGE", key, "-", "+"])
        .output()
        .expect("redis-cli (redis-tools) must be installed");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let is_id = |l: &str| l.split_once('-').is_some_and(|(a, b)| a.parse::<u64>().is_ok() && b.parse::<u64>().is_ok());
    let mut all: Vec<(String, Vec<(String, String)>)> = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if is_id(line) {
            all.push((line.to_owned(), Vec::new()));
        } else if let (Some(last), Some(value)) = (all.last_mut(), lines.next()) {
            last.1.push((line.to_owned(), value.to_owned()));
        }
    }
    all
}

fn post(url: &str, body: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut b = Request::post(url).header("content-type", "application/json");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::from(body.to_owned()))).unwrap()
}

#[tokio::test]
async fn a_request_becomes_an_event_answered_202_once_redis_has_it() {
    let redis = RedisServer::start();
    let gw = Gateway::start(&yaml(&redis, "    plugins: [{ request_headers: { set: { x-ignored: a } } }]\n"));
    let url = gw.url("/events/orders?region=eu");

    let req = post(&url, r#"{"order":42}"#, &[("idempotency-key", "order-42"), ("x-source", "shop")]);
    let (status, headers, body) = send(req).await;
    assert_eq!(status, 202, "{body}");
    let v = json(&body);
    let request_id = headers["x-request-id"].to_str().unwrap();
    assert_eq!((v["stream"].as_str(), v["requestId"].as_str()), (Some("orders.created"), Some(request_id)));
    let id = v["eventId"].as_str().unwrap().to_owned();

    // Without a key of its own, the request ID is the event's idempotency key.
    let (status, headers, body) = send(post(&url, "{}", &[])).await;
    assert_eq!(status, 202, "{body}");
    let second_id = headers["x-request-id"].to_str().unwrap().to_owned();

    let events = entries(&redis, "t:orders.created");
    assert_eq!(events.len(), 2, "{events:?}");
    let (got_id, fields) = &events[0];
    assert_eq!(got_id, &id);
    let field = |fields: &[(String, String)], n: &str| {
        fields.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone()).unwrap_or_default()
    };
    assert_eq!(field(fields, "body"), r#"{"order":42}"#);
    assert_eq!(field(fields, "idempotencyKey"), "order-42");
    assert_eq!(field(fields, "requestId"), request_id);
    assert_eq!(field(fields, "header.x-source"), "shop");
    assert_eq!(field(fields, "contentType"), "application/json");
    assert_eq!((field(fields, "method"), field(fields, "path")), ("POST".to_owned(), "/events/orders".to_owned()));
    assert_eq!(field(fields, "query"), "region=eu");
    assert!(field(fields, "time").parse::<u64>().is_ok_and(|t| t > 1_700_000_000_000), "{fields:?}");
    assert!(!fields.iter().any(|(k, _)| k == "header.x-ignored"), "only the listed headers: {fields:?}");
    assert_eq!(field(&events[1].1, "idempotencyKey"), second_id);

    // A bad key, and a body over the listener's limit: refused, nothing published.
    let (status, _, _) = send(post(&url, "{}", &[("idempotency-key", &"k".repeat(300))])).await;
    assert_eq!(status, 400);
    let big = "x".repeat(2 * 1024 * 1024);
    let (status, _, _) = send(post(&url, &big, &[])).await;
    assert_eq!(status, 413);
    assert_eq!(entries(&redis, "t:orders.created").len(), 2);
}

#[tokio::test]
async fn the_stream_is_trimmed_to_about_max_len() {
    let redis = RedisServer::start();
    let route = "  - name: audit\n    match: { path: /events/audit, methods: [POST] }\n    publish: { stream: audit, max_len: 100 }\n";
    let gw = Gateway::start(&yaml(&redis, route));
    for i in 0..450 {
        let (status, _, body) = send(post(&gw.url("/events/audit"), &format!("{{\"i\":{i}}}"), &[])).await;
        assert_eq!(status, 202, "{body}");
    }
    // `MAXLEN ~` trims whole nodes (100 entries by default): between 100 and 200 stay.
    let len: u64 = redis.cmd(&["XLEN", "t:audit"]).parse().unwrap();
    assert!((100..=200).contains(&len), "{len}");
}

#[tokio::test]
async fn redis_down_is_a_503_in_bounded_time_and_every_202_survives_an_outage() {
    let mut redis = RedisServer::start_durable();
    let gw = Arc::new(Gateway::start(&yaml(&redis, "")));
    let url = gw.url("/events/orders");

    // Four clients publish while Redis is killed and started again (its append-only file
    // synced on every write): a 202 is an event Redis has; a 503 promises nothing.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..4 {
        let (url, stop) = (url.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let (mut accepted, mut refused) = (Vec::new(), 0);
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let req = post(&url, &format!("{{\"client\":{c},\"n\":{i}}}"), &[]);
                let answer = tokio::time::timeout(Duration::from_secs(5), send(req)).await;
                let (status, _, body) = answer.expect("an answer within 5 s, Redis down or not");
                match status.as_u16() {
                    202 => accepted.push(json(&body)["eventId"].as_str().unwrap().to_owned()),
                    503 => {
                        assert_eq!(json(&body)["error"], "event broker unavailable");
                        refused += 1;
                    }
                    other => panic!("{other}: {body}"),
                }
            }
            (accepted, refused)
        }));
    }
    let published = || async { accepted_events(&gw).await };
    assert!(Gateway::eventually(Duration::from_secs(10), || async { published().await >= 200.0 }).await);
    redis.stop();
    // While it is down, every answer is a 503.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (status, _, _) = send(post(&url, "{}", &[])).await;
    assert_eq!(status, 503);
    redis.restart();
    let before = published().await;
    assert!(Gateway::eventually(Duration::from_secs(10), || async { published().await >= before + 200.0 }).await);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);

    let (mut accepted, mut refused) = (Vec::new(), 0);
    for c in clients {
        let (a, r) = c.await.unwrap();
        accepted.extend(a);
        refused += r;
    }
    assert!(refused > 0, "the outage was seen");
    let stored: std::collections::HashSet<String> =
        entries(&redis, "t:orders.created").into_iter().map(|(id, _)| id).collect();
    let lost: Vec<&String> = accepted.iter().filter(|id| !stored.contains(*id)).collect();
    assert!(lost.is_empty(), "{} of {} accepted events are not in the stream: {lost:?}", lost.len(), accepted.len());
}

/// Events published so far, by the gateway's count of 202 answers on the route.
async fn accepted_events(gw: &Gateway) -> f64 {
    gw.metric("gateway_requests_total{route=\"orders-created\",method=\"POST\",status=\"202\"}").await
}

#[tokio::test]
async fn a_publish_route_without_redis_or_with_forwarding_fields_is_refused() {
    let text = validation_errors(&config(
        r#"upstreams:
  app: { targets: [{ url: "http://127.0.0.1:1" }] }
routes:
  - name: events
    match: { path: /events }
    upstream: app
    publish: { stream: "", max_len: 0, headers: ["bad header"] }
"#,
    ));
    for want in [
        "routes[0].publish: publishes to Redis: configure redis",
        "routes[0].publish.stream: must not be empty",
        "routes[0].publish.max_len: must be at least 1",
        "routes[0].publish.headers[0]: \"bad header\" is not a header name",
        "routes[0].publish: a route that publishes takes no upstream",
    ] {
        assert!(text.contains(want), "{want}\n{text}");
    }
}
