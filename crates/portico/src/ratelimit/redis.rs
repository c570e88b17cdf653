//! Rate limits shared by every instance through Redis: one [`Policy`] decided by a Lua
//! script, atomically, in one round trip per decision.
//!
//! [`RedisLimiter::check`] sends `EVALSHA` of the algorithm's script with the key and the
//! cost (the policy's numbers are formatted once, at construction); if the server has lost
//! the script (`NOSCRIPT`: a restart, `SCRIPT FLUSH`, a failover) it is loaded again and
//! run once more, which is the only case with more than one round trip. The whole call,
//! reload included, is bounded by the store's timeout.
//!
//! [`RedisLimiter::reserve`] is the batched mode's call (see [`super::lease`]): one round
//! trip that grants up to `n` units at once, only those available (`gcra`, `token_bucket`,
//! `fixed_window`).
//!
//! # Semantics
//!
//! The same algorithms as the [local ones](super), with the same [`Decision`] fields, so a
//! limit means the same whether it is counted here or in memory. Differences:
//!
//! - **Clock**: the script reads the Redis server's clock (`TIME`), so every instance
//!   decides by one clock and gateway clocks may drift freely. Its resolution is 1 µs
//!   (the local limiters count in ns); windows (`fixed_window`, `sliding_window`) are
//!   aligned on Unix time rather than on the limiter's creation.
//! - **Arithmetic**: Lua numbers are doubles. Times are integer microseconds (exact up to
//!   2⁵³ µs, 285 years), and the rate algorithms keep a *debt* (how far the key is ahead
//!   of the steady rate, at most `capacity × T`) with the time it was written, rather than
//!   an absolute time: the numbers stay small and their relative error is ~10⁻¹⁶.
//!   Comparisons allow for 10⁻¹² of the capacity, so a burst of exactly the capacity is
//!   never cut short by a rounding error.
//! - **`gcra` and `token_bucket`** are the same script (they make the same decisions);
//!   **`leaky_bucket`** is GCRA with the delay allowance of the local one; `sliding_log`
//!   keeps one ZSET member per unit (a request of cost `n` adds `n`), named by time, a
//!   random nonce of the call and an index, so members never collide.
//!
//! # Keys
//!
//! `{key_prefix}rl:{<limiter id>:<key>}`, where the limiter id names the limit (see
//! [`RedisLimiter::new`]) and `<key>` is the request's key bytes. `fixed_window` and
//! `sliding_window` add `:<window index>` (the index of the `period`-long window since the
//! Unix epoch), one key per window. Every key is written with an expiry (`PX`/`PEXPIRE`)
//! of when it stops mattering (the debt drained, the window and the one after it over, the
//! newest log entry out of the period), so idle keys vanish by themselves.
//!
//! The braces are a Redis Cluster *hash tag*: every key one decision touches has the same
//! tag, so they live in one slot, which a script needs; different client keys spread over
//! the slots. The window keys are derived inside the script from `KEYS[1]`, which Cluster
//! accepts because they share its tag.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use redis::Script;

use super::{Decision, LimitAlgorithm, Policy, time};
use crate::store::redis::{RedisStore, StoreError};

/// Reads the server clock (µs since the Unix epoch) and defines the helpers every script
/// shares: `ns` turns µs into whole ns rounded up (a wait is never reported shorter), and
/// `state` reads a `"<at> <debt>"` value as the debt left at `now`.
const PRELUDE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cost = tonumber(ARGV[1])
local function ns(us)
  if us <= 0 then return 0 end
  local v = math.ceil(us * 1000)
  if v > 9007199254740992 then v = 9007199254740992 end
  return v
end
local function whole(x)
  if x <= 0 then return 0 end
  local v = math.floor(x + x * 1e-12 + 1e-9)
  if v > 9007199254740992 then v = 9007199254740992 end
  return v
end
local function state(key)
  local v = redis.call('GET', key)
  if not v then return 0 end
  local at, d = string.match(v, '^(%S+) (%S+)$')
  at, d = tonumber(at), tonumber(d)
  if not (at and d) then return 0 end
  -- An earlier `now` (the server clock stepped back) decides as of `at`.
  local left = d - math.max(0, now - at)
  if left < 0 then return 0 end
  return left
