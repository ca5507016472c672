//! Faults survived: a cache directory that cannot be written, and kill -9 of the gateway in the
//! middle of many downloads followed by a restart. (Upstream refusals, resets, stalls, wrong
//! lengths, corrupt zips and all upstreams down are covered in `public`, `mitm` and `hostile`.)

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use crate::util::*;

#[tokio::test(flavor = "multi_thread")]
async fn unwritable_cache_still_answers_from_upstream_and_counts_errors() {
    let ca = TestCa::new();
    let script = Arc::new(Script::default());
    let zip = module_zip("example.com/m", "v1.0.0", &[("m.go", "package m\n")]);
    script.ok("/example.com/m/@v/v1.0.0.zip", zip.clone());
    script.ok("/example.com/m/@v/list", "v1.0.0\n");
    let up = Upstream::tls(&ca, scripted(script.clone())).await;
    let base = up.base_url();
    let gw = TestGateway::start(&ca, move |c| {
        c.upstream.overrides.insert("proxy.golang.org".into(), base);
    })
    .await;
    // Even root cannot create files inside a regular file: every cache write now fails.
    let tmp = gw.dir.path().join("data/tmp");
    std::fs::remove_dir_all(&tmp).unwrap();
    std::fs::write(&tmp, "not a directory").unwrap();
    for _ in 0..2 {
        let (status, headers, body) = gw
            .get(
                "proxy.golang.org:443",
                "/example.com/m/@v/v1.0.0.zip",
                Alpn::H1,
            )
            .await;
        assert_eq!(status, 200);
        assert_eq!(headers["x-modgate-cache"], "miss");
        assert_eq!(&body[..], &zip[..]);
    }
    let (status, _, body) = gw
        .get("proxy.golang.org:443", "/example.com/m/@v/list", Alpn::H2)
        .await;
    assert_eq!((status.as_u16(), &body[..]), (200, &b"v1.0.0\n"[..]));
    assert_eq!(
        up.paths().iter().filter(|p| p.ends_with(".zip")).count(),
        2,
        "nothing could be cached"
    );
    let m = gw.metrics().await;
    assert!(
        metric(&m, "modgate_cache_store_errors_total", &[]) >= 3.0,
        "{m}"
    );
    assert_eq!(metric(&m, "modgate_cache_entries", &[]), 0.0);
}

/// Starts the modgate binary on ephemeral ports; returns the child and its proxy address.
fn spawn_modgate(
    dir: &std::path::Path,
    upstream: &str,
    ca: &std::path::Path,
) -> (std::process::Child, String) {
    std::fs::write(
        dir.join("c.toml"),
        format!(
            "[proxy]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[sumdb]\n# the scripted upstream's modules are in no checksum database\nverify = \"off\"\n[upstream]\nextra_ca_file = \"{}\"\n[upstream.overrides]\n\"proxy.golang.org\" = \"{upstream}\"\n",
            ca.display()
        ),
    )
    .unwrap();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("modgate.log"))
        .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_modgate"))
        .args(["serve", "--config", "c.toml"])
        .env("RUST_LOG", "modgate=debug")
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    let (_, proxy) = read_banner(&mut child);
    (child, proxy)
}

