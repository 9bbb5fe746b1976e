//! The content-addressed store on disk and its size-bounded LRU index.
//!
//! Layout under the cache dir:
//! - `blobs/sha256/<2 hex>/<64 hex>`: blob bytes, exactly as their digest says;
//! - `manifests/sha256/<2 hex>/<64 hex>`: one line with the media type, then the
//!   manifest's exact bytes (the digest covers only those bytes);
//! - `tmp/`: files being filled; emptied on start, never renamed unless verified.
//!
//! The file system is the source of truth for lookups (a hit is a successful
//! `open`), so tender serves as soon as it starts; the in-memory index only
//! orders entries for eviction and is rebuilt from disk in the background.
//! Every method here does blocking I/O: call it from `spawn_blocking`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::digest::Digest;
use crate::metrics::Metrics;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Blob,
    Manifest,
}

impl Kind {
    fn dir(self) -> &'static str {
        match self {
            Kind::Blob => "blobs",
            Kind::Manifest => "manifests",
        }
    }
}

type Key = (Kind, Digest);

struct Entry {
    size: u64,
    seq: u64,
}

/// Access order: the lowest sequence number is the least recently used.
/// Entries found on disk at start get sequence numbers below `LIVE_SEQ_BASE`
/// in mtime order, so anything touched since start is younger than them.
#[derive(Default)]
struct Index {
    entries: HashMap<Key, Entry>,
    order: BTreeMap<u64, Key>,
    total: u64,
    next_seq: u64,
    /// Touched since the last flush of access times to disk.
    dirty: HashSet<Key>,
}

const LIVE_SEQ_BASE: u64 = 1 << 40;

impl Index {
    fn insert(&mut self, key: Key, size: u64, seq: u64) {
        if let Some(old) = self.entries.insert(key, Entry { size, seq }) {
            self.order.remove(&old.seq);
            self.total -= old.size;
        }
        self.order.insert(seq, key);
        self.total += size;
    }

    fn touch(&mut self, key: Key) -> bool {
        let seq = self.next_seq;
        match self.entries.get_mut(&key) {
            Some(e) => {
                self.order.remove(&e.seq);
                e.seq = seq;
                self.order.insert(seq, key);
                self.next_seq += 1;
                self.dirty.insert(key);
                true
            }
            None => false,
        }
    }

    fn remove(&mut self, key: &Key) -> Option<u64> {
        let e = self.entries.remove(key)?;
        self.order.remove(&e.seq);
        self.total -= e.size;
        self.dirty.remove(key);
        Some(e.size)
    }
}

/// How much of the cache's file system tender leaves free for the node.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FreeSpace {
    /// Percent of the file system's size.
    Percent(f64),
    Bytes(u64),
}

/// How long the cache is treated as unwritable after a write failed with
/// ENOSPC, EIO or EROFS, before a fill tries the disk again.
const DISK_BACKOFF: std::time::Duration = std::time::Duration::from_secs(10);

pub struct Store {
    root: PathBuf,
    min_free: FreeSpace,
    disk_failed_at: Mutex<Option<std::time::Instant>>,
    tmp: PathBuf,
    max_size: u64,
    low_water: u64,
    index: Mutex<Index>,
    temp_seq: AtomicU64,
    indexed: AtomicBool,
    metrics: Arc<Metrics>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cache I/O: {0}")]
    Io(#[from] io::Error),
    #[error("stored object {path} is corrupt: {why}")]
    Corrupt { path: PathBuf, why: String },
}

impl Store {
    /// Creates the layout under `root` and deletes leftover temp files. The
    /// index starts empty; call [`Store::rebuild_index`] (in the background).
    pub fn open(root: &Path, max_size: u64, metrics: Arc<Metrics>) -> io::Result<Store> {
        let s = Store::open_shared(root, max_size, metrics)?;
        for e in fs::read_dir(&s.tmp)? {
            let _ = fs::remove_file(e?.path());
        }
        Ok(s)
    }

