//! Manifests: by digest (immutable, cached until evicted) and by tag (a
//! digest trusted for `tag_ttl`, then revalidated with an upstream HEAD;
//! the last known digest when every upstream fails). Hot manifests live in a
//! bounded memory cache; every manifest read from disk is re-verified.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::inflight::{InFlight, Shared};
use super::tags::{TagKey, Tags};
use super::{Outcome, Via};
use crate::metrics::Metrics;
use crate::oci::Digest;
use crate::store::{Kind, Store};
use crate::upstream::{FetchedManifest, UpstreamError, Upstreams};

/// Bytes of manifests held in memory.
pub const MEMORY_BYTES: u64 = 64 << 20;

/// A manifest as served: exact bytes, media type and digest.
#[derive(Debug)]
pub struct Manifest {
    pub digest: Digest,
    pub media_type: String,
    pub bytes: Bytes,
    /// Fetched from a peer (not from disk or an upstream).
    pub from_peer: bool,
}

/// Manifest fetches by digest are keyed by registry and repository too: a
/// "not found" in one repository must not answer another's request
/// (manifests are small; a rare duplicate fetch is the price). Like blob
/// fills, fetches that walk peers first are apart from those that do not.
type DigestKey = (Digest, String, String, bool);
/// Tag resolutions, keyed likewise.
type TagFlightKey = (TagKey, bool);
type Resolved = (Arc<Manifest>, Outcome);

pub struct Manifests {
    mem: moka::sync::Cache<Digest, Arc<Manifest>>,
    store: Arc<Store>,
    tags: Tags,
    tag_ttl: Duration,
    by_digest: Arc<InFlight<DigestKey, Shared<Arc<Manifest>, UpstreamError>>>,
    by_tag: Arc<InFlight<TagFlightKey, Shared<Resolved, UpstreamError>>>,
    metrics: Arc<Metrics>,
}

impl Manifests {
    pub fn new(store: Arc<Store>, tag_ttl: Duration, metrics: Arc<Metrics>) -> Manifests {
        Manifests {
            mem: moka::sync::Cache::builder()
                .max_capacity(MEMORY_BYTES)
                .weigher(|_, m: &Arc<Manifest>| {
                    u32::try_from(m.bytes.len() + m.media_type.len()).unwrap_or(u32::MAX)
                })
                .build(),
            tags: Tags::new(store.clone()),
            store,
            tag_ttl,
            by_digest: Arc::default(),
            by_tag: Arc::default(),
            metrics,
        }
    }

    pub fn tags(&self) -> &Tags {
        &self.tags
    }

    /// Manifests held in memory now, and their bytes.
    pub fn memory_usage(&self) -> (u64, u64) {
        self.mem.run_pending_tasks();
        (self.mem.entry_count(), self.mem.weighted_size())
    }

    /// A manifest by digest: from memory or disk, else fetched once however
    /// many ask, `via` the cluster or straight from `ups`.
    pub async fn by_digest(
        self: &Arc<Self>,
        ups: &Arc<Upstreams>,
        repo: &str,
        d: Digest,
        via: Via<'_>,
    ) -> Result<Resolved, UpstreamError> {
        if let Some(m) = self.local(&d).await {
            return Ok((m, Outcome::Hit));
        }
        let ups = via.upstreams(ups, d.to_string().as_bytes());
        let key = (d, ups.host.clone(), repo.to_string(), ups.is_peered());
        let (me, ups2, repo2) = (self.clone(), ups, repo.to_string());
        let (res, followed) = self
            .by_digest
            .run(key, move || async move {
                // Another fetch may have stored it since our lookup.
                if let Some(m) = me.local(&d).await {
                    return Ok(m);
                }
                let fm = ups2.get_manifest(&repo2, &d.to_string(), Some(&d)).await?;
                Ok(me.keep(fm).await)
            })
            .await;
        Ok((res?, Outcome::of(followed, Outcome::Miss)))
    }

    /// A manifest by tag. Within `tag_ttl` of the last confirmation it is
    /// served from memory without touching disk (the hot path). Otherwise
    /// resolved once however many ask, `via` the cluster (the tag's owner
    /// asks the registry once per `tag_ttl` for the whole cluster) or
    /// straight from `ups`.
    pub async fn by_tag(
        self: &Arc<Self>,
        ups: &Arc<Upstreams>,
        repo: &str,
        tag: &str,
        via: Via<'_>,
    ) -> Result<Resolved, UpstreamError> {
        let key = TagKey::new(&ups.host, repo, tag);
        if let Some(e) = self.tags.get_mem(&key) {
            if e.is_fresh(self.tag_ttl) {
                if let Some(m) = self.mem.get(&e.digest) {
                    self.store.mark_used(Kind::Manifest, &m.digest);
                    return Ok((m, Outcome::Hit));
                }
            }
        }
        let ups = via.upstreams(ups, key.to_string().as_bytes());
        let flight = (key.clone(), ups.is_peered());
        let me = self.clone();
        let (res, followed) = self
            .by_tag
            .run(
                flight,
                move || async move { me.resolve_tag(&ups, &key).await },
            )
            .await;
        let (m, outcome) = res?;
        Ok((m, Outcome::of(followed, outcome)))
    }

