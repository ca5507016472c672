//! The Go vulnerability database (`vulndb.url`), mirrored: every file govulncheck asks for is a
//! mutable cache entry (checked to be JSON before it is committed, served stale while the
//! database is unreachable), and the firewall's `vulnerable` rules read advisories from the
//! same entries.

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Response};

use crate::body::Body;
use crate::serve::cached::{self, Spec};
use crate::serve::respond::ServeError;
use crate::serve::{Live, State};
use crate::telemetry::ctx::ReqCtx;
use modgate_core::cache_key::VulnDbPath;
use modgate_core::gomod::osv;
use modgate_core::policy::classify::Target;
use modgate_core::policy::firewall::Advisory;
use modgate_core::policy::route::{CacheClass, Content, Route, Rules, VulnDbFetch, route};

/// The cache spec of a database file.
fn spec(f: &VulnDbFetch, dynamic: &Live) -> Result<Spec, ServeError> {
    let base = dynamic.vulndb.as_ref().ok_or_else(|| {
        ServeError::ClientNotFound("not found: no vulnerability database is configured".into())
    })?;
    Ok(super::single_source_spec(
        f.key().clone(),
        CacheClass::Mutable,
        Content::Json,
        base,
        f.upstream_path(),
        dynamic,
    ))
}

/// Serves an agent's request for a database file.
pub async fn serve(
    f: VulnDbFetch,
    ctx: &mut ReqCtx,
    state: &Arc<State>,
    dynamic: &Live,
    method: &Method,
) -> Result<Response<Body>, ServeError> {
    cached::serve(spec(&f, dynamic)?, ctx, state, method).await
}

/// A database file through the cache, as an internal request: `None` when not found.
async fn fetch(state: &Arc<State>, path: &str) -> Result<Option<Bytes>, String> {
    let dynamic = state.live();
    let db = dynamic
        .policy
        .classifier
        .vulndb_host()
        .ok_or("no vulnerability database is configured (vulndb.url)")?
        .to_string();
    let path = VulnDbPath::new(path).ok_or_else(|| format!("{path:?} is not a database file"))?;
    let target = Target::VulnDb {
        db: db.clone(),
        path,
    };
    let Route::VulnDb(f) = route(&target, &Rules::default()) else {
        return Err("not a vulnerability-database request".into());
    };
    let mut ctx = super::internal_ctx(state, &db, f.upstream_path(), &target);
    ctx.set_route("vulndb", "vulndb");
    super::internal_fetch(state, ctx, spec(&f, &dynamic)).await
}

/// The advisories affecting `module@version`: from `index/modules.json` and the entries it
/// lists, or from the legacy `<module>.json` when the database has no such index. `Err` when
/// the database could not be read.
pub async fn advisories(
    state: &Arc<State>,
    module: &str,
    version: &str,
) -> Result<Vec<Advisory>, String> {
    let Some(index) = fetch(state, "index/modules.json").await? else {
        let escaped = modgate_core::gomod::path::escape_path(module).map_err(|e| e.to_string())?;
        return match fetch(state, &format!("{escaped}.json")).await? {
            Some(entries) => osv::affects_all(&entries, module, version).map_err(|e| e.to_string()),
            None => Ok(vec![]),
        };
    };
    let mut out = vec![];
    for id in osv::index_ids(&index, module).map_err(|e| e.to_string())? {
        let entry = fetch(state, &format!("ID/{id}.json"))
            .await?
            .ok_or_else(|| format!("advisory {id} is listed in the index but not found"))?;
        if let Some(a) = osv::affects(&entry, module, version).map_err(|e| e.to_string())? {
            out.push(a);
        }
    }
    Ok(out)
}
