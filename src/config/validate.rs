//! The rules serde cannot express and that need no compiling (ranges, files, names), one
//! function per part of the file; `gateway::compile` checks the rest (patterns, URLs, route
//! templates) as it compiles them, once. Every error names its key.

use std::time::Duration;

use super::{Config, ConfigError, MAX_LEAF_VALIDITY};

/// `Err` naming `key` unless `ok`.
fn ensure(ok: bool, key: &str, message: impl std::fmt::Display) -> Result<(), ConfigError> {
    if ok {
        Ok(())
    } else {
        Err(ConfigError::invalid(key, message))
    }
}

fn nonzero(key: &str, d: Duration) -> Result<(), ConfigError> {
    ensure(!d.is_zero(), key, "must be greater than zero")
}

fn readable(key: &str, path: Option<&std::path::Path>) -> Result<(), ConfigError> {
    match path {
        Some(p) => ensure(
            p.is_file(),
            key,
            format!("{} is not a readable file", p.display()),
        ),
        None => Ok(()),
    }
}

impl Config {
    /// Checks every rule serde cannot express that needs no compiling; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        listeners(self)?;
        proxy(self)?;
        tls(self)?;
        auth(self)?;
        upstream(self)?;
        modules(self)?;
        private(self)?;
        storage(self)?;
        traces(self)?;
        log_level(&self.log.level)
    }
}

fn traces(c: &Config) -> Result<(), ConfigError> {
    let t = &c.traces;
    ensure(
        (0.0..=1.0).contains(&t.sample_ratio),
        "traces.sample_ratio",
        "must be between 0 and 1",
    )?;
    ensure(
        t.otlp_endpoint.is_empty() || t.otlp_endpoint.starts_with("http://"),
        "traces.otlp_endpoint",
        "must be an http:// URL (OTLP over plain HTTP, to a collector or agent next to modgate, e.g. \"http://otel-collector:4318/v1/traces\"), or \"\" for none",
    )?;
    ensure(
        !t.service_name.is_empty(),
        "traces.service_name",
        "must not be empty",
    )
}

fn listeners(c: &Config) -> Result<(), ConfigError> {
    ensure(
        c.proxy.listen != c.admin.listen || c.proxy.listen.port() == 0,
        "admin.listen",
        "must differ from proxy.listen",
    )?;
    match c.transparent.listen {
        Some(t) if t.port() != 0 => ensure(
            t != c.proxy.listen && t != c.admin.listen,
            "transparent.listen",
            "must differ from proxy.listen and admin.listen",
        )?,
        _ => {}
    }
    endpoint(c)
}

fn endpoint(c: &Config) -> Result<(), ConfigError> {
    let e = &c.endpoint;
    let Some(addr) = e.listen else {
        return Ok(());
    };
    if addr.port() != 0 {
        ensure(
            addr != c.proxy.listen && addr != c.admin.listen && Some(addr) != c.transparent.listen,
            "endpoint.listen",
            "must differ from proxy.listen, admin.listen and transparent.listen",
        )?;
    }
    ensure(
        e.path_prefix.is_empty()
            || (e.path_prefix.starts_with('/')
                && !e.path_prefix.ends_with('/')
                && !e.path_prefix.contains(['?', '#', '%', '@'])),
        "endpoint.path_prefix",
        "must be empty or a path such as \"/go\" (starting with /, not ending with /)",
    )?;
    ensure(
        e.cert_file.is_some() == e.key_file.is_some(),
        "endpoint.cert_file",
        "endpoint.cert_file and endpoint.key_file go together",
    )?;
    readable("endpoint.cert_file", e.cert_file.as_deref())?;
    readable("endpoint.key_file", e.key_file.as_deref())?;
    ensure(
        !(e.plain_http && e.cert_file.is_some()),
        "endpoint.plain_http",
        "plain HTTP takes no certificate (unset endpoint.cert_file or plain_http)",
    )?;
    ensure(
        addr.ip().is_loopback() || !c.auth.users.is_empty() || e.allow_anonymous,
        "endpoint.listen",
        format!(
            "{addr} is reachable from other hosts and no auth.users are configured: add users, bind a loopback address, or set endpoint.allow_anonymous = true"
        ),
    )
}

fn proxy(c: &Config) -> Result<(), ConfigError> {
    let p = &c.proxy;
    nonzero("proxy.header_read_timeout", p.header_read_timeout)?;
    ensure(
        p.idle_timeout >= Duration::from_millis(100),
        "proxy.idle_timeout",
        "must be at least 100ms",
    )?;
    ensure(
        p.max_connections != 0,
        "proxy.max_connections",
        "must be at least 1",
    )?;
    ensure(
        (8192..=16 * 1024 * 1024).contains(&p.max_head_size.as_u64()),
        "proxy.max_head_size",
        "must be between 8KiB and 16MiB",
    )?;
    ensure(
        (8..=1000).contains(&p.max_headers),
        "proxy.max_headers",
        "must be between 8 and 1000",
    )
}

