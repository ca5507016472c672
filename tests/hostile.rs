//! The hostile-input suite: malformed or hostile input across the wire, TLS, HTTP/2, module
//! paths and upstream responses. Each case states the expected status (or that the connection is
//! closed); after every case a normal client must still be served, and nothing may have been
//! written outside the data directory.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::util::*;

/// What a case must end in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Status(u16),
    /// The connection is closed without an HTTP answer (TLS refusals, timeouts).
    Closed,
}

struct Env {
    gw: TestGateway,
    up: Upstream,
    script: Arc<Script>,
}

async fn env() -> Env {
    let ca = TestCa::new();
    let script = Arc::new(Script::default());
    script.ok("/example.com/ok/@v/list", "v1.0.0\n");
    let up = Upstream::tls(&ca, scripted(script.clone())).await;
    let base = up.base_url();
    let gw = TestGateway::start(&ca, move |c| {
        c.upstream.overrides.insert("proxy.golang.org".into(), base);
        c.proxy.header_read_timeout = Duration::from_millis(400);
        c.intercept.tls_handshake_timeout = Duration::from_millis(400);
        c.upstream.response_timeout = Duration::from_millis(800);
        c.intercept.hosts.push("127.0.0.1".into());
        // The GOPROXY endpoint gets the same hostile input as the intercepted proxy host.
        c.endpoint.listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    // Keep the test CA alive through the upstream's certificate only.
    std::mem::forget(ca);
    Env { gw, up, script }
}

/// Sends raw bytes to the proxy listener; returns the status or `Closed`.
async fn raw(gw: &TestGateway, bytes: &[u8]) -> Expect {
    let mut s = TcpStream::connect(gw.proxy).await.unwrap();
    let _ = s.write_all(bytes).await;
    read_outcome(&mut s).await
}

async fn read_outcome<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> Expect {
    let mut buf = vec![0u8; 4096];
    match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
        Ok(Ok(n)) if n > 0 => {
            let head = String::from_utf8_lossy(&buf[..n]);
            Expect::Status(status(&head))
        }
        Ok(_) => Expect::Closed,
        Err(_) => panic!("no answer and no close within 5s"),
    }
}

/// A GOPROXY request on the intercepted proxy host; returns its status.
async fn module_path(gw: &TestGateway, path: &str) -> Expect {
    let (stream, head) = connect(gw.proxy, "proxy.golang.org:443", "").await;
    assert_eq!(status(&head), 200);
    let mut tls = tls_connect(stream, "proxy.golang.org", gw.roots(), Alpn::H1)
        .await
        .unwrap();
    tls.write_all(format!("GET {path} HTTP/1.1\r\nHost: proxy.golang.org\r\n\r\n").as_bytes())
        .await
        .unwrap();
    read_outcome(&mut tls).await
}

/// A TLS connection to the GOPROXY endpoint (as `localhost`), HTTP/1.1.
async fn endpoint_tls(gw: &TestGateway) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let stream = TcpStream::connect(gw.gw().endpoint_addr().unwrap())
        .await
        .unwrap();
    tls_connect(stream, "localhost", gw.roots(), Alpn::H1)
        .await
        .unwrap()
}

/// The same GOPROXY request to the GOPROXY endpoint; returns its status.
async fn endpoint_path(gw: &TestGateway, path: &str) -> Expect {
    let mut tls = endpoint_tls(gw).await;
    tls.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .unwrap();
    read_outcome(&mut tls).await
}

/// A normal client still gets a cache-able answer.
async fn still_serves(env: &Env) {
    let (status, _, body) = env
        .gw
        .get("proxy.golang.org:443", "/example.com/ok/@v/list", Alpn::H2)
        .await;
    assert_eq!((status.as_u16(), &body[..]), (200, &b"v1.0.0\n"[..]));
}

/// Nothing outside `data/` and `certs/` (beside the test's own `modgate.toml`), and no file
/// named after a hostile path anywhere.
fn nothing_outside_data_dir(env: &Env) {
    let root = env.gw.dir.path();
    let mut top: Vec<String> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    assert_eq!(top, vec!["certs", "data", "modgate.toml"]);
    let mut all = vec![];
    walk(root, &mut all);
    for f in &all {
        let rel = &f[root.display().to_string().len()..];
        assert!(
            !rel.split('/')
                .any(|c| c == ".." || c.contains("passwd") || c.contains("evil")),
            "unexpected file {f}"
        );
    }
    for outside in ["/tmp/evil", "/tmp/passwd", "/etc/evil"] {
        assert!(
            !std::path::Path::new(outside).exists(),
            "{outside} was created"
        );
    }
}

