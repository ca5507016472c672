//! A fill: the upstream body into a cache file and to the leader's client, checked before
//! it is committed or its last byte released.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::Response;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use tokio::sync::{mpsc, oneshot};

use super::found::set_headers;
use super::{FillOutcome, Led, Spec, WRITE_BATCH};
use crate::body::BoxError;
use crate::serve::State;
use crate::serve::prove::{self, ProofError, Proven, Verifier};
use crate::serve::respond::ServeError;
use crate::store::content::{ContentError, check_bytes, check_entry, check_entry_hashed};
use crate::store::disk::DirSync;
use crate::store::disk::{DiskCache, PendingEntry, StoreError};
use crate::store::flight::Leader;
use crate::store::growing::GrowingWriter;
use crate::store::shared::Validator;
use crate::telemetry::labels::CacheOutcome;
use modgate_core::cache_key::{Entry, ModuleFile};
use modgate_core::gomod::dirhash;
use modgate_core::gomod::path::ModulePath;
use modgate_core::policy::route::Content;
use std::io::{Read as _, Seek as _};

/// How the leader's client is answered: once the body is decided when it ends within the first
/// write batch, else streamed from then on.
pub(super) struct Reply {
    pub(super) reply: oneshot::Sender<Led>,
    pub(super) waited: Duration,
    pub(super) declared_len: Option<u64>,
}