fn tls(c: &Config) -> Result<(), ConfigError> {
    ensure(
        c.intercept.h2_max_concurrent_streams != 0,
        "intercept.h2_max_concurrent_streams",
        "must be at least 1",
    )?;
    ensure(
        (Duration::from_secs(2 * 3600)..=MAX_LEAF_VALIDITY).contains(&c.ca.leaf_validity),
        "ca.leaf_validity",
        "must be between 2h and 30days",
    )?;
    nonzero(
        "intercept.tls_handshake_timeout",
        c.intercept.tls_handshake_timeout,
    )
}

fn auth(c: &Config) -> Result<(), ConfigError> {
    for (i, user) in c.auth.users.iter().enumerate() {
        ensure(
            !user.name.is_empty() && !user.name.contains(':'),
            &format!("auth.users[{i}].name"),
            "must be non-empty and contain no ':'",
        )?;
        ensure(
            argon2::PasswordHash::new(&user.password_hash).is_ok(),
            &format!("auth.users[{i}].password_hash"),
            "not a PHC password hash; make one with `modgate auth hash`",
        )?;
    }
    Ok(())
}

fn upstream(c: &Config) -> Result<(), ConfigError> {
    let u = &c.upstream;
    readable("upstream.extra_ca_file", u.extra_ca_file.as_deref())?;
    nonzero("upstream.connect_timeout", u.connect_timeout)?;
    nonzero("upstream.tls_timeout", u.tls_timeout)?;
    nonzero("upstream.response_timeout", u.response_timeout)?;
    nonzero("upstream.idle_timeout", u.idle_timeout)
}

fn modules(c: &Config) -> Result<(), ConfigError> {
    for (i, host) in c.modules.proxy_hosts.iter().enumerate() {
        ensure(
            modgate_core::policy::host::valid_host(host) && !host.contains('*'),
            &format!("modules.proxy_hosts[{i}]"),
            format!("{host:?} is not a host name"),
        )?;
    }
    for name in c.sumdb.dbs.keys() {
        let host = name.split('/').next().unwrap_or_default();
        ensure(
            modgate_core::policy::host::valid_host(host)
                && !name.contains(['+', ' '])
                && !name.ends_with('/'),
            &format!("sumdb.dbs.\"{name}\""),
            "name must look like host[/path]",
        )?;
    }
    let zip = c.modules.max_zip_size.as_u64();
    ensure(
        zip != 0 && zip <= modgate_core::gomod::zip::MAX_ZIP_FILE,
        "modules.max_zip_size",
        "must be between 1 byte and 500MiB (the go command refuses larger zips)",
    )?;
    ensure(
        c.modules.max_file_size.as_u64() >= 64 * 1024,
        "modules.max_file_size",
        "must be at least 64KiB",
    )
}

fn private(c: &Config) -> Result<(), ConfigError> {
    nonzero("private.mirror_ttl", c.private.mirror_ttl)?;
    nonzero("private.fetch_timeout", c.private.fetch_timeout)?;
    for (i, r) in c.private.routes.iter().enumerate() {
        let key = |k: &str| format!("private.routes[{i}].{k}");
        let secrets = [
            r.password_env.is_some(),
            r.password_file.is_some(),
            r.token_env.is_some(),
            r.token_file.is_some(),
        ];
        ensure(
            secrets.iter().filter(|s| **s).count() <= 1,
            &key("password_env"),
            "set at most one of password_env, password_file, token_env, token_file",
        )?;
        readable(&key("password_file"), r.password_file.as_deref())?;
        readable(&key("token_file"), r.token_file.as_deref())?;
        readable(&key("extra_ca_file"), r.extra_ca_file.as_deref())?;
    }
    Ok(())
}

fn storage(c: &Config) -> Result<(), ConfigError> {
    ensure(
        c.cache.max_size.as_u64() >= 1024 * 1024,
        "cache.max_size",
        "must be at least 1MiB",
    )?;
    nonzero("cache.mutable_ttl", c.cache.mutable_ttl)?;
    let s = &c.shared_cache;
    ensure(
        s.lock_ttl >= Duration::from_secs(1),
        "shared_cache.lock_ttl",
        "must be at least 1s",
    )?;
    if let Some(e) = &s.endpoint {
        ensure(
            e.starts_with("http://") || e.starts_with("https://"),
            "shared_cache.endpoint",
            "must be an http:// or https:// URL",
        )?;
    }
    ensure(
        s.bucket.as_deref() != Some(""),
        "shared_cache.bucket",
        "must not be empty (leave it out to turn the shared cache off)",
    )
}

/// `log.level`: a level, or comma-separated `target=level` directives (a bare word that is no
/// level would be read by the filter as a target name and silence every log line).
fn log_level(level: &str) -> Result<(), ConfigError> {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    let is_level = |l: &str| LEVELS.contains(&l.trim().to_ascii_lowercase().as_str());
    let ok = !level.trim().is_empty()
        && level.split(',').all(|d| match d.rsplit_once('=') {
            Some((target, l)) => !target.trim().is_empty() && is_level(l),
            None => is_level(d),
        })
        && tracing_subscriber::EnvFilter::try_new(level).is_ok();
    ensure(
        ok,
        "log.level",
        format!(
            "{level:?} is not a level (trace, debug, info, warn, error, off) or a list of target=level filters"
        ),
    )
}
