//! The `direct` upstream (`modules.upstream = "https://proxy.golang.org,direct"`): modgate
//! resolves a public module the proxies do not have from its code host (go-get discovery, then
//! git), and the go command gets exactly the versions and hashes it computes itself with
//! `GOPROXY=direct` — proven against the checksum database as any public module is.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use http::Response;
use modgate::body::full;

use crate::util::*;

/// Commits everything in `dir` at a fixed date and tags it.
fn commit(dir: &Path, n: u32, tags: &[&str]) {
    git(dir, &["add", "-A"]);
    let date = format!("2024-05-0{n} 10:11:12 +0000");
    let out = Command::new(tool("git"))
        .args(["commit", "-q", "-m", &format!("commit {n}")])
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .env("GIT_AUTHOR_DATE", &date)
        .env("GIT_COMMITTER_DATE", &date)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for t in tags {
        git(dir, &["tag", t]);
    }
}

/// Bare repositories under `base/repos`: `lib.git` (v1.0.0, v1.1.0, then an untagged commit)
/// and `mono.git` (a module in a subdirectory, tagged `tool/v0.1.0`).
fn code_host_repos(base: &Path) -> PathBuf {
    let repos = base.join("repos");
    let lib = base.join("work/lib");
    std::fs::create_dir_all(&lib).unwrap();
    git(&lib, &["init", "-q", "-b", "main"]);
    std::fs::write(lib.join("go.mod"), "module code.example/lib\n\ngo 1.19\n").unwrap();
    std::fs::write(
        lib.join("lib.go"),
        "package lib\n\nfunc Name() string { return \"one\" }\n",
    )
    .unwrap();
    std::fs::write(lib.join("LICENSE"), "MIT, for the test\n").unwrap();
    commit(&lib, 1, &["v1.0.0"]);
    std::fs::write(
        lib.join("lib.go"),
        "package lib\n\nfunc Name() string { return \"two\" }\n",
    )
    .unwrap();
    commit(&lib, 2, &["v1.1.0"]);
    std::fs::write(lib.join("extra.go"), "package lib\n\nconst Extra = 3\n").unwrap();
    commit(&lib, 3, &[]);
    let mono = base.join("work/mono");
    std::fs::create_dir_all(mono.join("tool")).unwrap();
    git(&mono, &["init", "-q", "-b", "main"]);
    std::fs::write(mono.join("README"), "a monorepo\n").unwrap();
    std::fs::write(
        mono.join("tool/go.mod"),
        "module code.example/mono/tool\n\ngo 1.19\n\nrequire code.example/lib v1.1.0\n",
    )
    .unwrap();
    std::fs::write(
        mono.join("tool/tool.go"),
        "package tool\n\nimport \"code.example/lib\"\n\nfunc Name() string { return lib.Name() }\n",
    )
    .unwrap();
    commit(&mono, 4, &["tool/v0.1.0"]);
    std::fs::create_dir_all(&repos).unwrap();
    for name in ["lib", "mono"] {
        git(
            &base.join("work").join(name),
            &[
                "clone",
                "-q",
                "--bare",
                ".",
                repos.join(format!("{name}.git")).to_str().unwrap(),
            ],
        );
    }
    repos
}

/// The code host: go-get pages for `code.example/lib`, `code.example/mono` and an hg
/// repository, git smart-HTTP for the repositories; every request path logged.
fn code_host(repos: PathBuf, log: Arc<std::sync::Mutex<Vec<String>>>) -> Handler {
    let backend = git_http_backend(repos);
    Arc::new(move |parts, body| {
        log.lock().unwrap().push(
            parts
                .uri
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_default(),
        );
        let backend = backend.clone();
        Box::pin(async move {
            if parts.uri.query().is_some_and(|q| q.contains("go-get=1")) {
                let path = parts.uri.path();
                let meta = |root: &str, vcs: &str, repo: &str| {
                    Response::new(full(format!(
                        "<!DOCTYPE html>\n<html><head><meta name=\"go-import\" content=\"code.example/{root} {vcs} {repo}\"></head><body>go get</body></html>\n"
                    )))
                };
                for (root, vcs, repo) in [
                    ("lib", "git", "https://code.example/lib.git"),
                    ("mono", "git", "https://code.example/mono.git"),
                    ("hgrepo", "hg", "https://code.example/hgrepo"),
                ] {
                    if path == format!("/{root}") || path.starts_with(&format!("/{root}/")) {
                        return meta(root, vcs, repo);
                    }
                }
                let mut r = Response::new(full("<html><body>no such page</body></html>"));
                *r.status_mut() = http::StatusCode::NOT_FOUND;
                return r;
            }
            backend(parts, body).await
        })
    })
}

const QUERIES: &[&str] = &[
    "code.example/lib@v1.0.0",
    "code.example/lib@v1.1.0",
    "code.example/lib@main",
    "code.example/lib@latest",
    "code.example/mono/tool@v0.1.0",
];

/// `go mod download -json` of `queries`: query -> (version, sum, go.mod sum).
fn download(
    v: &str,
    home: &Path,
    queries: &[&str],
    env: &[(&str, String)],
) -> (
    BTreeMap<String, (String, String, String)>,
    std::process::Output,
) {
    std::fs::create_dir_all(home).unwrap();
    let out = go_command(v, home, home)
        .args(["mod", "download", "-json"])
        .args(queries)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap();
    let mut results = BTreeMap::new();
    let stream = serde_json::Deserializer::from_slice(&out.stdout).into_iter::<serde_json::Value>();
    for (query, v) in queries.iter().zip(stream) {
        let v = v.unwrap();
        if v["Error"].is_null() {
            results.insert(
                query.to_string(),
                (
                    v["Version"].as_str().unwrap_or("").to_string(),
                    v["Sum"].as_str().unwrap_or("").to_string(),
                    v["GoModSum"].as_str().unwrap_or("").to_string(),
                ),
            );
        }
    }
    (results, out)
}

