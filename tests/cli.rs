//! The `modgate` binary: configuration commands, CA commands, and serve's lifecycle.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::util::{modgate_command, read_banner};

const BIN: &str = env!("CARGO_BIN_EXE_modgate");

fn run(args: &[&str], dir: &std::path::Path) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A `modgate serve --config c.toml` started in a directory, with its banner read.
struct Served {
    child: std::process::Child,
    banner: Vec<String>,
    proxy: String,
    admin: String,
}

/// Writes `config` to `dir/c.toml`, starts the binary there and reads the whole banner.
fn serve(dir: &std::path::Path, config: &str, stderr: Stdio) -> Served {
    std::fs::write(dir.join("c.toml"), config).unwrap();
    let mut child = modgate_command()
        .args(["serve", "--config", "c.toml"])
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let (banner, proxy) = read_banner(&mut child);
    let admin = banner
        .iter()
        .find_map(|l| l.split_once("admin on http://"))
        .map(|(_, rest)| rest.split_whitespace().next().unwrap().to_string())
        .unwrap_or_default();
    Served {
        child,
        banner,
        proxy,
        admin,
    }
}

/// Ephemeral loopback ports, everything else from `extra` or the defaults.
/// A plain-HTTP server on loopback answering every request `200 ok`, on its own thread.
fn plain_ok_server() -> std::net::SocketAddr {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let mut head = vec![];
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && s.read(&mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            let _ = s.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n",
            );
        }
    });
    addr
}

fn ports(extra: &str) -> String {
    format!("[proxy]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n{extra}")
}

#[test]
fn config_example_checks_clean_and_bad_keys_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, example, _) = run(&["config", "example"], dir.path());
    assert!(ok);
    assert!(example.contains("[upstream]") && example.contains("listen = \"127.0.0.1:3128\""));
    std::fs::write(dir.path().join("example.toml"), &example).unwrap();
    let (ok, out, err) = run(&["config", "check", "example.toml"], dir.path());
    assert!(ok, "{err}");
    assert!(out.contains("ok"));

    std::fs::write(
        dir.path().join("bad.toml"),
        "[upstream]\nresponse_timeout = \"forever\"\n",
    )
    .unwrap();
    let (ok, _, err) = run(&["config", "check", "bad.toml"], dir.path());
    assert!(!ok);
    assert!(err.contains("upstream.response_timeout"), "{err}");

    std::fs::write(
        dir.path().join("typo.toml"),
        "[proxy]\nlisten_addr = \"127.0.0.1:1\"\n",
    )
    .unwrap();
    let (ok, _, err) = run(&["config", "check", "typo.toml"], dir.path());
    assert!(!ok);
    assert!(err.contains("listen_addr"), "{err}");
}

#[test]
fn ca_init_and_show() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out, err) = run(&["ca", "init", "--dir", "myca"], dir.path());
    assert!(ok, "{err}");
    assert!(out.contains("SHA-256 fingerprint"));
    let (ok, _, err) = run(&["ca", "init", "--dir", "myca"], dir.path());
    assert!(!ok, "a second init must refuse");
    assert!(err.contains("already exists"), "{err}");
    let (ok, out, err) = run(&["ca", "show", "--dir", "myca"], dir.path());
    assert!(ok, "{err}");
    assert!(out.contains("-----BEGIN CERTIFICATE-----"));
    assert!(!out.contains("PRIVATE KEY"));
    assert!(out.contains("subject: CN="), "{out}");
    let expires = out.lines().find(|l| l.starts_with("expires: ")).unwrap();
    assert!(expires.contains("days from now)"), "{expires}");
    assert!(out.contains("export HTTPS_PROXY=http://127.0.0.1:3128"));
    assert!(out.contains("export SSL_CERT_FILE=") && out.contains("export GIT_SSL_CAINFO="));
    let fp = out
        .lines()
        .find(|l| l.starts_with("SHA-256 fingerprint: "))
        .unwrap();
    assert_eq!(fp.len(), "SHA-256 fingerprint: ".len() + 32 * 3 - 1);
}

