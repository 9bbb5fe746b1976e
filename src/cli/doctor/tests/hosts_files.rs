//! hosts.toml files as containerd reads them.

use super::super::hosts_toml::host_keys_in_order;
use super::*;

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
    says(f, "sends pulls to https://mirror.gcr.io, not to tender");
    fix_says(f, "tender containerd-hosts --mirror http://127.0.0.1:5050 --dir /etc/containerd/certs.d --registry docker.io");
}

#[test]
fn a_missing_hosts_file_comes_with_the_command_that_writes_it() {
    let mut inputs = node(Some(CONTAINERD_1_7), Some(VERSION_1_7));
    inputs.host_dirs.retain(|d| d.name != "quay.io");
    let findings = diagnose(&inputs);
    let f = finding(&findings, "quay.io:");
    assert_eq!(f.level, Level::Problem);
    says(f, "quay.io/, _default/");
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
    says(&f, "has no hosts.toml");
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
    says(&f, "not valid TOML");
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
    says(&f, "unknown capability \"fetch\"");
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
    says(f, "falls back to https://registry-1.docker.io");
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
    says(
        &f,
        "containerd tries https://quay-mirror.corp.example first",
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
    says(f, "without \"resolve\"");
}

#[test]
fn the_default_hosts_file_covers_registries_without_their_own_directory() {
    let mut inputs = node(Some(CONTAINERD_1_7), Some(VERSION_1_7));
    inputs.host_dirs.retain(|d| d.name != "quay.io");
    inputs.host_dirs.push(dir(
        CERTS_D,
        "_default",
        FileState::Present(
            "[host.\"http://127.0.0.1:5050\"]\n  capabilities = [\"pull\", \"resolve\"]\n".into(),
        ),
    ));
    let findings = diagnose(&inputs);
    let f = finding(&findings, "quay.io:");
    assert_eq!(f.level, Level::Ok, "{}", render(&findings));
    says(f, "_default/hosts.toml (via _default)");
    says(f, "falls back to https://quay.io");
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
    says(&f, "applies to every registry");
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
    says(&f, "localhost_5000_/");
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
    says(f, "/etc/docker/certs.d/_default/");
}

#[test]
fn host_keys_come_out_in_file_order_like_containerd_reads_them() {
    let text = "server = \"https://quay.io\"\n[host.\"https://b.example\"]\n[host.\"https://b.example\".header]\n  x = \"1\"\n[ host . 'http://a.example:5000' ]\n";
    assert_eq!(
        host_keys_in_order(&text.parse().unwrap()),
        vec!["https://b.example", "http://a.example:5000"]
    );
}
