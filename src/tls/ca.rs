//! The interception CA: created once on disk, then signs short-lived leaf certificates per host.
//!
//! CA: ECDSA P-256, BasicConstraints CA pathlen 0 and KeyUsage keyCertSign|cRLSign (both
//! critical), 10 years. The key file is created 0600 with O_EXCL and refused if group- or
//! world-readable. Leaves get their own P-256 key, a 128-bit random serial, one SAN, EKU
//! serverAuth, and are backdated by an hour. [`LeafCache`] issues each host's leaf once, even
//! when many first connections arrive together.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType, SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::telemetry::metrics::Metrics;

/// File name of the CA certificate inside the CA directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA private key inside the CA directory.
pub const CA_KEY_FILE: &str = "ca-key.pem";

const CA_VALIDITY: Duration = Duration::from_secs(3650 * 24 * 3600);
const BACKDATE: Duration = Duration::from_secs(3600);

/// CA errors.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "refusing to use CA key {path}: it is readable by group or others (mode {mode:o}); run `chmod 600 {path}`"
    )]
    KeyPermissions { path: PathBuf, mode: u32 },
    #[error("CA directory {dir} has {present} but not {missing}; restore it or remove both")]
    Incomplete {
        dir: PathBuf,
        present: &'static str,
        missing: &'static str,
    },
    #[error("a CA already exists in {0}; remove it first to make a new one")]
    Exists(PathBuf),
    #[error("no CA in {0}; run `modgate ca init` or start `modgate serve` once")]
    Missing(PathBuf),
    #[error("{path}: invalid CA material: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CaError + '_ {
    move |source| CaError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A loaded CA: its certificate (PEM and DER) and the issuer used to sign leaves.
pub struct CertAuthority {
    dir: PathBuf,
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    not_after: OffsetDateTime,
}

impl std::fmt::Debug for CertAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertAuthority")
            .field("dir", &self.dir)
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

impl CertAuthority {
    /// Creates a new CA in `dir`; fails if one (or half of one) is already there.
    pub fn init(dir: &Path) -> Result<CertAuthority, CaError> {
        Self::init_constrained(dir, None)
    }

    /// Creates a new CA; with `permitted`, its name constraints limit it to those DNS names (and
    /// their subdomains) and forbid IP addresses, so the key cannot vouch for anything else.
    pub fn init_constrained(
        dir: &Path,
        permitted: Option<&[String]>,
    ) -> Result<CertAuthority, CaError> {
        let (cert_path, key_path) = paths(dir);
        if cert_path.exists() || key_path.exists() {
            return Err(CaError::Exists(dir.to_path_buf()));
        }
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        let tag: [u8; 4] = rand::random();
        dn.push(
            DnType::CommonName,
            format!("modgate interception CA {}", hex(&tag)),
        );
        dn.push(DnType::OrganizationName, "modgate");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = now - BACKDATE;
        params.not_after = now + CA_VALIDITY;
        params.serial_number = Some(random_serial());
        if let Some(names) = permitted {
            params.name_constraints = Some(rcgen::NameConstraints {
                permitted_subtrees: names
                    .iter()
                    .map(|n| rcgen::GeneralSubtree::DnsName(n.clone()))
                    .collect(),
                excluded_subtrees: vec![
                    rcgen::GeneralSubtree::IpAddress(rcgen::CidrSubnet::V4([0; 4], [0; 4])),
                    rcgen::GeneralSubtree::IpAddress(rcgen::CidrSubnet::V6([0; 16], [0; 16])),
                ],
            });
        }
        let cert = params.self_signed(&key)?;

        // Key first, exclusively and private; then the certificate.
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&key_path)
            .map_err(io_err(&key_path))?;
        f.write_all(key.serialize_pem().as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(io_err(&key_path))?;
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&cert_path)
            .map_err(io_err(&cert_path))?;
        f.write_all(cert.pem().as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(io_err(&cert_path))?;
        Self::load(dir)
    }

    /// Loads the CA in `dir`, creating one (constrained to `permitted`, if given) if the
    /// directory holds none.
    pub fn load_or_init(
        dir: &Path,
        permitted: Option<&[String]>,
    ) -> Result<(CertAuthority, bool), CaError> {
        let (cert_path, key_path) = paths(dir);
        if !cert_path.exists() && !key_path.exists() {
            return Ok((Self::init_constrained(dir, permitted)?, true));
        }
        Ok((Self::load(dir)?, false))
    }

