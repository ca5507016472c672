//! The on-disk cache: one file per entry under `<data>/cache/<key>`, written to `<data>/tmp` and
//! renamed into place once complete, so no partial entry is ever served. The gateway's fills are
//! fsynced in the background after the rename, and entries that may not have reached the disk
//! before an OS crash are removed at the next start ([`durable`](super::durable)); other writers
//! fsync before the rename.
//! An in-memory index (rebuilt by scanning the directory at start) tracks sizes and use order and
//! evicts the least recently used entries beyond the size bound.
//!
//! Keys are relative paths made by `policy::route` from validated module paths and versions; this
//! module additionally refuses any key with an empty, `.` or `..` component. Freshness is the
//! file's modification time; not-found answers are entries whose key ends in `@notfound`.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use prometheus::IntGauge;

use super::content::ContentError;
use super::durable::{self, Queued, Tracker};
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

/// How long a file's length and modification time, once read, are trusted without looking
/// again. Every change modgate makes goes through the index and is seen at once; changes made
/// to the directory by another process (`modgate cache verify`) are seen within this time.
const STAT_FRESH: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct Slot {
    size: u64,
    /// Tick of last use.
    tick: u64,
    /// Tick of the commit that made this version of the entry.
    version: u64,
    /// The file as last seen: when, its length and its modification time.
    seen: Option<(Instant, u64, SystemTime)>,
}

#[derive(Debug, Default)]
struct Index {
    entries: HashMap<String, Slot>,
    /// tick -> key, oldest first
    order: BTreeMap<u64, String>,
    tick: u64,
    bytes: u64,
}

