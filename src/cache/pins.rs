//! Pinned images (`[prefetch] pinned`): what a node must keep even when the
//! cache fills with application layers (pause, CNI, kube-proxy on an
//! air-gapped or flaky-egress cluster).
//!
//! An image is pinned from what is on disk: its tag record, its manifest
//! (and, from an index, the node platform's manifest), its config and
//! layers. Those objects leave the LRU (see `store::Index::pin`); objects the
//! image names but the disk lacks yet are pinned as they arrive. The
//! scheduled prefetch (server `tasks`) fetches pinned images first and pins
//! each again after it, so a tag that moved pins its new content and lets
//! the old go back to the LRU. Pins live in memory: a restart pins again
//! from disk before it fetches anything, and an image removed from the
//! config (reload or restart) is unpinned.
//!
//! Bounded: one pin and one status per configured image.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use prometheus::IntGaugeVec;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::tags::{TagKey, Tags};
use crate::config::Prefetch;
use crate::oci::{Digest, ImageRef};
use crate::store::{Kind, Store, StoreError};

/// Most missing objects a status lists by name.
const MISSING_LISTED: usize = 8;

/// What `/pinned` answers (and `tender doctor` reads).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PinnedReport {
    /// Disk taken by pinned objects now.
    pub pinned_bytes: u64,
    /// `pinned_max_size`.
    pub pinned_max_bytes: u64,
    pub images: Vec<PinnedImage>,
}

/// One configured pinned image, as found on disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PinnedImage {
    pub image: String,
    /// Held out of the LRU now.
    pub pinned: bool,
    /// Every object the image needs on this node is on disk.
    pub complete: bool,
    /// The image's size as its manifests declare it (what is known so far).
    pub bytes: u64,
    /// Objects named and stored / named in all.
    pub objects_stored: usize,
    pub objects: usize,
    /// The first few objects not on disk (`tag record`, `manifest sha256:...`,
    /// `blob sha256:...`).
    pub missing: Vec<String>,
    /// Why it is not pinned (or not wholly), when it last failed.
    pub problem: Option<String>,
}

/// An image resolved from disk.
#[derive(Default)]
struct Resolved {
    /// Every object it names that is known so far, with declared sizes.
    objects: Vec<(Kind, Digest, u64)>,
    stored: usize,
    missing: Vec<String>,
    /// Whether its manifests were found, so that `objects` is the whole image.
    whole: bool,
}

impl Resolved {
    fn note(&mut self, kind: Kind, d: Digest, declared: u64, present: bool, what: String) {
        self.objects.push((kind, d, declared));
        if present {
            self.stored += 1;
        } else {
            self.missing.push(what);
        }
    }

    fn complete(&self) -> bool {
        self.whole && self.missing.is_empty()
    }
}

/// How a configured image stands, as of its last pin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Complete,
    Incomplete,
    NotPinned,
}

impl State {
    const ALL: [State; 3] = [State::Complete, State::Incomplete, State::NotPinned];

    fn label(self) -> &'static str {
        match self {
            State::Complete => "complete",
            State::Incomplete => "incomplete",
            State::NotPinned => "not_pinned",
        }
    }
}

/// What is known of one configured image.
#[derive(Debug, Default)]
struct Status {
    /// As of its last pin (or `/pinned`); `None` until then.
    state: Option<State>,
    /// Why its last pin was refused.
    refused: Option<String>,
    /// Why its last prefetch failed.
    fetch_failed: Option<String>,
}

impl Status {
    fn problem(&self) -> Option<String> {
        let fetch = || {
            self.fetch_failed
                .as_ref()
                .map(|e| format!("prefetch failed: {e}"))
        };
        self.refused.clone().or_else(fetch)
    }
}

pub struct Pins {
    store: Arc<Store>,
    /// `tender_pinned_images{state}`.
    gauge: IntGaugeVec,
    /// The `[prefetch]` section in force (reloaded on SIGHUP).
    prefetch: RwLock<Option<Prefetch>>,
    /// Each configured pinned image (only those) by name.
    images: Mutex<HashMap<String, Status>>,
    /// Woken when the `[prefetch]` section changes.
    changed: Notify,
}

