//! Header fields: the names the HTTP/1 paths act on, where each field lies in a parsed
//! head, and filling a header map from those places without copying the bytes.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};

/// The longest header name `http` takes.
pub(crate) const MAX_NAME: usize = (1 << 16) - 1;

/// Whether a field name that httparse accepted (a token) or `http` made (lowercase) is
/// `lower`, a name of lowercase letters and `-` only, in any case. Setting bit 5 lowercases
/// a letter and leaves `-` as it is, and no other token character becomes a letter or `-`
/// by it, so one OR and one comparison per eight bytes decide it, where
/// `eq_ignore_ascii_case` lowercases both sides byte by byte (a measurable part of every
/// head). Written by hand: no crate does this for short names.
#[inline]
pub(crate) fn is_name(name: &[u8], lower: &[u8]) -> bool {
    debug_assert!(lower.iter().all(|&b| b.is_ascii_lowercase() || b == b'-'), "{lower:?}");
    const CASE: u64 = 0x2020_2020_2020_2020;
    let n = name.len();
    if n != lower.len() {
        return false;
    }
    if n < 8 {
        return name.iter().zip(lower).all(|(&a, &b)| a | 0x20 == b);
    }
    let word = |s: &[u8], at: usize| s.get(at..at + 8).and_then(|w| w.try_into().ok()).map_or(0, u64::from_le_bytes);
    // Eight bytes at a time, the last eight overlapping the ones before when `n` is not a
    // multiple of eight.
    (0..n / 8).all(|i| word(name, i * 8) | CASE == word(lower, i * 8)) && word(name, n - 8) | CASE == word(lower, n - 8)
}

/// The field names the HTTP/1.1 paths act on (the request parse, the response parse and
/// the response writer), told apart by length first: most names then need one comparison
/// or none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Known {
    Te,
    Host,
    Date,
    Expect,
    Trailer,
    Upgrade,
    Connection,
    KeepAlive,
    ContentLength,
    ProxyConnection,
    TransferEncoding,
}

impl Known {
    pub(crate) fn of(name: &[u8]) -> Option<Self> {
        let is = |n: &[u8]| is_name(name, n);
        match name.len() {
            2 if is(b"te") => Some(Self::Te),
            4 if is(b"host") => Some(Self::Host),
            4 if is(b"date") => Some(Self::Date),
            6 if is(b"expect") => Some(Self::Expect),
            7 if is(b"trailer") => Some(Self::Trailer),
            7 if is(b"upgrade") => Some(Self::Upgrade),
            10 if is(b"connection") => Some(Self::Connection),
            10 if is(b"keep-alive") => Some(Self::KeepAlive),
            14 if is(b"content-length") => Some(Self::ContentLength),
            16 if is(b"proxy-connection") => Some(Self::ProxyConnection),
            17 if is(b"transfer-encoding") => Some(Self::TransferEncoding),
            _ => None,
        }
    }

    /// The hop-by-hop fields but `Connection` and `Transfer-Encoding`, which the parse
    /// reads itself (RFC 9110 section 7.6.1, as [`crate::forwarded::remove_hop_by_hop`]
    /// removes them).
    pub(crate) fn is_hop_by_hop(self) -> bool {
        matches!(self, Self::Te | Self::Trailer | Self::Upgrade | Self::KeepAlive | Self::ProxyConnection)
    }
}

/// Where one header field lies in a head: name start and end, value start and end.
pub(crate) type Span = (usize, usize, usize, usize);

/// The span of an httparse field in the head that starts at `base`.
pub(crate) fn span_of(base: *const u8, name: &[u8], value: &[u8]) -> Span {
    let (n, v) = (name.as_ptr() as usize - base as usize, value.as_ptr() as usize - base as usize);
    (n, n + name.len(), v, v + value.len())
}

/// Fills `headers` with the fields of a parsed head, the values sharing the head's bytes;
/// `extra` is room for fields the gateway adds. The map is emptied first and its
/// allocation reused: a connection passes one map from each message to the next (request,
/// upstream response, next request), so the usual request allocates none. `false` when a
/// name or value is not valid for `http`.
pub(crate) fn fill_header_map(
    headers: &mut HeaderMap,
    head: &Bytes,
    spans: &[Span],
    extra: usize,
    names: &mut NameCache,
) -> bool {
    headers.clear();
    headers.reserve(spans.len() + extra);
    for (i, &(n0, n1, v0, v1)) in spans.iter().enumerate() {
        let Some(name) = names.name(i, &head[n0..n1]) else { return false };
        let Ok(value) = HeaderValue::from_maybe_shared(head.slice(v0..v1)) else { return false };
        headers.append(name, value);
    }
    true
}

