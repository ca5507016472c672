//! Serving through the cache: hit, miss with single-flight fill, stale-if-error.
//!
//! On a miss the first request leads: a spawned task walks the upstream list, writes the body to
//! a temporary file, validates it (length, and module-zip rules for zips) and only then commits
//! it. A body that ends within the first write batch (256 KiB) is answered once committed, or
//! with a 502 saying why it was rejected; a longer one streams to the client as it arrives, its
//! final chunk held back until validation passes, so a client never receives a complete body that
//! was rejected. Other requests for the same key follow the leader: once the first write batch
//! is in the cache file they read the file as it is written (store::growing), getting the last
//! batch only when the body has passed, so a fleet starting the same cold build waits for the
//! upstream once, not once per fill; a follower holding a stale entry, or asking HEAD, waits for
//! the outcome instead. Memory stays bounded by a small channel and a write batch, whatever the
//! body size.

mod direct;
mod fetch;
mod fill;
mod found;

pub use found::serve_found;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Response};
use tokio::sync::oneshot;

use crate::body::Body;
use crate::serve::State;
use crate::serve::prove::Verifier;
use crate::serve::respond::ServeError;
use crate::store::disk::Found;
use crate::store::flight::{Join, Leader};
use crate::store::growing::{Ended, GrowingReader};
use crate::store::shared::Claim;
use crate::telemetry::ctx::ReqCtx;
use crate::telemetry::labels::CacheOutcome;
use fetch::Fetched;
use fill::{Reply, validator};
use found::{decode_not_found, not_found};
use modgate_core::base_url::BaseUrl;
use modgate_core::cache_key::CacheKey;
use modgate_core::gomod::path::ModulePath;
use modgate_core::policy::classify::ProxyOp;
use modgate_core::policy::goproxy::Entry;
use modgate_core::policy::route::{CacheClass, Content};

/// Header naming the cache outcome on every cached route's response.
pub const CACHE_HEADER: http::HeaderName = http::HeaderName::from_static("x-modgate-cache");
/// Largest body kept in memory when serving a hit; larger ones stream from the file.
const INLINE_MAX: u64 = 256 * 1024;
/// Bytes gathered before a blocking write to the cache file.
const WRITE_BATCH: usize = 256 * 1024;
/// Longest not-found text kept.
const NOT_FOUND_TEXT_MAX: usize = 4096;

/// How a fill ended, as told to followers.
#[derive(Debug, Clone)]
pub enum FillOutcome {
    /// The entry is in the cache.
    Committed,
    /// Every upstream said not found; `text` is what to show.
    NotFound { status: u16, text: Bytes },
    /// The upstream failed; the text explains.
    Failed(String),
    /// The leader served the client but could not store the entry: fetch yourself.
    Uncached,
    /// Not an outcome yet: the body is being written to the cache file, readable as it grows.
    Streaming(GrowingReader),
}

impl FillOutcome {
    fn label(&self) -> &'static str {
        match self {
            FillOutcome::Committed => "committed",
            FillOutcome::NotFound { .. } => "not_found",
            FillOutcome::Failed(_) => "failed",
            FillOutcome::Uncached => "uncached",
            FillOutcome::Streaming(_) => "streaming",
        }
    }
}

/// One upstream to try, in order.
#[derive(Debug, Clone)]
pub enum Source {
    Url {
        /// The URL to use (overrides already applied).
        base: BaseUrl,
        /// The configured host, a bounded metric label.
        label: String,
        /// `|` after this entry: fall through on any error.
        on_any_error: bool,
    },
    /// `off`: stop here with not-found.
    Off,
    /// `direct`: resolve the module from its code host (go-get discovery, then git).
    Direct,
}

