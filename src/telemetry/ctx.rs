//! Per-connection and per-request context.
//!
//! [`ConnCtx`] is made once per accepted client connection (or established tunnel);
//! [`ReqCtx`] once per request handled by modgate, and never shared across connections.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::Method;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// One client connection.
#[derive(Debug)]
pub struct ConnCtx {
    pub id: u64,
    pub client: SocketAddr,
    /// How the client reached modgate ("connect" for HTTPS_PROXY clients).
    pub mode: &'static str,
    /// The CONNECT target host (empty on the plain proxy listener).
    pub host: String,
    pub port: u16,
}

impl ConnCtx {
    pub fn new(client: SocketAddr, mode: &'static str, host: String, port: u16) -> Arc<ConnCtx> {
        Arc::new(ConnCtx {
            id: next_id(),
            client,
            mode,
            host,
            port,
        })
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
    pub cache: &'static str,
    pub start: Instant,
    /// Time spent waiting for the upstream's response head, if one was asked.
    pub upstream_time: Option<Duration>,
    /// Module path, version or query, and operation, once classified.
    pub module: Option<String>,
    pub version: Option<String>,
    pub op: &'static str,
}

impl ReqCtx {
    pub fn new(conn: Arc<ConnCtx>, method: Method, host: String, path: String) -> ReqCtx {
        ReqCtx {
            request_id: format!("{:08x}-{:06x}", conn.id, next_id() & 0xff_ffff),
            conn,
            method,
            host,
            path,
            route: "forward",
            kind: "other",
            cache: "bypass",
            start: Instant::now(),
            upstream_time: None,
            module: None,
            version: None,
            op: "",
        }
    }
}
