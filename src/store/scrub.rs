//! Re-hashing stored objects against their digests: the background scrub
//! (paced, stoppable) and `tender fsck` (all at once).

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::{Kind, Store};
use crate::oci::{Digest, Hasher};

/// What re-hashing one object found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    /// The bytes do not match the digest (or the file is malformed).
    Bad(String),
    /// Stopped before the end (shutdown).
    Stopped,
}

/// Re-hashes the object at `path` (for a manifest, the bytes after its media
/// type line), calling `paced(n)` after every chunk of `n` bytes read; a
/// `paced` that returns false stops the check.
pub fn verify(
    kind: Kind,
    path: &Path,
    d: &Digest,
    mut paced: impl FnMut(usize) -> bool,
) -> io::Result<Verdict> {
    let mut f = File::open(path)?;
    let mut h = Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut in_media_type_line = kind == Kind::Manifest;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        let mut chunk = &buf[..n];
        if in_media_type_line {
            match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    chunk = &chunk[i + 1..];
                    in_media_type_line = false;
                }
                None => chunk = &[],
            }
        }
        h.update(chunk);
        if !paced(n) {
            return Ok(Verdict::Stopped);
        }
    }
    if in_media_type_line {
        return Ok(Verdict::Bad("missing media type line".into()));
    }
    let actual = h.finish();
    Ok(if actual == *d {
        Verdict::Ok
    } else {
        Verdict::Bad(format!("content hashes to {actual}"))
    })
}

/// The outcome of a scrub pass or an fsck.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub ok: usize,
    /// Removed: they no longer matched their digest or could not be read.
    pub bad: usize,
}

impl Store {
    /// One background scrub pass: re-hashes every stored blob and manifest at
    /// no more than `rate` bytes/s and removes those that no longer match
    /// their digest (a bit flipped on disk) or cannot be read; the next
    /// request fetches them again. `stop` is checked after every chunk, so a
    /// shutdown never waits for a large object.
    pub fn scrub_pass(&self, rate: u64, stop: &AtomicBool) -> Tally {
        let objects = match self.list() {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(error = %e, "scrub: cannot list the store");
                return Tally::default();
            }
        };
        let started = Instant::now();
        let mut read: u64 = 0;
        let mut tally = Tally::default();
        for (kind, d, path) in objects {
            if kind == Kind::Tag {
                continue; // records, not content: nothing to hash them against
            }
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let verdict = verify(kind, &path, &d, |n| {
                read += n as u64;
                self.metrics.scrub_bytes.inc_by(n as u64);
                // Pace to `rate`: sleep until the bytes read so far are due.
                let due = Duration::from_secs_f64(read as f64 / rate as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(wait.min(Duration::from_millis(200)));
                }
                !stop.load(Ordering::Relaxed)
            });
            let why = match verdict {
                Ok(Verdict::Ok) => {
                    tally.ok += 1;
                    self.metrics.scrub_objects.with_label_values(&["ok"]).inc();
                    continue;
                }
                Ok(Verdict::Stopped) => break,
                // Evicted or removed meanwhile.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Ok(Verdict::Bad(why)) => why,
                Err(e) => format!("unreadable: {e}"),
            };
            tally.bad += 1;
            self.metrics
                .scrub_objects
                .with_label_values(&["corrupt"])
                .inc();
            self.metrics.bad_objects.with_label_values(&["scrub"]).inc();
            tracing::error!(digest = %d, path = %path.display(), problem = %why,
                "scrub: stored object is bad; removed (the next request fetches it again)");
            if let Err(e) = self.remove(kind, &d) {
                tracing::warn!(path = %path.display(), error = %e, "scrub: cannot remove");
            }
        }
        tally
    }

    /// Re-hashes every stored blob and manifest at full speed, removing the
    /// bad ones; `report` hears of each bad one.
    pub fn fsck(&self, mut report: impl FnMut(Kind, &Digest, &str)) -> io::Result<Tally> {
        let mut tally = Tally::default();
        for (kind, d, path) in self.list()? {
            if kind == Kind::Tag {
                continue;
            }
            let why = match verify(kind, &path, &d, |_| true) {
                Ok(Verdict::Ok) | Ok(Verdict::Stopped) => {
                    tally.ok += 1;
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Ok(Verdict::Bad(why)) => why,
                Err(e) => format!("unreadable: {e}"),
            };
            tally.bad += 1;
            report(kind, &d, &why);
            self.remove(kind, &d)?;
        }
        Ok(tally)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::Arc;

    #[test]
    fn a_flipped_byte_and_an_unreadable_object_are_removed() {
        let dir = std::env::temp_dir().join(format!("tender-scrub-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let s = Store::open(&dir, 1 << 30, Arc::new(crate::metrics::Metrics::new())).unwrap();
        let mut blobs = Vec::new();
        for i in 0..3u8 {
            let data = vec![i; 10_000];
            let d = Digest::of(&data);
            let mut t = s.create_temp().unwrap();
            t.file.write_all(&data).unwrap();
            s.commit(Kind::Blob, t, &d, data.len() as u64).unwrap();
            blobs.push(d);
        }
        let flipped = s.path(Kind::Blob, &blobs[0]);
        let mut bytes = std::fs::read(&flipped).unwrap();
        bytes[5000] ^= 1;
        std::fs::write(&flipped, bytes).unwrap();
        // A directory where a blob should be: reads fail.
        let broken = s.path(Kind::Blob, &blobs[1]);
        std::fs::remove_file(&broken).unwrap();
        std::fs::create_dir(&broken).unwrap();
        let tally = s.scrub_pass(u64::MAX, &AtomicBool::new(false));
        assert_eq!(tally, Tally { ok: 1, bad: 2 });
        assert!(!flipped.exists() && !broken.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_stop_is_heeded_within_a_chunk_not_at_the_end_of_an_object() {
        let dir = std::env::temp_dir().join(format!("tender-scrub-stop-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let s = Store::open(&dir, 1 << 30, metrics.clone()).unwrap();
        // 16 MiB at 1 MiB/s: a whole pass would take 16 s.
        let data = vec![7u8; 16 << 20];
        let d = Digest::of(&data);
        let mut t = s.create_temp().unwrap();
        t.file.write_all(&data).unwrap();
        s.commit(Kind::Blob, t, &d, data.len() as u64).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopper = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(300));
                stop.store(true, Ordering::Relaxed);
            })
        };
        let tally = s.scrub_pass(1 << 20, &stop);
        stopper.join().unwrap();
        let read = metrics.scrub_bytes.get();
        assert!(read < 4 << 20, "stopped {read} bytes into a 16 MiB object");
        assert_eq!(
            tally,
            Tally { ok: 0, bad: 0 },
            "an object not read to its end is not judged"
        );
        assert!(s.path(Kind::Blob, &d).exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
