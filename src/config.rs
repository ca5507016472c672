//! Configuration: one TOML file whose every key has a default, so `modgate serve` runs with none.
//!
//! [`Config`] is the file's shape (serde); [`load`] and [`parse`] turn text into a validated
//! `Config` or a [`ConfigError`] that names the offending key. Components compile what they need
//! (globs, roots) from a validated `Config` and never fail on it afterwards.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The longest validity a leaf certificate may have.
pub const MAX_LEAF_VALIDITY: Duration = Duration::from_secs(30 * 24 * 3600);

/// Why a configuration was refused. `key` is the dotted TOML path of the offending key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

impl ConfigError {
    /// An invalid value at `key` (a dotted TOML path).
    pub fn invalid(key: &str, message: impl std::fmt::Display) -> Self {
        ConfigError::Invalid {
            key: key.to_string(),
            message: message.to_string(),
        }
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub proxy: ProxyConfig,
    pub admin: AdminConfig,
    pub storage: StorageConfig,
    pub ca: CaConfig,
    pub intercept: InterceptConfig,
    pub egress: EgressConfig,
    pub auth: AuthConfig,
    pub upstream: UpstreamConfig,
    pub modules: ModulesConfig,
    pub sumdb: SumDbConfig,
    pub cache: CacheConfig,
    pub shared_cache: SharedCacheConfig,
    pub private: PrivateConfig,
    pub transparent: TransparentConfig,
    pub log: LogConfig,
}

/// `[proxy]`: the listener agents talk to.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConfig {
    pub listen: SocketAddr,
    /// Connections open at once (client connections, with the tunnels they became).
    pub max_connections: usize,
    /// Largest request head (request line and headers).
    pub max_head_size: bytesize::ByteSize,
    /// Most header fields in one request.
    pub max_headers: usize,
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// An intercepted connection with no request in flight this long is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 3128)),
            max_connections: 4096,
            max_head_size: bytesize::ByteSize::kib(64),
            max_headers: 100,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(90),
            drain_timeout: Duration::from_secs(30),
        }
    }
}

/// `[admin]`: metrics, health and the CA certificate.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    pub listen: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
        }
    }
}

/// `[storage]`: where persistent data lives.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    pub data_dir: PathBuf,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            data_dir: PathBuf::from("data"),
        }
    }
}

/// `[ca]`: the interception certificate authority.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CaConfig {
    pub dir: PathBuf,
    #[serde(with = "humantime_serde")]
    pub leaf_validity: Duration,
    /// When creating a CA, limit it with name constraints to the intercepted hosts.
    pub name_constraints: bool,
}

impl Default for CaConfig {
    fn default() -> Self {
        CaConfig {
            dir: PathBuf::from("certs"),
            leaf_validity: Duration::from_secs(7 * 24 * 3600),
            name_constraints: false,
        }
    }
}

/// `[intercept]`: hosts whose TLS modgate terminates.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct InterceptConfig {
    pub hosts: Vec<String>,
    #[serde(with = "humantime_serde")]
    pub tls_handshake_timeout: Duration,
    /// Concurrent HTTP/2 streams per intercepted connection.
    pub h2_max_concurrent_streams: u32,
    /// Streams a client may reset before they are answered, per connection (reset-flood guard).
    pub h2_max_pending_reset_streams: usize,
}

impl Default for InterceptConfig {
    fn default() -> Self {
        InterceptConfig {
            hosts: vec!["proxy.golang.org".into(), "sum.golang.org".into()],
            tls_handshake_timeout: Duration::from_secs(10),
            h2_max_concurrent_streams: 256,
            h2_max_pending_reset_streams: 20,
        }
    }
}

/// `[egress]`: which other hosts may be reached through a tunnel or plain-HTTP forward.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct EgressConfig {
    pub allow: Vec<String>,
    pub deny: Vec<String>,
}

impl Default for EgressConfig {
    fn default() -> Self {
        EgressConfig {
            allow: vec!["*".into()],
            deny: vec![],
        }
    }
}

/// `[auth]`: optional proxy authentication.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub realm: String,
    pub users: Vec<UserConfig>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            realm: "modgate".into(),
            users: vec![],
        }
    }
}

/// One `[[auth.users]]` entry: a name and an Argon2 PHC hash (`modgate auth hash`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: String,
    pub password_hash: String,
}

