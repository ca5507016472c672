//! The module firewall offline: `modgate explain MODULE@VERSION` and `modgate policy check
//! go.sum` decide with the same pure rules the gateway uses, from the facts in the local cache
//! (`.info` times, the mirrored vulnerability database). Nothing is fetched: a fact the cache
//! does not hold makes the verdict "unknown" rather than a guess.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::Path;
use std::time::SystemTime;

use crate::config::Config;
use crate::store::disk::DiskCache;
use modgate_core::cache_key::{CacheKey, VulnDbPath};
use modgate_core::gomod::osv;
use modgate_core::gomod::path::{ModulePath, escape_path};
use modgate_core::policy::classify::ProxyOp;
use modgate_core::policy::firewall::{Client, Decision, Facts, Firewall, Purpose, Verdict};

/// Who a decision is for (`--as USER`, `--from ADDR`).
#[derive(Debug, Clone, Default)]
pub struct Who {
    pub user: Option<String>,
    pub addr: Option<IpAddr>,
}

impl Who {
    pub fn new(user: Option<String>, addr: Option<IpAddr>) -> Who {
        Who { user, addr }
    }

    fn client(&self) -> Client<'_> {
        Client {
            user: self.user.as_deref(),
            addr: self.addr,
        }
    }
}

/// A decision and whether the facts it needed were all in the cache.
#[derive(Debug)]
pub struct Offline {
    pub decision: Decision,
    /// What the cache did not hold (empty when the decision is certain).
    pub missing: Vec<String>,
}

impl Offline {
    /// `allowed`, `refused`, or `unknown` (refused only for want of a fact).
    pub fn verdict(&self) -> &'static str {
        match self.decision.verdict {
            Verdict::Allowed => "allowed",
            Verdict::Refused if self.missing.is_empty() => "refused",
            Verdict::Refused => "unknown",
        }
    }
}

/// The cached bytes of `key`, if the cache holds them.
fn cached(config: &Config, key: &CacheKey) -> Option<Vec<u8>> {
    let file = DiskCache::file_in(&config.storage.data_dir, key.as_str())?;
    std::fs::read(file).ok()
}

/// Decides `module@version` for `who` from the local cache.
pub fn decide(
    config: &Config,
    fw: &Firewall,
    module: &str,
    version: &str,
    who: &Who,
) -> anyhow::Result<Offline> {
    let client = who.client();
    let needs = fw.needs(module, version, &client, Purpose::Fetch);
    let mut facts = Facts::default();
    let mut missing = vec![];
    if needs.published {
        let key = CacheKey::proxy(&ModulePath::new(module)?, &ProxyOp::Info(version.into()));
        facts.published = cached(config, &key)
            .as_deref()
            .and_then(modgate_core::policy::firewall::info_time);
        if facts.published.is_none() {
            missing.push(format!("{module}@{version}.info (its publish time)"));
        }
    }
    if needs.advisories {
        match advisories(config, module, version) {
            Ok(a) => facts.advisories = a,
            Err(e) => {
                missing.push(e.clone());
                facts.advisories_unknown = Some(e);
            }
        }
    }
    let decision = fw.decide(
        module,
        version,
        &client,
        Purpose::Fetch,
        &facts,
        SystemTime::now(),
    );
    Ok(Offline { decision, missing })
}

/// Advisories from the cached copy of the vulnerability database.
fn advisories(config: &Config, module: &str, version: &str) -> Result<Vec<osv::Advisory>, String> {
    let base = crate::gateway::compile::vulndb(config)
        .map_err(|e| e.to_string())?
        .ok_or("no vulnerability database is configured (vulndb.url)")?;
    let host = modgate_core::policy::host::normalize_host(base.host());
    // A path the cache could not hold (an odd id in the index) is simply not cached.
    let db_file = |p: &str| cached(config, &CacheKey::vulndb(&host, VulnDbPath::new(p)?));
    let not_cached = || {
        format!(
            "the vulnerability database's index (not in the cache: run govulncheck or a build through the gateway once, or let the gateway fetch {})",
            config.vulndb.url
        )
    };
    if let Some(index) = db_file("index/modules.json") {
        let mut out = vec![];
        for id in osv::index_ids(&index, module).map_err(|e| e.to_string())? {
            let entry = db_file(&format!("ID/{id}.json"))
                .ok_or_else(|| format!("advisory {id} (not in the cache)"))?;
            if let Some(a) = osv::affects(&entry, module, version).map_err(|e| e.to_string())? {
                out.push(a);
            }
        }
        return Ok(out);
    }
    let escaped = escape_path(module).map_err(|e| e.to_string())?;
    match db_file(&format!("{escaped}.json")) {
        Some(entries) => osv::affects_all(&entries, module, version).map_err(|e| e.to_string()),
        None if db_file("index.json").is_some() => Ok(vec![]),
        None => Err(not_cached()),
    }
}

