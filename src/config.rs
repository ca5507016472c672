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

mod validate;

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
    pub endpoint: EndpointConfig,
    pub firewall: FirewallConfig,
    pub vulndb: VulnDbConfig,
    pub log: LogConfig,
    pub traces: TracesConfig,
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
    /// How often the configuration file is checked for changes, which are then reloaded as by
    /// SIGHUP (a Kubernetes ConfigMap update, an edit); `"0s"`: never.
    #[serde(with = "humantime_serde")]
    pub watch_config: Duration,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            watch_config: Duration::from_secs(5),
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
    /// Address blocks agent-chosen traffic may reach although they are loopback or link-local
    /// (refused by default), e.g. `["127.0.0.1/32"]`.
    pub allow_addresses: Vec<String>,
    /// Ports (or ranges) CONNECT may target besides 443.
    pub connect_ports: Vec<String>,
}

impl Default for EgressConfig {
    fn default() -> Self {
        EgressConfig {
            allow: vec!["*".into()],
            deny: vec![],
            allow_addresses: vec![],
            connect_ports: vec![],
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

/// `[vulndb]`: the Go vulnerability database, mirrored through the cache. Its host is
/// intercepted, so govulncheck behind the gateway works (and offline, from the cache), and
/// firewall rules with `vulnerable` read their advisories from it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct VulnDbConfig {
    /// The database (`GOVULNDB`); `""`: not mirrored. Its index and advisories are mutable
    /// entries (`cache.mutable_ttl`), served stale while the database is unreachable.
    pub url: String,
}

impl Default for VulnDbConfig {
    fn default() -> Self {
        VulnDbConfig {
            url: "https://vuln.go.dev".into(),
        }
    }
}

/// `[firewall]`: the module firewall, which decides which public module versions agents may
/// take. Off (allow everything) until a rule is configured or `default = "deny"`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct FirewallConfig {
    /// What happens to a version no enforce rule matches: `"allow"`, or `"deny"` (an allow-list).
    pub default: FirewallAction,
    /// What happens to go-get discovery and git for public modules on intercepted hosts (an agent
    /// with `GOPROXY=direct` or a wide GOPRIVATE) while the firewall is active: `"refuse"` (with a
    /// text that says to use the proxy) or `"allow"`.
    pub direct: DirectVcs,
    /// Public code hosts intercepted while the firewall is active and `direct = "refuse"`, so
    /// that go-get and git to them meet the refusal rather than a blind tunnel.
    pub code_hosts: Vec<String>,
    pub groups: Vec<FirewallGroup>,
    pub rules: Vec<FirewallRule>,
}

impl FirewallConfig {
    /// Whether the firewall can refuse anything.
    pub fn is_active(&self) -> bool {
        !self.rules.is_empty() || self.default == FirewallAction::Deny
    }
}

impl Default for FirewallConfig {
    fn default() -> Self {
        FirewallConfig {
            default: FirewallAction::Allow,
            direct: DirectVcs::Refuse,
            code_hosts: [
                "github.com",
                "gitlab.com",
                "bitbucket.org",
                "go.googlesource.com",
                "golang.org",
                "gopkg.in",
            ]
            .map(String::from)
            .to_vec(),
            groups: vec![],
            rules: vec![],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FirewallAction {
    Allow,
    Deny,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DirectVcs {
    Refuse,
    Allow,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleMode {
    #[default]
    Enforce,
    Report,
}

/// `[[firewall.groups]]`: a named set of clients, by proxy user or address block.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct FirewallGroup {
    pub name: String,
    pub users: Vec<String>,
    pub clients: Vec<String>,
}

/// `[[firewall.rules]]`: one rule; the first enforce rule that matches decides.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct FirewallRule {
    pub id: String,
    pub action: FirewallAction,
    pub mode: RuleMode,
    /// Module path patterns (GOPRIVATE syntax); empty: every module.
    pub modules: PatternList,
    /// Version selectors (`v1.2.3`, `>=v1.2.0, <v1.4.0`, `prerelease`, `pseudo`, `release`);
    /// any may match; empty: every version.
    pub versions: Vec<String>,
    /// `[[firewall.groups]]` names; empty: everyone.
    pub groups: Vec<String>,
    /// Matches versions published less than this long ago (from the upstream's `.info` Time).
    #[serde(with = "humantime_serde")]
    pub cooldown: Option<Duration>,
    /// Matches versions affected by an advisory of the Go vulnerability database: `"any"` or a
    /// list of ids (`GO-2024-1234`, or an alias such as a CVE id).
    pub vulnerable: Option<VulnList>,
    /// Matches retracted versions, only where a version is chosen (`list`, `@latest`, queries).
    pub retracted: bool,
}

impl Default for FirewallRule {
    fn default() -> Self {
        FirewallRule {
            id: String::new(),
            action: FirewallAction::Deny,
            mode: RuleMode::Enforce,
            modules: PatternList::default(),
            versions: vec![],
            groups: vec![],
            cooldown: None,
            vulnerable: None,
            retracted: false,
        }
    }
}

/// `"any"` or a list of advisory ids.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum VulnList {
    Any(String),
    Ids(Vec<String>),
}

/// `[sumdb]`: checksum databases proxied through modgate.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SumDbConfig {
    /// Database name (as in GOSUMDB) = base URL. Each name's host is intercepted.
    pub dbs: BTreeMap<String, String>,
    /// The database every public `.mod` and `.zip` is verified against before it is cached
    /// (`"off"`: no verification).
    pub verify: String,
    /// Verifier keys (`name+hash+key`, as in GOSUMDB) for databases other than sum.golang.org,
    /// whose key is built in.
    pub keys: Vec<String>,
    /// Module path patterns (GONOSUMDB syntax) not verified; private modules never are.
    pub nosumdb: PatternList,
    /// When the database cannot be reached or has no record, serve the module anyway (logged
    /// and counted) instead of refusing it.
    pub fail_open: bool,
    /// The name (a host name) under which modgate serves its own checksum database of every
    /// version it verified or pinned; `""`: none.
    pub serve: String,
}

impl Default for SumDbConfig {
    fn default() -> Self {
        SumDbConfig {
            dbs: BTreeMap::from([(
                "sum.golang.org".to_string(),
                "https://sum.golang.org".to_string(),
            )]),
            verify: "sum.golang.org".to_string(),
            keys: vec![],
            nosumdb: PatternList::default(),
            fail_open: false,
            serve: String::new(),
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

/// `[endpoint]`: modgate as a GOPROXY (`GOPROXY=https://gateway:8443`), beside interception:
/// agents need neither HTTPS_PROXY nor modgate's CA when it has a certificate they trust.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct EndpointConfig {
    /// Listener; off when unset.
    pub listen: Option<SocketAddr>,
    /// Path the GOPROXY protocol is served under (`"/go"`: `GOPROXY=https://gateway/go`);
    /// `""`: at the root.
    pub path_prefix: String,
    /// Serve plain HTTP instead of TLS (must be written; private modules are not served).
    pub plain_http: bool,
    /// PEM certificate chain and key for the listener; unset: a leaf from modgate's CA for
    /// `names`.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Names (DNS or IP) agents use for the endpoint, for the CA-issued leaf; a TLS client
    /// naming another server is refused. Empty: `localhost` and the listener's address.
    pub names: Vec<String>,
    /// Serve without authentication on a non-loopback address when `auth.users` is empty.
    pub allow_anonymous: bool,
}

impl EndpointConfig {
    /// The names the endpoint's CA-issued leaf covers.
    pub fn leaf_names(&self) -> Vec<String> {
        if !self.names.is_empty() {
            return self.names.iter().map(|n| n.to_ascii_lowercase()).collect();
        }
        let mut names = vec!["localhost".to_string()];
        if let Some(addr) = self.listen
            && !addr.ip().is_unspecified()
        {
            names.push(addr.ip().to_string());
        }
        names
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

/// `[traces]`: OpenTelemetry export of the connection and request spans; off by default.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TracesConfig {
    /// OTLP/HTTP (protobuf) traces endpoint, e.g. `"http://otel-collector:4318/v1/traces"`;
    /// `""`: no export.
    pub otlp_endpoint: String,
    /// Share of traces exported, 0 to 1 (by trace id, so a request's spans go together).
    pub sample_ratio: f64,
    /// `service.name` of the exported spans.
    pub service_name: String,
}

impl Default for TracesConfig {
    fn default() -> Self {
        TracesConfig {
            otlp_endpoint: String::new(),
            sample_ratio: 1.0,
            service_name: "modgate".into(),
        }
    }
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
    parse_with_env(&text, env_vars())
}

/// The environment as UTF-8 pairs; variables that are not UTF-8 are skipped (`std::env::vars`
/// would panic on them), and only `MODGATE_` ones can be overrides anyway.
fn env_vars() -> impl Iterator<Item = (String, String)> {
    std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
}

/// The configuration with no file: the defaults and the environment's overrides.
pub fn from_env() -> Result<Config, ConfigError> {
    parse_with_env("", env_vars())
}

/// Prefix of the environment overrides: `MODGATE_<SECTION>__<KEY>=value` sets `section.key`
/// (sections and keys joined by a double underscore, any case; `MODGATE_CONFIG` is no
/// override).
pub const ENV_PREFIX: &str = "MODGATE_";

/// `text` with the overrides among `vars` applied, parsed and validated. A value is read as
/// a TOML value (`true`, `8`, `["a", "b"]`, `"quoted"`), else taken as a string
/// (`127.0.0.1:3128`). An error in an overridden key names the variable.
pub fn parse_with_env(
    text: &str,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    let overrides: Vec<(String, Vec<String>, toml::Value)> = vars
        .into_iter()
        .filter_map(|(name, raw)| {
            let path = name.strip_prefix(ENV_PREFIX)?;
            if !path.contains("__") {
                return None;
            }
            let keys: Vec<String> = path.split("__").map(str::to_ascii_lowercase).collect();
            let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or(toml::Value::String(raw));
            Some((name, keys, value))
        })
        .collect();
    if overrides.is_empty() {
        return parse(text);
    }
    let mut table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Invalid {
        key: "config".into(),
        message: e.to_string(),
    })?;
    for (name, keys, value) in &overrides {
        let (last, sections) = keys.split_last().expect("split yields one part at least");
        let mut at = &mut table;
        for section in sections {
            let entry = at
                .entry(section.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            at = entry.as_table_mut().ok_or_else(|| {
                ConfigError::invalid(&keys.join("."), format!("{name}: {section} is not a table"))
            })?;
        }
        at.insert(last.clone(), value.clone());
    }
    let merged = toml::to_string(&table).expect("a table serializes");
    parse(&merged).map_err(|e| match e {
        ConfigError::Invalid { key, message } => {
            let by = overrides
                .iter()
                .find(|(_, keys, _)| {
                    let path = keys.join(".");
                    key == path || key.starts_with(&format!("{path}.")) || path.starts_with(&key)
                })
                .map(|(name, _, _)| format!(" (set by the environment variable {name})"))
                .unwrap_or_default();
            // Line numbers would count in the merged text, not the file: left out.
            let message = match message.rfind(" (line ") {
                Some(i) if message.ends_with(')') => message[..i].to_string(),
                _ => message,
            };
            ConfigError::Invalid {
                key,
                message: format!("{message}{by}"),
            }
        }
        other => other,
    })
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
        // A listen address is IP:port: say so for the forms people write first.
        let message = if key.ends_with("listen") && message.contains("socket address") {
            format!(
                "{message}; write an IP address and a port, e.g. \"127.0.0.1:3128\" (this machine only) or \"0.0.0.0:3128\" (every interface), not \":3128\" or a host name"
            )
        } else {
            message
        };
        ConfigError::Invalid {
            key: if key == "." { "config".into() } else { key },
            message,
        }
    })?;
    config.validate()?;
    Ok(config)
}

/// A fully commented configuration file holding every key at its default value.
pub const EXAMPLE: &str = include_str!("config_example.toml");

#[cfg(test)]
mod tests;
