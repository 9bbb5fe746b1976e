//! Configuration: raw TOML (unknown keys are errors) validated into [`Config`].
//! Validation reports every problem at once, each naming its key.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The configuration `tender serve` uses when no file is given.
pub const DEFAULT_CONFIG: &str = include_str!("default.toml");

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub metrics_listen: Option<SocketAddr>,
    pub cache_dir: PathBuf,
    pub cache_max_size: u64,
    pub tag_ttl: Duration,
    /// Free space tender leaves on the cache's file system.
    pub min_free_space: crate::cache::store::FreeSpace,
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
    pub breaker: crate::upstream::health::BreakerPolicy,
    pub registries: Vec<Registry>,
    /// Images to keep warm, re-pulled through tender on a schedule.
    pub prefetch: Option<Prefetch>,
}

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

#[derive(Debug, Clone)]
pub struct Prefetch {
    pub images: Vec<crate::prefetch::ImageRef>,
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
}

#[derive(Debug, Clone)]
pub struct Registry {
    /// Matched against the `ns` query parameter, e.g. `docker.io`.
    pub host: String,
    /// Serves requests that carry no `ns` (Docker's `registry-mirrors`).
    pub default: bool,
    /// When a client presents credentials, check upstream with them that it
    /// may read the content before serving it from the cache (KEP-2535
    /// AlwaysVerify). Clients without credentials get the node's trust.
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
}

