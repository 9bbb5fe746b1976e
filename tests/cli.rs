//! The command line: config errors before anything listens, the embedded
//! default, and `containerd-hosts` (idempotent, backs up what was there).

use std::process::Command;

fn tender(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tender"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// `tender containerd-hosts --mirror http://127.0.0.1:5050 --dir DIR ARGS...`
fn containerd_hosts(dir: &str, args: &[&str]) -> (i32, String, String) {
    let mut all = vec![
        "containerd-hosts",
        "--mirror",
        "http://127.0.0.1:5050",
        "--dir",
        dir,
    ];
    all.extend_from_slice(args);
    tender(&all)
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("tender-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn a_bad_config_is_reported_whole_and_nothing_listens() {
    let dir = tempdir("badconfig");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = dir.join("bad.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:{port}\"\ncache_max_size = \"lots\"\ntag_ttl = \"-\"\n[[registry]]\nhost = \"Bad Host\"\n  [[registry.upstream]]\n  url = \"ftp://x\"\n"
        ),
    )
    .unwrap();
    let (code, _, err) = tender(&["serve", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 64, "{err}");
    for key in [
        "cache_max_size:",
        "tag_ttl:",
        "registry[0].host:",
        "registry[0].upstream[0].url:",
    ] {
        assert!(err.contains(key), "missing {key} in: {err}");
    }
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "nothing may listen"
    );
    let (code, _, err) = tender(&[
        "serve",
        "--config",
        dir.join("missing.toml").to_str().unwrap(),
    ]);
    assert_eq!(code, 64);
    assert!(err.contains("cannot read config file"), "{err}");
    let (code, _, err) = tender(&["serve", "--bogus", "x"]);
    assert_eq!(code, 64);
    assert!(err.contains("unknown flag --bogus"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_embedded_default_config_is_printable_and_valid() {
    let (code, out, _) = tender(&["print-default-config"]);
    assert_eq!(code, 0);
    let c = ::tender::config::Config::parse(&out, "printed").unwrap();
    assert_eq!(c.listen.to_string(), "127.0.0.1:5050");
    assert_eq!(c.registries.len(), 5);
}

#[test]
fn containerd_hosts_is_idempotent_and_backs_up_existing_files() {
    let dir = tempdir("hosts");
    let d = dir.to_str().unwrap();
    let (code, out, err) = containerd_hosts(d, &[]);
    assert_eq!(code, 0, "{err}");
    for host in [
        "docker.io",
        "registry.k8s.io",
        "gcr.io",
        "quay.io",
        "ghcr.io",
    ] {
        let text = std::fs::read_to_string(dir.join(host).join("hosts.toml")).unwrap();
        assert!(text.contains("[host.\"http://127.0.0.1:5050\"]"), "{text}");
        assert!(
            text.contains("capabilities = [\"pull\", \"resolve\"]"),
            "{text}"
        );
        let want = if host == "docker.io" {
            "https://registry-1.docker.io".to_string()
        } else {
            format!("https://{host}")
        };
        assert!(text.contains(&format!("server = \"{want}\"")), "{text}");
    }
    assert!(out.contains("written"));
    // Second run: nothing changes, nothing is backed up.
    let (code, out, _) = containerd_hosts(d, &[]);
    assert_eq!(code, 0);
    assert_eq!(out.matches("unchanged").count(), 5, "{out}");
    // An operator's own file is kept byte for byte before being replaced.
    let own = "server = \"https://mirror.corp.example\"\n# mine\n";
    std::fs::write(dir.join("quay.io/hosts.toml"), own).unwrap();
    let (code, _, _) = containerd_hosts(d, &["--registry", "quay.io"]);
    assert_eq!(code, 0);
    assert_eq!(
        std::fs::read_to_string(dir.join("quay.io/hosts.toml.tender-bak")).unwrap(),
        own
    );
    let (code, _, err) = tender(&["containerd-hosts", "--mirror", "ftp://x", "--dir", d]);
    assert_eq!(code, 64, "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn containerd_hosts_restore_and_the_k3s_and_docker_formats() {
    let dir = tempdir("restore");
    let d = dir.to_str().unwrap();
    let own = b"server = \"https://registry-1.docker.io\"\n[host.\"https://corp-mirror\"]\n  capabilities = [\"pull\"]\n".to_vec();
    std::fs::create_dir_all(dir.join("docker.io")).unwrap();
    std::fs::write(dir.join("docker.io/hosts.toml"), &own).unwrap();
    let (code, _, err) = containerd_hosts(d, &["--registry", "docker.io", "--registry", "quay.io"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = containerd_hosts(
        d,
        &[
            "--registry",
            "docker.io",
            "--registry",
            "quay.io",
            "--restore",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("restored from"), "{out}");
    assert_eq!(
        std::fs::read(dir.join("docker.io/hosts.toml")).unwrap(),
        own,
        "byte for byte"
    );
    assert!(
        !dir.join("quay.io/hosts.toml").exists(),
        "a file tender created from nothing is removed"
    );

    let (code, yaml, _) = tender(&[
        "containerd-hosts",
        "--mirror",
        "http://127.0.0.1:5050",
        "--format",
        "k3s",
        "--registry",
        "docker.io",
    ]);
    assert_eq!(code, 0);
    assert!(
        yaml.contains(
            "mirrors:\n  \"docker.io\":\n    endpoint:\n      - \"http://127.0.0.1:5050\""
        ),
        "{yaml}"
    );
    let (code, json, _) = tender(&[
        "containerd-hosts",
        "--mirror",
        "http://127.0.0.1:5050",
        "--format",
        "docker",
    ]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["registry-mirrors"][0], "http://127.0.0.1:5050");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn check_config_prints_every_problem_with_its_key() {
    let (code, out, err) = tender(&["check-config"]);
    assert_eq!(code, 0, "the embedded default is valid: {out}{err}");
    assert!(out.contains("embedded default config: valid"), "{out}");
    let dir = tempdir("check-config");
    let cfg = dir.join("bad.toml");
    std::fs::write(
        &cfg,
        "cache_max_size = \"lots\"\n[[registry]]\nhost = \"Bad Host\"\n  [[registry.upstream]]\n  url = \"ftp://x\"\n",
    )
    .unwrap();
    let (code, out, _) = tender(&["check-config", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    for key in [
        "cache_max_size:",
        "registry[0].host:",
        "registry[0].upstream[0].url:",
    ] {
        assert!(
            out.lines().any(|l| l.contains(key)),
            "no line for {key} in: {out}"
        );
    }
    std::fs::write(&cfg, "listne = \"127.0.0.1:1\"\n").unwrap();
    let (code, out, _) = tender(&["check-config", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(out.contains("listne"), "{out}");
    std::fs::remove_dir_all(&dir).unwrap();
}
