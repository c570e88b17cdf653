//! Header and query transformation plugins, through every transport: the HTTP/1.1 fast
//! path, HTTP/1.1 with a body, h2c, and TLS with HTTP/1.1 and h2 (curl as the client).

use crate::support::*;

fn yaml(up: &TestUpstream, tls: &str) -> String {
    format!(
        r#"version: 1
listeners:
  - name: public
    bind: 127.0.0.1:0
{tls}admin:
  bind: 127.0.0.1:0
access_log:
  output: ACCESS_LOG
plugins:
  - response_headers: {{ set: {{ x-global: "yes" }} }}
upstreams:
  u:
    targets: [{{ url: "{}" }}]
routes:
  - name: users
    match: {{ path: "/users/{{id}}" }}
    upstream: u
    plugins:
      - request_headers:
          remove: [x-drop]
          rename: {{ x-old: x-renamed }}
          set: {{ x-user: "u-{{param.id}}", x-from-query: "{{query.lang}}", x-copy: "{{header.x-src}}" }}
          add: {{ x-kept: gateway, x-added: gateway }}
          append: {{ x-trace: "{{request_id}}" }}
      - query:
          remove: [debug]
          rename: {{ q: search }}
          set: {{ page: "1" }}
          add: {{ user: "{{param.id}}" }}
      - response_headers:
          remove: [x-upstream-secret]
          set: {{ x-request: "{{request_id}}" }}
          add: {{ x-global: "route" }}
  - {{ name: plain, match: {{ prefix: /plain }}, upstream: u }}
"#,
        up.url()
    )
}

/// curl's `-i` output: (status, response headers lowercased, body JSON).
fn parse(out: &str) -> (u16, String, serde_json::Value) {
    // The last head (curl prints one per response; 100-continue adds one).
    let (head, body) = out.rsplit_once("\r\n\r\n").unwrap_or((out, ""));
    let head = head.rsplit("\r\n\r\n").next().unwrap_or(head);
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, head.to_ascii_lowercase(), serde_json::from_str(body).unwrap_or(serde_json::Value::Null))
}

#[tokio::test]
async fn header_and_query_transforms_apply_on_every_transport() {
    let up = TestUpstream::start("u").await;
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert = write_temp(dir.path(), "gw.pem", &ck.cert.pem());
    let key = write_temp(dir.path(), "gw.key", &ck.signing_key.serialize_pem());
    let tls =
        format!("    tls: {{ certificates: [{{ cert: \"{}\", key: \"{}\" }}] }}\n", cert.display(), key.display());
    let plain = Gateway::start(&yaml(&up, ""));
    let secure = Gateway::start(&yaml(&up, &tls));
    let cases: [(&str, &Gateway, &[&str]); 5] = [
        ("http/1.1 fast path", &plain, &["--http1.1"]),
        ("http/1.1 with a body", &plain, &["--http1.1", "--data", "hello"]),
        ("h2c", &plain, &["--http2-prior-knowledge"]),
        ("tls http/1.1", &secure, &["--http1.1", "-k"]),
        ("tls h2", &secure, &["--http2", "-k"]),
    ];
    for (name, gw, extra) in cases {
        let scheme = if std::ptr::eq(gw, &secure) { "https" } else { "http" };
        let port = gw.addr().port();
        let url = format!("{scheme}://localhost:{port}/users/42?debug=1&q=term&page=7&lang=de");
        let mut args = vec!["-s", "-i", "--resolve"];
        let resolve = format!("localhost:{port}:127.0.0.1");
        args.push(&resolve);
        args.extend_from_slice(&["-H", "x-drop: 1", "-H", "x-old: o", "-H", "x-kept: client", "-H", "x-src: copied"]);
        args.extend_from_slice(extra);
        args.push(&url);
        let (ok, out) = curl(&args).await;
        assert!(ok, "{name}: {out}");
        let (status, head, v) = parse(&out);
        assert_eq!(status, 200, "{name}: {out}");
        let h = &v["headers"];
        assert!(h.get("x-drop").is_none(), "{name}: removed: {v}");
        assert!(h.get("x-old").is_none() && h["x-renamed"] == "o", "{name}: renamed: {v}");
        assert_eq!(h["x-user"], "u-42", "{name}: {v}");
        assert_eq!(h["x-from-query"], "de", "{name}: {v}");
        assert_eq!(h["x-copy"], "copied", "{name}: {v}");
        assert_eq!(h["x-kept"], "client", "{name}: add keeps the client's: {v}");
        assert_eq!(h["x-added"], "gateway", "{name}: {v}");
        let request_id = h["x-request-id"].as_str().unwrap_or_default().to_owned();
        assert_eq!(h["x-trace"], request_id.as_str(), "{name}: {v}");
        assert_eq!(v["query"], "search=term&lang=de&page=1&user=42", "{name}: {v}");
        assert!(head.contains(&format!("\r\nx-request: {request_id}")), "{name}: {head}");
        // A route's plugin of a kind replaces the global one of that kind: the route's `add`
        // writes the header the global `set` would have.
        assert!(head.contains("\r\nx-global: route"), "{name}: {head}");
        if extra.contains(&"--data") {
            assert_eq!(v["bodyBytes"], 5, "{name}: the body goes through untouched");
        }
        // A route without the plugins: only the global response header.
        let url = format!("{scheme}://localhost:{port}/plain?debug=1");
        let mut args = vec!["-s", "-i", "--resolve", &resolve, "-H", "x-drop: 1"];
        args.extend_from_slice(extra);
        args.push(&url);
        let (_, out) = curl(&args).await;
        let (status, head, v) = parse(&out);
        assert_eq!(status, 200, "{name}: {out}");
        assert_eq!((v["headers"]["x-drop"].as_str(), v["query"].as_str()), (Some("1"), Some("debug=1")), "{name}");
        assert!(head.contains("\r\nx-global: yes") && !head.contains("x-request:"), "{name}: {head}");
    }
    // The gateway's own answers get the global response headers too.
    let (status, headers, _) = get(&plain.url("/nowhere")).await;
    assert_eq!((status.as_u16(), headers.get("x-global").map(|v| v.to_str().unwrap())), (404, Some("yes")));
}

