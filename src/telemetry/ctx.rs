//! Per-connection and per-request context.
//!
//! [`ConnCtx`] is made once per accepted client connection (or established tunnel);
//! [`ReqCtx`] once per request handled by modgate, and never shared across connections. Each
//! carries a `tracing` span (the request's is a child of its connection's), so every log line
//! written inside names the client, CONNECT host, mode, route, kind and module.
//!
//! A `ReqCtx` records its request exactly once: through [`ReqCtx::finish`] when its response
//! body ends, or, when it is dropped before that (the client closed the connection before the
//! response head), as outcome `client_closed` with status 499.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::Method;
use tracing::field::Empty;

use crate::telemetry::labels::{CacheOutcome, Mode, Outcome};
use crate::telemetry::metrics::{Metrics, status_class};

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// One client connection.
#[derive(Debug)]
pub struct ConnCtx {
    pub id: u64,
    pub client: SocketAddr,
    /// How the client reached modgate.
    pub mode: Mode,
    /// The CONNECT target host (empty on the plain proxy listener).
    pub host: String,
    pub port: u16,
    /// The proxy user who authenticated the connection (its CONNECT), if any.
    pub user: Option<Arc<str>>,
    /// `conn{id, client, mode, host}`: every log line of this connection carries it.
    pub span: tracing::Span,
}

impl ConnCtx {
    pub fn new(client: SocketAddr, mode: Mode, host: String, port: u16) -> Arc<ConnCtx> {
        ConnCtx::with_user(client, mode, host, port, None)
    }

    /// A connection authenticated as `user`.
    pub fn with_user(
        client: SocketAddr,
        mode: Mode,
        host: String,
        port: u16,
        user: Option<Arc<str>>,
    ) -> Arc<ConnCtx> {
        let id = next_id();
        let span = tracing::info_span!("conn", id, %client, mode = mode.as_str(), host = %host);
        Arc::new(ConnCtx {
            id,
            client,
            mode,
            host,
            port,
            user,
            span,
        })
    }
}

/// `CCCCCCCC-RRRRRR`: the connection id (at least 8 hex digits) and the request's (6), as
/// `format!("{:08x}-{:06x}")` writes them, without the formatting machinery (once per request).
fn request_id(conn: u64, req: u64) -> String {
    if conn > u32::MAX as u64 {
        return format!("{conn:08x}-{req:06x}");
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 15];
    for i in 0..8 {
        out[7 - i] = HEX[((conn >> (4 * i)) & 0xf) as usize];
    }
    out[8] = b'-';
    for i in 0..6 {
        out[14 - i] = HEX[((req >> (4 * i)) & 0xf) as usize];
    }
    String::from_utf8(out.to_vec()).expect("hex digits and '-' are ASCII")
}

/// The requests of one connection: how many are in flight (head received, body not yet all
/// sent), how many have finished, and when the last one started or finished. The connection's
/// idle decisions read it.
#[derive(Debug)]
pub struct ConnActivity {
    started: Instant,
    inflight: AtomicU32,
    done: AtomicU64,
    /// Milliseconds after `started`.
    last: AtomicU64,
}

impl ConnActivity {
    pub fn new() -> Arc<ConnActivity> {
        Arc::new(ConnActivity {
            started: Instant::now(),
            inflight: AtomicU32::new(0),
            done: AtomicU64::new(0),
            last: AtomicU64::new(0),
        })
    }

    fn touch(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.last.store(ms, Ordering::Relaxed);
    }

    /// Counts a request in; it counts until the guard is dropped. Returns the number now in
    /// flight, this one included.
    pub fn begin(self: &Arc<Self>) -> (u32, ActivityGuard) {
        self.touch();
        let n = self.inflight.fetch_add(1, Ordering::Relaxed) + 1;
        (n, ActivityGuard(self.clone()))
    }

    pub fn inflight(&self) -> u32 {
        self.inflight.load(Ordering::Relaxed)
    }

    /// Requests finished so far.
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// Time since a request last started or finished (or since the connection began).
    pub fn quiet(&self) -> Duration {
        let now = self.started.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last.load(Ordering::Relaxed)))
    }
}

/// One request counted in a [`ConnActivity`]; dropping it counts the request out.
#[derive(Debug)]
pub struct ActivityGuard(Arc<ConnActivity>);

