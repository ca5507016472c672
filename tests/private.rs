//! Private modules from an internal git host (git http-backend over TLS, requiring credentials):
//! the go command's own direct fetch, proxy mode (no GOPRIVATE) and direct mode through modgate
//! (GOPRIVATE, no credentials) must produce identical versions and go.sum hashes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use base64::Engine;
use http::{Response, StatusCode};
use modgate::body::full;
use modgate::config::PrivateRouteConfig;

use crate::util::*;

pub const USER: &str = "modgate";
pub const PASSWORD: &str = "s3cret-Token";

/// Working tree -> commit with fixed dates -> tags.
struct Work {
    dir: PathBuf,
    n: u32,
}

impl Work {
    fn new(base: &Path, name: &str) -> Work {
        let dir = base.join("work").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        git(&dir, &["init", "-q", "-b", "main"]);
        Work { dir, n: 0 }
    }

    fn write(&mut self, path: &str, content: &str) -> &mut Self {
        let p = self.dir.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
        self
    }

    fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        std::os::unix::fs::symlink(target, self.dir.join(path)).unwrap();
        self
    }

    fn commit(&mut self, tags: &[&str]) -> &mut Self {
        self.n += 1;
        git(&self.dir, &["add", "-A"]);
        let date = format!("2024-03-0{} 10:11:12 +0000", self.n);
        let out = Command::new(tool("git"))
            .args(["commit", "-q", "-m", &format!("commit {}", self.n)])
            .current_dir(&self.dir)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("HOME", &self.dir)
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
            git(&self.dir, &["tag", t]);
        }
        self
    }

    fn publish(&self, repos: &Path, name: &str) {
        let dest = repos.join(name);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        git(
            &self.dir,
            &["clone", "-q", "--bare", ".", dest.to_str().unwrap()],
        );
    }
}

/// The internal repositories.
pub fn build_repos(base: &Path) -> PathBuf {
    let repos = base.join("repos");
    std::fs::create_dir_all(&repos).unwrap();

    let mut alpha = Work::new(base, "alpha");
    alpha
        .write("go.mod", "module git.corp.example/team/alpha\n\ngo 1.19\n")
        .write("alpha.go", "package alpha\n\nconst V = 1\n")
        .write("LICENSE", "alpha license\n")
        .write("vendor/modules.txt", "# vendored\n")
        .write("vendor/example.com/dep/dep.go", "package dep\n")
        .write("pkg/vendor/x.go", "package vendor\n")
        .write("pkg/vendor/deep/y.go", "package deep\n")
        .write("tools/go.mod", "module git.corp.example/team/alpha/tools\n")
        .write("tools/main.go", "package main\n")
        .write(".hg_archival.txt", "repo: x\n")
        .write("docs/.hg_archival.txt", "kept\n")
        .write("crlf.txt", "line one\r\nline two\r\n")
        .symlink("link.go", "alpha.go");
    alpha.commit(&["v1.0.0"]);
    alpha
        .write("alpha.go", "package alpha\n\nconst V = 2\n")
        .commit(&["v1.1.0"]);
    git(&alpha.dir, &["branch", "feature"]);
    alpha
        .write("alpha.go", "package alpha\n\nconst V = 3\n")
        .commit(&[]);
    // A tag and a branch of one name on different commits: the go command takes the tag.
    git(&alpha.dir, &["tag", "stable", "v1.0.0"]);
    git(&alpha.dir, &["branch", "stable"]);
    alpha.publish(&repos, "team/alpha");

    let mut multi = Work::new(base, "multi");
    multi
        .write("LICENSE", "root license of multi\n")
        .write(
            "sub/lib/go.mod",
            "module git.corp.example/team/multi/sub/lib\n\ngo 1.19\n",
        )
        .write("sub/lib/lib.go", "package lib\n")
        .write(
            "sub/lib/v2/go.mod",
            "module git.corp.example/team/multi/sub/lib/v2\n\ngo 1.19\n",
        )
        .write("sub/lib/v2/lib.go", "package lib\n\nconst Major = 2\n")
        .commit(&["sub/lib/v1.2.0", "sub/lib/v2.0.0"]);
    multi.publish(&repos, "team/multi");

    let mut major = Work::new(base, "major");
    major
        .write("go.mod", "module git.corp.example/team/major\n\ngo 1.19\n")
        .write("m.go", "package major\n")
        .commit(&["v1.0.0"]);
    major
        .write(
            "go.mod",
            "module git.corp.example/team/major/v2\n\ngo 1.19\n",
        )
        .commit(&["v2.0.0"]);
    major.publish(&repos, "team/major");

    let mut legacy = Work::new(base, "legacy");
    legacy
        .write("legacy.go", "package legacy\n")
        .commit(&["v1.0.0"]);
    legacy
        .write("legacy.go", "package legacy\n\n// v2\n")
        .commit(&["v2.0.0"]);
    legacy.publish(&repos, "team/legacy");

    // A vanity path served from another repository.
    let mut vanity = Work::new(base, "vanity");
    vanity
        .write("go.mod", "module corp.example/lib\n\ngo 1.19\n")
        .write("lib.go", "package lib\n")
        .commit(&["v1.0.0"]);
    vanity.publish(&repos, "team/vanity");

    let mut upper = Work::new(base, "upper");
    upper
        .write("go.mod", "module git.corp.example/Team/Upper\n\ngo 1.19\n")
        .write("Upper.go", "package Upper\n")
        .commit(&["v0.1.0"]);
    upper.publish(&repos, "Team/Upper");

    // v1.1.0 is retracted by v1.2.0's go.mod: a branch cut after it takes v1.0.0 as the base
    // of its pseudo-version.
    let mut retracted = Work::new(base, "retracted");
    let gomod = "module git.corp.example/team/retracted\n\ngo 1.19\n";
    retracted
        .write("go.mod", gomod)
        .write("r.go", "package r\n")
        .commit(&["v1.0.0"]);
    retracted
        .write("r.go", "package r\n\n// 1.1\n")
        .commit(&["v1.1.0"]);
    retracted
        .write("r.go", "package r\n\n// next\n")
        .commit(&[]);
    git(&retracted.dir, &["branch", "feature"]);
    retracted
        .write("go.mod", &format!("{gomod}\nretract v1.1.0 // broken\n"))
        .commit(&["v1.2.0"]);
    retracted.publish(&repos, "team/retracted");
    repos
}

