//! What each tag pointed at when an upstream last said: in memory (bounded)
//! for the hot path, and as a record in the store so that a restarted tender
//! can still resolve tags while every upstream is down. Records are ordinary
//! store objects: they count toward `cache_max_size` and leave by the LRU.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::oci::Digest;
use crate::store::{Kind, Store};

/// Tags held in memory at once (each a few hundred bytes at most).
pub const MEMORY_ENTRIES: u64 = 65_536;

/// A tag, fully named: registry host, repository and tag.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TagKey {
    pub registry: String,
    pub repo: String,
    pub tag: String,
}

impl TagKey {
    pub fn new(registry: &str, repo: &str, tag: &str) -> TagKey {
        TagKey {
            registry: registry.to_string(),
            repo: repo.to_string(),
            tag: tag.to_string(),
        }
    }

    /// The store id of this tag's record.
    pub fn id(&self) -> Digest {
        Digest::of(self.to_string().as_bytes())
    }
}

impl fmt::Display for TagKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}:{}", self.registry, self.repo, self.tag)
    }
}

/// What a tag pointed at when last checked.
#[derive(Debug, Clone, Copy)]
pub struct TagEntry {
    pub digest: Digest,
    /// When an upstream last confirmed it; `None` if only known from disk
    /// (a previous run), which counts as stale.
    pub checked: Option<Instant>,
}

impl TagEntry {
    pub fn is_fresh(&self, ttl: Duration) -> bool {
        self.checked.is_some_and(|c| c.elapsed() < ttl)
    }
}

/// The on-disk record.
#[derive(serde::Serialize, serde::Deserialize)]
struct TagRecord {
    key: String,
    digest: String,
    checked_unix: u64,
}

pub struct Tags {
    mem: moka::sync::Cache<TagKey, TagEntry>,
    store: Arc<Store>,
}

impl Tags {
    pub fn new(store: Arc<Store>) -> Tags {
        Tags {
            mem: moka::sync::Cache::new(MEMORY_ENTRIES),
            store,
        }
    }

    /// The in-memory entry, without touching disk (the hot path).
    pub fn get_mem(&self, key: &TagKey) -> Option<TagEntry> {
        self.mem.get(key)
    }

    /// The entry from memory or, after a restart or an eviction from
    /// memory, from its record.
    pub async fn get(&self, key: &TagKey) -> Option<TagEntry> {
        if let Some(e) = self.get_mem(key) {
            return Some(e);
        }
        let store = self.store.clone();
        let id = key.id();
        let read = tokio::task::spawn_blocking(move || store.read_record(Kind::Tag, &id))
            .await
            .ok()?;
        let bytes = match read {
            Ok(Some(b)) => b,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!(tag = %key, error = %e, "cannot read tag record");
                return None;
            }
        };
        let rec: TagRecord = serde_json::from_slice(&bytes).ok()?;
        if rec.key != key.to_string() {
            return None;
        }
        let entry = TagEntry {
            digest: rec.digest.parse().ok()?,
            checked: None,
        };
        // Not over a fresher entry that arrived meanwhile.
        Some(self.mem.entry(key.clone()).or_insert(entry).into_value())
    }

    /// Records that an upstream just confirmed `key` → `digest`. The record
    /// on disk is rewritten only when the digest changed (or was only known
    /// from disk): revalidations cost no disk writes.
    pub async fn set(&self, key: &TagKey, digest: Digest) {
        let prev = self.mem.get(key);
        self.mem.insert(
            key.clone(),
            TagEntry {
                digest,
                checked: Some(Instant::now()),
            },
        );
        let changed = prev.is_none_or(|p| p.digest != digest || p.checked.is_none());
        if !changed {
            self.store.mark_used(Kind::Tag, &key.id());
            return;
        }
        let rec = TagRecord {
            key: key.to_string(),
            digest: digest.to_string(),
            checked_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        };
        let Ok(bytes) = serde_json::to_vec(&rec) else {
            return;
        };
        let store = self.store.clone();
        let id = key.id();
        let res =
            tokio::task::spawn_blocking(move || store.put_record(Kind::Tag, &id, &[&bytes])).await;
        if let Ok(Err(e)) = res {
            tracing::warn!(tag = %key, error = %e, "could not persist tag record");
        }
    }

    /// Forgets a tag (the upstreams say it no longer exists).
    pub async fn remove(&self, key: &TagKey) {
        self.mem.invalidate(key);
        let store = self.store.clone();
        let id = key.id();
        let _ = tokio::task::spawn_blocking(move || store.remove(Kind::Tag, &id)).await;
    }

    /// Tags held in memory now.
    pub fn memory_entries(&self) -> u64 {
        self.mem.run_pending_tasks();
        self.mem.entry_count()
    }
}
