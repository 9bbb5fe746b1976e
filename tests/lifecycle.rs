//! The daemon's life with the real binary: SIGHUP reloads upstreams for new
//! requests, SIGTERM lets an in-flight blob finish, JSON logs.

use testkit::fake;

use std::time::{Duration, Instant};

use testkit::daemon::runtime;
use testkit::fake::{registry_toml, Fake, Fault};
use testkit::rng::random_bytes;
use testkit::tender::TenderProcess;

#[test]
fn sighup_reload_switches_upstreams_for_new_requests() {
    let rt = runtime();
    let (a, b) = rt.block_on(async { (Fake::start().await, Fake::start().await) });
    let (da, _) = a.put_image("library/app", "v1", &[b"from a".to_vec()]);
    let (db, _) = b.put_image("library/app", "v1", &[b"from b".to_vec()]);
    let tmp = testkit::process::TempDir::new("tender-hup");
    let t = TenderProcess::start(
        &tmp.subdir("t"),
        &registry_toml("docker.io", true, &[&a.url()]),
        "tag_ttl = \"0s\"",
    );
    let digest = || {
        let r = testkit::http::http_get(&t.url("/v2/library/app/manifests/v1")).unwrap();
        r.header("docker-content-digest")
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(digest(), da);
    // Point docker.io at b, keeping the other settings, and send SIGHUP.
    let text = std::fs::read_to_string(&t.config_path)
        .unwrap()
        .replace(&a.url(), &b.url());
    std::fs::write(&t.config_path, text).unwrap();
    t.signal("HUP");
    assert!(
        testkit::process::wait_until(Duration::from_secs(5), || digest() == db),
        "{}",
        t.log()
    );
    assert!(t.log().contains("registries and upstreams reloaded"));
    // A config that does not validate is refused and the running one kept.
    std::fs::write(&t.config_path, "listen = 5\n").unwrap();
    t.signal("HUP");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(digest(), db);
    assert!(
        t.log().contains("invalid config; keeping the running one"),
        "{}",
        t.log()
    );
}

#[test]
fn sigterm_lets_an_in_flight_blob_finish_then_exits() {
    let rt = runtime();
    let fake = rt.block_on(Fake::start());
    let data = random_bytes(6 << 20, 9);
    let digest = fake.put_blob(data.clone());
    fake.set_fault(Fault {
        rate: Some(4_000_000),
        ..Fault::default()
    }); // ~1.5 s
    let tmp = testkit::process::TempDir::new("tender-term");
    let mut t = TenderProcess::start(
        &tmp.subdir("t"),
        &registry_toml("docker.io", true, &[&fake.url()]),
        "",
    );
    let url = t.url(&format!("/v2/library/app/blobs/{digest}"));
    let client = std::thread::spawn(move || testkit::http::http_get(&url));
    std::thread::sleep(Duration::from_millis(300));
    let asked = Instant::now();
    t.signal("TERM");
    let body = client.join().unwrap().expect("the download completes").body;
    assert_eq!(body.len(), data.len());
    assert_eq!(fake::digest_of(&body), digest);
    assert_eq!(t.wait_exit(), Some(0));
    assert!(asked.elapsed() < Duration::from_secs(30));
    // The blob was committed before exit.
    let stored = tmp
        .path()
        .join("t/cache/blobs/sha256")
        .join(&digest[7..9])
        .join(&digest[7..]);
    assert!(stored.exists());
    // New connections are refused once draining started.
    assert!(std::net::TcpStream::connect(("127.0.0.1", t.port)).is_err());
}

#[test]
fn sigterm_does_not_wait_for_a_scrub_pass_over_a_large_object() {
    // A 64 MiB object scrubbed at 1 MiB/s: a pass takes a minute.
    let tmp = testkit::process::TempDir::new("tender-term-scrub");
    let cache = tmp.subdir("t/cache");
    let data = random_bytes(64 << 20, 10);
    let digest = fake::digest_of(&data);
    let dir = cache.join("blobs/sha256").join(&digest[7..9]);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(&digest[7..]), &data).unwrap();
    let mut t = TenderProcess::start(
        &tmp.subdir("t"),
        &registry_toml("docker.io", true, &["http://127.0.0.1:9"]),
        "scrub_interval = \"100ms\"\nscrub_rate = \"1MiB\"",
    );
    assert!(
        testkit::process::wait_until(Duration::from_secs(20), || {
            t.metric("tender_scrub_bytes_total") > 0.0
        }),
        "the scrub began"
    );
    let asked = Instant::now();
    t.signal("TERM");
    assert_eq!(t.wait_exit(), Some(0));
    // Stopping is checked per chunk, not per object: not a minute.
    assert!(
        asked.elapsed() < Duration::from_secs(15),
        "{:?}",
        asked.elapsed()
    );
}

