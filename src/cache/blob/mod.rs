//! Blobs: served from the store, or from the single in-flight fill for
//! their digest.
//!
//! The first request for an uncached digest leads: it starts a fill task
//! (`fill`) that walks the upstreams, writes the body to a temp file in the
//! store while hashing it, verifies the digest and commits. Every request for
//! the same digest (from any repository or registry) follows and tails the
//! temp file up to the written offset (`read`), so N clients cost one
//! upstream download and all stream at upstream speed. When the disk cannot
//! take the blob, each reader streams it straight from upstream
//! (`passthrough`).
//!
//! Contracts:
//! - The fill task does not depend on any client: a client that goes away
//!   does not cancel it.
//! - A fill ends `Complete` or `Failed`; if the task dies without saying so,
//!   its watch sender drops and every reader treats that as failure, so no
//!   follower can hang.
//! - Readers never send the last byte of a blob before the fill is verified
//!   complete, so no client receives a complete-looking wrong blob.

mod fill;
mod passthrough;
pub mod read;

use std::fs::File;
use std::io;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};

use super::inflight::{Claim, InFlight, Interrupted};
use super::{CacheError, Outcome, Via};
use crate::metrics::Metrics;
use crate::oci::Digest;
use crate::store::Store;
use crate::upstream::{UpstreamError, Upstreams};

/// A blob body as it reaches the HTTP layer: chunks produced by a task; an
/// `Err` aborts the client's transfer.
pub type BodyStream = mpsc::Receiver<io::Result<Bytes>>;

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
    Failed(UpstreamError),
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
    /// Bytes written to the file so far (readable with `pread`).
    pub written: u64,
    pub phase: Phase,
    /// The registry and repository the fill fetches under: a "not found"
    /// there says nothing about another repository.
    pub fetched_as: Arc<(String, String)>,
    /// The bytes come from a peer (set when they start to flow).
    pub from_peer: bool,
    /// The peers the fill asks before the registry's own upstreams.
    pub asks: Arc<Vec<String>>,
}

/// Fills are keyed by digest and by whether they ask peers first. A fill
/// from the node's own upstreams serves everyone; one that asks peers
/// serves this node's clients, and peers that it does not ask (two nodes
/// that disagree on an owner for a moment must not wait on each other).
type FillKey = (Digest, bool);

/// A handle on one fill's progress.
#[derive(Clone)]
pub struct Fill {
    digest: Digest,
    state: watch::Receiver<FillState>,
}

impl Fill {
    /// The size the fill already knows, for HEAD requests.
    fn known_size(&self) -> Option<u64> {
        match &self.state.borrow().phase {
            Phase::Streaming { total, .. } | Phase::Abandoned { total, .. } => *total,
            Phase::Complete { size, .. } => Some(*size),
            _ => None,
        }
    }

    fn fetches_as(&self, registry: &str, repo: &str) -> bool {
        let s = self.state.borrow();
        s.fetched_as.0 == registry && s.fetched_as.1 == repo
    }

    fn is_complete(&self) -> bool {
        matches!(self.state.borrow().phase, Phase::Complete { .. })
    }

    fn is_from_peer(&self) -> bool {
        self.state.borrow().from_peer
    }

    /// Waits until the upstream answered: `Ok(total)` once bytes flow (or the
    /// fill is already complete), the walk's error otherwise.
    async fn started(&self) -> Result<Option<u64>, UpstreamError> {
        let mut rx = self.state.clone();
        loop {
            {
                let s = rx.borrow_and_update();
                match &s.phase {
                    Phase::Connecting => {}
                    Phase::Streaming { total, .. } | Phase::Abandoned { total, .. } => {
                        return Ok(*total)
                    }
                    Phase::Complete { size, .. } => return Ok(Some(*size)),
                    Phase::Failed(e) => return Err(e.clone()),
                }
            }
            if rx.changed().await.is_err() {
                return Err(Interrupted.into());
            }
        }
    }

