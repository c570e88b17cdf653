//! What authentication costs per request, without sockets: a JWT checked against a cached
//! key (ES256, RS256, HS256; signature, claims, identity), and an API-key lookup.
//!
//! `cargo bench -p portico --bench auth`

#![allow(clippy::unwrap_used, missing_docs)]

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair, RsaKeyPair};
use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Uri};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use portico::identity::{Consumers, hex, sha256};
use portico::plugins::jwt::JwtProvider;

/// Unpadded base64url (for the JWK of a generated key).
fn b64url(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

fn claims() -> serde_json::Value {
    let now = jsonwebtoken::get_current_timestamp();
    serde_json::json!({ "iss": "https://idp.test", "aud": "api", "sub": "user-123", "iat": now,
        "exp": now + 3600, "roles": ["reader"], "scope": "orders:read profile", "jti": "a1b2c3" })
}

/// A provider with one key; `cache` turns the verified-token cache on.
fn provider(key_yaml: &str, cache: bool) -> JwtProvider {
    let size = if cache { 10_000 } else { 0 };
    let yaml =
        format!("{{ issuer: https://idp.test, audiences: [api], keys: [{key_yaml}], token_cache_size: {size} }}");
    let def: portico_config::JwtProvider = serde_saphyr::from_str(&yaml).unwrap();
    JwtProvider::new("bench", &def, &portico::observe::Metrics::new()).unwrap()
}

fn headers(token: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("authorization", HeaderValue::from_str(&format!("Bearer {token}")).unwrap());
    h
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let consumers = Consumers::default();
    let uri: Uri = "/api/orders".parse().unwrap();
    let rng = SystemRandom::new();

    // ES256.
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
    let point = pair.public_key().as_ref();
    let jwk = format!(
        r#"{{ kid: e1, alg: ES256, jwk: {{ kty: EC, crv: P-256, x: "{}", y: "{}" }} }}"#,
        b64url(&point[1..33]),
        b64url(&point[33..65])
    );
    let es = provider(&jwk, false);
    let es_cached = provider(&jwk, true);
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("e1".into());
    let es_token = jsonwebtoken::encode(&header, &claims(), &EncodingKey::from_ec_der(pkcs8.as_ref())).unwrap();
    let es_headers = headers(&es_token);
    c.bench_function("jwt_es256", |b| {
        b.iter(|| rt.block_on(es.check(&es_headers, &uri, &consumers)).unwrap());
    });
    c.bench_function("jwt_es256_cached", |b| {
        b.iter(|| rt.block_on(es_cached.check(&es_headers, &uri, &consumers)).unwrap());
    });

    // RS256 (2048-bit).
    let rsa = RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let n = rsa.public_key().modulus().big_endian_without_leading_zero().to_vec();
    let e = rsa.public_key().exponent().big_endian_without_leading_zero().to_vec();
    let rs = provider(
        &format!(r#"{{ kid: r1, alg: RS256, jwk: {{ kty: RSA, n: "{}", e: "{}" }} }}"#, b64url(&n), b64url(&e)),
        false,
    );
    // Signed by hand: jsonwebtoken takes PKCS#1 for RSA signing, aws-lc-rs gives PKCS#8.
    let message =
        format!("{}.{}", b64url(br#"{"alg":"RS256","kid":"r1","typ":"JWT"}"#), b64url(claims().to_string().as_bytes()));
    let mut sig = vec![0u8; rsa.public_modulus_len()];
    rsa.sign(&signature::RSA_PKCS1_SHA256, &rng, message.as_bytes(), &mut sig).unwrap();
    let rs_token = format!("{message}.{}", b64url(&sig));
    let rs_headers = headers(&rs_token);
    c.bench_function("jwt_rs256", |b| {
        b.iter(|| rt.block_on(rs.check(&rs_headers, &uri, &consumers)).unwrap());
    });

    // HS256.
    let secret = "an-hs256-secret-of-at-least-32-bytes!";
    let hs = provider(&format!(r#"{{ alg: HS256, secret: "{secret}" }}"#), false);
    let hs_token = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims(),
        &EncodingKey::from_secret(secret.as_bytes()).unwrap(),
    )
    .unwrap();
    let hs_headers = headers(&hs_token);
    c.bench_function("jwt_hs256", |b| {
        b.iter(|| rt.block_on(hs.check(&hs_headers, &uri, &consumers)).unwrap());
    });

    // API key: SHA-256 of the presented key, map lookup, constant-time compare.
    let list: Vec<portico_config::Consumer> = serde_saphyr::from_str(&format!(
        "[{{ id: ci, roles: [deployer], api_keys: [{{ sha256: {} }}] }}]",
        hex(&sha256(b"k-0123456789abcdef0123456789abcdef"))
    ))
    .unwrap();
    let consumers = Consumers::compile(&list).unwrap();
    c.bench_function("api_key_lookup", |b| {
        b.iter(|| consumers.by_api_key(std::hint::black_box(b"k-0123456789abcdef0123456789abcdef")).unwrap());
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
