//! The module firewall: which module versions a client may take, decided by ordered rules with
//! named ids. A rule selects modules (Go's prefix patterns), versions (exact, comparisons,
//! pre-release and pseudo-versions as classes), clients (named groups of proxy users and
//! address blocks) and conditions (younger than a cooldown, affected by an advisory, retracted);
//! the first rule that matches in `enforce` mode decides, `report` rules only record what they
//! would have refused. Pure: the facts a rule needs (publish time, advisories, retractions) are
//! gathered by the caller, which asks [`Firewall::needs`] first.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use crate::gomod::version;
use crate::policy::address::Cidr;
use crate::policy::patterns::match_prefix_patterns;

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Allow,
    Deny,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
        }
    }
}

/// Whether a rule decides (`Enforce`) or only records what it would have done (`Report`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Enforce,
    Report,
}

/// Which advisories a rule refuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VulnSelector {
    /// Any advisory affecting the version.
    Any,
    /// Only these advisory ids (or their aliases, such as CVE ids).
    Ids(Vec<String>),
}

/// One rule as configured (`[[firewall.rules]]`).
#[derive(Debug, Clone)]
pub struct RuleSpec {
    pub id: String,
    pub action: Action,
    pub mode: Mode,
    /// Module path patterns (GOPRIVATE syntax); empty: every module.
    pub modules: Vec<String>,
    /// Version selectors, any of which may match; empty: every version.
    pub versions: Vec<String>,
    /// Client groups the rule is for; empty: everyone.
    pub groups: Vec<String>,
    /// Matches only versions published less than this long ago.
    pub cooldown: Option<Duration>,
    /// Matches only versions affected by these advisories.
    pub vulnerable: Option<VulnSelector>,
    /// Matches only retracted versions, and only when a version is being chosen (`list`,
    /// `@latest`): a build that already names it still gets its files.
    pub retracted: bool,
}

/// A named client group (`[[firewall.groups]]`): proxy users and client address blocks.
#[derive(Debug, Clone, Default)]
pub struct GroupSpec {
    pub name: String,
    pub users: Vec<String>,
    pub clients: Vec<String>,
}

/// The whole firewall as configured.
#[derive(Debug, Clone)]
pub struct FirewallSpec {
    pub rules: Vec<RuleSpec>,
    pub groups: Vec<GroupSpec>,
    /// When no enforce rule matches.
    pub default: Action,
}

impl Default for FirewallSpec {
    fn default() -> Self {
        FirewallSpec {
            rules: vec![],
            groups: vec![],
            default: Action::Allow,
        }
    }
}

/// A configuration mistake; `key` names the configuration key at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct FirewallError {
    pub key: String,
    pub message: String,
}

fn err(key: String, message: impl std::fmt::Display) -> FirewallError {
    FirewallError {
        key,
        message: message.to_string(),
    }
}

/// One comparison in a version selector.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Term {
    Cmp(std::cmp::Ordering, bool, String),
    Not(String),
    /// Pre-release versions that are not pseudo-versions.
    Prerelease,
    /// Pseudo-versions.
    Pseudo,
    /// Neither pre-release nor pseudo.
    Release,
    Any,
}

/// A version selector: comma-separated terms that must all hold (`>=v1.2.0, <v1.4.0`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionSelector(Vec<Term>);

