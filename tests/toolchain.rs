//! Toolchain switches (Go 1.21+): the go command downloads `golang.org/toolchain` through its
//! GOPROXY and proves the zip against the checksum database, GOSUMDB=off or not. Here Go 1.21
//! with `GOTOOLCHAIN=auto` meets a module that needs Go 1.23 and switches to a toolchain module
//! built from the installed Go 1.23 tree as Go's distpack lays it out, through modgate, then
//! again offline from modgate's cache, through interception and through the GOPROXY endpoint.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::*;

const MODULE: &str = "golang.org/toolchain";

/// The toolchain module of the GOROOT `root` (`v0.0.1-goX.Y.Z.GOOS-GOARCH`) written as a GOPROXY
/// tree under `tree`, laid out as distpack does: every file of the binary distribution under the
/// module prefix, without `api/`, `doc/`, `misc/` and `test/`, each `go.mod` renamed `_go.mod`
/// (a module zip holds no nested module). Returns the version.
fn write_toolchain_module(tree: &Path, root: &Path, go_version: &str) -> String {
    let go = root.join("bin/go");
    let env = Command::new(&go)
        .args(["env", "GOOS", "GOARCH"])
        .env("GOTOOLCHAIN", "local")
        .output()
        .unwrap();
    let env = String::from_utf8(env.stdout).unwrap();
    let mut lines = env.lines();
    let (goos, goarch) = (lines.next().unwrap(), lines.next().unwrap());
    let version = format!("v0.0.1-{go_version}.{goos}-{goarch}");

    let mut files = vec![];
    collect(root, PathBuf::new(), &mut files);
    files.sort();
    assert!(
        files.len() > 1000,
        "{} holds a whole Go tree",
        root.display()
    );
    let dir = tree.join(MODULE).join("@v");
    std::fs::create_dir_all(&dir).unwrap();
    let out = std::fs::File::create(dir.join(format!("{version}.zip"))).unwrap();
    let mut zip = zip::ZipWriter::new(std::io::BufWriter::new(out));
    for rel in &files {
        let meta = std::fs::metadata(root.join(rel)).unwrap();
        let mut name = rel.to_str().unwrap().to_string();
        if rel.file_name().unwrap() == "go.mod" {
            name = name.strip_suffix("go.mod").unwrap().to_string() + "_go.mod";
        }
        let exec = std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o111 != 0;
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .compression_level(Some(1))
            .large_file(false)
            .unix_permissions(if exec { 0o755 } else { 0o644 });
        zip.start_file(format!("{MODULE}@{version}/{name}"), opts)
            .unwrap();
        zip.write_all(&std::fs::read(root.join(rel)).unwrap())
            .unwrap();
    }
    zip.finish().unwrap().flush().unwrap();
    std::fs::write(
        dir.join(format!("{version}.mod")),
        format!("module {MODULE}\n"),
    )
    .unwrap();
    std::fs::write(
        dir.join(format!("{version}.info")),
        format!("{{\"Version\":\"{version}\",\"Time\":\"2025-01-10T16:44:59Z\"}}"),
    )
    .unwrap();
    std::fs::write(dir.join("list"), format!("{version}\n")).unwrap();
    version
}

/// Every file under `root/rel`, following symbolic links (Debian's GOROOT links `src` and the
/// rest into /usr/share), leaving out what distpack leaves out of the module.
fn collect(root: &Path, rel: PathBuf, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(root.join(&rel)).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        let sub = rel.join(&name);
        if rel.as_os_str().is_empty()
            && ["api", "doc", "misc", "test"]
                .iter()
                .any(|skip| name == *skip)
        {
            continue;
        }
        let meta = std::fs::metadata(entry.path()).unwrap();
        if meta.is_dir() {
            collect(root, sub, out);
        } else if meta.is_file() {
            out.push(sub);
        }
    }
}

/// How the agent reaches modgate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    /// HTTPS_PROXY, GOPROXY=https://proxy.golang.org (interception).
    Proxy,
    /// GOPROXY=https://localhost:PORT (the GOPROXY endpoint), no HTTPS_PROXY.
    Endpoint,
}