end
local function save(key, debt)
  redis.call('SET', key, string.format('%.17g %.17g', now, debt), 'PX', math.ceil(debt / 1000) + 1)
end
";

/// GCRA (`gcra`, `token_bucket`). ARGV: cost, `T` in µs, `capacity × T` in µs.
/// Returns `{allowed, remaining, reset_after ns, retry_after ns, delay ns}`.
const GCRA: &str = r"
local interval, max_debt = tonumber(ARGV[2]), tonumber(ARGV[3])
local debt = state(KEYS[1])
local after = debt + cost * interval
local slack = max_debt * 1e-12
if after <= max_debt + slack then
  if cost > 0 then save(KEYS[1], after) end
  return {1, whole((max_debt - after) / interval), ns(after), 0, 0}
end
return {0, whole((max_debt - debt) / interval), ns(debt), ns(after - max_debt), 0}
";

/// A reservation of `gcra` (`token_bucket`): grants `min(cost, available)` units at once,
/// spending them as one request of that cost would. ARGV as [`GCRA`]. Returns `{granted,
/// remaining, reset_after ns, retry_after ns (of one unit, when none was granted), 0}`.
const GCRA_RESERVE: &str = r"
local interval, max_debt = tonumber(ARGV[2]), tonumber(ARGV[3])
local debt = state(KEYS[1])
local grant = math.min(cost, whole((max_debt - debt) / interval))
if grant > 0 then
  debt = debt + grant * interval
  save(KEYS[1], debt)
  return {grant, whole((max_debt - debt) / interval), ns(debt), 0, 0}
end
return {0, 0, ns(debt), ns(debt + interval - max_debt), 0}
";

/// What `fixed_window` and its reservation share: the current window's key, its count,
/// and the time `left` in it (µs).
const FIXED_WINDOW_HEAD: &str = r"
local period, limit = tonumber(ARGV[2]), tonumber(ARGV[3])
local window = math.floor(now / period)
local key = KEYS[1] .. ':' .. string.format('%.0f', window)
local count = tonumber(redis.call('GET', key)) or 0
local left = (window + 1) * period - now
";

/// A reservation of `fixed_window`, after [`FIXED_WINDOW_HEAD`]: `INCRBY` of `min(cost, limit - count)`. ARGV as
/// [`FIXED_WINDOW`]. Returns `{granted, remaining, reset_after ns, time to the window's
/// end ns, 0}`.
const FIXED_WINDOW_RESERVE: &str = r"
local grant = math.max(0, math.min(cost, limit - count))
if grant > 0 then
  count = redis.call('INCRBY', key, grant)
  redis.call('PEXPIRE', key, math.ceil(left / 1000) + 1)
end
local reset = 0
if count > 0 then reset = left end
return {grant, math.max(0, limit - count), ns(reset), ns(left), 0}
";

/// `leaky_bucket`. ARGV: cost, `T` in µs, `max_delay` in µs, capacity.
const LEAKY: &str = r"
local interval, max_wait, capacity = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local wait = state(KEYS[1])
local slack = (max_wait + interval) * 1e-12
if wait > max_wait + slack then
  return {0, 0, ns(wait), ns(wait - max_wait), 0}
end
local queued = wait + cost * interval
if cost > 0 then save(KEYS[1], queued) end
local room = 0
if queued <= max_wait + slack then
  room = math.min(capacity, whole((max_wait - queued) / interval) + 1)
end
return {1, room, ns(queued), 0, ns(wait)}
";

/// `fixed_window`, after [`FIXED_WINDOW_HEAD`]. ARGV: cost, period in µs, limit.
const FIXED_WINDOW: &str = r"
local allowed = 0
if count + cost <= limit then
  allowed = 1
  if cost > 0 then
    count = redis.call('INCRBY', key, cost)
    redis.call('PEXPIRE', key, math.ceil(left / 1000) + 1)
  end
end
local reset = 0
if count > 0 then reset = left end
return {allowed, math.max(0, limit - count), ns(reset), ns(left), 0}
";

