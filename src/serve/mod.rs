//! What happens to each request: one entry point, [`dispatch`], which classifies and routes the
//! request (pure, in `policy`) and runs the route's handler. Handlers return
//! `Result<Response, ServeError>`; `respond` turns errors into responses, and the access log wraps
//! every response body.

pub mod cached;
pub mod firewall;
pub mod forward;
pub mod git;
pub mod memo;
pub mod ownsum;
pub mod private;
pub mod prove;
pub mod respond;
pub mod state;
pub mod vulndb;

pub use state::{Live, State};

use std::convert::Infallible;
use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;

use crate::body::Body;
use crate::egress::lane::Lane;
use crate::serve::cached::{Source, Spec};
use crate::serve::respond::ServeError;
use crate::telemetry::access_log;
use tracing::Instrument as _;

use crate::telemetry::ctx::ReqCtx;
use crate::telemetry::labels::{CacheOutcome, Mode};
use modgate_core::base_url::BaseUrl;
use modgate_core::cache_key::CacheKey;
use modgate_core::policy::Entry;
use modgate_core::policy::classify::{ProxyOp, SumDbOp, Target};
use modgate_core::policy::route::{CacheClass, Content, PublicFetch, Route, SumDbFetch};

/// Handles one intercepted request and arranges for it to be observed when its body ends.
/// `lane` is the client connection's own upstream connection for pass-through forwarding.
pub async fn dispatch(
    req: Request<Incoming>,
    mut ctx: ReqCtx,
    state: Arc<State>,
    lane: Arc<Lane>,
) -> Result<Response<Body>, Infallible> {
    let span = ctx.span.clone();
    let resp = match handle(req, &mut ctx, &state, &lane).instrument(span).await {
        Ok(resp) => resp,
        Err(e) => {
            ctx.reason = Some(e.to_string());
            respond::error_response(&e)
        }
    };
    Ok(finish(resp, ctx))
}

async fn handle(
    req: Request<Incoming>,
    ctx: &mut ReqCtx,
    state: &Arc<State>,
    lane: &Lane,
) -> Result<Response<Body>, ServeError> {
    let dynamic = state.live();
    let endpoint = ctx.conn.mode == Mode::Endpoint;
    // Reads of module proxies and checksum databases are remembered (see `memo`).
    let memoizable = (req.method() == http::Method::GET || req.method() == http::Method::HEAD)
        && req.uri().query().is_none()
        && (endpoint || dynamic.policy.classifier.is_read_only_host(&ctx.conn.host));
    let host = if endpoint { "" } else { ctx.conn.host.as_str() };
    let remembered = if memoizable {
        dynamic.memo.get(endpoint, host, req.uri().path())
    } else {
        None
    };
    if let Some(d) = &remembered
        && let Some(spec) = &d.spec
        && !dynamic.policy.firewall.is_active()
        && matches!(d.route, Route::Public(_))
    {
        ctx.set_route(d.route.name(), d.target.kind());
        describe(&d.target, ctx);
        return cached::serve(spec.clone(), ctx, state, req.method()).await;
    }
    let (target, route) = match remembered {
        Some(d) => (d.target.clone(), d.route.clone()),
        None => {
            let decided = if endpoint {
                // The endpoint's prefix is already off the path (ingress::endpoint).
                dynamic.policy.decide_endpoint(
                    !state.config.endpoint.plain_http,
                    req.method().as_str(),
                    req.uri().path(),
                )
            } else {
                dynamic.policy.decide(
                    Entry::Intercepted,
                    &ctx.conn.host,
                    req.method().as_str(),
                    req.uri().path(),
                    req.uri().query(),
                )
            };
            match decided {
                Ok((target, route)) if memoizable => {
                    let spec = match &route {
                        Route::Public(f) => Some(Arc::new(public_spec(f, &dynamic))),
                        _ => None,
                    };
                    let d = dynamic.memo.put(
                        endpoint,
                        host,
                        req.uri().path(),
                        target.clone(),
                        route.clone(),
                        spec.clone(),
                    );
                    if let (Some(spec), false) = (spec, dynamic.policy.firewall.is_active()) {
                        ctx.set_route(d.route.name(), d.target.kind());
                        describe(&d.target, ctx);
                        return cached::serve(spec, ctx, state, req.method()).await;
                    }
                    (target, route)
                }
                Ok(v) => v,
                Err(e) => {
                    ctx.set_route("invalid", ctx.kind);
                    return Err(e.into());
                }
            }
        }
    };
    ctx.set_route(route.name(), target.kind());
    describe(&target, ctx);
    // The routes taken less often are boxed: this future's size is its largest branch's, and
    // every request's future is moved into hyper's slot, so the hot routes stay small.
    match route {
        Route::Public(f) if dynamic.policy.firewall.is_active() => {
            Box::pin(firewall::public(f, ctx, state, &dynamic, req.method())).await
        }
        Route::Public(f) => {
            let spec = public_spec(&f, &dynamic);
            cached::serve(spec, ctx, state, req.method()).await
        }
        Route::SumDb(f) => {
            if let Some(resp) = tile_from_wider(&f, ctx, state).await {
                return Ok(resp);
            }
            let spec = sumdb_spec(&f, &dynamic)?;
            cached::serve(spec, ctx, state, req.method()).await
        }
        Route::SumDbSupported => Ok(Response::new(crate::body::empty())),
        Route::OwnSumDb(op) => Box::pin(ownsum::serve(op, state, &dynamic)).await,
        Route::PrivateRefused { kind, message, .. } => {
            tracing::info!(
                module = ctx.module.as_deref(),
                kind,
                "private module path refused locally"
            );
            Err(refuse_private(state, kind, message))
        }
        Route::Private(f) => Box::pin(private::serve(f, ctx, state, &dynamic, req.method())).await,
        Route::GoGetAnswer { root } => Ok(private::go_get_answer(&root)),
        Route::GitForward {
            repo,
            request_prefix,
        } => Box::pin(git::forward(req, &repo, &request_prefix, ctx, &dynamic)).await,
        Route::VulnDb(f) => Box::pin(vulndb::serve(f, ctx, state, &dynamic, req.method())).await,
        Route::Forward => {
            if let Some(refusal) = direct_refusal(&target, req.uri().path(), state, &dynamic) {
                return refusal;
            }
            forward::intercepted(req, ctx, state, &dynamic, lane).await
        }
    }
}

