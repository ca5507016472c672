//! `classify`: what an intercepted request is, decided from its host, method, path and query
//! alone. Paths are percent-decoded, then bang-unescaped, then validated with Go's rules; what
//! fails gets a [`ClassifyError`] with a plain-text reason and goes nowhere. Pure.

use crate::gomod::path::{ModulePath, check_import_path, check_path_major, unescape_version};
use crate::gomod::sumdb::Tile;
use crate::gomod::version;

/// A GOPROXY operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyOp {
    /// `@v/list`
    List,
    /// `@v/<version>.info` for a canonical version (immutable).
    Info(String),
    /// `@v/<query>.info` for a branch, tag, commit prefix or other non-canonical name (mutable).
    Query(String),
    /// `@v/<version>.mod`
    Mod(String),
    /// `@v/<version>.zip`
    Zip(String),
    /// `@latest`
    Latest,
}

impl ProxyOp {
    /// Bounded label.
    pub fn name(&self) -> &'static str {
        match self {
            ProxyOp::List => "list",
            ProxyOp::Info(_) => "info",
            ProxyOp::Query(_) => "query",
            ProxyOp::Mod(_) => "mod",
            ProxyOp::Zip(_) => "zip",
            ProxyOp::Latest => "latest",
        }
    }

    /// The version or query named, if any.
    pub fn version(&self) -> Option<&str> {
        match self {
            ProxyOp::Info(v) | ProxyOp::Query(v) | ProxyOp::Mod(v) | ProxyOp::Zip(v) => Some(v),
            ProxyOp::List | ProxyOp::Latest => None,
        }
    }
}

/// A checksum-database operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SumDbOp {
    /// `/sumdb/<name>/supported` (proxy hosts only).
    Supported,
    /// `/latest`
    Latest,
    /// `/lookup/<module>@<version>`
    Lookup { module: ModulePath, version: String },
    /// `/tile/...`
    Tile(Tile),
}

impl SumDbOp {
    /// Bounded label.
    pub fn name(&self) -> &'static str {
        match self {
            SumDbOp::Supported => "supported",
            SumDbOp::Latest => "latest",
            SumDbOp::Lookup { .. } => "lookup",
            SumDbOp::Tile(t) if t.l == -1 => "data_tile",
            SumDbOp::Tile(_) => "tile",
        }
    }
}

/// What a request is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A GOPROXY protocol call on a proxy host.
    GoProxy { module: ModulePath, op: ProxyOp },
    /// A checksum-database call for the configured database `db`.
    SumDb { db: String, op: SumDbOp },
    /// `?go-get=1` discovery for an import path.
    GoGet { path: String },
    /// Git smart-HTTP for the repository at `repo` (host and path, without `/info/refs` etc.).
    Git { repo: String, service: &'static str },
    /// A file of the Go vulnerability database (`vulndb.url`).
    VulnDb {
        /// The database's host.
        db: String,
        path: crate::cache_key::VulnDbPath,
    },
    /// Anything else on an intercepted host.
    Other,
}

impl Target {
    /// Bounded label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Target::GoProxy { .. } => "goproxy",
            Target::SumDb { .. } => "sumdb",
            Target::GoGet { .. } => "goget",
            Target::Git { .. } => "git",
            Target::VulnDb { .. } => "vulndb",
            Target::Other => "other",
        }
    }

    /// The module or import path the request is about, if any.
    pub fn module_path(&self) -> Option<&str> {
        match self {
            Target::GoProxy { module, .. } => Some(module.as_str()),
            Target::SumDb {
                op: SumDbOp::Lookup { module, .. },
                ..
            } => Some(module.as_str()),
            Target::GoGet { path } => Some(path),
            Target::Git { repo, .. } => Some(repo.strip_suffix(".git").unwrap_or(repo)),
            _ => None,
        }
    }
}

