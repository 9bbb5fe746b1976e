//! `verify_client_credentials` with a real containerd and a real registry
//! whose every repository needs credentials (distribution with htpasswd).
//!
//! containerd offers a host credentials only after that host challenges it
//! (its authorizer does nothing until it has seen a 401), and offers kubelet's
//! pull-secret credentials to any host, the mirror included, because kubelet
//! passes them without a server address (`ctr --user` behaves the same). So
//! tender challenges every client the registry does not confirm, and the
//! right credentials pull through tender while wrong or missing ones get no
//! private byte, even of content tender has cached.

use std::fs;

use testkit::containerd::Containerd;
use testkit::image::{make_oci_layout, skopeo_push_as};
use testkit::process::{require_tools, TempDir};
use testkit::registry::Registry;
use testkit::tender::TenderProcess;

const IMAGE: &str = "docker.io/library/private:v1";

fn hosts_for(dir: &std::path::Path, t: &TenderProcess) {
    let d = dir.join("docker.io");
    fs::create_dir_all(&d).unwrap();
    // The origin is unreachable: a pull can only succeed through tender.
    fs::write(
        d.join("hosts.toml"),
        format!(
            "server = \"https://127.0.0.1:9\"\n[host.\"{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            t.base()
        ),
    )
    .unwrap();
}

#[test]
fn only_credentials_the_registry_accepts_pull_private_content_through_tender() {
    require_tools(&["containerd", "ctr", "docker-registry", "skopeo", "htpasswd"]);
    let tmp = TempDir::new("tender-e2e-creds");
    let img = make_oci_layout(&tmp.subdir("layout"), "v1", &[512 << 10, 64 << 10], 21);
    let reg = Registry::start_with_users(
        &tmp.subdir("registry"),
        &[("alice", "right"), ("node", "nodepw")],
    );
    skopeo_push_as(
        &img,
        &format!("{}/library/private:v1", reg.host()),
        Some("node:nodepw"),
    );
    fs::write(tmp.path().join("node-creds"), "node:nodepw\n").unwrap();
    let toml = format!(
        "[[registry]]\nhost = \"docker.io\"\ndefault = true\nverify_client_credentials = true\n  \
         [[registry.upstream]]\n  url = \"{}\"\n  credentials_file = \"{}\"\n  forward_client_credentials = true\n",
        reg.url(),
        tmp.path().join("node-creds").display()
    );
    let t = TenderProcess::start(&tmp.subdir("tender"), &toml, "");
    let hosts = tmp.subdir("hosts");
    hosts_for(&hosts, &t);

    // The right credentials pull (and the content is now cached).
    let c = Containerd::start(&tmp.subdir("ctrd-right"));
    c.pull_as(&hosts, IMAGE, "alice:right")
        .unwrap_or_else(|e| panic!("pull with the right credentials failed: {e}\n{}", t.log()));
    for d in img.all_digests() {
        assert!(c.content_digests().contains(&d), "{d} missing");
    }
    drop(c);
    let served = || t.metric("tender_bytes_served_total{source=\"cache\"}");
    let before = served();

    // Wrong credentials, and none: no pull, and no cached byte handed out.
    let wrong = Containerd::start(&tmp.subdir("ctrd-wrong"));
    assert!(
        wrong.pull_as(&hosts, IMAGE, "alice:wrong").is_err(),
        "wrong password pulled"
    );
    let layers = &img.layer_digests;
    assert!(!wrong.content_digests().iter().any(|d| layers.contains(d)));
    drop(wrong);
    let none = Containerd::start(&tmp.subdir("ctrd-none"));
    assert!(
        none.pull(&hosts, IMAGE, false).is_err(),
        "an anonymous client pulled"
    );
    assert!(!none.content_digests().iter().any(|d| layers.contains(d)));
    drop(none);
    assert_eq!(served(), before, "no cached byte went to a refused client");
    let challenged = t.metric("tender_requests_total{kind=\"manifest\",result=\"error\"}");
    assert!(challenged >= 2.0, "tender challenged them: {challenged}");

    // And the right credentials still pull, from the cache.
    let again = Containerd::start(&tmp.subdir("ctrd-again"));
    again
        .pull_as(&hosts, IMAGE, "alice:right")
        .unwrap_or_else(|e| panic!("second pull failed: {e}\n{}", t.log()));
    assert!(served() > before, "served from the cache");
}