#[test]
fn transform_configs_are_checked_with_paths() {
    let up = "upstreams:\n  u: { targets: [{ url: \"http://127.0.0.1:9\" }] }\n";
    let errors = validation_errors(&format!(
        "version: 1\nlisteners: [{{ name: p, bind: 127.0.0.1:0 }}]\n{up}routes:\n  - name: r\n    match: {{ prefix: /r }}\n    upstream: u\n    plugins:\n      - request_headers: {{ set: {{ x-a: \"{{param.id}}\", host: x }}, add: {{ x-b: \"{{jwt.sub}}\" }} }}\n      - response_headers: {{ set: {{ x-c: \"{{query.q}}\" }} }}\n      - query: {{}}\n"
    ));
    for want in [
        "routes[0].plugins[0].request_headers.set: \"host\" is not a valid name",
        "routes[0].plugins[0].request_headers.set.x-a: \"{param.id}\": the route's path does not capture {id}",
        "routes[0].plugins[0].request_headers.add.x-b: \"{jwt.sub}\": unknown placeholder {jwt.sub}",
        "routes[0].plugins[1].response_headers.set.x-c: \"{query.q}\": {query.*} is not known when the response is written",
        "routes[0].plugins[2].query: give at least one of remove, rename, set, add",
    ] {
        assert!(errors.contains(want), "missing {want:?} in:\n{errors}");
    }
}

fn body_yaml(up: &TestUpstream, tls: &str) -> String {
    format!(
        r#"version: 1
listeners:
  - name: public
    bind: 127.0.0.1:0
{tls}admin:
  bind: 127.0.0.1:0
upstreams:
  u:
    targets: [{{ url: "{}" }}]
routes:
  - name: users
    match: {{ path: "/users/{{id}}" }}
    upstream: u
    rewrite: {{ path: /echo-body }}
    plugins:
      - request_body:
          max_size: 2KiB
          remove: [debug]
          rename: {{ fullName: name }}
          set: {{ meta.user: "{{param.id}}", meta.lang: "{{query.lang}}" }}
      - response_body:
          max_size: 1KiB
          remove: [secret, list.0]
          move: {{ meta.user: user }}
          add: {{ api_version: 2, request: "{{request_id}}" }}
  - name: fixed
    match: {{ prefix: /fixed }}
    respond: {{ status: 200, headers: {{ content-type: application/json }}, body: '{{"a":1,"secret":"s"}}' }}
    plugins:
      - response_body: {{ remove: [secret] }}
"#,
        up.url()
    )
}

