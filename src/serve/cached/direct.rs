//! The `direct` upstream: a public module resolved from its code host, as the go command does
//! with `GOPROXY=direct` — the repository root from the known-host rules or go-get discovery
//! (`https://PATH?go-get=1`, the `go-import` meta tag), then git smart-HTTP through a mirror,
//! and each GOPROXY answer computed from it with the same code that serves private modules.
//! The answer then goes through the same fill as a proxy's: content checks, checksum-database
//! proof, cache. Code hosts are agent-chosen: the egress policy and the address rules apply to
//! every one of them.

use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::BodyExt as _;

use super::Spec;
use super::fetch::{Fetched, get_following_redirects};
use crate::serve::State;
use crate::serve::respond::ServeError;
use crate::serve::state::AddrRefused;
use crate::store::mirror::{GitAccess, Mirror, MirrorError};
use modgate_core::base_url::BaseUrl;
use modgate_core::gomod::coderepo::CodeRepo;
use modgate_core::gomod::path::ModulePath;
use modgate_core::policy::classify::ProxyOp;
use modgate_core::policy::egress::Decision;
use modgate_core::policy::host::normalize_host;

/// Longest go-get page read.
const GO_GET_MAX: usize = 1 << 20;

/// A repository root: the module path it stands for, its VCS and its URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaImport {
    pub prefix: String,
    pub vcs: String,
    pub repo: String,
}

/// Resolves `spec`'s GOPROXY call from the module's code host.
pub(super) async fn fetch(spec: &Spec, state: &State) -> Fetched {
    let Some((module, op)) = &spec.direct else {
        return Fetched::Err(ServeError::Internal(
            "direct upstream for a request that is no GOPROXY call".into(),
        ));
    };
    match resolve(module, op, state).await {
        Ok(data) => Fetched::Ok(data, Duration::ZERO),
        Err(ServeError::ClientNotFound(text)) => Fetched::NotFound {
            status: 404,
            text: Bytes::from(text),
        },
        Err(e) => Fetched::Err(e),
    }
}

async fn resolve(
    module: &ModulePath,
    op: &ProxyOp,
    state: &State,
) -> Result<Response<crate::body::Body>, ServeError> {
    let live = state.live();
    let root = repo_root(module.as_str(), state).await?;
    if root.vcs != "git" {
        return Err(ServeError::ClientNotFound(format!(
            "not found: {module}: its repository {} is {}; modgate's direct upstream fetches git repositories only",
            root.repo, root.vcs
        )));
    }
    if !root.repo.starts_with("https://") {
        return Err(ServeError::ClientNotFound(format!(
            "not found: {module}: its repository URL {} is not https://; modgate fetches code over https only",
            root.repo
        )));
    }
    let url = BaseUrl::parse(&root.repo).map_err(|e| {
        ServeError::ClientNotFound(format!(
            "not found: {module}: go-import repository URL {:?}: {e}",
            root.repo
        ))
    })?;
    check_host(url.host(), url.port(), state).await?;
    let backend = live
        .direct
        .as_ref()
        .ok_or_else(|| ServeError::Internal("direct upstream without its backend".into()))?;
    let access = backend.access(&live.resolve(&url).to_string());
    let mirror = mirror(module, &root, &access, state).await?;
    let tmp = state.config.storage.data_dir.join("tmp");
    let (module, op, prefix) = (module.clone(), op.clone(), root.prefix.clone());
    let built = tokio::task::spawn_blocking(move || answer(&mirror, &module, &prefix, &op, &tmp))
        .await
        .map_err(|e| ServeError::Internal(format!("direct task failed: {e}")))??;
    let (len, body) = match built {
        Built::Bytes(data) => (data.len() as u64, crate::body::full(data)),
        Built::File(file, len) => (
            len,
            crate::body::boxed(crate::store::file_body::FileBody::new(file, len)),
        ),
    };
    let mut resp = Response::new(body);
    resp.headers_mut()
        .insert(http::header::CONTENT_LENGTH, len.into());
    Ok(resp)
}

enum Built {
    Bytes(Vec<u8>),
    /// A module zip in an unlinked temporary file, rewound, and its length.
    File(std::fs::File, u64),
}

