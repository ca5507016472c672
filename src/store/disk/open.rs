//! Opening the cache: the directory scan that rebuilds the index, and the removal of entries
//! an OS crash may have left unsynced.

use crate::store::durable::{self, Tracker};
use crate::telemetry::metrics::StoreMetrics;
use prometheus::IntGauge;
use std::fs::{self, File};
use std::io::{self};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::time::SystemTime;

use super::index::Index;
use super::{DiskCache, HOT_BYTES, LEGACY_NOT_FOUND_SUFFIX, StoreError, io_err};

impl DiskCache {
    pub(super) fn open_inner(
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
    pub(super) fn recover(
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
}

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