fn curl(proxy: &str, ca: &std::path::Path, url: &str, out: &std::path::Path) -> Command {
    let mut c = Command::new(tool("curl"));
    c.args(["-sS", "--fail", "--max-time", "20", "-o"])
        .arg(out)
        .arg("--proxy")
        .arg(format!("http://{proxy}"))
        .arg("--cacert")
        .arg(ca)
        .arg(url)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_cache_unwritable_bodies_are_still_checked_and_every_waiter_is_served() {
    let ca = TestCa::new();
    let script = Arc::new(Script::default());
    // Larger than a write batch (256 KiB), so they stream to the client.
    let big = module_zip("example.com/big", "v1.0.0", &[("a.go", &noise(1536 << 10))]);
    assert!(big.len() > 300 << 10);
    script.ok("/example.com/big/@v/v1.0.0.zip", big.clone());
    script.ok(
        "/example.com/flip/@v/v1.0.0.zip",
        flip_file_data(&module_zip(
            "example.com/flip",
            "v1.0.0",
            &[("a.go", &noise(1536 << 10))],
        )),
    );
    script.ok(
        "/example.com/evil/@v/v1.0.0.zip",
        module_zip("example.com/other", "v1.0.0", &[("a.go", "package a\n")]),
    );
    let up = Upstream::tls(&ca, scripted(script.clone())).await;
    let base = up.base_url();
    let gw = TestGateway::start(&ca, move |c| {
        c.upstream.overrides.insert("proxy.golang.org".into(), base);
    })
    .await;
    let tmp = gw.dir.path().join("data/tmp");
    std::fs::remove_dir_all(&tmp).unwrap();
    std::fs::write(&tmp, "not a directory").unwrap();
    const HOST: &str = "proxy.golang.org:443";

    // A small invalid zip: refused with the reason, as when it could be stored.
    let (status, _, body) = gw
        .get(HOST, "/example.com/evil/@v/v1.0.0.zip", Alpn::H1)
        .await;
    let text = String::from_utf8_lossy(&body);
    assert_eq!(status, 502, "{text}");
    assert!(text.contains("invalid module zip"), "{text}");
    // A large corrupt zip: never delivered whole.
    assert!(
        !gw.complete_200(HOST, "/example.com/flip/@v/v1.0.0.zip")
            .await
    );
    // Ten agents at once for one large valid zip: every one gets all of it.
    let mut tasks = vec![];
    for _ in 0..10 {
        let gw = &gw;
        tasks.push(async move {
            gw.get(HOST, "/example.com/big/@v/v1.0.0.zip", Alpn::H1)
                .await
        });
    }
    for (status, _, body) in futures_util::future::join_all(tasks).await {
        assert_eq!(status, 200);
        assert_eq!(&body[..], &big[..]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_during_downloads_leaves_no_partial_entry() {
    let ca = TestCa::new();
    let script = Arc::new(Script::default());
    let mut zips = vec![];
    for i in 0..8 {
        let module = format!("example.com/m{i}");
        // Incompressible content, so the zip stays about 300 KB.
        use base64::Engine;
        let noise: Vec<u8> = (0..225_000).map(|_| rand::random::<u8>()).collect();
        let text = format!(
            "package m\n// {}\n",
            base64::engine::general_purpose::STANDARD.encode(noise)
        );
        let zip = module_zip(&module, "v1.0.0", &[("big.go", &text)]);
        // About 3 seconds per download: long enough to be killed in the middle.
        script.set(
            &format!("/{module}/@v/v1.0.0.zip"),
            Reply::Slow {
                body: zip.clone(),
                chunk: 8192,
                delay: Duration::from_millis(80),
            },
        );
        zips.push((module, zip));
    }
    let up = Upstream::tls(&ca, scripted(script.clone())).await;
    let dir = tempfile::tempdir().unwrap();
    let (mut child, proxy) = spawn_modgate(dir.path(), &up.base_url(), &ca.path);
    let gw_ca = dir.path().join("certs/ca.pem");
    let mut curls: Vec<std::process::Child> = zips
        .iter()
        .map(|(m, _)| {
            curl(
                &proxy,
                &gw_ca,
                &format!("https://proxy.golang.org/{m}/@v/v1.0.0.zip"),
                &dir.path().join("out.zip"),
            )
            .spawn()
            .unwrap()
        })
        .collect();
    // Wait until every download is under way, then kill the gateway outright.
    for _ in 0..200 {
        if up.paths().len() >= zips.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(up.paths().len(), zips.len(), "all downloads started");
    tokio::time::sleep(Duration::from_millis(500)).await;
    Command::new("kill")
        .args(["-9", &child.id().to_string()])
        .status()
        .unwrap();
    child.wait().unwrap();
    for c in &mut curls {
        assert!(
            !c.wait().unwrap().success(),
            "an interrupted download must fail, not succeed"
        );
    }
    let cache = dir.path().join("data/cache");
    let mut files = vec![];
    if cache.exists() {
        walk(&cache, &mut files);
    }
    assert!(
        files.iter().all(|f| !f.ends_with(".zip")),
        "no zip committed mid-download: {files:?}"
    );

    // Restart over the same data directory with a fast upstream: no partial entry is served,
    // temporary files are gone, and every zip arrives whole.
    for (m, zip) in &zips {
        script.ok(&format!("/{m}/@v/v1.0.0.zip"), zip.clone());
    }
    let (mut child, proxy) = spawn_modgate(dir.path(), &up.base_url(), &ca.path);
    assert_eq!(
        std::fs::read_dir(dir.path().join("data/tmp"))
            .unwrap()
            .count(),
        0,
        "temporary files cleared"
    );
    for (i, (m, zip)) in zips.iter().enumerate() {
        let out = dir.path().join(format!("got{i}.zip"));
        let res = tokio::task::block_in_place(|| {
            curl(
                &proxy,
                &gw_ca,
                &format!("https://proxy.golang.org/{m}/@v/v1.0.0.zip"),
                &out,
            )
            .stderr(Stdio::piped())
            .output()
            .unwrap()
        });
        assert!(
            res.status.success(),
            "{m}: {}\n{}",
            String::from_utf8_lossy(&res.stderr),
            std::fs::read_to_string(dir.path().join("modgate.log")).unwrap_or_default()
        );
        assert!(std::fs::read(&out).unwrap() == *zip, "{m}: bytes differ");
    }
    let mut files = vec![];
    walk(&cache, &mut files);
    assert_eq!(
        files.iter().filter(|f| f.ends_with(".zip")).count(),
        zips.len()
    );
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
}

fn walk(dir: &std::path::Path, out: &mut Vec<String>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            walk(&e.path(), out);
        } else {
            out.push(e.path().display().to_string());
        }
    }
}

/// A small tmpfs mounted for a test (needs root, as the test command runs), unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mounting a tmpfs needs root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk { dir }
    }

    /// Writes a file until the file system is full.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.dir.path().join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = vec![7u8; 64 << 10];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.write_all(&[7u8; 512]);
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn on_a_full_disk_every_client_gets_correct_bytes_and_caching_resumes_when_space_returns() {
    let disk = SmallDisk::mount("8m");
    let ca = TestCa::new();
    let script = Arc::new(Script::default());
    let big = module_zip("example.com/big", "v1.0.0", &[("a.go", &noise(1536 << 10))]);
    script.ok("/example.com/big/@v/v1.0.0.zip", big.clone());
    script.ok(
        "/example.com/flip/@v/v1.0.0.zip",
        flip_file_data(&module_zip(
            "example.com/flip",
            "v1.0.0",
            &[("a.go", &noise(1536 << 10))],
        )),
    );
    let up = Upstream::tls(&ca, scripted(script.clone())).await;
    let base = up.base_url();
    let data = disk.dir.path().join("data");
    let gw = TestGateway::start(&ca, move |c| {
        c.upstream.overrides.insert("proxy.golang.org".into(), base);
        c.storage.data_dir = data;
    })
    .await;
    let filler = disk.fill();
    const HOST: &str = "proxy.golang.org:443";
    const BIG: &str = "/example.com/big/@v/v1.0.0.zip";

    // Ten agents at once for one zip the disk cannot hold: every one gets all of it.
    let mut tasks = vec![];
    for _ in 0..10 {
        let gw = &gw;
        tasks.push(async move { gw.get(HOST, BIG, Alpn::H1).await });
    }
    for (status, _, body) in futures_util::future::join_all(tasks).await {
        assert_eq!(status, 200);
        assert_eq!(&body[..], &big[..]);
    }
    // A corrupt zip is not delivered whole, stored or not.
    assert!(
        !gw.complete_200(HOST, "/example.com/flip/@v/v1.0.0.zip")
            .await
    );
    let m = gw.metrics().await;
    assert!(
        metric(&m, "modgate_cache_store_errors_total", &[]) >= 1.0,
        "{m}"
    );
    assert!(gw.dir.path().exists());

    // Space returns: the next fetch is stored, and the one after is a hit.
    std::fs::remove_file(filler).unwrap();
    let (status, headers, body) = gw.get(HOST, BIG, Alpn::H1).await;
    assert_eq!(status, 200);
    assert_eq!(&body[..], &big[..]);
    assert_eq!(headers["x-modgate-cache"], "miss");
    let (status, headers, body) = gw.get(HOST, BIG, Alpn::H1).await;
    assert_eq!(status, 200);
    assert_eq!(&body[..], &big[..]);
    assert_eq!(headers["x-modgate-cache"], "hit");
    drop(gw);
}
