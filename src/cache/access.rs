//! The AlwaysVerify policy (`verify_client_credentials`): a client that
//! presents credentials to such a registry gets cached content only after
//! an upstream confirms, with those credentials, that it may read the
//! repository. Confirmations are kept for `tag_ttl` (bounded in number).
//! Clients without credentials get the node's trust (kubelet's IfNotPresent).

use std::time::Duration;

use hyper::header::HeaderValue;

use super::CacheError;
use crate::oci::Digest;
use crate::upstream::{UpstreamError, Upstreams};

/// Confirmations held at once.
const MAX_CONFIRMATIONS: u64 = 10_000;

pub struct Access {
    /// (hash of a client's Authorization, registry, repository) → confirmed.
    confirmed: moka::sync::Cache<(Digest, String, String), ()>,
}

impl Access {
    pub fn new(ttl: Duration) -> Access {
        Access {
            confirmed: moka::sync::Cache::builder()
                .max_capacity(MAX_CONFIRMATIONS)
                .time_to_live(ttl.max(Duration::from_millis(1)))
                .build(),
        }
    }

    /// Checks `credentials` (the client's `Authorization`) for `suffix`
    /// (`manifests/<ref>` or `blobs/<digest>`) in `repo`. Fails closed:
    /// without a confirmation, nothing is served.
    pub async fn check(
        &self,
        ups: &Upstreams,
        repo: &str,
        suffix: &str,
        credentials: Option<&HeaderValue>,
    ) -> Result<(), CacheError> {
        if !ups.verify_client_credentials {
            return Ok(());
        }
        let Some(auth) = credentials else {
            return Ok(());
        };
        let key = (
            Digest::of(auth.as_bytes()),
            ups.host.clone(),
            repo.to_string(),
        );
        if self.confirmed.contains_key(&key) {
            return Ok(());
        }
        let mut auth = auth.clone();
        auth.set_sensitive(true);
        match ups.verify_client_access(repo, suffix, &auth).await {
            Ok(()) => {
                self.confirmed.insert(key, ());
                Ok(())
            }
            Err(UpstreamError::NotFound) if suffix.starts_with("blobs/") => {
                Err(CacheError::BlobUnknown)
            }
            Err(UpstreamError::NotFound) => Err(CacheError::ManifestUnknown),
            Err(e) => Err(CacheError::Upstream(e)),
        }
    }
}
