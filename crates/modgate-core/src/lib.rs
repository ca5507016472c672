//! modgate's pure core: Go's module formats and the gateway's decisions, with no I/O.
//!
//! - [`gomod`]: Go formats ported from golang.org/x/mod: module paths and escaping, versions,
//!   go.mod, zip rules, dirhash, versions from git refs (`coderepo`), checksum-database tiles;
//! - [`policy`]: decisions: hosts, egress, GOPRIVATE patterns, classify, route (the one
//!   never-leak point), the GOPROXY list;
//! - [`cache_key`]: the typed cache key and its on-disk encoding;
//! - [`base_url`]: an upstream's base URL.
//!
//! This crate's manifest has no tokio, hyper, rustls or filesystem crate: the compiler keeps it
//! pure. Everything here takes borrowed data and returns values, so `modgate explain` runs the
//! same code as the gateway.

#![forbid(unsafe_code)]
#![deny(missing_debug_implementations)]

pub mod base_url;
pub mod cache_key;
pub mod gomod;
pub mod policy;
