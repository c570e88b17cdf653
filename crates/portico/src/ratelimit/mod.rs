//! Local rate limiting: six algorithms behind one bounded, sharded, in-memory limiter, and
//! per-key concurrency limits; and the same algorithms shared through Redis
//! ([`RedisLimiter`], see [`redis`]).
//!
//! Pure logic, no config parsing, no HTTP, no I/O. A [`LocalLimiter`] enforces one
//! [`Policy`] for many keys (a consumer, a tenant, a client address: whatever the caller
//! derives from the request). [`LocalLimiter::check`] takes the key, the current time and
//! the request's cost, and returns a [`Decision`]: allowed or not, and the numbers for the
//! `RateLimit-*` and `Retry-After` headers. Time is passed in, never read, so every
//! behaviour is tested with an injected clock; the caller passes `Instant::now()` (Tokio's,
//! so that tests with a paused clock work unchanged).
//!
//! ```
//! use std::time::Duration;
//! use portico::ratelimit::{LimitAlgorithm, LocalLimiter, Policy};
//! use tokio::time::Instant;
//!
//! // 100 requests per minute per key, with bursts of up to 20 more.
//! let policy = Policy::new(LimitAlgorithm::Gcra, 100, Duration::from_secs(60)).with_burst(20);
//! let limiter = LocalLimiter::new(policy, 100_000)?;
//! let d = limiter.check(b"consumer:alice", Instant::now(), 1);
//! assert!(d.allowed);
//! assert_eq!((d.limit, d.remaining), (120, 119));
//! # Ok::<(), portico::ratelimit::PolicyError>(())
//! ```
//!
//! # Policies
//!
//! A policy allows `limit` units per `period`, where a request costs `cost` units (1
//! unless the caller says otherwise). How the units are counted, and so how bursts are
//! treated, is the algorithm's:
//!
//! | algorithm | state per key | exact | largest burst | fits for |
//! |---|---|---|---|---|
//! | `token_bucket` | 32 bytes | yes | `limit + burst` at once | APIs that tolerate bursts |
//! | `gcra` | 16 bytes | yes, same decisions as `token_bucket` | `limit + burst` at once | the default; the one that also runs in Redis |
//! | `fixed_window` | 16 bytes | per window only | `2 × limit` across a window boundary | quotas read as "per calendar minute" |
//! | `sliding_log` | 40 bytes + 16 per request in the last period | yes | `limit` in any period | small limits that must never be exceeded |
//! | `sliding_window` | 24 bytes | approximate | `limit × (1 + d/period)` within any `d ≤ period` | large limits, cheap and smooth |
//! | `leaky_bucket` | 16 bytes | yes | none: requests are spaced out | protecting an upstream from bursts |
//!
//! ## `token_bucket`
//!
//! A bucket of `limit + burst` tokens (the *capacity*; `burst` is 0 unless set, so the
//! capacity is `limit`) refills continuously at `limit` tokens per `period`, and a request
//! takes `cost` tokens or is refused. A key that has been quiet can send its whole
//! capacity at once; after that, requests are allowed at the steady rate of one every
//! `period / limit`. `remaining` is the whole tokens left. The refill is exact: time is
//! counted in units of `1/limit` ns, so `period / limit` is never rounded.
//!
//! ## `gcra`
//!
//! The Generic Cell Rate Algorithm (as in the `governor` crate and `redis-cell`): the
//! same limiter as `token_bucket`, kept as one timestamp per key instead of a level and
//! a time. With the emission interval `T = period / limit` and the capacity `C = limit +
//! burst`, the key stores its *theoretical arrival time* `TAT`; a request of cost `n` at
//! `now` is allowed when `max(TAT, now) + n·T − now ≤ C·T`, and then moves `TAT` to
//! `max(TAT, now) + n·T`. (In the usual formulation the tolerance is `τ = (C − 1)·T`: with
//! `burst` 0, `τ = (limit − 1)·T`, so `limit` requests can come at once. `redis-cell`'s
//! `max_burst` is `C − 1`; `governor`'s `allow_burst` is `C`.) Its decisions, `remaining`, `reset_after` and `retry_after` are
//! identical to `token_bucket`'s for the same arrivals (a unit test checks it on random
//! ones), and one timestamp is what a Redis script can update atomically.
//!
//! ## `fixed_window`
//!
//! A counter per key per window; windows are `period` long and aligned to the limiter's
//! epoch (its creation, unless given with [`LocalLimiter::with_epoch`]), so every key's
//! window ends at the same moment. A request is allowed while the window's count plus its
//! cost stays within `limit`; the count starts again at 0 in the next window. It is the
//! cheapest and the easiest to explain ("100 per minute, the minute starting at :00"),
//! but a client can send `limit` at the end of one window and `limit` more at the start of
//! the next: **up to `2 × limit` within a few milliseconds** around a boundary (a unit test
//! shows it).
//!
//! ## `sliding_log`
//!
//! The exact sliding window: each key keeps the times (and costs) of its allowed requests
//! of the last `period`, and a request is allowed when those plus its cost stay within
//! `limit`. **No window of length `period`, wherever it starts, ever holds more than
//! `limit`.** The price is memory: up to `limit` entries of 16 bytes per key, so `limit` is
//! capped at [`SLIDING_LOG_MAX_LIMIT`]; above that, use `sliding_window`.
//!
//! ## `sliding_window`
//!
//! Cloudflare's sliding-window counter: two counters per key, the current window's and the
//! previous one's, and the estimate `current + previous × (1 − elapsed / period)`, where
//! `elapsed` is the time since the current window started. A request is allowed when the
//! estimate plus its cost stays within `limit` (compared exactly, in integers). The
//! estimate assumes the previous window's requests were spread evenly over it:
//!
//! - For evenly spread traffic it is exact.
//! - Around a boundary there is no burst worth the name: **in any interval of length
//!   `d ≤ period`, at most `limit × (1 + d / period)` requests are allowed** (a unit test
//!   checks `limit + 1` within 2 ms of a boundary, where `fixed_window` lets `2 × limit`
//!   through).
//! - Its error, both ways: if the previous window's requests came at its very end, a
//!   window of length `period` that straddles the boundary can hold up to almost
//!   `2 × limit` (the second half spread over the current window: never as a burst); if
//!   they came at its start, the estimate still counts them and refuses requests an exact
//!   count would allow. On real traffic the error is small: Cloudflare reported 0.003% of
//!   requests wrongly allowed or limited ("Counting things, a lot of different things",
//!   2017).
//!
//! ## `leaky_bucket`
//!
//! Shaping rather than refusing: requests leave at a steady rate of one unit every
//! `period / limit`, and a request that comes faster is *delayed* until its turn
//! ([`Decision::delay`]; the caller waits that long, then forwards it). Requests arriving
//! together get delays `0, T, 2T, ...`; a request whose delay would exceed `max_delay` is
//! refused instead, and its `retry_after` is when the queue will have drained enough to
//! take it. With `max_delay` 0 it only spaces requests: one per `T`, none early. A request
//! of cost `n` waits for the queue ahead of it, then holds the next `n·T`. `burst` is not
//! used: `max_delay` is the queue. Up to `1 + max_delay / T` requests can be accepted at
//! once (that is its `limit` in the decision).
//!
//! # Decisions
//!
//! - `limit`: the most `remaining` can be: `limit + burst` for `token_bucket` and `gcra`,
//!   `1 + max_delay / T` for `leaky_bucket`, `limit` otherwise. For `RateLimit-Limit`.
//! - `remaining`: whole units left now; a refused request does not consume any, so a
//!   request of cost 5 can be refused with `remaining` 3.
//! - `reset_after`: how long until the key's budget is full again (`remaining == limit`),
//!   0 if it is full. For `RateLimit-Reset`. At most `period` for `fixed_window`,
//!   `sliding_log`, and `token_bucket`/`gcra` without burst; `C / limit × period` with a
//!   burst; up to `2 × period` for `sliding_window` (the current window's count fades out
//!   during the next one); `max_delay + cost·T` for `leaky_bucket`.
//! - `retry_after`: set when refused: how long until the same request would be allowed,
//!   never zero (rounded up to the next nanosecond; round it up again to whole seconds for
//!   `Retry-After`).
//! - `delay`: `leaky_bucket` only: how long to hold an allowed request before forwarding.
//!
//! # Edge cases
//!
//! - **`limit` 0**: every request is refused (whatever the cost or burst), with
//!   `retry_after` = `period`, and no state is kept.
//! - **`period` 0**: refused at construction ([`PolicyError::ZeroPeriod`]): "N per no time"
//!   has no meaning, and the config layer should say so rather than guess.
//! - **A request that can never fit** (a cost above the capacity): refused with
//!   `retry_after` = `period`. No wait would help; a client that retries after a period
//!   meets the same answer, which is the honest one. [`Policy::capacity`] lets the caller
//!   reject such costs earlier.
//! - **`cost` 0**: a query: consumes nothing, stores nothing, and is allowed unless `limit`
//!   is 0 or (`leaky_bucket`) the queue is already longer than `max_delay`.
//! - **Huge values**: every computation is saturating or widened to `u128`; a `period`
//!   above 584 years counts as 584 years. The extremes are tested.
//! - **Time going backwards a little**: threads read the clock before taking the key's
//!   lock, so a call can see an earlier `now` than the previous one. Each algorithm then
//!   decides as of the later time or more strictly, never more leniently.
//!
//! # Memory and threads
//!
//! A limiter keeps at most `max_keys` keys. Keys whose budget is full again are dropped
//! by [`LocalLimiter::sweep`], which the owner calls periodically, and a refused or
//! zero-cost request for an unknown key stores nothing. When a new key meets a full
//! table (a flood of random keys, or `max_keys` set too low):
//!
//! 1. keys whose budget is full again are dropped first: forgetting them changes no
//!    decision;
//! 2. if there are none, the 1/16 of the keys with the *least debt* (whose budget will be
//!    full soonest) are evicted, and [`Stats::evicted`] counts them. Forgetting a key
//!    gives it back the budget it has used and not yet earned back, so this forgets where
//!    it grants least: a flood of random keys evicts its own keys (one request each), not
//!    the exhausted keys that are being limited, so an attacker cannot reset its own key
//!    by flooding.
//!
//! It never fails open (an untracked key would be unlimited for as long as an attacker
//! keeps the table full) and never fails closed (refusing every new client while the
//! table is full would be an outage). Memory is bounded: `max_keys` entries of 40 to 64
//! bytes plus a copy of the key, plus the log for `sliding_log`. The bound is per shard
//! (`max_keys / shards` each), so with an uneven spread of keys a shard fills a little
//! before the whole limiter does: give `max_keys` ~25% headroom over the keys you expect.
//!
//! The key map is split into up to 64 shards, each under its own lock, held only for one
//! decision (no allocation except a new key's copy): threads contend only when they hit
//! the same shard, and one hot key is serialised on its shard, as any exact limiter must.
//!
//! # Concurrency limits
//!
//! [`Concurrency`] limits the requests *in flight* per key rather than their rate:
//! [`Concurrency::acquire`] returns a guard that releases the slot when dropped, or
//! `None` at the limit. Same sharding, same key bound.

