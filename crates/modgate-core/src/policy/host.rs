//! Host names: normalising, validating, and sets of host-name globs.
//!
//! Host names compare case-insensitively; a trailing dot and IPv6 brackets are ignored. Globs use
//! globset syntax where `*` may span dots (`*.corp.example` also matches `a.b.corp.example`, but
//! not `corp.example`).

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

/// Why a host pattern is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostPatternError {
    #[error("empty host pattern")]
    Empty,
    #[error("{0:?} is not a host name pattern")]
    NotHost(String),
    #[error("bad host pattern {pattern:?}: {reason}")]
    Glob { pattern: String, reason: String },
    #[error("bad host patterns: {0}")]
    Set(String),
}

/// A set of host-name globs.
#[derive(Debug, Clone)]
pub struct HostSet {
    set: GlobSet,
    patterns: Vec<String>,
}

impl HostSet {
    /// Compiles `patterns`; the error text names the first bad pattern.
    pub fn new<'a>(
        patterns: impl IntoIterator<Item = &'a str>,
    ) -> Result<HostSet, HostPatternError> {
        let mut builder = GlobSetBuilder::new();
        let mut kept = vec![];
        for p in patterns {
            let norm = normalize_host(p);
            if norm.is_empty() {
                return Err(HostPatternError::Empty);
            }
            if norm.contains(['/', ':', ' ']) {
                return Err(HostPatternError::NotHost(p.to_string()));
            }
            let glob = GlobBuilder::new(&norm)
                .case_insensitive(true)
                .literal_separator(false)
                .backslash_escape(true)
                .build()
                .map_err(|e| HostPatternError::Glob {
                    pattern: p.to_string(),
                    reason: e.kind().to_string(),
                })?;
            builder.add(glob);
            kept.push(p.to_string());
        }
        let set = builder
            .build()
            .map_err(|e| HostPatternError::Set(e.to_string()))?;
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

/// Whether `host` is an IP address or a DNS name of letters, digits, `-` and `_`.
pub fn valid_host(host: &str) -> bool {
    if host.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}