/// Computes one answer from the mirror, as the go command would in direct mode. Blocking.
fn answer(
    mirror: &Mirror,
    module: &ModulePath,
    root: &str,
    op: &ProxyOp,
    tmp: &std::path::Path,
) -> Result<Built, ServeError> {
    use crate::serve::private::repo_err;
    let repo = CodeRepo::new(mirror, module, root)
        .map_err(|e| ServeError::ClientNotFound(format!("not found: {module}: {e}")))?;
    Ok(Built::Bytes(match op {
        ProxyOp::List => {
            let mut out = String::new();
            for v in repo.versions().map_err(repo_err)? {
                out.push_str(&v);
                out.push('\n');
            }
            out.into_bytes()
        }
        ProxyOp::Latest => repo.latest().map_err(repo_err)?.json().into_bytes(),
        ProxyOp::Query(q) | ProxyOp::Info(q) => repo.stat(q).map_err(repo_err)?.json().into_bytes(),
        ProxyOp::Mod(v) => repo.go_mod(v).map_err(repo_err)?,
        ProxyOp::Zip(v) => {
            let path = tmp.join(format!("direct-{:016x}.zip", rand::random::<u64>()));
            let mut file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(|e| ServeError::Internal(format!("{}: {e}", path.display())))?;
            let _ = std::fs::remove_file(&path);
            crate::serve::private::build_zip(mirror, module, root, v, &mut file, tmp)?;
            let len = std::io::Seek::seek(&mut file, std::io::SeekFrom::End(0))
                .map_err(|e| ServeError::Internal(e.to_string()))?;
            std::io::Seek::rewind(&mut file).map_err(|e| ServeError::Internal(e.to_string()))?;
            return Ok(Built::File(file, len));
        }
    }))
}

async fn mirror(
    module: &ModulePath,
    root: &MetaImport,
    access: &GitAccess,
    state: &State,
) -> Result<Mirror, ServeError> {
    crate::serve::private::ensure_mirror(access, state)
        .await
        .map_err(|e| match e {
            MirrorError::NotFound(_) | MirrorError::Auth(_) => ServeError::ClientNotFound(format!(
                "not found: {module}: repository {} not found",
                root.repo
            )),
            other => ServeError::UpstreamFailed(format!(
                "code host of {module} ({}) failed: {other}",
                root.repo
            )),
        })
}

/// The egress policy and the address rules, for a code host a module path chose.
async fn check_host(host: &str, port: u16, state: &State) -> Result<(), ServeError> {
    let host = normalize_host(host.trim_start_matches('[').trim_end_matches(']'));
    if let Decision::Deny(reason) = state.counted(state.live().policy.egress.decide_forward(&host))
    {
        return Err(ServeError::ClientForbidden(reason));
    }
    let live = state.live();
    let target = live.resolve(&BaseUrl::https(&host, port).map_err(|e| {
        ServeError::ClientBadRequest(format!("modgate: invalid code host {host:?}: {e}"))
    })?);
    state
        .allowed_addrs(&live, target.host(), target.port())
        .await
        .map(|_| ())
        .map_err(|e| match e {
            AddrRefused::Refused(r) => ServeError::ClientForbidden(r.to_string()),
            AddrRefused::Resolve(e) => {
                ServeError::UpstreamFailed(format!("cannot reach code host {host}: {e}"))
            }
        })
}

/// The repository root of `path`, as the go command finds it: a known code host's layout, or
/// go-get discovery on the path (and, when the tag names a shorter root, on that root too,
/// which must agree).
async fn repo_root(path: &str, state: &State) -> Result<MetaImport, ServeError> {
    if let Some(root) = known_host(path) {
        return Ok(root);
    }
    let imports = go_get(path, state).await?;
    let found = match_go_import(&imports, path)
        .map_err(|e| ServeError::ClientNotFound(format!("not found: {path}: {e}")))?;
    if found.prefix != path {
        let at_root = go_get(&found.prefix, state).await?;
        let again = match_go_import(&at_root, &found.prefix).map_err(|e| {
            ServeError::ClientNotFound(format!("not found: {path}: {}: {e}", found.prefix))
        })?;
        if again != found {
            return Err(ServeError::ClientNotFound(format!(
                "not found: {path}: {path} and {} disagree about go-import for {}",
                found.prefix, found.prefix
            )));
        }
    }
    Ok(found)
}

