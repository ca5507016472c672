//! modgate: a forward HTTPS proxy for Go module traffic.
//!
//! Agents reach it with `HTTPS_PROXY`; it terminates TLS for module hosts with its own CA,
//! decides per request what to do, and forwards, tunnels or refuses everything else by policy.
//! Modules in request-path order:
//!
//! - [`config`]: the TOML file and its defaults;
//! - [`proxy`]: listener, CONNECT, tunnels, TLS interception, CA, upstream client;
//! - [`policy`]: pure decisions: egress, classification, private patterns, routes;
//! - [`gomod`]: Go's path, version, zip and checksum-database formats;
//! - [`store`]: the persistent cache and single-flight fills;
//! - [`serve`]: what happens to each intercepted request (cached public route, sumdb, forward);
//! - [`explain`]: the same decisions, printed for an operator; [`ops`]: cache commands;
//! - [`telemetry`]: metrics, access log, admin endpoints.
//!
//! [`Gateway::start`] wires them together; `main.rs` and the tests both use it.

#![forbid(unsafe_code)]
#![deny(missing_debug_implementations)]

pub mod body;
pub mod config;
pub mod explain;
pub mod gomod;
pub mod ops;
pub mod policy;
pub mod proxy;
pub mod serve;
pub mod store;
pub mod telemetry;
pub mod warm;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::policy::Policy;
use crate::policy::egress::normalize_host;
use crate::proxy::auth::ProxyAuth;
use crate::proxy::ca::{CertAuthority, LeafCache};
use crate::proxy::upstream::{BaseUrl, UpstreamClient};
use crate::serve::cached::FillOutcome;
use crate::serve::private::PrivateBackend;
use crate::serve::upstreams::GoProxyList;
use crate::store::disk::DiskCache;
use crate::store::flight::Flights;
use crate::store::mirror::Mirrors;
use crate::telemetry::metrics::Metrics;

/// Everything a connection needs, shared by all of them.
#[derive(Debug)]
pub struct State {
    /// The configuration the gateway started with (listeners, CA, cache, timeouts).
    pub config: Config,
    pub metrics: Arc<Metrics>,
    pub ca: Arc<CertAuthority>,
    pub leaves: LeafCache,
    pub upstream: UpstreamClient,
    pub cache: Arc<DiskCache>,
    /// The bucket shared with other replicas, when `shared_cache.bucket` is set.
    pub shared: Option<Arc<store::shared::SharedStore>>,
    pub flights: Arc<Flights<FillOutcome>>,
    pub mirrors: Mirrors,
    /// Rules, routes and credentials; replaced as a whole on reload.
    dynamic: arc_swap::ArcSwap<Dynamic>,
    /// Cancelled when the gateway starts shutting down.
    pub shutdown: CancellationToken,
    /// Every connection task, so shutdown can wait for them.
    pub tasks: TaskTracker,
    /// Permits for `proxy.max_connections`.
    pub conn_limit: Arc<tokio::sync::Semaphore>,
    /// The file the configuration came from, for reloads.
    pub config_path: Option<std::path::PathBuf>,
}

impl State {
    /// Counts an egress decision (`modgate_egress_decisions_total`) and hands it back.
    pub fn counted(&self, decision: policy::egress::Decision) -> policy::egress::Decision {
        self.metrics
            .egress_decisions
            .with_label_values(&[decision.kind()])
            .inc();
        decision
    }

    /// The current rules. Take one snapshot per request and use it throughout.
    pub fn dynamic(&self) -> Arc<Dynamic> {
        self.dynamic.load_full()
    }

