//! modgate's own checksum database (`sumdb.serve`): a real Go checksum database of every
//! version modgate proved, public and private, signed with its own key (beside the CA) and
//! served on the intercepted host `<name>` and under `/sumdb/<name>/` on module-proxy hosts.
//! Agents that set `GOSUMDB=<name>+<hash>+<key>` get the go command's own verification for
//! private modules too.
//!
//! A lookup of a version not yet recorded records it first, from what modgate can prove:
//! - a private version (its private route) is built from git, which pins its go.mod and zip on
//!   first sight and refuses changed content, and the pins become the record;
//! - a public version's record is proven against the database of `sumdb.verify` (the same proof
//!   as at fill) and recorded as it is there. Proofs at fill record it too, as they happen.
//!
//! Versions nothing proves (public modules exempt by `sumdb.nosumdb` or with verification off,
//! private paths no route serves) have no record: 404 with the reason.

use std::sync::Arc;

use http::{HeaderValue, Method, Response};
use http_body_util::BodyExt as _;

use crate::body::Body;
use crate::serve::respond::ServeError;
use crate::serve::{Live, State, private, prove};
use crate::store::pins::PinFile;
use crate::store::shared::{Once, SharedStore};
use crate::store::sumlog::{Found, SumLog};
use modgate_core::gomod::path::ModulePath;
use modgate_core::policy::classify::{ProxyOp, SumDbOp, Target};
use modgate_core::policy::route::{Route, route};

/// Answers one request to modgate's own checksum database.
pub async fn serve(
    op: SumDbOp,
    state: &Arc<State>,
    dynamic: &Live,
) -> Result<Response<Body>, ServeError> {
    let Some(log) = &state.own_sumdb else {
        return Err(ServeError::Internal(
            "sumdb.serve was set by a reload; modgate's own checksum database starts with the next restart".into(),
        ));
    };
    match op {
        SumDbOp::Supported => Ok(Response::new(crate::body::empty())),
        SumDbOp::Latest => {
            if let Some(shared) = &state.shared
                && let Err(e) = catch_up(shared, log).await
            {
                tracing::warn!(error = %e, "cannot catch up with the shared checksum-database log");
            }
            Ok(text(log.latest().to_string(), "no-cache"))
        }
        SumDbOp::Tile(t) => {
            // A tile of a newer tree than this replica's (another replica added records).
            if log.tile(&t).is_none()
                && let Some(shared) = &state.shared
                && let Err(e) = catch_up(shared, log).await
            {
                tracing::warn!(error = %e, "cannot catch up with the shared checksum-database log");
            }
            tile(log, t)
        }
        SumDbOp::Lookup { module, version } => lookup(state, dynamic, log, module, version).await,
    }
}

fn tile(log: &SumLog, t: modgate_core::gomod::sumdb::Tile) -> Result<Response<Body>, ServeError> {
    match log.tile(&t) {
        Some(data) => {
            let mut resp = Response::new(crate::body::full(data));
            let content_type = if t.l < 0 {
                "text/plain; charset=utf-8"
            } else {
                "application/octet-stream"
            };
            let h = resp.headers_mut();
            h.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static(content_type),
            );
            if t.is_full() {
                h.insert(
                    http::header::CACHE_CONTROL,
                    HeaderValue::from_static("public, max-age=86400, immutable"),
                );
            }
            Ok(resp)
        }
        None => Err(ServeError::ClientNotFound(format!(
            "not found: {} is not in the tree of {} (size {})",
            t.path(),
            log.name(),
            log.size()
        ))),
    }
}