mod concurrency;
mod fixed_window;
mod gcra;
mod leaky_bucket;
pub mod lease;
pub mod redis;
mod sliding_log;
mod sliding_window;
mod table;
mod time;
mod token_bucket;

#[cfg(test)]
mod tests;

use std::time::Duration;

use tokio::time::Instant;

pub use concurrency::{Concurrency, ConcurrencyGuard};
pub use lease::Leases;
pub use redis::{RedisLimiter, Reservation};

use table::Table;

/// The largest `limit` a `sliding_log` policy accepts: its memory is up to 16 bytes per
/// allowed request in the last period, per key (160 KB per key at this limit).
pub const SLIDING_LOG_MAX_LIMIT: u64 = 10_000;

/// How requests are counted: the config's type, one name from the YAML key to the engine.
/// See the [module docs](self) for each one's behaviour.
pub use portico_config::LimitAlgorithm;

/// `limit` units per `period`, counted by `algorithm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// How requests are counted.
    pub algorithm: LimitAlgorithm,
    /// Units allowed per `period`. 0 refuses everything.
    pub limit: u64,
    /// The period `limit` is counted over. Must not be zero.
    pub period: Duration,
    /// `token_bucket` and `gcra`: capacity beyond `limit` (the bucket holds
    /// `limit + burst`); 0 by default. Ignored by the other algorithms.
    pub burst: u64,
    /// `leaky_bucket`: the longest a request may be delayed; a request that would wait
    /// longer is refused. 0 by default (space requests out, queue none). Ignored by the
    /// other algorithms.
    pub max_delay: Duration,
}

