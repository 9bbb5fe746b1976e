//! Per-upstream health: a circuit breaker and 429 back-off.
//!
//! After `failures` consecutive failures (connect errors, timeouts, 5xx), or
//! as many bad bodies (broken, stalled, wrong digest) without a verified one
//! between, an upstream is skipped for a cool-down; then one request
//! probes it (half-open): success closes the breaker, failure reopens it with
//! a doubled cool-down (capped). A 429 skips the upstream for its
//! `Retry-After` (bounded), so containerd's immediate 429 retries never turn
//! into upstream traffic. Skipping is what makes a dead upstream cost
//! nothing instead of a timeout per request.
//!
//! It also keeps the upstream's recent times to response headers, from
//! which the walk derives when to hedge (`super::hedge`).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus::IntGauge;

use crate::config::BreakerPolicy;

const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(10);
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

#[derive(Default)]
struct State {
    consecutive: u32,
    /// Bodies that broke, stalled or failed verification since the last
    /// verified one. Apart from `consecutive`: the same response's headers
    /// already counted as a success, which must not wipe this out.
    bad_bodies: u32,
    open_until: Option<Instant>,
    cooldown: Duration,
    /// When the half-open probe was let through (one at a time; a probe that
    /// never reports back expires after a cool-down).
    probe_started: Option<Instant>,
    throttled_until: Option<Instant>,
}

/// Latency samples kept per upstream, and how many a percentile needs.
const SAMPLES: usize = 64;
const MIN_SAMPLES: usize = 8;

/// The last [`SAMPLES`] times to response headers, oldest overwritten.
#[derive(Default)]
struct Samples {
    ring: Vec<Duration>,
    next: usize,
}

pub struct Health {
    policy: BreakerPolicy,
    state: Mutex<State>,
    samples: Mutex<Samples>,
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
            samples: Mutex::default(),
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
        if s.bad_bodies < self.policy.failures {
            s.cooldown = self.policy.cooldown;
        }
        self.open_gauge.set(0);
    }

    /// A body from here broke, stalled or failed verification. After
    /// `failures` of them with no verified body between, the breaker opens
    /// (headers that look fine do not reset this count); each time it is let
    /// back in and fails again, the cool-down doubles.
    pub fn body_failure(&self) {
        let now = Instant::now();
        let mut s = self.lock();
        s.bad_bodies = s.bad_bodies.saturating_add(1);
        if s.bad_bodies < self.policy.failures || s.open_until.is_some() {
            return;
        }
        if s.bad_bodies > self.policy.failures {
            s.cooldown = (s.cooldown * 2).min(self.policy.max_cooldown);
        }
        s.open_until = Some(now + s.cooldown);
        self.open_gauge.set(1);
        tracing::warn!(upstream = %self.name, bad_bodies = s.bad_bodies, cooldown = ?s.cooldown,
            "upstream keeps sending broken or wrong bodies; circuit open, skipping it");
    }

    /// A body from here arrived whole and verified.
    pub fn body_ok(&self) {
        self.lock().bad_bodies = 0;
    }

    /// Records how long a request took to get its response headers.
    pub fn record_latency(&self, d: Duration) {
        let mut s = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        if s.ring.len() < SAMPLES {
            s.ring.push(d);
        } else {
            let i = s.next;
            s.ring[i] = d;
        }
        s.next = (s.next + 1) % SAMPLES;
    }

    /// The 95th percentile of the recent times to headers, once there are
    /// enough samples to say.
    pub fn p95(&self) -> Option<Duration> {
        let s = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        if s.ring.len() < MIN_SAMPLES {
            return None;
        }
        let mut v = s.ring.clone();
        v.sort_unstable();
        let i = ((v.len() * 95).div_ceil(100)).saturating_sub(1);
        Some(v[i])
    }

    /// Whether a request could go here now, without taking the half-open
    /// probe (unlike [`Health::allow`], which a caller uses to send one).
    pub fn looks_usable(&self) -> bool {
        let now = Instant::now();
        let s = self.lock();
        s.throttled_until.is_none_or(|t| now >= t) && s.open_until.is_none_or(|t| now >= t)
    }

    /// Whether the breaker is open now (the upstream is being skipped, or
    /// is down to one probe at a time).
    pub fn is_open(&self) -> bool {
        self.lock().open_until.is_some()
    }

    /// The upstream failed: refused, timed out, 5xx, or lost a hedge.
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
    fn bad_bodies_open_it_although_their_headers_were_fine() {
        let h = health(3, 200);
        for _ in 0..3 {
            assert!(h.allow());
            h.success(); // headers
            h.body_failure(); // then a wrong digest
        }
        assert!(!h.allow(), "open after 3 bad bodies");
        std::thread::sleep(Duration::from_millis(250));
        assert!(h.allow(), "one probe");
        h.success();
        assert!(h.allow(), "its headers closed the breaker");
        h.body_failure();
        assert!(!h.allow(), "its body opened it again");
        std::thread::sleep(Duration::from_millis(250));
        assert!(!h.allow(), "for a doubled cool-down (400 ms)");
        std::thread::sleep(Duration::from_millis(200));
        assert!(h.allow());
        h.success();
        h.body_ok();
        h.body_failure();
        assert!(h.allow(), "a verified body resets the count");
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
    fn p95_of_recent_times_to_headers() {
        let h = health(5, 1000);
        for ms in 1..=7 {
            h.record_latency(Duration::from_millis(ms));
        }
        assert_eq!(h.p95(), None, "too few samples to say");
        for ms in 8..=100 {
            h.record_latency(Duration::from_millis(ms));
        }
        // The last 64: 37..=100 ms.
        assert_eq!(h.p95(), Some(Duration::from_millis(97)));
    }

    #[test]
    fn looking_does_not_take_the_probe() {
        let h = health(1, 30);
        h.failure();
        assert!(!h.looks_usable());
        std::thread::sleep(Duration::from_millis(40));
        assert!(h.looks_usable() && h.looks_usable());
        assert!(h.allow(), "the probe is still there to take");
        assert!(!h.allow());
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