#[test]
fn with_sumdb_serve_ca_init_makes_the_signing_key_and_ca_show_prints_gosumdb() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("c.toml"),
        "[ca]\ndir = \"myca\"\n[sumdb]\nserve = \"sum.corp.example\"\n",
    )
    .unwrap();
    let (ok, out, err) = run(&["ca", "init", "--config", "c.toml"], dir.path());
    assert!(ok, "{err}");
    let key_line = out
        .lines()
        .find_map(|l| l.strip_prefix("checksum-database key: "))
        .unwrap_or_else(|| panic!("{out}"))
        .to_string();
    assert!(key_line.starts_with("sum.corp.example+"), "{key_line}");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.path().join("myca/sumdb.key"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let (ok, out, err) = run(&["ca", "show", "--config", "c.toml"], dir.path());
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!("export GOSUMDB={key_line}\n")),
        "{out}"
    );
    assert!(!out.contains("PRIVATE+KEY"), "{out}");
    // The key parses as the go command parses GOSUMDB keys.
    modgate_core::gomod::note::VerifierKey::parse(&key_line).unwrap();
}

#[test]
fn cache_commands_never_create_a_cache() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("c.toml"),
        "[storage]\ndata_dir = \"nowhere\"\n",
    )
    .unwrap();
    for cmd in ["stats", "verify", "gc"] {
        let (ok, _, err) = run(&["cache", cmd, "--config", "c.toml"], dir.path());
        assert!(!ok, "{cmd}");
        assert!(
            err.contains("no module cache at nowhere/cache"),
            "{cmd}: {err}"
        );
    }
    assert!(!dir.path().join("nowhere").exists());
}

#[test]
fn a_missing_config_file_is_named_once_with_its_os_error() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, _, err) = run(&["serve", "--config", "missing.toml"], dir.path());
    assert!(!ok);
    assert!(
        err.contains("cannot read config file missing.toml"),
        "{err}"
    );
    assert_eq!(err.matches("os error 2").count(), 1, "{err}");
}

#[test]
fn serve_refuses_a_world_readable_ca_key() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    assert!(run(&["ca", "init"], dir.path()).0);
    let key = dir.path().join("certs/ca-key.pem");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (ok, _, err) = run(&["serve"], dir.path());
    assert!(!ok);
    assert!(err.contains("readable by group or others"), "{err}");
}

#[test]
fn serve_with_defaults_creates_a_ca_prints_agent_lines_and_exits_0_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    // Defaults, except ephemeral ports so tests can run side by side.
    let Served {
        mut child, banner, ..
    } = serve(dir.path(), &ports(""), Stdio::null());
    let text = banner.join("\n");
    assert!(text.contains("created a new CA"), "{text}");
    assert!(
        text.contains("export HTTPS_PROXY=http://127.0.0.1:"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "export SSL_CERT_FILE={}",
            dir.path().join("certs/ca.pem").display()
        )),
        "{text}"
    );
    assert!(dir.path().join("data").is_dir(), "data directory created");
    let mode = std::fs::metadata(dir.path().join("certs/ca-key.pem")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(mode.permissions().mode() & 0o777, 0o600);

    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "exit status {status:?}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "modgate did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn json_access_log_has_one_line_per_request_with_its_fields() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let Served {
        mut child,
        proxy,
        admin,
        ..
    } = serve(
        dir.path(),
        &ports("[log]\nformat = \"json\"\n[egress]\nallow_addresses = [\"127.0.0.0/8\"]\n"),
        Stdio::piped(),
    );
    // One plain-HTTP request through the proxy to a server on loopback (allowed above).
    let target = plain_ok_server();
    let mut s = std::net::TcpStream::connect(&proxy).unwrap();
    write!(
        s,
        "GET http://{target}/healthz HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    // And one refused: to the admin listener, which agents never reach through the proxy.
    let mut s = std::net::TcpStream::connect(&proxy).unwrap();
    write!(
        s,
        "GET http://{admin}/metrics HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 403"), "{resp}");

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(child.wait().unwrap().success());
    let access: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .unwrap_or_else(|e| panic!("not JSON: {l}: {e}"))
        })
        .filter(|v| v["target"] == "modgate::access")
        .collect();
    assert_eq!(access.len(), 2, "{stderr}");
    // The refusal's reason is in its line; a success has none.
    assert_eq!(access[1]["status"], 403, "{stderr}");
    assert!(
        access[1]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("is one of modgate's own listeners")),
        "{stderr}"
    );
    assert!(access[0]["reason"].is_null(), "{stderr}");
    let line = &access[0];
    for field in [
        "request_id",
        "client",
        "host",
        "method",
        "path",
        "status",
        "bytes",
        "total_ms",
        "upstream_ms",
    ] {
        assert!(!line[field].is_null(), "missing {field}: {line}");
    }
    assert_eq!(line["path"], "/healthz");
    assert_eq!(line["status"], 200);
    assert_eq!(line["bytes"], 3);
}

