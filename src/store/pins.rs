//! The integrity log: what modgate proved about each version it served. Public versions verified
//! against a checksum database are recorded (`verified`), and private ones are pinned.
//!
//! Private version pinning: the first time modgate serves a private version's go.mod or zip
//! (built from git), it records the `h1:` hash and the commit in an append-only, fsynced log,
//! `storage.data_dir/integrity/pins.log` (one JSON object a line). Different content later for
//! the same version (a force-pushed tag, rewritten history) is refused; `modgate integrity
//! repin` appends a record that accepts the next content deliberately, with who and why.
//! Restarts and cache eviction forget nothing: the log is the source of truth, re-read when it
//! grows (so a repin by the CLI reaches a running gateway).

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// Which file of a version a pin is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PinFile {
    Mod,
    Zip,
}

impl PinFile {
    pub fn suffix(self) -> &'static str {
        match self {
            PinFile::Mod => "/go.mod",
            PinFile::Zip => "",
        }
    }
}

/// One line of the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Record {
    /// Content first served for module@version.
    Pin {
        module: String,
        version: String,
        file: PinFile,
        h1: String,
        commit: String,
        at: String,
    },
    /// A public file proven against a checksum database's signed tree.
    Verified {
        module: String,
        version: String,
        file: PinFile,
        h1: String,
        db: String,
        tree: u64,
        at: String,
    },
    /// The next content served for module@version is accepted (and pinned) whatever it is.
    Repin {
        module: String,
        version: String,
        reason: String,
        by: String,
        at: String,
    },
}

/// What a pin holds (also the JSON of a pin in the shared bucket).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pin {
    pub h1: String,
    pub commit: String,
    pub at: String,
}

/// Content that differs from a version's pin.
#[derive(Debug, thiserror::Error)]
#[error(
    "{module}@{version}{suffix} changed since modgate first served it: pinned {old_h1} (commit {old_commit}, {at}), the repository now gives {new_h1} (commit {new_commit}); a tag was moved or history rewritten. If this is intended, run `modgate integrity repin {module}@{version} --reason ...`"
)]
pub struct PinChange {
    pub module: String,
    pub version: String,
    pub suffix: &'static str,
    pub old_h1: String,
    pub old_commit: String,
    pub at: String,
    pub new_h1: String,
    pub new_commit: String,
}

/// Why content for a pinned version is refused, or the log cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error(transparent)]
    Changed(Box<PinChange>),
    #[error("the pin log {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// What a check did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checked {
    /// First content for this version: now pinned.
    Pinned,
    /// The same content as pinned.
    Matched,
}

type Key = (String, String, PinFile);

/// How a cached go.mod file or zip was proven.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proof {
    /// Pinned (a private version).
    Pinned,
    /// Verified against a checksum database.
    Verified,
    None,
}

/// A public file proven against a checksum database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub h1: String,
    pub db: String,
    pub tree: u64,
    pub at: String,
}

#[derive(Debug, Default)]
struct Loaded {
    pins: HashMap<Key, Pin>,
    verified: HashMap<Key, Verified>,
    /// Bytes of the log read so far.
    len: u64,
}

/// The pin log.
#[derive(Debug)]
pub struct Pins {
    path: PathBuf,
    loaded: Mutex<Loaded>,
}

impl Pins {
    /// The log under `data_dir` (created on the first pin).
    pub fn new(data_dir: &Path) -> Pins {
        Pins {
            path: data_dir.join("integrity").join("pins.log"),
            loaded: Mutex::default(),
        }
    }