/// `sliding_window`. ARGV: cost, period in µs, limit.
const SLIDING_WINDOW: &str = r"
local period, limit = tonumber(ARGV[2]), tonumber(ARGV[3])
local window = math.floor(now / period)
local kc = KEYS[1] .. ':' .. string.format('%.0f', window)
local kp = KEYS[1] .. ':' .. string.format('%.0f', window - 1)
local v = redis.call('MGET', kc, kp)
local cur, prev = tonumber(v[1]) or 0, tonumber(v[2]) or 0
local elapsed = now - window * period
local to_end = period - elapsed
-- Scaled by `period`, as the local one: `current * period + previous * (period - elapsed)`.
local allowed = 0
if (cur + cost) * period + prev * to_end <= limit * period then
  allowed = 1
  if cost > 0 then
    cur = redis.call('INCRBY', kc, cost)
    redis.call('PEXPIRE', kc, math.ceil((to_end + period) / 1000) + 1)
  end
end
local used = cur * period + prev * to_end
local remaining = whole((limit * period - used) / period)
local reset = 0
if cur > 0 then reset = to_end + period elseif prev > 0 then reset = to_end end
if allowed == 1 then return {1, remaining, ns(reset), 0, 0} end
-- When the weight of `previous` will have faded enough to leave `room`.
local function fade(previous, room)
  if previous == 0 then return 0 end
  return period - math.min(math.floor(room * period / previous), period)
end
local retry
if cur + cost <= limit then
  retry = math.max(0, fade(prev, limit - cur - cost) - elapsed)
else
  retry = to_end + fade(cur, math.max(0, limit - cost))
end
return {0, remaining, ns(reset), ns(retry), 0}
";

/// `sliding_log`. ARGV: cost, period in µs, limit, a nonce for unique members.
const SLIDING_LOG: &str = r"
local period, limit, nonce = tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local key = KEYS[1]
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - period)
local used = redis.call('ZCARD', key)
local stamp = string.format('%.0f', now)
if used + cost <= limit then
  if cost > 0 then
    -- In chunks: Lua's `unpack` takes at most a few thousand values.
    local i = 1
    while i <= cost do
      local args = {}
      local last = math.min(cost, i + 999)
      for j = i, last do
        args[#args + 1] = stamp
        args[#args + 1] = stamp .. ':' .. nonce .. ':' .. j
      end
      redis.call('ZADD', key, unpack(args))
      i = last + 1
    end
    redis.call('PEXPIRE', key, math.ceil(period / 1000) + 1)
    used = used + cost
  end
  local reset = 0
  if used > 0 then
    local newest = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
    reset = tonumber(newest[2]) + period - now
  end
  return {1, limit - used, ns(reset), 0, 0}
end
local newest = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
local reset = 0
if newest[2] then reset = tonumber(newest[2]) + period - now end
local retry = reset
local need = used + cost - limit
if need >= 1 and need <= used then
  local entry = redis.call('ZRANGE', key, need - 1, need - 1, 'WITHSCORES')
  if entry[2] then retry = tonumber(entry[2]) + period - now end
end
return {0, math.max(0, limit - used), ns(reset), ns(retry), 0}
";

fn script(body: &str) -> Script {
    Script::new(&format!("{PRELUDE}{body}"))
}

static GCRA_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(GCRA));
static LEAKY_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(LEAKY));
static FIXED_WINDOW_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(&format!("{FIXED_WINDOW_HEAD}{FIXED_WINDOW}")));
static SLIDING_WINDOW_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(SLIDING_WINDOW));
static SLIDING_LOG_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(SLIDING_LOG));
static GCRA_RESERVE_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(GCRA_RESERVE));
static FIXED_WINDOW_RESERVE_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| script(&format!("{FIXED_WINDOW_HEAD}{FIXED_WINDOW_RESERVE}")));

/// What a reservation ([`RedisLimiter::reserve`]) obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reservation {
    /// Units granted (0: none was available).
    pub granted: u64,
    /// The decision for the first of them (or the refusal when none was granted), with
    /// the shared numbers after the reservation.
    pub decision: Decision,
    /// How long the granted units may be spent: `fixed_window`, until the window ends;
    /// the rate algorithms, unbounded (`None`).
    pub valid_for: Option<Duration>,
}

/// One [`Policy`] enforced in Redis for every instance that builds it with the same id.
pub struct RedisLimiter {
    store: Arc<RedisStore>,
    policy: Policy,
    capacity: u64,
    /// `{key_prefix}rl:{<id>:`; the request's key and `}` follow.
    key_prefix: Box<[u8]>,
    script: &'static Script,
    /// The policy's numbers, as the script's `ARGV[2..]`.
    args: Box<[String]>,
    timeout: Duration,
}

