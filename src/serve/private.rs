//! Private modules in proxy mode: the GOPROXY protocol answered from an internal git
//! repository, through a local mirror, exactly as the go command would derive each answer.
//! Canonical `.info`, `.mod` and `.zip` go into the module cache like public ones; `list`,
//! `@latest` and queries are computed from the (TTL-refreshed) mirror each time.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use base64::Engine;
use http::{HeaderValue, Method, Response};

use crate::body::Body;
use crate::config::{ConfigError, PrivateRouteConfig};
use crate::egress::upstream::UpstreamClient;
use crate::serve::State;
use crate::serve::cached::{self, FillOutcome};
use crate::serve::respond::ServeError;
use crate::store::content::{ContentError, check_entry};
use crate::store::flight::Join;
use crate::store::mirror::{GitAccess, Mirror, MirrorError};
use crate::store::pins::{Checked, Pin, PinChange, PinError, PinFile};
use crate::store::shared::Once;
use crate::telemetry::ctx::ReqCtx;
use crate::telemetry::labels::CacheOutcome;
use modgate_core::gomod::coderepo::{CodeHost, CodeRepo, RepoError};
use modgate_core::gomod::dirhash;
use modgate_core::gomod::modfile;
use modgate_core::gomod::modzip::{self, SourceFile};
use modgate_core::gomod::path::ModulePath;
use modgate_core::policy::classify::ProxyOp;
use modgate_core::policy::route::{CacheClass, PrivateFetch};

/// Everything needed to reach one route's git host.
pub struct PrivateBackend {
    /// `Authorization` value (secret).
    auth_header: Option<String>,
    /// CA bundle for the git command, when extra roots are configured.
    ca_file: Option<PathBuf>,
    /// HTTP client for forwarding git smart-HTTP.
    pub client: UpstreamClient,
}

impl std::fmt::Debug for PrivateBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrivateBackend")
            .field(
                "auth_header",
                &self.auth_header.as_ref().map(|_| "<redacted>"),
            )
            .field("ca_file", &self.ca_file)
            .finish_non_exhaustive()
    }
}

impl PrivateBackend {
    /// Loads the route's credentials and roots; the error names the configuration key.
    pub fn new(
        i: usize,
        cfg: &PrivateRouteConfig,
        state_cfg: &crate::config::Config,
        metrics: Arc<crate::telemetry::metrics::Metrics>,
    ) -> Result<PrivateBackend, ConfigError> {
        let key = |k: &str| format!("private.routes[{i}].{k}");
        let invalid = |k: &str, m: String| ConfigError::invalid(&key(k), m);
        let read_env = |k: &str, var: &str| {
            std::env::var(var)
                .map_err(|_| invalid(k, format!("environment variable {var} is not set")))
        };
        let read_file = |k: &str, p: &PathBuf| {
            std::fs::read_to_string(p)
                .map(|s| s.trim_end_matches(['\r', '\n']).to_string())
                .map_err(|e| invalid(k, format!("{}: {e}", p.display())))
        };
        let basic = |pw: String| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{}:{pw}", cfg.username))
            )
        };
        let auth_header = if let Some(v) = &cfg.password_env {
            Some(basic(read_env("password_env", v)?))
        } else if let Some(p) = &cfg.password_file {
            Some(basic(read_file("password_file", p)?))
        } else if let Some(v) = &cfg.token_env {
            Some(format!("Bearer {}", read_env("token_env", v)?))
        } else if let Some(p) = &cfg.token_file {
            Some(format!("Bearer {}", read_file("token_file", p)?))
        } else {
            None
        };
        if let Some(h) = &auth_header
            && HeaderValue::from_str(h).is_err()
        {
            return Err(invalid(
                "password_env",
                "the credential contains characters not allowed in an HTTP header".into(),
            ));
        }
        let extra: Vec<&std::path::Path> = cfg.extra_ca_file.as_deref().into_iter().collect();
        let client = UpstreamClient::with_roots(&state_cfg.upstream, &extra, metrics)
            .map_err(|e| invalid("extra_ca_file", e.to_string()))?;
        let ca_file = git_ca_bundle(&format!("route-{i}"), &extra, state_cfg)
            .map_err(|(p, e)| invalid("extra_ca_file", format!("{}: {e}", p.display())))?;
        Ok(PrivateBackend {
            auth_header,
            ca_file,
            client,
        })
    }

    /// Access to a public repository (the `direct` upstream): no credentials, the roots modgate
    /// trusts for upstreams.
    pub fn anonymous(
        state_cfg: &crate::config::Config,
        metrics: Arc<crate::telemetry::metrics::Metrics>,
    ) -> Result<PrivateBackend, ConfigError> {
        let client = UpstreamClient::with_roots(&state_cfg.upstream, &[], metrics)
            .map_err(|e| ConfigError::invalid("upstream.extra_ca_file", e.to_string()))?;
        let ca_file = git_ca_bundle("direct", &[], state_cfg).map_err(|(p, e)| {
            ConfigError::invalid("upstream.extra_ca_file", format!("{}: {e}", p.display()))
        })?;
        Ok(PrivateBackend {
            auth_header: None,
            ca_file,
            client,
        })
    }

    /// Access to the repository at `url` with this route's credentials.
    pub fn access(&self, url: &str) -> GitAccess {
        GitAccess {
            url: url.to_string(),
            auth_header: self.auth_header.clone(),
            ca_file: self.ca_file.clone(),
        }
    }

    /// The `Authorization` header value for forwarded git requests.
    pub fn auth_header(&self) -> Option<&str> {
        self.auth_header.as_deref()
    }
}

