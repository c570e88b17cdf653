//! Time and fixed-point arithmetic shared by the algorithms.
//!
//! Time inside a limiter is `u64` nanoseconds since the limiter's epoch (584 years of
//! range). The rate-based algorithms (token bucket, GCRA, leaky bucket) count in *ticks*
//! of `1/limit` ns, in `u128`: one unit of budget then costs exactly `period_ns` ticks
//! and `t` ns are exactly `t * limit` ticks, so no emission interval is ever rounded
//! (`period / limit` is rarely a whole number of nanoseconds, and rounding it would make
//! a huge limit wrong by up to 2x). Every product of two `u64` fits in a `u128`; sums
//! saturate.

use std::time::Duration;

use tokio::time::Instant;

/// `d` in whole nanoseconds, saturating at `u64::MAX` (584 years).
pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Nanoseconds from `epoch` to `now`; 0 if `now` is before `epoch`.
pub(crate) fn since(epoch: Instant, now: Instant) -> u64 {
    nanos(now.saturating_duration_since(epoch))
}

/// A `Duration` of `ns` nanoseconds.
pub(crate) fn ns(ns: u64) -> Duration {
    Duration::from_nanos(ns)
}

/// `a / b` rounded down, taking the cheap `u64` path when both fit (the usual case: a
/// difference of two nearby times). `b` must not be 0.
pub(crate) fn div(a: u128, b: u128) -> u128 {
    match (u64::try_from(a), u64::try_from(b)) {
        (Ok(a), Ok(b)) => u128::from(a / b),
        _ => a / b,
    }
}

/// `a / b` rounded up. `b` must not be 0.
pub(crate) fn div_ceil(a: u128, b: u128) -> u128 {
    let q = div(a, b);
    if q * b < a { q + 1 } else { q }
}

/// A `u128` clamped to `u64`.
pub(crate) fn clamp64(v: u128) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

/// `ticks` (of `1/limit` ns) as a `Duration`, rounded up to the next nanosecond so that a
/// wait is never reported shorter than it is. `limit` must not be 0.
pub(crate) fn ticks_to_duration(ticks: u128, limit: u128) -> Duration {
    ns(clamp64(div_ceil(ticks, limit)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratelimit_time_helpers() {
        assert_eq!(nanos(Duration::MAX), u64::MAX);
        assert_eq!(nanos(Duration::from_millis(3)), 3_000_000);
        let t0 = Instant::now();
        assert_eq!(since(t0 + Duration::from_secs(1), t0), 0);
        assert_eq!(since(t0, t0 + Duration::from_nanos(7)), 7);
        assert_eq!(div(7, 2), 3);
        assert_eq!(div_ceil(7, 2), 4);
        assert_eq!(div_ceil(8, 2), 4);
        assert_eq!(div_ceil(0, 5), 0);
        assert_eq!(div(u128::MAX, 1), u128::MAX);
        assert_eq!(div_ceil(u128::MAX, 2), u128::MAX / 2 + 1);
        assert_eq!(clamp64(u128::MAX), u64::MAX);
        assert_eq!(ticks_to_duration(10, 3), ns(4));
        assert_eq!(ticks_to_duration(u128::MAX, 1), ns(u64::MAX));
    }
}
