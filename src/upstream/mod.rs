//! The ordered list of upstreams behind one registry: each request walks it
//! in order until one answers, and the outcome of the walk decides what the
//! client is told.

pub mod auth;
pub mod client;
pub mod health;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, CONTENT_RANGE, CONTENT_TYPE, RANGE};
use reqwest::Method;

pub use client::UpstreamClient;

use crate::config::{self, Timeouts};
use crate::digest::Digest;
use crate::metrics::Metrics;

/// Manifests larger than this are refused (as distribution and containerd do).
pub const MAX_MANIFEST_SIZE: usize = 4 << 20;

pub const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// What tender asks upstreams for, whatever the client accepts: the cached
/// tag must be the tag's real target, and each client is then answered
/// according to its own `Accept`.
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

/// One upstream's failure. Every kind falls through to the next upstream;
/// the walk's summary keeps 404s apart so "unknown everywhere" can be told
/// from "nobody could answer".
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
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

impl UpstreamError {
    fn is_not_found(&self) -> bool {
        matches!(self, UpstreamError::Status { status: 404, .. })
    }
    fn is_denied(&self) -> bool {
        matches!(
            self,
            UpstreamError::Status {
                status: 401 | 403,
                ..
            } | UpstreamError::Auth(_)
        )
    }
}

/// The outcome of a walk in which no upstream succeeded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("not found on any upstream")]
    NotFound,
    #[error("denied by every upstream: {0}")]
    Denied(String),
    #[error("no upstream could answer: {0}")]
    Unavailable(String),
    #[error("upstream content failed verification: {0}")]
    Integrity(String),
}

#[derive(Default)]
struct Walk {
    not_found: usize,
    denied: usize,
    integrity: usize,
    tried: usize,
    failures: Vec<String>,
}

impl Walk {
    fn record(&mut self, up: &UpstreamClient, e: &UpstreamError) {
        self.tried += 1;
        if e.is_not_found() {
            self.not_found += 1;
        } else if e.is_denied() {
            self.denied += 1;
        } else if matches!(e, UpstreamError::DigestMismatch { .. }) {
            self.integrity += 1;
        }
        // A 404 is an ordinary answer; anything else is worth an operator's eye.
        if e.is_not_found() {
            tracing::debug!(registry = %up.registry, upstream = %up.url, error = %e, "upstream does not have it");
        } else {
            tracing::info!(registry = %up.registry, upstream = %up.url, error = %e, "upstream failed; trying the next");
        }
        self.failures.push(format!("{}: {e}", up.url));
    }

    /// An upstream skipped because its breaker is open or it asked us to back off.
    fn skip(&mut self, up: &UpstreamClient) {
        self.tried += 1;
        self.failures.push(format!(
            "{}: skipped (circuit open or rate-limited)",
            up.url
        ));
    }

    fn finish(self) -> FetchError {
        let summary = self.failures.join("; ");
        if self.tried == 0 {
            FetchError::Unavailable("no upstream configured".into())
        } else if self.not_found == self.tried {
            FetchError::NotFound
        } else if self.denied == self.tried {
            FetchError::Denied(summary)
        } else if self.integrity > 0 && self.integrity + self.not_found == self.tried {
            FetchError::Integrity(summary)
        } else {
            FetchError::Unavailable(summary)
        }
    }
}

pub struct FetchedManifest {
    pub bytes: Bytes,
    pub media_type: String,
    pub digest: Digest,
}

pub struct ManifestHead {
    pub digest: Option<Digest>,
}

/// A blob body from one upstream, positioned so that its next byte is the
/// one the caller asked for.
pub struct BlobResponse {
    pub upstream: Arc<UpstreamClient>,
    pub index: usize,
    pub resp: reqwest::Response,
    /// Bytes to discard first: the upstream ignored `Range` and sent from 0.
    pub skip: u64,
    /// The whole blob's size, when the upstream said.
    pub total: Option<u64>,
}

pub struct Upstreams {
    pub host: String,
    clients: Vec<Arc<UpstreamClient>>,
}

