//! The log behind modgate's own checksum database (`sumdb.serve`): one record per module
//! version (its go.sum lines, as in any Go checksum database) in the order modgate added them,
//! at `storage.data_dir/integrity/sumdb/<name>.log`, one JSON object a line, appended and
//! fsynced before anyone sees the record. The log is the source of truth: the Merkle tree, its
//! tiles and every signed head are computed from it at start (about 64 bytes of hashes and the
//! record text per version in memory), so a restart serves the same tree and extends it.
//!
//! Records never change: a version whose content changes later (a force-pushed private tag
//! that an operator repinned) keeps its first record here, and agents that verify against this
//! database keep refusing the new content, as they would with sum.golang.org.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use modgate_core::gomod::note::{Signer, format_tree};
use modgate_core::gomod::sumdb::Tile;
use modgate_core::gomod::tlog::HashLog;
use serde::{Deserialize, Serialize};

/// Why the log cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SumLogError {
    #[error("modgate's checksum-database log {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "modgate's checksum-database log {path}: line {line} is not a record ({reason}); the log is the source of truth for the tree, so modgate will not skip it: restore the file from a backup"
    )]
    Corrupt {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error(
        "modgate's checksum-database log {path}: record {id} from the shared bucket does not extend this replica's tree (two replicas wrote different records); not applied"
    )]
    Diverged { path: PathBuf, id: u64 },
    #[error(
        "modgate's checksum-database log {path}: a write failed and could not be undone; restart modgate"
    )]
    Unusable { path: PathBuf },
}

/// One line of the log.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Line {
    module: String,
    version: String,
    /// `h1:` of the module zip.
    zip: String,
    /// `h1:` of the go.mod.
    #[serde(rename = "mod")]
    go_mod: String,
    /// How modgate knew the hashes: `verified <db> <tree size>` or `pinned <commit>`.
    source: String,
    at: String,
    /// The tree hash before this record (base64), so a replica applying records from the
    /// shared bucket knows they extend its own tree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    prev: Option<String>,
}

impl Line {
    fn text(&self) -> String {
        format!(
            "{m} {v} {z}\n{m} {v}/go.mod {g}\n",
            m = self.module,
            v = self.version,
            z = self.zip,
            g = self.go_mod
        )
    }
}

/// A record with the signed head of a tree that holds it.
#[derive(Debug, Clone)]
pub struct Found {
    pub id: u64,
    pub text: Arc<str>,
    pub note: Arc<str>,
}

impl Found {
    /// The `/lookup` answer: id, record text, a blank line, the signed tree note.
    pub fn lookup_body(&self) -> String {
        format!("{}\n{}\n{}", self.id, self.text, self.note)
    }
}

#[derive(Debug, Default)]
struct Inner {
    hashes: HashLog,
    /// The records, by id.
    keys: Vec<Line>,
    ids: HashMap<(String, String), u64>,
    /// The signed head of the current size.
    signed: Option<(u64, Arc<str>)>,
}

/// The log, its tree and its signer.
#[derive(Debug)]
pub struct SumLog {
    path: PathBuf,
    signer: Signer,
    file: Mutex<File>,
    inner: Mutex<Inner>,
    /// Held across a shared-bucket append (catch up, write once, apply), so this replica's
    /// appends take ids one at a time.
    pub appending: tokio::sync::Mutex<()>,
    /// Set when a failed write could not be cut back off the file.
    failed: std::sync::atomic::AtomicBool,
}

impl SumLog {
    /// The log's file for database `name` under `data_dir`.
    pub fn path(data_dir: &Path, name: &str) -> PathBuf {
        data_dir
            .join("integrity")
            .join("sumdb")
            .join(format!("{}.log", name.replace('/', "!")))
    }

