//! The in-memory index: sizes, use order and what was last seen of each file.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant, SystemTime};

/// How long a file's length and modification time, once read, are trusted without looking
/// again. Every change modgate makes goes through the index and is seen at once; changes made
/// to the directory by another process (`modgate cache verify`) are seen within this time.
pub(super) const STAT_FRESH: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub(super) struct Slot {
    size: u64,
    /// Tick of last use.
    tick: u64,
    /// Tick of the commit that made this version of the entry.
    version: u64,
    /// The file as last seen: when, its length and its modification time.
    seen: Option<(Instant, u64, SystemTime)>,
}

#[derive(Debug, Default)]
pub(super) struct Index {
    entries: HashMap<String, Slot>,
    /// tick -> key, oldest first
    order: BTreeMap<u64, String>,
    tick: u64,
    bytes: u64,
}

impl Index {
    /// Bytes held by indexed entries.
    pub(super) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Number of indexed entries.
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Marks `key` used. `None` if it is not cached; otherwise the entry's version and what was
    /// seen of its file within [`STAT_FRESH`], if anything.
    pub(super) fn touch(
        &mut self,
        key: &str,
        now: Instant,
    ) -> Option<(u64, Option<(u64, SystemTime)>)> {
        let slot = self.entries.get_mut(key)?;
        self.order.remove(&slot.tick);
        self.tick += 1;
        slot.tick = self.tick;
        self.order.insert(self.tick, key.to_string());
        let seen = slot
            .seen
            .filter(|(at, _, _)| now.duration_since(*at) < STAT_FRESH)
            .map(|(_, len, modified)| (len, modified));
        Some((slot.version, seen))
    }

    /// Records what a stat of `key`'s file showed, unless a newer version was committed since.
    pub(super) fn saw(
        &mut self,
        key: &str,
        version: u64,
        at: Instant,
        len: u64,
        modified: SystemTime,
    ) {
        if let Some(slot) = self.entries.get_mut(key)
            && slot.version == version
        {
            slot.seen = Some((at, len, modified));
        }
    }

    pub(super) fn insert(&mut self, key: &str, size: u64) {
        self.remove(key);
        self.tick += 1;
        self.entries.insert(
            key.to_string(),
            Slot {
                size,
                tick: self.tick,
                version: self.tick,
                seen: None,
            },
        );
        self.order.insert(self.tick, key.to_string());
        self.bytes += size;
    }

    pub(super) fn remove(&mut self, key: &str) -> bool {
        if let Some(slot) = self.entries.remove(key) {
            self.order.remove(&slot.tick);
            self.bytes -= slot.size;
            true
        } else {
            false
        }
    }

    pub(super) fn oldest(&self) -> Option<String> {
        self.order.values().next().cloned()
    }
}
