//! Background work of a running daemon: the index rebuild at start, access
//! times flushed to the store, the scrub, and the scheduled prefetch (which
//! also pins the pinned images).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::cache::Cache;
use crate::oci::ImageRef;
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

/// Keeps the `[prefetch]` images warm: pins the pinned ones from disk as
/// soon as the index is built (before anything else could evict them), then
/// pulls every image through this tender (pinned first) now and every
/// `interval`, pinning each pinned image again after its pull. A reload
/// that changes the section starts a round at once.
pub async fn keep_warm(base: String, cache: Arc<Cache>) {
    let client = match crate::prefetch::local_client(&base) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "prefetch disabled: no HTTP client");
            return;
        }
    };
    // Pins count stored objects at their size on disk: wait for the index.
    while !cache.store().is_indexed() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if let Some(p) = cache.pins().prefetch() {
        for image in &p.pinned {
            pin(&cache, image).await;
        }
    }
    let platform = crate::oci::node_platform();
    loop {
        let Some(p) = cache.pins().prefetch() else {
            cache.pins().changed().await;
            continue;
        };
        let pinned = p.pinned.iter().map(|i| (i, true));
        for (image, pinned) in pinned.chain(p.images.iter().map(|i| (i, false))) {
            let started = std::time::Instant::now();
            let fetched =
                crate::prefetch::prefetch(&client, &base, image, platform, &mut |_| {}).await;
            match &fetched {
                Ok(bytes) => {
                    tracing::info!(image = %image, bytes, ms = started.elapsed().as_millis() as u64, "prefetched")
                }
                Err(e) => tracing::warn!(image = %image, error = %e, "prefetch failed"),
            }
            if pinned {
                let failed = fetched.err().map(|e| e.to_string());
                cache.pins().note_fetch(image, failed);
                pin(&cache, image).await;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(p.interval) => {}
            _ = cache.pins().changed() => {}
        }
    }
}

/// Pins `image` from disk, logging the outcome.
async fn pin(cache: &Cache, image: &ImageRef) {
    match cache.pin_image(image).await {
        Ok(true) => tracing::info!(image = %image, "pinned"),
        Ok(false) => {
            tracing::info!(image = %image, "pinned what is on disk; incomplete until prefetched")
        }
        Err(e) => tracing::error!(image = %image, error = %e, "cannot pin"),
    }
}