/// The go command's static rules for well-known hosts (those its `vcsPaths` serve without
/// discovery) that speak git.
pub fn known_host(path: &str) -> Option<MetaImport> {
    let mut el = path.split('/');
    if el.next()? != "github.com" {
        return None;
    }
    let (owner, repo) = (el.next()?, el.next()?);
    let ok = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    };
    if !ok(owner) || !ok(repo) || el.any(|e| !ok(e)) {
        return None;
    }
    let prefix = format!("github.com/{owner}/{repo}");
    Some(MetaImport {
        repo: format!("https://{prefix}"),
        prefix,
        vcs: "git".into(),
    })
}

/// GETs `https://PATH?go-get=1` (through the egress and address checks) and parses its
/// go-import tags; the page is read whatever its status, as the go command reads it.
async fn go_get(path: &str, state: &State) -> Result<Vec<MetaImport>, ServeError> {
    let (host, rest) = path.split_once('/').unwrap_or((path, ""));
    check_host(host, 443, state).await?;
    let live = state.live();
    let base = live.upstream_base(host, 443).map_err(|e| {
        ServeError::ClientBadRequest(format!("modgate: invalid code host {host:?}: {e}"))
    })?;
    let uri = base
        .join(&format!("/{rest}?go-get=1"))
        .map_err(|e| ServeError::Internal(format!("go-get URL for {path}: {e}")))?;
    let mut waited = Duration::ZERO;
    let resp = get_following_redirects(uri, "direct", state, &mut waited)
        .await
        .map_err(|e| {
            ServeError::UpstreamFailed(format!(
                "go-get discovery for {path} (https://{path}?go-get=1) failed: {e}"
            ))
        })?;
    let status = resp.status();
    let page = read_page(resp.into_body(), state).await;
    let imports = parse_meta_go_imports(&page);
    if imports.is_empty() {
        return Err(ServeError::ClientNotFound(if status == StatusCode::OK {
            format!("not found: {path}: no go-import meta tag at https://{path}?go-get=1")
        } else {
            format!(
                "not found: {path}: https://{path}?go-get=1 answered {} with no go-import meta tag",
                status.as_u16()
            )
        }));
    }
    Ok(imports)
}

async fn read_page(body: hyper::body::Incoming, state: &State) -> String {
    let collected = tokio::time::timeout(
        state.config.upstream.response_timeout,
        http_body_util::Limited::new(body, GO_GET_MAX).collect(),
    )
    .await;
    match collected {
        Ok(Ok(c)) => String::from_utf8_lossy(&c.to_bytes()).into_owned(),
        _ => String::new(),
    }
}

/// The `<meta name="go-import" content="PREFIX VCS REPO">` tags of a page's head, as the go
/// command reads them (up to `<body>` or `</head>`; `mod` entries ignored, as in direct mode;
/// attribute names case-insensitive; a content of other than three fields skipped).
pub fn parse_meta_go_imports(page: &str) -> Vec<MetaImport> {
    let lower = page.to_ascii_lowercase();
    let end = [lower.find("<body"), lower.find("</head")]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(lower.len());
    let mut out = vec![];
    let mut at = 0;
    while let Some(i) = lower[at..end].find("<meta") {
        let start = at + i + 5;
        let Some(close) = lower[start..end].find('>') else {
            break;
        };
        let tag = &page[start..start + close];
        at = start + close;
        let attrs = attributes(tag);
        let get = |name: &str| {
            attrs
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        };
        if get("name") != Some("go-import") {
            continue;
        }
        let fields: Vec<&str> = get("content").unwrap_or("").split_whitespace().collect();
        if let [prefix, vcs, repo] = fields[..]
            && vcs != "mod"
        {
            out.push(MetaImport {
                prefix: prefix.to_string(),
                vcs: vcs.to_string(),
                repo: repo.to_string(),
            });
        }
    }
    out
}