impl std::fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLimiter")
            .field("policy", &self.policy)
            .field("key_prefix", &String::from_utf8_lossy(&self.key_prefix))
            .finish_non_exhaustive()
    }
}

/// `d` in microseconds, as the scripts count (a fraction when `d` is not whole µs).
fn micros(d: Duration) -> f64 {
    time::nanos(d) as f64 / 1000.0
}

impl RedisLimiter {
    /// A limiter for `policy` whose keys are named by `id`: every instance (and every
    /// config reload) that uses the same `id` counts together, so it must name the limit
    /// stably, never by anything local to a process. Each decision is bounded by
    /// `timeout`.
    pub fn new(
        store: Arc<RedisStore>,
        policy: Policy,
        id: &str,
        timeout: Duration,
    ) -> Result<Self, super::PolicyError> {
        policy.validate()?;
        let period = micros(policy.period);
        let limit = policy.limit.max(1) as f64;
        let interval = period / limit;
        let capacity = policy.capacity();
        let (script, args): (&'static Script, Vec<String>) = match policy.algorithm {
            LimitAlgorithm::Gcra | LimitAlgorithm::TokenBucket => {
                (&GCRA_SCRIPT, vec![interval.to_string(), (capacity as f64 * interval).to_string()])
            }
            LimitAlgorithm::LeakyBucket => {
                (&LEAKY_SCRIPT, vec![interval.to_string(), micros(policy.max_delay).to_string(), capacity.to_string()])
            }
            LimitAlgorithm::FixedWindow => (&FIXED_WINDOW_SCRIPT, vec![period.to_string(), policy.limit.to_string()]),
            LimitAlgorithm::SlidingWindow => {
                (&SLIDING_WINDOW_SCRIPT, vec![period.to_string(), policy.limit.to_string()])
            }
            LimitAlgorithm::SlidingLog => (&SLIDING_LOG_SCRIPT, vec![period.to_string(), policy.limit.to_string()]),
        };
        let key_prefix = format!("{}rl:{{{id}:", store.prefix()).into_bytes().into_boxed_slice();
        Ok(Self { store, policy, capacity, key_prefix, script, args: args.into(), timeout })
    }

    /// Whether [`reserve`](Self::reserve) supports the policy's algorithm (`gcra`,
    /// `token_bucket`, `fixed_window`).
    pub fn can_reserve(&self) -> bool {
        matches!(
            self.policy.algorithm,
            LimitAlgorithm::Gcra | LimitAlgorithm::TokenBucket | LimitAlgorithm::FixedWindow
        )
    }

    /// Reserves up to `want` units of `key` at once, in one round trip: Redis grants
    /// `min(want, available)` atomically, so the units granted to every instance together
    /// never exceed what the limit allows. Only for the algorithms of
    /// [`can_reserve`](Self::can_reserve); others decide one unit as [`check`](Self::check).
    pub async fn reserve(&self, key: &[u8], want: u64) -> Result<Reservation, StoreError> {
        let script: &Script = match self.policy.algorithm {
            LimitAlgorithm::Gcra | LimitAlgorithm::TokenBucket => &GCRA_RESERVE_SCRIPT,
            LimitAlgorithm::FixedWindow => &FIXED_WINDOW_RESERVE_SCRIPT,
            _ => {
                let decision = self.check(key, 1).await?;
                return Ok(Reservation { granted: u64::from(decision.allowed), decision, valid_for: None });
            }
        };
        if self.policy.limit == 0 {
            let period = self.policy.period;
            return Ok(Reservation { granted: 0, decision: Decision::refuse(0, 0, period, period), valid_for: None });
        }
        let want = want.clamp(1, self.capacity.max(1));
        let mut inv = script.prepare_invoke();
        inv.key(self.redis_key(key)).arg(want);
        for a in &*self.args {
            inv.arg(a.as_str());
        }
        let (granted, remaining, reset_ns, retry_ns, _): (i64, i64, i64, i64, i64) =
            self.store.invoke(&inv, self.timeout).await?;
        let nanos = |v: i64| Duration::from_nanos(u64::try_from(v).unwrap_or(0));
        let granted = u64::try_from(granted).unwrap_or(0).min(want);
        let remaining = u64::try_from(remaining).unwrap_or(0).min(self.capacity);
        let reset_after = nanos(reset_ns);
        let fixed = self.policy.algorithm == LimitAlgorithm::FixedWindow;
        Ok(if granted > 0 {
            // Of the units granted, the first is this request's; the rest are the lease.
            let left = remaining.saturating_add(granted - 1).min(self.capacity);
            Reservation {
                granted,
                decision: Decision::allow(self.capacity, left, reset_after),
                valid_for: fixed.then(|| nanos(retry_ns)),
            }
        } else {
            Reservation {
                granted: 0,
                decision: Decision::refuse(
                    self.capacity,
                    remaining,
                    reset_after,
                    nanos(retry_ns).max(Duration::from_micros(1)),
                ),
                valid_for: None,
            }
        })
    }

