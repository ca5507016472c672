use std::time::Duration;

use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::util::*;

/// A TCP echo server on loopback.
async fn echo_server() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// After a refusal, a normal client still gets through.
async fn still_serves(gw: &TestGateway) {
    let echo = echo_server().await;
    let (mut s, head) = connect(gw.proxy, &echo.to_string(), "").await;
    assert_eq!(status(&head), 200, "{head}");
    s.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
}

#[tokio::test(flavor = "multi_thread")]
async fn tunnel_copies_bytes_both_ways_and_counts_them() {
    let ca = TestCa::new();
    let gw = TestGateway::start(&ca, |_| {}).await;
    let echo = echo_server().await;
    let (mut s, head) = connect(gw.proxy, &echo.to_string(), "").await;
    assert_eq!(status(&head), 200, "{head}");
    let payload = vec![7u8; 100_000];
    let (mut r, mut w) = s.split();
    let writer = async {
        w.write_all(&payload).await.unwrap();
        w.shutdown().await.unwrap();
    };
    let mut got = vec![];
    let reader = r.read_to_end(&mut got);
    let (_, n) = tokio::join!(writer, reader);
    n.unwrap();
    assert_eq!(got, payload);
    drop(s);
    // The tunnel records its bytes when it closes.
    let mut up = 0.0;
    for _ in 0..100 {
        up = metric(
            &gw.metrics().await,
            "modgate_tunnel_bytes_total",
            &[("direction", "upstream")],
        );
        if up > 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(up, 100_000.0);
    let m = gw.metrics().await;
    assert_eq!(
        metric(&m, "modgate_tunnel_bytes_total", &[("direction", "client")]),
        100_000.0
    );
    assert_eq!(
        metric(
            &m,
            "modgate_egress_decisions_total",
            &[("decision", "tunnel")]
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn denied_host_gets_403_with_reason() {
    let ca = TestCa::new();
    let gw = TestGateway::start(&ca, |c| {
        c.egress.deny = vec!["*.blocked.test".into()];
    })
    .await;
    let (mut s, _) = {
        let mut s = TcpStream::connect(gw.proxy).await.unwrap();
        s.write_all(
            b"CONNECT evil.blocked.test:443 HTTP/1.1\r\nHost: evil.blocked.test:443\r\n\r\n",
        )
        .await
        .unwrap();
        (s, ())
    };
    let (code, head, body) = read_response(&mut s).await;
    assert_eq!(code, 403, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; charset=utf-8")
    );
    assert!(
        body.contains("evil.blocked.test") && body.contains("egress.deny"),
        "{body}"
    );
    assert_eq!(body.lines().count(), 1, "one-line reason: {body:?}");
    still_serves(&gw).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn allow_list_refuses_unlisted_hosts() {
    let ca = TestCa::new();
    let gw = TestGateway::start(&ca, |c| {
        c.egress.allow = vec!["127.0.0.1".into()];
    })
    .await;
    let (_, head) = connect(gw.proxy, "example.org:443", "").await;
    assert_eq!(status(&head), 403, "{head}");
    still_serves(&gw).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_tunnel_target_gets_502() {
    let ca = TestCa::new();
    let gw = TestGateway::start(&ca, |_| {}).await;
    // A port nothing listens on.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    let mut s = TcpStream::connect(gw.proxy).await.unwrap();
    s.write_all(format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let (code, _, body) = read_response(&mut s).await;
    assert_eq!(code, 502);
    assert!(body.contains(&format!("127.0.0.1:{port}")), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_requests_get_clean_refusals() {
    let ca = TestCa::new();
    let gw = TestGateway::start(&ca, |_| {}).await;
    let cases: &[(&str, u16)] = &[
        ("CONNECT example.org HTTP/1.1\r\n\r\n", 400),
        ("CONNECT example.org:0 HTTP/1.1\r\n\r\n", 400),
        ("CONNECT user:pw@example.org:443 HTTP/1.1\r\n\r\n", 400),
        ("CONNECT exa$mple.org:443 HTTP/1.1\r\n\r\n", 400),
        ("CONNECT  HTTP/1.1\r\n\r\n", 400),
        ("HELLO\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        ("\x16\x03\x01\x00\x05hello\r\n\r\n", 400),
    ];
    for (raw, want) in cases {
        let mut s = TcpStream::connect(gw.proxy).await.unwrap();
        s.write_all(raw.as_bytes()).await.unwrap();
        let (code, head, _) = read_response(&mut s).await;
        assert_eq!(code, *want, "{raw:?} -> {head}");
    }
    // An oversized head is refused too.
    let mut s = TcpStream::connect(gw.proxy).await.unwrap();
    let big = format!(
        "CONNECT example.org:443 HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100_000)
    );
    let _ = s.write_all(big.as_bytes()).await;
    let (code, head, _) = read_response(&mut s).await;
    assert!(code == 431 || code == 400, "{head}");
    still_serves(&gw).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_auth_requires_valid_credentials() {
    let ca = TestCa::new();
    let gw = TestGateway::start(&ca, |c| {
        c.auth.users = vec![modgate::config::UserConfig {
            name: "ci".into(),
            password_hash: modgate::ingress::auth::hash_password("hunter2"),
        }];
    })
    .await;
    let echo = echo_server().await.to_string();
    let basic = |u: &str, p: &str| {
        format!(
            "Proxy-Authorization: Basic {}\r\n",
            base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
        )
    };
    let (_, head) = connect(gw.proxy, &echo, "").await;
    assert_eq!(status(&head), 407, "{head}");
    assert!(
        head.contains("proxy-authenticate: Basic realm=\"modgate\""),
        "{head}"
    );
    let (_, head) = connect(gw.proxy, &echo, &basic("ci", "wrong")).await;
    assert_eq!(status(&head), 407, "{head}");
    let (_, head) = connect(gw.proxy, &echo, &basic("nobody", "hunter2")).await;
    assert_eq!(status(&head), 407, "{head}");
    let (mut s, head) = connect(gw.proxy, &echo, &basic("ci", "hunter2")).await;
    assert_eq!(status(&head), 200, "{head}");
    s.write_all(b"ok").await.unwrap();
    let mut b = [0u8; 2];
    s.read_exact(&mut b).await.unwrap();
    let m = gw.metrics().await;
    assert_eq!(metric(&m, "modgate_proxy_auth_failures_total", &[]), 3.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_http_absolute_form_is_forwarded_under_policy() {
    let ca = TestCa::new();
    let up = Upstream::plain(fixed("plain hello")).await;
    let gw = TestGateway::start(&ca, |c| {
        c.egress.deny = vec!["denied.test".into()];
    })
    .await;
    let mut s = TcpStream::connect(gw.proxy).await.unwrap();
    s.write_all(
        format!(
            "GET http://127.0.0.1:{}/x?y=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nProxy-Connection: keep-alive\r\n\r\n",
            up.addr.port()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let (code, _, body) = read_response(&mut s).await;
    assert_eq!((code, body.as_str()), (200, "plain hello"));
    let seen = up.seen.lock().unwrap()[0].clone();
    assert_eq!(seen.path, "/x?y=1");
    assert!(!seen.headers.contains_key("proxy-connection"));

    let mut s = TcpStream::connect(gw.proxy).await.unwrap();
    s.write_all(b"GET http://denied.test/ HTTP/1.1\r\nHost: denied.test\r\n\r\n")
        .await
        .unwrap();
    let (code, _, body) = read_response(&mut s).await;
    assert_eq!(code, 403);
    assert!(body.contains("denied.test"), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_http_keeps_private_paths_from_a_goproxy_host() {
    // GOPROXY=http://… through HTTP_PROXY: absolute-form requests to the proxy host.
    let ca = TestCa::new();
    let up = Upstream::plain(fixed("{\"Version\":\"v1.0.0\"}")).await;
    let gw = TestGateway::start(&ca, |c| {
        c.modules.proxy_hosts.push("127.0.0.1".into());
        c.modules.private = modgate::config::PatternList(vec!["git.corp.example".into()]);
    })
    .await;
    let get = |path: &str| {
        format!(
            "GET http://127.0.0.1:{}{path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
            up.addr.port()
        )
    };
    let mut s = TcpStream::connect(gw.proxy).await.unwrap();
    s.write_all(get("/git.corp.example/team/alpha/@v/v1.0.0.info").as_bytes())
        .await
        .unwrap();
    let (code, _, body) = read_response(&mut s).await;
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("is private"), "{body}");
    // A public module still goes on.
    let mut s = TcpStream::connect(gw.proxy).await.unwrap();
    s.write_all(get("/example.com/m/@v/v1.0.0.info").as_bytes())
        .await
        .unwrap();
    assert_eq!(read_response(&mut s).await.0, 200);
    assert_eq!(up.paths(), ["/example.com/m/@v/v1.0.0.info"]);
    let m = gw.metrics().await;
    assert_eq!(
        metric(&m, "modgate_private_refused_total", &[("kind", "goproxy")]),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bytes_sent_with_the_connect_head_reach_the_target() {
    let ca = TestCa::new();
    let gw = TestGateway::start(&ca, |_| {}).await;
    let echo = echo_server().await;
    let mut s = TcpStream::connect(gw.proxy).await.unwrap();
    // The client does not wait for the 200: its first bytes arrive with the CONNECT head.
    s.write_all(format!("CONNECT {echo} HTTP/1.1\r\nHost: {echo}\r\n\r\nearly bytes").as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut s).await;
    assert_eq!(status(&head), 200, "{head}");
    let mut buf = [0u8; 11];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"early bytes");
}

#[tokio::test(flavor = "multi_thread")]
async fn by_default_tunnels_and_forwards_never_reach_loopback_other_ports_or_the_gateway_itself() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ca = TestCa::new();
    let up = Upstream::plain(fixed("upstream")).await;
    let port = up.addr.port();
    // The defaults: no address exception, CONNECT to 443 only.
    let gw = TestGateway::start(&ca, |c| {
        c.egress.allow_addresses = vec![];
        c.egress.connect_ports = vec![];
    })
    .await;
    let admin = gw.admin;
    let refused = |head: &str, rule: &str| {
        assert_eq!(status(head), 403, "{head}");
        assert!(head.contains(rule), "{rule}: {head}");
    };
    // A refusal's head and its one-line body.
    async fn refusal(proxy: std::net::SocketAddr, target: &str) -> String {
        let (mut stream, head) = connect(proxy, target, "").await;
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        stream.read_exact(&mut body).await.unwrap();
        format!("{head}{}", String::from_utf8_lossy(&body))
    }
    for (target, rule) in [
        (format!("127.0.0.1:{port}"), "CONNECT to port"),
        ("127.0.0.1:443".to_string(), "is a loopback address"),
        ("localhost:443".to_string(), "is a loopback address"),
        ("[::1]:443".to_string(), "is a loopback address"),
        ("0.0.0.0:443".to_string(), "is an unspecified address"),
    ] {
        refused(&refusal(gw.proxy, &target).await, rule);
    }
    // Plain HTTP to loopback, by address or by a name that resolves there, and to the admin
    // listener (an agent must not read its metrics or reload it).
    for (url, rule) in [
        (format!("http://127.0.0.1:{port}/"), "is a loopback address"),
        (format!("http://localhost:{port}/"), "is a loopback address"),
        (
            format!("http://{admin}/metrics"),
            "is one of modgate's own listeners",
        ),
    ] {
        let mut s = TcpStream::connect(gw.proxy).await.unwrap();
        s.write_all(
            format!("GET {url} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).await.unwrap();
        refused(&resp, rule);
    }
    assert!(up.paths().is_empty(), "nothing reached the loopback server");
    let m = gw.metrics().await;
    assert_eq!(
        metric(&m, "modgate_egress_refusals_total", &[("rule", "port")]),
        1.0,
        "{m}"
    );
    assert!(
        metric(&m, "modgate_egress_refusals_total", &[("rule", "loopback")]) >= 5.0,
        "{m}"
    );
    assert!(
        metric(
            &m,
            "modgate_egress_refusals_total",
            &[("rule", "own_listener")]
        ) >= 1.0,
        "{m}"
    );
    drop(gw);

    // An explicit exception opens loopback, never the gateway's own listeners.
    let gw = TestGateway::start(&ca, |c| {
        c.egress.allow_addresses = vec!["127.0.0.0/8".into()];
        c.egress.connect_ports = vec![format!("{port}")];
    })
    .await;
    let (_, head) = connect(gw.proxy, &format!("127.0.0.1:{port}"), "").await;
    assert_eq!(status(&head), 200, "{head}");
    let mut s = TcpStream::connect(gw.proxy).await.unwrap();
    let admin = gw.admin;
    s.write_all(
        format!("POST http://{admin}/-/reload HTTP/1.1\r\nHost: {admin}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.unwrap();
    refused(&resp, "is one of modgate's own listeners");
    refused(&refusal(gw.proxy, &gw.proxy.to_string()).await, "port");
}

#[tokio::test(flavor = "multi_thread")]
async fn warm_authenticates_to_a_gateway_with_proxy_users_and_never_echoes_the_password() {
    let ca = TestCa::new();
    let (tree, upstream) = one_module_upstream(&ca, "example.com/m", "v1.0.0").await;
    let base = upstream.base_url();
    let gw = TestGateway::start(&ca, |c| {
        c.upstream.overrides.insert("proxy.golang.org".into(), base);
        c.auth.users = vec![modgate::config::UserConfig {
            name: "ci".into(),
            password_hash: modgate::ingress::auth::hash_password("hunter2"),
        }];
    })
    .await;
    let list = tree.path().join("wants.txt");
    std::fs::write(&list, "example.com/m@v1.0.0\n").unwrap();
    let warm = |proxy: String, password_env: Option<&str>| {
        let mut cmd = modgate_command();
        cmd.arg("warm")
            .arg(&list)
            .args(["--proxy", &proxy, "--sumdb", "off", "--ca"])
            .arg(&gw.ca_path)
            .env_remove("MODGATE_PROXY_PASSWORD")
            .stdin(std::process::Stdio::null());
        if let Some(p) = password_env {
            cmd.env("MODGATE_PROXY_PASSWORD", p);
        }
        let out = tokio::task::block_in_place(|| cmd.output().unwrap());
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let addr = gw.proxy.to_string();
    let (ok, text) = warm(addr.clone(), None);
    assert!(!ok);
    assert!(text.contains("requires proxy credentials (407)"), "{text}");
    let (ok, text) = warm(format!("http://ci:hunter2@{addr}"), None);
    assert!(ok, "{text}");
    let (ok, text) = warm(format!("http://ci@{addr}"), Some("hunter2"));
    assert!(ok, "{text}");
    let (ok, text) = warm(format!("http://ci@{addr}"), None);
    assert!(!ok);
    assert!(text.contains("MODGATE_PROXY_PASSWORD"), "{text}");
    let (ok, text) = warm(format!("http://ci:Wr0ngSecret@{addr}"), None);
    assert!(!ok);
    assert!(text.contains("refused the ones given"), "{text}");
    assert!(!text.contains("Wr0ngSecret"), "{text}");
}
