//! Bare git mirrors of internal repositories under `<data>/mirrors/<sha256 of URL>.git`, fetched
//! with the route's credentials, refreshed when older than the TTL, one fetch at a time per
//! repository however many requests want it. A [`Mirror`] answers the [`CodeHost`] questions with
//! local git commands (blocking: call from `spawn_blocking`).
//!
//! Credentials reach git through `GIT_CONFIG_*` environment variables (never the command line,
//! never a file) and are scrubbed from any error text.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::store::flight::{Flights, Join};
use modgate_core::gomod::coderepo::{CodeHost, Commit};

/// A mirror could not be brought up to date or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MirrorError {
    #[error("repository not found: {0}")]
    NotFound(String),
    #[error("the git host rejected modgate's credentials: {0}")]
    Auth(String),
    #[error("the git host is unreachable: {0}")]
    Unreachable(String),
    #[error("git failed: {0}")]
    Git(String),
}

/// Reading a local mirror failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot run git: {0}")]
    Spawn(std::io::Error),
    #[error("cannot create {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("git archive failed: {0}")]
    Archive(String),
    #[error("bad commit time {0:?}")]
    CommitTime(String),
}

/// How to reach one repository.
#[derive(Clone)]
pub struct GitAccess {
    pub url: String,
    /// `Authorization` header value, if credentials are configured.
    pub auth_header: Option<String>,
    /// CA bundle for git's TLS (`GIT_SSL_CAINFO`).
    pub ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for GitAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitAccess")
            .field("url", &self.url)
            .field(
                "auth_header",
                &self.auth_header.as_ref().map(|_| "<redacted>"),
            )
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// All mirrors.
#[derive(Debug)]
pub struct Mirrors {
    root: PathBuf,
    ttl: Duration,
    fetch_timeout: Duration,
    fetched: Mutex<HashMap<PathBuf, Instant>>,
    flights: Arc<Flights<Result<(), MirrorError>>>,
}

impl Mirrors {
    pub fn new(
        data_dir: &Path,
        ttl: Duration,
        fetch_timeout: Duration,
    ) -> std::io::Result<Mirrors> {
        let root = data_dir.join("mirrors");
        std::fs::create_dir_all(&root)?;
        Ok(Mirrors {
            root,
            ttl,
            fetch_timeout,
            fetched: Mutex::new(HashMap::new()),
            flights: Arc::default(),
        })
    }

