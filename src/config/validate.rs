//! Raw TOML values → a validated [`Config`], collecting every problem.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::raw::{RawCluster, RawConfig, RawPrefetch, RawUpstream};
use super::units::{parse_duration, parse_free_space, parse_size};
use super::{
    normalize_peer_url, BreakerPolicy, Cluster, Config, FreeSpace, Prefetch, Problem, Registry,
    Timeouts, TlsFiles, Upstream,
};
use crate::oci::name::{origin_url, valid_registry_host, valid_repository};
use crate::oci::ImageRef;

#[derive(Default)]
pub struct Problems(Vec<Problem>);

impl Problems {
    pub fn push(&mut self, key: impl Into<String>, message: impl ToString) {
        self.0.push(Problem {
            key: key.into(),
            message: message.to_string(),
        });
    }

    /// Whether a problem was already reported for `key`.
    fn has(&self, key: &str) -> bool {
        self.0.iter().any(|p| p.key == key)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn into_vec(self) -> Vec<Problem> {
        self.0
    }
}

pub fn validate(raw: RawConfig, problems: &mut Problems) -> Config {
    let mut addr = |key: &str, v: &str| -> Option<SocketAddr> {
        match v.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                problems.push(key, format!("{v:?} is not an IP:port socket address"));
                None
            }
        }
    };
    let listen = addr("listen", raw.listen.as_deref().unwrap_or("127.0.0.1:5050"))
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 5050)));
    let metrics_listen = raw
        .metrics_listen
        .as_deref()
        .and_then(|v| addr("metrics_listen", v));

    let cache_dir = match raw.cache_dir {
        Some(d) if d.trim().is_empty() => {
            problems.push("cache_dir", "must not be empty");
            PathBuf::new()
        }
        Some(d) => PathBuf::from(d),
        None => default_cache_dir(),
    };

    let cache_max_size = match parse_size(raw.cache_max_size.as_deref().unwrap_or("10GiB")) {
        Ok(0) => {
            problems.push("cache_max_size", "must be greater than zero");
            0
        }
        Ok(n) => n,
        Err(e) => {
            problems.push("cache_max_size", e);
            0
        }
    };

    let mut dur = |key: &str, v: Option<&str>, default: &str| -> Duration {
        match parse_duration(v.unwrap_or(default)) {
            Ok(d) => d,
            Err(e) => {
                problems.push(key, e);
                Duration::ZERO
            }
        }
    };
    let tag_ttl = dur("tag_ttl", raw.tag_ttl.as_deref(), "60s");
    let breaker_cooldown = dur("breaker_cooldown", raw.breaker_cooldown.as_deref(), "30s");
    let scrub = dur("scrub_interval", raw.scrub_interval.as_deref(), "24h");
    let timeouts = Timeouts {
        connect: dur("connect_timeout", raw.connect_timeout.as_deref(), "5s"),
        header: dur("header_timeout", raw.header_timeout.as_deref(), "5s"),
        stall: dur("stall_timeout", raw.stall_timeout.as_deref(), "15s"),
        progress: dur("progress_timeout", raw.progress_timeout.as_deref(), "1s"),
    };
    for (key, d) in [
        ("connect_timeout", timeouts.connect),
        ("header_timeout", timeouts.header),
        ("stall_timeout", timeouts.stall),
        ("progress_timeout", timeouts.progress),
        ("breaker_cooldown", breaker_cooldown),
    ] {
        if d.is_zero() && !problems.has(key) {
            problems.push(key, "must be greater than zero");
        }
    }

    let min_free_space = match parse_free_space(raw.min_free_space.as_deref().unwrap_or("10%")) {
        Ok(f) => f,
        Err(e) => {
            problems.push("min_free_space", e);
            FreeSpace::Bytes(0)
        }
    };
    let scrub_interval = (!scrub.is_zero()).then_some(scrub);
    let scrub_rate = match parse_size(raw.scrub_rate.as_deref().unwrap_or("64MiB")) {
        Ok(0) => {
            problems.push(
                "scrub_rate",
                "must be greater than zero (use scrub_interval = \"0s\" to turn scrubbing off)",
            );
            1
        }
        Ok(n) => n,
        Err(e) => {
            problems.push("scrub_rate", e);
            1
        }
    };
    let tls = tls_pair("tls", raw.tls_cert_file, raw.tls_key_file, problems);
    let metrics_tls = tls_pair(
        "metrics_tls",
        raw.metrics_tls_cert_file,
        raw.metrics_tls_key_file,
        problems,
    );
    let max_connections = raw.max_connections.unwrap_or(4096);
    let max_connections_per_client = raw.max_connections_per_client.unwrap_or(1024);
    if max_connections == 0 || max_connections_per_client == 0 {
        problems.push(
            "max_connections, max_connections_per_client",
            "must be at least 1",
        );
    }
    let breaker_failures = raw.breaker_failures.unwrap_or(5);
    if breaker_failures == 0 {
        problems.push("breaker_failures", "must be at least 1");
    }

    let registries = registries(raw.registry, problems);
    let cluster = raw.cluster.map(|c| cluster(c, problems));
    let prefetch = raw
        .prefetch
        .map(|p| prefetch(p, cache_max_size, &registries, problems));

    Config {
        listen,
        metrics_listen,
        cache_dir,
        cache_max_size,
        tag_ttl,
        min_free_space,
        timeouts,
        tls,
        metrics_tls,
        scrub_interval,
        scrub_rate,
        max_connections: max_connections.max(1),
        max_connections_per_client: max_connections_per_client.max(1),
        breaker: BreakerPolicy {
            failures: breaker_failures.max(1),
            cooldown: breaker_cooldown,
            max_cooldown: breaker_cooldown.max(Duration::from_secs(300)),
        },
        registries,
        prefetch,
        cluster,
    }
}