/// Why a request was not classified; the text is for the go command's user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClassifyError {
    /// Malformed input: 400.
    #[error("{0}")]
    BadRequest(String),
    /// Well-formed but names nothing that can exist: 404 (lets GOPROXY lists fall through).
    #[error("{0}")]
    NotFound(String),
    /// Not GET or HEAD on a read-only protocol: 405.
    #[error("{0}")]
    Method(String),
}

/// Hosts that speak each protocol.
#[derive(Debug, Clone, Default)]
pub struct Classifier {
    /// GOPROXY hosts (lower-case).
    proxy_hosts: Vec<String>,
    /// Checksum-database names (`host` or `host/path`), lower-case host.
    sumdbs: Vec<String>,
    /// The vulnerability database's host and path prefix (`""` or `/path`).
    vulndb: Option<(String, String)>,
}

impl Classifier {
    pub fn new(proxy_hosts: &[String], sumdbs: &[String]) -> Classifier {
        Classifier {
            proxy_hosts: proxy_hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
            sumdbs: sumdbs.to_vec(),
            vulndb: None,
        }
    }

    /// Also classifies the vulnerability database at `host` under `prefix` (`""` or `/path`).
    pub fn with_vulndb(mut self, host: &str, prefix: &str) -> Classifier {
        self.vulndb = Some((
            host.to_ascii_lowercase(),
            prefix.trim_end_matches('/').to_string(),
        ));
        self
    }

    /// The vulnerability database's host, if one is classified.
    pub fn vulndb_host(&self) -> Option<&str> {
        self.vulndb.as_ref().map(|(h, _)| h.as_str())
    }

    /// Whether `host` is a GOPROXY host.
    pub fn is_proxy_host(&self, host: &str) -> bool {
        self.proxy_hosts.iter().any(|h| h == host)
    }

    /// Whether `host` answers only reads: a GOPROXY or checksum-database host.
    pub fn is_read_only_host(&self, host: &str) -> bool {
        self.is_proxy_host(host)
            || self
                .sumdbs
                .iter()
                .any(|db| db.split('/').next() == Some(host))
            || self.vulndb_host() == Some(host)
    }

    /// Classifies one request. `host` is lower-case without port; `raw_path` is as received
    /// (percent-encoded, starting with `/`).
    pub fn classify(
        &self,
        host: &str,
        method: &str,
        raw_path: &str,
        query: Option<&str>,
    ) -> Result<Target, ClassifyError> {
        let path = percent_decode(raw_path)?;
        if self.is_proxy_host(host) {
            read_only(method)?;
            if let Some(rest) = path.strip_prefix("/sumdb/") {
                return self.classify_sumdb_under_proxy(rest);
            }
            return classify_goproxy(&path);
        }
        for db in &self.sumdbs {
            let (db_host, db_prefix) = match db.split_once('/') {
                Some((h, p)) => (h, format!("/{p}")),
                None => (db.as_str(), String::new()),
            };
            if db_host == host
                && let Some(rest) = path.strip_prefix(&db_prefix)
                && let Some(rest) = rest.strip_prefix('/')
            {
                read_only(method)?;
                let op = sumdb_op(rest, false).ok_or_else(|| {
                    ClassifyError::NotFound(format!(
                        "not found: {path:?} is not a checksum database request"
                    ))
                })??;
                return Ok(Target::SumDb { db: db.clone(), op });
            }
        }
        if let Some((db_host, prefix)) = &self.vulndb
            && db_host == host
            && let Some(rest) = path.strip_prefix(prefix.as_str())
            && let Some(rest) = rest.strip_prefix('/')
        {
            read_only(method)?;
            let path = crate::cache_key::VulnDbPath::new(rest).ok_or_else(|| {
                ClassifyError::NotFound(format!(
                    "not found: {rest:?} is not a file of the Go vulnerability database"
                ))
            })?;
            return Ok(Target::VulnDb {
                db: db_host.clone(),
                path,
            });
        }
        if query.is_some_and(has_go_get) {
            let full = format!("{host}{}", path.trim_end_matches('/'));
            check_import_path(&full).map_err(|e| ClassifyError::BadRequest(e.to_string()))?;
            return Ok(Target::GoGet { path: full });
        }
        if let Some(t) = classify_git(host, &path, query) {
            return Ok(t);
        }
        Ok(Target::Other)
    }

