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
mod rebuild;
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
    /// Another process (a running tender, or `tender fsck`) has the store open.
    #[error("{} is in use by another tender process (serving, or fsck); one at a time", path.display())]
    InUse { path: PathBuf },
    #[error("stored object {} is corrupt: {why}", path.display())]
    Corrupt { path: PathBuf, why: String },
    /// Pinning more would exceed `pinned_max_size`.
    #[error("pinning {owner} would take pinned content to {need} bytes, over pinned_max_size ({max} bytes): not pinned")]
    PinnedFull { owner: String, need: u64, max: u64 },
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
    /// An exclusive lock on `<root>/lock` for as long as the store is open:
    /// one process at a time (a second daemon, or fsck beside a running one,
    /// would delete files the other still writes or has just committed).
    _lock: nix::fcntl::Flock<File>,
    tmp: PathBuf,
    max_size: u64,
    /// Evictions go down to this (90%), so that they do not run on every commit.
    low_water: u64,
    space: space::Space,
    index: Mutex<Index>,
    /// The most disk pinned objects may take (`pinned_max_size`).
    pinned_max: AtomicU64,
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
    /// Opens the store under `root` for this process alone (see
    /// [`StoreError::InUse`]), creates its layout and deletes leftover temp
    /// files. The index starts empty; call [`Store::rebuild_index`] (in the
    /// background).
    pub fn open(root: &Path, max_size: u64, metrics: Arc<Metrics>) -> Result<Store, StoreError> {
        for kind in Kind::ALL {
            fs::create_dir_all(root.join(kind.dir()).join("sha256"))?;
        }
        let tmp = root.join("tmp");
        fs::create_dir_all(&tmp)?;
        let lock_path = root.join("lock");
        if !lock_path.exists() {
            File::create(&lock_path)?;
        }
        // Held read-only: a file open for writing would keep the file system
        // from being remounted read-only underneath tender.
        let lock_file = File::open(&lock_path)?;
        let lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map_err(|(_, errno)| match errno {
                nix::errno::Errno::EWOULDBLOCK => StoreError::InUse {
                    path: root.to_path_buf(),
                },
                e => StoreError::Io(io::Error::from(e)),
            })?;
        for e in fs::read_dir(&tmp)? {
            let _ = fs::remove_file(e?.path());
        }
        let s = Store {
            root: root.to_path_buf(),
            _lock: lock,
            tmp,
            max_size,
            low_water: max_size / 10 * 9,
            space: space::Space::new(FreeSpace::Bytes(0)),
            index: Mutex::new(Index::default()),
            pinned_max: AtomicU64::new(max_size / 4),
            temp_seq: AtomicU64::new(0),
            indexed: AtomicBool::new(false),
            metrics,
        };
        let fixed = s
            .fixed_dirs()
            .into_iter()
            .filter_map(|d| fs::metadata(d).ok());
        s.lock().set_fixed_dirs(fixed.map(|m| usage(&m)).sum());
        s.migrate_flat_tags();
        Ok(s)
    }

    /// Sets the most disk pinned objects may take (`pinned_max_size`); pins
    /// already held stay even if they now exceed it.
    pub fn set_pinned_max(&self, max: u64) {
        self.pinned_max.store(max, Ordering::Relaxed);
    }

    /// Pins `objects` for `owner` (an image), replacing what it pinned
    /// before: the LRU never evicts them (a read error or a failed scrub
    /// still removes a bad copy, which is pinned again when fetched).
    /// Refused, leaving every pin as it was, if pinned content would exceed
    /// `pinned_max_size`. Returns the bytes pinned in all.
    pub fn pin(&self, owner: &str, objects: Vec<(Kind, Digest, u64)>) -> Result<u64, StoreError> {
        let max = self.pinned_max();
        let keys = objects.into_iter().map(|(k, d, n)| ((k, d), n)).collect();
        let pinned = {
            let mut idx = self.lock();
            let r = idx.pin(owner, keys, max);
            self.publish(&idx);
            r
        };
        pinned.map_err(|need| StoreError::PinnedFull {
            owner: owner.to_string(),
            need,
            max,
        })
    }

    /// Releases `owner`'s pins: its objects go back to the LRU.
    pub fn unpin(&self, owner: &str) {
        let mut idx = self.lock();
        idx.unpin(owner);
        self.publish(&idx);
    }

    /// The most disk pinned objects may take.
    pub fn pinned_max(&self) -> u64 {
        self.pinned_max.load(Ordering::Relaxed)
    }

    /// The images (pin owners) holding pins now.
    pub fn pin_owners(&self) -> Vec<String> {
        self.lock().pin_owners()
    }

    /// Disk taken by pinned objects.
    pub fn pinned_bytes(&self) -> u64 {
        self.lock().pinned_bytes()
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
            self.bound(&mut idx)
        };
        self.unlink(victims);
        Ok(true)
    }

    /// Over the bound, picks the least recently used objects down to the
    /// low-water mark (the caller unlinks them outside the lock); publishes
    /// the size.
    fn bound(&self, idx: &mut Index) -> Vec<Key> {
        let victims = if idx.used() > self.max_size {
            idx.evict_to(self.low_water)
        } else {
            Vec::new()
        };
        self.publish(idx);
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
        self.metrics.cache_pinned.set(idx.pinned_bytes() as i64);
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
mod tests;