/// `value` with each `${NAME}` replaced by that environment variable; an
/// IPv6 address is put in brackets (it is followed by a port). A variable
/// that is not set is a problem.
fn expand_env(key: &str, value: &str, problems: &mut Problems) -> String {
    expand_with(value, |name| std::env::var(name).ok()).unwrap_or_else(|why| {
        problems.push(key, why);
        value.to_string()
    })
}

fn expand_with(value: &str, var: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = value;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("{value:?}: unclosed ${{"))?;
        let name = &after[..end];
        let valid = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(format!(
                "{value:?}: {name:?} is not an environment variable name"
            ));
        }
        let v = var(name).ok_or_else(|| {
            format!("{value:?} names the environment variable {name}, which is not set")
        })?;
        match v.parse::<std::net::Ipv6Addr>() {
            Ok(v6) => out.push_str(&format!("[{v6}]")),
            Err(_) => out.push_str(&v),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
#[test]
fn environment_variables_expand_and_ipv6_gets_brackets() {
    let env = |n: &str| match n {
        "NODE_IP" => Some("10.0.3.7".to_string()),
        "NODE_IP6" => Some("fd00::7".to_string()),
        _ => None,
    };
    assert_eq!(
        expand_with("http://${NODE_IP}:5051", env).unwrap(),
        "http://10.0.3.7:5051"
    );
    assert_eq!(
        expand_with("${NODE_IP6}:5051", env).unwrap(),
        "[fd00::7]:5051"
    );
    assert_eq!(expand_with("0.0.0.0:5051", env).unwrap(), "0.0.0.0:5051");
    assert!(expand_with("${UNSET}:1", env)
        .unwrap_err()
        .contains("UNSET, which is not set"));
    assert!(expand_with("${NODE_IP:1", env).is_err());
    assert!(expand_with("${1X}", env).is_err());
}

fn cluster(c: RawCluster, problems: &mut Problems) -> Cluster {
    // One config serves every node of a DaemonSet: the node's own address
    // comes from the environment (the downward API's status.hostIP).
    let listen_text = expand_env("cluster.listen", &c.listen, problems);
    let advertise_text = expand_env("cluster.advertise", &c.advertise, problems);
    let listen = listen_text.parse().unwrap_or_else(|_| {
        problems.push(
            "cluster.listen",
            format!("{listen_text:?} is not an IP:port socket address"),
        );
        SocketAddr::from(([0, 0, 0, 0], 5051))
    });
    let mut url = |key: &str, v: &str| -> String {
        normalize_peer_url(v).unwrap_or_else(|| {
            problems.push(
                key,
                format!("{v:?} is not a peer URL (http://host:port, no path)"),
            );
            String::new()
        })
    };
    let advertise = url("cluster.advertise", &advertise_text);
    let peers: Vec<String> = c
        .peers
        .iter()
        .enumerate()
        .map(|(i, p)| url(&format!("cluster.peers[{i}]"), p))
        .collect();
    let peers_dns = c.peers_dns.as_deref().and_then(|v| {
        let parsed = v
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.to_ascii_lowercase(), p.parse::<u16>().ok()?)))
            .filter(|(h, p)| *p != 0 && valid_registry_host(h));
        if parsed.is_none() {
            problems.push(
                "cluster.peers_dns",
                format!("{v:?} is not a DNS name and port (tender-peers.kube-system.svc.cluster.local:5051)"),
            );
        }
        parsed
    });
    if peers.is_empty() && peers_dns.is_none() {
        problems.push("cluster", "needs peers, peers_dns, or both");
    }
    match std::fs::read_to_string(&c.token_file) {
        Ok(t) if t.trim().len() >= 16 => {}
        Ok(_) => problems.push(
            "cluster.token_file",
            format!(
                "{:?} holds fewer than 16 characters: not a secret",
                c.token_file
            ),
        ),
        Err(e) => problems.push("cluster.token_file", format!("{:?}: {e}", c.token_file)),
    }
    let mut dur =
        |key: &str, v: Option<&str>, default: &str| match parse_duration(v.unwrap_or(default)) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                problems.push(key, "must be greater than zero");
                Duration::from_secs(1)
            }
            Err(e) => {
                problems.push(key, e);
                Duration::from_secs(1)
            }
        };
    let peer_timeout = dur("cluster.peer_timeout", c.peer_timeout.as_deref(), "2s");
    let dns_interval = dur("cluster.dns_interval", c.dns_interval.as_deref(), "10s");
    Cluster {
        listen,
        advertise,
        peers,
        peers_dns,
        token_file: PathBuf::from(c.token_file),
        peer_timeout,
        dns_interval,
    }
}

