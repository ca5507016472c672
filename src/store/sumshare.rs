//! The shared-bucket side of modgate's own checksum database (`sumdb.serve`): with
//! `shared_cache`, the records live in the bucket as `sumdb/<name>/records/<id>`, each id
//! written once, so every replica serves one tree. An append catches up with what other
//! replicas added, then claims the next id; a lost race catches up again. Each record names the
//! tree before it, so a replica never applies one that does not extend its own tree.

use std::sync::Arc;

use modgate_core::gomod::path::ModulePath;
use prometheus::IntGauge;

use crate::store::shared::{Once, SharedStore};
use crate::store::sumlog::{Found, SumLog, SumLogError};

/// Why a record could not be added.
#[derive(Debug, thiserror::Error)]
pub enum AddError {
    #[error("the shared bucket failed: {0}")]
    Bucket(#[from] object_store::Error),
    #[error(transparent)]
    Log(#[from] SumLogError),
    #[error("checksum-database task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("too many racing appends")]
    Racing,
}

/// Adds the record of `module@version` unless the log has one (on the blocking pool: it
/// fsyncs), through the shared bucket when there is one; `records` is the gauge of the tree's
/// size.
#[allow(clippy::too_many_arguments)]
pub async fn add(
    log: &Arc<SumLog>,
    shared: Option<&SharedStore>,
    records: &IntGauge,
    module: &ModulePath,
    version: &str,
    zip: String,
    go_mod: String,
    source: String,
) -> Result<Found, AddError> {
    let Some(shared) = shared else {
        let (log2, m, v) = (log.clone(), module.to_string(), version.to_string());
        let (found, new) =
            tokio::task::spawn_blocking(move || log2.add(&m, &v, &zip, &go_mod, &source)).await??;
        if new {
            recorded(log, records, module, version, found.id);
        }
        return Ok(found);
    };
    let _one = log.appending.lock().await;
    for _ in 0..64 {
        catch_up(shared, log).await?;
        if let Some(found) = log.find(module.as_str(), version) {
            return Ok(found);
        }
        let id = log.size();
        let data = log.new_record(module.as_str(), version, &zip, &go_mod, &source);
        match shared
            .create_once(&shared_key(log.name(), id), data.clone().into())
            .await?
        {
            Once::Created => {
                apply(log, id, data).await?;
                recorded(log, records, module, version, id);
                if let Some(found) = log.find(module.as_str(), version) {
                    return Ok(found);
                }
            }
            // Another replica took the id: its record is applied by the next catch-up.
            Once::Exists(_) => continue,
        }
    }
    Err(AddError::Racing)
}

fn recorded(log: &SumLog, records: &IntGauge, module: &ModulePath, version: &str, id: u64) {
    records.set(log.size() as i64);
    tracing::info!(%module, version, id, "recorded in modgate's checksum database");
}

/// Record `id` of database `name` in the shared bucket.
fn shared_key(name: &str, id: u64) -> String {
    format!("sumdb/{name}/records/{id:012}")
}

async fn apply(log: &Arc<SumLog>, id: u64, data: Vec<u8>) -> Result<(), AddError> {
    let log = log.clone();
    Ok(tokio::task::spawn_blocking(move || log.apply(id, &data)).await??)
}

/// Applies the records other replicas added to the shared bucket after this log's last one.
pub async fn catch_up(shared: &SharedStore, log: &Arc<SumLog>) -> Result<(), AddError> {
    loop {
        let id = log.size();
        match shared.get_small(&shared_key(log.name(), id)).await? {
            Some(data) => apply(log, id, data.to_vec()).await?,
            None => return Ok(()),
        }
    }
}

/// At start, with a shared bucket: checks that this replica signs with the fleet's key and that
/// its log and the bucket's agree (records made alone before are published; a log that
/// disagrees would serve another tree, so modgate refuses to start), then catches up.
pub async fn join(shared: &SharedStore, log: &Arc<SumLog>) -> anyhow::Result<()> {
    let name = log.name();
    let vkey = log.vkey();
    if let Once::Exists(theirs) = shared
        .create_once(
            &format!("sumdb/{name}/key"),
            vkey.clone().into_bytes().into(),
        )
        .await?
        && theirs != vkey.as_bytes()
    {
        anyhow::bail!(
            "sumdb.serve: this replica signs with {vkey}, the replicas sharing the bucket with {}; give every replica the same ca.dir/sumdb.key",
            String::from_utf8_lossy(&theirs)
        );
    }
    let disagree = |id: u64| {
        anyhow::anyhow!(
            "sumdb.serve: this replica's checksum-database log and the shared bucket's disagree at record {id}; they would serve two different trees. Keep one: move {} away to take the bucket's",
            SumLog::path(std::path::Path::new("<storage.data_dir>"), name).display()
        )
    };
    let size = log.size();
    // How many of this log's records the bucket has (it may have more).
    let mut have = size;
    while have > 0
        && shared
            .get_small(&shared_key(name, have - 1))
            .await?
            .is_none()
    {
        have -= 1;
    }
    if have > 0 {
        let last = shared
            .get_small(&shared_key(name, have - 1))
            .await?
            .unwrap_or_default();
        match log.agrees(have - 1, &last) {
            // It names the tree before it: every record up to it is the same.
            Some(true) => {}
            Some(false) => return Err(disagree(have - 1)),
            // A record that names no tree: compare them all.
            None => {
                for id in 0..have - 1 {
                    let theirs = shared
                        .get_small(&shared_key(name, id))
                        .await?
                        .unwrap_or_default();
                    if log.agrees(id, &theirs) == Some(false) {
                        return Err(disagree(id));
                    }
                }
            }
        }
    }
    for id in have..size {
        let mine = log.record_bytes(id).expect("below the log's size");
        if let Once::Exists(theirs) = shared
            .create_once(&shared_key(name, id), mine.into())
            .await?
            && log.agrees(id, &theirs) == Some(false)
        {
            return Err(disagree(id));
        }
    }
    Ok(catch_up(shared, log).await?)
}
