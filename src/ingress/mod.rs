//! The way in: the proxy listener and CONNECT handling, proxy authentication, TLS interception,
//! gateway mode (redirected connections) and blind tunnels. Each intercepted request goes on to
//! [`crate::serve::dispatch`]; ingress itself decides only about connections.

pub mod auth;
pub mod conn;
pub mod io;
pub mod listener;
pub mod mitm;
pub mod transparent;
pub mod tunnel;

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::ingress::auth::ProxyAuth;
use crate::tls::ca::LeafCache;

/// What the listeners share: the request handlers' state below them, plus what only connections
/// need (proxy users, leaf certificates, the connection limit, shutdown).
#[derive(Debug)]
pub struct Ingress {
    pub serve: Arc<crate::serve::State>,
    /// Proxy users (`auth.users`); `None` when authentication is off. Swapped on reload.
    pub auth: ArcSwapOption<ProxyAuth>,
    pub leaves: LeafCache,
    /// Cancelled when the gateway starts shutting down.
    pub shutdown: CancellationToken,
    /// Every connection task, so shutdown can wait for them.
    pub tasks: TaskTracker,
    /// Permits for `proxy.max_connections`.
    pub conn_limit: Arc<tokio::sync::Semaphore>,
}
