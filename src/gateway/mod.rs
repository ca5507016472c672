//! The composition root: turns a configuration into a running gateway, once. It compiles the
//! reloadable rules ([`compile::live`]), builds the restart-only services (CA, caches, upstream
//! client, mirrors, listeners), starts the accept loops, and reloads and shuts down.

pub mod admin;
pub mod compile;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

use crate::config::{self, Config};
use crate::egress::upstream::UpstreamClient;
use crate::ingress::{self, Ingress};
use crate::serve;
use crate::store::disk::DiskCache;
use crate::store::mirror::Mirrors;
use crate::store::shared::SharedStore;
use crate::telemetry::metrics::Metrics;
use crate::tls::ca::{CertAuthority, LeafCache};

/// What the admin listener and reloads need: the listeners' shared state, the CA and the file
/// the configuration came from.
#[derive(Debug)]
pub struct Runtime {
    pub ingress: Arc<Ingress>,
    pub ca: Arc<CertAuthority>,
    /// The file the configuration came from, for reloads.
    pub config_path: Option<std::path::PathBuf>,
    /// Its content when the gateway started, for `admin.watch_config`.
    pub config_text: Option<Vec<u8>>,
    /// One reload at a time (SIGHUP, POST /-/reload and the file watcher), so the newest file
    /// read is the one in force.
    reloading: std::sync::Mutex<()>,
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// Keys that changed but take effect only after a restart.
    pub restart_keys: Vec<String>,
}

impl Runtime {
    fn metrics(&self) -> &Metrics {
        &self.ingress.serve.metrics
    }

    /// Re-reads the configuration file and swaps in its rules, routes and credentials. Requests
    /// already running finish with the rules they started with; on any error the current rules
    /// stay in force. Keys that need a restart are named in the answer and in a warning.
    pub fn reload(&self) -> anyhow::Result<Reloaded> {
        let _one = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        let res = self.try_reload();
        let outcome = if res.is_ok() { "ok" } else { "error" };
        self.metrics()
            .config_reloads
            .with_label_values(&[outcome])
            .inc();
        match &res {
            Ok(r) if r.restart_keys.is_empty() => tracing::info!("configuration reloaded"),
            Ok(r) => tracing::warn!(
                keys = ?r.restart_keys,
                "configuration reloaded; these keys changed but take effect only after a restart"
            ),
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "configuration reload refused; the previous configuration stays in force")
            }
        }
        res
    }

    fn try_reload(&self) -> anyhow::Result<Reloaded> {
        let path = self.config_path.as_ref().ok_or_else(|| {
            anyhow::anyhow!("modgate was started without --config; nothing to reload")
        })?;
        let config = config::load(path)?;
        // Restart-only keys that the compiled rules read keep their start values until the
        // restart (the new ones are named in the answer below): modgate's own checksum
        // database stays intercepted and answered locally, so its lookups never go out.
        let mut effective = config.clone();
        effective.sumdb.serve = self.ingress.serve.config.sumdb.serve.clone();
        let live = compile::live(&effective, &self.ingress.serve.metrics)?;
        let auth = compile::auth(&config);
        let restart_keys = compile::restart_keys(&self.ingress.serve.config, &config);
        self.ingress.serve.swap_live(live);
        self.ingress.auth.store(auth);
        Ok(Reloaded { restart_keys })
    }
}

