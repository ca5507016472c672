//! [`CacheKey`]: what a cache entry holds, and its name on disk.
//!
//! The encoding is a relative path, unchanged since the first release so that existing caches
//! keep working:
//!
//! | entry | encoding |
//! |---|---|
//! | version list | `mod/<escaped module>/@v/list` |
//! | `@latest` | `mod/<escaped module>/@latest` |
//! | `.info` (version or query), `.mod`, `.zip` | `mod/<escaped module>/@v/<escaped version>.<ext>` |
//! | checksum-DB signed tree head | `sumdb/<db>/latest` |
//! | checksum-DB record | `sumdb/<db>/lookup/<escaped module>@<escaped version>` |
//! | checksum-DB tile | `sumdb/<db>/tile/H/L/NNN[.p/W]` |
//! | vulnerability-database file | `vulndb/<host>/<path>` |
//!
//! A remembered not-found answer for a key is stored under the key plus [`NOT_FOUND_SUFFIX`].

use crate::gomod::path::{ModulePath, escape_version, unescape_version};
use crate::gomod::sumdb::Tile;
use crate::policy::classify::{ProxyOp, SumDbOp};

/// Appended to a key's encoding for the entry that remembers a not-found answer. `@` appears in
/// no module path or escaped version, so no answer's key ends this way (`.notfound` did: a
/// lookup of `m@v1.0.0-x.notfound` met `m@v1.0.0-x`'s).
pub const NOT_FOUND_SUFFIX: &str = "@notfound";

/// One file of a module, as cached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModuleFile {
    List,
    Latest,
    /// `.info` for a canonical version or a query (a branch, tag or commit prefix).
    Info(String),
    Mod(String),
    Zip(String),
}

/// One checksum-database answer, as cached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SumDbItem {
    Latest,
    Lookup { module: ModulePath, version: String },
    Tile(Tile),
}

/// What a cache entry holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Module {
        module: ModulePath,
        file: ModuleFile,
    },
    SumDb {
        db: String,
        item: SumDbItem,
    },
    /// A file of the Go vulnerability database at `host` (`index/modules.json`, `ID/GO-….json`).
    VulnDb {
        host: String,
        path: VulnDbPath,
    },
}

/// A vulnerability-database file's path: relative, `/`-separated elements of letters, digits,
/// `-`, `_`, `.`, `~`, and `!` and `+` of escaped module paths (no empty, `.` or `..` element), ending in `.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VulnDbPath(String);

