//! containerd's config, version by version: where config_path is read, and
//! the settings that route pulls around hosts.toml.

use super::*;

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
    says(f, "io.containerd.grpc.v1.cri");
    let f = finding(&findings, "docker.io:");
    says(f, "falls back to https://registry-1.docker.io");
    finding(&findings, "tender answers GET http://127.0.0.1:5050/v2/");
}

#[test]
fn a_containerd_2_0_node_reads_config_path_from_the_images_plugin() {
    let findings = diagnose(&node(Some(CONTAINERD_2), Some(VERSION_2_0)));
    assert!(problems(&findings).is_empty(), "{}", render(&findings));
    let f = finding(&findings, "config_path = \"/etc/containerd/certs.d\"");
    says(f, "io.containerd.cri.v1.images");
    // 2.0 has no transfer-service CRI pulls: nothing said about it.
    assert!(!findings.iter().any(|f| f.what.contains("transfer service")));
}

#[test]
fn a_containerd_1_7_config_without_config_path_sends_every_pull_to_the_origins() {
    let config = CONTAINERD_1_7.replace("      config_path = \"/etc/containerd/certs.d\"\n", "");
    let findings = diagnose(&node(Some(&config), Some(VERSION_1_7)));
    let f = finding(&findings, "config_path is not set");
    assert_eq!(f.level, Level::Problem);
    says(f, "containerd 1.7 reads no hosts.toml");
    fix_says(f, "[plugins.\"io.containerd.grpc.v1.cri\".registry]");
    fix_says(f, "config_path = \"/etc/containerd/certs.d\"");
    fix_says(f, "tender containerd-hosts --mirror http://127.0.0.1:5050");
    // The hosts files are still judged, with a note that they are unused.
    let f = finding(&findings, "docker.io:");
    says(f, "does not read this directory yet");
    assert_eq!(exit_code(&findings), 1);
}

#[test]
fn a_containerd_2_1_config_without_config_path_is_a_problem_too() {
    let config = CONTAINERD_2.replace("      config_path = '/etc/containerd/certs.d'\n", "");
    let findings = diagnose(&node(Some(&config), Some(VERSION_2_1)));
    let f = finding(&findings, "config_path is not set");
    assert_eq!(f.level, Level::Problem);
    fix_says(f, "[plugins.\"io.containerd.cri.v1.images\".registry]");
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
    says(f, "[plugins.\"io.containerd.grpc.v1.cri\".registry]");
    fix_says(f, "[plugins.\"io.containerd.cri.v1.images\".registry]");
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
    says(f, "cannot be set when `config_path` is provided");
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
    says(f, "does not send quay.io to tender");
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
    says(f, "still go through hosts.toml");
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
    says(f, "as ONE directory");
    fix_says(f, "config_path = \"/etc/containerd/certs.d\"");
    fix_says(f, "use_local_image_pull = true");
    // The local resolver would have found the files: those lines are fine.
    assert_eq!(finding(&findings, "docker.io:").level, Level::Ok);
}

#[test]
fn containerd_2_2_built_in_default_config_path_trips_the_transfer_service_too() {
    let config = CONTAINERD_2.replace("      config_path = '/etc/containerd/certs.d'\n", "");
    let findings = diagnose(&node(Some(&config), Some(VERSION_2_2)));
    let f = finding(&findings, "config_path is not set");
    assert_eq!(f.level, Level::Warn);
    says(f, DEFAULT_CONFIG_PATH_2_2);
    assert_eq!(finding(&findings, "transfer service").level, Level::Problem);
}

#[test]
fn containerd_2_1_transfer_service_honours_a_single_config_path() {
    let findings = diagnose(&node(Some(CONTAINERD_2), Some(VERSION_2_1)));
    let f = finding(&findings, "transfer service");
    assert_eq!(f.level, Level::Ok);
    says(f, "hosts.toml applies");
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
    says(f, "use_local_image_pull = true");
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
    says(f, "turns off the transfer service");
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
fn a_missing_containerd_config_on_1_7_means_no_hosts_dir_at_all() {
    let findings = diagnose(&node(None, Some(VERSION_1_7)));
    finding(
        &findings,
        "does not exist: containerd 1.7 runs on its built-in defaults",
    );
    let f = finding(&findings, "config_path is not set");
    assert_eq!(f.level, Level::Problem);
    fix_says(f, "[plugins.\"io.containerd.grpc.v1.cri\".registry]");
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