    /// Resolves a tag that is unknown or past `tag_ttl`: revalidate with an
    /// upstream HEAD (no body unless the digest changed), or fetch it; serve
    /// the last known digest if every upstream fails (stale-if-error).
    async fn resolve_tag(&self, ups: &Upstreams, key: &TagKey) -> Result<Resolved, UpstreamError> {
        let prior = self.tags.get(key).await;
        let prior_m = match prior {
            Some(p) => self.local(&p.digest).await,
            None => None,
        };
        if let (Some(p), Some(m)) = (prior, &prior_m) {
            if p.is_fresh(self.tag_ttl) {
                return Ok((m.clone(), Outcome::Hit));
            }
            match ups.head_manifest(&key.repo, &key.tag).await {
                Ok(Some(d)) if d == p.digest => {
                    self.tags.set(key, p.digest).await;
                    return Ok((m.clone(), Outcome::Hit));
                }
                Ok(_) => {} // changed, or no digest header: fetch it
                Err(UpstreamError::NotFound) => {
                    self.tags.remove(key).await;
                    return Err(UpstreamError::NotFound);
                }
                Err(e) => return Ok((self.stale(key, &e, m.clone()), Outcome::Hit)),
            }
        }
        match ups.get_manifest(&key.repo, &key.tag, None).await {
            Ok(fm) => {
                let d = fm.digest;
                let m = self.keep(fm).await;
                self.tags.set(key, d).await;
                Ok((m, Outcome::Miss))
            }
            Err(UpstreamError::NotFound) => {
                if prior.is_some() {
                    self.tags.remove(key).await;
                }
                Err(UpstreamError::NotFound)
            }
            Err(e) => match prior_m {
                Some(m) => Ok((self.stale(key, &e, m), Outcome::Hit)),
                None => Err(e),
            },
        }
    }

    fn stale(&self, key: &TagKey, e: &UpstreamError, m: Arc<Manifest>) -> Arc<Manifest> {
        self.metrics.stale_served.inc();
        tracing::warn!(tag = %key, error = %e, "every upstream failed; serving the last known digest");
        m
    }

    /// A manifest from memory or disk, re-verified when read from disk (a
    /// stored manifest that fails is dropped, and fetched again).
    async fn local(&self, d: &Digest) -> Option<Arc<Manifest>> {
        if let Some(m) = self.mem.get(d) {
            self.store.mark_used(Kind::Manifest, d);
            return Some(m);
        }
        let store = self.store.clone();
        let d = *d;
        let read = tokio::task::spawn_blocking(move || store.read_manifest(&d))
            .await
            .ok()?;
        match read {
            Ok(Some((media_type, bytes))) => {
                if Digest::of(&bytes) != d {
                    tracing::warn!(digest = %d, "stored manifest failed verification; dropping it");
                    self.metrics.integrity_failures.inc();
                    self.drop_stored(d).await;
                    return None;
                }
                let m = Arc::new(Manifest {
                    digest: d,
                    media_type,
                    bytes,
                    from_peer: false,
                });
                self.mem.insert(d, m.clone());
                Some(m)
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(digest = %d, error = %e, "cannot read stored manifest; dropping it");
                self.drop_stored(d).await;
                None
            }
        }
    }

    async fn drop_stored(&self, d: Digest) {
        let store = self.store.clone();
        let _ = tokio::task::spawn_blocking(move || store.remove(Kind::Manifest, &d)).await;
    }

    /// Keeps a verified manifest in memory and on disk.
    async fn keep(&self, fm: FetchedManifest) -> Arc<Manifest> {
        let m = Arc::new(Manifest {
            digest: fm.digest,
            media_type: fm.media_type,
            bytes: fm.bytes,
            from_peer: fm.from_peer,
        });
        self.mem.insert(m.digest, m.clone());
        let store = self.store.clone();
        let m2 = m.clone();
        let res = tokio::task::spawn_blocking(move || {
            store.put_manifest(&m2.digest, &m2.media_type, &m2.bytes)
        })
        .await;
        if let Ok(Err(e)) = res {
            tracing::warn!(digest = %m.digest, error = %e, "manifest served but not cached");
        }
        m
    }
}
