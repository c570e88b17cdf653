//! The `validate` plugin's checks of what a client sends, against
//! examples/contracts/orders.yaml: the operation looked up by method and path
//! (`Document::find`), the path, query and header parameters turned into JSON and checked
//! (`Operation::check_params`), and a JSON body checked (`check_json_body`); and, on the
//! config side, `Document::compile` on an arbitrary JSON document.
//!
//! Input: a selector byte, then lines: method, path, query, an `X-Tenant` value, and the
//! rest the body (or, for selector 3, the whole rest a document).
//!
//! Checked: no panic; at most `MAX_PROBLEMS` problems, each with a pointer into the request
//! (`/body`, `/query/`, `/headers/`, `/path/`) and a rule; a path found with parameters is
//! the template with each parameter's (undecoded) value put back; a found operation's
//! parameters that a valid request would carry check clean.
#![no_main]

use std::sync::LazyLock;

use http::{HeaderMap, HeaderValue, Method};
use libfuzzer_sys::fuzz_target;
use portico::contract::openapi::{Document, Lookup};
use portico::contract::{MAX_PROBLEMS, Problem, RequestParts, check_json_body};

static DOC: LazyLock<Document> = LazyLock::new(|| {
    let text = include_str!("../../examples/contracts/orders.yaml");
    let value: serde_json::Value = serde_saphyr::from_str(text).expect("the example document is YAML");
    Document::compile(value).expect("the example document compiles")
});

fn well_formed(problems: &[Problem]) {
    assert!(problems.len() <= MAX_PROBLEMS, "{} problems", problems.len());
    for p in problems {
        let known = ["/body", "/query/", "/headers/", "/path/"].iter().any(|s| p.pointer.starts_with(s));
        assert!(known, "pointer {:?}", p.pointer);
        assert!(!p.rule.is_empty(), "{p:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else { return };
    if which % 4 == 3 {
        // A document from the config: any JSON compiles or is refused, never panics.
        if rest.len() > 4096 {
            return;
        }
        if let Ok(value) = serde_json::from_slice::<serde_json::Value>(rest) {
            let _ = Document::compile(value);
        }
        return;
    }
    let mut lines = rest.splitn(5, |&b| b == b'\n');
    let method = match lines.next().unwrap_or_default() {
        b"GET" => Method::GET,
        b"POST" => Method::POST,
        b"HEAD" => Method::HEAD,
        b"DELETE" => Method::DELETE,
        other => match Method::from_bytes(other) {
            Ok(m) => m,
            Err(_) => return,
        },
    };
    let Ok(path) = std::str::from_utf8(lines.next().unwrap_or_default()) else { return };
    let query = std::str::from_utf8(lines.next().unwrap_or_default()).ok().filter(|q| !q.is_empty());
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_bytes(lines.next().unwrap_or_default()) {
        headers.insert("x-tenant", v);
    }
    let body = lines.next().unwrap_or_default();

    let Lookup::Found(op, params) = DOC.find(&method, path) else { return };
    // The path is the template with the parameters' values put back (decoded values
    // equal the raw text when it holds no `%`).
    if !path.contains('%') {
        let template = match params.as_slice() {
            [] => None,
            [(name, value)] => path.strip_suffix(&format!("/{value}")).map(|p| format!("{p}/{{{name}}}")),
            _ => None,
        };
        if let Some(t) = template {
            assert!(t == "/orders/{id}", "{path:?} gave {params:?}");
        }
    }
    let mut problems = Vec::new();
    op.check_params(RequestParts { path_params: &params, query, headers: &headers }, &mut problems);
    well_formed(&problems);
    if let Some(schema) = op.body.as_ref().and_then(|b| b.for_type(Some("application/json")).flatten()) {
        let mut problems = Vec::new();
        check_json_body(Some(schema), body, &mut problems);
        well_formed(&problems);
        if serde_json::from_slice::<serde_json::Value>(body).is_err() {
            assert!(problems.iter().any(|p| p.rule == "json"), "a body that is not JSON passed");
        }
    }
    // The parameters a valid request of this operation carries check clean.
    let mut clean = Vec::new();
    let mut ok_headers = HeaderMap::new();
    ok_headers.insert("x-tenant", HeaderValue::from_static("acme"));
    let valid: Vec<(String, String)> = params.iter().map(|(k, _)| (k.clone(), "7".to_owned())).collect();
    op.check_params(RequestParts { path_params: &valid, query: Some("limit=3&status=open"), headers: &ok_headers }, &mut clean);
    assert!(clean.is_empty(), "{} {path:?}: {clean:?}", op.id);
});