impl Drop for ActivityGuard {
    fn drop(&mut self) {
        self.0.touch();
        self.0.done.fetch_add(1, Ordering::Relaxed);
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One request, from head received to body sent.
#[derive(Debug)]
pub struct ReqCtx {
    pub conn: Arc<ConnCtx>,
    pub request_id: String,
    pub method: Method,
    pub host: String,
    /// Path and query as received.
    pub path: String,
    /// Bounded labels: route taken, request kind, cache outcome.
    pub route: &'static str,
    pub kind: &'static str,
    pub cache: CacheOutcome,
    pub start: Instant,
    /// Time spent waiting for the upstream's response head, if one was asked.
    pub upstream_time: Option<Duration>,
    /// Module path, version or query, and operation, once classified.
    pub module: Option<String>,
    pub version: Option<String>,
    pub op: &'static str,
    /// Why the request failed, when modgate answered it with an error (its own refusal or an
    /// upstream's failure): the text the client got.
    pub reason: Option<String>,
    /// The proxy or endpoint user the request is authenticated as, if any.
    pub user: Option<Arc<str>>,
    /// `request{request_id, route, kind, module}`, a child of the connection's span.
    pub span: tracing::Span,
    /// Counts the request in its connection's [`ConnActivity`] until the context is dropped,
    /// which is when the response body has been sent (or abandoned).
    pub activity: Option<ActivityGuard>,
    metrics: Arc<Metrics>,
    recorded: bool,
}

impl ReqCtx {
    /// The context of `req`, received on `conn`: the one place a request context is made.
    pub fn for_request<B>(
        conn: Arc<ConnCtx>,
        req: &http::Request<B>,
        metrics: Arc<Metrics>,
    ) -> ReqCtx {
        let host = conn.host.clone();
        let path = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        let method = req.method().clone();
        let request_id = request_id(conn.id, next_id() & 0xff_ffff);
        let span = tracing::info_span!(
            parent: &conn.span,
            "request",
            %request_id,
            route = Empty,
            kind = Empty,
            module = Empty
        );
        ReqCtx {
            request_id,
            user: conn.user.clone(),
            conn,
            method,
            host,
            path,
            route: "forward",
            kind: "other",
            cache: CacheOutcome::Bypass,
            start: Instant::now(),
            upstream_time: None,
            module: None,
            version: None,
            op: "",
            reason: None,
            span,
            activity: None,
            metrics,
            recorded: false,
        }
    }

    /// Sets the route and request kind (bounded labels), in the context and its span.
    pub fn set_route(&mut self, route: &'static str, kind: &'static str) {
        self.route = route;
        self.kind = kind;
        self.span.record("route", route);
        self.span.record("kind", kind);
    }

    /// Sets the module path (when the request named a valid one), in the context and its span.
    pub fn set_module(&mut self, module: String) {
        self.span.record("module", module.as_str());
        self.module = Some(module);
    }

    /// The response head is ready: how long it took (`modgate_response_start_seconds`).
    pub fn response_started(&self) {
        self.metrics
            .response_start
            .with_label_values(&[self.route])
            .observe(self.start.elapsed().as_secs_f64());
    }

    /// Writes the access-log line and the request metrics, once: later calls do nothing.
    pub fn finish(&mut self, status: u16, bytes: u64, outcome: Outcome) {
        if std::mem::replace(&mut self.recorded, true) {
            return;
        }
        let _entered = self.span.enter();
        record(self, status, bytes, outcome);
    }
}

impl Drop for ReqCtx {
    fn drop(&mut self) {
        // Dropped unrecorded: the handler was cancelled before a response head existed.
        self.finish(499, 0, Outcome::ClientClosed);
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// Writes the access-log line and request metrics for one finished request.
fn record(ctx: &ReqCtx, status: u16, bytes: u64, outcome: Outcome) {
    let metrics: &Metrics = &ctx.metrics;
    let elapsed = ctx.start.elapsed();
    metrics
        .request_duration
        .with_label_values(&[
            ctx.route,
            ctx.kind,
            ctx.cache.as_str(),
            status_class(status),
            ctx.conn.mode.as_str(),
        ])
        .observe(elapsed.as_secs_f64());
    metrics
        .response_bytes
        .with_label_values(&[ctx.route])
        .inc_by(bytes);
    tracing::info!(
        target: "modgate::access",
        request_id = %ctx.request_id,
        mode = ctx.conn.mode.as_str(),
        client = %ctx.conn.client,
        host = %ctx.host,
        method = %ctx.method,
        path = %ctx.path,
        status,
        bytes,
        total_ms = ms(elapsed),
        upstream_ms = ctx.upstream_time.map(ms),
        module = ctx.module.as_deref(),
        version = ctx.version.as_deref(),
        op = ctx.op,
        reason = ctx.reason.as_deref(),
        route = ctx.route,
        kind = ctx.kind,
        cache = ctx.cache.as_str(),
        outcome = outcome.as_str(),
        "request"
    );
}

#[cfg(test)]
mod tests {
    #[test]
    fn request_ids_are_written_as_format_writes_them() {
        for (c, r) in [
            (0u64, 0u64),
            (1, 0xff_ffff),
            (0xdead_beef, 0x12_3456),
            (u32::MAX as u64, 7),
            (u32::MAX as u64 + 1, 7),
            (u64::MAX, 0xab),
        ] {
            assert_eq!(super::request_id(c, r), format!("{c:08x}-{r:06x}"));
        }
    }
}
