//! The small parsers of config values that may also come from Redis or a tenant's hash:
//! value templates (`transform::ValueTemplate::parse`), rate-limit lists
//! (`ratelimit::parse_limits`), path templates and regexes (`template::PathTemplate`,
//! `PathRegex`), durations, sizes and percentages (`units`).
//!
//! Input: a selector byte, then the text. Checked: no panic (overflow checks are on); a
//! value template written back (`{`/`}` doubled in text, placeholders re-spelled) parses to
//! the same template; a path template keeps the text it was given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portico_config::template::{PathRegex, PathTemplate};
use portico_config::transform::{Piece, ValueTemplate};
use portico_config::{ByteSize, Duration, Percent, parse_limits};

fuzz_target!(|data: &[u8]| {
    let Some((&which, text)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(text) else { return };
    match which % 6 {
        0 => value_template(text),
        1 => {
            let _ = parse_limits(text);
        }
        2 => {
            if let Ok(t) = PathTemplate::parse(text) {
                assert_eq!(t.as_str(), text);
                assert_eq!(t.segments().len(), text.split('/').count() - 1);
            }
        }
        // The regex crate bounds its own compile cost; long inputs only slow the run.
        3 if text.len() <= 256 => {
            let _ = PathRegex::parse(text);
        }
        4 => {
            let _ = Duration::parse(text);
            let _ = ByteSize::parse(text);
        }
        _ => {
            if let Ok(p) = Percent::parse(text) {
                assert!((0.0..=1.0).contains(&p.fraction()), "{text:?} is {}", p.fraction());
            }
        }
    }
});

fn value_template(text: &str) {
    // Without call names (a plugin's template), no piece names a call.
    if let Ok(t) = ValueTemplate::parse(text) {
        assert!(!t.pieces.iter().any(|p| matches!(p, Piece::Call(..))), "{text:?}: a call without calls");
    }
    // With them (an aggregate call's template), every piece writes back as it was read.
    const CALLS: &[&str] = &["profile", "orders"];
    let Ok(t) = ValueTemplate::parse_with_calls(text, CALLS) else { return };
    let mut back = String::new();
    for p in &t.pieces {
        match p {
            Piece::Text(s) => {
                assert!(!s.is_empty(), "an empty text piece");
                back.push_str(&s.replace('{', "{{").replace('}', "}}"));
            }
            Piece::Param(n) => back.push_str(&format!("{{param.{n}}}")),
            Piece::Query(n) => back.push_str(&format!("{{query.{n}}}")),
            Piece::Header(n) => back.push_str(&format!("{{header.{n}}}")),
            Piece::Claim(n) => back.push_str(&format!("{{claim.{n}}}")),
            Piece::Consumer => back.push_str("{consumer}"),
            Piece::Tenant => back.push_str("{tenant}"),
            Piece::RequestId => back.push_str("{request_id}"),
            Piece::Call(c, path) => {
                assert!(CALLS.contains(&c.as_str()), "{text:?}: an unknown call {c:?}");
                match path.is_empty() {
                    true => back.push_str(&format!("{{{c}}}")),
                    false => back.push_str(&format!("{{{c}.{path}}}")),
                }
            }
        }
    }
    assert_eq!(ValueTemplate::parse_with_calls(&back, CALLS).as_ref(), Ok(&t), "{text:?} written back as {back:?}");
}