    /// The policy enforced.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The Redis key of `key` (for tests and operators).
    pub fn redis_key(&self, key: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.key_prefix.len() + key.len() + 1);
        k.extend_from_slice(&self.key_prefix);
        k.extend_from_slice(key);
        k.push(b'}');
        k
    }

    /// Decides on a request of `cost` units for `key`, and counts it if allowed: one round
    /// trip (two more when the script must be loaded again), within the timeout.
    pub async fn check(&self, key: &[u8], cost: u64) -> Result<Decision, StoreError> {
        if self.policy.limit == 0 {
            let period = self.policy.period;
            return Ok(Decision::refuse(0, 0, period, period));
        }
        let mut inv = self.script.prepare_invoke();
        inv.key(self.redis_key(key)).arg(cost);
        for a in &*self.args {
            inv.arg(a.as_str());
        }
        if self.policy.algorithm == LimitAlgorithm::SlidingLog {
            inv.arg(fastrand::u64(..));
        }
        let (allowed, remaining, reset_ns, retry_ns, delay_ns): (i64, i64, i64, i64, i64) =
            self.store.invoke(&inv, self.timeout).await?;
        let nanos = |v: i64| Duration::from_nanos(u64::try_from(v).unwrap_or(0));
        let remaining = u64::try_from(remaining).unwrap_or(0).min(self.capacity);
        let reset_after = nanos(reset_ns);
        Ok(if allowed == 1 {
            let mut d = Decision::allow(self.capacity, remaining, reset_after);
            d.delay = (delay_ns > 0).then(|| nanos(delay_ns));
            d
        } else if cost > self.capacity {
            // No wait would help (as the local limiters say).
            Decision::refuse(self.capacity, remaining, reset_after, self.policy.period)
        } else {
            Decision::refuse(self.capacity, remaining, reset_after, nanos(retry_ns))
        })
    }
}

#[cfg(test)]
mod tests {
    use std::process::{Child, Command, Stdio};

    use super::*;
    use crate::ratelimit::LocalLimiter;

    /// A real `redis-server` on a free port, killed when dropped.
    struct Server {
        child: Child,
        store: Arc<RedisStore>,
    }

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn store_at(port: u16, timeout: Duration) -> Arc<RedisStore> {
        let config = portico_config::Redis {
            url: Some(format!("redis://127.0.0.1:{port}")),
            cluster: Vec::new(),
            tls: None,
            timeout: portico_config::Duration(timeout),
            connect_timeout: portico_config::Duration::from_millis(500),
            key_prefix: "t:".into(),
        };
        RedisStore::new(&config).unwrap()
    }

