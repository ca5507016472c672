//! How the go command turns a git repository into module versions (cmd/go's `codeRepo`):
//! the version list with tag prefixes and `+incompatible` rules, canonical versions and queries
//! (branch, tag, commit prefix) to tags or pseudo-versions, where a version's go.mod lives
//! (`findDir`), and the `@latest` answer. The repository is reached through [`CodeHost`], so this
//! logic does no I/O of its own and is tested against an in-memory host.

use std::fmt;

use super::modfile;
use super::path::{ModulePath, check_path_major, split_path_version};
use super::version;

/// A commit: full hash and committer time (Unix seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    pub hash: String,
    pub time: i64,
}

/// What modgate needs from a repository.
pub trait CodeHost {
    type Error: fmt::Display;
    /// Every tag (name without `refs/tags/`) with the commit it points to (peeled).
    fn tags(&self) -> Result<Vec<(String, String)>, Self::Error>;
    /// A branch, tag, `HEAD` or commit-hash prefix, resolved to a commit; `None` if unknown.
    fn resolve(&self, rev: &str) -> Result<Option<Commit>, Self::Error>;
    /// A regular file's content at `commit`, or `None` if absent.
    fn read_file(&self, commit: &str, path: &str) -> Result<Option<Vec<u8>>, Self::Error>;
    /// Tags whose commits are ancestors of (or equal to) `commit`.
    fn merged_tags(&self, commit: &str) -> Result<Vec<String>, Self::Error>;
}

/// Why a module cannot live in a repository.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("repository rooted at {root} cannot contain module {module}")]
    OutsideRoot { root: String, module: String },
    #[error("invalid module path")]
    InvalidPath,
}

/// A pseudo-version that has no base version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("version before {0} would have negative patch number")]
pub struct NegativePatch(pub String);

/// A failure to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepoError<E> {
    /// The version or revision does not exist for this module (404 `not found: ...`).
    NotFound(String),
    /// The repository could not be read.
    Host(E),
}

impl<E: fmt::Display> fmt::Display for RepoError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RepoError::NotFound(m) => f.write_str(m),
            RepoError::Host(e) => write!(f, "{e}"),
        }
    }
}

/// The answer to `.info`, `@latest` and queries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevInfo {
    pub version: String,
    pub time: i64,
    pub commit: String,
}

impl RevInfo {
    /// The `.info` JSON the go command expects.
    pub fn json(&self) -> String {
        format!(
            "{{\"Version\":{},\"Time\":\"{}\"}}",
            serde_json::to_string(&self.version).expect("string"),
            rfc3339(self.time)
        )
    }
}

/// Where a version's files come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub commit: String,
    /// Module directory within the repository ("" for the root).
    pub dir: String,
    /// go.mod at that directory, if any.
    pub go_mod: Option<Vec<u8>>,
}

/// One module inside one repository.
pub struct CodeRepo<'h, H: CodeHost> {
    host: &'h H,
    mod_path: String,
    path_prefix: String,
    path_major: String,
    code_root: String,
    code_dir: String,
}

impl<H: CodeHost> fmt::Debug for CodeRepo<'_, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CodeRepo")
            .field("mod_path", &self.mod_path)
            .field("code_root", &self.code_root)
            .field("code_dir", &self.code_dir)
            .finish_non_exhaustive()
    }
}

type R<T, H> = Result<T, RepoError<<H as CodeHost>::Error>>;

fn has_path_prefix(s: &str, prefix: &str) -> bool {
    s == prefix || (s.starts_with(prefix) && s.as_bytes().get(prefix.len()) == Some(&b'/'))
}

impl<'h, H: CodeHost> CodeRepo<'h, H> {
    /// The module `module` in the repository whose root module path is `code_root`.
    pub fn new(host: &'h H, module: &ModulePath, code_root: &str) -> Result<Self, LayoutError> {
        let path = module.as_str();
        let outside = || LayoutError::OutsideRoot {
            root: code_root.to_string(),
            module: path.to_string(),
        };
        if !has_path_prefix(path, code_root) {
            return Err(outside());
        }
        let (mut prefix, major) = split_path_version(path).ok_or(LayoutError::InvalidPath)?;
        if code_root == path {
            prefix = path;
        }
        let code_dir = if code_root != path {
            if !has_path_prefix(prefix, code_root) {
                return Err(outside());
            }
            prefix[code_root.len()..].trim_matches('/').to_string()
        } else {
            String::new()
        };
        Ok(CodeRepo {
            host,
            mod_path: path.to_string(),
            path_prefix: prefix.to_string(),
            path_major: major.to_string(),
            code_root: code_root.to_string(),
            code_dir,
        })
    }

    fn tag_prefix(&self) -> String {
        if self.code_dir.is_empty() {
            String::new()
        } else {
            format!("{}/", self.code_dir)
        }
    }

    fn not_found(&self, what: impl fmt::Display) -> RepoError<H::Error> {
        RepoError::NotFound(format!("not found: {}@{what}", self.mod_path))
    }

    fn read(&self, commit: &str, file: &str) -> R<Option<Vec<u8>>, H> {
        self.host.read_file(commit, file).map_err(RepoError::Host)
    }

    /// The `@v/list` answer: canonical versions, sorted.
    pub fn versions(&self) -> R<Vec<String>, H> {
        let tags = self.host.tags().map_err(RepoError::Host)?;
        self.versions_in(&tags)
    }

