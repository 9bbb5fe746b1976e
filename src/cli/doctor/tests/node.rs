//! Reading the node (version lines, the probe, gather) and rendering.

use std::io::{Read, Write};
use std::net::TcpListener;

use super::super::containerd::{parse_containerd_version, Version};
use super::*;

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
fn tender_down_is_a_problem_and_the_exit_code_is_one() {
    let mut inputs = node(Some(CONTAINERD_1_7), Some(VERSION_1_7));
    inputs.tender_probe = Err("cannot connect: Connection refused (os error 111)".to_string());
    let findings = diagnose(&inputs);
    let f = finding(&findings, "tender does not answer");
    assert_eq!(f.level, Level::Problem);
    fix_says(f, "falls back to the origins");
    assert_eq!(exit_code(&findings), 1);
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
    assert_eq!(
        render(&findings[..1]),
        "OK   containerd config_path = \"/etc/containerd/certs.d\"\ndoctor: all checks passed\n"
    );
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
    let mirror =
        one_shot_server("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
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
    let setup = || -> std::io::Result<()> {
        std::fs::create_dir_all(certs.join("docker.io"))?;
        std::fs::create_dir_all(certs.join("_default"))?;
        std::fs::write(
            certs.join("docker.io/hosts.toml"),
            crate::cli::hosts::hosts_toml("docker.io", MIRROR),
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