    /// Classifies a request to modgate's own GOPROXY endpoint, whose path (its prefix
    /// removed) is read as on a GOPROXY host: GOPROXY calls and `/sumdb/<name>/...`.
    pub fn classify_endpoint(&self, method: &str, raw_path: &str) -> Result<Target, ClassifyError> {
        let path = percent_decode(raw_path)?;
        read_only(method)?;
        if let Some(rest) = path.strip_prefix("/sumdb/") {
            return self.classify_sumdb_under_proxy(rest);
        }
        classify_goproxy(&path)
    }

    fn classify_sumdb_under_proxy(&self, rest: &str) -> Result<Target, ClassifyError> {
        for db in &self.sumdbs {
            if let Some(op_path) = rest.strip_prefix(db.as_str())
                && let Some(op_path) = op_path.strip_prefix('/')
            {
                let op = sumdb_op(op_path, true).ok_or_else(|| {
                    ClassifyError::NotFound(format!(
                        "not found: {op_path:?} is not a checksum database request"
                    ))
                })??;
                return Ok(Target::SumDb { db: db.clone(), op });
            }
        }
        Err(ClassifyError::NotFound(format!(
            "not found: checksum database {:?} is not proxied by modgate",
            rest.rsplit_once('/').map(|(n, _)| n).unwrap_or(rest)
        )))
    }
}

fn read_only(method: &str) -> Result<(), ClassifyError> {
    if method == "GET" || method == "HEAD" {
        Ok(())
    } else {
        Err(ClassifyError::Method(format!(
            "method {method} not allowed: the GOPROXY and checksum-database protocols are read-only"
        )))
    }
}

fn has_go_get(query: &str) -> bool {
    query.split('&').any(|kv| kv == "go-get=1")
}

/// Decodes `%XX` escapes. Encoded slashes and backslashes, malformed escapes, invalid UTF-8 and
/// control characters are refused.
pub fn percent_decode(raw: &str) -> Result<String, ClassifyError> {
    let bad = |why: &str| ClassifyError::BadRequest(format!("invalid request path: {why}"));
    let b = raw.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = |c: u8| (c as char).to_digit(16);
            let (Some(h), Some(l)) = (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(bad("malformed percent escape"));
            };
            let v = (h * 16 + l) as u8;
            if v == b'/' || v == b'\\' {
                return Err(bad("encoded slash"));
            }
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    let s = String::from_utf8(out).map_err(|_| bad("not UTF-8"))?;
    if s.chars().any(|c| c.is_control()) {
        return Err(bad("control character"));
    }
    if !s.starts_with('/') {
        return Err(bad("must start with /"));
    }
    Ok(s)
}

