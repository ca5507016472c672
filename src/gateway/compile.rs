//! Raw configuration -> compiled parts, exactly once: [`live`] compiles what a reload swaps
//! (policy, routes, upstream lists, credentials, proxy users); [`restart_keys`] names every
//! changed key a reload cannot apply.
//!
//! Which keys are reloadable is written down once, in [`LIVE_KEYS`]; every other key is
//! restart-only by construction, so a key added later can never be silently ignored by a reload.

use std::collections::HashMap;
use std::sync::Arc;

use modgate_core::base_url::BaseUrl;
use modgate_core::policy::goproxy::GoProxyList;
use modgate_core::policy::host::normalize_host;
use modgate_core::policy::{Policy, PolicySpec, firewall};

use crate::config::{Config, ConfigError};
use crate::ingress::auth::ProxyAuth;
use crate::serve::Live;
use crate::serve::private::PrivateBackend;
use crate::serve::prove::Verifier;
use crate::telemetry::metrics::Metrics;
use modgate_core::gomod::note::{SUM_GOLANG_ORG_KEY, VerifierKey};
use modgate_core::policy::address::AddressPolicy;
use modgate_core::policy::patterns::Patterns;

/// The configuration keys a reload applies (a table, or one key of a table). Everything else
/// needs a restart.
pub const LIVE_KEYS: &[&str] = &[
    "intercept.hosts",
    "egress",
    "auth",
    "upstream.overrides",
    "modules",
    "sumdb.dbs",
    "sumdb.verify",
    "sumdb.keys",
    "sumdb.nosumdb",
    "sumdb.fail_open",
    "private.routes",
    "firewall",
    "vulndb",
];

/// The reloadable rules, compiled from a validated configuration; the error names the key.
pub fn live(config: &Config, metrics: &Arc<Metrics>) -> Result<Live, ConfigError> {
    let policy = policy(config)?;
    let Upstreams {
        public_upstreams,
        sumdbs,
        overrides,
    } = upstreams(config)?;
    let mut private = vec![];
    for (i, r) in config.private.routes.iter().enumerate() {
        private.push(PrivateBackend::new(i, r, config, metrics.clone())?);
    }
    let direct = if public_upstreams
        .entries()
        .contains(&modgate_core::policy::goproxy::Entry::Direct)
    {
        Some(PrivateBackend::anonymous(config, metrics.clone())?)
    } else {
        None
    };
    Ok(Live {
        config: config.clone(),
        policy,
        overrides,
        public_upstreams,
        sumdbs,
        private,
        direct,
        verifier: verifier(config)?,
        addresses: addresses(config)?,
        vulndb: vulndb(config)?,
        memo: Default::default(),
    })
}

/// `vulndb.url`, parsed (`None` when empty).
pub fn vulndb(config: &Config) -> Result<Option<BaseUrl>, ConfigError> {
    if config.vulndb.url.is_empty() {
        return Ok(None);
    }
    BaseUrl::parse(&config.vulndb.url)
        .map(Some)
        .map_err(|e| ConfigError::invalid("vulndb.url", e))
}

/// `egress.allow_addresses` and `egress.connect_ports`, compiled.
pub fn addresses(config: &Config) -> Result<AddressPolicy, ConfigError> {
    AddressPolicy::new(&config.egress.allow_addresses, &[])
        .map_err(|e| ConfigError::invalid("egress.allow_addresses", e))?;
    AddressPolicy::new(&config.egress.allow_addresses, &config.egress.connect_ports)
        .map_err(|e| ConfigError::invalid("egress.connect_ports", e))
}

