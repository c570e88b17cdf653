//! What body shaping costs per KiB, without sockets: a JSON body parsed, changed by a
//! `response_body` transform (fields, or a jq expression) and written again; a JSON body
//! written as XML and an XML body read as JSON (the `xml` plugin). Bodies of 1 and 16 KiB
//! shaped like the harness backend's answer (a list of user records).
//!
//! `cargo bench -p portico --bench shaping`

#![allow(clippy::unwrap_used, missing_docs)]

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use http::HeaderValue;
use portico::plugins::hooks::HookCtx;
use portico::plugins::json_edit::{JsonEdit, Request};
use portico::plugins::xml;

/// A JSON document of about `kib` KiB: `{"items": [user records]}`.
fn body(kib: usize) -> Vec<u8> {
    let mut items = Vec::new();
    let mut i = 0;
    loop {
        items.push(
            serde_json::json!({ "id": 1000 + i, "username": format!("user{i:04}"), "name": format!("User Number {i}"),
            "email": format!("user{i:04}@example.com"), "role": "member", "active": i % 2 == 0,
            "created_at": "2024-01-15T10:30:00Z", "tags": ["beta", "eu-west"] }),
        );
        i += 1;
        let doc = serde_json::json!({ "items": items });
        if serde_json::to_vec(&doc).unwrap().len() >= kib * 1024 {
            return serde_json::to_vec(&doc).unwrap();
        }
    }
}

fn shaping(c: &mut Criterion) {
    let edit: portico_config::BodyTransform =
        serde_saphyr::from_str("{ remove: [items.0.email], rename: { items: users }, set: { meta.version: 2 } }")
            .unwrap();
    let edit = JsonEdit::new(&edit);
    let jq: portico_config::BodyTransform =
        serde_saphyr::from_str("{ jq: '{count: (.items | length), names: [.items[] | select(.active) | .name]}' }")
            .unwrap();
    let jq = JsonEdit::new(&jq);
    let id = HeaderValue::from_static("r");
    let ctx = HookCtx::new(&id);
    let mut g = c.benchmark_group("shaping");
    for kib in [1, 16] {
        let json = body(kib);
        let doc: serde_json::Value = serde_json::from_slice(&json).unwrap();
        let as_xml = xml::to_xml(&doc, "response").unwrap();
        g.throughput(Throughput::Bytes(json.len() as u64));
        g.bench_with_input(BenchmarkId::new("json_parse_write", kib), &json, |b, json| {
            b.iter(|| serde_json::to_vec(&serde_json::from_slice::<serde_json::Value>(json).unwrap()).unwrap())
        });
        g.bench_with_input(BenchmarkId::new("response_body_fields", kib), &json, |b, json| {
            b.iter(|| {
                let mut v: serde_json::Value = serde_json::from_slice(json).unwrap();
                edit.apply(&mut v, &ctx, Request::default()).unwrap();
                serde_json::to_vec(&v).unwrap()
            })
        });
        g.bench_with_input(BenchmarkId::new("response_body_jq", kib), &json, |b, json| {
            b.iter(|| {
                let mut v: serde_json::Value = serde_json::from_slice(json).unwrap();
                jq.apply(&mut v, &ctx, Request::default()).unwrap();
                serde_json::to_vec(&v).unwrap()
            })
        });
        g.bench_with_input(BenchmarkId::new("json_to_xml", kib), &json, |b, json| {
            b.iter(|| xml::to_xml(&serde_json::from_slice::<serde_json::Value>(json).unwrap(), "response").unwrap())
        });
        g.bench_with_input(BenchmarkId::new("xml_to_json", kib), &as_xml, |b, x| {
            b.iter(|| serde_json::to_vec(&xml::to_json(x.as_bytes()).unwrap()).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, shaping);
criterion_main!(benches);