impl VersionSelector {
    /// Parses `v1.2.3`, `=v1.2.3`, `!=v1.2.3`, `>v1`, `>=v1.2`, `<v2`, `<=v1.9.9`, `prerelease`,
    /// `pseudo`, `release` or `*`, comma-separated.
    pub fn parse(s: &str) -> Result<VersionSelector, String> {
        let mut terms = vec![];
        for raw in s.split(',') {
            let t = raw.trim();
            let term = match t {
                "" => return Err(format!("{s:?} has an empty term")),
                "*" => Term::Any,
                "prerelease" => Term::Prerelease,
                "pseudo" => Term::Pseudo,
                "release" => Term::Release,
                _ => {
                    use std::cmp::Ordering::*;
                    let (op, v) = if let Some(v) = t.strip_prefix(">=") {
                        (Term::Cmp(Greater, true, String::new()), v)
                    } else if let Some(v) = t.strip_prefix("<=") {
                        (Term::Cmp(Less, true, String::new()), v)
                    } else if let Some(v) = t.strip_prefix("!=") {
                        (Term::Not(String::new()), v)
                    } else if let Some(v) = t.strip_prefix('>') {
                        (Term::Cmp(Greater, false, String::new()), v)
                    } else if let Some(v) = t.strip_prefix('<') {
                        (Term::Cmp(Less, false, String::new()), v)
                    } else if let Some(v) = t.strip_prefix('=') {
                        (Term::Cmp(Equal, true, String::new()), v)
                    } else {
                        (Term::Cmp(Equal, true, String::new()), t)
                    };
                    let v = v.trim();
                    if !version::is_valid(v) {
                        return Err(format!(
                            "{v:?} in {s:?} is not a semantic version (write v1.2.3, >=v1.2.0, <v2, prerelease, pseudo, release or *)"
                        ));
                    }
                    let v = v.to_string();
                    match op {
                        Term::Cmp(o, eq, _) => Term::Cmp(o, eq, v),
                        _ => Term::Not(v),
                    }
                }
            };
            terms.push(term);
        }
        Ok(VersionSelector(terms))
    }

    pub fn matches(&self, v: &str) -> bool {
        self.0.iter().all(|t| match t {
            Term::Any => true,
            Term::Prerelease => !version::prerelease(v).is_empty() && !version::is_pseudo(v),
            Term::Pseudo => version::is_pseudo(v),
            Term::Release => version::prerelease(v).is_empty(),
            Term::Not(w) => version::compare(v, w).is_ne(),
            Term::Cmp(o, eq, w) => {
                let c = version::compare(v, w);
                c == *o || (*eq && c.is_eq())
            }
        })
    }
}

#[derive(Debug, Clone)]
struct Group {
    name: String,
    users: Vec<String>,
    clients: Vec<Cidr>,
}

#[derive(Debug, Clone)]
struct Rule {
    id: String,
    action: Action,
    mode: Mode,
    modules: String,
    versions: Vec<VersionSelector>,
    groups: Vec<usize>,
    cooldown: Option<Duration>,
    vulnerable: Option<VulnSelector>,
    retracted: bool,
}

/// The compiled firewall. Empty (no rules, default allow) when not configured.
#[derive(Debug, Clone)]
pub struct Firewall {
    rules: Vec<Rule>,
    groups: Vec<Group>,
    default: Action,
}

impl Default for Firewall {
    fn default() -> Self {
        Firewall {
            rules: vec![],
            groups: vec![],
            default: Action::Allow,
        }
    }
}

/// Who is asking: the proxy user (when authenticated) and the client's address.
#[derive(Debug, Clone, Copy)]
pub struct Client<'a> {
    pub user: Option<&'a str>,
    pub addr: Option<IpAddr>,
}

/// Why a version is being looked at: to hand over its files, or to choose it (`list`,
/// `@latest`, a query), where retraction rules apply too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Fetch,
    Choose,
}

pub use crate::gomod::osv::Advisory;

/// What is known of a version when it is decided.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// Its `.info` Time.
    pub published: Option<SystemTime>,
    /// Advisories affecting it (only looked at when [`Needs::advisories`]).
    pub advisories: Vec<Advisory>,
    /// Why its advisories could not be read, if they could not (rules refuse then: an
    /// unchecked version is not proven clean).
    pub advisories_unknown: Option<String>,
    /// Whether the module's latest go.mod retracts it.
    pub retracted: bool,
}

/// Which facts the rules that could match need.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    pub published: bool,
    pub advisories: bool,
    pub retracted: bool,
}

/// The verdict on one module version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    Refused,
}

impl Verdict {
    pub fn name(&self) -> &'static str {
        match self {
            Verdict::Allowed => "allowed",
            Verdict::Refused => "refused",
        }
    }
}

