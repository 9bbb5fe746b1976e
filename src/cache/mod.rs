//! The cache: content-addressed store, blob fills, tag mappings, a small
//! in-memory manifest cache and single-flight for manifest work.

pub mod fill;
pub mod store;

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::hash::Hash;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::watch;

use crate::digest::Digest;
use crate::upstream::FetchError;

/// A manifest as served: exact bytes, media type and digest.
#[derive(Debug)]
pub struct Manifest {
    pub digest: Digest,
    pub media_type: String,
    pub bytes: Bytes,
}

/// Small, byte-bounded, FIFO-evicted memory cache of manifests, so that the
/// hot path (a tag within `tag_ttl`) touches no disk.
pub struct ManifestCache {
    inner: Mutex<ManifestCacheInner>,
    limit: usize,
}

#[derive(Default)]
struct ManifestCacheInner {
    map: HashMap<Digest, Arc<Manifest>>,
    order: VecDeque<Digest>,
    bytes: usize,
}

impl ManifestCache {
    pub fn new(limit: usize) -> ManifestCache {
        ManifestCache {
            inner: Mutex::default(),
            limit,
        }
    }

    pub fn get(&self, d: &Digest) -> Option<Arc<Manifest>> {
        self.inner.lock().ok()?.map.get(d).cloned()
    }

    pub fn insert(&self, m: Arc<Manifest>) {
        let Ok(mut g) = self.inner.lock() else { return };
        if m.bytes.len() > self.limit || g.map.contains_key(&m.digest) {
            return;
        }
        g.bytes += m.bytes.len();
        g.order.push_back(m.digest);
        g.map.insert(m.digest, m);
        while g.bytes > self.limit {
            let Some(old) = g.order.pop_front() else {
                break;
            };
            if let Some(o) = g.map.remove(&old) {
                g.bytes -= o.bytes.len();
            }
        }
    }

    pub fn remove(&self, d: &Digest) {
        if let Ok(mut g) = self.inner.lock() {
            if let Some(o) = g.map.remove(d) {
                g.bytes -= o.bytes.len();
                g.order.retain(|x| x != d);
            }
        }
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

/// Tag → digest mappings, in memory and persisted under `tags/` so that a
/// restarted tender can still resolve tags while every upstream is down.
pub struct Tags {
    dir: PathBuf,
    mem: Mutex<HashMap<String, TagEntry>>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct TagFile {
    key: String,
    digest: String,
    checked_unix: u64,
}

impl Tags {
    pub fn new(dir: PathBuf) -> std::io::Result<Tags> {
        std::fs::create_dir_all(&dir)?;
        Ok(Tags {
            dir,
            mem: Mutex::default(),
        })
    }

    pub fn key(registry: &str, repo: &str, tag: &str) -> String {
        format!("{registry}/{repo}:{tag}")
    }

    fn file(&self, key: &str) -> PathBuf {
        self.dir.join(Digest::of(key.as_bytes()).hex())
    }

    /// The in-memory entry, without touching disk (the hot path).
    pub fn get_mem(&self, key: &str) -> Option<TagEntry> {
        self.mem.lock().ok()?.get(key).copied()
    }

    /// The entry from memory or, after a restart, from disk.
    pub async fn get(&self, key: &str) -> Option<TagEntry> {
        if let Some(e) = self.get_mem(key) {
            return Some(e);
        }
        let path = self.file(key);
        let text = tokio::fs::read(&path).await.ok()?;
        let tf: TagFile = serde_json::from_slice(&text).ok()?;
        if tf.key != key {
            return None;
        }
        let entry = TagEntry {
            digest: tf.digest.parse().ok()?,
            checked: None,
        };
        if let Ok(mut m) = self.mem.lock() {
            m.entry(key.to_string()).or_insert(entry);
        }
        Some(entry)
    }

    /// Records that an upstream just confirmed `key` → `digest`.
    pub async fn set(&self, key: &str, digest: Digest) {
        let changed = {
            let Ok(mut m) = self.mem.lock() else { return };
            let prev = m.insert(
                key.to_string(),
                TagEntry {
                    digest,
                    checked: Some(Instant::now()),
                },
            );
            prev.is_none_or(|p| p.digest != digest || p.checked.is_none())
        };
        if changed {
            let tf = TagFile {
                key: key.to_string(),
                digest: digest.to_string(),
                checked_unix: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0),
            };
            let path = self.file(key);
            let res = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                // Written whole then renamed: a crash leaves the old mapping or the new one.
                let tmp = path.with_extension("tmp");
                std::fs::write(&tmp, serde_json::to_vec(&tf)?)?;
                std::fs::rename(&tmp, &path)
            })
            .await;
            if let Ok(Err(e)) = res {
                tracing::warn!(tag = key, error = %e, "could not persist tag mapping");
            }
        }
    }

