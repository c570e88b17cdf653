//! The router's path match (`router::Router`, the radix tree and the regex routes) and the
//! path rewrite (`compile::Rewrite`), over route tables and requests built with
//! `arbitrary`. Only route tables that validation would accept are built (templates and
//! regexes that parse, literal prefixes, rewrites that name captured parameters), as in
//! production.
//!
//! Checked: no panic; a match names a route of the table; a captured `{name}` is one
//! segment of the path, a `{*rest}` a part of it; a rewritten path starts with `/`, and a
//! path without dot segments (the head checks refuse the others before routing) is not
//! rewritten into one.
#![no_main]

use arbitrary::Arbitrary;
use http::{HeaderMap, Method};
use libfuzzer_sys::fuzz_target;
use portico::fuzzing;
use portico::router::{Lookup, RequestParts, Router};
use portico_config::template::{PathRegex, PathTemplate};

#[derive(Arbitrary, Debug)]
struct Spec {
    kind: u8,
    pattern: String,
    rewrite: Option<String>,
    get_only: bool,
}

#[derive(Arbitrary, Debug)]
struct Input {
    routes: Vec<Spec>,
    host: String,
    path: String,
    query: Option<String>,
    post: bool,
}

fn quoted(s: &str) -> String {
    serde_json::to_string(s).expect("a string")
}

/// The route's YAML, when validation would accept it; its match kind.
fn route(i: usize, spec: &Spec) -> Option<(portico_config::Route, u8)> {
    let kind = spec.kind % 3;
    let (field, params): (&str, Vec<String>) = match kind {
        0 => {
            let t = PathTemplate::parse(&spec.pattern).ok()?;
            ("path", t.params().map(str::to_owned).collect())
        }
        1 => {
            let p = &spec.pattern;
            (p.starts_with('/') && !p.contains(['{', '}', '?', '#'])).then_some(())?;
            ("prefix", Vec::new())
        }
        _ => {
            (spec.pattern.len() <= 128).then_some(())?;
            PathRegex::parse(&spec.pattern).ok()?;
            ("regex", Vec::new())
        }
    };
    let rewrite = match &spec.rewrite {
        None => String::new(),
        Some(r) if kind == 1 && r.is_empty() => format!(", rewrite: {{ strip_prefix: {} }}", quoted(&spec.pattern)),
        Some(r) => {
            let t = PathTemplate::parse(r).ok()?;
            if fuzzing::has_dot_segment(r) || !t.params().all(|p| params.iter().any(|q| q == p)) {
                return None;
            }
            format!(", rewrite: {{ path: {} }}", quoted(r))
        }
    };
    let methods = if spec.get_only { ", methods: [GET]" } else { "" };
    let yaml =
        format!("{{ name: r{i}, upstream: u, match: {{ {field}: {}{methods} }}{rewrite} }}", quoted(&spec.pattern));
    Some((serde_saphyr::from_str(&yaml).ok()?, kind))
}

fuzz_target!(|input: Input| {
    let mut routes = Vec::new();
    for (i, spec) in input.routes.iter().take(6).enumerate() {
        let Some(r) = route(i, spec) else { return };
        routes.push(r);
    }
    let Ok(router) = Router::new(routes.iter().map(|(r, _)| &r.matcher)) else { return };
    // What reaches the router: a path the head checks let through.
    let Ok(pq) = input.path.parse::<http::uri::PathAndQuery>() else { return };
    let path = pq.path();
    if !path.starts_with('/') || fuzzing::has_dot_segment(path) {
        return;
    }
    let headers = HeaderMap::new();
    let method = if input.post { Method::POST } else { Method::GET };
    let req =
        RequestParts { host: &input.host, path, query: input.query.as_deref(), method: &method, headers: &headers, listener: "public" };
    let Lookup::Found { index, params } = router.lookup(&req) else { return };
    let (route, kind) = routes.get(index).expect("a route of the table");
    if *kind == 0 {
        let template = PathTemplate::parse(route.matcher.path.as_deref().expect("a path")).expect("a template");
        for (name, value) in params.iter() {
            let catch_all =
                template.segments().iter().any(|s| *s == portico_config::template::Segment::CatchAll(name.into()));
            assert!(catch_all || !value.contains('/'), "{{{name}}} = {value:?} spans segments of {path:?}");
            assert!(path.contains(value), "{{{name}}} = {value:?} is not in {path:?}");
        }
    }
    if let Some(rewritten) = fuzzing::rewrite(route).apply(path, &params) {
        assert!(rewritten.starts_with('/'), "{path:?} rewritten to {rewritten:?}");
        assert!(!fuzzing::has_dot_segment(&rewritten), "{path:?} rewritten to {rewritten:?}");
    }
});
