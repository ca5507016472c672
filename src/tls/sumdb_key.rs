//! The signing key of modgate's own checksum database (`sumdb.serve`): an Ed25519 key kept
//! beside the CA as `sumdb.key`, in Go's signer-key form (`PRIVATE+KEY+name+hash+key`, what
//! `note.GenerateKey` prints), created 0600 with O_EXCL on first use and refused if group- or
//! world-readable, like the CA key. The name is part of the key: agents trust
//! `name+hash+publickey`, so a key made for another name is refused, not silently replaced.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use modgate_core::gomod::note::Signer;

/// File name of the checksum-database signing key inside the CA directory.
pub const SUMDB_KEY_FILE: &str = "sumdb.key";

/// Why the signing key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SumKeyError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "refusing to use checksum-database key {path}: it is readable by group or others (mode {mode:o}); run `chmod 600 {path}`"
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error("{path}: not a checksum-database signing key (PRIVATE+KEY+name+hash+key)")]
    Invalid { path: PathBuf },
    #[error(
        "{path} signs for {have:?}, but sumdb.serve is {want:?}: set sumdb.serve = {have:?}, or move the file away to make a new key (agents must then change GOSUMDB)"
    )]
    OtherName {
        path: PathBuf,
        have: String,
        want: String,
    },
}

/// Path of the key inside the CA directory.
pub fn path(ca_dir: &Path) -> PathBuf {
    ca_dir.join(SUMDB_KEY_FILE)
}

/// Loads the key for `name` from `ca_dir`, creating it if there is none; also says whether it
/// was created.
pub fn load_or_create(ca_dir: &Path, name: &str) -> Result<(Signer, bool), SumKeyError> {
    let path = path(ca_dir);
    let io = |source| SumKeyError::Io {
        path: path.clone(),
        source,
    };
    match std::fs::metadata(&path) {
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(SumKeyError::Permissions { path, mode });
            }
            let text = std::fs::read_to_string(&path).map_err(io)?;
            let signer =
                Signer::parse(&text).map_err(|_| SumKeyError::Invalid { path: path.clone() })?;
            if signer.name() != name {
                return Err(SumKeyError::OtherName {
                    have: signer.name().to_string(),
                    want: name.to_string(),
                    path,
                });
            }
            Ok((signer, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let signer = Signer::from_seed(name, rand::random())
                .map_err(|_| SumKeyError::Invalid { path: path.clone() })?;
            std::fs::create_dir_all(ca_dir).map_err(io)?;
            // Written whole to a temporary file, then linked into place (refusing to replace a
            // key another process made meanwhile): a crash leaves no half-written key.
            let tmp = ca_dir.join(format!(".{SUMDB_KEY_FILE}.{:016x}", rand::random::<u64>()));
            let written = (|| {
                let mut f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&tmp)?;
                f.write_all(format!("{}\n", signer.to_skey()).as_bytes())?;
                f.sync_all()?;
                std::fs::hard_link(&tmp, &path)?;
                std::fs::File::open(ca_dir)?.sync_all()
            })();
            let _ = std::fs::remove_file(&tmp);
            match written {
                Ok(()) => Ok((signer, true)),
                // Another process made it first: use that one.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    load_or_create(ca_dir, name)
                }
                Err(e) => Err(io(e)),
            }
        }
        Err(e) => Err(io(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_loaded_and_guarded() {
        let dir = tempfile::tempdir().unwrap();
        let (a, created) = load_or_create(dir.path(), "sum.corp.example").unwrap();
        assert!(created);
        let mode = std::fs::metadata(path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let (b, created) = load_or_create(dir.path(), "sum.corp.example").unwrap();
        assert!(!created);
        assert_eq!(a.vkey(), b.vkey());
        let err = load_or_create(dir.path(), "sum.other.example").unwrap_err();
        assert!(
            err.to_string().contains("signs for \"sum.corp.example\""),
            "{err}"
        );
        std::fs::set_permissions(path(dir.path()), std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = load_or_create(dir.path(), "sum.corp.example").unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
        std::fs::set_permissions(path(dir.path()), std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(path(dir.path()), "garbage\n").unwrap();
        let err = load_or_create(dir.path(), "sum.corp.example").unwrap_err();
        assert!(
            err.to_string()
                .contains("not a checksum-database signing key"),
            "{err}"
        );
    }
}