/// The decision on one module version for one client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    /// The deciding rule's id, or `default`.
    pub rule: String,
    /// Why, in a few words (`published 2026-11-30, allowed from 2026-12-07`).
    pub why: String,
    /// Report-mode rules that would have refused: (rule id, why).
    pub reported: Vec<(String, String)>,
    /// The client's group (the first it belongs to), or `everyone`.
    pub group: String,
}

impl Decision {
    /// The one line the go command shows for a refusal.
    pub fn refusal_text(&self, module: &str, version: &str) -> String {
        let rule = if self.rule == DEFAULT_RULE {
            "the firewall's default (firewall.default = \"deny\")".to_string()
        } else {
            format!("rule {}", self.rule)
        };
        if self.why.is_empty() {
            format!("modgate: {module}@{version} refused by {rule}")
        } else {
            format!(
                "modgate: {module}@{version} refused by {rule}: {}",
                self.why
            )
        }
    }
}

/// The rule name of the firewall's default.
pub const DEFAULT_RULE: &str = "default";

/// A date as `2026-11-30` (UTC).
pub fn date(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    match time::OffsetDateTime::from_unix_timestamp(secs) {
        Ok(d) => format!("{:04}-{:02}-{:02}", d.year(), d.month() as u8, d.day()),
        Err(_) => "?".into(),
    }
}

/// The Version of a `.info` answer (`@latest`, a query).
pub fn info_version(info: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(info).ok()?;
    Some(v.get("Version")?.as_str()?.to_string())
}

/// The Time of a `.info` answer.
pub fn info_time(info: &[u8]) -> Option<SystemTime> {
    let v: serde_json::Value = serde_json::from_slice(info).ok()?;
    let t = v.get("Time")?.as_str()?;
    let t = time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()?;
    let secs = t.unix_timestamp();
    if secs < 0 {
        return Some(SystemTime::UNIX_EPOCH);
    }
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64))
}

impl Firewall {
    /// Compiles the firewall; the error names the key at fault.
    pub fn new(spec: &FirewallSpec) -> Result<Firewall, FirewallError> {
        let mut groups = vec![];
        for (i, g) in spec.groups.iter().enumerate() {
            let key = |f: &str| format!("firewall.groups[{i}].{f}");
            if g.name.is_empty() || g.name == EVERYONE {
                return Err(err(
                    key("name"),
                    format!("a group needs a name other than {EVERYONE:?}"),
                ));
            }
            if groups.iter().any(|x: &Group| x.name == g.name) {
                return Err(err(
                    key("name"),
                    format!("group {:?} is defined twice", g.name),
                ));
            }
            if g.users.is_empty() && g.clients.is_empty() {
                return Err(err(
                    key("users"),
                    format!("group {:?} names no users and no clients", g.name),
                ));
            }
            let clients = g
                .clients
                .iter()
                .enumerate()
                .map(|(j, c)| {
                    Cidr::parse(c).map_err(|e| err(format!("firewall.groups[{i}].clients[{j}]"), e))
                })
                .collect::<Result<_, _>>()?;
            groups.push(Group {
                name: g.name.clone(),
                users: g.users.clone(),
                clients,
            });
        }
        let mut rules: Vec<Rule> = vec![];
        for (i, r) in spec.rules.iter().enumerate() {
            let key = |f: &str| format!("firewall.rules[{i}].{f}");
            let id_ok = !r.id.is_empty()
                && r.id.len() <= 64
                && r.id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            if !id_ok || r.id == DEFAULT_RULE {
                return Err(err(
                    key("id"),
                    format!(
                        "{:?}: a rule needs an id of letters, digits, '-', '_' or '.' (at most 64, not \"default\")",
                        r.id
                    ),
                ));
            }
            if rules.iter().any(|x| x.id == r.id) {
                return Err(err(key("id"), format!("rule id {:?} is used twice", r.id)));
            }
            for (j, m) in r.modules.iter().enumerate() {
                if m.is_empty() || m.contains(',') {
                    return Err(err(
                        format!("firewall.rules[{i}].modules[{j}]"),
                        format!("{m:?} is not a module path pattern"),
                    ));
                }
                crate::policy::patterns::path_match(m, "x").map_err(|e| {
                    err(
                        format!("firewall.rules[{i}].modules[{j}]"),
                        format!("{m:?}: {e}"),
                    )
                })?;
            }
            let versions = r
                .versions
                .iter()
                .enumerate()
                .map(|(j, v)| {
                    VersionSelector::parse(v)
                        .map_err(|e| err(format!("firewall.rules[{i}].versions[{j}]"), e))
                })
                .collect::<Result<_, _>>()?;
            let mut group_ids = vec![];
            for (j, g) in r.groups.iter().enumerate() {
                if g == EVERYONE {
                    continue;
                }
                let Some(at) = groups.iter().position(|x| &x.name == g) else {
                    return Err(err(
                        format!("firewall.rules[{i}].groups[{j}]"),
                        format!("no [[firewall.groups]] is named {g:?}"),
                    ));
                };
                group_ids.push(at);
            }
            if r.groups.iter().any(|g| g == EVERYONE) {
                group_ids.clear();
            }
            if r.cooldown == Some(Duration::ZERO) {
                return Err(err(key("cooldown"), "a cooldown must be longer than 0s"));
            }
            if let Some(VulnSelector::Ids(ids)) = &r.vulnerable
                && ids.is_empty()
            {
                return Err(err(
                    key("vulnerable"),
                    "name advisory ids, or write \"any\"",
                ));
            }
            let conditional = r.cooldown.is_some() || r.vulnerable.is_some() || r.retracted;
            if conditional && r.action == Action::Allow {
                return Err(err(
                    key("action"),
                    "cooldown, vulnerable and retracted select versions to refuse: use action = \"deny\"",
                ));
            }
            rules.push(Rule {
                id: r.id.clone(),
                action: r.action,
                mode: r.mode,
                modules: r.modules.join(","),
                versions,
                groups: group_ids,
                cooldown: r.cooldown,
                vulnerable: r.vulnerable.clone(),
                retracted: r.retracted,
            });
        }
        Ok(Firewall {
            rules,
            groups,
            default: spec.default,
        })
    }

