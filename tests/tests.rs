//! Integration tests: real gateways on loopback, real TLS, real clients. One binary, one module
//! per area along the request path.

mod util;

#[global_allocator]
static ALLOC: util::CountingAlloc = util::CountingAlloc;

/// Admin endpoints, metrics and lifecycle.
mod admin;
/// The modgate binary's commands.
mod cli;
/// CONNECT handling: tunnels, denials, malformed requests, proxy authentication.
mod connect;
/// deploy/ files validated against the binary's real metrics.
mod deploy;
/// The `direct` upstream: public modules from their code hosts.
mod direct;
/// The README matches the code.
mod docs;
/// The real go command, curl and git through the gateway.
mod e2e;
/// The GOPROXY endpoint: the go command with GOPROXY pointed at modgate.
mod endpoint;
/// Faults survived: unwritable cache, kill -9 and restart.
mod faults;
/// The module firewall: rules, cooldown, advisories, govulncheck, explain and policy check.
mod firewall;
/// Gateway mode: network namespaces, iptables REDIRECT, the go command with no proxy setting.
mod gateway_mode;
/// Hostile input across the wire, TLS, h2, module paths and upstream answers; limits.
mod hostile;
/// TLS interception: h1/h2, SNI rules, leaf certificates, upstream verification.
mod mitm;
/// modgate's own checksum database against the real go command.
mod own_sumdb;
/// Private modules from internal git: proxy mode and direct mode against the go command.
mod private;
/// The public route: cache rules, single-flight, fall-through, never-leak.
mod public;
/// Secrets never reach the logs.
mod secrets;
/// Replicas sharing one cache through a real S3-compatible store (Garage).
mod shared_cache;
/// Toolchain switches (Go 1.21 to Go 1.23) through the gateway and offline from its cache.
mod toolchain;
