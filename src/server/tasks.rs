//! Background work of a running daemon: the index rebuild at start, access
//! times flushed to the store, the scrub, and the scheduled prefetch.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::cache::Cache;
use crate::config::Prefetch;
use crate::store::Store;

/// How often access order is written to the store's mtimes.
const ACCESS_FLUSH_INTERVAL: Duration = Duration::from_secs(30);

/// Indexes what is on disk, on the blocking pool (the daemon serves meanwhile).
pub fn rebuild_index(store: Arc<Store>) {
    tokio::task::spawn_blocking(move || {
        let t = std::time::Instant::now();
        match store.rebuild_index() {
            Ok(n) => tracing::info!(
                objects = n,
                bytes = store.total_size(),
                ms = t.elapsed().as_millis() as u64,
                "cache indexed"
            ),
            Err(e) => tracing::error!(error = %e, "cache index rebuild failed"),
        }
    });
}

pub fn flush_access_times(store: Arc<Store>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(ACCESS_FLUSH_INTERVAL);
        tick.tick().await;
        loop {
            tick.tick().await;
            let s = store.clone();
            let _ = tokio::task::spawn_blocking(move || s.flush_access_times()).await;
        }
    })
}

/// Scrub passes every `scrub_interval` (if set). Aborting the task ends a
/// pass under way within one chunk.
pub fn scrub(cache: &Cache) -> Option<JoinHandle<()>> {
    let every = cache.config().scrub_interval?;
    let rate = cache.config().scrub_rate;
    let store = cache.store().clone();
    Some(tokio::spawn(async move {
        let stop = Arc::new(AtomicBool::new(false));
        // Set when this task is aborted at shutdown, to end a pass early.
        struct StopOnDrop(Arc<AtomicBool>);
        impl Drop for StopOnDrop {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let _stop_on_drop = StopOnDrop(stop.clone());
        loop {
            tokio::time::sleep(every).await;
            let (s, st) = (store.clone(), stop.clone());
            if let Ok(t) = tokio::task::spawn_blocking(move || s.scrub_pass(rate, &st)).await {
                tracing::info!(checked = t.ok + t.bad, bad = t.bad, "scrub pass done");
            }
        }
    }))
}

/// Pulls the configured images through this tender now and then every
/// `interval`, so that a node has them before its pods ask.
pub async fn scheduled_prefetch(base: String, p: Prefetch) {
    let client = match crate::prefetch::local_client(&base) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "prefetch disabled: no HTTP client");
            return;
        }
    };
    let platform = crate::prefetch::node_platform();
    tokio::time::sleep(Duration::from_secs(1)).await;
    loop {
        for image in &p.images {
            let started = std::time::Instant::now();
            match crate::prefetch::prefetch(&client, &base, image, platform, &mut |_| {}).await {
                Ok(bytes) => {
                    tracing::info!(image = %image, bytes, ms = started.elapsed().as_millis() as u64, "prefetched")
                }
                Err(e) => tracing::warn!(image = %image, error = %e, "prefetch failed"),
            }
        }
        tokio::time::sleep(p.interval).await;
    }
}