/// Everything needed to serve one cacheable request.
#[derive(Debug, Clone)]
pub struct Spec {
    pub key: CacheKey,
    pub class: CacheClass,
    pub content: Content,
    /// Longest acceptable body.
    pub max_len: u64,
    pub sources: Vec<Source>,
    /// Path appended to each source's base URL.
    pub path: String,
    /// Prove the complete body against the checksum database before committing it.
    pub prove: Option<Verifier>,
    /// The GOPROXY call, for a `direct` source (public module fetches only).
    pub direct: Option<(ModulePath, ProxyOp)>,
}

/// Turns a configured GOPROXY list into sources, applying upstream overrides.
pub fn sources_from(list: &[Entry], dynamic: &crate::serve::Live) -> Vec<Source> {
    list.iter()
        .map(|e| match e {
            Entry::Proxy { base, on_any_error } => Source::Url {
                base: dynamic.resolve(base),
                label: base.host().to_string(),
                on_any_error: *on_any_error,
            },
            Entry::Off => Source::Off,
            Entry::Direct => Source::Direct,
        })
        .collect()
}

/// Serves `spec` from the cache, filling it from upstream on a miss.
pub async fn serve(
    spec: impl Into<Arc<Spec>>,
    ctx: &mut ReqCtx,
    state: &Arc<State>,
    method: &Method,
) -> Result<Response<Body>, ServeError> {
    let ttl = state.config.cache.mutable_ttl;
    let negative_ttl = state.config.cache.negative_ttl;
    let spec: Arc<Spec> = spec.into();
    for _attempt in 0..3 {
        let found = state.cache.get(spec.key.as_str());
        if let Some(f) = &found
            && (spec.class == CacheClass::Immutable || f.age() < ttl)
        {
            ctx.cache = CacheOutcome::Hit;
            return serve_found(&state.cache, f, spec.content, CacheOutcome::Hit, method).await;
        }
        let neg_key = spec.key.not_found();
        if let Some(n) = state.cache.get(&neg_key)
            && n.age() < negative_ttl
            && found.as_ref().is_none_or(|f| f.modified < n.modified)
            && let Ok(data) = tokio::fs::read(&n.path).await
        {
            ctx.cache = CacheOutcome::Hit;
            let (status, text) = decode_not_found(&data);
            return Ok(not_found(status, text, CacheOutcome::Hit));
        }
        match state.flights.join(spec.key.as_str()) {
            Join::Leader(leader) => {
                return lead_and_answer(&spec, ctx, state, leader, found.as_ref(), method).await;
            }
            Join::Follower(follower) => match follower.wait().await {
                Some(FillOutcome::Streaming(reader))
                    if found.is_none() && method != Method::HEAD =>
                {
                    ctx.cache = CacheOutcome::Coalesced;
                    return Ok(streamed(reader, spec.content));
                }
                // A stale entry to fall back on, or no body wanted: wait for the outcome.
                Some(FillOutcome::Streaming(reader)) => match reader.ended().await {
                    Ended::Complete(_) => {
                        if let Some(f) = state.cache.get(spec.key.as_str()) {
                            ctx.cache = CacheOutcome::Coalesced;
                            return serve_found(
                                &state.cache,
                                &f,
                                spec.content,
                                CacheOutcome::Coalesced,
                                method,
                            )
                            .await;
                        }
                    }
                    Ended::Failed(msg) => {
                        if let Some(stale) = &found {
                            ctx.cache = CacheOutcome::Stale;
                            return serve_found(
                                &state.cache,
                                stale,
                                spec.content,
                                CacheOutcome::Stale,
                                method,
                            )
                            .await;
                        }
                        ctx.cache = CacheOutcome::Coalesced;
                        return Err(ServeError::UpstreamFailed(msg));
                    }
                },
                Some(FillOutcome::Committed) => {
                    if let Some(f) = state.cache.get(spec.key.as_str()) {
                        ctx.cache = CacheOutcome::Coalesced;
                        return serve_found(
                            &state.cache,
                            &f,
                            spec.content,
                            CacheOutcome::Coalesced,
                            method,
                        )
                        .await;
                    }
                }
                Some(FillOutcome::NotFound { status, text }) => {
                    ctx.cache = CacheOutcome::Coalesced;
                    return Ok(not_found(status, text, CacheOutcome::Coalesced));
                }
                Some(FillOutcome::Failed(msg)) => {
                    if let Some(stale) = &found {
                        ctx.cache = CacheOutcome::Stale;
                        return serve_found(
                            &state.cache,
                            stale,
                            spec.content,
                            CacheOutcome::Stale,
                            method,
                        )
                        .await;
                    }
                    ctx.cache = CacheOutcome::Coalesced;
                    return Err(ServeError::UpstreamFailed(msg));
                }
                // The leader could not store it (disk full, read-only): this request fetches
                // for itself, as a leader of its own, so it is answered and checked the same.
                Some(FillOutcome::Uncached) => {
                    return bypass(&spec, ctx, state, found, method).await;
                }
                // The leader gave up: compete again.
                None => {}
            },
        }
    }
    let found = state.cache.get(spec.key.as_str());
    bypass(&spec, ctx, state, found, method).await
}

