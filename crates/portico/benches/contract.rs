//! What the `validate` plugin costs per request: finding the operation and checking the
//! parameters of a GET (path, query, header), and a JSON body of about 1 KiB and 16 KiB
//! (parsing and the schema check) against examples/contracts/orders.yaml.
//!
//! `cargo bench -p portico --bench contract`

#![allow(clippy::unwrap_used, missing_docs)]

use std::hint::black_box;

// The binary's allocator: a JSON body's cost is mostly its allocations.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Method};
use portico::contract::openapi::{Document, Lookup};
use portico::contract::{RequestParts, check_json_body};

/// An order with `lines` items, as JSON.
fn order(lines: usize) -> Vec<u8> {
    let items: Vec<String> =
        (0..lines).map(|i| format!(r#"{{"sku":"sku-{i:06}-blue-large","qty":{}}}"#, i % 9 + 1)).collect();
    format!(r#"{{"note":"leave at the door, please","items":[{}]}}"#, items.join(",")).into_bytes()
}

fn bench(c: &mut Criterion) {
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/contracts/orders.yaml");
    let doc = Document::load(file).unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("x-tenant", HeaderValue::from_static("acme"));
    headers.insert("content-type", HeaderValue::from_static("application/json"));

    c.bench_function("contract/find_and_check_params", |b| {
        b.iter(|| {
            let Lookup::Found(op, params) = doc.find(&Method::GET, black_box("/orders/12345")) else { panic!() };
            let mut problems = Vec::new();
            op.check_params(RequestParts { path_params: &params, query: None, headers: &headers }, &mut problems);
            let Lookup::Found(op, params) = doc.find(&Method::GET, black_box("/orders")) else { panic!() };
            let query = Some("limit=20&status=open&status=shipped");
            op.check_params(RequestParts { path_params: &params, query, headers: &headers }, &mut problems);
            assert!(problems.is_empty());
        })
    });

    let Lookup::Found(create, _) = doc.find(&Method::POST, "/orders") else { panic!() };
    let schema = create.body.as_ref().and_then(|b| b.for_type(Some("application/json")).flatten()).unwrap().clone();
    for (name, lines) in [("1KiB", 25), ("16KiB", 408)] {
        let body = order(lines);
        c.bench_function(&format!("contract/body_{name}"), |b| {
            b.iter(|| {
                let mut problems = Vec::new();
                check_json_body(Some(&schema), black_box(&body), &mut problems);
                assert!(problems.is_empty());
            })
        });
    }
    // For scale: parsing the 16 KiB body alone, which any JSON plugin pays.
    let body = order(408);
    c.bench_function("contract/parse_only_16KiB", |b| {
        b.iter(|| serde_json::from_slice::<serde_json::Value>(black_box(&body)).unwrap())
    });
    eprintln!("body sizes: 1KiB case {} bytes, 16KiB case {} bytes", order(25).len(), order(408).len());
}

criterion_group!(benches, bench);
criterion_main!(benches);
