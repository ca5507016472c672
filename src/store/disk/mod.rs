//! The on-disk cache: one file per entry under `<data>/cache/<key>`, written to `<data>/tmp` and
//! renamed into place once complete, so no partial entry is ever served. The gateway's fills are
//! fsynced in the background after the rename, and entries that may not have reached the disk
//! before an OS crash are removed at the next start ([`durable`](super::durable)); other writers
//! fsync before the rename.
//! A compact in-memory index ([`index`]), rebuilt by walking the directory at start (in the
//! background for the gateway, see [`open`]), tracks sizes and use order and evicts the least
//! recently used entries beyond the size bound.
//!
//! Keys are relative paths made by `policy::route` from validated module paths and versions; this
//! module additionally refuses any key with an empty, `.` or `..` component. Freshness is the
//! file's modification time; not-found answers are entries whose key ends in `@notfound`.

mod index;
mod open;
mod pending;
#[cfg(test)]
mod tests;

pub use open::Indexing;
pub use pending::{DirSync, PendingEntry};

use index::Index;
use open::scan;

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use crate::store::content::ContentError;
use crate::store::durable::{self, Tracker};
use crate::telemetry::metrics::StoreMetrics;

#[cfg(test)]
use modgate_core::cache_key::NOT_FOUND_SUFFIX;

/// The suffix not-found entries had before: removed when the gateway opens the cache.
const LEGACY_NOT_FOUND_SUFFIX: &str = ".notfound";

/// Cache failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid cache key {0:?}")]
    BadKey(String),
    #[error("cache I/O on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("entry rejected: {0}")]
    Rejected(#[from] ContentError),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A cached entry as found.
#[derive(Debug, Clone)]
pub struct Found {
    pub path: PathBuf,
    pub len: u64,
    pub modified: SystemTime,
}

impl Found {
    /// Time since the entry was written (zero if the clock went backwards).
    pub fn age(&self) -> std::time::Duration {
        SystemTime::now()
            .duration_since(self.modified)
            .unwrap_or_default()
    }
}

/// The disk cache.
#[derive(Debug)]
pub struct DiskCache {
    root: PathBuf,
    tmp: PathBuf,
    max_bytes: u64,
    index: Mutex<Index>,
    metrics: StoreMetrics,
    /// Bodies of small, recently served entries, keyed by path and checked against the file's
    /// length and modification time, so a hit needs no file read.
    /// (Keyed by the path's bytes: hashing a `Path` walks its components.)
    hot: moka::sync::Cache<
        std::ffi::OsString,
        (u64, SystemTime, bytes::Bytes),
        hashbrown::DefaultHashBuilder,
    >,
    /// Empty temporary files made ahead of need (see [`SPARE_FILES`]).
    spares: Mutex<Vec<(PathBuf, File)>>,
    /// A refill of `spares` is running.
    refilling: AtomicBool,
    /// Background fsyncs and the durable horizon (the gateway's cache only).
    durable: Option<Tracker>,
    /// Opened by the gateway (not by an operator command beside it).
    gateway: bool,
    /// What start-up owes an unclean previous run's entries, until the index is built.
    recovery: Option<open::Recovery>,
    /// Held (shared) by commits across their rename and indexing; held alone by the recovery of
    /// a suspect entry, so it never takes an entry this run wrote for one the last run left.
    gate: RwLock<()>,
    /// The index is still being built.
    indexing: AtomicBool,
    opened: Instant,
}

/// Empty temporary files kept ready, so a fill does not wait for the file system to allocate an
/// inode: on a busy ext4 without a journal a create scans every recently freed inode of its block
/// group and took 1.5 ms (strace), twice the upstream round trip of a small entry. They are made
/// in the background, on tokio's blocking pool, after a fill takes one.
const SPARE_FILES: usize = 8;

/// How long a background fsync waits for more fills to join its batch: a burst of misses then
/// shares one horizon update and one fsync per directory.
const FLUSH_DELAY: Duration = Duration::from_millis(20);

/// How long a settle at shutdown waits for a background batch to finish.
const SETTLE_WAIT: Duration = Duration::from_secs(5);

/// Largest entry kept in memory, and the memory given to such entries.
pub const HOT_ENTRY_MAX: u64 = 64 * 1024;
const HOT_BYTES: u64 = 32 * 1024 * 1024;

/// Where a cache under `data_dir` keeps its entries.
fn entries_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("cache")
}

