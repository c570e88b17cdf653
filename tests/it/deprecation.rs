//! Deprecated routes: `Deprecation`, `Sunset` and `Link` on every response (the gateway's
//! own errors included), the 410 from the sunset on without a config change, and who still
//! calls a deprecated version.

use std::time::{Duration, SystemTime};

use portico_config::lifecycle::Timestamp;

use crate::support::*;

fn yaml(up: &TestUpstream, sunset_soon: &str) -> String {
    config(&format!(
        r#"consumers:
  - id: ci-bot
    api_keys: [{{ sha256: {key} }}]
upstreams:
  app: {{ targets: [{{ url: "{url}" }}] }}
routes:
  - name: users-v1
    match: {{ prefix: /v1/users }}
    upstream: app
    deprecated:
      since: 2026-01-01
      sunset: 2099-12-31T23:59:59Z
      link: https://dev.example/deprecations/users-v1
      replacement: /v2/users
    plugins:
      - api_key: {{}}
  - name: orders-v1
    match: {{ prefix: /v1/orders }}
    upstream: app
    deprecated: {{ since: "2026-01-01", sunset: "{sunset_soon}", replacement: /v2/orders }}
  - name: legacy
    match: {{ prefix: /v0 }}
    upstream: app
    deprecated: {{ since: 2025-01-01, sunset: 2026-01-01 }}
  - name: users-v2
    match: {{ prefix: /v2 }}
    upstream: app
"#,
        key = hash_key("ci-key-0001"),
        url = up.url(),
    ))
}

#[tokio::test]
async fn deprecated_routes_announce_their_sunset_and_answer_410_after_it() {
    let up = TestUpstream::start("app").await;
    // A sunset a few seconds from now: the route retires on its own, with no reload.
    let soon = SystemTime::now() + Duration::from_secs(3);
    let gw = Gateway::start(&yaml(&up, &Timestamp(soon).to_string()));

    // Before the sunset: the upstream answers, and every response says the route is going.
    let (status, headers, _) = get_with(&gw.url("/v1/users/7"), &[("x-api-key", "ci-key-0001")]).await;
    assert_eq!(status, 200);
    assert_eq!(headers["deprecation"], "@1767225600", "RFC 9745: an sf-date");
    assert_eq!(headers["sunset"], "Thu, 31 Dec 2099 23:59:59 GMT", "RFC 8594: an HTTP date");
    let link = headers["link"].to_str().unwrap();
    assert!(link.contains("<https://dev.example/deprecations/users-v1>; rel=\"deprecation\""), "{link}");
    assert!(link.contains("</v2/users>; rel=\"successor-version\""), "{link}");
    // The gateway's own answers on the route carry them too (a 401 without a key).
    let (status, headers, _) = get(&gw.url("/v1/users/7")).await;
    assert_eq!(status, 401);
    assert_eq!(headers["deprecation"], "@1767225600");
    // Other routes carry nothing of it.
    let (status, headers, _) = get(&gw.url("/v2/users/7")).await;
    assert_eq!(status, 200);
    assert!(headers.get("deprecation").is_none() && headers.get("sunset").is_none());

    // After the sunset: 410 with the contract's body naming the replacement; the
    // upstream sees nothing.
    up.reset_hits();
    let (status, headers, body) = get(&gw.url("/v0/anything")).await;
    assert_eq!(status, 410);
    let v = json(&body);
    assert_eq!((v["error"].as_str(), v["status"].as_u64()), (Some("this API version is retired"), Some(410)));
    assert_eq!(v["requestId"], headers["x-request-id"].to_str().unwrap());
    assert!(v.get("replacement").is_none(), "{v}");
    assert_eq!(headers["sunset"], "Thu, 01 Jan 2026 00:00:00 GMT");
    assert_eq!(up.hits(), 0);

    // The route whose sunset comes during the test: 200, then 410 once it has passed.
    let (status, headers, _) = get(&gw.url("/v1/orders/1")).await;
    assert_eq!(status, 200);
    assert!(headers.contains_key("sunset"));
    let wait = soon.duration_since(SystemTime::now()).unwrap_or_default() + Duration::from_millis(200);
    tokio::time::sleep(wait).await;
    let (status, _, body) = get(&gw.url("/v1/orders/1")).await;
    assert_eq!(status, 410);
    assert_eq!(json(&body)["replacement"], "/v2/orders");

    // Who still calls: by consumer, anonymous callers apart, the 410s included.
    let series = |route: &str, consumer: &str| {
        format!("gateway_deprecated_requests_total{{route=\"{route}\",consumer=\"{consumer}\"}}")
    };
    assert_eq!(gw.metric(&series("users-v1", "ci-bot")).await, 1.0);
    assert_eq!(gw.metric(&series("users-v1", "anonymous")).await, 1.0);
    assert_eq!(gw.metric(&series("legacy", "anonymous")).await, 1.0);
    assert_eq!(gw.metric(&series("orders-v1", "anonymous")).await, 2.0);
}

#[tokio::test]
async fn a_deprecation_that_does_not_hold_together_is_refused_with_its_path() {
    let text = validation_errors(&config(
        r#"upstreams:
  app: { targets: [{ url: "http://127.0.0.1:1" }] }
routes:
  - name: old
    match: { prefix: /old }
    upstream: app
    deprecated: { since: 2027-01-01, sunset: 2026-01-01, link: "not a <url>" }
  - name: older
    match: { prefix: /older }
    upstream: app
    deprecated: { since: "next week" }
"#,
    ));
    assert!(text.contains("routes[0].deprecated.sunset: must be later than since (2027-01-01T00:00:00Z)"), "{text}");
    assert!(text.contains("routes[0].deprecated.link"), "{text}");
    assert!(text.contains("routes[1].deprecated.since"), "{text}");
    assert!(text.contains("\"next week\" is not a date"), "{text}");
}