    /// Re-reads the configuration file and swaps in its rules, routes and credentials. Requests
    /// already running finish with the rules they started with; on any error the current rules
    /// stay in force. Keys that need a restart are named in a warning.
    pub fn reload(&self) -> anyhow::Result<()> {
        let res = self.try_reload();
        let outcome = if res.is_ok() { "ok" } else { "error" };
        self.metrics
            .config_reloads
            .with_label_values(&[outcome])
            .inc();
        match &res {
            Ok(()) => tracing::info!("configuration reloaded"),
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "configuration reload refused; the previous configuration stays in force")
            }
        }
        res
    }

    fn try_reload(&self) -> anyhow::Result<()> {
        let path = self.config_path.as_ref().ok_or_else(|| {
            anyhow::anyhow!("modgate was started without --config; nothing to reload")
        })?;
        let config = config::load(path)?;
        let dynamic = Dynamic::new(&config, &self.metrics)?;
        let old = &self.config;
        let static_changes: Vec<&str> = [
            ("proxy", old.proxy != config.proxy),
            ("admin", old.admin != config.admin),
            ("storage", old.storage != config.storage),
            ("ca", old.ca != config.ca),
            ("cache", old.cache != config.cache),
            ("log", old.log != config.log),
            (
                "intercept.tls_handshake_timeout",
                old.intercept.tls_handshake_timeout != config.intercept.tls_handshake_timeout,
            ),
            (
                "private.mirror_ttl",
                old.private.mirror_ttl != config.private.mirror_ttl,
            ),
            ("upstream timeouts and roots", {
                let (mut a, mut b) = (old.upstream.clone(), config.upstream.clone());
                a.overrides.clear();
                b.overrides.clear();
                a != b
            }),
        ]
        .into_iter()
        .filter_map(|(k, changed)| changed.then_some(k))
        .collect();
        if !static_changes.is_empty() {
            tracing::warn!(keys = ?static_changes, "these settings changed but take effect only after a restart");
        }
        self.dynamic.store(Arc::new(dynamic));
        Ok(())
    }
}

/// The reloadable part of the configuration, compiled: policy (intercept set, egress, private
/// patterns and routes), proxy users, upstream overrides, the public GOPROXY list, checksum
/// databases and private-route credentials.
#[derive(Debug)]
pub struct Dynamic {
    /// The configuration this snapshot was compiled from.
    pub config: Config,
    pub policy: Policy,
    pub auth: Option<ProxyAuth>,
    overrides: HashMap<String, BaseUrl>,
    /// The public GOPROXY list.
    pub public_upstreams: GoProxyList,
    /// Checksum-database name -> base URL.
    pub sumdbs: HashMap<String, BaseUrl>,
    /// One backend per `[[private.routes]]` entry, in order.
    pub private: Vec<PrivateBackend>,
}

impl Dynamic {
    /// Compiles a validated configuration; the error names the key at fault.
    pub fn new(config: &Config, metrics: &Arc<Metrics>) -> anyhow::Result<Dynamic> {
        let policy = Policy::new(config).map_err(|e| anyhow::anyhow!("policy: {e}"))?;
        let public_upstreams = GoProxyList::parse(&config.modules.upstream)
            .map_err(|e| anyhow::anyhow!("modules.upstream: {e}"))?;
        let mut sumdbs = HashMap::new();
        for (name, url) in &config.sumdb.dbs {
            let base = BaseUrl::parse(url).map_err(|e| anyhow::anyhow!("sumdb.dbs: {e}"))?;
            sumdbs.insert(name.clone(), base);
        }
        let mut overrides = HashMap::new();
        for (host, base) in &config.upstream.overrides {
            let base =
                BaseUrl::parse(base).map_err(|e| anyhow::anyhow!("upstream.overrides: {e}"))?;
            overrides.insert(normalize_host(host), base);
        }
        let mut private = vec![];
        for (i, r) in config.private.routes.iter().enumerate() {
            private.push(
                PrivateBackend::new(i, r, config, metrics.clone()).map_err(anyhow::Error::msg)?,
            );
        }
        Ok(Dynamic {
            config: config.clone(),
            policy,
            auth: ProxyAuth::new(&config.auth),
            overrides,
            public_upstreams,
            sumdbs,
            private,
        })
    }

    /// Where requests for `host:port` go: its override, or `https://host:port`.
    pub fn upstream_base(&self, host: &str, port: u16) -> Result<BaseUrl, String> {
        Ok(self.resolve(&BaseUrl::https(host, port)?))
    }

