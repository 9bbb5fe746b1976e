//! The content-addressed store on disk and its size-bounded LRU index.
//!
//! Layout under the cache dir (`<id>` is 64 hex characters, `<xx>` its first two):
//! - `blobs/sha256/<xx>/<id>`: blob bytes, exactly as their digest says;
//! - `manifests/sha256/<xx>/<id>`: one line with the media type, then the
//!   manifest's exact bytes (the digest covers only those bytes);
//! - `tags/sha256/<xx>/<id>`: what a tag pointed at (`id` = sha256 of the tag's
//!   key), a small JSON record the cache reads and writes;
//! - `tmp/`: files being filled; emptied on start, never renamed unless verified.
//!
//! Crash contract: an object reaches its final name only by `rename` after its
//! bytes were verified and fsynced, and the directory is fsynced after; a kill
//! at any point leaves either the old state or the new one, plus temp files that
//! the next start deletes.
//!
//! Everything under the cache dir counts toward `cache_max_size`: objects and
//! tag records by the disk they take (allocated blocks), and the directories
//! themselves. The file system is the source of truth for lookups (a hit is a
//! successful `open`), so tender serves as soon as it starts; the in-memory
//! index only orders entries for eviction and is rebuilt from disk in the
//! background. Every method here does blocking I/O: call it from `spawn_blocking`.

mod index;
pub mod scrub;
mod space;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::config::FreeSpace;
use crate::metrics::Metrics;
use crate::oci::Digest;
use index::Index;
pub use space::NoRoom;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Blob,
    Manifest,
    /// A tag record (keyed by the sha256 of the tag's key, not by content).
    Tag,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Blob, Kind::Manifest, Kind::Tag];

    fn dir(self) -> &'static str {
        match self {
            Kind::Blob => "blobs",
            Kind::Manifest => "manifests",
            Kind::Tag => "tags",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Blob => "blob",
            Kind::Manifest => "manifest",
            Kind::Tag => "tag",
        }
    }
}

type Key = (Kind, Digest);
/// A fan-out directory: `<kind>/sha256/<xx>`.
type DirId = (Kind, u8);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cache I/O: {0}")]
    Io(#[from] io::Error),
    #[error("stored object {} is corrupt: {why}", path.display())]
    Corrupt { path: PathBuf, why: String },
}

/// A file being filled inside the store (same file system as the final
/// location, so the commit is an atomic rename). Dropped without a commit,
/// it is deleted: a temp file never outlives its fill.
pub struct TempFile {
    path: PathBuf,
    pub file: File,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        // After a commit the path is gone (renamed); NotFound is fine.
        let _ = fs::remove_file(&self.path);
    }
}

pub struct Store {
    root: PathBuf,
    tmp: PathBuf,
    max_size: u64,
    /// Evictions go down to this (90%), so that they do not run on every commit.
    low_water: u64,
    space: space::Space,
    index: Mutex<Index>,
    temp_seq: AtomicU64,
    indexed: AtomicBool,
    metrics: Arc<Metrics>,
}

/// The disk a file or directory takes: its allocated blocks (a 300-byte file
/// takes a whole 4 KiB block), or its length where the file system stores
/// small files inline.
fn usage(meta: &fs::Metadata) -> u64 {
    (meta.blocks() * 512).max(meta.len())
}

impl Store {
    /// Creates the layout under `root` and deletes leftover temp files. The
    /// index starts empty; call [`Store::rebuild_index`] (in the background).
    pub fn open(root: &Path, max_size: u64, metrics: Arc<Metrics>) -> io::Result<Store> {
        let s = Store::open_shared(root, max_size, metrics)?;
        for e in fs::read_dir(&s.tmp)? {
            let _ = fs::remove_file(e?.path());
        }
        s.migrate_flat_tags();
        Ok(s)
    }