/// The file of `key` under `root`: a relative `/`-separated path with no empty, `.` or `..`
/// element, NUL or backslash.
fn key_path(root: &Path, key: &str) -> Result<PathBuf, StoreError> {
    if key.is_empty()
        || key.starts_with('/')
        || key.contains('\0')
        || key.contains('\\')
        || key
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(StoreError::BadKey(key.to_string()));
    }
    Ok(root.join(key))
}

impl DiskCache {
    /// Opens (creating) the cache under `data_dir` for the gateway, as
    /// [`open_indexing`](Self::open_indexing) does, and returns once the index is built.
    pub fn open(
        data_dir: &Path,
        max_bytes: u64,
        metrics: StoreMetrics,
    ) -> Result<DiskCache, StoreError> {
        let cache = Self::open_inner(data_dir, max_bytes, metrics, true)?;
        cache.build_index()?;
        Ok(cache)
    }

    /// Opens (creating) the cache under `data_dir` for the gateway and returns at once, the
    /// index being built in the background: removes leftover temporary files; indexes the files
    /// present, using their modification times as last use; after an OS restart, removes the
    /// entries the previous run may not have made durable (or fsyncs them, on the same boot),
    /// each before it is served. Fills committed with [`PendingEntry::commit_then`] are fsynced
    /// in the background.
    pub fn open_indexing(
        data_dir: &Path,
        max_bytes: u64,
        metrics: StoreMetrics,
    ) -> Result<Arc<DiskCache>, StoreError> {
        let cache = Arc::new(Self::open_inner(data_dir, max_bytes, metrics, true)?);
        cache.index_in_background()?;
        Ok(cache)
    }

    /// Opens the cache for an operator command while a gateway may be running, with its index
    /// built: temporary files (fills in progress) are left alone.
    pub fn open_shared(
        data_dir: &Path,
        max_bytes: u64,
        metrics: StoreMetrics,
    ) -> Result<DiskCache, StoreError> {
        let cache = Self::open_inner(data_dir, max_bytes, metrics, false)?;
        cache.build_index()?;
        Ok(cache)
    }

