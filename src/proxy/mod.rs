//! The wire: the proxy listener and CONNECT handling, blind tunnels, TLS interception, the CA,
//! proxy authentication and the upstream client.

pub mod auth;
pub mod ca;
pub mod ctx;
pub mod io;
pub mod listener;
pub mod mitm;
pub mod transparent;
pub mod tunnel;
pub mod upstream;

use std::sync::Arc;

/// The rustls crypto provider modgate uses everywhere (ring: builds without cmake).
pub fn tls_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
