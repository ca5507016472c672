//! Deferred durability for the gateway's cache fills.
//!
//! A fill is renamed into place as soon as it is written and checked, before its client gets the
//! last byte: a `kill -9` of the gateway then loses nothing a client received, because the bytes
//! are in the kernel's page cache. What a rename does not give is survival of an OS crash or a
//! power cut; for that the file (and its directory) must be fsynced, which costs 0.5–1 ms per
//! entry on common disks — more than the upstream round trip of a small entry. So the fsyncs run
//! in the background, in batches, and the cache keeps a *horizon* on disk: a time before which
//! every entry is known to be durable.
//!
//! The horizon is the modification time of the file `<data>/durable`, whose contents are the
//! kernel's boot id when it was written. It is set (and the file fsynced) after each batch to the
//! start of the oldest fill still in flight or awaiting its fsync, or the present when there is
//! none. At start:
//!
//! - on another boot (an OS crash or power cut may have happened since), entries modified within
//!   [`MARGIN`] of the horizon or after it, and empty entries, are removed: they may be partial.
//!   They are fetched again on the next miss, like any other;
//! - on the same boot (the gateway restarted, or was killed), those entries are intact in the
//!   page cache and are fsynced instead;
//! - then the file is rewritten with this boot's id and the present as horizon.
//!
//! An entry's modification time is set by its writes (never set explicitly on this path), so it
//! is no earlier than the start of its fill; an inode written to disk carries its size and times
//! together, so one that reached the disk without its new contents is either empty or has a
//! modification time after the horizon.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// Name of the horizon file inside the data directory.
pub const HORIZON_FILE: &str = "durable";

/// Entries modified less than this before the horizon are treated as after it: file times come
/// from a coarse kernel clock (a few milliseconds behind), and the clock may be stepped back.
/// A wide margin costs little: only a restart of the OS discards entries, and only those
/// written within it.
pub const MARGIN: Duration = Duration::from_secs(60);

/// What start-up found about the previous run's unsynced entries.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Entries (keys) that may be partial after an OS crash and must be removed.
    pub discard: Vec<String>,
    /// Entries (keys) written by an earlier run of this boot, fsynced now.
    pub synced: usize,
}

/// The horizon file as read at start: the boot it was written on and its time.
#[derive(Debug, Clone)]
pub struct Horizon {
    pub boot: String,
    pub at: SystemTime,
}

/// The kernel's id of the running boot; a string that matches no recorded boot where there is
/// none (so every start is treated as possibly after a crash).
pub fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("unknown-{}", std::process::id()))
}

