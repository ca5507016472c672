//! The in-memory index: sizes, use order and what was last seen of each file, in about 60 bytes
//! per entry.
//!
//! A cache of a million entries must start at once and stay small, so the index holds no
//! `String` per entry: a key is split at its last `/` into a directory, stored once however many
//! entries it holds (`mod/<module>/@v` is shared by every version of a module), and a leaf, the
//! file name, stored in one byte arena. An entry is then a 32-byte [`Slot`] and a 4-byte id in a
//! hash table. No general-purpose map or LRU crate comes near that: `lru` and `hashlink` box every
//! entry with its own `String` key (about 170 bytes per entry measured at a million).
//!
//! Use order is a stamp per entry (milliseconds, strictly increasing within a run; an entry found
//! on disk at start takes its file's modification time), and eviction takes entries oldest stamp
//! first from a batch of the oldest gathered in one pass, skipping any used since: exact LRU at
//! an amortised cost of a few hundred slot reads per eviction.

use std::collections::BinaryHeap;

use hashbrown::HashMap;
use std::hash::BuildHasher;
use std::time::{Duration, Instant, SystemTime};

use hashbrown::{DefaultHashBuilder, HashTable};

/// How long a file's length and modification time, once read, are trusted without looking
/// again. Every change modgate makes goes through the index and is seen at once; changes made
/// to the directory by another process (`modgate cache verify`) are seen within this time.
pub(super) const STAT_FRESH: Duration = Duration::from_secs(1);

/// Marks a free slot.
const FREE: u32 = u32::MAX;

#[derive(Debug, Clone, Copy)]
struct Slot {
    /// Offset of the leaf in the arena, shifted left 8, and its length (a file name: at most
    /// 255 bytes).
    loc: u64,
    size: u64,
    /// Stamp of last use (see the module comment).
    used: u64,
    /// The directory, or [`FREE`].
    dir: u32,
    /// Changes with every commit of the key, so a stat taken before a commit is not trusted
    /// after it.
    version: u32,
}

impl Slot {
    fn leaf<'a>(&self, arena: &'a [u8]) -> &'a [u8] {
        let off = (self.loc >> 8) as usize;
        &arena[off..off + (self.loc & 0xff) as usize]
    }
}

/// What a stat of an entry's file showed.
#[derive(Debug, Clone, Copy)]
struct Seen {
    at: Instant,
    version: u32,
    len: u64,
    modified: SystemTime,
}

#[derive(Debug, Clone, Copy)]
struct Dir {
    off: usize,
    len: usize,
    /// Entries in it; 0 for a free one.
    refs: u32,
}

/// Interned directories.
#[derive(Debug, Default)]
struct Dirs {
    table: HashTable<u32>,
    items: Vec<Dir>,
    free: Vec<u32>,
    arena: Vec<u8>,
    garbage: usize,
}

impl Dirs {
    fn name(&self, id: u32) -> &[u8] {
        let d = self.items[id as usize];
        &self.arena[d.off..d.off + d.len]
    }

    fn find(&self, hasher: &DefaultHashBuilder, name: &[u8]) -> Option<u32> {
        let (items, arena) = (&self.items, &self.arena);
        self.table
            .find(hasher.hash_one(name), |&id| {
                let d = items[id as usize];
                &arena[d.off..d.off + d.len] == name
            })
            .copied()
    }

    /// The id of `name`, interning it, with one more reference.
    fn acquire(&mut self, hasher: &DefaultHashBuilder, name: &[u8]) -> u32 {
        if let Some(id) = self.find(hasher, name) {
            self.items[id as usize].refs += 1;
            return id;
        }
        let off = self.arena.len();
        self.arena.extend_from_slice(name);
        let dir = Dir {
            off,
            len: name.len(),
            refs: 1,
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.items[id as usize] = dir;
                id
            }
            None => {
                self.items.push(dir);
                (self.items.len() - 1) as u32
            }
        };
        let (items, arena) = (&self.items, &self.arena);
        self.table.insert_unique(hasher.hash_one(name), id, |&i| {
            let d = items[i as usize];
            hasher.hash_one(&arena[d.off..d.off + d.len])
        });
        id
    }

    fn release(&mut self, hasher: &DefaultHashBuilder, id: u32) {
        let d = &mut self.items[id as usize];
        d.refs -= 1;
        if d.refs > 0 {
            return;
        }
        let d = *d;
        let hash = hasher.hash_one(&self.arena[d.off..d.off + d.len]);
        if let Ok(e) = self.table.find_entry(hash, |&i| i == id) {
            e.remove();
        }
        self.free.push(id);
        self.garbage += d.len;
        if self.garbage > 64 * 1024 && self.garbage * 2 > self.arena.len() {
            let mut arena = Vec::with_capacity(self.arena.len() - self.garbage);
            for d in self.items.iter_mut().filter(|d| d.refs > 0) {
                let off = arena.len();
                arena.extend_from_slice(&self.arena[d.off..d.off + d.len]);
                d.off = off;
            }
            self.arena = arena;
            self.garbage = 0;
        }
    }
}

