//! Single-flight blob fills.
//!
//! The first request for an uncached digest becomes the leader: it starts a
//! detached fill task that walks the upstreams, writes the body to a temp file
//! in the store while hashing it, verifies the digest and commits. Every
//! request for the same digest (from any repository or registry) joins the
//! fill and tails the temp file up to the written offset, so N clients cost
//! one upstream download and all stream at upstream speed.
//!
//! Contracts:
//! - The fill task does not depend on any client: a client that goes away
//!   does not cancel it.
//! - A fill ends `Complete` or `Failed`; if the task dies without saying so,
//!   its watch sender drops and every reader treats that as failure, so no
//!   follower can hang.
//! - Readers never send the last byte of a blob before the fill is verified
//!   complete, so no client receives a complete-looking wrong blob.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::store::{Kind, Store};
use crate::digest::{Digest, Hasher};
use crate::metrics::Metrics;
use crate::upstream::{FetchError, Upstreams};

/// Bytes handed to a client per read; bounds per-client memory.
pub const READ_CHUNK: usize = 256 << 10;
/// The fill publishes progress at least this often while bytes arrive ...
const PUBLISH_INTERVAL: Duration = Duration::from_millis(2);
/// ... or whenever this much is buffered.
const PUBLISH_BYTES: usize = 256 << 10;

#[derive(Clone, Debug)]
pub enum Phase {
    /// Walking the upstreams; no status known yet.
    Connecting,
    /// Bytes are arriving into `file`; `total` if the upstream said.
    Streaming {
        total: Option<u64>,
        file: Arc<File>,
    },
    /// Verified. `file` holds the whole blob (committed or not).
    Complete {
        size: u64,
        file: Arc<File>,
    },
    Failed(FetchError),
    /// The cache could not hold this blob (disk full, below the free-space
    /// watermark, I/O error). Readers continue straight from upstream;
    /// `file` holds the bytes written before that, if any.
    Abandoned {
        file: Option<Arc<File>>,
        total: Option<u64>,
    },
}

#[derive(Clone, Debug)]
pub struct FillState {
    /// Bytes written to `file` so far (readable with `pread`).
    pub written: u64,
    pub phase: Phase,
}

pub struct Fill {
    pub digest: Digest,
    state: watch::Receiver<FillState>,
    /// Where readers fetch from themselves if the fill is abandoned.
    upstreams: Arc<Upstreams>,
    repo: String,
}

impl Fill {
    /// Whether this fill fetches from `registry`'s upstreams under `repo`
    /// (a "not found" for another repository says nothing about this one).
    pub fn fetches_as(&self, registry: &str, repo: &str) -> bool {
        self.upstreams.host == registry && self.repo == repo
    }
}

/// The in-flight fills, by digest.
#[derive(Default)]
pub struct Fills {
    map: Mutex<HashMap<Digest, Arc<Fill>>>,
}

/// What a fill needs from the daemon.
#[derive(Clone)]
pub struct FillContext {
    pub store: Arc<Store>,
    pub metrics: Arc<Metrics>,
    pub fills: Arc<Fills>,
}

