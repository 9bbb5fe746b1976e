//! The upstreams of each registry: an ordered list that every request walks
//! until one answers. The walk's outcome ([`UpstreamError`]) tells "unknown
//! everywhere" from "nobody could answer"; one upstream's failure
//! ([`AttemptError`]) only moves the walk on. In a cluster, the peers that
//! outrank this node for a key go first ([`Upstreams::behind_peers`]): a
//! peer is just one more upstream, except that only the registry's own
//! upstreams give the walk its verdict.
//!
//! - `client`: one upstream (HTTP client, proxy, CA, timeouts) and its requests;
//! - `token`, `auth`: credentials, Bearer tokens, `WWW-Authenticate`;
//! - `guard`: the addresses tender may be sent to (redirects, realms, DNS);
//! - `health`: the circuit breaker, 429 back-off and recent latencies;
//! - `walk`, `hedge`: the walk in order, hedged when an upstream is slow;
//! - `body`: reading and positioning response bodies;
//! - `ratelimit`: the pull quota upstreams state in their headers.

pub mod auth;
mod body;
pub mod client;
pub mod guard;
pub mod health;
mod hedge;
pub mod ratelimit;
mod token;
mod walk;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, CONTENT_TYPE, RANGE};
use reqwest::Method;

pub use body::error_chain;
pub use client::{Role, UpstreamClient};

use crate::config::{self, Config};
use crate::metrics::Metrics;
use crate::oci::{media, Digest};

/// The outcome of a walk in which no upstream succeeded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    #[error("not found on any upstream")]
    NotFound,
    #[error("denied by every upstream: {0}")]
    Denied(String),
    #[error("no upstream could answer: {0}")]
    Unavailable(String),
    #[error("upstream content failed verification: {0}")]
    Integrity(String),
    /// An upstream could not be set up from its config (proxy, CA file, credentials).
    #[error("upstream {upstream}: {why}")]
    Setup { upstream: String, why: String },
}

impl UpstreamError {
    /// What a client is told: the verdict without the walk's details (which
    /// name upstreams and may quote redirect targets; they go to the log).
    pub fn client_message(&self) -> &'static str {
        match self {
            UpstreamError::NotFound => "not found on any upstream",
            UpstreamError::Denied(_) => "denied by every upstream",
            UpstreamError::Unavailable(_) => "no upstream could answer",
            UpstreamError::Integrity(_) => "upstream content failed verification",
            UpstreamError::Setup { .. } => "an upstream is misconfigured",
        }
    }
}

/// One upstream's failure. Every kind moves the walk to the next upstream.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AttemptError {
    #[error("HTTP {status}")]
    Status {
        status: u16,
        retry_after: Option<Duration>,
    },
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    #[error("transport: {0}")]
    Transport(String),
    #[error("auth: {0}")]
    Auth(String),
    #[error("body larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("invalid response: {0}")]
    Invalid(String),
}

impl AttemptError {
    fn is_not_found(&self) -> bool {
        matches!(self, AttemptError::Status { status: 404, .. })
    }

    fn is_denied(&self) -> bool {
        matches!(
            self,
            AttemptError::Status {
                status: 401 | 403,
                ..
            } | AttemptError::Auth(_)
        )
    }
}

/// A manifest as an upstream served it, verified against its digest.
pub struct FetchedManifest {
    pub bytes: Bytes,
    pub media_type: String,
    pub digest: Digest,
    /// A peer served it.
    pub from_peer: bool,
}

/// A blob body from one upstream, positioned so that its next byte is the
/// one the caller asked for.
pub struct BlobResponse {
    pub upstream: Arc<UpstreamClient>,
    /// The upstream's place in the list (a resume starts after it).
    pub index: usize,
    pub resp: reqwest::Response,
    /// Bytes to discard first: the upstream ignored `Range` and sent from 0.
    pub skip: u64,
    /// The whole blob's size, when the upstream said.
    pub total: Option<u64>,
}

/// The upstreams of one registry, in the order they are tried.
pub struct Upstreams {
    pub host: String,
    /// Check a client's credentials upstream before serving it (AlwaysVerify).
    pub verify_client_credentials: bool,
    clients: Vec<Arc<UpstreamClient>>,
    /// How many of `clients`, at the front, are peers.
    peers: usize,
    /// The registry's hedge budget (shared by its routes through peers).
    hedges: Arc<hedge::Budget>,
    metrics: Arc<Metrics>,
}

