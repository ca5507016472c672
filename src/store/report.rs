//! The report of `modgate cache stats`: entries and bytes by kind, how the cached go.mod files
//! and zips were proven, and the least recent entry. The running gateway makes it from its index
//! (`/cache/stats` on the admin listener, within a second or two at a million entries); the
//! command makes it from a walk of the directory when no gateway serves the cache.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, SystemTime};

use modgate_core::cache_key::{CacheKey, Entry, ModuleFile};

use crate::store::disk::Indexing;
use crate::store::pins::{PinFile, Proof};

/// Counts over the entries of a cache.
#[derive(Debug, Default)]
pub struct CacheReport {
    entries: usize,
    bytes: u64,
    by_kind: BTreeMap<&'static str, (usize, u64)>,
    verified: usize,
    pinned: usize,
    unproven: usize,
    /// The least recently used (or, from a walk, written) entry.
    oldest: Option<(String, SystemTime)>,
}

fn kind_of(parsed: &Result<(CacheKey, bool), impl Sized>) -> &'static str {
    match parsed {
        Ok((_, true)) => "not-found answers",
        Ok((key, false)) => key.kind().describe(),
        Err(_) => "other entries",
    }
}

impl CacheReport {
    /// Counts one entry; `proof` says how a module's go.mod file or zip was proven.
    pub fn add(
        &mut self,
        key: &str,
        size: u64,
        last: SystemTime,
        proof: &dyn Fn(&str, &str, PinFile) -> Proof,
    ) {
        self.entries += 1;
        self.bytes += size;
        let parsed = CacheKey::parse(key);
        let e = self.by_kind.entry(kind_of(&parsed)).or_default();
        e.0 += 1;
        e.1 += size;
        if self.oldest.as_ref().is_none_or(|(_, t)| last < *t) {
            self.oldest = Some((key.to_string(), last));
        }
        let Ok((key, false)) = parsed else { return };
        let Entry::Module { module, file } = key.entry() else {
            return;
        };
        let (v, f) = match file {
            ModuleFile::Mod(v) => (v, PinFile::Mod),
            ModuleFile::Zip(v) => (v, PinFile::Zip),
            _ => return,
        };
        match proof(module.as_str(), v, f) {
            Proof::Pinned => self.pinned += 1,
            Proof::Verified => self.verified += 1,
            Proof::None => self.unproven += 1,
        }
    }

    /// The report's text; `indexing` for a gateway's index, `None` for a walk.
    pub fn render(
        &self,
        cache_dir: &Path,
        bound: bytesize::ByteSize,
        indexing: Option<Indexing>,
    ) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "cache:       {}", cache_dir.display());
        match indexing {
            Some(ix) if !ix.complete => {
                let _ = writeln!(
                    out,
                    "index:       the running gateway's, building ({} entries so far, {} s since it started): the figures below are partial",
                    ix.entries,
                    ix.elapsed.as_secs()
                );
            }
            Some(_) => {
                let _ = writeln!(out, "index:       the running gateway's, complete");
            }
            None => {
                let _ = writeln!(
                    out,
                    "index:       no gateway serves this cache; read from the directory"
                );
            }
        }
        let _ = writeln!(
            out,
            "entries:     {} ({} of {} bound)",
            self.entries,
            bytesize::ByteSize::b(self.bytes),
            bound
        );
        for (kind, (n, b)) in &self.by_kind {
            let _ = writeln!(out, "  {kind:<22} {n:>8}  {}", bytesize::ByteSize::b(*b));
        }
        let _ = writeln!(
            out,
            "proofs:      {} go.mod/zip entries verified against a checksum database, {} pinned (private), {} unverified",
            self.verified, self.pinned, self.unproven
        );
        match &self.oldest {
            Some((k, t)) => {
                let age = SystemTime::now().duration_since(*t).unwrap_or_default();
                let _ = writeln!(
                    out,
                    "oldest:      {k} ({} ago)",
                    humantime::format_duration(Duration::from_secs(age.as_secs()))
                );
            }
            None => {
                let _ = writeln!(out, "oldest:      (empty)");
            }
        }
        out
    }
}

/// The report of a running gateway's cache, from its index. Blocking (reads the pin log).
pub fn of_index(
    cache: &crate::store::disk::DiskCache,
    pins: &crate::store::pins::Pins,
    bound: bytesize::ByteSize,
) -> Result<String, crate::store::pins::PinError> {
    let indexing = cache.indexing();
    let mut report = CacheReport::default();
    pins.with_proofs(|proof| {
        cache.for_each_entry(|key, size, last| report.add(key, size, last, proof));
    })?;
    Ok(report.render(cache.root(), bound, Some(indexing)))
}