impl Policy {
    /// `limit` per `period` with `algorithm`, no burst, no delay.
    pub fn new(algorithm: LimitAlgorithm, limit: u64, period: Duration) -> Self {
        Policy { algorithm, limit, period, burst: 0, max_delay: Duration::ZERO }
    }

    /// With `burst` units of extra capacity (`token_bucket`, `gcra`).
    pub fn with_burst(self, burst: u64) -> Self {
        Policy { burst, ..self }
    }

    /// With requests delayed up to `max_delay` (`leaky_bucket`).
    pub fn with_max_delay(self, max_delay: Duration) -> Self {
        Policy { max_delay, ..self }
    }

    /// The most units one key can spend at once from a full budget: the `limit` reported
    /// in decisions. A request of a larger cost is never allowed (except by
    /// `leaky_bucket`, which takes any cost and delays what follows).
    pub fn capacity(&self) -> u64 {
        let period = time::nanos(self.period);
        if self.limit == 0 || period == 0 {
            return 0;
        }
        match self.algorithm {
            LimitAlgorithm::TokenBucket | LimitAlgorithm::Gcra => self.limit.saturating_add(self.burst),
            LimitAlgorithm::LeakyBucket => {
                let max_delay = u128::from(time::nanos(self.max_delay)) * u128::from(self.limit);
                time::clamp64(time::div(max_delay, u128::from(period))).saturating_add(1)
            }
            LimitAlgorithm::FixedWindow | LimitAlgorithm::SlidingLog | LimitAlgorithm::SlidingWindow => self.limit,
        }
    }

