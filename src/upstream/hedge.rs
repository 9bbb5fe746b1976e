//! Hedged requests: when the upstream a walk is waiting on has not answered
//! within what it usually takes, the same request starts on the next
//! upstream and the first good answer wins (the other is dropped, which
//! cancels it).
//!
//! - The delay is the upstream's recent p95 time to headers, at least
//!   [`FLOOR`] and at most [`CAP`]; [`UNKNOWN`] while it has too few samples.
//! - Hedges are budgeted per registry: each request a walk starts earns a
//!   tenth of a hedge, and a small allowance accrues every second, so a
//!   uniformly slow registry gets at most ~10% extra requests plus a
//!   handful, while a few requests can always hedge.
//! - An upstream that loses to a hedge counts a failure toward its breaker,
//!   so one that keeps losing is skipped like one that fails.
//! - Only a registry's own upstreams hedge, and only to each other: a peer
//!   in front of them (the cluster tier) has its own patience.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::health::Health;

pub const FLOOR: Duration = Duration::from_millis(300);
pub const CAP: Duration = Duration::from_secs(2);
/// The delay before an upstream has enough samples.
pub const UNKNOWN: Duration = Duration::from_millis(500);

/// Hedges a request earns, and that accrue per second.
const PER_REQUEST: f64 = 0.1;
const PER_SECOND: f64 = 0.1;
/// Hedges that can be saved up.
const MAX_SAVED: f64 = 5.0;

/// How long to wait on `health`'s upstream before hedging.
pub fn delay(health: &Health) -> Duration {
    health.p95().map_or(UNKNOWN, |p| p.clamp(FLOOR, CAP))
}

/// A registry's hedge budget: a token bucket.
pub struct Budget {
    state: Mutex<(f64, Instant)>,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            state: Mutex::new((MAX_SAVED, Instant::now())),
        }
    }
}

impl Budget {
    fn with<R>(&self, f: impl FnOnce(&mut f64) -> R) -> R {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let accrued = now.duration_since(s.1).as_secs_f64() * PER_SECOND;
        s.0 = (s.0 + accrued).min(MAX_SAVED);
        s.1 = now;
        f(&mut s.0)
    }

    /// A walk started: it earns a share of a hedge.
    pub fn note_request(&self) {
        self.with(|t| *t = (*t + PER_REQUEST).min(MAX_SAVED));
    }

    /// Takes one hedge, if the budget has one.
    pub fn try_take(&self) -> bool {
        self.with(|t| {
            if *t >= 1.0 {
                *t -= 1.0;
                true
            } else {
                false
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_can_hedge_a_handful_then_ten_percent() {
        let b = Budget::default();
        let taken = (0..20).filter(|_| b.try_take()).count();
        assert_eq!(taken, 5, "the saved-up allowance");
        // 100 requests earn ten hedges (the bucket holds five at a time).
        let mut hedged = 0;
        for _ in 0..100 {
            b.note_request();
            if b.try_take() {
                hedged += 1;
            }
        }
        assert!((9..=11).contains(&hedged), "{hedged}");
    }
}
