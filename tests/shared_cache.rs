//! Replicas sharing one cache through a real S3-compatible store: Garage (`cargo install
//! garage`), started by the test on loopback with one node, one bucket and one key.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use crate::util::*;

/// A single-node Garage with a bucket and a key, stopped on drop.
pub struct Garage {
    child: Child,
    pub endpoint: String,
    pub bucket: String,
    pub key_file: PathBuf,
    pub secret_file: PathBuf,
    config: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Garage {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Garage {
    pub fn start() -> Garage {
        let bin = tool("garage");
        let dir = tempfile::tempdir().unwrap();
        let (s3, rpc, admin) = (free_port(), free_port(), free_port());
        let secret: String = (0..32).map(|_| format!("{:02x}", rand_byte())).collect();
        let config = dir.path().join("garage.toml");
        std::fs::write(
            &config,
            format!(
                r#"metadata_dir = "{d}/meta"
data_dir = "{d}/data"
db_engine = "lmdb"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:{rpc}"
rpc_public_addr = "127.0.0.1:{rpc}"
rpc_secret = "{secret}"
[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:{s3}"
root_domain = ".s3.garage.localhost"
[admin]
api_bind_addr = "127.0.0.1:{admin}"
"#,
                d = dir.path().display()
            ),
        )
        .unwrap();
        let child = Command::new(&bin)
            .arg("-c")
            .arg(&config)
            .arg("server")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("garage.log")).unwrap())
            .spawn()
            .unwrap();
        let g = Garage {
            child,
            endpoint: format!("http://127.0.0.1:{s3}"),
            bucket: "modgate-cache".into(),
            key_file: dir.path().join("key-id"),
            secret_file: dir.path().join("secret"),
            config,
            _dir: dir,
        };
        // Wait for the node, give it a role, then make the bucket and the key.
        let mut id = String::new();
        for _ in 0..100 {
            if let Some(out) = g.try_cli(&["node", "id", "-q"]) {
                id = out.trim().split('@').next().unwrap().to_string();
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(!id.is_empty(), "garage did not start");
        g.cli(&["layout", "assign", "-z", "dc1", "-c", "1G", &id]);
        g.cli(&["layout", "apply", "--version", "1"]);
        g.cli(&["bucket", "create", &g.bucket.clone()]);
        let info = g.cli(&["key", "create", "modgate"]);
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
                .unwrap_or_else(|| panic!("no {name} in {info}"))
        };
        std::fs::write(&g.key_file, field("Key ID:")).unwrap();
        std::fs::write(&g.secret_file, field("Secret key:")).unwrap();
        let bucket = g.bucket.clone();
        g.cli(&[
            "bucket", "allow", "--read", "--write", "--owner", &bucket, "--key", "modgate",
        ]);
        g
    }

    fn try_cli(&self, args: &[&str]) -> Option<String> {
        self.run_cli(args).ok()
    }

    fn run_cli(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(tool("garage"))
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .env("RUST_LOG", "error")
            .output()
            .unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Runs a garage command, retrying for a few seconds while the new node settles.
    fn cli(&self, args: &[&str]) -> String {
        let mut last = String::new();
        for _ in 0..100 {
            match self.run_cli(args) {
                Ok(out) => return out,
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("garage {args:?} failed: {last}")
    }

    /// Points a replica's configuration at this store.
    pub fn configure(&self, c: &mut modgate::config::Config) {
        c.shared_cache.bucket = Some(self.bucket.clone());
        c.shared_cache.endpoint = Some(self.endpoint.clone());
        c.shared_cache.region = "garage".into();
        c.shared_cache.access_key_id_file = Some(self.key_file.clone());
        c.shared_cache.secret_access_key_file = Some(self.secret_file.clone());
    }
}

fn rand_byte() -> u8 {
    rand::random()
}

/// A module zip with stored (uncompressed) files, so its size is what the test asks.
fn stored_zip(files: &[(&str, &str)]) -> Vec<u8> {
    use std::io::Write as _;
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut zip = zip::ZipWriter::new(&mut buf);
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        for (name, content) in files {
            zip.start_file(format!("{M}@{V}/{name}"), opts).unwrap();
            zip.write_all(content.as_bytes()).unwrap();
        }
        zip.finish().unwrap();
    }
    buf.into_inner()
}

const M: &str = "example.com/big";
const V: &str = "v1.0.0";

/// A module zip of about 20 MB (uploaded to the bucket in parts), served slowly so that the
/// replicas' requests overlap.
fn script() -> (Arc<Script>, Vec<u8>) {
    let script = Arc::new(Script::default());
    let gomod = format!("module {M}\n\ngo 1.19\n");
    let filler = "// padding padding padding padding\n".repeat(600_000);
    let zip = stored_zip(&[
        ("go.mod", &gomod),
        ("big.go", &format!("package big\n{filler}")),
    ]);
    assert!(zip.len() > 20_000_000);
    script.ok(&format!("/{M}/@v/{V}.mod"), gomod.clone());
    script.ok(&format!("/{M}/@v/list"), format!("{V}\n"));
    script.ok(
        &format!("/{M}/@v/{V}.info"),
        format!("{{\"Version\":\"{V}\",\"Time\":\"2024-01-02T03:04:05Z\"}}"),
    );
    script.set(
        &format!("/{M}/@v/{V}.zip"),
        Reply::Slow {
            body: zip.clone(),
            chunk: 1024 * 1024,
            delay: Duration::from_millis(30),
        },
    );
    (script, zip)
}

async fn replica(ca: &TestCa, garage: &Garage, upstream: &Upstream) -> TestGateway {
    let base = upstream.base_url();
    TestGateway::start(ca, |c| {
        c.upstream.overrides.insert("proxy.golang.org".into(), base);
        garage.configure(c);
    })
    .await
}

fn count(paths: &[String], want: &str) -> usize {
    paths.iter().filter(|p| p.as_str() == want).count()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_one_bucket_make_one_upstream_fetch() {
    let garage = tokio::task::spawn_blocking(Garage::start).await.unwrap();
    let ca = TestCa::new();
    let (script, zip) = script();
    let upstream = Upstream::tls(&ca, scripted(script)).await;
    let a = replica(&ca, &garage, &upstream).await;
    let b = replica(&ca, &garage, &upstream).await;

    // Concurrent cold load: 6 clients on each replica ask for the same zip, .mod and .info.
    let zip_path = format!("/{M}/@v/{V}.zip");
    let mut tasks = vec![];
    for gw in [&a, &b] {
        for _ in 0..6 {
            for path in [
                zip_path.clone(),
                format!("/{M}/@v/{V}.mod"),
                format!("/{M}/@v/{V}.info"),
            ] {
                let (proxy, roots) = (gw.proxy, gw.roots());
                tasks.push(tokio::spawn(async move {
                    let (stream, head) = connect(proxy, "proxy.golang.org:443", "").await;
                    assert_eq!(status(&head), 200);
                    let tls = tls_connect(stream, "proxy.golang.org", roots, Alpn::H1)
                        .await
                        .unwrap();
                    let (st, _, body) = http_get(tls, "proxy.golang.org", &path, Alpn::H1).await;
                    (path, st, body)
                }));
            }
        }
    }
    for t in tasks {
        let (path, st, body) = t.await.unwrap();
        assert_eq!(st, 200, "{path}");
        if path == zip_path {
            assert!(body[..] == zip[..], "every client gets the exact zip");
        }
    }
    let paths = upstream.paths();
    assert_eq!(
        count(&paths, &zip_path),
        1,
        "one upstream fetch of the zip for both replicas: {paths:?}"
    );
    assert_eq!(count(&paths, &format!("/{M}/@v/{V}.mod")), 1, "{paths:?}");
    assert_eq!(count(&paths, &format!("/{M}/@v/{V}.info")), 1, "{paths:?}");
    let (ma, mb) = (a.metrics().await, b.metrics().await);
    let won = metric(&ma, "modgate_shared_cache_total", &[("event", "lock_won")])
        + metric(&mb, "modgate_shared_cache_total", &[("event", "lock_won")]);
    let from_bucket = metric(&ma, "modgate_shared_cache_total", &[("event", "hit")])
        + metric(&mb, "modgate_shared_cache_total", &[("event", "hit")]);
    assert_eq!(won, 3.0, "one replica led each key");
    assert_eq!(from_bucket, 3.0, "the other took each key from the bucket");

    // A third replica, cold on disk, is served from the bucket without asking upstream.
    let c = replica(&ca, &garage, &upstream).await;
    let (st, headers, body) = c.get("proxy.golang.org:443", &zip_path, Alpn::H2).await;
    assert_eq!(st, 200);
    assert!(body[..] == zip[..]);
    assert_eq!(headers.get("x-modgate-cache").unwrap(), "miss");
    assert_eq!(count(&upstream.paths(), &zip_path), 1);
    c.metric_reaches("modgate_shared_cache_total", &[("event", "hit")], 1.0)
        .await;

    // A mutable answer (the version list) fetched by one replica is fresh for the others too.
    let list = format!("/{M}/@v/list");
    let (st, _, body) = a.get("proxy.golang.org:443", &list, Alpn::H1).await;
    assert_eq!((st, &body[..]), (http::StatusCode::OK, &b"v1.0.0\n"[..]));
    // Wait until it is published (the replicas published 3 objects between them before).
    for _ in 0..100 {
        let published =
            |m: &str| metric(m, "modgate_shared_cache_total", &[("event", "published")]);
        if published(&a.metrics().await) + published(&b.metrics().await) >= 4.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (st, _, body) = b.get("proxy.golang.org:443", &list, Alpn::H1).await;
    assert_eq!((st, &body[..]), (http::StatusCode::OK, &b"v1.0.0\n"[..]));
    assert_eq!(
        count(&upstream.paths(), &list),
        1,
        "the list came from the bucket"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupt_object_in_the_bucket_is_refused_and_replaced() {
    let garage = tokio::task::spawn_blocking(Garage::start).await.unwrap();
    let ca = TestCa::new();
    let (script, zip) = script();
    let upstream = Upstream::tls(&ca, scripted(script)).await;
    let a = replica(&ca, &garage, &upstream).await;
    let zip_path = format!("/{M}/@v/{V}.zip");
    let (st, _, _) = a.get("proxy.golang.org:443", &zip_path, Alpn::H1).await;
    assert_eq!(st, 200);
    a.metric_reaches("modgate_shared_cache_total", &[("event", "published")], 1.0)
        .await;

    // Overwrite the shared object with garbage, as a broken writer or bit rot might.
    let object = find_object(&garage, "v1.0.0.zip");
    put_object(&garage, &object, b"not a zip");

    let b = replica(&ca, &garage, &upstream).await;
    let (st, _, body) = b.get("proxy.golang.org:443", &zip_path, Alpn::H1).await;
    assert_eq!(st, 200);
    assert!(
        body[..] == zip[..],
        "the client never sees the corrupt object"
    );
    b.metric_reaches("modgate_shared_cache_total", &[("event", "rejected")], 1.0)
        .await;
    assert_eq!(count(&upstream.paths(), &zip_path), 2, "refetched once");
}

/// The object key under the bucket whose name ends with `suffix`.
fn find_object(garage: &Garage, suffix: &str) -> String {
    let out = s3(
        garage,
        "GET",
        &format!("/{}?list-type=2", garage.bucket),
        None,
    );
    out.split("<Key>")
        .skip(1)
        .filter_map(|s| s.split("</Key>").next())
        .find(|k| k.ends_with(suffix) && !k.contains("/locks/"))
        .unwrap_or_else(|| panic!("no object ending {suffix}: {out}"))
        .to_string()
}

fn put_object(garage: &Garage, key: &str, data: &[u8]) {
    let key = key
        .replace('%', "%25")
        .replace('@', "%40")
        .replace('!', "%21");
    s3(
        garage,
        "PUT",
        &format!("/{}/{key}", garage.bucket),
        Some(data),
    );
}

/// One signed S3 request with curl (SigV4), returning the body.
fn s3(garage: &Garage, method: &str, path: &str, data: Option<&[u8]>) -> String {
    let key = std::fs::read_to_string(&garage.key_file).unwrap();
    let secret = std::fs::read_to_string(&garage.secret_file).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("body");
    std::fs::write(&body, data.unwrap_or_default()).unwrap();
    let mut cmd = Command::new(tool("curl"));
    cmd.args(["-sS", "-f", "-X", method])
        .args(["--aws-sigv4", "aws:amz:garage:s3"])
        .arg("--user")
        .arg(format!("{}:{}", key.trim(), secret.trim()))
        .args(["-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD"]);
    if data.is_some() {
        cmd.arg("--data-binary").arg(format!("@{}", body.display()));
    }
    let out = cmd
        .arg(format!("{}{}", garage.endpoint, path))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "curl {method} {path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
