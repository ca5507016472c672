//! The Go vulnerability database's formats (golang.org/x/vuln, OSV with Go's conventions):
//! `index/modules.json` (which advisories name a module) and the OSV entries themselves
//! (`ID/GO-….json`, or a list of them in the legacy `<module>.json` files), and whether an
//! entry's SEMVER ranges cover a module version. OSV versions carry no `v` (`1.2.3`).

use serde::Deserialize;

use crate::gomod::version;

/// An advisory affecting a version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advisory {
    pub id: String,
    pub aliases: Vec<String>,
    /// The first version that fixes it after the affected version, if any (`v1.2.1`).
    pub fixed: Option<String>,
}

/// A file of the database that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid vulnerability-database file: {0}")]
pub struct OsvError(String);

#[derive(Deserialize)]
struct IndexModule {
    path: String,
    #[serde(default)]
    vulns: Vec<IndexVuln>,
}

#[derive(Deserialize)]
struct IndexVuln {
    id: String,
}

#[derive(Deserialize)]
struct Entry {
    id: String,
    #[serde(default)]
    aliases: Vec<String>,
    #[serde(default)]
    affected: Vec<Affected>,
}

#[derive(Deserialize)]
struct Affected {
    package: Package,
    #[serde(default)]
    ranges: Vec<Range>,
}

#[derive(Deserialize)]
struct Package {
    name: String,
}

#[derive(Deserialize)]
struct Range {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    events: Vec<Event>,
}

#[derive(Deserialize)]
struct Event {
    introduced: Option<String>,
    fixed: Option<String>,
}

/// The ids of the advisories `index/modules.json` lists for `module`.
pub fn index_ids(index: &[u8], module: &str) -> Result<Vec<String>, OsvError> {
    let mods: Vec<IndexModule> =
        serde_json::from_slice(index).map_err(|e| OsvError(e.to_string()))?;
    Ok(mods
        .into_iter()
        .filter(|m| m.path == module)
        .flat_map(|m| m.vulns.into_iter().map(|v| v.id))
        .collect())
}

/// Whether the OSV entry `entry` affects `module@version`, as an [`Advisory`].
pub fn affects(entry: &[u8], module: &str, v: &str) -> Result<Option<Advisory>, OsvError> {
    let e: Entry = serde_json::from_slice(entry).map_err(|e| OsvError(e.to_string()))?;
    Ok(entry_affects(&e, module, v))
}

/// The advisories of a legacy `<module>.json` file (a list of OSV entries) affecting
/// `module@version`.
pub fn affects_all(entries: &[u8], module: &str, v: &str) -> Result<Vec<Advisory>, OsvError> {
    let es: Vec<Entry> = serde_json::from_slice(entries).map_err(|e| OsvError(e.to_string()))?;
    Ok(es
        .iter()
        .filter_map(|e| entry_affects(e, module, v))
        .collect())
}

fn entry_affects(e: &Entry, module: &str, v: &str) -> Option<Advisory> {
    // Go's database names the standard library "stdlib" and the toolchain "toolchain"; both
    // are matched by name like any module.
    let base = v.split('+').next().unwrap_or(v);
    for a in e.affected.iter().filter(|a| a.package.name == module) {
        // No ranges: every version is affected.
        if a.ranges.is_empty() {
            return Some(advisory(e, None));
        }
        for r in a.ranges.iter().filter(|r| r.kind == "SEMVER") {
            if let Some(fixed) = range_affects(&r.events, base) {
                return Some(advisory(e, fixed));
            }
        }
    }
    None
}

fn advisory(e: &Entry, fixed: Option<String>) -> Advisory {
    Advisory {
        id: e.id.clone(),
        aliases: e.aliases.clone(),
        fixed,
    }
}

/// `Some(first fixed version after v)` when `v` lies in the range.
fn range_affects(events: &[Event], v: &str) -> Option<Option<String>> {
    let semver = |s: &str| {
        if s == "0" {
            "v0.0.0-0".to_string()
        } else {
            format!("v{s}")
        }
    };
    let mut points: Vec<(String, bool)> = events
        .iter()
        .filter_map(|e| match (&e.introduced, &e.fixed) {
            (Some(i), _) => Some((semver(i), true)),
            (None, Some(f)) => Some((semver(f), false)),
            _ => None,
        })
        .collect();
    points.sort_by(|a, b| version::compare(&a.0, &b.0));
    let mut affected = false;
    for (at, introduced) in &points {
        if version::compare(at, v).is_gt() {
            return match (affected, introduced) {
                (true, false) => Some(Some(at.clone())),
                (true, true) => Some(None),
                (false, _) => None,
            };
        }
        affected = *introduced;
    }
    affected.then_some(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENTRY: &str = r#"{
      "schema_version": "1.3.1",
      "id": "GO-2026-0001",
      "aliases": ["CVE-2026-0001"],
      "affected": [{
        "package": {"name": "example.com/m", "ecosystem": "Go"},
        "ranges": [{"type": "SEMVER", "events": [
          {"introduced": "0"}, {"fixed": "1.2.1"},
          {"introduced": "1.3.0"}, {"fixed": "1.3.4"},
          {"introduced": "2.0.0"}
        ]}]
      }]
    }"#;

    #[test]
    fn ranges_cover_versions_and_name_the_fix() {
        let cases: &[(&str, Option<Option<&str>>)] = &[
            ("v0.1.0", Some(Some("v1.2.1"))),
            ("v1.2.0", Some(Some("v1.2.1"))),
            ("v1.2.1", None),
            ("v1.2.9", None),
            ("v1.3.0", Some(Some("v1.3.4"))),
            ("v1.3.3-rc.1", Some(Some("v1.3.4"))),
            ("v1.3.4", None),
            ("v2.0.0", Some(None)),
            ("v2.5.0+incompatible", Some(None)),
            ("v0.0.0-20200101000000-abcdefabcdef", Some(Some("v1.2.1"))),
        ];
        for (v, want) in cases {
            let got = affects(ENTRY.as_bytes(), "example.com/m", v).unwrap();
            assert_eq!(got.as_ref().map(|a| a.fixed.as_deref()), *want, "{v}");
            if let Some(a) = got {
                assert_eq!(a.id, "GO-2026-0001");
                assert_eq!(a.aliases, ["CVE-2026-0001"]);
            }
        }
        assert_eq!(
            affects(ENTRY.as_bytes(), "example.com/other", "v1.0.0").unwrap(),
            None
        );
        let list = format!("[{ENTRY}]");
        assert_eq!(
            affects_all(list.as_bytes(), "example.com/m", "v1.2.0")
                .unwrap()
                .len(),
            1
        );
        assert!(affects(b"{", "m", "v1.0.0").is_err());
    }

    #[test]
    fn the_modules_index_lists_ids() {
        let index = br#"[{"path":"example.com/m","vulns":[{"id":"GO-2026-0001","modified":"2026-11-01T00:00:00Z","fixed":"1.2.1"}]},{"path":"example.com/n"}]"#;
        assert_eq!(index_ids(index, "example.com/m").unwrap(), ["GO-2026-0001"]);
        assert!(index_ids(index, "example.com/n").unwrap().is_empty());
        assert!(index_ids(index, "example.com/x").unwrap().is_empty());
    }
}