    pub async fn remove(&self, key: &str) {
        if let Ok(mut m) = self.mem.lock() {
            m.remove(key);
        }
        let _ = tokio::fs::remove_file(self.file(key)).await;
    }
}

/// Result shared by every caller of one flight.
pub type Shared<T> = Result<Arc<T>, FetchError>;

/// Single flight: concurrent calls with the same key share one execution of
/// the work, which runs as its own task so that no caller's cancellation
/// cancels it. If the task dies, callers get an error instead of hanging.
pub struct Flights<K, T> {
    map: Mutex<HashMap<K, watch::Receiver<Option<Shared<T>>>>>,
}

impl<K, T> Default for Flights<K, T> {
    fn default() -> Self {
        Flights {
            map: Mutex::default(),
        }
    }
}

impl<K, T> Flights<K, T>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    T: Send + Sync + 'static,
{
    /// Runs `work` unless a flight for `key` is under way; returns the
    /// shared result and whether this call joined an existing flight.
    pub async fn run<F, Fut>(self: &Arc<Self>, key: K, work: F) -> (Shared<T>, bool)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Shared<T>> + Send + 'static,
    {
        let (mut rx, joined) = {
            let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            match map.get(&key) {
                Some(rx) => (rx.clone(), true),
                None => {
                    let (tx, rx) = watch::channel(None);
                    map.insert(key.clone(), rx.clone());
                    let fut = work();
                    let guard = FlightGuard {
                        flights: self.clone(),
                        key: Some(key),
                    };
                    tokio::spawn(async move {
                        let out = fut.await;
                        // Remove first: a caller arriving after this sees the
                        // result in the caches, not a finished flight. (If the
                        // work panics, the guard removes the key and the
                        // dropped sender fails the waiters.)
                        drop(guard);
                        let _ = tx.send(Some(out));
                    });
                    (rx, false)
                }
            }
        };
        loop {
            if let Some(v) = rx.borrow_and_update().as_ref() {
                return (v.clone(), joined);
            }
            if rx.changed().await.is_err() {
                return (
                    Err(FetchError::Unavailable(
                        "the fetch ended unexpectedly".into(),
                    )),
                    joined,
                );
            }
        }
    }
}

struct FlightGuard<K: Eq + Hash, T> {
    flights: Arc<Flights<K, T>>,
    key: Option<K>,
}

impl<K: Eq + Hash, T> Drop for FlightGuard<K, T> {
    fn drop(&mut self) {
        if let Some(k) = self.key.take() {
            self.flights
                .map
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn concurrent_flights_run_the_work_once() {
        let flights: Arc<Flights<&'static str, u32>> = Arc::default();
        let runs = Arc::new(AtomicUsize::new(0));
        let mut handles = Vec::new();
        for _ in 0..10 {
            let f = flights.clone();
            let runs = runs.clone();
            handles.push(tokio::spawn(async move {
                f.run("k", || async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok(Arc::new(7))
                })
                .await
            }));
        }
        let mut joined = 0;
        for h in handles {
            let (v, j) = h.await.unwrap();
            assert_eq!(*v.unwrap(), 7);
            joined += j as usize;
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(joined, 9);
    }

    #[tokio::test]
    async fn a_panicking_flight_fails_its_waiters_and_frees_its_key() {
        let flights: Arc<Flights<&'static str, u32>> = Arc::default();
        let (res, _) = flights
            .run("k", || async {
                if true {
                    panic!("boom");
                }
                Ok(Arc::new(1))
            })
            .await;
        assert!(res.is_err());
        let (res, joined) = flights.run("k", || async { Ok(Arc::new(2)) }).await;
        assert_eq!((*res.unwrap(), joined), (2, false));
    }

    #[test]
    fn manifest_cache_is_bounded() {
        let c = ManifestCache::new(10);
        for i in 0..5u8 {
            c.insert(Arc::new(Manifest {
                digest: Digest::of(&[i]),
                media_type: "x".into(),
                bytes: Bytes::from(vec![i; 4]),
            }));
        }
        assert!(c.get(&Digest::of(&[0])).is_none());
        assert!(c.get(&Digest::of(&[4])).is_some());
    }
}
