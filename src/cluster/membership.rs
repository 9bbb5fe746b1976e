//! Who the peers are: the static `peers`, plus the A (and AAAA) records of
//! `peers_dns` (a headless Service), re-resolved every `dns_interval`. A
//! failed lookup keeps the last answer: a DNS hiccup must not make a node
//! forget the cluster (a peer that is really gone is skipped by its
//! breaker meanwhile).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;

use super::Cluster;

/// Keeps the members current until the task is aborted. Without
/// `peers_dns` the static list set at start is all there is.
pub async fn run(cluster: Arc<Cluster>) {
    let Some((name, port)) = cluster.config().peers_dns.clone() else {
        return;
    };
    let statics: BTreeSet<String> = cluster.config().peers.iter().cloned().collect();
    let interval = cluster.config().dns_interval;
    let mut last: Option<BTreeSet<String>> = None;
    loop {
        match resolve(&name, port).await {
            Ok(found) => {
                if last.as_ref() != Some(&found) {
                    tracing::info!(name = %name, peers = found.len(), "peers from DNS");
                    let all = statics.union(&found).cloned().collect();
                    if let Err(e) = cluster.set_members(all) {
                        tracing::warn!(error = %e, "cannot use the peers from DNS");
                    }
                    last = Some(found);
                }
            }
            Err(e) => {
                tracing::warn!(name = %name, error = %e, "cannot resolve peers; keeping the last known");
            }
        }
        tokio::time::sleep(interval).await;
    }
}

/// The peer URLs `name` resolves to, on `port` (plain HTTP: the peer
/// listener's scheme).
async fn resolve(name: &str, port: u16) -> std::io::Result<BTreeSet<String>> {
    let addrs = tokio::net::lookup_host((name, port)).await?;
    Ok(addrs.map(|a| peer_url(&a)).collect())
}

fn peer_url(addr: &SocketAddr) -> String {
    // SocketAddr's Display brackets IPv6: the normalised form config uses.
    format!("http://{addr}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::normalize_peer_url;

    #[test]
    fn dns_peers_are_named_like_configured_ones() {
        for a in ["10.0.3.7:5051", "[fd00::7]:5051"] {
            let addr: SocketAddr = a.parse().unwrap();
            let url = peer_url(&addr);
            assert_eq!(normalize_peer_url(&url).as_deref(), Some(url.as_str()));
        }
    }
}
