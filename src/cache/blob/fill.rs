//! The fill task: find the blob upstream, stream it into a temp file while
//! hashing it, resume from the next upstream with `Range` if a body breaks,
//! then verify and commit. Readers follow its progress through the state it
//! publishes (see `read`).

use std::io::{self, Write};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::time::Instant;

use super::{FillState, Phase};
use crate::cache::inflight::Leader;
use crate::metrics::Metrics;
use crate::oci::{Digest, Hasher};
use crate::store::{Kind, NoRoom, Store, TempFile};
use crate::upstream::{error_chain, Role, UpstreamError, Upstreams};

/// The fill publishes progress at least this often while bytes arrive ...
const PUBLISH_INTERVAL: Duration = Duration::from_millis(2);
/// ... or whenever this much is buffered.
const PUBLISH_BYTES: usize = 256 << 10;

type FillLeader = Leader<super::FillKey, FillState>;

/// Starts the fill task for the digest `leader` holds. It runs detached:
/// no client's disconnect cancels it; however it ends, its key is freed
/// (the leader drops) and the in-flight gauge comes back down.
pub fn start(
    leader: FillLeader,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    ups: Arc<Upstreams>,
    repo: String,
) {
    metrics.inflight_fetches.inc();
    tokio::spawn(async move {
        let _gauge = GaugeGuard(metrics.clone());
        let digest = leader.key().0;
        let fill = FillTask {
            leader: &leader,
            store: &store,
            metrics: &metrics,
            ups: &ups,
            repo: &repo,
            digest,
        };
        match fill.run().await {
            Ok(()) => {}
            Err(FillError::Fetch(e)) => {
                tracing::warn!(digest = %digest, registry = %ups.host, repository = %repo, error = %e, "blob fill failed");
                leader.publish(|s| s.phase = Phase::Failed(e));
            }
            Err(FillError::Disk(e)) => {
                store.note_write_failure(&e);
                metrics.passthrough.with_label_values(&["disk_error"]).inc();
                tracing::warn!(digest = %digest, error = %e,
                    "cache write failed: clients continue straight from upstream");
                leader.publish(|s| {
                    let (file, total) = match &s.phase {
                        Phase::Streaming { total, file } => (Some(file.clone()), *total),
                        _ => (None, None),
                    };
                    s.phase = Phase::Abandoned { file, total };
                });
            }
        }
    });
}

/// Counts a fill done when its task ends, however it ends.
struct GaugeGuard(Arc<Metrics>);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.inflight_fetches.dec();
    }
}

/// Why a fill ended early: the fetch failed (every reader fails), or the
/// cache's disk did (readers continue straight from upstream).
enum FillError {
    Fetch(UpstreamError),
    Disk(io::Error),
}

impl From<UpstreamError> for FillError {
    fn from(e: UpstreamError) -> Self {
        FillError::Fetch(e)
    }
}

/// The temp file being filled, with its running hash. Moved in and out of
/// the blocking pool for each batch.
struct Sink {
    temp: TempFile,
    hasher: Hasher,
    written: u64,
}

struct FillTask<'a> {
    leader: &'a FillLeader,
    store: &'a Arc<Store>,
    metrics: &'a Metrics,
    ups: &'a Upstreams,
    repo: &'a str,
    digest: Digest,
}

