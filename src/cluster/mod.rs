//! The cluster tier: each blob crosses the WAN once per cluster.
//!
//! The other nodes' tenders are this node's peers, found through a static
//! list and/or the A records of a headless Service (`membership`). The owner
//! of a key (a digest for blobs and manifests by digest; registry,
//! repository and tag for tags) is the member with the highest rendezvous
//! hash of (member URL, key) (`hrw`): every node agrees without talking, and
//! a member that comes or goes moves only its own keys.
//!
//! A miss from one of this node's clients walks the peers that outrank this
//! node for its key (the owner first), then the registry's own upstreams
//! ([`Cluster::route`]): a peer is one more upstream, with the same breaker,
//! resume and verification. A request on the peer listener is always
//! answered as owner, from the cache or the node's own upstreams, and never
//! forwarded again, so no request goes round in circles.

pub mod hrw;
mod membership;
mod peer;

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};

use reqwest::header::HeaderValue;

use crate::config::{self, Timeouts};
use crate::metrics::Metrics;
use crate::upstream::Upstreams;
pub use membership::run as run_membership;
use peer::{Peer, PeerSettings};

/// The header in which a node names itself (its `advertise` URL) on every
/// request to a peer.
pub const PEER_HEADER: &str = "tender-peer";

/// Members known at once; a DNS answer with more is cut (and said so).
pub const MAX_MEMBERS: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster.token_file {path}: {why}")]
    Token { path: String, why: String },
    #[error("peer {url}: {why}")]
    Peer { url: String, why: String },
}

/// A peer as the status output shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PeerStatus {
    pub url: String,
    /// `up`, or `down` while its breaker is open.
    pub state: &'static str,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ClusterStatus {
    /// This node, as its peers know it.
    pub advertise: String,
    pub peers: Vec<PeerStatus>,
}

pub struct Cluster {
    me: String,
    /// The `Authorization` value every peer request must carry.
    expected: Vec<u8>,
    settings: PeerSettings,
    config: config::Cluster,
    /// The other members, by URL; replaced whole when membership changes.
    peers: RwLock<Arc<Vec<Arc<Peer>>>>,
}

impl Cluster {
    /// Reads the token and starts with the static peers (DNS peers join
    /// once [`run_membership`] resolves them).
    pub fn new(
        config: &config::Cluster,
        timeouts: Timeouts,
        metrics: Arc<Metrics>,
    ) -> Result<Cluster, ClusterError> {
        let token_err = |why: String| ClusterError::Token {
            path: config.token_file.display().to_string(),
            why,
        };
        let raw =
            std::fs::read_to_string(&config.token_file).map_err(|e| token_err(e.to_string()))?;
        let token = raw.trim();
        if token.len() < 16 {
            return Err(token_err("fewer than 16 characters: not a secret".into()));
        }
        let header = format!("Bearer {token}");
        let mut value = HeaderValue::from_str(&header)
            .map_err(|_| token_err("not a valid HTTP header value".into()))?;
        value.set_sensitive(true);
        // Once a peer has shown it is alive, it gets an upstream's patience
        // plus its own (it may be waiting on its own upstream), and a body
        // may pause for as long as the owner needs to notice a stalled
        // upstream and resume from the next.
        let peer_timeouts = Timeouts {
            connect: config.peer_timeout,
            header: timeouts.header + config.peer_timeout,
            stall: timeouts.stall + config.peer_timeout,
            progress: timeouts.stall + config.peer_timeout,
        };
        let cluster = Cluster {
            me: config.advertise.clone(),
            expected: header.into_bytes(),
            settings: PeerSettings {
                me: config.advertise.clone(),
                token: value,
                patience: config.peer_timeout,
                timeouts: peer_timeouts,
                metrics,
            },
            config: config.clone(),
            peers: RwLock::default(),
        };
        cluster.set_members(config.peers.iter().cloned().collect())?;
        Ok(cluster)
    }

    pub fn config(&self) -> &config::Cluster {
        &self.config
    }

    /// This node's URL: its name in the ranking.
    pub fn advertise(&self) -> &str {
        &self.me
    }

    fn peers(&self) -> Arc<Vec<Arc<Peer>>> {
        self.peers.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the members with `urls` (this node's own URL among them is
    /// ignored), keeping the connection pools and breakers of those that
    /// stay. Logs who came and who went.
    pub fn set_members(&self, mut urls: BTreeSet<String>) -> Result<(), ClusterError> {
        urls.remove(&self.me);
        let old = self.peers();
        let mut next = Vec::with_capacity(urls.len());
        for url in urls.iter().take(MAX_MEMBERS) {
            match old.iter().find(|p| &p.url == url) {
                Some(p) => next.push(p.clone()),
                None => {
                    let p = Peer::new(url, &self.settings).map_err(|e| ClusterError::Peer {
                        url: url.clone(),
                        why: e.to_string(),
                    })?;
                    tracing::info!(peer = %url, "peer joined");
                    next.push(Arc::new(p));
                }
            }
        }
        if urls.len() > MAX_MEMBERS {
            tracing::warn!(
                members = urls.len(),
                kept = MAX_MEMBERS,
                "too many peers; ignoring the rest"
            );
        }
        for p in old.iter().filter(|p| !urls.contains(&p.url)) {
            tracing::info!(peer = %p.url, "peer left");
        }
        *self.peers.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
        Ok(())
    }

    /// The upstreams a miss for `key` walks: the peers that outrank this
    /// node for it (the owner first), then `ups`' own. `ups` itself when
    /// this node is the owner.
    pub fn route(&self, ups: &Arc<Upstreams>, key: &[u8]) -> Arc<Upstreams> {
        let peers = self.peers();
        if peers.is_empty() {
            return ups.clone();
        }
        let me = self.me.as_str();
        let ranked = hrw::rank(
            peers.iter().map(|p| Some(p.as_ref())).chain([None]),
            key,
            |m| m.map_or(me, |p| p.url.as_str()),
        );
        let above: Vec<_> = ranked
            .into_iter()
            .map_while(|m| m.map(|p| p.client(&ups.host, &self.settings)))
            .collect();
        if above.is_empty() {
            return ups.clone();
        }
        Arc::new(ups.behind_peers(above))
    }

    /// Whether a request on the peer listener carries the cluster's token
    /// (compared in constant time).
    pub fn admits(&self, authorization: Option<&[u8]>) -> bool {
        let Some(got) = authorization else {
            return false;
        };
        let want = &self.expected;
        got.len() == want.len() && got.iter().zip(want).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }

    /// Peers whose breaker is closed.
    pub fn live_peers(&self) -> usize {
        self.peers().iter().filter(|p| p.is_live()).count()
    }

    pub fn status(&self) -> ClusterStatus {
        ClusterStatus {
            advertise: self.me.clone(),
            peers: self
                .peers()
                .iter()
                .map(|p| PeerStatus {
                    url: p.url.clone(),
                    state: if p.is_live() { "up" } else { "down" },
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests;