/// Go `go_version` with `GOTOOLCHAIN=auto`, everything else pointing at the gateway.
fn go_auto(
    go_version: &str,
    args: &[&str],
    dir: &Path,
    home: &Path,
    gw: &TestGateway,
    gosumdb: &str,
    via: Via,
) -> std::process::Output {
    let mut cmd = go_command(go_version, dir, home);
    cmd.args(args)
        .env("GOTOOLCHAIN", "auto")
        .env("GOSUMDB", gosumdb)
        .env("SSL_CERT_FILE", &gw.ca_path);
    match via {
        Via::Proxy => cmd
            .env("GOPROXY", "https://proxy.golang.org")
            .env("HTTPS_PROXY", format!("http://{}", gw.proxy)),
        Via::Endpoint => cmd.env(
            "GOPROXY",
            format!(
                "https://localhost:{}",
                gw.gw().endpoint_addr().unwrap().port()
            ),
        ),
    };
    tokio::task::block_in_place(|| cmd.output().unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn go_1_21_switches_to_a_go_1_23_toolchain_through_the_gateway_then_offline() {
    let go121 = go_tool("1.21");
    let go123 = go_tool("1.23");
    let root = go123.parent().unwrap().parent().unwrap().to_path_buf();
    let go_version = std::fs::read_to_string(root.join("VERSION"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_string();
    assert!(go_version.starts_with("go1.23"), "{go_version}");

    let ca = TestCa::new();
    let tree = tempfile::tempdir().unwrap();
    let version =
        tokio::task::block_in_place(|| write_toolchain_module(tree.path(), &root, &go_version));
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
        // modgate proves the toolchain zip itself too, before it is cached.
        c.sumdb.verify = "sum.golang.org".into();
        c.sumdb.keys = vec![vkey];
        c.endpoint.listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;

    // A module that needs Go 1.23: Go 1.21 must switch to it to build.
    let work = tempfile::tempdir().unwrap();
    let app = work.path().join("app");
    std::fs::create_dir(&app).unwrap();
    let need = go_version.strip_prefix("go").unwrap();
    std::fs::write(
        app.join("go.mod"),
        format!("module example.com/app\n\ngo {need}\n"),
    )
    .unwrap();
    std::fs::write(
        app.join("main.go"),
        "package main\n\nimport (\n\t\"fmt\"\n\t\"runtime\"\n)\n\nfunc main() { fmt.Println(\"built by\", runtime.Version()) }\n",
    )
    .unwrap();
    let own = Command::new(&go121)
        .arg("version")
        .env("GOTOOLCHAIN", "local")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&own.stdout).contains("go1.21"),
        "{own:?}"
    );

    let zip_path = format!("/{MODULE}/@v/{version}.zip");
    let lookup = format!("/lookup/{MODULE}@{version}");
    let gosumdb = sumdb.vkey.clone();
    let mut upstreams = Some((proxy, sumdb));
    // Through interception; then, both upstreams gone, through interception and through the
    // GOPROXY endpoint from modgate's cache alone.
    let rounds = [
        ("online", Via::Proxy),
        ("offline", Via::Proxy),
        ("offline, GOPROXY endpoint", Via::Endpoint),
    ];
    for (i, (round, via)) in rounds.iter().enumerate() {
        let home = work.path().join(format!("home{i}"));
        let out = go_auto("1.21", &["version"], &app, &home, &gw, &gosumdb, *via);
        assert!(
            out.status.success(),
            "{round}: go version: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).starts_with(&format!("go version {go_version} ")),
            "{round}: Go 1.21 switched to {go_version}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(
            home.join(format!("modcache/cache/download/{MODULE}/@v/{version}.zip"))
                .is_file(),
            "{round}: the toolchain came through the module proxy"
        );
        // The switched toolchain builds with its own compiler and standard library.
        let out = go_auto("1.21", &["run", "."], &app, &home, &gw, &gosumdb, *via);
        assert!(
            out.status.success(),
            "{round}: go run: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("built by {go_version}")
        );
        if let Some((proxy, sumdb)) = upstreams.take() {
            assert!(proxy.paths().contains(&zip_path), "{:?}", proxy.paths());
            assert!(sumdb.requests().contains(&lookup), "{:?}", sumdb.requests());
            let m = gw.metrics().await;
            assert!(
                metric(
                    &m,
                    "modgate_sumdb_verifications_total",
                    &[("outcome", "verified")]
                ) >= 1.0,
                "modgate proved the toolchain zip: {m}"
            );
            // Both upstreams go away (dropped here); a fresh agent switches again from the
            // cache alone.
        }
    }
}