/// git uses its own TLS stack: one bundle with every root modgate trusts for this backend
/// (`extra`, `upstream.extra_ca_file`, the system's), in `storage.data_dir/mirrors/ca-NAME.pem`;
/// `None` when there are no extra roots. The error names the file that failed.
fn git_ca_bundle(
    name: &str,
    extra: &[&std::path::Path],
    state_cfg: &crate::config::Config,
) -> Result<Option<PathBuf>, (PathBuf, std::io::Error)> {
    let mut roots: Vec<&std::path::Path> = extra.to_vec();
    if let Some(p) = state_cfg.upstream.extra_ca_file.as_deref() {
        roots.push(p);
    }
    if roots.is_empty() {
        return Ok(None);
    }
    let mut bundle = String::new();
    for r in &roots {
        bundle.push_str(&std::fs::read_to_string(r).map_err(|e| (r.to_path_buf(), e))?);
        bundle.push('\n');
    }
    if let Ok(system) = std::fs::read_to_string("/etc/ssl/certs/ca-certificates.crt") {
        bundle.push_str(&system);
    }
    let dir = state_cfg.storage.data_dir.join("mirrors");
    std::fs::create_dir_all(&dir).map_err(|e| (dir.clone(), e))?;
    let path = dir.join(format!("ca-{name}.pem"));
    std::fs::write(&path, bundle).map_err(|e| (path.clone(), e))?;
    Ok(Some(path))
}

/// Serves one private GOPROXY call.
pub async fn serve(
    f: PrivateFetch,
    ctx: &mut ReqCtx,
    state: &Arc<State>,
    dynamic: &crate::serve::Live,
    method: &Method,
) -> Result<Response<Body>, ServeError> {
    let access = access(&f, dynamic)?;
    if f.class() == CacheClass::Mutable {
        ctx.cache = CacheOutcome::Bypass;
        let mirror = mirror(&f, &access, state).await?;
        let (data, _) = compute(mirror, f.clone(), state.clone()).await?;
        let mut resp = Response::new(crate::body::full(data));
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static(f.content().content_type()),
        );
        return Ok(resp);
    }
    for _ in 0..3 {
        if let Some(found) = state.cache.get(f.key().as_str()) {
            ctx.cache = CacheOutcome::Hit;
            return cached::serve_found(
                &state.cache,
                &found,
                f.content(),
                CacheOutcome::Hit,
                method,
            )
            .await;
        }
        match state.flights.join(f.key().as_str()) {
            Join::Leader(leader) => {
                ctx.cache = CacheOutcome::Miss;
                let result = fill(&f, &access, state).await;
                match result {
                    Ok(()) => leader.finish(FillOutcome::Committed),
                    Err(e) => {
                        let outcome = match &e {
                            ServeError::ClientNotFound(m) => FillOutcome::NotFound {
                                status: 404,
                                text: m.clone().into(),
                            },
                            other => FillOutcome::Failed(other.to_string()),
                        };
                        leader.finish(outcome);
                        return Err(e);
                    }
                }
                let found = state.cache.get(f.key().as_str()).ok_or_else(|| {
                    ServeError::Internal("cache entry vanished after commit".into())
                })?;
                return cached::serve_found(
                    &state.cache,
                    &found,
                    f.content(),
                    CacheOutcome::Miss,
                    method,
                )
                .await;
            }
            Join::Follower(w) => match w.wait().await {
                Some(FillOutcome::Committed) => continue,
                Some(FillOutcome::NotFound { text, .. }) => {
                    return Err(ServeError::ClientNotFound(
                        String::from_utf8_lossy(&text).into_owned(),
                    ));
                }
                Some(FillOutcome::Failed(m)) => return Err(ServeError::UpstreamFailed(m)),
                Some(FillOutcome::Uncached) | None => continue,
                // Private builds publish no partial file; should one, its end is awaited.
                Some(FillOutcome::Streaming(reader)) => {
                    let _ = reader.ended().await;
                    continue;
                }
            },
        }
    }
    Err(ServeError::Internal(
        "could not fill the cache entry after several attempts".into(),
    ))
}