/// `key="value"` (or single-quoted, or bare) attributes of a tag, entities `&amp;`, `&lt;`,
/// `&gt;`, `&quot;` and `&#39;` decoded.
fn attributes(tag: &str) -> Vec<(String, String)> {
    let b = tag.as_bytes();
    let mut out = vec![];
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && (b[i].is_ascii_whitespace() || b[i] == b'/') {
            i += 1;
        }
        let k0 = i;
        while i < b.len() && !b[i].is_ascii_whitespace() && b[i] != b'=' {
            i += 1;
        }
        let key = &tag[k0..i];
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= b.len() || b[i] != b'=' {
            if !key.is_empty() {
                out.push((key.to_string(), String::new()));
            }
            continue;
        }
        i += 1;
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        let value = if i < b.len() && (b[i] == b'"' || b[i] == b'\'') {
            let q = b[i];
            let v0 = i + 1;
            let len = b[v0..].iter().position(|&c| c == q).unwrap_or(b.len() - v0);
            i = v0 + len + 1;
            &tag[v0..v0 + len]
        } else {
            let v0 = i;
            while i < b.len() && !b[i].is_ascii_whitespace() {
                i += 1;
            }
            &tag[v0..i]
        };
        let value = value
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&#39;", "'")
            .replace("&amp;", "&");
        out.push((key.to_string(), value));
    }
    out
}

/// The go command's `matchGoImport`: the one tag whose prefix is `path` or a path prefix of it.
pub fn match_go_import(imports: &[MetaImport], path: &str) -> Result<MetaImport, String> {
    let mut found: Option<&MetaImport> = None;
    let mut mismatches = vec![];
    for im in imports {
        let prefixed = path == im.prefix
            || (path.starts_with(&im.prefix)
                && path.as_bytes().get(im.prefix.len()) == Some(&b'/'));
        if !prefixed {
            mismatches.push(im.prefix.as_str());
            continue;
        }
        if found.is_some() {
            return Err(format!("multiple meta tags match import path {path:?}"));
        }
        found = Some(im);
    }
    found.cloned().ok_or_else(|| {
        format!(
            "no go-import meta tag matches {path} (tags for {})",
            if mismatches.is_empty() {
                "nothing".to_string()
            } else {
                mismatches.join(", ")
            }
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn im(prefix: &str, vcs: &str, repo: &str) -> MetaImport {
        MetaImport {
            prefix: prefix.into(),
            vcs: vcs.into(),
            repo: repo.into(),
        }
    }

    #[test]
    fn go_import_tags_are_read_from_the_head_as_the_go_command_reads_them() {
        let page = r#"<!DOCTYPE html><html><head>
<META NAME="go-import" CONTENT="code.example/lib git https://code.example/lib.git">
<meta name='go-import' content='code.example/lib mod https://proxy.example'>
<meta name="go-source" content="code.example/lib _ _ _">
<meta name=go-import content="code.example/hg hg https://code.example/hg">
<meta name="go-import" content="code.example/four git https://x sub">
<meta name="go-import" content="a &amp; b">
</head><body><meta name="go-import" content="late git https://late"></body></html>"#;
        assert_eq!(
            parse_meta_go_imports(page),
            vec![
                im("code.example/lib", "git", "https://code.example/lib.git"),
                im("code.example/hg", "hg", "https://code.example/hg"),
                im("a", "&", "b"),
            ]
        );
        assert!(parse_meta_go_imports("<html><body>nothing</body></html>").is_empty());
    }

    #[test]
    fn one_tag_must_match_the_path_or_a_path_prefix() {
        let tags = [
            im("code.example/lib", "git", "https://a"),
            im("code.example/libx", "git", "https://b"),
        ];
        assert_eq!(
            match_go_import(&tags, "code.example/lib/sub").unwrap().repo,
            "https://a"
        );
        assert_eq!(
            match_go_import(&tags, "code.example/libx").unwrap().repo,
            "https://b"
        );
        assert!(match_go_import(&tags, "code.example/li").is_err());
        let twice = [
            im("code.example/lib", "git", "https://a"),
            im("code.example", "git", "https://c"),
        ];
        assert!(
            match_go_import(&twice, "code.example/lib")
                .unwrap_err()
                .contains("multiple meta tags")
        );
    }

    #[test]
    fn github_paths_need_no_discovery() {
        assert_eq!(
            known_host("github.com/Owner/repo/v2/sub"),
            Some(im(
                "github.com/Owner/repo",
                "git",
                "https://github.com/Owner/repo"
            ))
        );
        assert_eq!(known_host("github.com/owner"), None);
        assert_eq!(known_host("gitlab.com/a/b"), None);
    }
}