fn text(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
}

#[tokio::test(flavor = "multi_thread")]
async fn modules_no_proxy_has_come_from_their_code_host_as_the_go_command_makes_them() {
    let ca = TestCa::new();
    let base = tempfile::tempdir().unwrap();
    let repos = code_host_repos(base.path());
    let log = Arc::new(std::sync::Mutex::new(vec![]));
    let host = Upstream::tls(&ca, code_host(repos, log.clone())).await;

    // A. The go command's own direct mode, with the gateway only forwarding to the code host.
    let host_base = host.base_url();
    let plain = TestGateway::start(&ca, |c| {
        c.intercept.hosts.push("code.example".into());
        c.upstream
            .overrides
            .insert("code.example".into(), host_base.clone());
    })
    .await;
    let direct_home = base.path().join("home-direct");
    let (direct, out) = download(
        "1.19",
        &direct_home,
        QUERIES,
        &[
            ("GOPROXY", "direct".into()),
            ("GOSUMDB", "off".into()),
            ("HTTPS_PROXY", format!("http://{}", plain.proxy)),
            ("SSL_CERT_FILE", plain.ca_path.display().to_string()),
            ("GIT_SSL_CAINFO", plain.ca_path.display().to_string()),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(direct.len(), QUERIES.len(), "{direct:?}");
    assert!(
        direct["code.example/lib@main"]
            .0
            .starts_with("v1.1.1-0.20240503101112-")
    );
    assert_eq!(direct["code.example/lib@latest"].0, "v1.1.0");

    // A checksum database that knows what the go command computed (its download cache is a
    // GOPROXY tree).
    let sumdb = SumDb::start(&ca, &direct_home.join("modcache/cache/download"));

    // B. modgate with a public proxy that has none of them, then `direct`.
    // Answers 404 to everything.
    let none = Upstream::tls(&ca, scripted(Arc::new(Script::default()))).await;
    let (none_base, sumdb_base, vkey) = (none.base_url(), sumdb.base_url(), sumdb.vkey.clone());
    let gw = TestGateway::start(&ca, move |c| {
        c.modules.upstream = "https://proxy.golang.org,direct".into();
        c.upstream
            .overrides
            .insert("proxy.golang.org".into(), none_base);
        c.upstream
            .overrides
            .insert("sum.golang.org".into(), sumdb_base);
        c.upstream
            .overrides
            .insert("code.example".into(), host_base);
        c.sumdb.verify = "sum.golang.org".into();
        c.sumdb.keys = vec![vkey];
        c.egress.deny = vec!["denied.example".into()];
    })
    .await;
    log.lock().unwrap().clear();
    for v in GO_VERSIONS {
        // An agent with the default GOPROXY (proxy.golang.org, intercepted), no GOPRIVATE, no
        // git, verifying against the checksum database.
        let (through, out) = download(
            v,
            &base.path().join(format!("home-modgate-{v}")),
            QUERIES,
            &[
                ("GOPROXY", "https://proxy.golang.org".into()),
                ("GOSUMDB", gw_sumdb(&sumdb)),
                ("HTTPS_PROXY", format!("http://{}", gw.proxy)),
                ("SSL_CERT_FILE", gw.ca_path.display().to_string()),
                ("PATH", "/nonexistent".into()),
            ],
        );
        assert!(out.status.success(), "Go {v}: {}", text(&out));
        assert_eq!(
            through, direct,
            "Go {v}: modgate's direct upstream = the go command's direct mode"
        );
    }
    // modgate went to the code host itself (discovery, then git), and proved the results.
    let seen = log.lock().unwrap().clone();
    assert!(seen.iter().any(|p| p == "/lib?go-get=1"), "{seen:?}");
    assert!(seen.iter().any(|p| p == "/mono/tool?go-get=1"), "{seen:?}");
    assert!(
        seen.iter().any(|p| p == "/mono?go-get=1"),
        "the shorter root was confirmed: {seen:?}"
    );
    assert!(
        seen.iter().any(|p| p.starts_with("/lib.git/info/refs")),
        "{seen:?}"
    );
    let m = gw.metrics().await;
    assert!(
        metric(
            &m,
            "modgate_sumdb_verifications_total",
            &[("outcome", "verified")]
        ) >= 8.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "modgate_sumdb_verifications_total",
            &[("outcome", "mismatch")]
        ),
        0.0
    );

    // Refusals the go command shows: a non-git repository, a code host the egress policy
    // denies, a path with no go-import tag.
    for (query, want) in [
        ("code.example/hgrepo@v1.0.0", "git repositories only"),
        ("denied.example/x@v1.0.0", "denied by policy"),
        ("code.example/nothing@v1.0.0", "no go-import meta tag"),
    ] {
        let (_, out) = download(
            "1.23",
            &base.path().join("home-refused"),
            &[query],
            &[
                ("GOPROXY", "https://proxy.golang.org".into()),
                ("GOSUMDB", "off".into()),
                ("HTTPS_PROXY", format!("http://{}", gw.proxy)),
                ("SSL_CERT_FILE", gw.ca_path.display().to_string()),
            ],
        );
        assert!(!out.status.success(), "{query}");
        assert!(text(&out).contains(want), "{query}: {}", text(&out));
    }
}

/// The GOSUMDB value naming the fixture database.
fn gw_sumdb(sumdb: &SumDb) -> String {
    sumdb.vkey.clone()
}
