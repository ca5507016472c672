//! Pure decisions, no I/O: what happens to a connection (`egress`), what a request is
//! (`classify`), which rule applies (`patterns`) and so which route it takes (`route`).

pub mod address;
pub mod classify;
pub mod egress;
pub mod firewall;
pub mod goproxy;
pub mod host;
pub mod patterns;
pub mod private;
pub mod route;

use classify::{Classifier, ClassifyError, Target};
use egress::EgressPolicy;
use patterns::Patterns;
pub use route::Entry;
use route::{Route, Rules};

/// The configuration a [`Policy`] is compiled from (the gateway's configuration, in core terms).
#[derive(Debug, Clone, Default)]
pub struct PolicySpec {
    /// `intercept.hosts`.
    pub intercept_hosts: Vec<String>,
    /// `modules.proxy_hosts`.
    pub proxy_hosts: Vec<String>,
    /// `modules.private`: GOPRIVATE-style patterns.
    pub private: Vec<String>,
    /// `sumdb.dbs`' names.
    pub sumdb_names: Vec<String>,
    /// `sumdb.serve`: the name of modgate's own checksum database, answered locally.
    pub own_sumdb: Option<String>,
    /// `private.routes`: (module template, git URL template) pairs.
    pub routes: Vec<(String, String)>,
    /// `egress.allow` and `egress.deny`.
    pub egress_allow: Vec<String>,
    pub egress_deny: Vec<String>,
    /// `[firewall]`.
    pub firewall: firewall::FirewallSpec,
    /// `vulndb.url`: the Go vulnerability database mirrored (its host is intercepted).
    pub vulndb: Option<String>,
}

/// Why a policy could not be compiled; `key` is the configuration key at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct PolicyError {
    pub key: String,
    pub message: String,
}

impl PolicyError {
    fn new(key: impl Into<String>, cause: impl std::fmt::Display) -> PolicyError {
        PolicyError {
            key: key.into(),
            message: cause.to_string(),
        }
    }
}

/// Why the intercept set cannot become the CA's name constraints.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameConstraintError {
    #[error(
        "intercept host pattern {0:?} cannot be expressed as a name constraint (use exact names or \"*.domain\")"
    )]
    Glob(String),
    #[error("IP address {0} cannot be intercepted by a name-constrained CA")]
    Ip(String),
}

/// Every decision modgate makes, compiled once from configuration.
#[derive(Debug, Clone)]
pub struct Policy {
    pub egress: EgressPolicy,
    /// Every intercepted host pattern (configured, proxy, sumdb and private-route hosts).
    pub intercept_hosts: Vec<String>,
    pub classifier: Classifier,
    pub rules: Rules,
    /// The module firewall (`[firewall]`).
    pub firewall: firewall::Firewall,
}

impl Policy {
    /// Compiles the policy; the error names the key at fault. Proxy hosts, checksum-database
    /// hosts and private-route hosts join the intercept set automatically.
    pub fn new(spec: &PolicySpec) -> Result<Policy, PolicyError> {
        let mut templates = vec![];
        for (i, (module, git)) in spec.routes.iter().enumerate() {
            templates.push(
                private::RouteTemplate::parse(module, git).map_err(|e| {
                    PolicyError::new(format!("private.routes[{i}].{}", e.field()), e)
                })?,
            );
        }
        let private_routes = private::PrivateRoutes::new(templates);
        for (i, host) in spec.intercept_hosts.iter().enumerate() {
            host::HostSet::new([host.as_str()])
                .map_err(|e| PolicyError::new(format!("intercept.hosts[{i}]"), e))?;
        }
        for (key, list) in [
            ("egress.allow", &spec.egress_allow),
            ("egress.deny", &spec.egress_deny),
        ] {
            for (i, glob) in list.iter().enumerate() {
                host::HostSet::new([glob.as_str()])
                    .map_err(|e| PolicyError::new(format!("{key}[{i}]"), e))?;
            }
        }
        let vulndb = spec
            .vulndb
            .as_deref()
            .map(crate::base_url::BaseUrl::parse)
            .transpose()
            .map_err(|e| PolicyError::new("vulndb.url", e))?;
        let mut intercept: Vec<String> = spec.intercept_hosts.to_vec();
        intercept.extend(vulndb.iter().map(|b| host::normalize_host(b.host())));
        intercept.extend(spec.proxy_hosts.iter().cloned());
        intercept.extend(private_routes.hosts());
        intercept.extend(
            spec.sumdb_names
                .iter()
                .chain(&spec.own_sumdb)
                .map(|n| n.split('/').next().unwrap_or(n).to_string()),
        );
        let classified_dbs: Vec<String> = spec
            .sumdb_names
            .iter()
            .chain(&spec.own_sumdb)
            .cloned()
            .collect();
        let private = spec
            .private
            .iter()
            .cloned()
            .chain(private_routes.patterns())
            .collect::<Vec<_>>();
        Ok(Policy {
            egress: EgressPolicy::new(
                intercept.iter().map(String::as_str),
                &spec.egress_allow,
                &spec.egress_deny,
            )
            .map_err(|e| PolicyError::new("intercept.hosts", e))?,
            intercept_hosts: intercept.clone(),
            classifier: match &vulndb {
                Some(b) => Classifier::new(&spec.proxy_hosts, &classified_dbs)
                    .with_vulndb(&host::normalize_host(b.host()), b.prefix()),
                None => Classifier::new(&spec.proxy_hosts, &classified_dbs),
            },
            rules: Rules {
                private: Patterns::parse(private.iter().map(String::as_str)).map_err(|e| {
                    // Route templates are valid patterns, so the fault is in modules.private.
                    PolicyError::new("modules.private", e)
                })?,
                routes: private_routes,
                own_sumdb: spec.own_sumdb.clone(),
            },
            firewall: firewall::Firewall::new(&spec.firewall).map_err(|e| PolicyError {
                key: e.key,
                message: e.message,
            })?,
        })
    }