/// A running gateway.
#[derive(Debug)]
pub struct Gateway {
    runtime: Arc<Runtime>,
    proxy_addr: SocketAddr,
    admin_addr: SocketAddr,
    transparent_addr: Option<SocketAddr>,
    endpoint_addr: Option<SocketAddr>,
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
        let live = compile::live(&config, &metrics)?;
        let constraints = if config.ca.name_constraints {
            Some(
                live.policy
                    .ca_name_constraints()
                    .map_err(|e| anyhow::anyhow!("ca.name_constraints: {e}"))?,
            )
        } else {
            None
        };
        let (ca, created_ca) = CertAuthority::load_or_init(&config.ca.dir, constraints.as_deref())?;
        let ca = Arc::new(ca);
        metrics.ca_expiry.set(ca.not_after().unix_timestamp());
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
            tokio::task::spawn_blocking(move || DiskCache::open_indexing(&dir, max, store_metrics))
                .await?
                .with_context(|| "storage.data_dir: cannot open the module cache")?
        };
        let shared = match &config.shared_cache.bucket {
            Some(bucket) => Some(Arc::new(
                SharedStore::connect(&config.shared_cache, bucket, metrics.shared_cache.clone())
                    .await?,
            )),
            None => None,
        };
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
                ingress::transparent::bind(&config.transparent, addr)
                    .with_context(|| format!("transparent.listen: cannot bind {addr}"))?,
            ),
            None => None,
        };
        let transparent_addr = match &transparent_listener {
            Some(l) => Some(l.local_addr()?),
            None => None,
        };
        let endpoint = match config.endpoint.listen {
            Some(addr) => {
                let tls = Arc::new(ingress::endpoint::EndpointTls::new(&config.endpoint)?);
                let listener = ingress::endpoint::bind(addr).await?;
                let bound = listener.local_addr()?;
                Some((listener, bound, tls))
            }
            None => None,
        };
        let endpoint_addr = endpoint.as_ref().map(|(_, a, _)| *a);
        let own_sumdb = match compile::own_sumdb(&config)? {
            Some(name) => {
                let (signer, created) =
                    crate::tls::sumdb_key::load_or_create(&config.ca.dir, name)?;
                if created {
                    tracing::info!(key = %crate::tls::sumdb_key::path(&config.ca.dir).display(), "created the checksum-database signing key");
                }
                let data_dir = config.storage.data_dir.clone();
                let log = tokio::task::spawn_blocking(move || {
                    crate::store::sumlog::SumLog::open(&data_dir, signer)
                })
                .await??;
                let log = Arc::new(log);
                if let Some(shared) = &shared {
                    crate::store::sumshare::join(shared, &log).await?;
                }
                metrics.own_sumdb_records.set(log.size() as i64);
                Some(log)
            }
            None => None,
        };
        let conn_limit = Arc::new(tokio::sync::Semaphore::new(config.proxy.max_connections));
        let auth = compile::auth(&config);
        let serve = Arc::new(serve::State::new(
            config,
            metrics,
            upstream,
            cache,
            shared,
            mirrors,
            live,
            serve::sumdb_via_cache,
            own_sumdb,
        ));
        let ingress = Arc::new(Ingress::new(serve, auth, leaves, conn_limit));
        let mut listening = vec![proxy_addr, admin_addr];
        listening.extend(transparent_addr);
        listening.extend(endpoint_addr);
        let _ = ingress.serve.own.set(own_addresses(&listening));
        if ingress.serve.shared.is_some() {
            tokio::spawn(serve::private::publish_pins(ingress.serve.clone()));
        }
        let config_text = config_path.as_ref().and_then(|p| std::fs::read(p).ok());
        let runtime = Arc::new(Runtime {
            ingress: ingress.clone(),
            ca,
            config_path,
            config_text,
            reloading: std::sync::Mutex::new(()),
        });
        let accept_loops = TaskTracker::new();
        accept_loops.spawn(ingress::listener::run(proxy_listener, ingress.clone()));
        accept_loops.spawn(admin::run(admin_listener, runtime.clone()));
        if let (Some(listener), Some(addr)) = (transparent_listener, transparent_addr) {
            let mut own = vec![proxy_addr, admin_addr, addr];
            own.extend(endpoint_addr);
            accept_loops.spawn(ingress::transparent::run(listener, ingress.clone(), own));
            tracing::info!(transparent_addr = %addr, "gateway mode: transparent listener started");
        }
        if let Some((listener, addr, tls)) = endpoint {
            accept_loops.spawn(ingress::endpoint::run(listener, ingress.clone(), tls));
            tracing::info!(endpoint_addr = %addr, "GOPROXY endpoint started");
        }
        accept_loops.close();
        tracing::info!(%proxy_addr, %admin_addr, ca = %runtime.ca.cert_path().display(), "modgate started");
        Ok(Gateway {
            runtime,
            proxy_addr,
            admin_addr,
            transparent_addr,
            endpoint_addr,
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

    /// Address of the GOPROXY endpoint, when configured.
    pub fn endpoint_addr(&self) -> Option<SocketAddr> {
        self.endpoint_addr
    }

    /// Whether this start created a new CA.
    pub fn created_ca(&self) -> bool {
        self.created_ca
    }

    /// The gateway's CA.
    pub fn ca(&self) -> &Arc<CertAuthority> {
        &self.runtime.ca
    }

    /// The running state (metrics, rules, reload), for the CLI and tests.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// The lines an agent needs, for this gateway.
    pub fn agent_env(&self) -> String {
        let ca_path = std::path::absolute(self.runtime.ca.cert_path())
            .unwrap_or_else(|_| self.runtime.ca.cert_path());
        let gosumdb = self
            .runtime
            .ingress
            .serve
            .own_sumdb
            .as_ref()
            .map(|l| l.vkey());
        agent_env_lines(
            &format!("http://{}", reachable(self.proxy_addr)),
            &ca_path,
            gosumdb.as_deref(),
        )
    }

    /// Stops accepting, lets in-flight requests and tunnels finish for at most the configured
    /// drain time, then returns. Returns whether everything finished in time.
    pub async fn shutdown(self) -> bool {
        let ingress = &self.runtime.ingress;
        let deadline = ingress.serve.config.proxy.drain_timeout;
        ingress.begin_drain();
        self.accept_loops.wait().await;
        ingress.tasks.close();
        let drained = tokio::time::timeout(deadline, ingress.tasks.wait())
            .await
            .is_ok();
        if !drained {
            tracing::warn!(
                remaining = ingress.tasks.len(),
                "drain deadline reached; closing remaining connections"
            );
        }
        // The cache's background fsyncs, and a clean stop recorded: a later start, on any boot,
        // then removes nothing.
        let cache = ingress.serve.cache.clone();
        let _ = tokio::task::spawn_blocking(move || cache.settle()).await;
        drained
    }

    /// Runs until `stop` completes (e.g. a signal), reloading the configuration on SIGHUP, then
    /// shuts down gracefully.
    pub async fn run_until(self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let watch = watch_config(self.runtime.clone());
        tokio::pin!(watch);
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(mut hup) => loop {
                tokio::select! {
                    _ = &mut stop => break,
                    _ = hup.recv() => {
                        let runtime = self.runtime.clone();
                        let _ = tokio::task::spawn_blocking(move || runtime.reload()).await;
                    }
                    _ = &mut watch => {}
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; reload with POST /-/reload");
                tokio::select! {
                    _ = &mut stop => {}
                    _ = &mut watch => {}
                }
            }
        }
        let drained = self.shutdown().await;
        tracing::info!(drained, "modgate stopped");
    }
}

/// Reloads the configuration whenever its file's content changes (`admin.watch_config`; a
/// ConfigMap update swaps the file behind a symlink, which reading follows). A file that cannot
/// be read or does not compile leaves the running rules in force, as a reload does. Never
/// completes.
async fn watch_config(runtime: Arc<Runtime>) {
    let every = runtime.ingress.serve.config.admin.watch_config;
    let Some(path) = runtime.config_path.clone().filter(|_| !every.is_zero()) else {
        return std::future::pending().await;
    };
    let mut seen = runtime.config_text.clone();
    // A changed content is reloaded once two polls in a row read it (an editor that truncates
    // the file and then writes it is not caught half way), and never when it is empty.
    let mut candidate: Option<Vec<u8>> = None;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let p = path.clone();
        let now = tokio::task::spawn_blocking(move || std::fs::read(p))
            .await
            .ok()
            .and_then(Result::ok);
        let Some(now) = now.filter(|n| !n.is_empty()) else {
            continue;
        };
        if Some(&now) == seen.as_ref() {
            candidate = None;
            continue;
        }
        if candidate.as_ref() != Some(&now) {
            candidate = Some(now);
            continue;
        }
        candidate = None;
        seen = Some(now);
        tracing::info!(path = %path.display(), "the configuration file changed; reloading");
        let runtime = runtime.clone();
        let _ = tokio::task::spawn_blocking(move || runtime.reload()).await;
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

/// Shell lines that point an agent at a gateway; with `gosumdb`, also at modgate's own
/// checksum database (the go command's verification for private modules too).
pub fn agent_env_lines(
    proxy_url: &str,
    ca_path: &std::path::Path,
    gosumdb: Option<&str>,
) -> String {
    let mut out = format!(
        "export HTTPS_PROXY={proxy_url}\nexport SSL_CERT_FILE={ca}\nexport GIT_SSL_CAINFO={ca}\n",
        ca = ca_path.display()
    );
    if let Some(vkey) = gosumdb {
        out.push_str(&format!("export GOSUMDB={vkey}\n"));
    }
    out
}

/// `listening` with every unspecified address (`0.0.0.0`, `::`) expanded to this machine's
/// interface addresses and loopback: the addresses at which a client reaches modgate itself.
fn own_addresses(listening: &[SocketAddr]) -> Vec<SocketAddr> {
    let local: Vec<std::net::IpAddr> = nix::ifaddrs::getifaddrs()
        .map(|addrs| {
            addrs
                .filter_map(|a| a.address)
                .filter_map(|a| {
                    a.as_sockaddr_in()
                        .map(|v4| std::net::IpAddr::V4(v4.ip()))
                        .or_else(|| a.as_sockaddr_in6().map(|v6| std::net::IpAddr::V6(v6.ip())))
                })
                .collect()
        })
        .unwrap_or_default();
    let mut out = vec![];
    for l in listening {
        if l.ip().is_unspecified() {
            out.extend(local.iter().map(|ip| SocketAddr::new(*ip, l.port())));
            out.push(SocketAddr::from(([127, 0, 0, 1], l.port())));
            out.push(SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, l.port())));
        } else {
            out.push(*l);
        }
    }
    out
}

/// An address agents can use for a listener: an unspecified one (`0.0.0.0`, `::`) is no
/// destination, so this machine's first non-loopback address stands in (loopback if none).
fn reachable(addr: SocketAddr) -> SocketAddr {
    if !addr.ip().is_unspecified() {
        return addr;
    }
    let ip = own_addresses(&[addr])
        .into_iter()
        .map(|a| a.ip())
        .find(|ip| ip.is_ipv4() && !ip.is_loopback() && !ip.is_unspecified())
        .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]));
    SocketAddr::new(ip, addr.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agents_are_told_an_address_they_can_reach() {
        let any = reachable("0.0.0.0:3128".parse().unwrap());
        assert!(!any.ip().is_unspecified(), "{any}");
        assert_eq!(any.port(), 3128);
        let fixed: SocketAddr = "10.1.2.3:3128".parse().unwrap();
        assert_eq!(reachable(fixed), fixed);
        assert!(
            agent_env_lines(
                &format!("http://{}", reachable("0.0.0.0:3128".parse().unwrap())),
                std::path::Path::new("/ca.pem"),
                None
            )
            .lines()
            .next()
            .is_some_and(|l| !l.contains("0.0.0.0"))
        );
    }
}
