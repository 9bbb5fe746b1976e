//! The store's contracts: LRU order and bound, open files outliving
//! eviction, restarts, accounting by disk use.

use super::*;

fn store(dir: &Path, max: u64) -> Store {
    Store::open(dir, max, Arc::new(Metrics::new())).unwrap()
}

fn put_blob(s: &Store, data: &[u8]) -> Digest {
    let d = Digest::of(data);
    let mut t = s.create_temp().unwrap();
    t.file.write_all(data).unwrap();
    s.commit(Kind::Blob, t, &d, data.len() as u64).unwrap();
    d
}

fn tempdir(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("tender-store-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&p);
    p
}

/// Objects are accounted by the disk they take (whole blocks), and the
/// directories count too: bounds in these tests leave room for both.
const KIB: usize = 1024;
const DIRS: u64 = 64 * 1024;

#[test]
fn evicts_least_recently_used_down_to_low_water() {
    let dir = tempdir("lru");
    let s = store(&dir, DIRS + 1000 * KIB as u64);
    let a = put_blob(&s, &[1u8; 300 * KIB]);
    let b = put_blob(&s, &[2u8; 300 * KIB]);
    let c = put_blob(&s, &[3u8; 300 * KIB]);
    // Use `a` so that `b` is now the oldest.
    assert!(s.open_blob(&a).unwrap().is_some());
    let d = put_blob(&s, &[4u8; 300 * KIB]);
    assert!(
        s.open_blob(&b).unwrap().is_none(),
        "LRU victim must be gone"
    );
    for x in [a, c, d] {
        assert!(s.blob_size(&x).unwrap().is_some());
    }
    assert!(s.disk_usage() <= DIRS + 1000 * KIB as u64);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn open_file_survives_eviction() {
    let dir = tempdir("evict-open");
    let s = store(&dir, DIRS + 500 * KIB as u64);
    let a = put_blob(&s, &[7u8; 400 * KIB]);
    let (mut f, _) = s.open_blob(&a).unwrap().unwrap();
    put_blob(&s, &[8u8; 400 * KIB]);
    assert!(s.blob_size(&a).unwrap().is_none());
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).unwrap();
    assert_eq!(buf, vec![7u8; 400 * KIB]);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn objects_larger_than_the_cache_are_not_kept() {
    let dir = tempdir("huge");
    let s = store(&dir, 100);
    let d = Digest::of(&[0u8; 200]);
    let mut t = s.create_temp().unwrap();
    t.file.write_all(&[0u8; 200]).unwrap();
    let p = t.path.clone();
    assert!(!s.commit(Kind::Blob, t, &d, 200).unwrap());
    assert!(s.blob_size(&d).unwrap().is_none());
    assert!(!p.exists());
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn rebuild_restores_index_and_clears_temp_files() {
    let dir = tempdir("rebuild");
    let (a, b) = {
        let s = store(&dir, 10 << 20);
        let a = put_blob(&s, b"first");
        let b = put_blob(&s, b"second");
        s.put_manifest(
            &Digest::of(b"{}"),
            "application/vnd.oci.image.manifest.v1+json",
            b"{}",
        )
        .unwrap();
        let t = s.create_temp().unwrap(); // left behind, as after a kill -9
        std::mem::forget(t);
        (a, b)
    };
    let s = store(&dir, 10 << 20);
    assert_eq!(fs::read_dir(dir.join("tmp")).unwrap().count(), 0);
    assert_eq!(s.rebuild_index().unwrap(), 3);
    assert_eq!(s.entry_count(), 3);
    assert!(s.open_blob(&a).unwrap().is_some() && s.open_blob(&b).unwrap().is_some());
    let (mt, body) = s.read_manifest(&Digest::of(b"{}")).unwrap().unwrap();
    assert_eq!(
        (mt.as_str(), &body[..]),
        ("application/vnd.oci.image.manifest.v1+json", &b"{}"[..])
    );
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn access_order_survives_a_restart() {
    let dir = tempdir("order");
    let (a, b, c) = {
        let s = store(&dir, 10 << 20);
        // File mtimes tick with the kernel's coarse clock: space the writes.
        let pause = || std::thread::sleep(std::time::Duration::from_millis(30));
        let a = put_blob(&s, &[1u8; 100 * KIB]);
        pause();
        let b = put_blob(&s, &[2u8; 100 * KIB]);
        pause();
        let c = put_blob(&s, &[3u8; 100 * KIB]);
        assert!(s.open_blob(&a).unwrap().is_some()); // a is now the most recently used
        s.flush_access_times();
        (a, b, c)
    };
    // Restart with a smaller bound: the rebuilt LRU evicts b, the oldest.
    let s = store(&dir, DIRS + 250 * KIB as u64);
    s.rebuild_index().unwrap();
    assert!(s.blob_size(&b).unwrap().is_none());
    assert!(s.blob_size(&a).unwrap().is_some() && s.blob_size(&c).unwrap().is_some());
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn small_records_are_accounted_by_the_blocks_they_take() {
    let dir = tempdir("records");
    let s = store(&dir, 10 << 20);
    let before = s.total_size();
    for i in 0..10u8 {
        s.put_record(Kind::Tag, &Digest::of(&[i]), &[b"{}"])
            .unwrap();
    }
    let per_record = (s.total_size() - before) / 10;
    assert!(
        per_record >= 512,
        "a 2-byte record takes a block: {per_record}"
    );
    // Replacing a record does not count it twice.
    s.put_record(Kind::Tag, &Digest::of(&[0]), &[b"{\"x\":1}"])
        .unwrap();
    assert_eq!(s.entry_count(), 10);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn flat_tag_records_of_earlier_versions_are_moved_into_the_fan_out() {
    let dir = tempdir("migrate");
    let id = Digest::of(b"docker.io/library/app:v1");
    fs::create_dir_all(dir.join("tags")).unwrap();
    fs::write(dir.join("tags").join(id.hex()), b"{}").unwrap();
    fs::write(dir.join("tags").join("abc.tmp"), b"half").unwrap();
    let s = store(&dir, 10 << 20);
    assert_eq!(s.read_record(Kind::Tag, &id).unwrap().unwrap(), b"{}");
    assert!(!dir.join("tags").join("abc.tmp").exists());
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_store_is_open_in_one_process_at_a_time() {
    let dir = tempdir("lock");
    let first = store(&dir, 10 << 20);
    match Store::open(&dir, 10 << 20, Arc::new(Metrics::new())) {
        Err(StoreError::InUse { .. }) => {}
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a second open must be refused"),
    }
    drop(first);
    assert!(Store::open(&dir, 10 << 20, Arc::new(Metrics::new())).is_ok());
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_index_rebuild_scans_without_the_lock_the_hot_path_takes() {
    let dir = tempdir("rebuild-lock");
    {
        let s = store(&dir, 1 << 30);
        for i in 0..2000u32 {
            put_blob(&s, &i.to_le_bytes());
        }
    }
    let s = store(&dir, 1 << 30);
    let mut scanned = 0;
    let n = s
        .rebuild_index_with(|| {
            // What `mark_used` (every hit, on the async workers) would take.
            assert!(s.index.try_lock().is_ok(), "the scan holds the index lock");
            scanned += 1;
        })
        .unwrap();
    assert_eq!(n, 2000);
    assert!(scanned >= 200, "{scanned} directories");
    fs::remove_dir_all(&dir).unwrap();
}
