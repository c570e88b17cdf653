//! The `aggregate` handler against real upstreams: calls built from the request and from
//! each other's results, run together unless they depend on each other, and every way a
//! call can fail, with the answer saying which.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::support::*;

#[tokio::test]
async fn calls_are_built_from_the_request_and_from_each_others_results() {
    let users = TestUpstream::start("users").await;
    let orders = TestUpstream::start("orders").await;
    let gw = Gateway::start(&config(&format!(
        r#"upstreams:
  users: {{ targets: [{{ url: "{}" }}] }}
  orders: {{ targets: [{{ url: "{}" }}] }}
routes:
  - name: home
    match: {{ path: "/home/{{user}}" }}
    aggregate:
      calls:
        - name: profile
          upstream: users
          path: "/users/{{param.user}}"
          query: {{ lang: "{{query.lang}}" }}
          headers: {{ x-caller: "{{header.x-caller}}" }}
        - name: orders
          upstream: orders
          path: "/orders/{{profile.path}}"
        - name: echo
          upstream: orders
          method: POST
          path: /echo-body
          body: {{ user: "{{param.user}}", profile: "{{profile.query}}", whole: "{{profile.headers}}", n: 7 }}
        - name: meta
          upstream: users
          path: /meta
          merge: true
"#,
        users.url(),
        orders.url()
    )));
    let (status, headers, body) =
        get_with(&gw.url("/home/42?lang=de"), &[("x-caller", "me"), ("x-drop", "not forwarded")]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["content-type"], "application/json");
    assert!(headers.get("x-aggregate-partial").is_none());
    let doc = json(&body);
    let profile = &doc["profile"];
    assert_eq!(profile["upstream"], "users");
    assert_eq!(profile["path"], "/users/42");
    assert_eq!(profile["query"], "lang=de");
    assert_eq!(profile["headers"]["x-caller"], "me");
    assert!(profile["headers"].get("x-drop").is_none(), "only the call's own headers go: {profile}");
    assert!(profile["headers"]["x-request-id"].is_string(), "the request's ID goes with every call");
    // A value from another call, percent-encoded into its segment (no `/` or `.` escapes it).
    assert_eq!(doc["orders"]["path"], "/orders/%2Fusers%2F42");
    // The body: templates rendered, a lone placeholder's value taken as it is (an object).
    assert_eq!(doc["echo"]["user"], "42");
    assert_eq!(doc["echo"]["profile"], "lang=de");
    assert_eq!(doc["echo"]["whole"]["x-caller"], "me");
    assert_eq!(doc["echo"]["n"], 7);
    // `merge: true`: the result's fields are in the root.
    assert_eq!(doc["path"], "/meta");
    assert!(doc.get("meta").is_none());
    // The keys come in the calls' order.
    let keys: Vec<&str> = doc.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(&keys[..3], ["profile", "orders", "echo"]);

    // Each call is counted and timed, and the access log lists them.
    assert_eq!(gw.metric("gateway_aggregate_calls_total{route=\"home\",call=\"profile\",outcome=\"ok\"}").await, 1.0);
    assert_eq!(gw.metric("gateway_aggregate_call_duration_seconds_count{route=\"home\",call=\"echo\"}").await, 1.0);
    let logged = Gateway::eventually(std::time::Duration::from_secs(5), || async {
        gw.access_log().iter().any(|l| l["route"] == "home" && l["calls"].as_array().is_some_and(|c| c.len() == 4))
    })
    .await;
    assert!(logged, "{:?}", gw.access_log());
    let line = gw.access_log().into_iter().find(|l| l["route"] == "home").unwrap();
    let calls = line["calls"].as_array().unwrap();
    assert_eq!(calls[1]["call"], "orders");
    assert_eq!(calls[1]["upstream"], "orders");
    assert_eq!((calls[1]["outcome"].as_str(), calls[1]["status"].as_u64()), (Some("ok"), Some(200)));
    assert!(calls[1]["durationMs"].as_f64().is_some_and(|d| d > 0.0), "{line}");
}

/// An upstream that answers only once two requests are waiting at the same time: a
/// gateway that ran the calls one after the other would never get an answer.
async fn two_at_once() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let barrier = Arc::new(tokio::sync::Barrier::new(2));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let barrier = barrier.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let barrier = barrier.clone();
                    async move {
                        barrier.wait().await;
                        let body = format!("{{\"path\":\"{}\"}}", req.uri().path());
                        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(body))))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn calls_without_a_dependency_run_together() {
    let up = two_at_once().await;
    let gw = Gateway::start(&config(&format!(
        "upstreams:\n  u: {{ targets: [{{ url: \"{up}\" }}] }}\nroutes:\n  - name: both\n    match: {{ path: /both }}\n    aggregate:\n      deadline: 3s\n      calls:\n        - {{ name: a, upstream: u, path: /a }}\n        - {{ name: b, upstream: u, path: /b }}\n"
    )));
    let (status, _, body) = get(&gw.url("/both")).await;
    assert_eq!(status, 200, "{body}");
    let doc = json(&body);
    assert_eq!((doc["a"]["path"].as_str(), doc["b"]["path"].as_str()), (Some("/a"), Some("/b")));
}

