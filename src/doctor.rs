//! `tender doctor`: does containerd on this node really pull through tender?
//!
//! [`gather`] reads the node (containerd's config file, the hosts.toml files
//! containerd would use, `containerd --version`, and a `GET /v2/` to tender);
//! [`diagnose`] is pure and turns those [`Inputs`] into [`Finding`]s, each
//! problem with its fix; [`render`] prints them and [`exit_code`] is 1 when
//! anything must be fixed.
//!
//! The containerd behaviour encoded here comes from containerd's own source
//! and docs, not from folklore:
//! - `config_path` lives in `[plugins."io.containerd.grpc.v1.cri".registry]`
//!   (config version 2, containerd 1.x) or
//!   `[plugins."io.containerd.cri.v1.images".registry]` (version 3, 2.x); a
//!   version 2 file is migrated by containerd 2.x, a version 3 file is not
//!   (`plugins/cri/images/plugin.go`, `configMigration`).
//! - `registry.mirrors` together with a non-empty `config_path` is refused:
//!   the CRI image plugin fails to load with "`mirrors` cannot be set when
//!   `config_path` is provided" (`ValidateImageConfig`). With `mirrors` and
//!   no `config_path`, containerd uses the mirrors and reads no hosts.toml.
//! - containerd 1.x to 2.1 have no default `config_path`; containerd 2.2 uses
//!   `/etc/containerd/certs.d:/etc/docker/certs.d` (containerd issue #12636).
//! - For registry `host[:port]` containerd looks in each `config_path`
//!   directory, in order, for `<root>/host_port_`, `<root>/host[:port]`, then
//!   `<root>/_default`; the first that exists is used. A hosts.toml that does
//!   not parse (or names an unknown capability) is logged and ignored, and
//!   the pull goes to the origin. Hosts are tried in the order of their
//!   `[host."..."]` table headers, then `server`; without `server` containerd
//!   still falls back to the registry's origin (`core/remotes/docker/config/hosts.go`).
//! - containerd 2.1+ pulls CRI images through the transfer service unless
//!   `use_local_image_pull = true` or a setting the transfer service lacks is
//!   present (`discard_unpacked_layers = true`, `mirrors`/`configs`/`auths`,
//!   `disable_snapshot_annotations = false`, `max_concurrent_downloads != 3`,
//!   `image_pull_with_sync_fs = true`: docs/cri/config.md). The transfer
//!   service does read hosts.toml, but takes `config_path` as ONE directory,
//!   so a `:`-separated list finds nothing (`pullImageWithTransferService`
//!   passes it to `registry.WithHostDir`; containerd issues #12415, #12636).
//! - `discard_unpacked_layers = true` lets containerd's GC delete layer blobs
//!   after unpacking; the pull itself still goes through hosts.toml.

use std::fmt::Write as _;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use toml::{Table, Value};

/// Where containerd reads its configuration unless told otherwise.
pub const DEFAULT_CONTAINERD_CONFIG: &str = "/etc/containerd/config.toml";

/// How long the `GET /v2/` to tender may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// The conventional hosts directory, and the one tender's docs use.
const CERTS_D: &str = "/etc/containerd/certs.d";
/// containerd 2.2's built-in `config_path` (containerd issue #12636).
const DEFAULT_CONFIG_PATH_2_2: &str = "/etc/containerd/certs.d:/etc/docker/certs.d";
/// CRI plugin of config version 2 (containerd 1.x).
const V2_CRI: &str = "io.containerd.grpc.v1.cri";
/// CRI image plugin of config version 3 (containerd 2.x).
const V3_IMAGES: &str = "io.containerd.cri.v1.images";

/// What a file read found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileState {
    Missing,
    Unreadable(String),
    Present(String),
}

/// A directory containerd may use for a registry: `<root>/<name>` exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostDir {
    /// One directory of `config_path` (or `--hosts-dir`).
    pub root: String,
    /// `docker.io`, `localhost_5000_`, `localhost:5000` or `_default`.
    pub name: String,
    /// `<root>/<name>/hosts.toml`.
    pub hosts_toml: FileState,
}

/// Everything [`diagnose`] looks at; [`gather`] fills it from the node.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// containerd's config.toml.
    pub containerd_config: FileState,
    /// Its path, for messages.
    pub containerd_config_label: String,
    /// First line of `containerd --version`, if it ran.
    pub containerd_version: Option<String>,
    /// `--hosts-dir`: check this directory instead of containerd's config_path.
    pub hosts_dir_override: Option<String>,
    /// The candidate directories that exist (see [`HostDir`]).
    pub host_dirs: Vec<HostDir>,
    /// Registry hosts tender serves (tender's config).
    pub registries: Vec<String>,
    /// tender's URL as containerd should reach it, e.g. `http://127.0.0.1:5050`.
    pub mirror: String,
    /// Result of `GET <mirror>/v2/`.
    pub tender_probe: Result<(), String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Ok,
    Warn,
    Problem,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub level: Level,
    pub what: String,
    pub fix: Option<String>,
}

impl Finding {
    fn ok(what: impl Into<String>) -> Finding {
        Finding {
            level: Level::Ok,
            what: what.into(),
            fix: None,
        }
    }

    fn warn(what: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding {
            level: Level::Warn,
            what: what.into(),
            fix: Some(fix.into()),
        }
    }

    fn problem(what: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding {
            level: Level::Problem,
            what: what.into(),
            fix: Some(fix.into()),
        }
    }
}

/// Reads the node: the containerd config, the hosts directories containerd
/// would use for `registries` (or `hosts_dir_override`), `containerd
/// --version`, and probes tender at `mirror`.
pub fn gather(
    containerd_config: &Path,
    hosts_dir_override: Option<&Path>,
    registries: &[String],
    mirror: &str,
) -> Inputs {
    let mut inputs = Inputs {
        containerd_config: read_file(containerd_config),
        containerd_config_label: containerd_config.display().to_string(),
        containerd_version: containerd_version(),
        hosts_dir_override: hosts_dir_override.map(|p| p.display().to_string()),
        host_dirs: Vec::new(),
        registries: registries.to_vec(),
        mirror: mirror.to_string(),
        tender_probe: probe_tender(mirror, PROBE_TIMEOUT),
    };
    let roots = Node::new(&inputs).roots;
    for root in &roots {
        for registry in registries {
            for name in candidate_dirs(registry) {
                let dir = Path::new(root).join(&name);
                let seen = inputs
                    .host_dirs
                    .iter()
                    .any(|d| d.root == *root && d.name == name);
                if !seen && dir.exists() {
                    inputs.host_dirs.push(HostDir {
                        root: root.clone(),
                        name,
                        hosts_toml: read_file(&dir.join("hosts.toml")),
                    });
                }
            }
        }
    }
    inputs
}

/// `http://<listen>` as a client on this node reaches it: an unspecified
/// address (`0.0.0.0`, `::`) becomes loopback.
pub fn mirror_from_listen(listen: SocketAddr) -> String {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}", SocketAddr::new(ip, listen.port()))
}

/// `GET <mirror>/v2/`: 200 with `Docker-Distribution-Api-Version:
/// registry/2.0`, within `timeout`, without any proxy. Runs on its own thread
/// and runtime, so it may be called from async code too.
pub fn probe_tender(mirror: &str, timeout: Duration) -> Result<(), String> {
    match reqwest::Url::parse(mirror) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {}
        _ => return Err(format!("{mirror:?} is not an http:// or https:// URL")),
    }
    let url = format!("{}/v2/", mirror.trim_end_matches('/'));
    let probe = move || -> Result<(), String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the probe: {e}"))?;
        runtime.block_on(async {
            let client = reqwest::Client::builder()
                .no_proxy()
                .connect_timeout(timeout)
                .timeout(timeout)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(|e| format!("cannot start the probe: {e}"))?;
            let resp = client
                .get(&url)
                .send()
                .await
                .map_err(|e| describe_request_error(&e, timeout))?;
            let status = resp.status();
            let api = resp
                .headers()
                .get("docker-distribution-api-version")
                .and_then(|v| v.to_str().ok())
                .map(|v| v.trim().to_string());
            match (status.as_u16(), api.as_deref()) {
                (200, Some("registry/2.0")) => Ok(()),
                (200, Some(other)) => Err(format!(
                    "GET {url} answered 200 with Docker-Distribution-Api-Version {other:?}, not \"registry/2.0\""
                )),
                (200, None) => Err(format!(
                    "GET {url} answered 200 without Docker-Distribution-Api-Version: not a registry"
                )),
                _ => Err(format!("GET {url} answered {status}")),
            }
        })
    };
    std::thread::spawn(probe)
        .join()
        .unwrap_or_else(|_| Err("the probe thread panicked".to_string()))
}

fn describe_request_error(e: &reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        return format!("no answer within {}s", timeout.as_secs());
    }
    let mut innermost = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        innermost = s.to_string();
        source = s.source();
    }
    if e.is_connect() {
        format!("cannot connect: {innermost}")
    } else {
        innermost
    }
}

fn read_file(path: &Path) -> FileState {
    match std::fs::read_to_string(path) {
        Ok(text) => FileState::Present(text),
        Err(e) if e.kind() == io::ErrorKind::NotFound => FileState::Missing,
        Err(e) => FileState::Unreadable(e.to_string()),
    }
}

fn containerd_version() -> Option<String> {
    let out = std::process::Command::new("containerd")
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().next()?.trim();
    (!line.is_empty()).then(|| line.to_string())
}

/// `major.minor` of containerd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Version(u32, u32);

