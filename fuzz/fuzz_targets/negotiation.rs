//! Content negotiation and dates read from clients and config: the `Accept-Encoding` reader
//! of `compression` (`accepts_gzip`), the `Accept` reader of `xml` (`prefers_xml`), and the
//! date reader of `deprecated` (`lifecycle::Timestamp::parse`), on arbitrary values.
//!
//! Input: a selector byte, then the value. Checked, against a reference written here from
//! RFC 9110 sections 12.4.2 and 12.5.3 (a list of items, each a name with parameters; `q`
//! the weight, 0 to 1, with at most three decimals): gzip is taken exactly when the first
//! `gzip` or `x-gzip` item (else the last `*`) has a weight above 0, or none; XML is
//! preferred exactly when the highest weight of `application/xml` or `text/xml` is above
//! that of `application/json`. Where the value holds a weight the RFC does not allow (not a
//! number, above 1, more decimals), only no panic is checked. A date read is one that
//! prints back to the same second, and reads again as itself.
#![no_main]

use http::HeaderValue;
use libfuzzer_sys::fuzz_target;
use portico::fuzzing;
use portico_config::lifecycle::Timestamp;

/// The items of a list, each as its lowercased name and its weight: `None` for a weight
/// outside RFC 9110's grammar (then only no panic is checked).
fn items(value: &str) -> Option<Vec<(String, f32)>> {
    let mut out = Vec::new();
    for item in value.split(',') {
        let mut parts = item.split(';');
        let name = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
        // The first weight counts; a second one, or one outside the grammar, is outside
        // the RFC (one `q` per item).
        let mut weights = parts.filter_map(|p| {
            let p = p.trim();
            p.strip_prefix("q=").or_else(|| p.strip_prefix("Q="))
        });
        let q = match (weights.next(), weights.next()) {
            (None, _) => 1.0,
            (Some(w), None) => weight(w.trim())?,
            (Some(_), Some(_)) => return None,
        };
        out.push((name, q));
    }
    Some(out)
}

/// `qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )`.
fn weight(w: &str) -> Option<f32> {
    let (int, frac) = w.split_once('.').unwrap_or((w, ""));
    let ok = match int {
        "0" => frac.len() <= 3 && frac.bytes().all(|b| b.is_ascii_digit()),
        "1" => frac.len() <= 3 && frac.bytes().all(|b| b == b'0'),
        _ => false,
    };
    ok.then(|| w.parse().ok()).flatten()
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else { return };
    match which % 3 {
        0 | 1 => {
            let Ok(value) = HeaderValue::from_bytes(rest) else { return };
            let gzip = fuzzing::accepts_gzip(&value);
            let xml = fuzzing::prefers_xml(&value);
            let Ok(text) = value.to_str() else {
                assert!(!gzip && !xml, "a value that is not text is read as a yes");
                return;
            };
            let Some(items) = items(text) else { return };
            let first = items.iter().find(|(n, _)| n == "gzip" || n == "x-gzip");
            let star = items.iter().rev().find(|(n, _)| n == "*");
            let want = match (first, star) {
                (Some((_, q)), _) => *q > 0.0,
                (None, Some((_, q))) => *q > 0.0,
                (None, None) => false,
            };
            assert_eq!(gzip, want, "Accept-Encoding {text:?}");
            let best = |names: &[&str]| {
                items.iter().filter(|(n, _)| names.contains(&n.as_str())).map(|(_, q)| *q).fold(0.0f32, f32::max)
            };
            let want = best(&["application/xml", "text/xml"]) > best(&["application/json"]);
            assert_eq!(xml, want, "Accept {text:?}");
        }
        _ => {
            let Ok(text) = std::str::from_utf8(rest) else { return };
            let Ok(t) = Timestamp::parse(text) else { return };
            let printed = t.to_string();
            let again = Timestamp::parse(&printed).expect("a printed date reads again");
            assert_eq!(again.unix_seconds(), t.unix_seconds(), "{text:?} printed as {printed:?}");
            assert_eq!(again.to_string(), printed);
        }
    }
});
