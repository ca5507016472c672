//! Module zip validation with golang.org/x/mod/zip's `CheckZip` rules: every entry under
//! `module@version/`, clean valid file names, no case-insensitive collisions or duplicate
//! entries, `go.mod` only at the root and spelled so, and the size limits the go command enforces.

use std::collections::HashMap;
use std::io::{Read, Seek};

use super::path::{ModulePath, check_file_path, check_path_major, fold_key};
use super::version;

/// Largest module zip, and largest total uncompressed content (500 MiB).
pub const MAX_ZIP_FILE: u64 = 500 << 20;
/// Largest go.mod inside a module zip (16 MiB).
pub const MAX_GO_MOD: u64 = 16 << 20;
/// Largest LICENSE inside a module zip (16 MiB).
pub const MAX_LICENSE: u64 = 16 << 20;

/// Why a module zip is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ZipError {
    #[error("version {0:?} is not canonical")]
    NotCanonical(String),
    #[error("{0}")]
    Version(String),
    #[error("module zip file is too large ({size} bytes; limit is {MAX_ZIP_FILE} bytes)")]
    TooLarge { size: u64 },
    #[error("not a valid zip file: {0}")]
    Malformed(String),
    #[error("{name}: {reason}")]
    Entry { name: String, reason: String },

    #[error(
        "total uncompressed size of module contents too large (max size is {MAX_ZIP_FILE} bytes)"
    )]
    ContentTooLarge,
}

/// Checks that the zip read from `reader` is a valid module zip for `module@version`.
pub fn check_zip<R: Read + Seek>(
    module: &ModulePath,
    version: &str,
    reader: R,
    size: u64,
) -> Result<(), ZipError> {
    if !version::is_canonical(version) {
        return Err(ZipError::NotCanonical(version.to_string()));
    }
    check_path_major(version, module.path_major()).map_err(|e| ZipError::Version(e.to_string()))?;
    if size > MAX_ZIP_FILE {
        return Err(ZipError::TooLarge { size });
    }
    let mut archive =
        ::zip::ZipArchive::new(reader).map_err(|e| ZipError::Malformed(e.to_string()))?;
    let prefix = format!("{module}@{version}/");
    let mut collisions = Collisions::default();
    let mut total: u64 = 0;
    for i in 0..archive.len() {
        let entry = archive
            .by_index_raw(i)
            .map_err(|e| ZipError::Malformed(e.to_string()))?;
        let full = entry.name().to_string();
        let bad = |reason: String| ZipError::Entry {
            name: full.clone(),
            reason,
        };
        let Some(name) = full.strip_prefix(&prefix) else {
            return Err(bad(format!("path does not have prefix {prefix:?}")));
        };
        if name.is_empty() {
            continue;
        }
        let (name, is_dir) = match name.strip_suffix('/') {
            Some(n) => (n, true),
            None => (name, false),
        };
        if !is_clean(name) {
            return Err(bad("file path is not clean".into()));
        }
        check_file_path(name).map_err(|e| bad(e.to_string()))?;
        collisions
            .check(name, is_dir)
            .map_err(|e| bad(e.to_string()))?;
        if is_dir {
            continue;
        }
        let base = name.rsplit('/').next().unwrap_or(name);
        if base.eq_ignore_ascii_case("go.mod") {
            if base != name {
                return Err(bad("go.mod file not in module root directory".into()));
            }
            if name != "go.mod" {
                return Err(bad("go.mod files must have lowercase names".into()));
            }
        }
        let sz = entry.size();
        total = total.saturating_add(sz);
        if total > MAX_ZIP_FILE {
            return Err(ZipError::ContentTooLarge);
        }
        if name == "go.mod" && sz > MAX_GO_MOD {
            return Err(bad(format!(
                "go.mod file too large (max size is {MAX_GO_MOD} bytes)"
            )));
        }
        if name == "LICENSE" && sz > MAX_LICENSE {
            return Err(bad(format!(
                "LICENSE file too large (max size is {MAX_LICENSE} bytes)"
            )));
        }
    }
    Ok(())
}

/// Reads every entry of a zip to its end, so that each file's data is proven against its
/// CRC-32 and declared size (what extraction by the go command would find). Run after
/// [`check_zip`], which bounds the sizes.
pub fn check_zip_data<R: Read + Seek>(reader: R) -> Result<(), ZipError> {
    read_zip_data(reader, false).map(|_| ())
}

/// [`check_zip_data`], also computing the zip's go.sum hash (`dirhash.HashZip`) in the same
/// pass over the file data.
pub fn check_zip_data_hashed<R: Read + Seek>(reader: R) -> Result<String, ZipError> {
    read_zip_data(reader, true).map(|h| h.expect("asked for the hash"))
}

fn read_zip_data<R: Read + Seek>(reader: R, hash: bool) -> Result<Option<String>, ZipError> {
    use sha2::Digest;
    let mut archive =
        ::zip::ZipArchive::new(reader).map_err(|e| ZipError::Malformed(e.to_string()))?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut digests: Vec<(String, [u8; 32])> = vec![];
    for i in 0..archive.len() {
        let mut entry = archive
            .by_index(i)
            .map_err(|e| ZipError::Malformed(e.to_string()))?;
        let name = entry.name().to_string();
        let declared = entry.size();
        let mut read: u64 = 0;
        let mut sha = hash.then(sha2::Sha256::new);
        loop {
            match entry.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    read += n as u64;
                    if let Some(h) = &mut sha {
                        h.update(&buf[..n]);
                    }
                }
                Err(e) => {
                    return Err(ZipError::Entry {
                        name,
                        reason: format!("file data is corrupt ({e})"),
                    });
                }
            }
        }
        if read != declared {
            return Err(ZipError::Entry {
                name,
                reason: format!("holds {read} bytes, not the {declared} its header declares"),
            });
        }
        if let Some(h) = sha {
            digests.push((name, h.finalize().into()));
        }
    }
    if !hash {
        return Ok(None);
    }
    super::dirhash::hash1_from_digests(digests)
        .map(Some)
        .map_err(|e| ZipError::Malformed(e.to_string()))
}

