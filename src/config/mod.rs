//! Configuration: the TOML file (unknown keys are errors) validated into
//! [`Config`]. Validation reports every problem at once, each naming its key;
//! `tender check-config` prints them, `tender serve` refuses to start on them.

mod raw;
pub mod units;
mod validate;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::oci::ImageRef;

pub use units::{parse_duration, parse_size};

/// The configuration `tender serve` uses when no file is given.
pub const DEFAULT_CONFIG: &str = include_str!("default.toml");

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub metrics_listen: Option<SocketAddr>,
    pub cache_dir: PathBuf,
    pub cache_max_size: u64,
    /// How long a tag's digest is trusted before an upstream HEAD revalidates it.
    pub tag_ttl: Duration,
    /// Free space tender leaves on the cache's file system.
    pub min_free_space: FreeSpace,
    pub timeouts: Timeouts,
    /// TLS for `listen` (cert, key), and for `metrics_listen`.
    pub tls: Option<TlsFiles>,
    pub metrics_tls: Option<TlsFiles>,
    /// A full re-hash of the store this often (None: off), at most `scrub_rate` bytes/s.
    pub scrub_interval: Option<Duration>,
    pub scrub_rate: u64,
    /// Connection limits: in all, and per client IP.
    pub max_connections: usize,
    pub max_connections_per_client: usize,
    /// Per-upstream circuit breaker.
    pub breaker: BreakerPolicy,
    pub registries: Vec<Registry>,
    /// Images to keep warm, re-pulled through tender on a schedule.
    pub prefetch: Option<Prefetch>,
    /// Peering with the other nodes' tenders (absent: none).
    pub cluster: Option<Cluster>,
}

/// The cluster tier: this node's peer listener and how it finds its peers.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// Serves other nodes only (the node IP in a cluster).
    pub listen: SocketAddr,
    /// This node as its peers reach it, normalised (`http://10.0.3.7:5051`):
    /// its identity in the rendezvous ranking.
    pub advertise: String,
    /// Static peers, normalised URLs.
    pub peers: Vec<String>,
    /// A headless Service name and the peer port (`name:port`): its A
    /// records are the peers, re-resolved every `dns_interval`.
    pub peers_dns: Option<(String, u16)>,
    /// The shared secret every peer request carries as a Bearer token.
    pub token_file: PathBuf,
    /// How long a peer may take to answer (headers) before the next one is asked.
    pub peer_timeout: Duration,
    pub dns_interval: Duration,
}

/// A peer's URL in the one form every node computes the same way:
/// `scheme://host:port`, lowercase, IPv6 in brackets, the port explicit.
pub fn normalize_peer_url(url: &str) -> Option<String> {
    let u = reqwest::Url::parse(url.trim()).ok()?;
    if !matches!(u.scheme(), "http" | "https")
        || !matches!(u.path(), "" | "/")
        || u.query().is_some()
        || !u.username().is_empty()
    {
        return None;
    }
    // host_str keeps IPv6 in brackets.
    let host = u.host_str()?.to_ascii_lowercase();
    Some(format!(
        "{}://{host}:{}",
        u.scheme(),
        u.port_or_known_default()?
    ))
}

/// How much of the cache's file system tender leaves free for the node.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FreeSpace {
    /// Percent of the file system's size.
    Percent(f64),
    Bytes(u64),
}

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

#[derive(Debug, Clone)]
pub struct Prefetch {
    pub images: Vec<ImageRef>,
    /// Prefetched like `images`, and never evicted by the LRU.
    pub pinned: Vec<ImageRef>,
    /// The most disk pinned content may take (a pin beyond it is refused).
    pub pinned_max_size: u64,
    pub interval: Duration,
}

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// TCP (and proxy) connect to an upstream.
    pub connect: Duration,
    /// From sending a request to receiving the response headers.
    pub header: Duration,
    /// Longest gap between two body chunks before a transfer counts as stalled.
    pub stall: Duration,
    /// A blob body that makes no progress this long is resumed on another
    /// usable upstream (the watchdog); `stall` applies when there is none.
    pub progress: Duration,
}

/// When an upstream's circuit breaker opens: after `failures` consecutive
/// failures, for `cooldown` (doubling while probes fail).
#[derive(Debug, Clone, Copy)]
pub struct BreakerPolicy {
    pub failures: u32,
    pub cooldown: Duration,
    /// The cool-down doubles after each failed probe, up to this.
    pub max_cooldown: Duration,
}