    /// DNS names for the CA's name constraints: every intercepted host, with `*.x` globs as
    /// `x` (a DNS constraint covers subdomains). Other glob forms cannot be expressed.
    pub fn ca_name_constraints(&self) -> Result<Vec<String>, NameConstraintError> {
        self.intercept_hosts
            .iter()
            .map(|h| {
                let h = host::normalize_host(h);
                match h.strip_prefix("*.") {
                    Some(rest) if !rest.contains(['*', '?', '[', '{']) => Ok(rest.to_string()),
                    _ if h.contains(['*', '?', '[', '{']) => Err(NameConstraintError::Glob(h)),
                    _ if h.parse::<std::net::IpAddr>().is_ok() => Err(NameConstraintError::Ip(h)),
                    _ => Ok(h),
                }
            })
            .collect()
    }

    /// Classifies and routes one request that reached modgate by `entry`. The never-leak
    /// decision is [`route::route_request`]'s, for every entry alike.
    pub fn decide(
        &self,
        entry: Entry,
        host: &str,
        method: &str,
        raw_path: &str,
        query: Option<&str>,
    ) -> Result<(Target, Route), ClassifyError> {
        let target = self.classifier.classify(host, method, raw_path, query)?;
        let request = route::RequestFacts {
            entry,
            host,
            raw_path,
            read_only_host: self.classifier.is_read_only_host(host),
        };
        let route = route::route_request(&target, &self.rules, &request);
        Ok((target, route))
    }

    /// Classifies and routes one request to modgate's GOPROXY endpoint, `raw_path` without the
    /// endpoint's prefix. `tls`: over TLS ([`Entry::Endpoint`]) or plain HTTP
    /// ([`Entry::PlainHttp`], where private modules are refused as on the proxy listener).
    pub fn decide_endpoint(
        &self,
        tls: bool,
        method: &str,
        raw_path: &str,
    ) -> Result<(Target, Route), ClassifyError> {
        let target = self.classifier.classify_endpoint(method, raw_path)?;
        let request = route::RequestFacts {
            entry: if tls {
                Entry::Endpoint
            } else {
                Entry::PlainHttp
            },
            host: ENDPOINT_HOST,
            raw_path,
            read_only_host: true,
        };
        let route = route::route_request(&target, &self.rules, &request);
        Ok((target, route))
    }
}

