//! modgate: a forward HTTPS proxy for Go module traffic.
//!
//! Agents reach it with `HTTPS_PROXY`; it terminates TLS for module hosts with its own CA,
//! decides per request what to do, and forwards, tunnels or refuses everything else by policy.
//! The pure decisions and Go's formats live in the `modgate-core` crate (`crates/modgate-core`:
//! `gomod`, `policy`, `cache_key`, `base_url`); this crate does the I/O around them. Modules in the order a
//! request travels, each depending only on those after it:
//!
//! - [`gateway`]: the composition root: configuration -> compiled parts, once; start, reload,
//!   shutdown; the admin listener;
//! - [`ingress`]: the way in: listener, CONNECT, proxy auth, TLS interception, gateway mode,
//!   tunnels;
//! - [`serve`]: one dispatch over the route `policy::route` chose, one handler per route
//!   (`serve::cached` is the cache: lookup and single flight, `fetch` from the upstream list,
//!   `fill` with its checks, answers from `found` entries);
//! - [`egress`]: the way out: the pooled upstream client, TCP connects, redirects' transport;
//! - [`store`]: the checks every writer runs before commit (`content`), the disk cache
//!   (`disk`: index, opening and recovery, pending entries), single-flight fills, the shared
//!   S3 tier, git mirrors;
//! - leaves: [`tls`] (CA and leaf certificates), [`telemetry`] (request context, bounded label
//!   enums, metrics, access log, logging), [`config`] (the TOML schema, its defaults and the
//!   checks that need no compiling), [`body`] (the body type, and [`body::Answer`]: every answer
//!   modgate makes itself, through hyper or written raw).
//!
//! [`cli`] holds the commands beside `serve` (`explain`, cache operations, `warm`); `main.rs`
//! only parses arguments and calls into the library.

#![forbid(unsafe_code)]
#![deny(missing_debug_implementations)]

pub mod cli;
pub mod gateway;

pub mod ingress;
pub mod serve;

pub mod egress;
pub mod store;

pub mod body;
pub mod config;
pub mod telemetry;
pub mod tls;

pub use gateway::{Gateway, agent_env_lines, shutdown_signal};
