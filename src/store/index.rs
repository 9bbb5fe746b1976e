//! The LRU index: which objects the store holds, how much disk each takes,
//! and in which order they were last used. Pure bookkeeping, no I/O.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::{DirId, Key};

struct Entry {
    size: u64,
    seq: u64,
}

/// Access order: the lowest sequence number is the least recently used.
/// Entries found on disk at start get sequence numbers below `LIVE_SEQ_BASE`
/// in mtime order, so anything touched since start is younger than them.
pub struct Index {
    entries: HashMap<Key, Entry>,
    order: BTreeMap<u64, Key>,
    /// Disk taken by the indexed objects.
    objects: u64,
    /// Disk taken by the store's directories (they count toward the bound
    /// too): the fixed ones, and each fan-out directory by its id.
    dirs_fixed: u64,
    dirs: HashMap<DirId, u64>,
    dirs_total: u64,
    next_seq: u64,
    /// Touched since the last flush of access times to disk.
    dirty: HashSet<Key>,
    /// While a rebuild scans the disk: keys removed meanwhile, which the
    /// scan's results must not bring back.
    removed_during_scan: Option<HashSet<Key>>,
    /// Pinned objects: how many pins hold each and the size its pin
    /// declared (for objects not on disk yet). They stay in `entries` (and
    /// count toward the disk in use) but never enter `order`: the LRU cannot
    /// pick them.
    pins: HashMap<Key, (u32, u64)>,
    /// What each pin (an image) holds.
    owners: HashMap<String, Vec<Key>>,
    /// Disk taken by pinned objects that are indexed (kept as they change,
    /// like `objects`: every commit publishes it).
    pinned: u64,
}

pub const LIVE_SEQ_BASE: u64 = 1 << 40;

impl Default for Index {
    fn default() -> Self {
        Index {
            entries: HashMap::new(),
            order: BTreeMap::new(),
            objects: 0,
            dirs_fixed: 0,
            dirs: HashMap::new(),
            dirs_total: 0,
            next_seq: LIVE_SEQ_BASE,
            dirty: HashSet::new(),
            removed_during_scan: None,
            pins: HashMap::new(),
            owners: HashMap::new(),
            pinned: 0,
        }
    }
}

