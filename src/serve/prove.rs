//! Checksum-database verification at fill: before a public `.mod` or `.zip` is committed (or its
//! last byte released), its `h1:` hash is compared with the `module@version` record of the
//! database named by `sumdb.verify`, and that record is proven, as the go command proves it:
//! the lookup's signed tree head verified with the database's key, the record's inclusion in
//! that tree shown from tiles authenticated against it, and the tree shown to extend the newest
//! head modgate verified before (kept under `storage.data_dir/sumdb/`), so a database that forks
//! its log is caught. Lookups and tiles come through modgate's own sumdb cache, by way of
//! [`State::sumdb_fetch`] (the cache proves its fills here, so this module does not name it).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::serve::State;
use crate::store::pins::PinFile;
use modgate_core::gomod::note::{VerifierKey, parse_record, parse_tree};
use modgate_core::gomod::path::ModulePath;
use modgate_core::gomod::sumdb::Tile;
use modgate_core::gomod::tlog::{self, Hash, TilePlan, Tree};
use modgate_core::policy::classify::SumDbOp;
use modgate_core::policy::patterns::Patterns;

/// Tile height of the go.sum databases (the go command's and sum.golang.org's).
const TILE_HEIGHT: u32 = 8;

/// How public modules are proven (`sumdb.verify`), compiled.
#[derive(Debug, Clone)]
pub struct Verifier {
    pub db: String,
    pub key: VerifierKey,
    /// `sumdb.nosumdb`: exempt module paths.
    pub nosumdb: Patterns,
    pub fail_open: bool,
}

/// Which file of a version is proven.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proven {
    GoMod,
    Zip,
}

/// Why a version is not proven.
#[derive(Debug, thiserror::Error)]
pub enum ProofError {
    #[error(
        "checksum mismatch for {module}@{version}{suffix}: the checksum database {db} has {expected}, the upstream sent {got}; not stored"
    )]
    Mismatch {
        module: String,
        version: String,
        suffix: &'static str,
        db: String,
        expected: String,
        got: String,
    },
    #[error("cannot verify {module}@{version} against the checksum database {db}: {reason}")]
    Unavailable {
        module: String,
        version: String,
        db: String,
        reason: String,
    },
    #[error("the checksum database {db} is inconsistent: {reason}")]
    Forked { db: String, reason: String },
}

impl ProofError {
    fn unavailable(module: &ModulePath, version: &str, db: &str, reason: String) -> ProofError {
        ProofError::Unavailable {
            module: module.to_string(),
            version: version.to_string(),
            db: db.to_string(),
            reason,
        }
    }

    /// Bounded label for `modgate_sumdb_verifications_total`.
    pub fn outcome(&self) -> &'static str {
        match self {
            ProofError::Mismatch { .. } => "mismatch",
            ProofError::Unavailable { .. } => "unavailable",
            ProofError::Forked { .. } => "forked",
        }
    }
}

/// The newest tree head verified for each database, in memory and on disk.
#[derive(Debug)]
pub struct Heads {
    dir: PathBuf,
    trees: Mutex<std::collections::HashMap<String, Tree>>,
}

impl Heads {
    pub fn new(data_dir: &std::path::Path) -> Heads {
        Heads {
            dir: data_dir.join("sumdb"),
            trees: Mutex::default(),
        }
    }

    fn file(&self, db: &str) -> PathBuf {
        self.dir.join(db.replace('/', "!")).join("verified-tree")
    }

    /// The newest verified head of `db`, if any (read from disk the first time).
    fn get(&self, db: &str) -> Option<Tree> {
        if let Some(t) = self.trees.lock().expect("not poisoned").get(db) {
            return Some(*t);
        }
        let text = std::fs::read_to_string(self.file(db)).ok()?;
        let tree = parse_tree(&text).ok()?;
        self.trees
            .lock()
            .expect("not poisoned")
            .insert(db.to_string(), tree);
        Some(tree)
    }

    /// Records `tree` (its note text `text`) as the newest verified head, if it is newer.
    fn advance(&self, db: &str, tree: Tree, text: &str) {
        let mut trees = self.trees.lock().expect("not poisoned");
        if trees.get(db).is_some_and(|t| t.n >= tree.n) {
            return;
        }
        trees.insert(db.to_string(), tree);
        let path = self.file(db);
        let tmp = path.with_extension("tmp");
        let written = std::fs::create_dir_all(path.parent().expect("has a parent"))
            .and_then(|_| std::fs::write(&tmp, text))
            .and_then(|_| std::fs::File::open(&tmp)?.sync_all())
            .and_then(|_| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            tracing::warn!(db, error = %e, "cannot record the verified tree head");
        }
    }
}

/// Whether `module` is verified at fill under `verifier`.
pub fn applies(verifier: &Verifier, module: &ModulePath) -> bool {
    verifier.nosumdb.matching(module.as_str()).is_none()
}

/// A `module@version` record, proven: its text is in a signed tree of the database that
/// extends every head verified before.
#[derive(Debug, Clone)]
pub struct ProvenRecord {
    text: String,
    tree: u64,
}

