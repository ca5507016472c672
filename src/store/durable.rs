//! Deferred durability for the gateway's cache fills.
//!
//! A fill is renamed into place as soon as it is written and checked, before its client gets the
//! last byte: a `kill -9` of the gateway then loses nothing a client received, because the bytes
//! are in the kernel's page cache. What a rename does not give is survival of an OS crash or a
//! power cut; for that the file (and its directory) must be fsynced, which costs 0.5–1 ms per
//! entry on common disks — more than the upstream round trip of a small entry. So the fsyncs run
//! in the background, in batches, and the cache keeps a *horizon* on disk: every entry modified
//! more than [`MARGIN`] before it is known to be durable.
//!
//! The horizon is the modification time of the file `<data>/durable`, whose first line is the
//! kernel's boot id when it was written. It is set (and the file fsynced) after each batch to the
//! start of the oldest fill still in flight or awaiting its fsync, or the present when there is
//! none. A graceful stop that leaves nothing unsynced rewrites the file with a second line,
//! `clean`. At start:
//!
//! - after a clean stop, every entry is durable;
//! - on another boot (an OS crash or power cut may have happened since), entries modified within
//!   [`MARGIN`] of the horizon or after it, and empty entries, are removed (and the removal made
//!   durable): they may be partial. They are fetched again on the next miss, like any other;
//! - on the same boot (the gateway restarted, or was killed), those entries are intact in the
//!   page cache and are fsynced instead (or removed if that fails);
//! - then the file is rewritten with this boot's id and the present as horizon.
//!
//! An entry's modification time is set by its writes (never set explicitly on this path), so it
//! is no earlier than the start of its fill unless the clock was stepped back; a fill whose file
//! is older than the horizon allows (or that finds [`QUEUE_MAX`] entries waiting) is fsynced
//! before its rename instead. An inode written to disk carries its size and times together, so one
//! that reached the disk without its new contents is either empty or newer than the horizon. On
//! ext4 without a journal a directory entry can reach the disk before its inode; ext4 then does
//! not reuse an inode freed in the last minute (longer while the freeing is unwritten), so such an
//! entry points at an unused inode, which `e2fsck` clears, not at another entry's old contents.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use prometheus::IntGauge;

/// Name of the horizon file inside the data directory.
pub const HORIZON_FILE: &str = "durable";

/// Entries modified less than this before the horizon are treated as after it: file times come
/// from a coarse kernel clock (a few milliseconds behind), and the clock may be stepped back.
/// A wide margin costs little: only a restart of the OS discards entries, and only those
/// written within it.
pub const MARGIN: Duration = Duration::from_secs(60);

/// Most entries waiting for their background fsync (each holds its file open); beyond it a fill
/// is fsynced before its rename, so a disk that cannot keep up slows fills instead of piling up.
pub const QUEUE_MAX: usize = 256;