#[derive(Debug, Clone)]
pub struct Registry {
    /// Matched against the `ns` query parameter, e.g. `docker.io`.
    pub host: String,
    /// Serves requests that carry no `ns` (Docker's `registry-mirrors`).
    pub default: bool,
    /// Check every client with an upstream before it gets cached content
    /// (KEP-2535 AlwaysVerify): with its credentials if it sends some,
    /// anonymously if not. One the upstream refuses gets a 401 challenge, on
    /// which containerd retries with the pod's pull-secret credentials.
    pub verify_client_credentials: bool,
    pub upstreams: Vec<Upstream>,
}

#[derive(Debug, Clone)]
pub struct Upstream {
    /// Base URL without a trailing slash, e.g. `https://registry-1.docker.io`.
    pub url: String,
    /// Prepended to repository names, e.g. a Harbor proxy-cache project.
    pub repository_prefix: Option<String>,
    pub proxy: Option<String>,
    /// Extra PEM CA bundle trusted for this upstream.
    pub ca_file: Option<PathBuf>,
    /// File holding `username:password` for this upstream (a mounted Secret).
    pub credentials_file: Option<PathBuf>,
    /// Whether a client's own credentials may be sent here to check them
    /// (`verify_client_credentials`). Default: only to the registry's origin,
    /// the party that issued them.
    pub forward_client_credentials: bool,
}

/// One thing wrong with a config, at the key it concerns
/// (`registry[1].upstream[0].url`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Not TOML, or a key tender does not know (toml's message names it).
    #[error("{origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("{origin}: {} problem(s):{}", problems.len(), list(problems))]
    Invalid {
        origin: String,
        problems: Vec<Problem>,
    },
}

fn list(problems: &[Problem]) -> String {
    problems.iter().map(|p| format!("\n  - {p}")).collect()
}

impl Config {
    /// Loads `path`, or the embedded default when `path` is `None`.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_path_buf(),
                    source,
                })?;
                Config::parse(&text, &p.display().to_string())
            }
            None => Config::parse(DEFAULT_CONFIG, "embedded default config"),
        }
    }

    /// Parses and validates TOML text; `origin` names it in error messages.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let raw: raw::RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let mut problems = validate::Problems::default();
        let cfg = validate::validate(raw, &mut problems);
        if problems.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigError::Invalid {
                origin: origin.to_string(),
                problems: problems.into_vec(),
            })
        }
    }

    pub fn default_registry(&self) -> Option<&Registry> {
        self.registries.iter().find(|r| r.default)
    }

    /// The URL at which this node reaches its own API listener.
    pub fn local_url(&self) -> String {
        listen_url(self.listen, self.tls.is_some())
    }
}