const V2_1: Version = Version(2, 1);
const V2_2: Version = Version(2, 2);

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.0, self.1)
    }
}

/// From `containerd --version`: `containerd github.com/containerd/containerd/v2
/// v2.1.4 75cb2b7`, `containerd containerd.io 1.7.27 05044ec`, or Debian's
/// `containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1`.
fn parse_containerd_version(line: &str) -> Option<Version> {
    line.split_whitespace().find_map(|token| {
        let token = token.strip_prefix('v').unwrap_or(token);
        let (major, rest) = token.split_once('.')?;
        if major.is_empty() || !major.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let minor: String = rest.chars().take_while(char::is_ascii_digit).collect();
        Some(Version(major.parse().ok()?, minor.parse().ok()?))
    })
}

/// The directories containerd checks for `registry`, in its order, before
/// `_default`.
fn candidate_dirs(registry: &str) -> Vec<String> {
    let mut names = Vec::new();
    if let Some(idx) = registry.rfind(':').filter(|&i| i > 0) {
        names.push(format!("{}_{}_", &registry[..idx], &registry[idx + 1..]));
    }
    names.push(registry.to_string());
    names.push("_default".to_string());
    names
}

fn table_name(plugin: &str, sub: Option<&str>) -> String {
    match sub {
        Some(sub) => format!("[plugins.\"{plugin}\".{sub}]"),
        None => format!("[plugins.\"{plugin}\"]"),
    }
}

fn get<'a>(table: Option<&'a Table>, key: &str) -> Option<&'a Value> {
    table.and_then(|t| t.get(key))
}

fn get_table<'a>(table: Option<&'a Table>, key: &str) -> Option<&'a Table> {
    get(table, key).and_then(Value::as_table)
}

fn get_bool(table: Option<&Table>, key: &str) -> Option<bool> {
    get(table, key).and_then(Value::as_bool)
}

/// The CRI image settings of a containerd config, wherever its version puts
/// them.
#[derive(Debug, Default)]
struct CriConfig {
    file_version: Option<i64>,
    has_plugins: bool,
    imports: Vec<String>,
    /// The registry table containerd reads (or would read) `config_path` from.
    registry_table: Option<String>,
    config_path: Option<String>,
    /// A registry table that this file/containerd combination ignores.
    misplaced: Option<String>,
    mirrors: Vec<(String, Vec<String>)>,
    tls_configs: Vec<String>,
    has_configs: bool,
    has_auths: bool,
    discard_unpacked_layers: bool,
    disable_snapshot_annotations: Option<bool>,
    max_concurrent_downloads: Option<i64>,
    image_pull_with_sync_fs: bool,
    use_local_image_pull: Option<bool>,
}

impl CriConfig {
    fn read(root: &Table, containerd: Option<Version>) -> CriConfig {
        let file_version = root.get("version").and_then(Value::as_integer);
        let plugins = root.get("plugins").and_then(Value::as_table);
        let images = get_table(plugins, V3_IMAGES);
        let (cri_id, cri) = match get_table(plugins, V2_CRI) {
            Some(t) => (V2_CRI, Some(t)),
            None if file_version.unwrap_or(1) < 2 => ("cri", get_table(plugins, "cri")),
            None => (V2_CRI, None),
        };
        let has_registry_settings =
            |t: &&Table| t.contains_key("config_path") || t.contains_key("mirrors");
        let cri_registry = get_table(cri, "registry");
        let images_registry = get_table(images, "registry");
        let v3 = table_name(V3_IMAGES, Some("registry"));
        let v2 = table_name(cri_id, Some("registry"));
        let (registry, registry_table, misplaced) = if file_version.unwrap_or(1) >= 3 {
            let misplaced = cri_registry.filter(has_registry_settings).map(|_| v2);
            (images_registry, v3, misplaced)
        } else {
            match (cri_registry, images_registry) {
                (Some(r), _) => (Some(r), v2, None),
                (None, Some(r)) if containerd.is_some_and(|v| v.0 < 2) => {
                    let misplaced = Some(r).filter(has_registry_settings).map(|_| v3);
                    (None, v2, misplaced)
                }
                (None, Some(r)) => (Some(r), v3, None),
                (None, None) => (None, v2, None),
            }
        };
        let mirrors = get_table(registry, "mirrors")
            .map(|m| {
                m.iter()
                    .map(|(host, v)| {
                        let endpoints = v
                            .get("endpoint")
                            .and_then(Value::as_array)
                            .map(|a| {
                                a.iter()
                                    .filter_map(Value::as_str)
                                    .map(str::to_string)
                                    .collect()
                            })
                            .unwrap_or_default();
                        (host.clone(), endpoints)
                    })
                    .collect()
            })
            .unwrap_or_default();
        let configs = get_table(registry, "configs");
        let tls_configs = configs
            .map(|c| {
                c.iter()
                    .filter(|(_, v)| v.get("tls").is_some())
                    .map(|(h, _)| h.clone())
                    .collect()
            })
            .unwrap_or_default();
        // Version 2 keeps image settings in the CRI plugin (some under its
        // `containerd` table); containerd 2.x merges them over the images table.
        let (dsa_table, mcd_table) = if file_version.unwrap_or(1) >= 3 {
            (images, images)
        } else {
            (get_table(cri, "containerd"), cri)
        };
        let pick_bool =
            |t: Option<&Table>, key: &str| get_bool(t, key).or_else(|| get_bool(images, key));
        CriConfig {
            file_version,
            has_plugins: plugins.is_some(),
            imports: root
                .get("imports")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default(),
            registry_table: Some(registry_table),
            config_path: get(registry, "config_path")
                .and_then(Value::as_str)
                .map(str::to_string),
            misplaced,
            mirrors,
            tls_configs,
            has_configs: configs.is_some_and(|c| !c.is_empty()),
            has_auths: get_table(registry, "auths").is_some_and(|a| !a.is_empty()),
            discard_unpacked_layers: pick_bool(dsa_table, "discard_unpacked_layers")
                .unwrap_or(false),
            disable_snapshot_annotations: pick_bool(dsa_table, "disable_snapshot_annotations"),
            max_concurrent_downloads: get(mcd_table, "max_concurrent_downloads")
                .or_else(|| get(images, "max_concurrent_downloads"))
                .and_then(Value::as_integer),
            image_pull_with_sync_fs: pick_bool(mcd_table, "image_pull_with_sync_fs")
                .unwrap_or(false),
            use_local_image_pull: get_bool(images, "use_local_image_pull"),
        }
    }

    /// Settings that make containerd 2.1+ pull without the transfer service
    /// (docs/cri/config.md, "automatic fallback to Local Mode").
    fn local_pull_reasons(&self) -> Vec<String> {
        let mut reasons = Vec::new();
        if self.use_local_image_pull == Some(true) {
            reasons.push("use_local_image_pull = true".to_string());
        }
        if self.disable_snapshot_annotations == Some(false) {
            reasons.push("disable_snapshot_annotations = false".to_string());
        }
        if self.discard_unpacked_layers {
            reasons.push("discard_unpacked_layers = true".to_string());
        }
        if !self.mirrors.is_empty() {
            reasons.push("registry.mirrors is set".to_string());
        }
        if self.has_configs {
            reasons.push("registry.configs is set".to_string());
        }
        if self.has_auths {
            reasons.push("registry.auths is set".to_string());
        }
        if let Some(n) = self.max_concurrent_downloads.filter(|&n| n != 3) {
            reasons.push(format!("max_concurrent_downloads = {n}"));
        }
        if self.image_pull_with_sync_fs {
            reasons.push("image_pull_with_sync_fs = true".to_string());
        }
        reasons
    }
}

/// Which hosts directories containerd reads.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reads {
    /// `config_path`, set in the file (`builtin` false) or containerd 2.2's default.
    Dirs { path: String, builtin: bool },
    /// None: no `config_path` on containerd < 2.2, or `registry.mirrors` in use.
    Nothing,
    /// containerd's version is unknown and `config_path` is unset: 2.2+ would
    /// use its default, older releases nothing.
    MaybeBuiltin,
    /// The config could not be read or parsed.
    Unknown,
}

/// What the config file says, interpreted for this containerd.
struct Node {
    version: Option<Version>,
    /// None when the file is missing, unreadable or not TOML.
    cri: Option<CriConfig>,
    config_error: Option<Finding>,
    reads: Reads,
    /// Directories to inspect for hosts.toml files, in containerd's order.
    roots: Vec<String>,
}

impl Node {
    fn new(inputs: &Inputs) -> Node {
        let version = inputs
            .containerd_version
            .as_deref()
            .and_then(parse_containerd_version);
        let label = &inputs.containerd_config_label;
        let (cri, config_error) = match &inputs.containerd_config {
            FileState::Present(text) => match text.parse::<Table>() {
                Ok(root) => (Some(CriConfig::read(&root, version)), None),
                Err(e) => (
                    None,
                    Some(Finding::problem(
                        format!("{label} is not valid TOML: {}", one_line(&e.to_string())),
                        "containerd does not start with a broken config file; fix the syntax, then restart containerd",
                    )),
                ),
            },
            FileState::Missing => (Some(CriConfig::default()), None),
            FileState::Unreadable(e) => (
                None,
                Some(Finding::problem(
                    format!("cannot read {label}: {e}"),
                    "run `tender doctor` as root, or point --containerd-config at the file containerd uses",
                )),
            ),
        };
        let reads = match &cri {
            None => Reads::Unknown,
            Some(c) => match c
                .config_path
                .as_deref()
                .map(str::trim)
                .filter(|p| !p.is_empty())
            {
                Some(path) => Reads::Dirs {
                    path: path.to_string(),
                    builtin: false,
                },
                None if !c.mirrors.is_empty() => Reads::Nothing,
                None => match version {
                    Some(v) if v >= V2_2 => Reads::Dirs {
                        path: DEFAULT_CONFIG_PATH_2_2.to_string(),
                        builtin: true,
                    },
                    Some(_) => Reads::Nothing,
                    None => Reads::MaybeBuiltin,
                },
            },
        };
        let roots = match (&inputs.hosts_dir_override, &reads) {
            (Some(dir), _) => vec![dir.clone()],
            (None, Reads::Dirs { path, .. }) => split_roots(path),
            (None, Reads::MaybeBuiltin) => split_roots(DEFAULT_CONFIG_PATH_2_2),
            (None, Reads::Nothing | Reads::Unknown) => vec![CERTS_D.to_string()],
        };
        Node {
            version,
            cri,
            config_error,
            reads,
            roots,
        }
    }