/// git http-backend behind Basic auth, plus go-get answers for `host/group/repo` roots.
pub fn internal_git_host(
    repos: PathBuf,
    log: Arc<std::sync::Mutex<Vec<(String, bool)>>>,
) -> Handler {
    let backend = git_http_backend(repos);
    let want = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
    );
    Arc::new(move |parts, body| {
        let authorized = parts
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            == Some(want.as_str());
        log.lock().unwrap().push((
            parts
                .uri
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_default(),
            authorized,
        ));
        let backend = backend.clone();
        Box::pin(async move {
            if parts.uri.query().is_some_and(|q| q.contains("go-get=1")) {
                if parts.uri.path() == "/lib" || parts.uri.path().starts_with("/lib/") {
                    return Response::new(full(
                        "<html><head><meta name=\"go-import\" content=\"corp.example/lib git https://git.corp.example/team/vanity\"></head></html>",
                    ));
                }
                let elems: Vec<&str> = parts
                    .uri
                    .path()
                    .trim_start_matches('/')
                    .split('/')
                    .collect();
                let root = format!(
                    "git.corp.example/{}/{}",
                    elems[0],
                    elems.get(1).unwrap_or(&"")
                );
                return Response::new(full(format!(
                    "<html><head><meta name=\"go-import\" content=\"{root} git https://{root}\"></head></html>"
                )));
            }
            if !authorized {
                let mut r = Response::new(full("authentication required"));
                *r.status_mut() = StatusCode::UNAUTHORIZED;
                r.headers_mut()
                    .insert("www-authenticate", "Basic realm=\"git\"".parse().unwrap());
                return r;
            }
            backend(parts, body).await
        })
    })
}

/// A route whose password comes from a file in `dir`, the test's own temporary directory (tests
/// never touch the process environment).
pub fn route(dir: &std::path::Path, password: &str) -> PrivateRouteConfig {
    let file = dir.join(format!("password-{}", rand_suffix()));
    std::fs::write(&file, format!("{password}\n")).unwrap();
    PrivateRouteConfig {
        module: "git.corp.example/{group}/{repo}".into(),
        git: "https://git.internal/{group}/{repo}".into(),
        username: USER.into(),
        password_env: None,
        password_file: Some(file),
        token_env: None,
        token_file: None,
        extra_ca_file: None,
    }
}

