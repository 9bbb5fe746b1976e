//! Connection limits, in all and per client IP, so that one misbehaving
//! client cannot take every connection (slowloris is bounded separately by
//! the header read timeout).

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
        if g.0 >= self.max_total || per >= self.max_per_client {
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
