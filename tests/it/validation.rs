//! The `validate` plugin against a real upstream: requests checked against an OpenAPI
//! document (examples/contracts/orders.yaml, 3.0; a 3.1 one written here) or inline JSON
//! Schemas. A refused request never reaches the upstream; a valid one arrives unchanged.

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use crate::support::*;

fn orders_doc() -> String {
    format!("{}/examples/contracts/orders.yaml", env!("CARGO_MANIFEST_DIR"))
}

/// A gateway whose `/api` route validates against the orders document.
fn gateway(up: &TestUpstream, validate: &str) -> Gateway {
    Gateway::start(&config(&format!(
        "upstreams:\n  u: {{ targets: [{{ url: \"{}\" }}] }}\nroutes:\n  - name: api\n    match: {{ prefix: /api }}\n    upstream: u\n    plugins:\n      - validate: {validate}\n",
        up.url()
    )))
}

fn post(gw: &Gateway, path: &str, content_type: &str, tenant: Option<&str>, body: &str) -> Request<Full<Bytes>> {
    let mut b = Request::post(gw.url(path)).header("content-type", content_type);
    if let Some(t) = tenant {
        b = b.header("x-tenant", t);
    }
    b.body(Full::new(Bytes::from(body.to_owned()))).unwrap()
}

/// The problems of a 400, as (pointer, rule), sorted.
fn problems(body: &str) -> Vec<(String, String)> {
    let v = json(body);
    assert_eq!(v["status"], 400, "{body}");
    assert_eq!(v["error"], "request does not match the API contract");
    assert!(v["requestId"].as_str().is_some_and(|s| !s.is_empty()));
    let mut list: Vec<(String, String)> = v["problems"]
        .as_array()
        .unwrap_or_else(|| panic!("no problems: {body}"))
        .iter()
        .map(|p| {
            assert!(p["message"].as_str().is_some_and(|m| !m.is_empty()), "{p}");
            (p["pointer"].as_str().unwrap_or("").to_owned(), p["rule"].as_str().unwrap_or("").to_owned())
        })
        .collect();
    list.sort();
    list
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|(a, b)| ((*a).to_owned(), (*b).to_owned())).collect()
}