/// `path.Clean(name) == name` for a relative slash path.
fn is_clean(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('/')
        && !name.ends_with('/')
        && name
            .split('/')
            .all(|e| !e.is_empty() && e != "." && e != "..")
}

/// Two entries that cannot both be in a module zip.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum Collision {
    #[error("case-insensitive file name collision: {0:?} and {1:?}")]
    Case(String, String),
    #[error("entry {0:?} is both a file and a directory")]
    FileAndDirectory(String),
    #[error("multiple entries for file {0:?}")]
    Duplicate(String),
}

/// Finds case-insensitive collisions and paths listed as both file and directory.
#[derive(Default)]
struct Collisions {
    seen: HashMap<String, (String, bool)>,
}

impl Collisions {
    fn check(&mut self, p: &str, is_dir: bool) -> Result<(), Collision> {
        let fold = fold_key(p);
        if let Some((other, other_dir)) = self.seen.get(&fold) {
            if other != p {
                return Err(Collision::Case(other.clone(), p.to_string()));
            }
            if *other_dir != is_dir {
                return Err(Collision::FileAndDirectory(p.to_string()));
            }
            if !is_dir {
                return Err(Collision::Duplicate(p.to_string()));
            }
        } else {
            self.seen.insert(fold, (p.to_string(), is_dir));
        }
        match p.rfind('/') {
            Some(i) => self.check(&p[..i], true),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Cursor, Write};

    fn zip_of(names: &[&str]) -> Vec<u8> {
        let mut buf = Cursor::new(Vec::new());
        let mut z = ::zip::ZipWriter::new(&mut buf);
        let opts = ::zip::write::SimpleFileOptions::default();
        for n in names {
            if n.ends_with('/') {
                z.add_directory(n.trim_end_matches('/'), opts).unwrap();
            } else {
                z.start_file(*n, opts).unwrap();
                z.write_all(b"x").unwrap();
            }
        }
        z.finish().unwrap();
        buf.into_inner()
    }

    fn check(names: &[&str]) -> Result<(), ZipError> {
        let m = ModulePath::new("example.com/m").unwrap();
        let data = zip_of(names);
        let len = data.len() as u64;
        check_zip(&m, "v1.0.0", Cursor::new(data), len)
    }

    #[test]
    fn accepts_a_module_zip() {
        check(&[
            "example.com/m@v1.0.0/go.mod",
            "example.com/m@v1.0.0/a/b.go",
            "example.com/m@v1.0.0/LICENSE",
        ])
        .unwrap();
        check(&["example.com/m@v1.0.0/dir/", "example.com/m@v1.0.0/dir/x.go"]).unwrap();
    }

    #[test]
    fn rejects_bad_zips() {
        let cases: &[(&[&str], &str)] = &[
            (&["example.com/m@v1.0.1/x.go"], "does not have prefix"),
            (&["other.com/m@v1.0.0/x.go"], "does not have prefix"),
            (&["x.go"], "does not have prefix"),
            (&["example.com/m@v1.0.0/../evil.go"], "not clean"),
            (&["example.com/m@v1.0.0/a/./b.go"], "not clean"),
            (&["example.com/m@v1.0.0/a:b.go"], "invalid char"),
            (
                &["example.com/m@v1.0.0/A.go", "example.com/m@v1.0.0/a.go"],
                "case-insensitive",
            ),
            (
                &["example.com/m@v1.0.0/a", "example.com/m@v1.0.0/a/b.go"],
                "both a file and a directory",
            ),
            (&["example.com/m@v1.0.0/sub/go.mod"], "not in module root"),
            (&["example.com/m@v1.0.0/GO.MOD"], "lowercase"),
        ];
        for (names, want) in cases {
            let err = check(names).expect_err(&format!("{names:?}")).to_string();
            assert!(err.contains(want), "{names:?}: {err}");
        }
        let m = ModulePath::new("example.com/m").unwrap();
        let junk = b"not a zip".to_vec();
        assert!(matches!(
            check_zip(&m, "v1.0.0", Cursor::new(junk), 9),
            Err(ZipError::Malformed(_))
        ));
        let ok = zip_of(&["example.com/m@v1.0.0/x.go"]);
        assert!(matches!(
            check_zip(&m, "v1.0", Cursor::new(ok.clone()), 1),
            Err(ZipError::NotCanonical(_))
        ));
        assert!(matches!(
            check_zip(&m, "v2.0.0", Cursor::new(ok), 1),
            Err(ZipError::Version(_))
        ));
    }

    #[test]
    fn the_hash_taken_while_checking_is_hash_zip() {
        let mut buf = Cursor::new(Vec::new());
        {
            let mut z = ::zip::ZipWriter::new(&mut buf);
            let opts = ::zip::write::SimpleFileOptions::default();
            for (name, data) in [
                ("example.com/m@v1.0.0/go.mod", "module example.com/m\n"),
                ("example.com/m@v1.0.0/a.go", "package m\n"),
            ] {
                z.start_file(name, opts).unwrap();
                z.write_all(data.as_bytes()).unwrap();
            }
            z.finish().unwrap();
        }
        let data = buf.into_inner();
        assert_eq!(
            check_zip_data_hashed(Cursor::new(&data)).unwrap(),
            crate::gomod::dirhash::hash_zip(Cursor::new(&data)).unwrap()
        );
    }
}
