//! The circuit breaker of an upstream: closed -> open when the error rate over a sliding
//! window passes the threshold with enough requests; open answers at once without calling
//! the upstream; after `open_for`, half-open lets `half_open_requests` probes through;
//! all of them succeeding closes it, any failing opens it again.
//!
//! State and counters are atomics (one-second slots for the window); a transition is a
//! compare-and-swap, so concurrent requests never take a lock.

use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use portico_config::CircuitBreaker;
use prometheus_client::metrics::gauge::Gauge;
use tokio::time::Instant;

/// Breaker states, as exported by `gateway_circuit_breaker_state`.
pub const CLOSED: u8 = 0;
/// Open: requests are answered without calling the upstream.
pub const OPEN: u8 = 1;
/// Half-open: a few probes test whether the upstream recovered.
pub const HALF_OPEN: u8 = 2;

#[derive(Debug, Default)]
struct Slot {
    second: AtomicU64,
    requests: AtomicU32,
    failures: AtomicU32,
}

/// What the breaker allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// A normal request (closed state).
    Normal,
    /// One of the half-open probes of a given half-open round. An outcome that arrives
    /// after its round is over is ignored.
    Probe(u32),
}

/// A circuit breaker.
#[derive(Debug)]
pub struct Breaker {
    config: CircuitBreaker,
    state: AtomicU8,
    open_until_ms: AtomicU64,
    probes_started: AtomicU32,
    probes_passed: AtomicU32,
    /// Half-open rounds so far; probes carry theirs.
    round: AtomicU32,
    slots: Vec<Slot>,
    epoch: Instant,
    gauge: Gauge,
    transitions: [prometheus_client::metrics::counter::Counter; 3],
    upstream: std::sync::Arc<str>,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(
        config: CircuitBreaker,
        gauge: Gauge,
        transitions: [prometheus_client::metrics::counter::Counter; 3],
        upstream: std::sync::Arc<str>,
    ) -> Self {
        let n = config.window.get().as_secs().max(1) as usize;
        gauge.set(i64::from(CLOSED));
        Self {
            config,
            state: AtomicU8::new(CLOSED),
            open_until_ms: AtomicU64::new(0),
            probes_started: AtomicU32::new(0),
            probes_passed: AtomicU32::new(0),
            round: AtomicU32::new(0),
            slots: (0..n).map(|_| Slot::default()).collect(),
            epoch: Instant::now(),
            gauge,
            transitions,
            upstream,
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The current state.
    pub fn state(&self) -> u8 {
        self.state.load(Ordering::Relaxed)
    }

    /// Asks to send a request. `Err` carries how long until probes are let through.
    pub fn allow(&self) -> Result<Permit, Duration> {
        loop {
            match self.state.load(Ordering::Acquire) {
                CLOSED => return Ok(Permit::Normal),
                OPEN => {
                    let now = self.now_ms();
                    let until = self.open_until_ms.load(Ordering::Acquire);
                    if now < until {
                        return Err(Duration::from_millis(until - now));
                    }
                    if self.state.compare_exchange(OPEN, HALF_OPEN, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                        self.probes_started.store(0, Ordering::Release);
                        self.probes_passed.store(0, Ordering::Release);
                        self.round.fetch_add(1, Ordering::AcqRel);
                        self.changed(HALF_OPEN);
                    }
                }
                _ => {
                    let round = self.round.load(Ordering::Acquire);
                    if self.probes_started.fetch_add(1, Ordering::AcqRel) < self.config.half_open_requests {
                        return Ok(Permit::Probe(round));
                    }
                    self.release_probe_slot();
                    return Err(Duration::from_secs(1));
                }
            }
        }
    }

    /// A probe that ended without an outcome (the client went away, or the request was
    /// refused before reaching the upstream) gives its slot back, so half-open never waits
    /// for a probe that will not report.
    pub fn abandon(&self, permit: Permit) {
        if let Permit::Probe(round) = permit
            && self.is_current(round)
        {
            self.release_probe_slot();
        }
    }

    fn is_current(&self, round: u32) -> bool {
        self.state.load(Ordering::Acquire) == HALF_OPEN && self.round.load(Ordering::Acquire) == round
    }

    /// Gives back one probe slot, never going below zero.
    fn release_probe_slot(&self) {
        let _ = self.probes_started.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    /// Records the outcome of an allowed request.
    pub fn record(&self, permit: Permit, failed: bool) {
        match permit {
            Permit::Probe(round) => {
                if !self.is_current(round) {
                    // A late outcome from an earlier round.
                    return;
                }
                if failed {
                    self.trip(HALF_OPEN);
                } else if self.probes_passed.fetch_add(1, Ordering::AcqRel) + 1 >= self.config.half_open_requests
                    && self.state.compare_exchange(HALF_OPEN, CLOSED, Ordering::AcqRel, Ordering::Acquire).is_ok()
                {
                    // A fresh window: nothing from before the outage counts again.
                    for s in &self.slots {
                        s.requests.store(0, Ordering::Relaxed);
                        s.failures.store(0, Ordering::Relaxed);
                    }
                    self.changed(CLOSED);
                }
            }
            Permit::Normal => {
                let now = self.epoch.elapsed().as_secs() + 1;
                let slot = &self.slots[(now % self.slots.len() as u64) as usize];
                if slot.second.load(Ordering::Relaxed) != now {
                    slot.second.store(now, Ordering::Relaxed);
                    slot.requests.store(0, Ordering::Relaxed);
                    slot.failures.store(0, Ordering::Relaxed);
                }
                slot.requests.fetch_add(1, Ordering::Relaxed);
                if !failed {
                    return;
                }
                slot.failures.fetch_add(1, Ordering::Relaxed);
                let (mut requests, mut failures) = (0u64, 0u64);
                for s in &self.slots {
                    // A slot another thread just moved to a newer second is skipped, not
                    // subtracted below zero.
                    if now
                        .checked_sub(s.second.load(Ordering::Relaxed))
                        .is_some_and(|age| age < self.slots.len() as u64)
                    {
                        requests += u64::from(s.requests.load(Ordering::Relaxed));
                        failures += u64::from(s.failures.load(Ordering::Relaxed));
                    }
                }
                if requests >= u64::from(self.config.min_requests)
                    && failures as f64 >= self.config.error_rate.fraction() * requests as f64
                {
                    self.trip(CLOSED);
                }
            }
        }
    }

    fn trip(&self, from: u8) {
        self.open_until_ms.store(self.now_ms() + self.config.open_for.get().as_millis() as u64, Ordering::Release);
        if self.state.compare_exchange(from, OPEN, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            self.changed(OPEN);
        }
    }

    fn changed(&self, to: u8) {
        self.gauge.set(i64::from(to));
        self.transitions[usize::from(to).min(2)].inc();
        let name = match to {
            CLOSED => "closed",
            OPEN => "open",
            _ => "half_open",
        };
        tracing::warn!(upstream = %self.upstream, state = name, "circuit breaker changed state");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        let config = CircuitBreaker {
            error_rate: portico_config::Percent(50.0),
            min_requests: 10,
            window: portico_config::Duration::from_secs(10),
            open_for: portico_config::Duration::from_secs(5),
            half_open_requests: 2,
            fallback: None,
        };
        Breaker::new(config, Gauge::default(), Default::default(), "u".into())
    }

    #[tokio::test(start_paused = true)]
    async fn goes_through_every_transition() {
        let b = breaker();
        // Closed: errors under min_requests do not trip it.
        for _ in 0..9 {
            b.record(b.allow().unwrap(), true);
        }
        assert_eq!(b.state(), CLOSED);
        b.record(b.allow().unwrap(), true);
        assert_eq!(b.state(), OPEN, "10 requests, 100% errors");
        assert!(b.allow().unwrap_err() <= Duration::from_secs(5));

        // After open_for: half-open, two probes, a third waits.
        tokio::time::advance(Duration::from_secs(5)).await;
        let p1 = b.allow().unwrap();
        assert_eq!((p1, b.state()), (Permit::Probe(1), HALF_OPEN));
        let p2 = b.allow().unwrap();
        assert!(b.allow().is_err());
        // A failing probe opens it again.
        b.record(p1, true);
        assert_eq!(b.state(), OPEN);
        b.record(p2, false);
        assert_eq!(b.state(), OPEN);

        // Both probes passing closes it.
        tokio::time::advance(Duration::from_secs(5)).await;
        let (p1, p2) = (b.allow().unwrap(), b.allow().unwrap());
        b.record(p1, false);
        assert_eq!(b.state(), HALF_OPEN);
        b.record(p2, false);
        assert_eq!(b.state(), CLOSED);
        // And the window starts afresh.
        b.record(b.allow().unwrap(), true);
        assert_eq!(b.state(), CLOSED);
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_probe_frees_its_slot() {
        let b = breaker();
        for _ in 0..10 {
            b.record(b.allow().unwrap(), true);
        }
        tokio::time::advance(Duration::from_secs(5)).await;
        let (p1, p2) = (b.allow().unwrap(), b.allow().unwrap());
        assert!(b.allow().is_err());
        b.abandon(p1);
        let p3 = b.allow().expect("the abandoned probe's slot is free again");
        b.record(p2, false);
        b.record(p3, false);
        assert_eq!(b.state(), CLOSED);
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_probe_from_an_earlier_round_changes_nothing() {
        let b = breaker();
        for _ in 0..10 {
            b.record(b.allow().unwrap(), true);
        }
        tokio::time::advance(Duration::from_secs(5)).await;
        let (old1, old2) = (b.allow().unwrap(), b.allow().unwrap());
        b.record(old1, true); // open again
        tokio::time::advance(Duration::from_secs(5)).await;
        let (p1, p2) = (b.allow().unwrap(), b.allow().unwrap());
        b.abandon(old2); // late, from round 1: must not free a round-2 slot
        assert!(b.allow().is_err(), "still only two probes in round 2");
        b.record(p1, false);
        b.record(p2, false);
        assert_eq!(b.state(), CLOSED);
    }

    #[tokio::test(start_paused = true)]
    async fn a_low_error_rate_keeps_it_closed() {
        let b = breaker();
        for i in 0..100 {
            b.record(b.allow().unwrap(), i % 3 == 0);
        }
        assert_eq!(b.state(), CLOSED, "33% errors is under 50%");
    }
}