/// While the module firewall is active (and `firewall.direct = "refuse"`), go-get discovery
/// and git for public modules are refused: code that comes in that way would pass no rule. The
/// refusal is a 403 with the text the go command prints; to git's ref discovery
/// (`/info/refs?service=...`) it is a smart-HTTP advertisement carrying an `ERR` line, which git
/// prints as `fatal: remote error: ...` (it shows nothing of a 403's body).
pub(crate) fn direct_refusal(
    target: &Target,
    path: &str,
    state: &State,
    dynamic: &Live,
) -> Option<Result<Response<Body>, ServeError>> {
    if !dynamic.policy.firewall.is_active()
        || dynamic.config.firewall.direct == crate::config::DirectVcs::Allow
    {
        return None;
    }
    let module = match target {
        Target::GoGet { path } => path.as_str(),
        Target::Git { .. } => target.module_path()?,
        _ => return None,
    };
    state.metrics.firewall_direct_refused.inc();
    tracing::info!(
        target: "modgate::audit",
        module,
        rule = "direct",
        verdict = "refused",
        "firewall decision"
    );
    let message = format!(
        "modgate: {module} is being fetched directly from its code host, which the module firewall does not allow; fetch it through the module proxy instead (remove GOPROXY=direct, and take it out of GOPRIVATE/GONOPROXY unless it is one of your private modules)"
    );
    if let Target::Git { service, .. } = target
        && path.ends_with("/info/refs")
    {
        return Some(Ok(git_error_advertisement(service, &message)));
    }
    Some(Err(ServeError::ClientForbidden(message)))
}

/// A git smart-HTTP ref advertisement for `service` that ends in `ERR message`.
fn git_error_advertisement(service: &str, message: &str) -> Response<Body> {
    let pkt = |payload: &str| format!("{:04x}{payload}", payload.len() + 4);
    let body = format!(
        "{}0000{}",
        pkt(&format!("# service={service}\n")),
        pkt(&format!("ERR {message}\n"))
    );
    let mut resp = Response::new(crate::body::full(body));
    if let Ok(v) = http::HeaderValue::from_str(&format!("application/x-{service}-advertisement")) {
        resp.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    resp.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-cache"),
    );
    resp
}

/// A private path answered locally: counted, and the not-found the go command shows.
pub fn refuse_private(state: &State, kind: &str, message: String) -> ServeError {
    state
        .metrics
        .private_refused
        .with_label_values(&[kind])
        .inc();
    ServeError::ClientNotFound(message)
}