/// The firewall lines of `modgate explain MODULE@VERSION`.
pub fn explain_lines(
    config: &Config,
    fw: &Firewall,
    module: &str,
    version: &str,
    who: &Who,
) -> anyhow::Result<String> {
    let mut out = String::new();
    if !fw.is_active() {
        let _ = writeln!(out, "firewall:    off (no [[firewall.rules]])");
        return Ok(out);
    }
    let o = decide(config, fw, module, version, who)?;
    let d = &o.decision;
    let _ = writeln!(
        out,
        "firewall:    {} by {} for group {}",
        o.verdict(),
        if d.rule == modgate_core::policy::firewall::DEFAULT_RULE {
            "the default".to_string()
        } else {
            format!("rule {}", d.rule)
        },
        d.group
    );
    if d.verdict == Verdict::Refused {
        let _ = writeln!(out, "answer:      403 {}", d.refusal_text(module, version));
    }
    for (rule, why) in &d.reported {
        let _ = writeln!(out, "report:      rule {rule} would refuse it: {why}");
    }
    for m in &o.missing {
        let _ = writeln!(out, "not cached:  {m}");
    }
    Ok(out)
}

/// The module versions of a go.sum, each once.
pub fn go_sum_versions(text: &str) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = BTreeSet::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let mut f = line.split_whitespace();
        let (Some(m), Some(v), Some(h)) = (f.next(), f.next(), f.next()) else {
            anyhow::bail!("line {}: not a go.sum line: {line:?}", n + 1);
        };
        anyhow::ensure!(
            h.starts_with("h1:"),
            "line {}: not a go.sum line (no h1: hash): {line:?}",
            n + 1
        );
        let v = v.strip_suffix("/go.mod").unwrap_or(v);
        out.insert((m.to_string(), v.to_string()));
    }
    Ok(out.into_iter().collect())
}

/// `modgate policy check`: a table of every module version of `go_sum` that would not be
/// allowed; the exit code is 0 when all are allowed, 1 when any is refused, 3 when none is
/// refused but some could not be decided from the cache.
pub fn check(
    config: &Config,
    go_sum: &Path,
    who: &Who,
    all: bool,
) -> anyhow::Result<(String, i32)> {
    let policy = crate::gateway::compile::policy(config)?;
    let fw = &policy.firewall;
    let text = std::fs::read_to_string(go_sum)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", go_sum.display()))?;
    let versions = go_sum_versions(&text)?;
    let mut rows = vec![];
    let (mut refused, mut unknown) = (0, 0);
    for (m, v) in &versions {
        if policy.rules.private.matching(m).is_some() {
            continue;
        }
        let o = decide(config, fw, m, v, who)?;
        match o.verdict() {
            "refused" => refused += 1,
            "unknown" => unknown += 1,
            _ => {}
        }
        let reported = !o.decision.reported.is_empty();
        if all || o.verdict() != "allowed" || reported {
            let mut why = o.decision.why.clone();
            for (rule, w) in &o.decision.reported {
                why.push_str(&format!(" [report {rule}: {w}]"));
            }
            if !o.missing.is_empty() {
                why.push_str(&format!(" [not cached: {}]", o.missing.join(", ")));
            }
            rows.push([
                format!("{m}@{v}"),
                o.verdict().to_string(),
                o.decision.rule.clone(),
                why.trim().to_string(),
            ]);
        }
    }
    let mut out = String::new();
    if !rows.is_empty() {
        let w0 = rows.iter().map(|r| r[0].len()).max().unwrap_or(0).max(6);
        let w2 = rows.iter().map(|r| r[2].len()).max().unwrap_or(0).max(4);
        let _ = writeln!(
            out,
            "{:<w0$}  {:<8}  {:<w2$}  WHY",
            "MODULE", "VERDICT", "RULE"
        );
        for r in &rows {
            let _ = writeln!(out, "{:<w0$}  {:<8}  {:<w2$}  {}", r[0], r[1], r[2], r[3]);
        }
    }
    let _ = writeln!(
        out,
        "{} module versions checked for group {}: {} refused, {} unknown (facts not in the cache)",
        versions.len(),
        fw.group_of(&who.client()),
        refused,
        unknown
    );
    let code = if refused > 0 {
        1
    } else if unknown > 0 {
        3
    } else {
        0
    };
    Ok((out, code))
}
