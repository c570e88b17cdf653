//! HTTP caching's rules (RFC 9111) as the cache needs them: the directives of
//! `Cache-Control` on both sides, whether a response may be stored, how long it is fresh,
//! its age, and the conditional requests a stored response answers (RFC 9110 section 13).
//!
//! Written here rather than taken from `http-cache-semantics`: that crate keeps each
//! entry's request and response maps and parses them again on every lookup, while a hit
//! here reads a few numbers worked out once when the response was stored; and the gateway
//! needs what it does not have (a route's default freshness and stale windows, entries
//! private to one caller).

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderValue, header};

/// The directives of a response's `Cache-Control` that the cache acts on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResponseDirectives {
    /// `no-store`.
    pub no_store: bool,
    /// `no-cache` (with or without field names: both are taken as the whole response).
    pub no_cache: bool,
    /// `private` (with or without field names).
    pub private: bool,
    /// `public`.
    pub public: bool,
    /// `must-revalidate` or `proxy-revalidate`.
    pub must_revalidate: bool,
    /// `max-age`.
    pub max_age: Option<u64>,
    /// `s-maxage` (which a shared cache takes over `max-age`).
    pub s_maxage: Option<u64>,
    /// `stale-while-revalidate` (RFC 5861).
    pub stale_while_revalidate: Option<u64>,
    /// `stale-if-error` (RFC 5861).
    pub stale_if_error: Option<u64>,
}

/// The directives of a request's `Cache-Control` that the cache acts on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestDirectives {
    /// `no-store`: the answer is not stored.
    pub no_store: bool,
    /// `no-cache` (or `Pragma: no-cache` without `Cache-Control`): a stored response must
    /// be validated with the upstream first.
    pub no_cache: bool,
    /// `max-age`: the client takes no response older than this.
    pub max_age: Option<u64>,
    /// `min-fresh`: the client takes a response only if it stays fresh this long.
    pub min_fresh: Option<u64>,
    /// `max-stale`: the client takes a stale response (by this much at most; `u64::MAX`
    /// with no value).
    pub max_stale: Option<u64>,
    /// `only-if-cached`: answer from the cache or with 504.
    pub only_if_cached: bool,
}

/// The directives of every `Cache-Control` line, as `(name, value)` pairs: names lower
/// case, quotes taken off values. Unknown directives are passed over; a malformed one is
/// kept by name (so `max-age=abc` counts as present and is refused where a number is due).
fn directives(headers: &HeaderMap) -> impl Iterator<Item = (String, Option<&str>)> {
    headers.get_all(header::CACHE_CONTROL).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).filter_map(
        |d| {
            let d = d.trim();
            if d.is_empty() {
                return None;
            }
            let (name, value) = match d.split_once('=') {
                Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
                None => (d, None),
            };
            Some((name.to_ascii_lowercase(), value))
        },
    )
}

/// A delta-seconds value (RFC 9111 section 1.2.2): an invalid one is `None`, a huge one is
/// capped.
fn seconds(v: Option<&str>) -> Option<u64> {
    let v = v?;
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(v.parse().unwrap_or(u64::MAX).min(u64::from(u32::MAX)))
}

impl ResponseDirectives {
    /// The directives of a response's fields.
    pub fn of(headers: &HeaderMap) -> Self {
        let mut d = Self::default();
        for (name, value) in directives(headers) {
            match name.as_str() {
                "no-store" => d.no_store = true,
                "no-cache" => d.no_cache = true,
                "private" => d.private = true,
                "public" => d.public = true,
                "must-revalidate" | "proxy-revalidate" => d.must_revalidate = true,
                // A malformed freshness directive makes the response stale at once
                // (RFC 9111 section 4.2.1 says to treat it so).
                "max-age" => d.max_age = Some(seconds(value).unwrap_or(0)),
                "s-maxage" => d.s_maxage = Some(seconds(value).unwrap_or(0)),
                "stale-while-revalidate" => d.stale_while_revalidate = seconds(value),
                "stale-if-error" => d.stale_if_error = seconds(value),
                _ => {}
            }
        }
        d
    }
}

impl RequestDirectives {
    /// The directives of a request's fields; `None` when it has none (the usual case).
    pub fn of(headers: &HeaderMap) -> Option<Self> {
        let mut d = Self::default();
        let mut any = false;
        for (name, value) in directives(headers) {
            any = true;
            match name.as_str() {
                "no-store" => d.no_store = true,
                "no-cache" => d.no_cache = true,
                "max-age" => d.max_age = Some(seconds(value).unwrap_or(0)),
                "min-fresh" => d.min_fresh = seconds(value),
                "max-stale" => d.max_stale = Some(value.map_or(u64::MAX, |v| seconds(Some(v)).unwrap_or(0))),
                "only-if-cached" => d.only_if_cached = true,
                _ => {}
            }
        }
        // `Pragma: no-cache` counts only without `Cache-Control` (RFC 9111 section 5.4).
        if !any
            && headers
                .get_all(header::PRAGMA)
                .iter()
                .any(|v| v.to_str().is_ok_and(|v| v.split(',').any(|p| p.trim().eq_ignore_ascii_case("no-cache"))))
        {
            d.no_cache = true;
            any = true;
        }
        any.then_some(d)
    }
}