    fn version_text(&self) -> String {
        match self.version {
            Some(v) => format!("containerd {v}"),
            None => "containerd".to_string(),
        }
    }

    /// The table to put `config_path` in, for fixes.
    fn registry_table(&self) -> String {
        if let Some(t) = self.cri.as_ref().and_then(|c| c.registry_table.clone()) {
            return t;
        }
        match self.version {
            Some(v) if v.0 >= 2 => table_name(V3_IMAGES, Some("registry")),
            Some(_) => table_name(V2_CRI, Some("registry")),
            None => format!(
                "{} (containerd 2.x, `version = 3`) or {} (containerd 1.x, `version = 2`)",
                table_name(V3_IMAGES, Some("registry")),
                table_name(V2_CRI, Some("registry"))
            ),
        }
    }
}

fn split_roots(path: &str) -> Vec<String> {
    path.split(':')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect()
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Every check, in the order a reader fixes things: containerd's config,
/// the hosts files, tender itself, then settings that route around hosts.toml.
pub fn diagnose(inputs: &Inputs) -> Vec<Finding> {
    let node = Node::new(inputs);
    let mut out = Vec::new();
    config_file_findings(inputs, &node, &mut out);
    config_path_findings(inputs, &node, &mut out);
    hosts_findings(inputs, &node, &mut out);
    out.push(match &inputs.tender_probe {
        Ok(()) => Finding::ok(format!(
            "tender answers GET {}/v2/ (Docker-Distribution-Api-Version: registry/2.0)",
            inputs.mirror.trim_end_matches('/')
        )),
        Err(e) => Finding::problem(
            format!("tender does not answer at {}: {e}", inputs.mirror),
            format!(
                "start tender (`tender serve`, or check its DaemonSet pod) and make sure it listens where {} points; \
                 meanwhile containerd falls back to the origins, so pods start but nothing is cached",
                inputs.mirror
            ),
        ),
    });
    pull_path_findings(inputs, &node, &mut out);
    out
}

fn config_file_findings(inputs: &Inputs, node: &Node, out: &mut Vec<Finding>) {
    let label = &inputs.containerd_config_label;
    if node.version.is_none() {
        out.push(Finding::warn(
            "containerd's version is unknown (`containerd --version` did not run here); version-specific checks below are hedged",
            "run `tender doctor` on the node itself, with containerd on PATH",
        ));
    }
    if let Some(f) = &node.config_error {
        out.push(f.clone());
        return;
    }
    let Some(cri) = &node.cri else { return };
    match (&inputs.containerd_config, cri.file_version) {
        (FileState::Missing, _) => out.push(Finding::ok(format!(
            "{label} does not exist: {} runs on its built-in defaults",
            node.version_text()
        ))),
        (_, Some(v)) => out.push(Finding::ok(format!(
            "{} reads {label} (config version {v})",
            node.version_text()
        ))),
        (_, None) if cri.has_plugins => out.push(Finding::warn(
            format!("{label} has no `version` line, so containerd reads it as the old version 1 format (which containerd 2.x no longer supports)"),
            "put `version = 2` (containerd 1.x) or `version = 3` (containerd 2.x) at the top, with the matching plugin names",
        )),
        (_, None) => out.push(Finding::ok(format!(
            "{} reads {label} (no settings that matter here)",
            node.version_text()
        ))),
    }
    if !cri.imports.is_empty() {
        out.push(Finding::warn(
            format!(
                "{label} imports {}; settings in imported files are not checked here",
                cri.imports.join(", ")
            ),
            "check those files for registry, config_path and use_local_image_pull settings too (`containerd config dump` shows the merged result)",
        ));
    }
}

fn config_path_snippet(node: &Node, dir: &str) -> String {
    format!(
        "in the containerd config, under {}, set\n  config_path = \"{dir}\"\nthen restart containerd",
        node.registry_table()
    )
}

fn config_path_findings(inputs: &Inputs, node: &Node, out: &mut Vec<Finding>) {
    let Some(cri) = &node.cri else { return };
    let version = node.version_text();
    let mirrors_set = !cri.mirrors.is_empty();
    let hosts_cmd = format!(
        "tender containerd-hosts --mirror {} --dir {CERTS_D}",
        inputs.mirror
    );

    if let Some(misplaced) = &cri.misplaced {
        out.push(Finding::problem(
            format!(
                "registry settings are under {misplaced}, which {version} does not read with this config version{}",
                match cri.file_version {
                    Some(v) => format!(" ({v})"),
                    None => String::new(),
                }
            ),
            format!(
                "move them to {}, then restart containerd",
                node.registry_table()
            ),
        ));
    }

    match &node.reads {
        Reads::Dirs { path, builtin: false } => {
            let dirs = split_roots(path);
            let note = if dirs.len() > 1 {
                format!(" ({} directories, searched in this order)", dirs.len())
            } else {
                String::new()
            };
            out.push(Finding::ok(format!(
                "containerd config_path = \"{path}\"{note}, in {}",
                node.registry_table()
            )));
        }
        Reads::Dirs { path, builtin: true } => out.push(Finding::warn(
            format!("config_path is not set; {version} uses its built-in default \"{path}\""),
            format!(
                "set it explicitly to one directory (that also avoids the transfer-service problem below):\n{}",
                config_path_snippet(node, CERTS_D)
            ),
        )),
        Reads::Nothing if mirrors_set => {} // the mirrors finding says it
        Reads::Nothing if cri.misplaced.is_some() => {}
        Reads::Nothing => out.push(Finding::problem(
            format!("config_path is not set: {version} reads no hosts.toml, so every pull goes straight to the registries"),
            format!("{}\nand write the hosts files: {hosts_cmd}", config_path_snippet(node, CERTS_D)),
        )),
        Reads::MaybeBuiltin if cri.misplaced.is_some() => {}
        Reads::MaybeBuiltin => out.push(Finding::problem(
            format!(
                "config_path is not set: containerd 1.x to 2.1 then read no hosts.toml; 2.2+ falls back to \"{DEFAULT_CONFIG_PATH_2_2}\", \
                 which its default (transfer service) pull cannot use"
            ),
            format!("{}\nand write the hosts files: {hosts_cmd}", config_path_snippet(node, CERTS_D)),
        )),
        Reads::Unknown => {}
    }

    if mirrors_set {
        out.push(mirrors_finding(inputs, node, cri));
    }

    let explicit = matches!(node.reads, Reads::Dirs { builtin: false, .. });
    if explicit && !cri.tls_configs.is_empty() {
        let what = format!(
            "registry.configs.<host>.tls is set for {} together with config_path: containerd 1.x refuses this \
             (\"`configs.tls` cannot be set when `config_path` is provided\") and the CRI plugin does not load",
            cri.tls_configs.join(", ")
        );
        let fix = "move the TLS settings into that registry's hosts.toml (ca, client, skip_verify) and delete the configs.<host>.tls tables";
        match node.version {
            Some(v) if v.0 >= 2 => {}
            Some(_) => out.push(Finding::problem(what, fix)),
            None => out.push(Finding::warn(what, fix)),
        }
    }
}

fn mirrors_finding(inputs: &Inputs, node: &Node, cri: &CriConfig) -> Finding {
    let table = node.registry_table();
    let fix = format!(
        "delete the {}.mirrors] tables (hosts.toml files replace them), set config_path, restart containerd, and write the hosts files:\n  \
         tender containerd-hosts --mirror {} --dir {CERTS_D}",
        table.trim_end_matches(']'),
        inputs.mirror
    );
    if matches!(node.reads, Reads::Dirs { builtin: false, .. }) {
        return Finding::problem(
            format!(
                "both registry.mirrors and config_path are set in {table}: containerd refuses this combination \
                 (\"`mirrors` cannot be set when `config_path` is provided\"), the CRI plugin does not load, and the node cannot pull or start pods"
            ),
            fix,
        );
    }
    let tender = endpoint(&inputs.mirror, false);
    let endpoints_for = |registry: &str| {
        cri.mirrors
            .iter()
            .find(|(h, _)| h == registry)
            .or_else(|| cri.mirrors.iter().find(|(h, _)| h == "*"))
            .map(|(_, e)| e.as_slice())
            .unwrap_or_default()
    };
    let bypassing: Vec<&str> = inputs
        .registries
        .iter()
        .filter(|r| {
            !endpoints_for(r)
                .iter()
                .any(|e| tender.is_some() && endpoint(e, false) == tender)
        })
        .map(String::as_str)
        .collect();
    if bypassing.is_empty() {
        Finding::warn(
            "registry.mirrors (deprecated) sends pulls to tender; containerd reads no hosts.toml while it is set",
            fix,
        )
    } else {
        Finding::problem(
            format!(
                "registry.mirrors (deprecated) is set, so containerd reads no hosts.toml, and it does not send {} to tender",
                bypassing.join(", ")
            ),
            fix,
        )
    }
}

fn hosts_findings(inputs: &Inputs, node: &Node, out: &mut Vec<Finding>) {
    if let (Some(dir), Reads::Dirs { path, .. }) = (&inputs.hosts_dir_override, &node.reads) {
        if !split_roots(path).contains(dir) {
            out.push(Finding::warn(
                format!("checking {dir} as asked, but containerd reads \"{path}\""),
                "pass one of containerd's directories to --hosts-dir, or change config_path",
            ));
        }
    }
    let caveat = match (&inputs.hosts_dir_override, &node.reads) {
        (Some(_), _) | (None, Reads::Dirs { .. }) => "",
        (None, Reads::Nothing) => " (containerd does not read this directory yet, see above)",
        (None, Reads::MaybeBuiltin) => " (read only by containerd 2.2+ while config_path is unset)",
        (None, Reads::Unknown) => " (whether containerd reads it is unknown, see above)",
    };
    for registry in &inputs.registries {
        let mut f = registry_finding(inputs, node, registry);
        f.what.push_str(caveat);
        out.push(f);
    }
}

/// The directory containerd uses for `registry`: the first candidate that
/// exists, root by root.
fn host_dir_for<'a>(inputs: &'a Inputs, roots: &[String], registry: &str) -> Option<&'a HostDir> {
    roots.iter().find_map(|root| {
        candidate_dirs(registry).into_iter().find_map(|name| {
            inputs
                .host_dirs
                .iter()
                .find(|d| d.root == *root && d.name == name)
        })
    })
}