/// `[upstream]`: how modgate talks to the servers behind it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamConfig {
    pub extra_ca_file: Option<PathBuf>,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub tls_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub response_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    pub max_idle_per_host: usize,
    /// Host name -> base URL (`https://host[:port][/prefix]`) that replaces it upstream.
    pub overrides: BTreeMap<String, String>,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            extra_ca_file: None,
            connect_timeout: Duration::from_secs(10),
            tls_timeout: Duration::from_secs(10),
            response_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(90),
            max_idle_per_host: 64,
            overrides: BTreeMap::new(),
        }
    }
}

/// `[modules]`: which modules are private and where public ones come from.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModulesConfig {
    /// GOPRIVATE-style patterns: one comma-separated string or a list.
    pub private: PatternList,
    /// Hosts agents use as GOPROXY; intercepted automatically.
    pub proxy_hosts: Vec<String>,
    /// The GOPROXY list public modules are fetched from (`,` and `|` as in GOPROXY).
    pub upstream: String,
    /// Largest module zip accepted from an upstream (the go command's own limit is 500 MiB).
    pub max_zip_size: bytesize::ByteSize,
    /// Largest other answer (.info, .mod, list, checksum-database data) accepted from upstream.
    pub max_file_size: bytesize::ByteSize,
}

impl Default for ModulesConfig {
    fn default() -> Self {
        ModulesConfig {
            private: PatternList::default(),
            proxy_hosts: vec!["proxy.golang.org".into()],
            upstream: "https://proxy.golang.org".into(),
            max_zip_size: bytesize::ByteSize::mib(500),
            max_file_size: bytesize::ByteSize::mib(64),
        }
    }
}

/// GOPRIVATE syntax: `"a,b"` or `["a", "b"]`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(from = "OneOrMany", into = "Vec<String>")]
pub struct PatternList(pub Vec<String>);

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl From<OneOrMany> for PatternList {
    fn from(v: OneOrMany) -> Self {
        match v {
            OneOrMany::One(s) => PatternList(vec![s]),
            OneOrMany::Many(v) => PatternList(v),
        }
    }
}

impl From<PatternList> for Vec<String> {
    fn from(p: PatternList) -> Self {
        p.0
    }
}

impl PatternList {
    /// The entries as written (each may still hold commas).
    pub fn entries(&self) -> Vec<&str> {
        self.0.iter().map(String::as_str).collect()
    }
}

/// `[sumdb]`: checksum databases proxied through modgate.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SumDbConfig {
    /// Database name (as in GOSUMDB) = base URL. Each name's host is intercepted.
    pub dbs: BTreeMap<String, String>,
}

impl Default for SumDbConfig {
    fn default() -> Self {
        SumDbConfig {
            dbs: BTreeMap::from([(
                "sum.golang.org".to_string(),
                "https://sum.golang.org".to_string(),
            )]),
        }
    }
}

/// `[cache]`: the persistent module and checksum cache under `storage.data_dir`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Size bound; least recently used entries are evicted beyond it.
    pub max_size: bytesize::ByteSize,
    /// How long mutable answers (list, @latest, queries, partial tiles, /latest) stay fresh.
    #[serde(with = "humantime_serde")]
    pub mutable_ttl: Duration,
    /// How long not-found answers are remembered.
    #[serde(with = "humantime_serde")]
    pub negative_ttl: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_size: bytesize::ByteSize::gib(20),
            mutable_ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(10),
        }
    }
}

/// `[private]`: private modules served from internal git hosts.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrivateConfig {
    /// How long a repository mirror is used before it is fetched again.
    #[serde(with = "humantime_serde")]
    pub mirror_ttl: Duration,
    /// Time allowed for one git fetch into a mirror.
    #[serde(with = "humantime_serde")]
    pub fetch_timeout: Duration,
    /// One `[[private.routes]]` table per module-path template.
    pub routes: Vec<PrivateRouteConfig>,
}

impl Default for PrivateConfig {
    fn default() -> Self {
        PrivateConfig {
            mirror_ttl: Duration::from_secs(60),
            fetch_timeout: Duration::from_secs(300),
            routes: vec![],
        }
    }
}

