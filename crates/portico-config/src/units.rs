//! Typed units used in the config: durations (`250ms`, `5s`, `1m30s`), byte sizes
//! (`16KiB`, `1MiB`, `10MB`) and percentages (`20%`).
//!
//! They are written as strings with a unit, never as bare numbers, so that `timeout: 5`
//! cannot silently mean five milliseconds to one reader and five seconds to another.
//! These are hand-written because the crates that parse them (humantime, bytesize)
//! accept forms we want to reject (bare numbers, spaces, `5 sec`) and bring their own
//! serde conventions; the grammar here is a dozen lines.

use std::borrow::Cow;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// A span of time written with units: `250ms`, `5s`, `1m`, `1h`, `1m30s`.
///
/// Units: `ms`, `s`, `m`, `h`, `d`. Parts may be combined largest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    /// A duration of `n` milliseconds.
    pub const fn from_millis(n: u64) -> Self {
        Self(std::time::Duration::from_millis(n))
    }

    /// A duration of `n` seconds.
    pub const fn from_secs(n: u64) -> Self {
        Self(std::time::Duration::from_secs(n))
    }

    /// The standard library value.
    pub const fn get(self) -> std::time::Duration {
        self.0
    }

    /// Parses `250ms`, `5s`, `1m30s`, ... Returns a message suitable for the user on error.
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "invalid duration {s:?}: expected a number with a unit (ms, s, m, h, d), such as 250ms, 5s or 1m30s"
            )
        };
        if s.is_empty() {
            return Err(bad());
        }
        let mut total: u128 = 0;
        let mut rest = s;
        let mut last_unit_rank = u8::MAX;
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 || digits > 12 {
                return Err(bad());
            }
            let n: u128 = rest[..digits].parse().map_err(|_| bad())?;
            rest = &rest[digits..];
            let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
            let (ms, rank) = match &rest[..unit_len] {
                "ms" => (1u128, 0u8),
                "s" => (1_000, 1),
                "m" => (60_000, 2),
                "h" => (3_600_000, 3),
                "d" => (86_400_000, 4),
                _ => return Err(bad()),
            };
            if rank >= last_unit_rank {
                return Err(bad());
            }
            last_unit_rank = rank;
            rest = &rest[unit_len..];
            total += n * ms;
        }
        let ms = u64::try_from(total).map_err(|_| bad())?;
        Ok(Self::from_millis(ms))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        match ms {
            0 => f.write_str("0s"),
            ms if ms % 3_600_000 == 0 => write!(f, "{}h", ms / 3_600_000),
            ms if ms % 60_000 == 0 => write!(f, "{}m", ms / 60_000),
            ms if ms % 1_000 == 0 => write!(f, "{}s", ms / 1_000),
            ms => write!(f, "{ms}ms"),
        }
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration with a unit, such as 250ms, 5s or 1m")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                Duration::parse(v).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
                Err(E::custom(format!("a bare number ({v}) is not a duration: add a unit, such as {v}ms or {v}s")))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
                Err(E::custom(format!("a bare number ({v}) is not a duration: add a unit, such as 250ms or 5s")))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": "^([0-9]+d)?([0-9]+h)?([0-9]+m)?([0-9]+s)?([0-9]+ms)?$",
            "description": "A duration with units: ms, s, m, h, d (e.g. 250ms, 5s, 1m30s).",
            "examples": ["250ms", "5s", "1m"]
        })
    }
}

