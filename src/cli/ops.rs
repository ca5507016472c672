//! Operator commands on the module cache: `cache stats`, `cache gc` and `cache verify`. They work
//! on the data directory directly and are safe to run beside a running gateway (fills in progress
//! are left alone; an entry removed here is fetched again, since a running gateway looks at an
//! entry's file at least once a second).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use crate::config::Config;
use crate::store::content::check_entry;
use crate::store::disk::DiskCache;
use crate::store::pins::{PinFile, Pins};
use crate::store::report::CacheReport;
use crate::telemetry::metrics::Metrics;
use modgate_core::cache_key::{CacheKey, Entry, ModuleFile, SumDbItem};
use modgate_core::gomod::dirhash;
use modgate_core::gomod::path::ModulePath;
use modgate_core::policy::classify::ProxyOp;

/// The gateway's cache, which must exist: the operator commands never create one (a typo in
/// `--config` would otherwise leave an empty cache behind and report on it).
fn open(config: &Config) -> anyhow::Result<DiskCache> {
    let dir = config.storage.data_dir.join("cache");
    anyhow::ensure!(
        dir.is_dir(),
        "no module cache at {} (storage.data_dir of this configuration; has the gateway run with it?)",
        dir.display()
    );
    Ok(DiskCache::open_shared(
        &config.storage.data_dir,
        u64::MAX,
        Metrics::new().store(),
    )?)
}

/// `modgate cache stats`: from the running gateway's index when a gateway serving this data
/// directory answers on the admin listener (fast at any size), otherwise from a walk of the
/// directory.
pub fn stats(config: &Config) -> anyhow::Result<String> {
    let mut out = match admin_get(config, "/cache/stats") {
        Ok((200, text)) => text,
        _ => {
            let cache = open(config)?;
            let log = Pins::new(&config.storage.data_dir);
            let mut report = CacheReport::default();
            log.with_proofs(|proof| {
                for (key, size, modified) in cache.list() {
                    report.add(&key, size, modified, proof);
                }
            })?;
            report.render(cache.root(), config.cache.max_size, None)
        }
    };
    let _ = writeln!(out, "hit ratio:   {}", hit_ratio(config));
    Ok(out)
}

/// Why an answer from the admin listener is not the one wanted.
#[derive(Debug, thiserror::Error)]
enum AdminError {
    #[error("no gateway answering on {0}")]
    Unreachable(std::net::SocketAddr),
    #[error("the gateway answering on {addr} serves another data directory, {theirs}")]
    OtherDir {
        addr: std::net::SocketAddr,
        theirs: String,
    },
    #[error("what answers on {0} does not say which data directory it serves")]
    Unnamed(std::net::SocketAddr),
}

/// GET `path` from the admin listener of the gateway serving this configuration's data
/// directory: the status and body.
fn admin_get(config: &Config, path: &str) -> Result<(u16, String), AdminError> {
    use std::io::{Read, Write};
    let addr = config.admin.listen;
    let fetch = || -> std::io::Result<String> {
        let mut s = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2))?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
        )?;
        let mut body = String::new();
        s.read_to_string(&mut body)?;
        Ok(body)
    };
    let text = fetch().map_err(|_| AdminError::Unreachable(addr))?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let theirs = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case(crate::gateway::admin::DATA_DIR_HEADER)
            .then(|| value.trim().to_string())
    });
    let ours = std::fs::canonicalize(&config.storage.data_dir)
        .map(|d| d.to_string_lossy().into_owned())
        .unwrap_or_default();
    match theirs {
        Some(t) if t == ours => Ok((status, body.to_string())),
        Some(theirs) => Err(AdminError::OtherDir { addr, theirs }),
        None => Err(AdminError::Unnamed(addr)),
    }
}

/// The running gateway's hit ratio since it started, read from its admin listener.
fn hit_ratio(config: &Config) -> String {
    let text = match admin_get(config, "/metrics") {
        Ok((_, text)) => text,
        Err(e) => return format!("unknown ({e})"),
    };
    let mut counts: BTreeMap<String, f64> = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("modgate_request_duration_seconds_count{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let Some(cache) = labels.split(',').find_map(|l| l.strip_prefix("cache=\"")) else {
            continue;
        };
        *counts
            .entry(cache.trim_end_matches('"').to_string())
            .or_default() += value.parse::<f64>().unwrap_or(0.0);
    }
    let get = |k: &str| counts.get(k).copied().unwrap_or(0.0);
    let served = get("hit") + get("coalesced");
    let all = served + get("miss") + get("stale");
    if all == 0.0 {
        return "no cacheable requests since the gateway started".into();
    }
    format!(
        "{:.1}% ({} hits, {} coalesced, {} misses, {} stale since the gateway started)",
        100.0 * served / all,
        get("hit"),
        get("coalesced"),
        get("miss"),
        get("stale")
    )
}

