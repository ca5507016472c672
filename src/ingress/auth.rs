//! Proxy authentication (`Proxy-Authorization: Basic`), against Argon2 password hashes.
//!
//! Verified credentials are remembered for a few minutes by their SHA-256 digest, so the slow hash
//! runs once per client rather than once per CONNECT. Plain passwords are never stored or logged.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier};
use base64::Engine;
use http::HeaderMap;
use sha2::{Digest, Sha256};

use crate::config::AuthConfig;

/// Failed attempts from one address within a minute before it is refused without checking.
const MAX_FAILURES_PER_MINUTE: u32 = 20;

/// The outcome of a credential check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Valid credentials of this user.
    Allowed(Arc<str>),
    Denied,
    /// Too many recent failures from this address.
    Limited,
}

/// Checks proxy credentials.
#[derive(Clone)]
pub struct ProxyAuth {
    users: Arc<HashMap<String, String>>,
    realm: String,
    /// Verified credentials' digests, with the user they belong to.
    verified: moka::future::Cache<[u8; 32], Arc<str>>,
    failures: moka::future::Cache<std::net::IpAddr, Arc<std::sync::atomic::AtomicU32>>,
}

impl std::fmt::Debug for ProxyAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyAuth")
            .field("users", &self.users.len())
            .field("realm", &self.realm)
            .finish_non_exhaustive()
    }
}

impl ProxyAuth {
    /// `None` when no users are configured (authentication off).
    pub fn new(cfg: &AuthConfig) -> Option<ProxyAuth> {
        if cfg.users.is_empty() {
            return None;
        }
        Some(ProxyAuth {
            users: Arc::new(
                cfg.users
                    .iter()
                    .map(|u| (u.name.clone(), u.password_hash.clone()))
                    .collect(),
            ),
            realm: cfg.realm.clone(),
            verified: moka::future::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(300))
                .build(),
            failures: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(60))
                .build(),
        })
    }

    /// The `Proxy-Authenticate` challenge value.
    pub fn challenge(&self) -> String {
        format!("Basic realm=\"{}\"", self.realm.replace(['"', '\\'], ""))
    }

    /// The `WWW-Authenticate` challenges of the GOPROXY endpoint: Basic (netrc, `GOAUTH=netrc`,
    /// `https://user:password@host` URLs) and Bearer.
    pub fn endpoint_challenges(&self) -> [String; 2] {
        let realm = self.realm.replace(['"', '\\'], "");
        [
            format!("Basic realm=\"{realm}\""),
            format!("Bearer realm=\"{realm}\""),
        ]
    }

    /// Checks the proxy credentials in `headers` from `client`, rate-limiting repeated failures
    /// per address.
    pub async fn check(&self, headers: &HeaderMap, client: std::net::IpAddr) -> Verdict {
        self.check_value(headers.get(http::header::PROXY_AUTHORIZATION), client)
            .await
    }

    /// Checks an `Authorization` or `Proxy-Authorization` value from `client`: `Basic` with a
    /// user's name and password, or `Bearer` with `NAME:PASSWORD` or a password alone (tried
    /// against every user). Repeated failures are rate-limited per address.
    pub async fn check_value(
        &self,
        value: Option<&http::HeaderValue>,
        client: std::net::IpAddr,
    ) -> Verdict {
        use std::sync::atomic::Ordering;
        let failures = self
            .failures
            .get_with(client, async {
                Arc::new(std::sync::atomic::AtomicU32::new(0))
            })
            .await;
        if failures.load(Ordering::Relaxed) >= MAX_FAILURES_PER_MINUTE {
            return Verdict::Limited;
        }
        match self.valid(value).await {
            Some(user) => Verdict::Allowed(user),
            None => {
                failures.fetch_add(1, Ordering::Relaxed);
                Verdict::Denied
            }
        }
    }

    /// The user whose credentials `value` holds, if they are valid.
    async fn valid(&self, value: Option<&http::HeaderValue>) -> Option<Arc<str>> {
        let value = value?;
        let digest: [u8; 32] = Sha256::digest(value.as_bytes()).into();
        if let Some(user) = self.verified.get(&digest).await {
            return Some(user);
        }
        let (user, password) = match parse_credentials(value.as_bytes())? {
            Credentials::User(user, password) => (user, password),
            Credentials::Token(token) => {
                // A bare token is a password: the first user whose hash it matches.
                let users: Vec<(String, String)> = self
                    .users
                    .iter()
                    .map(|(u, h)| (u.clone(), h.clone()))
                    .collect();
                let user = tokio::task::spawn_blocking(move || {
                    users
                        .into_iter()
                        .find(|(_, h)| verify_password(&token, h))
                        .map(|(u, _)| Arc::<str>::from(u))
                })
                .await
                .ok()
                .flatten()?;
                self.verified.insert(digest, user.clone()).await;
                return Some(user);
            }
        };
        let Some(hash) = self.users.get(&user).cloned() else {
            // Spend the same effort as a real check so user names cannot be probed by timing.
            let _ = tokio::task::spawn_blocking(move || hash_password(&password)).await;
            return None;
        };
        let ok = tokio::task::spawn_blocking(move || verify_password(&password, &hash))
            .await
            .unwrap_or(false);
        if !ok {
            return None;
        }
        let user: Arc<str> = user.into();
        self.verified.insert(digest, user.clone()).await;
        Some(user)
    }
}

