//! Prefetch: warm the cache with images a node will need, by pulling them
//! through a running tender like a client would (so fetches are coalesced,
//! verified and cached as usual). From a multi-arch index only the node's
//! platform is fetched.

use std::time::Duration;

use crate::api::path::{valid_repository, valid_tag};
use crate::config::valid_registry_host;
use crate::digest::Digest;

/// An image reference, normalised the way Docker and containerd do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    pub registry: String,
    pub repository: String,
    /// A tag or a digest.
    pub reference: String,
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sep = if self.reference.contains(':') {
            '@'
        } else {
            ':'
        };
        write!(
            f,
            "{}/{}{sep}{}",
            self.registry, self.repository, self.reference
        )
    }
}

/// Parses `alpine`, `alpine:3.19`, `org/app`, `quay.io/org/app:1`,
/// `ghcr.io/x/y@sha256:...`: the first component names a registry if it has
/// a `.` or `:` or is `localhost`; Docker Hub names get `library/`.
pub fn parse_ref(s: &str) -> Result<ImageRef, String> {
    let bad = |why: &str| format!("{s:?} is not an image reference: {why}");
    let (name, reference) = match s.split_once('@') {
        Some((n, d)) => {
            d.parse::<Digest>().map_err(|e| bad(&e.to_string()))?;
            (n, d.to_string())
        }
        None => {
            // A tag follows the last ':' after the last '/'.
            let slash = s.rfind('/').map_or(0, |i| i + 1);
            match s[slash..].rfind(':') {
                Some(i) => (&s[..slash + i], s[slash + i + 1..].to_string()),
                None => (s, "latest".to_string()),
            }
        }
    };
    let (registry, repo) = match name.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (first.to_string(), rest.to_string())
        }
        _ => ("docker.io".to_string(), name.to_string()),
    };
    let registry = match registry.as_str() {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".to_string(),
        _ => registry,
    };
    let repository = if registry == "docker.io" && !repo.contains('/') {
        format!("library/{repo}")
    } else {
        repo
    };
    if !valid_registry_host(&registry) {
        return Err(bad("invalid registry host"));
    }
    if !valid_repository(&repository) {
        return Err(bad("invalid repository name"));
    }
    if !reference.contains(':') && !valid_tag(&reference) {
        return Err(bad("invalid tag"));
    }
    Ok(ImageRef {
        registry,
        repository,
        reference,
    })
}

/// The node's platform in OCI terms.
pub fn node_platform() -> (&'static str, &'static str) {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    };
    ("linux", arch)
}

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

const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

/// Pulls `image` through the tender at `base` (e.g. `http://127.0.0.1:5050`):
/// the manifest (the node's platform from an index), the config and every
/// layer. Returns the bytes of blobs fetched.
pub async fn prefetch(
    client: &reqwest::Client,
    base: &str,
    image: &ImageRef,
    platform: (&str, &str),
    progress: &mut (dyn FnMut(Event<'_>) + Send),
) -> Result<u64, String> {
    let base = base.trim_end_matches('/');
    let ns = &image.registry;
    let get_manifest = |reference: String| async move {
        let url = format!(
            "{base}/v2/{}/manifests/{reference}?ns={ns}",
            image.repository
        );
        let r = client
            .get(&url)
            .header("accept", ACCEPT)
            .send()
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        if !r.status().is_success() {
            return Err(format!("{url}: HTTP {}", r.status()));
        }
        let digest = r
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = r.bytes().await.map_err(|e| format!("{url}: {e}"))?;
        let v: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| format!("{url}: not JSON: {e}"))?;
        Ok::<_, String>((digest, v))
    };
    let (mut digest, mut manifest) = get_manifest(image.reference.clone()).await?;
    if let Some(list) = manifest.get("manifests").and_then(|m| m.as_array()) {
        let (os, arch) = platform;
        let pick = list
            .iter()
            .find(|m| m["platform"]["os"] == os && m["platform"]["architecture"] == arch)
            .and_then(|m| m["digest"].as_str())
            .ok_or_else(|| format!("{image}: no {os}/{arch} manifest in the index"))?
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
        dg.parse::<Digest>()
            .map_err(|e| format!("{image}: manifest lists {dg:?}: {e}"))?;
        let url = format!("{base}/v2/{}/blobs/{dg}?ns={ns}", image.repository);
        let mut r = client
            .get(&url)
            .send()
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        if !r.status().is_success() {
            return Err(format!("{url}: HTTP {}", r.status()));
        }
        let total = r.content_length().unwrap_or(*size);
        let mut done = 0u64;
        let mut last = std::time::Instant::now();
        while let Some(c) = r.chunk().await.map_err(|e| format!("{url}: {e}"))? {
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
            return Err(format!("{url}: got {done} of {total} bytes"));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> (String, String, String) {
        let x = parse_ref(s).unwrap();
        (x.registry, x.repository, x.reference)
    }

    #[test]
    fn references_normalise_like_docker() {
        let o = |a: &str, b: &str, c: &str| (a.to_string(), b.to_string(), c.to_string());
        assert_eq!(r("alpine"), o("docker.io", "library/alpine", "latest"));
        assert_eq!(r("alpine:3.19"), o("docker.io", "library/alpine", "3.19"));
        assert_eq!(r("org/app:1"), o("docker.io", "org/app", "1"));
        assert_eq!(
            r("index.docker.io/library/busybox"),
            o("docker.io", "library/busybox", "latest")
        );
        assert_eq!(r("quay.io/org/app:v2"), o("quay.io", "org/app", "v2"));
        assert_eq!(
            r("localhost:5000/app"),
            o("localhost:5000", "app", "latest")
        );
        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(r(&format!("ghcr.io/x/y@{d}")), o("ghcr.io", "x/y", d));
        for bad in [
            "",
            "UPPER/case",
            "ghcr.io/x@sha256:zz",
            "a:b:c:",
            "quay.io/../x",
        ] {
            assert!(parse_ref(bad).is_err(), "{bad}");
        }
    }
}