    /// Waits for the end of the fill: the verified size, or the failure.
    async fn finished(&self) -> Result<u64, UpstreamError> {
        let mut rx = self.state.clone();
        loop {
            {
                let s = rx.borrow_and_update();
                match &s.phase {
                    Phase::Complete { size, .. } => return Ok(*size),
                    Phase::Failed(e) => return Err(e.clone()),
                    Phase::Abandoned { .. } => {
                        return Err(UpstreamError::Unavailable(
                            "the cache cannot hold this blob".into(),
                        ))
                    }
                    _ => {}
                }
            }
            if rx.changed().await.is_err() {
                return Err(Interrupted.into());
            }
        }
    }
}

/// Where a blob's bytes come from.
enum Source {
    /// From the store; a read error evicts the object.
    Stored(Arc<File>, read::Evict),
    /// The empty blob: nothing to read (or to verify).
    Empty,
    /// A fill under way (or just finished); `ups`/`repo` are the reader's
    /// own, for streaming through if the fill is abandoned.
    Filling {
        fill: Fill,
        ups: Arc<Upstreams>,
        repo: String,
    },
}

/// A blob ready to be streamed.
pub struct Blob {
    /// The blob's size, when known before its end (always, unless the
    /// upstream sent no length).
    pub size: Option<u64>,
    pub outcome: Outcome,
    /// Fetched from a peer (a miss or a coalesced request).
    pub from_peer: bool,
    source: Source,
}

impl Blob {
    /// Streams bytes `start..end` (`end` = `None`: to the end of the blob)
    /// from a task of its own.
    pub fn stream(self, start: u64, end: Option<u64>) -> BodyStream {
        let (tx, rx) = mpsc::channel(1);
        match self.source {
            Source::Stored(file, evict) => {
                let end = end.or(self.size).unwrap_or(0);
                tokio::spawn(async move {
                    if let Err(e) = read::stream_file(file, start, end, &tx).await {
                        evict.now(&e);
                        let _ = tx.send(Err(e)).await;
                    }
                });
            }
            Source::Empty => {}
            Source::Filling { fill, ups, repo } => {
                tokio::spawn(
                    async move { read::stream_fill(&fill, &ups, &repo, start, end, tx).await },
                );
            }
        }
        rx
    }
}

pub struct Blobs {
    store: Arc<Store>,
    fills: Arc<InFlight<FillKey, FillState>>,
    metrics: Arc<Metrics>,
}

impl Blobs {
    pub fn new(store: Arc<Store>, metrics: Arc<Metrics>) -> Blobs {
        Blobs {
            store,
            fills: Arc::default(),
            metrics,
        }
    }

    /// Fills under way.
    pub fn fills_in_flight(&self) -> usize {
        self.fills.len()
    }

    /// The stored blob, if any. One that cannot be opened is evicted (and
    /// counted): the request goes on as a miss and fetches it again.
    async fn open_stored(&self, digest: Digest) -> Result<Option<(File, u64)>, CacheError> {
        let store = self.store.clone();
        let opened = tokio::task::spawn_blocking(move || store.open_blob(&digest))
            .await
            .map_err(|e| CacheError::Internal(e.to_string()))?;
        match opened {
            Ok(found) => Ok(found),
            Err(e) => {
                self.evict(digest).now(&e);
                Ok(None)
            }
        }
    }

    fn evict(&self, digest: Digest) -> read::Evict {
        read::Evict {
            store: self.store.clone(),
            digest,
            metrics: self.metrics.clone(),
        }
    }