impl Index {
    /// Marks `key` used. `None` if it is not cached; otherwise the entry's version and what was
    /// seen of its file within [`STAT_FRESH`], if anything.
    fn touch(&mut self, key: &str, now: Instant) -> Option<(u64, Option<(u64, SystemTime)>)> {
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
    fn saw(&mut self, key: &str, version: u64, at: Instant, len: u64, modified: SystemTime) {
        if let Some(slot) = self.entries.get_mut(key)
            && slot.version == version
        {
            slot.seen = Some((at, len, modified));
        }
    }

    fn insert(&mut self, key: &str, size: u64) {
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

    fn remove(&mut self, key: &str) -> bool {
        if let Some(slot) = self.entries.remove(key) {
            self.order.remove(&slot.tick);
            self.bytes -= slot.size;
            true
        } else {
            false
        }
    }

    fn oldest(&self) -> Option<String> {
        self.order.values().next().cloned()
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
    hot: moka::sync::Cache<PathBuf, (u64, SystemTime, bytes::Bytes)>,
    /// Empty temporary files made ahead of need (see [`SPARE_FILES`]).
    spares: Mutex<Vec<(PathBuf, File)>>,
    /// A refill of `spares` is running.
    refilling: AtomicBool,
    /// Background fsyncs and the durable horizon (the gateway's cache only).
    durable: Option<Tracker>,
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

impl DiskCache {
    /// Opens (creating) the cache under `data_dir` for the gateway: removes leftover temporary
    /// files and, after an OS restart, the entries the previous run may not have made durable
    /// (or fsyncs them, on the same boot); rebuilds the index from the files present (oldest
    /// modification first). Fills committed with [`PendingEntry::commit_then`] are then fsynced
    /// in the background.
    pub fn open(
        data_dir: &Path,
        max_bytes: u64,
        metrics: StoreMetrics,
    ) -> Result<DiskCache, StoreError> {
        Self::open_inner(data_dir, max_bytes, metrics, true)
    }

    /// Opens the cache for an operator command while a gateway may be running: temporary files
    /// (fills in progress) are left alone.
    pub fn open_shared(
        data_dir: &Path,
        max_bytes: u64,
        metrics: StoreMetrics,
    ) -> Result<DiskCache, StoreError> {
        Self::open_inner(data_dir, max_bytes, metrics, false)
    }

    fn open_inner(
        data_dir: &Path,
        max_bytes: u64,
        metrics: StoreMetrics,
        clear_tmp: bool,
    ) -> Result<DiskCache, StoreError> {
        let root = data_dir.join("cache");
        let tmp = data_dir.join("tmp");
        fs::create_dir_all(&root).map_err(io_err(&root))?;
        if clear_tmp && tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
        }
        fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
        let mut found = vec![];
        scan(&root, &root, &mut found).map_err(io_err(&root))?;
        if clear_tmp {
            // Not-found answers under the old suffix: seconds-long answers that could be
            // mistaken for another version's entry. A real entry of a version ending in
            // `.notfound` goes with them and is fetched again.
            found.retain(|(key, _, _)| {
                !key.ends_with(LEGACY_NOT_FOUND_SUFFIX) || fs::remove_file(root.join(key)).is_err()
            });
        }
        let durable = if clear_tmp {
            Some(Self::recover(
                data_dir,
                &root,
                &mut found,
                metrics.unsynced.clone(),
            )?)
        } else {
            None
        };
        found.sort_by_key(|(_, _, mtime)| *mtime);
        let mut index = Index::default();
        for (key, size, _) in found {
            index.insert(&key, size);
        }
        let cache = DiskCache {
            root,
            tmp,
            max_bytes,
            index: Mutex::new(index),
            metrics,
            hot: moka::sync::Cache::builder()
                .max_capacity(HOT_BYTES)
                .weigher(|_, v: &(u64, SystemTime, bytes::Bytes)| {
                    u32::try_from(v.2.len() + 128).unwrap_or(u32::MAX)
                })
                .build(),
            spares: Mutex::new(Vec::new()),
            refilling: AtomicBool::new(false),
            durable,
        };
        cache.evict();
        cache.publish();
        Ok(cache)
    }

    /// Deals with what the previous run left unsynced (see [`durable`]), drops removed entries
    /// from `found`, and starts a new horizon.
    fn recover(
        data_dir: &Path,
        root: &Path,
        found: &mut Vec<(String, u64, SystemTime)>,
        unsynced: IntGauge,
    ) -> Result<Tracker, StoreError> {
        let marker = data_dir.join(durable::HORIZON_FILE);
        let boot = durable::boot_id();
        let mut keep = None;
        if let Some(horizon) = durable::read_horizon(data_dir).map_err(io_err(&marker))? {
            let suspects: Vec<String> = durable::suspects(&horizon, found)
                .map(|(key, _, _)| key.clone())
                .collect();
            // On the same boot the page cache has them whole: fsync them, and drop any whose
            // fsync fails. On another boot they may be partial: drop them all.
            let same_boot = horizon.boot == boot;
            let mut gone = std::collections::HashSet::new();
            for key in &suspects {
                let path = root.join(key);
                if same_boot {
                    match File::open(&path).and_then(|f| f.sync_all()) {
                        Ok(()) => continue,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => {
                            tracing::warn!(key, error = %e, "cannot sync a cache entry; removing it")
                        }
                    }
                }
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err(&path)(e)),
                }
                gone.insert(key.as_str());
            }
            // The syncs, or the removals, reach the disk before the new horizon does; where a
            // directory cannot be synced, the old horizon is kept for this whole run.
            let bad = durable::sync_dirs(
                suspects
                    .iter()
                    .filter_map(|key| root.join(key).parent().map(Path::to_path_buf))
                    .collect::<std::collections::BTreeSet<_>>(),
            );
            if !bad.is_empty() {
                keep = Some(horizon.at);
            }
            found.retain(|(key, _, _)| !gone.contains(key.as_str()));
            if !same_boot && !gone.is_empty() {
                tracing::warn!(
                    removed = gone.len(),
                    "the system restarted since the cache was last used: removed the entries \
                     written in its last moments, which may not have reached the disk"
                );
            }
        }
        let horizon =
            durable::write_horizon(data_dir, &boot, false, keep).map_err(io_err(&marker))?;
        let recorded = keep.unwrap_or_else(SystemTime::now);
        Ok(Tracker::new(
            data_dir,
            &boot,
            horizon,
            recorded,
            keep.is_some(),
            unsynced,
        ))
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
        self.metrics.bytes.set(idx.bytes as i64);
        self.metrics.entries.set(idx.entries.len() as i64);
    }

    /// Every entry with its size and modification time, oldest first.
    pub fn list(&self) -> Vec<(String, u64, SystemTime)> {
        let mut found = vec![];
        let _ = scan(&self.root, &self.root, &mut found);
        found.sort_by_key(|(_, _, t)| *t);
        found
    }

    /// The file behind `key` (whether or not it exists).
    pub fn file_of(&self, key: &str) -> Option<PathBuf> {
        self.path_of(key).ok()
    }

    /// Number of entries and bytes held.
    pub fn usage(&self) -> (usize, u64) {
        let idx = self.index.lock().expect("index poisoned");
        (idx.entries.len(), idx.bytes)
    }

    fn path_of(&self, key: &str) -> Result<PathBuf, StoreError> {
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
        Ok(self.root.join(key))
    }

    /// The entry for `key`, marking it used. Entries that vanished from disk are dropped. The
    /// file is looked at (one stat) at most once per [`STAT_FRESH`], so a stream of hits on a
    /// small entry served from memory makes no system call.
    pub fn get(&self, key: &str) -> Option<Found> {
        let path = self.path_of(key).ok()?;
        let now = Instant::now();
        let (version, seen) = self.index.lock().expect("index poisoned").touch(key, now)?;
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

    /// The body of a small entry if it is held in memory and still matches the file.
    pub fn hot_body(&self, found: &Found) -> Option<bytes::Bytes> {
        match self.hot.get(&found.path) {
            Some((len, modified, body)) if len == found.len && modified == found.modified => {
                Some(body)
            }
            _ => None,
        }
    }

    /// Keeps the body of a small entry in memory.
    pub fn keep_hot(&self, found: &Found, body: bytes::Bytes) {
        if found.len <= HOT_ENTRY_MAX && body.len() as u64 == found.len {
            self.hot
                .insert(found.path.clone(), (found.len, found.modified, body));
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

    /// Removes least recently used entries until the size bound holds.
    pub fn evict(&self) {
        loop {
            let victim = {
                let idx = self.index.lock().expect("index poisoned");
                if idx.bytes <= self.max_bytes {
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

fn scan(root: &Path, dir: &Path, out: &mut Vec<(String, u64, SystemTime)>) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let ft = entry.file_type()?;
        let path = entry.path();
        if ft.is_dir() {
            scan(root, &path, out)?;
        } else if ft.is_file() {
            let meta = entry.metadata()?;
            let Ok(rel) = path.strip_prefix(root) else {
                continue;
            };
            let Some(key) = rel.to_str() else { continue };
            out.push((
                key.to_string(),
                meta.len(),
                meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            ));
        }
    }
    Ok(())
}

/// An entry being written. Dropping it without [`commit`](PendingEntry::commit) discards it.
#[derive(Debug)]
pub struct PendingEntry {
    cache: Arc<DiskCache>,
    key: String,
    dest: PathBuf,
    tmp_path: PathBuf,
    file: Option<File>,
    len: u64,
    /// The fill's place in the durability tracker, until it is durable or dropped.
    id: Option<u64>,
}

impl PendingEntry {
    /// Appends `data` (blocking; call from a blocking context for large writes).
    pub fn write(&mut self, data: &[u8]) -> Result<(), StoreError> {
        let file = self.file.as_mut().expect("file present until commit");
        file.write_all(data).map_err(io_err(&self.tmp_path))?;
        self.len += data.len() as u64;
        Ok(())
    }

    /// The temporary file, for writers that need to seek (zip).
    pub fn file_mut(&mut self) -> &mut File {
        self.file.as_mut().expect("file present until commit")
    }

    /// Bytes written so far through [`write`](Self::write).
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Fsyncs, runs `validate` on the complete file, then renames it into place atomically and
    /// fsyncs the directory: durable when it returns. For writers that set the file's times
    /// themselves, which the background path cannot vouch for.
    pub fn commit(
        self,
        validate: impl FnOnce(&File) -> Result<(), ContentError>,
    ) -> Result<(), StoreError> {
        self.finish(validate, false)?.run();
        Ok(())
    }

    /// Runs `validate` on the complete file and renames it into place: the entry is complete
    /// and in the index (and survives the gateway being killed). In the gateway's cache the
    /// fsyncs that make it survive an OS crash run in the background (see
    /// [`durable`](super::durable)) and the returned [`DirSync`] is empty; elsewhere the file is
    /// fsynced before the rename and the directory fsync is left to the returned [`DirSync`], so
    /// a caller can answer its client first. Either way a crash can lose the entry (a later
    /// miss), never leave a partial one that is served. `validate` must not set the file's times.
    pub fn commit_then(
        self,
        validate: impl FnOnce(&File) -> Result<(), ContentError>,
    ) -> Result<DirSync, StoreError> {
        self.finish(validate, true)
    }

    fn finish(
        mut self,
        validate: impl FnOnce(&File) -> Result<(), ContentError>,
        defer: bool,
    ) -> Result<DirSync, StoreError> {
        let file = self.file.take().expect("file present until commit");
        let mut meta = file.metadata().map_err(io_err(&self.tmp_path))?;
        if meta.len() == 0 {
            // Nothing was written, so the time is still that of the spare file it came from;
            // freshness is measured from it.
            file.set_modified(SystemTime::now())
                .map_err(io_err(&self.tmp_path))?;
            meta = file.metadata().map_err(io_err(&self.tmp_path))?;
        }
        self.len = meta.len();
        // The background fsync: in the gateway's cache, inside its runtime, when the tracker
        // can vouch for the file's time and has room.
        let background = match (&self.cache.durable, self.id, meta.modified()) {
            (Some(tracker), Some(id), Ok(modified)) if defer => {
                tokio::runtime::Handle::try_current()
                    .ok()
                    .filter(|_| tracker.may_defer(id, modified))
            }
            _ => None,
        };
        if background.is_none() {
            file.sync_all().map_err(io_err(&self.tmp_path))?;
        }
        validate(&file)?;
        if let Some(parent) = self.dest.parent() {
            fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        fs::rename(&self.tmp_path, &self.dest).map_err(io_err(&self.dest))?;
        self.cache.committed(&self.key, self.len);
        let id = self.id.take();
        match (background, &self.cache.durable, id) {
            (Some(rt), Some(tracker), Some(id)) => {
                let entry = Queued {
                    id,
                    key: self.key.clone(),
                    path: self.dest.clone(),
                    file,
                };
                if tracker.queue(entry) {
                    self.cache.start_flush(&rt);
                }
                Ok(DirSync(None))
            }
            (_, tracker, id) => {
                drop(file);
                if let (Some(tracker), Some(id)) = (tracker, id) {
                    tracker.release(id);
                }
                Ok(DirSync(self.dest.parent().map(Path::to_path_buf)))
            }
        }
    }
}

/// The directory fsync still owed by [`PendingEntry::commit_then`] (blocking).
#[derive(Debug)]
#[must_use = "the rename is not durable until the directory is synced"]
pub struct DirSync(Option<PathBuf>);

impl DirSync {
    pub fn run(self) {
        if let Some(dir) = self.0
            && let Ok(dir) = File::open(dir)
        {
            let _ = dir.sync_all();
        }
    }
}

impl Drop for PendingEntry {
    fn drop(&mut self) {
        if let (Some(tracker), Some(id)) = (&self.cache.durable, self.id) {
            tracker.release(id);
        }
        if self.file.is_some() || self.tmp_path.exists() {
            let _ = fs::remove_file(&self.tmp_path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::IntCounter;

    fn metrics() -> StoreMetrics {
        StoreMetrics {
            bytes: IntGauge::new("b", "b").unwrap(),
            entries: IntGauge::new("e", "e").unwrap(),
            evictions: IntCounter::new("v", "v").unwrap(),
            errors: IntCounter::new("r", "r").unwrap(),
            unsynced: IntGauge::new("u", "u").unwrap(),
        }
    }

    #[test]
    fn put_get_and_reject() {
        let dir = tempfile::tempdir().unwrap();
        let c = Arc::new(DiskCache::open(dir.path(), 1 << 20, metrics()).unwrap());
        c.put("mod/x.com/m/@v/list", b"v1.0.0\n").unwrap();
        let f = c.get("mod/x.com/m/@v/list").unwrap();
        assert_eq!(std::fs::read(&f.path).unwrap(), b"v1.0.0\n");
        assert!(c.get("mod/x.com/m/@v/other").is_none());
        for bad in ["../x", "a/../b", "/abs", "a//b", "", "a/./b"] {
            assert!(matches!(c.begin(bad), Err(StoreError::BadKey(_))), "{bad}");
        }
        let mut p = c.begin("mod/x.com/m/@v/v1.0.0.zip").unwrap();
        p.write(b"bad").unwrap();
        assert!(
            p.commit(|_| Err(io::Error::other("corrupt").into()))
                .is_err()
        );
        assert!(c.get("mod/x.com/m/@v/v1.0.0.zip").is_none());
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0,
            "no temp file left"
        );
    }

    #[test]
    fn uncommitted_writes_are_never_visible_and_tmp_is_cleared_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let c = Arc::new(DiskCache::open(dir.path(), 1 << 20, metrics()).unwrap());
        let mut p = c.begin("k/a").unwrap();
        p.write(b"partial").unwrap();
        std::mem::forget(p); // as if the process died here
        assert!(c.get("k/a").is_none());
        let again = DiskCache::open(dir.path(), 1 << 20, metrics()).unwrap();
        assert!(again.get("k/a").is_none());
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
    }

    #[test]
    fn evicts_least_recently_used_and_survives_restart() {
        let dir = tempfile::tempdir().unwrap();
        let c = Arc::new(DiskCache::open(dir.path(), 300, metrics()).unwrap());
        c.put("k/a", &[0; 100]).unwrap();
        c.put("k/b", &[0; 100]).unwrap();
        c.put("k/c", &[0; 100]).unwrap();
        assert!(c.get("k/a").is_some()); // a is now the most recently used
        c.put("k/d", &[0; 100]).unwrap(); // over the bound: b goes
        assert!(c.get("k/b").is_none());
        assert!(c.get("k/a").is_some() && c.get("k/c").is_some() && c.get("k/d").is_some());
        assert_eq!(c.usage(), (3, 300));
        drop(c);
        let c = DiskCache::open(dir.path(), 300, metrics()).unwrap();
        assert_eq!(c.usage(), (3, 300));
        assert!(c.get("k/a").is_some());
    }

    #[test]
    fn not_found_entries_under_the_old_suffix_are_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let c = Arc::new(DiskCache::open(dir.path(), 1 << 20, metrics()).unwrap());
            c.put("k/v1.0.0-x.info.notfound", b"404\n").unwrap();
            c.put(&format!("k/v1.0.0-y.info{NOT_FOUND_SUFFIX}"), b"404\n")
                .unwrap();
            c.put("k/v1.0.0.info", b"{}").unwrap();
            c.settle();
        }
        let c = DiskCache::open(dir.path(), 1 << 20, metrics()).unwrap();
        assert!(c.get("k/v1.0.0-x.info.notfound").is_none());
        assert!(!dir.path().join("cache/k/v1.0.0-x.info.notfound").exists());
        assert!(
            c.get(&format!("k/v1.0.0-y.info{NOT_FOUND_SUFFIX}"))
                .is_some()
        );
        assert!(c.get("k/v1.0.0.info").is_some());
        assert_eq!(c.usage().0, 2);
    }

    #[test]
    fn an_empty_entry_is_as_new_as_its_commit() {
        let dir = tempfile::tempdir().unwrap();
        let c = Arc::new(DiskCache::open(dir.path(), 1 << 20, metrics()).unwrap());
        let p = c.begin("k/empty").unwrap();
        // As a spare file made a while before the fill that takes it.
        let old = SystemTime::now() - Duration::from_secs(3600);
        File::options()
            .write(true)
            .open(&p.tmp_path)
            .unwrap()
            .set_modified(old)
            .unwrap();
        p.commit_then(|_| Ok(())).unwrap().run();
        let found = c.get("k/empty").unwrap();
        let age = SystemTime::now()
            .duration_since(fs::metadata(&found.path).unwrap().modified().unwrap())
            .unwrap_or_default();
        assert!(age < Duration::from_secs(600), "{age:?}");
    }

    /// Writes the horizon file as a run on `boot` would have left it, with time `at`.
    fn fake_horizon(data: &Path, boot: &str, at: SystemTime, clean: bool) {
        durable::write_horizon(data, boot, clean, Some(at)).unwrap();
    }

    fn set_mtime(c: &DiskCache, key: &str, at: SystemTime) {
        File::options()
            .write(true)
            .open(c.file_of(key).unwrap())
            .unwrap()
            .set_modified(at)
            .unwrap();
    }

    /// Three entries as a run might leave them: one well before its horizon, one after it,
    /// and an empty one (an inode that reached the disk without its contents).
    fn entries_around_a_horizon(dir: &Path) -> SystemTime {
        let c = Arc::new(DiskCache::open(dir, 1 << 20, metrics()).unwrap());
        c.put("k/durable", b"old").unwrap();
        c.put("k/late", b"new").unwrap();
        c.put("k/empty", b"").unwrap();
        let horizon = SystemTime::now() - 4 * durable::MARGIN;
        set_mtime(&c, "k/durable", horizon - 2 * durable::MARGIN);
        set_mtime(&c, "k/late", horizon + Duration::from_secs(1));
        set_mtime(&c, "k/empty", horizon - 2 * durable::MARGIN);
        horizon
    }

    #[test]
    fn after_an_os_restart_entries_the_last_run_may_not_have_synced_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let horizon = entries_around_a_horizon(dir.path());
        fake_horizon(dir.path(), "an-earlier-boot", horizon, false);
        let c = DiskCache::open(dir.path(), 1 << 20, metrics()).unwrap();
        assert!(c.get("k/durable").is_some());
        assert!(c.get("k/late").is_none(), "written after the horizon");
        assert!(c.get("k/empty").is_none(), "empty");
        assert!(!dir.path().join("cache/k/late").exists());
        assert!(!dir.path().join("cache/k/empty").exists());
        assert_eq!(c.usage(), (1, 3));
        // The new horizon belongs to this boot and is recent.
        let now = durable::read_horizon(dir.path()).unwrap().unwrap();
        assert_eq!(now.boot, durable::boot_id());
        assert!(now.at > horizon);
    }

    #[test]
    fn on_the_same_boot_or_without_a_horizon_every_entry_is_kept() {
        for boot in [Some(durable::boot_id()), None] {
            let dir = tempfile::tempdir().unwrap();
            let horizon = entries_around_a_horizon(dir.path());
            match &boot {
                Some(b) => fake_horizon(dir.path(), b, horizon, false),
                None => fs::remove_file(dir.path().join(durable::HORIZON_FILE)).unwrap(),
            }
            let c = DiskCache::open(dir.path(), 1 << 20, metrics()).unwrap();
            for key in ["k/durable", "k/late", "k/empty"] {
                assert!(c.get(key).is_some(), "{key} kept ({boot:?})");
            }
            assert!(dir.path().join(durable::HORIZON_FILE).exists());
        }
    }

    #[tokio::test]
    async fn fills_are_synced_in_the_background_and_move_the_horizon() {
        let dir = tempfile::tempdir().unwrap();
        let c = Arc::new(DiskCache::open(dir.path(), 1 << 20, metrics()).unwrap());
        let opened = durable::read_horizon(dir.path()).unwrap().unwrap().at;
        let before = SystemTime::now();
        let mut p = c.begin("k/a").unwrap();
        p.write(b"one").unwrap();
        p.commit_then(|_| Ok(())).unwrap().run();
        assert!(c.get("k/a").is_some(), "visible at once");
        // This runtime has one thread and the test has not yielded: the fsync has not run.
        assert_eq!(c.unsynced(), 1);
        assert_eq!(c.metrics.unsynced.get(), 1, "the gauge counts it");
        // An open fill holds the horizon back to its start.
        let open = c.begin("k/b").unwrap();
        let b_began = SystemTime::now();
        let synced = async {
            while c.unsynced() > 0 || c.metrics.unsynced.get() > 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), synced)
            .await
            .expect("the background fsync ran");
        let moved = async {
            loop {
                let at = durable::read_horizon(dir.path()).unwrap().unwrap().at;
                if at > opened {
                    return at;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        let at = tokio::time::timeout(Duration::from_secs(30), moved)
            .await
            .expect("the horizon moved after the fsync");
        assert!(at >= before, "past the synced fill");
        assert!(at <= b_began, "not past the open one");
        drop(open);
        c.settle();
        let settled = durable::read_horizon(dir.path()).unwrap().unwrap();
        assert!(settled.clean, "nothing open or unsynced: a clean stop");
        assert!(settled.at >= at);
        // After the stop is recorded, fills are fsynced before their rename.
        c.put("k/c", b"late").unwrap();
        assert_eq!(c.unsynced(), 0, "not queued");
        assert!(c.get("k/c").is_some());
    }

    #[test]
    fn after_a_clean_stop_even_another_boot_keeps_every_entry() {
        let dir = tempfile::tempdir().unwrap();
        let horizon = entries_around_a_horizon(dir.path());
        fake_horizon(dir.path(), "an-earlier-boot", horizon, true);
        let c = DiskCache::open(dir.path(), 1 << 20, metrics()).unwrap();
        for key in ["k/durable", "k/late", "k/empty"] {
            assert!(c.get(key).is_some(), "{key} kept");
        }
        assert!(
            !durable::read_horizon(dir.path()).unwrap().unwrap().clean,
            "running again"
        );
    }

    #[tokio::test]
    async fn fills_take_spare_files_made_ahead_in_the_background() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join("tmp");
        let c = Arc::new(DiskCache::open(dir.path(), 1 << 20, metrics()).unwrap());
        let names = || -> Vec<PathBuf> {
            fs::read_dir(&tmp)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect()
        };
        assert!(names().is_empty(), "no spares before the first fill");
        // The first fill makes its own file and starts the refill.
        c.put("k/a", b"one").unwrap();
        let made = async {
            while names().len() < SPARE_FILES {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), made)
            .await
            .expect("spare files are made after a fill");
        let spares = names();
        assert_eq!(spares.len(), SPARE_FILES);
        assert!(spares.iter().all(|p| fs::metadata(p).unwrap().len() == 0));
        let mut p = c.begin("k/b").unwrap();
        assert!(spares.contains(&p.tmp_path), "a spare file is used");
        p.write(b"two").unwrap();
        p.commit(|_| Ok(())).unwrap();
        assert_eq!(fs::read(dir.path().join("cache/k/b")).unwrap(), b"two");
        // Spares are temporary files: a restart clears them.
        let refilled = async {
            while c.refilling.load(Ordering::Acquire) || names().len() < SPARE_FILES {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), refilled)
            .await
            .expect("the spare taken is replaced");
        drop(c);
        DiskCache::open(dir.path(), 1 << 20, metrics()).unwrap();
        assert!(names().is_empty());
    }

    #[test]
    fn commits_are_seen_at_once_and_outside_removals_within_stat_fresh() {
        let dir = tempfile::tempdir().unwrap();
        let c = Arc::new(DiskCache::open(dir.path(), 1 << 20, metrics()).unwrap());
        c.put("k/a", b"one").unwrap();
        assert_eq!(c.get("k/a").unwrap().len, 3);
        c.put("k/a", b"three!").unwrap();
        assert_eq!(
            c.get("k/a").unwrap().len,
            6,
            "a new version needs no stat delay"
        );
        // Another process (`modgate cache verify`) removes the file.
        std::fs::remove_file(dir.path().join("cache/k/a")).unwrap();
        std::thread::sleep(STAT_FRESH + Duration::from_millis(50));
        assert!(c.get("k/a").is_none(), "the removal is noticed");
        assert_eq!(c.usage(), (0, 0));
    }
}
