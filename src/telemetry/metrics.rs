//! Every metric modgate exports, registered once on one [`prometheus::Registry`].
//!
//! Label values come only from `&'static str` sources (route, kind, cache outcome, status class,
//! configured upstream names), so cardinality is bounded. Handlers do not touch metrics: the
//! request observation point (`access_log`) and the connection layers do.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0,
];

/// Events of `modgate_shared_cache_total`.
pub const SHARED_CACHE_EVENTS: [&str; 8] = [
    "hit",
    "miss",
    "lock_won",
    "lock_waited",
    "published",
    "rejected",
    "error",
    "lock_expired",
];

/// Every outcome of `modgate_sumdb_verifications_total`.
pub const SUMDB_OUTCOMES: [&str; 5] = [
    "verified",
    "mismatch",
    "unavailable",
    "forked",
    "unverified",
];

/// Every `route` label value.
pub const ROUTES: [&str; 11] = [
    "public",
    "sumdb",
    "own_sumdb",
    "private",
    "git_forward",
    "goget_answer",
    "private_refused",
    "vulndb",
    "forward",
    "http_forward",
    "invalid",
];

/// Every `reason` of `modgate_tls_failures_total`.
pub const TLS_FAILURES: [&str; 9] = [
    "not_tls",
    "bad_client_hello",
    "sni_mismatch",
    "no_sni",
    "cert_error",
    "handshake",
    "timeout",
    "client_hello_too_large",
    "closed_before_hello",
];

/// Every outcome of `modgate_own_sumdb_lookups_total`.
pub const OWN_SUMDB_OUTCOMES: [&str; 5] = ["found", "added", "not_found", "refused", "error"];

/// Every outcome label of `modgate_transparent_connections_total`.
pub const TRANSPARENT_OUTCOMES: [&str; 8] = [
    "intercept",
    "splice",
    "http",
    "deny",
    "loop",
    "bad_client_hello",
    "timeout",
    "connect_failed",
];

/// Gauges and counters the cache keeps current.
#[derive(Debug, Clone)]
pub struct StoreMetrics {
    pub bytes: IntGauge,
    pub entries: IntGauge,
    pub evictions: IntCounter,
    pub errors: IntCounter,
    /// Entries in place whose background fsync has not completed.
    pub unsynced: IntGauge,
    /// 1 once the index holds every entry found on disk at start.
    pub index_complete: IntGauge,
    /// Memory the index holds.
    pub index_bytes: IntGauge,
}

