//! End to end with real parts: distribution (`docker-registry`) as the
//! upstream, images pushed with `skopeo`, and a real containerd pulling
//! `docker.io/library/...` through tender while the origin is unreachable.
//!
//! These tests need containerd, ctr, docker-registry and skopeo (Debian
//! packages); `scripts/test` installs them. They fail, not skip, without them.

use testkit::certs;

use std::fs;
use std::process::Command;

use testkit::containerd::*;
use testkit::http::*;
use testkit::image::*;
use testkit::process::*;
use testkit::registry::*;
use testkit::tender::TenderProcess;

const UNREACHABLE_ORIGIN: &str = "https://127.0.0.1:9";
const MIB: u64 = 1 << 20;

fn docker_io_via(upstream: &str) -> String {
    format!("[[registry]]\nhost = \"docker.io\"\ndefault = true\n  [[registry.upstream]]\n  url = \"{upstream}\"\n")
}

/// Writes hosts.toml with `tender containerd-hosts`, then points its
/// `server` fallback at an unreachable loopback port so that nothing can
/// leave the machine and the pull can only succeed through tender.
fn generate_hosts(dir: &std::path::Path, t: &TenderProcess) {
    let out = Command::new(env!("CARGO_BIN_EXE_tender"))
        .args([
            "containerd-hosts",
            "--mirror",
            &t.base(),
            "--registry",
            "docker.io",
            "--dir",
        ])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = dir.join("docker.io/hosts.toml");
    let text = fs::read_to_string(&path).unwrap();
    assert!(
        text.contains("server = \"https://registry-1.docker.io\""),
        "{text}"
    );
    assert!(text.contains(&format!("[host.\"{}\"]", t.base())), "{text}");
    fs::write(
        &path,
        text.replace("https://registry-1.docker.io", UNREACHABLE_ORIGIN),
    )
    .unwrap();
}

#[test]
fn containerd_pulls_through_tender_cold_then_warm_then_with_the_upstream_down() {
    require_tools(&["containerd", "ctr", "docker-registry", "skopeo"]);
    let tmp = TempDir::new("tender-e2e");
    let img = make_oci_layout(&tmp.subdir("layout"), "v1", &[3 * MIB, MIB, 200 << 10], 11);
    let reg = Registry::start(&tmp.subdir("registry"));
    skopeo_push(&img, &format!("{}/library/e2etest:v1", reg.host()));
    reg.clear_log();

    let mut t = TenderProcess::start(&tmp.subdir("tender"), &docker_io_via(&reg.url()), "");
    let hosts = tmp.subdir("hosts");
    generate_hosts(&hosts, &t);

    // Cold: everything comes from the upstream, once.
    let c1 = Containerd::start(&tmp.subdir("ctrd1"));
    c1.pull(&hosts, "docker.io/library/e2etest:v1", false)
        .unwrap_or_else(|e| panic!("cold pull failed: {e}\ntender log:\n{}", t.log()));
    let content = c1.content_digests();
    for d in img.all_digests() {
        assert!(
            content.contains(&d),
            "{d} missing from containerd after the cold pull"
        );
    }
    let layers_and_config = img.layer_digests.len() + 1;
    assert_eq!(
        reg.blob_gets(),
        layers_and_config,
        "cold pull: one upstream GET per blob"
    );
    for d in &img.layer_digests {
        assert_eq!(reg.blob_gets_of(d), 1, "{d} fetched more than once");
    }
    reg.clear_log();

    // Warm: a fresh containerd, the same image: zero upstream requests
    // (blobs from disk, the tag within tag_ttl).
    let c2 = Containerd::start(&tmp.subdir("ctrd2"));
    c2.pull(&hosts, "docker.io/library/e2etest:v1", false)
        .unwrap_or_else(|e| panic!("warm pull failed: {e}\ntender log:\n{}", t.log()));
    assert_eq!(
        reg.blob_gets(),
        0,
        "warm pull must not fetch blobs upstream"
    );
    assert_eq!(
        reg.requests(),
        Vec::<(String, String)>::new(),
        "warm pull must not reach the upstream"
    );
    let hits = t.metric("tender_requests_total{kind=\"blob\",result=\"hit\"}");
    assert!(
        hits >= layers_and_config as f64,
        "blob hits: {hits}\n{}",
        t.metrics()
    );

    // Upstream down and tender restarted on the same cache: the tag is
    // served from its persisted mapping (stale-if-error), blobs from disk.
    drop(reg);
    let dir = tmp.subdir("tender");
    let cfg = t.config_path.clone();
    let port = t.port;
    t.kill();
    let t2 = TenderProcess::start_with_config(&dir, &cfg, port);
    let c3 = Containerd::start(&tmp.subdir("ctrd3"));
    c3.pull(&hosts, "docker.io/library/e2etest:v1", false)
        .unwrap_or_else(|e| {
            panic!(
                "pull with the upstream down failed: {e}\ntender log:\n{}",
                t2.log()
            )
        });
    assert!(
        t2.metric("tender_stale_tags_served_total") >= 1.0,
        "{}",
        t2.metrics()
    );
}