/// How the endpoint names itself in refusals (`not found: <host><path> is private...`).
pub const ENDPOINT_HOST: &str = "modgate's GOPROXY endpoint ";

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy::new(&PolicySpec {
            proxy_hosts: vec!["proxy.golang.org".into()],
            sumdb_names: vec!["sum.golang.org".into()],
            private: vec!["*.corp.example".into()],
            routes: vec![(
                "github.com/acme/{repo}".into(),
                "https://git.internal.example/acme/{repo}.git".into(),
            )],
            egress_allow: vec!["*".into()],
            own_sumdb: Some("sum.corp.example".into()),
            ..PolicySpec::default()
        })
        .unwrap()
    }

    /// The never-leak decision for every way a request reaches modgate: after CONNECT and in
    /// gateway mode over TLS (both intercepted), and in plain HTTP on the proxy listener or a
    /// redirected port 80 (both forwarded unless route keeps them). A private module path is
    /// answered by a private route (over TLS only) or refused; it never takes a public route.
    #[test]
    fn one_never_leak_decision_for_every_entry_point() {
        let p = policy();
        let entries = [
            ("CONNECT + TLS", Entry::Intercepted),
            ("gateway mode, TLS", Entry::Intercepted),
            ("plain HTTP on the proxy listener", Entry::PlainHttp),
            ("gateway mode, port 80", Entry::PlainHttp),
        ];
        // (host, path, query, route over TLS, route in plain HTTP)
        let table = [
            (
                "proxy.golang.org",
                "/git.corp.example/x/@v/list",
                None,
                "private_refused",
                "private_refused",
            ),
            (
                "proxy.golang.org",
                "/git.corp.example/x/@v/v1.0.0.zip",
                None,
                "private_refused",
                "private_refused",
            ),
            (
                "sum.golang.org",
                "/lookup/git.corp.example/x@v1.0.0",
                None,
                "private_refused",
                "private_refused",
            ),
            (
                "sum.golang.org",
                "/lookup/github.com/acme/tool@v1.0.0",
                None,
                "private_refused",
                "private_refused",
            ),
            (
                "proxy.golang.org",
                "/github.com/acme/tool/@v/list",
                None,
                "private",
                "private_refused",
            ),
            (
                "github.com",
                "/acme/tool",
                Some("go-get=1"),
                "goget_answer",
                "private_refused",
            ),
            (
                "github.com",
                "/acme/tool.git/info/refs",
                Some("service=git-upload-pack"),
                "git_forward",
                "private_refused",
            ),
            // The go command's own GET of the repository URL: the host a route stands in for.
            (
                "github.com",
                "/acme/tool",
                None,
                "private_refused",
                "private_refused",
            ),
            // The same on the route's own git host leaks nothing.
            (
                "git.internal.example",
                "/acme/tool",
                None,
                "forward",
                "forward",
            ),
            (
                "proxy.golang.org",
                "/golang.org/x/mod/@v/list",
                None,
                "public",
                "public",
            ),
            ("github.com", "/golang/go", None, "forward", "forward"),
            // modgate's own checksum database answers private and public lookups itself, on
            // its own host and under a proxy host; in plain HTTP it is refused, never forwarded.
            (
                "sum.corp.example",
                "/lookup/git.corp.example/x@v1.0.0",
                None,
                "own_sumdb",
                "private_refused",
            ),
            (
                "proxy.golang.org",
                "/sumdb/sum.corp.example/lookup/github.com/acme/tool@v1.0.0",
                None,
                "own_sumdb",
                "private_refused",
            ),
            (
                "proxy.golang.org",
                "/sumdb/sum.corp.example/tile/8/0/000",
                None,
                "own_sumdb",
                "private_refused",
            ),
            (
                "sum.corp.example",
                "/latest",
                None,
                "own_sumdb",
                "private_refused",
            ),
        ];
        for (name, entry) in entries {
            for (host, path, query, tls, plain) in table {
                let want = match entry {
                    Entry::Intercepted | Entry::Endpoint => tls,
                    Entry::PlainHttp => plain,
                };
                let (_, route) = p.decide(entry, host, "GET", path, query).unwrap();
                assert_eq!(route.name(), want, "{name}: {host}{path}?{query:?}");
            }
        }
        // modgate's GOPROXY endpoint reads every path as a proxy host does, over TLS or in
        // plain HTTP, with the same never-leak outcome.
        let mut proxy_rows = 0;
        for (host, path, _, tls, plain) in table {
            if host != "proxy.golang.org" {
                continue;
            }
            proxy_rows += 1;
            for (over_tls, want) in [(true, tls), (false, plain)] {
                let (_, route) = p.decide_endpoint(over_tls, "GET", path).unwrap();
                assert_eq!(route.name(), want, "endpoint (tls {over_tls}): {path}");
            }
        }
        assert!(proxy_rows >= 5);
    }

    /// The endpoint answers only the module protocols: a path a proxy host would not serve is
    /// refused locally (nothing is forwarded), and so is a write.
    #[test]
    fn the_endpoint_serves_only_reads_of_the_module_protocols() {
        let p = policy();
        for path in ["/golang/go", "/", "/sumdb/other.example/supported"] {
            let e = p.decide_endpoint(true, "GET", path).unwrap_err();
            assert!(matches!(e, ClassifyError::NotFound(_)), "{path}: {e:?}");
        }
        let e = p
            .decide_endpoint(true, "POST", "/golang.org/x/mod/@v/list")
            .unwrap_err();
        assert!(matches!(e, ClassifyError::Method(_)), "{e:?}");
        let (_, route) = p
            .decide_endpoint(true, "GET", "/github.com/acme/tool/@v/v1.0.0.zip")
            .unwrap();
        assert_eq!(route.name(), "private");
        let (_, route) = p
            .decide_endpoint(false, "GET", "/github.com/acme/tool/@v/v1.0.0.zip")
            .unwrap();
        assert_eq!(route.name(), "private_refused");
        let (_, route) = p
            .decide_endpoint(true, "GET", "/sumdb/sum.golang.org/supported")
            .unwrap();
        assert_eq!(route.name(), "sumdb");
    }
}