/// A private route: module paths matching `module` live in the git repository `git`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PrivateRouteConfig {
    /// Module-path template of the repository root, e.g. `git.corp.example/{group}/{repo}`;
    /// each `{name}` matches one path element.
    pub module: String,
    /// Repository URL template using the same names, e.g. `https://git.internal/{group}/{repo}.git`.
    pub git: String,
    /// User name sent with a password (HTTP Basic).
    #[serde(default = "default_git_user")]
    pub username: String,
    /// Environment variable holding the password (HTTP Basic with `username`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    /// File holding the password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// Environment variable holding a bearer token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
    /// File holding a bearer token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// Extra PEM roots trusted for this git host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra_ca_file: Option<PathBuf>,
}

fn default_git_user() -> String {
    "git".into()
}

/// `[shared_cache]`: an S3-compatible bucket shared by replicas, behind each local disk cache.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SharedCacheConfig {
    /// Bucket name; the shared tier is off when unset.
    pub bucket: Option<String>,
    /// Key prefix inside the bucket.
    pub prefix: String,
    /// S3 endpoint URL (Garage, MinIO, Ceph...); AWS when unset.
    pub endpoint: Option<String>,
    pub region: String,
    /// Environment variables holding the credentials.
    pub access_key_id_env: String,
    pub secret_access_key_env: String,
    /// Files holding the credentials (e.g. a mounted Kubernetes secret); used instead of the
    /// environment variables when set.
    pub access_key_id_file: Option<PathBuf>,
    pub secret_access_key_file: Option<PathBuf>,
    /// How long a replica's claim to fetch a key holds off the others.
    #[serde(with = "humantime_serde")]
    pub lock_ttl: Duration,
}

impl Default for SharedCacheConfig {
    fn default() -> Self {
        SharedCacheConfig {
            bucket: None,
            prefix: "modgate".into(),
            endpoint: None,
            region: "us-east-1".into(),
            access_key_id_env: "AWS_ACCESS_KEY_ID".into(),
            secret_access_key_env: "AWS_SECRET_ACCESS_KEY".into(),
            access_key_id_file: None,
            secret_access_key_file: None,
            lock_ttl: Duration::from_secs(120),
        }
    }
}

/// `[transparent]`: gateway mode, for connections the network redirects to modgate (iptables or
/// nftables REDIRECT, or TPROXY) from clients that have no proxy setting.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransparentConfig {
    /// Listener for redirected connections; off when unset.
    pub listen: Option<SocketAddr>,
    /// Set IP_TRANSPARENT on the listener, for TPROXY rules (needs CAP_NET_ADMIN).
    pub tproxy: bool,
    /// What to do with a TLS connection whose ClientHello names no server.
    pub no_sni: NoSni,
    /// Splice a connection only if its original destination address is one the SNI name
    /// resolves to, so a client cannot reach any address by naming an allowed host.
    pub verify_destination: bool,
}

impl Default for TransparentConfig {
    fn default() -> Self {
        TransparentConfig {
            listen: None,
            tproxy: false,
            no_sni: NoSni::Deny,
            verify_destination: true,
        }
    }
}

/// `transparent.no_sni`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NoSni {
    /// Refuse the connection.
    #[default]
    Deny,
    /// Splice it to its original destination untouched.
    Tunnel,
}

/// `[log]`: diagnostics and access log.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub level: String,
    pub format: LogFormat,
    pub access_log: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
            access_log: true,
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Reads and validates a configuration file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text)
}

/// Parses and validates configuration text.
pub fn parse(text: &str) -> Result<Config, ConfigError> {
    let de = toml::Deserializer::new(text);
    let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        let message = inner.message().to_string();
        let message = match inner.span() {
            Some(span) => {
                let line = text[..span.start].matches('\n').count() + 1;
                format!("{message} (line {line})")
            }
            None => message,
        };
        ConfigError::Invalid {
            key: if key == "." { "config".into() } else { key },
            message,
        }
    })?;
    config.validate()?;
    Ok(config)
}