#[test]
fn json_logs_are_one_object_per_line() {
    let rt = runtime();
    let fake = rt.block_on(Fake::start());
    let (_, layers) = fake.put_image("library/app", "v1", &[b"j".to_vec()]);
    let tmp = testkit::process::TempDir::new("tender-json");
    let dir = tmp.subdir("t");
    let port = testkit::process::free_port();
    let cfg = dir.join("tender.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:{port}\"\ncache_dir = \"{}\"\n{}",
            dir.join("cache").display(),
            registry_toml("docker.io", true, &[&fake.url()])
        ),
    )
    .unwrap();
    let t = TenderProcess::start_with_env(&dir, &cfg, port, &[("TENDER_LOG_FORMAT", "json")]);
    testkit::http::http_get(&t.url(&format!("/v2/library/app/blobs/{}", layers[0]))).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let log = t.log();
    let mut request_lines = 0;
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        if v["message"] == "request" && v["kind"] == "blob" {
            assert_eq!(v["registry"], "docker.io");
            assert_eq!(v["result"], "miss");
            request_lines += 1;
        }
    }
    assert_eq!(request_lines, 1, "{log}");
}

/// An index with linux/amd64 and linux/arm64 images (distinct layers).
fn put_multiarch(fake: &Fake) -> (Vec<String>, Vec<String>) {
    let mut per_arch = Vec::new();
    let mut entries = Vec::new();
    for (i, arch) in ["amd64", "arm64"].iter().enumerate() {
        let (md, layers) = fake.put_image(
            &format!("library/multi-{arch}"),
            "x",
            &[random_bytes(30_000, 40 + i as u64)],
        );
        // Serve the per-arch manifest under the multi repository too.
        let body = realparts_manifest(fake, &format!("library/multi-{arch}"), &md);
        fake.put_manifest(
            "library/multi",
            None,
            "application/vnd.oci.image.manifest.v1+json",
            body.clone(),
        );
        entries.push(format!(
            r#"{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{md}","size":{},"platform":{{"os":"linux","architecture":"{arch}"}}}}"#,
            body.len()
        ));
        let config = serde_json::from_slice::<serde_json::Value>(&body).unwrap()["config"]
            ["digest"]
            .as_str()
            .unwrap()
            .to_string();
        per_arch.push(std::iter::once(config).chain(layers).collect::<Vec<_>>());
    }
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{}]}}"#,
        entries.join(",")
    );
    fake.put_manifest(
        "library/multi",
        Some("v1"),
        "application/vnd.oci.image.index.v1+json",
        index,
    );
    let arm = per_arch.pop().unwrap();
    let amd = per_arch.pop().unwrap();
    (amd, arm)
}

fn realparts_manifest(fake: &Fake, repo: &str, digest: &str) -> Vec<u8> {
    let url = format!("{}/v2/{repo}/manifests/{digest}", fake.url());
    testkit::http::http_get(&url).unwrap().body
}

#[test]
fn prefetch_warms_the_cache_with_only_the_requested_platform() {
    let rt = runtime();
    let fake = rt.block_on(Fake::start());
    let (amd, arm) = put_multiarch(&fake);
    fake.clear_log();
    let tmp = testkit::process::TempDir::new("tender-prefetch");
    let t = TenderProcess::start(
        &tmp.subdir("t"),
        &registry_toml("docker.io", true, &[&fake.url()]),
        "",
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tender"))
        .args([
            "prefetch",
            "multi:v1",
            "--url",
            &t.base(),
            "--platform",
            "linux/arm64",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("docker.io/library/multi:v1: ok"),
        "{stdout}"
    );
    for d in &arm {
        assert_eq!(
            fake.count("GET", &format!("/blobs/{d}")),
            1,
            "arm64 blob {d} fetched once"
        );
    }
    let amd_only: Vec<_> = amd.iter().filter(|d| !arm.contains(d)).collect();
    assert!(!amd_only.is_empty());
    for d in amd_only {
        assert_eq!(
            fake.count("GET", &format!("/blobs/{d}")),
            0,
            "amd64 blob {d} must not be fetched"
        );
    }
    // Now a pod's pull of those blobs is a hit.
    let before = t.metric("tender_requests_total{kind=\"blob\",result=\"hit\"}");
    testkit::http::http_get(&t.url(&format!("/v2/library/multi/blobs/{}", arm[1]))).unwrap();
    assert_eq!(
        t.metric("tender_requests_total{kind=\"blob\",result=\"hit\"}"),
        before + 1.0
    );

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tender"))
        .args(["status", "--url", &t.base()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("hit ratio") && stdout.contains("in-flight"),
        "{stdout}"
    );
}

#[test]
fn configured_prefetch_runs_when_tender_starts() {
    let rt = runtime();
    let fake = rt.block_on(Fake::start());
    let (_, layers) = fake.put_image(
        "library/warm",
        "v1",
        &[random_bytes(20_000, 50), random_bytes(20_000, 51)],
    );
    let tmp = testkit::process::TempDir::new("tender-prefetch-cfg");
    let _t = TenderProcess::start(
        &tmp.subdir("t"),
        &format!(
            "{}\n[prefetch]\nimages = [\"docker.io/library/warm:v1\"]\ninterval = \"1h\"\n",
            registry_toml("docker.io", true, &[&fake.url()])
        ),
        "",
    );
    assert!(testkit::process::wait_until(
        Duration::from_secs(10),
        || layers
            .iter()
            .all(|l| fake.count("GET", &format!("/blobs/{l}")) == 1)
    ));
}
