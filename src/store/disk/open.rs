//! Opening the cache and building its index: the directory walk that finds the entries on disk
//! (in the background for the gateway, so it serves at once at any cache size), and the
//! treatment of entries an OS crash may have left unsynced.
//!
//! Until the walk is done, a key not yet indexed is looked up on disk (one stat) and indexed when
//! found, and eviction waits: the size bound is only known once every entry is counted. Entries
//! the previous run may have left unsynced ([`durable`]) are dealt with as they are met, by the
//! walk or by such a lookup, before they are served; the previous run's horizon stays in force
//! until the walk is done.

use crate::store::durable::{self, Tracker};
use crate::telemetry::metrics::StoreMetrics;
use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Instant, SystemTime};

use super::index::Index;
use super::{DiskCache, HOT_BYTES, LEGACY_NOT_FOUND_SUFFIX, StoreError, io_err};

/// Entries indexed per lock of the index during the walk.
const BATCH: usize = 1024;

/// What start-up still owes the entries of an unclean previous run.
#[derive(Debug)]
pub(super) struct Recovery {
    /// Entries modified at or after this (or empty) may lack their fsync.
    line: SystemTime,
    /// The previous run was on this boot: such entries are whole in the page cache (fsync
    /// them); on another they may be partial (remove them).
    same_boot: bool,
    /// Directories of removed entries, synced before the horizon moves.
    dirs: Mutex<BTreeSet<PathBuf>>,
    removed: AtomicUsize,
    /// A removal failed, or the walk skipped something it could not read: the old horizon
    /// stays for this run.
    failed: AtomicBool,
    /// Until the new horizon is written, every entry met is checked.
    pending: AtomicBool,
}

impl Recovery {
    fn suspect(&self, len: u64, modified: SystemTime) -> bool {
        len == 0 || modified >= self.line
    }
}

/// Progress of the index build, for `/readyz` and `cache stats`.
#[derive(Debug, Clone, Copy)]
pub struct Indexing {
    pub complete: bool,
    /// Entries indexed so far.
    pub entries: usize,
    /// Since the cache was opened.
    pub elapsed: std::time::Duration,
}

