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
use crate::upstream::Upstreams;

/// Bytes handed to a client per read; bounds per-client memory.
pub const READ_CHUNK: usize = 256 << 10;

type Out = mpsc::Sender<io::Result<Bytes>>;

/// Streams bytes `start..end` of a complete (stored) file to `out`.
pub async fn stream_file(file: Arc<File>, start: u64, end: u64, out: Out) {
    let mut pos = start;
    while pos < end {
        let len = ((end - pos) as usize).min(READ_CHUNK);
        match read_at(file.clone(), pos, len).await {
            Ok(b) if !b.is_empty() => {
                pos += b.len() as u64;
                if out.send(Ok(b)).await.is_err() {
                    return;
                }
            }
            Ok(_) => {
                let _ = out
                    .send(Err(io::Error::other(
                        "cached file is shorter than expected",
                    )))
                    .await;
                return;
            }
            Err(e) => {
                let _ = out.send(Err(e)).await;
                return;
            }
        }
    }
}

/// What a reader may send of a fill right now.
struct View {
    file: Option<Arc<File>>,
    /// Bytes readable now (one held back until verified).
    limit: u64,
    total: Option<u64>,
    complete: bool,
}

/// Streams bytes `start..end` (`end` = `None`: to the end of the blob) of a
/// fill to `out` as they land. Holds back the blob's last byte until the
/// fill is verified; sends an error (so the client's transfer is aborted)
/// if the fill fails; continues from upstream (`ups`, `repo`) if the fill is
/// abandoned. Returns when done, failed, or the client went away.
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
                    limit: 0,
                    total: None,
                    complete: false,
                }),
                // Hold back one byte until verified.
                Phase::Streaming { total, file } => Ok(View {
                    file: Some(file.clone()),
                    limit: s.written.saturating_sub(1),
                    total: *total,
                    complete: false,
                }),
                Phase::Complete { size, file } => Ok(View {
                    file: Some(file.clone()),
                    limit: *size,
                    total: Some(*size),
                    complete: true,
                }),
                Phase::Failed(e) => Err(Err(e.to_string())),
                Phase::Abandoned { file, total } => Err(Ok((file.clone(), *total))),
            }
        };
        let view = match view {
            Ok(v) => v,
            Err(Err(e)) => {
                let _ = out.send(Err(io::Error::other(e))).await;
                return;
            }
            Err(Ok((file, total))) => {
                let at = passthrough::Position {
                    pos,
                    start,
                    end,
                    total,
                };
                passthrough::stream(ups, repo, fill.digest, at, file, out).await;
                return;
            }
        };
        let end = end.or(view.total);
        // Done, unless the range reaches the blob's end: then only once
        // verified (this covers a zero-length body claiming any digest).
        if end.is_some_and(|e| pos >= e && (view.complete || view.total.is_some_and(|t| e < t))) {
            return;
        }
        let stop = end.map_or(view.limit, |e| e.min(view.limit));
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