async fn lookup(
    state: &Arc<State>,
    dynamic: &Live,
    log: &Arc<SumLog>,
    module: ModulePath,
    version: String,
) -> Result<Response<Body>, ServeError> {
    let count = |outcome: &str| {
        state
            .metrics
            .own_sumdb_lookups
            .with_label_values(&[outcome])
            .inc();
    };
    if let Some(found) = log.find(module.as_str(), &version) {
        count("found");
        return Ok(text(found.lookup_body(), "no-cache"));
    }
    // Another replica may have recorded it.
    if let Some(shared) = &state.shared {
        catch_up(shared, log).await.map_err(|e| {
            ServeError::UpstreamFailed(format!(
                "modgate's checksum database {} cannot read the shared bucket: {e}",
                log.name()
            ))
        })?;
        if let Some(found) = log.find(module.as_str(), &version) {
            count("found");
            return Ok(text(found.lookup_body(), "no-cache"));
        }
    }
    match record(state, dynamic, log, &module, &version).await {
        Ok(found) => {
            count("added");
            Ok(text(found.lookup_body(), "no-cache"))
        }
        Err(e) => {
            count(match &e {
                ServeError::ClientNotFound(_) => "not_found",
                ServeError::UpstreamFailed(_) | ServeError::UpstreamStatus { .. } => "refused",
                _ => "error",
            });
            Err(e)
        }
    }
}

fn text(body: String, cache: &'static str) -> Response<Body> {
    let mut resp = Response::new(crate::body::full(body));
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(http::header::CACHE_CONTROL, HeaderValue::from_static(cache));
    resp
}

/// Proves `module@version` and records it.
async fn record(
    state: &Arc<State>,
    dynamic: &Live,
    log: &Arc<SumLog>,
    module: &ModulePath,
    version: &str,
) -> Result<Found, ServeError> {
    let rules = &dynamic.policy.rules;
    let (zip, go_mod, source) = if rules.private.matching(module.as_str()).is_some() {
        pinned(state, dynamic, log, module, version).await?
    } else {
        let verifier = dynamic
            .verifier
            .as_ref()
            .filter(|v| prove::applies(v, module))
            .ok_or_else(|| {
                ServeError::ClientNotFound(format!(
                    "not found: {module}@{version}: modgate's checksum database records public modules once it proved them against sumdb.verify, and {}",
                    if dynamic.verifier.is_some() {
                        "this path is exempt by sumdb.nosumdb"
                    } else {
                        "sumdb.verify is off"
                    }
                ))
            })?;
        let proven = prove::record(state, verifier, module, version)
            .await
            // Unprovable (the database is down, or has no such version) is a failure the go
            // command shows, and counted as refused, so an outage reaches the alert.
            .map_err(|e| ServeError::UpstreamFailed(e.to_string()))?;
        let (zip, go_mod) = proven.hashes(module, version).ok_or_else(|| {
            ServeError::UpstreamFailed(format!(
                "the record of {module}@{version} in {} lacks its zip or go.mod line",
                verifier.db
            ))
        })?;
        (zip, go_mod, proven.source(&verifier.db))
    };
    add(state, log, module, version, zip, go_mod, source).await
}

/// Appends a record (on the blocking pool: it fsyncs). With a shared bucket the record takes
/// the next id there, written once, so every replica serves one tree: catch up with what other
/// replicas added, then claim the next id; a lost race catches up again.
pub async fn add(
    state: &Arc<State>,
    log: &Arc<SumLog>,
    module: &ModulePath,
    version: &str,
    zip: String,
    go_mod: String,
    source: String,
) -> Result<Found, ServeError> {
    let Some(shared) = &state.shared else {
        let (log2, m, v) = (log.clone(), module.to_string(), version.to_string());
        let (found, new) =
            tokio::task::spawn_blocking(move || log2.add(&m, &v, &zip, &go_mod, &source))
                .await
                .map_err(|e| ServeError::Internal(format!("checksum-database task failed: {e}")))?
                .map_err(|e| ServeError::Internal(e.to_string()))?;
        if new {
            recorded(state, log, module, version, found.id);
        }
        return Ok(found);
    };
    let bucket_err = |e: String| {
        ServeError::UpstreamFailed(format!(
            "modgate's checksum database {} cannot record {module}@{version}: the shared bucket failed: {e}",
            log.name()
        ))
    };
    let _one = log.appending.lock().await;
    for _ in 0..64 {
        catch_up(shared, log).await.map_err(bucket_err)?;
        if let Some(found) = log.find(module.as_str(), version) {
            return Ok(found);
        }
        let id = log.size();
        let data = log.new_record(module.as_str(), version, &zip, &go_mod, &source);
        match shared
            .create_once(&shared_key(log.name(), id), data.clone().into())
            .await
            .map_err(|e| bucket_err(e.to_string()))?
        {
            Once::Created => {
                apply(log, id, data).await.map_err(bucket_err)?;
                recorded(state, log, module, version, id);
                return log
                    .find(module.as_str(), version)
                    .ok_or_else(|| ServeError::Internal("record vanished".into()));
            }
            // Another replica took the id: its record is applied by the next catch-up.
            Once::Exists(_) => continue,
        }
    }
    Err(bucket_err("too many racing appends".into()))
}

