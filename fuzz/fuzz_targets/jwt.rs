//! JWT decoding and verification (`plugins::jwt::JwtProvider::check`) with a fixed key set:
//! an HS256 secret and an ES256 public key, the token taken from the `Authorization`
//! header, a cookie or the query.
//!
//! Input: a mode byte, then up to three parts separated by 0xFF (header, claims, signature).
//! Mode % 5: 0, the input is the token as sent; 1, the parts base64url-encoded and joined
//! with dots; 2 and 3, header and claims encoded and signed with the provider's HS256
//! secret (2 with a fixed header, so the claims checks are reached); 4, signed with the
//! ES256 key. (Mode / 5) % 3 places the token: header, cookie, query.
//!
//! Checked: no panic; the check never waits (no JWKS, no revocation store); a token is
//! valid only when it carries the signature of one of the keys, and its `iss`, `aud` and
//! `exp` pass.
#![no_main]

use std::sync::OnceLock;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use futures_util::FutureExt;
use http::{HeaderMap, HeaderValue, Uri};
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;
use portico::identity::Consumers;
use portico::plugins::jwt::{Checked, JwtProvider};

const SECRET: &str = "0123456789abcdef0123456789abcdef";
const ES256_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEbXUFClWDv40WYvRiefBfAikb9xBl
YlJhMelSTHRYvgB2ho+YLMbCmTXBht9nv4Rhlz16kJhM63+u6FTS2LCBwg==
-----END PUBLIC KEY-----";
/// A key made for this target only (openssl ecparam -name prime256v1 -genkey).
const ES256_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgifnY2wiYkyLWxT6A
c2AgkHL/3hEE8IIqiWyHigRXjbGhRANCAARtdQUKVYO/jRZi9GJ58F8CKRv3EGVi
UmEx6VJMdFi+AHaGj5gsxsKZNcGG32e/hGGXPXqQmEzrf67oVNLYsIHC
-----END PRIVATE KEY-----";

struct Fixture {
    provider: JwtProvider,
    consumers: Consumers,
    es256: EncodingKey,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let pem = ES256_PUBLIC.replace('\n', "\\n");
        let yaml = format!(
            "{{ issuer: i, audiences: [a], keys: [{{ alg: HS256, secret: {SECRET} }}, \
             {{ kid: ec, alg: ES256, pem: \"{pem}\" }}], \
             token: {{ header: authorization, scheme: Bearer, cookie: jwt, query: access_token }}, \
             token_cache_size: 0 }}"
        );
        let def: portico_config::JwtProvider = serde_saphyr::from_str(&yaml).expect("the provider's config");
        let provider = JwtProvider::new("fuzz", &def, &portico::observe::Metrics::new()).expect("the provider");
        let es256 = EncodingKey::from_ec_pem(ES256_PRIVATE.as_bytes()).expect("the ES256 key");
        Fixture { provider, consumers: Consumers::default(), es256 }
    })
}

fn sign(alg: Algorithm, f: &Fixture, message: &str) -> String {
    let key = match alg {
        Algorithm::HS256 => EncodingKey::from_secret(SECRET.as_bytes()).expect("the secret"),
        _ => f.es256.clone(),
    };
    jsonwebtoken::crypto::sign(message.as_bytes(), &key, alg).expect("signed")
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let f = fixture();
    let mut parts = rest.splitn(3, |&b| b == 0xff);
    let (header, claims, sig) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default(), parts.next());
    let token = match mode % 5 {
        0 => String::from_utf8_lossy(rest).into_owned(),
        1 => format!("{}.{}.{}", B64.encode(header), B64.encode(claims), B64.encode(sig.unwrap_or_default())),
        2 => {
            let signed = format!("{}.{}", B64.encode(br#"{"alg":"HS256","typ":"JWT"}"#), B64.encode(claims));
            format!("{signed}.{}", sign(Algorithm::HS256, f, &signed))
        }
        3 => {
            let signed = format!("{}.{}", B64.encode(header), B64.encode(claims));
            format!("{signed}.{}", sign(Algorithm::HS256, f, &signed))
        }
        _ => {
            let signed = format!("{}.{}", B64.encode(br#"{"alg":"ES256","kid":"ec"}"#), B64.encode(claims));
            format!("{signed}.{}", sign(Algorithm::ES256, f, &signed))
        }
    };
    let mut headers = HeaderMap::new();
    let mut uri = Uri::from_static("/x");
    match (mode / 5) % 3 {
        0 => {
            let Ok(v) = HeaderValue::from_str(&format!("Bearer {token}")) else { return };
            headers.insert("authorization", v);
        }
        1 => {
            let Ok(v) = HeaderValue::from_str(&format!("a=b; jwt={token}")) else { return };
            headers.insert("cookie", v);
        }
        _ => {
            let Ok(u) = format!("/x?access_token={token}").parse() else { return };
            uri = u;
        }
    }
    let checked = f.provider.check(&headers, &uri, &f.consumers).now_or_never().expect("the check waited");
    let Ok(Checked::Valid(_)) = checked else { return };

    // Valid: signed by one of the keys, with the claims the provider requires.
    let mut dots = token.split('.');
    let (Some(h), Some(c), Some(s), None) = (dots.next(), dots.next(), dots.next(), dots.next()) else {
        panic!("a valid token that is not three parts: {token:?}")
    };
    let head: serde_json::Value = serde_json::from_slice(&B64.decode(h).expect("header")).expect("header JSON");
    let alg = match head["alg"].as_str() {
        Some("HS256") => Algorithm::HS256,
        Some("ES256") => Algorithm::ES256,
        other => panic!("valid with alg {other:?}"),
    };
    let signed = format!("{h}.{c}");
    if alg == Algorithm::HS256 {
        assert_eq!(s, sign(alg, f, &signed), "an HS256 token valid without the secret's signature");
    } else {
        let key = jsonwebtoken::DecodingKey::from_ec_pem(ES256_PUBLIC.as_bytes()).expect("key");
        assert!(jsonwebtoken::crypto::verify(s, signed.as_bytes(), &key, alg).expect("verify"), "a forged ES256");
    }
    let claims: serde_json::Value = serde_json::from_slice(&B64.decode(c).expect("claims")).expect("claims JSON");
    assert_eq!(claims["iss"], "i", "valid with another issuer");
    let aud_ok = claims["aud"] == "a" || claims["aud"].as_array().is_some_and(|a| a.iter().any(|x| x == "a"));
    assert!(aud_ok, "valid for another audience: {}", claims["aud"]);
    let exp = claims["exp"].as_f64().expect("valid without exp");
    assert!(exp + 120.0 >= jsonwebtoken::get_current_timestamp() as f64, "valid after exp");
});