    /// Fsyncs every committed entry still waiting for it (waiting up to [`SETTLE_WAIT`] for a
    /// background batch) and records a clean stop, after which a restart, on any boot, removes
    /// nothing. Blocking; for shutdown, after the last request: later fills are fsynced before
    /// their rename.
    pub fn settle(&self) {
        let Some(tracker) = &self.durable else { return };
        let deadline = Instant::now() + SETTLE_WAIT;
        loop {
            while let Some(batch) = tracker.take() {
                self.flush(tracker, &batch);
            }
            if tracker.unsynced() == 0 || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        match tracker.close_clean() {
            Ok(true) => tracing::debug!("cache settled: clean stop recorded"),
            Ok(false) => {
                tracing::warn!("cache fills still in flight at stop; the next start checks them")
            }
            Err(e) => tracing::warn!(error = %e, "cannot record a clean stop of the cache"),
        }
    }

    /// Number of fills renamed into place whose fsync has not completed.
    pub fn unsynced(&self) -> usize {
        self.durable.as_ref().map_or(0, Tracker::unsynced)
    }

    fn flush(&self, tracker: &Tracker, batch: &durable::Batch) {
        let mut failed = vec![];
        let mut dirs = std::collections::BTreeSet::new();
        for (q, e) in durable::sync_batch(batch) {
            // The contents may never reach the disk: drop the entry rather than risk it, and
            // make the removal durable (a restart on this boot would not look for it).
            tracing::warn!(key = q.key, error = %e, "cannot sync a cache entry; removing it");
            self.metrics.errors.inc();
            self.remove(&q.key);
            if let Some(dir) = q.path.parent() {
                dirs.insert(dir.to_path_buf());
            }
            failed.push(q.id);
        }
        durable::sync_dirs(dirs);
        if let Err(e) = tracker.settled(batch, &failed) {
            tracing::warn!(error = %e, "cannot record the cache's durable horizon");
        }
    }

    /// Runs background fsyncs on tokio's blocking pool until the queue is empty, starting
    /// [`FLUSH_DELAY`] from now so that the fills of a burst share a batch.
    fn start_flush(self: &Arc<Self>, rt: &tokio::runtime::Handle) {
        let cache = self.clone();
        rt.spawn(async move {
            tokio::time::sleep(FLUSH_DELAY).await;
            let _ = tokio::task::spawn_blocking(move || {
                let Some(tracker) = &cache.durable else {
                    return;
                };
                while let Some(batch) = tracker.take() {
                    cache.flush(tracker, &batch);
                }
            })
            .await;
        });
    }

    fn publish(&self) {
        let idx = self.index.lock().expect("index poisoned");
        self.metrics.bytes.set(idx.bytes() as i64);
        self.metrics.entries.set(idx.len() as i64);
        self.metrics.index_bytes.set(idx.memory() as i64);
    }

    /// Calls `f` with the key, size and last use (or, if unused since start, modification) of
    /// every indexed entry, a batch at a time so that the index is never held long (entries
    /// changed meanwhile may be seen twice or not at all).
    pub fn for_each_entry(&self, mut f: impl FnMut(&str, u64, SystemTime)) {
        let mut from = Some(0);
        while let Some(at) = from {
            from = self
                .index
                .lock()
                .expect("index poisoned")
                .visit(at, 1024, &mut f);
        }
    }

    /// Every entry with its size and modification time, oldest first.
    pub fn list(&self) -> Vec<(String, u64, SystemTime)> {
        let mut found = vec![];
        let _ = scan(&self.root, &self.root, &mut found);
        found.sort_by_key(|(_, _, t)| *t);
        found
    }

    /// The directory holding the entries.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file behind `key` (whether or not it exists).
    pub fn file_of(&self, key: &str) -> Option<PathBuf> {
        self.path_of(key).ok()
    }

    /// The file behind `key` in the cache under `data_dir`, without opening it (for offline
    /// readers such as `modgate policy check`); `None` for a key the cache would refuse.
    pub fn file_in(data_dir: &Path, key: &str) -> Option<PathBuf> {
        key_path(&entries_dir(data_dir), key).ok()
    }

    /// Number of entries and bytes held.
    pub fn usage(&self) -> (usize, u64) {
        let idx = self.index.lock().expect("index poisoned");
        (idx.len(), idx.bytes())
    }

    fn path_of(&self, key: &str) -> Result<PathBuf, StoreError> {
        key_path(&self.root, key)
    }

    /// The entry for `key`, marking it used. Entries that vanished from disk are dropped. The
    /// file is looked at (one stat) at most once per [`STAT_FRESH`](index::STAT_FRESH), so a
    /// stream of hits on a small entry served from memory makes no system call. While the index
    /// is being built, a key it does not hold yet is looked for on disk.
    pub fn get(&self, key: &str) -> Option<Found> {
        let path = self.path_of(key).ok()?;
        let now = Instant::now();
        let touched = self.index.lock().expect("index poisoned").touch(key, now);
        let Some((version, seen)) = touched else {
            return if self.is_indexing() {
                self.get_unindexed(key, path, now)
            } else {
                None
            };
        };
        if let Some((len, modified)) = seen {
            return Some(Found {
                path,
                len,
                modified,
            });
        }
        match fs::metadata(&path) {
            Ok(meta) if meta.is_file() => {
                let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                self.index.lock().expect("index poisoned").saw(
                    key,
                    version,
                    now,
                    meta.len(),
                    modified,
                );
                Some(Found {
                    path,
                    len: meta.len(),
                    modified,
                })
            }
            _ => {
                self.index.lock().expect("index poisoned").remove(key);
                self.publish();
                None
            }
        }
    }

    /// `get` of a key the index build has not reached: indexes the file if it is there.
    fn get_unindexed(&self, key: &str, path: PathBuf, now: Instant) -> Option<Found> {
        let meta = fs::metadata(&path).ok().filter(|m| m.is_file())?;
        let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        if !self.admit(key, &path, meta.len(), modified) {
            return None;
        }
        if !self.is_indexing() {
            // The walk ended meanwhile and dealt with this entry: the index has the answer.
            return self.get(key);
        }
        // A suspect that stayed was synced, not changed: what was read still holds.
        let added = {
            let mut idx = self.index.lock().expect("index poisoned");
            let added = idx.insert_found(key, meta.len(), modified);
            if added && let Some((version, _)) = idx.touch(key, now) {
                idx.saw(key, version, now, meta.len(), modified);
            }
            added
        };
        if !added {
            // Committed (or found by the walk) meanwhile: what was read may be the old file.
            return self.get(key);
        }
        self.publish();
        Some(Found {
            path,
            len: meta.len(),
            modified,
        })
    }

    /// The body of a small entry if it is held in memory and still matches the file.
    pub fn hot_body(&self, found: &Found) -> Option<bytes::Bytes> {
        match self.hot.get(found.path.as_os_str()) {
            Some((len, modified, body)) if len == found.len && modified == found.modified => {
                Some(body)
            }
            _ => None,
        }
    }

    /// Keeps the body of a small entry in memory.
    pub fn keep_hot(&self, found: &Found, body: bytes::Bytes) {
        if found.len <= HOT_ENTRY_MAX && body.len() as u64 == found.len {
            self.hot.insert(
                found.path.as_os_str().to_owned(),
                (found.len, found.modified, body),
            );
        }
    }

    /// Names of the entries directly inside the key directory `dir_key` (no order).
    pub fn children(&self, dir_key: &str) -> Vec<String> {
        let Ok(dir) = self.path_of(dir_key) else {
            return vec![];
        };
        std::fs::read_dir(dir)
            .map(|it| {
                it.filter_map(|e| e.ok())
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Starts writing a new version of `key` into a temporary file: a spare one when there is
    /// one (and, inside a tokio runtime, a refill of the spares starts in the background).
    pub fn begin(self: &Arc<Self>, key: &str) -> Result<PendingEntry, StoreError> {
        let dest = self.path_of(key)?;
        let spare = self.spares.lock().expect("spares poisoned").pop();
        let (tmp_path, file) = match spare {
            Some(spare) => spare,
            None => self.new_tmp()?,
        };
        self.start_refill();
        Ok(PendingEntry {
            cache: self.clone(),
            key: key.to_string(),
            dest,
            tmp_path,
            file: Some(file),
            len: 0,
            id: self.durable.as_ref().map(Tracker::begin),
        })
    }

    fn new_tmp(&self) -> Result<(PathBuf, File), StoreError> {
        let name: [u8; 12] = rand::random();
        let tmp_path = self
            .tmp
            .join(name.iter().map(|b| format!("{b:02x}")).collect::<String>());
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&tmp_path)
            .map_err(io_err(&tmp_path))?;
        Ok((tmp_path, file))
    }

    /// Tops the spare temporary files up on tokio's blocking pool, unless a refill is running or
    /// there is no runtime (operator commands, unit tests).
    fn start_refill(self: &Arc<Self>) {
        if self.spares.lock().expect("spares poisoned").len() >= SPARE_FILES {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.refilling.swap(true, Ordering::AcqRel) {
            return;
        }
        let cache = self.clone();
        rt.spawn_blocking(move || {
            while cache.spares.lock().expect("spares poisoned").len() < SPARE_FILES {
                match cache.new_tmp() {
                    Ok(spare) => cache.spares.lock().expect("spares poisoned").push(spare),
                    Err(e) => {
                        // begin() will try (and report) again on its own.
                        tracing::debug!(error = %e, "cannot make a spare cache file");
                        break;
                    }
                }
            }
            cache.refilling.store(false, Ordering::Release);
        });
    }

    /// Stores a small entry in one step (fsynced in the background, like a fill).
    pub fn put(self: &Arc<Self>, key: &str, data: &[u8]) -> Result<(), StoreError> {
        let mut p = self.begin(key)?;
        p.write(data)?;
        p.commit_then(|_| Ok(()))?.run();
        Ok(())
    }

    /// Removes `key` (and its file).
    pub fn remove(&self, key: &str) {
        if let Ok(path) = self.path_of(key) {
            let _ = fs::remove_file(path);
        }
        self.index.lock().expect("index poisoned").remove(key);
        self.publish();
    }

    fn committed(&self, key: &str, len: u64) {
        self.index.lock().expect("index poisoned").insert(key, len);
        self.evict();
        self.publish();
    }

    /// Removes least recently used entries until the size bound holds; nothing while the index
    /// is being built.
    pub fn evict(&self) {
        if self.is_indexing() {
            return;
        }
        loop {
            let victim = {
                let mut idx = self.index.lock().expect("index poisoned");
                if idx.bytes() <= self.max_bytes {
                    break;
                }
                idx.oldest()
            };
            let Some(key) = victim else { break };
            if let Ok(path) = self.path_of(&key) {
                let _ = fs::remove_file(path);
            }
            self.index.lock().expect("index poisoned").remove(&key);
            self.metrics.evictions.inc();
            tracing::debug!(key, "evicted");
        }
        self.publish();
    }

    /// Counts a failed cache write.
    pub fn count_error(&self) {
        self.metrics.errors.inc();
    }
}
