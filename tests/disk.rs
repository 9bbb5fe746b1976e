//! Disk trouble: a full disk, the free-space watermark and an unwritable
//! cache degrade to pass-through: clients always get their bytes, verified.
//! Each test mounts its own small tmpfs (needs root, as in CI).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use testkit::daemon::Daemon;
use testkit::fake::{Fake, Fault};
use testkit::http::fetch;
use testkit::rng::random_bytes;

struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(name: &str, size: &str) -> Tmpfs {
        assert!(
            nix_is_root(),
            "the disk tests mount a tmpfs and need root (run scripts/test as root, as CI does)"
        );
        let path = std::env::temp_dir().join(format!("tender-disk-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount tmpfs at {}", path.display());
        Tmpfs { path }
    }

    fn remount_ro(&self) {
        let ok = Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(&self.path)
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }

    fn free_bytes(&self) -> u64 {
        let out = Command::new("df")
            .args(["-B1", "--output=avail"])
            .arg(&self.path)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

async fn get(url: String) -> Result<Vec<u8>, String> {
    fetch(url, None).await
}

fn temp_files(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("tmp"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_that_fills_mid_download_degrades_to_pass_through_and_never_errors_the_client() {
    let fs = Tmpfs::mount("full", "4m");
    let fake = Fake::start().await;
    // Each blob fits the free space when its fill starts; both together do not.
    let a = random_bytes(3 << 20, 1);
    let b = random_bytes(3 << 20, 2);
    let (da, db) = (fake.put_blob(a.clone()), fake.put_blob(b.clone()));
    // Bodies are held after their first chunk until both fills have passed
    // the free-space check, so the disk really fills mid-download.
    fake.set_fault(Fault {
        chunk: Some(256 << 10),
        chunk_delay: Some(Duration::from_millis(10)),
        gate: true,
        ..Fault::default()
    });
    let d = Daemon::over_in(
        fs.path.join("cache"),
        &[&fake],
        "cache_max_size = \"1GiB\"\nmin_free_space = \"0\"",
    )
    .await;
    let url = |dg: &str| d.url(&format!("/v2/library/app/blobs/{dg}"));
    let tasks: Vec<_> = [(&da, &a), (&db, &b), (&da, &a), (&db, &b)]
        .into_iter()
        .map(|(dg, want)| {
            let (u, want) = (url(dg), want.clone());
            tokio::spawn(async move { get(u).await.map(|got| got == want) })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    fake.release();
    for t in tasks {
        assert_eq!(
            t.await.unwrap(),
            Ok(true),
            "every client gets the whole, correct blob"
        );
    }
    assert!(d.metric("tender_passthrough_total{reason=\"disk_error\"}") >= 1.0);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(temp_files(&d.dir), 0, "the partial file is removed");
    // While the disk is known full, new misses stream through too.
    let small = random_bytes(100_000, 3);
    let sd = fake.put_blob(small.clone());
    assert_eq!(get(url(&sd)).await.unwrap(), small);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_larger_than_the_free_space_is_streamed_through() {
    let fs = Tmpfs::mount("huge", "4m");
    let fake = Fake::start().await;
    let data = random_bytes(6 << 20, 4);
    let digest = fake.put_blob(data.clone());
    let d = Daemon::over_in(
        fs.path.join("cache"),
        &[&fake],
        "cache_max_size = \"1GiB\"\nmin_free_space = \"0\"",
    )
    .await;
    let url = d.url(&format!("/v2/library/app/blobs/{digest}"));
    let tasks: Vec<_> = (0..3).map(|_| tokio::spawn(get(url.clone()))).collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), data);
    }
    // Each abandoned fill leaves at once, so a late client may start another.
    assert!(d.metric("tender_passthrough_total{reason=\"low_disk_space\"}") >= 1.0);
    assert_eq!(temp_files(&d.dir), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_free_space_watermark_evicts_first_then_streams_through() {
    let fs = Tmpfs::mount("watermark", "8m");
    let fake = Fake::start().await;
    let a = random_bytes(3 << 20, 3);
    let b = random_bytes(3 << 20, 4);
    let c = random_bytes(5 << 20, 5);
    let (da, db, dc) = (
        fake.put_blob(a.clone()),
        fake.put_blob(b.clone()),
        fake.put_blob(c.clone()),
    );
    // Half of the 8 MiB file system must stay free.
    let d = Daemon::over_in(
        fs.path.join("cache"),
        &[&fake],
        "cache_max_size = \"1GiB\"\nmin_free_space = \"50%\"",
    )
    .await;
    let url = |dg: &str| d.url(&format!("/v2/library/app/blobs/{dg}"));
    assert_eq!(get(url(&da)).await.unwrap(), a);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(d.has_blob(&da), "a fits: cached");
    assert_eq!(get(url(&db)).await.unwrap(), b);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!d.has_blob(&da), "a evicted to keep the watermark");
    assert!(d.has_blob(&db));
    assert_eq!(
        get(url(&dc)).await.unwrap(),
        c,
        "c can never fit: streamed through"
    );
    // Each abandoned fill leaves at once, so a late client may start another.
    assert!(d.metric("tender_passthrough_total{reason=\"low_disk_space\"}") >= 1.0);
    assert!(
        fs.free_bytes() >= 4 << 20,
        "the watermark was kept: {} free",
        fs.free_bytes()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_cache_serves_by_pass_through() {
    let fs = Tmpfs::mount("readonly", "16m");
    let fake = Fake::start().await;
    let data = random_bytes(1 << 20, 6);
    let digest = fake.put_blob(data.clone());
    let d = Daemon::over_in(fs.path.join("cache"), &[&fake], "min_free_space = \"0\"").await;
    fs.remount_ro();
    let url = d.url(&format!("/v2/library/app/blobs/{digest}"));
    assert_eq!(get(url.clone()).await.unwrap(), data);
    assert_eq!(get(url).await.unwrap(), data);
    assert!(d.metric("tender_passthrough_total{reason=\"disk_error\"}") >= 1.0);
}