    fn io(&self) -> impl FnOnce(io::Error) -> PinError + '_ {
        |source| PinError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Reads what was appended since the last read. Blocking.
    fn refresh(&self, loaded: &mut Loaded) -> Result<(), PinError> {
        let data = match std::fs::read(&self.path) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(self.io()(e)),
        };
        if data.len() as u64 == loaded.len {
            return Ok(());
        }
        let from = if (data.len() as u64) < loaded.len {
            // Shorter than read before: not append-only any more; read it all again.
            loaded.pins.clear();
            loaded.verified.clear();
            0
        } else {
            loaded.len as usize
        };
        // Only whole lines: a line being appended right now is read next time.
        let end = data[from..]
            .iter()
            .rposition(|b| *b == b'\n')
            .map(|i| from + i + 1)
            .unwrap_or(from);
        for line in data[from..end].split(|b| *b == b'\n') {
            if line.is_empty() {
                continue;
            }
            match serde_json::from_slice::<Record>(line) {
                Ok(Record::Pin {
                    module,
                    version,
                    file,
                    h1,
                    commit,
                    at,
                }) => {
                    loaded
                        .pins
                        .insert((module, version, file), Pin { h1, commit, at });
                }
                Ok(Record::Verified {
                    module,
                    version,
                    file,
                    h1,
                    db,
                    tree,
                    at,
                }) => {
                    loaded
                        .verified
                        .insert((module, version, file), Verified { h1, db, tree, at });
                }
                Ok(Record::Repin {
                    module, version, ..
                }) => {
                    loaded
                        .pins
                        .retain(|(m, v, _), _| !(*m == module && *v == version));
                }
                Err(e) => {
                    tracing::warn!(path = %self.path.display(), error = %e, "unreadable line in the pin log; skipped");
                }
            }
        }
        loaded.len = end as u64;
        Ok(())
    }

    fn append(&self, record: &Record) -> Result<(), PinError> {
        std::fs::create_dir_all(self.path.parent().expect("has a parent")).map_err(self.io())?;
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&self.path)
            .map_err(self.io())?;
        // A line cut short by a crash is ended first, so this record is a line of its own.
        let len = f.metadata().map_err(self.io())?.len();
        let mut last = [b'\n'];
        if len > 0 {
            std::os::unix::fs::FileExt::read_exact_at(&f, &mut last, len - 1).map_err(self.io())?;
        }
        let mut line = if last[0] == b'\n' {
            vec![]
        } else {
            vec![b'\n']
        };
        line.extend(serde_json::to_vec(record).expect("serializable"));
        line.push(b'\n');
        f.write_all(&line).map_err(self.io())?;
        f.sync_all().map_err(self.io())
    }

    /// Pins `h1` (from `commit`) for `module@version`'s `file` the first time, and refuses
    /// different content after. Blocking (reads and fsyncs the log).
    pub fn check(
        &self,
        module: &str,
        version: &str,
        file: PinFile,
        h1: &str,
        commit: &str,
    ) -> Result<Checked, PinError> {
        let mut loaded = self.loaded.lock().expect("not poisoned");
        self.refresh(&mut loaded)?;
        let key = (module.to_string(), version.to_string(), file);
        if let Some(pin) = loaded.pins.get(&key) {
            if pin.h1 == h1 {
                return Ok(Checked::Matched);
            }
            return Err(PinError::Changed(Box::new(PinChange {
                module: module.to_string(),
                version: version.to_string(),
                suffix: file.suffix(),
                old_h1: pin.h1.clone(),
                old_commit: pin.commit.clone(),
                at: pin.at.clone(),
                new_h1: h1.to_string(),
                new_commit: commit.to_string(),
            })));
        }
        let at = now();
        self.append(&Record::Pin {
            module: module.to_string(),
            version: version.to_string(),
            file,
            h1: h1.to_string(),
            commit: commit.to_string(),
            at: at.clone(),
        })?;
        self.refresh(&mut loaded)?;
        Ok(Checked::Pinned)
    }

    /// The pins of `module@version`.
    pub fn get(&self, module: &str, version: &str) -> Result<Vec<(PinFile, Pin)>, PinError> {
        let mut loaded = self.loaded.lock().expect("not poisoned");
        self.refresh(&mut loaded)?;
        Ok(of_version(&loaded.pins, module, version))
    }

    /// Accepts the next content of `module@version`: its pins are dropped, with who and why.
    pub fn repin(
        &self,
        module: &str,
        version: &str,
        reason: &str,
        by: &str,
    ) -> Result<(), PinError> {
        self.append(&Record::Repin {
            module: module.to_string(),
            version: version.to_string(),
            reason: reason.to_string(),
            by: by.to_string(),
            at: now(),
        })
    }

    /// Records that `module@version`'s `file` hashing to `h1` was proven against `db`'s tree
    /// of size `tree` (once per content: a repeat proof is not logged again). Blocking.
    pub fn verified(
        &self,
        module: &str,
        version: &str,
        file: PinFile,
        h1: &str,
        db: &str,
        tree: u64,
    ) -> Result<(), PinError> {
        let mut loaded = self.loaded.lock().expect("not poisoned");
        self.refresh(&mut loaded)?;
        let key = (module.to_string(), version.to_string(), file);
        if loaded
            .verified
            .get(&key)
            .is_some_and(|v| v.h1 == h1 && v.db == db)
        {
            return Ok(());
        }
        self.append(&Record::Verified {
            module: module.to_string(),
            version: version.to_string(),
            file,
            h1: h1.to_string(),
            db: db.to_string(),
            tree,
            at: now(),
        })?;
        self.refresh(&mut loaded)
    }

    /// The proofs recorded for `module@version`.
    pub fn proofs(
        &self,
        module: &str,
        version: &str,
    ) -> Result<Vec<(PinFile, Verified)>, PinError> {
        let mut loaded = self.loaded.lock().expect("not poisoned");
        self.refresh(&mut loaded)?;
        Ok(of_version(&loaded.verified, module, version))
    }

    /// Calls `f` with a lookup of how each cached file was proven, the log read once (for
    /// reports over every entry).
    pub fn with_proofs<T>(
        &self,
        f: impl FnOnce(&dyn Fn(&str, &str, PinFile) -> Proof) -> T,
    ) -> Result<T, PinError> {
        let mut loaded = self.loaded.lock().expect("not poisoned");
        self.refresh(&mut loaded)?;
        let loaded = &*loaded;
        let lookup = |module: &str, version: &str, file: PinFile| {
            let key = (module.to_string(), version.to_string(), file);
            if loaded.pins.contains_key(&key) {
                Proof::Pinned
            } else if loaded.verified.contains_key(&key) {
                Proof::Verified
            } else {
                Proof::None
            }
        };
        Ok(f(&lookup))
    }

    /// Whether `module@version`'s `file` was proven against a checksum database.
    pub fn is_verified(
        &self,
        module: &str,
        version: &str,
        file: PinFile,
    ) -> Result<bool, PinError> {
        let mut loaded = self.loaded.lock().expect("not poisoned");
        self.refresh(&mut loaded)?;
        Ok(loaded
            .verified
            .contains_key(&(module.to_string(), version.to_string(), file)))
    }

    /// Takes `theirs` as the pin of `module@version`'s `file` (the shared bucket's, which an
    /// operator's repin on another replica changed): a repin record naming why, then the pins.
    /// Blocking.
    pub fn adopt(
        &self,
        module: &str,
        version: &str,
        file: PinFile,
        theirs: &Pin,
        why: &str,
    ) -> Result<(), PinError> {
        let mut loaded = self.loaded.lock().expect("not poisoned");
        self.refresh(&mut loaded)?;
        let kept: Vec<(PinFile, Pin)> = of_version(&loaded.pins, module, version)
            .into_iter()
            .filter(|(f, _)| *f != file)
            .collect();
        self.append(&Record::Repin {
            module: module.to_string(),
            version: version.to_string(),
            reason: why.to_string(),
            by: "shared bucket".to_string(),
            at: now(),
        })?;
        for (f, pin) in kept.iter().chain([(file, theirs.clone())].iter()) {
            self.append(&Record::Pin {
                module: module.to_string(),
                version: version.to_string(),
                file: *f,
                h1: pin.h1.clone(),
                commit: pin.commit.clone(),
                at: pin.at.clone(),
            })?;
        }
        self.refresh(&mut loaded)
    }

    /// Every pin held: module, version, file and pin.
    pub fn all(&self) -> Result<Vec<(String, String, PinFile, Pin)>, PinError> {
        let mut loaded = self.loaded.lock().expect("not poisoned");
        self.refresh(&mut loaded)?;
        Ok(loaded
            .pins
            .iter()
            .map(|((m, v, f), p)| (m.clone(), v.clone(), *f, p.clone()))
            .collect())
    }

    /// Number of pins held.
    pub fn count(&self) -> Result<usize, PinError> {
        let mut loaded = self.loaded.lock().expect("not poisoned");
        self.refresh(&mut loaded)?;
        Ok(loaded.pins.len())
    }
}