fn registry_finding(inputs: &Inputs, node: &Node, registry: &str) -> Finding {
    let roots = &node.roots;
    let first_root = roots.first().map_or(CERTS_D, String::as_str);
    let write_cmd = |root: &str| {
        format!(
            "tender containerd-hosts --mirror {} --dir {root} --registry {registry}",
            inputs.mirror
        )
    };
    let Some(dir) = host_dir_for(inputs, roots, registry) else {
        return Finding::problem(
            format!(
                "{registry}: no hosts.toml for it under {} (looked for {}): containerd pulls it straight from the origin",
                roots.join(", "),
                candidate_dirs(registry)
                    .iter()
                    .map(|n| format!("{n}/"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            write_cmd(first_root),
        );
    };
    let path = format!("{}/{}/hosts.toml", dir.root.trim_end_matches('/'), dir.name);
    let rewrite = if dir.name == registry || dir.name == "_default" {
        write_cmd(&dir.root)
    } else {
        format!(
            "containerd looks in {}/{}/ before {}/{registry}/: put a hosts.toml pointing at {} there, or remove that directory and run {}",
            dir.root, dir.name, dir.root, inputs.mirror, write_cmd(&dir.root)
        )
    };
    let text = match &dir.hosts_toml {
        FileState::Present(text) => text,
        FileState::Missing => {
            return Finding::problem(
                format!(
                    "{registry}: containerd uses {}/{}/ but it has no hosts.toml (only certificates are read there), so {registry} is pulled from its origin",
                    dir.root, dir.name
                ),
                rewrite,
            )
        }
        FileState::Unreadable(e) => {
            return Finding::problem(format!("{registry}: cannot read {path}: {e}"), rewrite)
        }
    };
    check_hosts_toml(
        registry,
        &path,
        dir.name == "_default",
        text,
        &inputs.mirror,
        rewrite,
    )
}

/// One hosts.toml, as containerd's `parseHostsFile` reads it.
fn check_hosts_toml(
    registry: &str,
    path: &str,
    is_default: bool,
    text: &str,
    mirror: &str,
    rewrite: String,
) -> Finding {
    let table = match text.parse::<Table>() {
        Ok(t) => t,
        Err(e) => {
            return Finding::problem(
                format!(
                    "{registry}: {path} is not valid TOML ({}); containerd logs \"failed to decode\", ignores it and pulls from the origin",
                    one_line(&e.to_string())
                ),
                format!("fix or rewrite it (the old file is kept as a backup): {rewrite}"),
            )
        }
    };
    let host_table = table.get("host").and_then(Value::as_table);
    let ordered = host_keys_in_order(text);
    // containerd rejects the whole file on a bad capability.
    let entries = ordered
        .iter()
        .map(|k| host_table.and_then(|h| h.get(k)).and_then(Value::as_table));
    for caps in entries
        .map(|t| t.and_then(|t| t.get("capabilities")))
        .chain(std::iter::once(table.get("capabilities")))
    {
        if let Err(e) = capabilities(caps) {
            return Finding::problem(
                format!("{registry}: {path}: {e}; containerd rejects the file and pulls {registry} from its origin"),
                format!("use only \"pull\", \"resolve\" and \"push\", or rewrite it: {rewrite}"),
            );
        }
    }
    let tender = endpoint(mirror, false);
    let position = ordered.iter().position(|key| {
        let entry = host_table
            .and_then(|h| h.get(key))
            .and_then(Value::as_table);
        let override_path = get_bool(entry, "override_path").unwrap_or(false);
        tender.is_some() && endpoint(key, override_path) == tender
    });
    let Some(position) = position else {
        let what = if ordered.is_empty() {
            format!("{registry}: {path} has no [host.\"...\"] entry, so containerd pulls {registry} from the server only")
        } else {
            format!(
                "{registry}: {path} sends pulls to {}, not to tender at {mirror}",
                ordered.join(", ")
            )
        };
        return Finding::problem(what, rewrite);
    };
    let key = &ordered[position];
    let entry = host_table
        .and_then(|h| h.get(key))
        .and_then(Value::as_table);
    let caps = capabilities(entry.and_then(|e| e.get("capabilities")))
        .ok()
        .flatten()
        .unwrap_or_else(|| vec!["pull".into(), "resolve".into(), "push".into()]);
    if !caps.iter().any(|c| c == "pull") {
        return Finding::problem(
            format!("{registry}: {path} lists tender without the \"pull\" capability, so containerd fetches nothing through it"),
            format!("set capabilities = [\"pull\", \"resolve\"] under [host.\"{key}\"], or rewrite it: {rewrite}"),
        );
    }
    let origin = crate::hosts::origin_for(registry);
    let server = table.get("server").and_then(Value::as_str);
    let fallback = server.map_or(origin.clone(), str::to_string);
    if let Some(server) = server {
        let server_host = host_of(server);
        let accepted = [host_of(&origin), Some(registry.to_ascii_lowercase())];
        if server_host.is_none() || !accepted.contains(&server_host) {
            let what = format!("{registry}: {path} falls back to server {server:?}, not to {registry}'s origin {origin}");
            return if is_default {
                Finding::problem(
                    format!("{what}; a server in _default/hosts.toml applies to every registry"),
                    format!(
                        "remove `server` from _default/hosts.toml (containerd then falls back to each registry's own origin), or give {registry} its own file: {}",
                        rewrite
                    ),
                )
            } else {
                Finding::warn(
                    what,
                    format!("fine if deliberate; otherwise set server = \"{origin}\""),
                )
            };
        }
    }
    let via = if is_default { " (via _default)" } else { "" };
    let mut notes = Vec::new();
    if position > 0 {
        notes.push(format!(
            "containerd tries {} first",
            ordered[..position].join(", ")
        ));
    }
    if !caps.iter().any(|c| c == "resolve") {
        notes.push("without \"resolve\" tags are resolved at the origin and only content by digest comes through tender".to_string());
    }
    if notes.is_empty() {
        Finding::ok(format!(
            "{registry}: {path}{via} sends pulls to {} first, falls back to {fallback}",
            mirror.trim_end_matches('/')
        ))
    } else {
        Finding::warn(
            format!("{registry}: {path}{via} uses tender, but {}", notes.join("; ")),
            format!("put [host.\"{key}\"] first with capabilities = [\"pull\", \"resolve\"], or rewrite it: {rewrite}"),
        )
    }
}

/// `capabilities` as containerd accepts it: absent, or a list of
/// pull/resolve/push.
fn capabilities(value: Option<&Value>) -> Result<Option<Vec<String>>, String> {
    let Some(value) = value else { return Ok(None) };
    let Some(list) = value.as_array() else {
        return Err("capabilities is not a list".to_string());
    };
    let mut caps = Vec::new();
    for c in list {
        let Some(c) = c.as_str() else {
            return Err(format!("capability {c:?} is not a string"));
        };
        let c = c.to_ascii_lowercase();
        if !matches!(c.as_str(), "pull" | "resolve" | "push") {
            return Err(format!("unknown capability {c:?}"));
        }
        caps.push(c);
    }
    Ok(Some(caps))
}

/// The `[host."..."]` table headers in file order, as containerd's
/// `getSortedHosts` sees them (inline tables are not hosts to containerd).
fn host_keys_in_order(text: &str) -> Vec<String> {
    let mut keys: Vec<String> = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.trim_start().strip_prefix('[') else {
            continue;
        };
        if rest.starts_with('[') {
            continue;
        }
        let Some(rest) = rest.trim_start().strip_prefix("host") else {
            continue;
        };
        let Some(rest) = rest.trim_start().strip_prefix('.') else {
            continue;
        };
        let rest = rest.trim_start();
        let key = match rest.chars().next() {
            Some(q @ ('"' | '\'')) => rest[1..].split(q).next(),
            _ => rest.split(['.', ']', ' ', '\t']).next(),
        };
        if let Some(key) = key.filter(|k| !k.is_empty()) {
            if !keys.iter().any(|k| k == key) {
                keys.push(key.to_string());
            }
        }
    }
    keys
}

/// The base URL containerd requests for a host key or server: `https://` is
/// assumed without a scheme, and `/v2` is appended unless it is there or
/// `override_path` is set. Lowercase, no trailing slash.
fn endpoint(key: &str, override_path: bool) -> Option<String> {
    let key = key.trim();
    let with_scheme = if key.starts_with("http") {
        key.to_string()
    } else {
        format!("https://{key}")
    };
    let url = reqwest::Url::parse(&with_scheme).ok()?;
    let host = url.host_str()?.to_ascii_lowercase();
    let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
    let mut path = url.path().trim_end_matches('/').to_string();
    if !override_path && !path.ends_with("/v2") {
        path.push_str("/v2");
    }
    Some(format!("{}://{host}{port}{path}", url.scheme()))
}

/// `host[:port]` of a URL or bare host, lowercase.
fn host_of(url: &str) -> Option<String> {
    let url = url.trim();
    let with_scheme = if url.starts_with("http") {
        url.to_string()
    } else {
        format!("https://{url}")
    };
    let u = reqwest::Url::parse(&with_scheme).ok()?;
    let host = u.host_str()?.to_ascii_lowercase();
    Some(match u.port() {
        Some(p) => format!("{host}:{p}"),
        None => host,
    })
}

fn pull_path_findings(inputs: &Inputs, node: &Node, out: &mut Vec<Finding>) {
    let Some(cri) = &node.cri else { return };
    let maybe_2_1 = match node.version {
        Some(v) => v >= V2_1,
        None => cri.file_version.unwrap_or(0) >= 3 || cri.use_local_image_pull.is_some(),
    };
    let hedge = if node.version.is_none() {
        "if containerd is 2.1 or newer, "
    } else {
        ""
    };
    if cri.discard_unpacked_layers {
        let mut what = "discard_unpacked_layers = true: containerd deletes compressed layers from its content store after unpacking; \
             pulls still go through hosts.toml, and a layer this node discarded comes back from tender's cache on the next pull"
            .to_string();
        if maybe_2_1 {
            what.push_str(&format!(
                " ({hedge}it also turns off the transfer service for CRI pulls)"
            ));
        }
        out.push(Finding::ok(what));
    }
    if !maybe_2_1 {
        return;
    }
    let reasons = cri.local_pull_reasons();
    if !reasons.is_empty() {
        out.push(Finding::ok(format!(
            "{hedge}CRI pulls use containerd's local resolver ({}), which searches every config_path directory: hosts.toml applies",
            reasons.join(", ")
        )));
        return;
    }
    let path = match &node.reads {
        Reads::Dirs { path, .. } => path,
        // config_path unset or unknown: already reported above.
        _ => return,
    };
    let roots = split_roots(path);
    if roots.len() > 1 {
        let keep = roots
            .iter()
            .find(|r| inputs.host_dirs.iter().any(|d| &d.root == *r))
            .unwrap_or(&roots[0]);
        let what = format!(
            "{hedge}CRI pulls go through containerd's transfer service, which takes config_path \"{path}\" as ONE directory, \
             finds no hosts.toml and pulls straight from the origins (containerd issues #12415, #12636)"
        );
        let fix = format!(
            "either set config_path = \"{keep}\" (a single directory) under {}, or set use_local_image_pull = true under {}; then restart containerd",
            node.registry_table(),
            table_name(V3_IMAGES, None)
        );
        out.push(if node.version.is_some() {
            Finding::problem(what, fix)
        } else {
            Finding::warn(what, fix)
        });
    } else {
        out.push(Finding::ok(format!(
            "{hedge}CRI pulls go through containerd's transfer service, which uses config_path as its hosts directory: hosts.toml applies"
        )));
    }
}

/// Plain text, one line per finding; a problem's or warning's fix follows on
/// an indented `fix:` line.
pub fn render(findings: &[Finding]) -> String {
    let mut s = String::new();
    for f in findings {
        let tag = match f.level {
            Level::Ok => "OK",
            Level::Warn => "WARN",
            Level::Problem => "FIX",
        };
        let _ = writeln!(s, "{tag:<4} {}", f.what);
        if let Some(fix) = &f.fix {
            for (i, line) in fix.lines().enumerate() {
                let lead = if i == 0 { "     fix: " } else { "          " };
                let _ = writeln!(s, "{lead}{line}");
            }
        }
    }
    let count = |level| findings.iter().filter(|f| f.level == level).count();
    let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
    let (problems, warnings) = (count(Level::Problem), count(Level::Warn));
    if problems == 0 && warnings == 0 {
        s.push_str("doctor: all checks passed\n");
    } else {
        let _ = writeln!(
            s,
            "doctor: {}, {}",
            plural(problems, "problem"),
            plural(warnings, "warning")
        );
    }
    s
}

/// 0 when nothing must be fixed, 1 otherwise.
pub fn exit_code(findings: &[Finding]) -> i32 {
    i32::from(findings.iter().any(|f| f.level == Level::Problem))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    const MIRROR: &str = "http://127.0.0.1:5050";

    const CONTAINERD_1_7: &str = r#"version = 2
root = "/var/lib/containerd"
state = "/run/containerd"

[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "registry.k8s.io/pause:3.9"
    max_concurrent_downloads = 3
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
      default_runtime_name = "runc"
      discard_unpacked_layers = false
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          SystemdCgroup = true
    [plugins."io.containerd.grpc.v1.cri".registry]
      config_path = "/etc/containerd/certs.d"
"#;

    const CONTAINERD_2: &str = r#"version = 3
root = '/var/lib/containerd'
state = '/run/containerd'

[grpc]
  address = '/run/containerd/containerd.sock'

[plugins]
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = 'overlayfs'
    disable_snapshot_annotations = true
    discard_unpacked_layers = false
    max_concurrent_downloads = 3
    image_pull_progress_timeout = '5m0s'
    image_pull_with_sync_fs = false
    stats_collect_period = 10
    use_local_image_pull = false

    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = 'registry.k8s.io/pause:3.10'

    [plugins.'io.containerd.cri.v1.images'.registry]
      config_path = '/etc/containerd/certs.d'

  [plugins.'io.containerd.cri.v1.runtime']
    enable_cdi = true
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = 'runc'
"#;

    const VERSION_1_7: &str = "containerd github.com/containerd/containerd v1.7.24 88bf19b2105c8b17560993bee28a01ddc2f97182";
    const VERSION_2_0: &str = "containerd github.com/containerd/containerd/v2 v2.0.5 fb4c30d4ede3531652d86197bf3fc9515e5276d9";
    const VERSION_2_1: &str = "containerd github.com/containerd/containerd/v2 v2.1.4 75cb2b7193e4e490e9fbdc236c0e811ccaba3376";
    const VERSION_2_2: &str = "containerd github.com/containerd/containerd/v2 v2.2.0 1c4457e00facac03ce1d75f7b6777a7a851e5c41";

    fn tender_hosts(registry: &str) -> FileState {
        FileState::Present(crate::hosts::hosts_toml(registry, MIRROR))
    }

    fn dir(root: &str, name: &str, hosts_toml: FileState) -> HostDir {
        HostDir {
            root: root.to_string(),
            name: name.to_string(),
            hosts_toml,
        }
    }

    /// A node with `config`, containerd `version`, and tender's hosts files
    /// for docker.io and quay.io in /etc/containerd/certs.d.
    fn node(config: Option<&str>, version: Option<&str>) -> Inputs {
        Inputs {
            containerd_config: config
                .map_or(FileState::Missing, |c| FileState::Present(c.to_string())),
            containerd_config_label: DEFAULT_CONTAINERD_CONFIG.to_string(),
            containerd_version: version.map(str::to_string),
            hosts_dir_override: None,
            host_dirs: vec![
                dir(CERTS_D, "docker.io", tender_hosts("docker.io")),
                dir(CERTS_D, "quay.io", tender_hosts("quay.io")),
            ],
            registries: vec!["docker.io".to_string(), "quay.io".to_string()],
            mirror: MIRROR.to_string(),
            tender_probe: Ok(()),
        }
    }

    fn with_hosts(mut inputs: Inputs, registry: &str, text: &str) -> Inputs {
        inputs.host_dirs.retain(|d| d.name != registry);
        inputs
            .host_dirs
            .push(dir(CERTS_D, registry, FileState::Present(text.to_string())));
        inputs
    }

    /// The finding whose text contains `needle`; panics with the report.
    fn finding<'a>(findings: &'a [Finding], needle: &str) -> &'a Finding {
        findings
            .iter()
            .find(|f| f.what.contains(needle))
            .unwrap_or_else(|| panic!("no finding mentions {needle:?} in:\n{}", render(findings)))
    }

    fn problems(findings: &[Finding]) -> Vec<&Finding> {
        findings
            .iter()
            .filter(|f| f.level == Level::Problem)
            .collect()
    }

    #[test]
    fn a_containerd_1_7_node_set_up_by_tender_passes_every_check() {
        let findings = diagnose(&node(Some(CONTAINERD_1_7), Some(VERSION_1_7)));
        assert!(
            findings.iter().all(|f| f.level == Level::Ok),
            "{}",
            render(&findings)
        );
        assert_eq!(exit_code(&findings), 0);
        let f = finding(&findings, "config_path = \"/etc/containerd/certs.d\"");
        assert!(f.what.contains("io.containerd.grpc.v1.cri"), "{}", f.what);
        let f = finding(&findings, "docker.io:");
        assert!(
            f.what
                .contains("falls back to https://registry-1.docker.io"),
            "{}",
            f.what
        );
        finding(&findings, "tender answers GET http://127.0.0.1:5050/v2/");
    }

    #[test]
    fn a_containerd_2_0_node_reads_config_path_from_the_images_plugin() {
        let findings = diagnose(&node(Some(CONTAINERD_2), Some(VERSION_2_0)));
        assert!(problems(&findings).is_empty(), "{}", render(&findings));
        let f = finding(&findings, "config_path = \"/etc/containerd/certs.d\"");
        assert!(f.what.contains("io.containerd.cri.v1.images"), "{}", f.what);
        // 2.0 has no transfer-service CRI pulls: nothing said about it.
        assert!(!findings.iter().any(|f| f.what.contains("transfer service")));
    }

    #[test]
    fn a_containerd_1_7_config_without_config_path_sends_every_pull_to_the_origins() {
        let config =
            CONTAINERD_1_7.replace("      config_path = \"/etc/containerd/certs.d\"\n", "");
        let findings = diagnose(&node(Some(&config), Some(VERSION_1_7)));
        let f = finding(&findings, "config_path is not set");
        assert_eq!(f.level, Level::Problem);
        assert!(
            f.what.contains("containerd 1.7 reads no hosts.toml"),
            "{}",
            f.what
        );
        let fix = f.fix.as_deref().unwrap_or_default();
        assert!(
            fix.contains("[plugins.\"io.containerd.grpc.v1.cri\".registry]"),
            "{fix}"
        );
        assert!(
            fix.contains("config_path = \"/etc/containerd/certs.d\""),
            "{fix}"
        );
        assert!(
            fix.contains("tender containerd-hosts --mirror http://127.0.0.1:5050"),
            "{fix}"
        );
        // The hosts files are still judged, with a note that they are unused.
        let f = finding(&findings, "docker.io:");
        assert!(
            f.what.contains("does not read this directory yet"),
            "{}",
            f.what
        );
        assert_eq!(exit_code(&findings), 1);
    }

    #[test]
    fn a_containerd_2_1_config_without_config_path_is_a_problem_too() {
        let config = CONTAINERD_2.replace("      config_path = '/etc/containerd/certs.d'\n", "");
        let findings = diagnose(&node(Some(&config), Some(VERSION_2_1)));
        let f = finding(&findings, "config_path is not set");
        assert_eq!(f.level, Level::Problem);
        assert!(f
            .fix
            .as_deref()
            .unwrap_or_default()
            .contains("[plugins.\"io.containerd.cri.v1.images\".registry]"));
    }

    #[test]
    fn a_version_3_config_with_config_path_under_the_old_cri_table_is_ignored_by_containerd() {
        let config = r#"version = 3
[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = "/etc/containerd/certs.d"
"#;
        let findings = diagnose(&node(Some(config), Some(VERSION_2_0)));
        let f = finding(&findings, "registry settings are under");
        assert_eq!(f.level, Level::Problem);
        assert!(
            f.what
                .contains("[plugins.\"io.containerd.grpc.v1.cri\".registry]"),
            "{}",
            f.what
        );
        assert!(f
            .fix
            .as_deref()
            .unwrap_or_default()
            .contains("[plugins.\"io.containerd.cri.v1.images\".registry]"));
        assert!(!findings
            .iter()
            .any(|f| f.what.contains("config_path is not set")));
    }

    #[test]
    fn mirrors_together_with_config_path_stop_the_cri_plugin_from_loading() {
        let config = format!(
            "{CONTAINERD_1_7}      [plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors]\n        \
             [plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"docker.io\"]\n          \
             endpoint = [\"https://mirror.gcr.io\"]\n"
        );
        let findings = diagnose(&node(Some(&config), Some(VERSION_1_7)));
        let f = finding(&findings, "both registry.mirrors and config_path");
        assert_eq!(f.level, Level::Problem);
        assert!(
            f.what
                .contains("cannot be set when `config_path` is provided"),
            "{}",
            f.what
        );
    }

    #[test]
    fn mirrors_without_config_path_mean_hosts_files_are_never_read() {
        let config = r#"version = 2
[plugins."io.containerd.grpc.v1.cri".registry]
  [plugins."io.containerd.grpc.v1.cri".registry.mirrors]
    [plugins."io.containerd.grpc.v1.cri".registry.mirrors."docker.io"]
      endpoint = ["http://127.0.0.1:5050", "https://registry-1.docker.io"]
"#;
        let findings = diagnose(&node(Some(config), Some(VERSION_1_7)));
        let f = finding(&findings, "registry.mirrors (deprecated)");
        assert_eq!(f.level, Level::Problem);
        assert!(
            f.what.contains("does not send quay.io to tender"),
            "{}",
            f.what
        );
        assert!(!f.what.contains("docker.io"), "{}", f.what);
        // No separate "config_path is not set" line: the mirrors finding covers it.
        assert!(!findings
            .iter()
            .any(|f| f.what.contains("config_path is not set")));
        finding(&findings, "does not read this directory yet");
    }

    #[test]
    fn a_wildcard_mirror_to_tender_is_only_a_deprecation_warning() {
        let config = r#"version = 2
[plugins."io.containerd.grpc.v1.cri".registry.mirrors."*"]
  endpoint = ["http://127.0.0.1:5050/"]
"#;
        let findings = diagnose(&node(Some(config), Some(VERSION_1_7)));
        assert_eq!(
            finding(&findings, "registry.mirrors (deprecated)").level,
            Level::Warn
        );
    }

    #[test]
    fn discard_unpacked_layers_is_reported_without_blaming_the_mirror() {
        let config = CONTAINERD_1_7.replace(
            "discard_unpacked_layers = false",
            "discard_unpacked_layers = true",
        );
        let findings = diagnose(&node(Some(&config), Some(VERSION_1_7)));
        let f = finding(&findings, "discard_unpacked_layers = true");
        assert_eq!(f.level, Level::Ok);
        assert!(f.what.contains("still go through hosts.toml"), "{}", f.what);
        assert!(
            !f.what.contains("transfer service"),
            "1.7 has none: {}",
            f.what
        );
        assert_eq!(exit_code(&findings), 0);
    }

    #[test]
    fn containerd_2_1_transfer_service_ignores_a_multi_directory_config_path() {
        let config = CONTAINERD_2.replace(
            "config_path = '/etc/containerd/certs.d'",
            "config_path = '/etc/containerd/certs.d:/etc/docker/certs.d'",
        );
        let findings = diagnose(&node(Some(&config), Some(VERSION_2_1)));
        let f = finding(&findings, "transfer service");
        assert_eq!(f.level, Level::Problem);
        assert!(f.what.contains("as ONE directory"), "{}", f.what);
        let fix = f.fix.as_deref().unwrap_or_default();
        assert!(
            fix.contains("config_path = \"/etc/containerd/certs.d\""),
            "{fix}"
        );
        assert!(fix.contains("use_local_image_pull = true"), "{fix}");
        // The local resolver would have found the files: those lines are fine.
        assert_eq!(finding(&findings, "docker.io:").level, Level::Ok);
    }

    #[test]
    fn containerd_2_2_built_in_default_config_path_trips_the_transfer_service_too() {
        let config = CONTAINERD_2.replace("      config_path = '/etc/containerd/certs.d'\n", "");
        let findings = diagnose(&node(Some(&config), Some(VERSION_2_2)));
        let f = finding(&findings, "config_path is not set");
        assert_eq!(f.level, Level::Warn);
        assert!(f.what.contains(DEFAULT_CONFIG_PATH_2_2), "{}", f.what);
        assert_eq!(finding(&findings, "transfer service").level, Level::Problem);
    }

    #[test]
    fn containerd_2_1_transfer_service_honours_a_single_config_path() {
        let findings = diagnose(&node(Some(CONTAINERD_2), Some(VERSION_2_1)));
        let f = finding(&findings, "transfer service");
        assert_eq!(f.level, Level::Ok);
        assert!(f.what.contains("hosts.toml applies"), "{}", f.what);
        assert_eq!(exit_code(&findings), 0);
    }

    #[test]
    fn use_local_image_pull_avoids_the_transfer_service_directory_bug() {
        let config = CONTAINERD_2
            .replace(
                "use_local_image_pull = false",
                "use_local_image_pull = true",
            )
            .replace(
                "config_path = '/etc/containerd/certs.d'",
                "config_path = '/etc/containerd/certs.d:/etc/docker/certs.d'",
            );
        let findings = diagnose(&node(Some(&config), Some(VERSION_2_1)));
        let f = finding(&findings, "local resolver");
        assert_eq!(f.level, Level::Ok);
        assert!(f.what.contains("use_local_image_pull = true"), "{}", f.what);
        assert_eq!(exit_code(&findings), 0, "{}", render(&findings));
    }

    #[test]
    fn discard_unpacked_layers_makes_containerd_2_1_fall_back_to_local_pull() {
        let config = CONTAINERD_2
            .replace(
                "discard_unpacked_layers = false",
                "discard_unpacked_layers = true",
            )
            .replace(
                "config_path = '/etc/containerd/certs.d'",
                "config_path = '/etc/containerd/certs.d:/etc/docker/certs.d'",
            );
        let findings = diagnose(&node(Some(&config), Some(VERSION_2_1)));
        let f = finding(&findings, "discard_unpacked_layers = true:");
        assert!(
            f.what.contains("turns off the transfer service"),
            "{}",
            f.what
        );
        assert!(finding(&findings, "local resolver")
            .what
            .contains("discard_unpacked_layers = true"));
        assert_eq!(exit_code(&findings), 0, "{}", render(&findings));
    }

    #[test]
    fn with_an_unknown_containerd_version_the_transfer_service_check_is_a_hedged_warning() {
        let config = CONTAINERD_2.replace(
            "config_path = '/etc/containerd/certs.d'",
            "config_path = '/etc/containerd/certs.d:/etc/docker/certs.d'",
        );
        let findings = diagnose(&node(Some(&config), None));
        let f = finding(&findings, "transfer service");
        assert_eq!(f.level, Level::Warn);
        assert!(
            f.what.starts_with("if containerd is 2.1 or newer"),
            "{}",
            f.what
        );
        assert_eq!(finding(&findings, "version is unknown").level, Level::Warn);
    }

    #[test]
    fn a_hosts_file_pointing_at_another_mirror_is_a_problem() {
        let other = "server = \"https://registry-1.docker.io\"\n\n[host.\"https://mirror.gcr.io\"]\n  capabilities = [\"pull\", \"resolve\"]\n";
        let inputs = with_hosts(
            node(Some(CONTAINERD_1_7), Some(VERSION_1_7)),
            "docker.io",
            other,
        );
        let findings = diagnose(&inputs);
        let f = finding(&findings, "docker.io:");
        assert_eq!(f.level, Level::Problem);
        assert!(
            f.what
                .contains("sends pulls to https://mirror.gcr.io, not to tender"),
            "{}",
            f.what
        );
        assert!(f
            .fix
            .as_deref()
            .unwrap_or_default()
            .contains("tender containerd-hosts --mirror http://127.0.0.1:5050 --dir /etc/containerd/certs.d --registry docker.io"));
    }

    #[test]
    fn a_missing_hosts_file_comes_with_the_command_that_writes_it() {
        let mut inputs = node(Some(CONTAINERD_1_7), Some(VERSION_1_7));
        inputs.host_dirs.retain(|d| d.name != "quay.io");
        let findings = diagnose(&inputs);
        let f = finding(&findings, "quay.io:");
        assert_eq!(f.level, Level::Problem);
        assert!(f.what.contains("quay.io/, _default/"), "{}", f.what);
        assert_eq!(
            f.fix.as_deref(),
            Some("tender containerd-hosts --mirror http://127.0.0.1:5050 --dir /etc/containerd/certs.d --registry quay.io")
        );
    }

    #[test]
    fn a_registry_directory_without_hosts_toml_only_holds_certificates() {
        let mut inputs = node(Some(CONTAINERD_1_7), Some(VERSION_1_7));
        inputs.host_dirs.retain(|d| d.name != "quay.io");
        inputs
            .host_dirs
            .push(dir(CERTS_D, "quay.io", FileState::Missing));
        let f = diagnose(&inputs)
            .into_iter()
            .find(|f| f.what.starts_with("quay.io:"));
        let f = f.unwrap_or_else(|| panic!("no quay.io finding"));
        assert_eq!(f.level, Level::Problem);
        assert!(f.what.contains("has no hosts.toml"), "{}", f.what);
    }

    #[test]
    fn a_malformed_hosts_file_is_ignored_by_containerd() {
        let inputs = with_hosts(
            node(Some(CONTAINERD_1_7), Some(VERSION_1_7)),
            "docker.io",
            "server = \"https://registry-1.docker.io\"\n[host.\"http://127.0.0.1:5050\"\n  capabilities = [\"pull\"]\n",
        );
        let f = finding(&diagnose(&inputs), "docker.io:").clone();
        assert_eq!(f.level, Level::Problem);
        assert!(f.what.contains("not valid TOML"), "{}", f.what);
    }

    #[test]
    fn an_unknown_capability_makes_containerd_reject_the_whole_file() {
        let inputs = with_hosts(
            node(Some(CONTAINERD_1_7), Some(VERSION_1_7)),
            "docker.io",
            "[host.\"http://127.0.0.1:5050\"]\n  capabilities = [\"pull\", \"fetch\"]\n",
        );
        let f = finding(&diagnose(&inputs), "docker.io:").clone();
        assert_eq!(f.level, Level::Problem);
        assert!(
            f.what.contains("unknown capability \"fetch\""),
            "{}",
            f.what
        );
    }

    #[test]
    fn trailing_slashes_a_v2_suffix_and_missing_server_still_reach_tender() {
        let mut inputs = with_hosts(
            node(Some(CONTAINERD_1_7), Some(VERSION_1_7)),
            "docker.io",
            "[host.'http://127.0.0.1:5050/v2/']\n  capabilities = ['pull', 'resolve']\n",
        );
        inputs.mirror = "http://127.0.0.1:5050/".to_string();
        let findings = diagnose(&inputs);
        let f = finding(&findings, "docker.io:");
        assert_eq!(f.level, Level::Ok, "{}", render(&findings));
        // Without `server` containerd falls back to the registry's origin.
        assert!(
            f.what
                .contains("falls back to https://registry-1.docker.io"),
            "{}",
            f.what
        );
    }

    #[test]
    fn tender_listed_after_another_mirror_is_a_warning() {
        let text = "server = \"https://quay.io\"\n\n[host.\"https://quay-mirror.corp.example\"]\n  capabilities = [\"pull\", \"resolve\"]\n\n[host.\"http://127.0.0.1:5050\"]\n  capabilities = [\"pull\", \"resolve\"]\n";
        let inputs = with_hosts(
            node(Some(CONTAINERD_1_7), Some(VERSION_1_7)),
            "quay.io",
            text,
        );
        let f = finding(&diagnose(&inputs), "quay.io:").clone();
        assert_eq!(f.level, Level::Warn);
        assert!(
            f.what
                .contains("containerd tries https://quay-mirror.corp.example first"),
            "{}",
            f.what
        );
    }

    #[test]
    fn tender_without_pull_is_a_problem_and_without_resolve_a_warning() {
        let no_pull = "[host.\"http://127.0.0.1:5050\"]\n  capabilities = [\"resolve\"]\n";
        let inputs = with_hosts(
            node(Some(CONTAINERD_1_7), Some(VERSION_1_7)),
            "quay.io",
            no_pull,
        );
        assert_eq!(
            finding(&diagnose(&inputs), "quay.io:").level,
            Level::Problem
        );
        let no_resolve = "[host.\"http://127.0.0.1:5050\"]\n  capabilities = [\"pull\"]\n";
        let inputs = with_hosts(
            node(Some(CONTAINERD_1_7), Some(VERSION_1_7)),
            "quay.io",
            no_resolve,
        );
        let findings = diagnose(&inputs);
        let f = finding(&findings, "quay.io:");
        assert_eq!(f.level, Level::Warn);
        assert!(f.what.contains("without \"resolve\""), "{}", f.what);
    }

    #[test]
    fn the_default_hosts_file_covers_registries_without_their_own_directory() {
        let mut inputs = node(Some(CONTAINERD_1_7), Some(VERSION_1_7));
        inputs.host_dirs.retain(|d| d.name != "quay.io");
        inputs.host_dirs.push(dir(
            CERTS_D,
            "_default",
            FileState::Present(
                "[host.\"http://127.0.0.1:5050\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
                    .into(),
            ),
        ));
        let findings = diagnose(&inputs);
        let f = finding(&findings, "quay.io:");
        assert_eq!(f.level, Level::Ok, "{}", render(&findings));
        assert!(
            f.what.contains("_default/hosts.toml (via _default)"),
            "{}",
            f.what
        );
        assert!(
            f.what.contains("falls back to https://quay.io"),
            "{}",
            f.what
        );
    }

    #[test]
    fn a_server_in_the_default_hosts_file_sends_other_registries_to_the_wrong_origin() {
        let mut inputs = node(Some(CONTAINERD_1_7), Some(VERSION_1_7));
        inputs.host_dirs.retain(|d| d.name != "quay.io");
        inputs
            .host_dirs
            .push(dir(CERTS_D, "_default", tender_hosts("docker.io")));
        let f = finding(&diagnose(&inputs), "quay.io:").clone();
        assert_eq!(f.level, Level::Problem);
        assert!(f.what.contains("applies to every registry"), "{}", f.what);
    }

    #[test]
    fn a_registry_with_a_port_uses_containerds_underscore_directory_first() {
        let mut inputs = node(Some(CONTAINERD_1_7), Some(VERSION_1_7));
        inputs.registries = vec!["localhost:5000".to_string()];
        inputs.host_dirs = vec![
            dir(CERTS_D, "localhost_5000_", FileState::Missing),
            dir(CERTS_D, "localhost:5000", tender_hosts("localhost:5000")),
        ];
        let f = finding(&diagnose(&inputs), "localhost:5000:").clone();
        assert_eq!(f.level, Level::Problem);
        assert!(f.what.contains("localhost_5000_/"), "{}", f.what);
        assert!(
            f.fix.as_deref().unwrap_or_default().contains("before"),
            "{:?}",
            f.fix
        );
    }

    #[test]
    fn directories_are_searched_root_by_root_in_config_path_order() {
        let config = CONTAINERD_1_7.replace(
            "config_path = \"/etc/containerd/certs.d\"",
            "config_path = \"/etc/docker/certs.d:/etc/containerd/certs.d\"",
        );
        let mut inputs = node(Some(&config), Some(VERSION_1_7));
        // An empty _default in the first root shadows docker.io in the second.
        inputs
            .host_dirs
            .push(dir("/etc/docker/certs.d", "_default", FileState::Missing));
        let findings = diagnose(&inputs);
        let f = finding(&findings, "docker.io:");
        assert_eq!(f.level, Level::Problem);
        assert!(
            f.what.contains("/etc/docker/certs.d/_default/"),
            "{}",
            f.what
        );
    }

    #[test]
    fn tender_down_is_a_problem_and_the_exit_code_is_one() {
        let mut inputs = node(Some(CONTAINERD_1_7), Some(VERSION_1_7));
        inputs.tender_probe = Err("cannot connect: Connection refused (os error 111)".to_string());
        let findings = diagnose(&inputs);
        let f = finding(&findings, "tender does not answer");
        assert_eq!(f.level, Level::Problem);
        assert!(f
            .fix
            .as_deref()
            .unwrap_or_default()
            .contains("falls back to the origins"));
        assert_eq!(exit_code(&findings), 1);
    }

    #[test]
    fn a_missing_containerd_config_on_1_7_means_no_hosts_dir_at_all() {
        let findings = diagnose(&node(None, Some(VERSION_1_7)));
        finding(
            &findings,
            "does not exist: containerd 1.7 runs on its built-in defaults",
        );
        let f = finding(&findings, "config_path is not set");
        assert_eq!(f.level, Level::Problem);
        assert!(f
            .fix
            .as_deref()
            .unwrap_or_default()
            .contains("[plugins.\"io.containerd.grpc.v1.cri\".registry]"));
    }

    #[test]
    fn a_missing_containerd_config_on_2_2_uses_the_built_in_directory_list() {
        let findings = diagnose(&node(None, Some(VERSION_2_2)));
        assert_eq!(
            finding(&findings, "config_path is not set").level,
            Level::Warn
        );
        // docker.io and quay.io are found in the first directory of the list.
        assert_eq!(finding(&findings, "docker.io:").level, Level::Ok);
        assert_eq!(finding(&findings, "transfer service").level, Level::Problem);
    }

    #[test]
    fn a_broken_containerd_config_is_a_problem_but_hosts_and_tender_are_still_checked() {
        let findings = diagnose(&node(Some("version = 2\n[plugins\n"), Some(VERSION_1_7)));
        assert_eq!(
            finding(&findings, "is not valid TOML").level,
            Level::Problem
        );
        finding(&findings, "docker.io:");
        finding(&findings, "tender answers");
    }

    #[test]
    fn hosts_dir_override_is_checked_and_a_mismatch_with_containerd_is_flagged() {
        let mut inputs = node(Some(CONTAINERD_1_7), Some(VERSION_1_7));
        inputs.hosts_dir_override = Some("/tmp/hosts".to_string());
        inputs.host_dirs = vec![dir("/tmp/hosts", "docker.io", tender_hosts("docker.io"))];
        let findings = diagnose(&inputs);
        assert_eq!(finding(&findings, "checking /tmp/hosts").level, Level::Warn);
        assert_eq!(finding(&findings, "docker.io:").level, Level::Ok);
        assert_eq!(finding(&findings, "quay.io:").level, Level::Problem);
    }

    #[test]
    fn render_prints_one_line_per_finding_with_an_indented_fix() {
        let findings = vec![
            Finding::ok("containerd config_path = \"/etc/containerd/certs.d\""),
            Finding::problem("tender does not answer", "start it\nthen retry"),
            Finding::warn("odd", "look"),
        ];
        assert_eq!(
            render(&findings),
            "OK   containerd config_path = \"/etc/containerd/certs.d\"\n\
             FIX  tender does not answer\n     fix: start it\n          then retry\n\
             WARN odd\n     fix: look\n\
             doctor: 1 problem, 1 warning\n"
        );
        assert_eq!(exit_code(&findings), 1);
        assert_eq!(render(&findings[..1]), "OK   containerd config_path = \"/etc/containerd/certs.d\"\ndoctor: all checks passed\n");
        assert_eq!(exit_code(&findings[..1]), 0);
    }

    #[test]
    fn containerd_version_lines_from_upstream_docker_and_debian_parse() {
        assert_eq!(parse_containerd_version(VERSION_2_1), Some(Version(2, 1)));
        assert_eq!(parse_containerd_version(VERSION_1_7), Some(Version(1, 7)));
        assert_eq!(
            parse_containerd_version(
                "containerd containerd.io 1.7.27 05044ec0a9a75232cad458027ca83437aae3f4da"
            ),
            Some(Version(1, 7))
        );
        assert_eq!(
            parse_containerd_version(
                "containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+b1"
            ),
            Some(Version(1, 6))
        );
        assert_eq!(
            parse_containerd_version("containerd: command not found"),
            None
        );
    }

    #[test]
    fn host_keys_come_out_in_file_order_like_containerd_reads_them() {
        let text = "server = \"https://quay.io\"\n[host.\"https://b.example\"]\n[host.\"https://b.example\".header]\n  x = \"1\"\n[ host . 'http://a.example:5000' ]\n";
        assert_eq!(
            host_keys_in_order(text),
            vec!["https://b.example", "http://a.example:5000"]
        );
    }

    #[test]
    fn mirror_from_listen_turns_an_unspecified_address_into_loopback() {
        let parse = |s: &str| {
            s.parse::<SocketAddr>()
                .unwrap_or_else(|e| panic!("{s}: {e}"))
        };
        assert_eq!(
            mirror_from_listen(parse("0.0.0.0:5050")),
            "http://127.0.0.1:5050"
        );
        assert_eq!(mirror_from_listen(parse("[::]:5050")), "http://[::1]:5050");
        assert_eq!(
            mirror_from_listen(parse("10.0.0.7:5050")),
            "http://10.0.0.7:5050"
        );
    }

    /// Answers one connection with `response`, returns the mirror URL.
    fn one_shot_server(response: &'static str) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("addr: {e}"));
        std::thread::spawn(move || {
            if let Ok((mut conn, _)) = listener.accept() {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = conn.write_all(response.as_bytes());
            }
        });
        format!("http://{addr}")
    }

    #[test]
    fn the_probe_accepts_a_registry_v2_answer() {
        let mirror = one_shot_server(
            "HTTP/1.1 200 OK\r\nDocker-Distribution-Api-Version: registry/2.0\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
        );
        assert_eq!(probe_tender(&mirror, PROBE_TIMEOUT), Ok(()));
    }

    #[test]
    fn the_probe_rejects_a_web_server_that_is_not_a_registry() {
        let mirror =
            one_shot_server("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi");
        let err = probe_tender(&mirror, PROBE_TIMEOUT)
            .err()
            .unwrap_or_default();
        assert!(
            err.contains("without Docker-Distribution-Api-Version"),
            "{err}"
        );
        let mirror = one_shot_server(
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
        let err = probe_tender(&mirror, PROBE_TIMEOUT)
            .err()
            .unwrap_or_default();
        assert!(err.contains("404"), "{err}");
    }

    #[test]
    fn the_probe_reports_a_closed_port_and_a_bad_url() {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("bind: {e}"));
        let err = probe_tender(&format!("http://127.0.0.1:{port}"), PROBE_TIMEOUT)
            .err()
            .unwrap_or_default();
        assert!(err.starts_with("cannot connect"), "{err}");
        let err = probe_tender("127.0.0.1:5050", PROBE_TIMEOUT)
            .err()
            .unwrap_or_default();
        assert!(err.contains("not an http:// or https:// URL"), "{err}");
    }

    #[test]
    fn gather_reads_the_hosts_dir_named_in_the_containerd_config() {
        static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let base = std::env::temp_dir().join(format!(
            "tender-doctor-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let certs = base.join("certs.d");
        let setup = || -> io::Result<()> {
            std::fs::create_dir_all(certs.join("docker.io"))?;
            std::fs::create_dir_all(certs.join("_default"))?;
            std::fs::write(
                certs.join("docker.io/hosts.toml"),
                crate::hosts::hosts_toml("docker.io", MIRROR),
            )?;
            std::fs::write(
                base.join("config.toml"),
                format!(
                    "version = 3\n[plugins.'io.containerd.cri.v1.images'.registry]\n  config_path = '{}'\n",
                    certs.display()
                ),
            )
        };
        setup().unwrap_or_else(|e| panic!("setup: {e}"));
        let registries = vec!["docker.io".to_string(), "quay.io".to_string()];
        let inputs = gather(&base.join("config.toml"), None, &registries, MIRROR);
        let root = certs.display().to_string();
        assert_eq!(
            inputs.host_dirs,
            vec![
                dir(&root, "docker.io", tender_hosts("docker.io")),
                dir(&root, "_default", FileState::Missing),
            ]
        );
        let findings = diagnose(&inputs);
        assert_eq!(
            finding(&findings, "docker.io:").level,
            Level::Ok,
            "{}",
            render(&findings)
        );
        // quay.io falls to the empty _default directory.
        assert!(finding(&findings, "quay.io:")
            .what
            .contains("_default/ but it has no hosts.toml"));
        let missing = gather(
            &base.join("nope.toml"),
            Some(&certs),
            &registries,
            "http://127.0.0.1:9",
        );
        assert_eq!(missing.containerd_config, FileState::Missing);
        assert_eq!(missing.host_dirs.len(), 2);
        let _ = std::fs::remove_dir_all(&base);
    }
}