    /// Opens (or creates) the log of `signer`'s database and rebuilds its tree. A last line cut
    /// short by a crash is dropped: it was never fsynced, so nobody saw it. Blocking.
    pub fn open(data_dir: &Path, signer: Signer) -> Result<SumLog, SumLogError> {
        let path = Self::path(data_dir, signer.name());
        let io = |source| SumLogError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(path.parent().expect("has a parent")).map_err(io)?;
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)
            .map_err(io)?;
        // The file's directory entry is durable before any record in it is.
        File::open(path.parent().expect("has a parent"))
            .and_then(|d| d.sync_all())
            .map_err(io)?;
        let mut data = vec![];
        file.read_to_end(&mut data).map_err(io)?;
        let whole = data.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        if whole < data.len() {
            tracing::warn!(path = %path.display(), bytes = data.len() - whole, "dropping a record cut short by a crash");
            file.set_len(whole as u64).map_err(io)?;
            file.sync_all().map_err(io)?;
            file.seek(io::SeekFrom::End(0)).map_err(io)?;
        }
        let mut inner = Inner::default();
        let lines = data[..whole.saturating_sub(1)].split(|b| *b == b'\n');
        for (i, raw) in lines.enumerate().take_while(|_| whole > 0) {
            let line: Line = serde_json::from_slice(raw).map_err(|e| SumLogError::Corrupt {
                path: path.clone(),
                line: i + 1,
                reason: e.to_string(),
            })?;
            inner.push(&line);
        }
        Ok(SumLog {
            path,
            signer,
            file: Mutex::new(file),
            inner: Mutex::new(inner),
            appending: tokio::sync::Mutex::new(()),
            failed: std::sync::atomic::AtomicBool::new(false),
        })
    }

    pub fn name(&self) -> &str {
        self.signer.name()
    }

    /// The id and source of `module@version`'s record in the log of database `name`, read
    /// from the file (for the CLI, without the key). Blocking.
    pub fn read_record(
        data_dir: &Path,
        name: &str,
        module: &str,
        version: &str,
    ) -> Result<Option<(u64, String)>, SumLogError> {
        let path = Self::path(data_dir, name);
        let data = match std::fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(SumLogError::Io { path, source }),
        };
        let whole = data.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        for (i, raw) in data[..whole.saturating_sub(1)]
            .split(|b| *b == b'\n')
            .enumerate()
        {
            if let Ok(line) = serde_json::from_slice::<Line>(raw)
                && line.module == module
                && line.version == version
            {
                return Ok(Some((i as u64, line.source)));
            }
        }
        Ok(None)
    }

    /// The verifier key agents put in GOSUMDB.
    pub fn vkey(&self) -> String {
        self.signer.vkey()
    }

    /// Records in the log.
    pub fn size(&self) -> u64 {
        self.lock().hashes.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("not poisoned")
    }

    /// The record of `module@version`, if the log has it.
    pub fn find(&self, module: &str, version: &str) -> Option<Found> {
        let mut inner = self.lock();
        let id = *inner.ids.get(&(module.to_string(), version.to_string()))?;
        let text: Arc<str> = inner.keys[id as usize].text().into();
        let note = inner.note(&self.signer);
        Some(Found { id, text, note })
    }

    /// The signed head of the current tree (`/latest`).
    pub fn latest(&self) -> Arc<str> {
        self.lock().note(&self.signer)
    }

    /// A tile of the current tree: hash tiles from the tree, data tiles from the record texts.
    pub fn tile(&self, t: &Tile) -> Option<Vec<u8>> {
        let inner = self.lock();
        let n = inner.hashes.len();
        if t.l >= 0 {
            return inner.hashes.tile(t, n);
        }
        let start = t.n.checked_mul(1u64 << t.h)?;
        let end = start.checked_add(t.w)?;
        if end > n {
            return None;
        }
        // As x/mod's server writes them: each record as `tlog.FormatRecord` (id, text, blank).
        let mut out = vec![];
        for (id, line) in (start..end).zip(&inner.keys[start as usize..end as usize]) {
            out.extend_from_slice(format!("{id}\n{}\n", line.text()).as_bytes());
        }
        Some(out)
    }

    /// Adds the record of `module@version` (zip and go.mod hashes) unless the log has one;
    /// returns the record the log holds, and whether it is new. The record is on disk before
    /// this returns. Blocking.
    pub fn add(
        &self,
        module: &str,
        version: &str,
        zip: &str,
        go_mod: &str,
        source: &str,
    ) -> Result<(Found, bool), SumLogError> {
        // One writer at a time: the file lock is taken before the tree's, and held across the
        // fsync, so records reach the file in id order.
        let mut file = self.file.lock().expect("not poisoned");
        if let Some(found) = self.find(module, version) {
            return Ok((found, false));
        }
        let line = self.next_line(module, version, zip, go_mod, source);
        self.write(&mut file, &line)?;
        let found = self.find(module, version).expect("just added");
        Ok((found, true))
    }

    /// The current tree's hash, base64.
    fn head_hash(&self) -> String {
        let inner = self.lock();
        let tree = inner.hashes.tree(inner.hashes.len()).expect("its own size");
        base64::engine::general_purpose::STANDARD.encode(tree.hash)
    }

    /// Appends `line` to the file (fsynced) and then to the tree; a write that fails is cut
    /// back off the file, so the file never holds a record the tree does not.
    fn write(&self, file: &mut File, line: &Line) -> Result<(), SumLogError> {
        use std::sync::atomic::Ordering;
        if self.failed.load(Ordering::Relaxed) {
            return Err(SumLogError::Unusable {
                path: self.path.clone(),
            });
        }
        let mut bytes = serde_json::to_vec(line).expect("serializable");
        bytes.push(b'\n');
        let io = |source| SumLogError::Io {
            path: self.path.clone(),
            source,
        };
        let before = file.metadata().map_err(io)?.len();
        if let Err(e) = file.write_all(&bytes).and_then(|_| file.sync_data()) {
            if file.set_len(before).and_then(|_| file.sync_data()).is_err() {
                self.failed.store(true, Ordering::Relaxed);
            }
            return Err(io(e));
        }
        self.lock().push(line);
        Ok(())
    }

    /// The shared-bucket form of a new record for `module@version` after this log's last one
    /// (one JSON line, naming the tree it extends).
    pub fn new_record(
        &self,
        module: &str,
        version: &str,
        zip: &str,
        go_mod: &str,
        source: &str,
    ) -> Vec<u8> {
        serde_json::to_vec(&self.next_line(module, version, zip, go_mod, source))
            .expect("serializable")
    }

    /// The record of `module@version` that would follow this log's last one.
    fn next_line(
        &self,
        module: &str,
        version: &str,
        zip: &str,
        go_mod: &str,
        source: &str,
    ) -> Line {
        Line {
            module: module.to_string(),
            version: version.to_string(),
            zip: zip.to_string(),
            go_mod: go_mod.to_string(),
            source: source.to_string(),
            at: now(),
            prev: Some(self.head_hash()),
        }
    }

    /// Record `id` in its shared-bucket form (naming the tree before it), if the log has it.
    pub fn record_bytes(&self, id: u64) -> Option<Vec<u8>> {
        let inner = self.lock();
        let mut line = inner.keys.get(id as usize)?.clone();
        let prev = inner.hashes.tree(id).expect("below its size");
        line.prev = Some(base64::engine::general_purpose::STANDARD.encode(prev.hash));
        Some(serde_json::to_vec(&line).expect("serializable"))
    }

    /// Whether `data` (a record in its shared-bucket form) is the log's record `id` and names
    /// the log's tree before it: then every record up to `id` is the same on both sides.
    /// `None` when `data` names no tree (only the record itself could be compared).
    pub fn agrees(&self, id: u64, data: &[u8]) -> Option<bool> {
        let Ok(line) = serde_json::from_slice::<Line>(data) else {
            return Some(false);
        };
        let inner = self.lock();
        let Some(mine) = inner.keys.get(id as usize) else {
            return Some(false);
        };
        if mine.text() != line.text() {
            return Some(false);
        }
        let prev = inner.hashes.tree(id).expect("below its size");
        let prev = base64::engine::general_purpose::STANDARD.encode(prev.hash);
        line.prev.map(|p| p == prev)
    }

    /// Appends record `id` as another replica wrote it to the shared bucket; `id` must be the
    /// log's size (a record the log has already is checked, not added again), and the tree it
    /// names must be this log's. Blocking.
    pub fn apply(&self, id: u64, data: &[u8]) -> Result<(), SumLogError> {
        let mut file = self.file.lock().expect("not poisoned");
        let line: Line = serde_json::from_slice(data).map_err(|e| SumLogError::Corrupt {
            path: self.path.clone(),
            line: id as usize + 1,
            reason: format!("the shared bucket's record {id}: {e}"),
        })?;
        let diverged = || SumLogError::Diverged {
            path: self.path.clone(),
            id,
        };
        if id < self.size() {
            return match self.agrees(id, data) {
                Some(false) => Err(diverged()),
                _ => Ok(()),
            };
        }
        if line.prev.as_deref() != Some(self.head_hash().as_str()) {
            return Err(diverged());
        }
        self.write(&mut file, &line)
    }
}

