//! Connection-level policy: for a CONNECT (or plain-HTTP) target host, intercept, tunnel or deny.
//!
//! Pure: hosts in, a [`Decision`] out. Host names compare case-insensitively; a trailing dot is
//! ignored. Globs use globset syntax where `*` may span dots (`*.corp.example` also matches
//! `a.b.corp.example`, but not `corp.example`).

use super::host::{HostPatternError, HostSet};

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
        allow: &[String],
        deny: &[String],
    ) -> Result<Self, HostPatternError> {
        Ok(EgressPolicy {
            intercept: HostSet::new(intercept)?,
            allow: HostSet::new(allow.iter().map(String::as_str))?,
            deny: HostSet::new(deny.iter().map(String::as_str))?,
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
            &allow.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            &deny.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
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