/// A follower's answer from a fill in progress: the cache file as it is written, ending only
/// if the body passed its checks.
fn streamed(reader: GrowingReader, content: Content) -> Response<Body> {
    use http_body_util::BodyExt as _;
    let declared_len = reader.declared_len;
    let stream = futures_util::StreamExt::map(reader.stream(), |r| {
        r.map(hyper::body::Frame::data)
            .map_err(|e| Box::new(e) as crate::body::BoxError)
    });
    let mut resp = Response::new(http_body_util::StreamBody::new(stream).boxed());
    found::set_headers(&mut resp, content, CacheOutcome::Coalesced, declared_len);
    resp
}

/// Fetches for this request alone (its own flight), after the shared fill could not help.
async fn bypass(
    spec: &Arc<Spec>,
    ctx: &mut ReqCtx,
    state: &Arc<State>,
    found: Option<Found>,
    method: &Method,
) -> Result<Response<Body>, ServeError> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let own = format!("{}#alone-{n}", spec.key);
    match state.flights.join(&own) {
        Join::Leader(leader) => {
            lead_and_answer(spec, ctx, state, leader, found.as_ref(), method).await
        }
        Join::Follower(_) => Err(ServeError::Internal("a private flight had a leader".into())),
    }
}

/// Leads the fill of `spec` on its own task and answers this request from it (or from the stale
/// entry `found` when the upstream fails).
async fn lead_and_answer(
    spec: &Arc<Spec>,
    ctx: &mut ReqCtx,
    state: &Arc<State>,
    leader: Leader<FillOutcome>,
    found: Option<&Found>,
    method: &Method,
) -> Result<Response<Body>, ServeError> {
    let (tx, rx) = oneshot::channel();
    tokio::spawn(lead(spec.clone(), state.clone(), leader, tx));
    let led = rx
        .await
        .map_err(|_| ServeError::Internal("cache fill task ended unexpectedly".into()))?;
    ctx.upstream_time = led.waited;
    ctx.cache = CacheOutcome::Miss;
    match led.result {
        Ok(resp) => Ok(resp),
        Err(e) => match found {
            Some(stale) => {
                ctx.cache = CacheOutcome::Stale;
                tracing::warn!(key = %spec.key, error = %e, "serving stale entry: upstream failed");
                serve_found(
                    &state.cache,
                    stale,
                    spec.content,
                    CacheOutcome::Stale,
                    method,
                )
                .await
            }
            None => Err(e),
        },
    }
}

/// The leader's answer for its own client.
struct Led {
    result: Result<Response<Body>, ServeError>,
    waited: Option<Duration>,
}

