//! Crash safety with the real binary: kill -9 during many concurrent
//! downloads leaves nothing unverified under a final name, a restart cleans
//! up, and `tender fsck` finds and removes a flipped byte.

use testkit::fake;
use testkit::tender;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use testkit::daemon::runtime;
use testkit::fake::{registry_toml, Fake, Fault};
use testkit::rng::random_bytes;
use testkit::tender::TenderProcess;

fn fsck(cache: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tender"))
        .args(["fsck", "--cache-dir"])
        .arg(cache)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// Every file under a final name must hash to that name.
fn assert_store_verified(cache: &Path) -> usize {
    let mut n = 0;
    for kind in ["blobs", "manifests"] {
        let base = cache.join(kind).join("sha256");
        let Ok(subs) = std::fs::read_dir(&base) else {
            continue;
        };
        for sub in subs {
            for f in std::fs::read_dir(sub.unwrap().path()).unwrap() {
                let f = f.unwrap();
                let bytes = std::fs::read(f.path()).unwrap();
                let body = if kind == "manifests" {
                    let nl = bytes.iter().position(|&b| b == b'\n').unwrap();
                    bytes[nl + 1..].to_vec()
                } else {
                    bytes
                };
                let name = f.file_name().to_string_lossy().to_string();
                assert_eq!(
                    fake::digest_of(&body),
                    format!("sha256:{name}"),
                    "unverified content under a final name"
                );
                n += 1;
            }
        }
    }
    n
}

#[test]
fn kill_9_during_concurrent_downloads_leaves_nothing_unverified() {
    let rt = runtime();
    let fake = rt.block_on(Fake::start());
    let blobs: Vec<Vec<u8>> = (0..8).map(|i| random_bytes(4 << 20, 100 + i)).collect();
    let digests: Vec<String> = blobs.iter().map(|b| fake.put_blob(b.clone())).collect();
    // ~4 MB/s per download: all eight are mid-way when the kill lands.
    fake.set_fault(Fault {
        rate: Some(4_000_000),
        ..Fault::default()
    });
    let tmp = testkit::process::TempDir::new("tender-crash");
    let toml = registry_toml("docker.io", true, &[&fake.url()]);
    let mut t = TenderProcess::start(&tmp.subdir("t"), &toml, "");
    let clients: Vec<_> = digests
        .iter()
        .map(|d| {
            let url = t.url(&format!("/v2/library/app/blobs/{d}"));
            std::thread::spawn(move || testkit::http::http_get(&url))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let cache = tmp.path().join("t/cache");
    let partials = std::fs::read_dir(cache.join("tmp")).unwrap().count();
    assert!(
        partials > 0,
        "downloads should be in flight when tender is killed"
    );
    t.kill(); // SIGKILL
    for c in clients {
        let r = c.join().unwrap();
        assert!(
            r.is_err() || r.unwrap().body.len() < 4 << 20,
            "no client may see a complete body from a killed fill"
        );
    }
    assert_store_verified(&cache);

    // Restart: temp files are gone, fsck is clean, and everything is served.
    fake.set_fault(Fault::default());
    let mut t2 = TenderProcess::start_with_config(&tmp.path().join("t"), &t.config_path, t.port);
    assert_eq!(std::fs::read_dir(cache.join("tmp")).unwrap().count(), 0);
    for (d, b) in digests.iter().zip(&blobs) {
        let r = testkit::http::http_get(&t2.url(&format!("/v2/library/app/blobs/{d}"))).unwrap();
        assert_eq!(&r.body, b);
    }
    t2.stop();
    assert_eq!(assert_store_verified(&cache), 8);
    let (code, out) = fsck(&cache);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("8 ok, 0 bad"), "{out}");
}

/// What a client asked for: the whole blob, or `start..=end` of it.
fn expected(blob: &[u8], range: Option<(usize, usize)>) -> &[u8] {
    match range {
        Some((a, b)) => &blob[a..=b],
        None => blob,
    }
}

#[test]
fn kill_9_under_a_hundred_mixed_downloads_then_restart_fsck_and_pull() {
    let rt = runtime();
    let fake = rt.block_on(Fake::start());
    let blobs: Vec<Vec<u8>> = (0..20)
        .map(|i| random_bytes(if i % 4 == 0 { 3 << 20 } else { 1 << 20 }, 300 + i))
        .collect();
    let digests: Vec<String> = blobs.iter().map(|b| fake.put_blob(b.clone())).collect();
    let tmp = testkit::process::TempDir::new("tender-crash-load");
    let toml = registry_toml("docker.io", true, &[&fake.url()]);
    let mut t = TenderProcess::start(&tmp.subdir("t"), &toml, "");
    let cache = tmp.path().join("t/cache");
    let path = |d: &str| format!("/v2/library/app/blobs/{d}");
    // Five blobs warm (committed), fifteen cold and slow to arrive.
    for d in &digests[..5] {
        testkit::http::http_get(&t.url(&path(d))).unwrap();
    }
    assert!(testkit::process::wait_until(
        Duration::from_secs(10),
        || { assert_store_verified(&cache) == 5 }
    ));
    fake.set_fault(Fault {
        rate: Some(2_000_000),
        ..Fault::default()
    });
    // 100 clients: every blob five times, a third of them ranged.
    let clients: Vec<_> = (0..100)
        .map(|i| {
            let k = i % 20;
            let range = (i % 3 == 1).then_some((1000 + i * 10, 200_000 + i * 10));
            let url = t.url(&path(&digests[k]));
            let want = expected(&blobs[k], range).to_vec();
            std::thread::spawn(move || {
                let header = range.map(|(a, b)| format!("bytes={a}-{b}"));
                let headers: Vec<(&str, &str)> =
                    header.iter().map(|h| ("range", h.as_str())).collect();
                (testkit::http::http_request("GET", &url, &headers), want)
            })
        })
        .collect();
    // Kill once cold fills are under way.
    assert!(testkit::process::wait_until(
        Duration::from_secs(20),
        || {
            std::fs::read_dir(cache.join("tmp"))
                .map(|d| d.count())
                .unwrap_or(0)
                >= 5
        }
    ));
    std::thread::sleep(Duration::from_millis(300));
    t.kill(); // SIGKILL
    let (mut complete, mut cut) = (0, 0);
    for c in clients {
        let (r, want) = c.join().unwrap();
        match r {
            Ok(r) if r.status == 200 || r.status == 206 => {
                // A body that completed is the right one, never a prefix
                // that looks complete.
                assert_eq!(r.body.len(), want.len(), "a short body completed");
                assert!(r.body == want, "a complete body with wrong bytes");
                complete += 1;
            }
            _ => cut += 1,
        }
    }
    eprintln!("{complete} downloads completed before the kill, {cut} were cut");
    assert!(cut > 0, "the kill landed mid-load");
    assert_store_verified(&cache);

    // Restart on the same cache: fsck is clean, and every pull is right.
    fake.set_fault(Fault::default());
    let (code, out) = fsck(&cache);
    assert_eq!(code, 0, "{out}");
    let mut t2 = TenderProcess::start_with_config(&tmp.path().join("t"), &t.config_path, t.port);
    for (d, b) in digests.iter().zip(&blobs) {
        let r = testkit::http::http_get(&t2.url(&path(d))).unwrap();
        assert!(r.body == *b, "{d}");
        let r = testkit::http::http_request("GET", &t2.url(&path(d)), &[("range", "bytes=10-99")])
            .unwrap();
        assert_eq!((r.status, &r.body[..]), (206, &b[10..100]));
    }
    t2.stop();
    assert_eq!(assert_store_verified(&cache), 20);
    let (code, out) = fsck(&cache);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("20 ok, 0 bad"), "{out}");
}

#[test]
fn fsck_finds_a_flipped_byte_removes_the_object_and_exits_non_zero() {
    let rt = runtime();
    let fake = rt.block_on(Fake::start());
    let (_, layers) = fake.put_image(
        "library/app",
        "v1",
        &[random_bytes(300_000, 7), random_bytes(200_000, 8)],
    );
    let tmp = testkit::process::TempDir::new("tender-fsck");
    let mut t = TenderProcess::start(
        &tmp.subdir("t"),
        &registry_toml("docker.io", true, &[&fake.url()]),
        "",
    );
    assert_eq!(
        testkit::http::http_get(&t.url("/v2/library/app/manifests/v1"))
            .unwrap()
            .status,
        200
    );
    for l in &layers {
        assert_eq!(
            testkit::http::http_get(&t.url(&format!("/v2/library/app/blobs/{l}")))
                .unwrap()
                .status,
            200
        );
    }
    let cache = tmp.path().join("t/cache");
    // Beside the running daemon fsck refuses: the daemon could re-commit an
    // object between fsck's read and its removal.
    let (code, out) = fsck(&cache);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("in use by another tender process"), "{out}");
    t.stop();
    let victim = cache
        .join("blobs/sha256")
        .join(&layers[0][7..9])
        .join(&layers[0][7..]);
    let mut bytes = std::fs::read(&victim).unwrap();
    bytes[12345] ^= 0x01;
    std::fs::write(&victim, bytes).unwrap();

    let (code, out) = fsck(&cache);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("BAD blob {}", layers[0])), "{out}");
    assert!(out.contains("2 ok, 1 bad"), "{out}");
    assert!(!victim.exists(), "the bad object is removed");
    let (code, out) = fsck(&cache);
    assert_eq!((code, out.contains("2 ok, 0 bad")), (0, true), "{out}");
}

