use super::*;

fn no_env(_: &str) -> Option<String> {
    None
}

const BASE: &str = r#"version: 1
listeners:
  - name: public
    bind: 127.0.0.1:8080
upstreams:
  users:
    targets: [{ url: http://127.0.0.1:9000 }]
routes:
  - name: users
    match: { path: "/users/{id}", methods: [GET] }
    upstream: users
"#;

fn errors(src: &str) -> Vec<String> {
    match parse(src, no_env) {
        Ok(_) => panic!("expected errors for:\n{src}"),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn minimal_config_gets_safe_defaults() {
    let p = parse(BASE, no_env).unwrap();
    let c = p.config;
    let l = &c.listeners[0].limits;
    assert_eq!(l.max_body, ByteSize::mib(1));
    assert_eq!(l.max_header_bytes, ByteSize::kib(16));
    assert_eq!(l.header_timeout, Duration::from_secs(10));
    assert_eq!(c.admin.bind.to_string(), "127.0.0.1:9901");
    assert_eq!(c.runtime.drain_timeout, Duration::from_secs(30));
    assert_eq!(c.upstreams["users"].timeouts.connect, Duration::from_secs(5));
    assert_eq!(c.upstreams["users"].targets[0].weight, 1);
    assert!(c.access_log.enabled);
}

#[test]
fn unknown_field_names_its_path_and_line() {
    let src = BASE.replace("upstream: users\n", "upstream: users\n    upstrem: x\n");
    let errs = errors(&src);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(errs[0].contains("upstrem"), "{errs:?}");
    assert!(errs[0].contains("line 12"), "{errs:?}");
    assert!(errs[0].starts_with("routes[0].upstrem: unknown field"), "{errs:?}");
}

#[test]
fn bad_duration_and_size_are_typed_errors() {
    let src =
        BASE.replace("    bind: 127.0.0.1:8080\n", "    bind: 127.0.0.1:8080\n    limits: { header_timeout: 5 }\n");
    let errs = errors(&src);
    assert!(errs[0].contains("bare number"), "{errs:?}");
    assert!(errs[0].starts_with("listeners[0].limits.header_timeout"), "{errs:?}");

    let src = BASE.replace("    bind: 127.0.0.1:8080\n", "    bind: 127.0.0.1:8080\n    limits: { max_body: 1 MB }\n");
    let errs = errors(&src);
    assert!(errs[0].contains("invalid size"), "{errs:?}");
}

#[test]
fn every_semantic_error_is_reported_with_its_path() {
    let src = r#"version: 1
listeners:
  - { name: a, bind: 127.0.0.1:8080 }
  - { name: a, bind: 127.0.0.1:8080 }
upstreams:
  users:
    targets: [{ url: ftp://x }, { url: http://h:1, weight: 0 }]
routes:
  - name: r
    match: { path: users }
    upstream: nope
  - name: r
    match: { prefix: /a, methods: [get] }
    upstream: users
    rewrite: { path: "/b/{id}" }
"#;
    let errs = errors(src);
    let want = [
        "listeners[1].name: duplicate listener name \"a\"",
        "listeners[1].bind: address 127.0.0.1:8080 is already used",
        "upstreams.users.targets[0].url:",
        "upstreams.users.targets[1].weight:",
        "routes[0].match.path: \"users\" must start with '/'",
        "routes[0].upstream: unknown upstream \"nope\" (defined: users)",
        "routes[1].name: duplicate route name \"r\"",
        "routes[1].match.methods[0]: methods are case-sensitive",
        "routes[1].rewrite.path: {id} is not captured",
    ];
    for w in want {
        assert!(errs.iter().any(|e| e.starts_with(w)), "missing {w:?} in {errs:#?}");
    }
    assert_eq!(errs.len(), want.len(), "{errs:#?}");
    // Positions are known for semantic errors too.
    assert!(errs.iter().all(|e| e.contains("(line ")), "{errs:#?}");
}

#[test]
fn environment_variables_are_interpolated_and_missing_ones_named() {
    let src = BASE.replace("127.0.0.1:9000", "${UPSTREAM_ADDR}");
    let p = parse(&src, |n| (n == "UPSTREAM_ADDR").then(|| "10.0.0.1:80".to_owned())).unwrap();
    assert_eq!(p.config.upstreams["users"].targets[0].url, "http://10.0.0.1:80");
    let errs = errors(&src);
    assert_eq!(errs, ["environment variable UPSTREAM_ADDR is not set (line 7, column 29)"]);
}

#[test]
fn version_is_required_so_half_written_files_are_not_applied() {
    let errs = errors(BASE.trim_start_matches("version: 1\n"));
    assert!(errs[0].contains("version"), "{errs:?}");
    let half = &BASE[..BASE.len() / 2];
    assert!(parse(half, no_env).is_err());
}

#[test]
fn committed_schema_is_current() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../schema/portico.schema.json");
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == json_schema(),
        "schema/portico.schema.json is stale: run `cargo run -- schema > schema/portico.schema.json`"
    );
}

#[test]
fn listener_tls_defaults_and_checks() {
    let src = BASE.replace(
        "    bind: 127.0.0.1:8080\n",
        "    bind: 127.0.0.1:8080\n    tls:\n      certificates: [{ cert: a.pem, key: a.key }]\n      client_auth: { ca: ca.pem }\n",
    );
    let c = parse(&src, no_env).unwrap().config;
    let tls = c.listeners[0].tls.as_ref().unwrap();
    assert_eq!(tls.min_version, TlsVersion::Tls12);
    let ca = tls.client_auth.as_ref().unwrap();
    assert_eq!(ca.mode, ClientAuthMode::Required, "the safe default");
    assert_eq!(ca.forward_header, "x-client-cert-subject");
    assert!(c.listeners[0].redirect_https.is_none());

    let src = BASE.replace(
        "    bind: 127.0.0.1:8080\n",
        "    bind: 127.0.0.1:8080\n    tls: { certificates: [], min_version: \"1.3\", client_auth: { ca: \"\", mode: optional, forward_header: Host } }\n    redirect_https: { port: 0 }\n",
    );
    let errs = errors(&src);
    for want in [
        "listeners[0].tls.certificates: at least one certificate is required",
        "listeners[0].tls.client_auth.ca: must be a file path",
        "listeners[0].tls.client_auth.forward_header: \"Host\" is set by the gateway itself",
        "listeners[0].redirect_https: a TLS listener does not redirect",
        "listeners[0].redirect_https.port: must be a port from 1 to 65535",
    ] {
        assert!(errs.iter().any(|e| e.starts_with(want)), "missing {want:?} in {errs:?}");
    }

    let src = BASE.replace(
        "    bind: 127.0.0.1:8080\n",
        "    bind: 127.0.0.1:8080\n    tls: { certificates: [{ cert: a.pem, key: a.key }], min_version: \"1.1\" }\n",
    );
    let errs = errors(&src);
    assert!(errs[0].starts_with("listeners[0].tls.min_version"), "{errs:?}");

    let src = BASE.replace("    bind: 127.0.0.1:8080\n", "    bind: 127.0.0.1:8080\n    redirect_https: {}\n");
    let c = parse(&src, no_env).unwrap().config;
    assert_eq!(c.listeners[0].redirect_https.as_ref().unwrap().port, 443);
}

const JWT_PROVIDER: &str = r#"jwt_providers:
  main:
    issuer: https://idp.test
    audiences: [api]
    keys: [{ alg: HS256, secret: 0123456789abcdef0123456789abcdef }]
"#;

#[test]
fn revocation_gets_defaults_and_needs_redis() {
    let src = format!("{BASE}{JWT_PROVIDER}    revocation: {{}}\nredis: {{ url: redis://127.0.0.1:6379 }}\n");
    let c = parse(&src, no_env).unwrap().config;
    let r = c.jwt_providers["main"].revocation.clone().unwrap();
    assert_eq!(r.cache_ttl, Duration::from_secs(2));
    assert_eq!(r.on_error, RevocationOnError::Deny);
    assert_eq!(r.timeout, None);
    let redis = c.redis.unwrap();
    assert_eq!(redis.timeout, Duration::from_millis(100));
    assert_eq!(redis.key_prefix, "portico:");

    let errs = errors(&format!("{BASE}{JWT_PROVIDER}    revocation: {{ on_error: allow }}\n"));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(errs[0].starts_with("jwt_providers.main.revocation: revocation needs a top-level redis"), "{errs:?}");
}

#[test]
fn bad_redis_and_revocation_fields_are_reported_together() {
    let src = format!(
        "{BASE}{JWT_PROVIDER}    revocation: {{ cache_ttl: 2m, timeout: 0s }}\nredis: {{ url: http://r:6379, timeout: 0s, key_prefix: 'a b' }}\n"
    );
    let errs = errors(&src);
    for want in [
        "jwt_providers.main.revocation.cache_ttl: must be at most 1m",
        "jwt_providers.main.revocation.timeout: must be greater than 0s",
        "redis.url: must start with redis:// or rediss://",
        "redis.timeout: must be greater than 0s",
        "redis.key_prefix: must be at most 64 characters",
    ] {
        assert!(errs.iter().any(|e| e.starts_with(want)), "{want} not in {errs:?}");
    }
    let errs = errors(&format!("{BASE}redis: {{ url: 'redis://:secret@/0' }}\n"));
    assert!(errs[0].starts_with("redis.url: names no host"), "{errs:?}");
    assert!(!errs[0].contains("secret"), "the password leaked: {errs:?}");
    for (redis, want) in [
        ("{ timeout: 1s }", "redis: needs url (one server) or cluster"),
        ("{ url: redis://a, cluster: [redis://b] }", "redis: give either url (one server) or cluster"),
        ("{ cluster: [redis://a:7000, rediss://b:7000] }", "redis.cluster[1]: every node must use the same scheme"),
        ("{ cluster: [redis://a:7000, 'redis://b:7000/2'] }", "redis.cluster[1]: a cluster node takes no database"),
        ("{ cluster: [redis://a:7000, tcp://b] }", "redis.cluster[1]: must start with redis://"),
        ("{ cluster: ['redis://:pw@a:7000', redis://b:7000] }", "redis.cluster[1]: every node must have the same user"),
        ("{ url: redis://a, tls: { ca: ca.pem } }", "redis.tls: applies to rediss:// URLs only"),
        ("{ url: 'redis://:6379' }", "redis.url: names no host"),
        ("{ url: 'redis://0.0.0.0:6379' }", "redis.url: names a wildcard address"),
        ("{ url: 'redis://h:99999' }", "redis.url: has an invalid port"),
        ("{ url: 'redis://h/x' }", "redis.url: the database must be a number"),
        ("{ url: 'rediss://h#foo' }", "redis.url: takes no #fragment"),
        ("{ url: 'rediss://h/#insecure' }", "redis.url: #insecure (no certificate check) is not supported"),
        ("{ url: redis://h, key_prefix: '{gw}:' }", "redis.key_prefix: must not contain { or }"),
        (
            "{ cluster: ['rediss://a?protocol=resp3', 'rediss://b'] }",
            "redis.cluster[1]: every node must have the same user",
        ),
        ("{ url: rediss://a, tls: { client_cert: c.pem } }", "redis.tls: client_cert and client_key go together"),
    ] {
        let errs = errors(&format!("{BASE}redis: {redis}\n"));
        assert!(errs.iter().any(|e| e.starts_with(want)), "{want} not in {errs:?}");
    }
    let ok = parse(&format!("{BASE}redis: {{ cluster: [redis://a:7000, 'redis://b:7001/0'] }}\n"), no_env).unwrap();
    assert_eq!(ok.config.redis.unwrap().cluster.len(), 2);
    for good in ["'redis://[::1]:6379/2'", "'rediss://u:p@h:6380/0'", "'redis://h?protocol=resp3'"] {
        parse(&format!("{BASE}redis: {{ url: {good} }}\n"), no_env).unwrap_or_else(|e| panic!("{good}: {e:?}"));
    }
    let tls_cluster = "{ cluster: ['rediss://a/?protocol=resp3', 'rediss://b/?protocol=resp3'] }";
    parse(&format!("{BASE}redis: {tls_cluster}\n"), no_env).unwrap();
    let errs =
        errors(&format!("{BASE}{JWT_PROVIDER}    revocation: {{ on_error: maybe }}\nredis: {{ url: redis://r }}\n"));
    assert!(errs[0].contains("on_error"), "{errs:?}");
}

#[test]
fn rate_limit_store_redis_needs_redis_and_gets_defaults() {
    let plugin = "plugins: [{ rate_limit: { limits: [{ limit: 10, per: 1m }], store: redis } }]\n";
    let src = format!("{BASE}{plugin}redis: {{ url: redis://127.0.0.1:6379 }}\n");
    let c = parse(&src, no_env).unwrap().config;
    let Plugin::RateLimit(r) = &c.plugins[0] else { panic!("{:?}", c.plugins) };
    assert_eq!((r.store, r.on_store_error, r.instances), (LimitStore::Redis, OnStoreError::Local, 1));

    let errs = errors(&format!("{BASE}{plugin}"));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(errs[0].starts_with("plugins[0].rate_limit.store: store: redis needs a top-level redis"), "{errs:?}");
    let errs = errors(&format!(
        "{BASE}plugins: [{{ rate_limit: {{ limits: [{{ limit: 10, per: 1m }}], instances: 0, on_store_error: deny }} }}]\n"
    ));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(errs[0].starts_with("plugins[0].rate_limit.instances: must be at least 1"), "{errs:?}");
    // The default stays local.
    let c = parse(&format!("{BASE}plugins: [{{ rate_limit: {{ limits: [{{ limit: 1, per: 1s }}] }} }}]\n"), no_env)
        .unwrap()
        .config;
    let Plugin::RateLimit(r) = &c.plugins[0] else { panic!() };
    assert_eq!(r.store, LimitStore::Local);
}

#[test]
fn no_other_header_may_take_the_request_ids_name() {
    let src = format!("{BASE}request_id: {{ header: X-Trace }}\nidentity_headers: {{ user_id: x-trace }}\n");
    let errs = errors(&src);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(errs[0].starts_with("identity_headers.user_id: \"x-trace\" is the request ID header"), "{errs:?}");
    let src = BASE.replace(
        "    bind: 127.0.0.1:8080\n",
        "    bind: 127.0.0.1:8443\n    tls:\n      certificates: [{ cert: c.pem, key: k.pem }]\n      client_auth: { ca: ca.pem, forward_header: x-request-id }\n",
    );
    let errs = errors(&src);
    assert!(
        errs.iter()
            .any(|e| e
                .starts_with("listeners[0].tls.client_auth.forward_header: \"x-request-id\" is the request ID header")),
        "{errs:?}"
    );
}

/// Each error line must start with `prefix` (path and message) and end with `at` (position).
fn assert_errors(src: &str, want: &[(&str, &str)]) {
    let errs = errors(src);
    for (e, (prefix, at)) in errs.iter().zip(want) {
        assert!(e.starts_with(prefix) && e.ends_with(at), "want {prefix:?} ... {at:?}, got {e:?} in {errs:#?}");
    }
    assert_eq!(errs.len(), want.len(), "{errs:#?}");
}

#[test]
fn every_parse_and_semantic_problem_is_reported_in_one_run() {
    let src = r#"version: 1
listeners:
  - name: public
    bind: 127.0.0.1:8080
    limits: { max_body: lots }
upstreams:
  users:
    targets: [{ url: http://127.0.0.1:9000 }]
    timeouts: { connect: 5 parsecs }
    helth_check: { path: /health }
routes:
  - name: users
    match: { prefix: /users, methods: GET }
    upstream: users
  - name: users
    match: { prefix: /orders }
    upstream: orders
"#;
    assert_errors(
        src,
        &[
            (
                "listeners[0].limits.max_body: invalid size \"lots\": expected a number with a unit",
                "(line 5, column 25)",
            ),
            ("upstreams.users.timeouts.connect: invalid duration \"5 parsecs\": expected", "(line 9, column 26)"),
            (
                "upstreams.users.helth_check: unknown field `helth_check`, expected one of targets,",
                "(line 10, column 5)",
            ),
            ("routes[0].match.methods: expected sequence", "(line 13, column 39)"),
            ("routes[1].name: duplicate route name \"users\" (also routes[0])", "(line 15, column 11)"),
            ("routes[1].upstream: unknown upstream \"orders\" (defined: users)", "(line 17, column 15)"),
        ],
    );
}

#[test]
fn unknown_nested_fields_and_bad_enum_values_are_reported_together() {
    let src = format!(
        r#"{BASE}    rewrite: {{ strip_prefx: /users }}
  - name: orders
    match: {{ prefix: /orders, headers: [{{ name: x-v, valeu: "2" }}] }}
    upstream: users
{JWT_PROVIDER}    revocation: {{ on_error: maybe }}
redis: {{ url: redis://r, timeout: 0s }}
"#
    )
    .replace("    targets:", "    balance: fastest\n    targets:");
    assert_errors(
        &src,
        &[
            ("upstreams.users.balance: unknown variant `fastest`, expected one of round_robin,", "(line 7, column 14)"),
            ("routes[0].rewrite: give strip_prefix or path", "(line 13, column 14)"),
            ("routes[0].rewrite.strip_prefx: unknown field `strip_prefx`, expected one of", "(line 13, column 16)"),
            ("routes[1].match.headers[0].valeu: unknown field `valeu`, expected one of", "(line 15, column 54)"),
            (
                "jwt_providers.main.revocation.on_error: unknown variant `maybe`, expected one of",
                "(line 22, column 29)",
            ),
            ("redis.timeout: must be greater than 0s", "(line 23, column 35)"),
        ],
    );
}

#[test]
fn stand_ins_for_bad_or_missing_values_cause_no_problems_of_their_own() {
    // The bad bind, the missing match and the list for an upstream are replaced to get
    // on; the route's "give upstream or split" and "give path or prefix" would be about
    // the replacements, so they are not reported. The duplicate name is real.
    let src = r#"version: 1
listeners:
  - { name: public, bind: localhost }
  - { name: public, bind: 127.0.0.1:8081 }
routes:
  - name: users
    upstream: [users]
"#;
    assert_errors(
        src,
        &[
            ("listeners[0].bind: invalid socket address syntax", "(line 3, column 27)"),
            ("listeners[1].name: duplicate listener name \"public\"", "(line 4, column 13)"),
            ("routes[0]: missing field `match`", "(line 6, column 5)"),
            ("routes[0].upstream: expected string scalar", "(line 7, column 15)"),
        ],
    );
}

#[test]
fn problems_past_the_hundredth_are_not_listed() {
    let mut src = BASE.to_owned();
    src.push_str("consumers:\n");
    for i in 0..150 {
        src.push_str(&format!("  - {{ id: c{i}, tenat: t }}\n"));
    }
    let errs = errors(&src);
    assert_eq!(errs.len(), recover::MAX_ERRORS + 1, "{errs:#?}");
    assert!(errs[0].starts_with("consumers[0].tenat: unknown field"), "{errs:#?}");
    assert_eq!(errs[recover::MAX_ERRORS], "stopped after 100 problems: fix these first");
}

#[test]
fn a_second_key_in_a_plugin_is_reported_at_that_key() {
    let src = format!("{BASE}plugins: [{{ cors: {{}}, jwt: 2 }}, {{ cors: 1, jwt: 2 }}]\n");
    assert_errors(
        &src,
        &[
            ("plugins[0].jwt: expected end of mapping after enum variant value", "(line 12, column 23)"),
            ("plugins[1].cors: expected mapping start", "(line 12, column 41)"),
            ("plugins[1].jwt: expected end of mapping after enum variant value", "(line 12, column 44)"),
        ],
    );
}

#[test]
fn going_on_past_a_problem_never_panics_on_junk() {
    for junk in [
        "",
        "\0\x01\x02",
        "[[[",
        "version: [1",
        "- a\n- b\n",
        "version: 1\nlisteners: 5\n",
        "version: x\nlisteners: [5, { bind: 1 }, [], { name: [] }]\nroutes: { a: b }\nplugins: [{}, 5, { cors: 1, jwt: 2 }]\n",
        "version: 1\nlisteners: [{ name: a, bind: 127.0.0.1:1 }]\nupstreams: { x: 5, y: { targets: [5, {}] } }\nredis: []\n",
    ] {
        let errs = errors(junk);
        assert!(!errs.is_empty() && errs.len() < 30, "{junk:?}: {errs:#?}");
    }
}

#[test]
fn limits_as_text_parse_and_are_checked_as_the_configs_are() {
    let l = crate::parse_limits(
        "100/1m algorithm=gcra burst=20, 10000/1d,5/1s algorithm=leaky_bucket max_delay=500ms name=slow",
    )
    .unwrap();
    assert_eq!(l.len(), 3);
    assert_eq!(
        (l[0].limit, l[0].per.get().as_secs(), l[0].algorithm, l[0].burst),
        (100, 60, crate::LimitAlgorithm::Gcra, 20)
    );
    assert_eq!(
        (l[1].limit, l[1].per.get().as_secs(), l[1].algorithm),
        (10_000, 86_400, crate::LimitAlgorithm::TokenBucket)
    );
    assert_eq!((l[2].max_delay.get().as_millis(), l[2].name.as_deref()), (500, Some("slow")));
    for (bad, want) in [
        ("", "limit 1 (\"\"): empty"),
        ("lots", "limit 1 (\"lots\"): not LIMIT/PER"),
        ("5/1m, x/1m", "limit 2 (\"x/1m\"): \"x\" is not a number"),
        ("5/1m algorithm=magic", "unknown algorithm \"magic\""),
        ("5/1m colour=red", "unknown option \"colour\""),
        ("0/1m", "limit 1: limit must be at least 1"),
        ("5/1m algorithm=fixed_window burst=3", "limit 1: burst only token_bucket and gcra have a burst"),
        ("5/1m max_delay=1s", "limit 1: max_delay only leaky_bucket delays requests"),
        ("5/0s", "limit 1: per must be at least 1ms"),
    ] {
        let e = crate::parse_limits(bad).unwrap_err();
        assert!(e.contains(want), "{bad:?}: {e}");
    }
}

#[test]
fn regex_routes_are_checked_with_exact_messages() {
    let src = r#"version: 1
listeners:
  - { name: public, bind: 127.0.0.1:8080 }
upstreams:
  u: { targets: [{ url: http://127.0.0.1:9000 }] }
routes:
  - { name: a, match: { regex: "^/v(?<version>[12])/users/(?<id>[0-9]+)$" }, upstream: u, rewrite: { path: "/users/{id}" } }
  - { name: b, match: { regex: "^/(x$" }, upstream: u }
  - { name: c, match: { regex: "/users/[0-9]+" }, upstream: u }
  - { name: d, match: { regex: "^/(?<a.b>x)$" }, upstream: u }
  - { name: e, match: { regex: "^/x$", prefix: /x }, upstream: u }
  - { name: f, match: { regex: "^/u/(?<id>[0-9]+)$" }, upstream: u, rewrite: { path: "/users/{uid}" } }
  - { name: g, match: { regex: "^/u/[0-9]+$" }, upstream: u, rewrite: { path: "/users/{id}" } }
  - name: h
    match: { regex: "^/u/(?<id>[0-9]+)$" }
    upstream: u
    plugins:
      - request_headers: { set: { x-user: "{param.id}", x-bad: "{param.uid}" } }
      - api_key: {}
      - authorize: { tenant: { param: tenant } }
  - { name: i, match: {}, upstream: u }
"#;
    let errs = errors(src);
    let want = [
        "routes[1].match.regex: regex parse error:\n    ^/(x$\n      ^\nerror: unclosed group (line 8, column 32)",
        "routes[2].match.regex: \"/users/[0-9]+\" must start with '^' and end with '$': a regex matches the whole path (for a prefix, end it with \".*$\") (line 9, column 32)",
        "routes[3].match.regex: \"^/(?<a.b>x)$\": capture name \"a.b\" is not a parameter name (letters, digits and '_') (line 10, column 32)",
        "routes[4].match: give one of path, prefix and regex, not several (line 11, column 23)",
        "routes[5].rewrite.path: {uid} is not captured by match.regex (captured: id) (line 12, column 86)",
        "routes[6].rewrite.path: {id} is not captured by match.regex (the route's match.regex captures nothing) (line 13, column 79)",
        "routes[7].plugins[0].request_headers.set.x-bad: \"{param.uid}\": the route's path does not capture {uid} (line 18, column 64)",
        "routes[7].plugins[2].authorize.tenant.param: the route's path does not capture {tenant} (line 20, column 39)",
        "routes[8].match: a route needs match.path, match.prefix or match.regex (line 21, column 23)",
    ];
    assert_eq!(errs, want, "{errs:#?}");
}

#[test]
fn regex_captures_serve_templates_and_tenant_params() {
    let src = BASE.replace(
        "    match: { path: \"/users/{id}\", methods: [GET] }\n    upstream: users\n",
        "    match: { regex: '^/t/(?<tenant>[a-z]+)/users/(?<id>[0-9]+)$' }\n    upstream: users\n    rewrite: { path: \"/users/{id}\" }\n    plugins:\n      - request_headers: { set: { x-user: \"{param.id}\" } }\n      - api_key: {}\n      - authorize: { tenant: { param: tenant } }\n",
    );
    let p = parse(&src, no_env).unwrap();
    assert_eq!(p.config.routes[0].matcher.params(), ["tenant", "id"]);
}