fn failing_calls(up: &TestUpstream, on_failure: &str) -> String {
    config(&format!(
        r#"upstreams:
  u: {{ targets: [{{ url: "{}" }}] }}
routes:
  - name: mixed
    match: {{ path: /mixed }}
    aggregate:
      on_failure: {on_failure}
      calls:
        - {{ name: ok, upstream: u, path: /fine }}
        - {{ name: bad_status, upstream: u, path: /status/503, required: false, fallback: {{ items: [] }} }}
        - {{ name: not_json, upstream: u, path: /slow, query: {{ ms: "0" }}, required: false }}
        - {{ name: too_big, upstream: u, path: /stream, query: {{ bytes: "5000" }}, max_size: 1KiB, required: false }}
        - {{ name: slow, upstream: u, path: /slow, query: {{ ms: "3000" }}, timeout: 200ms, required: false }}
        - {{ name: dependent, upstream: u, path: "/x/{{not_json.id}}", required: false }}
        - {{ name: missing, upstream: u, path: "/x/{{ok.no_such_field}}", required: false }}
  - name: required
    match: {{ prefix: /required }}
    aggregate:
      calls:
        - {{ name: ok, upstream: u, path: /fine }}
        - {{ name: slow, upstream: u, path: /slow, query: {{ ms: "3000" }}, timeout: 200ms }}
  - name: required-status
    match: {{ prefix: /status }}
    aggregate:
      calls:
        - {{ name: broken, upstream: u, path: /status/500 }}
"#,
        up.url()
    ))
}