fn walk(dir: &std::path::Path, out: &mut Vec<String>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        if e.file_type().unwrap().is_dir() {
            walk(&p, out);
        } else {
            out.push(p.display().to_string());
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_wire_input() {
    let env = env().await;
    let long_host = format!("{}.example", "a".repeat(300));
    let many_headers: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    let big_header = format!("X-Big: {}\r\n", "b".repeat(100_000));
    let cases: Vec<(&str, Vec<u8>, Expect)> = vec![
        ("CONNECT without a port", b"CONNECT example.org HTTP/1.1\r\n\r\n".to_vec(), Expect::Status(400)),
        ("CONNECT to port 0", b"CONNECT example.org:0 HTTP/1.1\r\n\r\n".to_vec(), Expect::Status(400)),
        ("CONNECT to port 99999", b"CONNECT example.org:99999 HTTP/1.1\r\n\r\n".to_vec(), Expect::Status(400)),
        ("CONNECT with user info", b"CONNECT u:p@example.org:443 HTTP/1.1\r\n\r\n".to_vec(), Expect::Status(400)),
        ("CONNECT to an empty target", b"CONNECT  HTTP/1.1\r\n\r\n".to_vec(), Expect::Status(400)),
        ("CONNECT to an IPv6 literal without port", b"CONNECT [::1] HTTP/1.1\r\n\r\n".to_vec(), Expect::Status(400)),
        ("CONNECT to a closed IPv6 port", b"CONNECT [::1]:1 HTTP/1.1\r\n\r\n".to_vec(), Expect::Status(502)),
        ("CONNECT host with bad characters", b"CONNECT ex!mple.org:443 HTTP/1.1\r\n\r\n".to_vec(), Expect::Status(400)),
        ("CONNECT host over 253 characters", format!("CONNECT {long_host}:443 HTTP/1.1\r\n\r\n").into_bytes(), Expect::Status(400)),
        ("a line of garbage", b"\x01\x02\x03 garbage\r\n\r\n".to_vec(), Expect::Status(400)),
        ("HTTP/0.9 style request", b"GET /\r\n\r\n".to_vec(), Expect::Status(400)),
        ("oversized header", format!("CONNECT example.org:443 HTTP/1.1\r\n{big_header}\r\n").into_bytes(), Expect::Status(431)),
        ("150 headers", format!("CONNECT example.org:443 HTTP/1.1\r\n{many_headers}\r\n").into_bytes(), Expect::Status(431)),
        ("NUL in the request line", b"CONNECT exam\0ple.org:443 HTTP/1.1\r\n\r\n".to_vec(), Expect::Status(400)),
        ("absolute-form https:// request", b"GET https://example.org/ HTTP/1.1\r\nHost: example.org\r\n\r\n".to_vec(), Expect::Status(400)),
        ("absolute-form http:// with a bad host", b"GET http://exa mple/ HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), Expect::Status(400)),
        // hyper drops Content-Length when Transfer-Encoding is present (RFC 9112 §6.3) and
        // forwards with chunked framing only: nothing to smuggle. The target is closed: 502.
        (
            "Content-Length and Transfer-Encoding together",
            b"POST http://127.0.0.1:1/ HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(),
            Expect::Status(502),
        ),
        ("origin-form request to the proxy", b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), Expect::Status(400)),
        ("a TLS ClientHello to the proxy port", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec(), Expect::Status(400)),
        ("slowloris: a request line never finished", b"CONNECT example.org:4".to_vec(), Expect::Closed),
        ("oversized query string", format!("GET http://127.0.0.1:1/?q={} HTTP/1.1\r\nHost: x\r\n\r\n", "q".repeat(100_000)).into_bytes(), Expect::Status(431)),
    ];
    for (name, bytes, want) in &cases {
        let got = raw(&env.gw, bytes).await;
        assert_eq!(got, *want, "{name}");
        still_serves(&env).await;
    }
    let m = env.gw.metrics().await;
    assert!(
        metric(&m, "modgate_limit_hits_total", &[("limit", "head_size")]) >= 1.0,
        "{m}"
    );
    assert!(
        metric(
            &m,
            "modgate_limit_hits_total",
            &[("limit", "header_timeout")]
        ) >= 1.0
    );
    nothing_outside_data_dir(&env);
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_tls_on_intercepted_tunnels() {
    let env = env().await;
    // Bytes that are not TLS.
    let (mut s, head) = connect(env.gw.proxy, "proxy.golang.org:443", "").await;
    assert_eq!(status(&head), 200);
    s.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    assert_eq!(
        read_outcome(&mut s).await,
        Expect::Status(400),
        "non-TLS bytes"
    );
    still_serves(&env).await;
    // A TLS record header followed by junk.
    let (mut s, _) = connect(env.gw.proxy, "proxy.golang.org:443", "").await;
    s.write_all(b"\x16\x03\x01\x00\x10this is not a hello")
        .await
        .unwrap();
    assert_eq!(
        read_outcome(&mut s).await,
        Expect::Closed,
        "junk ClientHello"
    );
    still_serves(&env).await;
    // SNI different from the CONNECT host.
    let (s, _) = connect(env.gw.proxy, "proxy.golang.org:443", "").await;
    assert!(
        tls_connect(s, "sum.golang.org", env.gw.roots(), Alpn::H1)
            .await
            .is_err(),
        "SNI mismatch"
    );
    still_serves(&env).await;
    // No SNI on a named host (rustls sends none for an IP name; CONNECT names a host).
    let (s, _) = connect(env.gw.proxy, "proxy.golang.org:443", "").await;
    assert!(
        tls_connect(s, "127.0.0.1", env.gw.roots(), Alpn::H1)
            .await
            .is_err(),
        "no SNI"
    );
    still_serves(&env).await;
    // A handshake that never starts: closed after the TLS timeout.
    let (mut s, _) = connect(env.gw.proxy, "proxy.golang.org:443", "").await;
    assert_eq!(
        read_outcome(&mut s).await,
        Expect::Closed,
        "stalled handshake"
    );
    still_serves(&env).await;
    let m = env
        .gw
        .metric_reaches(
            "modgate_limit_hits_total",
            &[("limit", "tls_handshake_timeout")],
            1.0,
        )
        .await;
    for reason in ["not_tls", "bad_client_hello", "sni_mismatch", "no_sni"] {
        assert!(
            metric(&m, "modgate_tls_failures_total", &[("reason", reason)]) >= 1.0,
            "{reason}\n{m}"
        );
    }
    assert!(
        metric(
            &m,
            "modgate_limit_hits_total",
            &[("limit", "tls_handshake_timeout")]
        ) >= 1.0,
        "{m}"
    );
    nothing_outside_data_dir(&env);
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_module_paths() {
    let env = env().await;
    let cases: &[(&str, &str, Expect)] = &[
        (
            "dot-dot element",
            "/example.com/../etc/passwd/@v/list",
            Expect::Status(400),
        ),
        (
            "percent-encoded dot-dot",
            "/example.com/%2e%2e/%2e%2e/etc/@v/list",
            Expect::Status(400),
        ),
        (
            "encoded slash",
            "/example.com%2F..%2F..%2Fevil/@v/list",
            Expect::Status(400),
        ),
        (
            "encoded backslash",
            "/example.com/a%5C..%5Cevil/@v/list",
            Expect::Status(400),
        ),
        (
            "bad bang escape",
            "/example.com/!A/@v/list",
            Expect::Status(400),
        ),
        (
            "bang before a digit",
            "/example.com/!1/@v/list",
            Expect::Status(400),
        ),
        (
            "trailing bang",
            "/example.com/a!/@v/list",
            Expect::Status(400),
        ),
        (
            "upper case in the escaped path",
            "/github.com/Azure/x/@v/list",
            Expect::Status(400),
        ),
        (
            "NUL byte",
            "/example.com/a%00b/@v/list",
            Expect::Status(400),
        ),
        (
            "control character",
            "/example.com/a%01b/@v/list",
            Expect::Status(400),
        ),
        (
            "malformed percent escape",
            "/example.com/a%zzb/@v/list",
            Expect::Status(400),
        ),
        (
            "invalid UTF-8",
            "/example.com/%ff%fe/@v/list",
            Expect::Status(400),
        ),
        (
            "Windows reserved name",
            "/example.com/con/@v/list",
            Expect::Status(400),
        ),
        (
            "Windows short name",
            "/example.com/progra~1/@v/list",
            Expect::Status(400),
        ),
        (
            "overlong element",
            &format!("/example.com/{}/@v/list", "a".repeat(400)),
            Expect::Status(404),
        ),
        (
            "non-canonical zip version",
            "/example.com/ok/@v/v1.zip",
            Expect::Status(400),
        ),
        (
            "version with an encoded slash",
            "/example.com/ok/@v/v1.0.0%2F..%2Fevil.info",
            Expect::Status(400),
        ),
        (
            "version dot-dot",
            "/example.com/ok/@v/...info",
            Expect::Status(400),
        ),
        (
            "version with a bang",
            "/example.com/ok/@v/v1.0.0!.mod",
            Expect::Status(400),
        ),
        (
            "major version mismatch",
            "/example.com/ok/@v/v3.0.0.mod",
            Expect::Status(404),
        ),
        (
            "unknown operation",
            "/example.com/ok/@v/v1.0.0.tar",
            Expect::Status(404),
        ),
        (
            "leading dash",
            "/-example.com/ok/@v/list",
            Expect::Status(400),
        ),
        (
            "first element without a dot",
            "/localhost/x/@v/list",
            Expect::Status(400),
        ),
        (
            "absolute path in the module",
            "//etc/passwd/@v/list",
            Expect::Status(400),
        ),
    ];
    assert!(cases.len() >= 20);
    for (name, path, want) in cases {
        assert_eq!(module_path(&env.gw, path).await, *want, "{name}: {path}");
        still_serves(&env).await;
        assert_eq!(
            endpoint_path(&env.gw, path).await,
            *want,
            "GOPROXY endpoint, {name}: {path}"
        );
        still_serves(&env).await;
    }
    // A write method on the read-only protocol.
    let (stream, _) = connect(env.gw.proxy, "proxy.golang.org:443", "").await;
    let mut tls = tls_connect(stream, "proxy.golang.org", env.gw.roots(), Alpn::H1)
        .await
        .unwrap();
    tls.write_all(b"POST /example.com/ok/@v/list HTTP/1.1\r\nHost: proxy.golang.org\r\nContent-Length: 0\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_outcome(&mut tls).await, Expect::Status(405));
    // Only the one overlong but valid path may have reached the upstream.
    let seen = env.up.paths();
    assert!(
        seen.iter()
            .all(|p| p == "/example.com/ok/@v/list" || p.len() > 400),
        "{seen:?}"
    );
    nothing_outside_data_dir(&env);
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_upstream_responses() {
    let env = env().await;
    let s = &env.script;
    s.set(
        "/example.com/huge/@v/v1.0.0.mod",
        Reply::Abort {
            declared: 1 << 40,
            sent: b"module x\n".to_vec(),
        },
    );
    let zip_ok = module_zip("example.com/trunc", "v1.0.0", &[("a.go", "package a\n")]);
    s.set(
        "/example.com/trunc/@v/v1.0.0.zip",
        Reply::Abort {
            declared: zip_ok.len() as u64,
            sent: zip_ok[..zip_ok.len() - 10].to_vec(),
        },
    );
    s.ok(
        "/example.com/outside/@v/v1.0.0.zip",
        module_zip("example.com/other", "v1.0.0", &[("a.go", "x")]),
    );
    s.ok(
        "/example.com/trav/@v/v1.0.0.zip",
        module_zip("example.com/trav", "v1.0.0", &[("../../evil.go", "x")]),
    );
    s.ok(
        "/example.com/dup/@v/v1.0.0.zip",
        module_zip("example.com/dup", "v1.0.0", &[("A.go", "x"), ("a.go", "y")]),
    );
    s.set(
        "/example.com/slow/@v/list",
        Reply::Body(200, b"v1.0.0\n".to_vec(), Duration::from_secs(3)),
    );
    s.set(
        "/example.com/teapot/@v/list",
        Reply::Body(418, b"I'm a teapot".to_vec(), Duration::ZERO),
    );
    for (path, want) in [
        ("/example.com/huge/@v/v1.0.0.mod", 502),
        ("/example.com/slow/@v/list", 504),
        ("/example.com/teapot/@v/list", 502),
    ] {
        assert_eq!(
            module_path(&env.gw, path).await,
            Expect::Status(want),
            "{path}"
        );
        still_serves(&env).await;
    }
    for path in [
        "/example.com/trunc/@v/v1.0.0.zip",
        "/example.com/outside/@v/v1.0.0.zip",
        "/example.com/trav/@v/v1.0.0.zip",
        "/example.com/dup/@v/v1.0.0.zip",
    ] {
        // The client sees an error status or a broken body, never a complete 200.
        assert!(
            !env.gw.complete_200("proxy.golang.org:443", path).await,
            "{path}"
        );
        still_serves(&env).await;
    }
    let m = env.gw.metrics().await;
    assert!(metric(&m, "modgate_limit_hits_total", &[("limit", "body_size")]) >= 1.0);
    assert!(
        metric(
            &m,
            "modgate_limit_hits_total",
            &[("limit", "upstream_timeout")]
        ) >= 1.0
    );
    let mut files = vec![];
    walk(&env.gw.dir.path().join("data/cache"), &mut files);
    assert!(
        files
            .iter()
            .all(|f| !f.ends_with(".zip") && !f.ends_with(".mod")),
        "{files:?}"
    );
    nothing_outside_data_dir(&env);
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_wire_and_tls_input_on_the_goproxy_endpoint() {
    let env = env().await;
    let addr = env.gw.gw().endpoint_addr().unwrap();
    // Below TLS: not TLS at all, a ClientHello never finished, a handshake that never starts.
    for (name, bytes) in [
        (
            "plain HTTP to the TLS endpoint",
            &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        ),
        (
            "a truncated ClientHello",
            &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..],
        ),
        ("nothing", &b""[..]),
    ] {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let _ = s.write_all(bytes).await;
        let mut buf = vec![0u8; 4096];
        let got = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("closed within the handshake timeout");
        assert!(
            !matches!(got, Ok(n) if n > 0 && buf.starts_with(b"HTTP/")),
            "{name}: no HTTP answer before TLS"
        );
        still_serves(&env).await;
    }
    // Over TLS: what the proxy listener refuses, the endpoint refuses alike.
    let many_headers: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    let big_header = format!("X-Big: {}\r\n", "b".repeat(100_000));
    let cases: Vec<(&str, Vec<u8>, Expect)> = vec![
        ("a line of garbage", b"\x01\x02\x03 garbage\r\n\r\n".to_vec(), Expect::Status(400)),
        ("oversized header", format!("GET /example.com/ok/@v/list HTTP/1.1\r\nHost: localhost\r\n{big_header}\r\n").into_bytes(), Expect::Status(431)),
        ("150 headers", format!("GET /example.com/ok/@v/list HTTP/1.1\r\nHost: localhost\r\n{many_headers}\r\n").into_bytes(), Expect::Status(431)),
        ("CONNECT to the endpoint", b"CONNECT example.org:443 HTTP/1.1\r\nHost: example.org:443\r\n\r\n".to_vec(), Expect::Status(404)),
        ("a write", b"POST /example.com/ok/@v/list HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n".to_vec(), Expect::Status(405)),
        ("absolute-form request elsewhere", b"GET http://127.0.0.1:1/ HTTP/1.1\r\nHost: 127.0.0.1:1\r\n\r\n".to_vec(), Expect::Status(404)),
        ("slowloris: a request line never finished", b"GET /example.com/ok/@v/li".to_vec(), Expect::Closed),
    ];
    for (name, bytes, want) in &cases {
        let mut tls = endpoint_tls(&env.gw).await;
        let _ = tls.write_all(bytes).await;
        assert_eq!(read_outcome(&mut tls).await, *want, "{name}");
        still_serves(&env).await;
    }
    // Nothing went to the upstream but the one good path.
    let seen = env.up.paths();
    assert!(
        seen.iter().all(|p| p == "/example.com/ok/@v/list"),
        "{seen:?}"
    );
    nothing_outside_data_dir(&env);
}

#[tokio::test(flavor = "multi_thread")]
async fn h2_abuse_is_contained() {
    let env = env().await;
    // Open many streams and reset them at once (the "rapid reset" pattern).
    let (send, conn_task) = h2_through(env.gw.proxy, "proxy.golang.org", env.gw.roots()).await;
    let mut futs = vec![];
    for _ in 0..500 {
        let mut send = send.clone();
        futs.push(tokio::spawn(async move {
            let req = http::Request::get("https://proxy.golang.org/example.com/slow/@v/list")
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap();
            // Dropped almost at once: the stream is reset.
            let _ = tokio::time::timeout(Duration::from_millis(5), send.send_request(req)).await;
        }));
    }
    for f in futs {
        let _ = f.await;
    }
    drop(send);
    let _ = tokio::time::timeout(Duration::from_secs(5), conn_task).await;
    still_serves(&env).await;
    nothing_outside_data_dir(&env);
}

#[tokio::test(flavor = "multi_thread")]
async fn connection_limit_answers_503_and_recovers() {
    let ca = TestCa::new();
    let gw = TestGateway::start(&ca, |c| c.proxy.max_connections = 2).await;
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = echo.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        loop {
            let (s, _) = echo.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut r, mut w) = tokio::io::split(s);
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let (t1, h1) = connect(gw.proxy, &echo_addr, "").await;
    let (_t2, h2) = connect(gw.proxy, &echo_addr, "").await;
    assert_eq!((status(&h1), status(&h2)), (200, 200));
    // Both permits are held by open tunnels: the third connection is refused.
    let mut s = TcpStream::connect(gw.proxy).await.unwrap();
    let (code, _, body) = read_response(&mut s).await;
    assert_eq!(code, 503);
    assert!(body.contains("too many connections"));
    let m = gw.metrics().await;
    assert_eq!(
        metric(&m, "modgate_limit_hits_total", &[("limit", "connections")]),
        1.0
    );
    // Closing a tunnel frees its permit.
    drop(t1);
    let mut ok = false;
    for _ in 0..50 {
        let (_s, head) = connect(gw.proxy, &echo_addr, "").await;
        if status(&head) == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "a permit came back after the tunnel closed");
}

async fn still_serves_files(gw: &TestGateway) {
    let (status, _, body) = gw.get("files.test:443", "/after", Alpn::H1).await;
    assert_eq!((status.as_u16(), &body[..]), (200, &b"slow"[..]));
}

#[tokio::test(flavor = "multi_thread")]
async fn h2_stream_limit_is_enforced_and_counted() {
    let ca = TestCa::new();
    let slow: Handler = Arc::new(|req, _| {
        // Version lists are valid ones: the gateway checks what it caches.
        let body = if req.uri.path().ends_with("/@v/list") {
            "v1.0.0\n"
        } else {
            "slow"
        };
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            http::Response::new(modgate::body::full(body))
        })
    });
    let up = Upstream::tls(&ca, slow).await;
    let base = up.base_url();
    // HTTP/2 is offered on module-proxy and checksum-database hosts.
    let gw = TestGateway::start(&ca, move |c| {
        c.intercept.hosts.push("files.test".into());
        c.upstream
            .overrides
            .insert("files.test".into(), base.clone());
        c.upstream.overrides.insert("proxy.golang.org".into(), base);
        c.intercept.h2_max_concurrent_streams = 2;
    })
    .await;
    let (send, _conn) = h2_through(gw.proxy, "proxy.golang.org", gw.roots()).await;
    let mut tasks = vec![];
    for i in 0..6 {
        let mut send = send.clone();
        tasks.push(tokio::spawn(async move {
            let req =
                http::Request::get(format!("https://proxy.golang.org/example.com/m{i}/@v/list"))
                    .body(http_body_util::Empty::<bytes::Bytes>::new())
                    .unwrap();
            send.ready().await.unwrap();
            send.send_request(req).await.map(|r| r.status())
        }));
    }
    let mut ok = 0;
    for t in tasks {
        // Streams over the limit are refused by the protocol (REFUSED_STREAM), nothing else.
        match t.await.unwrap() {
            Ok(status) => {
                assert_eq!(status, 200);
                ok += 1;
            }
            Err(e) => assert!(format!("{e:?}").contains("REFUSED_STREAM"), "{e:?}"),
        }
    }
    assert!(ok >= 2, "{ok}");
    still_serves_files(&gw).await;
    // The limit being reached was counted.
    let m = gw.metrics().await;
    assert!(
        metric(&m, "modgate_limit_hits_total", &[("limit", "h2_streams")]) >= 1.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_intercepted_h2_connections_are_closed() {
    let ca = TestCa::new();
    let up = Upstream::tls(&ca, fixed("v1.0.0\n")).await;
    let base = up.base_url();
    let gw = TestGateway::start(&ca, move |c| {
        c.upstream.overrides.insert("proxy.golang.org".into(), base);
        c.proxy.idle_timeout = Duration::from_millis(300);
    })
    .await;
    let (mut send, conn) = h2_through(gw.proxy, "proxy.golang.org", gw.roots()).await;
    let req = || {
        http::Request::get("https://proxy.golang.org/example.com/m/@v/list")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap()
    };
    assert_eq!(send.send_request(req()).await.unwrap().status(), 200);
    // Idle longer than the timeout: the gateway closes the connection.
    let ended = tokio::time::timeout(Duration::from_secs(5), conn).await;
    assert!(ended.is_ok(), "the idle connection was closed");
    assert!(send.send_request(req()).await.is_err());
    let m = gw.metrics().await;
    assert!(metric(&m, "modgate_limit_hits_total", &[("limit", "idle_timeout")]) >= 1.0);
}
