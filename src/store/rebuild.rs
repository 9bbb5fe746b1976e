//! The index rebuild at start (a scan of the store, merged without holding
//! the index lock while it stats files), access order persisted as mtimes,
//! and the listing the scrub and fsck walk.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use super::{usage, DirId, Key, Kind, Store};
use crate::oci::Digest;

impl Store {
    /// Scans the store and indexes what is there, oldest mtime first (mtimes
    /// carry access order across restarts, see [`Store::flush_access_times`]).
    /// Then evicts if the store is over its bound (for example after the
    /// bound was lowered). Returns the number of objects found.
    ///
    /// The scan holds no lock: requests go on marking objects used while it
    /// stats every file; only the merge at the end takes the index lock.
    pub fn rebuild_index(&self) -> io::Result<usize> {
        self.rebuild_index_with(|| {})
    }

    /// [`Store::rebuild_index`], calling `each_dir` as it scans each fan-out
    /// directory (tests look at the lock from there).
    pub(super) fn rebuild_index_with(&self, mut each_dir: impl FnMut()) -> io::Result<usize> {
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
                each_dir();
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
            self.bound(&mut idx)
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