#[tokio::test]
async fn every_failure_is_named_and_a_partial_answer_says_so() {
    let up = TestUpstream::start("u").await;
    let gw = Gateway::start(&failing_calls(&up, "partial"));
    let (status, headers, body) = get(&gw.url("/mixed")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-aggregate-partial"], "true");
    let doc = json(&body);
    assert_eq!(doc["ok"]["path"], "/fine");
    assert_eq!(doc["bad_status"], serde_json::json!({ "items": [] }), "the fallback");
    for absent in ["not_json", "too_big", "slow", "dependent", "missing"] {
        assert!(doc.get(absent).is_none(), "{absent}: no fallback, no key: {doc}");
    }
    let errors = &doc["errors"];
    assert_eq!(errors["bad_status"], serde_json::json!({ "reason": "status", "upstreamStatus": 503 }));
    assert_eq!(errors["not_json"]["reason"], "invalid_json");
    assert_eq!(errors["too_big"]["reason"], "too_large");
    assert_eq!(errors["slow"]["reason"], "timeout");
    assert_eq!(errors["dependent"], serde_json::json!({ "reason": "dependency_failed", "call": "not_json" }));
    assert_eq!(errors["missing"]["reason"], "missing_value");
    assert!(errors.get("ok").is_none());
    assert!(!errors.to_string().contains("127.0.0.1"), "no backend address: {errors}");
    for (call, outcome) in [("slow", "timeout"), ("dependent", "dependency_failed"), ("bad_status", "status")] {
        let series = format!("gateway_aggregate_calls_total{{route=\"mixed\",call=\"{call}\",outcome=\"{outcome}\"}}");
        assert_eq!(gw.metric(&series).await, 1.0, "{series}");
    }
    // A call that was never sent has no duration.
    let never = "gateway_aggregate_call_duration_seconds_count{route=\"mixed\",call=\"dependent\"}";
    assert_eq!(gw.metric(never).await, 0.0);

    // A required call's failure is the answer's: 504 for a timeout, 502 otherwise.
    let (status, _, body) = get(&gw.url("/required")).await;
    assert_eq!(status, 504, "{body}");
    let v = json(&body);
    assert_eq!(
        (v["call"].as_str(), v["reason"].as_str(), v["status"].as_u64()),
        (Some("slow"), Some("timeout"), Some(504))
    );
    assert!(v["requestId"].as_str().is_some_and(|id| !id.is_empty()));
    let (status, _, body) = get(&gw.url("/status")).await;
    assert_eq!(status, 502, "{body}");
    let v = json(&body);
    assert_eq!(
        (v["call"].as_str(), v["reason"].as_str(), v["status"].as_u64()),
        (Some("broken"), Some("status"), Some(502))
    );

    // all_or_nothing: the first failed call in order fails the answer.
    let gw = Gateway::start(&failing_calls(&up, "all_or_nothing"));
    let (status, headers, body) = get(&gw.url("/mixed")).await;
    assert_eq!(status, 502, "{body}");
    assert!(headers.get("x-aggregate-partial").is_none());
    assert_eq!(json(&body)["call"], "bad_status");
}

#[tokio::test]
async fn validation_names_each_problem_of_the_calls() {
    let errors = validation_errors(&config(
        r#"upstreams:
  u: { targets: [{ url: "http://127.0.0.1:1" }] }
routes:
  - name: bad
    match: { path: "/x/{id}" }
    aggregate:
      calls:
        - { name: a, upstream: u, path: "/a/{b.id}" }
        - { name: b, upstream: u, path: "/b/{a.id}" }
        - { name: c, upstream: nowhere, path: "/c/{nope.id}" }
        - { name: errors, upstream: u, path: "/e/{param.other}" }
        - { name: a, upstream: u, path: relative, method: get }
        - { name: d, upstream: u, path: /d, fallback: 1 }
"#,
    ));
    for want in [
        "routes[0].aggregate.calls[0]: the calls wait for each other: a -> b -> a",
        "routes[0].aggregate.calls[2].upstream: unknown upstream \"nowhere\"",
        "routes[0].aggregate.calls[2].path: \"/c/{nope.id}\": unknown placeholder {nope.id}",
        "routes[0].aggregate.calls[3].name: \"errors\" is reserved",
        "routes[0].aggregate.calls[3].path: the route's path does not capture {other}",
        "routes[0].aggregate.calls[4].name: duplicate call name \"a\" (also routes[0].aggregate.calls[0])",
        "routes[0].aggregate.calls[4].method: \"get\" is not an upper-case HTTP method",
        "routes[0].aggregate.calls[4].path: \"relative\" must start with '/'",
        "routes[0].aggregate.calls[5].fallback: only an optional call (required: false) has a fallback",
    ] {
        assert!(errors.contains(want), "missing {want:?} in:\n{errors}");
    }
    let errors = validation_errors(&config(
        "upstreams:\n  u: { targets: [{ url: \"http://127.0.0.1:1\" }] }\nroutes:\n  - { name: both, match: { path: /x }, upstream: u, aggregate: { calls: [{ name: a, upstream: u, path: /a }] } }\n",
    ));
    assert!(errors.contains("routes[0].aggregate: a route that aggregates takes no upstream"), "{errors}");
}

#[tokio::test]
async fn results_and_the_answer_are_shaped() {
    let up = TestUpstream::start("u").await;
    let gw = Gateway::start(&config(&format!(
        r#"upstreams:
  u: {{ targets: [{{ url: "{}" }}] }}
routes:
  - name: shaped
    match: {{ path: /shaped }}
    aggregate:
      shape: {{ deny: [trace], rename: {{ caller: who }} }}
      calls:
        - name: caller
          upstream: u
          path: /c
          headers: {{ x-caller: me }}
          shape: {{ extract: headers, allow: [x-caller, host], rename: {{ x-caller: name }}, move: {{ host: where.host }} }}
        - name: listed
          upstream: u
          path: /l
          shape: {{ extract: path, wrap: items }}
        - name: trace
          upstream: u
          path: /t
        - name: absent
          upstream: u
          path: /a
          required: false
          shape: {{ extract: no.such.field }}
"#,
        up.url()
    )));
    let (status, _, body) = get(&gw.url("/shaped")).await;
    assert_eq!(status, 200, "{body}");
    let doc = json(&body);
    let who = &doc["who"];
    assert_eq!(who["name"], "me", "{doc}");
    assert!(who["where"]["host"].as_str().is_some_and(|h| h.starts_with("127.0.0.1:")), "{doc}");
    assert_eq!(who.as_object().unwrap().len(), 2, "only the allowed fields: {doc}");
    assert_eq!(doc["listed"], serde_json::json!({ "items": "/l" }));
    assert!(doc.get("trace").is_none() && doc.get("caller").is_none(), "{doc}");
    // `extract` finding nothing is the call's failure.
    assert_eq!(doc["errors"]["absent"]["reason"], "missing_value");
}

/// Backend for frontend from one config: the same path answers each kind of client with
/// its own calls and shape, told apart by a header and by the host.
#[tokio::test]
async fn each_client_type_gets_its_own_answer() {
    let up = TestUpstream::start("u").await;
    let gw = Gateway::start(&config(&format!(
        r#"upstreams:
  u: {{ targets: [{{ url: "{}" }}] }}
routes:
  - name: home-partner
    match: {{ hosts: [partners.example.test], path: "/home/{{user}}" }}
    aggregate:
      calls: [{{ name: profile, upstream: u, path: "/users/{{param.user}}", shape: {{ allow: [path] }} }}]
  - name: home-mobile
    match: {{ path: "/home/{{user}}", headers: [{{ name: x-client, value: mobile }}] }}
    aggregate:
      calls: [{{ name: profile, upstream: u, path: "/users/{{param.user}}", shape: {{ allow: [path, method] }} }}]
  - name: home-web
    match: {{ path: "/home/{{user}}" }}
    aggregate:
      calls:
        - {{ name: profile, upstream: u, path: "/users/{{param.user}}" }}
        - {{ name: orders, upstream: u, path: /orders, query: {{ user: "{{param.user}}" }} }}
"#,
        up.url()
    )));
    let keys = |v: &serde_json::Value| -> Vec<String> { v.as_object().unwrap().keys().cloned().collect() };
    let (_, _, body) = get_with(&gw.url("/home/7"), &[("x-client", "mobile")]).await;
    let mobile = json(&body);
    assert_eq!(keys(&mobile), ["profile"]);
    assert_eq!(keys(&mobile["profile"]), ["path", "method"], "in the order of allow");
    let (_, _, body) = get_with(&gw.url("/home/7"), &[("host", "partners.example.test")]).await;
    let partner = json(&body);
    assert_eq!(keys(&partner["profile"]), ["path"]);
    let (_, _, body) = get(&gw.url("/home/7")).await;
    let web = json(&body);
    assert_eq!(keys(&web), ["profile", "orders"]);
    assert_eq!(web["orders"]["query"], "user=7");
    assert!(web["profile"]["headers"].is_object(), "the web gets the whole result: {web}");
}

#[tokio::test]
async fn a_jq_expression_shapes_the_whole_answer() {
    let up = TestUpstream::start("u").await;
    let gw = Gateway::start(&config(&format!(
        r#"upstreams:
  u: {{ targets: [{{ url: "{}" }}] }}
routes:
  - name: jq
    match: {{ path: /jq }}
    aggregate:
      jq: '{{paths: [.a.path, .b.path], methods: ([.[] | .method] | unique)}}'
      calls:
        - {{ name: a, upstream: u, path: /one }}
        - {{ name: b, upstream: u, path: /two }}
  - name: jq-fails
    match: {{ path: /jq-fails }}
    aggregate:
      jq: '.a.path.not_an_object'
      calls: [{{ name: a, upstream: u, path: /one }}]
"#,
        up.url()
    )));
    let (status, _, body) = get(&gw.url("/jq")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body), serde_json::json!({ "paths": ["/one", "/two"], "methods": ["GET"] }));
    let (status, _, body) = get(&gw.url("/jq-fails")).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(json(&body)["status"], 502);

    let errors = validation_errors(&config(
        "upstreams:\n  u: { targets: [{ url: \"http://127.0.0.1:1\" }] }\nroutes:\n  - name: bad\n    match: { path: /x }\n    aggregate: { jq: '{a: }', calls: [{ name: a, upstream: u, path: /a }] }\n  - name: body\n    match: { path: /y }\n    upstream: u\n    plugins: [{ response_body: { jq: 'nosuchfilter(1)' } }]\n",
    ));
    assert!(errors.contains("routes[0].aggregate.jq: jq expression does not parse"), "{errors}");
    assert!(errors.contains("routes[1].plugins[0].response_body.jq: jq expression does not compile"), "{errors}");
}