/// The entries of `map` for `module@version`, go.mod before zip.
fn of_version<T: Clone>(map: &HashMap<Key, T>, module: &str, version: &str) -> Vec<(PinFile, T)> {
    let mut out: Vec<(PinFile, T)> = map
        .iter()
        .filter(|((m, v, _), _)| m == module && v == version)
        .map(|((_, _, f), t)| (*f, t.clone()))
        .collect();
    out.sort_by_key(|(f, _)| *f as u8);
    out
}

/// Where the pin of `module@version`'s `file` lives in the shared bucket (written once, so
/// replicas agree): `integrity/pins/<escaped module>@<escaped version>/<mod|zip>`.
pub fn shared_key(
    module: &modgate_core::gomod::path::ModulePath,
    version: &str,
    file: PinFile,
) -> String {
    format!(
        "integrity/pins/{}@{}/{}",
        module.escaped(),
        modgate_core::gomod::path::escape_version(version).unwrap_or_else(|_| version.to_string()),
        match file {
            PinFile::Mod => "mod",
            PinFile::Zip => "zip",
        }
    )
}

/// Now, as the log writes times.
pub fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_content_is_pinned_later_changes_refused_until_repinned() {
        let dir = tempfile::tempdir().unwrap();
        let pins = Pins::new(dir.path());
        let check = |p: &Pins, h1: &str, commit: &str| {
            p.check("m.corp/x", "v1.0.0", PinFile::Zip, h1, commit)
        };
        assert_eq!(check(&pins, "h1:a", "c1").unwrap(), Checked::Pinned);
        assert_eq!(check(&pins, "h1:a", "c1").unwrap(), Checked::Matched);
        // The go.mod is pinned on its own.
        assert_eq!(
            pins.check("m.corp/x", "v1.0.0", PinFile::Mod, "h1:m", "c1")
                .unwrap(),
            Checked::Pinned
        );
        let err = check(&pins, "h1:b", "c2").unwrap_err().to_string();
        assert!(
            err.contains("pinned h1:a (commit c1") && err.contains("now gives h1:b (commit c2)"),
            "{err}"
        );
        // A restart (a new reader of the same log) remembers.
        let again = Pins::new(dir.path());
        assert!(check(&again, "h1:b", "c2").is_err());
        // A repin, by another process, reaches the first reader too.
        again
            .repin("m.corp/x", "v1.0.0", "history rewritten on purpose", "ops")
            .unwrap();
        assert_eq!(check(&pins, "h1:b", "c2").unwrap(), Checked::Pinned);
        assert!(check(&again, "h1:a", "c1").is_err());
        let log = std::fs::read_to_string(dir.path().join("integrity/pins.log")).unwrap();
        assert_eq!(log.lines().count(), 4, "{log}");
        assert!(
            log.contains("\"reason\":\"history rewritten on purpose\""),
            "{log}"
        );
    }

    #[test]
    fn a_half_written_last_line_is_left_for_later() {
        let dir = tempfile::tempdir().unwrap();
        let pins = Pins::new(dir.path());
        pins.check("m.corp/x", "v1.0.0", PinFile::Zip, "h1:a", "c1")
            .unwrap();
        let path = dir.path().join("integrity/pins.log");
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"pin":{"module":"m.corp/y""#).unwrap();
        let again = Pins::new(dir.path());
        assert_eq!(again.count().unwrap(), 1);
        // The next pin starts a line of its own: nothing after the cut is lost.
        again
            .check("m.corp/z", "v1.0.0", PinFile::Zip, "h1:z", "c9")
            .unwrap();
        assert_eq!(Pins::new(dir.path()).count().unwrap(), 2);
    }
}