impl ProvenRecord {
    /// The zip and go.mod hashes the record holds for `module@version`.
    pub fn hashes(&self, module: &ModulePath, version: &str) -> Option<(String, String)> {
        let line = |prefix: String| {
            self.text
                .lines()
                .find_map(|l| l.strip_prefix(prefix.as_str()))
                .map(str::to_string)
        };
        Some((
            line(format!("{module} {version} "))?,
            line(format!("{module} {version}/go.mod "))?,
        ))
    }

    /// Where it was proven, for modgate's own checksum database.
    pub fn source(&self, db: &str) -> String {
        format!("verified {db} {}", self.tree)
    }
}

/// Proves the record of `module@version` now.
pub async fn record(
    state: &Arc<State>,
    verifier: &Verifier,
    module: &ModulePath,
    version: &str,
) -> Result<ProvenRecord, ProofError> {
    prove_record(state, verifier, module, version).await
}

/// A proof started ahead of need (when a fill starts), so that its lookups and tiles travel
/// while the body does; only the hash comparison waits for the body. Dropped unused (the fill
/// failed), it stops.
#[derive(Debug)]
pub struct PendingProof(tokio::task::JoinHandle<Result<ProvenRecord, ProofError>>);

impl Drop for PendingProof {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts proving the record of `module@version` on its own task.
pub fn start(
    state: &Arc<State>,
    verifier: &Verifier,
    module: &ModulePath,
    version: &str,
) -> PendingProof {
    let (state, verifier, module, version) = (
        state.clone(),
        verifier.clone(),
        module.clone(),
        version.to_string(),
    );
    PendingProof(tokio::spawn(async move {
        prove_record(&state, &verifier, &module, &version).await
    }))
}

/// Waits for a proof started by [`start`] and compares `h1` with its record.
pub async fn finish(
    mut pending: PendingProof,
    state: &Arc<State>,
    verifier: &Verifier,
    module: &ModulePath,
    version: &str,
    what: Proven,
    h1: &str,
) -> Result<(), ProofError> {
    let record = (&mut pending.0).await.map_err(|e| {
        ProofError::unavailable(
            module,
            version,
            &verifier.db,
            format!("proof task failed: {e}"),
        )
    })??;
    compare(state, verifier, module, version, what, h1, &record).await
}

/// Fetches and proves the record of `module@version`.
async fn prove_record(
    state: &Arc<State>,
    verifier: &Verifier,
    module: &ModulePath,
    version: &str,
) -> Result<ProvenRecord, ProofError> {
    let db = &verifier.db;
    let unavailable = |reason: String| ProofError::unavailable(module, version, db, reason);
    let lookup = (state.sumdb_fetch)(
        state,
        db,
        SumDbOp::Lookup {
            module: module.clone(),
            version: version.to_string(),
        },
    )
    .await
    .map_err(&unavailable)?;
    let lookup =
        std::str::from_utf8(&lookup).map_err(|_| unavailable("lookup is not text".into()))?;
    let (id, text, note) = parse_record(lookup).map_err(|e| unavailable(e.to_string()))?;
    let tree_text = verifier
        .key
        .verify_note(note)
        .map_err(|e| unavailable(e.to_string()))?;
    let tree = parse_tree(tree_text).map_err(|e| unavailable(e.to_string()))?;
    if id >= tree.n {
        return Err(unavailable(format!(
            "record {id} is not in the signed tree of size {}",
            tree.n
        )));
    }
    // The record is in the signed tree.
    let indexes = tlog::record_proof_indexes(tree.n, id);
    let hashes = read_hashes(state, db, tree, &indexes)
        .await
        .map_err(&unavailable)?;
    let proof = tlog::record_proof(tree.n, id, &hashes);
    tlog::check_record(
        &proof,
        tree.n,
        &tree.hash,
        id,
        &tlog::record_hash(text.as_bytes()),
    )
    .map_err(|e| ProofError::Forked {
        db: db.clone(),
        reason: format!("the record for {module}@{version} is not in its signed tree: {e}"),
    })?;
    // The tree extends (or is extended by) the newest head verified before.
    consistent(state, db, tree, tree_text).await?;
    Ok(ProvenRecord {
        text: text.to_string(),
        tree: tree.n,
    })
}

/// Compares `h1` with the proven record's line for `what`, and logs the proof.
async fn compare(
    state: &Arc<State>,
    verifier: &Verifier,
    module: &ModulePath,
    version: &str,
    what: Proven,
    h1: &str,
    record: &ProvenRecord,
) -> Result<(), ProofError> {
    let db = &verifier.db;
    let unavailable = |reason: String| ProofError::unavailable(module, version, db, reason);
    let text = record.text.as_str();
    // The record names this hash.
    let (suffix, want_prefix) = match what {
        Proven::GoMod => ("/go.mod", format!("{module} {version}/go.mod ")),
        Proven::Zip => ("", format!("{module} {version} ")),
    };
    let expected = text
        .lines()
        .find_map(|l| l.strip_prefix(want_prefix.as_str()))
        .ok_or_else(|| unavailable(format!("its record has no {want_prefix}line")))?;
    if expected != h1 {
        return Err(ProofError::Mismatch {
            module: module.to_string(),
            version: version.to_string(),
            suffix,
            db: db.clone(),
            expected: expected.to_string(),
            got: h1.to_string(),
        });
    }
    // Recorded in the integrity log, for `modgate explain` and `cache stats`.
    let (st, m, v, d, h) = (
        state.clone(),
        module.to_string(),
        version.to_string(),
        db.clone(),
        h1.to_string(),
    );
    let file = match what {
        Proven::GoMod => PinFile::Mod,
        Proven::Zip => PinFile::Zip,
    };
    let tree_n = record.tree;
    let logged =
        tokio::task::spawn_blocking(move || st.pins.verified(&m, &v, file, &h, &d, tree_n)).await;
    if !matches!(logged, Ok(Ok(()))) {
        tracing::warn!(%module, version, "cannot record the proof in the integrity log");
    }
    // And in modgate's own checksum database, off the request path (with a shared bucket an
    // append takes round trips and a lock).
    if let Some(log) = &state.own_sumdb
        && log.find(module.as_str(), version).is_none()
        && let Some((zip, go_mod)) = record.hashes(module, version)
    {
        let (state, log, module, version) = (
            state.clone(),
            log.clone(),
            module.clone(),
            version.to_string(),
        );
        let source = record.source(db);
        tokio::spawn(async move {
            let records = &state.metrics.own_sumdb_records;
            let shared = state.shared.as_deref();
            let added = crate::store::sumshare::add(
                &log, shared, records, &module, &version, zip, go_mod, source,
            );
            if let Err(e) = added.await {
                tracing::warn!(%module, version, error = %e, "cannot record the proof in modgate's checksum database");
            }
        });
    }
    Ok(())
}

/// Checks `tree` against the newest verified head of `db` and advances that head.
async fn consistent(
    state: &Arc<State>,
    db: &str,
    tree: Tree,
    text: &str,
) -> Result<(), ProofError> {
    let forked = |reason: String| ProofError::Forked {
        db: db.to_string(),
        reason,
    };
    let Some(old) = state.heads.get(db) else {
        state.heads.advance(db, tree, text);
        return Ok(());
    };
    let (big, small) = if tree.n >= old.n {
        (tree, old)
    } else {
        (old, tree)
    };
    if big.n == small.n {
        return if big.hash == small.hash {
            Ok(())
        } else {
            Err(forked(format!(
                "two different trees of size {} were signed",
                big.n
            )))
        };
    }
    let indexes = tlog::tree_proof_indexes(big.n, small.n);
    let hashes = read_hashes(state, db, big, &indexes)
        .await
        .map_err(|e| forked(format!("cannot read its tiles: {e}")))?;
    let proof = tlog::tree_proof(big.n, small.n, &hashes);
    tlog::check_tree(&proof, big.n, &big.hash, small.n, &small.hash).map_err(|e| {
        forked(format!(
            "the tree of size {} does not extend the tree of size {}: {e}",
            big.n, small.n
        ))
    })?;
    state.heads.advance(db, tree, text);
    Ok(())
}

/// The hashes at `indexes` of `tree`, from tiles authenticated against it.
async fn read_hashes(
    state: &Arc<State>,
    db: &str,
    tree: Tree,
    indexes: &[u64],
) -> Result<Vec<Hash>, String> {
    if indexes.is_empty() {
        return Ok(vec![]);
    }
    let plan = TilePlan::new(tree, TILE_HEIGHT, indexes).map_err(|e| e.to_string())?;
    // All tiles at once: on a cold cache each is a round trip to the database.
    let fetched =
        futures_util::future::join_all(plan.tiles().iter().map(|t| fetch_tile(state, db, *t)))
            .await;
    let data = fetched.into_iter().collect::<Result<Vec<_>, _>>()?;
    plan.read(&data).map_err(|e| e.to_string())
}

/// One tile's bytes (the full tile's prefix when the partial one is gone).
async fn fetch_tile(state: &Arc<State>, db: &str, t: Tile) -> Result<Vec<u8>, String> {
    {
        let t = &t;
        let bytes = match (state.sumdb_fetch)(state, db, SumDbOp::Tile(*t)).await {
            Ok(b) => b,
            // A partial tile of an older tree may be gone once its tile is complete; its
            // hashes are a prefix of the full tile's (the go command's fallback).
            Err(e) if !t.is_full() => {
                let full = Tile { w: 1 << t.h, ..*t };
                let b = (state.sumdb_fetch)(state, db, SumDbOp::Tile(full))
                    .await
                    .map_err(|_| e)?;
                let want = t.w as usize * tlog::HASH_SIZE;
                if b.len() < want {
                    return Err(format!("tile {} is shorter than {want} bytes", full.path()));
                }
                b.slice(..want)
            }
            Err(e) => return Err(e),
        };
        Ok(bytes.to_vec())
    }
}