impl Index {
    /// Adds (or replaces) an object as the most recently used.
    pub fn insert_newest(&mut self, key: Key, size: u64) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.insert(key, size, seq);
    }

    fn insert(&mut self, key: Key, size: u64, seq: u64) {
        let pinned = self.pins.contains_key(&key);
        if let Some(old) = self.entries.insert(key, Entry { size, seq }) {
            self.order.remove(&old.seq);
            self.objects -= old.size;
            if pinned {
                self.pinned -= old.size;
            }
        }
        if pinned {
            self.pinned += size;
        } else {
            self.order.insert(seq, key);
        }
        self.objects += size;
    }

    /// Marks an object used; false if it is not indexed.
    pub fn touch(&mut self, key: Key) -> bool {
        let seq = self.next_seq;
        match self.entries.get_mut(&key) {
            Some(e) => {
                self.order.remove(&e.seq);
                e.seq = seq;
                if !self.pins.contains_key(&key) {
                    self.order.insert(seq, key);
                }
                self.next_seq += 1;
                self.dirty.insert(key);
                true
            }
            None => false,
        }
    }

    pub fn remove(&mut self, key: &Key) -> Option<u64> {
        if let Some(r) = &mut self.removed_during_scan {
            r.insert(*key);
        }
        let e = self.entries.remove(key)?;
        self.order.remove(&e.seq);
        self.objects -= e.size;
        if self.pins.contains_key(key) {
            self.pinned -= e.size;
        }
        self.dirty.remove(key);
        Some(e.size)
    }

    #[cfg(test)]
    pub fn contains(&self, key: &Key) -> bool {
        self.entries.contains_key(key)
    }

    /// Pins `keys` (with their declared sizes) for `owner`, replacing what
    /// it pinned before: the LRU no longer evicts them, whether indexed now
    /// or later. Refused, pinning nothing, if all pins would then hold more
    /// than `max` bytes (an object counts at its size on disk, or at its
    /// declared size until it is stored); returns those bytes either way.
    pub fn pin(&mut self, owner: &str, keys: Vec<(Key, u64)>, max: u64) -> Result<u64, u64> {
        let previous: HashSet<Key> = self
            .owners
            .get(owner)
            .into_iter()
            .flatten()
            .copied()
            .collect();
        let mut held: HashMap<Key, u64> = self
            .pins
            .iter()
            .filter(|(k, (n, _))| *n > 1 || !previous.contains(k))
            .map(|(k, (_, declared))| (*k, *declared))
            .collect();
        held.extend(keys.iter().copied());
        let bytes: u64 = held
            .iter()
            .map(|(k, declared)| self.entries.get(k).map_or(*declared, |e| e.size))
            .sum();
        if bytes > max {
            return Err(bytes);
        }
        self.unpin(owner);
        let mut mine = Vec::with_capacity(keys.len());
        for (k, declared) in keys {
            let pin = self.pins.entry(k).or_insert((0, declared));
            pin.0 += 1;
            pin.1 = declared;
            if pin.0 == 1 {
                if let Some(e) = self.entries.get(&k) {
                    self.order.remove(&e.seq);
                    self.pinned += e.size;
                }
            }
            mine.push(k);
        }
        self.owners.insert(owner.to_string(), mine);
        Ok(bytes)
    }

    /// Releases `owner`'s pins: objects no other pin holds go back to the
    /// LRU (as they were last used).
    pub fn unpin(&mut self, owner: &str) {
        for k in self.owners.remove(owner).unwrap_or_default() {
            let Some((n, _)) = self.pins.get_mut(&k) else {
                continue;
            };
            *n -= 1;
            if *n == 0 {
                self.pins.remove(&k);
                if let Some(e) = self.entries.get(&k) {
                    self.order.insert(e.seq, k);
                    self.pinned -= e.size;
                }
            }
        }
    }

    /// Disk taken by pinned objects that are indexed.
    pub fn pinned_bytes(&self) -> u64 {
        self.pinned
    }

    /// The owners holding pins.
    pub fn pin_owners(&self) -> Vec<String> {
        self.owners.keys().cloned().collect()
    }

    /// Removes least recently used objects until the disk in use is at most
    /// `target`; returns them.
    pub fn evict_to(&mut self, target: u64) -> Vec<Key> {
        let mut victims = Vec::new();
        while self.used() > target {
            let Some(key) = self.order.values().next().copied() else {
                break;
            };
            self.remove(&key);
            victims.push(key);
        }
        victims
    }

    /// Removes least recently used objects until `bytes` are freed (or the
    /// index is empty).
    pub fn evict_bytes(&mut self, bytes: u64) -> Vec<Key> {
        let target = self.used().saturating_sub(bytes);
        self.evict_to(target)
    }

    /// Disk in use: objects and directories.
    pub fn used(&self) -> u64 {
        self.objects + self.dirs_fixed + self.dirs_total
    }

    pub fn objects_size(&self) -> u64 {
        self.objects
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The disk taken by the directories that always exist.
    pub fn set_fixed_dirs(&mut self, bytes: u64) {
        self.dirs_fixed = bytes;
    }

    /// The disk a fan-out directory takes now (directories grow with their
    /// entries and never shrink).
    pub fn set_dir(&mut self, id: DirId, bytes: u64) {
        let old = self.dirs.insert(id, bytes).unwrap_or(0);
        self.dirs_total = self.dirs_total - old + bytes;
    }

    /// Objects touched since the last call, oldest use first.
    pub fn take_dirty(&mut self) -> Vec<Key> {
        let mut keys: Vec<(u64, Key)> = self
            .dirty
            .drain()
            .filter_map(|k| self.entries.get(&k).map(|e| (e.seq, k)))
            .collect();
        keys.sort_unstable();
        keys.into_iter().map(|(_, k)| k).collect()
    }

    pub fn begin_scan(&mut self) {
        self.removed_during_scan = Some(HashSet::new());
    }

    /// Merges what a scan found (already in age order: oldest first) below
    /// every live entry, skipping objects indexed or removed since the scan
    /// began. Ends the scan.
    pub fn merge_scan(&mut self, found: impl IntoIterator<Item = (Key, u64)>) {
        let removed = self.removed_during_scan.take().unwrap_or_default();
        for (seq, (key, size)) in found.into_iter().enumerate() {
            if !self.entries.contains_key(&key) && !removed.contains(&key) {
                self.insert(key, size, seq as u64);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::Digest;
    use crate::store::Kind;

    fn k(i: u8) -> Key {
        (Kind::Blob, Digest::of(&[i]))
    }

    #[test]
    fn evicts_the_least_recently_used_first() {
        let mut idx = Index::default();
        for i in 0..4 {
            idx.insert_newest(k(i), 100);
        }
        idx.touch(k(0));
        assert_eq!(idx.evict_to(250), vec![k(1), k(2)]);
        assert_eq!(idx.used(), 200);
    }

    /// `pinned_bytes` as counted from scratch.
    fn pinned_recount(idx: &Index) -> u64 {
        idx.pins
            .keys()
            .filter_map(|k| idx.entries.get(k).map(|e| e.size))
            .sum()
    }

    #[test]
    fn the_pinned_total_follows_every_change() {
        let mut idx = Index::default();
        fn check(idx: &mut Index, f: &dyn Fn(&mut Index)) {
            f(idx);
            assert_eq!(idx.pinned_bytes(), pinned_recount(idx));
        }
        check(&mut idx, &|i| {
            (0..4).for_each(|n| i.insert_newest(k(n), 100))
        });
        check(&mut idx, &|i| {
            i.pin("a", vec![(k(0), 100), (k(1), 100), (k(8), 10)], 1000)
                .unwrap();
        });
        check(&mut idx, &|i| {
            i.pin("b", vec![(k(1), 100), (k(2), 100)], 1000).unwrap();
        });
        check(&mut idx, &|i| i.insert_newest(k(8), 70)); // a pinned key arrives
        check(&mut idx, &|i| i.insert_newest(k(1), 300)); // replaced, other size
        check(&mut idx, &|i| {
            i.remove(&k(0));
        });
        check(&mut idx, &|i| {
            i.evict_to(0);
        });
        check(&mut idx, &|i| i.unpin("a"));
        check(&mut idx, &|i| {
            i.pin("b", vec![(k(3), 100)], 1000).unwrap();
        });
        check(&mut idx, &|i| i.unpin("b"));
        assert_eq!(idx.pinned_bytes(), 0);
    }

    #[test]
    fn pinned_objects_are_never_evicted_until_unpinned() {
        let mut idx = Index::default();
        for i in 0..4 {
            idx.insert_newest(k(i), 100);
        }
        let p = |keys: &[u8]| keys.iter().map(|i| (k(*i), 100)).collect::<Vec<_>>();
        assert_eq!(
            idx.pin("img", p(&[0, 1, 9]), 1000),
            Ok(300),
            "k9 counts as declared"
        );
        idx.insert_newest(k(9), 100); // arrives after it was pinned
        assert_eq!(idx.evict_to(0), vec![k(2), k(3)]);
        assert_eq!(idx.used(), 300, "only pinned objects are left");
        assert_eq!(idx.pinned_bytes(), 300);
        idx.touch(k(0));
        assert!(idx.evict_to(0).is_empty());
        idx.unpin("img");
        assert_eq!(idx.evict_to(0), vec![k(1), k(9), k(0)], "back in LRU order");
    }

    #[test]
    fn shared_pins_and_the_cap() {
        let mut idx = Index::default();
        for i in 0..3 {
            idx.insert_newest(k(i), 100);
        }
        let p = |keys: &[u8]| keys.iter().map(|i| (k(*i), 100)).collect::<Vec<_>>();
        assert_eq!(idx.pin("a", p(&[0, 1]), 250), Ok(200));
        assert_eq!(
            idx.pin("b", p(&[1, 2]), 250),
            Err(300),
            "over the cap: refused"
        );
        assert_eq!(idx.pinned_bytes(), 200, "and nothing of it pinned");
        assert_eq!(idx.pin("b", p(&[1]), 250), Ok(200));
        assert_eq!(
            idx.pin("c", vec![(k(7), 51)], 250),
            Err(251),
            "declared sizes count"
        );
        idx.unpin("a");
        assert_eq!(idx.evict_to(0), vec![k(0), k(2)], "k1 is still held by b");
        // Re-pinning an owner replaces its set rather than adding to it.
        assert_eq!(idx.pin("b", p(&[1]), 100), Ok(100));
    }

    #[test]
    fn directories_count_toward_the_bound() {
        let mut idx = Index::default();
        idx.insert_newest(k(0), 100);
        idx.set_dir((Kind::Blob, 0xab), 4096);
        assert_eq!(idx.used(), 4196);
        assert_eq!(idx.evict_to(4096), vec![k(0)]);
    }

    #[test]
    fn a_scan_never_resurrects_what_was_removed_meanwhile() {
        let mut idx = Index::default();
        idx.begin_scan();
        idx.insert_newest(k(1), 10); // committed during the scan
        idx.remove(&k(2)); // evicted during the scan (the scan saw it)
        idx.merge_scan([(k(2), 10), (k(1), 10), (k(3), 10)]);
        assert!(idx.contains(&k(1)) && idx.contains(&k(3)) && !idx.contains(&k(2)));
        // Scanned objects are older than anything used since start.
        assert_eq!(idx.evict_to(10), vec![k(3)]);
    }
}
