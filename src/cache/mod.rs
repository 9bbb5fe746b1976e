//! The cache: the one type the HTTP layer calls, owning every cache policy.
//!
//! A request's path through it reads top-down:
//! [`Cache::registry`] picks the registry by `ns` (closed world) →
//! [`access`] checks a client's credentials where the registry asks for it →
//! the store is looked up (`blob`, `manifests`; manifests read from disk are
//! re-verified) → on a miss the request joins or starts the single in-flight
//! fetch for its key ([`inflight`]) → which walks the registry's upstreams
//! (`crate::upstream`) → and commits verified bytes to the store
//! (`crate::store`). In a cluster, a miss from one of this node's clients
//! walks the peers that own its key first ([`Via`], `crate::cluster`); a
//! request from a peer is answered as owner. Tags are trusted for
//! `tag_ttl`, then revalidated with a HEAD; when every upstream fails the
//! last known digest is served. A blob the disk cannot take is streamed
//! through.
//!
//! Every piece of state here is bounded: memory caches by entries or bytes
//! (moka), in-flight maps by the work under way, and everything on disk by
//! `cache_max_size`.

pub mod access;
pub mod blob;
pub mod inflight;
pub mod manifests;
pub mod pins;
pub mod tags;

use std::sync::{Arc, RwLock};

use bytes::Bytes;
use hyper::header::HeaderValue;

use crate::cluster::{Cluster, ClusterError};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::oci::{Digest, Reference};
use crate::store::{Store, StoreError};
use crate::upstream::{Registries, UpstreamError, Upstreams};
use access::Access;
use blob::Blobs;
pub use blob::{Blob, BodyStream};
use inflight::Interrupted;
pub use manifests::Manifest;
use manifests::Manifests;
use pins::{PinnedReport, Pins};

/// How a request was answered, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// From the cache.
    Hit,
    /// This request fetched it.
    Miss,
    /// It joined another request's fetch.
    Coalesced,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Miss => "miss",
            Outcome::Coalesced => "coalesced",
        }
    }

    /// `Coalesced` for a request that followed another's work, else `own`.
    fn of(followed: bool, own: Outcome) -> Outcome {
        if followed {
            Outcome::Coalesced
        } else {
            own
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("registry {0:?} is not served by this mirror")]
    UnknownNamespace(String),
    #[error("no ns given and no default registry is configured")]
    NoDefaultRegistry,
    #[error("blob unknown")]
    BlobUnknown,
    #[error("manifest unknown")]
    ManifestUnknown,
    /// The registry does not confirm that this client may read it
    /// (`verify_client_credentials`): it must authenticate.
    #[error("authentication required: the registry does not confirm that these credentials (or an anonymous client) may read this")]
    Unauthorized,
    #[error("{0}")]
    Upstream(UpstreamError),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Cluster(#[from] ClusterError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl CacheError {
    /// A walk's failure for a blob: not found anywhere is `BlobUnknown`.
    fn blob(e: UpstreamError) -> CacheError {
        match e {
            UpstreamError::NotFound => CacheError::BlobUnknown,
            e => CacheError::Upstream(e),
        }
    }

    fn manifest(e: UpstreamError) -> CacheError {
        match e {
            UpstreamError::NotFound => CacheError::ManifestUnknown,
            e => CacheError::Upstream(e),
        }
    }
}

/// In-flight work whose leader vanished fails like an upstream nobody could reach.
impl From<Interrupted> for UpstreamError {
    fn from(i: Interrupted) -> UpstreamError {
        UpstreamError::Unavailable(i.to_string())
    }
}

/// Who asks.
#[derive(Debug, Clone, Copy)]
pub enum Caller<'a> {
    /// One of this node's clients, with its `Authorization` (checked
    /// upstream where the registry asks for it). Misses go through the
    /// cluster.
    Client(Option<&'a HeaderValue>),
    /// Another node, on the peer listener (admitted by the cluster token,
    /// which vouches that it checked its own client), naming itself if it
    /// did. Answered as owner: from the cache or this node's own upstreams,
    /// never another peer.
    Peer { from: Option<&'a str> },
}

/// Where a miss is fetched from: through the cluster (the peers that own
/// its key first), or only from the registry's own upstreams; and, for a
/// peer's request, which node asked.
#[derive(Clone, Copy)]
pub struct Via<'a> {
    cluster: Option<&'a Cluster>,
    requester: Option<&'a str>,
}

impl Via<'_> {
    /// The upstreams a miss for `key` walks.
    pub fn upstreams(self, ups: &Arc<Upstreams>, key: &[u8]) -> Arc<Upstreams> {
        match self.cluster {
            Some(cluster) => cluster.route(ups, key),
            None => ups.clone(),
        }
    }

    /// Whether work that asks `peers` may answer this request: not if the
    /// peer that asked is among them (it would wait on itself).
    pub fn may_wait_on(self, peers: &[String]) -> bool {
        self.requester.is_none_or(|r| !peers.iter().any(|p| p == r))
    }
}

