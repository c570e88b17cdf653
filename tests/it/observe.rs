//! Admin endpoints, metrics and the access log.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use crate::support::*;

#[tokio::test]
async fn admin_endpoints_metrics_and_access_log() {
    let up = TestUpstream::start("users").await;
    let gw = Gateway::start(&config(&format!(
        "upstreams:\n  users: {{ targets: [{{ url: \"{}\" }}] }}\nroutes:\n  - {{ name: users, match: {{ path: \"/users/{{id}}\", methods: [GET] }}, upstream: users }}\n",
        up.url()
    )));
    let (s, _, b) = get(&gw.admin_url("/health")).await;
    assert_eq!((s.as_u16(), json(&b)["status"].as_str()), (200, Some("ok")));
    let (s, _, _) = get(&gw.admin_url("/ready")).await;
    assert_eq!(s, 200);

    for _ in 0..3 {
        let req = Request::get(gw.url("/users/7"))
            .header("user-agent", "portico-test/1.0")
            .header("x-request-id", "trace-abc")
            .body(Full::new(Bytes::new()))
            .unwrap();
        assert_eq!(send(req).await.0, 200);
    }
    assert_eq!(get(&gw.url("/nope")).await.0, 404);

    let (s, h, text) = get(&gw.admin_url("/metrics")).await;
    assert_eq!(s, 200);
    assert!(h["content-type"].to_str().unwrap().contains("openmetrics"));
    for name in [
        "gateway_requests_total{route=\"users\",method=\"GET\",status=\"200\"} 3",
        "gateway_requests_total{route=\"none\",method=\"GET\",status=\"404\"} 1",
        "gateway_request_duration_seconds_bucket{le=\"0.005\",route=\"users\"}",
        "gateway_request_duration_seconds_count{route=\"users\"} 3",
        "gateway_backend_latency_seconds_count{upstream=\"users\"} 3",
        "gateway_overhead_seconds_count 3",
        "gateway_active_connections ",
        "gateway_config_reloads_total{result=\"error\"} 0",
        "gateway_access_log_dropped_total 0",
    ] {
        assert!(text.contains(name), "missing {name:?} in:\n{text}");
    }

    // One JSON line per request, with the contract's fields.
    let mut lines = Vec::new();
    for _ in 0..50 {
        lines = gw.access_log();
        if lines.len() >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(lines.len(), 4, "{lines:?}");
    // Lines are written as responses end; one that ends later may come later.
    let l = lines.iter().find(|l| l["statusCode"] == 200).unwrap();
    for field in [
        "timestamp",
        "requestId",
        "method",
        "path",
        "statusCode",
        "latencyMs",
        "clientIp",
        "userAgent",
        "userId",
        "rateLimitRemaining",
        "backendService",
        "backendLatencyMs",
        "bytesSent",
        "durationMs",
        "completion",
    ] {
        assert!(l.get(field).is_some(), "missing {field} in {l}");
    }
    assert_eq!(l["requestId"], "trace-abc");
    assert_eq!(l["method"], "GET");
    assert_eq!(l["path"], "/users/7");
    assert_eq!(l["statusCode"], 200);
    assert_eq!(l["clientIp"], "127.0.0.1");
    assert_eq!(l["userAgent"], "portico-test/1.0");
    assert_eq!(l["backendService"], "users");
    assert!(l["latencyMs"].as_f64().unwrap() >= l["backendLatencyMs"].as_f64().unwrap());
    assert!(l["timestamp"].as_str().unwrap().ends_with('Z'));
    assert_eq!(l["completion"], "complete");
    assert!(l["bytesSent"].as_u64().unwrap() > 0 && l["durationMs"].as_f64() >= l["latencyMs"].as_f64());
    let missing = lines.iter().find(|l| l["statusCode"] == 404).unwrap();
    assert!(missing["backendService"].is_null());
    assert_eq!(lines.iter().filter(|l| l["statusCode"] == 200).count(), 3);
}
