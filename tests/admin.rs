use std::sync::Arc;
use std::time::Duration;

use http::Response;
use tokio::net::TcpStream;

use crate::util::*;

async fn admin_get(gw: &TestGateway, path: &str) -> (u16, String) {
    let s = TcpStream::connect(gw.admin).await.unwrap();
    let (status, _, body) = http_get(s, "admin", path, Alpn::H1).await;
    (status.as_u16(), String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_endpoints() {
    let ca = TestCa::new();
    let gw = TestGateway::start(&ca, |_| {}).await;
    assert_eq!(admin_get(&gw, "/healthz").await, (200, "ok\n".into()));
    assert_eq!(admin_get(&gw, "/readyz").await.0, 200);
    let (status, pem) = admin_get(&gw, "/ca.pem").await;
    assert_eq!(status, 200);
    assert_eq!(pem, gw.ca_pem);
    assert!(!pem.contains("PRIVATE KEY"));
    assert_eq!(admin_get(&gw, "/ca-key.pem").await.0, 404);
    let (status, metrics) = admin_get(&gw, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("modgate_build_info{version=\""),
        "{metrics}"
    );
    assert!(metrics.contains("modgate_connections_active"));
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_change_with_requests() {
    let ca = TestCa::new();
    let up = Upstream::tls(&ca, fixed("hello")).await;
    let base = up.base_url();
    let gw = TestGateway::start(&ca, move |c| {
        c.intercept.hosts.push("files.test".into());
        c.upstream.overrides.insert("files.test".into(), base);
    })
    .await;
    let before = gw.metrics().await;
    assert_eq!(
        metric(&before, "modgate_request_duration_seconds_count", &[]),
        0.0
    );
    assert_eq!(metric(&before, "modgate_certs_issued_total", &[]), 0.0);
    let (status, _, _) = gw.get("files.test:443", "/latest", Alpn::H1).await;
    assert_eq!(status, 200);
    // The request is observed when its body has been sent; give the server a moment.
    let mut after = String::new();
    for _ in 0..100 {
        after = gw.metrics().await;
        if metric(&after, "modgate_request_duration_seconds_count", &[]) == 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        metric(
            &after,
            "modgate_request_duration_seconds_count",
            &[
                ("route", "forward"),
                ("kind", "other"),
                ("cache", "bypass"),
                ("status", "2xx")
            ]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &after,
            "modgate_response_bytes_total",
            &[("route", "forward")]
        ),
        5.0
    );
    assert_eq!(metric(&after, "modgate_certs_issued_total", &[]), 1.0);
    assert!(
        metric(
            &after,
            "modgate_connections_total",
            &[("kind", "intercept")]
        ) >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_drains_in_flight_requests() {
    let ca = TestCa::new();
    let slow: Handler = Arc::new(|_, _| {
        Box::pin(async {
            tokio::time::sleep(Duration::from_millis(700)).await;
            Response::new(modgate::body::full("slow but complete"))
        })
    });
    let up = Upstream::tls(&ca, slow).await;
    let base = up.base_url();
    let mut gw = TestGateway::start(&ca, move |c| {
        c.intercept.hosts.push("files.test".into());
        c.upstream.overrides.insert("files.test".into(), base);
        c.proxy.drain_timeout = Duration::from_secs(10);
    })
    .await;
    let (stream, head) = connect(gw.proxy, "files.test:443", "").await;
    assert_eq!(status(&head), 200);
    let tls = tls_connect(stream, "files.test", gw.roots(), Alpn::H1)
        .await
        .unwrap();
    let request = tokio::spawn(http_get(tls, "files.test", "/slow", Alpn::H1));
    // Wait until the upstream has the request, then shut down.
    while up.paths().is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let proxy = gw.proxy;
    let drained = gw.gateway.take().unwrap().shutdown().await;
    assert!(drained, "in-flight work finished before the deadline");
    let (status, _, body) = request.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(&body[..], b"slow but complete");
    assert!(
        TcpStream::connect(proxy).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn reload_applies_new_rules_to_new_requests_and_refuses_bad_files() {
    use modgate::Gateway;
    let ca = TestCa::new();
    let up = Upstream::tls(&ca, fixed("ok")).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("modgate.toml");
    let write = |deny: &str| {
        std::fs::write(
            &path,
            format!(
                "[proxy]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[storage]\ndata_dir = \"{d}/data\"\n[ca]\ndir = \"{d}/certs\"\n[intercept]\nhosts = [\"files.test\"]\n[egress]\ndeny = [{deny}]\nallow_addresses = [\"127.0.0.0/8\"]\nconnect_ports = [\"1-65535\"]\n[upstream]\nextra_ca_file = \"{ca}\"\n[upstream.overrides]\n\"files.test\" = \"{base}\"\n",
                d = dir.path().display(),
                ca = ca.path.display(),
                base = up.base_url(),
            ),
        )
        .unwrap()
    };
    write("");
    let cfg = modgate::config::load(&path).unwrap();
    let gw = Gateway::start_with_path(cfg, Some(path.clone()))
        .await
        .unwrap();
    let roots = roots_from_pem(gw.ca().cert_pem());
    let target = up.addr.to_string();

    // A keep-alive intercepted connection opened before the reload.
    let (stream, head) = connect(gw.proxy_addr(), "files.test:443", "").await;
    assert_eq!(status(&head), 200);
    let tls = tls_connect(stream, "files.test", roots.clone(), Alpn::H1)
        .await
        .unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let get = || {
        http::Request::get("/x")
            .header("host", "files.test")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap()
    };
    assert_eq!(send.send_request(get()).await.unwrap().status(), 200);
    let (_, head) = connect(gw.proxy_addr(), &target, "").await;
    assert_eq!(status(&head), 200, "tunnel allowed before the reload");

    write("\"127.0.0.1\"");
    let admin = gw.admin_addr();
    let post = |a: std::net::SocketAddr| async move {
        let mut s = TcpStream::connect(a).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(
            &mut s,
            b"POST /-/reload HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\n\r\n",
        )
        .await
        .unwrap();
        read_response(&mut s).await
    };
    let (code, _, body) = post(admin).await;
    assert_eq!((code, body.as_str()), (200, "reloaded\n"));
    let (_, head) = connect(gw.proxy_addr(), &target, "").await;
    assert_eq!(status(&head), 403, "new rules apply to new connections");
    // The connection from before the reload was not dropped.
    assert_eq!(send.send_request(get()).await.unwrap().status(), 200);

    // An invalid file is refused and the current rules stay.
    std::fs::write(&path, "[egress]\ndeny = [\"a[\"]\n").unwrap();
    let (code, _, body) = post(admin).await;
    assert_eq!(code, 400);
    assert!(body.contains("egress.deny[0]"), "{body}");
    let (_, head) = connect(gw.proxy_addr(), &target, "").await;
    assert_eq!(status(&head), 403, "previous rules kept");
    let s = TcpStream::connect(admin).await.unwrap();
    let (_, _, m) = http_get(s, "admin", "/metrics", Alpn::H1).await;
    let m = String::from_utf8_lossy(&m);
    assert_eq!(
        metric(&m, "modgate_config_reloads_total", &[("outcome", "ok")]),
        1.0
    );
    assert_eq!(
        metric(&m, "modgate_config_reloads_total", &[("outcome", "error")]),
        1.0
    );
}

/// Issue 17: a reload names every changed key it cannot apply, one of each restart-only
/// section, and still applies the reloadable ones.
#[tokio::test(flavor = "multi_thread")]
async fn reload_names_every_key_that_needs_a_restart() {
    use modgate::Gateway;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("modgate.toml");
    let base = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[storage]\ndata_dir = \"{d}/data\"\n[ca]\ndir = \"{d}/certs\"\n",
        d = dir.path().display(),
    );
    std::fs::write(&path, &base).unwrap();
    let cfg = modgate::config::load(&path).unwrap();
    let gw = Gateway::start_with_path(cfg, Some(path.clone()))
        .await
        .unwrap();
    let changed = [
        ("[proxy]\nidle_timeout = \"5s\"\n", "proxy.idle_timeout"),
        ("[ca]\nleaf_validity = \"3days\"\n", "ca.leaf_validity"),
        (
            "[intercept]\nh2_max_concurrent_streams = 7\n",
            "intercept.h2_max_concurrent_streams",
        ),
        (
            "[upstream]\nconnect_timeout = \"3s\"\n",
            "upstream.connect_timeout",
        ),
        ("[cache]\nmutable_ttl = \"5m\"\n", "cache.mutable_ttl"),
        (
            "[shared_cache]\nprefix = \"elsewhere\"\n",
            "shared_cache.prefix",
        ),
        (
            "[private]\nfetch_timeout = \"9s\"\n",
            "private.fetch_timeout",
        ),
        (
            "[transparent]\nverify_destination = false\n",
            "transparent.verify_destination",
        ),
        ("[log]\nformat = \"json\"\n", "log.format"),
        // Reloadable: applied, not named.
        ("[egress]\ndeny = [\"blocked.example\"]\n", ""),
    ];
    // `[proxy]` and `[ca]` are already in the base file: their keys go into those tables.
    let mut text = base.clone();
    for (section, _) in &changed {
        let (head, body) = section.split_once('\n').unwrap();
        match text.find(&format!("{head}\n")) {
            Some(i) => text.insert_str(i + head.len() + 1, body),
            None => text.push_str(section),
        }
    }
    std::fs::write(&path, &text).unwrap();
    let mut s = TcpStream::connect(gw.admin_addr()).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(
        &mut s,
        b"POST /-/reload HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\n\r\n",
    )
    .await
    .unwrap();
    let (code, _, body) = read_response(&mut s).await;
    assert_eq!(code, 200, "{body}");
    assert!(
        body.starts_with("reloaded; these keys changed but take effect only after a restart: "),
        "{body}"
    );
    for (_, key) in changed.iter().filter(|(_, k)| !k.is_empty()) {
        assert!(body.contains(key), "{key} missing from {body:?}");
    }
    assert!(!body.contains("egress"), "{body}");
    let (_, head) = connect(gw.proxy_addr(), "blocked.example:443", "").await;
    assert_eq!(status(&head), 403, "the reloadable key was applied");
}

/// Issue 17: a request whose client goes away before the response head still gets its
/// access-log line and histogram observation, as outcome `client_closed` (status 499).
#[tokio::test(flavor = "multi_thread")]
async fn a_request_cancelled_before_its_head_is_still_observed() {
    let ca = TestCa::new();
    let slow: Handler = Arc::new(|_, _| {
        Box::pin(async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Response::new(modgate::body::full("too late"))
        })
    });
    let up = Upstream::tls(&ca, slow).await;
    let base = up.base_url();
    let gw = TestGateway::start(&ca, move |c| {
        c.intercept.hosts.push("files.test".into());
        c.upstream.overrides.insert("files.test".into(), base);
    })
    .await;
    let (stream, head) = connect(gw.proxy, "files.test:443", "").await;
    assert_eq!(status(&head), 200);
    let tls = tls_connect(stream, "files.test", gw.roots(), Alpn::H1)
        .await
        .unwrap();
    let request = tokio::spawn(http_get(tls, "files.test", "/slow", Alpn::H1));
    while up.paths().is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The client gives up: its connection closes with the request in flight.
    request.abort();
    let labels = [("route", "forward"), ("status", "4xx")];
    let mut seen = 0.0;
    for _ in 0..200 {
        let m = gw.metrics().await;
        seen = metric(&m, "modgate_request_duration_seconds_count", &labels);
        if seen >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(seen, 1.0, "the cancelled request was observed once");
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_and_cache_stats_tell_how_far_the_cache_index_is() {
    let ca = TestCa::new();
    let data = tempfile::tempdir().unwrap();
    // A cache as an earlier run left it.
    for i in 0..3000 {
        let dir = data
            .path()
            .join(format!("cache/mod/example.com/m{}/@v", i % 10));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join(format!("v1.0.{i}.info")),
            format!("{{\"Version\":\"v1.0.{i}\",\"Time\":\"2024-01-02T03:04:05Z\"}}"),
        )
        .unwrap();
    }
    let path = data.path().to_path_buf();
    let gw = TestGateway::start(&ca, move |c| c.storage.data_dir = path).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = admin_get(&gw, "/readyz").await;
        assert_eq!(status, 200, "ready while the index is built: {body}");
        if body == "ready; cache index complete (3000 entries)\n" {
            break;
        }
        assert!(body.starts_with("ready; cache index building: "), "{body}");
        assert!(std::time::Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, stats) = admin_get(&gw, "/cache/stats").await;
    assert_eq!(status, 200);
    assert!(
        stats.contains("index:       the running gateway's, complete"),
        "{stats}"
    );
    assert!(stats.contains("entries:     3000 "), "{stats}");
    assert!(stats.contains("info, lists, queries       3000"), "{stats}");
    let (_, metrics) = admin_get(&gw, "/metrics").await;
    assert!(
        metrics.contains("modgate_cache_index_complete 1"),
        "{metrics}"
    );
    assert!(metrics.contains("modgate_cache_entries 3000"), "{metrics}");
}

/// Decisions are remembered per path (serve::memo) under one set of rules: a reload that makes
/// a path private must take effect for a path already served as public.
#[tokio::test(flavor = "multi_thread")]
async fn a_reload_applies_to_paths_whose_decisions_were_remembered() {
    let ca = TestCa::new();
    let (_tree, up) = one_module_upstream(&ca, "corp.example/lib", "v1.0.0").await;
    let base = up.base_url();
    let gw = TestGateway::start(&ca, move |c| {
        c.upstream.overrides.insert("proxy.golang.org".into(), base);
    })
    .await;
    let path = "/corp.example/lib/@v/v1.0.0.mod";
    for _ in 0..2 {
        let (status, _, _) = gw.get("proxy.golang.org:443", path, Alpn::H1).await;
        assert_eq!(status, 200);
    }
    gw.reload_with(|c| {
        c.modules.private = modgate::config::PatternList(vec!["corp.example".into()])
    });
    let (status, _, body) = gw.get("proxy.golang.org:443", path, Alpn::H1).await;
    assert_eq!(status, 404, "{body:?}");
    assert!(
        String::from_utf8_lossy(&body).contains("corp.example/lib is private"),
        "{body:?}"
    );
}