#[test]
fn explain_prints_target_rule_route_upstream_and_cache_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("c.toml"),
        "[modules]\nprivate = \"*.corp.example\"\n",
    )
    .unwrap();
    let (ok, out, err) = run(
        &["explain", "golang.org/x/mod", "--config", "c.toml"],
        dir.path(),
    );
    assert!(ok, "{err}");
    for want in [
        "target:      goproxy list golang.org/x/mod",
        "rule:        none (public)",
        "upstream:    https://proxy.golang.org/golang.org/x/mod/@v/list",
        "cache key:   mod/golang.org/x/mod/@v/list",
    ] {
        assert!(out.contains(want), "{want}\n{out}");
    }
    let (ok, out, _) = run(
        &["explain", "git.corp.example/team/lib", "--config", "c.toml"],
        dir.path(),
    );
    assert!(ok);
    assert!(out.contains("private (\"*.corp.example\""), "{out}");
    assert!(!out.contains("upstream:"), "{out}");
    let (ok, _, err) = run(&["explain", "not a path"], dir.path());
    assert!(!ok);
    assert!(err.contains("malformed module path"), "{err}");
}

#[test]
fn sighup_reloads_the_configuration_file() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let cfg = |deny: &str| {
        ports(&format!(
            "[egress]\ndeny = [{deny}]\nallow_addresses = [\"127.0.0.0/8\"]\n"
        ))
    };
    let target = plain_ok_server();
    let Served {
        mut child,
        proxy,
        admin,
        ..
    } = serve(dir.path(), &cfg(""), Stdio::null());
    let _ = admin;
    let through = || {
        let mut s = std::net::TcpStream::connect(&proxy).unwrap();
        write!(
            s,
            "GET http://{target}/healthz HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        resp
    };
    assert!(through().starts_with("HTTP/1.1 200"));
    std::fs::write(dir.path().join("c.toml"), cfg("\"127.0.0.1\"")).unwrap();
    Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    let mut denied = false;
    for _ in 0..100 {
        if through().starts_with("HTTP/1.1 403") {
            denied = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(denied, "SIGHUP applied the new egress rule");
    assert!(
        child.try_wait().unwrap().is_none(),
        "still running after SIGHUP"
    );
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
}

#[test]
fn cache_stats_verify_and_gc() {
    use crate::util::module_zip;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("c.toml"),
        "[admin]\nlisten = \"127.0.0.1:1\"\n[cache]\nmax_size = \"1MiB\"\n",
    )
    .unwrap();
    let cache = dir.path().join("data/cache");
    let put = |key: &str, data: &[u8]| {
        let p = cache.join(key);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    };
    // Oldest first: a valid 1.5 MB go.mod that gc must evict.
    put(
        "mod/example.com/big/@v/v1.0.0.mod",
        format!("module example.com/big\n// {}\n", "x".repeat(1_500_000)).as_bytes(),
    );
    std::thread::sleep(Duration::from_millis(20));
    let good = module_zip("example.com/good", "v1.0.0", &[("a.go", "package a\n")]);
    put("mod/example.com/good/@v/v1.0.0.zip", &good);
    put(
        "mod/example.com/evil/@v/v1.0.0.zip",
        &module_zip("example.com/other", "v1.0.0", &[("a.go", "x")]),
    );
    put(
        "mod/example.com/good/@v/v1.0.0.info",
        br#"{"Version":"v9.9.9"}"#,
    );
    put(
        "mod/example.com/good/@v/v1.0.0.mod",
        b"module example.com/tampered\n",
    );
    // What an upstream that closed early, or flipped bits, would have left before fills were
    // checked: a truncated .info, a truncated go.mod, a list cut mid-line, a zip whose file
    // data fails its CRC-32.
    put(
        "mod/example.com/cut/@v/v1.0.0.info",
        br#"{"Version": "v1.0.0""#,
    );
    put("mod/example.com/cut/@v/v1.0.0.mod", b"module exa");
    put("mod/example.com/cut/@v/list", b"v1.0.0\nv1.1");
    put(
        "mod/example.com/flip/@v/v1.0.0.zip",
        &crate::util::flip_file_data(&module_zip(
            "example.com/flip",
            "v1.0.0",
            &[("a.go", &crate::util::noise(4096))],
        )),
    );
    // A cached checksum-database record for example.com/good@v1.0.0.
    let zip_hash = modgate_core::gomod::dirhash::hash_zip(std::io::Cursor::new(&good)).unwrap();
    let mod_hash = modgate_core::gomod::dirhash::hash_go_mod(b"module example.com/good\n");
    put(
        "sumdb/sum.golang.org/lookup/example.com/good@v1.0.0",
        format!("7\nexample.com/good v1.0.0 {zip_hash}\nexample.com/good v1.0.0/go.mod {mod_hash}\n\ngo.sum database tree\n8\nx\n").as_bytes(),
    );

    let (ok, out, err) = run(&["cache", "stats", "--config", "c.toml"], dir.path());
    assert!(ok, "{err}");
    assert!(out.contains("entries:     10"), "{out}");
    assert!(
        out.contains("index:       no gateway serves this cache; read from the directory"),
        "{out}"
    );
    assert!(
        out.contains("oldest:      mod/example.com/big/@v/v1.0.0.mod"),
        "{out}"
    );
    assert!(
        out.contains("hit ratio:   unknown (no gateway answering"),
        "{out}"
    );

    let (ok, out, _) = run(&["cache", "verify", "--config", "c.toml"], dir.path());
    assert!(!ok, "corrupt entries make verify fail");
    for removed in [
        "example.com/evil/@v/v1.0.0.zip",
        "example.com/good/@v/v1.0.0.info",
        "example.com/good/@v/v1.0.0.mod",
        "example.com/cut/@v/v1.0.0.info",
        "example.com/cut/@v/v1.0.0.mod",
        "example.com/cut/@v/list",
        "example.com/flip/@v/v1.0.0.zip",
    ] {
        assert!(
            out.contains(&format!("removed mod/{removed}")),
            "{removed}: {out}"
        );
        assert!(!cache.join("mod").join(removed).exists());
    }
    assert!(
        cache.join("mod/example.com/good/@v/v1.0.0.zip").exists(),
        "the good zip matches its record"
    );
    let (ok, out, _) = run(&["cache", "verify", "--config", "c.toml"], dir.path());
    assert!(ok, "{out}");

    let (ok, out, err) = run(&["cache", "gc", "--config", "c.toml"], dir.path());
    assert!(ok, "{err}");
    assert!(out.contains("evicted 1 entries"), "{out}");
    assert!(!cache.join("mod/example.com/big/@v/v1.0.0.mod").exists());
    assert!(cache.join("mod/example.com/good/@v/v1.0.0.zip").exists());
}

#[test]
fn environment_overrides_reach_the_commands() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("c.toml"), "[log]\nlevel = \"info\"\n").unwrap();
    let check = |name: &str, value: &str| {
        Command::new(BIN)
            .args(["config", "check", "c.toml"])
            .current_dir(dir.path())
            .env(name, value)
            .output()
            .unwrap()
    };
    let out = check("MODGATE_LOG__LEVEL", "debug");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = check("MODGATE_LOG__LEVEL", "verbose");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("log.level") && err.contains("MODGATE_LOG__LEVEL"),
        "{err}"
    );
}