/// Where the leader's client stands during a fill.
pub(super) enum Client {
    /// Not answered yet: the chunks so far (at most about one write batch).
    Waiting(Reply, Vec<Bytes>, usize),
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
    /// `warning` (a `Warning` header value) reaches a client not answered yet.
    async fn finish(self, content: Content, held: Option<Bytes>, warning: Option<&String>) {
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
                if let Some(w) = warning.and_then(|w| http::HeaderValue::from_str(w).ok()) {
                    resp.headers_mut().insert(http::header::WARNING, w);
                }
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
/// it arrives, its last chunk held back until the whole body has passed. From the first batch
/// in the file, followers read the file as it is written (published through `leader`), up to
/// the last batch, which they get once the body has passed.
pub(super) async fn fill(
    spec: &Spec,
    state: &Arc<State>,
    mut body: crate::body::Body,
    answer: Reply,
    leader: &Leader<FillOutcome>,
) -> FillOutcome {
    // The checksum-database proof of a public .mod or .zip starts now, beside the body.
    let mut proof = start_proof(spec, state);
    // The cache file is opened with the first full write batch, or at the end: a small body
    // (.info, .mod, most zips) costs one trip to the blocking pool, create to rename.
    let mut file = Fill::NotOpened;
    // Bytes that reached the cache file; and, when the file could not be written from the
    // start, the body kept in memory so that it is checked all the same.
    let mut written: u64 = 0;
    let mut memory: Option<BytesMut> = None;
    // The file as followers read it while it is written.
    let mut growing: Option<GrowingWriter> = None;
    let declared_len = answer.declared_len;
    let mut client = Client::Waiting(answer, Vec::new(), 0);
    let mut batch = BytesMut::new();
    let mut held: Option<Bytes> = None;
    let mut total: u64 = 0;
    let idle = state.config.upstream.response_timeout;
    // Set when the body is served unproven under `sumdb.fail_open`.
    let unproven = std::sync::OnceLock::new();

    let failure: Option<String> = loop {
        let frame = match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => break Some(format!("upstream stalled for {idle:?} mid-body")),
            Ok(None) => break None,
            Ok(Some(Err(e))) => break Some(format!("upstream body failed: {e}")),
            Ok(Some(Ok(frame))) => frame,
        };
        // An empty frame (hyper can end a body with one) must not take the place of the held
        // last chunk, which would release the real one before the checks.
        let Some(data) = frame.into_data().ok().filter(|d| !d.is_empty()) else {
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
                let chunk = batch.split().freeze();
                file = write_batch(file, spec.key.as_str(), chunk.clone(), state).await;
                if matches!(file, Fill::Failed) {
                    // Checked in memory instead, if nothing reached the file yet and it fits.
                    memory = (written == 0).then(|| BytesMut::from(&chunk[..]));
                } else {
                    written += chunk.len() as u64;
                    share(&file, written, declared_len, &mut growing, leader);
                }
            }
        } else if let Some(m) = &mut memory {
            m.extend_from_slice(&data);
            if m.len() > MEMORY_CHECK_MAX {
                memory = None;
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
        if let Some(g) = growing {
            g.fail(msg.clone());
        }
        client.fail(msg.clone()).await;
        return FillOutcome::Failed(msg);
    }

    // The last batch, the check and the rename: one trip to the blocking pool (the fsyncs run
    // later, in the background; see store::durable).
    let committed = match file {
        // The cache could not be written: the body is delivered uncached, but only once it has
        // passed the same checks (and proof) from memory; one too large to hold is refused.
        Fill::Failed => match memory.take() {
            Some(m) => check_unstored(spec, state, m.freeze(), proof.take(), &unproven).await,
            None => Err(Some(unstorable(spec))),
        },
        file => {
            let validate = validator(spec);
            let key = spec.key.as_str().to_string();
            let cache = state.cache.clone();
            let last = batch.freeze();
            let last_copy = last.clone();
            let res = match &spec.prove {
                None => {
                    tokio::task::spawn_blocking(move || {
                        let mut p = file.open(&cache, &key)?;
                        p.write(&last)?;
                        p.commit_then(|file| validate(file))
                    })
                    .await
                }
                Some(verifier) => {
                    let pending = proof.take();
                    let commit =
                        proven_commit(spec, verifier, state, file, last, pending, &unproven);
                    match commit.await {
                        Err(rejected) => Ok(Err(StoreError::Rejected(rejected))),
                        Ok(res) => res,
                    }
                }
            };
            let key = spec.key.as_str();
            match res {
                Ok(Ok(sync)) => Ok(sync),
                Ok(Err(StoreError::Rejected(why))) => Err(Some(why.to_string())),
                Ok(Err(e)) => {
                    tracing::warn!(key, error = %e, "cache commit failed");
                    state.cache.count_error();
                    if written == 0 {
                        // All of it is in hand: checked from memory.
                        check_unstored(spec, state, last_copy, proof.take(), &unproven).await
                    } else {
                        Err(Some(unstorable(spec)))
                    }
                }
                Err(e) => Err(Some(format!("validation task failed: {e}"))),
            }
        }
    };
    match committed {
        Ok(sync) => {
            if let Some(g) = growing {
                g.complete(total);
            }
            client.finish(spec.content, held, unproven.get()).await;
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
            if let Some(g) = growing {
                g.fail(rejected.clone());
            }
            client.fail(rejected.clone()).await;
            FillOutcome::Failed(rejected)
        }
        Err(None) => {
            // Not stored (disk trouble), but the bytes were fine: the client gets them.
            client.finish(spec.content, held, unproven.get()).await;
            FillOutcome::Uncached
        }
    }
}

/// The content checks, then the proof against the checksum database, then the commit: for a
/// public `.mod` or `.zip` under `sumdb.verify`. The hash is computed on the blocking pool; the
/// lookup and tiles are fetched meanwhile nothing is committed or released.
async fn proven_commit(
    spec: &Spec,
    verifier: &Verifier,
    state: &Arc<State>,
    file: Fill,
    last: Bytes,
    pending: Option<prove::PendingProof>,
    unproven: &std::sync::OnceLock<String>,
) -> Result<Result<Result<DirSync, StoreError>, tokio::task::JoinError>, ContentError> {
    let Entry::Module { module, file: what } = spec.key.entry() else {
        unreachable!("only module files are proven");
    };
    let (version, proven) = match what {
        ModuleFile::Mod(v) => (v.clone(), Proven::GoMod),
        ModuleFile::Zip(v) => (v.clone(), Proven::Zip),
        _ => unreachable!("only .mod and .zip are proven"),
    };
    let key = spec.key.as_str().to_string();
    let key_typed = spec.key.clone();
    let cache = state.cache.clone();
    let hashed = tokio::task::spawn_blocking(move || {
        let mut p = file.open(&cache, &key)?;
        p.write(&last)?;
        // The content checks and the hash in one pass over the data.
        let h1 = p.check(|file| check_entry_hashed(&key_typed, file))?;
        Ok::<_, StoreError>((p, h1))
    })
    .await;
    let proof = pending;
    let (pending, h1) = match hashed {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => return Ok(Ok(Err(e))),
        Err(e) => return Ok(Err(e)),
    };
    let subject = Subject {
        module,
        version: &version,
        proven,
    };
    proved(spec, verifier, state, subject, &h1, proof, unproven).await?;
    Ok(tokio::task::spawn_blocking(move || pending.commit_then(|_| Ok(()))).await)
}

/// The largest body held in memory to be checked when the cache file cannot be written.
const MEMORY_CHECK_MAX: usize = 64 << 20;

/// Why a body that could be neither stored nor held is refused.
fn unstorable(spec: &Spec) -> String {
    format!(
        "the module cache cannot be written (disk full or read-only?) and {} is too large to check in memory; not delivered unchecked",
        spec.key
    )
}

/// Checks (and proves) a complete body held in memory, for a fill that could not be stored:
/// `Err(None)` delivers it uncached, `Err(Some(why))` refuses it.
async fn check_unstored(
    spec: &Spec,
    state: &Arc<State>,
    data: Bytes,
    started: Option<prove::PendingProof>,
    unproven: &std::sync::OnceLock<String>,
) -> Result<DirSync, Option<String>> {
    let key = spec.key.clone();
    let hash = spec.prove.is_some();
    let checked = tokio::task::spawn_blocking(move || check_bytes(&key, &data, hash)).await;
    let h1 = match checked {
        Ok(Ok(h1)) => h1,
        Ok(Err(e)) => return Err(Some(e.to_string())),
        Err(e) => return Err(Some(format!("validation task failed: {e}"))),
    };
    if let (Some(verifier), Some(h1)) = (&spec.prove, h1) {
        let (module, version, proven) = match spec.key.entry() {
            Entry::Module {
                module,
                file: ModuleFile::Mod(v),
            } => (module, v.as_str(), Proven::GoMod),
            Entry::Module {
                module,
                file: ModuleFile::Zip(v),
            } => (module, v.as_str(), Proven::Zip),
            _ => return Err(None),
        };
        let subject = Subject {
            module,
            version,
            proven,
        };
        proved(spec, verifier, state, subject, &h1, started, unproven)
            .await
            .map_err(|e| Some(e.to_string()))?;
    }
    Err(None)
}

/// Starts the proof of a public `.mod` or `.zip` under `sumdb.verify`, if this fill needs one.
fn start_proof(spec: &Spec, state: &Arc<State>) -> Option<prove::PendingProof> {
    let verifier = spec.prove.as_ref()?;
    let Entry::Module {
        module,
        file: ModuleFile::Mod(v) | ModuleFile::Zip(v),
    } = spec.key.entry()
    else {
        return None;
    };
    Some(prove::start(state, verifier, module, v))
}

/// The go.sum hash of a complete `.mod` or `.zip` file.
fn h1_of(mut file: &std::fs::File, proven: Proven) -> Result<String, ContentError> {
    file.rewind()?;
    Ok(match proven {
        Proven::GoMod => {
            let mut data = vec![];
            file.read_to_end(&mut data)?;
            dirhash::hash_go_mod(&data)
        }
        Proven::Zip => dirhash::hash_zip(file)
            .map_err(|e| ContentError::Read(std::io::Error::other(e.to_string())))?,
    })
}

/// Runs the proof, counts its outcome, and decides: `Err` refuses the content.
/// What a proof is about: the module, version and file.
struct Subject<'a> {
    module: &'a ModulePath,
    version: &'a str,
    proven: Proven,
}

async fn proved(
    spec: &Spec,
    verifier: &Verifier,
    state: &Arc<State>,
    subject: Subject<'_>,
    h1: &str,
    started: Option<prove::PendingProof>,
    unproven: &std::sync::OnceLock<String>,
) -> Result<(), ContentError> {
    let Subject {
        module,
        version,
        proven,
    } = subject;
    let count = |outcome: &str| {
        state
            .metrics
            .sumdb_verifications
            .with_label_values(&[outcome])
            .inc();
    };
    let pending = started.unwrap_or_else(|| prove::start(state, verifier, module, version));
    let result = prove::finish(pending, state, verifier, module, version, proven, h1).await;
    match result {
        Ok(()) => count("verified"),
        Err(e @ ProofError::Unavailable { .. }) if verifier.fail_open => {
            count("unverified");
            tracing::warn!(key = %spec.key, error = %e, "serving unverified (sumdb.fail_open)");
            let text: String = format!("modgate: served unverified (sumdb.fail_open): {e}")
                .chars()
                .map(|c| {
                    if c == '"' || c == '\\' || c.is_control() {
                        '\''
                    } else {
                        c
                    }
                })
                .collect();
            let _ = unproven.set(format!("199 modgate \"{text}\""));
        }
        Err(e) => {
            count(e.outcome());
            tracing::warn!(key = %spec.key, error = %e, "checksum-database verification failed");
            return Err(ContentError::Unproven(e.to_string()));
        }
    }
    Ok(())
}

/// Proves an entry that arrived complete from the shared bucket, before any client sees it;
/// `Err` means it was removed from the local cache and must be fetched again.
pub(super) async fn prove_found(
    spec: &Spec,
    state: &Arc<State>,
    path: std::path::PathBuf,
) -> Result<(), String> {
    let Some(verifier) = &spec.prove else {
        return Ok(());
    };
    let (module, version, proven) = match spec.key.entry() {
        Entry::Module {
            module,
            file: ModuleFile::Mod(v),
        } => (module, v, Proven::GoMod),
        Entry::Module {
            module,
            file: ModuleFile::Zip(v),
        } => (module, v, Proven::Zip),
        _ => return Ok(()),
    };
    let hashed = tokio::task::spawn_blocking(move || {
        let file = std::fs::File::open(path)?;
        h1_of(&file, proven)
    })
    .await;
    let result = match hashed {
        Ok(Ok(h1)) => proved(
            spec,
            verifier,
            state,
            Subject {
                module,
                version,
                proven,
            },
            &h1,
            None,
            // Served later from the cache, with no header.
            &std::sync::OnceLock::new(),
        )
        .await
        .map_err(|e| e.to_string()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(format!("hashing task failed: {e}")),
    };
    if result.is_err() {
        state.cache.remove(spec.key.as_str());
    }
    result
}

/// The checks a complete body must pass before it is committed ([`check_entry`], by key).
pub(super) fn validator(spec: &Spec) -> Validator {
    let key = spec.key.clone();
    Arc::new(move |file: &std::fs::File| check_entry(&key, file))
}

/// The cache file of a fill.
pub(super) enum Fill {
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

/// After a batch reached the file: the first time, shows followers the file being written;
/// later, moves the mark they may read to.
fn share(
    file: &Fill,
    written: u64,
    declared_len: Option<u64>,
    growing: &mut Option<GrowingWriter>,
    leader: &Leader<FillOutcome>,
) {
    match (growing.as_ref(), file) {
        (Some(g), _) => g.advance(written),
        (None, Fill::Opened(p)) => match p.share() {
            Ok(f) => {
                let g = GrowingWriter::new(f, written, declared_len);
                leader.publish(FillOutcome::Streaming(g.reader()));
                *growing = Some(g);
            }
            // Followers wait for the commit instead.
            Err(e) => tracing::debug!(error = %e, "cache fill not shared while written"),
        },
        (None, _) => {}
    }
}

/// Writes `data` to the fill's file, opening it first if need be (blocking pool).
pub(super) async fn write_batch(file: Fill, key: &str, data: Bytes, state: &Arc<State>) -> Fill {
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

pub(super) async fn send(
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

pub(super) fn tokio_stream_from(
    mut rx: mpsc::Receiver<Result<Frame<Bytes>, BoxError>>,
) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, BoxError>> + Send + Sync + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
