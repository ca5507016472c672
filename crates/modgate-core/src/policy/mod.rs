//! Pure decisions, no I/O: what happens to a connection (`egress`), what a request is
//! (`classify`), which rule applies (`patterns`) and so which route it takes (`route`).

pub mod classify;
pub mod egress;
pub mod goproxy;
pub mod host;
pub mod patterns;
pub mod private;
pub mod route;

use classify::{Classifier, ClassifyError, Target};
use egress::EgressPolicy;
use patterns::Patterns;
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
    /// `private.routes`: (module template, git URL template) pairs.
    pub routes: Vec<(String, String)>,
    /// `egress.allow` and `egress.deny`.
    pub egress_allow: Vec<String>,
    pub egress_deny: Vec<String>,
}

/// Why a policy could not be compiled; `key` is the configuration key at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct PolicyError {
    pub key: String,
    pub message: String,
}

impl PolicyError {
    fn new(key: impl Into<String>, message: impl Into<String>) -> PolicyError {
        PolicyError {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Every decision modgate makes, compiled once from configuration.
#[derive(Debug, Clone)]
pub struct Policy {
    pub egress: EgressPolicy,
    /// Every intercepted host pattern (configured, proxy, sumdb and private-route hosts).
    pub intercept_hosts: Vec<String>,
    pub classifier: Classifier,
    pub rules: Rules,
}

impl Policy {
    /// Compiles the policy; the error names the key at fault. Proxy hosts, checksum-database
    /// hosts and private-route hosts join the intercept set automatically.
    pub fn new(spec: &PolicySpec) -> Result<Policy, PolicyError> {
        let mut templates = vec![];
        for (i, (module, git)) in spec.routes.iter().enumerate() {
            templates.push(
                private::RouteTemplate::parse(module, git).map_err(|(field, e)| {
                    PolicyError::new(format!("private.routes[{i}].{field}"), e)
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
        let mut intercept: Vec<String> = spec.intercept_hosts.to_vec();
        intercept.extend(spec.proxy_hosts.iter().cloned());
        intercept.extend(private_routes.hosts());
        intercept.extend(
            spec.sumdb_names
                .iter()
                .map(|n| n.split('/').next().unwrap_or(n).to_string()),
        );
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
            classifier: Classifier::new(&spec.proxy_hosts, &spec.sumdb_names),
            rules: Rules {
                private: Patterns::parse(private.iter().map(String::as_str)).map_err(|e| {
                    // Route templates are valid patterns, so the fault is in modules.private.
                    PolicyError::new("modules.private", e)
                })?,
                routes: private_routes,
            },
        })
    }

    /// DNS names for the CA's name constraints: every intercepted host, with `*.x` globs as
    /// `x` (a DNS constraint covers subdomains). Other glob forms cannot be expressed.
    pub fn ca_name_constraints(&self) -> Result<Vec<String>, String> {
        self.intercept_hosts
            .iter()
            .map(|h| {
                let h = host::normalize_host(h);
                match h.strip_prefix("*.") {
                    Some(rest) if !rest.contains(['*', '?', '[', '{']) => Ok(rest.to_string()),
                    _ if h.contains(['*', '?', '[', '{']) => Err(format!(
                        "intercept host pattern {h:?} cannot be expressed as a name constraint (use exact names or \"*.domain\")"
                    )),
                    _ if h.parse::<std::net::IpAddr>().is_ok() => Err(format!(
                        "IP address {h} cannot be intercepted by a name-constrained CA"
                    )),
                    _ => Ok(h),
                }
            })
            .collect()
    }

    /// Classifies and routes one request.
    pub fn decide(
        &self,
        host: &str,
        method: &str,
        raw_path: &str,
        query: Option<&str>,
    ) -> Result<(Target, Route), ClassifyError> {
        let target = self.classifier.classify(host, method, raw_path, query)?;
        if let Target::Other = target
            && let Some(route) = self.private_other(host, raw_path)
        {
            return Ok((target, route));
        }
        let route = route::route(&target, &self.rules);
        Ok((target, route))
    }

    /// A request that is no module protocol (the go command's own GET of a repository URL
    /// after git failed, git's dumb protocol, a web page) for a repository a private route
    /// serves from another host: refused here, so the private name does not go on to the host
    /// the route stands in for (`github.com/acme/{repo}` served from an internal host). When
    /// the host is the route's own git host, nothing leaks and the request goes on.
    fn private_other(&self, host: &str, raw_path: &str) -> Option<Route> {
        if self.rules.routes.is_empty() || self.classifier.is_read_only_host(host) {
            return None;
        }
        let path = classify::percent_decode(raw_path).ok()?;
        let candidate = format!("{host}{}", path.trim_end_matches('/'));
        let repo = self.rules.routes.repo_for(&candidate)?;
        let git_host = http::Uri::try_from(repo.git_url.as_str())
            .ok()
            .and_then(|u| u.host().map(host::normalize_host));
        if git_host.as_deref() == Some(host) {
            return None;
        }
        Some(Route::PrivateRefused {
            message: format!(
                "not found: {candidate} is private (served by a private route from its internal host); modgate answers it with go-get discovery and git only, and does not forward other requests for it to {host}"
            ),
            rule: format!("private route for {}", repo.root),
            kind: "other",
        })
    }
}