/// Client types by listener: partners on their own port get their own route for the path.
#[tokio::test]
async fn a_route_can_belong_to_one_listener() {
    let up = TestUpstream::start("u").await;
    let gw = Gateway::start(&format!(
        r#"version: 1
listeners:
  - {{ name: public, bind: 127.0.0.1:0 }}
  - {{ name: partners, bind: 127.0.0.1:0 }}
admin: {{ bind: 127.0.0.1:0 }}
upstreams:
  u: {{ targets: [{{ url: "{}" }}] }}
routes:
  - name: home-partners
    match: {{ path: /home, listeners: [partners] }}
    aggregate:
      calls: [{{ name: profile, upstream: u, path: /users/1, shape: {{ allow: [path] }} }}]
  - {{ name: home, match: {{ path: /home }}, upstream: u }}
"#,
        up.url()
    ));
    let (_, _, body) = get(&format!("http://{}/home", gw.addrs["partners"])).await;
    assert_eq!(json(&body), serde_json::json!({ "profile": { "path": "/users/1" } }));
    let (_, _, body) = get(&gw.url("/home")).await;
    assert_eq!(json(&body)["path"], "/home", "the public listener's route: {body}");
    let errors = validation_errors(&config(
        "upstreams:\n  u: { targets: [{ url: \"http://127.0.0.1:1\" }] }\nroutes:\n  - { name: r, match: { path: /x, listeners: [nope] }, upstream: u }\n",
    ));
    assert!(errors.contains("routes[0].match.listeners[0]: unknown listener \"nope\" (defined: public)"), "{errors}");
}
