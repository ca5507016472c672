//! Real clients through a real gateway: the go command (Debian golang-1.19-go), curl and git.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use crate::util::*;

/// A GOPROXY tree holding example.com/hello v1.0.0.
fn goproxy_files() -> HashMap<String, Vec<u8>> {
    let m = "example.com/hello";
    let v = "v1.0.0";
    let gomod = "module example.com/hello\n\ngo 1.19\n";
    let code = "package hello\n\nfunc Greeting() string { return \"hello through modgate\" }\n";
    let mut files = HashMap::new();
    files.insert(format!("/{m}/@v/list"), b"v1.0.0\n".to_vec());
    files.insert(
        format!("/{m}/@v/{v}.info"),
        br#"{"Version":"v1.0.0","Time":"2024-01-02T03:04:05Z"}"#.to_vec(),
    );
    files.insert(format!("/{m}/@v/{v}.mod"), gomod.as_bytes().to_vec());
    files.insert(
        format!("/{m}/@v/{v}.zip"),
        module_zip(m, v, &[("go.mod", gomod), ("hello.go", code)]),
    );
    files
}

/// Like [`files`], but zips answer with a 302 to `/storage/…`, as proxy.golang.org sends zip
/// downloads to its storage host.
fn files_with_zip_redirects(map: HashMap<String, Vec<u8>>) -> Handler {
    let inner = files(map);
    std::sync::Arc::new(move |mut parts, body| {
        let path = parts.uri.path().to_string();
        if path.ends_with(".zip") && !path.starts_with("/storage/") {
            return Box::pin(async move {
                let mut r = http::Response::new(modgate::body::full("see storage"));
                *r.status_mut() = http::StatusCode::FOUND;
                r.headers_mut().insert(
                    http::header::LOCATION,
                    format!("/storage{path}").parse().unwrap(),
                );
                r
            });
        }
        if let Some(rest) = path.strip_prefix("/storage") {
            parts.uri = rest.parse().unwrap();
        }
        inner(parts, body)
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn go_command_builds_through_the_gateway() {
    for v in GO_VERSIONS {
        go_builds_through_the_gateway_with(v).await;
    }
}

async fn go_builds_through_the_gateway_with(v: &str) {
    let ca = TestCa::new();
    let up = Upstream::tls(&ca, files_with_zip_redirects(goproxy_files())).await;
    let base = up.base_url();
    let gw = TestGateway::start(&ca, move |c| {
        c.upstream.overrides.insert("proxy.golang.org".into(), base);
    })
    .await;
    let work = tempfile::tempdir().unwrap();
    let app = work.path().join("app");
    std::fs::create_dir(&app).unwrap();
    std::fs::write(
        app.join("go.mod"),
        "module example.com/app\n\ngo 1.19\n\nrequire example.com/hello v1.0.0\n",
    )
    .unwrap();
    std::fs::write(
        app.join("main.go"),
        "package main\n\nimport (\n\t\"fmt\"\n\n\t\"example.com/hello\"\n)\n\nfunc main() { fmt.Println(hello.Greeting()) }\n",
    )
    .unwrap();

    // go mod download, then build and run the program.
    let home = work.path().to_path_buf();
    let gw_ref = &gw;
    // GOSUMDB off: this test is about the gateway, not the checksum database.
    let env = [("GOPROXY", "https://proxy.golang.org")];
    let out = go_env_extra(
        v,
        &["mod", "download", "example.com/hello"],
        &app,
        &home,
        gw_ref,
        "off",
        &env,
    );
    assert!(
        out.status.success(),
        "go mod download: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = go_env_extra(v, &["run", "."], &app, &home, gw_ref, "off", &env);
    assert!(
        out.status.success(),
        "go run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "hello through modgate"
    );
    assert!(
        home.join("modcache/cache/download/example.com/hello/@v/v1.0.0.zip")
            .is_file()
    );
    let paths = up.paths();
    assert!(
        paths.contains(&"/example.com/hello/@v/v1.0.0.mod".to_string()),
        "{paths:?}"
    );
    assert!(
        paths.contains(&"/example.com/hello/@v/v1.0.0.zip".to_string())
            && paths.contains(&"/storage/example.com/hello/@v/v1.0.0.zip".to_string()),
        "the zip came by way of its redirect: {paths:?}"
    );
    let m = gw.metrics().await;
    assert!(
        metric(
            &m,
            "modgate_request_duration_seconds_count",
            &[("status", "2xx")]
        ) >= 2.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn curl_through_the_gateway_h1_and_h2() {
    let curl = tool("curl");
    let ca = TestCa::new();
    let up = Upstream::tls(&ca, files(goproxy_files())).await;
    let base = up.base_url();
    let gw = TestGateway::start(&ca, move |c| {
        c.upstream.overrides.insert("proxy.golang.org".into(), base);
    })
    .await;
    for flag in ["--http1.1", "--http2"] {
        let out = tokio::task::block_in_place(|| {
            Command::new(&curl)
                .args(["-sS", "--fail", flag, "-w", "\n%{http_version}"])
                .arg("--proxy")
                .arg(format!("http://{}", gw.proxy))
                .arg("--cacert")
                .arg(&gw.ca_path)
                .arg("https://proxy.golang.org/example.com/hello/@v/list")
                .env_clear()
                .output()
                .unwrap()
        });
        assert!(
            out.status.success(),
            "curl {flag}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let want_version = if flag == "--http2" { "2" } else { "1.1" };
        assert_eq!(text, format!("v1.0.0\n\n{want_version}"), "curl {flag}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn git_clone_through_an_intercepted_host() {
    let ca = TestCa::new();
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("repos");
    let src = work.path().join("src");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(&src).unwrap();
    git(&src, &["init", "-q", "-b", "main"]);
    std::fs::write(src.join("README"), "cloned through modgate\n").unwrap();
    git(&src, &["add", "README"]);
    git(&src, &["commit", "-q", "-m", "first"]);
    git(
        work.path(),
        &["clone", "-q", "--bare", "src", "repos/repo.git"],
    );

    let up = Upstream::tls(&ca, git_http_backend(root)).await;
    let base = up.base_url();
    let gw = TestGateway::start(&ca, move |c| {
        c.intercept.hosts.push("git.corp.test".into());
        c.upstream.overrides.insert("git.corp.test".into(), base);
    })
    .await;
    let out = tokio::task::block_in_place(|| {
        Command::new(tool("git"))
            .args(["clone", "-q", "https://git.corp.test/repo.git", "clone"])
            .current_dir(work.path())
            .env("HOME", work.path())
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("HTTPS_PROXY", format!("http://{}", gw.proxy))
            .env("https_proxy", format!("http://{}", gw.proxy))
            .env("GIT_SSL_CAINFO", &gw.ca_path)
            .env("GIT_TERMINAL_PROMPT", "0")
            .output()
            .unwrap()
    });
    assert!(
        out.status.success(),
        "git clone: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(work.path().join("clone/README")).unwrap(),
        "cloned through modgate\n"
    );
    let paths = up.paths();
    assert!(
        paths
            .iter()
            .any(|p| p == "/repo.git/info/refs?service=git-upload-pack"),
        "{paths:?}"
    );
    assert!(
        paths.iter().any(|p| p == "/repo.git/git-upload-pack"),
        "{paths:?}"
    );
}

/// A GOPROXY tree with a small dependency graph, including an upper-case path.
pub fn module_tree(root: &Path) {
    write_module(
        root,
        "example.com/greet",
        "v1.0.0",
        "module example.com/greet\n\ngo 1.19\n",
        &[(
            "greet.go",
            "package greet\n\nfunc Word() string { return \"hello\" }\n",
        )],
    );
    write_module(
        root,
        "example.com/greet",
        "v1.1.0",
        "module example.com/greet\n\ngo 1.19\n",
        &[(
            "greet.go",
            "package greet\n\nfunc Word() string { return \"hello, verified\" }\n",
        )],
    );
    write_module(
        root,
        "example.com/hello",
        "v1.0.0",
        "module example.com/hello\n\ngo 1.19\n\nrequire example.com/greet v1.1.0\n",
        &[(
            "hello.go",
            "package hello\n\nimport \"example.com/greet\"\n\nfunc Greeting() string { return greet.Word() + \" world\" }\n",
        )],
    );
    write_module(
        root,
        "github.com/Upper/Case",
        "v0.1.0",
        "module github.com/Upper/Case\n\ngo 1.19\n",
        &[("case.go", "package Case\n\nconst Suffix = \"!\"\n")],
    );
}

pub fn write_app(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("go.mod"),
        "module example.com/app\n\ngo 1.19\n\nrequire (\n\texample.com/hello v1.0.0\n\tgithub.com/Upper/Case v0.1.0\n)\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("main.go"),
        "package main\n\nimport (\n\t\"fmt\"\n\n\tcase_ \"github.com/Upper/Case\"\n\t\"example.com/hello\"\n)\n\nfunc main() { fmt.Println(hello.Greeting() + case_.Suffix) }\n",
    )
    .unwrap();
}

/// The go command with the default GOPROXY, a GOSUMDB key for the local database, and only
/// HTTPS_PROXY and the gateway CA pointing at modgate.
fn go(
    v: &str,
    args: &[&str],
    dir: &Path,
    home: &Path,
    gw: &TestGateway,
    gosumdb: &str,
) -> std::process::Output {
    go_env_extra(v, args, dir, home, gw, gosumdb, &[])
}

/// Go `v` (see `GO_VERSIONS`) with `extra` in its environment; GOTOOLCHAIN=local unless
/// `extra` sets it.
fn go_env_extra(
    v: &str,
    args: &[&str],
    dir: &Path,
    home: &Path,
    gw: &TestGateway,
    gosumdb: &str,
    extra: &[(&str, &str)],
) -> std::process::Output {
    let mut cmd = Command::new(go_tool(v));
    cmd.args(args)
        .current_dir(dir)
        .env_clear()
        .env("GOTOOLCHAIN", "local")
        .env("GOTELEMETRY", "off")
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("GOPATH", home.join("gopath"))
        .env("GOMODCACHE", home.join("modcache"))
        .env("GOCACHE", home.join("gocache"))
        .env("GOSUMDB", gosumdb)
        .env("GOFLAGS", "-mod=mod -modcacherw")
        .env("CGO_ENABLED", "0")
        .env("HTTPS_PROXY", format!("http://{}", gw.proxy))
        .env("SSL_CERT_FILE", &gw.ca_path)
        .envs(extra.iter().copied());
    tokio::task::block_in_place(|| cmd.output().unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn go_build_verified_by_checksum_db_then_offline_from_cache() {
    for v in GO_VERSIONS {
        verified_then_offline_with(v).await;
    }
}

async fn verified_then_offline_with(v: &str) {
    let ca = TestCa::new();
    let tree = tempfile::tempdir().unwrap();
    module_tree(tree.path());
    let proxy = Upstream::tls(&ca, files_dir(tree.path().to_path_buf())).await;
    let sumdb = SumDb::start(&ca, tree.path());
    let (proxy_base, sumdb_base) = (proxy.base_url(), sumdb.base_url());
    let vkey = sumdb.vkey.clone();
    let gw = TestGateway::start(&ca, move |c| {
        c.upstream
            .overrides
            .insert("proxy.golang.org".into(), proxy_base);
        c.upstream
            .overrides
            .insert("sum.golang.org".into(), sumdb_base);
        c.modules.private = modgate::config::PatternList(vec!["corp.example".into()]);
        // modgate proves every .mod and .zip itself, against the Go implementation's tree.
        c.sumdb.verify = "sum.golang.org".into();
        c.sumdb.keys = vec![vkey];
    })
    .await;
    let work = tempfile::tempdir().unwrap();

    // 1. A cold build: modules through the gateway, every hash verified by the checksum DB
    // (the go command's check and, before anything was cached, modgate's).
    let home1 = work.path().join("home1");
    let app1 = work.path().join("app1");
    write_app(&app1);
    let out = go(
        v,
        &["build", "-o", "app", "."],
        &app1,
        &home1,
        &gw,
        &sumdb.vkey,
    );
    assert!(
        out.status.success(),
        "go build: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = Command::new(app1.join("app")).output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&run.stdout).trim(),
        "hello, verified world!"
    );
    let gosum = std::fs::read_to_string(app1.join("go.sum")).unwrap();
    assert!(gosum.contains("example.com/greet v1.1.0 h1:"), "{gosum}");
    assert!(
        gosum.contains("github.com/Upper/Case v0.1.0/go.mod h1:"),
        "{gosum}"
    );
    let lookups: Vec<String> = sumdb
        .requests()
        .into_iter()
        .filter(|p| p.starts_with("/lookup/"))
        .collect();
    assert!(
        lookups
            .iter()
            .any(|p| p == "/lookup/github.com/!upper/!case@v0.1.0"),
        "{lookups:?}"
    );
    let m = gw.metrics().await;
    assert!(
        metric(
            &m,
            "modgate_request_duration_seconds_count",
            &[("route", "sumdb"), ("status", "2xx")]
        ) >= 3.0
    );
    assert!(
        metric(
            &m,
            "modgate_sumdb_verifications_total",
            &[("outcome", "verified")]
        ) >= 4.0,
        "{m}"
    );
    for outcome in ["mismatch", "unavailable", "forked", "unverified"] {
        assert_eq!(
            metric(
                &m,
                "modgate_sumdb_verifications_total",
                &[("outcome", outcome)]
            ),
            0.0,
            "{outcome}: {m}"
        );
    }

    // 2. The canary: an agent without GOPRIVATE asks for a private module. It must fail, and
    // neither public upstream may ever see the path.
    let home_c = work.path().join("home-canary");
    let out = go(
        v,
        &["mod", "download", "-json", "corp.example/secret@v1.0.0"],
        work.path(),
        &home_c,
        &gw,
        &sumdb.vkey,
    );
    assert!(
        !out.status.success(),
        "a private module cannot come from the public route"
    );
    // With the proxy as the only source, the go command shows modgate's explanation.
    let out = go_env_extra(
        v,
        &["mod", "download", "-json", "corp.example/secret@v1.0.0"],
        work.path(),
        &home_c,
        &gw,
        &sumdb.vkey,
        &[("GOPROXY", "https://proxy.golang.org")],
    );
    assert!(!out.status.success());
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("is private"), "{text}");
    let m = gw.metrics().await;
    assert!(metric(&m, "modgate_private_refused_total", &[("kind", "goproxy")]) >= 2.0);
    let (status, _, body) = gw
        .get(
            "sum.golang.org:443",
            "/lookup/corp.example/secret@v1.0.0",
            Alpn::H1,
        )
        .await;
    assert_eq!(status, 404);
    assert!(String::from_utf8_lossy(&body).contains("GONOSUMDB"));
    let seen_proxy = proxy.paths();
    let seen_sumdb = sumdb.requests();
    assert!(
        !seen_proxy.iter().any(|p| p.contains("corp.example")),
        "{seen_proxy:?}"
    );
    assert!(
        !seen_sumdb.iter().any(|p| p.contains("corp.example")),
        "{seen_sumdb:?}"
    );

    // 3. Both upstreams go away; a fresh machine (new module cache, no go.sum) builds again
    // from the gateway's cache, still verifying against the (cached) checksum database.
    let vkey = sumdb.vkey.clone();
    drop(proxy);
    drop(sumdb);
    let home2 = work.path().join("home2");
    let app2 = work.path().join("app2");
    write_app(&app2);
    let out = go(v, &["build", "-o", "app", "."], &app2, &home2, &gw, &vkey);
    assert!(
        out.status.success(),
        "offline go build: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = Command::new(app2.join("app")).output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&run.stdout).trim(),
        "hello, verified world!"
    );
    assert_eq!(
        std::fs::read_to_string(app2.join("go.sum")).unwrap(),
        gosum,
        "same hashes"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn warm_from_a_real_go_sum_then_build_offline() {
    let ca = TestCa::new();
    let tree = tempfile::tempdir().unwrap();
    module_tree(tree.path());
    let proxy = Upstream::tls(&ca, files_dir(tree.path().to_path_buf())).await;
    let sumdb = SumDb::start(&ca, tree.path());
    let (proxy_base, sumdb_base) = (proxy.base_url(), sumdb.base_url());
    let overrides = move |c: &mut modgate::config::Config| {
        c.upstream
            .overrides
            .insert("proxy.golang.org".into(), proxy_base.clone());
        c.upstream
            .overrides
            .insert("sum.golang.org".into(), sumdb_base.clone());
    };
    let work = tempfile::tempdir().unwrap();

    // A go.sum from a real build, made through one gateway.
    let gw0 = TestGateway::start(&ca, overrides.clone()).await;
    let app = work.path().join("app");
    write_app(&app);
    let out = go(
        "1.19",
        &["build", "-o", "app", "."],
        &app,
        &work.path().join("home0"),
        &gw0,
        &sumdb.vkey,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let gosum = app.join("go.sum");

    // A fresh gateway, warmed from that go.sum.
    let gw1 = TestGateway::start(&ca, overrides).await;
    let warm = |file: &Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_modgate"))
            .arg("warm")
            .arg(file)
            .arg("--proxy")
            .arg(gw1.proxy.to_string())
            .arg("--ca")
            .arg(&gw1.ca_path)
            .arg("--sumdb")
            .arg(&sumdb.vkey)
            .env_remove("GONOSUMDB")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    // A go.sum with a wrong hash is refused, naming the module.
    let bad = work.path().join("bad.sum");
    let text = std::fs::read_to_string(&gosum).unwrap();
    let first_h1 = text
        .split("h1:")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    std::fs::write(
        &bad,
        text.replacen(&first_h1, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", 1),
    )
    .unwrap();
    let (ok, text_bad) = tokio::task::block_in_place(|| warm(&bad));
    assert!(!ok, "{text_bad}");
    assert!(text_bad.contains("hash mismatch"), "{text_bad}");

    let (ok, report) = tokio::task::block_in_place(|| warm(&gosum));
    assert!(ok, "{report}");
    assert!(report.contains("warmed 3 of 3 module versions"), "{report}");
    assert!(
        report.contains("3 verified by the checksum database"),
        "{report}"
    );

    // Offline: the upstream and the checksum database are gone. A new agent with an empty
    // module cache (and a newer go command than the one that wrote go.sum) builds from the
    // warmed gateway alone.
    drop(proxy);
    drop(sumdb);
    let app2 = work.path().join("app2");
    write_app(&app2);
    std::fs::copy(&gosum, app2.join("go.sum")).unwrap();
    let out = go(
        "1.23",
        &["build", "-o", "app", "."],
        &app2,
        &work.path().join("home1"),
        &gw1,
        "sum.golang.org",
    );
    assert!(
        out.status.success(),
        "offline build: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = Command::new(app2.join("app")).output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&run.stdout).trim(),
        "hello, verified world!"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn content_that_differs_from_the_checksum_database_is_refused_and_never_cached() {
    let ca = TestCa::new();
    // The checksum database knows m@v1.0.0 and m@v1.1.0 as published.
    let published = tempfile::tempdir().unwrap();
    let gomod = "module example.com/m\n\ngo 1.19\n";
    for v in ["v1.0.0", "v1.1.0"] {
        write_module(
            published.path(),
            "example.com/m",
            v,
            gomod,
            &[("m.go", "package m\n")],
        );
    }
    let sumdb = SumDb::start(&ca, published.path());
    // The upstream proxy serves v1.0.0 with other file data (same go.mod), v1.1.0 with another
    // go.mod, and v1.2.0, which the database has never seen.
    let served = tempfile::tempdir().unwrap();
    write_module(
        served.path(),
        "example.com/m",
        "v1.0.0",
        gomod,
        &[("m.go", "package m // tampered\n")],
    );
    write_module(
        served.path(),
        "example.com/m",
        "v1.1.0",
        "module example.com/m\n\ngo 1.19\n\nrequire example.com/evil v1.0.0\n",
        &[("m.go", "package m\n")],
    );
    write_module(
        served.path(),
        "example.com/m",
        "v1.2.0",
        gomod,
        &[("m.go", "package m\n")],
    );
    let proxy = Upstream::tls(&ca, files_dir(served.path().to_path_buf())).await;
    let gw = verifying_gateway(&ca, &proxy, &sumdb, |_| {}).await;
    let get = |path: &'static str| {
        let gw = &gw;
        async move {
            let (status, _, body) = gw.get("proxy.golang.org:443", path, Alpn::H1).await;
            (status.as_u16(), String::from_utf8_lossy(&body).into_owned())
        }
    };
    for (path, want) in [
        (
            "/example.com/m/@v/v1.0.0.zip",
            "checksum mismatch for example.com/m@v1.0.0: the checksum database sum.golang.org has h1:",
        ),
        (
            "/example.com/m/@v/v1.1.0.mod",
            "checksum mismatch for example.com/m@v1.1.0/go.mod",
        ),
        (
            "/example.com/m/@v/v1.2.0.zip",
            "cannot verify example.com/m@v1.2.0 against the checksum database sum.golang.org",
        ),
    ] {
        // Refused as a 502 (a 404 would let the go command fall through to another proxy),
        // and not cached: the second request is refused afresh.
        for _ in 0..2 {
            let (status, body) = get(path).await;
            assert_eq!(status, 502, "{path}: {body}");
            assert!(body.contains(want), "{path}: {body}");
        }
    }
    // What matches the database is served, and cached (v1.0.0's go.mod was not changed; a
    // zip holds its go.mod, so v1.1.0's zip differs too).
    let (status, body) = get("/example.com/m/@v/v1.0.0.mod").await;
    assert_eq!((status, body.as_str()), (200, gomod));
    let m = gw.metrics().await;
    let outcome = |o| metric(&m, "modgate_sumdb_verifications_total", &[("outcome", o)]);
    // At least once per refused file (a repeat may have shared the first's refusal).
    assert!(
        outcome("mismatch") >= 2.0 && outcome("unavailable") >= 1.0,
        "{m}"
    );
    assert_eq!(outcome("verified"), 1.0, "{m}");
    let cached = |name: &str| {
        gw.dir
            .path()
            .join("data/cache/mod/example.com/m/@v")
            .join(name)
            .exists()
    };
    assert!(!cached("v1.0.0.zip") && !cached("v1.1.0.mod") && !cached("v1.2.0.zip"));
    assert!(cached("v1.0.0.mod"));
    // How each file was proven, as explain and cache stats tell it.
    let cfg = gw.dir.path().join("ops.toml");
    std::fs::write(
        &cfg,
        format!(
            "[storage]\ndata_dir = \"{}\"\n",
            gw.dir.path().join("data").display()
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = modgate_command()
            .args(args)
            .arg("--config")
            .arg(&cfg)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let explained = run(&["explain", "example.com/m@v1.0.0"]);
    assert!(
        explained.contains("proof go.mod verified h1:")
            && explained.contains("against sum.golang.org")
            && explained.contains("proof zip    not yet proven"),
        "{explained}"
    );
    let stats = run(&["cache", "stats"]);
    assert!(
        stats.contains("proofs:      1 go.mod/zip entries verified against a checksum database, 0 pinned (private), 0 unverified"),
        "{stats}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_checksum_database_that_forks_its_tree_is_caught() {
    let ca = TestCa::new();
    let tree = tempfile::tempdir().unwrap();
    let gomod = "module example.com/m\n\ngo 1.19\n";
    write_module(
        tree.path(),
        "example.com/m",
        "v1.0.0",
        gomod,
        &[("m.go", "package m\n")],
    );
    let sumdb = SumDb::start(&ca, tree.path());
    let proxy = Upstream::tls(&ca, files_dir(tree.path().to_path_buf())).await;
    // The newest head modgate verified before: a tree of 1 record whose hash the database's
    // tree does not extend (as after the database rewrote its log).
    let data = tempfile::tempdir().unwrap();
    let head = data.path().join("sumdb/sum.golang.org");
    std::fs::create_dir_all(&head).unwrap();
    std::fs::write(
        head.join("verified-tree"),
        "go.sum database tree\n1\nnND/nri/U0xuHUrYSy0HtMeal2vzD9V4k/BO79C+QeI=\n",
    )
    .unwrap();
    let data_dir = data.path().to_path_buf();
    let gw = verifying_gateway(&ca, &proxy, &sumdb, move |c| c.storage.data_dir = data_dir).await;
    let (status, _, body) = gw
        .get(
            "proxy.golang.org:443",
            "/example.com/m/@v/v1.0.0.mod",
            Alpn::H1,
        )
        .await;
    let body = String::from_utf8_lossy(&body);
    assert_eq!(status, 502, "{body}");
    assert!(
        body.contains("the checksum database sum.golang.org is inconsistent"),
        "{body}"
    );
    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            "modgate_sumdb_verifications_total",
            &[("outcome", "forked")]
        ),
        1.0,
        "{m}"
    );
}

/// A gateway serving proxy.golang.org from `proxy` that proves every public .mod and .zip
/// against the fixture database `sumdb` (as sum.golang.org).
async fn verifying_gateway(
    ca: &TestCa,
    proxy: &Upstream,
    sumdb: &SumDb,
    edit: impl FnOnce(&mut modgate::config::Config),
) -> TestGateway {
    let (proxy_base, sumdb_base, vkey) = (proxy.base_url(), sumdb.base_url(), sumdb.vkey.clone());
    TestGateway::start(ca, move |c| {
        c.upstream
            .overrides
            .insert("proxy.golang.org".into(), proxy_base);
        c.upstream
            .overrides
            .insert("sum.golang.org".into(), sumdb_base);
        c.sumdb.verify = "sum.golang.org".into();
        c.sumdb.keys = vec![vkey];
        edit(c);
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_checksum_database_fails_closed_unless_fail_open_which_warns() {
    let ca = TestCa::new();
    let (_tree, proxy) = one_module_upstream(&ca, "example.com/m", "v1.0.0").await;
    // A database nobody answers at: a loopback port just closed.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let gone = format!("https://{}", closed.local_addr().unwrap());
    drop(closed);
    let key = modgate_core::gomod::note::Signer::from_seed("sum.golang.org", [5; 32])
        .unwrap()
        .vkey();
    let start = |fail_open: bool| {
        let (proxy_base, gone, key) = (proxy.base_url(), gone.clone(), key.clone());
        TestGateway::start(&ca, move |c| {
            c.upstream
                .overrides
                .insert("proxy.golang.org".into(), proxy_base);
            c.upstream.overrides.insert("sum.golang.org".into(), gone);
            c.sumdb.verify = "sum.golang.org".into();
            c.sumdb.keys = vec![key];
            c.sumdb.fail_open = fail_open;
        })
    };
    const MOD: &str = "/example.com/m/@v/v1.0.0.mod";

    let closed_gw = start(false).await;
    let (status, headers, body) = closed_gw.get("proxy.golang.org:443", MOD, Alpn::H1).await;
    let text = String::from_utf8_lossy(&body);
    assert_eq!(status, 502, "{text}");
    assert!(
        text.contains("cannot verify example.com/m@v1.0.0 against the checksum database"),
        "{text}"
    );
    assert!(headers.get("warning").is_none());
    let m = closed_gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            "modgate_sumdb_verifications_total",
            &[("outcome", "unavailable")]
        ),
        1.0,
        "{m}"
    );

    let open_gw = start(true).await;
    let (status, headers, body) = open_gw.get("proxy.golang.org:443", MOD, Alpn::H1).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(&body[..], b"module example.com/m\n\ngo 1.19\n");
    let warning = headers
        .get("warning")
        .expect("a Warning header")
        .to_str()
        .unwrap();
    assert!(
        warning.starts_with("199 modgate \"modgate: served unverified (sumdb.fail_open): cannot verify example.com/m@v1.0.0"),
        "{warning}"
    );
    let m = open_gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            "modgate_sumdb_verifications_total",
            &[("outcome", "unverified")]
        ),
        1.0,
        "{m}"
    );
}
