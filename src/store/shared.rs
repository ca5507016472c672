//! The shared cache tier: an S3-compatible bucket behind each replica's local disk cache, so
//! replicas behind one load balancer share what any of them fetched.
//!
//! Reads go local disk, then the bucket, then upstream. An entry taken from the bucket is
//! validated exactly like an upstream answer (length, module-zip rules) before it is committed
//! locally, and keeps the bucket's fetch time, so mutable entries expire on every replica at the
//! same moment.
//!
//! Writes: after a replica commits a fill locally it publishes the file to the bucket.
//! Immutable entries are written once: with `If-None-Match: *` where the store honours it
//! (probed at start), otherwise only if a HEAD finds nothing (their bytes are deterministic, so
//! a racing duplicate write stores the same bytes). Mutable entries are overwritten and carry
//! their fetch time as `x-amz-meta-modgate-fetched-ms`.
//!
//! Cross-replica single-flight: before fetching upstream, a replica takes a lock object
//! (`<prefix>/locks/<key>`, owner and expiry). With conditional put the lock is exact. Without
//! it (Garage, older MinIO) a replica writes its claim, waits [`SETTLE`], and reads the lock back:
//! the last writer wins and everyone who raced reads the same owner. Other replicas wait for the
//! object to appear while the lock is live, then take it from the bucket. Guarantee: replicas
//! missing the same key make one upstream fetch as long as the leader finishes within
//! `shared_cache.lock_ttl` and, without conditional put, racing claims land within [`SETTLE`]
//! of each other; otherwise (or if the bucket fails) a replica fetches itself, which costs a
//! duplicate download and never a wrong answer.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::StreamExt;
use object_store::aws::{AmazonS3Builder, S3ConditionalPut};
use object_store::path::Path;
use object_store::{
    Attribute, Attributes, ObjectStore, PutMode, PutMultipartOptions, PutOptions, PutPayload,
    WriteMultipart,
};
use prometheus::IntCounterVec;

use crate::config::SharedCacheConfig;
use crate::store::disk::DiskCache;

/// Time a claimant waits before reading the lock back (stores without conditional put).
pub const SETTLE: Duration = Duration::from_millis(250);
/// Interval between checks while another replica fetches.
const POLL: Duration = Duration::from_millis(200);
/// Entries up to this size are uploaded in one PUT; larger ones in multipart chunks.
const SINGLE_PUT_MAX: u64 = 16 * 1024 * 1024;
/// Multipart chunk size (S3's minimum part is 5 MiB).
const PART: usize = 8 * 1024 * 1024;
/// User metadata naming when an entry was fetched from upstream (Unix milliseconds).
const FETCHED_META: &str = "modgate-fetched-ms";

/// The bucket, its prefix and this replica's identity.
pub struct SharedStore {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    replica: String,
    conditional: bool,
    lock_ttl: Duration,
    events: IntCounterVec,
}

impl std::fmt::Debug for SharedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedStore")
            .field("prefix", &self.prefix)
            .field("replica", &self.replica)
            .field("conditional", &self.conditional)
            .finish()
    }
}

/// What a replica should do about a local miss.
#[derive(Debug)]
pub enum Claim {
    /// The entry is now in the local cache (taken from the bucket).
    Local,
    /// Fetch upstream; publish and release when done.
    Lead(LockGuard),
    /// Fetch upstream without a lock (bucket trouble, or the leader vanished).
    Alone,
}

/// A held cross-replica lock; released (deleted) by [`SharedStore::release`] or on drop.
pub struct LockGuard {
    store: Arc<dyn ObjectStore>,
    path: Option<Path>,
}

impl std::fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockGuard")
            .field("path", &self.path)
            .finish()
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            let store = self.store.clone();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = store.delete(&path).await;
                });
            }
        }
    }
}

fn age(t: SystemTime) -> Duration {
    SystemTime::now().duration_since(t).unwrap_or_default()
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
}