    /// Opens the store without deleting temp files, for tools (fsck) that
    /// may run beside a live daemon whose fills own them.
    pub fn open_shared(root: &Path, max_size: u64, metrics: Arc<Metrics>) -> io::Result<Store> {
        for kind in [Kind::Blob, Kind::Manifest] {
            fs::create_dir_all(root.join(kind.dir()).join("sha256"))?;
        }
        let tmp = root.join("tmp");
        fs::create_dir_all(&tmp)?;
        Ok(Store {
            root: root.to_path_buf(),
            min_free: FreeSpace::Bytes(0),
            disk_failed_at: Mutex::new(None),
            tmp,
            max_size,
            // Evict in batches down to 90% so that eviction does not run on every commit.
            low_water: max_size / 10 * 9,
            index: Mutex::new(Index {
                next_seq: LIVE_SEQ_BASE,
                ..Index::default()
            }),
            temp_seq: AtomicU64::new(0),
            indexed: AtomicBool::new(false),
            metrics,
        })
    }

    /// Sets the free-space watermark that fills must leave on the file system.
    pub fn with_min_free(mut self, min_free: FreeSpace) -> Store {
        self.min_free = min_free;
        self
    }

    /// Whether a recent write failure makes the cache unusable for now.
    pub fn is_full(&self) -> bool {
        let g = self
            .disk_failed_at
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        g.is_some_and(|t| t.elapsed() < DISK_BACKOFF)
    }

    /// Records a failed write; disk-level failures pause caching for a while.
    pub fn note_write_failure(&self, e: &io::Error) {
        let disk_level = matches!(
            e.raw_os_error(),
            Some(libc::ENOSPC)
                | Some(libc::EDQUOT)
                | Some(libc::EROFS)
                | Some(libc::EIO)
                | Some(libc::EACCES)
        );
        if disk_level {
            *self
                .disk_failed_at
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(std::time::Instant::now());
        }
    }

    /// Gets a temp file for a fill of `expected` bytes, if the file system
    /// can take it without going below the free-space watermark (evicting
    /// least recently used objects to make room). The error is a metric
    /// reason: the caller streams the blob through without caching it.
    pub fn prepare_fill(&self, expected: Option<u64>) -> Result<(PathBuf, File), &'static str> {
        if self.is_full() {
            return Err("disk_full");
        }
        if let Ok(st) = nix::sys::statvfs::statvfs(&self.root) {
            let frag = st.fragment_size();
            let avail = st.blocks_available() * frag;
            let size = st.blocks() * frag;
            let min = match self.min_free {
                FreeSpace::Percent(p) => (size as f64 * p / 100.0) as u64,
                FreeSpace::Bytes(b) => b,
            };
            let need = min.saturating_add(expected.unwrap_or(0));
            if avail < need {
                // Evict only when that can make the room: wiping the cache
                // for space taken by others (or before the index knows the
                // cold objects) would only lose it.
                let deficit = need - avail;
                if !self.is_indexed() || self.total_size() < deficit {
                    return Err("low_disk_space");
                }
                self.evict_bytes(deficit);
                // Files still open by readers free nothing yet: ask again.
                let avail_now = nix::sys::statvfs::statvfs(&self.root)
                    .map(|st| st.blocks_available() * st.fragment_size())
                    .unwrap_or(0);
                if avail_now < need {
                    return Err("low_disk_space");
                }
            }
        }
        self.create_temp().map_err(|e| {
            self.note_write_failure(&e);
            "disk_error"
        })
    }