/// An HTTP date field's value.
pub fn date(headers: &HeaderMap, name: &header::HeaderName) -> Option<SystemTime> {
    httpdate::parse_http_date(headers.get(name)?.to_str().ok()?).ok()
}

/// The freshness lifetime the response gives itself (RFC 9111 section 4.2.1): `s-maxage`,
/// else `max-age`, else `Expires` minus `Date`; `None` when it gives none (heuristic
/// freshness is not used). An `Expires` that does not parse means already expired.
pub fn explicit_lifetime(d: &ResponseDirectives, headers: &HeaderMap, received: SystemTime) -> Option<Duration> {
    if let Some(s) = d.s_maxage.or(d.max_age) {
        return Some(Duration::from_secs(s));
    }
    let expires = headers.get(header::EXPIRES)?;
    let Some(expires) = expires.to_str().ok().and_then(|v| httpdate::parse_http_date(v).ok()) else {
        return Some(Duration::ZERO);
    };
    let date = date(headers, &header::DATE).unwrap_or(received);
    Some(expires.duration_since(date).unwrap_or(Duration::ZERO))
}

/// The response's age when it was received (RFC 9111 section 4.2.3): the larger of what
/// its `Date` says and what its `Age` says plus the time the request took.
pub fn initial_age(headers: &HeaderMap, requested: SystemTime, received: SystemTime) -> Duration {
    let apparent = date(headers, &header::DATE).and_then(|d| received.duration_since(d).ok()).unwrap_or_default();
    let age = headers
        .get(header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| seconds(Some(v.trim())))
        .map(Duration::from_secs)
        .unwrap_or_default();
    let delay = received.duration_since(requested).unwrap_or_default();
    apparent.max(age + delay)
}

/// Whether an entity tag in a client's `If-None-Match` matches `etag`, by the weak
/// comparison (RFC 9110 section 13.1.2): `*` matches any.
pub fn none_match(if_none_match: &HeaderMap, etag: Option<&HeaderValue>) -> bool {
    let Some(etag) = etag.and_then(|e| e.to_str().ok()) else { return false };
    let opaque = |t: &str| t.trim().trim_start_matches("W/").to_owned();
    let want = opaque(etag);
    if_none_match
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim() == "*" || opaque(t) == want)
}

/// Whether a stored response answers a client's conditional `GET` with 304 (RFC 9110
/// section 13.2.2): by `If-None-Match` when the client sent one, else by
/// `If-Modified-Since` against `Last-Modified`.
pub fn not_modified(request: &HeaderMap, etag: Option<&HeaderValue>, last_modified: Option<SystemTime>) -> bool {
    if request.contains_key(header::IF_NONE_MATCH) {
        return none_match(request, etag);
    }
    match (date(request, &header::IF_MODIFIED_SINCE), last_modified) {
        (Some(since), Some(modified)) => modified <= since,
        _ => false,
    }
}

