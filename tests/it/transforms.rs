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
