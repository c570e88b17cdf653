use super::*;

fn m(yaml: &str) -> RouteMatch {
    serde_saphyr::from_str(yaml).unwrap()
}

struct Req {
    host: &'static str,
    path: &'static str,
    query: Option<&'static str>,
    method: Method,
    headers: HeaderMap,
}

fn req(method: &str, host: &'static str, path_and_query: &'static str) -> Req {
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    Req { host, path, query, method: method.parse().unwrap(), headers: HeaderMap::new() }
}

impl Req {
    fn header(mut self, k: &'static str, v: &'static str) -> Self {
        self.headers.append(k, HeaderValue::from_static(v));
        self
    }
}

/// The name of the matched route, "404" or "405 <allow>".
fn find(router: &Router, names: &[&str], r: &Req) -> String {
    let parts = RequestParts {
        host: r.host,
        path: r.path,
        query: r.query,
        method: &r.method,
        headers: &r.headers,
        listener: "public",
    };
    match router.lookup(&parts) {
        Lookup::Found { index, .. } => names[index].to_owned(),
        Lookup::MethodNotAllowed(allow) => format!("405 {allow}"),
        Lookup::NotFound => "404".to_owned(),
    }
}

fn table(routes: &[(&'static str, &str)]) -> (Router, Vec<&'static str>) {
    let matches: Vec<RouteMatch> = routes.iter().map(|(_, y)| m(y)).collect();
    (Router::new(&matches).unwrap(), routes.iter().map(|(n, _)| *n).collect())
}

#[test]
fn precedence_follows_specificity_not_file_order() {
    let (r, n) = table(&[
        ("prefix-root", "prefix: /"),
        ("prefix-api", "prefix: /api"),
        ("prefix-api-users", "prefix: /api/users/"),
        ("template", "path: '/api/users/{id}'"),
        ("exact", "path: /api/users/me"),
        ("catch-all", "path: '/api/files/{*rest}'"),
        ("host-wild", "{ hosts: ['*.example.com'], prefix: /api }"),
        ("host-exact", "{ hosts: [admin.example.com], prefix: /api }"),
        ("get-only", "{ path: /things, methods: [GET] }"),
        ("any-method", "path: /things"),
        ("v2-header", "{ path: /things, methods: [GET], headers: [{ name: x-api-version, value: '2' }] }"),
        ("q-beta", "{ path: /things, methods: [GET], query: [{ name: beta, value: 'yes please' }] }"),
    ]);
    let cases = [
        (req("GET", "h", "/api/users/me"), "exact"),
        (req("GET", "h", "/api/users/42"), "template"),
        (req("GET", "h", "/api/users/42/orders"), "prefix-api-users"),
        (req("GET", "h", "/api/users"), "prefix-api-users"),
        (req("GET", "h", "/api/files/a/b/c.txt"), "catch-all"),
        (req("GET", "h", "/api"), "prefix-api"),
        (req("GET", "h", "/apix"), "prefix-root"),
        (req("GET", "h", "/"), "prefix-root"),
        (req("GET", "x.example.com", "/api/users/me"), "host-wild"),
        (req("GET", "a.b.example.com:8443", "/api"), "host-wild"),
        (req("GET", "ADMIN.example.com", "/api/x"), "host-exact"),
        // A host-specific group without a matching path falls back to host-less routes.
        (req("GET", "admin.example.com", "/other"), "prefix-root"),
        (req("GET", "example.com", "/api"), "prefix-api"),
        (req("GET", "h", "/things"), "get-only"),
        (req("POST", "h", "/things"), "any-method"),
        (req("GET", "h", "/things").header("x-api-version", "2"), "v2-header"),
        (req("GET", "h", "/things").header("x-api-version", "3"), "get-only"),
        (req("GET", "h", "/things?beta=yes+please"), "q-beta"),
        (req("GET", "h", "/things?beta=yes%20please&x=1"), "q-beta"),
        (req("GET", "h", "/things?beta=no"), "get-only"),
    ];
    for (r_, want) in cases {
        assert_eq!(find(&r, &n, &r_), want, "{} {}{}", r_.method, r_.host, r_.path);
    }
}

#[test]
fn method_mismatch_gives_405_with_allow_and_nothing_gives_404() {
    let (r, n) = table(&[
        ("users", "{ path: '/users/{id}', methods: [GET, PUT] }"),
        ("users-del", "{ path: '/users/{id}', methods: [DELETE], headers: [{ name: x-admin }] }"),
        ("health", "{ path: /health, methods: [GET] }"),
    ]);
    assert_eq!(find(&r, &n, &req("POST", "h", "/users/1")), "405 GET, PUT");
    assert_eq!(find(&r, &n, &req("POST", "h", "/users/1").header("x-admin", "1")), "405 DELETE, GET, PUT");
    assert_eq!(find(&r, &n, &req("DELETE", "h", "/users/1").header("x-admin", "1")), "users-del");
    assert_eq!(find(&r, &n, &req("GET", "h", "/nope")), "404");
    assert_eq!(find(&r, &n, &req("GET", "h", "/users")), "404");
    assert_eq!(find(&r, &n, &req("HEAD", "h", "/health")), "405 GET");
}

#[test]
fn an_exact_path_that_declines_falls_through_to_a_template() {
    let (r, n) = table(&[
        ("me", "{ path: /users/me, methods: [GET] }"),
        ("by-id", "path: '/users/{id}'"),
        ("h-me", "{ path: /h/me, headers: [{ name: x-k }] }"),
        ("h-id", "path: '/h/{id}'"),
    ]);
    assert_eq!(find(&r, &n, &req("GET", "h", "/users/me")), "me");
    assert_eq!(find(&r, &n, &req("DELETE", "h", "/users/me")), "by-id");
    assert_eq!(find(&r, &n, &req("GET", "h", "/h/me").header("x-k", "1")), "h-me");
    assert_eq!(find(&r, &n, &req("GET", "h", "/h/me")), "h-id");
}

#[test]
fn header_conditions_present_absent_prefix() {
    let (r, n) = table(&[
        ("canary", "{ prefix: /, headers: [{ name: cookie, prefix: 'canary=1' }] }"),
        ("no-auth", "{ prefix: /, headers: [{ name: authorization, present: false }] }"),
        ("rest", "prefix: /"),
    ]);
    assert_eq!(find(&r, &n, &req("GET", "h", "/").header("cookie", "canary=1; a=b")), "canary");
    assert_eq!(find(&r, &n, &req("GET", "h", "/")), "no-auth");
    assert_eq!(find(&r, &n, &req("GET", "h", "/").header("authorization", "x")), "rest");
}

#[test]
fn cookie_conditions() {
    let (r, n) =
        table(&[("canary", "{ prefix: /, cookies: [{ name: canary, value: '1' }] }"), ("stable", "prefix: /")]);
    assert_eq!(find(&r, &n, &req("GET", "h", "/").header("cookie", "a=b; canary=1")), "canary");
    assert_eq!(find(&r, &n, &req("GET", "h", "/").header("cookie", "canary=0")), "stable");
    assert_eq!(find(&r, &n, &req("GET", "h", "/").header("cookie", "xcanary=1")), "stable");
}

#[test]
fn captured_params_are_returned() {
    let (r, _) = table(&[("t", "path: '/users/{id}/files/{*rest}'")]);
    let h = HeaderMap::new();
    let parts = RequestParts {
        host: "h",
        path: "/users/7/files/a/b",
        query: None,
        method: &Method::GET,
        headers: &h,
        listener: "public",
    };
    let Lookup::Found { params, .. } = r.lookup(&parts) else { panic!("no match") };
    assert_eq!(params.get("id"), Some("7"));
    assert_eq!(params.get("rest"), Some("a/b"));
}

#[test]
fn conflicting_templates_are_config_errors() {
    let matches = vec![m("path: '/users/{id}'"), m("path: '/users/{uid}'")];
    let err = Router::new(&matches).unwrap_err();
    assert_eq!(err.0[0].path, "routes[1].match.path");
}

#[test]
fn many_routes_still_match() {
    let matches: Vec<RouteMatch> = (0..10_000).map(|i| m(&format!("path: '/svc{i}/items/{{id}}'"))).collect();
    let r = Router::new(&matches).unwrap();
    let h = HeaderMap::new();
    let parts = RequestParts {
        host: "h",
        path: "/svc9876/items/5",
        query: None,
        method: &Method::GET,
        headers: &h,
        listener: "public",
    };
    assert!(matches!(r.lookup(&parts), Lookup::Found { index: 9876, .. }));
}

#[test]
fn prefixes_of_every_length_match_also_past_the_length_mask() {
    let long: &'static str = Box::leak(format!("/{}", "a".repeat(200)).into_boxed_str());
    let longer: &'static str = Box::leak(format!("{long}/{}", "b".repeat(10)).into_boxed_str());
    let under: &'static str = Box::leak(format!("{longer}/c/d").into_boxed_str());
    let (r, n) = table(&[
        ("short", "prefix: /api"),
        ("long", &format!("prefix: {long}")),
        ("longer", &format!("prefix: '{longer}/'")),
    ]);
    assert_eq!(find(&r, &n, &req("GET", "h", "/api/users/123")), "short");
    assert_eq!(find(&r, &n, &req("GET", "h", "/api")), "short");
    assert_eq!(find(&r, &n, &req("GET", "h", "/apix")), "404");
    assert_eq!(find(&r, &n, &req("GET", "h", under)), "longer", "both over 127 bytes: the longer wins");
    let beside: &'static str = Box::leak(format!("{long}/other").into_boxed_str());
    assert_eq!(find(&r, &n, &req("GET", "h", beside)), "long");
}

#[test]
fn regexes_come_after_exact_paths_and_templates_before_prefixes_in_file_order() {
    let (r, n) = table(&[
        ("prefix-root", "prefix: /"),
        ("prefix-v1", "prefix: /v1"),
        ("re-any-version", r"regex: '^/v(?<version>\d+)/users/(?<id>[^/]+)$'"),
        ("re-numeric", "regex: '^/v1/users/(?<id>[0-9]+)$'"),
        ("template", "path: '/v1/users/{id}/orders'"),
        ("exact", "path: /v1/users/me"),
        ("re-host", "{ hosts: [admin.example.com], regex: '^/v1/.*$' }"),
    ]);
    let cases = [
        (req("GET", "h", "/v1/users/me"), "exact"),
        (req("GET", "h", "/v1/users/42/orders"), "template"),
        // Both regexes match: the first in the file wins, however specific the second.
        (req("GET", "h", "/v1/users/42"), "re-any-version"),
        (req("GET", "h", "/v2/users/abc"), "re-any-version"),
        // No regex matches: on to the prefixes (a regex matches the whole path only).
        (req("GET", "h", "/v1/users/42/x"), "prefix-v1"),
        (req("GET", "h", "/v3/users"), "prefix-root"),
        // Host before path: the host group's regex beats the host-less exact path.
        (req("GET", "admin.example.com", "/v1/users/me"), "re-host"),
        (req("GET", "admin.example.com", "/v2/users/1"), "re-any-version"),
    ];
    for (r_, want) in cases {
        assert_eq!(find(&r, &n, &r_), want, "{} {}{}", r_.method, r_.host, r_.path);
    }
}

#[test]
fn a_regex_that_declines_falls_through_to_the_next_regex_then_prefixes() {
    let (r, n) = table(&[
        ("re-get", "{ regex: '^/items/(?<id>[0-9]+)$', methods: [GET] }"),
        ("re-admin", "{ regex: '^/items/(?<id>[0-9]+)$', headers: [{ name: x-admin }] }"),
        ("re-any", "{ regex: '^/items/.*$', methods: [GET, PUT] }"),
        ("prefix", "{ prefix: /items, methods: [PATCH] }"),
    ]);
    assert_eq!(find(&r, &n, &req("GET", "h", "/items/1")), "re-get");
    // Same regex, ordered as for a shared path: conditions before file order.
    assert_eq!(find(&r, &n, &req("GET", "h", "/items/1").header("x-admin", "1")), "re-get");
    assert_eq!(find(&r, &n, &req("DELETE", "h", "/items/1").header("x-admin", "1")), "re-admin");
    assert_eq!(find(&r, &n, &req("PUT", "h", "/items/1")), "re-any");
    assert_eq!(find(&r, &n, &req("PATCH", "h", "/items/1")), "prefix");
    // 405 lists every regex candidate and the prefix, as for other kinds of path.
    assert_eq!(find(&r, &n, &req("POST", "h", "/items/1")), "405 GET, PATCH, PUT");
    assert_eq!(find(&r, &n, &req("POST", "h", "/items/x")), "405 GET, PATCH, PUT");
    assert_eq!(find(&r, &n, &req("GET", "h", "/other")), "404");
}

#[test]
fn regex_captures_are_params() {
    let (r, _) = table(&[
        ("re", "regex: '^/v(?<version>[12])/users/(?<id>[0-9]+)(?:/(?<tab>[a-z]+))?$'"),
        ("unnamed", "regex: '^/plain/([0-9]+)$'"),
    ]);
    let h = HeaderMap::new();
    let lookup = |path| {
        r.lookup(&RequestParts { host: "h", path, query: None, method: &Method::GET, headers: &h, listener: "public" })
    };
    let Lookup::Found { params, .. } = lookup("/v2/users/42") else { panic!("no match") };
    assert_eq!((params.get("version"), params.get("id")), (Some("2"), Some("42")));
    // A group that took no part in the match is not a parameter.
    assert_eq!(params.get("tab"), None);
    assert_eq!(params.iter().collect::<Vec<_>>(), [("version", "2"), ("id", "42")]);
    let Lookup::Found { params, .. } = lookup("/v1/users/7/orders") else { panic!("no match") };
    assert_eq!(params.iter().collect::<Vec<_>>(), [("version", "1"), ("id", "7"), ("tab", "orders")]);
    assert!(matches!(lookup("/v3/users/42"), Lookup::NotFound));
    let Lookup::Found { params, index: 1 } = lookup("/plain/5") else { panic!("no match") };
    assert_eq!(params.iter().count(), 0);
}

#[test]
fn many_regexes_still_match_in_file_order() {
    let mut matches: Vec<RouteMatch> =
        (0..1_000).map(|i| m(&format!("regex: '^/re{i}/items/(?<id>[0-9]+)$'"))).collect();
    matches.push(m("regex: '^/re999/items/(?<id>.+)$'"));
    let r = Router::new(&matches).unwrap();
    let h = HeaderMap::new();
    let lookup = |path| {
        r.lookup(&RequestParts { host: "h", path, query: None, method: &Method::GET, headers: &h, listener: "public" })
    };
    let Lookup::Found { index: 999, params } = lookup("/re999/items/5") else { panic!("wrong route") };
    assert_eq!(params.get("id"), Some("5"));
    assert!(matches!(lookup("/re999/items/x"), Lookup::Found { index: 1_000, .. }));
    assert!(matches!(lookup("/re1000/items/5"), Lookup::NotFound));
}