    /// Loads the CA in `dir`, checking the key file's permissions.
    pub fn load(dir: &Path) -> Result<CertAuthority, CaError> {
        let (cert_path, key_path) = paths(dir);
        match (cert_path.exists(), key_path.exists()) {
            (false, false) => return Err(CaError::Missing(dir.to_path_buf())),
            (true, false) => {
                return Err(CaError::Incomplete {
                    dir: dir.to_path_buf(),
                    present: CA_CERT_FILE,
                    missing: CA_KEY_FILE,
                });
            }
            (false, true) => {
                return Err(CaError::Incomplete {
                    dir: dir.to_path_buf(),
                    present: CA_KEY_FILE,
                    missing: CA_CERT_FILE,
                });
            }
            (true, true) => {}
        }
        let meta = std::fs::metadata(&key_path).map_err(io_err(&key_path))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(CaError::KeyPermissions {
                path: key_path,
                mode,
            });
        }
        let key_pem = std::fs::read_to_string(&key_path).map_err(io_err(&key_path))?;
        let cert_pem = std::fs::read_to_string(&cert_path).map_err(io_err(&cert_path))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| CaError::Invalid {
            path: key_path.clone(),
            message: e.to_string(),
        })?;
        let invalid_cert = |message: String| CaError::Invalid {
            path: cert_path.clone(),
            message,
        };
        let cert_der = rustls_pemfile::certs(&mut cert_pem.as_bytes())
            .next()
            .ok_or_else(|| invalid_cert("no CERTIFICATE block".into()))?
            .map_err(|e| invalid_cert(e.to_string()))?;
        let (_, parsed) = x509_parser::parse_x509_certificate(&cert_der)
            .map_err(|e| invalid_cert(e.to_string()))?;
        if parsed.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(invalid_cert(format!(
                "certificate does not match the key in {}",
                key_path.display()
            )));
        }
        let not_after = parsed.validity().not_after.to_datetime();
        let issuer =
            Issuer::from_ca_cert_der(&cert_der, key).map_err(|e| invalid_cert(e.to_string()))?;
        Ok(CertAuthority {
            dir: dir.to_path_buf(),
            cert_pem,
            cert_der,
            issuer,
            not_after,
        })
    }

    /// Path of the CA certificate (what agents trust).
    pub fn cert_path(&self) -> PathBuf {
        self.dir.join(CA_CERT_FILE)
    }

    /// The CA certificate in PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate in DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The certificate's subject, as RFC 4514 text.
    pub fn subject(&self) -> String {
        x509_parser::parse_x509_certificate(self.cert_der.as_ref())
            .map(|(_, c)| c.subject().to_string())
            .unwrap_or_default()
    }

    /// When the CA certificate expires.
    pub fn not_after(&self) -> time::OffsetDateTime {
        self.not_after
    }

    /// SHA-256 fingerprint of the CA certificate, as colon-separated upper-case hex.
    pub fn fingerprint(&self) -> String {
        let digest = Sha256::digest(self.cert_der.as_ref());
        digest
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":")
    }

    /// Signs a new leaf certificate for `host` valid for `validity` (capped at the CA's own end).
    pub fn issue_leaf(
        &self,
        host: &str,
        validity: Duration,
    ) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, host);
        params.distinguished_name = dn;
        params.subject_alt_names = vec![match host.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(host.try_into()?),
        }];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        params.not_before = now - BACKDATE;
        params.not_after =
            (now + validity.min(crate::config::MAX_LEAF_VALIDITY)).min(self.not_after);
        let cert = params.signed_by(&key, &self.issuer)?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((cert.der().clone(), key_der))
    }
}

/// Paths of the certificate and key inside `dir`.
pub fn paths(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join(CA_CERT_FILE), dir.join(CA_KEY_FILE))
}

fn random_serial() -> SerialNumber {
    let bytes: [u8; 16] = rand::random();
    SerialNumber::from_slice(&bytes)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Per-host TLS server configurations holding a leaf certificate, issued once per host.
#[derive(Clone)]
pub struct LeafCache {
    ca: Arc<CertAuthority>,
    validity: Duration,
    cache: moka::future::Cache<String, Arc<rustls::ServerConfig>>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for LeafCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeafCache")
            .field("entries", &self.cache.entry_count())
            .finish_non_exhaustive()
    }
}