    /// Checks that the policy can be enforced.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.period.is_zero() {
            return Err(PolicyError::ZeroPeriod);
        }
        if self.algorithm == LimitAlgorithm::SlidingLog && self.limit > SLIDING_LOG_MAX_LIMIT {
            return Err(PolicyError::SlidingLogLimit { limit: self.limit, max: SLIDING_LOG_MAX_LIMIT });
        }
        Ok(())
    }
}

/// Why a limiter could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// `period` is zero.
    #[error("the period must be longer than zero")]
    ZeroPeriod,
    /// `max_keys` is zero: nothing could be tracked.
    #[error("max_keys must be at least 1")]
    ZeroMaxKeys,
    /// A `sliding_log` limit too large to keep a log of.
    #[error(
        "sliding_log keeps every request of the period: limit {limit} is above its maximum {max}; use sliding_window"
    )]
    SlidingLogLimit {
        /// The limit asked for.
        limit: u64,
        /// [`SLIDING_LOG_MAX_LIMIT`].
        max: u64,
    },
}

/// The answer for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may go on (after `delay`, if set).
    pub allowed: bool,
    /// The most `remaining` can be (the policy's [`capacity`](Policy::capacity)).
    pub limit: u64,
    /// Whole units left after this request.
    pub remaining: u64,
    /// How long until the budget is full again; zero if it is.
    pub reset_after: Duration,
    /// When refused: how long until the same request would be allowed. Never zero.
    pub retry_after: Option<Duration>,
    /// `leaky_bucket`, when allowed: how long to hold the request before forwarding it.
    pub delay: Option<Duration>,
}

impl Decision {
    pub(crate) fn allow(limit: u64, remaining: u64, reset_after: Duration) -> Self {
        Decision { allowed: true, limit, remaining, reset_after, retry_after: None, delay: None }
    }

    pub(crate) fn refuse(limit: u64, remaining: u64, reset_after: Duration, retry_after: Duration) -> Self {
        let retry_after = Some(retry_after.max(Duration::from_nanos(1)));
        Decision { allowed: false, limit, remaining, reset_after, retry_after, delay: None }
    }
}

/// Counters of a limiter, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    /// Keys held now.
    pub keys: usize,
    /// Keys evicted with debt because their shard was full (idle keys dropped are not
    /// counted: forgetting them changes nothing). Grows under a flood of new keys.
    pub evicted: u64,
}