/// Runs `modgate auth hash` on a pseudo-terminal (Python's pty), typing `first` and `again` at
/// its prompts; returns what the terminal showed.
fn hash_on_a_terminal(first: &str, again: &str) -> String {
    let script = r#"
import os, pty, sys, termios, time
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[1], [sys.argv[1], "auth", "hash"])
out = b""
def until(word):
    global out
    while word not in out:
        chunk = os.read(fd, 1024)
        if not chunk:
            return
        out += chunk
def typed(text):
    # As a person types: once the prompt has turned echo off (typed-ahead input would be echoed).
    deadline = time.time() + 10
    while termios.tcgetattr(fd)[3] & termios.ECHO and time.time() < deadline:
        time.sleep(0.01)
    os.write(fd, text.encode() + b"\n")
until(b"Password: ")
typed(sys.argv[2])
until(b"Again: ")
typed(sys.argv[3])
while True:
    try:
        chunk = os.read(fd, 1024)
    except OSError:
        break
    if not chunk:
        break
    out += chunk
os.waitpid(pid, 0)
sys.stdout.write(out.decode())
"#;
    let python = std::path::Path::new("/usr/bin/python3");
    assert!(python.is_file(), "/usr/bin/python3 is required");
    let out = Command::new(python)
        .args(["-c", script, BIN, first, again])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn auth_hash_asks_twice_at_a_hidden_prompt() {
    let shown = hash_on_a_terminal("s3cret-pass", "s3cret-pass");
    // The password is not echoed; the hash verifies it.
    assert!(!shown.contains("s3cret-pass"), "{shown}");
    let hash = shown
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("$argon2"))
        .unwrap_or_else(|| panic!("{shown}"));
    assert!(modgate::ingress::auth::verify_password("s3cret-pass", hash));
    let shown = hash_on_a_terminal("one", "two");
    assert!(shown.contains("the passwords differ"), "{shown}");
    assert!(!shown.contains("$argon2"), "{shown}");
}

