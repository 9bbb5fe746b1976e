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

//!
//! The pieces: `gather` reads the node; `containerd` interprets containerd's
//! config for its version; `diagnose` turns the [`Inputs`] into findings,
//! with `hosts_toml` checking one hosts file as containerd reads it; `render`
//! prints them.

mod containerd;
mod diagnose;
mod gather;
mod hosts_toml;
mod render;
#[cfg(test)]
mod tests;

use std::time::Duration;

use crate::cache::pins::PinnedReport;

pub use diagnose::diagnose;
pub use gather::{gather, probe_tender};
pub use render::{exit_code, render};

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
    /// `GET <mirror>/pinned`, when tender answered the probe: the pinned
    /// images and whether each is complete on disk.
    pub pinned: Option<Result<PinnedReport, String>>,
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