enum Tables {
    TokenBucket(Table<token_bucket::TokenBucket>),
    Gcra(Table<gcra::Gcra>),
    FixedWindow(Table<fixed_window::FixedWindow>),
    SlidingLog(Table<sliding_log::SlidingLog>),
    SlidingWindow(Table<sliding_window::SlidingWindow>),
    LeakyBucket(Table<leaky_bucket::LeakyBucket>),
}

macro_rules! each {
    ($tables:expr, $t:ident => $e:expr) => {
        match $tables {
            Tables::TokenBucket($t) => $e,
            Tables::Gcra($t) => $e,
            Tables::FixedWindow($t) => $e,
            Tables::SlidingLog($t) => $e,
            Tables::SlidingWindow($t) => $e,
            Tables::LeakyBucket($t) => $e,
        }
    };
}

/// One [`Policy`] enforced for many keys, in memory, at most `max_keys` of them.
///
/// `Sync`: share it (in an `Arc`) between all the tasks and threads that check requests.
pub struct LocalLimiter {
    policy: Policy,
    epoch: Instant,
    tables: Tables,
}

impl std::fmt::Debug for LocalLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalLimiter").field("policy", &self.policy).finish_non_exhaustive()
    }
}

impl LocalLimiter {
    /// A limiter for `policy` holding at most `max_keys` keys, its epoch now.
    pub fn new(policy: Policy, max_keys: usize) -> Result<Self, PolicyError> {
        Self::with_epoch(policy, max_keys, Instant::now())
    }

    /// A limiter whose `fixed_window` and `sliding_window` windows are aligned to
    /// `epoch` (and whose times before `epoch` count as `epoch`).
    pub fn with_epoch(policy: Policy, max_keys: usize, epoch: Instant) -> Result<Self, PolicyError> {
        policy.validate()?;
        if max_keys == 0 {
            return Err(PolicyError::ZeroMaxKeys);
        }
        let tables = match policy.algorithm {
            LimitAlgorithm::TokenBucket => {
                Tables::TokenBucket(Table::new(token_bucket::TokenBucket::new(&policy), max_keys))
            }
            LimitAlgorithm::Gcra => Tables::Gcra(Table::new(gcra::Gcra::new(&policy), max_keys)),
            LimitAlgorithm::FixedWindow => {
                Tables::FixedWindow(Table::new(fixed_window::FixedWindow::new(&policy), max_keys))
            }
            LimitAlgorithm::SlidingLog => {
                Tables::SlidingLog(Table::new(sliding_log::SlidingLog::new(&policy), max_keys))
            }
            LimitAlgorithm::SlidingWindow => {
                Tables::SlidingWindow(Table::new(sliding_window::SlidingWindow::new(&policy), max_keys))
            }
            LimitAlgorithm::LeakyBucket => {
                Tables::LeakyBucket(Table::new(leaky_bucket::LeakyBucket::new(&policy), max_keys))
            }
        };
        Ok(LocalLimiter { policy, epoch, tables })
    }

    /// The policy enforced.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Decides on a request of `cost` units for `key` at `now`, and counts it if allowed.
    pub fn check(&self, key: &[u8], now: Instant, cost: u64) -> Decision {
        if self.policy.limit == 0 {
            let period = self.policy.period;
            return Decision::refuse(0, 0, period, period);
        }
        let now = time::since(self.epoch, now);
        each!(&self.tables, t => t.check(key, now, cost))
    }

    /// Drops the keys whose budget is full again at `now`: they would be decided exactly
    /// as new keys. Call it periodically (every `period`, or every few seconds); it locks
    /// one shard at a time, for a time proportional to its keys.
    pub fn sweep(&self, now: Instant) {
        let now = time::since(self.epoch, now);
        each!(&self.tables, t => t.sweep(now))
    }

    /// Keys held now (locks every shard in turn: for metrics and tests, not per request).
    pub fn len(&self) -> usize {
        each!(&self.tables, t => t.len())
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Counters for metrics.
    pub fn stats(&self) -> Stats {
        each!(&self.tables, t => Stats { keys: t.len(), evicted: t.evicted() })
    }
}
