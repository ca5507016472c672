//! [`BaseUrl`]: where an upstream lives (scheme, authority, path prefix), parsed once.

use http::Uri;

/// Why an upstream URL is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("invalid URL {url:?}: {reason}")]
    Invalid { url: String, reason: String },
    #[error("{0:?} must start with https:// or http://")]
    Scheme(String),
    #[error("{0:?} has no host")]
    NoHost(String),
    #[error("{0:?} must not contain credentials")]
    Credentials(String),
    #[error("{0:?} must not have a query")]
    Query(String),
}

/// A parsed upstream base URL: scheme, authority and an optional path prefix without a trailing
/// slash. Used for `upstream.overrides`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrl {
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    prefix: String,
}

impl BaseUrl {
    /// Parses `http(s)://host[:port][/prefix]`.
    pub fn parse(s: &str) -> Result<BaseUrl, UrlError> {
        let uri: Uri = s
            .parse()
            .map_err(|e: http::uri::InvalidUri| UrlError::Invalid {
                url: s.to_string(),
                reason: e.to_string(),
            })?;
        let scheme = uri
            .scheme()
            .filter(|s| **s == http::uri::Scheme::HTTPS || **s == http::uri::Scheme::HTTP)
            .ok_or_else(|| UrlError::Scheme(s.to_string()))?
            .clone();
        let authority = uri
            .authority()
            .ok_or_else(|| UrlError::NoHost(s.to_string()))?
            .clone();
        if authority.as_str().contains('@') {
            return Err(UrlError::Credentials(s.to_string()));
        }
        if uri.query().is_some() {
            return Err(UrlError::Query(s.to_string()));
        }
        let prefix = uri.path().trim_end_matches('/').to_string();
        Ok(BaseUrl {
            scheme,
            authority,
            prefix,
        })
    }

    /// `https://host:port` for a host reached directly.
    pub fn https(host: &str, port: u16) -> Result<BaseUrl, UrlError> {
        let authority = if port == 443 {
            host.to_string()
        } else if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        BaseUrl::parse(&format!("https://{authority}"))
    }

    /// The URI for `path_and_query` (which starts with `/`) under this base.
    pub fn join(&self, path_and_query: &str) -> Result<Uri, http::Error> {
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(format!("{}{}", self.prefix, path_and_query))
            .build()
    }

    /// This URL with `over`'s scheme and authority, and `over`'s path prefix in front of its own.
    pub fn with_override(&self, over: &BaseUrl) -> BaseUrl {
        BaseUrl {
            scheme: over.scheme.clone(),
            authority: over.authority.clone(),
            prefix: format!("{}{}", over.prefix, self.prefix),
        }
    }

    pub fn scheme(&self) -> &http::uri::Scheme {
        &self.scheme
    }

    pub fn authority(&self) -> &http::uri::Authority {
        &self.authority
    }

    /// The path prefix (`""` or `/path`, no trailing slash).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The host part, for labels and logs.
    pub fn host(&self) -> &str {
        self.authority.host()
    }

    /// The port: written, or the scheme's (443 for https, 80 for http).
    pub fn port(&self) -> u16 {
        self.authority
            .port_u16()
            .unwrap_or(if self.scheme == http::uri::Scheme::HTTP {
                80
            } else {
                443
            })
    }
}

impl std::fmt::Display for BaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}{}", self.scheme, self.authority, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_join() {
        let b = BaseUrl::parse("https://mirror.example:8443/api/go/").unwrap();
        assert_eq!(
            b.join("/golang.org/x/mod/@v/list").unwrap().to_string(),
            "https://mirror.example:8443/api/go/golang.org/x/mod/@v/list"
        );
        let b = BaseUrl::https("proxy.golang.org", 443).unwrap();
        assert_eq!(
            b.join("/x?y=1").unwrap().to_string(),
            "https://proxy.golang.org/x?y=1"
        );
        assert_eq!(
            BaseUrl::https("::1", 8443).unwrap().to_string(),
            "https://[::1]:8443"
        );
    }

    #[test]
    fn base_url_rejects() {
        for bad in ["ftp://x", "x", "https://u:p@x/", "https://x/?q=1"] {
            assert!(BaseUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
