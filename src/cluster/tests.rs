use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use super::*;
use crate::config::Config;

/// A token file, removed when dropped.
struct TokenFile(PathBuf);

impl TokenFile {
    fn new() -> TokenFile {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("tender-token-{}-{n}", std::process::id()));
        std::fs::write(&p, "0123456789abcdef-token\n").unwrap();
        TokenFile(p)
    }

    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TokenFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn config(me: &str, peers: &[&str]) -> (Config, TokenFile) {
    let token = TokenFile::new();
    let peers: Vec<String> = peers.iter().map(|p| format!("{p:?}")).collect();
    let text = format!(
        r#"
cache_dir = "/tmp/unused"
[[registry]]
host = "docker.io"
  [[registry.upstream]]
  url = "https://registry-1.docker.io"
[cluster]
listen = "127.0.0.1:0"
advertise = "{me}"
peers = [{}]
token_file = {:?}
"#,
        peers.join(", "),
        token.path().display().to_string()
    );
    (Config::parse(&text, "test").unwrap(), token)
}

fn members() -> Vec<&'static str> {
    vec![
        "http://10.0.0.1:5051",
        "http://10.0.0.2:5051",
        "http://10.0.0.3:5051",
        "http://10.0.0.4:5051",
    ]
}

fn setup(me: &str) -> (Cluster, Arc<Upstreams>, TokenFile) {
    let (config, token) = config(me, &members());
    let metrics = Arc::new(Metrics::new());
    let cluster = Cluster::new(
        config.cluster.as_ref().unwrap(),
        config.timeouts,
        metrics.clone(),
    )
    .unwrap();
    let ups = Arc::new(Upstreams::new(&config.registries[0], &config, &metrics).unwrap());
    (cluster, ups, token)
}

#[test]
fn a_miss_asks_the_peers_that_outrank_this_node_owner_first() {
    let me = "http://10.0.0.2:5051";
    let (cluster, ups, _t) = setup(me);
    assert_eq!(
        cluster.status().peers.len(),
        3,
        "itself is not its own peer"
    );
    let mut owned = 0;
    for k in 0..400u32 {
        let key = format!("sha256:{k:064x}");
        let ranked = hrw::rank(members(), key.as_bytes(), |m| *m);
        let route = cluster.route(&ups, key.as_bytes());
        let above: Vec<&str> = ranked.iter().take_while(|m| **m != me).copied().collect();
        if above.is_empty() {
            owned += 1;
            assert!(
                Arc::ptr_eq(&route, &ups),
                "the owner walks its own upstreams"
            );
            continue;
        }
        let urls: Vec<&str> = route.clients().iter().map(|c| c.url.as_str()).collect();
        assert_eq!(&urls[..above.len()], &above[..]);
        assert_eq!(&urls[above.len()..], &["https://registry-1.docker.io"]);
        assert!(route.is_peered());
    }
    assert!((60..140).contains(&owned), "about a quarter: {owned}");
}

#[test]
fn membership_changes_keep_the_peers_that_stay() {
    let (cluster, _ups, _t) = setup("http://10.0.0.1:5051");
    let before = cluster.peers();
    let kept = before
        .iter()
        .find(|p| p.url == "http://10.0.0.3:5051")
        .unwrap()
        .clone();
    kept.health.failure();
    cluster
        .set_members(
            [
                "http://10.0.0.3:5051",
                "http://10.0.0.9:5051",
                "http://10.0.0.1:5051",
            ]
            .map(String::from)
            .into(),
        )
        .unwrap();
    let after = cluster.peers();
    let urls: Vec<&str> = after.iter().map(|p| p.url.as_str()).collect();
    assert_eq!(urls, ["http://10.0.0.3:5051", "http://10.0.0.9:5051"]);
    assert!(Arc::ptr_eq(&after[0], &kept), "same pool and breaker");
    assert_eq!(cluster.live_peers(), 1, "the one that failed is down");
}

#[test]
fn only_the_exact_token_is_admitted() {
    let (cluster, _ups, _t) = setup("http://10.0.0.1:5051");
    assert!(cluster.admits(Some(b"Bearer 0123456789abcdef-token")));
    for bad in [
        &b"Bearer 0123456789abcdef-tokeN"[..],
        b"Bearer 0123456789abcdef-token ",
        b"Bearer 0123456789abcdef",
        b"Basic 0123456789abcdef-token",
        b"",
    ] {
        assert!(
            !cluster.admits(Some(bad)),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
    assert!(!cluster.admits(None));
}

#[test]
fn a_short_token_is_refused() {
    let (config, token) = config("http://10.0.0.1:5051", &members());
    std::fs::write(token.path(), "short\n").unwrap();
    let err = Cluster::new(
        config.cluster.as_ref().unwrap(),
        config.timeouts,
        Arc::new(Metrics::new()),
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("fewer than 16"), "{err}");
}
