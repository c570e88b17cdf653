//! `Content-Length`, read one way for every message in either direction (RFC 9110 section
//! 8.6, RFC 9112 section 6.3): digits only, no sign and no spaces inside; a list or several
//! fields only when every value is the same.

use http::{HeaderMap, HeaderValue, header};

/// One `Content-Length` value: one or more digits and nothing else (no sign, no spaces
/// inside, no list), up to `u64::MAX`. The one reader of a single value in the gateway:
/// the request checks, both HTTP/1 head parsers and the response writer use it.
#[inline]
pub(crate) fn parse_length(b: &[u8]) -> Option<u64> {
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if b.len() <= 19 {
        // Nineteen digits cannot overflow: no checks per digit.
        return Some(b.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')));
    }
    b.iter().try_fold(0u64, |n, d| n.checked_mul(10)?.checked_add(u64::from(d - b'0')))
}

/// The length that several `Content-Length` values give together: each value may be a
/// list (`5, 5`), and all must be the same number. `None` when there are none.
pub(crate) fn length_of_values<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Result<Option<u64>, &'static str> {
    let mut length = None;
    for value in values {
        for part in value.split(|&b| b == b',') {
            let n = parse_length(part.trim_ascii()).ok_or("invalid content-length")?;
            if length.is_some_and(|l| l != n) {
                return Err("conflicting content-length values");
            }
            length = Some(n);
        }
    }
    Ok(length)
}

/// A message's `Content-Length`: one number, or a list of equal ones (`5, 5`, or the same
/// value in several fields); `None` without the header; an error for anything else (a
/// sign, a non-digit, values that disagree).
pub(crate) fn content_length(headers: &HeaderMap) -> Result<Option<u64>, &'static str> {
    Ok(content_length_of(headers)?.map(|(n, _)| n))
}

/// [`content_length`], and whether it was written plainly (one field, one number).
pub(crate) fn content_length_of(headers: &HeaderMap) -> Result<Option<(u64, bool)>, &'static str> {
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    let first = match (values.next(), values.next()) {
        (None, _) => return Ok(None),
        (Some(first), None) => first,
        _ => {
            let all = headers.get_all(header::CONTENT_LENGTH).iter().map(HeaderValue::as_bytes);
            return Ok(length_of_values(all)?.map(|n| (n, false)));
        }
    };
    // The usual case: one field, one number, read without splitting and trimming.
    let b = first.as_bytes();
    if let Some(n) = parse_length(b) {
        return Ok(Some((n, true)));
    }
    Ok(length_of_values([b])?.map(|n| (n, !b.contains(&b','))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_lengths_are_read_strictly() {
        let cl = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(header::CONTENT_LENGTH, HeaderValue::from_str(v).unwrap());
            }
            content_length_of(&h)
        };
        assert_eq!(cl(&[]), Ok(None));
        assert_eq!(cl(&["0"]), Ok(Some((0, true))));
        assert_eq!(cl(&["218"]), Ok(Some((218, true))));
        assert_eq!(cl(&["9999999999999999999"]), Ok(Some((9_999_999_999_999_999_999, true))));
        // Past the plain reader's 19 digits, the general one: u64::MAX still fits.
        assert_eq!(cl(&["18446744073709551615"]), Ok(Some((u64::MAX, true))));
        assert_eq!(cl(&["00000000000000000000005"]), Ok(Some((5, true))));
        assert_eq!(cl(&["5, 5"]), Ok(Some((5, false))));
        assert_eq!(cl(&["5", "5"]), Ok(Some((5, false))));
        for bad in [&["18446744073709551616"][..], &["+5"], &["-1"], &["5a"], &[""], &["5,6"], &["5", "6"], &["5,"]] {
            assert!(cl(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn one_value_is_digits_only() {
        assert_eq!(parse_length(b"0"), Some(0));
        assert_eq!(parse_length(b"1234"), Some(1234));
        assert_eq!(parse_length(b"0005"), Some(5));
        assert_eq!(parse_length(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_length(b"000000000000000000000000000001"), Some(1));
        for v in [&b"+5"[..], b"-1", b" 5", b"5 ", b"5,5", b"", b"0x10", b"18446744073709551616", b"5\0"] {
            assert_eq!(parse_length(v), None, "{:?}", String::from_utf8_lossy(v));
        }
        assert_eq!(length_of_values([&b"5, 5"[..], b"5"]), Ok(Some(5)));
        assert_eq!(length_of_values([&b"5 , 6"[..]]), Err("conflicting content-length values"));
        assert_eq!(length_of_values([&b"5,"[..]]), Err("invalid content-length"));
        assert_eq!(length_of_values(std::iter::empty()), Ok(None));
    }
}