fn tls_pair(
    what: &str,
    cert: Option<String>,
    key: Option<String>,
    problems: &mut Problems,
) -> Option<TlsFiles> {
    match (cert, key) {
        (None, None) => None,
        (Some(c), Some(k)) => {
            for (name, f) in [("cert_file", &c), ("key_file", &k)] {
                if !Path::new(f).is_file() {
                    problems.push(
                        format!("{what}_{name}"),
                        format!("{f:?} is not a readable file"),
                    );
                }
            }
            Some(TlsFiles {
                cert_file: c.into(),
                key_file: k.into(),
            })
        }
        _ => {
            problems.push(
                format!("{what}_cert_file and {what}_key_file"),
                "give both or neither",
            );
            None
        }
    }
}

fn registries(raw: Vec<super::raw::RawRegistry>, problems: &mut Problems) -> Vec<Registry> {
    if raw.is_empty() {
        problems.push("registry", "at least one [[registry]] is required");
    }
    let mut seen = HashSet::new();
    let mut defaults = Vec::new();
    let mut registries = Vec::new();
    for (i, r) in raw.into_iter().enumerate() {
        let key = format!("registry[{i}]");
        let host = r.host.trim().to_ascii_lowercase();
        if !valid_registry_host(&host) {
            problems.push(
                format!("{key}.host"),
                format!("{:?} is not a registry host (hostname[:port])", r.host),
            );
        } else if !seen.insert(host.clone()) {
            problems.push(
                format!("{key}.host"),
                format!("{host:?} is configured twice"),
            );
        }
        if r.default {
            defaults.push(host.clone());
        }
        if r.upstream.is_empty() {
            problems.push(
                format!("{key}.upstream"),
                format!("{host:?} needs at least one [[registry.upstream]]"),
            );
        }
        let upstreams: Vec<Upstream> = r
            .upstream
            .into_iter()
            .enumerate()
            .map(|(j, u)| upstream(&format!("{key}.upstream[{j}]"), &host, u, problems))
            .collect();
        if r.verify_client_credentials
            && !upstreams.is_empty()
            && !upstreams.iter().any(|u| u.forward_client_credentials)
        {
            problems.push(
                format!("{key}.verify_client_credentials"),
                format!(
                    "no upstream of {host:?} may receive client credentials to check them: \
                     the origin ({}) is not among them; set forward_client_credentials = true \
                     on an upstream that accepts the same credentials",
                    origin_url(&host)
                ),
            );
        }
        registries.push(Registry {
            host,
            default: r.default,
            verify_client_credentials: r.verify_client_credentials,
            upstreams,
        });
    }
    if defaults.len() > 1 {
        problems.push(
            "registry.default",
            format!(
                "only one registry may be the default, found {}",
                defaults.join(", ")
            ),
        );
    }
    registries
}