fn rand_suffix() -> String {
    format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

const MODULES: &[&str] = &[
    "git.corp.example/team/alpha@v1.0.0",
    "git.corp.example/team/alpha@v1.1.0",
    "git.corp.example/team/alpha@main",
    "git.corp.example/team/alpha@feature",
    "git.corp.example/team/alpha@stable",
    "git.corp.example/team/retracted@feature",
    "git.corp.example/team/multi/sub/lib@v1.2.0",
    "git.corp.example/team/multi/sub/lib/v2@v2.0.0",
    "git.corp.example/team/major/v2@v2.0.0",
    "git.corp.example/team/major@v1.0.0",
    "git.corp.example/team/legacy@v2.0.0+incompatible",
    // Without the suffix: the go command asks for v2.0.0.info and takes the +incompatible
    // version back.
    "git.corp.example/team/legacy@v2.0.0",
    "git.corp.example/team/legacy@v1.0.0",
    "git.corp.example/Team/Upper@v0.1.0",
    "corp.example/lib@v1.0.0",
];

/// Runs Go `v`'s `go mod download -json` for every module and returns query -> (version, sum,
/// gomodsum).
fn download(
    v: &str,
    home: &Path,
    queries: &[String],
    env: &[(&str, String)],
) -> BTreeMap<String, (String, String, String)> {
    let mut cmd = Command::new(go_tool(v));
    cmd.args(["mod", "download", "-json"])
        .args(queries)
        .current_dir(home)
        .env_clear()
        .env("GOTOOLCHAIN", "local")
        .env("GOTELEMETRY", "off")
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("GOPATH", home.join("gopath"))
        .env("GOMODCACHE", home.join("modcache"))
        .env("GOCACHE", home.join("gocache"))
        .env("GOFLAGS", "-modcacherw")
        .env("GIT_CONFIG_NOSYSTEM", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    std::fs::create_dir_all(home).unwrap();
    let out = tokio::task::block_in_place(|| cmd.output().unwrap());
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "go mod download in {} failed:\n{text}\n{}",
        home.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let stream = serde_json::Deserializer::from_str(&text).into_iter::<serde_json::Value>();
    let mut results = BTreeMap::new();
    for (query, v) in queries.iter().zip(stream) {
        let v = v.unwrap();
        assert!(v["Error"].is_null(), "{query}: {v}");
        results.insert(
            query.to_string(),
            (
                v["Version"].as_str().unwrap().to_string(),
                v["Sum"].as_str().unwrap().to_string(),
                v["GoModSum"].as_str().unwrap().to_string(),
            ),
        );
    }
    results
}

#[tokio::test(flavor = "multi_thread")]
async fn go_sum_through_modgate_equals_direct_git_in_proxy_and_direct_mode() {
    let ca = TestCa::new();
    let base = tempfile::tempdir().unwrap();
    let repos = build_repos(base.path());
    // A commit-hash prefix query for alpha's first commit (tagged v1.0.0).
    let first = git(&repos.join("team/alpha"), &["rev-parse", "v1.0.0^{commit}"]);
    let mut queries: Vec<String> = MODULES.iter().map(|s| s.to_string()).collect();
    queries.push(format!(
        "git.corp.example/team/alpha@{}",
        &first.trim()[..10]
    ));
    let git_log = Arc::new(std::sync::Mutex::new(vec![]));
    let git_host = Upstream::tls(&ca, internal_git_host(repos, git_log.clone())).await;
    let public = Arc::new(Script::default());
    let public_up = Upstream::tls(&ca, scripted(public.clone())).await;
    let auth_header = format!(
        "Authorization: Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
    );

    // A. The go command fetching directly from git, with credentials. The gateway here only
    // terminates TLS and forwards bytes (no private configuration).
    let git_base = git_host.base_url();
    let plain = TestGateway::start(&ca, |c| {
        c.intercept.hosts.push("git.corp.example".into());
        c.intercept.hosts.push("corp.example".into());
        c.upstream
            .overrides
            .insert("git.corp.example".into(), git_base.clone());
        c.upstream
            .overrides
            .insert("corp.example".into(), git_base.clone());
    })
    .await;
    let direct = download(
        "1.19",
        &base.path().join("home-direct"),
        &queries,
        &[
            ("GOPRIVATE", "git.corp.example,corp.example".into()),
            ("HTTPS_PROXY", format!("http://{}", plain.proxy)),
            ("SSL_CERT_FILE", plain.ca_path.display().to_string()),
            ("GIT_SSL_CAINFO", plain.ca_path.display().to_string()),
            ("GIT_CONFIG_COUNT", "1".into()),
            ("GIT_CONFIG_KEY_0", "http.extraHeader".into()),
            ("GIT_CONFIG_VALUE_0", auth_header.clone()),
        ],
    );

    // modgate with a private route holding the credentials.
    let (gb, pb) = (git_host.base_url(), public_up.base_url());
    let pw_dir = base.path().to_path_buf();
    let gw = TestGateway::start(&ca, move |c| {
        let mut vanity = route(&pw_dir, PASSWORD);
        vanity.module = "corp.example/lib".into();
        vanity.git = "https://git.internal/team/vanity".into();
        c.private.routes = vec![vanity, route(&pw_dir, PASSWORD)];
        c.upstream.overrides.insert("git.internal".into(), gb);
        c.upstream.overrides.insert("proxy.golang.org".into(), pb);
    })
    .await;

    for v in GO_VERSIONS {
        // B. Proxy mode: no GOPRIVATE, no credentials; only GONOSUMDB for the private paths.
        git_log.lock().unwrap().clear();
        let proxy_mode = download(
            v,
            &base.path().join(format!("home-proxy-{v}")),
            &queries,
            &[
                ("GONOSUMDB", "git.corp.example,corp.example".into()),
                ("HTTPS_PROXY", format!("http://{}", gw.proxy)),
                ("SSL_CERT_FILE", gw.ca_path.display().to_string()),
            ],
        );
        assert_eq!(
            proxy_mode, direct,
            "Go {v}: proxy mode must produce the go command's own versions and hashes"
        );

        // C. Direct mode through modgate: GOPRIVATE set, git runs through the gateway, no
        // credentials.
        let direct_mode = download(
            v,
            &base.path().join(format!("home-direct-mode-{v}")),
            &queries,
            &[
                ("GOPRIVATE", "git.corp.example,corp.example".into()),
                ("HTTPS_PROXY", format!("http://{}", gw.proxy)),
                ("SSL_CERT_FILE", gw.ca_path.display().to_string()),
                ("GIT_SSL_CAINFO", gw.ca_path.display().to_string()),
            ],
        );
        assert_eq!(
            direct_mode, direct,
            "Go {v}: direct mode through modgate must match too"
        );
    }

    // The expected shapes, as a sanity check of the fixture.
    assert_eq!(direct["git.corp.example/team/alpha@feature"].0, "v1.1.0");
    assert_eq!(direct["git.corp.example/team/alpha@stable"].0, "v1.0.0");
    assert!(
        direct["git.corp.example/team/retracted@feature"]
            .0
            .starts_with("v1.0.1-0."),
        "{direct:?}"
    );
    assert_eq!(direct[&queries[queries.len() - 1]].0, "v1.0.0");
    assert!(
        direct["git.corp.example/team/alpha@main"]
            .0
            .starts_with("v1.1.1-0.20240303101112-"),
        "{direct:?}"
    );
    assert_eq!(
        direct["git.corp.example/team/legacy@v2.0.0+incompatible"].0,
        "v2.0.0+incompatible"
    );
    assert_eq!(
        direct["git.corp.example/team/legacy@v2.0.0"].0,
        "v2.0.0+incompatible"
    );

    // Every request modgate made to the internal host carried its credentials; the public
    // proxy never saw a private path.
    let seen = git_log.lock().unwrap().clone();
    assert!(!seen.is_empty());
    assert!(
        seen.iter()
            .all(|(p, authorized)| *authorized || p.contains("go-get=1")),
        "{seen:?}"
    );
    assert!(
        public_up
            .paths()
            .iter()
            .all(|p| !p.contains("corp.example")),
        "{:?}",
        public_up.paths()
    );
    let m = gw.metrics().await;
    assert!(
        metric(
            &m,
            "modgate_request_duration_seconds_count",
            &[("route", "private")]
        ) >= 10.0
    );
    assert!(
        metric(
            &m,
            "modgate_request_duration_seconds_count",
            &[("route", "git_forward")]
        ) >= 2.0
    );
    assert!(
        metric(
            &m,
            "modgate_request_duration_seconds_count",
            &[("route", "goget_answer")]
        ) >= 1.0
    );
    assert!(
        metric(
            &m,
            "modgate_mirror_fetch_duration_seconds_count",
            &[("outcome", "ok")]
        ) >= 1.0
    );
    assert!(
        metric(
            &m,
            "modgate_zip_build_duration_seconds_count",
            &[("outcome", "ok")]
        ) >= 5.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_repositories_and_bad_credentials_are_explained_without_secrets() {
    let ca = TestCa::new();
    let base = tempfile::tempdir().unwrap();
    let repos = build_repos(base.path());
    let git_host = Upstream::tls(&ca, internal_git_host(repos, Arc::default())).await;
    let gb = git_host.base_url();
    let good = TestGateway::start(&ca, |c| {
        c.private.routes = vec![route(base.path(), PASSWORD)];
        c.upstream
            .overrides
            .insert("git.internal".into(), gb.clone());
    })
    .await;
    let (status, _, body) = good
        .get(
            "proxy.golang.org:443",
            "/git.corp.example/team/nope/@v/list",
            Alpn::H1,
        )
        .await;
    let body = String::from_utf8_lossy(&body).to_string();
    assert_eq!(status, 404, "{body}");
    assert!(body.starts_with("not found: "), "{body}");
    let (status, _, body) = good
        .get(
            "proxy.golang.org:443",
            "/git.corp.example/team/alpha/@v/v9.9.9.info",
            Alpn::H1,
        )
        .await;
    assert_eq!(status, 404, "{}", String::from_utf8_lossy(&body));
    // A commit is named by at least 7 hex digits (the go command's minHashDigits); 6 are an
    // unknown revision, 7 resolve.
    let v1 = git(
        &base.path().join("repos/team/alpha"),
        &["rev-parse", "v1.0.0^{commit}"],
    );
    for (digits, want) in [(6, 404), (7, 200)] {
        let path = format!(
            "/git.corp.example/team/alpha/@v/{}.info",
            &v1.trim()[..digits]
        );
        let (status, _, body) = good.get("proxy.golang.org:443", &path, Alpn::H1).await;
        assert_eq!(status, want, "{path}: {}", String::from_utf8_lossy(&body));
    }
    let (status, _, body) = good
        .get(
            "proxy.golang.org:443",
            "/git.corp.example/team/alpha/@v/list",
            Alpn::H2,
        )
        .await;
    assert_eq!(
        (status.as_u16(), String::from_utf8_lossy(&body).as_ref()),
        (200, "v1.0.0\nv1.1.0\n")
    );

    let wrong = "not-the-password";
    let bad = TestGateway::start(&ca, |c| {
        c.private.routes = vec![route(base.path(), wrong)];
        c.upstream
            .overrides
            .insert("git.internal".into(), gb.clone());
    })
    .await;
    for path in [
        "/git.corp.example/team/alpha/@v/list",
        "/git.corp.example/team/alpha/@v/v1.0.0.zip",
    ] {
        let (status, _, body) = bad.get("proxy.golang.org:443", path, Alpn::H1).await;
        let body = String::from_utf8_lossy(&body).to_string();
        assert_eq!(status, 502, "{body}");
        assert!(
            body.contains("credentials") || body.contains("rejected"),
            "{body}"
        );
        assert!(!body.contains(wrong), "the credential leaked: {body}");
    }
    // Direct mode: git requests fail with 502 and the reason, no secret.
    let (status, _, body) = bad
        .get(
            "git.corp.example:443",
            "/team/alpha/info/refs?service=git-upload-pack",
            Alpn::H1,
        )
        .await;
    let body = String::from_utf8_lossy(&body).to_string();
    assert_eq!(status, 502, "{body}");
    assert!(
        !body.contains(wrong)
            && !body.contains(
                &base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{wrong}"))
            )
    );
}

/// Runs git in `dir` as an agent would: through the gateway, trusting its CA, no credentials.
fn git_through(gw: &TestGateway, dir: &Path, args: &[&str]) -> std::process::Output {
    tokio::task::block_in_place(|| {
        Command::new(tool("git"))
            .args(args)
            .current_dir(dir)
            .env("HOME", dir)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("HTTPS_PROXY", format!("http://{}", gw.proxy))
            .env("https_proxy", format!("http://{}", gw.proxy))
            .env("GIT_SSL_CAINFO", &gw.ca_path)
            .output()
            .unwrap()
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fetch_of_many_refs_works_for_git_asking_for_http2() {
    // 25,000 branches on distinct commits: a clone's request is ~1.3 MB of want lines, which
    // git streams (past http.postBuffer) as one small HTTP/2 DATA frame per line when it gets
    // HTTP/2 — and the h2 crate closes such a connection. A git host is offered HTTP/1.1 only.
    let ca = TestCa::new();
    let base = tempfile::tempdir().unwrap();
    let repos = build_repos(base.path());
    let many = repos.join("team/many");
    git(
        base.path(),
        &["init", "-q", "--bare", many.to_str().unwrap()],
    );
    let mut stream = String::new();
    for i in 1..=25_000 {
        stream.push_str(&format!(
            "commit refs/heads/b{i:05}\nmark :{i}\ncommitter T <t@example.com> {} +0000\ndata 0\n{}\n",
            1_700_000_000 + i,
            if i > 1 { format!("from :{}\n", i - 1) } else { String::new() }
        ));
    }
    let mut child = Command::new(tool("git"))
        .args(["fast-import", "--quiet"])
        .current_dir(&many)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", base.path())
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stream.as_bytes())
            .unwrap();
    }
    assert!(child.wait().unwrap().success(), "git fast-import");
    let git_host = Upstream::tls(&ca, internal_git_host(repos, Arc::default())).await;
    let gb = git_host.base_url();
    let gw = TestGateway::start(&ca, |c| {
        c.private.routes = vec![route(base.path(), PASSWORD)];
        c.upstream.overrides.insert("git.internal".into(), gb);
    })
    .await;
    // The git host is offered HTTP/1.1 only: a client speaking nothing but h2 is refused.
    let (stream, _) = connect(gw.proxy, "git.corp.example:443", "").await;
    assert!(
        tls_connect(stream, "git.corp.example", gw.roots(), Alpn::H2)
            .await
            .is_err(),
        "HTTP/2 offered to a git host"
    );
    let dest = base.path().join("clone");
    let out = git_through(
        &gw,
        base.path(),
        &[
            "-c",
            "protocol.version=2",
            "-c",
            "http.version=HTTP/2",
            "clone",
            "-q",
            "--bare",
            "https://git.corp.example/team/many",
            dest.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "git clone: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let branches = git(&dest, &["for-each-ref", "--count=30000", "refs/heads"]);
    assert_eq!(branches.lines().count(), 25_000);
    // The fetch request was that large: streamed (chunked), not sent with a length.
    let seen = git_host.seen.lock().unwrap().clone();
    assert!(
        seen.iter()
            .any(|s| s.method == "POST" && !s.headers.contains_key("content-length")),
        "no streamed fetch request reached the git host: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn git_protocol_v0_and_v2_are_forwarded_with_injected_credentials() {
    let ca = TestCa::new();
    let base = tempfile::tempdir().unwrap();
    let repos = build_repos(base.path());
    let log = Arc::new(std::sync::Mutex::new(vec![]));
    let git_host = Upstream::tls(&ca, internal_git_host(repos.clone(), log.clone())).await;
    let gb = git_host.base_url();
    let gw = TestGateway::start(&ca, |c| {
        c.private.routes = vec![route(base.path(), PASSWORD)];
        c.upstream.overrides.insert("git.internal".into(), gb);
    })
    .await;
    let want = git(
        &repos.join("team/alpha"),
        &["rev-parse", "refs/tags/v1.1.0^{commit}"],
    );
    for version in ["0", "2"] {
        let out = git_through(
            &gw,
            base.path(),
            &[
                "-c",
                &format!("protocol.version={version}"),
                "ls-remote",
                "https://git.corp.example/team/alpha",
                "refs/tags/v1.1.0",
            ],
        );
        assert!(
            out.status.success(),
            "protocol v{version}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).starts_with(want.trim()),
            "v{version}"
        );
    }
    // The agent sent no credentials; every request that reached the git host carried modgate's.
    let seen = log.lock().unwrap().clone();
    assert!(seen.len() >= 3, "{seen:?}");
    assert!(seen.iter().all(|(_, authorized)| *authorized), "{seen:?}");
    // Protocol v2 reached the git host as v2 (the Git-Protocol header was forwarded).
    let v2 = git_host
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|s| {
            s.headers
                .get("git-protocol")
                .is_some_and(|v| v == "version=2")
        })
        .count();
    assert!(v2 >= 1, "no request carried Git-Protocol: version=2");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_force_pushed_private_tag_is_refused_until_repinned() {
    let ca = TestCa::new();
    let base = tempfile::tempdir().unwrap();
    let repos = build_repos(base.path());
    let git_host = Upstream::tls(&ca, internal_git_host(repos.clone(), Arc::default())).await;
    let gb = git_host.base_url();
    let data = tempfile::tempdir().unwrap();
    let route = route(base.path(), PASSWORD);
    let start = || {
        let (gb, data, route) = (gb.clone(), data.path().to_path_buf(), route.clone());
        TestGateway::start(&ca, move |c| {
            c.private.routes = vec![route];
            c.upstream.overrides.insert("git.internal".into(), gb);
            c.storage.data_dir = data;
            c.private.mirror_ttl = std::time::Duration::from_millis(1);
        })
    };
    const ZIP: &str = "/git.corp.example/team/alpha/@v/v1.0.0.zip";
    const MOD: &str = "/git.corp.example/team/alpha/@v/v1.0.0.mod";
    async fn get(gw: &TestGateway, path: &str) -> (u16, bytes::Bytes) {
        let (status, _, body) = gw.get("proxy.golang.org:443", path, Alpn::H1).await;
        (status.as_u16(), body)
    }

    // 1. First served: pinned.
    let gw = start().await;
    let (status, first_zip) = get(&gw, ZIP).await;
    assert_eq!(status, 200);
    assert_eq!(get(&gw, MOD).await.0, 200);
    drop(gw);

    // 2. The tag is moved to another commit, the cache is lost and the gateway restarts.
    let bare = repos.join("team/alpha");
    let v11 = git(&bare, &["rev-parse", "v1.1.0^{commit}"]);
    git(&bare, &["tag", "-f", "v1.0.0", v11.trim()]);
    std::fs::remove_dir_all(data.path().join("cache")).unwrap();
    let gw = start().await;
    let (status, body) = get(&gw, ZIP).await;
    let text = String::from_utf8_lossy(&body);
    assert_eq!(status, 502, "{text}");
    assert!(
        text.contains("git.corp.example/team/alpha@v1.0.0 changed since modgate first served it")
            && text.contains("now gives h1:")
            && text.contains(v11.trim())
            && text.contains("modgate integrity repin git.corp.example/team/alpha@v1.0.0"),
        "{text}"
    );
    // The go.mod did not change, so it still matches its pin.
    assert_eq!(get(&gw, MOD).await.0, 200);
    let m = gw.metrics().await;
    assert!(
        metric(&m, "modgate_integrity_pins_total", &[("event", "changed")]) >= 1.0,
        "{m}"
    );
    assert!(
        metric(&m, "modgate_integrity_pins_total", &[("event", "matched")]) >= 1.0,
        "{m}"
    );

    // 3. An operator accepts the new content deliberately.
    let cfg = base.path().join("ops.toml");
    std::fs::write(
        &cfg,
        format!("[storage]\ndata_dir = \"{}\"\n", data.path().display()),
    )
    .unwrap();
    let out = modgate_command()
        .args(["integrity", "repin", "git.corp.example/team/alpha@v1.0.0"])
        .args(["--reason", "v1.0.0 re-tagged on purpose", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, new_zip) = get(&gw, ZIP).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&new_zip));
    assert_ne!(first_zip, new_zip);
    let out = modgate_command()
        .args([
            "integrity",
            "show",
            "git.corp.example/team/alpha@v1.0.0",
            "--config",
        ])
        .arg(&cfg)
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("zip: h1:") && shown.contains(v11.trim()),
        "{shown}"
    );
    let log = std::fs::read_to_string(data.path().join("integrity/pins.log")).unwrap();
    assert!(log.contains("v1.0.0 re-tagged on purpose"), "{log}");
    let out = modgate_command()
        .args(["explain", "git.corp.example/team/alpha@v1.0.0", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let explained = String::from_utf8_lossy(&out.stdout);
    assert!(
        explained.contains("proof zip    pinned h1:") && explained.contains(v11.trim()),
        "{explained}"
    );
}
