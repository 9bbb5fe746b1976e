//! A tender cluster for tests and benches: configs (a shared token, each
//! node's `[cluster]` table), the owner of a key as every node computes
//! it, nodes as `tender` processes on 127.0.1.k, and a registry behind a
//! shaped WAN link.

use std::path::{Path, PathBuf};

use crate::fake::registry_toml;
use crate::image::{make_oci_layout, skopeo_push, TestImage};
use crate::netns::Netns;
use crate::process::{free_port, TempDir};
use crate::registry::Registry;
use crate::tender::TenderProcess;

/// The token every node of a test cluster shares.
pub const TOKEN: &str = "test-cluster-token-0123456789";

/// Writes the shared token file under `dir`.
pub fn token_file(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let p = dir.join("peer-token");
    std::fs::write(&p, format!("{TOKEN}\n")).unwrap();
    p
}

/// A node's `[cluster]` table: its peer listener on `listen`, known to its
/// peers as `http://<listen>`, with static `peers` and/or `peers_dns`;
/// `extra` lines go in the table too (`peer_timeout = "1s"`).
pub fn cluster_toml(
    listen: &str,
    peers: &[String],
    peers_dns: Option<&str>,
    token: &Path,
    extra: &str,
) -> String {
    let peers: Vec<String> = peers.iter().map(|p| format!("{p:?}")).collect();
    let mut t = format!(
        "[cluster]\nlisten = \"{listen}\"\nadvertise = \"http://{listen}\"\npeers = [{}]\ntoken_file = \"{}\"\n",
        peers.join(", "),
        token.display()
    );
    if let Some(d) = peers_dns {
        t.push_str(&format!("peers_dns = \"{d}\"\n"));
    }
    t.push_str(extra);
    t.push('\n');
    t
}

/// The members ranked for `key` (a digest, or `registry/repo:tag`), owner
/// first: what every node of the cluster computes.
pub fn ranked<'a>(members: &'a [String], key: &str) -> Vec<&'a str> {
    tender::cluster::hrw::rank(members.iter().map(String::as_str), key.as_bytes(), |m| *m)
}

/// The real registry in a network namespace behind a link shaped to `mbit`
/// Mbit/s (the WAN every node shares), holding `library/app:v1`.
pub struct Wan {
    pub reg: Registry,
    pub img: TestImage,
    // Dropped last: the registry runs inside it.
    _ns: Netns,
}

impl Wan {
    /// `layers`: the image's layer sizes (random, from `seed`).
    pub fn start(tmp: &TempDir, mbit: u32, layers: &[u64], seed: u64) -> Wan {
        let ns = Netns::create();
        ns.shape(mbit);
        let reg = Registry::start_in(&tmp.subdir("registry"), &ns);
        let img = make_oci_layout(&tmp.subdir("layout"), "v1", layers, seed);
        skopeo_push(&img, &format!("{}/library/app:v1", reg.host()));
        reg.clear_log();
        Wan { reg, img, _ns: ns }
    }

    /// Body bytes the registry sent since its log was last cleared.
    pub fn sent(&self) -> u64 {
        self.reg.requests_detailed().iter().map(|r| r.bytes).sum()
    }

    /// The config's and the layers' digests.
    pub fn blob_digests(&self) -> Vec<String> {
        let mut v = vec![self.img.config_digest.clone()];
        v.extend(self.img.layer_digests.iter().cloned());
        v
    }

    /// Manifest requests (any method) since the log was last cleared.
    pub fn manifest_requests(&self) -> usize {
        self.reg
            .requests()
            .iter()
            .filter(|(_, uri)| uri.contains("/manifests/"))
            .count()
    }
}

/// Nodes as `tender` processes, each serving docker.io from one upstream.
pub struct Nodes {
    pub procs: Vec<TenderProcess>,
    /// Each node's peer URL (peer listener on 127.0.1.k), in `procs` order;
    /// empty for standalone nodes.
    pub urls: Vec<String>,
    /// Every member's URL: the nodes' and the extra peers'.
    pub members: Vec<String>,
}

impl Nodes {
    /// `n` nodes peering with each other and with `extra_peers` (which are
    /// not nodes); `extra` lines go in each `[cluster]` table.
    pub fn peered(
        tmp: &TempDir,
        n: usize,
        upstream: &str,
        extra_peers: &[String],
        extra: &str,
    ) -> Nodes {
        let token = token_file(tmp.path());
        let listens: Vec<String> = (1..=n)
            .map(|k| format!("127.0.1.{k}:{}", free_port()))
            .collect();
        let urls: Vec<String> = listens.iter().map(|l| format!("http://{l}")).collect();
        let mut members = urls.clone();
        members.extend(extra_peers.iter().cloned());
        let procs = listens
            .iter()
            .enumerate()
            .map(|(i, l)| {
                TenderProcess::start(
                    &tmp.subdir(&format!("node{i}")),
                    &registry_toml("docker.io", true, &[upstream]),
                    &cluster_toml(l, &members, None, &token, extra),
                )
            })
            .collect();
        Nodes {
            procs,
            urls,
            members,
        }
    }

    /// `n` nodes without the cluster tier: each on its own.
    pub fn standalone(tmp: &TempDir, n: usize, upstream: &str) -> Nodes {
        let procs = (0..n)
            .map(|i| {
                TenderProcess::start(
                    &tmp.subdir(&format!("node{i}")),
                    &registry_toml("docker.io", true, &[upstream]),
                    "",
                )
            })
            .collect();
        Nodes {
            procs,
            urls: Vec::new(),
            members: Vec::new(),
        }
    }

    /// Every node's log, for a failure message.
    pub fn logs(&self) -> String {
        self.procs
            .iter()
            .map(|n| format!("--- node {}\n{}", n.base(), n.log()))
            .collect()
    }

    /// The sum of one metric sample over the nodes still running.
    pub fn metric_sum(&self, sample: &str) -> f64 {
        self.procs.iter().map(|n| n.metric(sample)).sum()
    }
}
