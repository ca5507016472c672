//! TLS: modgate's certificate authority, the leaf certificates it issues for intercepted hosts
//! (and their cache), and the one crypto provider every TLS config uses.

pub mod ca;
pub mod sumdb_key;

use std::sync::Arc;

/// The rustls crypto provider modgate uses everywhere (ring: builds without cmake).
pub fn tls_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