    /// Evicts least recently used objects until `bytes` are freed (or the
    /// index is empty); returns the bytes freed.
    pub fn evict_bytes(&self, bytes: u64) -> u64 {
        let (victims, freed) = {
            let mut idx = self.lock();
            let mut victims = Vec::new();
            let mut freed = 0;
            while freed < bytes {
                let Some(key) = idx.order.values().next().copied() else {
                    break;
                };
                freed += idx.remove(&key).unwrap_or(0);
                victims.push(key);
            }
            self.publish(&idx);
            (victims, freed)
        };
        self.unlink(victims);
        freed
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn max_size(&self) -> u64 {
        self.max_size
    }

    pub fn is_indexed(&self) -> bool {
        self.indexed.load(Ordering::Acquire)
    }

    fn lock(&self) -> MutexGuard<'_, Index> {
        // A panic while holding the lock leaves a consistent-enough index
        // (worst case a wrong size total); keep serving.
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn path(&self, kind: Kind, d: &Digest) -> PathBuf {
        let hex = d.hex();
        self.root
            .join(kind.dir())
            .join("sha256")
            .join(&hex[..2])
            .join(hex)
    }

    /// Opens a stored blob for reading and marks it used.
    pub fn open_blob(&self, d: &Digest) -> io::Result<Option<(File, u64)>> {
        match File::open(self.path(Kind::Blob, d)) {
            Ok(f) => {
                let size = f.metadata()?.len();
                self.touch(Kind::Blob, d, size);
                Ok(Some((f, size)))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether a blob is stored, and its size, without touching it.
    pub fn blob_size(&self, d: &Digest) -> io::Result<Option<u64>> {
        match fs::metadata(self.path(Kind::Blob, d)) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Reads a stored manifest: (media type, exact bytes).
    pub fn read_manifest(&self, d: &Digest) -> Result<Option<(String, Bytes)>, StoreError> {
        let path = self.path(Kind::Manifest, d);
        let mut buf = Vec::new();
        match File::open(&path) {
            Ok(mut f) => {
                f.read_to_end(&mut buf)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        let size = buf.len() as u64;
        let (media_type, body) = split_manifest_file(&buf).ok_or_else(|| StoreError::Corrupt {
            path: path.clone(),
            why: "no media type line".into(),
        })?;
        let media_type = media_type.to_string();
        let body = Bytes::copy_from_slice(body);
        self.touch(Kind::Manifest, d, size);
        Ok(Some((media_type, body)))
    }

    /// Marks an object used without any I/O (for objects served from memory).
    pub fn mark_used(&self, kind: Kind, d: &Digest) {
        self.lock().touch((kind, *d));
    }

    fn touch(&self, kind: Kind, d: &Digest, size: u64) {
        let mut idx = self.lock();
        if !idx.touch((kind, *d)) {
            // Present on disk but not indexed yet (the rebuild is still
            // running, or another process put it there): index it now.
            let seq = idx.next_seq;
            idx.next_seq += 1;
            idx.insert((kind, *d), size, seq);
            self.publish(&idx);
        }
    }

    /// A new, empty temp file inside the store (same file system as the final
    /// location, so the commit is an atomic rename).
    pub fn create_temp(&self) -> io::Result<(PathBuf, File)> {
        let n = self.temp_seq.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = self
            .tmp
            .join(format!("{}-{n}-{nanos:08x}.partial", std::process::id()));
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok((path, f))
    }

    /// Moves a verified temp file to its final name: fsync the data, rename,
    /// fsync the directory, then account for it and evict if over the bound.
    /// Objects larger than the whole cache are not kept. Returns whether the
    /// object was kept.
    pub fn commit(
        &self,
        kind: Kind,
        temp: &Path,
        file: &File,
        d: &Digest,
        size: u64,
    ) -> io::Result<bool> {
        // Above the low-water mark, keeping it would evict everything else
        // and then itself.
        if size > self.low_water {
            let _ = fs::remove_file(temp);
            self.metrics
                .passthrough
                .with_label_values(&["larger_than_cache"])
                .inc();
            return Ok(false);
        }
        let res = (|| {
            file.sync_all()?;
            let dest = self.path(kind, d);
            let dir = dest.parent().expect("store paths have a parent");
            fs::create_dir_all(dir)?;
            fs::rename(temp, &dest)?;
            File::open(dir)?.sync_all()
        })();
        if let Err(e) = res {
            let _ = fs::remove_file(temp);
            return Err(e);
        }
        let evicted = {
            let mut idx = self.lock();
            let seq = idx.next_seq;
            idx.next_seq += 1;
            idx.insert((kind, *d), size, seq);
            let victims = self.pick_victims(&mut idx);
            self.publish(&idx);
            victims
        };
        self.unlink(evicted);
        Ok(true)
    }

    /// Stores a manifest (already verified by the caller).
    pub fn put_manifest(&self, d: &Digest, media_type: &str, bytes: &[u8]) -> io::Result<()> {
        if self.path(Kind::Manifest, d).exists() {
            return Ok(());
        }
        let (temp, mut f) = self.create_temp()?;
        let res = (|| {
            f.write_all(media_type.as_bytes())?;
            f.write_all(b"\n")?;
            f.write_all(bytes)
        })();
        if let Err(e) = res {
            let _ = fs::remove_file(&temp);
            return Err(e);
        }
        let size = (media_type.len() + 1 + bytes.len()) as u64;
        self.commit(Kind::Manifest, &temp, &f, d, size).map(|_| ())
    }

    fn pick_victims(&self, idx: &mut Index) -> Vec<Key> {
        let mut victims = Vec::new();
        if idx.total <= self.max_size {
            return victims;
        }
        while idx.total > self.low_water {
            let Some((_, key)) = idx.order.iter().next().map(|(s, k)| (*s, *k)) else {
                break;
            };
            idx.remove(&key);
            victims.push(key);
        }
        victims
    }

    /// Unlinks evicted objects. Readers holding them open keep reading: an
    /// open file keeps its inode.
    fn unlink(&self, victims: Vec<Key>) {
        for (kind, d) in victims {
            match fs::remove_file(self.path(kind, &d)) {
                Ok(()) => self.metrics.evictions.inc(),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(digest = %d, error = %e, "eviction failed to unlink"),
            }
        }
    }

    /// Drops an object (for example one that failed verification).
    pub fn remove(&self, kind: Kind, d: &Digest) -> io::Result<()> {
        {
            let mut idx = self.lock();
            idx.remove(&(kind, *d));
            self.publish(&idx);
        }
        match fs::remove_file(self.path(kind, d)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn publish(&self, idx: &Index) {
        self.metrics.cache_size.set(idx.total as i64);
        self.metrics.cache_entries.set(idx.entries.len() as i64);
    }

    pub fn total_size(&self) -> u64 {
        self.lock().total
    }

    pub fn entry_count(&self) -> usize {
        self.lock().entries.len()
    }

    /// Scans the store and indexes what is there, oldest mtime first (mtimes
    /// carry access order across restarts, see [`Store::flush_access_times`]).
    /// Then evicts if the store is over its bound (for example after the
    /// bound was lowered). Returns the number of objects found.
    pub fn rebuild_index(&self) -> io::Result<usize> {
        let mut found: Vec<(SystemTime, Key, u64)> = Vec::new();
        // One unreadable entry must not stop the scan (or /readyz forever):
        // skip what vanished meanwhile (evicted, removed), log the rest.
        let note = |path: &Path, e: &io::Error| {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(path = %path.display(), error = %e, "skipping unreadable store entry");
            }
        };
        for kind in [Kind::Blob, Kind::Manifest] {
            let base = self.root.join(kind.dir()).join("sha256");
            let subs = match fs::read_dir(&base) {
                Ok(s) => s,
                Err(e) => {
                    note(&base, &e);
                    continue;
                }
            };
            for sub in subs.flatten() {
                let Some(prefix) = sub.file_name().to_str().map(str::to_string) else {
                    continue;
                };
                if prefix.len() != 2 || !sub.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let files = match fs::read_dir(sub.path()) {
                    Ok(f) => f,
                    Err(e) => {
                        note(&sub.path(), &e);
                        continue;
                    }
                };
                for f in files.flatten() {
                    let name = f.file_name();
                    let Some(name) = name.to_str() else { continue };
                    let Ok(d) = Digest::from_hex(name) else {
                        tracing::warn!(path = %f.path().display(), "ignoring unexpected file in the store");
                        continue;
                    };
                    if !name.starts_with(&prefix) {
                        continue;
                    }
                    let meta = match f.metadata() {
                        Ok(m) => m,
                        Err(e) => {
                            note(&f.path(), &e);
                            continue;
                        }
                    };
                    if !meta.is_file() {
                        continue;
                    }
                    let mtime = meta.modified().unwrap_or(UNIX_EPOCH);
                    found.push((mtime, (kind, d), meta.len()));
                }
            }
        }
        found.sort_by_key(|(t, _, _)| *t);
        let n = found.len();
        let victims = {
            let mut idx = self.lock();
            for (seq, (_, (kind, d), size)) in found.into_iter().enumerate() {
                // Skip objects removed since the scan saw them.
                if !idx.entries.contains_key(&(kind, d)) && self.path(kind, &d).exists() {
                    idx.insert((kind, d), size, seq as u64);
                }
            }
            let v = self.pick_victims(&mut idx);
            self.publish(&idx);
            v
        };
        self.unlink(victims);
        self.indexed.store(true, Ordering::Release);
        Ok(n)
    }

    /// Persists access order: sets the mtime of every object used since the
    /// last flush, so that a restart rebuilds the LRU in (nearly) the same order.
    pub fn flush_access_times(&self) {
        let dirty: Vec<Key> = {
            let mut idx = self.lock();
            let mut keys: Vec<(u64, Key)> = idx
                .dirty
                .drain()
                .collect::<Vec<_>>()
                .into_iter()
                .filter_map(|k| idx.entries.get(&k).map(|e| (e.seq, k)))
                .collect();
            keys.sort_unstable();
            keys.into_iter().map(|(_, k)| k).collect()
        };
        let now = SystemTime::now();
        for (i, (kind, d)) in dirty.iter().enumerate() {
            // Distinct, increasing mtimes keep the order within one flush.
            let t = now + std::time::Duration::from_micros(i as u64);
            if let Ok(f) = File::options().write(true).open(self.path(*kind, d)) {
                let _ = f.set_modified(t);
            }
        }
    }

    /// One background scrub pass: re-hashes every stored object at no more
    /// than `rate` bytes/s and removes those that no longer match their
    /// digest (a bit flipped on disk). Returns (checked, corrupt). Stops
    /// early when `stop` is set.
    pub fn scrub_pass(&self, rate: u64, stop: &AtomicBool) -> (usize, usize) {
        let objects = match self.list() {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(error = %e, "scrub: cannot list the store");
                return (0, 0);
            }
        };
        let started = std::time::Instant::now();
        let mut read: u64 = 0;
        let (mut checked, mut corrupt) = (0, 0);
        let mut buf = vec![0u8; 1 << 20];
        for (kind, d, path) in objects {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let verdict = (|| -> io::Result<bool> {
                let mut f = File::open(&path)?;
                let mut h = crate::digest::Hasher::new();
                let mut first = kind == Kind::Manifest;
                loop {
                    let n = f.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    read += n as u64;
                    self.metrics.scrub_bytes.inc_by(n as u64);
                    let mut chunk = &buf[..n];
                    if first {
                        // Skip the media type line of a stored manifest.
                        match chunk.iter().position(|&b| b == b'\n') {
                            Some(i) => {
                                chunk = &chunk[i + 1..];
                                first = false;
                            }
                            None => chunk = &[],
                        }
                    }
                    h.update(chunk);
                    // Pace to `rate`: sleep until the bytes read so far are due.
                    let due = std::time::Duration::from_secs_f64(read as f64 / rate as f64);
                    if let Some(wait) = due.checked_sub(started.elapsed()) {
                        std::thread::sleep(wait);
                    }
                }
                Ok(h.finish() == d)
            })();
            match verdict {
                Ok(true) => {
                    checked += 1;
                    self.metrics.scrub_objects.with_label_values(&["ok"]).inc();
                }
                Ok(false) => {
                    checked += 1;
                    corrupt += 1;
                    self.metrics
                        .scrub_objects
                        .with_label_values(&["corrupt"])
                        .inc();
                    tracing::error!(digest = %d, path = %path.display(), "scrub: stored object does not match its digest; removed");
                    let _ = self.remove(kind, &d);
                }
                // Evicted or removed meanwhile.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(path = %path.display(), error = %e, "scrub: cannot read"),
            }
        }
        (checked, corrupt)
    }

    /// Every stored object, for `tender fsck`.
    pub fn list(&self) -> io::Result<Vec<(Kind, Digest, PathBuf)>> {
        let mut out = Vec::new();
        for kind in [Kind::Blob, Kind::Manifest] {
            let base = self.root.join(kind.dir()).join("sha256");
            for sub in fs::read_dir(&base)? {
                let sub = sub?;
                if !sub.file_type()?.is_dir() {
                    continue;
                }
                for f in fs::read_dir(sub.path())? {
                    let f = f?;
                    if let Some(d) = f
                        .file_name()
                        .to_str()
                        .and_then(|n| Digest::from_hex(n).ok())
                    {
                        out.push((kind, d, f.path()));
                    }
                }
            }
        }
        Ok(out)
    }
}

/// Splits a stored manifest file into its media type line and body.
pub fn split_manifest_file(buf: &[u8]) -> Option<(&str, &[u8])> {
    let nl = buf.iter().position(|&b| b == b'\n')?;
    let mt = std::str::from_utf8(&buf[..nl]).ok()?;
    if mt.is_empty() || mt.contains(char::is_whitespace) {
        return None;
    }
    Some((mt, &buf[nl + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &Path, max: u64) -> Store {
        Store::open(dir, max, Arc::new(Metrics::new())).unwrap()
    }

    fn put_blob(s: &Store, data: &[u8]) -> Digest {
        let d = Digest::of(data);
        let (p, mut f) = s.create_temp().unwrap();
        f.write_all(data).unwrap();
        s.commit(Kind::Blob, &p, &f, &d, data.len() as u64).unwrap();
        d
    }

    fn tempdir(name: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("tender-store-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        p
    }

    #[test]
    fn evicts_least_recently_used_down_to_low_water() {
        let dir = tempdir("lru");
        let s = store(&dir, 1000);
        let a = put_blob(&s, &[1u8; 300]);
        let b = put_blob(&s, &[2u8; 300]);
        let c = put_blob(&s, &[3u8; 300]);
        // Use `a` so that `b` is now the oldest.
        assert!(s.open_blob(&a).unwrap().is_some());
        let d = put_blob(&s, &[4u8; 300]);
        assert!(
            s.open_blob(&b).unwrap().is_none(),
            "LRU victim must be gone"
        );
        for x in [a, c, d] {
            assert!(s.blob_size(&x).unwrap().is_some());
        }
        assert!(s.total_size() <= 900);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn open_file_survives_eviction() {
        let dir = tempdir("evict-open");
        let s = store(&dir, 500);
        let a = put_blob(&s, &[7u8; 400]);
        let (mut f, _) = s.open_blob(&a).unwrap().unwrap();
        put_blob(&s, &[8u8; 400]);
        assert!(s.blob_size(&a).unwrap().is_none());
        let mut buf = Vec::new();
        f.read_to_end(&mut buf).unwrap();
        assert_eq!(buf, vec![7u8; 400]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn objects_larger_than_the_cache_are_not_kept() {
        let dir = tempdir("huge");
        let s = store(&dir, 100);
        let d = Digest::of(&[0u8; 200]);
        let (p, mut f) = s.create_temp().unwrap();
        f.write_all(&[0u8; 200]).unwrap();
        assert!(!s.commit(Kind::Blob, &p, &f, &d, 200).unwrap());
        assert!(s.blob_size(&d).unwrap().is_none());
        assert!(!p.exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rebuild_restores_index_and_clears_temp_files() {
        let dir = tempdir("rebuild");
        let (a, b) = {
            let s = store(&dir, 10_000);
            let a = put_blob(&s, b"first");
            let b = put_blob(&s, b"second");
            s.put_manifest(
                &Digest::of(b"{}"),
                "application/vnd.oci.image.manifest.v1+json",
                b"{}",
            )
            .unwrap();
            let _ = s.create_temp().unwrap(); // left behind, as after a kill -9
            (a, b)
        };
        let s = store(&dir, 10_000);
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
            let s = store(&dir, 10_000);
            // File mtimes tick with the kernel's coarse clock: space the writes.
            let pause = || std::thread::sleep(std::time::Duration::from_millis(30));
            let a = put_blob(&s, &[1u8; 100]);
            pause();
            let b = put_blob(&s, &[2u8; 100]);
            pause();
            let c = put_blob(&s, &[3u8; 100]);
            assert!(s.open_blob(&a).unwrap().is_some()); // a is now the most recently used
            s.flush_access_times();
            (a, b, c)
        };
        // Restart with a smaller bound: the rebuilt LRU evicts b, the oldest.
        let s = store(&dir, 250);
        s.rebuild_index().unwrap();
        assert!(s.blob_size(&b).unwrap().is_none());
        assert!(s.blob_size(&a).unwrap().is_some() && s.blob_size(&c).unwrap().is_some());
        fs::remove_dir_all(&dir).unwrap();
    }
}