    /// Opens the store without deleting temp files, for tools (fsck) that
    /// may run beside a live daemon whose fills own them.
    pub fn open_shared(root: &Path, max_size: u64, metrics: Arc<Metrics>) -> io::Result<Store> {
        for kind in Kind::ALL {
            fs::create_dir_all(root.join(kind.dir()).join("sha256"))?;
        }
        let tmp = root.join("tmp");
        fs::create_dir_all(&tmp)?;
        let s = Store {
            root: root.to_path_buf(),
            tmp,
            max_size,
            low_water: max_size / 10 * 9,
            space: space::Space::new(FreeSpace::Bytes(0)),
            index: Mutex::new(Index::default()),
            temp_seq: AtomicU64::new(0),
            indexed: AtomicBool::new(false),
            metrics,
        };
        let fixed = s
            .fixed_dirs()
            .into_iter()
            .filter_map(|d| fs::metadata(d).ok());
        s.lock().set_fixed_dirs(fixed.map(|m| usage(&m)).sum());
        Ok(s)
    }

    /// Sets the free-space watermark that fills must leave on the file system.
    pub fn with_min_free(mut self, min_free: FreeSpace) -> Store {
        self.space = space::Space::new(min_free);
        self
    }

    fn fixed_dirs(&self) -> Vec<PathBuf> {
        let mut dirs = vec![self.root.clone(), self.tmp.clone()];
        for kind in Kind::ALL {
            dirs.push(self.root.join(kind.dir()));
            dirs.push(self.root.join(kind.dir()).join("sha256"));
        }
        dirs
    }

