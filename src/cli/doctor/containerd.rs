//! containerd's config, interpreted the way the running containerd version
//! reads it: where `config_path` lives, which hosts directories are read,
//! and the settings that route pulls around hosts.toml.

use toml::{Table, Value};

use super::{FileState, Finding, Inputs, CERTS_D, DEFAULT_CONFIG_PATH_2_2, V2_CRI, V3_IMAGES};

/// `major.minor` of containerd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Version(pub(super) u32, pub(super) u32);

pub(super) const V2_1: Version = Version(2, 1);
pub(super) const V2_2: Version = Version(2, 2);

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.0, self.1)
    }
}

/// From `containerd --version`: `containerd github.com/containerd/containerd/v2
/// v2.1.4 75cb2b7`, `containerd containerd.io 1.7.27 05044ec`, or Debian's
/// `containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1`.
pub(super) fn parse_containerd_version(line: &str) -> Option<Version> {
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
pub(super) fn candidate_dirs(registry: &str) -> Vec<String> {
    let mut names = Vec::new();
    if let Some(idx) = registry.rfind(':').filter(|&i| i > 0) {
        names.push(format!("{}_{}_", &registry[..idx], &registry[idx + 1..]));
    }
    names.push(registry.to_string());
    names.push("_default".to_string());
    names
}

pub(super) fn table_name(plugin: &str, sub: Option<&str>) -> String {
    match sub {
        Some(sub) => format!("[plugins.\"{plugin}\".{sub}]"),
        None => format!("[plugins.\"{plugin}\"]"),
    }
}

pub(super) fn get<'a>(table: Option<&'a Table>, key: &str) -> Option<&'a Value> {
    table.and_then(|t| t.get(key))
}

pub(super) fn get_table<'a>(table: Option<&'a Table>, key: &str) -> Option<&'a Table> {
    get(table, key).and_then(Value::as_table)
}

pub(super) fn get_bool(table: Option<&Table>, key: &str) -> Option<bool> {
    get(table, key).and_then(Value::as_bool)
}

/// The strings of a TOML array (nothing if absent or not an array).
fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// The CRI image settings of a containerd config, wherever its version puts
/// them.
#[derive(Debug, Default)]
pub(super) struct CriConfig {
    pub(super) file_version: Option<i64>,
    pub(super) has_plugins: bool,
    pub(super) imports: Vec<String>,
    /// The registry table containerd reads (or would read) `config_path` from.
    pub(super) registry_table: Option<String>,
    pub(super) config_path: Option<String>,
    /// A registry table that this file/containerd combination ignores.
    pub(super) misplaced: Option<String>,
    pub(super) mirrors: Vec<(String, Vec<String>)>,
    pub(super) tls_configs: Vec<String>,
    pub(super) has_configs: bool,
    pub(super) has_auths: bool,
    pub(super) discard_unpacked_layers: bool,
    pub(super) disable_snapshot_annotations: Option<bool>,
    pub(super) max_concurrent_downloads: Option<i64>,
    pub(super) image_pull_with_sync_fs: bool,
    pub(super) use_local_image_pull: Option<bool>,
}

impl CriConfig {
    pub(super) fn read(root: &Table, containerd: Option<Version>) -> CriConfig {
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
                    .map(|(host, v)| (host.clone(), strings(v.get("endpoint"))))
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
            imports: strings(root.get("imports")),
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
    pub(super) fn local_pull_reasons(&self) -> Vec<String> {
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
pub(super) enum Reads {
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
pub(super) struct Node {
    pub(super) version: Option<Version>,
    /// None when the file is missing, unreadable or not TOML.
    pub(super) cri: Option<CriConfig>,
    pub(super) config_error: Option<Finding>,
    pub(super) reads: Reads,
    /// Directories to inspect for hosts.toml files, in containerd's order.
    pub(super) roots: Vec<String>,
}

impl Node {
    pub(super) fn new(inputs: &Inputs) -> Node {
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

    pub(super) fn version_text(&self) -> String {
        match self.version {
            Some(v) => format!("containerd {v}"),
            None => "containerd".to_string(),
        }
    }

    /// The table to put `config_path` in, for fixes.
    pub(super) fn registry_table(&self) -> String {
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

pub(super) fn split_roots(path: &str) -> Vec<String> {
    path.split(':')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect()
}

pub(super) fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