/// The fields a 304 carries from the response it stands for (RFC 9110 section 15.4.5).
pub const NOT_MODIFIED_FIELDS: [header::HeaderName; 6] =
    [header::CACHE_CONTROL, header::CONTENT_LOCATION, header::DATE, header::ETAG, header::EXPIRES, header::VARY];

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn response_directives_are_read_from_every_line_in_any_case() {
        let d = ResponseDirectives::of(&map(&[
            ("cache-control", "Public, MAX-AGE=60"),
            ("cache-control", "s-maxage=\"120\", stale-while-revalidate=30, stale-if-error=600, proxy-revalidate"),
        ]));
        assert!(d.public && d.must_revalidate && !d.no_store && !d.private);
        assert_eq!((d.max_age, d.s_maxage), (Some(60), Some(120)));
        assert_eq!((d.stale_while_revalidate, d.stale_if_error), (Some(30), Some(600)));
        let d = ResponseDirectives::of(&map(&[("cache-control", "private=\"set-cookie\", no-cache=\"x\", no-store")]));
        assert!(d.private && d.no_cache && d.no_store);
        assert_eq!(ResponseDirectives::of(&map(&[("cache-control", "max-age=soon")])).max_age, Some(0));
        assert_eq!(ResponseDirectives::of(&map(&[("cache-control", "max-age=-5")])).max_age, Some(0));
        assert_eq!(
            ResponseDirectives::of(&map(&[("cache-control", "max-age=99999999999999999999")])).max_age,
            Some(u64::from(u32::MAX))
        );
        assert_eq!(ResponseDirectives::of(&HeaderMap::new()), ResponseDirectives::default());
    }

    #[test]
    fn request_directives_and_pragma() {
        assert_eq!(RequestDirectives::of(&HeaderMap::new()), None);
        let d = RequestDirectives::of(&map(&[("cache-control", "max-age=0, only-if-cached, max-stale")])).unwrap();
        assert_eq!((d.max_age, d.max_stale, d.only_if_cached), (Some(0), Some(u64::MAX), true));
        let d = RequestDirectives::of(&map(&[("cache-control", "min-fresh=5, max-stale=9, no-store")])).unwrap();
        assert_eq!((d.min_fresh, d.max_stale, d.no_store), (Some(5), Some(9), true));
        assert!(RequestDirectives::of(&map(&[("pragma", "no-cache")])).unwrap().no_cache);
        // `Cache-Control` wins over `Pragma`.
        let d = RequestDirectives::of(&map(&[("pragma", "no-cache"), ("cache-control", "max-stale=1")])).unwrap();
        assert!(!d.no_cache);
    }

    #[test]
    fn lifetime_from_s_maxage_max_age_or_expires() {
        let now = SystemTime::now();
        let at = |t: SystemTime| httpdate::fmt_http_date(t);
        let h = map(&[("cache-control", "max-age=10, s-maxage=20")]);
        assert_eq!(explicit_lifetime(&ResponseDirectives::of(&h), &h, now), Some(Duration::from_secs(20)));
        let h = map(&[("date", &at(now)), ("expires", &at(now + Duration::from_secs(90)))]);
        assert_eq!(explicit_lifetime(&ResponseDirectives::of(&h), &h, now), Some(Duration::from_secs(90)));
        let h = map(&[("expires", "0")]);
        assert_eq!(explicit_lifetime(&ResponseDirectives::of(&h), &h, now), Some(Duration::ZERO));
        let h = map(&[("date", &at(now)), ("expires", &at(now - Duration::from_secs(90)))]);
        assert_eq!(explicit_lifetime(&ResponseDirectives::of(&h), &h, now), Some(Duration::ZERO));
        let h = map(&[("last-modified", &at(now - Duration::from_secs(9000)))]);
        assert_eq!(explicit_lifetime(&ResponseDirectives::of(&h), &h, now), None, "no heuristic freshness");
    }

    #[test]
    fn age_is_the_larger_of_date_and_age_plus_delay() {
        let now = SystemTime::now();
        let h = map(&[("age", "30"), ("date", &httpdate::fmt_http_date(now - Duration::from_secs(10)))]);
        let age = initial_age(&h, now - Duration::from_secs(2), now);
        assert_eq!(age.as_secs(), 32);
        let h = map(&[("age", "x"), ("date", &httpdate::fmt_http_date(now - Duration::from_secs(50)))]);
        assert!((50..=51).contains(&initial_age(&h, now, now).as_secs()));
        assert_eq!(initial_age(&HeaderMap::new(), now, now), Duration::ZERO);
    }

    #[test]
    fn conditional_requests_compare_weakly_and_by_date() {
        let etag = HeaderValue::from_static("\"v1\"");
        assert!(not_modified(&map(&[("if-none-match", "W/\"v1\"")]), Some(&etag), None));
        assert!(not_modified(&map(&[("if-none-match", "\"v0\", \"v1\"")]), Some(&etag), None));
        assert!(not_modified(&map(&[("if-none-match", "*")]), Some(&etag), None));
        assert!(!not_modified(&map(&[("if-none-match", "\"v2\"")]), Some(&etag), None));
        assert!(!not_modified(&map(&[("if-none-match", "\"v1\"")]), None, None));
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let since = |s: u64| map(&[("if-modified-since", &httpdate::fmt_http_date(t + Duration::from_secs(s)))]);
        assert!(not_modified(&since(0), None, Some(t)));
        assert!(not_modified(&since(5), None, Some(t)));
        assert!(!not_modified(
            &map(&[("if-modified-since", &httpdate::fmt_http_date(t - Duration::from_secs(5)))]),
            None,
            Some(t)
        ));
        // If-None-Match decides when both are sent.
        let mut both = since(5);
        both.insert("if-none-match", HeaderValue::from_static("\"v2\""));
        assert!(!not_modified(&both, Some(&etag), Some(t)));
    }
}