    /// [`versions`](Self::versions) from tags already read.
    fn versions_in(&self, tags: &[(String, String)]) -> R<Vec<String>, H> {
        let prefix = self.tag_prefix();
        let mut list = vec![];
        let mut incompatible = vec![];
        for (name, _) in tags {
            let Some(v) = name.strip_prefix(&prefix) else {
                continue;
            };
            if v.is_empty() || v != version::canonical(v) || version::is_pseudo(v) {
                continue;
            }
            if check_path_major(v, &self.path_major).is_err() {
                if self.code_dir.is_empty()
                    && self.path_major.is_empty()
                    && version::compare(&version::major(v), "v1").is_gt()
                {
                    incompatible.push(v.to_string());
                }
                continue;
            }
            list.push(v.to_string());
        }
        sort_versions(&mut list);
        sort_versions(&mut incompatible);
        self.append_incompatible(list, incompatible, tags)
    }

    fn tag_commit<'t>(&self, tags: &'t [(String, String)], v: &str) -> Option<&'t str> {
        let name = format!(
            "{}{}",
            self.tag_prefix(),
            v.trim_end_matches("+incompatible")
        );
        tags.iter()
            .find(|(n, _)| *n == name)
            .map(|(_, c)| c.as_str())
    }

    fn append_incompatible(
        &self,
        mut list: Vec<String>,
        incompatible: Vec<String>,
        tags: &[(String, String)],
    ) -> R<Vec<String>, H> {
        if incompatible.is_empty() || !self.path_major.is_empty() {
            return Ok(list);
        }
        let has_go_mod = |v: &str| -> R<bool, H> {
            match self.tag_commit(tags, v) {
                Some(c) => Ok(self.read(c, "go.mod")?.is_some()),
                None => Ok(false),
            }
        };
        if let Some(last) = list.last()
            && has_go_mod(last)?
        {
            return Ok(list);
        }
        let mut last_major = String::new();
        let mut last_major_has_go_mod = false;
        for (i, v) in incompatible.iter().enumerate() {
            let major = version::major(v);
            if major != last_major {
                let latest_at_major = incompatible[i..]
                    .iter()
                    .take_while(|w| version::major(w) == major)
                    .last()
                    .expect("at least v itself");
                last_major = major;
                last_major_has_go_mod = has_go_mod(latest_at_major)?;
            }
            if !last_major_has_go_mod {
                list.push(format!("{v}+incompatible"));
            }
        }
        Ok(list)
    }

    /// `.info` for a canonical version or a query (branch, tag, commit prefix).
    pub fn stat(&self, rev: &str) -> R<RevInfo, H> {
        let tags = self.host.tags().map_err(RepoError::Host)?;
        if version::is_canonical(rev) {
            if version::is_pseudo(rev) {
                return self.stat_pseudo(rev, &tags);
            }
            let commit_hash = self
                .tag_commit(&tags, rev)
                .ok_or_else(|| {
                    self.not_found(format!("{rev}: invalid version: unknown revision {rev}"))
                })?
                .to_string();
            let commit = self
                .host
                .resolve(&commit_hash)
                .map_err(RepoError::Host)?
                .ok_or_else(|| self.not_found(format!("{rev}: unknown revision {rev}")))?;
            return self.check_canonical(rev, rev, &commit);
        }
        // A semantic version (v1.2, v1.2.3+build) names a tag under the module's directory,
        // as the go command's `revToRev` has it; anything else is a branch, tag or hash.
        let code_rev = if version::is_valid(rev) {
            let bare = rev.strip_suffix("+incompatible").unwrap_or(rev);
            format!("{}{bare}", self.tag_prefix())
        } else {
            rev.to_string()
        };
        let commit = self
            .host
            .resolve(&code_rev)
            .map_err(RepoError::Host)?
            .ok_or_else(|| {
                self.not_found(format!("{rev}: invalid version: unknown revision {rev}"))
            })?;
        self.convert(&commit, rev, &tags)
    }

    /// `@latest`: the default branch's head, as a version.
    pub fn latest(&self) -> R<RevInfo, H> {
        let tags = self.host.tags().map_err(RepoError::Host)?;
        let commit = self
            .host
            .resolve("HEAD")
            .map_err(RepoError::Host)?
            .ok_or_else(|| {
                RepoError::NotFound(format!("not found: {}: no commits", self.mod_path))
            })?;
        self.convert(&commit, "", &tags)
    }

    fn tag_to_version(&self, tag: &str) -> (Option<String>, bool) {
        let Some(trimmed) = tag.strip_prefix(&self.tag_prefix()) else {
            return (None, false);
        };
        if version::is_pseudo(tag) {
            return (None, false);
        }
        let v = version::canonical(trimmed);
        if v.is_empty() || !trimmed.starts_with(&v) {
            return (None, false);
        }
        let canonical = v == trimmed;
        (Some(v), canonical)
    }

    fn convert(
        &self,
        commit: &Commit,
        stat_vers: &str,
        tags: &[(String, String)],
    ) -> R<RevInfo, H> {
        let retracted = self.retracted(tags);
        let is_retracted = |v: &str| retracted.iter().any(|r| r.covers(v));
        let mut highest_canonical = String::new();
        let mut pseudo_base = String::new();
        for (name, c) in tags {
            if *c != commit.hash {
                continue;
            }
            let (v, canonical) = self.tag_to_version(name);
            let Some(v) = v else { continue };
            if !stat_vers.is_empty() && version::compare(&v, stat_vers).is_eq() {
                // The tag is the version asked for: canonical, it answers; with build
                // metadata, it is the base of an unambiguous pseudo-version.
                if canonical {
                    return self.check_canonical(&v, stat_vers, commit);
                }
                pseudo_base = v.clone();
            }
            // The highest canonical tag this module may carry: not retracted, and its major
            // fits the path or can be +incompatible (a v1 module's commit may also carry a v2
            // tag that belongs to the v2 module in a subdirectory).
            if canonical
                && version::compare(&highest_canonical, &v).is_lt()
                && !is_retracted(&v)
                && (check_path_major(&v, &self.path_major).is_ok()
                    || self.can_use_incompatible(&v, stat_vers, commit)?)
            {
                highest_canonical = v;
            }
        }
        if !highest_canonical.is_empty() {
            return self.check_canonical(&highest_canonical, stat_vers, commit);
        }
        if pseudo_base.is_empty() {
            let prefix = self.tag_prefix();
            let mut highest = String::new();
            for tag in self
                .host
                .merged_tags(&commit.hash)
                .map_err(RepoError::Host)?
            {
                let Some(semtag) = tag.strip_prefix(&prefix) else {
                    continue;
                };
                if !self.tag_allowed(&tag, commit, &is_retracted)? {
                    continue;
                }
                if version::compare(semtag, &highest).is_gt() {
                    highest = semtag.to_string();
                }
            }
            if !highest.is_empty() {
                pseudo_base = self
                    .tag_to_version(&format!("{prefix}{highest}"))
                    .0
                    .unwrap_or_default();
            }
        }
        let major = match self
            .path_major
            .strip_prefix('/')
            .or_else(|| self.path_major.strip_prefix('.'))
        {
            Some(m) => m.trim_end_matches("-unstable").to_string(),
            None => String::new(),
        };
        let pseudo = pseudo_version(
            &major,
            &pseudo_base,
            commit.time,
            &commit.hash[..12.min(commit.hash.len())],
        );
        self.check_canonical(&pseudo, stat_vers, commit)
    }

    /// The versions the go.mod of the highest release retracts (`codeRepo.retractedVersions`):
    /// they are neither a commit's version nor a pseudo-version's base. None when that go.mod
    /// cannot be read or parsed, as the go command then assumes.
    fn retracted(&self, tags: &[(String, String)]) -> Vec<modfile::Retraction> {
        let Ok(versions) = self.versions_in(tags) else {
            return vec![];
        };
        let releases: Vec<&String> = versions
            .iter()
            .take_while(|v| !v.ends_with("+incompatible"))
            .collect();
        let highest = releases
            .iter()
            .rev()
            .find(|v| version::prerelease(v).is_empty())
            .or(releases.last());
        // Its go.mod, from the tag's commit (the tags are at hand; no second stat).
        let go_mod = highest.and_then(|v| {
            let hash = self.tag_commit(tags, v)?;
            let commit = self.host.resolve(hash).ok()??;
            self.find_dir_at(&commit, v).ok()?.go_mod
        });
        go_mod
            .and_then(|data| modfile::retractions(&data))
            .unwrap_or_default()
    }

    fn tag_allowed(
        &self,
        tag: &str,
        commit: &Commit,
        is_retracted: &dyn Fn(&str) -> bool,
    ) -> R<bool, H> {
        let (v, _) = self.tag_to_version(tag);
        let Some(v) = v else { return Ok(false) };
        if is_retracted(&v) {
            return Ok(false);
        }
        if check_path_major(&version::module_canonical(&v), &self.path_major).is_ok() {
            return Ok(true);
        }
        self.can_use_incompatible(&v, "", commit)
    }

    fn can_use_incompatible(&self, v: &str, stat_vers: &str, commit: &Commit) -> R<bool, H> {
        if !self.code_dir.is_empty() || !self.path_major.is_empty() {
            return Ok(false);
        }
        if self.read(&commit.hash, "go.mod")?.is_some() {
            return Ok(false);
        }
        if !v.is_empty() && !stat_vers.ends_with("+incompatible") {
            let major = version::major(v);
            if self
                .read(&commit.hash, &format!("{major}/go.mod"))?
                .is_some()
            {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn check_canonical(&self, v: &str, stat_vers: &str, commit: &Commit) -> R<RevInfo, H> {
        self.find_dir_at(commit, v).map_err(|e| match e {
            RepoError::NotFound(m) => self.not_found(format!("{v}: invalid version: {m}")),
            other => other,
        })?;
        let mut v = v.to_string();
        if v == stat_vers.trim_end_matches("+incompatible") && !stat_vers.is_empty() {
            v = stat_vers.to_string();
        }
        let base = v.trim_end_matches("+incompatible").to_string();
        if check_path_major(&base, &self.path_major).is_err() {
            if self.can_use_incompatible(&base, stat_vers, commit)? {
                v = format!("{base}+incompatible");
            } else if !self.path_major.is_empty() {
                return Err(self.not_found(format!(
                    "{v}: invalid version: module path includes a major version suffix, so major version must match"
                )));
            } else {
                return Err(self.not_found(format!(
                    "{v}: invalid version: module contains a go.mod file, so module path must match major version (\"{}/{}\")",
                    self.path_prefix,
                    version::major(&v)
                )));
            }
        } else if v.ends_with("+incompatible") {
            return Err(self.not_found(format!(
                "{v}: invalid version: +incompatible suffix not allowed: major version {} is compatible",
                version::major(&v)
            )));
        }
        Ok(RevInfo {
            version: v,
            time: commit.time,
            commit: commit.hash.clone(),
        })
    }

    fn stat_pseudo(&self, v: &str, tags: &[(String, String)]) -> R<RevInfo, H> {
        let body = v.split('+').next().unwrap_or(v);
        let (rest, rev) = body.rsplit_once('-').expect("pseudo-versions have dashes");
        let commit = self
            .host
            .resolve(rev)
            .map_err(RepoError::Host)?
            .ok_or_else(|| {
                self.not_found(format!("{v}: invalid version: unknown revision {rev}"))
            })?;
        if !commit.hash.starts_with(rev) || rev.len() != 12 {
            return Err(self.not_found(format!(
                "{v}: invalid pseudo-version: revision is shorter than canonical ({})",
                &commit.hash[..12]
            )));
        }
        let stamp = &rest[rest.len() - 14..];
        if stamp != timestamp(commit.time) {
            return Err(self.not_found(format!(
                "{v}: invalid pseudo-version: does not match version-control timestamp (expected {})",
                timestamp(commit.time)
            )));
        }
        // A base version must be a tag that is an ancestor of the commit.
        let base = pseudo_base(v)
            .map_err(|e| self.not_found(format!("{v}: invalid pseudo-version: {e}")))?;
        if !base.is_empty() {
            let prefix = self.tag_prefix();
            let merged = self
                .host
                .merged_tags(&commit.hash)
                .map_err(RepoError::Host)?;
            let base_canon = version::canonical(&base);
            let ok = merged.iter().any(|t| {
                t.strip_prefix(&prefix)
                    .is_some_and(|s| version::canonical(s) == base_canon)
            });
            if !ok {
                return Err(self.not_found(format!(
                    "{v}: invalid pseudo-version: revision {} is not a descendent of preceding tag ({base})",
                    &commit.hash[..12]
                )));
            }
            if self.tag_commit(tags, &base_canon) == Some(commit.hash.as_str()) {
                return Err(self.not_found(format!(
                    "{v}: invalid pseudo-version: tag ({base}) found on revision {} is already canonical, so should not be replaced with a pseudo-version derived from that tag",
                    &commit.hash[..12]
                )));
            }
        } else if self.path_major.is_empty() && version::major(v) == "v1" {
            // Without a base, v0 or (checked next) an incompatible or suffixed major.
            return Err(self.not_found(format!(
                "{v}: invalid pseudo-version: major version without preceding tag must be v0, not v1"
            )));
        }
        self.check_canonical(v, v, &commit)
    }

    /// The git revision behind `version`, as the go command names it in errors
    /// (`versionToRev`): the short hash of a pseudo-version, else the version's tag.
    fn rev_of(&self, version: &str) -> String {
        if version::is_pseudo(version) {
            let body = version.split('+').next().unwrap_or(version);
            return body
                .rsplit_once('-')
                .map(|(_, r)| r)
                .unwrap_or(body)
                .to_string();
        }
        let bare = version.strip_suffix("+incompatible").unwrap_or(version);
        format!("{}{bare}", self.tag_prefix())
    }

    /// `findDir` for the commit behind a checked version.
    fn find_dir_at(&self, commit: &Commit, version: &str) -> R<Source, H> {
        let rev = self.rev_of(version);
        let file1 = join(&self.code_dir, "go.mod");
        let gomod1 = self.read(&commit.hash, &file1)?;
        let mpath1 = gomod1
            .as_deref()
            .map(modfile::module_path)
            .unwrap_or_default();
        let found1 = gomod1.is_some() && is_major(&mpath1, &self.path_major);
        let mut file2 = String::new();
        if !self.path_major.is_empty()
            && self.code_root != self.mod_path
            && !self.path_major.starts_with('.')
        {
            let dir2 = join(&self.code_dir, &self.path_major[1..]);
            file2 = join(&dir2, "go.mod");
            let gomod2 = self.read(&commit.hash, &file2)?;
            let mpath2 = gomod2
                .as_deref()
                .map(modfile::module_path)
                .unwrap_or_default();
            let found2 = gomod2.is_some() && is_major(&mpath2, &self.path_major);
            if found1 && found2 {
                return Err(RepoError::NotFound(format!(
                    "{}/{file1} and ...{}/go.mod both have ...{} module paths at revision {rev}",
                    self.path_prefix, self.path_major, self.path_major,
                )));
            }
            if found2 {
                return Ok(Source {
                    commit: commit.hash.clone(),
                    dir: dir2,
                    go_mod: gomod2,
                });
            }
            if gomod2.is_some() {
                return Err(RepoError::NotFound(if mpath2.is_empty() {
                    format!(
                        "{}/{file2} is missing module path at revision {rev}",
                        self.code_root
                    )
                } else {
                    format!(
                        "{}/{file2} has non-...{} module path {mpath2:?} at revision {rev}",
                        self.code_root, self.path_major
                    )
                }));
            }
        }
        if found1 {
            return Ok(Source {
                commit: commit.hash.clone(),
                dir: self.code_dir.clone(),
                go_mod: gomod1,
            });
        }
        if gomod1.is_some() {
            let suffix = if file2.is_empty() {
                String::new()
            } else {
                format!(" (and ...{}/go.mod does not exist)", self.path_major)
            };
            return Err(RepoError::NotFound(if mpath1.is_empty() {
                format!("{file1} is missing module path{suffix} at revision {rev}")
            } else if !self.path_major.is_empty() {
                format!(
                    "{file1} has non-...{} module path {mpath1:?}{suffix} at revision {rev}",
                    self.path_major
                )
            } else if split_path_version(&mpath1).is_none() {
                format!("{file1} has malformed module path {mpath1:?}{suffix} at revision {rev}")
            } else {
                format!(
                    "{file1} has post-{} module path {mpath1:?}{suffix} at revision {rev}",
                    version::major(version)
                )
            }));
        }
        if self.code_dir.is_empty()
            && (self.path_major.is_empty() || self.path_major.starts_with('.'))
        {
            return Ok(Source {
                commit: commit.hash.clone(),
                dir: String::new(),
                go_mod: None,
            });
        }
        Err(RepoError::NotFound(if !file2.is_empty() {
            format!(
                "missing {}/go.mod and ...{}/go.mod at revision {rev}",
                self.path_prefix, self.path_major
            )
        } else {
            format!("missing {}/go.mod at revision {rev}", self.path_prefix)
        }))
    }

    /// The files behind canonical version `v` (after checking that `v` is valid).
    pub fn source(&self, v: &str) -> R<Source, H> {
        let info = self.stat(v)?;
        if info.version != v {
            return Err(self.not_found(format!(
                "{v}: invalid version: resolves to {}",
                info.version
            )));
        }
        let commit = Commit {
            hash: info.commit,
            time: info.time,
        };
        self.find_dir_at(&commit, v)
    }

    /// The `.mod` answer for canonical version `v`.
    pub fn go_mod(&self, v: &str) -> R<Vec<u8>, H> {
        let src = self.source(v)?;
        Ok(match src.go_mod {
            Some(data) => data,
            None => modfile::synthesized(&self.mod_path).into_bytes(),
        })
    }

    /// Module path.
    pub fn module(&self) -> &str {
        &self.mod_path
    }
}

fn join(dir: &str, file: &str) -> String {
    if dir.is_empty() {
        file.to_string()
    } else {
        format!("{dir}/{file}")
    }
}

/// Whether module path `mpath` carries major suffix `path_major` (cmd/go's `isMajor`).
fn is_major(mpath: &str, path_major: &str) -> bool {
    if mpath.is_empty() {
        return false;
    }
    let Some((_, mpath_major)) = split_path_version(mpath) else {
        return false;
    };
    if path_major.is_empty() {
        return matches!(mpath_major, "" | "/v0" | "/v1" | ".v0" | ".v1");
    }
    let strip = |m: &str| {
        m.trim_start_matches(['/', '.'])
            .trim_end_matches("-unstable")
            .to_string()
    };
    if mpath_major.is_empty() {
        return false;
    }
    strip(mpath_major) == strip(path_major)
}

fn sort_versions(v: &mut [String]) {
    v.sort_by(|a, b| version::compare(a, b).then_with(|| a.cmp(b)));
}

/// `module.PseudoVersion`.
pub fn pseudo_version(major: &str, older: &str, time: i64, rev: &str) -> String {
    let major = if major.is_empty() { "v0" } else { major };
    let segment = format!("{}-{rev}", timestamp(time));
    let build = version::build(older).to_string();
    let older = version::canonical(older);
    if older.is_empty() {
        return format!("{major}.0.0-{segment}");
    }
    if !version::prerelease(&older).is_empty() {
        return format!("{older}.0.{segment}{build}");
    }
    let i = older.rfind('.').expect("canonical has dots") + 1;
    let (v, patch) = older.split_at(i);
    format!("{v}{}-0.{segment}{build}", inc_decimal(patch))
}

fn inc_decimal(d: &str) -> String {
    let mut digits: Vec<u8> = d.bytes().collect();
    let mut i = digits.len();
    loop {
        if i == 0 {
            digits.insert(0, b'1');
            break;
        }
        i -= 1;
        if digits[i] == b'9' {
            digits[i] = b'0';
        } else {
            digits[i] += 1;
            break;
        }
    }
    String::from_utf8(digits).expect("ascii")
}

/// `module.PseudoVersionBase`: the version a pseudo-version was derived from, with its build
/// suffix ("" for the `vX.0.0-...` form). `vX.Y.0-0.…` has no base (the patch before 0) and
/// is refused, as Go refuses it.
pub fn pseudo_base(v: &str) -> Result<String, NegativePatch> {
    let build = version::build(v);
    let body = &v[..v.len() - build.len()];
    let Some((v, _rev)) = body.rsplit_once('-') else {
        return Ok(String::new());
    };
    let i = v.rfind('-').unwrap_or(0);
    let base = match v.rfind('.') {
        Some(j) if j > i => &v[..j],
        _ => return Ok(String::new()),
    };
    match version::prerelease(base) {
        "" => Ok(String::new()),
        "-0" => {
            let rel = &base[..base.len() - 2];
            let k = rel.rfind('.').map(|k| k + 1).unwrap_or(0);
            let patch = dec_decimal(&rel[k..]).ok_or_else(|| NegativePatch(rel.to_string()))?;
            Ok(format!("{}{patch}{build}", &rel[..k]))
        }
        _ => Ok(format!(
            "{}{build}",
            base.strip_suffix(".0").unwrap_or(base)
        )),
    }
}

/// `decDecimal`: one less than a decimal number of any length; `None` for "0".
fn dec_decimal(d: &str) -> Option<String> {
    let mut digits: Vec<u8> = d.bytes().collect();
    let mut i = digits.len();
    loop {
        if i == 0 {
            return None;
        }
        i -= 1;
        if digits[i] == b'0' {
            digits[i] = b'9';
        } else {
            digits[i] -= 1;
            break;
        }
    }
    if digits[0] == b'0' && digits.len() > 1 {
        digits.remove(0);
    }
    Some(String::from_utf8(digits).expect("ascii"))
}

/// `yyyymmddhhmmss` in UTC.
pub fn timestamp(t: i64) -> String {
    let dt =
        time::OffsetDateTime::from_unix_timestamp(t).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}",
        dt.year(),
        dt.month() as u8,
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second()
    )
}

