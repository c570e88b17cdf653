//! Route matching cost with 10 and 10,000 routes: it must not grow with the table.
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
                    let parts = RequestParts { host, path, query: None, method: &Method::GET, headers: &headers };
                    matches!(router.lookup(std::hint::black_box(&parts)), Lookup::Found { .. })
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