/// Peak RSS (VmHWM) of a process, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

#[test]
fn peak_rss_stays_bounded_with_many_clients_on_large_blobs() {
    let rt = runtime();
    let fake = rt.block_on(Fake::start());
    let big = random_bytes(64 << 20, 200);
    let digest = fake.put_blob(big);
    let tmp = testkit::process::TempDir::new("tender-rss");
    let t = TenderProcess::start(
        &tmp.subdir("t"),
        &registry_toml("docker.io", true, &[&fake.url()]),
        "",
    );
    let addr = format!("127.0.0.1:{}", t.port);
    let path = format!("/v2/library/app/blobs/{digest}");
    // 16 clients on the cold blob (one coalesced fill), then 16 on the cached one.
    for _ in 0..2 {
        let clients: Vec<_> = (0..16)
            .map(|_| {
                let (a, p) = (addr.clone(), path.clone());
                std::thread::spawn(move || tender::raw_get(&a, &p))
            })
            .collect();
        for c in clients {
            assert_eq!(c.join().unwrap(), 64 << 20);
        }
    }
    assert_eq!(fake.blob_gets(), 1);
    let peak = peak_rss(t.pid());
    assert!(
        peak < 64 << 20,
        "peak RSS {} MiB for 32 x 64 MiB streams",
        peak >> 20
    );
}