impl VulnDbPath {
    pub fn new(path: &str) -> Option<VulnDbPath> {
        let ok = path.len() <= 512
            && path.ends_with(".json")
            && path.split('/').all(|e| {
                !e.is_empty()
                    && e != "."
                    && e != ".."
                    && e.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.~!+".contains(&b))
            });
        ok.then(|| VulnDbPath(path.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The kinds of entries, for reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum KeyKind {
    Zip,
    GoMod,
    Metadata,
    SumDb,
    VulnDb,
}

impl KeyKind {
    /// How `modgate cache stats` names the kind.
    pub fn describe(self) -> &'static str {
        match self {
            KeyKind::Zip => "module zips",
            KeyKind::GoMod => "go.mod files",
            KeyKind::Metadata => "info, lists, queries",
            KeyKind::SumDb => "checksum database",
            KeyKind::VulnDb => "vulnerability database",
        }
    }
}

/// A key that is not one modgate writes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("cache key {0:?} is not under mod/, sumdb/ or vulndb/")]
    Namespace(String),
    #[error("cache key {key:?}: {reason}")]
    Malformed { key: String, reason: &'static str },
    #[error("cache key {key:?}: {source}")]
    Path {
        key: String,
        source: crate::gomod::path::PathError,
    },
}

/// A typed cache key with its encoding, built once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheKey {
    entry: Entry,
    encoded: String,
}

impl CacheKey {
    /// The key for `entry`.
    pub fn new(entry: Entry) -> CacheKey {
        let encoded = encode(&entry);
        CacheKey { entry, encoded }
    }

    /// The key under which a GOPROXY answer for `module` is cached (a query shares the `.info`
    /// name space with versions, as in the GOPROXY protocol itself).
    pub fn proxy(module: &ModulePath, op: &ProxyOp) -> CacheKey {
        let file = match op {
            ProxyOp::List => ModuleFile::List,
            ProxyOp::Latest => ModuleFile::Latest,
            ProxyOp::Info(v) | ProxyOp::Query(v) => ModuleFile::Info(v.clone()),
            ProxyOp::Mod(v) => ModuleFile::Mod(v.clone()),
            ProxyOp::Zip(v) => ModuleFile::Zip(v.clone()),
        };
        CacheKey::new(Entry::Module {
            module: module.clone(),
            file,
        })
    }

    /// The key for a checksum-database answer; `supported` is answered, never cached.
    pub fn sumdb(db: &str, op: &SumDbOp) -> Option<CacheKey> {
        let item = match op {
            SumDbOp::Supported => return None,
            SumDbOp::Latest => SumDbItem::Latest,
            SumDbOp::Lookup { module, version } => SumDbItem::Lookup {
                module: module.clone(),
                version: version.clone(),
            },
            SumDbOp::Tile(t) => SumDbItem::Tile(*t),
        };
        Some(CacheKey::new(Entry::SumDb {
            db: db.to_string(),
            item,
        }))
    }

    /// The key of a vulnerability-database file.
    pub fn vulndb(host: &str, path: VulnDbPath) -> CacheKey {
        CacheKey::new(Entry::VulnDb {
            host: host.to_string(),
            path,
        })
    }

    /// Reads an encoded key back; `Ok((key, true))` for a not-found entry's key.
    pub fn parse(encoded: &str) -> Result<(CacheKey, bool), KeyError> {
        let (base, not_found) = match encoded.strip_suffix(NOT_FOUND_SUFFIX) {
            Some(b) => (b, true),
            None => (encoded, false),
        };
        let bad = |reason| KeyError::Malformed {
            key: encoded.to_string(),
            reason,
        };
        let path_err = |source| KeyError::Path {
            key: encoded.to_string(),
            source,
        };
        let entry = if let Some(rest) = base.strip_prefix("mod/") {
            let (esc_module, file) = if let Some(m) = rest.strip_suffix("/@latest") {
                (m, ModuleFile::Latest)
            } else {
                let (m, name) = rest.split_once("/@v/").ok_or(bad("no /@v/ or /@latest"))?;
                let file = if name == "list" {
                    ModuleFile::List
                } else {
                    let (v, ext) = name.rsplit_once('.').ok_or(bad("no file extension"))?;
                    let v = unescape_version(v).map_err(path_err)?;
                    match ext {
                        "info" => ModuleFile::Info(v),
                        "mod" => ModuleFile::Mod(v),
                        "zip" => ModuleFile::Zip(v),
                        _ => return Err(bad("unknown file extension")),
                    }
                };
                (m, file)
            };
            Entry::Module {
                module: ModulePath::from_escaped(esc_module).map_err(path_err)?,
                file,
            }
        } else if let Some(rest) = base.strip_prefix("sumdb/") {
            let (db, tail) = rest
                .split_once('/')
                .ok_or(bad("no checksum-database item"))?;
            let item = if tail == "latest" {
                SumDbItem::Latest
            } else if let Some(lookup) = tail.strip_prefix("lookup/") {
                let (m, v) = lookup.rsplit_once('@').ok_or(bad("lookup without @"))?;
                SumDbItem::Lookup {
                    module: ModulePath::from_escaped(m).map_err(path_err)?,
                    version: unescape_version(v).map_err(path_err)?,
                }
            } else {
                SumDbItem::Tile(Tile::parse(tail).ok_or(bad("not a tile path"))?)
            };
            Entry::SumDb {
                db: db.to_string(),
                item,
            }
        } else if let Some(rest) = base.strip_prefix("vulndb/") {
            let (host, path) = rest
                .split_once('/')
                .ok_or(bad("no vulnerability-database file"))?;
            Entry::VulnDb {
                host: host.to_string(),
                path: VulnDbPath::new(path).ok_or(bad("not a vulnerability-database file"))?,
            }
        } else {
            return Err(KeyError::Namespace(encoded.to_string()));
        };
        let key = CacheKey::new(entry);
        if key.encoded != base {
            return Err(bad("not in canonical form"));
        }
        Ok((key, not_found))
    }

    pub fn entry(&self) -> &Entry {
        &self.entry
    }

    /// The on-disk encoding.
    pub fn as_str(&self) -> &str {
        &self.encoded
    }

    /// The encoding of the entry that remembers a not-found answer for this key.
    pub fn not_found(&self) -> String {
        format!("{}{NOT_FOUND_SUFFIX}", self.encoded)
    }

    pub fn kind(&self) -> KeyKind {
        match &self.entry {
            Entry::Module {
                file: ModuleFile::Zip(_),
                ..
            } => KeyKind::Zip,
            Entry::Module {
                file: ModuleFile::Mod(_),
                ..
            } => KeyKind::GoMod,
            Entry::Module { .. } => KeyKind::Metadata,
            Entry::SumDb { .. } => KeyKind::SumDb,
            Entry::VulnDb { .. } => KeyKind::VulnDb,
        }
    }

    /// For a partial tile: the directory holding every width of it (`.../NNN.p`), whose
    /// children are the widths cached.
    pub fn partial_tile_dir(db: &str, tile: &Tile) -> String {
        let one = Tile { w: 1, ..*tile };
        let path = encode_sumdb(db, &SumDbItem::Tile(one));
        path.strip_suffix("/1").unwrap_or(&path).to_string()
    }
}

impl std::fmt::Display for CacheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.encoded)
    }
}

/// A version as it appears in a key: escaped, or as given when it cannot be (a query that is
/// not a valid file name is still a distinct, harmless key).
fn escape_v(v: &str) -> String {
    escape_version(v).unwrap_or_else(|_| v.to_string())
}