/// How to reach the repository behind `f`, with this snapshot's credentials and overrides.
fn access(f: &PrivateFetch, dynamic: &crate::serve::Live) -> Result<GitAccess, ServeError> {
    let backend = dynamic
        .private
        .get(f.repo().route)
        .ok_or_else(|| ServeError::Internal("private route vanished".into()))?;
    let url = modgate_core::base_url::BaseUrl::parse(&f.repo().git_url)
        .map_err(|e| ServeError::Internal(format!("route git URL: {e}")))?;
    Ok(backend.access(&dynamic.resolve(&url).to_string()))
}

/// The repository's mirror, fetched when stale; every fetch is measured
/// (`modgate_mirror_fetch_duration_seconds`).
pub(crate) async fn ensure_mirror(
    access: &GitAccess,
    state: &State,
) -> Result<Mirror, MirrorError> {
    let metrics = state.metrics.clone();
    state
        .mirrors
        .ensure(access, |took, res| {
            let outcome = match res {
                Ok(()) => "ok",
                Err(MirrorError::NotFound(_)) => "not_found",
                Err(MirrorError::Auth(_)) => "auth",
                Err(MirrorError::Unreachable(_)) => "unreachable",
                Err(MirrorError::Git(_)) => "error",
            };
            metrics
                .mirror_fetch_duration
                .with_label_values(&[outcome])
                .observe(took.as_secs_f64());
        })
        .await
}

async fn mirror(f: &PrivateFetch, access: &GitAccess, state: &State) -> Result<Mirror, ServeError> {
    ensure_mirror(access, state).await.map_err(|e| match e {
        MirrorError::NotFound(_) => ServeError::ClientNotFound(format!(
            "not found: {}: repository {} does not exist on the internal git host",
            f.module(),
            f.repo().root
        )),
        other => ServeError::UpstreamFailed(format!(
            "internal git host for {} failed: {other}",
            f.repo().root
        )),
    })
}

pub(crate) fn repo_err<E: std::fmt::Display>(e: RepoError<E>) -> ServeError {
    match e {
        RepoError::NotFound(m) => ServeError::ClientNotFound(m),
        RepoError::Host(e) => ServeError::Internal(format!("reading the repository mirror: {e}")),
    }
}

/// Computes a small answer (list, info, mod, latest, query) from the mirror.
async fn compute(
    mirror: Mirror,
    f: PrivateFetch,
    _state: Arc<State>,
) -> Result<(Vec<u8>, ()), ServeError> {
    tokio::task::spawn_blocking(move || {
        let repo = CodeRepo::new(&mirror, f.module(), &f.repo().root)
            .map_err(|e| ServeError::Internal(e.to_string()))?;
        let data = match f.op() {
            ProxyOp::List => {
                let mut out = String::new();
                for v in repo.versions().map_err(repo_err)? {
                    out.push_str(&v);
                    out.push('\n');
                }
                out.into_bytes()
            }
            ProxyOp::Latest => repo.latest().map_err(repo_err)?.json().into_bytes(),
            ProxyOp::Query(q) | ProxyOp::Info(q) => {
                repo.stat(q).map_err(repo_err)?.json().into_bytes()
            }
            ProxyOp::Mod(v) => repo.go_mod(v).map_err(repo_err)?,
            ProxyOp::Zip(_) => {
                return Err(ServeError::Internal("zips are built, not computed".into()));
            }
        };
        Ok((data, ()))
    })
    .await
    .map_err(|e| ServeError::Internal(format!("private task failed: {e}")))?
}