impl Upstreams {
    pub fn new(
        reg: &config::Registry,
        timeouts: Timeouts,
        breaker: health::BreakerPolicy,
        metrics: &Arc<Metrics>,
    ) -> Result<Upstreams, String> {
        let clients = reg
            .upstreams
            .iter()
            .map(|u| {
                UpstreamClient::new(&reg.host, u, timeouts, breaker, metrics.clone()).map(Arc::new)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Upstreams {
            host: reg.host.clone(),
            clients,
        })
    }

    pub fn len(&self) -> usize {
        self.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
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
    ) -> Result<BlobResponse, FetchError> {
        let mut walk = Walk::default();
        let suffix = format!("blobs/{digest}");
        let n = self.clients.len();
        for (index, up) in self
            .clients
            .iter()
            .enumerate()
            .cycle()
            .skip(first % n.max(1))
            .take(n)
        {
            if !up.health.allow() {
                walk.skip(up);
                continue;
            }
            let mut headers = HeaderMap::new();
            if offset > 0 {
                if let Ok(v) = HeaderValue::from_str(&format!("bytes={offset}-")) {
                    headers.insert(RANGE, v);
                }
            }
            let resp = match up.send(Method::GET, repo, &suffix, headers).await {
                Ok(r) => r,
                Err(e) => {
                    walk.record(up, &e);
                    continue;
                }
            };
            match position_blob(resp, offset) {
                Ok((resp, skip, total)) => {
                    return Ok(BlobResponse {
                        upstream: up.clone(),
                        index,
                        resp,
                        skip,
                        total,
                    })
                }
                Err(e) => walk.record(up, &e),
            }
        }
        Err(walk.finish())
    }

    /// Tries `op` on each upstream in order, skipping those whose breaker
    /// is open or that asked us to back off, until one succeeds; otherwise
    /// the walk's verdict (unknown everywhere, denied, or unavailable).
    async fn first_ok<T, F, Fut>(&self, mut op: F) -> Result<T, FetchError>
    where
        F: FnMut(Arc<UpstreamClient>) -> Fut,
        Fut: std::future::Future<Output = Result<T, UpstreamError>>,
    {
        let mut walk = Walk::default();
        for up in &self.clients {
            if !up.health.allow() {
                walk.skip(up);
                continue;
            }
            match op(up.clone()).await {
                Ok(v) => return Ok(v),
                Err(e) => walk.record(up, &e),
            }
        }
        Err(walk.finish())
    }

    /// Whether a client's credentials may read `suffix` (`manifests/<ref>` or
    /// `blobs/<digest>`) in `repo`: allowed once any upstream says yes;
    /// `Denied` when every upstream that answered refused them.
    pub async fn verify_client_access(
        &self,
        repo: &str,
        suffix: &str,
        client_auth: &HeaderValue,
    ) -> Result<(), FetchError> {
        self.first_ok(|up| async move { up.check_client_access(repo, suffix, client_auth).await })
            .await
    }

    /// HEAD a blob: its size, without downloading it.
    pub async fn head_blob(&self, repo: &str, digest: &Digest) -> Result<Option<u64>, FetchError> {
        let suffix = &format!("blobs/{digest}");
        self.first_ok(|up| async move {
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
    ) -> Result<FetchedManifest, FetchError> {
        let suffix = &format!("manifests/{reference}");
        self.first_ok(|up| async move {
            let mut headers = HeaderMap::new();
            headers.insert(ACCEPT, HeaderValue::from_static(MANIFEST_ACCEPT));
            let resp = up.send(Method::GET, repo, suffix, headers).await?;
            let content_type = resp
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.split(';').next().unwrap_or("").trim().to_string());
            let claimed = resp
                .headers()
                .get("docker-content-digest")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<Digest>().ok());
            let bytes = client::read_limited(resp, MAX_MANIFEST_SIZE, up.timeouts.stall).await?;
            let actual = Digest::of(&bytes);
            if let Some(expected) = expect.copied().or(claimed) {
                if expected != actual {
                    return Err(UpstreamError::DigestMismatch { expected, actual });
                }
            }
            let media_type = manifest_media_type(content_type.as_deref(), &bytes)?;
            Ok(FetchedManifest {
                bytes,
                media_type,
                digest: actual,
            })
        })
        .await
    }

    /// HEAD a manifest: the digest the reference points at now.
    pub async fn head_manifest(
        &self,
        repo: &str,
        reference: &str,
    ) -> Result<ManifestHead, FetchError> {
        let suffix = &format!("manifests/{reference}");
        self.first_ok(|up| async move {
            let mut headers = HeaderMap::new();
            headers.insert(ACCEPT, HeaderValue::from_static(MANIFEST_ACCEPT));
            let r = up.send(Method::HEAD, repo, suffix, headers).await?;
            let digest = r
                .headers()
                .get("docker-content-digest")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok());
            Ok(ManifestHead { digest })
        })
        .await
    }

