//! A real Docker Engine (`dockerd` from Debian's docker.io) pulls through
//! tender as its `registry-mirrors` entry, configured with exactly what
//! `tender containerd-hosts --format docker` prints. The image lives in a
//! real distribution registry as `library/dockerapp:v1`; Docker asks the
//! mirror without `ns`, so tender serves it from its default registry.
//!
//! Docker's own fallback (Docker Hub) goes through an HTTPS proxy on a closed
//! loopback port: nothing leaves the machine, and the log shows it was tried.
//!
//! Needs root, dockerd, docker, docker-registry and skopeo (scripts/test
//! installs them); fails, not skips, without them.

use std::process::Command;

use testkit::docker::Dockerd;
use testkit::fake::registry_toml;
use testkit::faulty::closed_port;
use testkit::image::{make_oci_layout, skopeo_push};
use testkit::netns::require_root;
use testkit::process::TempDir;
use testkit::registry::Registry;
use testkit::tender::{binary, TenderProcess};

const MIB: u64 = 1 << 20;

#[test]
fn docker_pulls_through_tender_cold_then_warm_and_falls_back_on_what_it_cannot_serve() {
    require_root();
    let tmp = TempDir::new("tender-e2e-docker");
    let img = make_oci_layout(&tmp.subdir("layout"), "v1", &[3 * MIB, MIB], 61);
    let reg = Registry::start(&tmp.subdir("registry"));
    skopeo_push(&img, &format!("{}/library/dockerapp:v1", reg.host()));
    reg.clear_log();
    let t = TenderProcess::start(
        &tmp.subdir("tender"),
        &registry_toml("docker.io", true, &[&reg.url()]),
        "",
    );
    let out = Command::new(binary())
        .args([
            "containerd-hosts",
            "--format",
            "docker",
            "--mirror",
            &t.base(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let daemon_json = String::from_utf8(out.stdout).unwrap();
    assert!(daemon_json.contains(&t.base()), "{daemon_json}");
    let dead_proxy = format!("http://127.0.0.1:{}", closed_port());
    let docker = Dockerd::start(
        &daemon_json,
        &[
            ("HTTPS_PROXY", &dead_proxy),
            ("HTTP_PROXY", &dead_proxy),
            ("NO_PROXY", "127.0.0.1,localhost"),
        ],
    );

    // Cold: every blob comes from the registry once, through tender.
    docker
        .pull("dockerapp:v1")
        .unwrap_or_else(|e| panic!("{e}\ntender:\n{}\ndockerd:\n{}", t.log(), docker.log()));
    assert!(docker.image_id("dockerapp:v1").is_some());
    let mut blobs = vec![img.config_digest.clone()];
    blobs.extend(img.layer_digests.iter().cloned());
    for d in &blobs {
        assert_eq!(reg.blob_gets_of(d), 1, "{d}");
    }
    assert!(t.metric("tender_bytes_served_total{source=\"upstream\"}") >= (4 * MIB) as f64);

    // Warm: the engine forgets the image and pulls again: no blob upstream.
    docker.rmi("dockerapp:v1");
    reg.clear_log();
    docker.pull("dockerapp:v1").unwrap();
    assert_eq!(reg.blob_gets(), 0, "{:?}", reg.requests());
    assert!(t.metric("tender_bytes_served_total{source=\"cache\"}") >= (4 * MIB) as f64);

    // A name tender cannot serve: tender answers 404, Docker moves on to
    // Docker Hub as it does for any mirror failure (here, into a dead proxy).
    let err = docker.pull("doesnotexist:v1").unwrap_err();
    assert!(
        t.log()
            .contains("path=/v2/library/doesnotexist/manifests/v1")
            && t.log().contains("status=404"),
        "tender was asked first:\n{}",
        t.log()
    );
    let log = docker.log();
    assert!(
        err.contains("proxyconnect") || log.contains("registry-1.docker.io"),
        "Docker fell back to Docker Hub after the mirror: {err}\n{log}"
    );
}