    /// Tag records of earlier versions lay flat in `tags/`; move them into
    /// the fan-out layout (and drop their half-written `.tmp` files).
    fn migrate_flat_tags(&self) {
        let Ok(entries) = fs::read_dir(self.root.join(Kind::Tag.dir())) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            if !e.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            match Digest::from_hex(name) {
                Ok(id) => {
                    let dest = self.path(Kind::Tag, &id);
                    let moved = dest
                        .parent()
                        .map_or(Ok(()), fs::create_dir_all)
                        .and_then(|()| fs::rename(e.path(), &dest));
                    if moved.is_err() {
                        let _ = fs::remove_file(e.path());
                    }
                }
                Err(_) => {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
    }

    /// Whether a recent write failure (ENOSPC, EIO, EROFS, ...) has paused
    /// caching: fills then stream straight from upstream for a while.
    pub fn writes_paused(&self) -> bool {
        self.space.writes_paused()
    }

    /// Records a failed write; disk-level failures pause caching for a while.
    pub fn note_write_failure(&self, e: &io::Error) {
        self.space.note_write_failure(e);
    }

    /// A temp file for a fill of `expected` bytes, if the file system can
    /// take it without going below the free-space watermark (evicting least
    /// recently used objects when that can make the room). Otherwise the
    /// reason, and the caller streams the blob through without caching it.
    pub fn prepare_fill(&self, expected: Option<u64>) -> Result<TempFile, NoRoom> {
        if self.writes_paused() {
            return Err(NoRoom::WritesPaused);
        }
        if let Some(deficit) = self.space.deficit(&self.root, expected.unwrap_or(0)) {
            // Evict only when that can make the room: wiping the cache for
            // space taken by others (or before the index knows the cold
            // objects) would only lose it.
            if !self.is_indexed() || self.lock().objects_size() < deficit {
                return Err(NoRoom::LowDiskSpace);
            }
            self.evict_bytes(deficit);
            // Files still open by readers free nothing yet: ask again.
            if self
                .space
                .deficit(&self.root, expected.unwrap_or(0))
                .is_some()
            {
                return Err(NoRoom::LowDiskSpace);
            }
        }
        self.create_temp().map_err(|e| {
            self.note_write_failure(&e);
            NoRoom::DiskError
        })
    }

    /// Evicts least recently used objects until `bytes` are freed (or the
    /// index is empty).
    pub fn evict_bytes(&self, bytes: u64) {
        let victims = {
            let mut idx = self.lock();
            let v = idx.evict_bytes(bytes);
            self.publish(&idx);
            v
        };
        self.unlink(victims);
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
                let meta = f.metadata()?;
                if !meta.is_file() {
                    return Err(io::Error::other("not a regular file"));
                }
                self.touch(Kind::Blob, d, usage(&meta));
                Ok(Some((f, meta.len())))
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

    /// Reads a whole small object (a manifest or a tag record) and marks it used.
    pub fn read_record(&self, kind: Kind, d: &Digest) -> Result<Option<Vec<u8>>, StoreError> {
        let mut buf = Vec::new();
        match File::open(self.path(kind, d)) {
            Ok(mut f) => {
                let meta = f.metadata()?;
                f.read_to_end(&mut buf)?;
                self.touch(kind, d, usage(&meta));
                Ok(Some(buf))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads a stored manifest: (media type, exact bytes). Not verified here:
    /// the caller checks the bytes against the digest.
    pub fn read_manifest(&self, d: &Digest) -> Result<Option<(String, Bytes)>, StoreError> {
        let Some(buf) = self.read_record(Kind::Manifest, d)? else {
            return Ok(None);
        };
        let (media_type, body) = split_manifest_file(&buf).ok_or_else(|| StoreError::Corrupt {
            path: self.path(Kind::Manifest, d),
            why: "no media type line".into(),
        })?;
        Ok(Some((media_type.to_string(), Bytes::copy_from_slice(body))))
    }

    /// Stores a manifest (already verified by the caller), unless stored.
    pub fn put_manifest(
        &self,
        d: &Digest,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<(), StoreError> {
        if self.path(Kind::Manifest, d).exists() {
            return Ok(());
        }
        self.put_record(Kind::Manifest, d, &[media_type.as_bytes(), b"\n", bytes])
    }

    /// Writes a small object whole and commits it, replacing what was there:
    /// a crash leaves the old record or the new one.
    pub fn put_record(&self, kind: Kind, d: &Digest, parts: &[&[u8]]) -> Result<(), StoreError> {
        let mut temp = self.create_temp()?;
        for p in parts {
            temp.file.write_all(p)?;
        }
        let size = parts.iter().map(|p| p.len() as u64).sum();
        self.commit(kind, temp, d, size).map(|_| ())
    }

    /// Marks an object used without any I/O (for objects served from memory).
    pub fn mark_used(&self, kind: Kind, d: &Digest) {
        self.lock().touch((kind, *d));
    }

    fn touch(&self, kind: Kind, d: &Digest, disk: u64) {
        let mut idx = self.lock();
        if !idx.touch((kind, *d)) {
            // Present on disk but not indexed yet (the rebuild is still
            // running, or another process put it there): index it now.
            idx.insert_newest((kind, *d), disk);
            self.publish(&idx);
        }
    }

    /// A new, empty temp file inside the store.
    pub fn create_temp(&self) -> io::Result<TempFile> {
        let n = self.temp_seq.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = self
            .tmp
            .join(format!("{}-{n}-{nanos:08x}.partial", std::process::id()));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok(TempFile { path, file })
    }

    /// Moves a verified temp file of `size` bytes to its final name: fsync
    /// the data, rename, fsync the directory, then account for it and evict
    /// if over the bound. Objects above the low-water mark are not kept
    /// (keeping one would evict everything else and then itself). Returns
    /// whether the object was kept.
    pub fn commit(
        &self,
        kind: Kind,
        temp: TempFile,
        d: &Digest,
        size: u64,
    ) -> Result<bool, StoreError> {
        if size > self.low_water {
            self.metrics
                .passthrough
                .with_label_values(&["larger_than_cache"])
                .inc();
            return Ok(false);
        }
        temp.file.sync_all()?;
        let disk = usage(&temp.file.metadata()?);
        let dest = self.path(kind, d);
        let dir = dest
            .parent()
            .ok_or_else(|| io::Error::other("store path without a parent"))?;
        fs::create_dir_all(dir)?;
        fs::rename(&temp.path, &dest)?;
        File::open(dir)?.sync_all()?;
        // A directory grows with its entries: account for what it takes now.
        let dir_disk = fs::metadata(dir).map(|m| usage(&m)).ok();
        let victims = {
            let mut idx = self.lock();
            idx.insert_newest((kind, *d), disk);
            if let Some(b) = dir_disk {
                idx.set_dir((kind, d.as_bytes()[0]), b);
            }
            let v = if idx.used() > self.max_size {
                idx.evict_to(self.low_water)
            } else {
                Vec::new()
            };
            self.publish(&idx);
            v
        };
        self.unlink(victims);
        Ok(true)
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
        let path = self.path(kind, d);
        match fs::remove_file(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            // Something that is no file stands under an object's name (it
            // cannot be read as one): clear it so the object can come back.
            Err(_) if path.is_dir() => fs::remove_dir_all(&path),
            other => other,
        }
    }

    fn publish(&self, idx: &Index) {
        self.metrics.cache_size.set(idx.used() as i64);
        self.metrics.cache_entries.set(idx.len() as i64);
    }

    /// Disk the stored objects (blobs, manifests, tag records) take.
    pub fn total_size(&self) -> u64 {
        self.lock().objects_size()
    }

    /// Disk in use under the cache dir: the objects and the directories.
    /// This is what `cache_max_size` bounds.
    pub fn disk_usage(&self) -> u64 {
        self.lock().used()
    }

    pub fn entry_count(&self) -> usize {
        self.lock().len()
    }

    /// Scans the store and indexes what is there, oldest mtime first (mtimes
    /// carry access order across restarts, see [`Store::flush_access_times`]).
    /// Then evicts if the store is over its bound (for example after the
    /// bound was lowered). Returns the number of objects found.
    ///
    /// The scan holds no lock: requests go on marking objects used while it
    /// stats every file; only the merge at the end takes the index lock.
    pub fn rebuild_index(&self) -> io::Result<usize> {
        self.lock().begin_scan();
        let mut found: Vec<(SystemTime, Key, u64)> = Vec::new();
        let mut dirs: Vec<(DirId, u64)> = Vec::new();
        // One unreadable entry must not stop the scan (or /readyz forever):
        // skip what vanished meanwhile (evicted, removed), log the rest.
        let note = |path: &Path, e: &io::Error| {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(path = %path.display(), error = %e, "skipping unreadable store entry");
            }
        };
        for kind in Kind::ALL {
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
                let Ok(byte) = u8::from_str_radix(&prefix, 16) else {
                    continue;
                };
                if prefix.len() != 2 || !sub.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                if let Ok(m) = sub.metadata() {
                    dirs.push(((kind, byte), usage(&m)));
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
                    found.push((mtime, (kind, d), usage(&meta)));
                }
            }
        }
        found.sort_by_key(|(t, _, _)| *t);
        let n = found.len();
        let victims = {
            let mut idx = self.lock();
            for (id, bytes) in dirs {
                idx.set_dir(id, bytes);
            }
            idx.merge_scan(found.into_iter().map(|(_, k, size)| (k, size)));
            let v = if idx.used() > self.max_size {
                idx.evict_to(self.low_water)
            } else {
                Vec::new()
            };
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
        let dirty = self.lock().take_dirty();
        let now = SystemTime::now();
        for (i, (kind, d)) in dirty.iter().enumerate() {
            // Distinct, increasing mtimes keep the order within one flush.
            let t = now + std::time::Duration::from_micros(i as u64);
            if let Ok(f) = File::options().write(true).open(self.path(*kind, d)) {
                let _ = f.set_modified(t);
            }
        }
    }

    /// Every stored object, for the scrub and `tender fsck`.
    pub fn list(&self) -> io::Result<Vec<(Kind, Digest, PathBuf)>> {
        let mut out = Vec::new();
        for kind in Kind::ALL {
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
}
