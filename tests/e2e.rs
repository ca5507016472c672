//! Real clients through a real gateway: the go command (Debian golang-1.19-go), curl and git.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::process::Command;

use crate::util::*;

/// A module zip as the GOPROXY protocol serves it: every entry under `module@version/`.
fn module_zip(module: &str, version: &str, files: &[(&str, &str)]) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut zip = zip::ZipWriter::new(&mut buf);
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        for (name, content) in files {
            zip.start_file(format!("{module}@{version}/{name}"), opts)
                .unwrap();
            zip.write_all(content.as_bytes()).unwrap();
        }
        zip.finish().unwrap();
    }
    buf.into_inner()
}

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

fn go_env(cmd: &mut Command, home: &Path, gw: &TestGateway) {
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("GOPATH", home.join("gopath"))
        .env("GOMODCACHE", home.join("modcache"))
        .env("GOCACHE", home.join("gocache"))
        .env("GOPROXY", "https://proxy.golang.org")
        .env("GOSUMDB", "off")
        .env("GOFLAGS", "-mod=mod -modcacherw")
        .env("CGO_ENABLED", "0")
        .env("HTTPS_PROXY", format!("http://{}", gw.proxy))
        .env("SSL_CERT_FILE", &gw.ca_path);
}

#[tokio::test(flavor = "multi_thread")]
async fn go_command_builds_through_the_gateway() {
    let go = tool("go");
    let ca = TestCa::new();
    let up = Upstream::tls(&ca, files(goproxy_files())).await;
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
    let out = tokio::task::block_in_place(|| {
        let mut dl = Command::new(&go);
        dl.args(["mod", "download", "example.com/hello"])
            .current_dir(&app);
        go_env(&mut dl, &home, gw_ref);
        let out = dl.output().unwrap();
        assert!(
            out.status.success(),
            "go mod download: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut run = Command::new(&go);
        run.args(["run", "."]).current_dir(&app);
        go_env(&mut run, &home, gw_ref);
        run.output().unwrap()
    });
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
        paths.contains(&"/example.com/hello/@v/v1.0.0.zip".to_string()),
        "{paths:?}"
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