/// `modgate cache gc`: evicts least recently modified entries until `cache.max_size` holds.
pub fn gc(config: &Config) -> anyhow::Result<String> {
    let cache = open(config)?;
    let before = cache.usage();
    let bounded = DiskCache::open_shared(
        &config.storage.data_dir,
        config.cache.max_size.as_u64(),
        Metrics::new().store(),
    )?;
    let after = bounded.usage();
    Ok(format!(
        "before: {} entries, {}\nafter:  {} entries, {} (bound {})\nevicted {} entries\n",
        before.0,
        bytesize::ByteSize::b(before.1),
        after.0,
        bytesize::ByteSize::b(after.1),
        config.cache.max_size,
        before.0 - after.0
    ))
}

/// What `verify` found.
#[derive(Debug, Default)]
pub struct VerifyReport {
    pub checked: usize,
    pub corrupt: Vec<(String, String)>,
}

/// `modgate cache verify`: re-runs the checks every fill runs on every module entry (zips:
/// x/mod rules, CRC-32 and sizes; `.info`, `.mod`, lists: [`check_entry`]), compares zips and
/// go.mod files against a cached checksum-database record when one exists, and removes corrupt
/// entries.
pub fn verify(config: &Config) -> anyhow::Result<VerifyReport> {
    let cache = open(config)?;
    let mut report = VerifyReport::default();
    let entries: Vec<(String, Result<(CacheKey, bool), _>)> = cache
        .list()
        .into_iter()
        .map(|(key, _, _)| {
            let parsed = CacheKey::parse(&key);
            (key, parsed)
        })
        .collect();
    // (module, version) -> record lines from cached sumdb lookups.
    let mut records: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for (key, parsed) in &entries {
        let Ok((k, false)) = parsed else {
            continue;
        };
        let Entry::SumDb {
            item: SumDbItem::Lookup { .. },
            ..
        } = k.entry()
        else {
            continue;
        };
        let Some(path) = cache.file_of(key) else {
            continue;
        };
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        for line in text.lines().skip(1).take_while(|l| !l.is_empty()) {
            let f: Vec<&str> = line.split(' ').collect();
            if f.len() == 3 {
                let v = f[1].trim_end_matches("/go.mod").to_string();
                records
                    .entry((f[0].to_string(), v))
                    .or_default()
                    .push(line.to_string());
            }
        }
    }
    for (key, parsed) in &entries {
        let (k, module, file) = match parsed {
            Ok((k, false)) => match k.entry() {
                Entry::Module { module, file } => (k, module, file),
                Entry::SumDb { .. } | Entry::VulnDb { .. } => continue,
            },
            Ok((_, true)) => continue,
            Err(e) if key.starts_with("mod/") => {
                cache.remove(key);
                report.corrupt.push((key.clone(), e.to_string()));
                continue;
            }
            Err(_) => continue,
        };
        let Some(path) = cache.file_of(key) else {
            continue;
        };
        report.checked += 1;
        let problem = match std::fs::File::open(&path) {
            Ok(f) => check_entry(k, &f).err().map(|e| e.to_string()),
            Err(_) => None, // removed meanwhile
        }
        .or_else(|| match file {
            ModuleFile::Zip(v) => zip_against_records(module, v, &path, &records),
            ModuleFile::Mod(v) => mod_against_records(module, v, &path, &records),
            _ => None,
        });
        if let Some(reason) = problem {
            cache.remove(key);
            report.corrupt.push((key.clone(), reason));
        }
    }
    Ok(report)
}