impl Fills {
    /// Joins the fill for `digest`, or starts one fetching from `upstreams`
    /// under repository `repo`. Returns the fill and whether this call started it.
    pub fn join_or_start(
        &self,
        ctx: &FillContext,
        upstreams: Arc<Upstreams>,
        repo: &str,
        digest: Digest,
    ) -> (Arc<Fill>, bool) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = map.get(&digest) {
            // A failed fill lingers until its task cleans up; never join it.
            if !matches!(f.state.borrow().phase, Phase::Failed(_)) {
                return (f.clone(), false);
            }
        }
        let (tx, rx) = watch::channel(FillState {
            written: 0,
            phase: Phase::Connecting,
        });
        let fill = Arc::new(Fill {
            digest,
            state: rx,
            upstreams: upstreams.clone(),
            repo: repo.to_string(),
        });
        map.insert(digest, fill.clone());
        drop(map);
        let ctx = ctx.clone();
        let repo = repo.to_string();
        let me = fill.clone();
        ctx.metrics.inflight_fetches.inc();
        tokio::spawn(async move {
            // Cleanup runs even if `run` panics: no later request may join a
            // dead fill, and the gauge must come back down.
            let _guard = FillGuard {
                ctx: ctx.clone(),
                fill: me,
            };
            match run(&ctx, &upstreams, &repo, digest, &tx).await {
                Ok(()) => {}
                Err(FillError::Fetch(e)) => {
                    tracing::warn!(digest = %digest, registry = %upstreams.host, repository = %repo, error = %e, "blob fill failed");
                    tx.send_modify(|s| s.phase = Phase::Failed(e));
                }
                Err(FillError::Disk(e)) => {
                    ctx.store.note_write_failure(&e);
                    ctx.metrics
                        .passthrough
                        .with_label_values(&["disk_error"])
                        .inc();
                    tracing::warn!(digest = %digest, error = %e,
                        "cache write failed: clients continue straight from upstream");
                    tx.send_modify(|s| {
                        let (file, total) = match &s.phase {
                            Phase::Streaming { total, file } => (Some(file.clone()), *total),
                            _ => (None, None),
                        };
                        s.phase = Phase::Abandoned { file, total };
                    });
                }
            }
        });
        (fill, true)
    }
}

/// Removes a fill from the map and counts it done when its task ends,
/// however it ends.
struct FillGuard {
    ctx: FillContext,
    fill: Arc<Fill>,
}

impl Drop for FillGuard {
    fn drop(&mut self) {
        self.ctx.fills.finish(&self.fill);
        self.ctx.metrics.inflight_fetches.dec();
    }
}

impl Fills {
    fn finish(&self, fill: &Arc<Fill>) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.get(&fill.digest).is_some_and(|f| Arc::ptr_eq(f, fill)) {
            map.remove(&fill.digest);
        }
    }

    pub fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The fill for `digest`, if one is running.
    pub fn get(&self, digest: &Digest) -> Option<Arc<Fill>> {
        self.map.lock().ok()?.get(digest).cloned()
    }
}

/// The size a running fill already knows, for HEAD requests.
impl Fill {
    pub fn known_size(&self) -> Option<u64> {
        match &self.state.borrow().phase {
            Phase::Streaming { total, .. } => *total,
            Phase::Complete { size, .. } => Some(*size),
            Phase::Abandoned { total, .. } => *total,
            _ => None,
        }
    }

    /// Whether the blob is already verified complete (joining it is a hit).
    pub fn is_complete(&self) -> bool {
        matches!(self.state.borrow().phase, Phase::Complete { .. })
    }

    /// Waits until the upstream answered: `Ok(total)` once bytes flow (or the
    /// fill is already complete), the walk's error otherwise.
    pub async fn started(&self) -> Result<Option<u64>, FetchError> {
        let mut rx = self.state.clone();
        loop {
            {
                let s = rx.borrow_and_update();
                match &s.phase {
                    Phase::Connecting => {}
                    Phase::Streaming { total, .. } => return Ok(*total),
                    Phase::Complete { size, .. } => return Ok(Some(*size)),
                    Phase::Abandoned { total, .. } => return Ok(*total),
                    Phase::Failed(e) => return Err(e.clone()),
                }
            }
            if rx.changed().await.is_err() {
                return Err(died());
            }
        }
    }

    /// Waits for the end of the fill: the verified size, or the failure.
    pub async fn finished(&self) -> Result<u64, FetchError> {
        let mut rx = self.state.clone();
        loop {
            {
                let s = rx.borrow_and_update();
                match &s.phase {
                    Phase::Complete { size, .. } => return Ok(*size),
                    Phase::Failed(e) => return Err(e.clone()),
                    Phase::Abandoned { .. } => {
                        return Err(FetchError::Unavailable(
                            "the cache cannot hold this blob".into(),
                        ))
                    }
                    _ => {}
                }
            }
            if rx.changed().await.is_err() {
                return Err(died());
            }
        }
    }