/// The names of the pinned images `p` configures.
fn pinned_names(p: Option<&Prefetch>) -> Vec<String> {
    p.iter()
        .flat_map(|p| p.pinned.iter().map(ToString::to_string))
        .collect()
}

impl Pins {
    pub fn new(store: Arc<Store>, prefetch: Option<Prefetch>, gauge: IntGaugeVec) -> Pins {
        if let Some(p) = &prefetch {
            store.set_pinned_max(p.pinned_max_size);
        }
        Pins {
            store,
            gauge,
            prefetch: RwLock::new(prefetch),
            images: Mutex::new(HashMap::new()),
            changed: Notify::new(),
        }
    }

    /// The `[prefetch]` section in force.
    pub fn prefetch(&self) -> Option<Prefetch> {
        self.prefetch
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Resolves when the `[prefetch]` section changed (after [`Pins::reload`]).
    pub async fn changed(&self) {
        self.changed.notified().await
    }

    /// Takes a new `[prefetch]` section: images no longer pinned go back to
    /// the LRU at once; new ones are pinned by the next prefetch round,
    /// which this starts.
    pub fn reload(&self, new: Option<Prefetch>) {
        let wanted = pinned_names(new.as_ref());
        for owner in self.store.pin_owners() {
            if !wanted.contains(&owner) {
                self.store.unpin(&owner);
                tracing::info!(image = %owner, "unpinned: no longer in prefetch.pinned");
            }
        }
        if let Some(p) = &new {
            self.store.set_pinned_max(p.pinned_max_size);
        }
        *self.prefetch.write().unwrap_or_else(|p| p.into_inner()) = new;
        self.update(None, |_| {});
        self.changed.notify_one();
    }

    /// Applies `f` to `image`'s status (if it is configured), forgets
    /// images no longer configured, and brings the gauge up to date.
    fn update(&self, image: Option<&str>, f: impl FnOnce(&mut Status)) {
        let wanted = pinned_names(
            self.prefetch
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref(),
        );
        let mut images = self.images.lock().unwrap_or_else(|p| p.into_inner());
        images.retain(|k, _| wanted.contains(k));
        if let Some(name) = image.filter(|n| wanted.iter().any(|w| w == n)) {
            f(images.entry(name.to_string()).or_default());
        }
        for s in State::ALL {
            let n = images.values().filter(|v| v.state == Some(s)).count();
            self.gauge.with_label_values(&[s.label()]).set(n as i64);
        }
    }

    /// Records why `image` could not be fetched (or that it was).
    pub fn note_fetch(&self, image: &ImageRef, problem: Option<String>) {
        self.update(Some(&image.to_string()), |s| s.fetch_failed = problem);
    }

    /// Pins `image` from what is on disk (replacing its previous pin).
    /// Returns whether it is complete on disk; refused with
    /// [`StoreError::PinnedFull`] when it would take pinned content over
    /// `pinned_max_size`, and then not pinned at all (a part of an image
    /// helps nobody; the operator sees why in the log, `/pinned` and
    /// `tender doctor`).
    pub async fn pin(&self, tags: &Tags, image: &ImageRef) -> Result<bool, StoreError> {
        let r = self.resolve(tags, image).await;
        let owner = image.to_string();
        let pinned = self.store.pin(&owner, r.objects.clone());
        if pinned.is_err() {
            self.store.unpin(&owner);
        }
        self.update(Some(&owner), |s| {
            s.refused = pinned.as_ref().err().map(ToString::to_string);
            s.state = Some(match &pinned {
                Ok(_) if r.complete() => State::Complete,
                Ok(_) => State::Incomplete,
                Err(_) => State::NotPinned,
            });
        });
        pinned.map(|_| r.complete())
    }

    /// Every configured pinned image, as found on disk now (which also
    /// brings `tender_pinned_images` up to date).
    pub async fn report(&self, tags: &Tags) -> PinnedReport {
        let configured = self.prefetch().map(|p| p.pinned).unwrap_or_default();
        let owners = self.store.pin_owners();
        let mut images = Vec::with_capacity(configured.len());
        for image in &configured {
            let r = self.resolve(tags, image).await;
            let name = image.to_string();
            let mut missing = r.missing.clone();
            missing.truncate(MISSING_LISTED);
            let pinned = owners.contains(&name);
            let mut problem = None;
            self.update(Some(&name), |s| {
                s.state = Some(match (pinned, r.complete()) {
                    (false, _) => State::NotPinned,
                    (true, true) => State::Complete,
                    (true, false) => State::Incomplete,
                });
                problem = s.problem();
            });
            images.push(PinnedImage {
                pinned,
                complete: r.complete(),
                bytes: r.objects.iter().map(|(_, _, n)| n).sum(),
                objects_stored: r.stored,
                objects: r.objects.len(),
                missing,
                problem,
                image: name,
            });
        }
        PinnedReport {
            pinned_bytes: self.store.pinned_bytes(),
            pinned_max_bytes: self.store.pinned_max(),
            images,
        }
    }

    /// What `image` names, from disk: tag record → manifest → the node
    /// platform's manifest (from an index) → config and layers.
    async fn resolve(&self, tags: &Tags, image: &ImageRef) -> Resolved {
        let mut r = Resolved::default();
        let top = match image.reference.parse::<Digest>() {
            Ok(d) => d,
            Err(_) => {
                let key = TagKey::new(&image.registry, &image.repository, &image.reference);
                let entry = tags.get(&key).await;
                r.note(Kind::Tag, key.id(), 0, entry.is_some(), "tag record".into());
                match entry {
                    Some(e) => e.digest,
                    None => return r,
                }
            }
        };
        let store = self.store.clone();
        let platform = crate::oci::node_platform();
        let walk = tokio::task::spawn_blocking(move || manifests_on_disk(&store, top, platform, r));
        walk.await.unwrap_or_else(|e| Resolved {
            missing: vec![format!("internal error: {e}")],
            ..Resolved::default()
        })
    }
}

/// Follows `top` on disk (blocking): manifests, then blobs (statted).
fn manifests_on_disk(
    store: &Store,
    top: Digest,
    (os, arch): (&str, &str),
    mut r: Resolved,
) -> Resolved {
    let mut digest = top;
    // An index, then one manifest: never deeper.
    for _ in 0..2 {
        let manifest = store.read_manifest(&digest).ok().flatten();
        let json = manifest.as_ref().and_then(|(_, body)| {
            // Verified like every manifest read from disk.
            (Digest::of(body) == digest)
                .then(|| serde_json::from_slice::<serde_json::Value>(body).ok())
                .flatten()
        });
        let size = manifest.as_ref().map_or(0, |(_, b)| b.len() as u64);
        r.note(
            Kind::Manifest,
            digest,
            size,
            json.is_some(),
            format!("manifest {digest}"),
        );
        let Some(json) = json else {
            return r;
        };
        if let Some(list) = json.get("manifests").and_then(|m| m.as_array()) {
            let pick = list
                .iter()
                .find(|m| m["platform"]["os"] == os && m["platform"]["architecture"] == arch)
                .and_then(|m| m["digest"].as_str()?.parse::<Digest>().ok());
            match pick {
                Some(d) => digest = d,
                None => {
                    r.missing
                        .push(format!("no {os}/{arch} manifest in the index"));
                    return r;
                }
            }
            continue;
        }
        let blobs = std::iter::once(&json["config"])
            .chain(json["layers"].as_array().into_iter().flatten())
            .filter_map(|b| {
                Some((
                    b["digest"].as_str()?.parse::<Digest>().ok()?,
                    b["size"].as_u64()?,
                ))
            });
        for (d, size) in blobs {
            let present = store.blob_size(&d).ok().flatten() == Some(size);
            r.note(Kind::Blob, d, size, present, format!("blob {d}"));
        }
        r.whole = true;
        return r;
    }
    r
}