impl Config {
    /// Checks every rule serde cannot express that needs no compiling (ranges, files, names);
    /// `gateway::compile` checks the rest (patterns, URLs, templates) as it compiles them once.
    /// The error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.proxy.listen == self.admin.listen && self.proxy.listen.port() != 0 {
            return Err(ConfigError::invalid(
                "admin.listen",
                "must differ from proxy.listen",
            ));
        }
        if let Some(t) = self.transparent.listen
            && t.port() != 0
            && (t == self.proxy.listen || t == self.admin.listen)
        {
            return Err(ConfigError::invalid(
                "transparent.listen",
                "must differ from proxy.listen and admin.listen",
            ));
        }
        nonzero("proxy.header_read_timeout", self.proxy.header_read_timeout)?;
        if self.shared_cache.lock_ttl < Duration::from_secs(1) {
            return Err(ConfigError::invalid(
                "shared_cache.lock_ttl",
                "must be at least 1s",
            ));
        }
        if let Some(e) = &self.shared_cache.endpoint
            && !(e.starts_with("http://") || e.starts_with("https://"))
        {
            return Err(ConfigError::invalid(
                "shared_cache.endpoint",
                "must be an http:// or https:// URL",
            ));
        }
        if self.shared_cache.bucket.as_deref() == Some("") {
            return Err(ConfigError::invalid(
                "shared_cache.bucket",
                "must not be empty (leave it out to turn the shared cache off)",
            ));
        }
        if self.proxy.idle_timeout < Duration::from_millis(100) {
            return Err(ConfigError::invalid(
                "proxy.idle_timeout",
                "must be at least 100ms",
            ));
        }
        if self.proxy.max_connections == 0 {
            return Err(ConfigError::invalid(
                "proxy.max_connections",
                "must be at least 1",
            ));
        }
        if !(8192..=16 * 1024 * 1024).contains(&self.proxy.max_head_size.as_u64()) {
            return Err(ConfigError::invalid(
                "proxy.max_head_size",
                "must be between 8KiB and 16MiB",
            ));
        }
        if !(8..=1000).contains(&self.proxy.max_headers) {
            return Err(ConfigError::invalid(
                "proxy.max_headers",
                "must be between 8 and 1000",
            ));
        }
        if self.intercept.h2_max_concurrent_streams == 0 {
            return Err(ConfigError::invalid(
                "intercept.h2_max_concurrent_streams",
                "must be at least 1",
            ));
        }
        if self.ca.leaf_validity < Duration::from_secs(2 * 3600)
            || self.ca.leaf_validity > MAX_LEAF_VALIDITY
        {
            return Err(ConfigError::invalid(
                "ca.leaf_validity",
                "must be between 2h and 30days",
            ));
        }
        nonzero(
            "intercept.tls_handshake_timeout",
            self.intercept.tls_handshake_timeout,
        )?;
        for (i, user) in self.auth.users.iter().enumerate() {
            if user.name.is_empty() || user.name.contains(':') {
                return Err(ConfigError::invalid(
                    &format!("auth.users[{i}].name"),
                    "must be non-empty and contain no ':'",
                ));
            }
            if argon2::PasswordHash::new(&user.password_hash).is_err() {
                return Err(ConfigError::invalid(
                    &format!("auth.users[{i}].password_hash"),
                    "not a PHC password hash; make one with `modgate auth hash`",
                ));
            }
        }
        if let Some(path) = &self.upstream.extra_ca_file
            && !path.is_file()
        {
            return Err(ConfigError::invalid(
                "upstream.extra_ca_file",
                format!("{} is not a readable file", path.display()),
            ));
        }
        nonzero("upstream.connect_timeout", self.upstream.connect_timeout)?;
        nonzero("upstream.tls_timeout", self.upstream.tls_timeout)?;
        nonzero("upstream.response_timeout", self.upstream.response_timeout)?;
        nonzero("upstream.idle_timeout", self.upstream.idle_timeout)?;
        for (i, host) in self.modules.proxy_hosts.iter().enumerate() {
            if !modgate_core::policy::host::valid_host(host) || host.contains('*') {
                return Err(ConfigError::invalid(
                    &format!("modules.proxy_hosts[{i}]"),
                    format!("{host:?} is not a host name"),
                ));
            }
        }
        for name in self.sumdb.dbs.keys() {
            let key = format!("sumdb.dbs.\"{name}\"");
            let host = name.split('/').next().unwrap_or_default();
            if !modgate_core::policy::host::valid_host(host)
                || name.contains(['+', ' '])
                || name.ends_with('/')
            {
                return Err(ConfigError::invalid(
                    &key,
                    "name must look like host[/path]",
                ));
            }
        }
        nonzero("private.mirror_ttl", self.private.mirror_ttl)?;
        nonzero("private.fetch_timeout", self.private.fetch_timeout)?;
        for (i, r) in self.private.routes.iter().enumerate() {
            let key = |k: &str| format!("private.routes[{i}].{k}");
            let secrets = [
                r.password_env.is_some(),
                r.password_file.is_some(),
                r.token_env.is_some(),
                r.token_file.is_some(),
            ];
            if secrets.iter().filter(|s| **s).count() > 1 {
                return Err(ConfigError::invalid(
                    &key("password_env"),
                    "set at most one of password_env, password_file, token_env, token_file",
                ));
            }
            for (field, path) in [
                ("password_file", &r.password_file),
                ("token_file", &r.token_file),
                ("extra_ca_file", &r.extra_ca_file),
            ] {
                if let Some(p) = path
                    && !p.is_file()
                {
                    return Err(ConfigError::invalid(
                        &key(field),
                        format!("{} is not a readable file", p.display()),
                    ));
                }
            }
        }
        if self.modules.max_zip_size.as_u64() == 0
            || self.modules.max_zip_size.as_u64() > modgate_core::gomod::zip::MAX_ZIP_FILE
        {
            return Err(ConfigError::invalid(
                "modules.max_zip_size",
                "must be between 1 byte and 500MiB (the go command refuses larger zips)",
            ));
        }
        if self.modules.max_file_size.as_u64() < 64 * 1024 {
            return Err(ConfigError::invalid(
                "modules.max_file_size",
                "must be at least 64KiB",
            ));
        }
        if self.cache.max_size.as_u64() < 1024 * 1024 {
            return Err(ConfigError::invalid(
                "cache.max_size",
                "must be at least 1MiB",
            ));
        }
        nonzero("cache.mutable_ttl", self.cache.mutable_ttl)?;
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return Err(ConfigError::invalid(
                "log.level",
                format!("invalid level or filter {:?}", self.log.level),
            ));
        }
        Ok(())
    }
}

