//! Manifest media types, and how to tell which one a document is.

pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// Every manifest type tender understands, as an `Accept` value. tender asks
/// upstreams for all of them whatever the client accepts: a cached tag must be
/// the tag's real target, and each client is then answered by its own `Accept`.
pub const ACCEPT_ALL: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

/// Manifests larger than this are refused (as distribution and containerd do).
pub const MAX_MANIFEST_SIZE: usize = 4 << 20;

/// A manifest's media type: the upstream's `Content-Type` when it names a
/// vendor type, else the document's own `mediaType`, else its shape (an index
/// has `manifests`). Fails if the document is not JSON.
pub fn manifest_media_type(
    content_type: Option<&str>,
    bytes: &[u8],
) -> Result<String, serde_json::Error> {
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
    }
    let probe: Probe = serde_json::from_slice(bytes)?;
    if let Some(ct) = content_type {
        if ct.starts_with("application/vnd.") {
            return Ok(ct.to_string());
        }
    }
    if let Some(mt) = probe.media_type.filter(|m| !m.is_empty()) {
        return Ok(mt);
    }
    Ok(if probe.manifests.is_some() {
        OCI_INDEX
    } else {
        OCI_MANIFEST
    }
    .to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_type_detection() {
        let idx = br#"{"schemaVersion":2,"manifests":[]}"#;
        assert_eq!(manifest_media_type(None, idx).unwrap(), OCI_INDEX);
        assert_eq!(
            manifest_media_type(Some("application/json"), idx).unwrap(),
            OCI_INDEX
        );
        let m = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json"}"#;
        assert_eq!(manifest_media_type(None, m).unwrap(), DOCKER_MANIFEST);
        assert_eq!(
            manifest_media_type(Some(OCI_MANIFEST), m).unwrap(),
            OCI_MANIFEST
        );
        assert!(manifest_media_type(None, b"not json").is_err());
    }
}
