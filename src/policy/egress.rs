//! Connection-level policy: for a CONNECT (or plain-HTTP) target host, intercept, tunnel or deny.
//!
//! Pure: hosts in, a [`Decision`] out. Host names compare case-insensitively; a trailing dot is
//! ignored. Globs use globset syntax where `*` may span dots (`*.corp.example` also matches
//! `a.b.corp.example`, but not `corp.example`).

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use crate::config::EgressConfig;

/// A set of host-name globs.
#[derive(Debug, Clone)]
pub struct HostSet {
    set: GlobSet,
    patterns: Vec<String>,
}

impl HostSet {
    /// Compiles `patterns`; the error text names the first bad pattern.
    pub fn new<'a>(patterns: impl IntoIterator<Item = &'a str>) -> Result<HostSet, String> {
        let mut builder = GlobSetBuilder::new();
        let mut kept = vec![];
        for p in patterns {
            let norm = normalize_host(p);
            if norm.is_empty() {
                return Err("empty host pattern".to_string());
            }
            if norm.contains(['/', ':', ' ']) {
                return Err(format!("{p:?} is not a host name pattern"));
            }
            let glob = GlobBuilder::new(&norm)
                .case_insensitive(true)
                .literal_separator(false)
                .backslash_escape(true)
                .build()
                .map_err(|e| format!("bad host pattern {p:?}: {}", e.kind()))?;
            builder.add(glob);
            kept.push(p.to_string());
        }
        let set = builder
            .build()
            .map_err(|e| format!("bad host patterns: {e}"))?;
        Ok(HostSet {
            set,
            patterns: kept,
        })
    }

    /// Whether `host` matches any glob.
    pub fn matches(&self, host: &str) -> bool {
        self.set.is_match(normalize_host(host).as_str())
    }

    /// The first pattern that matches `host`, for explanations.
    pub fn matching_pattern(&self, host: &str) -> Option<&str> {
        let m = self.set.matches(normalize_host(host).as_str());
        m.first().map(|&i| self.patterns[i].as_str())
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }
}

/// Lower-cases and strips one trailing dot and IPv6 brackets.
pub fn normalize_host(host: &str) -> String {
    let h = host.strip_suffix('.').unwrap_or(host);
    let h = h
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(h);
    h.to_ascii_lowercase()
}

/// What to do with a connection to a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Terminate TLS with a leaf certificate and handle each request.
    Intercept,
    /// Copy bytes blindly (CONNECT) or forward unchanged (plain HTTP).
    Tunnel,
    /// Refuse; the reason is one line for the client.
    Deny(String),
}

impl Decision {
    /// Bounded label value for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Decision::Intercept => "intercept",
            Decision::Tunnel => "tunnel",
            Decision::Deny(_) => "deny",
        }
    }
}

/// Intercept set plus allow/deny lists.
#[derive(Debug, Clone)]
pub struct EgressPolicy {
    intercept: HostSet,
    allow: HostSet,
    deny: HostSet,
}

impl EgressPolicy {
    /// Builds the policy: `intercept` is every host (or glob) whose TLS modgate terminates.
    pub fn new<'a>(
        intercept: impl IntoIterator<Item = &'a str>,
        egress: &EgressConfig,
    ) -> Result<Self, String> {
        Ok(EgressPolicy {
            intercept: HostSet::new(intercept)?,
            allow: HostSet::new(egress.allow.iter().map(String::as_str))?,
            deny: HostSet::new(egress.deny.iter().map(String::as_str))?,
        })
    }

    /// Decision for a CONNECT to `host`.
    pub fn decide_connect(&self, host: &str) -> Decision {
        if self.intercept.matches(host) {
            return Decision::Intercept;
        }
        self.decide_forward(host)
    }

    /// Decision for a host that is not intercepted (tunnel or plain-HTTP forward).
    pub fn decide_forward(&self, host: &str) -> Decision {
        if let Some(p) = self.deny.matching_pattern(host) {
            return Decision::Deny(format!(
                "modgate: egress to {host} is denied by policy (egress.deny {p:?})"
            ));
        }
        if self.allow.matches(host) {
            Decision::Tunnel
        } else {
            Decision::Deny(format!(
                "modgate: egress to {host} is not allowed by policy (no egress.allow pattern matches)"
            ))
        }
    }

    /// The intercept pattern matching `host`: a bounded label naming its upstream.
    pub fn intercept_label(&self, host: &str) -> &str {
        self.intercept.matching_pattern(host).unwrap_or("other")
    }

    /// Whether `host` is in the intercept set.
    pub fn is_intercepted(&self, host: &str) -> bool {
        self.intercept.matches(host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(intercept: &[&str], allow: &[&str], deny: &[&str]) -> EgressPolicy {
        EgressPolicy::new(
            intercept.iter().copied(),
            &EgressConfig {
                allow: allow.iter().map(|s| s.to_string()).collect(),
                deny: deny.iter().map(|s| s.to_string()).collect(),
            },
        )
        .unwrap()
    }

    #[test]
    fn decisions() {
        let p = policy(
            &["proxy.golang.org", "*.corp.example"],
            &["*.example.com", "github.com"],
            &["evil.example.com"],
        );
        let table = [
            ("proxy.golang.org", "intercept"),
            ("PROXY.golang.org.", "intercept"),
            ("git.corp.example", "intercept"),
            ("corp.example", "deny"),
            ("github.com", "tunnel"),
            ("api.example.com", "tunnel"),
            ("evil.example.com", "deny"),
            ("EVIL.example.com", "deny"),
            ("example.org", "deny"),
        ];
        for (host, want) in table {
            assert_eq!(p.decide_connect(host).kind(), want, "{host}");
        }
    }

    #[test]
    fn default_allows_everything_not_denied() {
        let p = policy(&[], &["*"], &["*.internal"]);
        assert_eq!(p.decide_connect("example.org"), Decision::Tunnel);
        assert_eq!(p.decide_connect("127.0.0.1"), Decision::Tunnel);
        assert_eq!(p.decide_connect("[::1]"), Decision::Tunnel);
        assert!(
            matches!(p.decide_connect("db.internal"), Decision::Deny(r) if r.contains("egress.deny"))
        );
    }

    #[test]
    fn bad_patterns_are_refused() {
        assert!(HostSet::new(["a["]).is_err());
        assert!(HostSet::new([""]).is_err());
        assert!(HostSet::new(["example.com/path"]).is_err());
    }
}
