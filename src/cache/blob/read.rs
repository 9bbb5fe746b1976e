//! Reading blobs to clients: a stored file, or a fill's temp file as it
//! grows. Reads of page-cached bytes (hits, and followers tailing a fill)
//! happen inline with `preadv2(RWF_NOWAIT)`; anything else on the blocking
//! pool.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::{passthrough, Fill, Phase};
use crate::cache::inflight::Interrupted;
use crate::metrics::Metrics;
use crate::oci::Digest;
use crate::store::{Kind, Store};
use crate::upstream::Upstreams;

/// Bytes handed to a client per read; bounds per-client memory.
pub const READ_CHUNK: usize = 256 << 10;

type Out = mpsc::Sender<io::Result<Bytes>>;

/// Streams bytes `start..end` of a complete (stored) file to `out`. A read
/// that fails (or a file shorter than it was) is returned for the caller to
/// act on; a client that went away is not an error.
pub async fn stream_file(file: Arc<File>, start: u64, end: u64, out: &Out) -> io::Result<()> {
    let mut pos = start;
    while pos < end {
        let len = ((end - pos) as usize).min(READ_CHUNK);
        let b = read_at(file.clone(), pos, len).await?;
        if b.is_empty() {
            return Err(io::Error::other("cached file is shorter than it was"));
        }
        pos += b.len() as u64;
        if out.send(Ok(b)).await.is_err() {
            return Ok(());
        }
    }
    Ok(())
}

/// Evicts a stored blob that could not be read: it is counted, logged and
/// removed, and the next request fetches it again.
pub struct Evict {
    pub store: Arc<Store>,
    pub digest: Digest,
    pub metrics: Arc<Metrics>,
}

impl Evict {
    pub fn now(self, e: &io::Error) {
        self.metrics.bad_objects.with_label_values(&["read"]).inc();
        tracing::error!(digest = %self.digest, error = %e,
            "cached blob cannot be read; evicted (the next request fetches it again)");
        tokio::task::spawn_blocking(move || {
            if let Err(e) = self.store.remove(Kind::Blob, &self.digest) {
                tracing::warn!(digest = %self.digest, error = %e, "cannot remove an unreadable blob");
            }
        });
    }
}

/// What a reader may send of a fill right now.
struct View {
    file: Option<Arc<File>>,
    /// Bytes of the blob in `file`, from its start.
    written: u64,
    total: Option<u64>,
    complete: bool,
}