impl Upstreams {
    pub fn new(
        reg: &config::Registry,
        config: &Config,
        metrics: &Arc<Metrics>,
    ) -> Result<Upstreams, UpstreamError> {
        let clients = reg
            .upstreams
            .iter()
            .map(|u| {
                UpstreamClient::new(
                    &reg.host,
                    u,
                    config.timeouts,
                    config.breaker,
                    metrics.clone(),
                )
                .map(Arc::new)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Upstreams {
            host: reg.host.clone(),
            verify_client_credentials: reg.verify_client_credentials,
            clients,
            peers: 0,
            hedges: Arc::default(),
            metrics: metrics.clone(),
        })
    }

    /// These upstreams with `peers` (clients of this registry on other
    /// nodes, in the order to ask them) in front.
    pub fn behind_peers(&self, peers: Vec<Arc<UpstreamClient>>) -> Upstreams {
        let n = peers.len();
        let mut clients = peers;
        clients.extend(self.clients[self.peers..].iter().cloned());
        Upstreams {
            host: self.host.clone(),
            verify_client_credentials: self.verify_client_credentials,
            clients,
            peers: n,
            hedges: self.hedges.clone(),
            metrics: self.metrics.clone(),
        }
    }

    /// Whether peers are asked before the registry's own upstreams.
    pub fn is_peered(&self) -> bool {
        self.peers > 0
    }

    /// How long a blob body from `up` (at `index`) may make no progress
    /// before it is resumed elsewhere: `progress_timeout` while another of
    /// the registry's own upstreams is usable, else `stall_timeout` (there
    /// is nowhere better to go). A peer keeps its own, longer, stall
    /// timeout: it may be waiting on its own upstream.
    pub fn progress_window(&self, up: &UpstreamClient, index: usize) -> Duration {
        let elsewhere = self
            .clients
            .iter()
            .enumerate()
            .any(|(i, c)| i != index && c.role == Role::Upstream && c.health.looks_usable());
        if up.role == Role::Upstream && elsewhere {
            up.timeouts.progress.min(up.timeouts.stall)
        } else {
            up.timeouts.stall
        }
    }

    /// The URLs of the peers asked first.
    pub fn peer_urls(&self) -> Vec<String> {
        self.clients[..self.peers]
            .iter()
            .map(|c| c.url.clone())
            .collect()
    }

    pub fn len(&self) -> usize {
        self.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    pub fn clients(&self) -> &[Arc<UpstreamClient>] {
        &self.clients
    }

    /// GET a blob from the first upstream that has it, from byte `offset` on.
    /// The walk starts at upstream `first` and wraps around, so a resume can
    /// prefer the next upstream and still fall back to the earlier ones.
    pub async fn get_blob(
        &self,
        repo: &str,
        digest: &Digest,
        offset: u64,
        first: usize,
    ) -> Result<BlobResponse, UpstreamError> {
        let suffix = &format!("blobs/{digest}");
        self.walk(first, |index, up| async move {
            let mut headers = HeaderMap::new();
            if offset > 0 {
                if let Ok(v) = HeaderValue::from_str(&format!("bytes={offset}-")) {
                    headers.insert(RANGE, v);
                }
            }
            let resp = up.send(Method::GET, repo, suffix, headers).await?;
            let (skip, total) = body::position_blob(&resp, offset)?;
            Ok(BlobResponse {
                upstream: up,
                index,
                resp,
                skip,
                total,
            })
        })
        .await
    }

    /// HEAD a blob: its size, without downloading it.
    pub async fn head_blob(
        &self,
        repo: &str,
        digest: &Digest,
    ) -> Result<Option<u64>, UpstreamError> {
        let suffix = &format!("blobs/{digest}");
        self.walk(0, |_, up| async move {
            let r = up
                .send(Method::HEAD, repo, suffix, HeaderMap::new())
                .await?;
            // Not `content_length()`: for HEAD that is the empty body's length.
            Ok(header_u64(r.headers(), "content-length"))
        })
        .await
    }

    /// GET a manifest by tag or digest, verified: by digest it must hash to
    /// that digest; by tag it must hash to the upstream's
    /// `Docker-Content-Digest` when one is given.
    pub async fn get_manifest(
        &self,
        repo: &str,
        reference: &str,
        expect: Option<&Digest>,
    ) -> Result<FetchedManifest, UpstreamError> {
        let suffix = &format!("manifests/{reference}");
        self.walk(0, |_, up| async move {
            let mut headers = HeaderMap::new();
            headers.insert(ACCEPT, HeaderValue::from_static(media::ACCEPT_ALL));
            let resp = up.send(Method::GET, repo, suffix, headers).await?;
            let content_type = resp
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.split(';').next().unwrap_or("").trim().to_string());
            let claimed = header_digest(resp.headers());
            let bytes =
                body::read_limited(resp, media::MAX_MANIFEST_SIZE, up.timeouts.stall).await?;
            up.bytes_counter().inc_by(bytes.len() as u64);
            let actual = Digest::of(&bytes);
            if let Some(expected) = expect.copied().or(claimed) {
                if expected != actual {
                    return Err(AttemptError::DigestMismatch { expected, actual });
                }
            }
            let media_type = media::manifest_media_type(content_type.as_deref(), &bytes)
                .map_err(|e| AttemptError::Invalid(format!("manifest is not JSON: {e}")))?;
            Ok(FetchedManifest {
                bytes,
                media_type,
                digest: actual,
                from_peer: up.role != Role::Upstream,
            })
        })
        .await
    }

    /// HEAD a manifest: the digest the reference points at now, if the
    /// upstream says.
    pub async fn head_manifest(
        &self,
        repo: &str,
        reference: &str,
    ) -> Result<Option<Digest>, UpstreamError> {
        let suffix = &format!("manifests/{reference}");
        self.walk(0, |_, up| async move {
            let mut headers = HeaderMap::new();
            headers.insert(ACCEPT, HeaderValue::from_static(media::ACCEPT_ALL));
            let r = up.send(Method::HEAD, repo, suffix, headers).await?;
            Ok(header_digest(r.headers()))
        })
        .await
    }

    /// GET `tags/list` (with the client's `n`/`last`), returning the JSON
    /// body with `name` rewritten to the client's repository name.
    pub async fn tags_list(&self, repo: &str, query: &str) -> Result<Bytes, UpstreamError> {
        let suffix = &if query.is_empty() {
            "tags/list".to_string()
        } else {
            format!("tags/list?{query}")
        };
        self.walk(0, |_, up| async move {
            let resp = up.send(Method::GET, repo, suffix, HeaderMap::new()).await?;
            let body = body::read_limited(resp, 16 << 20, up.timeouts.stall).await?;
            let mut v: serde_json::Value = serde_json::from_slice(&body)
                .map_err(|e| AttemptError::Invalid(format!("tags/list is not JSON: {e}")))?;
            if let Some(obj) = v.as_object_mut() {
                obj.insert("name".into(), serde_json::Value::String(repo.to_string()));
            }
            serde_json::to_vec(&v)
                .map(Bytes::from)
                .map_err(|e| AttemptError::Invalid(e.to_string()))
        })
        .await
    }

    /// Whether a client may read `suffix` (`manifests/<ref>`, `blobs/<digest>`
    /// or `tags/list`) in `repo`, with its credentials (`None`: anonymously).
    /// Only upstreams that take client credentials are asked (by default the
    /// registry's origin, which issued them: a Harbor in front never sees a
    /// Docker Hub password). Allowed once one says yes; `Denied` when every
    /// one that answered refused.
    pub async fn verify_client_access(
        &self,
        repo: &str,
        suffix: &str,
        client_auth: Option<&HeaderValue>,
    ) -> Result<(), UpstreamError> {
        let mut walk = walk::Walk::default();
        for up in self
            .clients
            .iter()
            .filter(|u| u.forwards_client_credentials)
        {
            if !up.health.allow() {
                walk.skip(up);
                continue;
            }
            match up.check_client_access(repo, suffix, client_auth).await {
                Ok(()) => return Ok(()),
                Err(e) => walk.record(up, &e),
            }
        }
        Err(walk.finish())
    }
}

fn header_u64(h: &HeaderMap, name: &str) -> Option<u64> {
    h.get(name)?.to_str().ok()?.parse().ok()
}

fn header_digest(h: &HeaderMap) -> Option<Digest> {
    h.get("docker-content-digest")?.to_str().ok()?.parse().ok()
}

/// The configured registries by host (closed world: `ns` selects one of
/// these and nothing else), and the one serving requests without `ns`.
pub struct Registries {
    by_host: HashMap<String, Arc<Upstreams>>,
    default: Option<Arc<Upstreams>>,
}

impl Registries {
    pub fn new(config: &Config, metrics: &Arc<Metrics>) -> Result<Registries, UpstreamError> {
        let mut by_host = HashMap::new();
        let mut default = None;
        for r in &config.registries {
            let ups = Arc::new(Upstreams::new(r, config, metrics)?);
            if r.default {
                default = Some(ups.clone());
            }
            by_host.insert(r.host.clone(), ups);
        }
        Ok(Registries { by_host, default })
    }

    /// The registry for `host` (already lowercased).
    pub fn get(&self, host: &str) -> Option<Arc<Upstreams>> {
        self.by_host.get(host).cloned()
    }

    pub fn default_registry(&self) -> Option<Arc<Upstreams>> {
        self.default.clone()
    }

    pub fn all(&self) -> impl Iterator<Item = &Arc<Upstreams>> {
        self.by_host.values()
    }
}