    /// Whether the firewall can refuse anything (when not, no request pays for it).
    pub fn is_active(&self) -> bool {
        !self.rules.is_empty() || self.default == Action::Deny
    }

    /// The ids of every rule, in order (metric labels are bounded by them).
    pub fn rule_ids(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|r| r.id.as_str())
    }

    /// The group names, in order.
    pub fn group_names(&self) -> impl Iterator<Item = &str> {
        self.groups.iter().map(|g| g.name.as_str())
    }

    /// Whether any rule has a cooldown for `module` (so `list` and `@latest` need times).
    pub fn any_cooldown(&self, module: &str) -> bool {
        self.rules
            .iter()
            .any(|r| r.cooldown.is_some() && self.module_matches(r, module))
    }

    /// Whether any rule refuses by advisory (so the vulnerability database is consulted).
    pub fn uses_advisories(&self) -> bool {
        self.rules.iter().any(|r| r.vulnerable.is_some())
    }

    fn module_matches(&self, r: &Rule, module: &str) -> bool {
        r.modules.is_empty() || match_prefix_patterns(&r.modules, module)
    }

    fn in_group(&self, g: &Group, client: &Client<'_>) -> bool {
        client.user.is_some_and(|u| g.users.iter().any(|x| x == u))
            || client
                .addr
                .is_some_and(|a| g.clients.iter().any(|c| c.contains(a)))
    }

    /// The client's group for the audit trail: the first it belongs to, or `everyone`.
    pub fn group_of(&self, client: &Client<'_>) -> &str {
        self.groups
            .iter()
            .find(|g| self.in_group(g, client))
            .map(|g| g.name.as_str())
            .unwrap_or(EVERYONE)
    }

    /// The rules that select this module, version and client, before their conditions.
    fn selecting<'s>(
        &'s self,
        module: &'s str,
        version: &'s str,
        client: &'s Client<'s>,
    ) -> impl Iterator<Item = &'s Rule> + 's {
        self.rules.iter().filter(move |r| {
            self.module_matches(r, module)
                && (r.versions.is_empty() || r.versions.iter().any(|s| s.matches(version)))
                && (r.groups.is_empty()
                    || r.groups
                        .iter()
                        .any(|g| self.in_group(&self.groups[*g], client)))
        })
    }

    /// Which facts deciding this version could need.
    pub fn needs(&self, module: &str, version: &str, client: &Client<'_>, p: Purpose) -> Needs {
        let mut n = Needs::default();
        for r in self.selecting(module, version, client) {
            n.published |= r.cooldown.is_some();
            n.advisories |= r.vulnerable.is_some();
            n.retracted |= r.retracted && p == Purpose::Choose;
            if r.mode == Mode::Enforce
                && r.cooldown.is_none()
                && r.vulnerable.is_none()
                && !r.retracted
            {
                break;
            }
        }
        n
    }

    /// Decides `module@version` for `client` at `now` from `facts`.
    pub fn decide(
        &self,
        module: &str,
        version: &str,
        client: &Client<'_>,
        purpose: Purpose,
        facts: &Facts,
        now: SystemTime,
    ) -> Decision {
        let group = self.group_of(client).to_string();
        let mut reported = vec![];
        for r in self.selecting(module, version, client) {
            let Some(why) = condition(r, version, purpose, facts, now) else {
                continue;
            };
            match r.mode {
                Mode::Report => {
                    if r.action == Action::Deny {
                        reported.push((r.id.clone(), why));
                    }
                }
                Mode::Enforce => {
                    return Decision {
                        verdict: match r.action {
                            Action::Allow => Verdict::Allowed,
                            Action::Deny => Verdict::Refused,
                        },
                        rule: r.id.clone(),
                        why,
                        reported,
                        group,
                    };
                }
            }
        }
        Decision {
            verdict: match self.default {
                Action::Allow => Verdict::Allowed,
                Action::Deny => Verdict::Refused,
            },
            rule: DEFAULT_RULE.into(),
            why: match self.default {
                Action::Allow => String::new(),
                Action::Deny => "no rule allows it".into(),
            },
            reported,
            group,
        }
    }
}