fn recorded(state: &State, log: &SumLog, module: &ModulePath, version: &str, id: u64) {
    state.metrics.own_sumdb_records.set(log.size() as i64);
    tracing::info!(%module, version, id, "recorded in modgate's checksum database");
}

/// Record `id` of database `name` in the shared bucket.
fn shared_key(name: &str, id: u64) -> String {
    format!("sumdb/{name}/records/{id:012}")
}

async fn apply(log: &Arc<SumLog>, id: u64, data: Vec<u8>) -> Result<(), String> {
    let log = log.clone();
    tokio::task::spawn_blocking(move || log.apply(id, &data))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}

/// Applies the records other replicas added to the shared bucket after this log's last one.
pub async fn catch_up(shared: &SharedStore, log: &Arc<SumLog>) -> Result<(), String> {
    loop {
        let id = log.size();
        match shared
            .get_small(&shared_key(log.name(), id))
            .await
            .map_err(|e| e.to_string())?
        {
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
    catch_up(shared, log).await.map_err(anyhow::Error::msg)
}

/// A private version's pinned hashes: its go.mod and zip are served through its private route
/// (built from git and pinned the first time, checked against the pins after).
async fn pinned(
    state: &Arc<State>,
    dynamic: &Live,
    log: &SumLog,
    module: &ModulePath,
    version: &str,
) -> Result<(String, String, String), ServeError> {
    for op in [
        ProxyOp::Mod(version.to_string()),
        ProxyOp::Zip(version.to_string()),
    ] {
        let target = Target::GoProxy {
            module: module.clone(),
            op,
        };
        let Route::Private(f) = route(&target, &dynamic.policy.rules) else {
            return Err(ServeError::ClientNotFound(format!(
                "not found: {module} is private and no private route serves it, so modgate's checksum database has no record of it"
            )));
        };
        let Route::Public(p) = route(&target, &Default::default()) else {
            unreachable!("a GOPROXY target routes to a fetch without rules")
        };
        let mut ctx = super::internal_ctx(state, log.name(), p.upstream_path(), &target);
        let resp = private::serve(f, &mut ctx, state, dynamic, &Method::GET).await?;
        let status = resp.status();
        // Drained, not held: a zip can be large, and the pin is written before it is served.
        let mut body = super::finish(resp, ctx).into_body();
        while let Some(frame) = body.frame().await {
            if frame.is_err() {
                break;
            }
        }
        if !status.is_success() {
            return Err(ServeError::Internal(format!(
                "building {module}@{version} for the checksum database answered {status}"
            )));
        }
    }
    let pins = state
        .pins
        .get(module.as_str(), version)
        .map_err(|e| ServeError::Internal(e.to_string()))?;
    let find = |file: PinFile| {
        pins.iter()
            .find(|(f, _)| *f == file)
            .map(|(_, p)| p.clone())
    };
    let (Some(zip), Some(go_mod)) = (find(PinFile::Zip), find(PinFile::Mod)) else {
        return Err(ServeError::Internal(format!(
            "{module}@{version} was served from the cache but has no pins (was the integrity log removed?); remove its cache entries so that modgate rebuilds and pins it"
        )));
    };
    let source = format!("pinned {}", zip.commit);
    Ok((zip.h1, go_mod.h1, source))
}