/// `sumdb.verify` and its key, `sumdb.keys`, `sumdb.nosumdb` and `sumdb.fail_open`, compiled.
pub fn verifier(config: &Config) -> Result<Option<Verifier>, ConfigError> {
    let s = &config.sumdb;
    let mut keys = vec![];
    for (i, k) in s.keys.iter().enumerate() {
        keys.push(
            VerifierKey::parse(k)
                .map_err(|e| ConfigError::invalid(&format!("sumdb.keys[{i}]"), e))?,
        );
    }
    let nosumdb = Patterns::parse(s.nosumdb.entries())
        .map_err(|e| ConfigError::invalid("sumdb.nosumdb", e))?;
    if s.verify == "off" {
        return Ok(None);
    }
    if !s.dbs.contains_key(&s.verify) {
        return Err(ConfigError::invalid(
            "sumdb.verify",
            format!("{:?} is not in sumdb.dbs (or write \"off\")", s.verify),
        ));
    }
    let key = match keys.iter().find(|k| k.name == s.verify) {
        Some(k) => k.clone(),
        None if s.verify == "sum.golang.org" => {
            VerifierKey::parse(SUM_GOLANG_ORG_KEY).expect("the built-in key parses")
        }
        None => {
            return Err(ConfigError::invalid(
                "sumdb.verify",
                format!(
                    "no key for {:?}: add its name+hash+key to sumdb.keys",
                    s.verify
                ),
            ));
        }
    };
    Ok(Some(Verifier {
        db: s.verify.clone(),
        key,
        nosumdb,
        fail_open: s.fail_open,
    }))
}

/// The upstream URLs of the configuration, parsed.
struct Upstreams {
    public_upstreams: GoProxyList,
    sumdbs: HashMap<String, BaseUrl>,
    overrides: HashMap<String, BaseUrl>,
}

fn upstreams(config: &Config) -> Result<Upstreams, ConfigError> {
    let public_upstreams = GoProxyList::parse(&config.modules.upstream)
        .map_err(|e| ConfigError::invalid("modules.upstream", e))?;
    let mut sumdbs = HashMap::new();
    for (name, url) in &config.sumdb.dbs {
        let base = BaseUrl::parse(url)
            .map_err(|e| ConfigError::invalid(&format!("sumdb.dbs.\"{name}\""), e))?;
        sumdbs.insert(name.clone(), base);
    }
    let mut overrides = HashMap::new();
    for (host, base) in &config.upstream.overrides {
        let base = BaseUrl::parse(base)
            .map_err(|e| ConfigError::invalid(&format!("upstream.overrides.\"{host}\""), e))?;
        overrides.insert(normalize_host(host), base);
    }
    Ok(Upstreams {
        public_upstreams,
        sumdbs,
        overrides,
    })
}

/// The proxy users, compiled (`None`: authentication off).
pub fn auth(config: &Config) -> Option<Arc<ProxyAuth>> {
    ProxyAuth::new(&config.auth).map(Arc::new)
}

/// The decision policy alone (for `modgate explain` and the CA's name constraints).
pub fn policy(config: &Config) -> Result<Policy, ConfigError> {
    Policy::new(&policy_spec(config)).map_err(|e| ConfigError::invalid(&e.key, e.message))
}

/// The core's view of the configuration.
pub fn policy_spec(config: &Config) -> PolicySpec {
    let mut intercept_hosts = config.intercept.hosts.clone();
    let fw = &config.firewall;
    if fw.is_active() && fw.direct == crate::config::DirectVcs::Refuse {
        intercept_hosts.extend(fw.code_hosts.iter().cloned());
    }
    PolicySpec {
        intercept_hosts,
        proxy_hosts: config.modules.proxy_hosts.clone(),
        private: config
            .modules
            .private
            .entries()
            .into_iter()
            .map(str::to_string)
            .collect(),
        sumdb_names: config.sumdb.dbs.keys().cloned().collect(),
        own_sumdb: (!config.sumdb.serve.is_empty()).then(|| config.sumdb.serve.clone()),
        routes: config
            .private
            .routes
            .iter()
            .map(|r| (r.module.clone(), r.git.clone()))
            .collect(),
        egress_allow: config.egress.allow.clone(),
        egress_deny: config.egress.deny.clone(),
        firewall: firewall_spec(&config.firewall),
        vulndb: (!config.vulndb.url.is_empty()).then(|| config.vulndb.url.clone()),
    }
}

