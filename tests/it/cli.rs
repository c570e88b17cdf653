//! The command line: help, version, validate, schema.

use crate::support::*;

#[test]
fn help_and_version() {
    let out = portico().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in ["run", "validate", "schema", "demo"] {
        assert!(text.contains(cmd), "--help lacks {cmd}: {text}");
    }
    let out = portico().arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("portico "));
}

#[test]
fn validate_accepts_a_good_file() {
    let dir = tempfile::tempdir().unwrap();
    let f = write_temp(
        dir.path(),
        "ok.yaml",
        "version: 1\nlisteners: [{ name: public, bind: 127.0.0.1:8080 }]\nupstreams:\n  u: { targets: [{ url: http://127.0.0.1:9000 }] }\nroutes:\n  - { name: r, match: { prefix: / }, upstream: u }\n",
    );
    let out = portico().args(["validate", f.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok"));
}

#[test]
fn validate_reports_every_error_with_path_and_position() {
    let dir = tempfile::tempdir().unwrap();
    let f = write_temp(
        dir.path(),
        "bad.yaml",
        r#"version: 1
listeners:
  - name: public
    bind: 127.0.0.1:8080
    limits: { idle_timeout: 10x }
"#,
    );
    let out = portico().args(["validate", f.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("listeners[0].limits.idle_timeout: invalid duration \"10x\""), "{err}");
    assert!(err.contains("(line 5, column"), "{err}");

    // Semantic errors: all of them at once.
    let f = write_temp(
        dir.path(),
        "bad2.yaml",
        r#"version: 1
listeners: [{ name: public, bind: 127.0.0.1:8080 }]
upstreams:
  users: { targets: [{ url: "http://127.0.0.1:9000/base" }] }
routes:
  - name: a
    match: { path: "/users/{id}" }
    upstream: users
  - name: a
    match: { path: "/users/{uid}" }
    upstream: missing
"#,
    );
    let out = portico().args(["validate", f.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "upstreams.users.targets[0].url: \"http://127.0.0.1:9000/base\": a target URL has no path",
        "routes[1].name: duplicate route name \"a\" (also routes[0]) (line 9",
        "routes[1].upstream: unknown upstream \"missing\" (defined: users) (line 11",
        "3 errors",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
}

#[test]
fn validate_catches_conflicting_templates_found_by_the_router() {
    let dir = tempfile::tempdir().unwrap();
    let f = write_temp(
        dir.path(),
        "conflict.yaml",
        r#"version: 1
listeners: [{ name: public, bind: 127.0.0.1:8080 }]
upstreams:
  u: { targets: [{ url: http://127.0.0.1:9000 }] }
routes:
  - { name: a, match: { path: "/users/{id}" }, upstream: u }
  - { name: b, match: { path: "/users/{uid}" }, upstream: u }
"#,
    );
    let out = portico().args(["validate", f.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("routes[1].match.path:") && err.contains("conflicts"), "{err}");
    assert!(err.contains("(line 7"), "{err}");
}

#[test]
fn missing_environment_variable_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let f = write_temp(
        dir.path(),
        "env.yaml",
        "version: 1\nlisteners: [{ name: public, bind: \"${PORTICO_TEST_SURELY_UNSET_BIND}\" }]\n",
    );
    let out = portico().args(["validate", f.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("environment variable PORTICO_TEST_SURELY_UNSET_BIND is not set (line 2, column"), "{err}");

    let out = portico()
        .args(["validate", f.to_str().unwrap()])
        .env("PORTICO_TEST_SURELY_UNSET_BIND", "127.0.0.1:8080")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn unreadable_or_garbage_files_are_errors_not_panics() {
    let out = portico().args(["validate", "/nonexistent/portico.yaml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
    let dir = tempfile::tempdir().unwrap();
    for (i, junk) in
        ["\0\x01\x02", "[[[", "version: [1", "- a\n- b\n", "version: 1\nlisteners: 5\n", ""].iter().enumerate()
    {
        let f = write_temp(dir.path(), &format!("junk{i}.yaml"), junk);
        let out = portico().args(["validate", f.to_str().unwrap()]).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "junk {junk:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn schema_command_matches_the_committed_schema() {
    let out = portico().arg("schema").output().unwrap();
    assert!(out.status.success());
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/schema/portico.schema.json")).unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), committed, "run: portico schema > schema/portico.schema.json");
    let v: serde_json::Value = serde_json::from_str(&committed).unwrap();
    assert!(v["properties"]["routes"].is_object());
}

#[test]
fn run_with_an_invalid_file_fails_fast() {
    let dir = tempfile::tempdir().unwrap();
    let f = write_temp(dir.path(), "bad.yaml", "version: 2\nlisteners: []\n");
    let out = portico().args(["run", "-c", f.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("version: unsupported version 2"), "{err}");
}
