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
use crate::store::sumlog::{Found, SumLog};
use crate::store::sumshare::{self, catch_up};
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
                "modgate's checksum database {} cannot catch up with other replicas: {e}",
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

/// Appends a record (see [`crate::store::sumshare::add`]), as a refusal the go command shows
/// when it cannot be recorded.
pub async fn add(
    state: &Arc<State>,
    log: &Arc<SumLog>,
    module: &ModulePath,
    version: &str,
    zip: String,
    go_mod: String,
    source: String,
) -> Result<Found, ServeError> {
    let records = &state.metrics.own_sumdb_records;
    sumshare::add(
        log,
        state.shared.as_deref(),
        records,
        module,
        version,
        zip,
        go_mod,
        source,
    )
    .await
    .map_err(|e| {
        ServeError::UpstreamFailed(format!(
            "modgate's checksum database {} cannot record {module}@{version}: {e}",
            log.name()
        ))
    })
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