    async fn server() -> Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        // No persistence: nothing is written to the directory.
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(std::env::temp_dir())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/test.sh installs it)");
        let store = store_at(port, Duration::from_secs(1));
        let s = Server { child, store };
        for _ in 0..200 {
            if s.store.query::<String>(&redis::cmd("PING"), Duration::from_millis(200)).await.is_ok() {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("redis-server did not answer");
    }

    fn limiter(s: &Server, policy: Policy, id: &str) -> RedisLimiter {
        RedisLimiter::new(s.store.clone(), policy, id, Duration::from_secs(1)).unwrap()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[tokio::test]
    async fn ratelimit_redis_gcra_burst_and_numbers() {
        let s = server().await;
        let l = limiter(&s, Policy::new(LimitAlgorithm::Gcra, 5, Duration::from_secs(1)).with_burst(3), "gcra");
        for i in 0..8u64 {
            let d = l.check(b"k", 1).await.unwrap();
            assert!(d.allowed, "{i}");
            assert_eq!((d.limit, d.remaining), (8, 7 - i));
            assert!(d.reset_after <= ms(200 * (i + 1)) && d.reset_after > ms(200 * (i + 1) - 50), "{d:?}");
        }
        let d = l.check(b"k", 1).await.unwrap();
        assert!(!d.allowed);
        assert_eq!((d.limit, d.remaining), (8, 0));
        let retry = d.retry_after.unwrap();
        assert!(retry > ms(150) && retry <= ms(200), "{retry:?}");
        // A cost above the capacity can never pass: retry after a period.
        let d = l.check(b"other", 9).await.unwrap();
        assert_eq!((d.allowed, d.retry_after), (false, Some(Duration::from_secs(1))));
        // The key expires when the debt has drained (1.6 s).
        let pttl: i64 = s.store.query(redis::cmd("PTTL").arg(l.redis_key(b"k")), ms(500)).await.unwrap();
        assert!((1_400..=1_601).contains(&pttl), "{pttl}");
        // token_bucket is the same script.
        let l = limiter(&s, Policy::new(LimitAlgorithm::TokenBucket, 5, Duration::from_secs(1)), "tb");
        let mut allowed = 0;
        for _ in 0..10 {
            allowed += usize::from(l.check(b"k", 1).await.unwrap().allowed);
        }
        assert_eq!(allowed, 5);
    }

    #[tokio::test]
    async fn ratelimit_redis_bursts_match_the_local_limiters() {
        let s = server().await;
        let hour = Duration::from_secs(3600);
        let policies = [
            Policy::new(LimitAlgorithm::Gcra, 20, hour).with_burst(5),
            Policy::new(LimitAlgorithm::TokenBucket, 20, hour),
            Policy::new(LimitAlgorithm::FixedWindow, 20, hour),
            Policy::new(LimitAlgorithm::SlidingWindow, 20, hour),
            Policy::new(LimitAlgorithm::SlidingLog, 20, hour),
            Policy::new(LimitAlgorithm::LeakyBucket, 20, hour).with_max_delay(Duration::from_secs(3 * 180)),
        ];
        for p in policies {
            let shared = limiter(&s, p, p.algorithm.as_str());
            let local = LocalLimiter::new(p, 10).unwrap();
            for i in 0..40 {
                let (a, b) = (shared.check(b"k", 1).await.unwrap(), local.check(b"k", tokio::time::Instant::now(), 1));
                assert_eq!((a.allowed, a.limit, a.remaining), (b.allowed, b.limit, b.remaining), "{p:?} #{i}");
                assert_eq!(a.delay.is_some(), b.delay.is_some(), "{p:?} #{i}");
                assert_eq!(a.retry_after.is_some(), b.retry_after.is_some(), "{p:?} #{i}");
                // Times agree within the few ms the burst takes (windows are aligned
                // differently: compare only the rate-based ones).
                if matches!(
                    p.algorithm,
                    LimitAlgorithm::Gcra | LimitAlgorithm::TokenBucket | LimitAlgorithm::LeakyBucket
                ) {
                    let close = |x: Duration, y: Duration| x.abs_diff(y) < ms(50);
                    assert!(close(a.reset_after, b.reset_after), "{p:?} #{i}: {a:?} {b:?}");
                    assert!(close(a.delay.unwrap_or_default(), b.delay.unwrap_or_default()), "{p:?} #{i}");
                }
            }
        }
    }

    #[tokio::test]
    async fn ratelimit_redis_leaky_bucket_delays() {
        let s = server().await;
        let l = limiter(
            &s,
            Policy::new(LimitAlgorithm::LeakyBucket, 10, Duration::from_secs(1)).with_max_delay(ms(1000)),
            "lb",
        );
        for i in 0..=10u64 {
            let d = l.check(b"k", 1).await.unwrap();
            assert!(d.allowed, "{i}");
            assert_eq!((d.limit, d.remaining), (11, 10 - i), "{i}");
            let delay = d.delay.unwrap_or_default();
            assert!(delay <= ms(100 * i) && delay + ms(50) > ms(100 * i), "{i}: {delay:?}");
        }
        let d = l.check(b"k", 1).await.unwrap();
        assert!(!d.allowed);
        let retry = d.retry_after.unwrap();
        assert!(retry > ms(50) && retry <= ms(100), "{retry:?}");
    }

    #[tokio::test]
    async fn ratelimit_redis_windows_and_log_expire() {
        let s = server().await;
        let l = limiter(&s, Policy::new(LimitAlgorithm::SlidingLog, 3, Duration::from_secs(10)), "log");
        for _ in 0..3 {
            assert!(l.check(b"k", 1).await.unwrap().allowed);
        }
        let d = l.check(b"k", 1).await.unwrap();
        assert!(!d.allowed);
        assert!(d.retry_after.unwrap() > ms(9_000) && d.retry_after.unwrap() <= ms(10_000), "{d:?}");
        let n: u64 = s.store.query(redis::cmd("ZCARD").arg(l.redis_key(b"k")), ms(500)).await.unwrap();
        assert_eq!(n, 3);
        let pttl: i64 = s.store.query(redis::cmd("PTTL").arg(l.redis_key(b"k")), ms(500)).await.unwrap();
        assert!((9_000..=10_001).contains(&pttl), "{pttl}");
        // The window keys carry an expiry too.
        for alg in [LimitAlgorithm::FixedWindow, LimitAlgorithm::SlidingWindow] {
            let l = limiter(&s, Policy::new(alg, 3, Duration::from_secs(10)), alg.as_str());
            assert!(l.check(b"k", 1).await.unwrap().allowed);
            let mut pattern = l.redis_key(b"k");
            pattern.extend_from_slice(b":*");
            let keys: Vec<Vec<u8>> = s.store.query(redis::cmd("KEYS").arg(pattern), ms(500)).await.unwrap();
            assert_eq!(keys.len(), 1, "{alg}");
            let pttl: i64 = s.store.query(redis::cmd("PTTL").arg(&keys[0]), ms(500)).await.unwrap();
            assert!(pttl > 0 && pttl <= 20_001, "{alg}: {pttl}");
        }
    }

    #[tokio::test]
    async fn ratelimit_redis_reservations_grant_what_is_available() {
        let s = server().await;
        let hour = Duration::from_secs(3600);
        for alg in [LimitAlgorithm::Gcra, LimitAlgorithm::TokenBucket, LimitAlgorithm::FixedWindow] {
            let l = limiter(&s, Policy::new(alg, 25, hour), alg.as_str());
            assert!(l.can_reserve());
            let mut granted = Vec::new();
            for _ in 0..4 {
                let r = l.reserve(b"k", 10).await.unwrap();
                granted.push(r.granted);
                if r.granted > 0 {
                    assert!(r.decision.allowed);
                    assert_eq!(r.decision.remaining, 25 - granted.iter().sum::<u64>() + r.granted - 1, "{alg}");
                } else {
                    assert!(!r.decision.allowed);
                    let retry = r.decision.retry_after.unwrap();
                    // A fixed window ends on the hour (UTC): its wait is whatever is left of
                    // it, under a second just before the hour. The others refill from now.
                    let least = if alg == LimitAlgorithm::FixedWindow { Duration::ZERO } else { ms(100_000) };
                    assert!(retry > least && retry <= hour, "{alg}: {retry:?}");
                }
                assert_eq!(r.valid_for.is_some(), alg == LimitAlgorithm::FixedWindow && r.granted > 0, "{alg}");
            }
            assert_eq!(granted, [10, 10, 5, 0], "{alg}");
            // Reservations and single decisions count in the same keys.
            assert!(!l.check(b"k", 1).await.unwrap().allowed, "{alg}");
            assert!(l.check(b"other", 1).await.unwrap().allowed, "{alg}");
            assert_eq!(l.reserve(b"other", 100).await.unwrap().granted, 24, "{alg}");
        }
        assert!(!limiter(&s, Policy::new(LimitAlgorithm::SlidingLog, 5, hour), "log").can_reserve());
    }

    #[tokio::test]
    async fn ratelimit_redis_script_reloaded_after_flush() {
        let s = server().await;
        let l = limiter(&s, Policy::new(LimitAlgorithm::FixedWindow, 100, Duration::from_secs(3600)), "flush");
        assert!(l.check(b"k", 1).await.unwrap().allowed);
        let _: () = s.store.query(redis::cmd("SCRIPT").arg("FLUSH"), ms(500)).await.unwrap();
        let d = l.check(b"k", 1).await.unwrap();
        assert_eq!((d.allowed, d.remaining), (true, 98));
    }

    #[tokio::test]
    async fn ratelimit_redis_down_fails_within_the_timeout() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let store = store_at(port, ms(100));
        let l = RedisLimiter::new(store, Policy::new(LimitAlgorithm::Gcra, 5, Duration::from_secs(1)), "down", ms(100))
            .unwrap();
        let start = std::time::Instant::now();
        assert!(l.check(b"k", 1).await.is_err());
        assert!(start.elapsed() < ms(1000), "{:?}", start.elapsed());
    }

    /// Measures decisions against a local redis-server: the latency of 10,000 sequential
    /// checks (p50, p99) and the throughput of 64 concurrent callers. Run with
    /// `cargo test --release -p portico --lib ratelimit_redis_measure -- --ignored --nocapture`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "a measurement, not a test"]
    async fn ratelimit_redis_measure() {
        let s = server().await;
        for alg in [
            LimitAlgorithm::Gcra,
            LimitAlgorithm::FixedWindow,
            LimitAlgorithm::SlidingWindow,
            LimitAlgorithm::SlidingLog,
        ] {
            let limit = if alg == LimitAlgorithm::SlidingLog { 10_000 } else { 1_000_000_000 };
            let l = Arc::new(limiter(&s, Policy::new(alg, limit, Duration::from_secs(1)), alg.as_str()));
            l.check(b"warm", 1).await.unwrap();
            let mut times = Vec::with_capacity(10_000);
            for i in 0..10_000u32 {
                let key = (i % 100).to_string();
                let t = std::time::Instant::now();
                l.check(key.as_bytes(), 1).await.unwrap();
                times.push(t.elapsed());
            }
            times.sort_unstable();
            let (p50, p99) = (times[5_000], times[9_900]);
            let start = std::time::Instant::now();
            let tasks: Vec<_> = (0..64u32)
                .map(|t| {
                    let l = l.clone();
                    tokio::spawn(async move {
                        for i in 0..500u32 {
                            l.check(format!("{t}:{i}").as_bytes(), 1).await.unwrap();
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
            let rate = 32_000.0 / start.elapsed().as_secs_f64();
            eprintln!("{alg}: sequential p50 {p50:?} p99 {p99:?}; 64 concurrent: {rate:.0} decisions/s");
        }
        // Batched (`mode: batched`): decisions spent from leases of `batch` units, one
        // reservation round trip per lease.
        for batch in [10u64, 100] {
            let l = Arc::new(limiter(
                &s,
                Policy::new(LimitAlgorithm::Gcra, 1_000_000_000, Duration::from_secs(1)),
                "batched",
            ));
            let leases = Arc::new(super::super::Leases::new(batch, Duration::from_secs(1), 100_000));
            let decide = |l: Arc<RedisLimiter>, leases: Arc<super::super::Leases>, key: String| async move {
                let reserve = |n| {
                    let l = l.clone();
                    let key = key.clone();
                    async move { l.reserve(key.as_bytes(), n).await.ok() }
                };
                leases.decide(key.as_bytes(), reserve).await.unwrap()
            };
            let mut times = Vec::with_capacity(100_000);
            for i in 0..100_000u32 {
                let t = std::time::Instant::now();
                decide(l.clone(), leases.clone(), (i % 100).to_string()).await;
                times.push(t.elapsed());
            }
            times.sort_unstable();
            let (p50, p99, p999) = (times[50_000], times[99_000], times[99_900]);
            let start = std::time::Instant::now();
            let tasks: Vec<_> = (0..64u32)
                .map(|t| {
                    let (l, leases) = (l.clone(), leases.clone());
                    tokio::spawn(async move {
                        for i in 0..5_000u32 {
                            decide(l.clone(), leases.clone(), format!("{t}:{}", i % 10)).await;
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
            let rate = 320_000.0 / start.elapsed().as_secs_f64();
            eprintln!(
                "batched gcra, batch {batch}: sequential p50 {p50:?} p99 {p99:?} p99.9 {p999:?}; 64 concurrent: {rate:.0} decisions/s"
            );
        }
    }
}