/// Records what the request is about, for the access log.
pub(crate) fn describe(target: &Target, ctx: &mut ReqCtx) {
    if let Some(m) = target.module_path() {
        ctx.set_module(m.to_string());
    }
    match target {
        Target::GoProxy { op, .. } => {
            ctx.op = op.name();
            ctx.version = op.version().map(str::to_string);
        }
        Target::SumDb { op, .. } => {
            ctx.op = op.name();
            if let SumDbOp::Lookup { version, .. } = op {
                ctx.version = Some(version.clone());
            }
        }
        Target::GoGet { .. } => ctx.op = "go-get",
        Target::Git { service, .. } => ctx.op = service,
        Target::VulnDb { .. } => ctx.op = "vulndb",
        Target::Other => {}
    }
}

pub(crate) fn public_spec(f: &PublicFetch, dynamic: &Live) -> Spec {
    Spec {
        key: f.key().clone(),
        class: f.class(),
        content: f.content(),
        max_len: if matches!(f.op(), ProxyOp::Zip(_)) {
            dynamic.config.modules.max_zip_size.as_u64()
        } else {
            dynamic.config.modules.max_file_size.as_u64()
        },
        sources: cached::sources_from(dynamic.public_upstreams.entries(), dynamic),
        path: f.upstream_path().to_string(),
        prove: match (&dynamic.verifier, f.op()) {
            (Some(v), ProxyOp::Mod(_) | ProxyOp::Zip(_)) if prove::applies(v, f.module()) => {
                Some(v.clone())
            }
            _ => None,
        },
        direct: Some((f.module().clone(), f.op().clone())),
    }
}

fn sumdb_spec(f: &SumDbFetch, dynamic: &Live) -> Result<Spec, ServeError> {
    let base = dynamic.sumdbs.get(f.db()).ok_or_else(|| {
        ServeError::ClientNotFound(format!(
            "not found: checksum database {} is not configured",
            f.db()
        ))
    })?;
    Ok(single_source_spec(
        f.key().clone(),
        f.class(),
        f.content(),
        base,
        f.upstream_path(),
        dynamic,
    ))
}

/// The spec of an entry with one upstream, the configured URL `base` (overrides applied), at
/// `path`: checksum-database and vulnerability-database files.
pub(crate) fn single_source_spec(
    key: CacheKey,
    class: CacheClass,
    content: Content,
    base: &BaseUrl,
    path: &str,
    dynamic: &Live,
) -> Spec {
    Spec {
        key,
        class,
        content,
        max_len: dynamic.config.modules.max_file_size.as_u64(),
        sources: vec![Source::Url {
            label: base.host().to_string(),
            base: dynamic.resolve(base),
            on_any_error: false,
        }],
        path: path.to_string(),
        prove: None,
        direct: None,
    }
}

/// A partial hash tile is a prefix of every wider version of the same tile (the tree only
/// grows), so it is served from a cached full or wider tile when one exists: no upstream
/// request, and it keeps working offline for clients holding an older tree head.
async fn tile_from_wider(
    f: &SumDbFetch,
    ctx: &mut ReqCtx,
    state: &State,
) -> Option<Response<Body>> {
    let SumDbOp::Tile(t) = f.op() else {
        return None;
    };
    if t.l < 0 || t.is_full() {
        return None;
    }
    let full = modgate_core::gomod::sumdb::Tile { w: 1 << t.h, ..*t };
    let full_key = CacheKey::sumdb(f.db(), &SumDbOp::Tile(full)).expect("a tile has a key");
    let mut candidates = vec![full_key.as_str().to_string()];
    let partial_dir = CacheKey::partial_tile_dir(f.db(), t);
    let mut wider: Vec<u64> = state
        .cache
        .children(&partial_dir)
        .iter()
        .filter_map(|w| w.parse::<u64>().ok())
        .filter(|w| *w > t.w)
        .collect();
    wider.sort_unstable_by(|a, b| b.cmp(a));
    candidates.extend(wider.iter().map(|w| format!("{partial_dir}/{w}")));
    let want = (t.w * 32) as usize;
    for key in candidates {
        let Some(found) = state.cache.get(&key) else {
            continue;
        };
        let Ok(data) = tokio::fs::read(&found.path).await else {
            continue;
        };
        if data.len() < want {
            continue;
        }
        ctx.cache = CacheOutcome::Hit;
        let mut resp = Response::new(crate::body::full(bytes::Bytes::from(data).slice(..want)));
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/octet-stream"),
        );
        resp.headers_mut().insert(
            cached::CACHE_HEADER,
            http::HeaderValue::from_static(CacheOutcome::Hit.as_str()),
        );
        return Some(resp);
    }
    None
}