/// What an authorization header value names.
#[derive(Debug, PartialEq, Eq)]
enum Credentials {
    /// A user and password (`Basic`, or `Bearer NAME:PASSWORD`).
    User(String, String),
    /// `Bearer PASSWORD`.
    Token(String),
}

fn parse_credentials(value: &[u8]) -> Option<Credentials> {
    let value = std::str::from_utf8(value).ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        if token.is_empty() {
            return None;
        }
        return Some(match token.split_once(':') {
            Some((user, password)) => Credentials::User(user.to_string(), password.to_string()),
            None => Credentials::Token(token.to_string()),
        });
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(token)
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some(Credentials::User(user.to_string(), password.to_string()))
}

/// Hashes a password into an Argon2id PHC string (for `modgate auth hash`).
pub fn hash_password(password: &str) -> String {
    let salt = argon2::password_hash::SaltString::encode_b64(&rand::random::<[u8; 16]>())
        .expect("16 bytes is a valid salt length");
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("default Argon2 parameters are valid")
        .to_string()
}

/// Checks `password` against a PHC string; compares in constant time.
pub fn verify_password(password: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(hash) => Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .is_ok(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::UserConfig;

    fn header(user: &str, pass: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        h.insert(
            http::header::PROXY_AUTHORIZATION,
            format!("Basic {token}").parse().unwrap(),
        );
        h
    }

    #[tokio::test]
    async fn checks_credentials() {
        let auth = ProxyAuth::new(&AuthConfig {
            realm: "r".into(),
            users: vec![UserConfig {
                name: "ci".into(),
                password_hash: hash_password("s3cret"),
            }],
        })
        .unwrap();
        let ip: std::net::IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(
            auth.check(&header("ci", "s3cret"), ip).await,
            Verdict::Allowed("ci".into())
        );
        assert_eq!(
            auth.check(&header("ci", "s3cret"), ip).await,
            Verdict::Allowed("ci".into()),
            "cached"
        );
        assert_eq!(
            auth.check(&header("ci", "wrong"), ip).await,
            Verdict::Denied
        );
        assert_eq!(
            auth.check(&header("nobody", "s3cret"), ip).await,
            Verdict::Denied
        );
        assert_eq!(auth.check(&HeaderMap::new(), ip).await, Verdict::Denied);
        let mut bearer = HeaderMap::new();
        bearer.insert(
            http::header::PROXY_AUTHORIZATION,
            "Bearer x".parse().unwrap(),
        );
        assert_eq!(auth.check(&bearer, ip).await, Verdict::Denied);
        // After enough failures the address is refused without checking, even with good
        // credentials; other addresses are unaffected.
        for _ in 0..MAX_FAILURES_PER_MINUTE {
            auth.check(&HeaderMap::new(), ip).await;
        }
        assert_eq!(
            auth.check(&header("ci", "s3cret"), ip).await,
            Verdict::Limited
        );
        let other: std::net::IpAddr = "127.0.0.2".parse().unwrap();
        assert_eq!(
            auth.check(&header("ci", "s3cret"), other).await,
            Verdict::Allowed("ci".into())
        );
    }

    #[tokio::test]
    async fn bearer_tokens_name_a_user_or_are_a_password() {
        let auth = ProxyAuth::new(&AuthConfig {
            realm: "r".into(),
            users: vec![
                UserConfig {
                    name: "ci".into(),
                    password_hash: hash_password("tok-ci"),
                },
                UserConfig {
                    name: "dev".into(),
                    password_hash: hash_password("tok-dev"),
                },
            ],
        })
        .unwrap();
        let ip: std::net::IpAddr = "127.0.0.1".parse().unwrap();
        let check = |v: &'static str| {
            let auth = auth.clone();
            async move {
                auth.check_value(Some(&http::HeaderValue::from_static(v)), ip)
                    .await
            }
        };
        assert_eq!(
            check("Bearer tok-dev").await,
            Verdict::Allowed("dev".into())
        );
        assert_eq!(
            check("bearer ci:tok-ci").await,
            Verdict::Allowed("ci".into())
        );
        assert_eq!(check("Bearer dev:tok-ci").await, Verdict::Denied);
        assert_eq!(check("Bearer nope").await, Verdict::Denied);
        assert_eq!(check("Bearer ").await, Verdict::Denied);
        assert_eq!(check("Digest x").await, Verdict::Denied);
        assert_eq!(
            parse_credentials(b"Basic Y2k6YTpi"),
            Some(Credentials::User("ci".into(), "a:b".into())),
            "a password may hold a colon"
        );
    }

    #[test]
    fn no_users_means_no_auth() {
        assert!(ProxyAuth::new(&AuthConfig::default()).is_none());
    }
}