/// Fills the cache entry of a canonical `.info`, `.mod` or `.zip`.
async fn fill(f: &PrivateFetch, access: &GitAccess, state: &Arc<State>) -> Result<(), ServeError> {
    let mirror = mirror(f, access, state).await?;
    let mut pending = state
        .cache
        .begin(f.key().as_str())
        .map_err(|e| ServeError::Internal(format!("cannot write the module cache: {e}")))?;
    let f2 = f.clone();
    let tmp = state.config.storage.data_dir.join("tmp");
    let metrics = state.metrics.clone();
    let st = state.clone();
    tokio::task::spawn_blocking(move || match f2.op() {
        ProxyOp::Zip(v) => {
            let start = Instant::now();
            let res = build_zip(
                &mirror,
                f2.module(),
                &f2.repo().root,
                v,
                pending.file_mut(),
                &tmp,
            );
            metrics
                .zip_build_duration
                .with_label_values(&[if res.is_ok() { "ok" } else { "error" }])
                .observe(start.elapsed().as_secs_f64());
            let commit = res?;
            let h1 = pending
                .check(|file| {
                    check_entry(f2.key(), file)?;
                    let mut file = file;
                    std::io::Seek::rewind(&mut file)?;
                    dirhash::hash_zip(file)
                        .map_err(|e| ContentError::Read(std::io::Error::other(e.to_string())))
                })
                .map_err(|e| ServeError::Internal(format!("storing the module zip: {e}")))?;
            pin(&st, f2.module(), v, PinFile::Zip, &h1, &commit)?;
            pending
                .commit(|_| Ok(()))
                .map_err(|e| ServeError::Internal(format!("storing the module zip: {e}")))
        }
        _ => {
            let repo = CodeRepo::new(&mirror, f2.module(), &f2.repo().root)
                .map_err(|e| ServeError::Internal(e.to_string()))?;
            let data = match f2.op() {
                ProxyOp::Info(v) => repo.stat(v).map_err(repo_err)?.json().into_bytes(),
                ProxyOp::Mod(v) => {
                    let data = repo.go_mod(v).map_err(repo_err)?;
                    let commit = repo.stat(v).map_err(repo_err)?.commit;
                    pin(
                        &st,
                        f2.module(),
                        v,
                        PinFile::Mod,
                        &dirhash::hash_go_mod(&data),
                        &commit,
                    )?;
                    data
                }
                _ => unreachable!("only canonical answers are cached"),
            };
            pending
                .write(&data)
                .and_then(|_| pending.commit(|file| check_entry(f2.key(), file)))
                .map_err(|e| ServeError::Internal(format!("storing {}: {e}", f2.key())))
        }
    })
    .await
    .map_err(|e| ServeError::Internal(format!("private task failed: {e}")))?
}

/// Pins (or checks against its pin) what a private version's go.mod or zip hashes to. Blocking.
fn pin(
    state: &State,
    module: &ModulePath,
    version: &str,
    file: PinFile,
    h1: &str,
    commit: &str,
) -> Result<(), ServeError> {
    let count = |event: &str| {
        state
            .metrics
            .integrity_pins
            .with_label_values(&[event])
            .inc();
    };
    let checked = shared_pin(state, module, version, file, h1, commit)
        .and_then(|()| state.pins.check(module.as_str(), version, file, h1, commit));
    match checked {
        Ok(Checked::Pinned) => {
            count("pinned");
            tracing::info!(%module, version, ?file, h1, commit, "private version pinned");
            Ok(())
        }
        Ok(Checked::Matched) => {
            count("matched");
            Ok(())
        }
        Err(e @ PinError::Changed(_)) => {
            count("changed");
            tracing::error!(%module, version, error = %e, "private version changed since it was pinned; refused");
            Err(ServeError::UpstreamFailed(e.to_string()))
        }
        Err(e) => Err(ServeError::Internal(e.to_string())),
    }
}