/// The name of the implicit group of every client.
pub const EVERYONE: &str = "everyone";

/// Whether `r`'s conditions hold, and if so why (empty when it has none).
fn condition(
    r: &Rule,
    version: &str,
    purpose: Purpose,
    facts: &Facts,
    now: SystemTime,
) -> Option<String> {
    let mut why = vec![];
    if let Some(cool) = r.cooldown {
        // An unknown publish time cannot prove the version old enough.
        let Some(published) = facts.published else {
            why.push("its publish time is unknown, so its cooldown cannot be checked".to_string());
            return Some(why.join("; "));
        };
        let from = published + cool;
        if from <= now {
            return None;
        }
        why.push(format!(
            "published {}, allowed from {}",
            date(published),
            date(from)
        ));
    }
    if let Some(sel) = &r.vulnerable {
        if let Some(e) = &facts.advisories_unknown {
            why.push(format!("its advisories could not be checked: {e}"));
            return Some(why.join("; "));
        }
        let hit = facts.advisories.iter().find(|a| match sel {
            VulnSelector::Any => true,
            VulnSelector::Ids(ids) => ids
                .iter()
                .any(|id| *id == a.id || a.aliases.iter().any(|x| x == id)),
        })?;
        why.push(match &hit.fixed {
            Some(f) => format!("affected by {}, fixed in {f}", hit.id),
            None => format!("affected by {}, with no fixed version", hit.id),
        });
    }
    if r.retracted {
        if purpose != Purpose::Choose || !facts.retracted {
            return None;
        }
        why.push("retracted by its module's authors".into());
    }
    if why.is_empty() && r.action == Action::Deny && !r.versions.is_empty() {
        why.push(format!("version {version} is denied"));
    } else if why.is_empty() && r.action == Action::Deny {
        why.push("module is denied".into());
    }
    Some(why.join("; "))
}

#[cfg(test)]
mod tests;
