//! What every request handler may use: [`State`], built once at start (the restart-only part of
//! the configuration and the long-lived services), and [`Live`], the compiled rules a reload
//! swaps. Both are built by `crate::gateway`; handlers take one [`Live`] snapshot per request.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use modgate_core::base_url::{BaseUrl, UrlError};
use modgate_core::policy::Policy;
use modgate_core::policy::address::{AddressPolicy, Refusal};
use modgate_core::policy::egress::Decision;
use modgate_core::policy::goproxy::GoProxyList;
use modgate_core::policy::host::normalize_host;

use crate::config::Config;
use crate::egress::upstream::UpstreamClient;
use crate::serve::cached::FillOutcome;
use crate::serve::private::PrivateBackend;
use crate::serve::prove::{Heads, Verifier};
use crate::store::disk::DiskCache;
use crate::store::flight::Flights;
use crate::store::mirror::Mirrors;
use crate::store::pins::Pins;
use crate::store::shared::SharedStore;
use crate::store::sumlog::SumLog;
use crate::telemetry::metrics::Metrics;

/// The long-lived services a request may use, shared by all of them.
#[derive(Debug)]
pub struct State {
    /// The configuration the gateway started with. Only its restart-only keys are read through
    /// this field (cache TTLs, timeouts, storage); reloadable ones are read from [`Live`].
    pub config: Config,
    pub metrics: Arc<Metrics>,
    pub upstream: UpstreamClient,
    pub cache: Arc<DiskCache>,
    /// The bucket shared with other replicas, when `shared_cache.bucket` is set.
    pub shared: Option<Arc<SharedStore>>,
    pub flights: Arc<Flights<FillOutcome>>,
    pub mirrors: Mirrors,
    /// The newest checksum-database tree heads verified.
    pub heads: Heads,
    /// The pins of private versions.
    pub pins: Pins,
    /// modgate's own checksum database, when `sumdb.serve` names one.
    pub own_sumdb: Option<Arc<SumLog>>,
    /// Fetches a checksum-database answer through the cache, for the proofs of fills
    /// (`serve::sumdb_via_cache`; a function here so the proof code need not name the cache).
    pub sumdb_fetch: SumDbFetch,
    /// modgate's own listening addresses (unspecified ones expanded to this machine's
    /// addresses), set once the listeners are bound: agent-chosen traffic never goes there.
    pub own: std::sync::OnceLock<Vec<std::net::SocketAddr>>,
    /// Rules, routes and credentials; replaced as a whole on reload.
    live: ArcSwap<Live>,
}

impl State {
    /// Puts the services and the first compiled rules together.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: Config,
        metrics: Arc<Metrics>,
        upstream: UpstreamClient,
        cache: Arc<DiskCache>,
        shared: Option<Arc<SharedStore>>,
        mirrors: Mirrors,
        live: Live,
        sumdb_fetch: SumDbFetch,
        own_sumdb: Option<Arc<SumLog>>,
    ) -> State {
        let heads = Heads::new(&config.storage.data_dir);
        let pins = Pins::new(&config.storage.data_dir);
        State {
            config,
            metrics,
            upstream,
            cache,
            shared,
            flights: Arc::default(),
            heads,
            pins,
            own_sumdb,
            mirrors,
            sumdb_fetch,
            own: std::sync::OnceLock::new(),
            live: ArcSwap::from_pointee(live),
        }
    }

    /// Counts an egress decision (`modgate_egress_decisions_total`) and hands it back.
    pub fn counted(&self, decision: Decision) -> Decision {
        self.metrics
            .egress_decisions
            .with_label_values(&[decision.kind()])
            .inc();
        decision
    }

    /// Refuses agent-chosen traffic (tunnels, plain-HTTP forwards, gateway-mode splices) to
    /// `addr` by the address rules; refusals are counted.
    pub fn check_addr(&self, live: &Live, addr: std::net::SocketAddr) -> Result<(), Refusal> {
        let own = self.own.get().map(Vec::as_slice).unwrap_or_default();
        live.addresses.check_addr(addr, own).inspect_err(|r| {
            self.metrics
                .egress_refusals
                .with_label_values(&[r.rule()])
                .inc();
        })
    }

    /// Resolves `host:port` and keeps the addresses the address rules allow; `Err` when none is
    /// (the first refusal, or the resolver's error).
    pub async fn allowed_addrs(
        &self,
        live: &Live,
        host: &str,
        port: u16,
    ) -> Result<Vec<std::net::SocketAddr>, AddrRefused> {
        let resolved: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| AddrRefused::Resolve(format!("cannot resolve {host}: {e}")))?
            .collect();
        let mut first = None;
        let mut ok = vec![];
        for a in resolved {
            match self.check_addr(live, a) {
                Ok(()) => ok.push(a),
                Err(r) => {
                    first.get_or_insert(r);
                }
            }
        }
        match (ok.is_empty(), first) {
            (false, _) => Ok(ok),
            (true, Some(r)) => Err(AddrRefused::Refused(r)),
            (true, None) => Err(AddrRefused::Resolve(format!("{host} has no addresses"))),
        }
    }

    /// The current rules. Take one snapshot per request and use it throughout.
    pub fn live(&self) -> Arc<Live> {
        self.live.load_full()
    }

    /// Swaps in newly compiled rules; requests already running keep the snapshot they took.
    pub fn swap_live(&self, live: Live) {
        self.live.store(Arc::new(live));
    }
}

/// How a proof fetches a checksum-database answer (a lookup or a tile).
pub type SumDbFetch = for<'a> fn(
    &'a Arc<State>,
    &'a str,
    modgate_core::policy::classify::SumDbOp,
) -> std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<bytes::Bytes, String>> + Send + 'a>,
>;

/// Why no address of a host may be used.
#[derive(Debug, thiserror::Error)]
pub enum AddrRefused {
    #[error(transparent)]
    Refused(Refusal),
    #[error("{0}")]
    Resolve(String),
}

/// The reloadable part of the configuration, compiled: policy (intercept set, egress, private
/// patterns and routes), upstream overrides, the public GOPROXY list, checksum databases and
/// private-route credentials.
#[derive(Debug)]
pub struct Live {
    /// The configuration this snapshot was compiled from (its reloadable keys are read here).
    pub config: Config,
    pub policy: Policy,
    pub overrides: HashMap<String, BaseUrl>,
    /// The public GOPROXY list.
    pub public_upstreams: GoProxyList,
    /// Checksum-database name -> base URL.
    pub sumdbs: HashMap<String, BaseUrl>,
    /// One backend per `[[private.routes]]` entry, in order.
    pub private: Vec<PrivateBackend>,
    /// Access to public code hosts, when `modules.upstream` ends in `direct`.
    pub direct: Option<PrivateBackend>,
    /// How public modules are proven at fill; `None` when `sumdb.verify = "off"`.
    pub verifier: Option<Verifier>,
    /// Where agent-chosen traffic may go (`egress.allow_addresses`, `egress.connect_ports`).
    pub addresses: AddressPolicy,
    /// The Go vulnerability database mirrored (`vulndb.url`).
    pub vulndb: Option<BaseUrl>,
    /// Decisions remembered for module-proxy and checksum-database reads under these rules.
    pub memo: crate::serve::memo::Memo,
}

impl Live {
    /// Where requests for `host:port` go: its override, or `https://host:port`.
    pub fn upstream_base(&self, host: &str, port: u16) -> Result<BaseUrl, UrlError> {
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
