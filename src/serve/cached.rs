//! Serving through the cache: hit, miss with single-flight fill, stale-if-error.
//!
//! On a miss the first request leads: a spawned task walks the upstream list, writes the body to
//! a temporary file, validates it (length, and module-zip rules for zips) and only then commits
//! it. A body that ends within the first write batch (256 KiB) is answered once committed, or
//! with a 502 saying why it was rejected; a longer one streams to the client as it arrives, its
//! final chunk held back until validation passes, so a client never receives a complete body that
//! was rejected. Other requests for the same key wait for the leader and are served from the
//! committed entry. Memory stays bounded by a small channel and a write batch, whatever the body
//! size.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use tokio::sync::{mpsc, oneshot};

use crate::body::{Body, BoxError};
use crate::serve::State;
use crate::serve::respond::ServeError;
use crate::store::content::check_zip_file;
use crate::store::disk::{DiskCache, Found, PendingEntry, StoreError};
use crate::store::flight::Join;
use crate::store::shared::{Claim, Validator};
use crate::telemetry::ctx::ReqCtx;
use crate::telemetry::labels::CacheOutcome;
use modgate_core::base_url::BaseUrl;
use modgate_core::cache_key::CacheKey;
use modgate_core::gomod::path::ModulePath;
use modgate_core::policy::egress::Decision;
use modgate_core::policy::goproxy::Entry;
use modgate_core::policy::host::normalize_host;
use modgate_core::policy::route::{CacheClass, Content};

/// Header naming the cache outcome on every cached route's response.
pub const CACHE_HEADER: &str = "x-modgate-cache";
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
}

impl FillOutcome {
    fn label(&self) -> &'static str {
        match self {
            FillOutcome::Committed => "committed",
            FillOutcome::NotFound { .. } => "not_found",
            FillOutcome::Failed(_) => "failed",
            FillOutcome::Uncached => "uncached",
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
}

/// Everything needed to serve one cacheable request.
#[derive(Debug, Clone)]
pub struct Spec {
    pub key: CacheKey,
    pub class: CacheClass,
    pub content: Content,
    /// Validate the body as the module zip for this module@version before committing.
    pub zip: Option<(ModulePath, String)>,
    /// Longest acceptable body.
    pub max_len: u64,
    pub sources: Vec<Source>,
    /// Path appended to each source's base URL.
    pub path: String,
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
        })
        .collect()
}