/// Handles to all metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    names: Vec<String>,
    /// Intercepted and forwarded requests, from head received to body fully sent.
    pub request_duration: HistogramVec,
    /// Intercepted and forwarded requests, from head received to response head ready.
    pub response_start: HistogramVec,
    /// The CA certificate's expiry (Unix seconds).
    pub ca_expiry: IntGauge,
    /// Upstream exchanges, from request sent to response head received.
    pub upstream_duration: HistogramVec,
    /// TLS handshakes (side = client for intercepted tunnels, upstream for modgate's own).
    pub tls_handshake_duration: HistogramVec,
    /// Leaf certificates signed by the CA.
    pub certs_issued: IntCounter,
    /// Leaf certificate issuance failures.
    pub cert_errors: IntCounter,
    /// Open connections by kind (client, tunnel, intercept).
    pub connections_active: IntGaugeVec,
    /// Accepted connections by kind.
    pub connections_total: IntCounterVec,
    /// CONNECT and forward decisions.
    pub egress_decisions: IntCounterVec,
    /// Bytes copied through blind tunnels (direction = upstream or client).
    pub tunnel_bytes: IntCounterVec,
    /// Body bytes sent to clients for intercepted or forwarded requests.
    pub response_bytes: IntCounterVec,
    /// Client TLS handshakes refused or failed on intercepted tunnels, by reason.
    pub tls_failures: IntCounterVec,
    /// Failed proxy authentications.
    pub auth_failures: IntCounter,
    /// Constant 1, labelled with the version.
    pub build_info: IntGaugeVec,
    /// Bytes held by the module cache.
    pub cache_bytes: IntGauge,
    /// Entries held by the module cache.
    pub cache_entries: IntGauge,
    /// Entries evicted to keep the cache within its bound.
    pub cache_evictions: IntCounter,
    /// Cache writes that failed (disk full, read-only directory ...).
    pub cache_store_errors: IntCounter,
    /// Cache entries in place whose background fsync has not completed.
    pub cache_unsynced: IntGauge,
    /// 1 once the cache index holds every entry found on disk at start.
    pub cache_index_complete: IntGauge,
    /// Memory held by the cache index.
    pub cache_index_bytes: IntGauge,
    /// Cache fills from upstream, by outcome.
    pub cache_fills: IntCounterVec,
    /// Checksum-database verifications of public fills, by outcome.
    pub sumdb_verifications: IntCounterVec,
    /// Private versions pinned, matched against their pin, or refused as changed.
    pub integrity_pins: IntCounterVec,
    /// Records in modgate's own checksum database (its tree size).
    pub own_sumdb_records: IntGauge,
    /// Lookups in modgate's own checksum database, by outcome.
    pub own_sumdb_lookups: IntCounterVec,
    /// Agent-chosen traffic refused by the address rules, by rule.
    pub egress_refusals: IntCounterVec,
    /// Requests for private module paths answered locally, by kind.
    pub private_refused: IntCounterVec,
    /// Module-firewall decisions, by rule id and verdict.
    pub firewall_decisions: IntCounterVec,
    /// Direct VCS requests (go-get, git) for public modules refused by the firewall.
    pub firewall_direct_refused: IntCounter,
    /// Configuration reloads, by outcome.
    pub config_reloads: IntCounterVec,
    /// Connections on the transparent (gateway-mode) listener, by outcome.
    pub transparent_connections: IntCounterVec,
    /// Shared (S3) cache tier events.
    pub shared_cache: IntCounterVec,
    /// Limits and timeouts that were hit, by limit.
    pub limit_hits: IntCounterVec,
    /// Git fetches into repository mirrors, by outcome.
    pub mirror_fetch_duration: HistogramVec,
    /// Module zips built from git.
    pub zip_build_duration: HistogramVec,
}