/// The core's view of `[firewall]`.
fn firewall_spec(c: &crate::config::FirewallConfig) -> firewall::FirewallSpec {
    use crate::config::{FirewallAction, RuleMode, VulnList};
    let action = |a: FirewallAction| match a {
        FirewallAction::Allow => firewall::Action::Allow,
        FirewallAction::Deny => firewall::Action::Deny,
    };
    firewall::FirewallSpec {
        default: action(c.default),
        groups: c
            .groups
            .iter()
            .map(|g| firewall::GroupSpec {
                name: g.name.clone(),
                users: g.users.clone(),
                clients: g.clients.clone(),
            })
            .collect(),
        rules: c
            .rules
            .iter()
            .map(|r| firewall::RuleSpec {
                id: r.id.clone(),
                action: action(r.action),
                mode: match r.mode {
                    RuleMode::Enforce => firewall::Mode::Enforce,
                    RuleMode::Report => firewall::Mode::Report,
                },
                modules: r
                    .modules
                    .entries()
                    .iter()
                    .flat_map(|e| e.split(','))
                    .map(|p| p.trim().to_string())
                    .filter(|p| !p.is_empty())
                    .collect(),
                versions: r.versions.clone(),
                groups: r.groups.clone(),
                cooldown: r.cooldown,
                vulnerable: r.vulnerable.as_ref().map(|v| match v {
                    VulnList::Any(s) if s == "any" => firewall::VulnSelector::Any,
                    VulnList::Any(s) => firewall::VulnSelector::Ids(vec![s.clone()]),
                    VulnList::Ids(ids) => firewall::VulnSelector::Ids(ids.clone()),
                }),
                retracted: r.retracted,
            })
            .collect(),
    }
}

/// Checks everything a start would compile, without binding or opening anything: the policy,
/// URLs, route templates and credentials. `modgate config check` and `serve` both run it.
pub fn check(config: &Config) -> Result<(), ConfigError> {
    let policy = policy(config)?;
    if config.ca.name_constraints {
        policy
            .ca_name_constraints()
            .map_err(|e| ConfigError::invalid("ca.name_constraints", e))?;
    }
    upstreams(config)?;
    verifier(config)?;
    addresses(config)?;
    own_sumdb(config)?;
    secrets_present(config)
}

/// `sumdb.serve`: a host name, not one of the databases modgate proxies.
pub fn own_sumdb(config: &Config) -> Result<Option<&str>, ConfigError> {
    let name = config.sumdb.serve.as_str();
    if name.is_empty() {
        return Ok(None);
    }
    let bad = |why: &str| ConfigError::invalid("sumdb.serve", format!("{name:?}: {why}"));
    if normalize_host(name) != name
        || !modgate_core::policy::host::valid_host(name)
        || name.parse::<std::net::IpAddr>().is_ok()
    {
        return Err(bad(
            "must be a lower-case host name such as \"sum.corp.example\" (agents reach it as https://<name>/)",
        ));
    }
    if config.sumdb.dbs.contains_key(name) {
        return Err(bad(
            "is a database modgate proxies (sumdb.dbs); modgate's own database needs a name of its own",
        ));
    }
    let routes = policy(config)?.rules.routes;
    if config.modules.proxy_hosts.iter().any(|h| h == name)
        || routes.hosts().iter().any(|h| h == name)
    {
        return Err(bad(
            "is a module proxy or private-route host; modgate's own database needs a host of its own (its requests would shadow that host's)",
        ));
    }
    Ok(Some(name))
}