    /// The mirror for `access.url`, fetched if it is missing or older than the TTL.
    /// `on_fetch` is told the duration and outcome of each fetch this call performs.
    pub async fn ensure(
        &self,
        access: &GitAccess,
        on_fetch: impl FnOnce(Duration, &Result<(), MirrorError>),
    ) -> Result<Mirror, MirrorError> {
        let dir = self.root.join(format!(
            "{}.git",
            hex(&Sha256::digest(access.url.as_bytes()))
        ));
        let mirror = Mirror { dir: dir.clone() };
        loop {
            let fresh = self
                .fetched
                .lock()
                .expect("mirror map poisoned")
                .get(&dir)
                .is_some_and(|t| t.elapsed() < self.ttl);
            if fresh {
                return Ok(mirror);
            }
            let key = dir.display().to_string();
            match self.flights.join(&key) {
                Join::Leader(leader) => {
                    let access = access.clone();
                    let d = dir.clone();
                    let timeout = self.fetch_timeout;
                    let start = Instant::now();
                    let res = tokio::task::spawn_blocking(move || fetch(&d, &access, timeout))
                        .await
                        .unwrap_or_else(|e| {
                            Err(MirrorError::Git(format!("fetch task failed: {e}")))
                        });
                    on_fetch(start.elapsed(), &res);
                    if res.is_ok() {
                        self.fetched
                            .lock()
                            .expect("mirror map poisoned")
                            .insert(dir.clone(), Instant::now());
                    }
                    leader.finish(res.clone());
                    return res.map(|_| mirror);
                }
                Join::Follower(f) => match f.wait().await {
                    Some(Ok(())) => return Ok(mirror),
                    Some(Err(e)) => return Err(e),
                    None => continue,
                },
            }
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A git command with a clean, credential-free environment.
fn git(dir: &Path) -> Command {
    let mut c = Command::new("git");
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", dir.parent().unwrap_or(dir))
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_ASKPASS", "true")
        .env("LC_ALL", "C")
        .arg("--git-dir")
        .arg(dir)
        .stdin(Stdio::null());
    c
}

fn scrub(text: &str, access: &GitAccess) -> String {
    let mut t = text.trim().to_string();
    if let Some(h) = &access.auth_header {
        t = t.replace(h.as_str(), "<redacted>");
        if let Some((_, secret)) = h.split_once(' ') {
            t = t.replace(secret, "<redacted>");
        }
    }
    t.lines().last().unwrap_or("").chars().take(300).collect()
}

/// Initializes (if needed) and fetches every branch, tag and HEAD.
fn fetch(dir: &Path, access: &GitAccess, timeout: Duration) -> Result<(), MirrorError> {
    if !dir.join("HEAD").exists() {
        let out = Command::new("git")
            .args(["init", "--bare", "--quiet"])
            .arg(dir)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("HOME", dir.parent().unwrap_or(dir))
            .output()
            .map_err(|e| MirrorError::Git(format!("cannot run git: {e}")))?;
        if !out.status.success() {
            return Err(MirrorError::Git(
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            ));
        }
        // As the go command does: archives ignore export-subst and export-ignore.
        std::fs::create_dir_all(dir.join("info")).map_err(|e| MirrorError::Git(e.to_string()))?;
        std::fs::write(
            dir.join("info/attributes"),
            "* -export-subst -export-ignore\n",
        )
        .map_err(|e| MirrorError::Git(e.to_string()))?;
    }
    let mut cmd = git(dir);
    cmd.args([
        "-c",
        "http.followRedirects=initial",
        "fetch",
        "--quiet",
        "--prune",
        "--force",
        "--no-write-fetch-head",
    ])
    .arg(&access.url)
    .args([
        "+refs/heads/*:refs/heads/*",
        "+refs/tags/*:refs/tags/*",
        "+HEAD:refs/modgate/HEAD",
    ]);
    if let Some(h) = &access.auth_header {
        cmd.env("GIT_CONFIG_COUNT", "1")
            .env("GIT_CONFIG_KEY_0", "http.extraHeader")
            .env("GIT_CONFIG_VALUE_0", format!("Authorization: {h}"));
    }
    if let Some(ca) = &access.ca_file {
        cmd.env("GIT_SSL_CAINFO", ca);
    }
    let out = run_with_timeout(cmd, timeout)
        .map_err(|e| MirrorError::Git(format!("cannot run git: {e}")))?;
    let Some(out) = out else {
        return Err(MirrorError::Unreachable(format!(
            "fetch took longer than {timeout:?}"
        )));
    };
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    let msg = scrub(&err, access);
    Err(classify(&err)(msg))
}

/// Which [`MirrorError`] a failed fetch's stderr describes. git quotes the URLs it names
/// (`repository 'https://host:40115/x/' not found`); they are dropped before matching, so a port,
/// host or repository name (`40115`, `ssl-tools`) never decides the kind.
fn classify(stderr: &str) -> fn(String) -> MirrorError {
    let lower = stderr
        .split('\'')
        .step_by(2)
        .collect::<Vec<_>>()
        .join(" ")
        .to_ascii_lowercase();
    let has = |needles: &[&str]| needles.iter().any(|n| lower.contains(n));
    if has(&[
        "returned error: 401",
        "returned error: 403",
        "authentication",
        "could not read username",
        "could not read password",
    ]) {
        MirrorError::Auth
    } else if has(&[
        "returned error: 404",
        "not found",
        "does not appear to be a git repository",
    ]) {
        MirrorError::NotFound
    } else if has(&[
        "could not resolve",
        "failed to connect",
        "connection",
        "timed out",
        "ssl",
        "certificate",
    ]) {
        MirrorError::Unreachable
    } else {
        MirrorError::Git
    }
}

fn run_with_timeout(mut cmd: Command, timeout: Duration) -> std::io::Result<Option<Output>> {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let start = Instant::now();
    loop {
        if child.try_wait()?.is_some() {
            return child.wait_with_output().map(Some);
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A local bare mirror. Every method runs git and blocks.
#[derive(Debug, Clone)]
pub struct Mirror {
    dir: PathBuf,
}

impl Mirror {
    fn run(&self, args: &[&str]) -> Result<Output, ReadError> {
        git(&self.dir).args(args).output().map_err(ReadError::Spawn)
    }

    fn ok(&self, args: &[&str]) -> Result<Option<Vec<u8>>, ReadError> {
        let out = self.run(args)?;
        Ok(out.status.success().then_some(out.stdout))
    }

    /// `git archive --format=zip` of `commit`, restricted to `dir`, into `out`, as the go
    /// command makes it (LF line endings, no export-subst/export-ignore).
    pub fn archive(&self, commit: &str, dir: &str, out: &Path) -> Result<(), ReadError> {
        let file = std::fs::File::create(out).map_err(|source| ReadError::Create {
            path: out.to_path_buf(),
            source,
        })?;
        let mut cmd = git(&self.dir);
        cmd.args([
            "-c",
            "core.autocrlf=input",
            "-c",
            "core.eol=lf",
            "archive",
            "--format=zip",
            "--prefix=prefix/",
            commit,
        ]);
        if !dir.is_empty() {
            cmd.arg("--").arg(dir);
        }
        let st = cmd
            .stdout(file)
            .stderr(Stdio::piped())
            .output()
            .map_err(ReadError::Spawn)?;
        if !st.status.success() {
            return Err(ReadError::Archive(
                String::from_utf8_lossy(&st.stderr).trim().to_string(),
            ));
        }
        Ok(())
    }
}

fn is_hex(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit())
}

impl CodeHost for Mirror {
    type Error = ReadError;

    fn tags(&self) -> Result<Vec<(String, String)>, ReadError> {
        let out = self
            .ok(&[
                "for-each-ref",
                "--format=%(refname:strip=2) %(objectname) %(*objectname)",
                "refs/tags",
            ])?
            .unwrap_or_default();
        Ok(String::from_utf8_lossy(&out)
            .lines()
            .filter_map(|l| {
                let mut f = l.split(' ');
                let name = f.next()?.to_string();
                let obj = f.next()?.to_string();
                let peeled = f.next().filter(|p| !p.is_empty()).map(str::to_string);
                Some((name, peeled.unwrap_or(obj)))
            })
            .collect())
    }

    fn resolve(&self, rev: &str) -> Result<Option<Commit>, ReadError> {
        if rev.starts_with('-') || rev.is_empty() {
            return Ok(None);
        }
        let candidates: Vec<String> = if rev == "HEAD" {
            vec!["refs/modgate/HEAD".into()]
        } else {
            // The go command's order (codehost `gitRepo.stat`): a tag, then a branch of that
            // name, then a commit hash of at least 7 digits (`minHashDigits`).
            let mut c = vec![format!("refs/tags/{rev}"), format!("refs/heads/{rev}")];
            if is_hex(rev) && (7..=40).contains(&rev.len()) {
                c.push(rev.to_string());
            }
            c
        };
        for c in candidates {
            let spec = format!("{c}^{{commit}}");
            let Some(out) = self.ok(&["rev-parse", "--verify", "--quiet", &spec])? else {
                continue;
            };
            let hash = String::from_utf8_lossy(&out).trim().to_string();
            let Some(log) = self.ok(&[
                "-c",
                "log.showsignature=false",
                "log",
                "--no-decorate",
                "-n1",
                "--format=%H %ct",
                &hash,
                "--",
            ])?
            else {
                continue;
            };
            let log = String::from_utf8_lossy(&log);
            let mut f = log.split_whitespace();
            let (Some(h), Some(t)) = (f.next(), f.next()) else {
                continue;
            };
            return Ok(Some(Commit {
                hash: h.to_string(),
                time: t
                    .parse()
                    .map_err(|_| ReadError::CommitTime(t.to_string()))?,
            }));
        }
        Ok(None)
    }

    fn read_file(&self, commit: &str, path: &str) -> Result<Option<Vec<u8>>, ReadError> {
        let spec = format!("{commit}:{path}");
        let kind = self.ok(&["cat-file", "-t", &spec])?;
        if kind
            .as_deref()
            .map(|k| String::from_utf8_lossy(k).trim().to_string())
            != Some("blob".into())
        {
            return Ok(None);
        }
        self.ok(&["cat-file", "blob", &spec])
    }

    fn merged_tags(&self, commit: &str) -> Result<Vec<String>, ReadError> {
        let out = self
            .ok(&[
                "for-each-ref",
                "--format=%(refname:strip=2)",
                "refs/tags",
                "--merged",
                commit,
            ])?
            .unwrap_or_default();
        Ok(String::from_utf8_lossy(&out)
            .lines()
            .map(str::to_string)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fetch_failures_are_classified_by_what_git_says_not_by_the_url() {
        let kind = |stderr: &str| classify(stderr)(String::new());
        for (stderr, want) in [
            (
                "fatal: repository 'https://127.0.0.1:40115/team/nope/' not found",
                MirrorError::NotFound(String::new()),
            ),
            (
                "fatal: repository 'https://127.0.0.1:40315/ssl-connection/' not found",
                MirrorError::NotFound(String::new()),
            ),
            (
                "fatal: Authentication failed for 'https://127.0.0.1:40404/team/alpha/'",
                MirrorError::Auth(String::new()),
            ),
            (
                "fatal: could not read Username for 'https://git.internal': terminal prompts disabled",
                MirrorError::Auth(String::new()),
            ),
            (
                "fatal: unable to access 'https://h:40404/x/': The requested URL returned error: 403",
                MirrorError::Auth(String::new()),
            ),
            (
                "fatal: unable to access 'https://h:40115/x/': The requested URL returned error: 404",
                MirrorError::NotFound(String::new()),
            ),
            (
                "fatal: unable to access 'https://h:1/x/': Failed to connect to h port 1: Connection refused",
                MirrorError::Unreachable(String::new()),
            ),
            (
                "fatal: unable to access 'https://h/x/': SSL certificate problem: unable to get local issuer certificate",
                MirrorError::Unreachable(String::new()),
            ),
            (
                "error: object file is empty",
                MirrorError::Git(String::new()),
            ),
        ] {
            assert_eq!(kind(stderr), want, "{stderr}");
        }
    }
}
