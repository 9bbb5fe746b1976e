//! The daemon's life with the real binary: SIGHUP reloads upstreams for new
//! requests, SIGTERM lets an in-flight blob finish, JSON logs.

#[path = "support/fake.rs"]
mod fake;
#[path = "support/realparts.rs"]
mod realparts;
#[path = "support/tender.rs"]
mod tender;

use std::time::{Duration, Instant};

use fake::{random_bytes, registry_toml, Fake, Fault};
use tender::TenderProcess;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn sighup_reload_switches_upstreams_for_new_requests() {
    let rt = runtime();
    let (a, b) = rt.block_on(async { (Fake::start().await, Fake::start().await) });
    let (da, _) = a.put_image("library/app", "v1", &[b"from a".to_vec()]);
    let (db, _) = b.put_image("library/app", "v1", &[b"from b".to_vec()]);
    let tmp = realparts::TempDir::new("tender-hup");
    let t = TenderProcess::start(
        &tmp.subdir("t"),
        &registry_toml("docker.io", true, &[&a.url()]),
        "tag_ttl = \"0s\"",
    );
    let digest = || {
        let r = realparts::http_get(&t.url("/v2/library/app/manifests/v1")).unwrap();
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
        realparts::wait_until(Duration::from_secs(5), || digest() == db),
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
    let tmp = realparts::TempDir::new("tender-term");
    let mut t = TenderProcess::start(
        &tmp.subdir("t"),
        &registry_toml("docker.io", true, &[&fake.url()]),
        "",
    );
    let url = t.url(&format!("/v2/library/app/blobs/{digest}"));
    let client = std::thread::spawn(move || realparts::http_get(&url));
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
fn json_logs_are_one_object_per_line() {
    let rt = runtime();
    let fake = rt.block_on(Fake::start());
    let (_, layers) = fake.put_image("library/app", "v1", &[b"j".to_vec()]);
    let tmp = realparts::TempDir::new("tender-json");
    let dir = tmp.subdir("t");
    let port = realparts::free_port();
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
    realparts::http_get(&t.url(&format!("/v2/library/app/blobs/{}", layers[0]))).unwrap();
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
