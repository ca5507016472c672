//! Pure decisions, no I/O: what happens to a connection (`egress`), what a request is
//! (`classify`), which rule applies (`patterns`) and so which route it takes (`route`).

pub mod classify;
pub mod egress;
pub mod patterns;
pub mod private;
pub mod route;

use crate::config::Config;
use classify::{Classifier, ClassifyError, Target};
use egress::EgressPolicy;
use patterns::Patterns;
use route::{Route, Rules};

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
    /// Compiles the policy from validated configuration. Proxy hosts and checksum-database hosts
    /// join the intercept set automatically.
    pub fn new(config: &Config) -> Result<Policy, String> {
        let sumdb_names: Vec<String> = config.sumdb.dbs.keys().cloned().collect();
        let mut templates = vec![];
        for r in &config.private.routes {
            templates.push(
                private::RouteTemplate::parse(&r.module, &r.git)
                    .map_err(|(field, e)| format!("private.routes.{field}: {e}"))?,
            );
        }
        let private_routes = private::PrivateRoutes::new(templates);
        let mut intercept: Vec<String> = config.intercept.hosts.clone();
        intercept.extend(config.modules.proxy_hosts.iter().cloned());
        intercept.extend(private_routes.hosts());
        intercept.extend(
            sumdb_names
                .iter()
                .map(|n| n.split('/').next().unwrap_or(n).to_string()),
        );
        Ok(Policy {
            egress: EgressPolicy::new(intercept.iter().map(String::as_str), &config.egress)?,
            intercept_hosts: intercept.clone(),
            classifier: Classifier::new(&config.modules.proxy_hosts, &sumdb_names),
            rules: Rules {
                private: Patterns::parse(
                    config
                        .modules
                        .private
                        .entries()
                        .into_iter()
                        .map(str::to_string)
                        .chain(private_routes.patterns())
                        .collect::<Vec<_>>()
                        .iter()
                        .map(String::as_str),
                )?,
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
                let h = egress::normalize_host(h);
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
            .and_then(|u| u.host().map(egress::normalize_host));
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