#[tokio::test]
async fn parameters_and_bodies_are_checked_against_an_openapi_document() {
    let up = TestUpstream::start("orders").await;
    let gw = gateway(&up, &format!("{{ openapi: \"{}\", base_path: /api }}", orders_doc()));

    // Valid requests go through, the query and body as sent.
    let (s, _, body) = get(&gw.url("/api/orders?limit=5&status=open&status=shipped")).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(json(&body)["query"], "limit=5&status=open&status=shipped");
    let order = r#"{"note":null,"items":[{"sku":"a-1","qty":2}]}"#;
    let (s, _, body) = send(post(&gw, "/api/orders", "application/json", Some("acme"), order)).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(json(&body)["bodyBytes"], order.len());
    assert_eq!(get(&gw.url("/api/orders/12")).await.0, 200);
    let reached = up.hits();
    assert_eq!(reached, 3);

    // Parameters: every problem, with a pointer and the rule.
    let (s, _, body) = get(&gw.url("/api/orders?limit=500&status=open&status=lost")).await;
    assert_eq!(s, 400);
    assert_eq!(problems(&body), pairs(&[("/query/limit", "maximum"), ("/query/status/1", "enum")]));
    let (s, _, body) = get(&gw.url("/api/orders/abc")).await;
    assert_eq!(s, 400);
    assert_eq!(problems(&body), pairs(&[("/path/id", "type")]));

    // Bodies: a schema reached through $ref, nullable (3.0), additionalProperties.
    // Parameters are checked first: a request with a bad one is refused before its body
    // is read.
    let bad = r#"{"items":[{"sku":"a-1","qty":0},{"qty":1}],"coupon":"x"}"#;
    let (s, _, body) = send(post(&gw, "/api/orders", "application/json", Some("Acme"), bad)).await;
    assert_eq!(s, 400);
    assert_eq!(problems(&body), pairs(&[("/headers/x-tenant", "pattern")]));
    let (s, _, body) = send(post(&gw, "/api/orders", "application/json", Some("acme"), bad)).await;
    assert_eq!(s, 400);
    assert_eq!(
        problems(&body),
        pairs(&[("/body", "additionalProperties"), ("/body/items/0/qty", "minimum"), ("/body/items/1", "required")])
    );
    let (s, _, body) = send(post(&gw, "/api/orders", "application/json", None, "{not json")).await;
    assert_eq!(s, 400);
    assert_eq!(problems(&body), pairs(&[("/headers/x-tenant", "required")]));
    let (s, _, body) = send(post(&gw, "/api/orders", "application/json", Some("acme"), "{not json")).await;
    assert_eq!(s, 400);
    assert_eq!(problems(&body), pairs(&[("/body", "json")]));
    let (s, _, body) = send(post(&gw, "/api/orders", "application/json", Some("acme"), "")).await;
    assert_eq!(s, 400);
    assert_eq!(problems(&body), pairs(&[("/body", "required")]));

    // A body type the operation does not take; unknown operations.
    let (s, _, body) = send(post(&gw, "/api/orders", "text/plain", Some("acme"), "hello")).await;
    assert_eq!(s, 415, "{body}");
    assert_eq!(json(&body)["error"], "content type not accepted by the API contract");
    let req = Request::patch(gw.url("/api/orders/3")).body(Full::new(Bytes::new())).unwrap();
    let (s, h, _) = send(req).await;
    assert_eq!((s.as_u16(), h["allow"].to_str().unwrap()), (405, "GET, DELETE"));
    let (s, _, body) = get(&gw.url("/api/customers")).await;
    assert_eq!(s, 404);
    assert_eq!(json(&body)["error"], "no operation of the API contract matches this request");

    // A body past max_body is the client's error, before it is parsed.
    let big = format!(r#"{{"note":"{}","items":[{{"sku":"a","qty":1}}]}}"#, "x".repeat(2048));
    let gw2 = gateway(&up, &format!("{{ openapi: \"{}\", base_path: /api, max_body: 1KiB }}", orders_doc()));
    assert_eq!(send(post(&gw2, "/api/orders", "application/json", Some("acme"), &big)).await.0, 413);

    assert_eq!(up.hits(), reached, "no refused request reached the upstream");
}

#[tokio::test]
async fn an_openapi_3_1_document_and_unknown_operations_passed_on() {
    let up = TestUpstream::start("u").await;
    let dir = tempfile::tempdir().unwrap();
    let doc = write_temp(
        dir.path(),
        "api.json",
        r##"{"openapi": "3.1.0", "info": {"title": "t", "version": "1"},
            "paths": {"/things/{id}": {"put": {
                "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string", "format": "uuid"}}],
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Thing"}}}}}}},
            "components": {"schemas": {"Thing": {"type": "object", "properties": {"size": {"type": ["integer", "null"], "exclusiveMinimum": 0}}}}}}"##,
    );
    let gw = gateway(&up, &format!("{{ openapi: \"{}\", unknown_operations: pass }}", doc.display()));
    let put = |gw: &Gateway, path: &str, body: &str| {
        Request::put(gw.url(path))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap()
    };
    let id = "/api/things/0b7c52a4-6f0e-4b8e-9f5a-2f1c8e0d9a11";
    // Paths are matched without a base path here: /api/things/... is not in the document.
    assert_eq!(send(put(&gw, id, r#"{"size": 0}"#)).await.0, 200, "unknown: passed unchecked");
    let gw = gateway(&up, &format!("{{ openapi: \"{}\", base_path: /api }}", doc.display()));
    assert_eq!(send(put(&gw, id, r#"{"size": 3}"#)).await.0, 200);
    assert_eq!(send(put(&gw, id, r#"{"size": null}"#)).await.0, 200);
    let (s, _, body) = send(put(&gw, "/api/things/not-a-uuid", r#"{"size": 0}"#)).await;
    assert_eq!(s, 400);
    assert_eq!(problems(&body), pairs(&[("/path/id", "format")]), "parameters first: the body is not read");
    let (s, _, body) = send(put(&gw, id, r#"{"size": 0}"#)).await;
    assert_eq!(s, 400);
    assert_eq!(problems(&body), pairs(&[("/body/size", "exclusiveMinimum")]));
}

#[tokio::test]
async fn inline_and_file_schemas_check_every_request_of_a_route() {
    let up = TestUpstream::start("u").await;
    let dir = tempfile::tempdir().unwrap();
    let body_schema = write_temp(
        dir.path(),
        "event.yaml",
        "type: object\nrequired: [kind]\nproperties:\n  kind: { enum: [click, view] }\n",
    );
    let validate = format!(
        "{{ schemas: {{ body: {{ file: \"{}\" }}, query: {{ type: object, properties: {{ page: {{ type: integer, minimum: 1 }}, tag: {{ type: array, maxItems: 2 }} }}, additionalProperties: false }} }} }}",
        body_schema.display()
    );
    let gw = gateway(&up, &validate);
    assert_eq!(get(&gw.url("/api/events?page=2&tag=a&tag=b")).await.0, 200);
    let (s, _, body) = get(&gw.url("/api/events?page=0&tag=a&tag=b&tag=c&debug=1")).await;
    assert_eq!(s, 400);
    assert_eq!(
        problems(&body),
        pairs(&[("/query", "additionalProperties"), ("/query/page", "minimum"), ("/query/tag", "maxItems")])
    );
    let ok = post(&gw, "/api/events", "application/json", None, r#"{"kind":"click"}"#);
    assert_eq!(send(ok).await.0, 200);
    let (s, _, body) = send(post(&gw, "/api/events", "application/json", None, r#"{"kind":"scroll"}"#)).await;
    assert_eq!(s, 400);
    assert_eq!(problems(&body), pairs(&[("/body/kind", "enum")]));
    // Header names in a headers schema match whatever their case there.
    let gw2 =
        gateway(&up, "{ schemas: { headers: { properties: { X-Count: { type: integer } }, required: [X-Count] } } }");
    assert_eq!(get_with(&gw2.url("/api/x"), &[("x-count", "3")]).await.0, 200);
    let (s, _, body) = get_with(&gw2.url("/api/x"), &[("X-Count", "three")]).await;
    assert_eq!(s, 400);
    assert_eq!(problems(&body), pairs(&[("/headers/x-count", "type")]));
    let (s, _, body) = get(&gw2.url("/api/x")).await;
    assert_eq!(s, 400);
    assert_eq!(problems(&body), pairs(&[("/headers", "required")]));
    let empty = Request::post(gw.url("/api/events")).body(Full::new(Bytes::new())).unwrap();
    let (s, _, body) = send(empty).await;
    assert_eq!(s, 400);
    assert_eq!(problems(&body), pairs(&[("/body", "required")]));
}

#[test]
fn validate_reports_a_bad_or_missing_contract_with_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let doc = write_temp(
        dir.path(),
        "bad.yaml",
        "openapi: 3.1.0\npaths:\n  /a:\n    post:\n      requestBody:\n        content:\n          application/json:\n            schema: { type: objekt }\n",
    );
    let yaml = |validate: &str| {
        config(&format!(
            "upstreams:\n  u: {{ targets: [{{ url: \"http://127.0.0.1:1\" }}] }}\nroutes:\n  - name: r\n    match: {{ prefix: / }}\n    upstream: u\n    plugins:\n      - validate: {validate}\n"
        ))
    };
    let e = validation_errors(&yaml(&format!("{{ openapi: \"{}\" }}", doc.display())));
    assert!(e.contains("routes[0].plugins[0].validate.openapi"), "{e}");
    assert!(e.contains("paths./a.post.requestBody.content.application/json.schema"), "{e}");
    let e = validation_errors(&yaml("{ openapi: /nonexistent/api.yaml }"));
    assert!(e.contains("routes[0].plugins[0].validate.openapi") && e.contains("cannot read"), "{e}");
    let e = validation_errors(&yaml("{ schemas: { query: { type: 12 } } }"));
    assert!(e.contains("routes[0].plugins[0].validate.schemas.query"), "{e}");
    let e = validation_errors(&yaml("{ openapi: x.yaml, schemas: { query: {} } }"));
    assert!(e.contains("either openapi or schemas"), "{e}");
    let e = validation_errors(&yaml(&format!("{{ openapi: \"{}\", base_path: api/ }}", doc.display())));
    assert!(e.contains("routes[0].plugins[0].validate.base_path"), "{e}");
    // Answers are checked as the upstream sent them: not with a plugin that changes them.
    let e = validation_errors(&yaml(&format!(
        "{{ openapi: \"{}\", responses: log }}\n      - compression: {{}}",
        doc.display()
    )));
    assert!(e.contains("routes[0].plugins") && e.contains("compression changes first"), "{e}");
}

#[tokio::test]
async fn answers_are_checked_in_log_only_mode_and_never_changed() {
    let up = TestUpstream::start("u").await;
    let dir = tempfile::tempdir().unwrap();
    let doc = write_temp(
        dir.path(),
        "echo.yaml",
        "openapi: 3.1.0\ninfo: { title: t, version: '1' }\npaths:\n  /echo-body:\n    post:\n      operationId: echo\n      requestBody: { content: { application/json: { schema: {} } } }\n      responses:\n        '200':\n          description: ok\n          content: { application/json: { schema: { type: object, required: [ok], properties: { ok: { type: boolean } } } } }\n",
    );
    // The document describes the public paths (/api/...): the route strips /api on the way
    // up, after the check.
    let gw = Gateway::start(&config(&format!(
        "upstreams:\n  u: {{ targets: [{{ url: \"{}\" }}] }}\nroutes:\n  - name: api\n    match: {{ prefix: /api }}\n    upstream: u\n    rewrite: {{ strip_prefix: /api }}\n    plugins:\n      - validate: {{ openapi: \"{}\", base_path: /api, responses: log }}\n",
        up.url(),
        doc.display()
    )));
    let series = "gateway_response_contract_violations_total{operation=\"echo\"}";
    let good = r#"{"ok":true}"#;
    let (s, h, body) = send(post(&gw, "/api/echo-body", "application/json", None, good)).await;
    assert_eq!((s.as_u16(), body.as_str()), (200, good));
    assert_eq!(h["content-type"], "application/json");
    assert_eq!(gw.metric(series).await, 0.0);
    // An answer that breaks the schema goes to the client as the upstream sent it; the
    // mismatch is counted and logged with the request's ID.
    let drifted = r#"{"ok":"yes","extra":[1,2,3]}"#;
    let (s, h, body) = send(post(&gw, "/api/echo-body", "application/json", None, drifted)).await;
    assert_eq!((s.as_u16(), body.as_str()), (200, drifted));
    assert_eq!(gw.metric(series).await, 1.0);
    let id = h["x-request-id"].to_str().unwrap().to_owned();
    assert!(gw.logged("upstream answer breaks the API contract").await, "{}", gw.stderr_text());
    let log = gw.stderr_text();
    assert!(log.contains(&id) && log.contains("/body/ok (type)"), "{log}");
}

#[tokio::test]
async fn routes_from_openapi_prints_routes_that_serve_the_document() {
    let up = TestUpstream::start("orders").await;
    let out = portico()
        .args(["routes-from-openapi", &orders_doc(), "--upstream", "orders", "--prefix", "/api"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let routes = String::from_utf8(out.stdout).unwrap();
    assert!(routes.contains("name: \"listOrders\"") && routes.contains("methods: [GET, POST]"), "{routes}");
    let gw = Gateway::start(&config(&format!(
        "upstreams:\n  orders: {{ targets: [{{ url: \"{}\" }}] }}\n{routes}",
        up.url()
    )));
    assert_eq!(get(&gw.url("/api/orders/12")).await.0, 200);
    assert_eq!(get(&gw.url("/api/orders/x")).await.0, 400);
    let req = Request::delete(gw.url("/api/orders")).body(Full::new(Bytes::new())).unwrap();
    assert_eq!(send(req).await.0, 405, "the routes match only the document's methods");
    assert_eq!(up.hits(), 1);

    let bad = portico().args(["routes-from-openapi", "/nonexistent.yaml"]).output().unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("cannot read"));
}

/// An HTTP/2 (h2c) POST whose body has no length: one data frame, then the end of the
/// stream, and no `Content-Length`. Returns the status and the body. (curl reading from
/// its standard input sends the same, but reports a failure when the answer comes before
/// it has sent the body and the stream is reset with NO_ERROR, as RFC 9113 section 8.1
/// allows: a 415 decided on the head alone.)
async fn h2_post_without_length(gw: &Gateway, path: &str, content_type: &str, body: &str) -> (u16, String) {
    use http_body_util::BodyExt;
    let io = hyper_util::rt::TokioIo::new(tokio::net::TcpStream::connect(gw.addr()).await.unwrap());
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io).await.unwrap();
    tokio::spawn(conn);
    let frames = vec![Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(Bytes::from(body.to_owned())))];
    let stream = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
    let req = Request::post(format!("http://{}{path}", gw.addr()))
        .header("content-type", content_type)
        .header("x-tenant", "acme")
        .body(stream)
        .unwrap();
    let res = send.send_request(req).await.unwrap();
    let status = res.status().as_u16();
    let text = res.into_body().collect().await.map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned());
    (status, text.unwrap_or_default())
}

#[tokio::test]
async fn what_services_read_differently_is_refused_not_passed() {
    let up = TestUpstream::start("orders").await;
    let gw = gateway(&up, &format!("{{ openapi: \"{}\", base_path: /api }}", orders_doc()));
    // A parameter given twice: one value would be checked, another used.
    let (s, _, body) = get(&gw.url("/api/orders?limit=5&limit=abc")).await;
    assert_eq!(s, 400);
    assert_eq!(problems(&body), pairs(&[("/query/limit", "repeated")]));
    // A key given twice: parsers disagree on which one counts.
    let twice = r#"{"items":[{"sku":"a","qty":1,"qty":-5}]}"#;
    let (s, _, body) = send(post(&gw, "/api/orders", "application/json", Some("acme"), twice)).await;
    assert_eq!(s, 400);
    assert_eq!(problems(&body), pairs(&[("/body", "json")]));
    // HTTP/2 bodies need no Content-Length: still checked, and their type still refused.
    let (status, body) = h2_post_without_length(&gw, "/api/orders", "application/xml", "<a/>").await;
    assert_eq!(status, 415, "{body}");
    let (status, body) = h2_post_without_length(&gw, "/api/orders", "application/json", r#"{"items":[]}"#).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(problems(&body), pairs(&[("/body/items", "minItems")]));
    assert_eq!(up.hits(), 0);

    // With unknown operations passed on, the spellings a lenient service folds into a known
    // path are checked as that path, not passed.
    let gw = gateway(&up, &format!("{{ openapi: \"{}\", base_path: /api, unknown_operations: pass }}", orders_doc()));
    for spelling in ["/api/orders/x/", "/api/Orders/x", "/api/orders//x", "/api/%6Frders/x"] {
        let (s, _, body) = get(&gw.url(spelling)).await;
        assert_eq!(s, 400, "{spelling}: {body}");
        assert_eq!(problems(&body), pairs(&[("/path/id", "type")]), "{spelling}");
    }
    let (s, _, body) = get(&gw.url("/api/customers/1")).await;
    assert_eq!(s, 200, "a path the document does not have passes: {body}");
}