/// Every credential named by an environment variable is set (as `serve` will need it).
fn secrets_present(config: &Config) -> Result<(), ConfigError> {
    for (i, r) in config.private.routes.iter().enumerate() {
        for (field, var) in [
            ("password_env", &r.password_env),
            ("token_env", &r.token_env),
        ] {
            if let Some(v) = var
                && std::env::var_os(v).is_none()
            {
                return Err(ConfigError::invalid(
                    &format!("private.routes[{i}].{field}"),
                    format!(
                        "environment variable {v} is not set (here; it must be where modgate serves)"
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Every key whose value differs between `old` and `new` and that a reload cannot apply, as
/// dotted TOML paths (`intercept.h2_max_concurrent_streams`, `private.fetch_timeout`, ...).
pub fn restart_keys(old: &Config, new: &Config) -> Vec<String> {
    let (a, b) = (fixed_view(old), fixed_view(new));
    let mut out = vec![];
    diff("", &a, &b, &mut out);
    out
}

/// `config` as a TOML value with every reloadable key removed.
fn fixed_view(config: &Config) -> toml::Value {
    let mut v = toml::Value::try_from(config).expect("the configuration serializes");
    for key in LIVE_KEYS {
        let mut parts: Vec<&str> = key.split('.').collect();
        let last = parts.pop().expect("non-empty key");
        let mut table = v.as_table_mut();
        for p in parts {
            table = table
                .and_then(|t| t.get_mut(p))
                .and_then(|t| t.as_table_mut());
        }
        if let Some(t) = table {
            t.remove(last);
        }
    }
    v
}

fn diff(prefix: &str, a: &toml::Value, b: &toml::Value, out: &mut Vec<String>) {
    match (a.as_table(), b.as_table()) {
        (Some(ta), Some(tb)) => {
            let mut keys: Vec<&String> = ta.keys().chain(tb.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                match (ta.get(k), tb.get(k)) {
                    (Some(x), Some(y)) => diff(&path, x, y, out),
                    _ => out.push(path),
                }
            }
        }
        _ if a != b => out.push(prefix.to_string()),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    /// One key of each restart-only section, and the reloadable ones beside them.
    #[test]
    fn restart_keys_name_every_restart_only_change() {
        let old = Config::default();
        let table = [
            (
                "[proxy]\nidle_timeout = \"5s\"\n",
                vec!["proxy.idle_timeout"],
            ),
            (
                "[admin]\nlisten = \"127.0.0.1:9999\"\n",
                vec!["admin.listen"],
            ),
            (
                "[storage]\ndata_dir = \"elsewhere\"\n",
                vec!["storage.data_dir"],
            ),
            ("[ca]\ndir = \"other-ca\"\n", vec!["ca.dir"]),
            (
                "[intercept]\nh2_max_concurrent_streams = 7\n",
                vec!["intercept.h2_max_concurrent_streams"],
            ),
            (
                "[intercept]\nh2_max_pending_reset_streams = 3\n",
                vec!["intercept.h2_max_pending_reset_streams"],
            ),
            (
                "[upstream]\nconnect_timeout = \"3s\"\n",
                vec!["upstream.connect_timeout"],
            ),
            ("[cache]\nmutable_ttl = \"5m\"\n", vec!["cache.mutable_ttl"]),
            (
                "[sumdb]\nserve = \"sum.corp.example\"\nfail_open = true\n",
                vec!["sumdb.serve"],
            ),
            (
                "[shared_cache]\nprefix = \"other\"\n",
                vec!["shared_cache.prefix"],
            ),
            (
                "[private]\nfetch_timeout = \"9s\"\n",
                vec!["private.fetch_timeout"],
            ),
            (
                "[private]\nmirror_ttl = \"9s\"\n",
                vec!["private.mirror_ttl"],
            ),
            (
                "[transparent]\nverify_destination = false\n",
                vec!["transparent.verify_destination"],
            ),
            ("[log]\nformat = \"json\"\n", vec!["log.format"]),
            // Reloadable keys need no restart.
            ("[intercept]\nhosts = [\"a.example\"]\n", vec![]),
            ("[egress]\ndeny = [\"x.example\"]\n", vec![]),
            ("[modules]\nprivate = \"corp.example\"\n", vec![]),
            (
                "[upstream.overrides]\n\"a.example\" = \"http://127.0.0.1:1\"\n",
                vec![],
            ),
            (
                "[sumdb.dbs]\n\"s.example\" = \"https://s.example\"\n",
                vec![],
            ),
        ];
        for (text, want) in table {
            let new = parse(text).unwrap();
            assert_eq!(restart_keys(&old, &new), want, "{text}");
        }
    }

    #[test]
    fn an_added_optional_key_is_named_too() {
        let new = parse("[transparent]\nlisten = \"127.0.0.1:3130\"\n").unwrap();
        assert_eq!(
            restart_keys(&Config::default(), &new),
            vec!["transparent.listen"]
        );
    }

    /// Every configuration error names its key, whether serde, validation or compiling found it.
    #[test]
    fn semantic_errors_name_the_key() {
        let cases = [
            ("[ca]\nleaf_validity = \"90days\"\n", "ca.leaf_validity:"),
            ("[egress]\ndeny = [\"a[\"]\n", "egress.deny[0]:"),
            (
                "[upstream.overrides]\n\"proxy.golang.org\" = \"ftp://x\"\n",
                "upstream.overrides.\"proxy.golang.org\":",
            ),
            (
                "[[auth.users]]\nname = \"ci\"\npassword_hash = \"plain\"\n",
                "auth.users[0].password_hash:",
            ),
            (
                "[upstream]\nconnect_timeout = \"0s\"\n",
                "upstream.connect_timeout:",
            ),
            ("[log]\nlevel = \"modgate=loud\"\n", "log.level:"),
            ("[log]\nformat = \"xml\"\n", "log.format:"),
            ("[modules]\nprivate = \"ok.com,bad[\"\n", "modules.private:"),
            ("[modules]\nupstream = \"ftp://x\"\n", "modules.upstream:"),
            (
                "[modules]\nproxy_hosts = [\"a b\"]\n",
                "modules.proxy_hosts[0]:",
            ),
            ("[cache]\nmax_size = \"lots\"\n", "cache.max_size:"),
            (
                "[[private.routes]]\nmodule = \"corp.example/{x\"\ngit = \"https://g/{x}\"\n",
                "private.routes[0].module:",
            ),
            (
                "[[private.routes]]\nmodule = \"corp.example/{x}\"\ngit = \"https://g/{y}\"\n",
                "private.routes[0].git:",
            ),
            (
                "[[private.routes]]\nmodule = \"corp.example/{x}\"\ngit = \"https://g/{x}\"\ntoken_env = \"A\"\npassword_env = \"B\"\n",
                "private.routes[0].password_env:",
            ),
            (
                "[sumdb.dbs]\n\"sum.x.org\" = \"nope\"\n",
                "sumdb.dbs.\"sum.x.org\":",
            ),
            // A bare word that is no level would silence every log line.
            ("[log]\nlevel = \"verbose\"\n", "log.level:"),
            (
                "[[private.routes]]\nmodule = \"corp.example/{x}\"\ngit = \"https://g/{x}\"\ntoken_env = \"MODGATE_TEST_SURELY_UNSET_TOKEN\"\n",
                "private.routes[0].token_env: environment variable MODGATE_TEST_SURELY_UNSET_TOKEN is not set",
            ),
            ("[sumdb]\nverify = \"sum.x.org\"\n", "sumdb.verify:"),
            ("[sumdb]\nkeys = [\"nope\"]\n", "sumdb.keys[0]:"),
            ("[sumdb]\nserve = \"Sum.Corp.example\"\n", "sumdb.serve:"),
            ("[sumdb]\nserve = \"127.0.0.1\"\n", "sumdb.serve:"),
            ("[sumdb]\nserve = \"sum.golang.org\"\n", "sumdb.serve:"),
            ("[sumdb]\nserve = \"proxy.golang.org\"\n", "sumdb.serve:"),
            (
                "[egress]\nallow_addresses = [\"localhost\"]\n",
                "egress.allow_addresses:",
            ),
            (
                "[egress]\nconnect_ports = [\"0\"]\n",
                "egress.connect_ports:",
            ),
            (
                "[proxy]\nlisten = \":3128\"\n",
                "proxy.listen: invalid socket address syntax",
            ),
        ];
        for (text, want) in cases {
            let err = parse(text).and_then(|c| check(&c)).unwrap_err().to_string();
            assert!(err.starts_with(want), "{text:?}: {err}");
        }
        // The listen hint names the forms that work.
        let err = parse("[admin]\nlisten = \"localhost:9090\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"0.0.0.0:3128\" (every interface)"), "{err}");
        // Levels and target=level filters are fine.
        for ok in ["debug", "info,modgate=debug", "modgate::access=off,warn"] {
            parse(&format!("[log]\nlevel = \"{ok}\"\n")).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
    }
}