fn upstream(key: &str, registry: &str, u: RawUpstream, problems: &mut Problems) -> Upstream {
    let url = u.url.trim().trim_end_matches('/').to_string();
    let ukey = format!("{key}.url");
    match reqwest::Url::parse(&url) {
        Ok(parsed) => {
            if !matches!(parsed.scheme(), "http" | "https") {
                problems.push(ukey, format!("{url:?} must be http:// or https://"));
            } else if parsed.host_str().is_none() {
                problems.push(ukey, format!("{url:?} has no host"));
            } else if parsed.path() != "/" && !parsed.path().is_empty() {
                problems.push(
                    ukey,
                    format!("{url:?} must not have a path (use repository_prefix)"),
                );
            } else if parsed.query().is_some() || !parsed.username().is_empty() {
                problems.push(
                    ukey,
                    format!("{url:?} must not carry a query or credentials (use credentials_file)"),
                );
            }
        }
        Err(e) => problems.push(ukey, format!("{url:?} is not a URL: {e}")),
    }
    let repository_prefix = u.repository_prefix.map(|p| p.trim_matches('/').to_string());
    if let Some(p) = &repository_prefix {
        if !valid_repository(p) {
            problems.push(
                format!("{key}.repository_prefix"),
                format!("{p:?} is not a valid repository path"),
            );
        }
    }
    if let Some(p) = &u.proxy {
        let pkey = format!("{key}.proxy");
        match reqwest::Url::parse(p) {
            Ok(pu) if matches!(pu.scheme(), "http" | "https" | "socks5") => {}
            Ok(_) => problems.push(pkey, format!("{p:?} must be an http:// or https:// URL")),
            Err(e) => problems.push(pkey, format!("{p:?} is not a URL: {e}")),
        }
    }
    for (name, file) in [
        ("ca_file", &u.ca_file),
        ("credentials_file", &u.credentials_file),
    ] {
        if let Some(f) = file {
            if !Path::new(f).is_file() {
                problems.push(
                    format!("{key}.{name}"),
                    format!("{f:?} is not a readable file"),
                );
            }
        }
    }
    let is_origin = endpoint(&url).is_some_and(|e| Some(e) == endpoint(&origin_url(registry)));
    Upstream {
        forward_client_credentials: u.forward_client_credentials.unwrap_or(is_origin),
        url,
        repository_prefix,
        proxy: u.proxy,
        ca_file: u.ca_file.map(PathBuf::from),
        credentials_file: u.credentials_file.map(PathBuf::from),
    }
}

/// `host:port` of a URL, the port made explicit.
fn endpoint(url: &str) -> Option<(String, u16)> {
    let u = reqwest::Url::parse(url).ok()?;
    Some((
        u.host_str()?.to_ascii_lowercase(),
        u.port_or_known_default()?,
    ))
}

fn prefetch(
    p: RawPrefetch,
    cache_max_size: u64,
    registries: &[Registry],
    problems: &mut Problems,
) -> Prefetch {
    let mut refs = |list: &[String], key: &str| -> Vec<ImageRef> {
        let mut out = Vec::new();
        for (i, img) in list.iter().enumerate() {
            let key = format!("prefetch.{key}[{i}]");
            match img.parse::<ImageRef>() {
                Ok(r) => {
                    if !registries.iter().any(|x| x.host == r.registry) {
                        problems.push(key, format!("registry {:?} is not configured", r.registry));
                    }
                    out.push(r);
                }
                Err(e) => problems.push(key, e.to_string()),
            }
        }
        out
    };
    let images = refs(&p.images, "images");
    let pinned = refs(&p.pinned, "pinned");
    let interval = match parse_duration(p.interval.as_deref().unwrap_or("6h")) {
        Ok(d) if d >= Duration::from_secs(60) => d,
        Ok(_) => {
            problems.push("prefetch.interval", "must be at least 1m");
            Duration::from_secs(3600)
        }
        Err(e) => {
            problems.push("prefetch.interval", e);
            Duration::from_secs(3600)
        }
    };
    // Pinned content is a share of the cache: the LRU must keep room for
    // everything else.
    let pinned_max_size = match p.pinned_max_size.as_deref().map(parse_size) {
        None => cache_max_size / 4,
        Some(Ok(n)) if n <= cache_max_size => n,
        Some(Ok(n)) => {
            problems.push(
                "prefetch.pinned_max_size",
                format!("{n} bytes is more than cache_max_size ({cache_max_size})"),
            );
            cache_max_size / 4
        }
        Some(Err(e)) => {
            problems.push("prefetch.pinned_max_size", e);
            cache_max_size / 4
        }
    };
    Prefetch {
        images,
        pinned,
        pinned_max_size,
        interval,
    }
}

fn default_cache_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("tender");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(h).join(".cache").join("tender");
    }
    std::env::temp_dir().join("tender-cache")
}