/// The horizon file as read at start.
#[derive(Debug, Clone)]
pub struct Horizon {
    /// The boot it was written on.
    pub boot: String,
    /// Its modification time.
    pub at: SystemTime,
    /// Written by a graceful stop that left nothing unsynced.
    pub clean: bool,
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
            let mut lines = text.lines();
            Ok(Some(Horizon {
                boot: lines.next().unwrap_or_default().trim().to_string(),
                clean: lines.next().map(str::trim) == Some("clean"),
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
    let clean = horizon.clean;
    entries
        .iter()
        .filter(move |(_, len, modified)| !clean && (*len == 0 || *modified >= line))
}

/// Writes `<data>/durable` afresh (boot id, `clean` if asked, horizon `at` or the present) and
/// makes it durable; returns it open for later horizon updates.
pub fn write_horizon(
    data_dir: &Path,
    boot: &str,
    clean: bool,
    at: Option<SystemTime>,
) -> io::Result<File> {
    let path = data_dir.join(HORIZON_FILE);
    let tmp = data_dir.join(format!("{HORIZON_FILE}.tmp"));
    let mut f = File::create(&tmp)?;
    let text = if clean {
        format!("{boot}\nclean\n")
    } else {
        format!("{boot}\n")
    };
    f.write_all(text.as_bytes())?;
    if let Some(at) = at {
        f.set_modified(at)?;
    }
    f.sync_all()?;
    fs::rename(&tmp, &path)?;
    File::open(data_dir)?.sync_all()?;
    File::options().write(true).open(&path)
}

/// One committed entry awaiting its fsync: its tracker id, key, path and the file it was
/// written through (kept open, so a write-back error is reported to this fsync).
#[derive(Debug)]
pub struct Queued {
    pub id: u64,
    pub key: String,
    pub path: PathBuf,
    pub file: File,
}

/// One flush's work, taken from the queue.
pub type Batch = Vec<Queued>;

/// Fills in flight and committed entries awaiting their fsync.
#[derive(Debug)]
pub struct Tracker {
    state: Mutex<State>,
    /// The horizon file, open for updates of its modification time.
    horizon: Mutex<File>,
    /// Entries queued or being synced, for the metrics.
    gauge: IntGauge,
    /// Where the horizon file lives, and this boot's id.
    data_dir: PathBuf,
    boot: String,
}

#[derive(Debug)]
struct State {
    next: u64,
    /// Fills begun and not yet durable nor abandoned: id -> when begun.
    open: BTreeMap<u64, SystemTime>,
    /// Committed entries awaiting their fsync.
    queue: Batch,
    /// Entries queued or in a batch being synced.
    unsynced: usize,
    flushing: bool,
    /// The horizon as last recorded on disk.
    recorded: SystemTime,
    /// A clean stop was recorded: nothing more may be deferred.
    closed: bool,
}

impl State {
    /// Nothing in flight or waiting for its fsync.
    fn idle(&self) -> bool {
        self.open.is_empty() && self.unsynced == 0
    }

    /// The horizon the state allows: the oldest start of a fill still open (not the first id's:
    /// the clock may have been stepped back), or the present.
    fn horizon(&self) -> SystemTime {
        self.open
            .values()
            .min()
            .copied()
            .unwrap_or_else(SystemTime::now)
    }
}

impl Tracker {
    /// A tracker for the horizon file in `data_dir`, just written on boot `boot` (see
    /// [`write_horizon`]), whose time is `recorded`. With `pin`, the horizon never moves past
    /// `recorded` in this run (start-up could not make some removals durable).
    pub fn new(
        data_dir: &Path,
        boot: &str,
        horizon: File,
        recorded: SystemTime,
        pin: bool,
        gauge: IntGauge,
    ) -> Tracker {
        // Fill ids start at 1; 0 is the pin.
        let open = if pin {
            BTreeMap::from([(0, recorded)])
        } else {
            BTreeMap::new()
        };
        Tracker {
            state: Mutex::new(State {
                next: 0,
                open,
                queue: Vec::new(),
                unsynced: 0,
                flushing: false,
                recorded,
                closed: false,
            }),
            horizon: Mutex::new(horizon),
            gauge,
            data_dir: data_dir.to_path_buf(),
            boot: boot.to_string(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("durability state poisoned")
    }

    /// Ends the pin of a tracker made with `pin` over the previous run's horizon file, once
    /// start-up has dealt with every entry that run may have left unsynced: writes the horizon
    /// file afresh for this boot, with the present as horizon.
    pub fn recovered(&self) -> io::Result<()> {
        let mut f = self.horizon.lock().expect("horizon poisoned");
        let mut st = self.state();
        if st.closed {
            return Ok(());
        }
        st.open.remove(&0);
        // As after a batch: no later than the start of any fill still open.
        let at = st.horizon();
        *f = write_horizon(&self.data_dir, &self.boot, false, Some(at))?;
        st.recorded = st.recorded.max(at);
        Ok(())
    }

    /// Registers a fill starting now.
    pub fn begin(&self) -> u64 {
        let mut st = self.state();
        st.next += 1;
        let id = st.next;
        st.open.insert(id, SystemTime::now());
        id
    }

    /// A fill that ended without an entry, or whose entry is durable by other means.
    pub fn release(&self, id: u64) {
        self.state().open.remove(&id);
    }

    /// Whether fill `id`, whose file was last modified at `modified`, may be renamed before its
    /// fsync: a crash must leave it newer than any horizon recorded while it waits (at most the
    /// start of the oldest open fill, itself included, or the horizon recorded already), and the
    /// queue must have room.
    pub fn may_defer(&self, id: u64, modified: SystemTime) -> bool {
        let st = self.state();
        let Some(began) = st.open.get(&id) else {
            return false;
        };
        !st.closed && st.queue.len() < QUEUE_MAX && modified + MARGIN >= (*began).max(st.recorded)
    }

    /// Records a clean stop if nothing is in flight or waiting for its fsync; from then on every
    /// fill is fsynced before its rename. Returns whether it did.
    pub fn close_clean(&self) -> io::Result<bool> {
        let mut f = self.horizon.lock().expect("horizon poisoned");
        let mut st = self.state();
        if !st.idle() {
            return Ok(false);
        }
        st.closed = true;
        *f = write_horizon(&self.data_dir, &self.boot, true, None)?;
        Ok(true)
    }

    /// Queues a renamed entry's fsync. Returns true when the caller must start a flush (none is
    /// running).
    pub fn queue(&self, entry: Queued) -> bool {
        let mut st = self.state();
        st.queue.push(entry);
        st.unsynced += 1;
        self.gauge.set(st.unsynced as i64);
        !std::mem::replace(&mut st.flushing, true)
    }

    /// The queued entries, or `None` (and the flush ends) when there are none.
    pub fn take(&self) -> Option<Batch> {
        let mut st = self.state();
        if st.queue.is_empty() {
            st.flushing = false;
            return None;
        }
        Some(std::mem::take(&mut st.queue))
    }

    /// Number of entries renamed into place and not yet fsynced (queued or being synced).
    pub fn unsynced(&self) -> usize {
        self.state().unsynced
    }

    /// Records that the entries of `batch` are durable, except those listed in `failed`, and
    /// moves the horizon on disk. A failed one stays open for the rest of the run, holding the
    /// horizon back: its removal may not reach the disk either.
    pub fn settled(&self, batch: &Batch, failed: &[u64]) -> io::Result<()> {
        let f = self.horizon.lock().expect("horizon poisoned");
        let at = {
            let mut st = self.state();
            for q in batch {
                if !failed.contains(&q.id) {
                    st.open.remove(&q.id);
                }
            }
            st.unsynced = st.unsynced.saturating_sub(batch.len());
            self.gauge.set(st.unsynced as i64);
            let at = st.horizon();
            // Until the write is known done, the disk may hold either value.
            st.recorded = st.recorded.max(at);
            at
        };
        f.set_modified(at)?;
        f.sync_all()?;
        self.state().recorded = at;
        Ok(())
    }
}

/// Fsyncs the files of `batch`, then every directory they were renamed into (which also makes
/// durable the removal of an entry evicted or replaced since). Returns the entries whose fsync
/// failed (their contents may never reach the disk) with the error.
pub fn sync_batch(batch: &Batch) -> Vec<(&Queued, io::Error)> {
    let mut failed = vec![];
    let mut dirs = BTreeSet::new();
    for q in batch {
        if let Err(e) = q.file.sync_all() {
            failed.push((q, e));
        } else if let Some(dir) = q.path.parent() {
            dirs.insert(dir.to_path_buf());
        }
    }
    // An entry whose directory cannot be synced is not durable either.
    let bad_dirs = sync_dirs(dirs);
    for q in batch {
        if let Some(dir) = q.path.parent()
            && bad_dirs.contains(dir)
        {
            let e = io::Error::other(format!("cannot sync directory {}", dir.display()));
            failed.push((q, e));
        }
    }
    failed
}

/// Fsyncs directories, logging failures; returns those that failed.
pub fn sync_dirs(dirs: impl IntoIterator<Item = PathBuf>) -> BTreeSet<PathBuf> {
    let mut bad = BTreeSet::new();
    for dir in dirs {
        if let Err(e) = File::open(&dir).and_then(|d| d.sync_all()) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot sync a cache directory");
            bad.insert(dir);
        }
    }
    bad
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, len: u64, modified: SystemTime) -> (String, u64, SystemTime) {
        (key.to_string(), len, modified)
    }

    fn gauge() -> IntGauge {
        IntGauge::new("u", "u").unwrap()
    }

    /// How far apart two times are, either way.
    fn apart(a: SystemTime, b: SystemTime) -> Duration {
        a.duration_since(b).unwrap_or_else(|e| e.duration())
    }

    #[test]
    fn suspects_are_entries_near_or_after_the_horizon_and_empty_ones_unless_stopped_clean() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut h = Horizon {
            boot: "b".into(),
            at,
            clean: false,
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
        h.clean = true;
        assert_eq!(suspects(&h, &entries).count(), 0);
    }

    #[test]
    fn the_horizon_file_records_the_boot_and_a_clean_stop() {
        let dir = tempfile::tempdir().unwrap();
        write_horizon(dir.path(), "boot-1", false, None).unwrap();
        let h = read_horizon(dir.path()).unwrap().unwrap();
        assert_eq!((h.boot.as_str(), h.clean), ("boot-1", false));
        write_horizon(dir.path(), "boot-1", true, None).unwrap();
        let h = read_horizon(dir.path()).unwrap().unwrap();
        assert_eq!((h.boot.as_str(), h.clean), ("boot-1", true));
        assert!(!dir.path().join("durable.tmp").exists());
    }

    /// Queues fill `id` with a file of its own.
    fn queue(t: &Tracker, dir: &Path, id: u64) -> bool {
        let path = dir.join(format!("f{id}"));
        let file = File::create(&path).unwrap();
        t.queue(Queued {
            id,
            key: format!("k{id}"),
            path,
            file,
        })
    }

    #[test]
    fn the_horizon_is_the_oldest_open_fill_or_now() {
        let dir = tempfile::tempdir().unwrap();
        let f = write_horizon(dir.path(), "boot-1", false, None).unwrap();
        let g = gauge();
        let t = Tracker::new(dir.path(), "boot-1", f, SystemTime::now(), false, g.clone());
        let a = t.begin();
        let b = t.begin();
        let c = t.begin();
        // A long fill: a began an hour ago. c, begun after a, carries an earlier time (the
        // clock was stepped back): the horizon is the oldest time, not the first id's.
        let hour = Duration::from_secs(3600);
        let a_began = SystemTime::now() - hour;
        let c_began = SystemTime::now() - 2 * hour;
        t.state().open.insert(a, a_began);
        t.state().open.insert(c, c_began);
        assert!(queue(&t, dir.path(), b));
        assert!(!queue(&t, dir.path(), b), "one flush at a time");
        assert_eq!((t.unsynced(), g.get()), (2, 2));
        let batch = t.take().unwrap();
        assert_eq!(batch.len(), 2);
        assert!(sync_batch(&batch).is_empty());
        t.settled(&batch, &[]).unwrap();
        assert_eq!((t.unsynced(), g.get()), (0, 0));
        let h = read_horizon(dir.path()).unwrap().unwrap();
        assert!(apart(h.at, c_began) < Duration::from_secs(1), "{:?}", h.at);
        assert!(t.take().is_none(), "the flush ends when the queue is empty");
        t.release(c);
        t.settled(&vec![], &[]).unwrap();
        let h = read_horizon(dir.path()).unwrap().unwrap();
        assert!(apart(h.at, a_began) < Duration::from_secs(1), "{:?}", h.at);
        // A failed fsync holds the horizon back to its fill's start, even once a is done.
        let d = t.begin();
        let d_began = SystemTime::now() - 3 * hour;
        t.state().open.insert(d, d_began);
        assert!(queue(&t, dir.path(), d));
        t.release(a);
        let batch = t.take().unwrap();
        t.settled(&batch, &[d]).unwrap();
        let h = read_horizon(dir.path()).unwrap().unwrap();
        assert!(apart(h.at, d_began) < Duration::from_secs(1), "{:?}", h.at);
        assert!(!t.state().idle());
        t.release(d);
        t.settled(&vec![], &[]).unwrap();
        let h = read_horizon(dir.path()).unwrap().unwrap();
        assert!(
            apart(h.at, SystemTime::now()) < Duration::from_secs(60),
            "nothing open: the horizon is the present, {:?}",
            h.at
        );
        assert!(t.state().idle());
    }

    #[test]
    fn a_fill_older_than_the_horizon_or_a_full_queue_is_not_deferred() {
        let dir = tempfile::tempdir().unwrap();
        let f = write_horizon(dir.path(), "boot-1", false, None).unwrap();
        let now = SystemTime::now();
        let t = Tracker::new(dir.path(), "boot-1", f, now, false, gauge());
        let a = t.begin();
        assert!(t.may_defer(a, now), "written just now");
        // The clock was stepped back by ten minutes after the horizon was recorded: the fill
        // began, and its file was written, before the horizon on disk.
        let earlier = now - 10 * MARGIN;
        t.state().open.insert(a, earlier);
        assert!(!t.may_defer(a, earlier));
        t.state().open.insert(a, now);
        assert!(!t.may_defer(9999, now), "not a known fill");
        for i in 0..QUEUE_MAX as u64 {
            queue(&t, dir.path(), 100 + i);
        }
        assert!(!t.may_defer(a, now), "the queue is full");
    }

    #[test]
    fn a_pinned_horizon_stays_put_for_the_run() {
        let dir = tempfile::tempdir().unwrap();
        let old = SystemTime::now() - 10 * MARGIN;
        let f = write_horizon(dir.path(), "boot-1", false, Some(old)).unwrap();
        let h = read_horizon(dir.path()).unwrap().unwrap();
        assert!(apart(h.at, old) < Duration::from_secs(1), "{:?}", h.at);
        let t = Tracker::new(dir.path(), "boot-1", f, old, true, gauge());
        let a = t.begin();
        assert!(queue(&t, dir.path(), a));
        let batch = t.take().unwrap();
        t.settled(&batch, &[]).unwrap();
        let h = read_horizon(dir.path()).unwrap().unwrap();
        assert!(apart(h.at, old) < Duration::from_secs(1), "{:?}", h.at);
        assert!(!t.close_clean().unwrap(), "never a clean stop");
    }

    #[test]
    fn a_clean_stop_is_recorded_only_when_nothing_is_open() {
        let dir = tempfile::tempdir().unwrap();
        let f = write_horizon(dir.path(), "boot-1", false, None).unwrap();
        let t = Tracker::new(dir.path(), "boot-1", f, SystemTime::now(), false, gauge());
        let a = t.begin();
        assert!(!t.close_clean().unwrap(), "a fill is in flight");
        assert!(!read_horizon(dir.path()).unwrap().unwrap().clean);
        assert!(t.may_defer(a, SystemTime::now()));
        t.release(a);
        assert!(t.close_clean().unwrap());
        assert!(read_horizon(dir.path()).unwrap().unwrap().clean);
        let b = t.begin();
        assert!(
            !t.may_defer(b, SystemTime::now()),
            "closed: nothing deferred"
        );
    }
}