/// A map kept for reuse holds at most this many fields' room: an unusually large one is
/// let go rather than kept for the connection's life.
pub(crate) const SPARE_MAX: usize = 64;

/// Keeps `headers`' allocation in `spare` for the next message, emptied.
pub(crate) fn recycle(spare: &mut HeaderMap, mut headers: HeaderMap) {
    if headers.capacity() <= SPARE_MAX {
        headers.clear();
        *spare = headers;
    }
}

/// The header names of the last message on a connection, by position. A client or an
/// upstream sends the same names in the same order on every message of a connection, so a
/// byte comparison replaces parsing a name again (lower-casing it and matching it against
/// the standard names), which was a measurable part of every request.
#[derive(Debug, Default)]
pub(crate) struct NameCache {
    pub(super) names: Vec<(Box<[u8]>, HeaderName)>,
}

/// Positions kept per connection: the usual heads fit, and a connection's cache stays
/// small (a few hundred bytes).
pub(super) const NAMES_KEPT: usize = 16;

impl NameCache {
    /// The name at position `i` of a head, `raw` as sent; `None` when it is not valid.
    pub(crate) fn name(&mut self, i: usize, raw: &[u8]) -> Option<HeaderName> {
        if let Some((seen, name)) = self.names.get(i)
            && **seen == *raw
        {
            return Some(name.clone());
        }
        let name = HeaderName::from_bytes(raw).ok()?;
        if i < NAMES_KEPT {
            let entry = (Box::from(raw), name.clone());
            match i.cmp(&self.names.len()) {
                std::cmp::Ordering::Less => self.names[i] = entry,
                std::cmp::Ordering::Equal => self.names.push(entry),
                std::cmp::Ordering::Greater => {}
            }
        }
        Some(name)
    }
}

/// What a `Connection` value says: whether it carries `close`, and whether it carries
/// nothing but `close` and `keep-alive` (names no other field).
pub(crate) fn connection_tokens(value: &[u8]) -> (bool, bool) {
    // The usual values, whole.
    if value.eq_ignore_ascii_case(b"keep-alive") {
        return (false, true);
    }
    if value.eq_ignore_ascii_case(b"close") {
        return (true, true);
    }
    let (mut close, mut plain) = (false, true);
    for t in value.split(|&b| b == b',') {
        let t = t.trim_ascii();
        if t.eq_ignore_ascii_case(b"close") {
            close = true;
        } else if !t.is_empty() && !t.eq_ignore_ascii_case(b"keep-alive") {
            plain = false;
        }
    }
    (close, plain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_in_any_case_and_no_other_token_matches() {
        // Every character RFC 9110 allows in a field name.
        let token: Vec<u8> = (0x21..0x7f).filter(|b| !b"\"(),/:;<=>?@[\\]{}".contains(b)).collect();
        let names: [&[u8]; 9] = [
            b"te",
            b"host",
            b"upgrade",
            b"connection",
            b"keep-alive",
            b"content-length",
            b"proxy-connection",
            b"transfer-encoding",
            b"x-much-longer-than-sixteen-bytes",
        ];
        for lower in names {
            assert!(is_name(lower, lower));
            assert!(is_name(&lower.to_ascii_uppercase(), lower));
            let mixed: Vec<u8> =
                lower.iter().enumerate().map(|(i, b)| if i % 2 == 0 { b.to_ascii_uppercase() } else { *b }).collect();
            assert!(is_name(&mixed, lower));
            assert!(!is_name(&lower[1..], lower) && !is_name(&[lower, b"x"].concat(), lower));
            // Any other token character anywhere makes another name.
            for at in 0..lower.len() {
                for &c in &token {
                    if c.to_ascii_lowercase() == lower[at] {
                        continue;
                    }
                    let mut other = lower.to_vec();
                    other[at] = c;
                    assert!(!is_name(&other, lower), "{:?}", String::from_utf8_lossy(&other));
                }
            }
        }
    }

    #[test]
    fn connection_values_are_read_as_tokens() {
        for (v, want) in [
            (&b"keep-alive"[..], (false, true)),
            (b"Keep-Alive", (false, true)),
            (b"close", (true, true)),
            (b"CLOSE", (true, true)),
            (b" close ", (true, true)),
            (b"keep-alive, Close", (true, true)),
            (b"x-hop", (false, false)),
            (b"close, x-hop", (true, false)),
            (b"", (false, true)),
        ] {
            assert_eq!(connection_tokens(v), want, "{:?}", String::from_utf8_lossy(v));
        }
    }
}
