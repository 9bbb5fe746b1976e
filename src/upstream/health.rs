//! Per-upstream health: a circuit breaker and 429 back-off.
//!
//! After `failures` consecutive failures (connect errors, timeouts, 5xx,
//! broken bodies) an upstream is skipped for a cool-down; then one request
//! probes it (half-open): success closes the breaker, failure reopens it with
//! a doubled cool-down (capped). A 429 skips the upstream for its
//! `Retry-After` (bounded), so containerd's immediate 429 retries never turn
//! into upstream traffic. Skipping is what makes a dead upstream cost
//! nothing instead of a timeout per request.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus::IntGauge;

use crate::config::BreakerPolicy;

const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(10);
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

#[derive(Default)]
struct State {
    consecutive: u32,
    open_until: Option<Instant>,
    cooldown: Duration,
    /// When the half-open probe was let through (one at a time; a probe that
    /// never reports back expires after a cool-down).
    probe_started: Option<Instant>,
    throttled_until: Option<Instant>,
}

pub struct Health {
    policy: BreakerPolicy,
    state: Mutex<State>,
    open_gauge: IntGauge,
    name: String,
}

impl Health {
    pub fn new(policy: BreakerPolicy, open_gauge: IntGauge, name: String) -> Health {
        Health {
            policy,
            state: Mutex::new(State {
                cooldown: policy.cooldown,
                ..State::default()
            }),
            open_gauge,
            name,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a request may go to this upstream now.
    pub fn allow(&self) -> bool {
        let now = Instant::now();
        let mut s = self.lock();
        if s.throttled_until.is_some_and(|t| now < t) {
            return false;
        }
        match s.open_until {
            None => true,
            Some(t) if now < t => false,
            Some(_) => {
                let probe_free = s
                    .probe_started
                    .is_none_or(|p| now.duration_since(p) > s.cooldown);
                if probe_free {
                    s.probe_started = Some(now);
                }
                probe_free
            }
        }
    }

    /// The upstream answered (any status that shows it is alive: 2xx, 3xx, 4xx but 429).
    pub fn success(&self) {
        let mut s = self.lock();
        if s.open_until.is_some() {
            tracing::info!(upstream = %self.name, "upstream recovered; circuit closed");
        }
        s.consecutive = 0;
        s.open_until = None;
        s.probe_started = None;
        s.cooldown = self.policy.cooldown;
        self.open_gauge.set(0);
    }

    /// Whether the breaker is open now (the upstream is being skipped, or
    /// is down to one probe at a time).
    pub fn is_open(&self) -> bool {
        self.lock().open_until.is_some()
    }

    /// The upstream failed: refused, timed out, 5xx, or broke a body.
    pub fn failure(&self) {
        let now = Instant::now();
        let mut s = self.lock();
        s.consecutive = s.consecutive.saturating_add(1);
        if s.probe_started.take().is_some() && s.open_until.is_some() {
            s.cooldown = (s.cooldown * 2).min(self.policy.max_cooldown);
            s.open_until = Some(now + s.cooldown);
            tracing::warn!(upstream = %self.name, cooldown = ?s.cooldown, "probe failed; circuit stays open");
        } else if s.open_until.is_none() && s.consecutive >= self.policy.failures {
            s.open_until = Some(now + s.cooldown);
            self.open_gauge.set(1);
            tracing::warn!(upstream = %self.name, failures = s.consecutive, cooldown = ?s.cooldown,
                "upstream keeps failing; circuit open, skipping it");
        }
    }

    /// The upstream answered 429: skip it for `retry_after` (bounded).
    pub fn throttled(&self, retry_after: Option<Duration>) {
        let wait = retry_after
            .unwrap_or(DEFAULT_RETRY_AFTER)
            .min(MAX_RETRY_AFTER);
        self.lock().throttled_until = Some(Instant::now() + wait);
        tracing::warn!(upstream = %self.name, wait = ?wait, "upstream rate-limits us (429); skipping it meanwhile");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(failures: u32, cooldown_ms: u64) -> Health {
        let g = IntGauge::new("g", "g").unwrap();
        Health::new(
            BreakerPolicy {
                failures,
                cooldown: Duration::from_millis(cooldown_ms),
                max_cooldown: Duration::from_secs(300),
            },
            g,
            "u".into(),
        )
    }

    #[test]
    fn opens_after_consecutive_failures_and_probes_once_after_the_cooldown() {
        let h = health(3, 50);
        for _ in 0..3 {
            assert!(h.allow());
            h.failure();
        }
        assert!(!h.allow(), "open");
        std::thread::sleep(Duration::from_millis(60));
        assert!(h.allow(), "one probe");
        assert!(!h.allow(), "only one probe at a time");
        h.failure();
        assert!(!h.allow(), "reopened");
        std::thread::sleep(Duration::from_millis(60));
        assert!(!h.allow(), "the cool-down doubled");
        std::thread::sleep(Duration::from_millis(50));
        assert!(h.allow());
        h.success();
        assert!(h.allow() && h.allow(), "closed");
    }

    #[test]
    fn successes_reset_the_count() {
        let h = health(2, 1000);
        h.failure();
        h.success();
        h.failure();
        assert!(h.allow());
    }

    #[test]
    fn a_429_skips_the_upstream_for_retry_after() {
        let h = health(5, 1000);
        h.throttled(Some(Duration::from_millis(50)));
        assert!(!h.allow());
        std::thread::sleep(Duration::from_millis(60));
        assert!(h.allow());
    }
}