/// Streams bytes `start..end` (`end` = `None`: to the end of the blob) of a
/// fill to `out` as they land. Nothing a client receives is final before the
/// blob is verified: the last byte of its range (which may be the blob's
/// last) is held until the fill verifies the digest, so a wrong body aborts
/// the transfer instead of completing it, for a range inside the blob as for
/// the whole. Sends an error if the fill fails; continues from upstream
/// (`ups`, `repo`) if the fill is abandoned. Returns when done, failed, or the
/// client went away.
pub async fn stream_fill(
    fill: &Fill,
    ups: &Upstreams,
    repo: &str,
    start: u64,
    end: Option<u64>,
    out: Out,
) {
    let mut rx = fill.state.clone();
    let mut pos = start;
    loop {
        let view = {
            let s = rx.borrow_and_update();
            match &s.phase {
                Phase::Connecting => Ok(View {
                    file: None,
                    written: 0,
                    total: None,
                    complete: false,
                }),
                Phase::Streaming { total, file } => Ok(View {
                    file: Some(file.clone()),
                    written: s.written,
                    total: *total,
                    complete: false,
                }),
                Phase::Complete { size, file } => Ok(View {
                    file: Some(file.clone()),
                    written: *size,
                    total: Some(*size),
                    complete: true,
                }),
                Phase::Failed(e) => Err(Err(e.to_string())),
                Phase::Abandoned { file, total } => Err(Ok((file.clone(), *total, s.written))),
            }
        };
        let view = match view {
            Ok(v) => v,
            Err(Err(e)) => {
                let _ = out.send(Err(io::Error::other(e))).await;
                return;
            }
            Err(Ok((file, total, written))) => {
                let at = passthrough::Position {
                    pos,
                    end,
                    total,
                    in_file: if file.is_some() { written } else { 0 },
                };
                passthrough::stream(ups, repo, fill.digest, at, file, out).await;
                return;
            }
        };
        let end = end.or(view.total);
        if view.complete && end.is_some_and(|e| pos >= e) {
            return;
        }
        // Until verified, hold back the range's last byte; with the end not
        // known yet, the last byte written (it may be the blob's last).
        let stop = match end {
            Some(e) if view.complete => e.min(view.written),
            Some(e) => e.saturating_sub(1).min(view.written),
            None => view.written.saturating_sub(1),
        };
        if let (Some(file), true) = (view.file, pos < stop) {
            let len = ((stop - pos) as usize).min(READ_CHUNK);
            match read_at(file, pos, len).await {
                Ok(b) if !b.is_empty() => {
                    pos += b.len() as u64;
                    if out.send(Ok(b)).await.is_err() {
                        return; // the client went away; the fill goes on
                    }
                }
                Ok(_) => {
                    let _ = out
                        .send(Err(io::Error::other("cache file shorter than written")))
                        .await;
                    return;
                }
                Err(e) => {
                    let _ = out.send(Err(e)).await;
                    return;
                }
            }
            continue;
        }
        if rx.changed().await.is_err() {
            let _ = out
                .send(Err(io::Error::other(Interrupted.to_string())))
                .await;
            return;
        }
    }
}

/// Reads up to `len` bytes at `pos`. Bytes already in the page cache are
/// read inline with `preadv2(RWF_NOWAIT)`, which by contract never blocks;
/// anything else goes to the blocking pool. Returns fewer bytes only at end
/// of file.
pub async fn read_at(file: Arc<File>, pos: u64, len: usize) -> io::Result<Bytes> {
    let mut buf = Vec::with_capacity(len);
    match read_nowait(&file, &mut buf, pos, len) {
        Some(Ok(())) if !buf.is_empty() => return Ok(Bytes::from(buf)),
        Some(Err(e)) => return Err(e),
        _ => {}
    }
    tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; len];
        let mut got = 0;
        while got < len {
            match file.read_at(&mut buf[got..], pos + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        buf.truncate(got);
        Ok(Bytes::from(buf))
    })
    .await
    .map_err(io::Error::other)?
}

static NOWAIT_UNSUPPORTED: AtomicBool = AtomicBool::new(false);

/// `preadv2(RWF_NOWAIT)` into `buf`'s spare capacity. `None`: would block
/// (not cached) or unsupported here; the caller reads on the blocking pool.
fn read_nowait(file: &File, buf: &mut Vec<u8>, pos: u64, len: usize) -> Option<io::Result<()>> {
    use std::os::fd::AsRawFd;
    if NOWAIT_UNSUPPORTED.load(Ordering::Relaxed) {
        return None;
    }
    let spare = buf.spare_capacity_mut();
    let iov = libc::iovec {
        iov_base: spare.as_mut_ptr().cast(),
        // Never more than asked: callers rely on it to hold back unverified bytes.
        iov_len: spare.len().min(len),
    };
    let offset = libc::off_t::try_from(pos).ok()?;
    // SAFETY: the iovec points at `spare`, memory owned by `buf` that stays
    // alive and unaliased for the call; the kernel writes at most `iov_len`
    // bytes into it.
    let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, offset, libc::RWF_NOWAIT) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EINTR) => None,
            Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) | Some(libc::ENOSYS) => {
                NOWAIT_UNSUPPORTED.store(true, Ordering::Relaxed);
                None
            }
            _ => Some(Err(e)),
        };
    }
    // SAFETY: the kernel initialised the first `n` bytes of the spare capacity.
    unsafe { buf.set_len(n as usize) };
    Some(Ok(()))
}