impl SharedStore {
    /// Connects to the bucket, checks it answers, and probes for conditional-put support.
    pub async fn connect(
        cfg: &SharedCacheConfig,
        bucket: &str,
        events: IntCounterVec,
    ) -> anyhow::Result<SharedStore> {
        let key = credential(
            &cfg.access_key_id_file,
            &cfg.access_key_id_env,
            "shared_cache.access_key_id",
        )?;
        let secret = credential(
            &cfg.secret_access_key_file,
            &cfg.secret_access_key_env,
            "shared_cache.secret_access_key",
        )?;
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_region(&cfg.region)
            .with_access_key_id(key)
            .with_secret_access_key(secret)
            .with_conditional_put(S3ConditionalPut::ETagMatch)
            .with_retry(object_store::RetryConfig {
                max_retries: 2,
                retry_timeout: Duration::from_secs(10),
                ..Default::default()
            });
        if let Some(endpoint) = &cfg.endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"));
        }
        let store: Arc<dyn ObjectStore> = Arc::new(
            builder
                .build()
                .map_err(|e| anyhow::anyhow!("shared_cache: {e}"))?,
        );
        let replica = format!("{:016x}", rand::random::<u64>());
        let mut shared = SharedStore {
            store,
            prefix: cfg.prefix.trim_matches('/').to_string(),
            replica,
            conditional: false,
            lock_ttl: cfg.lock_ttl,
            events,
        };
        shared.conditional = shared
            .probe()
            .await
            .map_err(|e| anyhow::anyhow!("shared_cache: bucket {bucket:?} is not usable: {e}"))?;
        tracing::info!(
            bucket,
            prefix = %shared.prefix,
            conditional_put = shared.conditional,
            "shared cache connected"
        );
        Ok(shared)
    }

    /// Writes a probe object twice with `If-None-Match: *`: a refused second write means the
    /// store honours conditional put.
    async fn probe(&self) -> Result<bool, object_store::Error> {
        let path = Path::from(format!("{}/probe/{}", self.prefix, self.replica));
        let create = || PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        self.store
            .put_opts(&path, PutPayload::from_static(b"1"), create())
            .await?;
        let second = self
            .store
            .put_opts(&path, PutPayload::from_static(b"2"), create())
            .await;
        let _ = self.store.delete(&path).await;
        match second {
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => Ok(true),
            Ok(_) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Whether the store honours `If-None-Match: *`.
    pub fn conditional_put(&self) -> bool {
        self.conditional
    }

    fn count(&self, event: &str) {
        self.events.with_label_values(&[event]).inc();
    }

    fn object(&self, key: &str) -> Path {
        Path::from(format!("{}/objects/{key}", self.prefix))
    }

    fn lock(&self, key: &str) -> Path {
        Path::from(format!("{}/locks/{key}", self.prefix))
    }

    /// Decides what to do about a local miss for `key`: take it from the bucket, lead the
    /// fetch, or (after waiting for another replica) fetch alone.
    pub async fn claim(
        &self,
        key: &str,
        max_age: Option<Duration>,
        cache: &Arc<DiskCache>,
        validate: Validator,
    ) -> Claim {
        match self.download(key, max_age, cache, validate.clone()).await {
            Ok(true) => return Claim::Local,
            Ok(false) => self.count("miss"),
            Err(e) => {
                self.count("error");
                tracing::warn!(key, error = %e, "shared cache read failed; fetching upstream");
                return Claim::Alone;
            }
        }
        match self.acquire(key).await {
            Ok(Some(guard)) => {
                // The previous holder may have published between our read and our claim.
                if let Ok(true) = self.download(key, max_age, cache, validate.clone()).await {
                    return Claim::Local;
                }
                self.count("lock_won");
                return Claim::Lead(guard);
            }
            Ok(None) => self.count("lock_waited"),
            Err(e) => {
                self.count("error");
                tracing::warn!(key, error = %e, "shared cache lock failed; fetching upstream");
                return Claim::Alone;
            }
        }
        // Another replica is fetching: wait for its object while its lock is live.
        let deadline = tokio::time::Instant::now() + self.lock_ttl;
        loop {
            tokio::time::sleep(POLL).await;
            match self.store.head(&self.object(key)).await {
                // A stale mutable object is what the leader is replacing: keep waiting.
                Ok(meta) if max_age.is_none_or(|ttl| age(meta.last_modified.into()) < ttl) => {
                    break;
                }
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(_) => return Claim::Alone,
            }
            let live =
                matches!(self.read_lock(key).await, Ok(Some((_, expires))) if expires > now_ms());
            if !live || tokio::time::Instant::now() >= deadline {
                if live {
                    self.count("lock_expired");
                }
                break;
            }
        }
        match self.download(key, max_age, cache, validate).await {
            Ok(true) => Claim::Local,
            _ => Claim::Alone,
        }
    }

    /// Copies the bucket's entry for `key` into the local cache if it is there and fresh.
    async fn download(
        &self,
        key: &str,
        max_age: Option<Duration>,
        cache: &Arc<DiskCache>,
        validate: Validator,
    ) -> Result<bool, object_store::Error> {
        let res = match self.store.get(&self.object(key)).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => return Ok(false),
            Err(e) => return Err(e),
        };
        let fetched = res
            .attributes
            .get(&Attribute::Metadata(FETCHED_META.into()))
            .and_then(|v| v.as_ref().parse::<u64>().ok())
            .map(|ms| UNIX_EPOCH + Duration::from_millis(ms))
            .unwrap_or_else(|| res.meta.last_modified.into());
        if max_age.is_some_and(|ttl| age(fetched) >= ttl) {
            return Ok(false);
        }
        let mut pending = match cache.begin(key) {
            Ok(p) => p,
            Err(_) => return Ok(false),
        };
        let mut stream = res.into_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            let (p, ok) = tokio::task::spawn_blocking(move || {
                let ok = pending.write(&chunk).is_ok();
                (pending, ok)
            })
            .await
            .map_err(|e| object_store::Error::Generic {
                store: "local",
                source: Box::new(e),
            })?;
            if !ok {
                return Ok(false);
            }
            pending = p;
        }
        let committed = tokio::task::spawn_blocking(move || {
            pending.commit(|file| {
                validate(file)?;
                Ok(file.set_modified(fetched)?)
            })
        })
        .await;
        match committed {
            Ok(Ok(())) => {
                self.count("hit");
                Ok(true)
            }
            Ok(Err(crate::store::disk::StoreError::Rejected(why))) => {
                // A corrupt object is removed so it is fetched and published again.
                self.count("rejected");
                tracing::warn!(key, error = %why, "shared cache entry rejected; removing it");
                let _ = self.store.delete(&self.object(key)).await;
                Ok(false)
            }
            _ => Ok(false),
        }
    }

    async fn read_lock(&self, key: &str) -> Result<Option<(String, u128)>, object_store::Error> {
        match self.store.get(&self.lock(key)).await {
            Ok(r) => {
                let body = r.bytes().await?;
                let text = String::from_utf8_lossy(&body);
                let mut parts = text.split_whitespace();
                let owner = parts.next().unwrap_or("").to_string();
                let expires = parts.next().and_then(|e| e.parse().ok()).unwrap_or(0);
                Ok(Some((owner, expires)))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Takes the lock for `key`, or returns None if another replica holds it.
    async fn acquire(&self, key: &str) -> Result<Option<LockGuard>, object_store::Error> {
        let path = self.lock(key);
        for _ in 0..2 {
            if let Some((owner, expires)) = self.read_lock(key).await? {
                if owner != self.replica && expires > now_ms() {
                    return Ok(None);
                }
                // An expired lock: its holder died or stalled. Remove it and compete.
                self.count("lock_expired");
                let _ = self.store.delete(&path).await;
            }
            let claim = format!("{} {}", self.replica, now_ms() + self.lock_ttl.as_millis());
            let mode = if self.conditional {
                PutMode::Create
            } else {
                PutMode::Overwrite
            };
            let put = self
                .store
                .put_opts(
                    &path,
                    PutPayload::from(claim.into_bytes()),
                    PutOptions {
                        mode,
                        ..Default::default()
                    },
                )
                .await;
            match put {
                Ok(_) if self.conditional => {
                    return Ok(Some(self.guard(path)));
                }
                Ok(_) => {
                    tokio::time::sleep(SETTLE).await;
                    return Ok(match self.read_lock(key).await? {
                        Some((owner, _)) if owner == self.replica => Some(self.guard(path)),
                        _ => None,
                    });
                }
                Err(object_store::Error::AlreadyExists { .. })
                | Err(object_store::Error::Precondition { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    fn guard(&self, path: Path) -> LockGuard {
        LockGuard {
            store: self.store.clone(),
            path: Some(path),
        }
    }

    /// Publishes the local file for `key` to the bucket, then releases `lock`.
    pub async fn publish(
        &self,
        key: &str,
        file: &std::path::Path,
        immutable: bool,
        fetched: SystemTime,
        lock: Option<LockGuard>,
    ) {
        match self.upload(key, file, immutable, fetched).await {
            Ok(true) => self.count("published"),
            Ok(false) => {}
            Err(e) => {
                self.count("error");
                tracing::warn!(key, error = %e, "shared cache publish failed");
            }
        }
        if let Some(mut guard) = lock
            && let Some(path) = guard.path.take()
        {
            let _ = self.store.delete(&path).await;
        }
    }

    async fn upload(
        &self,
        key: &str,
        file: &std::path::Path,
        immutable: bool,
        fetched: SystemTime,
    ) -> Result<bool, Box<dyn std::error::Error + Send + Sync>> {
        let path = self.object(key);
        if immutable && !self.conditional {
            match self.store.head(&path).await {
                Ok(_) => return Ok(false),
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let mut attributes = Attributes::new();
        let ms = fetched
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        attributes.insert(
            Attribute::Metadata(FETCHED_META.into()),
            ms.to_string().into(),
        );
        let len = tokio::fs::metadata(file).await?.len();
        if len <= SINGLE_PUT_MAX {
            let data = Bytes::from(tokio::fs::read(file).await?);
            let mode = if immutable && self.conditional {
                PutMode::Create
            } else {
                PutMode::Overwrite
            };
            let res = self
                .store
                .put_opts(
                    &path,
                    PutPayload::from(data),
                    PutOptions {
                        mode,
                        attributes,
                        ..Default::default()
                    },
                )
                .await;
            return match res {
                Ok(_) => Ok(true),
                Err(object_store::Error::AlreadyExists { .. })
                | Err(object_store::Error::Precondition { .. }) => Ok(false),
                Err(e) => Err(e.into()),
            };
        }
        // Large entries stream from disk in parts; memory stays at a few parts.
        let upload = self
            .store
            .put_multipart_opts(
                &path,
                PutMultipartOptions {
                    attributes,
                    ..Default::default()
                },
            )
            .await?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART);
        let mut f = tokio::fs::File::open(file).await?;
        let mut buf = vec![0u8; 1024 * 1024];
        loop {
            use tokio::io::AsyncReadExt;
            let n = f.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            writer.wait_for_capacity(4).await?;
            writer.write(&buf[..n]);
        }
        writer.finish().await?;
        Ok(true)
    }
}

/// What [`SharedStore::create_once`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Once {
    /// The object is now the one given.
    Created,
    /// Another write came first; its bytes.
    Exists(Bytes),
}

/// How long a write-once waits for another replica's lock on the same object.
const ONCE_WAIT: Duration = Duration::from_secs(10);

impl SharedStore {
    fn record(&self, rel: &str) -> Path {
        Path::from(format!("{}/{rel}", self.prefix))
    }

    /// A small object under the prefix, if it exists.
    pub async fn get_small(&self, rel: &str) -> Result<Option<Bytes>, object_store::Error> {
        match self.store.get(&self.record(rel)).await {
            Ok(r) => Ok(Some(r.bytes().await?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes a small object under the prefix unless one is there, and says which won: exact
    /// with conditional put; otherwise under a lock (`locks/<rel>`, with the guarantee of the
    /// cache's locks: exact as long as racing claims land within [`SETTLE`] of each other).
    pub async fn create_once(&self, rel: &str, data: Bytes) -> Result<Once, object_store::Error> {
        let path = self.record(rel);
        if self.conditional {
            let put = self
                .store
                .put_opts(
                    &path,
                    PutPayload::from(data),
                    PutOptions {
                        mode: PutMode::Create,
                        ..Default::default()
                    },
                )
                .await;
            return match put {
                Ok(_) => Ok(Once::Created),
                Err(object_store::Error::AlreadyExists { .. })
                | Err(object_store::Error::Precondition { .. }) => {
                    Ok(Once::Exists(self.get_small(rel).await?.unwrap_or_default()))
                }
                Err(e) => Err(e),
            };
        }
        let lock_key = format!("once/{rel}");
        let deadline = tokio::time::Instant::now() + ONCE_WAIT;
        let guard = loop {
            if let Some(existing) = self.get_small(rel).await? {
                return Ok(Once::Exists(existing));
            }
            if let Some(g) = self.acquire(&lock_key).await? {
                break g;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(object_store::Error::Generic {
                    store: "shared_cache",
                    source: format!("another replica holds the lock on {rel}").into(),
                });
            }
            tokio::time::sleep(POLL).await;
        };
        let result = match self.get_small(rel).await? {
            Some(existing) => Ok(Once::Exists(existing)),
            None => self
                .store
                .put(&path, PutPayload::from(data))
                .await
                .map(|_| Once::Created),
        };
        let mut guard = guard;
        if let Some(p) = guard.path.take() {
            let _ = self.store.delete(&p).await;
        }
        result
    }

    /// Removes a small object under the prefix (absent is fine).
    pub async fn delete_small(&self, rel: &str) -> Result<(), object_store::Error> {
        match self.store.delete(&self.record(rel)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// A credential from its file (trimmed) or else its environment variable; the error names the
/// key, never the value.
fn credential(file: &Option<std::path::PathBuf>, env: &str, key: &str) -> anyhow::Result<String> {
    match file {
        Some(path) => std::fs::read_to_string(path)
            .map(|s| s.trim().to_string())
            .map_err(|e| anyhow::anyhow!("{key}_file: cannot read {}: {e}", path.display())),
        None => std::env::var(env)
            .map_err(|_| anyhow::anyhow!("{key}_env: environment variable {env} is not set")),
    }
}

/// Validation applied to an entry taken from the bucket (the same as for upstream bodies).
pub type Validator =
    Arc<dyn Fn(&std::fs::File) -> Result<(), super::content::ContentError> + Send + Sync>;
