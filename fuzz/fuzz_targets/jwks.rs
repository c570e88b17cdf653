//! The JWKS reader of the `jwt` plugin (`plugins::jwt::keys_of_set`): what an identity
//! provider serves at its `jwks_url`, parsed into the keys tokens are checked with. The
//! provider is a third party, and its document crosses the network.
//!
//! Input: the document's bytes; with the first byte 0, a structured one instead: a JWK set
//! made of the rest as the fields of one key (so the fuzzer reaches the key decoding
//! without first having to write JSON).
//!
//! Checked: no panic; a set read has at least one key, no more keys than the document
//! lists, each with at least one algorithm, all of one family (a key never verifies with
//! an algorithm of another family: RSA with ES256, or an HMAC algorithm at all); symmetric
//! (`oct`) and encryption keys are never taken.
#![no_main]

use jsonwebtoken::Algorithm;
use libfuzzer_sys::fuzz_target;
use portico::fuzzing;

fn family(a: Algorithm) -> &'static str {
    match a {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => "hmac",
        Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 => "rsa",
        Algorithm::PS256 | Algorithm::PS384 | Algorithm::PS512 => "rsa",
        Algorithm::ES256 | Algorithm::ES384 => "ec",
        Algorithm::EdDSA => "ed",
        // Anything newer: its own family, so a mix is still caught.
        _ => "other",
    }
}

fuzz_target!(|data: &[u8]| {
    let doc: Vec<u8> = match data.split_first() {
        Some((0, rest)) => {
            // `kty|crv|x|y|n|e|alg|use` separated by `|`.
            let text = String::from_utf8_lossy(rest);
            let mut f = text.split('|');
            let mut field = |name: &str| f.next().map(|v| format!("\"{name}\":{}", serde_json::Value::from(v)));
            let fields: Vec<String> =
                ["kty", "crv", "x", "y", "n", "e", "alg", "use"].iter().filter_map(|n| field(n)).collect();
            format!("{{\"keys\":[{{{}}}]}}", fields.join(",")).into_bytes()
        }
        _ => data.to_vec(),
    };
    let Ok(keys) = fuzzing::jwks(&doc) else { return };
    let listed: serde_json::Value = serde_json::from_slice(&doc).expect("a set read is JSON");
    let jwks = listed["keys"].as_array().expect("a set read has keys");
    assert!(!keys.is_empty() && keys.len() <= jwks.len(), "{} keys of {}", keys.len(), jwks.len());
    for (kid, algs) in &keys {
        assert!(!algs.is_empty(), "key {kid:?} verifies nothing");
        let fam = family(algs[0]);
        assert_ne!(fam, "hmac", "a symmetric algorithm from a JWKS: {algs:?}");
        assert!(algs.iter().all(|a| family(*a) == fam), "key {kid:?} mixes families: {algs:?}");
    }
    for k in jwks {
        if k["kty"] == "oct" || k["use"] == "enc" {
            // Such a key must not be among those taken: none of the taken keys is it (the
            // count of usable keys is at most the others).
            let usable = jwks.iter().filter(|j| j["kty"] != "oct" && j["use"] != "enc").count();
            assert!(keys.len() <= usable, "a symmetric or encryption key was taken");
            break;
        }
    }
});
