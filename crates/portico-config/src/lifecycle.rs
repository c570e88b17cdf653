//! An API's lifecycle: a route announced as deprecated (RFC 9745 `Deprecation`, with a
//! `Link` to its notice) and retired at its sunset (RFC 8594 `Sunset`), after which the
//! gateway answers 410 itself.

use std::borrow::Cow;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// `deprecated` on a route.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Deprecated {
    /// When the route was (or will be) deprecated; sent as `Deprecation: @<seconds>`
    /// (RFC 9745) on every response of the route.
    pub since: Timestamp,
    /// When the route is retired: from then on the gateway answers 410 itself, with
    /// `replacement` in the JSON body, and the upstream sees no more requests. Until then
    /// every response carries `Sunset` (RFC 8594). Must be later than `since`.
    #[serde(default)]
    pub sunset: Option<Timestamp>,
    /// A page that explains the deprecation: `Link: <link>; rel="deprecation"`.
    #[serde(default)]
    pub link: Option<String>,
    /// What to call instead (a path such as `/v2/users`, or a URL): `Link: <replacement>;
    /// rel="successor-version"`, and named in the 410's body.
    #[serde(default)]
    pub replacement: Option<String>,
}

/// Checks a route's `deprecated` (at `path`): a sunset after `since`, and a `link` and a
/// `replacement` that can go into a `Link` field.
pub fn check(path: &str, d: &Deprecated, err: &mut impl FnMut(String, String)) {
    if let Some(sunset) = d.sunset
        && sunset <= d.since
    {
        err(format!("{path}.sunset"), format!("must be later than since ({})", d.since));
    }
    for (field, value) in [("link", &d.link), ("replacement", &d.replacement)] {
        let Some(v) = value else { continue };
        let ok = !v.is_empty() && !v.contains(['<', '>', '"']) && http::Uri::try_from(v.as_str()).is_ok();
        if !ok {
            err(format!("{path}.{field}"), format!("{v:?} is not a URL or a path (it goes into a Link field)"));
        }
    }
}

/// A point in time: RFC 3339 (`2027-01-31T00:00:00Z`, an offset such as `+01:00`, or
/// fractional seconds) or a date alone (`2027-01-31`, midnight UTC).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub SystemTime);

impl Timestamp {
    /// Parses an RFC 3339 timestamp or a `YYYY-MM-DD` date.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let bad = || format!("{s:?} is not a date (2027-01-31) or an RFC 3339 time (2027-01-31T12:00:00Z)");
        // ASCII only: the offset and `Z` are found by byte position below (a multi-byte
        // character there panicked the slicing: found by the `negotiation` fuzz target).
        if !s.is_ascii() {
            return Err(bad());
        }
        // A date alone, or a time with an offset other than `Z`: humantime reads UTC `Z`
        // times only, so the offset is applied here.
        let (text, offset) = match s.len() {
            10 => (format!("{s}T00:00:00Z"), 0),
            n if n > 19 && (s.ends_with('Z') || s.ends_with('z')) => (format!("{}Z", &s[..n - 1]), 0),
            n if n >= 25 => {
                let (time, off) = s.split_at(n - 6);
                (format!("{time}Z"), parse_offset(off).ok_or_else(bad)?)
            }
            _ => return Err(bad()),
        };
        let t = humantime::parse_rfc3339(&text).map_err(|_| bad())?;
        let t = if offset >= 0 {
            t.checked_sub(std::time::Duration::from_secs(offset.unsigned_abs()))
        } else {
            t.checked_add(std::time::Duration::from_secs(offset.unsigned_abs()))
        };
        // Within what an RFC 3339 time in UTC can say (and what prints back): 1970 to 9999.
        let latest = UNIX_EPOCH + std::time::Duration::from_secs(LATEST);
        t.filter(|t| *t >= UNIX_EPOCH && *t <= latest).map(Timestamp).ok_or_else(bad)
    }

    /// Seconds since the Unix epoch (0 before it).
    pub fn unix_seconds(self) -> u64 {
        self.0.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
    }
}

/// 9999-12-31T23:59:59Z, in seconds since the epoch.
const LATEST: u64 = 253_402_300_799;

/// `+HH:MM` or `-HH:MM` as seconds east of UTC.
fn parse_offset(off: &str) -> Option<i64> {
    let b = off.as_bytes();
    if b.len() != 6 || b[3] != b':' || !b[1..3].iter().chain(&b[4..]).all(u8::is_ascii_digit) {
        return None;
    }
    let sign = match b[0] {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let hours: i64 = off[1..3].parse().ok()?;
    let minutes: i64 = off[4..].parse().ok()?;
    (hours < 24 && minutes < 60).then_some(sign * (hours * 3600 + minutes * 60))
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Clamped to what humantime prints (it panics before 1970); `parse` gives no other.
        let t = self.0.clamp(UNIX_EPOCH, UNIX_EPOCH + std::time::Duration::from_secs(LATEST));
        write!(f, "{}", humantime::format_rfc3339_seconds(t))
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Timestamp;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a date (2027-01-31) or an RFC 3339 time (2027-01-31T12:00:00Z)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Timestamp, E> {
                Timestamp::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl JsonSchema for Timestamp {
    fn schema_name() -> Cow<'static, str> {
        "Timestamp".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}([Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2}))?$",
            "description": "A date (2027-01-31, midnight UTC) or an RFC 3339 time (2027-01-31T12:00:00Z).",
            "examples": ["2027-01-31", "2027-01-31T12:00:00Z"]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_rfc3339_times_with_offsets_are_read() {
        let secs = |s: &str| Timestamp::parse(s).map(Timestamp::unix_seconds);
        assert_eq!(secs("2027-01-31"), Ok(1_801_353_600));
        assert_eq!(secs("2027-01-31T00:00:00Z"), Ok(1_801_353_600));
        assert_eq!(secs("2027-01-31T01:30:00+01:30"), Ok(1_801_353_600));
        assert_eq!(secs("2027-01-30T22:00:00-02:00"), Ok(1_801_353_600));
        assert_eq!(secs("2027-01-31T00:00:00.250Z"), Ok(1_801_353_600));
        // Only what prints back as an RFC 3339 time in UTC: from 1970 to 9999.
        assert_eq!(secs("9999-12-31T23:59:59Z"), Ok(LATEST));
        assert_eq!(secs("1970-01-01T01:00:00+01:00"), Ok(0));
        for bad in [
            "soon",
            "2027-13-01",
            "2027-01-31T25:00:00Z",
            "2027-01-31T00:00:00+24:00",
            "31/01/2027",
            "",
            "1970-01-01T00:00:00+01:00",
            "9999-12-31T23:00:00-02:00",
            "2027-01-31T00:00:00.1\u{194}",
            "2027-01-31T00:00:00\u{194}01:00",
            "2027-01-31\u{194}",
        ] {
            assert!(Timestamp::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(Timestamp::parse("2027-01-31").unwrap().to_string(), "2027-01-31T00:00:00Z");
    }
}