/// Wraps the response body so the request is logged and measured once it is done.
pub fn finish(resp: Response<Body>, ctx: ReqCtx) -> Response<Body> {
    let status = resp.status().as_u16();
    ctx.response_started();
    // An answer to HEAD has no body. hyper leaves it out on HTTP/1.1 but would send it on
    // HTTP/2, where the client then resets the stream. (A fill goes on without its client.)
    let resp = if ctx.method == http::Method::HEAD {
        resp.map(|_| crate::body::empty())
    } else {
        resp
    };
    resp.map(|body| access_log::observe(body, ctx, status))
}

/// A checksum-database answer through modgate's own cache (and its partial-tile rule), as an
/// internal request: observed with `entry="internal"`.
///
/// Boxed, with its type written out: a fill proves itself through the cache, so the cache's
/// future and this one contain each other, and the compiler needs a named type between them.
/// The gateway hands this function to [`State`] as its `sumdb_fetch`.
pub fn sumdb_via_cache<'a>(
    state: &'a Arc<State>,
    db: &'a str,
    op: SumDbOp,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<bytes::Bytes, String>> + Send + 'a>>
{
    Box::pin(fetch_inner(state, db, op))
}

async fn fetch_inner(state: &Arc<State>, db: &str, op: SumDbOp) -> Result<bytes::Bytes, String> {
    let dynamic = state.live();
    let target = Target::SumDb {
        db: db.to_string(),
        op,
    };
    let Route::SumDb(f) =
        modgate_core::policy::route::route(&target, &modgate_core::policy::route::Rules::default())
    else {
        return Err("not a checksum-database request".into());
    };
    let host = db.split('/').next().unwrap_or(db);
    let mut ctx = internal_ctx(state, host, f.upstream_path(), &target);
    let resp = match tile_from_wider(&f, &mut ctx, state).await {
        Some(resp) => resp,
        None => {
            let served = match sumdb_spec(&f, &dynamic) {
                Ok(spec) => cached::serve(spec, &mut ctx, state, &http::Method::GET).await,
                Err(e) => Err(e),
            };
            // A failure is answered and observed like a client's request would be.
            served.unwrap_or_else(|e| respond::error_response(&e))
        }
    };
    let status = resp.status();
    let resp = finish(resp, ctx);
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .map_err(|e| format!("reading {}: {e}", f.upstream_path()))?
        .to_bytes();
    if !status.is_success() {
        let text = String::from_utf8_lossy(&body);
        return Err(format!(
            "{} answered {status}: {}",
            f.upstream_path(),
            text.trim()
        ));
    }
    Ok(body)
}

/// Serves `spec` as an internal request (`ctx` from [`internal_ctx`]), observed like an
/// agent's: the body of a 200, `None` for a not-found (404/410), or what failed.
pub(crate) async fn internal_fetch(
    state: &Arc<State>,
    mut ctx: ReqCtx,
    spec: Result<Spec, ServeError>,
) -> Result<Option<bytes::Bytes>, String> {
    let path = ctx.path.clone();
    let resp = match spec {
        Ok(spec) => cached::serve(spec, &mut ctx, state, &http::Method::GET).await,
        Err(e) => Err(e),
    }
    .unwrap_or_else(|e| respond::error_response(&e));
    let status = resp.status();
    let resp = finish(resp, ctx);
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .map_err(|e| format!("reading {path}: {e}"))?
        .to_bytes();
    match status {
        http::StatusCode::OK => Ok(Some(body)),
        http::StatusCode::NOT_FOUND | http::StatusCode::GONE => Ok(None),
        _ => Err(format!(
            "{path} answered {status}: {}",
            String::from_utf8_lossy(&body).trim()
        )),
    }
}

fn internal_peer() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], 0))
}

/// The context of a request modgate makes to itself (`entry="internal"`) for `path` on `host`:
/// observed like an agent's.
pub(crate) fn internal_ctx(state: &State, host: &str, path: &str, target: &Target) -> ReqCtx {
    let conn = crate::telemetry::ctx::ConnCtx::new(
        internal_peer(),
        crate::telemetry::labels::Mode::Internal,
        host.to_string(),
        443,
    );
    let req = http::Request::get(path)
        .body(())
        .unwrap_or_else(|_| http::Request::new(()));
    let mut ctx = ReqCtx::for_request(conn, &req, state.metrics.clone());
    let name = match target {
        Target::SumDb { .. } => "sumdb",
        _ => "private",
    };
    ctx.set_route(name, target.kind());
    describe(target, &mut ctx);
    ctx
}