fn encode(entry: &Entry) -> String {
    match entry {
        Entry::Module { module, file } => {
            let esc = module.escaped();
            match file {
                ModuleFile::List => format!("mod/{esc}/@v/list"),
                ModuleFile::Latest => format!("mod/{esc}/@latest"),
                ModuleFile::Info(v) => format!("mod/{esc}/@v/{}.info", escape_v(v)),
                ModuleFile::Mod(v) => format!("mod/{esc}/@v/{}.mod", escape_v(v)),
                ModuleFile::Zip(v) => format!("mod/{esc}/@v/{}.zip", escape_v(v)),
            }
        }
        Entry::SumDb { db, item } => encode_sumdb(db, item),
        Entry::VulnDb { host, path } => format!("vulndb/{host}/{}", path.as_str()),
    }
}

fn encode_sumdb(db: &str, item: &SumDbItem) -> String {
    match item {
        SumDbItem::Latest => format!("sumdb/{db}/latest"),
        SumDbItem::Lookup { module, version } => {
            format!(
                "sumdb/{db}/lookup/{}@{}",
                module.escaped(),
                escape_v(version)
            )
        }
        SumDbItem::Tile(t) => format!("sumdb/{db}/{}", t.path()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str) -> ModulePath {
        ModulePath::new(p).unwrap()
    }

    #[test]
    fn encodings_are_the_ones_on_disk() {
        let azure = m("github.com/Azure/x");
        let cases = [
            (
                CacheKey::proxy(&azure, &ProxyOp::Zip("v1.0.0-RC1".into())),
                "mod/github.com/!azure/x/@v/v1.0.0-!r!c1.zip",
                KeyKind::Zip,
            ),
            (
                CacheKey::proxy(&azure, &ProxyOp::Mod("v1.0.0".into())),
                "mod/github.com/!azure/x/@v/v1.0.0.mod",
                KeyKind::GoMod,
            ),
            (
                CacheKey::proxy(&azure, &ProxyOp::Query("main".into())),
                "mod/github.com/!azure/x/@v/main.info",
                KeyKind::Metadata,
            ),
            (
                CacheKey::proxy(&azure, &ProxyOp::List),
                "mod/github.com/!azure/x/@v/list",
                KeyKind::Metadata,
            ),
            (
                CacheKey::proxy(&azure, &ProxyOp::Latest),
                "mod/github.com/!azure/x/@latest",
                KeyKind::Metadata,
            ),
            (
                CacheKey::sumdb("sum.golang.org", &SumDbOp::Latest).unwrap(),
                "sumdb/sum.golang.org/latest",
                KeyKind::SumDb,
            ),
            (
                CacheKey::sumdb(
                    "sum.golang.org",
                    &SumDbOp::Lookup {
                        module: azure.clone(),
                        version: "v1.2.3".into(),
                    },
                )
                .unwrap(),
                "sumdb/sum.golang.org/lookup/github.com/!azure/x@v1.2.3",
                KeyKind::SumDb,
            ),
            (
                CacheKey::sumdb(
                    "sum.golang.org",
                    &SumDbOp::Tile(Tile::parse("tile/8/0/x004/822.p/13").unwrap()),
                )
                .unwrap(),
                "sumdb/sum.golang.org/tile/8/0/x004/822.p/13",
                KeyKind::SumDb,
            ),
            (
                CacheKey::vulndb(
                    "vuln.go.dev",
                    VulnDbPath::new("ID/GO-2024-1234.json").unwrap(),
                ),
                "vulndb/vuln.go.dev/ID/GO-2024-1234.json",
                KeyKind::VulnDb,
            ),
        ];
        for (key, want, kind) in cases {
            assert_eq!(key.as_str(), want);
            assert_eq!(key.kind(), kind, "{want}");
            let (back, nf) = CacheKey::parse(want).unwrap();
            assert_eq!((&back, nf), (&key, false), "{want}");
            let (back, nf) = CacheKey::parse(&key.not_found()).unwrap();
            assert_eq!((&back, nf), (&key, true), "{want}");
        }
        assert!(CacheKey::sumdb("sum.golang.org", &SumDbOp::Supported).is_none());
    }

    #[test]
    fn foreign_and_non_canonical_keys_are_refused() {
        for bad in [
            "tmp/x",
            "mod/github.com/Azure/x/@v/v1.0.0.zip",
            "mod/github.com/!azure/x/@v/v1.0.0.tar",
            "mod/github.com/!azure/x/@v/v1.0.0",
            "mod/github.com/!azure/x",
            "sumdb/sum.golang.org",
            "sumdb/sum.golang.org/tile/8/0/4822",
            "sumdb/sum.golang.org/lookup/github.com/x",
            "vulndb/vuln.go.dev",
            "vulndb/vuln.go.dev/../x.json",
            "vulndb/vuln.go.dev/index/db.gz",
            "vulndb/vuln.go.dev//x.json",
        ] {
            assert!(CacheKey::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn partial_tiles_share_a_directory() {
        let t = Tile::parse("tile/8/0/x004/822.p/13").unwrap();
        assert_eq!(
            CacheKey::partial_tile_dir("sum.golang.org", &t),
            "sumdb/sum.golang.org/tile/8/0/x004/822.p"
        );
    }
}
