//! The way out: the pooled upstream client (HTTP/1.1 and h2 over rustls), plain TCP connects
//! for tunnels, and credentials for private git hosts. It knows nothing of routes or caching.

pub mod lane;
pub mod upstream;