/// A zip's h1: hash against a cached checksum-database record, when one is cached.
fn zip_against_records(
    module: &ModulePath,
    v: &str,
    path: &Path,
    records: &BTreeMap<(String, String), Vec<String>>,
) -> Option<String> {
    let want = records.get(&(module.to_string(), v.to_string()))?;
    let got = match dirhash::hash_zip(std::fs::File::open(path).ok()?) {
        Ok(h) => h,
        Err(e) => return Some(format!("cannot hash: {e}")),
    };
    let line = format!("{module} {v} {got}");
    let expected = want.iter().find(|l| !l.contains("/go.mod "))?;
    (expected != &line)
        .then(|| format!("hash {got} does not match the checksum database ({expected})"))
}

/// A go.mod's h1: hash against a cached checksum-database record, when one is cached.
fn mod_against_records(
    module: &ModulePath,
    v: &str,
    path: &Path,
    records: &BTreeMap<(String, String), Vec<String>>,
) -> Option<String> {
    let want = records.get(&(module.to_string(), v.to_string()))?;
    let data = std::fs::read(path).ok()?;
    let line = format!("{module} {v}/go.mod {}", dirhash::hash_go_mod(&data));
    let expected = want.iter().find(|l| l.contains("/go.mod "))?;
    (expected != &line).then(|| "go.mod hash does not match the checksum database".to_string())
}

/// `module@version`, checked.
fn module_version(target: &str) -> anyhow::Result<(ModulePath, String)> {
    let (m, v) = target
        .split_once('@')
        .ok_or_else(|| anyhow::anyhow!("{target:?}: expected module@version"))?;
    let module = ModulePath::new(m)?;
    anyhow::ensure!(
        modgate_core::gomod::version::is_canonical(v),
        "{v:?} is not a canonical version (vX.Y.Z)"
    );
    Ok((module, v.to_string()))
}

/// `modgate integrity repin MODULE@VERSION --reason TEXT`.
pub fn repin(config: &Config, target: &str, reason: &str) -> anyhow::Result<String> {
    let (module, version) = module_version(target)?;
    anyhow::ensure!(!reason.trim().is_empty(), "--reason must say why");
    let pins = Pins::new(&config.storage.data_dir);
    let held = pins.get(module.as_str(), &version)?;
    let by = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    pins.repin(module.as_str(), &version, reason, &by)?;
    // With a shared bucket, the fleet's pins there go too: the next replica to serve the
    // version pins it again, and the others adopt that pin.
    let mut shared_note = String::new();
    if let Some(bucket) = &config.shared_cache.bucket {
        let rt = tokio::runtime::Runtime::new()?;
        rt.block_on(async {
            let events = prometheus::IntCounterVec::new(
                prometheus::Opts::new("cli_shared_cache_events", "unused"),
                &["event"],
            )
            .expect("metric");
            let shared =
                crate::store::shared::SharedStore::connect(&config.shared_cache, bucket, events)
                    .await?;
            for file in [PinFile::Mod, PinFile::Zip] {
                shared
                    .delete_small(&crate::store::pins::shared_key(&module, &version, file))
                    .await
                    .map_err(|e| anyhow::anyhow!("shared_cache: removing the pins: {e}"))?;
            }
            anyhow::Ok(())
        })?;
        shared_note = format!(", and its pins in the shared bucket {bucket:?}");
    }
    // Its cached files go too (when there is a cache), so the next fetch builds it again.
    for op in [
        ProxyOp::Info(version.clone()),
        ProxyOp::Mod(version.clone()),
        ProxyOp::Zip(version.clone()),
    ] {
        if let Ok(cache) = open(config) {
            cache.remove(CacheKey::proxy(&module, &op).as_str());
        }
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "repinned {module}@{version} (by {by}: {reason}); {} pin(s) dropped{shared_note}, its cached files removed; the next fetch pins what the repository has now",
        held.len()
    );
    Ok(out)
}

/// `modgate integrity show MODULE@VERSION`.
pub fn show_pins(config: &Config, target: &str) -> anyhow::Result<String> {
    let (module, version) = module_version(target)?;
    let pins = Pins::new(&config.storage.data_dir).get(module.as_str(), &version)?;
    let mut out = String::new();
    if pins.is_empty() {
        let _ = writeln!(out, "{module}@{version}: not pinned");
    }
    for (file, pin) in pins {
        let what = match file {
            PinFile::Mod => "go.mod",
            PinFile::Zip => "zip",
        };
        let _ = writeln!(
            out,
            "{module}@{version} {what}: {} (commit {}, pinned {})",
            pin.h1, pin.commit, pin.at
        );
    }
    Ok(out)
}