/// With a shared bucket, the fleet's pin of `module@version`'s `file` is the bucket's, written
/// once by the first replica to serve it. In order, so that the bucket never vouches for
/// content a replica refused:
/// - a local pin that differs from the content refuses it, unless the bucket pins this very
///   content (an operator repinned on another replica): then the local pin is replaced;
/// - otherwise the content (or the local pin, the same) is written once; a different pin
///   already there refuses it.
///
/// Blocking (runs the bucket calls on the runtime from a blocking thread). A bucket that cannot
/// be reached leaves the decision to the local pin.
fn shared_pin(
    state: &State,
    module: &ModulePath,
    version: &str,
    file: PinFile,
    h1: &str,
    commit: &str,
) -> Result<(), PinError> {
    let Some(shared) = &state.shared else {
        return Ok(());
    };
    let rt = tokio::runtime::Handle::current();
    let key = crate::store::pins::shared_key(module, version, file);
    let parse = |bytes: &[u8]| match serde_json::from_slice::<Pin>(bytes) {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::warn!(key, error = %e, "unreadable pin in the shared bucket; using the local pin");
            None
        }
    };
    let unreachable = |e: object_store::Error| {
        tracing::warn!(key, error = %e, "shared bucket unavailable for pins; using the local pin");
    };
    let changed = |old: Pin| {
        PinError::Changed(Box::new(PinChange {
            module: module.to_string(),
            version: version.to_string(),
            suffix: file.suffix(),
            old_h1: old.h1,
            old_commit: old.commit,
            at: old.at,
            new_h1: h1.to_string(),
            new_commit: commit.to_string(),
        }))
    };
    let local = state
        .pins
        .get(module.as_str(), version)?
        .into_iter()
        .find(|(f, _)| *f == file)
        .map(|(_, p)| p);
    if let Some(local) = local.filter(|p| p.h1 != h1) {
        let theirs = match rt.block_on(shared.get_small(&key)) {
            Ok(Some(bytes)) => parse(&bytes),
            Ok(None) => None,
            Err(e) => {
                unreachable(e);
                None
            }
        };
        if theirs.is_none() {
            // The fleet learns the pin this replica holds (made before the bucket was in use).
            let data = bytes::Bytes::from(serde_json::to_vec(&local).expect("serializable"));
            if let Err(e) = rt.block_on(shared.create_once(&key, data)) {
                unreachable(e);
            }
        }
        return match theirs {
            Some(theirs) if theirs.h1 == h1 => state.pins.adopt(
                module.as_str(),
                version,
                file,
                &theirs,
                "pinned differently in the shared bucket (repinned on another replica)",
            ),
            _ => Err(changed(local)),
        };
    }
    let mine = Pin {
        h1: h1.to_string(),
        commit: commit.to_string(),
        at: crate::store::pins::now(),
    };
    let data = bytes::Bytes::from(serde_json::to_vec(&mine).expect("serializable"));
    match rt.block_on(shared.create_once(&key, data)) {
        Ok(Once::Created) => Ok(()),
        Ok(Once::Exists(bytes)) => match parse(&bytes) {
            Some(theirs) if theirs.h1 != h1 => Err(changed(theirs)),
            _ => Ok(()),
        },
        Err(e) => {
            unreachable(e);
            Ok(())
        }
    }
}

