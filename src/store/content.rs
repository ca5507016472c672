//! What a writer checks in a complete entry before it is committed, and why it refuses one:
//! the go command's own checks on what a GOPROXY sends, chosen by the entry's key
//! ([`modgate_core::gomod::content`]). Every fill runs them (public upstreams, the shared bucket,
//! private modules built from git), and so does `modgate cache verify`.

use std::fs::File;
use std::io::{self, Read, Seek};

use modgate_core::cache_key::{CacheKey, Entry, ModuleFile};
use modgate_core::gomod::content::{self, BadContent};
use modgate_core::gomod::path::{ModulePath, check_path_major};
use modgate_core::gomod::version;
use modgate_core::gomod::zip::{ZipError, check_zip, check_zip_data, check_zip_data_hashed};

/// Why an entry's content was refused before commit: nothing is stored.
#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    #[error("cannot read the complete entry: {0}")]
    Read(#[from] io::Error),
    #[error("invalid module zip for {module}@{version}: {source}")]
    Zip {
        module: ModulePath,
        version: String,
        source: ZipError,
    },
    #[error("{0}")]
    Unproven(String),
    #[error("invalid answer for {module}: {source}")]
    Bad {
        module: ModulePath,
        source: BadContent,
    },
    #[error("invalid vulnerability-database file {path}: not JSON ({reason})")]
    VulnDb { path: String, reason: String },
}

/// The checks for the entry `key`, on its complete file. Checksum-database entries have none
/// here (their proofs are the database's own); vulnerability-database files must be JSON.
pub fn check_entry(key: &CacheKey, file: &File) -> Result<(), ContentError> {
    check_reader(key, file, false).map(|_| ())
}

/// [`check_entry`] for a `.mod` or `.zip`, returning its go.sum hash computed in the same pass
/// (for checksum-database verification).
pub fn check_entry_hashed(key: &CacheKey, file: &File) -> Result<String, ContentError> {
    check_reader(key, file, true)?
        .ok_or_else(|| ContentError::Read(io::Error::other("not a .mod or .zip")))
}

/// [`check_entry`] (and, with `hash`, [`check_entry_hashed`]) on a body held in memory: for a
/// fill whose cache file could not be written.
pub fn check_bytes(
    key: &CacheKey,
    data: &[u8],
    hash: bool,
) -> Result<Option<String>, ContentError> {
    check_reader(key, std::io::Cursor::new(data), hash)
}

fn check_reader<R: Read + Seek>(
    key: &CacheKey,
    mut r: R,
    hash: bool,
) -> Result<Option<String>, ContentError> {
    let (module, what) = match key.entry() {
        Entry::Module { module, file } => (module, file),
        Entry::VulnDb { path, .. } => {
            let data = read_all(&mut r)?;
            serde_json::from_slice::<serde::de::IgnoredAny>(&data).map_err(|e| {
                ContentError::VulnDb {
                    path: path.as_str().to_string(),
                    reason: e.to_string(),
                }
            })?;
            return Ok(None);
        }
        Entry::SumDb { .. } => return Ok(None),
    };
    let bad = |source| ContentError::Bad {
        module: module.clone(),
        source,
    };
    match what {
        ModuleFile::Zip(v) => {
            let zip_err = |source| ContentError::Zip {
                module: module.clone(),
                version: v.to_string(),
                source,
            };
            let len = r.seek(std::io::SeekFrom::End(0))?;
            r.rewind()?;
            check_zip(module, v, &mut r, len).map_err(zip_err)?;
            r.rewind()?;
            if hash {
                check_zip_data_hashed(&mut r).map(Some).map_err(zip_err)
            } else {
                check_zip_data(&mut r).map(|_| None).map_err(zip_err)
            }
        }
        ModuleFile::Info(v) => {
            // A canonical version that fits the path must be answered as itself; anything else
            // (a query, or `v3.2.0` for a path without `/v3`, which proxies answer with
            // `v3.2.0+incompatible`) may resolve to any canonical version (modfetch's rule).
            let fits = version::is_canonical(v) && check_path_major(v, module.path_major()).is_ok();
            let asked = fits.then_some(v.as_str());
            content::check_info(&read_all(&mut r)?, asked).map_err(bad)?;
            Ok(None)
        }
        ModuleFile::Latest => {
            content::check_info(&read_all(&mut r)?, None).map_err(bad)?;
            Ok(None)
        }
        ModuleFile::Mod(_) => {
            let data = read_all(&mut r)?;
            content::check_mod(&data, module).map_err(bad)?;
            Ok(hash.then(|| modgate_core::gomod::dirhash::hash_go_mod(&data)))
        }
        ModuleFile::List => {
            content::check_list(&read_all(&mut r)?).map_err(bad)?;
            Ok(None)
        }
    }
}

fn read_all<R: Read + Seek>(r: &mut R) -> io::Result<Vec<u8>> {
    r.rewind()?;
    let mut data = vec![];
    r.read_to_end(&mut data)?;
    Ok(data)
}

/// The x/mod zip rules, then every entry's data against its CRC-32 and size, on a complete file.
pub fn check_zip_file(file: &File, module: &ModulePath, version: &str) -> Result<(), ContentError> {
    let key = CacheKey::new(Entry::Module {
        module: module.clone(),
        file: ModuleFile::Zip(version.to_string()),
    });
    check_reader(&key, file, false).map(|_| ())
}