impl LeafCache {
    /// A cache that re-issues a host's leaf when half its validity has passed.
    pub fn new(ca: Arc<CertAuthority>, validity: Duration, metrics: Arc<Metrics>) -> LeafCache {
        LeafCache {
            ca,
            validity,
            cache: moka::future::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(validity / 2)
                .build(),
            metrics,
        }
    }

    /// The TLS configuration for `host` (lower-case, no trailing dot), signing a leaf on first use,
    /// offering HTTP/2 and HTTP/1.1 by ALPN, or HTTP/1.1 only when `h2` is false. Concurrent first
    /// calls for one host sign once.
    pub async fn server_config(
        &self,
        host: &str,
        h2: bool,
    ) -> Result<Arc<rustls::ServerConfig>, Arc<CaError>> {
        let key = if h2 {
            host.to_string()
        } else {
            format!("{host} http/1.1")
        };
        self.cache
            .try_get_with_by_ref(&key, async {
                let ca = self.ca.clone();
                let host_owned = host.to_string();
                let validity = self.validity;
                let issued =
                    tokio::task::spawn_blocking(move || ca.issue_leaf(&host_owned, validity))
                        .await
                        .map_err(|e| CaError::Invalid {
                            path: PathBuf::new(),
                            message: format!("signing task failed: {e}"),
                        })
                        .and_then(|r| r);
                let (cert, key) = match issued {
                    Ok(v) => v,
                    Err(e) => {
                        self.metrics.cert_errors.inc();
                        return Err(e);
                    }
                };
                self.metrics.certs_issued.inc();
                tracing::debug!(host, "issued leaf certificate");
                let mut cfg =
                    rustls::ServerConfig::builder_with_provider(crate::tls::tls_provider())
                        .with_safe_default_protocol_versions()
                        .expect("ring supports the default protocol versions")
                        .with_no_client_auth()
                        .with_single_cert(vec![cert], key)
                        .map_err(|e| CaError::Invalid {
                            path: PathBuf::new(),
                            message: e.to_string(),
                        })?;
                cfg.alpn_protocols = if h2 {
                    vec![b"h2".to_vec(), b"http/1.1".to_vec()]
                } else {
                    vec![b"http/1.1".to_vec()]
                };
                Ok(Arc::new(cfg))
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_then_load_and_refuse_twice() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertAuthority::init(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join(CA_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = CertAuthority::load(dir.path()).unwrap();
        assert_eq!(ca.fingerprint(), again.fingerprint());
        assert!(matches!(
            CertAuthority::init(dir.path()),
            Err(CaError::Exists(_))
        ));
    }

    #[test]
    fn group_readable_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        CertAuthority::init(dir.path()).unwrap();
        let key = dir.path().join(CA_KEY_FILE);
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = CertAuthority::load(dir.path()).unwrap_err();
        assert!(
            matches!(err, CaError::KeyPermissions { mode: 0o640, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("chmod 600"));
    }

    #[test]
    fn name_constraints_limit_what_the_ca_can_vouch_for() {
        use rustls::client::danger::ServerCertVerifier;
        let dir = tempfile::tempdir().unwrap();
        let permitted = vec!["proxy.golang.org".to_string(), "corp.example".to_string()];
        let ca = CertAuthority::init_constrained(dir.path(), Some(&permitted)).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.cert_der().clone()).unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            crate::tls::tls_provider(),
        )
        .build()
        .unwrap();
        let now = rustls::pki_types::UnixTime::now();
        for (host, ok) in [
            ("proxy.golang.org", true),
            ("git.corp.example", true),
            ("evil.example", false),
            ("127.0.0.1", false),
        ] {
            let (leaf, _) = ca.issue_leaf(host, Duration::from_secs(86400)).unwrap();
            let name = rustls::pki_types::ServerName::try_from(host.to_string()).unwrap();
            let res = verifier.verify_server_cert(&leaf, &[], &name, &[], now);
            assert_eq!(res.is_ok(), ok, "{host}: {res:?}");
        }
    }

    #[test]
    fn half_a_ca_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        CertAuthority::init(dir.path()).unwrap();
        std::fs::remove_file(dir.path().join(CA_CERT_FILE)).unwrap();
        assert!(matches!(
            CertAuthority::load_or_init(dir.path(), None),
            Err(CaError::Incomplete { .. })
        ));
    }
}