    /// A blob for GET: from the store, or joining (or starting) its fill,
    /// which fetches `via` the cluster or straight from `ups`.
    pub async fn get(
        &self,
        ups: &Arc<Upstreams>,
        repo: &str,
        digest: Digest,
        via: Via<'_>,
    ) -> Result<Blob, CacheError> {
        if let Some((file, size)) = self.open_stored(digest).await? {
            return Ok(Blob {
                size: Some(size),
                outcome: Outcome::Hit,
                from_peer: false,
                source: Source::Stored(Arc::new(file), self.evict(digest)),
            });
        }
        let ups = &via.upstreams(ups, digest.to_string().as_bytes());
        let (mut fill, mut leader) = self.join_or_start(ups, repo, digest, via);
        let mut started = fill.started().await;
        // Joined a fill for another repository or registry that could not
        // find (or may not read) the blob: ask our own upstreams once.
        if matches!(
            started,
            Err(UpstreamError::NotFound | UpstreamError::Denied(_))
        ) && !fill.fetches_as(&ups.host, repo)
        {
            (fill, leader) = self.join_or_start(ups, repo, digest, via);
            started = fill.started().await;
        }
        let outcome = match (leader, fill.is_complete()) {
            (true, _) => Outcome::Miss,
            // Verified and about to be committed: as good as a hit.
            (false, true) => Outcome::Hit,
            (false, false) => Outcome::Coalesced,
        };
        let size = started.map_err(CacheError::blob)?;
        if size == Some(0) {
            // A zero-length answer is complete the moment its headers are
            // sent: only the empty blob's digest may have one (a lying
            // upstream's empty body fails here, whether cached or not).
            if digest != Digest::of(b"") {
                fill.finished().await.map_err(CacheError::blob)?;
            }
            return Ok(Blob {
                size,
                outcome,
                from_peer: fill.is_from_peer(),
                source: Source::Empty,
            });
        }
        Ok(Blob {
            size,
            outcome,
            from_peer: fill.is_from_peer(),
            source: Source::Filling {
                fill,
                ups: ups.clone(),
                repo: repo.to_string(),
            },
        })
    }

    /// A blob's size for HEAD, without downloading it: from the store, a
    /// fill under way, or a HEAD `via` the cluster or to `ups`.
    pub async fn head(
        &self,
        ups: &Arc<Upstreams>,
        repo: &str,
        digest: Digest,
        via: Via<'_>,
    ) -> Result<(Option<u64>, Outcome), CacheError> {
        if let Some((_, size)) = self.open_stored(digest).await? {
            return Ok((Some(size), Outcome::Hit));
        }
        let known = [false, true]
            .into_iter()
            .filter_map(|peered| self.fills.peek(&(digest, peered)))
            .find_map(|state| Fill { digest, state }.known_size());
        if let Some(size) = known {
            return Ok((Some(size), Outcome::Coalesced));
        }
        let size = via
            .upstreams(ups, digest.to_string().as_bytes())
            .head_blob(repo, &digest)
            .await
            .map_err(CacheError::blob)?;
        Ok((size, Outcome::Miss))
    }

    /// Joins a fill for `digest` that may answer this request, or starts
    /// one fetching from `ups` (which may ask peers first) under `repo`.
    /// Returns the fill and whether this call started it.
    fn join_or_start(
        &self,
        ups: &Arc<Upstreams>,
        repo: &str,
        digest: Digest,
        via: Via<'_>,
    ) -> (Fill, bool) {
        // A failed fill lingers until its task cleans up; never join it.
        let live = |s: &FillState| !matches!(s.phase, Phase::Failed(_));
        let own = (digest, false);
        let peered = (digest, true);
        if let Some(state) = self.fills.peek(&own).filter(|s| live(&s.borrow())) {
            return (Fill { digest, state }, false);
        }
        if !ups.is_peered() {
            let may_join = |s: &FillState| live(s) && via.may_wait_on(&s.asks);
            if let Some(state) = self.fills.peek(&peered).filter(|s| may_join(&s.borrow())) {
                return (Fill { digest, state }, false);
            }
        }
        let key = if ups.is_peered() { peered } else { own };
        let claim = self.fills.claim(
            key,
            || FillState {
                written: 0,
                phase: Phase::Connecting,
                fetched_as: Arc::new((ups.host.clone(), repo.to_string())),
                from_peer: false,
                asks: Arc::new(ups.peer_urls()),
            },
            live,
        );
        match claim {
            Claim::Follower(state) => (Fill { digest, state }, false),
            Claim::Leader(leader) => {
                let state = leader.subscribe();
                fill::start(
                    leader,
                    self.store.clone(),
                    self.metrics.clone(),
                    ups.clone(),
                    repo.to_string(),
                );
                (Fill { digest, state }, true)
            }
        }
    }
}