#[derive(Debug)]
pub enum ConfigError {
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    Parse {
        origin: String,
        message: String,
    },
    Invalid {
        origin: String,
        problems: Vec<String>,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read { path, source } => {
                write!(f, "cannot read config file {}: {source}", path.display())
            }
            ConfigError::Parse { origin, message } => write!(f, "{origin}: {message}"),
            ConfigError::Invalid { origin, problems } => {
                write!(f, "{origin}: {} problem(s):", problems.len())?;
                for p in problems {
                    write!(f, "\n  - {p}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ConfigError {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<String>,
    metrics_listen: Option<String>,
    cache_dir: Option<String>,
    cache_max_size: Option<String>,
    tag_ttl: Option<String>,
    min_free_space: Option<String>,
    connect_timeout: Option<String>,
    header_timeout: Option<String>,
    stall_timeout: Option<String>,
    breaker_failures: Option<u32>,
    breaker_cooldown: Option<String>,
    tls_cert_file: Option<String>,
    tls_key_file: Option<String>,
    metrics_tls_cert_file: Option<String>,
    metrics_tls_key_file: Option<String>,
    scrub_interval: Option<String>,
    scrub_rate: Option<String>,
    max_connections: Option<usize>,
    max_connections_per_client: Option<usize>,
    #[serde(default)]
    registry: Vec<RawRegistry>,
    prefetch: Option<RawPrefetch>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrefetch {
    images: Vec<String>,
    interval: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegistry {
    host: String,
    #[serde(default)]
    default: bool,
    #[serde(default)]
    verify_client_credentials: bool,
    #[serde(default)]
    upstream: Vec<RawUpstream>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    url: String,
    repository_prefix: Option<String>,
    proxy: Option<String>,
    ca_file: Option<String>,
    credentials_file: Option<String>,
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
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let mut problems = Vec::new();
        let cfg = validate(raw, &mut problems);
        if problems.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigError::Invalid {
                origin: origin.to_string(),
                problems,
            })
        }
    }

    pub fn default_registry(&self) -> Option<&Registry> {
        self.registries.iter().find(|r| r.default)
    }
}

fn validate(raw: RawConfig, problems: &mut Vec<String>) -> Config {
    let mut addr = |key: &str, v: &str| -> Option<SocketAddr> {
        match v.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                problems.push(format!("{key}: {v:?} is not an IP:port socket address"));
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
            problems.push("cache_dir: must not be empty".into());
            PathBuf::new()
        }
        Some(d) => PathBuf::from(d),
        None => default_cache_dir(),
    };

    let cache_max_size = match parse_size(raw.cache_max_size.as_deref().unwrap_or("10GiB")) {
        Ok(0) => {
            problems.push("cache_max_size: must be greater than zero".into());
            0
        }
        Ok(n) => n,
        Err(e) => {
            problems.push(format!("cache_max_size: {e}"));
            0
        }
    };

    let mut dur = |key: &str, v: Option<&str>, default: &str| -> Duration {
        match parse_duration(v.unwrap_or(default)) {
            Ok(d) => d,
            Err(e) => {
                problems.push(format!("{key}: {e}"));
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
    };
    for (key, d) in [
        ("connect_timeout", timeouts.connect),
        ("header_timeout", timeouts.header),
        ("stall_timeout", timeouts.stall),
    ] {
        if d.is_zero() && !problems.iter().any(|p| p.starts_with(key)) {
            problems.push(format!("{key}: must be greater than zero"));
        }
    }

    let min_free_space = match parse_free_space(raw.min_free_space.as_deref().unwrap_or("10%")) {
        Ok(f) => f,
        Err(e) => {
            problems.push(format!("min_free_space: {e}"));
            crate::cache::store::FreeSpace::Bytes(0)
        }
    };
    let scrub_interval = (!scrub.is_zero()).then_some(scrub);
    let scrub_rate = match parse_size(raw.scrub_rate.as_deref().unwrap_or("64MiB")) {
        Ok(0) => {
            problems.push("scrub_rate: must be greater than zero (use scrub_interval = \"0s\" to turn scrubbing off)".into());
            1
        }
        Ok(n) => n,
        Err(e) => {
            problems.push(format!("scrub_rate: {e}"));
            1
        }
    };
    let mut tls_pair =
        |what: &str, cert: Option<String>, key: Option<String>| -> Option<TlsFiles> {
            match (cert, key) {
                (None, None) => None,
                (Some(c), Some(k)) => {
                    for (name, f) in [("cert_file", &c), ("key_file", &k)] {
                        if !Path::new(f).is_file() {
                            problems.push(format!("{what}_{name}: {f:?} is not a readable file"));
                        }
                    }
                    Some(TlsFiles {
                        cert_file: c.into(),
                        key_file: k.into(),
                    })
                }
                _ => {
                    problems.push(format!(
                        "{what}_cert_file and {what}_key_file: give both or neither"
                    ));
                    None
                }
            }
        };
    let tls = tls_pair("tls", raw.tls_cert_file, raw.tls_key_file);
    let metrics_tls = tls_pair(
        "metrics_tls",
        raw.metrics_tls_cert_file,
        raw.metrics_tls_key_file,
    );
    let max_connections = raw.max_connections.unwrap_or(4096);
    let max_connections_per_client = raw.max_connections_per_client.unwrap_or(1024);
    if max_connections == 0 || max_connections_per_client == 0 {
        problems.push("max_connections, max_connections_per_client: must be at least 1".into());
    }
    let breaker_failures = raw.breaker_failures.unwrap_or(5);
    if breaker_failures == 0 {
        problems.push("breaker_failures: must be at least 1".into());
    }
    if breaker_cooldown.is_zero() && !problems.iter().any(|p| p.starts_with("breaker_cooldown")) {
        problems.push("breaker_cooldown: must be greater than zero".into());
    }
    if raw.registry.is_empty() {
        problems.push("registry: at least one [[registry]] is required".into());
    }
    let mut seen = HashSet::new();
    let mut defaults = Vec::new();
    let mut registries = Vec::new();
    for (i, r) in raw.registry.into_iter().enumerate() {
        let key = format!("registry[{i}]");
        let host = r.host.trim().to_ascii_lowercase();
        if !valid_registry_host(&host) {
            problems.push(format!(
                "{key}.host: {:?} is not a registry host (hostname[:port])",
                r.host
            ));
        } else if !seen.insert(host.clone()) {
            problems.push(format!("{key}.host: {host:?} is configured twice"));
        }
        if r.default {
            defaults.push(host.clone());
        }
        if r.upstream.is_empty() {
            problems.push(format!(
                "{key}.upstream: {host:?} needs at least one [[registry.upstream]]"
            ));
        }
        let mut upstreams = Vec::new();
        for (j, u) in r.upstream.into_iter().enumerate() {
            let ukey = format!("{key}.upstream[{j}]");
            upstreams.push(validate_upstream(&ukey, u, problems));
        }
        registries.push(Registry {
            host,
            default: r.default,
            verify_client_credentials: r.verify_client_credentials,
            upstreams,
        });
    }
    if defaults.len() > 1 {
        problems.push(format!(
            "registry.default: only one registry may be the default, found {}",
            defaults.join(", ")
        ));
    }

    let prefetch = raw.prefetch.map(|p| {
        let mut images = Vec::new();
        for (i, img) in p.images.iter().enumerate() {
            match crate::prefetch::parse_ref(img) {
                Ok(r) => {
                    if !registries.iter().any(|x: &Registry| x.host == r.registry) {
                        problems.push(format!(
                            "prefetch.images[{i}]: registry {:?} is not configured",
                            r.registry
                        ));
                    }
                    images.push(r);
                }
                Err(e) => problems.push(format!("prefetch.images[{i}]: {e}")),
            }
        }
        let interval = match parse_duration(p.interval.as_deref().unwrap_or("6h")) {
            Ok(d) if d >= Duration::from_secs(60) => d,
            Ok(_) => {
                problems.push("prefetch.interval: must be at least 1m".into());
                Duration::from_secs(3600)
            }
            Err(e) => {
                problems.push(format!("prefetch.interval: {e}"));
                Duration::from_secs(3600)
            }
        };
        Prefetch { images, interval }
    });

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
        breaker: crate::upstream::health::BreakerPolicy {
            failures: breaker_failures.max(1),
            cooldown: breaker_cooldown,
        },
        registries,
        prefetch,
    }
}

/// `"10%"` of the file system, or a size such as `"5GiB"`.
fn parse_free_space(s: &str) -> Result<crate::cache::store::FreeSpace, String> {
    use crate::cache::store::FreeSpace;
    match s.trim().strip_suffix('%') {
        Some(p) => match p.trim().parse::<f64>() {
            Ok(v) if (0.0..=90.0).contains(&v) => Ok(FreeSpace::Percent(v)),
            _ => Err(format!(
                "{s:?} must be a percentage from 0% to 90%, or a size"
            )),
        },
        None => parse_size(s).map(FreeSpace::Bytes),
    }
}

fn validate_upstream(key: &str, u: RawUpstream, problems: &mut Vec<String>) -> Upstream {
    let url = u.url.trim().trim_end_matches('/').to_string();
    match reqwest::Url::parse(&url) {
        Ok(parsed) => {
            if !matches!(parsed.scheme(), "http" | "https") {
                problems.push(format!("{key}.url: {url:?} must be http:// or https://"));
            } else if parsed.host_str().is_none() {
                problems.push(format!("{key}.url: {url:?} has no host"));
            } else if parsed.path() != "/" && !parsed.path().is_empty() {
                problems.push(format!(
                    "{key}.url: {url:?} must not have a path (use repository_prefix)"
                ));
            } else if parsed.query().is_some() || !parsed.username().is_empty() {
                problems.push(format!(
                    "{key}.url: {url:?} must not carry a query or credentials (use credentials_file)"
                ));
            }
        }
        Err(e) => problems.push(format!("{key}.url: {url:?} is not a URL: {e}")),
    }
    let repository_prefix = u.repository_prefix.map(|p| p.trim_matches('/').to_string());
    if let Some(p) = &repository_prefix {
        if !crate::api::path::valid_repository(p) {
            problems.push(format!(
                "{key}.repository_prefix: {p:?} is not a valid repository path"
            ));
        }
    }
    if let Some(p) = &u.proxy {
        match reqwest::Url::parse(p) {
            Ok(pu) if matches!(pu.scheme(), "http" | "https" | "socks5") => {}
            Ok(_) => problems.push(format!(
                "{key}.proxy: {p:?} must be an http:// or https:// URL"
            )),
            Err(e) => problems.push(format!("{key}.proxy: {p:?} is not a URL: {e}")),
        }
    }
    for (name, file) in [
        ("ca_file", &u.ca_file),
        ("credentials_file", &u.credentials_file),
    ] {
        if let Some(f) = file {
            if !Path::new(f).is_file() {
                problems.push(format!("{key}.{name}: {f:?} is not a readable file"));
            }
        }
    }
    Upstream {
        url,
        repository_prefix,
        proxy: u.proxy,
        ca_file: u.ca_file.map(PathBuf::from),
        credentials_file: u.credentials_file.map(PathBuf::from),
    }
}

/// `hostname[:port]` as containerd puts it in `ns`: lowercase DNS labels or an
/// IPv4 address, optionally with a port.
pub fn valid_registry_host(host: &str) -> bool {
    let (name, port) = match host.rsplit_once(':') {
        Some((n, p)) => (n, Some(p)),
        None => (host, None),
    };
    if let Some(p) = port {
        if p.parse::<u16>().map_or(true, |p| p == 0) {
            return false;
        }
    }
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
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

/// Parses sizes like `512MiB`, `20GiB`, `1.5GB`, `4096` (bytes).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" | "ki" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" | "mi" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" | "gi" => 1 << 30,
        "t" | "tb" => 1_000_000_000_000,
        "tib" | "ti" => 1 << 40,
        other => {
            return Err(format!(
                "{s:?} has unknown size unit {other:?} (use B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)"
            ))
        }
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size such as \"512MiB\" or \"20GiB\""))?;
    let bytes = n * mult as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(bytes as u64)
}

/// Parses durations like `500ms`, `30s`, `5m`, `1h`, `1d`; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let secs: f64 = match unit.trim() {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        other => {
            return Err(format!(
                "{s:?} has unknown duration unit {other:?} (use ms, s, m, h, d)"
            ))
        }
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration such as \"30s\" or \"5m\""))?;
    let total = n * secs;
    if !total.is_finite() || !(0.0..=1e10).contains(&total) {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(total))
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
    fn sizes_and_durations() {
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("20GiB").unwrap(), 20 << 30);
        assert_eq!(parse_size("1GB").unwrap(), 1_000_000_000);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("-1GiB").is_err());
        assert!(parse_size("lots").is_err());
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert!(parse_duration("5 fortnights").is_err());
    }

    #[test]
    fn registry_hosts() {
        assert!(valid_registry_host("docker.io"));
        assert!(valid_registry_host("localhost:5000"));
        assert!(valid_registry_host("127.0.0.1:5000"));
        assert!(!valid_registry_host("a/b"));
        assert!(!valid_registry_host("Docker.io"));
        assert!(!valid_registry_host("host:0"));
        assert!(!valid_registry_host("host:"));
        assert!(!valid_registry_host(""));
    }
}