/// The URL a client on this node uses to reach a listener bound to `addr`:
/// an unspecified address (`0.0.0.0`, `[::]`) is reached on loopback, IPv6
/// in brackets, `https` when the listener has TLS.
pub fn listen_url(addr: SocketAddr, tls: bool) -> String {
    let mut addr = addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let scheme = if tls { "https" } else { "http" };
    // SocketAddr's Display already brackets IPv6.
    format!("{scheme}://{addr}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_valid() {
        let c = Config::load(None).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:5050");
        let hosts: Vec<_> = c.registries.iter().map(|r| r.host.as_str()).collect();
        assert_eq!(
            hosts,
            [
                "docker.io",
                "registry.k8s.io",
                "gcr.io",
                "quay.io",
                "ghcr.io"
            ]
        );
        assert_eq!(c.default_registry().unwrap().host, "docker.io");
    }

    #[test]
    fn reports_every_problem_at_once_with_its_key() {
        let err = Config::parse(
            r#"
            listen = "nope"
            cache_max_size = "12 parsecs"
            tag_ttl = "soon"
            [[registry]]
            host = "Docker.io/evil"
            default = true
            [[registry]]
            host = "quay.io"
            default = true
              [[registry.upstream]]
              url = "ftp://quay.io"
            "#,
            "test.toml",
        )
        .unwrap_err()
        .to_string();
        for needle in [
            "listen:",
            "cache_max_size:",
            "tag_ttl:",
            "registry[0].host:",
            "registry[0].upstream:",
            "registry[1].upstream[0].url:",
            "registry.default:",
        ] {
            assert!(err.contains(needle), "missing {needle} in:\n{err}");
        }
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = Config::parse("listne = \"127.0.0.1:1\"", "t")
            .unwrap_err()
            .to_string();
        assert!(err.contains("listne"), "{err}");
    }

    #[test]
    fn client_credentials_go_to_the_origin_unless_configured_otherwise() {
        let c = Config::parse(
            r#"
            [[registry]]
            host = "docker.io"
            verify_client_credentials = true
              [[registry.upstream]]
              url = "https://harbor.corp.example"
              [[registry.upstream]]
              url = "https://registry-1.docker.io/"
            [[registry]]
            host = "127.0.0.1:5000"
              [[registry.upstream]]
              url = "http://127.0.0.1:5000"
              [[registry.upstream]]
              url = "http://127.0.0.1:5001"
              forward_client_credentials = true
            "#,
            "t",
        )
        .unwrap();
        let fwd = |r: usize| -> Vec<bool> {
            c.registries[r]
                .upstreams
                .iter()
                .map(|u| u.forward_client_credentials)
                .collect()
        };
        assert_eq!(fwd(0), [false, true]);
        assert_eq!(fwd(1), [true, true]);
        let err = Config::parse(
            "[[registry]]\nhost = \"quay.io\"\nverify_client_credentials = true\n  [[registry.upstream]]\n  url = \"https://harbor.corp.example\"\n",
            "t",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("registry[0].verify_client_credentials"),
            "{err}"
        );
    }

    #[test]
    fn a_cluster_section_is_checked_whole() {
        let token = std::env::temp_dir().join(format!("tender-cfg-token-{}", std::process::id()));
        std::fs::write(&token, "0123456789abcdef\n").unwrap();
        let ok = format!(
            r#"
            [cluster]
            listen = "127.0.1.1:5051"
            advertise = "HTTP://127.0.1.1:5051/"
            peers = ["http://127.0.1.2:5051", "http://[FD00::2]:5051"]
            peers_dns = "tender-peers.kube-system.svc.cluster.local:5051"
            token_file = {token:?}
            [[registry]]
            host = "docker.io"
              [[registry.upstream]]
              url = "https://registry-1.docker.io"
            "#
        );
        let c = Config::parse(&ok, "t").unwrap().cluster.unwrap();
        assert_eq!(c.advertise, "http://127.0.1.1:5051");
        assert_eq!(c.peers, ["http://127.0.1.2:5051", "http://[fd00::2]:5051"]);
        assert_eq!(
            c.peers_dns,
            Some(("tender-peers.kube-system.svc.cluster.local".into(), 5051))
        );
        assert_eq!(c.peer_timeout, Duration::from_secs(2));
        let bad = r#"
            [cluster]
            listen = "nowhere"
            advertise = "http://10.0.0.1:5051/v2"
            peers = ["ftp://x:1"]
            peers_dns = "no-port"
            token_file = "/nonexistent/token"
            peer_timeout = "0s"
            [[registry]]
            host = "docker.io"
              [[registry.upstream]]
              url = "https://registry-1.docker.io"
            "#;
        let err = Config::parse(bad, "t").unwrap_err().to_string();
        for key in [
            "cluster.listen:",
            "cluster.advertise:",
            "cluster.peers[0]:",
            "cluster.peers_dns:",
            "cluster.token_file:",
            "cluster.peer_timeout:",
        ] {
            assert!(err.contains(key), "missing {key} in:\n{err}");
        }
        std::fs::write(&token, "short").unwrap();
        let err = Config::parse(&ok, "t").unwrap_err().to_string();
        assert!(err.contains("fewer than 16 characters"), "{err}");
        let _ = std::fs::remove_file(&token);
    }

    #[test]
    fn listen_addresses_become_local_urls() {
        let url = |a: &str, tls| listen_url(a.parse().unwrap(), tls);
        assert_eq!(url("127.0.0.1:5050", false), "http://127.0.0.1:5050");
        assert_eq!(url("0.0.0.0:5050", true), "https://127.0.0.1:5050");
        assert_eq!(url("[::]:5050", false), "http://[::1]:5050");
        assert_eq!(url("10.0.0.7:5051", false), "http://10.0.0.7:5051");
    }
}