/// With a shared bucket, at start: publishes every pin this replica holds that the bucket
/// lacks (pins made before the bucket was in use), so that no other replica takes content this
/// one would refuse. In the background; a pin the bucket holds differently is logged.
pub async fn publish_pins(state: Arc<State>) {
    let Some(shared) = state.shared.clone() else {
        return;
    };
    let st = state.clone();
    let Ok(Ok(all)) = tokio::task::spawn_blocking(move || st.pins.all()).await else {
        tracing::warn!("cannot read the pin log to publish it to the shared bucket");
        return;
    };
    let mut published = 0;
    for (module, version, file, pin) in all {
        let Ok(path) = ModulePath::new(&module) else {
            continue;
        };
        let key = crate::store::pins::shared_key(&path, &version, file);
        let data = bytes::Bytes::from(serde_json::to_vec(&pin).expect("serializable"));
        match shared.create_once(&key, data).await {
            Ok(Once::Created) => published += 1,
            Ok(Once::Exists(bytes)) => {
                if serde_json::from_slice::<Pin>(&bytes).is_ok_and(|theirs| theirs.h1 != pin.h1) {
                    tracing::warn!(%module, version, ?file, "the shared bucket pins this version differently from this replica's pin log; the bucket's pin decides");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot publish pins to the shared bucket");
                return;
            }
        }
    }
    if published > 0 {
        tracing::info!(published, "published pins to the shared bucket");
    }
}

/// Builds the module zip for `module@v` into `pending`, with x/mod's rules; returns the commit
/// it was built from.
/// Writes the module zip of `module@v` from the repository whose root is the module path
/// `root` to `out`, as the go command builds it; returns the commit. Blocking.
pub(crate) fn build_zip(
    mirror: &Mirror,
    module: &ModulePath,
    root: &str,
    v: &str,
    out: &mut std::fs::File,
    tmp: &std::path::Path,
) -> Result<String, ServeError> {
    let repo =
        CodeRepo::new(mirror, module, root).map_err(|e| ServeError::Internal(e.to_string()))?;
    let src = repo.source(v).map_err(repo_err)?;
    let archive_path = tmp.join(format!("archive-{}.zip", hex_id()));
    let _cleanup = RemoveOnDrop(archive_path.clone());
    mirror
        .archive(&src.commit, &src.dir, &archive_path)
        .map_err(|e| ServeError::Internal(e.to_string()))?;
    let file =
        std::fs::File::open(&archive_path).map_err(|e| ServeError::Internal(e.to_string()))?;
    let mut archive = zip::ZipArchive::new(file)
        .map_err(|e| ServeError::Internal(format!("reading git archive: {e}")))?;
    let mut prefix = "prefix/".to_string();
    if !src.dir.is_empty() {
        prefix.push_str(&src.dir);
        prefix.push('/');
    }
    // (file, archive index or None for the repository-root LICENSE)
    let mut files: Vec<SourceFile> = vec![];
    let mut origin: Vec<Option<usize>> = vec![];
    for i in 0..archive.len() {
        let e = archive
            .by_index_raw(i)
            .map_err(|e| ServeError::Internal(e.to_string()))?;
        let Some(name) = e.name().strip_prefix(&prefix) else {
            continue;
        };
        if name.is_empty() || name.ends_with('/') {
            continue;
        }
        let regular = e.unix_mode().is_none_or(|m| m & 0o170000 == 0o100000);
        files.push(SourceFile {
            path: name.to_string(),
            regular,
            size: e.size(),
        });
        origin.push(Some(i));
    }
    let mut license: Option<Vec<u8>> = None;
    if !src.dir.is_empty()
        && !files.iter().any(|f| f.path == "LICENSE")
        && let Some(data) = mirror
            .read_file(&src.commit, "LICENSE")
            .map_err(|e| ServeError::Internal(e.to_string()))?
    {
        files.push(SourceFile {
            path: "LICENSE".into(),
            regular: true,
            size: data.len() as u64,
        });
        origin.push(None);
        license = Some(data);
    }
    let go_version = src.go_mod.as_deref().and_then(modfile::go_version);
    let chosen = modzip::select(&files, go_version.as_deref()).map_err(|e| {
        ServeError::ClientNotFound(format!("not found: {module}@{v}: create zip: {e}"))
    })?;
    let mut out = zip::ZipWriter::new(out);
    let zerr = |e: zip::result::ZipError| ServeError::Internal(format!("writing module zip: {e}"));
    for idx in chosen {
        let name = format!("{module}@{v}/{}", files[idx].path);
        match origin[idx] {
            Some(i) => {
                let entry = archive.by_index_raw(i).map_err(zerr)?;
                out.raw_copy_file_rename(entry, name).map_err(zerr)?;
            }
            None => {
                let opts = zip::write::SimpleFileOptions::default()
                    .compression_method(zip::CompressionMethod::Deflated);
                out.start_file(name, opts).map_err(zerr)?;
                std::io::Write::write_all(&mut out, license.as_deref().unwrap_or_default())
                    .map_err(|e| ServeError::Internal(e.to_string()))?;
            }
        }
    }
    out.finish().map_err(zerr)?;
    Ok(src.commit)
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn hex_id() -> String {
    rand::random::<[u8; 8]>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The go-get discovery page for a private repository root.
pub fn go_get_answer(root: &str) -> Response<Body> {
    let page = format!(
        "<!DOCTYPE html>\n<html><head>\n<meta name=\"go-import\" content=\"{root} git https://{root}\">\n</head><body>go get {root}</body></html>\n"
    );
    let mut resp = Response::new(crate::body::full(page));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    resp
}