    /// GET `tags/list` (with the client's `n`/`last`), returning the JSON
    /// body with `name` rewritten to the client's repository name.
    pub async fn tags_list(&self, repo: &str, query: &str) -> Result<Bytes, FetchError> {
        let suffix = &if query.is_empty() {
            "tags/list".to_string()
        } else {
            format!("tags/list?{query}")
        };
        self.first_ok(|up| async move {
            let resp = up.send(Method::GET, repo, suffix, HeaderMap::new()).await?;
            let body = client::read_limited(resp, 16 << 20, up.timeouts.stall).await?;
            let mut v: serde_json::Value = serde_json::from_slice(&body)
                .map_err(|e| UpstreamError::Invalid(format!("tags/list is not JSON: {e}")))?;
            if let Some(obj) = v.as_object_mut() {
                obj.insert("name".into(), serde_json::Value::String(repo.to_string()));
            }
            serde_json::to_vec(&v)
                .map(Bytes::from)
                .map_err(|e| UpstreamError::Invalid(e.to_string()))
        })
        .await
    }
}

/// Checks a blob response against the requested offset and works out how
/// many leading bytes to drop and the blob's total size.
fn position_blob(
    resp: reqwest::Response,
    offset: u64,
) -> Result<(reqwest::Response, u64, Option<u64>), UpstreamError> {
    let len = resp.content_length();
    match resp.status().as_u16() {
        200 => Ok((resp, offset, len)),
        206 => {
            let cr = resp
                .headers()
                .get(CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| UpstreamError::Invalid("206 without Content-Range".into()))?;
            let (start, total) = parse_content_range(cr)
                .ok_or_else(|| UpstreamError::Invalid(format!("bad Content-Range {cr:?}")))?;
            if start != offset {
                return Err(UpstreamError::Invalid(format!(
                    "asked for bytes from {offset}, got Content-Range {cr:?}"
                )));
            }
            Ok((resp, 0, total))
        }
        s => Err(UpstreamError::Invalid(format!(
            "unexpected status {s} for a blob"
        ))),
    }
}

/// `bytes a-b/total` → (a, total); total is `None` for `*`.
fn parse_content_range(v: &str) -> Option<(u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (a, _b) = range.split_once('-')?;
    let total = if total == "*" {
        None
    } else {
        Some(total.parse().ok()?)
    };
    Some((a.parse().ok()?, total))
}

fn header_u64(h: &HeaderMap, name: &str) -> Option<u64> {
    h.get(name)?.to_str().ok()?.parse().ok()
}

/// The manifest's media type: the upstream's Content-Type when it names a
/// manifest type, else the document's own `mediaType`, else its shape.
fn manifest_media_type(content_type: Option<&str>, bytes: &[u8]) -> Result<String, UpstreamError> {
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
    }
    let probe: Probe = serde_json::from_slice(bytes)
        .map_err(|e| UpstreamError::Invalid(format!("manifest is not JSON: {e}")))?;
    if let Some(ct) = content_type {
        if ct.starts_with("application/vnd.") {
            return Ok(ct.to_string());
        }
    }
    if let Some(mt) = probe.media_type.filter(|m| !m.is_empty()) {
        return Ok(mt);
    }
    Ok(if probe.manifests.is_some() {
        MEDIA_OCI_INDEX
    } else {
        MEDIA_OCI_MANIFEST
    }
    .to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range() {
        assert_eq!(
            parse_content_range("bytes 10-99/100"),
            Some((10, Some(100)))
        );
        assert_eq!(parse_content_range("bytes 0-9/*"), Some((0, None)));
        assert_eq!(parse_content_range("items 0-9/10"), None);
    }

    #[test]
    fn media_type_detection() {
        let idx = br#"{"schemaVersion":2,"manifests":[]}"#;
        assert_eq!(manifest_media_type(None, idx).unwrap(), MEDIA_OCI_INDEX);
        assert_eq!(
            manifest_media_type(Some("application/json"), idx).unwrap(),
            MEDIA_OCI_INDEX
        );
        let m = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json"}"#;
        assert_eq!(manifest_media_type(None, m).unwrap(), MEDIA_DOCKER_MANIFEST);
        assert_eq!(
            manifest_media_type(Some(MEDIA_OCI_MANIFEST), m).unwrap(),
            MEDIA_OCI_MANIFEST
        );
        assert!(manifest_media_type(None, b"not json").is_err());
    }
}
