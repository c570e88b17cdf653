//! The `respond` handler: routes the gateway answers itself, with the route's plugins
//! around them as for any route.

use crate::support::*;

fn yaml(up: &TestUpstream) -> String {
    config(&format!(
        r#"upstreams:
  u: {{ targets: [{{ url: "{}" }}] }}
routes:
  - name: retired
    match: {{ prefix: /v1 }}
    respond:
      status: 410
      headers: {{ content-type: application/json, sunset: "Sat, 01 Jan 2028 00:00:00 GMT" }}
      body: '{{"error":"v1 is retired: use /v2"}}'
    plugins:
      - response_headers: {{ set: {{ x-request: "{{request_id}}" }} }}
  - name: maintenance
    match: {{ prefix: /admin }}
    respond: {{ status: 503, headers: {{ retry-after: "120" }} }}
    plugins:
      - ip_filter: {{ deny: ["127.0.0.0/8"] }}
  - {{ name: live, match: {{ prefix: /v2 }}, upstream: u }}
"#,
        up.url()
    ))
}

#[tokio::test]
async fn a_respond_route_answers_without_an_upstream_on_every_transport() {
    let up = TestUpstream::start("u").await;
    let gw = Gateway::start(&yaml(&up));
    for extra in [&["--http1.1"][..], &["--http1.1", "--data", "x"], &["--http2-prior-knowledge"]] {
        let url = gw.url("/v1/users/1");
        let mut args = vec!["-s", "-i"];
        args.extend_from_slice(extra);
        args.push(&url);
        let (ok, out) = curl(&args).await;
        assert!(ok, "{extra:?}: {out}");
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        let head = head.to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 410") || head.starts_with("http/2 410"), "{extra:?}: {out}");
        assert!(head.contains("\r\ncontent-type: application/json"), "{head}");
        assert!(head.contains("\r\nsunset: sat, 01 jan 2028 00:00:00 gmt"), "{head}");
        assert!(head.contains("\r\nx-request: "), "the route's response plugins run: {head}");
        assert!(head.contains("\r\nx-request-id: "), "{head}");
        assert_eq!(json(body)["error"], "v1 is retired: use /v2");
    }
    // HEAD: the head without the body.
    let (ok, out) = curl(&["-s", "-I", &gw.url("/v1/x")]).await;
    assert!(ok && out.starts_with("HTTP/1.1 410") && out.ends_with("\r\n\r\n"), "{out}");
    // The route's request plugins decide first.
    let (status, _, body) = get(&gw.url("/admin")).await;
    assert_eq!((status.as_u16(), json(&body)["error"].as_str()), (403, Some("client address not allowed")));
    assert_eq!(up.hits(), 0, "no upstream was asked");
    // Counted and logged under the route, with no backend.
    let series = "gateway_requests_total{route=\"retired\",method=\"GET\",status=\"410\"}";
    assert_eq!(gw.metric(series).await, 2.0, "two GETs (the third request was a POST)");
    let logged = Gateway::eventually(std::time::Duration::from_secs(5), || async {
        gw.access_log().iter().any(|l| {
            l["route"] == "retired" && l["statusCode"] == 410 && l.get("backendService").is_none_or(|b| b.is_null())
        })
    })
    .await;
    assert!(logged, "{:?}", gw.access_log());
    // A forwarding route beside them is unchanged.
    assert_eq!(get(&gw.url("/v2/x")).await.0, 200);
}

#[test]
fn respond_routes_are_checked_with_paths() {
    let errors = validation_errors(&config(
        "upstreams:\n  u: { targets: [{ url: \"http://127.0.0.1:9\" }] }\nroutes:\n  - name: a\n    match: { prefix: /a }\n    upstream: u\n    rewrite: { strip_prefix: /a }\n    respond: { status: 101, headers: { content-length: \"3\", x-ok: \"v\" } }\n  - name: b\n    match: { prefix: /b }\n",
    ));
    for want in [
        "routes[0].respond.status: 101 is not a final status (200 to 599)",
        "routes[0].respond.headers: \"content-length\" is the gateway's to write",
        "routes[0].respond: a route that responds itself takes no upstream",
        "routes[0].respond: a route that responds itself takes no rewrite",
        "routes[1].upstream: a route needs upstream, split, respond, aggregate or publish",
    ] {
        assert!(errors.contains(want), "missing {want:?} in:\n{errors}");
    }
}