    /// `base` with its host's override applied, if one is configured.
    pub fn resolve(&self, base: &BaseUrl) -> BaseUrl {
        match self.overrides.get(&normalize_host(base.host())) {
            Some(over) => base.with_override(over),
            None => base.clone(),
        }
    }
}

/// A running gateway.
#[derive(Debug)]
pub struct Gateway {
    state: Arc<State>,
    proxy_addr: SocketAddr,
    admin_addr: SocketAddr,
    transparent_addr: Option<SocketAddr>,
    created_ca: bool,
    accept_loops: TaskTracker,
}

impl Gateway {
    /// Loads (or creates) the CA, binds both listeners and starts serving.
    pub async fn start(config: Config) -> anyhow::Result<Gateway> {
        Self::start_with_path(config, None).await
    }

    /// Like [`start`](Self::start), remembering the file the configuration came from so that
    /// SIGHUP and `POST /-/reload` can re-read it.
    pub async fn start_with_path(
        config: Config,
        config_path: Option<std::path::PathBuf>,
    ) -> anyhow::Result<Gateway> {
        config.validate()?;
        let metrics = Arc::new(Metrics::new());
        let constraints = if config.ca.name_constraints {
            Some(
                Policy::new(&config)
                    .and_then(|p| p.ca_name_constraints())
                    .map_err(|e| anyhow::anyhow!("ca.name_constraints: {e}"))?,
            )
        } else {
            None
        };
        let (ca, created_ca) = CertAuthority::load_or_init(&config.ca.dir, constraints.as_deref())?;
        let ca = Arc::new(ca);
        let leaves = LeafCache::new(ca.clone(), config.ca.leaf_validity, metrics.clone());
        let upstream = UpstreamClient::new(&config.upstream, metrics.clone())
            .map_err(|e| anyhow::anyhow!("upstream: {e}"))?;
        std::fs::create_dir_all(&config.storage.data_dir).with_context(|| {
            format!(
                "storage.data_dir: cannot create {}",
                config.storage.data_dir.display()
            )
        })?;
        let cache = {
            let dir = config.storage.data_dir.clone();
            let max = config.cache.max_size.as_u64();
            let store_metrics = metrics.store();
            tokio::task::spawn_blocking(move || DiskCache::open(&dir, max, store_metrics))
                .await?
                .with_context(|| "storage.data_dir: cannot open the module cache")?
        };
        let shared = match &config.shared_cache.bucket {
            Some(bucket) => Some(Arc::new(
                store::shared::SharedStore::connect(
                    &config.shared_cache,
                    bucket,
                    metrics.shared_cache.clone(),
                )
                .await?,
            )),
            None => None,
        };
        let dynamic = Dynamic::new(&config, &metrics)?;
        let mirrors = Mirrors::new(
            &config.storage.data_dir,
            config.private.mirror_ttl,
            config.private.fetch_timeout,
        )
        .with_context(|| "storage.data_dir: cannot create the mirror directory")?;
        let proxy_listener = TcpListener::bind(config.proxy.listen)
            .await
            .with_context(|| format!("proxy.listen: cannot bind {}", config.proxy.listen))?;
        let admin_listener = TcpListener::bind(config.admin.listen)
            .await
            .with_context(|| format!("admin.listen: cannot bind {}", config.admin.listen))?;
        let proxy_addr = proxy_listener.local_addr()?;
        let admin_addr = admin_listener.local_addr()?;
        let transparent_listener = match config.transparent.listen {
            Some(addr) => Some(
                proxy::transparent::bind(&config.transparent, addr)
                    .with_context(|| format!("transparent.listen: cannot bind {addr}"))?,
            ),
            None => None,
        };
        let transparent_addr = match &transparent_listener {
            Some(l) => Some(l.local_addr()?),
            None => None,
        };
        let conn_limit = Arc::new(tokio::sync::Semaphore::new(config.proxy.max_connections));
        let state = Arc::new(State {
            config,
            metrics,
            ca,
            leaves,
            upstream,
            cache: Arc::new(cache),
            shared,
            flights: Arc::default(),
            mirrors,
            dynamic: arc_swap::ArcSwap::from_pointee(dynamic),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            conn_limit,
            config_path,
        });
        let accept_loops = TaskTracker::new();
        accept_loops.spawn(proxy::listener::run(proxy_listener, state.clone()));
        accept_loops.spawn(telemetry::admin::run(admin_listener, state.clone()));
        if let (Some(listener), Some(addr)) = (transparent_listener, transparent_addr) {
            let own = vec![proxy_addr, admin_addr, addr];
            accept_loops.spawn(proxy::transparent::run(listener, state.clone(), own));
            tracing::info!(transparent_addr = %addr, "gateway mode: transparent listener started");
        }
        accept_loops.close();
        tracing::info!(%proxy_addr, %admin_addr, ca = %state.ca.cert_path().display(), "modgate started");
        Ok(Gateway {
            state,
            proxy_addr,
            admin_addr,
            transparent_addr,
            created_ca,
            accept_loops,
        })
    }