/// Fetches from upstream, answers the leader's client through `reply`, fills the cache and
/// tells the followers. Runs as its own task so a client going away does not stop the fill.
async fn lead(
    spec: Arc<Spec>,
    state: Arc<State>,
    leader: crate::store::flight::Leader<FillOutcome>,
    reply: oneshot::Sender<Led>,
) {
    let fills = |o: &FillOutcome| {
        state
            .metrics
            .cache_fills
            .with_label_values(&[o.label()])
            .inc()
    };
    // With a shared tier: take the entry from the bucket, or lead the fetch for every replica,
    // or wait for the replica that leads it.
    let mut lock = None;
    if let Some(shared) = state.shared.clone() {
        let max_age =
            (spec.class != CacheClass::Immutable).then_some(state.config.cache.mutable_ttl);
        match shared
            .claim(spec.key.as_str(), max_age, &state.cache, validator(&spec))
            .await
        {
            Claim::Local => {
                // Proven like an upstream answer before any client sees it; a bucket object
                // that fails is dropped here and fetched from upstream below.
                let proven = match state.cache.get(spec.key.as_str()) {
                    Some(found) => fill::prove_found(&spec, &state, found.path.clone())
                        .await
                        .map(|_| found),
                    None => Err("gone".into()),
                };
                if let Ok(found) = proven {
                    state.cache.remove(&spec.key.not_found());
                    let result = serve_found(
                        &state.cache,
                        &found,
                        spec.content,
                        CacheOutcome::Miss,
                        &Method::GET,
                    )
                    .await;
                    let _ = reply.send(Led {
                        result,
                        waited: None,
                    });
                    leader.finish(FillOutcome::Committed);
                    return;
                }
            }
            Claim::Lead(guard) => lock = Some(guard),
            Claim::Alone => {}
        }
    }
    let (resp, waited) = match fetch::fetch(&spec, &state).await {
        Fetched::Ok(resp, waited) => (resp, waited),
        Fetched::NotFound { status, text } => {
            let mut stored = Vec::with_capacity(text.len() + 4);
            stored.extend_from_slice(format!("{status}\n").as_bytes());
            stored.extend_from_slice(&text);
            let cache = state.cache.clone();
            let key = spec.key.not_found();
            let stored_ok = tokio::task::spawn_blocking(move || cache.put(&key, &stored))
                .await
                .map(|r| r.is_ok())
                .unwrap_or(false);
            if !stored_ok {
                state.cache.count_error();
            }
            let outcome = FillOutcome::NotFound {
                status,
                text: text.clone(),
            };
            fills(&outcome);
            let _ = reply.send(Led {
                result: Ok(not_found(status, text, CacheOutcome::Miss)),
                waited: None,
            });
            leader.finish(outcome);
            return;
        }
        Fetched::Err(e) => {
            let outcome = FillOutcome::Failed(e.to_string());
            fills(&outcome);
            let _ = reply.send(Led {
                result: Err(e),
                waited: None,
            });
            leader.finish(outcome);
            return;
        }
    };

    let declared_len = resp
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared_len.is_some_and(|n| n > spec.max_len) {
        state
            .metrics
            .limit_hits
            .with_label_values(&["body_size"])
            .inc();
        let e = ServeError::UpstreamFailed(format!(
            "upstream body of {} bytes exceeds the limit of {} bytes",
            declared_len.unwrap_or_default(),
            spec.max_len
        ));
        let outcome = FillOutcome::Failed(e.to_string());
        fills(&outcome);
        let _ = reply.send(Led {
            result: Err(e),
            waited: Some(waited),
        });
        leader.finish(outcome);
        return;
    }

    let answer = Reply {
        reply,
        waited,
        declared_len,
    };
    let outcome = fill::fill(&spec, &state, resp.into_body(), answer, &leader).await;
    fills(&outcome);
    let committed = matches!(outcome, FillOutcome::Committed);
    leader.finish(outcome);
    // Local followers are served; now the other replicas.
    if committed
        && let Some(shared) = &state.shared
        && let Some(found) = state.cache.get(spec.key.as_str())
    {
        let immutable = spec.class == CacheClass::Immutable;
        shared
            .publish(
                spec.key.as_str(),
                &found.path,
                immutable,
                found.modified,
                lock.take(),
            )
            .await;
    }
}