impl Metrics {
    /// Creates and registers every metric on a fresh registry.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let mut m = Metrics {
            request_duration: HistogramVec::new(
                HistogramOpts::new(
                    "modgate_request_duration_seconds",
                    "Time from request head to last body byte sent, per intercepted or forwarded request.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["route", "kind", "cache", "status", "entry"],
            )
            .expect("metric"),
            response_start: HistogramVec::new(
                HistogramOpts::new(
                    "modgate_response_start_seconds",
                    "Time from request head to response head (the wait before the first body byte, whatever the body's size), per intercepted or forwarded request.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["route"],
            )
            .expect("metric"),
            ca_expiry: IntGauge::new(
                "modgate_ca_expiry_timestamp_seconds",
                "When the interception CA's certificate expires (Unix time).",
            )
            .expect("metric"),
            upstream_duration: HistogramVec::new(
                HistogramOpts::new(
                    "modgate_upstream_duration_seconds",
                    "Time from upstream request sent to response head received.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["upstream", "outcome"],
            )
            .expect("metric"),
            tls_handshake_duration: HistogramVec::new(
                HistogramOpts::new(
                    "modgate_tls_handshake_duration_seconds",
                    "TLS handshake time (side=client: agent to modgate; side=upstream: modgate to upstream).",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["side"],
            )
            .expect("metric"),
            certs_issued: IntCounter::new(
                "modgate_certs_issued_total",
                "Leaf certificates signed by the interception CA.",
            )
            .expect("metric"),
            cert_errors: IntCounter::new(
                "modgate_cert_errors_total",
                "Leaf certificate issuance failures.",
            )
            .expect("metric"),
            connections_active: IntGaugeVec::new(
                Opts::new("modgate_connections_active", "Open connections by kind."),
                &["kind"],
            )
            .expect("metric"),
            connections_total: IntCounterVec::new(
                Opts::new("modgate_connections_total", "Connections accepted or established, by kind."),
                &["kind"],
            )
            .expect("metric"),
            egress_decisions: IntCounterVec::new(
                Opts::new(
                    "modgate_egress_decisions_total",
                    "Policy decisions for CONNECT and plain-HTTP targets.",
                ),
                &["decision"],
            )
            .expect("metric"),
            tunnel_bytes: IntCounterVec::new(
                Opts::new("modgate_tunnel_bytes_total", "Bytes copied through blind tunnels."),
                &["direction"],
            )
            .expect("metric"),
            response_bytes: IntCounterVec::new(
                Opts::new(
                    "modgate_response_bytes_total",
                    "Response body bytes sent to clients for intercepted or forwarded requests.",
                ),
                &["route"],
            )
            .expect("metric"),
            tls_failures: IntCounterVec::new(
                Opts::new(
                    "modgate_tls_failures_total",
                    "Client TLS handshakes on intercepted tunnels that were refused or failed.",
                ),
                &["reason"],
            )
            .expect("metric"),
            auth_failures: IntCounter::new(
                "modgate_proxy_auth_failures_total",
                "Requests refused for missing or wrong proxy credentials.",
            )
            .expect("metric"),
            build_info: IntGaugeVec::new(
                Opts::new("modgate_build_info", "Build information; the value is always 1."),
                &["version"],
            )
            .expect("metric"),
            cache_bytes: IntGauge::new("modgate_cache_bytes", "Bytes held by the module cache.")
                .expect("metric"),
            cache_entries: IntGauge::new("modgate_cache_entries", "Entries held by the module cache.")
                .expect("metric"),
            cache_evictions: IntCounter::new(
                "modgate_cache_evictions_total",
                "Cache entries evicted to respect cache.max_size.",
            )
            .expect("metric"),
            cache_store_errors: IntCounter::new(
                "modgate_cache_store_errors_total",
                "Cache writes that failed; the request was still answered from upstream.",
            )
            .expect("metric"),
            cache_unsynced: IntGauge::new(
                "modgate_cache_unsynced_entries",
                "Cache entries in place whose background fsync has not completed.",
            )
            .expect("metric"),
            cache_index_complete: IntGauge::new(
                "modgate_cache_index_complete",
                "1 once the cache index holds every entry found on disk at start (hits are served while it is built; eviction waits for it).",
            )
            .expect("metric"),
            cache_index_bytes: IntGauge::new(
                "modgate_cache_index_bytes",
                "Memory held by the cache index.",
            )
            .expect("metric"),
            cache_fills: IntCounterVec::new(
                Opts::new("modgate_cache_fills_total", "Upstream fetches made to fill the cache, by outcome."),
                &["outcome"],
            )
            .expect("metric"),
            egress_refusals: IntCounterVec::new(
                Opts::new(
                    "modgate_egress_refusals_total",
                    "Tunnels, forwards and splices refused by address: loopback, link-local, unspecified, own listener, or a CONNECT port not allowed.",
                ),
                &["rule"],
            )
            .expect("metric"),
            integrity_pins: IntCounterVec::new(
                Opts::new(
                    "modgate_integrity_pins_total",
                    "Private versions built from git: pinned the first time, matched against the pin, or changed (refused).",
                ),
                &["event"],
            )
            .expect("metric"),
            own_sumdb_records: IntGauge::new(
                "modgate_own_sumdb_records",
                "Records in modgate's own checksum database (sumdb.serve): the size of its signed tree.",
            )
            .expect("metric"),
            own_sumdb_lookups: IntCounterVec::new(
                Opts::new(
                    "modgate_own_sumdb_lookups_total",
                    "Lookups in modgate's own checksum database: found (already recorded), added (recorded now), not_found, refused (changed private content or a failed proof), error.",
                ),
                &["outcome"],
            )
            .expect("metric"),
            sumdb_verifications: IntCounterVec::new(
                Opts::new(
                    "modgate_sumdb_verifications_total",
                    "Public .mod and .zip fills checked against the checksum database, by outcome.",
                ),
                &["outcome"],
            )
            .expect("metric"),
            private_refused: IntCounterVec::new(
                Opts::new(
                    "modgate_private_refused_total",
                    "Requests naming a private module path that were answered locally instead of reaching a public upstream.",
                ),
                &["kind"],
            )
            .expect("metric"),
            firewall_decisions: IntCounterVec::new(
                Opts::new(
                    "modgate_firewall_decisions_total",
                    "Module-firewall decisions on public module versions, by rule id (or default) and verdict (allowed, refused, reported).",
                ),
                &["rule", "verdict"],
            )
            .expect("metric"),
            firewall_direct_refused: IntCounter::new(
                "modgate_firewall_direct_refused_total",
                "go-get discovery and git requests for public modules refused while the module firewall is active (firewall.direct = \"refuse\").",
            )
            .expect("metric"),
            config_reloads: IntCounterVec::new(
                Opts::new("modgate_config_reloads_total", "Configuration reloads (SIGHUP or POST /-/reload), by outcome."),
                &["outcome"],
            )
            .expect("metric"),
            limit_hits: IntCounterVec::new(
                Opts::new("modgate_limit_hits_total", "Requests or connections stopped by a limit or timeout."),
                &["limit"],
            )
            .expect("metric"),
            shared_cache: IntCounterVec::new(
                Opts::new(
                    "modgate_shared_cache_total",
                    "Shared (S3-compatible) cache tier events.",
                ),
                &["event"],
            )
            .expect("metric"),
            transparent_connections: IntCounterVec::new(
                Opts::new(
                    "modgate_transparent_connections_total",
                    "Connections on the transparent (gateway-mode) listener, by outcome.",
                ),
                &["outcome"],
            )
            .expect("metric"),
            mirror_fetch_duration: HistogramVec::new(
                HistogramOpts::new(
                    "modgate_mirror_fetch_duration_seconds",
                    "Git fetches that refresh a private repository mirror.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["outcome"],
            )
            .expect("metric"),
            zip_build_duration: HistogramVec::new(
                HistogramOpts::new(
                    "modgate_zip_build_duration_seconds",
                    "Module zips built from a private git repository.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["outcome"],
            )
            .expect("metric"),
            registry,
            names: vec![],
        };
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(m.request_duration.clone()),
            Box::new(m.upstream_duration.clone()),
            Box::new(m.tls_handshake_duration.clone()),
            Box::new(m.certs_issued.clone()),
            Box::new(m.cert_errors.clone()),
            Box::new(m.connections_active.clone()),
            Box::new(m.connections_total.clone()),
            Box::new(m.egress_decisions.clone()),
            Box::new(m.tunnel_bytes.clone()),
            Box::new(m.response_bytes.clone()),
            Box::new(m.tls_failures.clone()),
            Box::new(m.auth_failures.clone()),
            Box::new(m.build_info.clone()),
            Box::new(m.cache_bytes.clone()),
            Box::new(m.cache_entries.clone()),
            Box::new(m.cache_evictions.clone()),
            Box::new(m.cache_unsynced.clone()),
            Box::new(m.cache_store_errors.clone()),
            Box::new(m.cache_index_complete.clone()),
            Box::new(m.cache_index_bytes.clone()),
            Box::new(m.cache_fills.clone()),
            Box::new(m.sumdb_verifications.clone()),
            Box::new(m.integrity_pins.clone()),
            Box::new(m.own_sumdb_records.clone()),
            Box::new(m.response_start.clone()),
            Box::new(m.ca_expiry.clone()),
            Box::new(m.own_sumdb_lookups.clone()),
            Box::new(m.egress_refusals.clone()),
            Box::new(m.private_refused.clone()),
            Box::new(m.firewall_decisions.clone()),
            Box::new(m.firewall_direct_refused.clone()),
            Box::new(m.config_reloads.clone()),
            Box::new(m.limit_hits.clone()),
            Box::new(m.transparent_connections.clone()),
            Box::new(m.shared_cache.clone()),
            Box::new(m.mirror_fetch_duration.clone()),
            Box::new(m.zip_build_duration.clone()),
        ];
        let mut names = vec![];
        for c in collectors {
            names.extend(c.desc().iter().map(|d| d.fq_name.clone()));
            m.registry.register(c).expect("unique metric names");
        }
        // process_cpu_seconds_total, process_resident_memory_bytes, open fds, start time ...
        let process = prometheus::process_collector::ProcessCollector::for_self();
        names.extend(
            prometheus::core::Collector::desc(&process)
                .iter()
                .map(|d| d.fq_name.clone()),
        );
        m.registry
            .register(Box::new(process))
            .expect("unique metric names");
        m.names = names;
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        // Series that exist from the start read as 0 instead of absent.
        for event in SHARED_CACHE_EVENTS {
            m.shared_cache.with_label_values(&[event]);
        }
        for outcome in TRANSPARENT_OUTCOMES {
            m.transparent_connections.with_label_values(&[outcome]);
        }
        for kind in ["client", "tunnel", "intercept", "transparent"] {
            m.connections_active.with_label_values(&[kind]);
            m.connections_total.with_label_values(&[kind]);
        }
        for decision in ["intercept", "tunnel", "deny"] {
            m.egress_decisions.with_label_values(&[decision]);
        }
        for direction in ["upstream", "client"] {
            m.tunnel_bytes.with_label_values(&[direction]);
        }
        for rule in [
            "loopback",
            "link_local",
            "unspecified",
            "own_listener",
            "port",
        ] {
            m.egress_refusals.with_label_values(&[rule]);
        }
        for event in ["pinned", "matched", "changed"] {
            m.integrity_pins.with_label_values(&[event]);
        }
        for route in ROUTES {
            m.response_bytes.with_label_values(&[route]);
            m.response_start.with_label_values(&[route]);
        }
        for reason in TLS_FAILURES {
            m.tls_failures.with_label_values(&[reason]);
        }
        for side in ["client", "upstream"] {
            m.tls_handshake_duration.with_label_values(&[side]);
        }
        for outcome in ["ok", "not_found", "auth", "unreachable", "error"] {
            m.mirror_fetch_duration.with_label_values(&[outcome]);
        }
        for outcome in ["ok", "error"] {
            m.zip_build_duration.with_label_values(&[outcome]);
        }
        for outcome in OWN_SUMDB_OUTCOMES {
            m.own_sumdb_lookups.with_label_values(&[outcome]);
        }
        for outcome in SUMDB_OUTCOMES {
            m.sumdb_verifications.with_label_values(&[outcome]);
        }
        for outcome in ["committed", "not_found", "failed", "rejected", "uncached"] {
            m.cache_fills.with_label_values(&[outcome]);
        }
        for kind in ["goproxy", "sumdb", "goget", "git", "vulndb", "other"] {
            m.private_refused.with_label_values(&[kind]);
        }
        for outcome in ["ok", "error"] {
            m.config_reloads.with_label_values(&[outcome]);
        }
        for limit in LIMITS {
            m.limit_hits.with_label_values(&[limit]);
        }
        m
    }

    /// Names of every metric family, whether or not it has samples yet.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = vec![];
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding cannot fail");
        String::from_utf8(buf).expect("text encoder writes UTF-8")
    }

    /// The handles the disk cache keeps current.
    pub fn store(&self) -> StoreMetrics {
        StoreMetrics {
            bytes: self.cache_bytes.clone(),
            entries: self.cache_entries.clone(),
            evictions: self.cache_evictions.clone(),
            errors: self.cache_store_errors.clone(),
            unsynced: self.cache_unsynced.clone(),
            index_complete: self.cache_index_complete.clone(),
            index_bytes: self.cache_index_bytes.clone(),
        }
    }

    /// Marks a connection of `kind` open until the guard drops.
    /// Connections open now, of every kind.
    pub fn open_connections(&self) -> i64 {
        ["client", "tunnel", "intercept", "transparent"]
            .iter()
            .map(|k| self.connections_active.with_label_values(&[k]).get())
            .sum()
    }

    pub fn connection(&self, kind: &'static str) -> ConnGuard {
        self.connections_total.with_label_values(&[kind]).inc();
        let gauge = self.connections_active.with_label_values(&[kind]);
        gauge.inc();
        ConnGuard { gauge }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Decrements an active-connections gauge on drop.
#[derive(Debug)]
pub struct ConnGuard {
    gauge: prometheus::IntGauge,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// Every `limit` label value of `modgate_limit_hits_total`.
pub const LIMITS: [&str; 10] = [
    "connections",
    "head_size",
    "header_timeout",
    "tls_handshake_timeout",
    "upstream_timeout",
    "body_size",
    "auth_rate",
    "h2_streams",
    "h2_reset_flood",
    "idle_timeout",
];

/// "2xx" .. "5xx" for a status code.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}
