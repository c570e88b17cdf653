//! Hedged reads: a route sends a second try of an idempotent request to another target
//! when the first has not answered within a delay, and takes whichever answers first.

use std::borrow::Cow;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

use crate::units::Duration;

/// `hedge` on a route.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Hedge {
    /// How long the first try may go unanswered before a hedge is sent: a duration
    /// (`30ms`), or a latency percentile of this route's answers over the last 10 to 20
    /// seconds (`p95`, `p99.9`), kept between `min_delay` and `max_delay`.
    pub delay: HedgeDelay,
    /// The shortest delay a percentile may give.
    #[serde(default = "default_min_delay")]
    pub min_delay: Duration,
    /// The longest delay a percentile may give; also the delay while fewer than 100
    /// answers have been seen in the window.
    #[serde(default = "default_max_delay")]
    pub max_delay: Duration,
    /// Hedges per request, after the first try (1 to 3); each waits `delay` after the one
    /// before, and each is taken from the upstream's retry budget.
    #[serde(default = "default_max_hedges")]
    pub max_hedges: u32,
    /// Methods that are hedged. A hedge sends the request twice, so only methods that are
    /// safe to repeat belong here.
    #[serde(default = "default_methods")]
    pub methods: Vec<String>,
}

fn default_min_delay() -> Duration {
    Duration::from_millis(1)
}

fn default_max_delay() -> Duration {
    Duration::from_secs(1)
}

fn default_max_hedges() -> u32 {
    1
}

fn default_methods() -> Vec<String> {
    ["GET", "HEAD"].map(String::from).to_vec()
}

/// Methods that may be hedged at all: safe ones (RFC 9110 section 9.2.1). Idempotent is
/// not enough: a hedge sends copies at the same time, and a slow copy of `PUT A` could land
/// after the client's next `PUT B` and undo it; a retry only repeats a try that failed.
const SAFE: [&str; 4] = ["GET", "HEAD", "OPTIONS", "QUERY"];

/// Checks a route's `hedge` (at `path`): a delay in range, a sane hedge count, methods
/// that are safe to repeat.
pub fn check(path: &str, h: &Hedge, err: &mut impl FnMut(String, String)) {
    if h.min_delay > h.max_delay {
        err(format!("{path}.min_delay"), format!("must not be above max_delay ({})", h.max_delay));
    }
    if let HedgeDelay::Fixed(d) = h.delay
        && d.get().is_zero()
    {
        err(format!("{path}.delay"), "must be above 0 (a hedge at once doubles every request)".into());
    }
    if !(1..=3).contains(&h.max_hedges) {
        err(format!("{path}.max_hedges"), format!("{} is out of range 1..=3", h.max_hedges));
    }
    if h.methods.is_empty() {
        err(format!("{path}.methods"), "list at least one method".into());
    }
    for (i, m) in h.methods.iter().enumerate() {
        if !SAFE.contains(&m.as_str()) {
            err(
                format!("{path}.methods[{i}]"),
                format!("{m:?} is not safe to send twice (hedge only {})", SAFE.join(", ")),
            );
        }
    }
}

/// A hedge's delay: fixed, or a percentile of recent answer times.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum HedgeDelay {
    /// Always this long.
    Fixed(Duration),
    /// This percentile (above 0, below 100) of the route's recent answer times.
    Percentile(f64),
}

impl HedgeDelay {
    /// Parses `30ms` or `p95` / `p99.9`.
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Some(p) = s.strip_prefix('p') {
            let bad = || format!("invalid percentile {s:?}: expected p50 to p99.99, such as p95 or p99.9");
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
                return Err(bad());
            }
            let v: f64 = p.parse().map_err(|_| bad())?;
            if !(50.0..100.0).contains(&v) {
                return Err(bad());
            }
            return Ok(Self::Percentile(v));
        }
        Duration::parse(s).map(Self::Fixed)
    }
}

impl fmt::Display for HedgeDelay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Fixed(d) => write!(f, "{d}"),
            Self::Percentile(p) => write!(f, "p{p}"),
        }
    }
}

impl<'de> Deserialize<'de> for HedgeDelay {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = HedgeDelay;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration (30ms) or a percentile (p95)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<HedgeDelay, E> {
                HedgeDelay::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

impl Serialize for HedgeDelay {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl JsonSchema for HedgeDelay {
    fn schema_name() -> Cow<'static, str> {
        "HedgeDelay".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": "^(p[0-9]+(\\.[0-9]+)?|([0-9]+(ms|s|m|h|d))+)$",
            "description": "A duration (30ms) or a latency percentile of the route's recent answers (p95, p99.9).",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_parse_as_durations_or_percentiles() {
        assert_eq!(HedgeDelay::parse("30ms"), Ok(HedgeDelay::Fixed(Duration::from_millis(30))));
        assert_eq!(HedgeDelay::parse("p95"), Ok(HedgeDelay::Percentile(95.0)));
        assert_eq!(HedgeDelay::parse("p99.9"), Ok(HedgeDelay::Percentile(99.9)));
        for bad in ["p", "p100", "p49", "p-1", "p9e1", "pNaN", "30", "p95ms", ""] {
            assert!(HedgeDelay::parse(bad).is_err(), "{bad:?} parsed");
        }
        assert_eq!(HedgeDelay::parse("p99.9").map(|d| d.to_string()), Ok("p99.9".to_owned()));
    }
}