/// Serves `spec` from the cache, filling it from upstream on a miss.
pub async fn serve(
    spec: Spec,
    ctx: &mut ReqCtx,
    state: &Arc<State>,
    method: &Method,
) -> Result<Response<Body>, ServeError> {
    let ttl = state.config.cache.mutable_ttl;
    let negative_ttl = state.config.cache.negative_ttl;
    let spec = Arc::new(spec);
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
                let (tx, rx) = oneshot::channel();
                tokio::spawn(lead(spec.clone(), state.clone(), leader, tx));
                let led = rx.await.map_err(|_| {
                    ServeError::Internal("cache fill task ended unexpectedly".into())
                })?;
                ctx.upstream_time = led.waited;
                ctx.cache = CacheOutcome::Miss;
                return match led.result {
                    Ok(resp) => Ok(resp),
                    Err(e) => match &found {
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
                };
            }
            Join::Follower(follower) => match follower.wait().await {
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
                // The leader could not store it, or gave up: compete again.
                Some(FillOutcome::Uncached) | None => {}
            },
        }
    }
    Err(ServeError::Internal(
        "could not fill the cache entry after several attempts".into(),
    ))
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
                if let Some(found) = state.cache.get(spec.key.as_str()) {
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
    let (resp, waited) = match fetch(&spec, &state).await {
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

    let answer = Answer {
        reply,
        waited,
        declared_len,
    };
    let outcome = fill(&spec, &state, resp.into_body(), answer).await;
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

/// Result of walking the upstream list.
enum Fetched {
    Ok(Response<Incoming>, Duration),
    NotFound { status: u16, text: Bytes },
    Err(ServeError),
}

/// Walks the sources with GOPROXY fall-through rules.
async fn fetch(spec: &Spec, state: &State) -> Fetched {
    let mut not_found: Option<(u16, Bytes)> = None;
    let mut error: Option<ServeError> = None;
    let mut total_wait = Duration::ZERO;
    for source in &spec.sources {
        let (base, label, on_any_error) = match source {
            Source::Off => {
                not_found = Some((
                    404,
                    Bytes::from_static(b"not found: module lookup disabled by GOPROXY=off"),
                ));
                break;
            }
            Source::Url {
                base,
                label,
                on_any_error,
            } => (base, label, *on_any_error),
        };
        let uri = match base.join(&spec.path) {
            Ok(u) => u,
            Err(e) => return Fetched::Err(ServeError::Internal(format!("bad upstream URL: {e}"))),
        };
        match get_following_redirects(uri, label, state, &mut total_wait).await {
            Ok(resp) => {
                match resp.status() {
                    StatusCode::OK => return Fetched::Ok(resp, total_wait),
                    StatusCode::NOT_FOUND | StatusCode::GONE => {
                        let status = resp.status().as_u16();
                        let text = read_text(resp.into_body(), state).await;
                        // Of several not-found answers the go command reports the last
                        // (modfetch `TryProxies`); so does the gateway.
                        not_found = Some((status, text));
                        continue;
                    }
                    other => {
                        let text = read_text(resp.into_body(), state).await;
                        let e = ServeError::UpstreamStatus {
                            upstream: base.to_string(),
                            status: other.as_u16(),
                            detail: String::from_utf8_lossy(&text)
                                .lines()
                                .next()
                                .unwrap_or("")
                                .chars()
                                .take(200)
                                .collect(),
                        };
                        if on_any_error {
                            error = Some(e);
                            continue;
                        }
                        return Fetched::Err(e);
                    }
                }
            }
            Err(e) => {
                if on_any_error {
                    error = Some(e);
                    continue;
                }
                return Fetched::Err(e);
            }
        }
    }
    if let Some(e) = error {
        return Fetched::Err(e);
    }
    match not_found {
        Some((status, text)) => Fetched::NotFound { status, text },
        None => Fetched::Err(ServeError::Internal("no upstream configured".into())),
    }
}

/// Requests per upstream fetch, the first and its redirects: the go command's HTTP client
/// stops at the tenth (`checkRedirect`: "stopped after 10 redirects").
const MAX_REQUESTS: usize = 10;

/// GETs `uri`, following redirects as the go command would against the upstream itself
/// (proxy.golang.org answers zips with a 302 to its storage): at most [`MAX_REQUESTS`] in all,
/// never from https to http, only to hosts the egress policy allows, and through the target
/// host's `upstream.overrides` entry if any.
async fn get_following_redirects(
    mut uri: http::Uri,
    label: &str,
    state: &State,
    total_wait: &mut Duration,
) -> Result<Response<Incoming>, ServeError> {
    let mut requests = 0;
    loop {
        requests += 1;
        let req = Request::get(uri.clone())
            .header(
                http::header::USER_AGENT,
                concat!("modgate/", env!("CARGO_PKG_VERSION")),
            )
            .header(http::header::ACCEPT_ENCODING, "identity")
            .body(crate::body::empty())
            .expect("static request parts are valid");
        let (resp, waited) = state.upstream.send(req, label).await?;
        *total_wait += waited;
        let redirect = matches!(resp.status().as_u16(), 301 | 302 | 303 | 307 | 308);
        // A 3xx without a Location is an answer, as in Go's client.
        let Some(location) = resp
            .headers()
            .get(http::header::LOCATION)
            .filter(|v| redirect && !v.is_empty())
        else {
            return Ok(resp);
        };
        let from = uri.to_string();
        let status = resp.status().as_u16();
        let redirect_error = |detail: String| ServeError::UpstreamStatus {
            upstream: from.clone(),
            status,
            detail,
        };
        if requests == MAX_REQUESTS {
            return Err(redirect_error(format!(
                "stopped after {MAX_REQUESTS} redirects"
            )));
        }
        let location = location
            .to_str()
            .map_err(|_| redirect_error("Location is not text".into()))?
            .to_string();
        let next = redirect_target(&uri, &location, &state.live())
            .map_err(|e| redirect_error(e.to_string()))?;
        // Let the connection go back to the pool: the redirect's body is small or empty.
        let _ = read_text(resp.into_body(), state).await;
        tracing::debug!(from = %uri, to = %next, "upstream redirect");
        uri = next;
    }
}

/// Why modgate does not follow an upstream's redirect.
#[derive(Debug, thiserror::Error)]
enum RedirectError {
    #[error("bad URL {url}: {source}")]
    From {
        url: String,
        source: url::ParseError,
    },
    #[error("bad redirect Location {location:?}: {source}")]
    Location {
        location: String,
        source: url::ParseError,
    },
    #[error("redirected from https to insecure URL {0}")]
    Insecure(url::Url),
    #[error("redirect to unsupported scheme {0:?}")]
    Scheme(String),
    #[error("redirect Location carries credentials")]
    Credentials,
    #[error("redirect to {next} refused: {reason}")]
    Denied { next: url::Url, reason: String },
    #[error("bad redirect target: {0}")]
    Origin(#[from] modgate_core::base_url::UrlError),
    #[error("bad redirect target {next}: {source}")]
    Target { next: url::Url, source: http::Error },
}

/// Where `location`, from a response to `from`, leads: resolved as a URL reference, https to
/// http refused, the new host's override applied.
fn redirect_target(
    from: &http::Uri,
    location: &str,
    dynamic: &crate::serve::Live,
) -> Result<http::Uri, RedirectError> {
    let base = url::Url::parse(&from.to_string()).map_err(|source| RedirectError::From {
        url: from.to_string(),
        source,
    })?;
    let next = base
        .join(location)
        .map_err(|source| RedirectError::Location {
            location: location.to_string(),
            source,
        })?;
    match next.scheme() {
        "https" => {}
        "http" if base.scheme() == "http" => {}
        "http" => return Err(RedirectError::Insecure(next)),
        other => return Err(RedirectError::Scheme(other.to_string())),
    }
    if !next.username().is_empty() || next.password().is_some() {
        return Err(RedirectError::Credentials);
    }
    // The gateway's own egress rules hold for where an upstream sends it.
    let host = next.host_str().unwrap_or_default();
    if let Decision::Deny(reason) = dynamic.policy.egress.decide_forward(&normalize_host(
        host.trim_start_matches('[').trim_end_matches(']'),
    )) {
        return Err(RedirectError::Denied { next, reason });
    }
    let origin = next.origin().ascii_serialization();
    let target = BaseUrl::parse(&origin)?;
    let path = match next.query() {
        Some(q) => format!("{}?{q}", next.path()),
        None => next.path().to_string(),
    };
    dynamic
        .resolve(&target)
        .join(&path)
        .map_err(|source| RedirectError::Target { next, source })
}

/// Reads at most a few KB of an error body, with the response timeout.
async fn read_text(mut body: Incoming, state: &State) -> Bytes {
    let mut buf = BytesMut::new();
    let read = async {
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(data) = frame.into_data() {
                buf.extend_from_slice(&data);
                if buf.len() >= NOT_FOUND_TEXT_MAX {
                    break;
                }
            }
        }
    };
    let _ = tokio::time::timeout(state.config.upstream.response_timeout, read).await;
    buf.truncate(NOT_FOUND_TEXT_MAX);
    buf.freeze()
}

/// How the leader's client is answered: once the body is decided when it ends within the first
/// write batch, else streamed from then on.
struct Answer {
    reply: oneshot::Sender<Led>,
    waited: Duration,
    declared_len: Option<u64>,
}

/// Where the leader's client stands during a fill.
enum Client {
    /// Not answered yet: the chunks so far (at most about one write batch).
    Waiting(Answer, Vec<Bytes>, usize),
    /// Answered with a streaming body; `None` once it went away.
    Streaming(Option<mpsc::Sender<Result<Frame<Bytes>, BoxError>>>),
}

impl Client {
    /// Answers with an error status (plain text) if not answered yet, else breaks the stream.
    async fn fail(self, msg: String) {
        match self {
            Client::Waiting(answer, _, _) => {
                let _ = answer.reply.send(Led {
                    result: Err(ServeError::UpstreamFailed(msg)),
                    waited: Some(answer.waited),
                });
            }
            Client::Streaming(mut tx) => send(&mut tx, Err(msg.into())).await,
        }
    }

    /// Gives the client the rest of a body that passed: all of it, or the held-back last chunk.
    async fn finish(self, content: Content, held: Option<Bytes>) {
        match self {
            Client::Waiting(answer, chunks, len) => {
                let body = if chunks.len() == 1 {
                    chunks.into_iter().next().unwrap_or_default()
                } else {
                    let mut all = BytesMut::with_capacity(len);
                    for c in &chunks {
                        all.extend_from_slice(c);
                    }
                    all.freeze()
                };
                let mut resp =
                    Response::new(Full::new(body).map_err(|never| match never {}).boxed());
                set_headers(&mut resp, content, CacheOutcome::Miss, Some(len as u64));
                let _ = answer.reply.send(Led {
                    result: Ok(resp),
                    waited: Some(answer.waited),
                });
            }
            Client::Streaming(mut tx) => {
                if let Some(last) = held {
                    send(&mut tx, Ok(Frame::data(last))).await;
                }
            }
        }
    }
}

/// Reads the upstream body into the cache and to the leader's client; returns the outcome for
/// followers. A body that ends within the first write batch is stored and checked before the
/// client is answered, so a rejected one is a 502 with the reason; a longer one is streamed as
/// it arrives, its last chunk held back until the whole body has passed.
async fn fill(spec: &Spec, state: &Arc<State>, mut body: Incoming, answer: Answer) -> FillOutcome {
    // The cache file is opened with the first full write batch, or at the end: a small body
    // (.info, .mod, most zips) costs one trip to the blocking pool, create to rename.
    let mut file = Fill::NotOpened;
    let declared_len = answer.declared_len;
    let mut client = Client::Waiting(answer, Vec::new(), 0);
    let mut batch = BytesMut::new();
    let mut held: Option<Bytes> = None;
    let mut total: u64 = 0;
    let idle = state.config.upstream.response_timeout;

    let failure: Option<String> = loop {
        let frame = match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => break Some(format!("upstream stalled for {idle:?} mid-body")),
            Ok(None) => break None,
            Ok(Some(Err(e))) => break Some(format!("upstream body failed: {e}")),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        total += data.len() as u64;
        if total > spec.max_len {
            state
                .metrics
                .limit_hits
                .with_label_values(&["body_size"])
                .inc();
            break Some(format!(
                "upstream body exceeds the limit of {} bytes",
                spec.max_len
            ));
        }
        if !matches!(file, Fill::Failed) {
            batch.extend_from_slice(&data);
            if batch.len() >= WRITE_BATCH {
                file = write_batch(file, spec.key.as_str(), batch.split().freeze(), state).await;
            }
        }
        client = match client {
            Client::Waiting(answer, mut chunks, len) if len + data.len() < WRITE_BATCH => {
                let len = len + data.len();
                chunks.push(data);
                Client::Waiting(answer, chunks, len)
            }
            Client::Waiting(answer, chunks, _) => {
                // Long enough to stream: answer now, holding the newest chunk back.
                let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, BoxError>>(16);
                let mut resp = Response::new(StreamBody::new(tokio_stream_from(rx)).boxed());
                set_headers(&mut resp, spec.content, CacheOutcome::Miss, declared_len);
                let _ = answer.reply.send(Led {
                    result: Ok(resp),
                    waited: Some(answer.waited),
                });
                let mut tx = Some(tx);
                for chunk in chunks {
                    send(&mut tx, Ok(Frame::data(chunk))).await;
                }
                held = Some(data);
                Client::Streaming(tx)
            }
            Client::Streaming(mut tx) => {
                if let Some(prev) = held.replace(data) {
                    send(&mut tx, Ok(Frame::data(prev))).await;
                }
                Client::Streaming(tx)
            }
        };
    };

    let failure = failure.or_else(|| match declared_len {
        Some(n) if n != total => Some(format!(
            "upstream sent {total} bytes but declared Content-Length {n}"
        )),
        _ => None,
    });
    if let Some(msg) = failure {
        tracing::warn!(key = %spec.key, error = %msg, "cache fill failed; nothing stored");
        client.fail(msg.clone()).await;
        return FillOutcome::Failed(msg);
    }

    // The last batch, the check and the rename: one trip to the blocking pool (the fsyncs run
    // later, in the background; see store::durable).
    let committed = match file {
        Fill::Failed => Err(None),
        file => {
            let validate = validator(spec);
            let key = spec.key.as_str().to_string();
            let cache = state.cache.clone();
            let last = batch.freeze();
            let res = tokio::task::spawn_blocking(move || {
                let mut p = file.open(&cache, &key)?;
                p.write(&last)?;
                p.commit_then(|file| validate(file))
            })
            .await;
            let key = spec.key.as_str();
            match res {
                Ok(Ok(sync)) => Ok(sync),
                Ok(Err(StoreError::Rejected(why))) => Err(Some(why.to_string())),
                Ok(Err(e)) => {
                    tracing::warn!(key, error = %e, "cache commit failed");
                    state.cache.count_error();
                    Err(None)
                }
                Err(e) => Err(Some(format!("validation task failed: {e}"))),
            }
        }
    };
    match committed {
        Ok(sync) => {
            client.finish(spec.content, held).await;
            // After the client has its answer: any directory fsync still owed, and drop any
            // remembered not-found (a newer positive entry already wins over it in `serve`).
            let cache = state.cache.clone();
            let neg_key = spec.key.not_found();
            tokio::task::spawn_blocking(move || {
                sync.run();
                cache.remove(&neg_key);
            });
            FillOutcome::Committed
        }
        Err(Some(rejected)) => {
            tracing::warn!(key = %spec.key, error = %rejected, "upstream body rejected; nothing stored");
            state
                .metrics
                .cache_fills
                .with_label_values(&["rejected"])
                .inc();
            client.fail(rejected.clone()).await;
            FillOutcome::Failed(rejected)
        }
        Err(None) => {
            // Not stored (disk trouble), but the bytes were fine: the client gets them.
            client.finish(spec.content, held).await;
            FillOutcome::Uncached
        }
    }
}

/// The check a complete body must pass before it is committed: module-zip rules for zips.
fn validator(spec: &Spec) -> Validator {
    let zip = spec.zip.clone();
    Arc::new(move |file: &std::fs::File| match &zip {
        Some((module, version)) => check_zip_file(file, module, version),
        None => Ok(()),
    })
}

/// The cache file of a fill.
enum Fill {
    NotOpened,
    Opened(PendingEntry),
    /// It could not be written: the body still goes to the client, uncached.
    Failed,
}

impl Fill {
    /// The entry to write to, made now if not yet (blocking). Not for a failed fill.
    fn open(self, cache: &Arc<DiskCache>, key: &str) -> Result<PendingEntry, StoreError> {
        match self {
            Fill::Opened(p) => Ok(p),
            Fill::NotOpened => cache.begin(key),
            Fill::Failed => unreachable!("a failed fill writes nothing"),
        }
    }
}

/// Writes `data` to the fill's file, opening it first if need be (blocking pool).
async fn write_batch(file: Fill, key: &str, data: Bytes, state: &Arc<State>) -> Fill {
    let cache = state.cache.clone();
    let owned_key = key.to_string();
    let res = tokio::task::spawn_blocking(move || {
        let mut p = file.open(&cache, &owned_key)?;
        p.write(&data).map(|_| Fill::Opened(p))
    })
    .await;
    match res {
        Ok(Ok(file)) => file,
        Ok(Err(e)) => {
            tracing::warn!(key, error = %e, "cache write failed; continuing without caching");
            state.cache.count_error();
            Fill::Failed
        }
        Err(e) => {
            tracing::warn!(key, error = %e, "cache write task failed; continuing without caching");
            Fill::Failed
        }
    }
}

async fn send(
    client: &mut Option<mpsc::Sender<Result<Frame<Bytes>, BoxError>>>,
    item: Result<Frame<Bytes>, BoxError>,
) {
    if let Some(tx) = client
        && tx.send(item).await.is_err()
    {
        // The client went away; the fill goes on for the cache and the followers.
        *client = None;
    }
}

fn tokio_stream_from(
    mut rx: mpsc::Receiver<Result<Frame<Bytes>, BoxError>>,
) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, BoxError>> + Send + Sync + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

fn set_headers(resp: &mut Response<Body>, content: Content, cache: CacheOutcome, len: Option<u64>) {
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content.content_type()),
    );
    h.insert(CACHE_HEADER, HeaderValue::from_static(cache.as_str()));
    if let Some(n) = len {
        h.insert(http::header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    if cache == CacheOutcome::Stale {
        h.insert(
            http::header::WARNING,
            HeaderValue::from_static("110 modgate \"Response is Stale\""),
        );
    }
}

/// Serves a cached entry: small ones from memory, large ones streamed from the file.
pub(crate) async fn serve_found(
    disk: &DiskCache,
    found: &Found,
    content: Content,
    cache: CacheOutcome,
    method: &Method,
) -> Result<Response<Body>, ServeError> {
    let body: Body = if method == Method::HEAD {
        crate::body::empty()
    } else if let Some(body) = disk.hot_body(found) {
        Full::new(body).map_err(|never| match never {}).boxed()
    } else if found.len <= INLINE_MAX {
        let data = Bytes::from(
            tokio::fs::read(&found.path)
                .await
                .map_err(|e| ServeError::Internal(format!("reading cache entry: {e}")))?,
        );
        disk.keep_hot(found, data.clone());
        Full::new(data).map_err(|never| match never {}).boxed()
    } else {
        let file = tokio::fs::File::open(&found.path)
            .await
            .map_err(|e| ServeError::Internal(format!("reading cache entry: {e}")))?;
        // Large reads: each one is a hop to the blocking pool.
        let stream = tokio_util::io::ReaderStream::with_capacity(file, 512 * 1024);
        StreamBody::new(futures_util::StreamExt::map(stream, |r| {
            r.map(Frame::data).map_err(|e| Box::new(e) as BoxError)
        }))
        .boxed()
    };
    let mut resp = Response::new(body);
    set_headers(&mut resp, content, cache, Some(found.len));
    Ok(resp)
}

fn decode_not_found(data: &[u8]) -> (u16, Bytes) {
    let text = String::from_utf8_lossy(data);
    match text.split_once('\n') {
        Some((status, rest)) => (status.parse().unwrap_or(404), Bytes::from(rest.to_string())),
        None => (404, Bytes::from(text.to_string())),
    }
}

fn not_found(status: u16, text: Bytes, cache: CacheOutcome) -> Response<Body> {
    let mut text = text.to_vec();
    if text.is_empty() {
        text.extend_from_slice(b"not found");
    }
    if !text.ends_with(b"\n") {
        text.push(b'\n');
    }
    let mut resp = Response::new(crate::body::full(text));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::NOT_FOUND);
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp.headers_mut()
        .insert(CACHE_HEADER, HeaderValue::from_static(cache.as_str()));
    resp
}
