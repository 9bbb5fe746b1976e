//! Connection limits, in all and per client IP, so that one misbehaving
//! remote client cannot take every connection (slowloris is bounded
//! separately by the header read timeout). Loopback clients are exempt from
//! the per-client limit: on the node every local process (containerd,
//! kubelet, a stray script) is 127.0.0.1, and one of them must not lock
//! containerd out; they share the total limit. The per-client limit is what
//! protects listeners reachable from other hosts (metrics, peers).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

pub struct ConnLimits {
    max_total: usize,
    max_per_client: usize,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
    rejected: prometheus::IntCounter,
}

/// One admitted connection; dropping it frees its place.
pub struct ConnPermit {
    limits: Arc<ConnLimits>,
    ip: IpAddr,
}

impl ConnLimits {
    pub fn new(
        max_total: usize,
        max_per_client: usize,
        rejected: prometheus::IntCounter,
    ) -> Arc<ConnLimits> {
        Arc::new(ConnLimits {
            max_total,
            max_per_client,
            open: Mutex::new((0, HashMap::new())),
            rejected,
        })
    }

    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<ConnPermit> {
        let mut g = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let per = g.1.get(&ip).copied().unwrap_or(0);
        if g.0 >= self.max_total || (per >= self.max_per_client && !ip.is_loopback()) {
            self.rejected.inc();
            return None;
        }
        g.0 += 1;
        g.1.insert(ip, per + 1);
        Some(ConnPermit {
            limits: self.clone(),
            ip,
        })
    }
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        let mut g = self.limits.open.lock().unwrap_or_else(|p| p.into_inner());
        g.0 = g.0.saturating_sub(1);
        if let Some(n) = g.1.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                g.1.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, per: usize) -> Arc<ConnLimits> {
        ConnLimits::new(total, per, prometheus::IntCounter::new("r", "r").unwrap())
    }

    #[test]
    fn a_remote_client_gets_its_share_and_no_more() {
        let l = limits(10, 2);
        let ip: IpAddr = "10.0.0.9".parse().unwrap();
        let (a, b) = (l.admit(ip), l.admit(ip));
        assert!(a.is_some() && b.is_some());
        assert!(l.admit(ip).is_none(), "third from one remote IP");
        assert!(l.admit("10.0.0.8".parse().unwrap()).is_some(), "another IP");
        drop(a);
        assert!(l.admit(ip).is_some(), "a freed place is reused");
    }

    #[test]
    fn local_clients_share_only_the_total() {
        let l = limits(4, 1);
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let held: Vec<_> = (0..4).map(|_| l.admit(lo)).collect();
        assert!(
            held.iter().all(Option::is_some),
            "loopback is not held to the per-client limit"
        );
        assert!(l.admit(lo).is_none(), "the total still applies");
    }
}
