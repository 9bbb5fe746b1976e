//! Configs for the nodes of a tender cluster (the cluster tier): a shared
//! token, each node's `[cluster]` table, and the owner of a key as every
//! node computes it.

use std::path::{Path, PathBuf};

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