/// Reads `<data>/durable`. `None` when it does not exist: a new cache, or one written by a
/// version that fsynced every entry before its rename.
pub fn read_horizon(data_dir: &Path) -> io::Result<Option<Horizon>> {
    let path = data_dir.join(HORIZON_FILE);
    match fs::read_to_string(&path) {
        Ok(text) => {
            let at = fs::metadata(&path)?.modified()?;
            Ok(Some(Horizon {
                boot: text.trim().to_string(),
                at,
            }))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Which of `entries` (key, length, modification time) the previous run may have left without
/// their fsync, given the horizon it recorded.
pub fn suspects<'a>(
    horizon: &Horizon,
    entries: &'a [(String, u64, SystemTime)],
) -> impl Iterator<Item = &'a (String, u64, SystemTime)> {
    let line = horizon
        .at
        .checked_sub(MARGIN)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    entries
        .iter()
        .filter(move |(_, len, modified)| *len == 0 || *modified >= line)
}

/// Writes `<data>/durable` afresh (boot id, horizon now) and makes it durable; returns it open
/// for later horizon updates.
pub fn write_horizon(data_dir: &Path, boot: &str) -> io::Result<File> {
    let path = data_dir.join(HORIZON_FILE);
    let tmp = data_dir.join(format!("{HORIZON_FILE}.tmp"));
    let mut f = File::create(&tmp)?;
    f.write_all(format!("{boot}\n").as_bytes())?;
    f.sync_all()?;
    fs::rename(&tmp, &path)?;
    File::open(data_dir)?.sync_all()?;
    File::options().write(true).open(&path)
}

/// Fills in flight and committed entries awaiting their fsync.
#[derive(Debug)]
pub struct Tracker {
    state: Mutex<State>,
    /// The horizon file, open for updates of its modification time.
    horizon: Mutex<File>,
}

#[derive(Debug, Default)]
struct State {
    next: u64,
    /// Fills begun and not yet durable nor abandoned: id -> when begun. Ids are handed out in
    /// the order of those times, so the first is the oldest.
    open: BTreeMap<u64, SystemTime>,
    /// Committed entries awaiting their fsync: id, key, file.
    queue: Vec<(u64, String, PathBuf)>,
    /// Entries queued or in a batch being synced.
    unsynced: usize,
    flushing: bool,
}

/// One flush's work, taken from the queue.
pub type Batch = Vec<(u64, String, PathBuf)>;

impl Tracker {
    pub fn new(horizon: File) -> Tracker {
        Tracker {
            state: Mutex::new(State::default()),
            horizon: Mutex::new(horizon),
        }
    }

    /// Registers a fill starting now.
    pub fn begin(&self) -> u64 {
        let mut st = self.state.lock().expect("durability state poisoned");
        st.next += 1;
        let id = st.next;
        st.open.insert(id, SystemTime::now());
        id
    }

    /// A fill that ended without an entry, or whose entry is durable by other means.
    pub fn release(&self, id: u64) {
        self.state
            .lock()
            .expect("durability state poisoned")
            .open
            .remove(&id);
    }

    /// Queues a renamed entry's fsync. Returns true when the caller must start a flush (none is
    /// running).
    pub fn queue(&self, id: u64, key: String, file: PathBuf) -> bool {
        let mut st = self.state.lock().expect("durability state poisoned");
        st.queue.push((id, key, file));
        st.unsynced += 1;
        !std::mem::replace(&mut st.flushing, true)
    }

    /// The queued entries, or `None` (and the flush ends) when there are none.
    pub fn take(&self) -> Option<Batch> {
        let mut st = self.state.lock().expect("durability state poisoned");
        if st.queue.is_empty() {
            st.flushing = false;
            return None;
        }
        Some(std::mem::take(&mut st.queue))
    }

    /// Number of entries renamed into place and not yet fsynced (queued or being synced).
    pub fn unsynced(&self) -> usize {
        self.state
            .lock()
            .expect("durability state poisoned")
            .unsynced
    }

    /// Records that the entries of `batch` are durable, except those listed in `failed`, and
    /// moves the horizon on disk. A failed one stays open for the rest of the run, holding the
    /// horizon back: its removal may not reach the disk either.
    pub fn settled(&self, batch: &Batch, failed: &[u64]) -> io::Result<()> {
        let at = {
            let mut st = self.state.lock().expect("durability state poisoned");
            for (id, _, _) in batch {
                if !failed.contains(id) {
                    st.open.remove(id);
                }
            }
            st.unsynced = st.unsynced.saturating_sub(batch.len());
            st.open
                .values()
                .next()
                .copied()
                .unwrap_or_else(SystemTime::now)
        };
        let f = self.horizon.lock().expect("horizon poisoned");
        f.set_modified(at)?;
        f.sync_all()
    }
}

/// Fsyncs the files of `batch` and their directories. Returns the entries whose fsync failed
/// (their contents may never reach the disk) with the error; files removed or replaced since are
/// skipped (a replacement has its own place in a batch).
pub fn sync_batch(batch: &Batch) -> Vec<(u64, String, io::Error)> {
    let mut failed = vec![];
    let mut dirs = BTreeSet::new();
    for (id, key, path) in batch {
        match File::open(path) {
            Ok(f) => {
                if let Err(e) = f.sync_all() {
                    failed.push((*id, key.clone(), e));
                    continue;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => {
                failed.push((*id, key.clone(), e));
                continue;
            }
        }
        if let Some(dir) = path.parent() {
            dirs.insert(dir.to_path_buf());
        }
    }
    for dir in dirs {
        if let Err(e) = File::open(&dir).and_then(|d| d.sync_all()) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot sync a cache directory");
        }
    }
    failed
}

/// Fsyncs files and then their directories (start-up, same boot).
pub fn sync_paths(paths: &[PathBuf]) {
    let batch: Batch = paths
        .iter()
        .map(|p| (0, p.display().to_string(), p.clone()))
        .collect();
    for (_, key, e) in sync_batch(&batch) {
        tracing::warn!(file = %key, error = %e, "cannot sync a cache file");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, len: u64, modified: SystemTime) -> (String, u64, SystemTime) {
        (key.to_string(), len, modified)
    }

    #[test]
    fn suspects_are_entries_near_or_after_the_horizon_and_empty_ones() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let h = Horizon {
            boot: "b".into(),
            at,
        };
        let entries = vec![
            entry("old", 10, at - 2 * MARGIN),
            entry("old-empty", 0, at - 2 * MARGIN),
            entry("within-margin", 10, at - MARGIN + Duration::from_millis(1)),
            entry(
                "just-outside-margin",
                10,
                at - MARGIN - Duration::from_millis(1),
            ),
            entry("after", 10, at + Duration::from_secs(5)),
        ];
        let got: Vec<&str> = suspects(&h, &entries).map(|(k, _, _)| k.as_str()).collect();
        assert_eq!(got, ["old-empty", "within-margin", "after"]);
    }

    #[test]
    fn the_horizon_is_the_oldest_open_fill_or_now() {
        let dir = tempfile::tempdir().unwrap();
        let f = write_horizon(dir.path(), "boot-1").unwrap();
        let read = read_horizon(dir.path()).unwrap().unwrap();
        assert_eq!(read.boot, "boot-1");
        let t = Tracker::new(f);
        let a = t.begin();
        let b = t.begin();
        // A long fill: a began an hour ago.
        let a_began = SystemTime::now() - Duration::from_secs(3600);
        t.state.lock().unwrap().open.insert(a, a_began);
        let b_began = *t.state.lock().unwrap().open.get(&b).unwrap();
        assert!(t.queue(b, "k".into(), dir.path().join("nothing")));
        assert!(
            !t.queue(b, "k2".into(), dir.path().join("nothing")),
            "one flush at a time"
        );
        let batch = t.take().unwrap();
        assert_eq!(batch.len(), 2);
        t.settled(&batch, &[]).unwrap();
        // b is durable, a is still in flight: the horizon is a's start.
        let h = read_horizon(dir.path()).unwrap().unwrap();
        let off =
            h.at.duration_since(a_began)
                .unwrap_or_else(|e| e.duration());
        assert!(
            off < Duration::from_secs(1),
            "horizon {:?}, a began {a_began:?}",
            h.at
        );
        assert!(t.take().is_none(), "the flush ends when the queue is empty");
        t.release(a);
        // A failed fsync holds the horizon back to its fill's start.
        let c = t.begin();
        let c_began = *t.state.lock().unwrap().open.get(&c).unwrap();
        assert!(t.queue(c, "c".into(), dir.path().join("nothing")));
        let batch = t.take().unwrap();
        t.settled(&batch, &[c]).unwrap();
        let h = read_horizon(dir.path()).unwrap().unwrap();
        let off =
            h.at.duration_since(c_began)
                .unwrap_or_else(|e| e.duration());
        assert!(
            off < Duration::from_millis(100),
            "horizon {:?}, c began {c_began:?}",
            h.at
        );
        t.state.lock().unwrap().open.remove(&c);
        t.settled(&vec![], &[]).unwrap();
        let h = read_horizon(dir.path()).unwrap().unwrap();
        assert!(
            h.at + Duration::from_secs(1) > b_began,
            "nothing open: the horizon is the present"
        );
    }
}
