//! The doctor's checks against node fixtures: containerd 1.7 to 2.2 configs,
//! hosts files, and a live probe.

mod containerd_config;
mod hosts_files;
mod node;
mod pinned;

use super::*;

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

const VERSION_1_7: &str =
    "containerd github.com/containerd/containerd v1.7.24 88bf19b2105c8b17560993bee28a01ddc2f97182";
const VERSION_2_0: &str = "containerd github.com/containerd/containerd/v2 v2.0.5 fb4c30d4ede3531652d86197bf3fc9515e5276d9";
const VERSION_2_1: &str = "containerd github.com/containerd/containerd/v2 v2.1.4 75cb2b7193e4e490e9fbdc236c0e811ccaba3376";
const VERSION_2_2: &str = "containerd github.com/containerd/containerd/v2 v2.2.0 1c4457e00facac03ce1d75f7b6777a7a851e5c41";

fn tender_hosts(registry: &str) -> FileState {
    FileState::Present(crate::cli::hosts::hosts_toml(registry, MIRROR))
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
        containerd_config: config.map_or(FileState::Missing, |c| FileState::Present(c.to_string())),
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
        pinned: None,
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

/// Asserts that a finding's text mentions `needle`.
fn says(f: &Finding, needle: &str) {
    assert!(f.what.contains(needle), "{needle:?} not in {:?}", f.what);
}

/// Asserts that a finding's fix mentions `needle`.
fn fix_says(f: &Finding, needle: &str) {
    let fix = f.fix.as_deref().unwrap_or_default();
    assert!(fix.contains(needle), "{needle:?} not in the fix {fix:?}");
}

fn problems(findings: &[Finding]) -> Vec<&Finding> {
    findings
        .iter()
        .filter(|f| f.level == Level::Problem)
        .collect()
}