    /// Address of the proxy listener.
    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy_addr
    }

    /// Address of the admin listener.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Address of the transparent (gateway-mode) listener, when configured.
    pub fn transparent_addr(&self) -> Option<SocketAddr> {
        self.transparent_addr
    }

    /// Whether this start created a new CA.
    pub fn created_ca(&self) -> bool {
        self.created_ca
    }

    /// Shared state (metrics, CA), for the CLI and tests.
    pub fn state(&self) -> &Arc<State> {
        &self.state
    }

    /// The lines an agent needs, for this gateway.
    pub fn agent_env(&self) -> String {
        let ca_path = std::path::absolute(self.state.ca.cert_path())
            .unwrap_or_else(|_| self.state.ca.cert_path());
        agent_env_lines(&format!("http://{}", self.proxy_addr), &ca_path)
    }

    /// Stops accepting, lets in-flight requests and tunnels finish for at most the configured
    /// drain time, then returns. Returns whether everything finished in time.
    pub async fn shutdown(self) -> bool {
        let deadline = self.state.config.proxy.drain_timeout;
        self.state.shutdown.cancel();
        self.accept_loops.wait().await;
        self.state.tasks.close();
        let drained = tokio::time::timeout(deadline, self.state.tasks.wait())
            .await
            .is_ok();
        if !drained {
            tracing::warn!(
                remaining = self.state.tasks.len(),
                "drain deadline reached; closing remaining connections"
            );
        }
        // The cache's background fsyncs, and a clean stop recorded: a later start, on any boot,
        // then removes nothing.
        let cache = self.state.cache.clone();
        let _ = tokio::task::spawn_blocking(move || cache.settle()).await;
        drained
    }

    /// Runs until `stop` completes (e.g. a signal), reloading the configuration on SIGHUP, then
    /// shuts down gracefully.
    pub async fn run_until(self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(mut hup) => loop {
                tokio::select! {
                    _ = &mut stop => break,
                    _ = hup.recv() => {
                        let state = self.state.clone();
                        let _ = tokio::task::spawn_blocking(move || state.reload()).await;
                    }
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; reload with POST /-/reload");
                stop.await;
            }
        }
        let drained = self.shutdown().await;
        tracing::info!(drained, "modgate stopped");
    }
}

/// Completes on SIGTERM or ctrl-c. The handlers are installed when this is called, not when the
/// future is first polled, so a signal arriving during start-up is not lost.
pub fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: draining"),
            _ = int.recv() => tracing::info!("interrupt: draining"),
        }
    })
}

/// Shell lines that point an agent at a gateway.
pub fn agent_env_lines(proxy_url: &str, ca_path: &std::path::Path) -> String {
    format!(
        "export HTTPS_PROXY={proxy_url}\nexport SSL_CERT_FILE={ca}\nexport GIT_SSL_CAINFO={ca}\n",
        ca = ca_path.display()
    )
}