#[tokio::test]
async fn json_body_transforms_apply_on_every_transport_and_other_bodies_pass_untouched() {
    let up = TestUpstream::start("u").await;
    let dir = tempfile::tempdir().unwrap();
    let t = LocalhostTls::new(dir.path());
    let plain = Gateway::start(&body_yaml(&up, ""));
    let secure = Gateway::start(&body_yaml(&up, &t.listener_yaml));
    let cases: [(&str, &Gateway, &[&str]); 4] = [
        ("http/1.1", &plain, &["--http1.1"]),
        ("h2c", &plain, &["--http2-prior-knowledge"]),
        ("tls http/1.1", &secure, &["--http1.1", "-k"]),
        ("tls h2", &secure, &["--http2", "-k"]),
    ];
    let sent = r#"{"fullName":"Ada","debug":true,"secret":"s","list":[1,2]}"#;
    for (name, gw, extra) in cases {
        let scheme = if std::ptr::eq(gw, &secure) { "https" } else { "http" };
        let port = gw.addr().port();
        let resolve = format!("localhost:{port}:127.0.0.1");
        let call = |path: &str, ct: &str, body: &str| {
            let url = format!("{scheme}://localhost:{port}{path}");
            let mut args: Vec<String> = ["-s", "-i", "--resolve", &resolve, "-H", &format!("content-type: {ct}")]
                .iter()
                .map(|s| s.to_string())
                .collect();
            args.extend(extra.iter().map(|s| s.to_string()));
            args.extend(["--data-binary".to_owned(), body.to_owned(), url]);
            async move {
                let refs: Vec<&str> = args.iter().map(String::as_str).collect();
                let (ok, out) = curl(&refs).await;
                assert!(ok, "{out}");
                let (head, body) = out.rsplit_once("\r\n\r\n").unwrap_or((&out, ""));
                let status: u16 = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
                (status, head.to_ascii_lowercase(), body.to_owned())
            }
        };
        let (status, head, body) = call("/users/42?lang=de", "application/json", sent).await;
        assert_eq!(status, 200, "{name}: {head}");
        let request_id = head.lines().find_map(|l| l.strip_prefix("x-request-id: ")).unwrap_or_default().trim();
        // Changed on the way up (the upstream echoes it), then on the way down; the keys
        // keep the order the body gave them.
        let want = format!(
            r#"{{"name":"Ada","list":[2],"meta":{{"lang":"de"}},"user":"42","api_version":2,"request":"{request_id}"}}"#
        );
        assert_eq!(body, want, "{name}");
        assert!(head.contains(&format!("content-length: {}", want.len())), "{name}: {head}");
        assert!(!head.contains("etag:"), "{name}: the upstream's ETag named another body: {head}");

        // Not JSON: untouched both ways, and its ETag kept.
        let (status, head, body) = call("/users/42", "text/plain", sent).await;
        assert_eq!((status, body.as_str()), (200, sent), "{name}");
        assert!(head.contains("etag: \"upstream\""), "{name}: {head}");

        // Said to be JSON and is not: the client's error.
        let (status, _, body) = call("/users/42", "application/json", "{not json").await;
        assert_eq!(status, 400, "{name}: {body}");
        assert!(body.contains("request body is not valid JSON"), "{name}: {body}");
        // Larger than the request's max_size: 413.
        let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(3000));
        let (status, _, _) = call("/users/42", "application/json", &big).await;
        assert_eq!(status, 413, "{name}");
        // Within the request's limit, but the answer is over the response's: 502.
        let mid = format!(r#"{{"pad":"{}"}}"#, "x".repeat(1500));
        let (status, _, body) = call("/users/42", "application/json", &mid).await;
        assert_eq!(status, 502, "{name}: {body}");

        // A `respond` route's answer is a handler's answer too.
        let (status, _, body) = call("/fixed", "text/plain", "").await;
        assert_eq!((status, body.as_str()), (200, r#"{"a":1}"#), "{name}");
    }
}

#[test]
fn body_transform_configs_are_checked_with_paths() {
    let up = "upstreams:\n  u: { targets: [{ url: \"http://127.0.0.1:9\" }] }\n";
    let errors = validation_errors(&format!(
        "version: 1\nlisteners: [{{ name: p, bind: 127.0.0.1:0 }}]\n{up}routes:\n  - name: r\n    match: {{ prefix: /r }}\n    upstream: u\n    plugins:\n      - request_body: {{ remove: [a..b], rename: {{ x: y.z }}, set: {{ a: [\"{{param.id}}\"] }} }}\n      - response_body: {{ set: {{ b: {{ c: \"{{header.x}}\" }} }}, max_size: 0B }}\n"
    ));
    for want in [
        "routes[0].plugins[0].request_body.remove: \"a..b\": an empty segment",
        "routes[0].plugins[0].request_body.rename.x: \"y.z\": the new name is one key",
        "routes[0].plugins[0].request_body.set.a: \"{param.id}\": the route's path does not capture {id}",
        "routes[0].plugins[1].response_body.set.b: \"{header.x}\": {header.*} is not known when the response is written",
        "routes[0].plugins[1].response_body.max_size: must be more than 0",
    ] {
        assert!(errors.contains(want), "missing {want:?} in:\n{errors}");
    }
}

#[tokio::test]
async fn jq_expressions_transform_json_bodies_both_ways() {
    let up = TestUpstream::start("u").await;
    let gw = Gateway::start(&config(&format!(
        r#"upstreams:
  u: {{ targets: [{{ url: "{}" }}] }}
routes:
  - name: jq
    match: {{ prefix: /jq }}
    upstream: u
    rewrite: {{ path: /echo-body }}
    plugins:
      - request_body: {{ remove: [debug], jq: '.items |= map(select(.keep))' }}
      - response_body: {{ jq: '{{count: (.items | length), names: [.items[].name]}}' }}
"#,
        up.url()
    )));
    let post = |body: &'static str| {
        let req = http::Request::post(gw.url("/jq"))
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from_static(body.as_bytes())))
            .unwrap();
        send(req)
    };
    let (status, _, body) =
        post(r#"{"debug":1,"items":[{"name":"a","keep":true},{"name":"b"},{"name":"c","keep":true}]}"#).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body), serde_json::json!({ "count": 2, "names": ["a", "c"] }));
    // A body the expression fails on: the client's error going up.
    let (status, _, body) = post(r#"{"items":"not a list"}"#).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(json(&body)["error"], "request body could not be transformed");
}

#[tokio::test]
async fn xml_and_json_convert_both_ways() {
    let up = TestUpstream::start("u").await;
    let gw = Gateway::start(&config(&format!(
        r#"upstreams:
  u: {{ targets: [{{ url: "{}" }}] }}
routes:
  - name: json-service
    match: {{ prefix: /json-service }}
    upstream: u
    rewrite: {{ path: /echo-body }}
    plugins:
      - xml: {{ request: to_json, response: by_accept, root: echo }}
      - request_body: {{ set: {{ added: 1 }} }}
  - name: xml-service
    match: {{ prefix: /xml-service }}
    upstream: u
    rewrite: {{ path: /echo-body }}
    plugins:
      - xml: {{ response: to_json }}
"#,
        up.url()
    )));
    let post = |path: &str, body: &'static str, accept: &'static str| {
        let req = http::Request::post(gw.url(path))
            .header("content-type", "application/xml")
            .header("accept", accept)
            .body(http_body_util::Full::new(bytes::Bytes::from_static(body.as_bytes())))
            .unwrap();
        send(req)
    };
    let order = r#"<?xml version="1.0"?><order id="7"><item>a &amp; b</item><item>c</item></order>"#;
    // XML up as JSON (edited as JSON on the way), JSON back to a JSON client.
    let (status, headers, body) = post("/json-service", order, "application/json").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(json(&body), serde_json::json!({ "order": { "@id": "7", "item": ["a & b", "c"] }, "added": 1 }));
    // The same, written as XML for a client whose Accept prefers it.
    let (status, headers, body) = post("/json-service", order, "application/xml, application/json;q=0.5").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["content-type"], "application/xml; charset=utf-8");
    assert_eq!(
        body,
        r#"<?xml version="1.0" encoding="UTF-8"?><echo><order id="7"><item>a &amp; b</item><item>c</item></order><added>1</added></echo>"#
    );
    // Not XML, or XML with a DOCTYPE (entities, XXE): the client's error.
    for bad in ["<order><item></order>", r#"<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><x>&e;</x>"#] {
        let (status, _, body) = post("/json-service", bad, "application/json").await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(json(&body)["error"], "request body is not valid XML");
    }
    // An XML service's answer as JSON.
    let (status, headers, body) = post("/xml-service", order, "*/*").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(json(&body), serde_json::json!({ "order": { "@id": "7", "item": ["a & b", "c"] } }));
}
