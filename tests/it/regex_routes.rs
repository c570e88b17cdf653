//! Routes matched by regular expression (`match.regex`): a real upstream receives the path
//! rewritten from the regex's named captures and a header templated from one, on the
//! HTTP/1.1 fast path and over h2c; regexes sit after exact paths, fall through to the next
//! regex, and a method no candidate accepts is a 405 with `Allow`.

use crate::support::*;

fn yaml(users: &TestUpstream, legacy: &TestUpstream) -> String {
    config(&format!(
        r#"upstreams:
  users: {{ targets: [{{ url: "{}" }}] }}
  legacy: {{ targets: [{{ url: "{}" }}] }}
routes:
  - name: users-v1v2
    match: {{ regex: "^/v(?<version>[12])/users/(?<id>[0-9]+)$", methods: [GET, PUT] }}
    upstream: users
    rewrite: {{ path: "/users/{{id}}" }}
    plugins:
      - request_headers: {{ set: {{ x-user-id: "{{param.id}}", x-api-version: "v{{param.version}}" }} }}
  - {{ name: users-any-version, match: {{ regex: "^/v[0-9]+/users/.*$", methods: [DELETE] }}, upstream: legacy }}
  - {{ name: users-me, match: {{ path: /v1/users/me }}, upstream: users }}
  - {{ name: static, match: {{ prefix: /static }}, upstream: legacy }}
"#,
        users.url(),
        legacy.url()
    ))
}

#[tokio::test]
async fn a_regex_route_forwards_a_path_and_headers_built_from_its_captures() {
    let users = TestUpstream::start("users").await;
    let legacy = TestUpstream::start("legacy").await;
    let gw = Gateway::start(&yaml(&users, &legacy));

    let (status, _, body) = get(&gw.url("/v2/users/42?expand=orders")).await;
    assert_eq!(status, 200, "{body}");
    let v = json(&body);
    assert_eq!(v["upstream"], "users");
    assert_eq!(v["path"], "/users/42");
    assert_eq!(v["query"], "expand=orders");
    assert_eq!(v["headers"]["x-user-id"], "42");
    assert_eq!(v["headers"]["x-api-version"], "v2");

    // The same over h2c (hyper's server path rather than the lean HTTP/1.1 loop).
    let (ok, out) = curl(&["--http2-prior-knowledge", &gw.url("/v1/users/7")]).await;
    assert!(ok, "{out}");
    let v = json(&out);
    assert_eq!((&v["path"], &v["headers"]["x-user-id"]), (&"/users/7".into(), &"7".into()));

    // An exact path comes before any regex; it captures nothing and is sent as it came.
    let (_, _, body) = get(&gw.url("/v1/users/me")).await;
    let v = json(&body);
    assert_eq!((&v["path"], &v["headers"]["x-user-id"]), (&"/v1/users/me".into(), &serde_json::Value::Null));

    // The first regex declines DELETE: the next matching regex takes it, path unchanged.
    let req = http::Request::delete(gw.url("/v2/users/42")).body(Default::default()).unwrap();
    let (status, _, body) = send(req).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((&json(&body)["upstream"], &json(&body)["path"]), (&"legacy".into(), &"/v2/users/42".into()));

    // Both regexes match but neither accepts POST: 405 with both routes' methods.
    let req = http::Request::post(gw.url("/v2/users/42")).body(Default::default()).unwrap();
    let (status, headers, _) = send(req).await;
    assert_eq!(status, 405);
    assert_eq!(headers["allow"], "DELETE, GET, PUT");

    // A regex matches the whole path or nothing: `/v2/users/42/orders` is only the second
    // one's (DELETE), and a path no regex matches goes on to the prefixes, then 404.
    let (status, headers, _) = get(&gw.url("/v2/users/42/orders")).await;
    assert_eq!((status.as_u16(), headers["allow"].to_str().unwrap()), (405, "DELETE"));
    assert_eq!(get(&gw.url("/v2/people/42")).await.0, 404);
    let (_, _, body) = get(&gw.url("/static/app.js")).await;
    assert_eq!(json(&body)["upstream"], "legacy");

    // The access log names the regex route.
    let logged = || async {
        let routes: Vec<String> =
            gw.access_log().iter().map(|l| l["route"].as_str().unwrap_or("none").to_owned()).collect();
        routes.starts_with(&["users-v1v2", "users-v1v2", "users-me", "users-any-version"].map(String::from))
    };
    assert!(Gateway::eventually(std::time::Duration::from_secs(3), logged).await, "{:?}", gw.access_log());
}
