//! The AlwaysVerify policy (`verify_client_credentials`): before a client
//! gets content from the cache, an upstream confirms that this client may
//! read this very object in this repository: with the client's credentials
//! if it sent some, anonymously if it did not. A public repository is thus
//! served to anyone; a private one only to clients whose credentials the
//! registry accepts. A client the upstream refuses gets 401 with a Basic
//! challenge: containerd's authorizer sends a host credentials only after
//! such a challenge, and then retries with the pod's pull-secret credentials.
//!
//! Confirmations are kept per (credentials, registry, repository, object) for
//! `tag_ttl`, bounded in number. The check asks only upstreams that may see a
//! client's credentials (the registry's origin, unless configured otherwise).

use std::time::Duration;

use hyper::header::HeaderValue;

use super::CacheError;
use crate::oci::Digest;
use crate::upstream::{UpstreamError, Upstreams};

/// Confirmations held at once.
const MAX_CONFIRMATIONS: u64 = 10_000;

/// Who asked for what: the hash of the client's `Authorization` (`None`:
/// anonymous), registry, repository, object (`manifests/<ref>`, ...).
type Key = (Option<Digest>, String, String, String);

pub struct Access {
    confirmed: moka::sync::Cache<Key, ()>,
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

    /// Checks that the client presenting `credentials` (its `Authorization`)
    /// may read `object` (`manifests/<ref>`, `blobs/<digest>`, `tags/list`)
    /// in `repo`. Fails closed: without a confirmation nothing is served.
    pub async fn check(
        &self,
        ups: &Upstreams,
        repo: &str,
        object: &str,
        credentials: Option<&HeaderValue>,
    ) -> Result<(), CacheError> {
        if !ups.verify_client_credentials {
            return Ok(());
        }
        let key = (
            credentials.map(|a| Digest::of(a.as_bytes())),
            ups.host.clone(),
            repo.to_string(),
            object.to_string(),
        );
        if self.confirmed.contains_key(&key) {
            return Ok(());
        }
        let credentials = credentials.map(|a| {
            let mut a = a.clone();
            a.set_sensitive(true);
            a
        });
        match ups
            .verify_client_access(repo, object, credentials.as_ref())
            .await
        {
            Ok(()) => {
                self.confirmed.insert(key, ());
                Ok(())
            }
            Err(UpstreamError::NotFound) if object.starts_with("blobs/") => {
                Err(CacheError::BlobUnknown)
            }
            Err(UpstreamError::NotFound) if object.starts_with("manifests/") => {
                Err(CacheError::ManifestUnknown)
            }
            Err(UpstreamError::Denied(_)) => Err(CacheError::Unauthorized),
            Err(e) => Err(CacheError::Upstream(e)),
        }
    }

    /// Confirmations held now.
    pub fn entries(&self) -> u64 {
        self.confirmed.run_pending_tasks();
        self.confirmed.entry_count()
    }
}
