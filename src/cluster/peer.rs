//! One other node: its URL, one connection pool and one breaker shared by
//! every registry's client for it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::header::HeaderValue;

use crate::config::{BreakerPolicy, Timeouts};
use crate::metrics::Metrics;
use crate::upstream::health::Health;
use crate::upstream::UpstreamClient;

/// A peer that failed is skipped for this long, then probed by one request;
/// the wait doubles after each failed probe, up to `MAX_COOLDOWN`. One
/// failure is enough: a dead peer costs one short timeout, not one per
/// request.
const COOLDOWN: Duration = Duration::from_secs(5);
const MAX_COOLDOWN: Duration = Duration::from_secs(60);

/// What every peer client shares.
pub struct PeerSettings {
    /// This node's URL, sent in [`super::PEER_HEADER`].
    pub me: String,
    pub token: HeaderValue,
    /// Connect timeout, and the time a peer has to answer or show it is alive.
    pub patience: Duration,
    /// Header and stall timeouts once a peer has shown it is alive.
    pub timeouts: Timeouts,
    pub metrics: Arc<Metrics>,
}

pub struct Peer {
    pub url: String,
    http: reqwest::Client,
    pub health: Arc<Health>,
    /// One client per registry asked of this peer (bounded by the
    /// configured registries).
    clients: Mutex<HashMap<String, Arc<UpstreamClient>>>,
}

impl Peer {
    pub fn new(url: &str, settings: &PeerSettings) -> Result<Peer, reqwest::Error> {
        // Peers are addressed by IP on the node network: no proxy, no
        // redirects (a peer answers, it does not send us elsewhere).
        let mut headers = reqwest::header::HeaderMap::new();
        if let Ok(me) = HeaderValue::from_str(&settings.me) {
            headers.insert(super::PEER_HEADER, me);
        }
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .no_proxy()
            .connect_timeout(settings.patience)
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .user_agent(concat!("tender-peer/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let policy = BreakerPolicy {
            failures: 1,
            cooldown: COOLDOWN,
            max_cooldown: MAX_COOLDOWN,
        };
        // The breaker's state is in the status output and `tender_peers`.
        let unregistered = prometheus::IntGauge::new("peer_open", "-")
            .unwrap_or_else(|_| unreachable!("a valid metric name"));
        Ok(Peer {
            url: url.to_string(),
            http,
            health: Arc::new(Health::new(policy, unregistered, format!("peer {url}"))),
            clients: Mutex::default(),
        })
    }

    /// This peer's client for `registry`'s content.
    pub fn client(&self, registry: &str, settings: &PeerSettings) -> Arc<UpstreamClient> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        clients
            .entry(registry.to_string())
            .or_insert_with(|| {
                Arc::new(UpstreamClient::peer(
                    &self.url,
                    registry,
                    self.http.clone(),
                    self.health.clone(),
                    settings.token.clone(),
                    settings.timeouts,
                    settings.patience,
                    settings.metrics.clone(),
                ))
            })
            .clone()
    }

    /// Whether requests go to this peer now (its breaker is closed).
    pub fn is_live(&self) -> bool {
        !self.health.is_open()
    }
}
