//! Prefetch: warm the cache with images a node will need, by pulling them
//! through a running tender like a client would (so fetches are coalesced,
//! verified and cached as usual). From a multi-arch index only the node's
//! platform is fetched.

use std::time::Duration;

use crate::oci::{media, Digest, ImageRef};

#[derive(Debug, thiserror::Error)]
pub enum PrefetchError {
    #[error("{url}: {why}")]
    Request { url: String, why: String },
    #[error("{url}: HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url}: not JSON: {why}")]
    NotJson { url: String, why: String },
    #[error("{image}: no {os}/{arch} manifest in the index")]
    NoPlatform {
        image: String,
        os: String,
        arch: String,
    },
    #[error("{image}: manifest lists {digest:?}: {why}")]
    BadDigest {
        image: String,
        digest: String,
        why: String,
    },
    #[error("{url}: got {got} of {total} bytes")]
    Short { url: String, got: u64, total: u64 },
}

fn request_error(url: &str, e: reqwest::Error) -> PrefetchError {
    PrefetchError::Request {
        url: url.to_string(),
        why: crate::upstream::error_chain(&e.without_url()),
    }
}

/// Sends `req` (a GET of `url`); anything but 2xx is an error.
async fn get_ok(
    req: reqwest::RequestBuilder,
    url: &str,
) -> Result<reqwest::Response, PrefetchError> {
    let r = req.send().await.map_err(|e| request_error(url, e))?;
    if !r.status().is_success() {
        return Err(PrefetchError::Status {
            url: url.to_string(),
            status: r.status().as_u16(),
        });
    }
    Ok(r)
}

/// A client for a tender on this node (`base` is its URL). A loopback https
/// URL is tender's own listener, whose certificate is meant for the node's
/// other clients: it is not verified.
pub fn local_client(base: &str) -> reqwest::Result<reqwest::Client> {
    let loopback = ["https://127.0.0.1", "https://localhost", "https://[::1]"]
        .iter()
        .any(|p| base.starts_with(p));
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        .danger_accept_invalid_certs(loopback)
        .build()
}

pub use crate::oci::node_platform;

/// Progress reported while prefetching.
pub enum Event<'a> {
    Manifest {
        image: &'a ImageRef,
        digest: &'a str,
    },
    BlobProgress {
        index: usize,
        count: usize,
        digest: &'a str,
        done: u64,
        total: u64,
    },
    BlobDone {
        index: usize,
        count: usize,
        digest: &'a str,
        bytes: u64,
    },
}

/// Pulls `image` through the tender at `base` (e.g. `http://127.0.0.1:5050`):
/// the manifest (the node's platform from an index), the config and every
/// layer. Returns the bytes of blobs fetched.
pub async fn prefetch(
    client: &reqwest::Client,
    base: &str,
    image: &ImageRef,
    platform: (&str, &str),
    progress: &mut (dyn FnMut(Event<'_>) + Send),
) -> Result<u64, PrefetchError> {
    let base = base.trim_end_matches('/');
    let ns = &image.registry;
    let get_manifest = |reference: String| async move {
        let url = format!(
            "{base}/v2/{}/manifests/{reference}?ns={ns}",
            image.repository
        );
        let r = get_ok(client.get(&url).header("accept", media::ACCEPT_ALL), &url).await?;
        let digest = r
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = r.bytes().await.map_err(|e| request_error(&url, e))?;
        let v: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| PrefetchError::NotJson {
                url: url.clone(),
                why: e.to_string(),
            })?;
        Ok::<_, PrefetchError>((digest, v))
    };
    let (mut digest, mut manifest) = get_manifest(image.reference.clone()).await?;
    if let Some(list) = manifest.get("manifests").and_then(|m| m.as_array()) {
        let (os, arch) = platform;
        let pick = list
            .iter()
            .find(|m| m["platform"]["os"] == os && m["platform"]["architecture"] == arch)
            .and_then(|m| m["digest"].as_str())
            .ok_or_else(|| PrefetchError::NoPlatform {
                image: image.to_string(),
                os: os.to_string(),
                arch: arch.to_string(),
            })?
            .to_string();
        (digest, manifest) = get_manifest(pick).await?;
    }
    progress(Event::Manifest {
        image,
        digest: &digest,
    });
    let mut blobs: Vec<(String, u64)> = Vec::new();
    for d in std::iter::once(&manifest["config"])
        .chain(manifest["layers"].as_array().into_iter().flatten())
    {
        if let Some(dg) = d["digest"].as_str() {
            blobs.push((dg.to_string(), d["size"].as_u64().unwrap_or(0)));
        }
    }
    let count = blobs.len();
    let mut fetched = 0;
    for (index, (dg, size)) in blobs.iter().enumerate() {
        dg.parse::<Digest>().map_err(|e| PrefetchError::BadDigest {
            image: image.to_string(),
            digest: dg.clone(),
            why: e.to_string(),
        })?;
        let url = format!("{base}/v2/{}/blobs/{dg}?ns={ns}", image.repository);
        let mut r = get_ok(client.get(&url), &url).await?;
        let total = r.content_length().unwrap_or(*size);
        let mut done = 0u64;
        let mut last = std::time::Instant::now();
        while let Some(c) = r.chunk().await.map_err(|e| request_error(&url, e))? {
            done += c.len() as u64;
            if last.elapsed() > Duration::from_millis(200) {
                last = std::time::Instant::now();
                progress(Event::BlobProgress {
                    index,
                    count,
                    digest: dg,
                    done,
                    total,
                });
            }
        }
        if total > 0 && done != total {
            return Err(PrefetchError::Short {
                url,
                got: done,
                total,
            });
        }
        fetched += done;
        progress(Event::BlobDone {
            index,
            count,
            digest: dg,
            bytes: done,
        });
    }
    Ok(fetched)
}