#[derive(Debug, Default)]
pub(super) struct Index {
    /// Slot ids, hashed by (directory id, leaf).
    table: HashTable<u32>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    leaves: Vec<u8>,
    /// Bytes of `leaves` no slot uses.
    garbage: usize,
    dirs: Dirs,
    hasher: DefaultHashBuilder,
    /// Recent stats, by slot; pruned of stale ones as it grows.
    seen: HashMap<u32, Seen>,
    prune_at: usize,
    /// The last use stamp given.
    clock: u64,
    versions: u32,
    /// The oldest entries at the last pass, as (stamp, slot), oldest last.
    victims: Vec<(u64, u32)>,
    bytes: u64,
    len: usize,
}

/// Milliseconds since the Unix epoch.
fn millis(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn split(key: &str) -> (&[u8], &[u8]) {
    match key.rsplit_once('/') {
        Some((dir, leaf)) => (dir.as_bytes(), leaf.as_bytes()),
        None => (b"", key.as_bytes()),
    }
}

impl Index {
    /// Bytes held by indexed entries.
    pub(super) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Number of indexed entries.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Heap bytes the index holds (capacity, not only use), for the metrics.
    pub(super) fn memory(&self) -> usize {
        self.table.allocation_size()
            + self.slots.capacity() * size_of::<Slot>()
            + self.free.capacity() * 4
            + self.leaves.capacity()
            + self.dirs.table.allocation_size()
            + self.dirs.items.capacity() * size_of::<Dir>()
            + self.dirs.free.capacity() * 4
            + self.dirs.arena.capacity()
            + self.seen.capacity() * (size_of::<(u32, Seen)>() + 1)
            + self.victims.capacity() * size_of::<(u64, u32)>()
    }

    fn stamp(&mut self) -> u64 {
        self.clock = millis(SystemTime::now()).max(self.clock + 1);
        self.clock
    }

    fn slot_hash(hasher: &DefaultHashBuilder, dir: u32, leaf: &[u8]) -> u64 {
        hasher.hash_one((dir, leaf))
    }

    fn find(&self, key: &str) -> Option<u32> {
        let (dir, leaf) = split(key);
        let dir = self.dirs.find(&self.hasher, dir)?;
        let (slots, leaves) = (&self.slots, &self.leaves);
        self.table
            .find(Self::slot_hash(&self.hasher, dir, leaf), |&id| {
                let s = &slots[id as usize];
                s.dir == dir && s.leaf(leaves) == leaf
            })
            .copied()
    }

    /// Whether `key` is indexed.
    pub(super) fn contains(&self, key: &str) -> bool {
        self.find(key).is_some()
    }

    /// Marks `key` used. `None` if it is not cached; otherwise the entry's version and what was
    /// seen of its file within [`STAT_FRESH`], if anything.
    pub(super) fn touch(
        &mut self,
        key: &str,
        now: Instant,
    ) -> Option<(u32, Option<(u64, SystemTime)>)> {
        let id = self.find(key)?;
        let used = self.stamp();
        let slot = &mut self.slots[id as usize];
        slot.used = used;
        let version = slot.version;
        let seen = self
            .seen
            .get(&id)
            .filter(|s| s.version == version && now.duration_since(s.at) < STAT_FRESH)
            .map(|s| (s.len, s.modified));
        Some((version, seen))
    }

    /// Records what a stat of `key`'s file showed, unless a newer version was committed since.
    pub(super) fn saw(
        &mut self,
        key: &str,
        version: u32,
        at: Instant,
        len: u64,
        modified: SystemTime,
    ) {
        let Some(id) = self.find(key) else { return };
        if self.slots[id as usize].version != version {
            return;
        }
        self.seen.insert(
            id,
            Seen {
                at,
                version,
                len,
                modified,
            },
        );
        if self.seen.len() > self.prune_at {
            self.seen
                .retain(|_, s| at.saturating_duration_since(s.at) < STAT_FRESH);
            self.prune_at = (self.seen.len() * 2).max(1024);
        }
    }

    /// Indexes a new version of `key`, as just used.
    pub(super) fn insert(&mut self, key: &str, size: u64) {
        let used = self.stamp();
        match self.find(key) {
            Some(id) => {
                self.versions = self.versions.wrapping_add(1);
                let slot = &mut self.slots[id as usize];
                self.bytes = self.bytes - slot.size + size;
                slot.size = size;
                slot.used = used;
                slot.version = self.versions;
                self.seen.remove(&id);
            }
            None => self.add(key, size, used),
        }
    }

    /// Indexes `key`, found on disk with modification time `modified`, unless it is indexed
    /// already (a commit of this run is newer than what a scan found). Returns whether it was
    /// added.
    pub(super) fn insert_found(&mut self, key: &str, size: u64, modified: SystemTime) -> bool {
        if self.contains(key) {
            return false;
        }
        self.add(key, size, millis(modified));
        true
    }

    fn add(&mut self, key: &str, size: u64, used: u64) {
        let (dir, leaf) = split(key);
        // A file name is at most 255 bytes; a longer leaf cannot be a file of the cache.
        let Ok(leaf_len) = u8::try_from(leaf.len()) else {
            return;
        };
        let dir = self.dirs.acquire(&self.hasher, dir);
        let loc = ((self.leaves.len() as u64) << 8) | u64::from(leaf_len);
        self.leaves.extend_from_slice(leaf);
        self.versions = self.versions.wrapping_add(1);
        let slot = Slot {
            loc,
            size,
            used,
            dir,
            version: self.versions,
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.slots[id as usize] = slot;
                id
            }
            None => {
                self.slots.push(slot);
                (self.slots.len() - 1) as u32
            }
        };
        let (slots, leaves, hasher) = (&self.slots, &self.leaves, &self.hasher);
        self.table
            .insert_unique(Self::slot_hash(hasher, dir, leaf), id, |&i| {
                let s = &slots[i as usize];
                Self::slot_hash(hasher, s.dir, s.leaf(leaves))
            });
        self.bytes += size;
        self.len += 1;
    }

    pub(super) fn remove(&mut self, key: &str) -> bool {
        let Some(id) = self.find(key) else {
            return false;
        };
        let slot = self.slots[id as usize];
        let hash = Self::slot_hash(&self.hasher, slot.dir, slot.leaf(&self.leaves));
        if let Ok(e) = self.table.find_entry(hash, |&i| i == id) {
            e.remove();
        }
        self.dirs.release(&self.hasher, slot.dir);
        self.slots[id as usize].dir = FREE;
        self.free.push(id);
        self.seen.remove(&id);
        self.garbage += (slot.loc & 0xff) as usize;
        self.bytes -= slot.size;
        self.len -= 1;
        if self.garbage > 64 * 1024 && self.garbage * 2 > self.leaves.len() {
            self.compact_leaves();
        }
        true
    }

    fn compact_leaves(&mut self) {
        let mut leaves = Vec::with_capacity(self.leaves.len() - self.garbage);
        for s in self.slots.iter_mut().filter(|s| s.dir != FREE) {
            let leaf = s.leaf(&self.leaves);
            let loc = ((leaves.len() as u64) << 8) | (s.loc & 0xff);
            leaves.extend_from_slice(leaf);
            s.loc = loc;
        }
        self.leaves = leaves;
        self.garbage = 0;
    }

    fn key_of(&self, slot: &Slot, out: &mut String) {
        out.clear();
        let dir = self.dirs.name(slot.dir);
        // Both halves came from one `&str` split at a `/`.
        out.push_str(std::str::from_utf8(dir).unwrap_or_default());
        if !dir.is_empty() {
            out.push('/');
        }
        out.push_str(std::str::from_utf8(slot.leaf(&self.leaves)).unwrap_or_default());
    }

    /// The least recently used entry.
    pub(super) fn oldest(&mut self) -> Option<String> {
        loop {
            if self.victims.is_empty() {
                self.gather_victims();
            }
            let (used, id) = self.victims.pop()?;
            let slot = self.slots[id as usize];
            if slot.dir != FREE && slot.used == used {
                let mut key = String::new();
                self.key_of(&slot, &mut key);
                return Some(key);
            }
        }
    }

    /// One pass over the slots for the oldest few.
    fn gather_victims(&mut self) {
        let want = (self.len / 64).clamp(16, 4096);
        let mut heap = BinaryHeap::with_capacity(want + 1);
        for (id, s) in self.slots.iter().enumerate() {
            if s.dir == FREE {
                continue;
            }
            heap.push((s.used, id as u32));
            if heap.len() > want {
                heap.pop();
            }
        }
        // Ascending, then reversed: oldest last, for pop.
        self.victims = heap.into_sorted_vec();
        self.victims.reverse();
    }

    /// Calls `f` with the key, size and last use of up to `max` entries from slot `from` on;
    /// returns the slot to continue from, or `None` at the end. For reports that visit every
    /// entry a batch at a time, releasing the lock between batches.
    pub(super) fn visit(
        &self,
        from: usize,
        max: usize,
        mut f: impl FnMut(&str, u64, SystemTime),
    ) -> Option<usize> {
        let end = (from + max).min(self.slots.len());
        let mut key = String::new();
        for s in self.slots.get(from..end).unwrap_or_default() {
            if s.dir != FREE {
                self.key_of(s, &mut key);
                f(
                    &key,
                    s.size,
                    SystemTime::UNIX_EPOCH + Duration::from_millis(s.used),
                );
            }
        }
        (end < self.slots.len()).then_some(end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sizes_and_reuse() {
        let mut idx = Index::default();
        idx.insert("mod/a.com/m/@v/v1.0.0.zip", 10);
        idx.insert("mod/a.com/m/@v/v1.0.0.mod", 3);
        idx.insert("top", 1);
        assert_eq!((idx.len(), idx.bytes()), (3, 14));
        assert!(idx.contains("mod/a.com/m/@v/v1.0.0.zip"));
        assert!(idx.contains("top"));
        assert!(!idx.contains("mod/a.com/m/@v/v1.0.0.info"));
        assert!(!idx.contains("mod/a.com/m/@v"));
        idx.insert("mod/a.com/m/@v/v1.0.0.zip", 20);
        assert_eq!((idx.len(), idx.bytes()), (3, 24));
        assert!(!idx.insert_found("top", 5, SystemTime::UNIX_EPOCH));
        assert!(idx.remove("mod/a.com/m/@v/v1.0.0.zip"));
        assert!(!idx.remove("mod/a.com/m/@v/v1.0.0.zip"));
        assert_eq!((idx.len(), idx.bytes()), (2, 4));
        idx.insert("mod/b.com/n/@v/list", 7);
        let mut all = vec![];
        let mut from = Some(0);
        while let Some(f) = from {
            from = idx.visit(f, 1, |k, s, _| all.push((k.to_string(), s)));
        }
        all.sort();
        assert_eq!(
            all,
            [
                ("mod/a.com/m/@v/v1.0.0.mod".to_string(), 3),
                ("mod/b.com/n/@v/list".to_string(), 7),
                ("top".to_string(), 1)
            ]
        );
    }

    #[test]
    fn oldest_follows_use_and_found_times() {
        let mut idx = Index::default();
        let long_ago = SystemTime::now() - Duration::from_secs(3600);
        for i in 0..100 {
            idx.insert_found(
                &format!("k/{i}"),
                1,
                long_ago + Duration::from_secs(100 - i),
            );
        }
        idx.insert("k/new", 1);
        assert!(idx.touch("k/99", Instant::now()).is_some());
        // Oldest found first (k/99 was used, so it is newest), then k/new.
        let mut order = vec![];
        while let Some(k) = idx.oldest() {
            idx.remove(&k);
            order.push(k);
        }
        let mut want: Vec<String> = (0..99).rev().map(|i| format!("k/{i}")).collect();
        want.push("k/new".into());
        want.push("k/99".into());
        assert_eq!(order, want);
        assert_eq!((idx.len(), idx.bytes()), (0, 0));
    }

    #[test]
    fn a_stat_taken_before_a_commit_is_not_trusted_after_it() {
        let mut idx = Index::default();
        idx.insert("k/a", 1);
        let now = Instant::now();
        let (v1, _) = idx.touch("k/a", now).unwrap();
        idx.insert("k/a", 2); // a commit between the stat and its record
        idx.saw("k/a", v1, now, 1, SystemTime::UNIX_EPOCH);
        assert_eq!(idx.touch("k/a", now).unwrap().1, None);
        let (v2, _) = idx.touch("k/a", now).unwrap();
        idx.saw("k/a", v2, now, 2, SystemTime::UNIX_EPOCH);
        assert_eq!(
            idx.touch("k/a", now).unwrap().1,
            Some((2, SystemTime::UNIX_EPOCH))
        );
        assert_eq!(idx.touch("k/a", now + STAT_FRESH).unwrap().1, None, "stale");
    }

    #[test]
    fn arenas_are_compacted_and_entries_stay_small() {
        let mut idx = Index::default();
        let key = |i: usize| format!("mod/example.com/org/module{}/@v/v1.{i}.0.info", i % 500);
        for i in 0..200_000 {
            idx.insert(&key(i), 100);
        }
        let per_entry = idx.memory() / idx.len();
        assert!(per_entry <= 100, "{per_entry} bytes per entry");
        for i in 0..190_000 {
            assert!(idx.remove(&key(i)));
        }
        assert!(idx.leaves.len() < 2 * 10_000 * 12, "{}", idx.leaves.len());
        for i in 190_000..200_000 {
            assert!(idx.contains(&key(i)), "{}", key(i));
        }
        assert_eq!(idx.len(), 10_000);
    }
}