/// RFC 3339 in UTC, as Go prints whole-second times.
pub fn rfc3339(t: i64) -> String {
    let dt =
        time::OffsetDateTime::from_unix_timestamp(t).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        dt.year(),
        dt.month() as u8,
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// An in-memory repository: commits in order (each a parent of the next), tags, files.
    #[derive(Default)]
    struct Mem {
        commits: Vec<(String, i64, HashMap<String, String>)>,
        tags: Vec<(String, String)>,
        branches: HashMap<String, String>,
    }

    impl Mem {
        fn commit(&mut self, files: &[(&str, &str)]) -> String {
            let n = self.commits.len();
            let hash: String = sha2::Digest::finalize(
                <sha2::Sha256 as sha2::Digest>::new_with_prefix(n.to_string()),
            )
            .iter()
            .take(20)
            .map(|b| format!("{b:02x}"))
            .collect();
            let time = 1_700_000_000 + n as i64 * 3600;
            self.commits.push((
                hash.clone(),
                time,
                files
                    .iter()
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .collect(),
            ));
            self.branches.insert("HEAD".into(), hash.clone());
            self.branches.insert("main".into(), hash.clone());
            hash
        }
        fn tag(&mut self, name: &str, hash: &str) {
            self.tags.push((name.into(), hash.into()));
        }
        fn idx(&self, hash: &str) -> Option<usize> {
            self.commits.iter().position(|(h, _, _)| h == hash)
        }
    }

    impl CodeHost for Mem {
        type Error = &'static str;
        fn tags(&self) -> Result<Vec<(String, String)>, &'static str> {
            Ok(self.tags.clone())
        }
        fn resolve(&self, rev: &str) -> Result<Option<Commit>, &'static str> {
            // As the git mirror resolves: tag, branch, hash of 7 digits or more.
            let hash = if let Some((_, h)) = self.tags.iter().find(|(n, _)| n == rev) {
                h.clone()
            } else if let Some(h) = self.branches.get(rev) {
                h.clone()
            } else {
                match self
                    .commits
                    .iter()
                    .find(|(h, _, _)| rev.len() >= 7 && h.starts_with(rev))
                {
                    Some((h, _, _)) => h.clone(),
                    None => return Ok(None),
                }
            };
            let (h, t, _) = &self.commits[self.idx(&hash).unwrap()];
            Ok(Some(Commit {
                hash: h.clone(),
                time: *t,
            }))
        }
        fn read_file(&self, commit: &str, path: &str) -> Result<Option<Vec<u8>>, &'static str> {
            let i = self.idx(commit).ok_or("no commit")?;
            Ok(self.commits[i].2.get(path).map(|s| s.as_bytes().to_vec()))
        }
        fn merged_tags(&self, commit: &str) -> Result<Vec<String>, &'static str> {
            let i = self.idx(commit).ok_or("no commit")?;
            Ok(self
                .tags
                .iter()
                .filter(|(_, h)| self.idx(h).is_some_and(|j| j <= i))
                .map(|(n, _)| n.clone())
                .collect())
        }
    }

    fn repo<'a>(m: &'a Mem, module: &str, root: &str) -> CodeRepo<'a, Mem> {
        CodeRepo::new(m, &ModulePath::new(module).unwrap(), root).unwrap()
    }

    #[test]
    fn pseudo_version_forms() {
        let t = 1_574_365_171; // 2019-11-21T19:39:31Z
        assert_eq!(timestamp(t), "20191121193931");
        assert_eq!(
            pseudo_version("", "", t, "daa7c04131f5"),
            "v0.0.0-20191121193931-daa7c04131f5"
        );
        assert_eq!(
            pseudo_version("v2", "", t, "daa7c04131f5"),
            "v2.0.0-20191121193931-daa7c04131f5"
        );
        assert_eq!(
            pseudo_version("", "v1.2.9", t, "daa7c04131f5"),
            "v1.2.10-0.20191121193931-daa7c04131f5"
        );
        assert_eq!(
            pseudo_version("", "v1.3.0-pre", t, "daa7c04131f5"),
            "v1.3.0-pre.0.20191121193931-daa7c04131f5"
        );
        assert_eq!(
            pseudo_version("", "v2.0.0+incompatible", t, "abc"),
            "v2.0.1-0.20191121193931-abc+incompatible"
        );
        for (v, base) in [
            ("v1.2.10-0.20191121193931-daa7c04131f5", "v1.2.9"),
            ("v1.2.100-0.20191121193931-daa7c04131f5", "v1.2.99"),
            ("v1.2.1-0.20191121193931-daa7c04131f5", "v1.2.0"),
            (
                "v2.0.1-0.20191121193931-daa7c04131f5+incompatible",
                "v2.0.0+incompatible",
            ),
            ("v1.3.0-pre.0.20191121193931-daa7c04131f5", "v1.3.0-pre"),
            ("v0.0.0-20191121193931-daa7c04131f5", ""),
        ] {
            assert_eq!(pseudo_base(v).unwrap(), base, "{v}");
        }
        // The patch before 0 does not exist (x/mod `PseudoVersionBase`).
        let err = pseudo_base("v1.1.0-0.20191121193931-daa7c04131f5").unwrap_err();
        assert_eq!(
            err.to_string(),
            "version before v1.1.0 would have negative patch number"
        );
        assert_eq!(rfc3339(t), "2019-11-21T19:39:31Z");
    }

    #[test]
    fn root_module_versions_queries_and_pseudo_versions() {
        let mut m = Mem::default();
        let c0 = m.commit(&[("go.mod", "module x.com/r\n"), ("a.go", "")]);
        m.tag("v1.0.0", &c0);
        m.tag("v1.0", &c0); // incomplete: ignored
        let c1 = m.commit(&[("go.mod", "module x.com/r\n")]);
        m.tag("v1.1.0", &c1);
        m.tag("v1.1.0+meta", &c1); // build metadata: not listed
        let c2 = m.commit(&[("go.mod", "module x.com/r\n")]);
        let r = repo(&m, "x.com/r", "x.com/r");
        assert_eq!(r.versions().unwrap(), vec!["v1.0.0", "v1.1.0"]);
        // Branch head after v1.1.0: pseudo-version based on v1.1.0.
        let info = r.stat("main").unwrap();
        assert_eq!(
            info.version,
            format!("v1.1.1-0.{}-{}", timestamp(info.time), &c2[..12])
        );
        assert_eq!(r.latest().unwrap(), info);
        // A commit prefix of a tagged commit resolves to the tag.
        assert_eq!(r.stat(&c1[..8]).unwrap().version, "v1.1.0");
        // The pseudo-version itself is valid, and its go.mod is found.
        assert_eq!(r.stat(&info.version).unwrap().version, info.version);
        assert_eq!(r.go_mod(&info.version).unwrap(), b"module x.com/r\n");
        // Wrong timestamp, short hash, unknown tag, wrong major.
        let bad_time = info
            .version
            .replace(&timestamp(info.time), "20000101000000");
        assert!(matches!(r.stat(&bad_time), Err(RepoError::NotFound(_))));
        assert!(matches!(r.stat("v1.9.0"), Err(RepoError::NotFound(_))));
        assert!(matches!(
            r.stat("nosuchbranch"),
            Err(RepoError::NotFound(_))
        ));
        let err = r.stat("v1.0.0+incompatible").unwrap_err().to_string();
        assert!(err.contains("+incompatible suffix not allowed"), "{err}");
    }

    #[test]
    fn subdirectory_module_with_tag_prefix_and_v2_subdir() {
        let mut m = Mem::default();
        let c0 = m.commit(&[
            ("sub/lib/go.mod", "module x.com/r/sub/lib\n"),
            ("sub/lib/v2/go.mod", "module x.com/r/sub/lib/v2\n"),
            ("LICENSE", "root license"),
        ]);
        m.tag("sub/lib/v1.2.0", &c0);
        m.tag("sub/lib/v2.0.0", &c0);
        m.tag("v9.9.9", &c0); // root tag: not this module's
        let lib = repo(&m, "x.com/r/sub/lib", "x.com/r");
        assert_eq!(lib.versions().unwrap(), vec!["v1.2.0"]);
        assert_eq!(lib.source("v1.2.0").unwrap().dir, "sub/lib");
        let v2 = repo(&m, "x.com/r/sub/lib/v2", "x.com/r");
        assert_eq!(v2.versions().unwrap(), vec!["v2.0.0"]);
        assert_eq!(v2.source("v2.0.0").unwrap().dir, "sub/lib/v2");
        assert_eq!(v2.go_mod("v2.0.0").unwrap(), b"module x.com/r/sub/lib/v2\n");
        // A subdirectory module needs its go.mod.
        let none = repo(&m, "x.com/r/other", "x.com/r");
        assert!(none.versions().unwrap().is_empty());
    }

    #[test]
    fn v2_at_root_and_incompatible_versions() {
        let mut m = Mem::default();
        let c0 = m.commit(&[("a.go", "")]);
        m.tag("v1.0.0", &c0);
        m.tag("v2.0.0", &c0);
        let c1 = m.commit(&[("a.go", "x")]);
        m.tag("v3.1.0", &c1);
        let legacy = repo(&m, "x.com/legacy", "x.com/legacy");
        assert_eq!(
            legacy.versions().unwrap(),
            vec!["v1.0.0", "v2.0.0+incompatible", "v3.1.0+incompatible"]
        );
        assert_eq!(
            legacy.stat("v3.1.0+incompatible").unwrap().version,
            "v3.1.0+incompatible"
        );
        assert_eq!(
            legacy.stat("v3.1.0").unwrap().version,
            "v3.1.0+incompatible"
        );
        assert!(
            legacy.source("v3.1.0").is_err(),
            "v3.1.0 needs +incompatible here"
        );
        assert_eq!(
            legacy.go_mod("v2.0.0+incompatible").unwrap(),
            b"module x.com/legacy\n"
        );

        let mut m = Mem::default();
        let c0 = m.commit(&[("go.mod", "module x.com/major\n")]);
        m.tag("v1.0.0", &c0);
        let c1 = m.commit(&[("go.mod", "module x.com/major/v2\n")]);
        m.tag("v2.0.0", &c1);
        m.tag("v2.1.0", &c1);
        let v1 = repo(&m, "x.com/major", "x.com/major");
        assert_eq!(
            v1.versions().unwrap(),
            vec!["v1.0.0"],
            "v1 has a go.mod: no +incompatible"
        );
        let v2 = repo(&m, "x.com/major/v2", "x.com/major");
        assert_eq!(v2.versions().unwrap(), vec!["v2.0.0", "v2.1.0"]);
        assert_eq!(v2.source("v2.1.0").unwrap().dir, "");
        assert!(v2.stat("v1.0.0").is_err());
        // Query on a commit holding two tags: the highest canonical one.
        assert_eq!(v2.stat(&c1[..10]).unwrap().version, "v2.1.0");
    }

    #[test]
    fn a_commit_tagged_for_two_majors_answers_each_module_with_its_own_tag() {
        // v1 at the root, v2 in a subdirectory, one commit tagged v1.1.0 and v2.0.0.
        let mut m = Mem::default();
        let c0 = m.commit(&[
            ("go.mod", "module x.com/foo\n"),
            ("v2/go.mod", "module x.com/foo/v2\n"),
        ]);
        m.tag("v1.1.0", &c0);
        m.tag("v2.0.0", &c0);
        let v1 = repo(&m, "x.com/foo", "x.com/foo");
        assert_eq!(v1.stat(&c0[..12]).unwrap().version, "v1.1.0");
        assert_eq!(v1.stat("main").unwrap().version, "v1.1.0");
        assert_eq!(v1.latest().unwrap().version, "v1.1.0");
        let v2 = repo(&m, "x.com/foo/v2", "x.com/foo");
        assert_eq!(v2.stat(&c0[..12]).unwrap().version, "v2.0.0");
        assert_eq!(v2.source("v2.0.0").unwrap().dir, "v2");
    }

    #[test]
    fn semantic_version_queries_name_tags_under_the_module_directory() {
        let mut m = Mem::default();
        m.commit(&[("sub/go.mod", "module x.com/r/sub\n")]);
        let c0 = m.commit(&[("sub/go.mod", "module x.com/r/sub\n"), ("sub/a.go", "")]);
        m.tag("sub/v1.1.0+build1", &c0);
        let sub = repo(&m, "x.com/r/sub", "x.com/r");
        // Not canonical: the base of a pseudo-version just above it (modfetch revToRev).
        let info = sub.stat("v1.1.0+build1").unwrap();
        assert_eq!(
            info.version,
            format!("v1.1.1-0.{}-{}", timestamp(info.time), &c0[..12])
        );
    }

    #[test]
    fn pseudo_versions_without_a_base_take_any_major_but_v1() {
        // No go.mod: a v2 pseudo-version is +incompatible, as the go command makes it.
        let mut m = Mem::default();
        let c0 = m.commit(&[("a.go", "")]);
        let r = repo(&m, "x.com/legacy", "x.com/legacy");
        let t = r.stat(&c0[..12]).unwrap().time;
        let v2 = format!("v2.0.0-{}-{}", timestamp(t), &c0[..12]);
        assert_eq!(r.stat(&v2).unwrap().version, format!("{v2}+incompatible"));
        let v1 = format!("v1.0.0-{}-{}", timestamp(t), &c0[..12]);
        let err = r.stat(&v1).unwrap_err().to_string();
        assert!(err.contains("must be v0, not v1"), "{err}");
        // With a go.mod, v2 needs the /v2 path.
        let mut m = Mem::default();
        let c0 = m.commit(&[("go.mod", "module x.com/modern\n")]);
        let r = repo(&m, "x.com/modern", "x.com/modern");
        let v2 = format!("v2.0.0-{}-{}", timestamp(t_of(&r, &c0)), &c0[..12]);
        let err = r.stat(&v2).unwrap_err().to_string();
        assert!(
            err.contains("module path must match major version"),
            "{err}"
        );
    }

    fn t_of(r: &CodeRepo<'_, Mem>, hash: &str) -> i64 {
        r.stat(&hash[..12]).unwrap().time
    }

    #[test]
    fn retracted_versions_name_no_commit_and_base_no_pseudo_version() {
        let gomod = "module x.com/r\n";
        let mut m = Mem::default();
        let c0 = m.commit(&[("go.mod", gomod)]);
        m.tag("v1.0.0", &c0);
        let c1 = m.commit(&[("go.mod", gomod), ("a.go", "1")]);
        m.tag("v1.1.0", &c1);
        let c2 = m.commit(&[("go.mod", gomod), ("a.go", "2")]);
        m.branches.insert("feature".into(), c2.clone());
        let c3 = m.commit(&[("go.mod", "module x.com/r\n\nretract v1.1.0 // broken\n")]);
        m.tag("v1.2.0", &c3);
        let r = repo(&m, "x.com/r", "x.com/r");
        let pseudo = |c: &str| {
            let t = m.commits[m.idx(c).unwrap()].1;
            format!("v1.0.1-0.{}-{}", timestamp(t), &c[..12])
        };
        // The retracted tag is passed over, as the go command does (convert, tagAllowed).
        assert_eq!(r.stat("feature").unwrap().version, pseudo(&c2));
        assert_eq!(r.stat(&c1[..12]).unwrap().version, pseudo(&c1));
        // Asked for by name, it still resolves; it is still listed.
        assert_eq!(r.stat("v1.1.0").unwrap().version, "v1.1.0");
        assert_eq!(r.versions().unwrap(), ["v1.0.0", "v1.1.0", "v1.2.0"]);
        assert_eq!(r.latest().unwrap().version, "v1.2.0");
    }

    #[test]
    fn a_go_mod_claiming_another_major_is_explained_as_go_explains_it() {
        let mut m = Mem::default();
        let c0 = m.commit(&[("go.mod", "module x.com/maj\n")]);
        m.tag("v1.0.0", &c0);
        let c1 = m.commit(&[("go.mod", "module x.com/maj/v2\n")]);
        m.tag("v2.0.0", &c1);
        let r = repo(&m, "x.com/maj", "x.com/maj");
        let err = r.stat("v2.0.0").unwrap_err().to_string();
        assert!(
            err.ends_with(
                "v2.0.0: invalid version: go.mod has post-v2 module path \"x.com/maj/v2\" at revision v2.0.0"
            ),
            "{err}"
        );
    }

    #[test]
    fn a_pseudo_version_below_patch_zero_is_refused() {
        let mut m = Mem::default();
        let c0 = m.commit(&[("go.mod", "module x.com/r\n")]);
        m.tag("v1.1.0", &c0);
        let c1 = m.commit(&[("go.mod", "module x.com/r\n"), ("a.go", "")]);
        let r = repo(&m, "x.com/r", "x.com/r");
        let t = r.stat("main").unwrap().time;
        // v1.1.1-0.… is the real one; v1.1.0-0.… would need a tag v1.0.-1.
        let good = format!("v1.1.1-0.{}-{}", timestamp(t), &c1[..12]);
        assert_eq!(r.stat(&good).unwrap().version, good);
        let bad = format!("v1.1.0-0.{}-{}", timestamp(t), &c1[..12]);
        let err = r.stat(&bad).unwrap_err().to_string();
        assert!(err.contains("would have negative patch number"), "{err}");
    }
}