impl Inner {
    fn push(&mut self, line: &Line) {
        let text = line.text();
        let id = self.hashes.append(text.as_bytes());
        self.keys.push(line.clone());
        self.ids
            .insert((line.module.clone(), line.version.clone()), id);
    }

    fn note(&mut self, signer: &Signer) -> Arc<str> {
        let n = self.hashes.len();
        if let Some((size, note)) = &self.signed
            && *size == n
        {
            return note.clone();
        }
        let tree = self.hashes.tree(n).expect("the log's own size");
        let note: Arc<str> = signer.sign(&format_tree(&tree)).into();
        self.signed = Some((n, note.clone()));
        note
    }
}

fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use modgate_core::gomod::note::{VerifierKey, parse_record, parse_tree};
    use modgate_core::gomod::tlog::{self, TilePlan};

    fn signer() -> Signer {
        Signer::from_seed("sum.corp.example", [3; 32]).unwrap()
    }

    #[test]
    fn records_are_proven_by_their_own_tiles_and_survive_a_restart_and_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let log = SumLog::open(dir.path(), signer()).unwrap();
        for i in 0..300 {
            let (f, new) = log
                .add(
                    &format!("example.com/m{i}"),
                    "v1.0.0",
                    "h1:zip=",
                    "h1:mod=",
                    "test",
                )
                .unwrap();
            assert!(new);
            assert_eq!(f.id, i);
        }
        // Adding again keeps the first record.
        let (again, new) = log
            .add("example.com/m7", "v1.0.0", "h1:other=", "h1:mod=", "test")
            .unwrap();
        assert!(!new);
        assert_eq!(again.id, 7);
        assert!(again.text.contains("h1:zip="));

        // A lookup answer verifies with the database's key and its record is in the tree,
        // read from the log's own tiles as the go command reads them.
        let vkey = VerifierKey::parse(&log.vkey()).unwrap();
        let found = log.find("example.com/m257", "v1.0.0").unwrap();
        let body = found.lookup_body();
        let (id, text, note) = parse_record(&body).unwrap();
        let tree = parse_tree(vkey.verify_note(note).unwrap()).unwrap();
        assert_eq!((id, tree.n), (257, 300));
        let idx = tlog::record_proof_indexes(tree.n, id);
        let plan = TilePlan::new(tree, 8, &idx).unwrap();
        let data: Vec<Vec<u8>> = plan.tiles().iter().map(|t| log.tile(t).unwrap()).collect();
        let proof = tlog::record_proof(tree.n, id, &plan.read(&data).unwrap());
        tlog::check_record(
            &proof,
            tree.n,
            &tree.hash,
            id,
            &tlog::record_hash(text.as_bytes()),
        )
        .unwrap();
        // Data tiles hold the records as x/mod's server writes them: id, text, blank line.
        let data_tile = log
            .tile(&Tile {
                h: 8,
                l: -1,
                n: 1,
                w: 44,
            })
            .unwrap();
        assert!(String::from_utf8(data_tile).unwrap().starts_with(
            "256\nexample.com/m256 v1.0.0 h1:zip=\nexample.com/m256 v1.0.0/go.mod h1:mod=\n\n257\nexample.com/m257 "
        ));
        let latest = log.latest();
        drop(log);

        // A crash in the middle of an append leaves half a line: dropped at the next start,
        // and the tree is the one served before.
        let path = SumLog::path(dir.path(), "sum.corp.example");
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"module\":\"example.com/torn\"").unwrap();
        drop(f);
        let log = SumLog::open(dir.path(), signer()).unwrap();
        assert_eq!(log.size(), 300);
        assert_eq!(log.latest(), latest);
        assert!(log.find("example.com/torn", "v1.0.0").is_none());
        let (f, _) = log
            .add("example.com/next", "v1.0.0", "h1:z=", "h1:m=", "test")
            .unwrap();
        assert_eq!(f.id, 300);
        drop(log);
        let log = SumLog::open(dir.path(), signer()).unwrap();
        assert_eq!(log.find("example.com/next", "v1.0.0").unwrap().id, 300);

        // A damaged line in the middle is refused: ids after it would shift.
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replacen("{\"module\"", "{\"mod", 1)).unwrap();
        let err = SumLog::open(dir.path(), signer()).unwrap_err();
        assert!(err.to_string().contains("line 1 is not a record"), "{err}");
    }

    #[test]
    fn records_from_another_log_apply_only_where_they_extend_this_tree() {
        let (a_dir, b_dir, c_dir) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        let a = SumLog::open(a_dir.path(), signer()).unwrap();
        a.add("example.com/x", "v1.0.0", "h1:x=", "h1:xm=", "t")
            .unwrap();
        a.add("example.com/y", "v1.0.0", "h1:y=", "h1:ym=", "t")
            .unwrap();
        // C took A's first record: A's second applies, and both serve one tree.
        let c = SumLog::open(c_dir.path(), signer()).unwrap();
        c.apply(0, &a.record_bytes(0).unwrap()).unwrap();
        c.apply(1, &a.record_bytes(1).unwrap()).unwrap();
        assert_eq!(c.latest(), a.latest());
        assert_eq!(a.agrees(1, &c.record_bytes(1).unwrap()), Some(true));
        // B wrote another first record: A's second does not extend B's tree.
        let b = SumLog::open(b_dir.path(), signer()).unwrap();
        b.add("example.com/z", "v1.0.0", "h1:z=", "h1:zm=", "t")
            .unwrap();
        let err = b.apply(1, &a.record_bytes(1).unwrap()).unwrap_err();
        assert!(err.to_string().contains("does not extend"), "{err}");
        assert_eq!(b.size(), 1);
        assert_eq!(a.agrees(0, &b.record_bytes(0).unwrap()), Some(false));
        // A record already held is checked, not added again.
        assert!(b.apply(0, &a.record_bytes(0).unwrap()).is_err());
        c.apply(0, &a.record_bytes(0).unwrap()).unwrap();
        assert_eq!(c.size(), 2);
    }
}
