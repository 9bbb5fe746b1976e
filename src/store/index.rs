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
        if let Some(old) = self.entries.insert(key, Entry { size, seq }) {
            self.order.remove(&old.seq);
            self.objects -= old.size;
        }
        self.order.insert(seq, key);
        self.objects += size;
    }

    /// Marks an object used; false if it is not indexed.
    pub fn touch(&mut self, key: Key) -> bool {
        let seq = self.next_seq;
        match self.entries.get_mut(&key) {
            Some(e) => {
                self.order.remove(&e.seq);
                e.seq = seq;
                self.order.insert(seq, key);
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
        self.dirty.remove(key);
        Some(e.size)
    }

    #[cfg(test)]
    pub fn contains(&self, key: &Key) -> bool {
        self.entries.contains_key(key)
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
