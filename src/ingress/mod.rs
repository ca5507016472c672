//! The way in: the proxy listener and CONNECT handling, proxy authentication, TLS interception,
//! gateway mode (redirected connections), blind tunnels and the GOPROXY endpoint. Each intercepted request goes on to
//! [`crate::serve::dispatch`]; ingress itself decides only about connections.

pub mod auth;
pub mod conn;
pub mod endpoint;
pub mod io;
pub mod listener;
pub mod mitm;
pub mod transparent;
pub mod tunnel;

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use hyper_util::server::graceful::{GracefulConnection, GracefulShutdown};
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
    /// hyper-util's graceful shutdown for every HTTP connection; taken when the drain begins.
    graceful: std::sync::Mutex<Option<GracefulShutdown>>,
    /// Permits for `proxy.max_connections`.
    pub conn_limit: Arc<tokio::sync::Semaphore>,
}

impl Ingress {
    pub fn new(
        serve: Arc<crate::serve::State>,
        auth: Option<Arc<ProxyAuth>>,
        leaves: LeafCache,
        conn_limit: Arc<tokio::sync::Semaphore>,
    ) -> Ingress {
        Ingress {
            serve,
            auth: ArcSwapOption::new(auth),
            leaves,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            graceful: std::sync::Mutex::new(Some(GracefulShutdown::new())),
            conn_limit,
        }
    }

    /// Serves an HTTP connection until it ends; when the gateway drains, it finishes the
    /// requests in flight and closes (a connection accepted during the drain closes at once).
    pub fn watch<C: GracefulConnection>(
        &self,
        conn: C,
    ) -> impl std::future::Future<Output = C::Output> + use<C> {
        let watcher = match &*self.graceful.lock().expect("not poisoned") {
            Some(g) => g.watcher(),
            // Its sender is dropped at once, so the connection is told to close at once.
            None => GracefulShutdown::new().watcher(),
        };
        watcher.watch(conn)
    }

    /// Begins the drain: the accept loops stop, tunnels end, and every watched HTTP connection
    /// closes gracefully. Waiting for them is [`Ingress::tasks`]'.
    pub fn begin_drain(&self) {
        self.shutdown.cancel();
        // Dropping the sender is hyper-util's shutdown signal to every watcher.
        drop(self.graceful.lock().expect("not poisoned").take());
    }
}