impl FillTask<'_> {
    fn abandon(&self, reason: &str, total: Option<u64>) {
        self.metrics.passthrough.with_label_values(&[reason]).inc();
        tracing::warn!(digest = %self.digest, reason,
            "not caching this blob: clients stream it straight from upstream");
        self.leader
            .publish(|s| s.phase = Phase::Abandoned { file: None, total });
    }

    async fn run(&self) -> Result<(), FillError> {
        let digest = self.digest;
        // Another fill may have committed this digest between the caller's
        // store lookup and our claim.
        let store = self.store.clone();
        if let Ok(Ok(Some((f, size)))) =
            tokio::task::spawn_blocking(move || store.open_blob(&digest)).await
        {
            self.leader.publish(|s| {
                s.written = size;
                s.phase = Phase::Complete {
                    size,
                    file: Arc::new(f),
                }
            });
            return Ok(());
        }
        if self.store.writes_paused() {
            // Do not start a download the cache cannot keep; learn the size
            // for the clients' headers and let each stream from upstream.
            let total = self.ups.head_blob(self.repo, &digest).await?;
            self.abandon(NoRoom::WritesPaused.label(), total);
            return Ok(());
        }

        let mut br = self.ups.get_blob(self.repo, &digest, 0, 0).await?;
        let total = br.total;
        let store = self.store.clone();
        let prepared = tokio::task::spawn_blocking(move || store.prepare_fill(total))
            .await
            .map_err(|e| FillError::Disk(io::Error::other(e)))?;
        let temp = match prepared {
            Ok(t) => t,
            Err(reason) => {
                self.abandon(reason.label(), total);
                return Ok(());
            }
        };
        let reader = Arc::new(temp.file.try_clone().map_err(FillError::Disk)?);
        let mut sink = Sink {
            temp,
            hasher: Hasher::new(),
            written: 0,
        };
        self.leader.publish(|s| {
            s.from_peer = br.upstream.role != Role::Upstream;
            s.phase = Phase::Streaming {
                total,
                file: reader.clone(),
            }
        });

        let mut window = self.ups.progress_window(&br.upstream, br.index);
        let mut resumes = 0;
        let mut resumed_at = 0u64;
        let mut upstream_bytes = br.upstream.bytes_counter();
        let mut batch = BytesMut::new();
        let mut deadline: Option<Instant> = None;
        loop {
            let next = tokio::select! {
                biased;
                r = tokio::time::timeout(window, br.resp.chunk()) => Some(r),
                _ = sleep_until_opt(deadline), if deadline.is_some() => None,
            };
            let outcome: Result<Option<Bytes>, String> = match next {
                None => {
                    sink = self.write_batch(sink, &mut batch).await?;
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
                Some(Ok(Err(e))) => Err(format!("body broke: {}", error_chain(&e.without_url()))),
                Some(Err(_)) => {
                    if window < br.upstream.timeouts.stall {
                        self.metrics
                            .upstream_stalls
                            .with_label_values(&[&self.ups.host, &br.upstream.url])
                            .inc();
                    }
                    Err(format!("no bytes for {window:?}"))
                }
            };
            let mut chunk = match outcome {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(why) => {
                    // The digest pins the bytes, so any upstream's copy
                    // continues this one: keep what arrived and ask the next
                    // upstream (wrapping around to this one last) for the
                    // rest. Only breaks without progress in between count
                    // against the limit.
                    let here = sink.written + batch.len() as u64;
                    if here > resumed_at {
                        resumes = 0;
                    }
                    resumed_at = here;
                    resumes += 1;
                    br.upstream.health.body_failure();
                    if br.upstream.role != Role::Upstream {
                        self.metrics
                            .peer_requests
                            .with_label_values(&["fetched", "broken_body"])
                            .inc();
                    }
                    if resumes > self.ups.len() + 1 {
                        return Err(FillError::Fetch(UpstreamError::Unavailable(format!(
                            "{}: {why}; gave up after {} resumes",
                            br.upstream.url,
                            resumes - 1
                        ))));
                    }
                    sink = self.write_batch(sink, &mut batch).await?;
                    deadline = None;
                    let offset = sink.written;
                    tracing::info!(digest = %digest, upstream = %br.upstream.url, error = %why, offset,
                        "blob body broke; resuming");
                    let next = self
                        .ups
                        .get_blob(self.repo, &digest, offset, (br.index + 1) % self.ups.len())
                        .await?;
                    if let (Some(a), Some(b)) = (total, next.total) {
                        if a != b {
                            return Err(FillError::Fetch(UpstreamError::Integrity(format!(
                                "{} says the blob has {b} bytes, {} said {a}",
                                next.upstream.url, br.upstream.url
                            ))));
                        }
                    }
                    br = next;
                    upstream_bytes = br.upstream.bytes_counter();
                    window = self.ups.progress_window(&br.upstream, br.index);
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
                self.metrics.integrity_failures.inc();
                br.upstream.health.body_failure();
                return Err(FillError::Fetch(UpstreamError::Integrity(format!(
                    "{}: body longer than its {t} bytes",
                    br.upstream.url
                ))));
            }
            if batch.len() >= PUBLISH_BYTES {
                sink = self.write_batch(sink, &mut batch).await?;
                deadline = None;
            } else if deadline.is_none() {
                deadline = Some(Instant::now() + PUBLISH_INTERVAL);
            }
        }
        sink = self.write_batch(sink, &mut batch).await?;

        let actual = sink.hasher.clone().finish();
        if actual != digest {
            self.metrics.integrity_failures.inc();
            // An upstream or peer that serves wrong bytes is skipped like a
            // dead one (its breaker opens after `breaker_failures`).
            br.upstream.health.body_failure();
            return Err(FillError::Fetch(UpstreamError::Integrity(format!(
                "{}: digest mismatch: expected {digest}, got {actual}",
                br.upstream.url
            ))));
        }
        let size = sink.written;
        br.upstream.health.body_ok();
        // Verified: clients may have their last byte now. The commit's fsyncs
        // need not delay them; readers hold the file open, and a crash before
        // the rename only costs a refetch.
        self.leader.publish(|s| {
            s.written = size;
            s.phase = Phase::Complete { size, file: reader };
        });
        let store = self.store.clone();
        let committed =
            tokio::task::spawn_blocking(move || store.commit(Kind::Blob, sink.temp, &digest, size))
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

    /// Writes and hashes a batch on the blocking pool, then publishes progress.
    async fn write_batch(&self, mut sink: Sink, batch: &mut BytesMut) -> Result<Sink, FillError> {
        if batch.is_empty() {
            return Ok(sink);
        }
        let data = batch.split().freeze();
        let (sink, res) = tokio::task::spawn_blocking(move || {
            let res = sink.temp.file.write_all(&data);
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
        self.leader.publish(|s| s.written = written);
        Ok(sink)
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
