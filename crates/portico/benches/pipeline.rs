//! The gateway's own per-request work before and after the upstream call, without
//! sockets: request ID, client IP, checks, route match, rewrite, header rewriting for the
//! upstream request, and the access-log record serialization (done off the request path,
//! by the writer thread, but measured here too); and one histogram observation.
//!
//! `cargo bench -p portico --bench pipeline`

#![allow(clippy::unwrap_used, missing_docs)]

use portico::observe::access_log::JsonLine;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Method, Request, Uri, Version};
use portico::forwarded;
use portico::observe::AccessRecord;
use portico::pipeline::new_request_id;
use portico::router::{Lookup, RequestParts, Router};
use portico_config::RouteMatch;

fn request() -> Request<()> {
    Request::builder()
        .method(Method::GET)
        .uri("/api/users/123?expand=orders")
        .header("host", "api.example.com")
        .header("user-agent", "Mozilla/5.0 (X11; Linux x86_64) benchmark")
        .header("accept", "application/json")
        .header("accept-encoding", "gzip, br")
        .header("connection", "keep-alive")
        .header("authorization", "Bearer eyJhbGciOiJFUzI1NiJ9.e30.sig")
        .header("x-forwarded-for", "203.0.113.9")
        .body(())
        .unwrap()
}

fn bench(c: &mut Criterion) {
    let routes: Vec<RouteMatch> = [
        "{ path: '/api/users/{id}', methods: [GET, PUT] }",
        "{ prefix: /api/orders }",
        "{ prefix: /api }",
        "{ path: /health }",
    ]
    .iter()
    .map(|y| serde_saphyr::from_str(y).unwrap())
    .collect();
    let router = Router::new(&routes).unwrap();
    let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
    let peer: IpAddr = "198.51.100.20".parse().unwrap();
    let target_host = HeaderValue::from_static("10.0.0.5:8080");
    let peer_headers = forwarded::PeerHeaders::new(peer, "http");

    c.bench_function("request_phase", |b| {
        b.iter_batched(
            request,
            |req| {
                let (mut parts, ()) = req.into_parts();
                let rid = new_request_id();
                let (client, trusted_peer) = forwarded::client_ip(peer, &parts.headers, &trusted);
                let host = parts.headers.get("host").cloned();
                let found = {
                    let rp = RequestParts {
                        host: host.as_ref().and_then(|h| h.to_str().ok()).unwrap_or(""),
                        path: parts.uri.path(),
                        query: parts.uri.query(),
                        method: &parts.method,
                        headers: &parts.headers,
                        listener: "public",
                    };
                    match router.lookup(&rp) {
                        Lookup::Found { params, .. } => {
                            let mut p = String::from("/users/");
                            p.push_str(params.get("id").unwrap_or(""));
                            Some(p)
                        }
                        _ => None,
                    }
                };
                let mut uri = String::from("http://10.0.0.5:8080");
                uri.push_str(found.as_deref().unwrap_or("/"));
                parts.uri = uri.parse::<Uri>().unwrap();
                forwarded::remove_hop_by_hop(&mut parts.headers, false);
                forwarded::set_forwarding_headers(&mut parts.headers, &peer_headers, trusted_peer, host.as_ref());
                parts.headers.insert("host", target_host.clone());
                parts.headers.insert("x-request-id", rid);
                (client, parts)
            },
            criterion::BatchSize::SmallInput,
        )
    });

    // Removing the hop-by-hop and forwarding names a request usually does not carry (as
    // wrk's: Host only, plus two common ones): one pass over the names against a lookup
    // per absent name.
    let names: Vec<http::HeaderName> = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "trailer",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "forwarded",
        "x-real-ip",
    ]
    .iter()
    .map(|n| http::HeaderName::from_static(n))
    .collect();
    let refs: Vec<&http::HeaderName> = names.iter().collect();
    let plain = || {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("api.example.com"));
        h.insert("user-agent", HeaderValue::from_static("wrk"));
        h.insert("accept", HeaderValue::from_static("*/*"));
        h
    };
    c.bench_function("absent_headers_removed_one_by_one", |b| {
        b.iter_batched_ref(
            plain,
            |h| {
                for n in &names {
                    h.remove(n);
                }
            },
            criterion::BatchSize::SmallInput,
        )
    });
    c.bench_function("absent_headers_removed_after_one_pass", |b| {
        b.iter_batched_ref(plain, |h| forwarded::remove_present(h, &refs), criterion::BatchSize::SmallInput)
    });

    let record = || AccessRecord {
        start: SystemTime::now(),
        request_id: new_request_id(),
        method: Method::GET,
        uri: "/api/users/123?expand=orders".parse().unwrap(),
        version: Version::HTTP_11,
        status: 200,
        latency: Duration::from_micros(250),
        client_ip: peer,
        user_agent: Some(HeaderValue::from_static("Mozilla/5.0 benchmark")),
        user_id: None,
        rate_limit_remaining: None,
        route: Some(Arc::from("users")),
        backend_service: Some(Arc::from("users")),
        backend_latency: Some(Duration::from_micros(180)),
        listener: Arc::from("public"),
        bytes_sent: 218,
        duration: Duration::from_micros(260),
        completion: "complete",
        calls: None,
    };
    let mut buf = Vec::with_capacity(1024);
    c.bench_function("access_log_line", |b| {
        b.iter_batched(
            record,
            |r| {
                buf.clear();
                r.write_json(&mut buf);
                buf.len()
            },
            criterion::BatchSize::SmallInput,
        )
    });
    let _ = HeaderMap::new();
}

/// One observation of a request's duration: Portico's histogram against
/// `prometheus_client`'s (which locks a mutex per observation), same buckets.
fn histograms(c: &mut Criterion) {
    const BUCKETS: &[f64] = &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];
    let d = Duration::from_micros(180);
    let ours = portico::observe::histogram::Histogram::new(BUCKETS);
    c.bench_function("histogram_observe_portico", |b| b.iter(|| ours.observe(std::hint::black_box(d))));
    let theirs = prometheus_client::metrics::histogram::Histogram::new(BUCKETS.iter().copied());
    c.bench_function("histogram_observe_prometheus_client", |b| {
        b.iter(|| theirs.observe(std::hint::black_box(d).as_secs_f64()))
    });
}

criterion_group!(benches, bench, histograms);
criterion_main!(benches);
