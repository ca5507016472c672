//! An entry being written, and its commit: check, rename into place, fsync.

use super::{DiskCache, StoreError, io_err};
use crate::store::content::ContentError;
use crate::store::durable::Queued;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

/// An entry being written. Dropping it without [`commit`](PendingEntry::commit) discards it.
#[derive(Debug)]
pub struct PendingEntry {
    pub(super) cache: Arc<DiskCache>,
    pub(super) key: String,
    pub(super) dest: PathBuf,
    pub(super) tmp_path: PathBuf,
    pub(super) file: Option<File>,
    pub(super) len: u64,
    /// The fill's place in the durability tracker, until it is durable or dropped.
    pub(super) id: Option<u64>,
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

    /// Another descriptor of the temporary file, for readers that follow the writes (it stays
    /// valid across the commit's rename or the removal of a rejected file).
    pub fn share(&self) -> Result<File, StoreError> {
        let file = self.file.as_ref().expect("file present until commit");
        file.try_clone().map_err(io_err(&self.tmp_path))
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

    /// Runs `check` on the file as written (all of it: writes are not buffered), without
    /// committing; for a check that must finish before the caller decides to commit.
    pub fn check<T>(
        &mut self,
        check: impl FnOnce(&File) -> Result<T, ContentError>,
    ) -> Result<T, StoreError> {
        let file = self.file.as_ref().expect("file present until commit");
        Ok(check(file)?)
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
        {
            let _gate = self.cache.gate.read().expect("gate poisoned");
            fs::rename(&self.tmp_path, &self.dest).map_err(io_err(&self.dest))?;
            self.cache.committed(&self.key, self.len);
        }
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