    /// Streams bytes `start..end` (`end` = `None`: to the end of the blob) to
    /// `out` as they land. Holds back the blob's last byte until the fill is
    /// verified; sends an error (so the client's transfer is aborted) if the
    /// fill fails. Returns when done, failed, or the client went away.
    pub async fn stream(&self, start: u64, end: Option<u64>, out: mpsc::Sender<io::Result<Bytes>>) {
        let mut rx = self.state.clone();
        let mut pos = start;
        loop {
            let view = {
                let s = rx.borrow_and_update();
                match &s.phase {
                    Phase::Connecting => Ok((None, 0, None, false)),
                    // Hold back one byte until verified.
                    Phase::Streaming { total, file } => Ok((
                        Some(file.clone()),
                        s.written.saturating_sub(1),
                        *total,
                        false,
                    )),
                    Phase::Complete { size, file } => {
                        Ok((Some(file.clone()), *size, Some(*size), true))
                    }
                    Phase::Failed(e) => Err(Err(e.to_string())),
                    Phase::Abandoned { file, total } => Err(Ok((file.clone(), *total))),
                }
            };
            let (file, limit, total, complete) = match view {
                Ok(v) => v,
                Err(Err(e)) => {
                    let _ = out.send(Err(io::Error::other(e))).await;
                    return;
                }
                Err(Ok((file, total))) => {
                    self.passthrough(pos, start, end, total, file, out).await;
                    return;
                }
            };
            let end = match (end, total) {
                (Some(e), _) => Some(e),
                (None, t) => t,
            };
            // Done, unless the range reaches the blob's end: then only once
            // verified (this covers a zero-length body claiming any digest).
            if end.is_some_and(|e| pos >= e && (complete || total.is_some_and(|t| e < t))) {
                return;
            }
            let stop = end.map_or(limit, |e| e.min(limit));
            if let (Some(file), true) = (file, pos < stop) {
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
                let _ = out.send(Err(io::Error::other(died().to_string()))).await;
                return;
            }
        }
    }
}

impl Fill {
    /// Continues a reader straight from upstream (the fill was abandoned):
    /// fetches from `pos` with `Range` and streams to `out`. A whole-blob
    /// read is still verified before its last chunk is sent, re-hashing the
    /// prefix it already sent from the partial file.
    async fn passthrough(
        &self,
        mut pos: u64,
        start: u64,
        end: Option<u64>,
        total: Option<u64>,
        file: Option<Arc<File>>,
        out: mpsc::Sender<io::Result<Bytes>>,
    ) {
        let fail = |msg: String| io::Error::other(msg);
        let whole = start == 0 && (end.is_none() || end == total);
        let mut hasher = None;
        if whole {
            let prefix = match (pos, file) {
                (0, _) => Ok(Hasher::new()),
                (n, Some(f)) => tokio::task::spawn_blocking(move || hash_prefix(&f, n))
                    .await
                    .unwrap_or_else(|e| Err(io::Error::other(e))),
                (_, None) => Err(fail("no partial file to verify the prefix".into())),
            };
            match prefix {
                Ok(h) => hasher = Some(h),
                Err(e) => {
                    let _ = out.send(Err(e)).await;
                    return;
                }
            }
        }
        let mut br = match self
            .upstreams
            .get_blob(&self.repo, &self.digest, pos, 0)
            .await
        {
            Ok(b) => b,
            Err(e) => {
                let _ = out.send(Err(fail(e.to_string()))).await;
                return;
            }
        };
        let stall = br.upstream.timeouts.stall;
        let stop = end.or(total).or(br.total);
        let mut held: Option<Bytes> = None;
        loop {
            let chunk = match tokio::time::timeout(stall, br.resp.chunk()).await {
                Ok(Ok(Some(c))) => c,
                Ok(Ok(None)) => break,
                Ok(Err(e)) => {
                    let _ = out
                        .send(Err(fail(format!("upstream body broke: {e}"))))
                        .await;
                    return;
                }
                Err(_) => {
                    let _ = out.send(Err(fail("upstream body stalled".into()))).await;
                    return;
                }
            };
            let mut chunk = chunk;
            if br.skip > 0 {
                let n = (br.skip as usize).min(chunk.len());
                br.skip -= n as u64;
                chunk = chunk.slice(n..);
            }
            if let Some(s) = stop {
                let room = s.saturating_sub(pos) as usize;
                if chunk.len() > room {
                    if whole {
                        let _ = out
                            .send(Err(fail(
                                "upstream sent more bytes than the blob has".into(),
                            )))
                            .await;
                        return;
                    }
                    chunk.truncate(room);
                }
            }
            if chunk.is_empty() {
                if stop.is_some_and(|s| pos >= s) {
                    break;
                }
                continue;
            }
            if let Some(h) = &mut hasher {
                h.update(&chunk);
            }
            pos += chunk.len() as u64;
            if let Some(prev) = held.replace(chunk) {
                if out.send(Ok(prev)).await.is_err() {
                    return;
                }
            }
            if !whole && stop.is_some_and(|s| pos >= s) {
                break;
            }
        }
        if let Some(h) = hasher {
            let actual = h.finish();
            if actual != self.digest || total.is_some_and(|t| pos != t) {
                let _ = out
                    .send(Err(fail(format!(
                        "pass-through body failed verification: got {actual}"
                    ))))
                    .await;
                return;
            }
        } else if stop.is_some_and(|s| pos < s) {
            let _ = out
                .send(Err(fail("upstream body ended early".into())))
                .await;
            return;
        }
        if let Some(last) = held {
            let _ = out.send(Ok(last)).await;
        }
    }
}

