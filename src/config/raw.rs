//! The config file as written: TOML, with every unknown key an error. Only
//! [`super::validate`] reads these.

use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub listen: Option<String>,
    pub metrics_listen: Option<String>,
    pub cache_dir: Option<String>,
    pub cache_max_size: Option<String>,
    pub tag_ttl: Option<String>,
    pub min_free_space: Option<String>,
    pub connect_timeout: Option<String>,
    pub header_timeout: Option<String>,
    pub stall_timeout: Option<String>,
    pub progress_timeout: Option<String>,
    pub breaker_failures: Option<u32>,
    pub breaker_cooldown: Option<String>,
    pub tls_cert_file: Option<String>,
    pub tls_key_file: Option<String>,
    pub metrics_tls_cert_file: Option<String>,
    pub metrics_tls_key_file: Option<String>,
    pub scrub_interval: Option<String>,
    pub scrub_rate: Option<String>,
    pub max_connections: Option<usize>,
    pub max_connections_per_client: Option<usize>,
    #[serde(default)]
    pub registry: Vec<RawRegistry>,
    pub prefetch: Option<RawPrefetch>,
    pub cluster: Option<RawCluster>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    pub listen: String,
    pub advertise: String,
    #[serde(default)]
    pub peers: Vec<String>,
    pub peers_dns: Option<String>,
    pub token_file: String,
    pub peer_timeout: Option<String>,
    pub dns_interval: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrefetch {
    #[serde(default)]
    pub images: Vec<String>,
    #[serde(default)]
    pub pinned: Vec<String>,
    pub pinned_max_size: Option<String>,
    pub interval: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRegistry {
    pub host: String,
    #[serde(default)]
    pub default: bool,
    #[serde(default)]
    pub verify_client_credentials: bool,
    #[serde(default)]
    pub upstream: Vec<RawUpstream>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub url: String,
    pub repository_prefix: Option<String>,
    pub proxy: Option<String>,
    pub ca_file: Option<String>,
    pub credentials_file: Option<String>,
    pub forward_client_credentials: Option<bool>,
}