/// The metrics of the gateway whose admin listener is `admin`.
fn scrape(admin: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(admin).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    resp
}

#[test]
fn a_configuration_file_swapped_like_a_configmap_is_reloaded_by_itself() {
    // Kubernetes mounts a ConfigMap as a directory: the file is a symlink through `..data`,
    // which an update points at a new directory.
    let dir = tempfile::tempdir().unwrap();
    let base = "[proxy]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\nwatch_config = \"100ms\"\n";
    let v1 = dir.path().join("..v1");
    std::fs::create_dir(&v1).unwrap();
    std::fs::write(v1.join("c.toml"), base).unwrap();
    std::os::unix::fs::symlink("..v1", dir.path().join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/c.toml", dir.path().join("watched.toml")).unwrap();
    let mut child = modgate_command()
        .args(["serve", "--config", "watched.toml"])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut admin = String::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(rest) = line.split_once("admin on http://") {
            admin = rest.1.split_whitespace().next().unwrap().to_string();
            break;
        }
    }
    let reloads = |outcome: &str| {
        scrape(&admin)
            .lines()
            .find(|l| {
                l.starts_with(&format!(
                    "modgate_config_reloads_total{{outcome=\"{outcome}\"}}"
                ))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(-1.0)
    };
    let wait_for = |outcome: &str, want: f64| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while reloads(outcome) < want && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        reloads(outcome)
    };
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(reloads("ok"), 0.0, "nothing changed yet");
    // The update: a new directory, and `..data` swapped to it in one rename.
    let v2 = dir.path().join("..v2");
    std::fs::create_dir(&v2).unwrap();
    std::fs::write(
        v2.join("c.toml"),
        format!("{base}[modules]\nprivate = [\"corp.example\"]\n"),
    )
    .unwrap();
    std::os::unix::fs::symlink("..v2", dir.path().join("..data.new")).unwrap();
    std::fs::rename(dir.path().join("..data.new"), dir.path().join("..data")).unwrap();
    assert_eq!(wait_for("ok", 1.0), 1.0);
    // A broken update is refused (the running rules stay), and counted.
    let v3 = dir.path().join("..v3");
    std::fs::create_dir(&v3).unwrap();
    std::fs::write(v3.join("c.toml"), format!("{base}[modules]\nprivate = 7\n")).unwrap();
    std::os::unix::fs::symlink("..v3", dir.path().join("..data.new")).unwrap();
    std::fs::rename(dir.path().join("..data.new"), dir.path().join("..data")).unwrap();
    assert_eq!(wait_for("error", 1.0), 1.0);
    // An empty file (an editor that truncated it and has not written yet) is not reloaded.
    let v4 = dir.path().join("..v4");
    std::fs::create_dir(&v4).unwrap();
    std::fs::write(v4.join("c.toml"), "").unwrap();
    std::os::unix::fs::symlink("..v4", dir.path().join("..data.new")).unwrap();
    std::fs::rename(dir.path().join("..data.new"), dir.path().join("..data")).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(600));
    assert_eq!((reloads("ok"), reloads("error")), (1.0, 1.0));
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn cache_stats_reports_the_hit_ratio_of_the_gateway_serving_its_data_directory_only() {
    let dir = tempfile::tempdir().unwrap();
    let ports = "[proxy]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n";
    // A cache of its own in `other` (made by a gateway that ran there once).
    let other_dir = dir.path().join("o");
    std::fs::create_dir_all(&other_dir).unwrap();
    let mut once = serve(
        &other_dir,
        &format!("{ports}[storage]\ndata_dir = \"../other\"\n"),
        Stdio::null(),
    );
    let _ = once.child.kill();
    let _ = once.child.wait();
    let mut served = serve(
        dir.path(),
        &format!("{ports}[storage]\ndata_dir = \"mine\"\n"),
        Stdio::null(),
    );
    let stats = |data_dir: &str| {
        let cfg = format!(
            "[admin]\nlisten = \"{}\"\n[storage]\ndata_dir = \"{data_dir}\"\n",
            served.admin
        );
        std::fs::write(dir.path().join("stats.toml"), cfg).unwrap();
        let (ok, out, err) = run(&["cache", "stats", "--config", "stats.toml"], dir.path());
        assert!(ok, "{err}");
        out
    };
    // The gateway in front of this cache: its numbers.
    let out = stats("mine");
    assert!(
        out.contains("hit ratio:   no cacheable requests since the gateway started"),
        "{out}"
    );
    assert!(out.contains("index:       the running gateway's"), "{out}");
    // Another cache, with that gateway on the admin address: not its numbers.
    let out = stats("other");
    assert!(
        out.contains("hit ratio:   unknown (the gateway answering on")
            && out.contains("serves another data directory"),
        "{out}"
    );
    assert!(
        out.contains("index:       no gateway serves this cache"),
        "{out}"
    );
    let _ = served.child.kill();
    let _ = served.child.wait();
}

#[test]
fn request_spans_are_exported_to_a_real_otlp_receiver() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let spans = dir.path().join("spans.jsonl");
    // The receiver runs on the python3 that has opentelemetry-proto (installed by .ci/run).
    let mut receiver = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/otlp/receiver.py"
        ))
        .arg(&spans)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut port = String::new();
    BufReader::new(receiver.stdout.take().unwrap())
        .read_line(&mut port)
        .unwrap();
    let port: u16 = port.trim().parse().unwrap_or_else(|_| {
        panic!("the OTLP receiver did not start (python3 with opentelemetry-proto is required)")
    });
    let Served {
        mut child, proxy, ..
    } = serve(
        dir.path(),
        &ports(&format!(
            "[egress]\nallow_addresses = [\"127.0.0.0/8\"]\n[traces]\notlp_endpoint = \"http://127.0.0.1:{port}/v1/traces\"\nservice_name = \"modgate-test\"\n"
        )),
        Stdio::null(),
    );
    let target = plain_ok_server();
    let mut s = std::net::TcpStream::connect(&proxy).unwrap();
    write!(
        s,
        "GET http://{target}/traced HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    // A clean stop exports what is buffered.
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let _ = child.wait();
    let _ = receiver.kill();
    let _ = receiver.wait();
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&spans)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let request = lines
        .iter()
        .find(|s| s["name"] == "request")
        .unwrap_or_else(|| panic!("no request span: {lines:#?}"));
    assert_eq!(request["service"], "modgate-test");
    assert_eq!(request["attributes"]["route"], "http_forward", "{request}");
    // Its parent spans (the connection and the client) are in the same trace.
    let client = lines
        .iter()
        .find(|s| s["name"] == "client")
        .unwrap_or_else(|| panic!("no client span: {lines:#?}"));
    assert_eq!(client["trace_id"], request["trace_id"]);
    assert!(!request["parent"].as_str().unwrap().is_empty());
}