fn hash_prefix(file: &File, len: u64) -> io::Result<Hasher> {
    let mut h = Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0;
    while pos < len {
        let want = ((len - pos) as usize).min(buf.len());
        let n = file.read_at(&mut buf[..want], pos)?;
        if n == 0 {
            return Err(io::Error::other("partial file shorter than what was sent"));
        }
        h.update(&buf[..n]);
        pos += n as u64;
    }
    Ok(h)
}

/// Streams bytes `start..end` of a complete (cached) file to `out`.
pub async fn stream_file(
    file: Arc<File>,
    start: u64,
    end: u64,
    out: mpsc::Sender<io::Result<Bytes>>,
) {
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

fn died() -> FetchError {
    FetchError::Unavailable("the fetch ended unexpectedly".into())
}

/// Reads up to `len` bytes at `pos`. Bytes already in the page cache (the
/// common case for hits and for followers tailing a fill) are read inline
/// with `preadv2(RWF_NOWAIT)`, which by contract never blocks; anything
/// else goes to the blocking pool. Returns fewer bytes only at end of file.
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

static NOWAIT_UNSUPPORTED: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// `preadv2(RWF_NOWAIT)` into `buf`'s spare capacity. `None`: would block
/// (not cached) or unsupported here; the caller reads on the blocking pool.
fn read_nowait(file: &File, buf: &mut Vec<u8>, pos: u64, len: usize) -> Option<io::Result<()>> {
    use std::os::fd::AsRawFd;
    use std::sync::atomic::Ordering;
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

/// Why a fill ended early: the fetch failed (every reader fails), or the
/// cache's disk did (readers continue straight from upstream).
enum FillError {
    Fetch(FetchError),
    Disk(io::Error),
}

impl From<FetchError> for FillError {
    fn from(e: FetchError) -> Self {
        FillError::Fetch(e)
    }
}

/// The temp file being filled, with its running hash. Moved in and out of
/// the blocking pool for each batch.
struct Sink {
    path: PathBuf,
    file: File,
    hasher: Hasher,
    written: u64,
}

impl Drop for Sink {
    fn drop(&mut self) {
        // Unless committed (which renames it away), a temp file never outlives its fill.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The fill task: find the blob upstream, stream it into a temp file,
/// resuming from the next upstream with `Range` if a body breaks, then
/// verify and commit.
async fn run(
    ctx: &FillContext,
    upstreams: &Upstreams,
    repo: &str,
    digest: Digest,
    tx: &watch::Sender<FillState>,
) -> Result<(), FillError> {
    // Another fill may have committed this digest between the caller's store
    // lookup and our registration.
    let store = ctx.store.clone();
    if let Ok(Ok(Some((f, size)))) =
        tokio::task::spawn_blocking(move || store.open_blob(&digest)).await
    {
        tx.send_modify(|s| {
            s.written = size;
            s.phase = Phase::Complete {
                size,
                file: Arc::new(f),
            }
        });
        return Ok(());
    }

    let abandon = |reason: &str, total: Option<u64>| {
        ctx.metrics.passthrough.with_label_values(&[reason]).inc();
        tracing::warn!(digest = %digest, reason, "not caching this blob: clients stream it straight from upstream");
        tx.send_modify(|s| s.phase = Phase::Abandoned { file: None, total });
    };
    if ctx.store.is_full() {
        // Do not start a download the cache cannot keep; learn the size for
        // the clients' headers and let each stream from upstream.
        let total = upstreams.head_blob(repo, &digest).await?;
        abandon("disk_full", total);
        return Ok(());
    }

    let mut br = upstreams.get_blob(repo, &digest, 0, 0).await?;
    let total = br.total;

    let store = ctx.store.clone();
    let prepared = tokio::task::spawn_blocking(move || store.prepare_fill(total))
        .await
        .map_err(|e| FillError::Disk(io::Error::other(e)))?;
    let (path, file) = match prepared {
        Ok(pf) => pf,
        Err(reason) => {
            abandon(reason, total);
            return Ok(());
        }
    };
    let reader = file.try_clone().map_err(FillError::Disk)?;
    let reader = Arc::new(reader);
    let mut sink = Sink {
        path,
        file,
        hasher: Hasher::new(),
        written: 0,
    };
    tx.send_modify(|s| {
        s.phase = Phase::Streaming {
            total,
            file: reader.clone(),
        }
    });

    let stall = br.upstream.timeouts.stall;
    let mut resumes = 0;
    let mut resumed_at = 0u64;
    let mut upstream_bytes = ctx
        .metrics
        .upstream_bytes
        .with_label_values(&[&upstreams.host, &br.upstream.url]);
    let mut batch = BytesMut::new();
    let mut deadline: Option<Instant> = None;
    loop {
        let next = tokio::select! {
            biased;
            r = tokio::time::timeout(stall, br.resp.chunk()) => Some(r),
            _ = sleep_until_opt(deadline), if deadline.is_some() => None,
        };
        let outcome: Result<Option<Bytes>, String> = match next {
            None => {
                sink = write_batch(sink, &mut batch, tx).await?;
                deadline = None;
                continue;
            }
            Some(Ok(Ok(Some(c)))) => Ok(Some(c)),
            Some(Ok(Ok(None))) => {
                let received = sink.written + batch.len() as u64;
                match total {
                    Some(t) if received < t => {
                        Err(format!("body ended at {received} of {t} bytes"))
                    }
                    _ => Ok(None),
                }
            }
            Some(Ok(Err(e))) => Err(format!(
                "body broke: {}",
                crate::upstream::client::error_chain(&e.without_url())
            )),
            Some(Err(_)) => Err(format!("no bytes for {stall:?}")),
        };
        let mut chunk = match outcome {
            Ok(Some(c)) => c,
            Ok(None) => break,
            Err(why) => {
                // The digest pins the bytes, so any upstream's copy continues
                // this one: keep what arrived and ask the next upstream
                // (wrapping around to this one last) for the rest.
                // Only breaks without progress in between count against the limit.
                let here = sink.written + batch.len() as u64;
                if here > resumed_at {
                    resumes = 0;
                }
                resumed_at = here;
                resumes += 1;
                br.upstream.health.failure();
                if resumes > upstreams.len() + 1 {
                    return Err(FillError::Fetch(FetchError::Unavailable(format!(
                        "{}: {why}; gave up after {} resumes",
                        br.upstream.url,
                        resumes - 1
                    ))));
                }
                sink = write_batch(sink, &mut batch, tx).await?;
                deadline = None;
                let offset = sink.written;
                tracing::info!(digest = %digest, upstream = %br.upstream.url, error = %why, offset,
                    "blob body broke; resuming");
                let next = upstreams
                    .get_blob(repo, &digest, offset, (br.index + 1) % upstreams.len())
                    .await?;
                if let (Some(a), Some(b)) = (total, next.total) {
                    if a != b {
                        return Err(FillError::Fetch(FetchError::Integrity(format!(
                            "{} says the blob has {b} bytes, {} said {a}",
                            next.upstream.url, br.upstream.url
                        ))));
                    }
                }
                br = next;
                upstream_bytes = ctx
                    .metrics
                    .upstream_bytes
                    .with_label_values(&[&upstreams.host, &br.upstream.url]);
                continue;
            }
        };
        upstream_bytes.inc_by(chunk.len() as u64);
        if br.skip > 0 {
            // The upstream ignored Range and started from byte 0.
            let n = (br.skip as usize).min(chunk.len());
            br.skip -= n as u64;
            chunk = chunk.slice(n..);
        }
        batch.extend_from_slice(&chunk);
        let received = sink.written + batch.len() as u64;
        if let Some(t) = total.filter(|t| received > *t) {
            ctx.metrics.integrity_failures.inc();
            return Err(FillError::Fetch(FetchError::Integrity(format!(
                "{}: body longer than its {t} bytes",
                br.upstream.url
            ))));
        }
        if batch.len() >= PUBLISH_BYTES {
            sink = write_batch(sink, &mut batch, tx).await?;
            deadline = None;
        } else if deadline.is_none() {
            deadline = Some(Instant::now() + PUBLISH_INTERVAL);
        }
    }
    sink = write_batch(sink, &mut batch, tx).await?;

    let actual = sink.hasher.clone().finish();
    if actual != digest {
        ctx.metrics.integrity_failures.inc();
        return Err(FillError::Fetch(FetchError::Integrity(format!(
            "{}: digest mismatch: expected {digest}, got {actual}",
            br.upstream.url
        ))));
    }
    let size = sink.written;
    // Verified: clients may have their last byte now. The commit's fsyncs
    // need not delay them; readers hold the file open, and a crash before the
    // rename only costs a refetch.
    tx.send_modify(|s| {
        s.written = size;
        s.phase = Phase::Complete { size, file: reader };
    });
    let store = ctx.store.clone();
    let committed = tokio::task::spawn_blocking(move || {
        let r = store.commit(Kind::Blob, &sink.path, &sink.file, &digest, size);
        // Committed or not, the temp name is gone or must go: Sink's Drop
        // removes it if the rename did not happen.
        drop(sink);
        r
    })
    .await;
    match committed {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            tracing::warn!(digest = %digest, error = %e, "commit failed: blob served but not cached")
        }
        Err(e) => tracing::warn!(digest = %digest, error = %e, "commit task failed"),
    }
    Ok(())
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Writes and hashes a batch on the blocking pool, then publishes progress.
async fn write_batch(
    mut sink: Sink,
    batch: &mut BytesMut,
    tx: &watch::Sender<FillState>,
) -> Result<Sink, FillError> {
    if batch.is_empty() {
        return Ok(sink);
    }
    let data = batch.split().freeze();
    let (sink, res) = tokio::task::spawn_blocking(move || {
        let res = sink.file.write_all(&data);
        if res.is_ok() {
            sink.hasher.update(&data);
            sink.written += data.len() as u64;
        }
        (sink, res)
    })
    .await
    .map_err(|e| FillError::Disk(io::Error::other(e)))?;
    res.map_err(FillError::Disk)?;
    let written = sink.written;
    tx.send_modify(|s| s.written = written);
    Ok(sink)
}