impl DiskCache {
    pub(super) fn open_inner(
        data_dir: &Path,
        max_bytes: u64,
        metrics: StoreMetrics,
        gateway: bool,
    ) -> Result<DiskCache, StoreError> {
        let root = super::entries_dir(data_dir);
        let tmp = data_dir.join("tmp");
        fs::create_dir_all(&root).map_err(io_err(&root))?;
        if gateway && tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
        }
        fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
        let (durable, recovery) = if gateway {
            let (tracker, recovery) = Self::begin_recovery(data_dir, metrics.unsynced.clone())?;
            (Some(tracker), recovery)
        } else {
            (None, None)
        };
        metrics.index_complete.set(0);
        Ok(DiskCache {
            root,
            tmp,
            max_bytes,
            index: Mutex::new(Index::default()),
            metrics,
            hot: moka::sync::Cache::builder()
                .max_capacity(HOT_BYTES)
                .weigher(|_, v: &(u64, SystemTime, bytes::Bytes)| {
                    u32::try_from(v.2.len() + 128).unwrap_or(u32::MAX)
                })
                .build_with_hasher(hashbrown::DefaultHashBuilder::default()),
            spares: Mutex::new(Vec::new()),
            refilling: AtomicBool::new(false),
            durable,
            gateway,
            recovery,
            gate: RwLock::new(()),
            indexing: AtomicBool::new(true),
            opened: Instant::now(),
        })
    }

    /// Reads the previous run's horizon. After a clean stop, or with none, every entry is
    /// durable and this run's horizon is written at once; otherwise the tracker keeps the old
    /// horizon (file and time) until the walk has dealt with the entries it leaves in doubt.
    fn begin_recovery(
        data_dir: &Path,
        unsynced: prometheus::IntGauge,
    ) -> Result<(Tracker, Option<Recovery>), StoreError> {
        let marker = data_dir.join(durable::HORIZON_FILE);
        let boot = durable::boot_id();
        let horizon = durable::read_horizon(data_dir).map_err(io_err(&marker))?;
        match horizon {
            Some(h) if !h.clean => {
                let file = File::options()
                    .write(true)
                    .open(&marker)
                    .map_err(io_err(&marker))?;
                let recovery = Recovery {
                    line: h
                        .at
                        .checked_sub(durable::MARGIN)
                        .unwrap_or(SystemTime::UNIX_EPOCH),
                    same_boot: h.boot == boot,
                    dirs: Mutex::new(BTreeSet::new()),
                    removed: AtomicUsize::new(0),
                    failed: AtomicBool::new(false),
                    pending: AtomicBool::new(true),
                };
                let tracker = Tracker::new(data_dir, &boot, file, h.at, true, unsynced);
                Ok((tracker, Some(recovery)))
            }
            _ => {
                let file = durable::write_horizon(data_dir, &boot, false, None)
                    .map_err(io_err(&marker))?;
                let tracker =
                    Tracker::new(data_dir, &boot, file, SystemTime::now(), false, unsynced);
                Ok((tracker, None))
            }
        }
    }

    /// Whether the index is still being built.
    pub(super) fn is_indexing(&self) -> bool {
        self.indexing.load(Ordering::Acquire)
    }

    /// How far the index build is.
    pub fn indexing(&self) -> Indexing {
        Indexing {
            complete: !self.is_indexing(),
            entries: self.index.lock().expect("index poisoned").len(),
            elapsed: self.opened.elapsed(),
        }
    }

    /// Whether `key`, just found on disk as `meta`, may be indexed and served: drops what the
    /// gateway no longer serves and what the previous run may have left unsynced.
    pub(super) fn admit(&self, key: &str, path: &Path, len: u64, modified: SystemTime) -> bool {
        if self.gateway && key.ends_with(LEGACY_NOT_FOUND_SUFFIX) {
            // Not-found answers under the old suffix: seconds-long answers that could be
            // mistaken for another version's entry. A real entry of a version ending in
            // `.notfound` goes with them and is fetched again.
            return fs::remove_file(path).is_err();
        }
        match &self.recovery {
            Some(rec) if rec.pending.load(Ordering::Acquire) && rec.suspect(len, modified) => {
                self.recover_one(rec, key, path)
            }
            _ => true,
        }
    }

    /// Deals with one entry the previous run may have left unsynced; returns whether it stays.
    /// Commits wait meanwhile, so an entry this run wrote is never taken for one.
    fn recover_one(&self, rec: &Recovery, key: &str, path: &Path) -> bool {
        let _gate = self.gate.write().expect("gate poisoned");
        if self.index.lock().expect("index poisoned").contains(key) {
            return true;
        }
        match fs::metadata(path) {
            Ok(m) if m.is_file() => {
                if !rec.suspect(m.len(), m.modified().unwrap_or(SystemTime::UNIX_EPOCH)) {
                    return true;
                }
            }
            _ => return false,
        }
        if rec.same_boot {
            match File::open(path).and_then(|f| f.sync_all()) {
                Ok(()) => {
                    // Its directory entry too, before the horizon moves past it.
                    if let Some(dir) = path.parent() {
                        rec.dirs
                            .lock()
                            .expect("dirs poisoned")
                            .insert(dir.to_path_buf());
                    }
                    return true;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => return false,
                Err(e) => tracing::warn!(key, error = %e, "cannot sync a cache entry; removing it"),
            }
        }
        match fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(key, error = %e, "cannot remove a cache entry the last run may not have synced; not serving it");
                rec.failed.store(true, Ordering::Relaxed);
                return false;
            }
        }
        if let Some(dir) = path.parent() {
            rec.dirs
                .lock()
                .expect("dirs poisoned")
                .insert(dir.to_path_buf());
        }
        rec.removed.fetch_add(1, Ordering::Relaxed);
        false
    }

    /// Starts the index build on its own thread.
    pub(super) fn index_in_background(self: &Arc<Self>) -> Result<(), StoreError> {
        let cache = self.clone();
        std::thread::Builder::new()
            .name("modgate-index".into())
            .spawn(move || {
                if let Err(e) = cache.build_index() {
                    tracing::error!(error = %e, "cannot walk the module cache; entries are found as they are asked for, and nothing is evicted");
                }
            })
            .map_err(io_err(&self.root))?;
        Ok(())
    }

    /// Walks the cache directory and indexes what it finds (each entry as last used when it was
    /// modified), then finishes the recovery of an unclean previous run and starts eviction.
    /// A subdirectory that cannot be read is reported and skipped.
    pub(super) fn build_index(&self) -> Result<(), StoreError> {
        let mut batch = Vec::with_capacity(BATCH);
        let mut stack = vec![self.root.clone()];
        let top = fs::read_dir(&self.root).map_err(io_err(&self.root))?;
        let mut pending = Some(top);
        while let Some(dir) = stack.pop() {
            let it = match pending.take() {
                Some(it) => it,
                None => match fs::read_dir(&dir) {
                    Ok(it) => it,
                    Err(e) => {
                        tracing::warn!(dir = %dir.display(), error = %e, "cannot read a cache directory; its entries are not indexed (nor served, nor evicted) in this run");
                        self.skipped();
                        continue;
                    }
                },
            };
            for entry in it {
                let Ok(entry) = entry else {
                    self.skipped();
                    continue;
                };
                let Ok(ft) = entry.file_type() else {
                    self.skipped();
                    continue;
                };
                let path = entry.path();
                if ft.is_dir() {
                    stack.push(path);
                } else if ft.is_file() {
                    let Ok(meta) = entry.metadata() else {
                        self.skipped();
                        continue;
                    };
                    let Some(key) = path.strip_prefix(&self.root).ok().and_then(|p| p.to_str())
                    else {
                        self.skipped();
                        continue;
                    };
                    let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                    if self.admit(key, &path, meta.len(), modified) {
                        batch.push((key.to_string(), meta.len(), modified));
                    }
                    if batch.len() >= BATCH {
                        self.index_batch(&mut batch);
                    }
                }
            }
        }
        self.index_batch(&mut batch);
        self.finish_recovery();
        self.indexing.store(false, Ordering::Release);
        self.metrics.index_complete.set(1);
        self.evict();
        let (entries, bytes) = self.usage();
        tracing::info!(
            entries,
            bytes,
            seconds = self.opened.elapsed().as_secs_f64(),
            "cache index complete"
        );
        Ok(())
    }

    /// The walk passed over something it could not read: if it was an entry the last run left
    /// unsynced, it was not checked, so the old horizon must stay.
    fn skipped(&self) {
        if let Some(rec) = &self.recovery {
            rec.failed.store(true, Ordering::Relaxed);
        }
    }

    fn index_batch(&self, batch: &mut Vec<(String, u64, SystemTime)>) {
        {
            let mut idx = self.index.lock().expect("index poisoned");
            for (key, len, modified) in batch.drain(..) {
                idx.insert_found(&key, len, modified);
            }
        }
        self.publish();
    }

    fn finish_recovery(&self) {
        let (Some(rec), Some(tracker)) = (&self.recovery, &self.durable) else {
            return;
        };
        // The removals reach the disk before the new horizon does; where a directory cannot be
        // synced, or an entry not removed, the old horizon is kept for this whole run.
        let dirs = std::mem::take(&mut *rec.dirs.lock().expect("dirs poisoned"));
        let bad = durable::sync_dirs(dirs);
        let removed = rec.removed.load(Ordering::Relaxed);
        if !rec.same_boot && removed > 0 {
            tracing::warn!(
                removed,
                "the system restarted since the cache was last used: removed the entries \
                 written in its last moments, which may not have reached the disk"
            );
        }
        if bad.is_empty() && !rec.failed.load(Ordering::Relaxed) {
            match tracker.recovered() {
                Ok(()) => rec.pending.store(false, Ordering::Release),
                Err(e) => tracing::warn!(error = %e, "cannot record the cache's durable horizon"),
            }
        }
    }
}

/// Every file under `dir` as (key relative to `root`, length, modification time).
pub(super) fn scan(
    root: &Path,
    dir: &Path,
    out: &mut Vec<(String, u64, SystemTime)>,
) -> io::Result<()> {
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
