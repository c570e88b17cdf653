//! `Content-Length`: the one reader of a value (`proto::h1::length::parse_length`), of
//! several values (`length_of_values`) and of a header map (`content_length_of`), against
//! the reference reader of src/lib.rs (RFC 9110 section 8.6).
//!
//! Input: field values separated by `\n`; only values a header map can hold are used (the
//! parsers never see others). Checked: the same number or the same refusal, for the same
//! reason; the map reader agrees with the list reader and says "plain" only for one field
//! that is not a list.
#![no_main]

use http::{HeaderMap, HeaderValue, header};
use libfuzzer_sys::fuzz_target;
use portico::fuzzing;
use portico_fuzz::{LengthError, content_length, one_length};

fuzz_target!(|data: &[u8]| {
    let values: Vec<&[u8]> = data.split(|&b| b == b'\n').take(8).collect();
    for v in &values {
        assert_eq!(fuzzing::parse_length(v), one_length(v), "one value: {:?}", String::from_utf8_lossy(v));
    }
    if values.iter().any(|v| HeaderValue::from_bytes(v).is_err()) {
        return;
    }
    let got = fuzzing::length_of_values(&values);
    let want = content_length(&values);
    match (got, want) {
        (Ok(n), Ok(m)) => assert_eq!(n, m),
        (Err("invalid content-length"), Err(LengthError::Invalid)) => {}
        (Err("conflicting content-length values"), Err(LengthError::Conflicting)) => {}
        (got, want) => panic!("codec {got:?}, reference {want:?} for {values:?}"),
    }
    let mut map = HeaderMap::new();
    for v in &values {
        map.append(header::CONTENT_LENGTH, HeaderValue::from_bytes(v).expect("checked above"));
    }
    match (fuzzing::content_length_of(&map), got) {
        (Ok(Some((n, plain))), Ok(Some(m))) => {
            assert_eq!(n, m);
            assert_eq!(plain, values.len() == 1 && !values[0].contains(&b','), "plain for {values:?}");
        }
        (Ok(None), Ok(None)) => {}
        (Err(a), Err(b)) => assert_eq!(a, b),
        (map, list) => panic!("map {map:?}, list {list:?} for {values:?}"),
    }
});