/// A manifest answer: the manifest and how it was found.
pub struct ManifestAnswer {
    pub manifest: Arc<Manifest>,
    pub outcome: Outcome,
}

pub struct Cache {
    /// The config the cache started with (reload changes only registries
    /// and the `[prefetch]` section, held by `pins`).
    config: Config,
    /// Swapped whole on reload (SIGHUP); requests in flight keep the
    /// registries they started with.
    registries: RwLock<Arc<Registries>>,
    store: Arc<Store>,
    blobs: Blobs,
    manifests: Arc<Manifests>,
    access: Access,
    cluster: Option<Arc<Cluster>>,
    pins: Pins,
}

impl Cache {
    /// Opens the store under `config.cache_dir` (its index is rebuilt later,
    /// see [`Store::rebuild_index`]) and sets up every registry's upstreams.
    pub fn open(config: Config, metrics: Arc<Metrics>) -> Result<Cache, CacheError> {
        let store = Store::open(&config.cache_dir, config.cache_max_size, metrics.clone())
            .map_err(|e| {
                CacheError::Internal(format!("cache_dir {}: {e}", config.cache_dir.display()))
            })?
            .with_min_free(config.min_free_space);
        let store = Arc::new(store);
        let registries = Registries::new(&config, &metrics).map_err(CacheError::Upstream)?;
        let cluster = match &config.cluster {
            Some(c) => Some(Arc::new(Cluster::new(c, config.timeouts, metrics.clone())?)),
            None => None,
        };
        Ok(Cache {
            cluster,
            pins: Pins::new(
                store.clone(),
                config.prefetch.clone(),
                metrics.pinned_images.clone(),
            ),
            registries: RwLock::new(Arc::new(registries)),
            blobs: Blobs::new(store.clone(), metrics.clone()),
            manifests: Arc::new(Manifests::new(store.clone(), config.tag_ttl, metrics)),
            access: Access::new(config.tag_ttl),
            store,
            config,
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn manifests(&self) -> &Manifests {
        &self.manifests
    }

    /// Pinned images and the `[prefetch]` section in force.
    pub fn pins(&self) -> &Pins {
        &self.pins
    }

    /// Pins `image` from what is on disk (see [`pins`]); whether it is
    /// complete there.
    pub async fn pin_image(&self, image: &crate::oci::ImageRef) -> Result<bool, CacheError> {
        Ok(self.pins.pin(self.manifests.tags(), image).await?)
    }

    /// Every configured pinned image and whether it is complete on disk.
    pub async fn pinned_report(&self) -> PinnedReport {
        self.pins.report(self.manifests.tags()).await
    }

    /// The cluster tier, if configured.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.as_ref()
    }

    fn via<'a>(&'a self, caller: Caller<'a>) -> Via<'a> {
        match caller {
            Caller::Client(_) => Via {
                cluster: self.cluster.as_deref(),
                requester: None,
            },
            Caller::Peer { from } => Via {
                cluster: None,
                requester: from,
            },
        }
    }

    /// Whether `caller` may read `suffix` in `repo` (see [`access`]).
    async fn check(
        &self,
        ups: &Arc<Upstreams>,
        repo: &str,
        suffix: &str,
        caller: Caller<'_>,
    ) -> Result<(), CacheError> {
        match caller {
            Caller::Client(credentials) => self.access.check(ups, repo, suffix, credentials).await,
            Caller::Peer { .. } => Ok(()),
        }
    }

    /// Replaces the registries and their upstreams with those of `config`
    /// (SIGHUP), and takes the new `[prefetch]` section (images removed from
    /// `pinned` go back to the LRU). Requests already under way finish with
    /// the old registries. Other settings need a restart; a change to them
    /// is reported and ignored.
    pub fn reload(&self, config: &Config, metrics: &Arc<Metrics>) -> Result<(), CacheError> {
        let registries = Registries::new(config, metrics).map_err(CacheError::Upstream)?;
        let old = &self.config;
        let mut ignored = Vec::new();
        if config.listen != old.listen || config.metrics_listen != old.metrics_listen {
            ignored.push("listen/metrics_listen");
        }
        if config.cache_dir != old.cache_dir || config.cache_max_size != old.cache_max_size {
            ignored.push("cache_dir/cache_max_size");
        }
        if config.tag_ttl != old.tag_ttl || config.min_free_space != old.min_free_space {
            ignored.push("tag_ttl/min_free_space");
        }
        if config.cluster.is_some() != old.cluster.is_some() {
            ignored.push("cluster");
        }
        if !ignored.is_empty() {
            tracing::warn!(settings = ?ignored, "these settings change only on restart");
        }
        *self.registries.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(registries);
        self.pins.reload(config.prefetch.clone());
        tracing::info!(
            registries = config.registries.len(),
            "registries and upstreams reloaded"
        );
        Ok(())
    }

    /// The registry a request is for: `ns` if given (closed world: only
    /// configured registries, no client-chosen dial targets), else the
    /// default registry.
    pub fn registry(&self, ns: Option<&str>) -> Result<Arc<Upstreams>, CacheError> {
        let registries = self
            .registries
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match ns {
            None => registries
                .default_registry()
                .ok_or(CacheError::NoDefaultRegistry),
            Some(ns) => {
                let ns = ns.to_ascii_lowercase();
                registries
                    .get(&ns)
                    .ok_or_else(|| CacheError::UnknownNamespace(ns.chars().take(255).collect()))
            }
        }
    }

    /// A manifest by tag or digest.
    pub async fn manifest(
        &self,
        ups: &Arc<Upstreams>,
        repo: &str,
        reference: &Reference,
        caller: Caller<'_>,
    ) -> Result<ManifestAnswer, CacheError> {
        let suffix = format!("manifests/{reference}");
        self.check(ups, repo, &suffix, caller).await?;
        let via = self.via(caller);
        let (manifest, outcome) = match reference {
            Reference::Digest(d) => self.manifests.by_digest(ups, repo, *d, via).await,
            Reference::Tag(t) => self.manifests.by_tag(ups, repo, t, via).await,
        }
        .map_err(CacheError::manifest)?;
        Ok(ManifestAnswer { manifest, outcome })
    }

    /// A blob for GET, ready to stream from any offset.
    pub async fn blob(
        &self,
        ups: &Arc<Upstreams>,
        repo: &str,
        digest: Digest,
        caller: Caller<'_>,
    ) -> Result<Blob, CacheError> {
        self.check(ups, repo, &format!("blobs/{digest}"), caller)
            .await?;
        self.blobs.get(ups, repo, digest, self.via(caller)).await
    }

    /// A blob's size for HEAD, without downloading an uncached blob.
    pub async fn blob_head(
        &self,
        ups: &Arc<Upstreams>,
        repo: &str,
        digest: Digest,
        caller: Caller<'_>,
    ) -> Result<(Option<u64>, Outcome), CacheError> {
        self.check(ups, repo, &format!("blobs/{digest}"), caller)
            .await?;
        self.blobs.head(ups, repo, digest, self.via(caller)).await
    }

    /// `tags/list`, passed through to the registry's own upstreams (tag
    /// lists are neither cached nor asked of peers).
    pub async fn tags_list(
        &self,
        ups: &Arc<Upstreams>,
        repo: &str,
        query: &str,
        caller: Caller<'_>,
    ) -> Result<Bytes, CacheError> {
        self.check(ups, repo, "tags/list", caller).await?;
        ups.tags_list(repo, query)
            .await
            .map_err(CacheError::Upstream)
    }

    /// Whether the store's index is built (before that, eviction cannot see
    /// the cold objects; lookups work all along).
    pub fn is_ready(&self) -> bool {
        self.store.is_indexed()
    }

    /// Blob fills under way (shutdown waits for them to commit).
    pub fn fills_in_flight(&self) -> usize {
        self.blobs.fills_in_flight()
    }
}