#[test]
fn docker_style_requests_without_ns_use_the_default_registry() {
    require_tools(&["docker-registry", "skopeo"]);
    let tmp = TempDir::new("tender-e2e-nons");
    let img = make_oci_layout(&tmp.subdir("layout"), "v2", &[MIB, 64 << 10], 12);
    let reg = Registry::start(&tmp.subdir("registry"));
    skopeo_push(&img, &format!("{}/library/nons:v2", reg.host()));
    let t = TenderProcess::start(&tmp.subdir("tender"), &docker_io_via(&reg.url()), "");

    // skopeo, like Docker's registry-mirrors, sends no ns parameter.
    let out_dir = tmp.subdir("out");
    let out = Command::new("skopeo")
        .args([
            "copy",
            "--insecure-policy",
            "--src-tls-verify=false",
            "--preserve-digests",
        ])
        .arg(format!("docker://127.0.0.1:{}/library/nons:v2", t.port))
        .arg(format!("oci:{}:v2", out_dir.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo through tender failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        t.log()
    );
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(out_dir.join("index.json")).unwrap()).unwrap();
    assert_eq!(
        index["manifests"][0]["digest"],
        img.manifest_digest.as_str()
    );
    for d in &img.layer_digests {
        let hex = d.strip_prefix("sha256:").unwrap();
        let copied = fs::read(out_dir.join("blobs/sha256").join(hex)).unwrap();
        assert_eq!(sha256_digest(&copied), *d);
    }
    assert!(
        t.log().contains("registry=docker.io"),
        "requests without ns must go to the default registry"
    );
}

/// An nginx terminating TLS (certificate for IP 127.0.0.1, signed by a CA
/// made here with openssl) in front of `backend`. Returns (port, CA path).
struct TlsFront {
    child: std::process::Child,
    port: u16,
    ca: std::path::PathBuf,
}

impl TlsFront {
    fn start(dir: &std::path::Path, backend: &str) -> TlsFront {
        let certs = certs::make(dir);
        let port = free_port();
        let d = dir.display();
        fs::write(
            dir.join("nginx.conf"),
            format!(
                "daemon off; master_process off; pid {d}/nginx.pid; error_log {d}/error.log;\n\
                 events {{}}\n\
                 http {{ access_log off; client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;\n\
                   fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
                   server {{ listen 127.0.0.1:{port} ssl; ssl_certificate {d}/srv.pem; ssl_certificate_key {d}/srv.key;\n\
                     location / {{ proxy_pass {backend}; proxy_set_header Host $http_host; proxy_buffering off; }} }} }}\n"
            ),
        )
        .unwrap();
        let nginx = if std::path::Path::new("/usr/sbin/nginx").exists() {
            "/usr/sbin/nginx"
        } else {
            "nginx"
        };
        let child = Command::new(nginx)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-e")
            .arg(dir.join("error.log"))
            .spawn()
            .unwrap();
        assert!(wait_until(std::time::Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        }));
        TlsFront {
            child,
            port,
            ca: certs.ca,
        }
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn an_https_upstream_with_a_private_ca_is_trusted_only_through_its_ca_file() {
    require_tools(&["docker-registry", "skopeo", "nginx", "openssl"]);
    let tmp = TempDir::new("tender-e2e-tls");
    let img = make_oci_layout(&tmp.subdir("layout"), "v1", &[MIB, 100 << 10], 13);
    let reg = Registry::start(&tmp.subdir("registry"));
    skopeo_push(&img, &format!("{}/library/tls:v1", reg.host()));
    let front = TlsFront::start(&tmp.subdir("tls"), &reg.url());
    let https = format!("https://127.0.0.1:{}", front.port);
    let toml = |ca: Option<&std::path::Path>| {
        let mut s = format!("[[registry]]\nhost = \"docker.io\"\ndefault = true\n  [[registry.upstream]]\n  url = \"{https}\"\n");
        if let Some(ca) = ca {
            s.push_str(&format!("  ca_file = \"{}\"\n", ca.display()));
        }
        s
    };
    let untrusting = TenderProcess::start(&tmp.subdir("t1"), &toml(None), "");
    let r = http_get(&untrusting.url("/v2/library/tls/manifests/v1")).unwrap();
    assert_eq!(r.status, 503, "an unknown CA must not be trusted");
    let trusting = TenderProcess::start(&tmp.subdir("t2"), &toml(Some(&front.ca)), "");
    let r = http_get(&trusting.url("/v2/library/tls/manifests/v1")).unwrap();
    assert_eq!(r.status, 200, "{}", trusting.log());
    assert_eq!(
        r.header("docker-content-digest"),
        Some(img.manifest_digest.as_str())
    );
    let layer = &img.layer_digests[0];
    let r = http_get(&trusting.url(&format!("/v2/library/tls/blobs/{layer}"))).unwrap();
    assert_eq!(sha256_digest(&r.body), *layer);
}