fn classify_goproxy(path: &str) -> Result<Target, ClassifyError> {
    let not_proxy = || {
        ClassifyError::NotFound(format!(
            "not found: {path:?} is not a GOPROXY protocol request"
        ))
    };
    let p = &path[1..];
    let (esc_module, op) = if let Some(i) = p.find("/@v/") {
        let file = &p[i + 4..];
        let op = if file == "list" {
            ProxyOp::List
        } else if let Some(v) = file.strip_suffix(".info") {
            ProxyOp::Info(v.to_string())
        } else if let Some(v) = file.strip_suffix(".mod") {
            ProxyOp::Mod(v.to_string())
        } else if let Some(v) = file.strip_suffix(".zip") {
            ProxyOp::Zip(v.to_string())
        } else {
            return Err(not_proxy());
        };
        (&p[..i], op)
    } else if let Some(m) = p.strip_suffix("/@latest") {
        (m, ProxyOp::Latest)
    } else {
        return Err(not_proxy());
    };
    let module = ModulePath::from_escaped(esc_module)
        .map_err(|e| ClassifyError::BadRequest(format!("invalid module path: {e}")))?;
    let is_mod = matches!(op, ProxyOp::Mod(_));
    let op = match op {
        ProxyOp::Info(esc) => {
            let v = unescape(&esc)?;
            // A canonical version whose major does not fit the path is still a fair query:
            // `go get m@v3.2.0` asks for `v3.2.0.info` and takes `v3.2.0+incompatible` back
            // (modfetch `proxyRepo.Stat` holds a proxy to the exact version only when
            // `module.Check` passes).
            if version::is_canonical(&v) && major_fits(&module, &v).is_ok() {
                ProxyOp::Info(v)
            } else {
                ProxyOp::Query(v)
            }
        }
        ProxyOp::Mod(esc) | ProxyOp::Zip(esc) => {
            let v = unescape(&esc)?;
            if !version::is_canonical(&v) {
                return Err(ClassifyError::BadRequest(format!(
                    "invalid version {v:?}: .mod and .zip need a canonical version"
                )));
            }
            major_fits(&module, &v)?;
            if is_mod {
                ProxyOp::Mod(v)
            } else {
                ProxyOp::Zip(v)
            }
        }
        other => other,
    };
    Ok(Target::GoProxy { module, op })
}

fn unescape(esc: &str) -> Result<String, ClassifyError> {
    unescape_version(esc).map_err(|e| ClassifyError::BadRequest(format!("invalid version: {e}")))
}

fn major_fits(module: &ModulePath, v: &str) -> Result<(), ClassifyError> {
    check_path_major(v, module.path_major()).map_err(|e| {
        ClassifyError::NotFound(format!("not found: {module}@{v}: invalid version: {e}"))
    })
}

/// Parses a checksum-database operation path (after the DB's base). `None`: not a sumdb path.
fn sumdb_op(rest: &str, under_proxy: bool) -> Option<Result<SumDbOp, ClassifyError>> {
    if rest == "supported" && under_proxy {
        return Some(Ok(SumDbOp::Supported));
    }
    if rest == "latest" {
        return Some(Ok(SumDbOp::Latest));
    }
    if let Some(lookup) = rest.strip_prefix("lookup/") {
        return Some(parse_lookup(lookup));
    }
    if rest.starts_with("tile/") {
        return Some(Tile::parse(rest).map(SumDbOp::Tile).ok_or_else(|| {
            ClassifyError::BadRequest(format!("invalid checksum database tile path {rest:?}"))
        }));
    }
    None
}

fn parse_lookup(lookup: &str) -> Result<SumDbOp, ClassifyError> {
    let bad = |why: String| ClassifyError::BadRequest(format!("invalid lookup {lookup:?}: {why}"));
    let (esc_module, esc_version) = lookup
        .split_once('@')
        .ok_or_else(|| bad("want module@version".into()))?;
    let module = ModulePath::from_escaped(esc_module).map_err(|e| bad(e.to_string()))?;
    let v = unescape_version(esc_version).map_err(|e| bad(e.to_string()))?;
    if !version::is_canonical(&v) {
        return Err(bad("version is not canonical".into()));
    }
    Ok(SumDbOp::Lookup { module, version: v })
}

fn classify_git(host: &str, path: &str, query: Option<&str>) -> Option<Target> {
    let service_q = query.and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("service="))
            .and_then(|s| match s {
                "git-upload-pack" => Some("git-upload-pack"),
                "git-receive-pack" => Some("git-receive-pack"),
                _ => None,
            })
    });
    let (repo, service) = if let Some(repo) = path.strip_suffix("/info/refs") {
        (repo, service_q?)
    } else if let Some(repo) = path.strip_suffix("/git-upload-pack") {
        (repo, "git-upload-pack")
    } else if let Some(repo) = path.strip_suffix("/git-receive-pack") {
        (repo, "git-receive-pack")
    } else {
        return None;
    };
    if repo.is_empty() {
        return None;
    }
    Some(Target::Git {
        repo: format!("{host}{repo}"),
        service,
    })
}

#[cfg(test)]
mod tests;