fn nonzero(key: &str, d: Duration) -> Result<(), ConfigError> {
    if d.is_zero() {
        return Err(ConfigError::invalid(key, "must be greater than zero"));
    }
    Ok(())
}

/// A fully commented configuration file holding every key at its default value.
pub const EXAMPLE: &str = include_str!("config_example.toml");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_parses_to_the_defaults() {
        assert_eq!(parse(EXAMPLE).unwrap(), Config::default());
    }

    #[test]
    fn empty_file_is_the_defaults() {
        assert_eq!(parse("").unwrap(), Config::default());
    }

    #[test]
    fn example_names_every_key() {
        let value = toml::Value::try_from(Config::default()).unwrap();
        let mut keys = vec![];
        collect_keys("", &value, &mut keys);
        for key in keys {
            let leaf = key.rsplit('.').next().unwrap();
            assert!(
                EXAMPLE.contains(&format!("{leaf} =")) || EXAMPLE.contains(&format!("[{key}]")),
                "config example lacks {key}"
            );
        }
    }

    fn collect_keys(prefix: &str, value: &toml::Value, out: &mut Vec<String>) {
        if let toml::Value::Table(t) = value {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                out.push(key.clone());
                // Tables whose keys are data (host names, DB names), not configuration keys.
                if key != "upstream.overrides" && key != "sumdb.dbs" && key != "private.routes" {
                    collect_keys(&key, v, out);
                }
            }
        }
    }

    #[test]
    fn private_accepts_a_string_or_a_list() {
        let one = parse("[modules]\nprivate = \"*.corp.example,github.com/acme\"\n").unwrap();
        assert_eq!(
            one.modules.private.entries(),
            vec!["*.corp.example,github.com/acme"]
        );
        let many =
            parse("[modules]\nprivate = [\"*.corp.example\", \"github.com/acme\"]\n").unwrap();
        assert_eq!(
            many.modules.private.entries(),
            vec!["*.corp.example", "github.com/acme"]
        );
    }

    #[test]
    fn unknown_key_is_named() {
        let err = parse("[upstream]\nconect_timeout = \"1s\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("upstream"), "{err}");
        assert!(err.contains("conect_timeout"), "{err}");
    }

    #[test]
    fn bad_duration_is_named() {
        let err = parse("[upstream]\nconnect_timeout = \"soon\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("upstream.connect_timeout:"), "{err}");
    }
}