/// A number of bytes written with a unit: `512B`, `16KiB`, `1MiB`, `2GiB`, `10KB`, `1MB`.
///
/// `KiB`/`MiB`/`GiB` are powers of 1024; `KB`/`MB`/`GB` are powers of 1000.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// `n` kibibytes.
    pub const fn kib(n: u64) -> Self {
        Self(n * 1024)
    }

    /// `n` mebibytes.
    pub const fn mib(n: u64) -> Self {
        Self(n * 1024 * 1024)
    }

    /// The number of bytes.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// Parses `16KiB`, `1MiB`, `512B`, ... Returns a message suitable for the user on error.
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "invalid size {s:?}: expected a number with a unit (B, KiB, MiB, GiB, KB, MB, GB), such as 16KiB or 1MiB"
            )
        };
        let digits = s.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 15 {
            return Err(bad());
        }
        let n: u64 = s[..digits].parse().map_err(|_| bad())?;
        let mult: u64 = match &s[digits..] {
            "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "TiB" => 1 << 40,
            "KB" | "kB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            _ => return Err(bad()),
        };
        n.checked_mul(mult).map(Self).ok_or_else(bad)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        if n == 0 {
            return f.write_str("0B");
        }
        for (unit, size) in [("TiB", 1u64 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
            if n.is_multiple_of(size) {
                return write!(f, "{}{unit}", n / size);
            }
        }
        write!(f, "{n}B")
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size with a unit, such as 16KiB or 1MiB")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                ByteSize::parse(v).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Err(E::custom(format!("a bare number ({v}) is not a size: add a unit, such as {v}B or {v}KiB")))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                Err(E::custom(format!("a bare number ({v}) is not a size: add a unit, such as 16KiB")))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl JsonSchema for ByteSize {
    fn schema_name() -> Cow<'static, str> {
        "ByteSize".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": "^[0-9]+(B|KiB|MiB|GiB|TiB|KB|kB|MB|GB)$",
            "description": "A size with a unit: B, KiB, MiB, GiB (powers of 1024) or KB, MB, GB (powers of 1000).",
            "examples": ["16KiB", "1MiB"]
        })
    }
}

/// A percentage written with `%`: `20%`, `12.5%`, between 0% and 100%.
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd, Default)]
pub struct Percent(pub f64);

impl Percent {
    /// As a fraction between 0 and 1.
    pub fn fraction(self) -> f64 {
        self.0 / 100.0
    }

    /// Parses `20%`. Returns a message suitable for the user on error.
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || format!("invalid percentage {s:?}: expected a number from 0 to 100 followed by %, such as 20%");
        let n = s.strip_suffix('%').ok_or_else(bad)?;
        let (int, frac) = n.split_once('.').unwrap_or((n, "0"));
        let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
        if !digits(int) || !digits(frac) {
            return Err(bad());
        }
        let v: f64 = n.parse().map_err(|_| bad())?;
        if !(0.0..=100.0).contains(&v) {
            return Err(bad());
        }
        Ok(Self(v))
    }
}

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", self.0)
    }
}

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Percent;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a percentage such as 20%")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Percent, E> {
                Percent::parse(v).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Percent, E> {
                Err(E::custom(format!("a bare number ({v}) is not a percentage: write {v}%")))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Percent, E> {
                Err(E::custom(format!("a bare number ({v}) is not a percentage: write {v}%")))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for Percent {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl JsonSchema for Percent {
    fn schema_name() -> Cow<'static, str> {
        "Percent".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": "^[0-9]+(\\.[0-9]+)?%$",
            "description": "A percentage from 0% to 100%.",
            "examples": ["20%", "50%"]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_only() {
        assert_eq!(Duration::parse("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(Duration::parse("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(Duration::parse("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(Duration::parse("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(Duration::parse("1d").unwrap(), Duration::from_secs(86400));
        for bad in ["", "5", "s", "5 s", "5sec", "1s1m", "1s1s", "-1s", "1.5s", "99999999999999s"] {
            assert!(Duration::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn durations_display_round_trips() {
        for s in ["250ms", "5s", "1m", "2h", "0s", "1500ms"] {
            assert_eq!(Duration::parse(s).unwrap().to_string(), s);
        }
    }

    #[test]
    fn percentages_need_the_sign_and_a_range() {
        assert_eq!(Percent::parse("20%").unwrap().fraction(), 0.2);
        assert_eq!(Percent::parse("12.5%").unwrap(), Percent(12.5));
        for bad in ["20", "101%", "-1%", "%", "a%", "1e2%", ".5%", "1.%"] {
            assert!(Percent::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn sizes_parse_binary_and_decimal_units() {
        assert_eq!(ByteSize::parse("16KiB").unwrap(), ByteSize(16384));
        assert_eq!(ByteSize::parse("1MiB").unwrap(), ByteSize(1 << 20));
        assert_eq!(ByteSize::parse("10KB").unwrap(), ByteSize(10_000));
        assert_eq!(ByteSize::parse("512B").unwrap(), ByteSize(512));
        for bad in ["", "16", "16kib", "KiB", "1.5MiB", "16 KiB", "999999999999999TiB"] {
            assert!(ByteSize::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        assert_eq!(ByteSize::parse("1GiB").unwrap().to_string(), "1GiB");
    }
}
