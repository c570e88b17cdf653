//! Route matching cost with 10 and 10,000 routes: it must not grow with the table. And
//! with 1,000 regex routes (`route_match_regex`), with the two ways to find the matching
//! regexes side by side (`regex_scan`): one `RegexSet` pass against one `Regex` per route.
//!
//! `cargo bench -p portico --bench router`

#![allow(clippy::unwrap_used, missing_docs)]

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::{HeaderMap, Method};
use portico::router::{Lookup, RequestParts, Router};
use portico_config::RouteMatch;

/// A realistic mix: per service, an exact path, a template and a prefix, some with hosts
/// and methods.
fn table(n: usize) -> Router {
    let mut routes = Vec::with_capacity(n);
    for i in 0..n {
        let yaml = match i % 4 {
            0 => format!("{{ path: '/svc{i}/items/{{id}}', methods: [GET, PUT] }}"),
            1 => format!("{{ path: /svc{i}/health }}"),
            2 => format!("{{ prefix: /svc{i}/static }}"),
            _ => format!("{{ hosts: ['tenant{i}.example.com'], prefix: /api }}"),
        };
        routes.push(serde_saphyr::from_str::<RouteMatch>(&yaml).unwrap());
    }
    Router::new(&routes).unwrap()
}

fn bench(c: &mut Criterion) {
    let headers = HeaderMap::new();
    let mut group = c.benchmark_group("route_match");
    for n in [10usize, 10_000] {
        let router = table(n);
        // Targets that exist in both tables.
        let cases = [
            ("template", "api.example.com", "/svc4/items/12345"),
            ("exact", "api.example.com", "/svc5/health"),
            ("prefix", "api.example.com", "/svc6/static/css/site.css"),
            ("host", "tenant7.example.com", "/api/v1/users"),
            ("miss", "api.example.com", "/nothing/here"),
        ];
        for (name, host, path) in cases {
            group.bench_with_input(BenchmarkId::new(name, n), &(host, path), |b, &(host, path)| {
                b.iter(|| {
                    let parts = RequestParts {
                        host,
                        path,
                        query: None,
                        method: &Method::GET,
                        headers: &headers,
                        listener: "public",
                    };
                    matches!(router.lookup(std::hint::black_box(&parts)), Lookup::Found { .. })
                })
            });
        }
    }
    group.finish();
}

/// `n` regex routes with a named capture each, and a prefix route beside them.
fn regex_table(n: usize) -> Router {
    let mut routes: Vec<RouteMatch> =
        (0..n).map(|i| serde_saphyr::from_str(&format!("regex: '^/re{i}/items/(?<id>[0-9]+)$'")).unwrap()).collect();
    routes.push(serde_saphyr::from_str("prefix: /static").unwrap());
    Router::new(&routes).unwrap()
}

fn bench_regex(c: &mut Criterion) {
    let headers = HeaderMap::new();
    let mut group = c.benchmark_group("route_match_regex");
    for n in [10usize, 1_000] {
        let router = regex_table(n);
        let last = format!("/re{}/items/12345", n - 1);
        let cases = [
            ("first", "/re0/items/12345"),
            ("last", last.as_str()),
            ("prefix", "/static/css/site.css"),
            ("miss", "/nothing/here"),
        ];
        for (name, path) in cases {
            group.bench_with_input(BenchmarkId::new(name, n), &path, |b, &path| {
                b.iter(|| {
                    let parts = RequestParts {
                        host: "api.example.com",
                        path,
                        query: None,
                        method: &Method::GET,
                        headers: &headers,
                        listener: "public",
                    };
                    matches!(router.lookup(std::hint::black_box(&parts)), Lookup::Found { .. })
                })
            });
        }
    }
    group.finish();

    // Which regexes match, alone: the set the router uses against a loop over the regexes.
    let mut group = c.benchmark_group("regex_scan");
    let n = 1_000;
    let patterns: Vec<String> = (0..n).map(|i| format!("^(?:^/re{i}/items/(?<id>[0-9]+)$)$")).collect();
    let set = regex::RegexSet::new(&patterns).unwrap();
    let each: Vec<regex::Regex> = patterns.iter().map(|p| regex::Regex::new(p).unwrap()).collect();
    for (name, path) in [("last", "/re999/items/12345"), ("miss", "/nothing/here")] {
        group.bench_with_input(BenchmarkId::new(format!("set_{name}"), n), &path, |b, &path| {
            b.iter(|| set.is_match(std::hint::black_box(path)) && set.matches(path).iter().next().is_some())
        });
        group.bench_with_input(BenchmarkId::new(format!("loop_{name}"), n), &path, |b, &path| {
            b.iter(|| each.iter().position(|r| r.is_match(std::hint::black_box(path))))
        });
    }
    group.finish();
}

criterion_group!(benches, bench, bench_regex);
criterion_main!(benches);
