use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use x509_parser::prelude::*;

use crate::util::*;

/// A gateway intercepting `files.test` (a host with no module protocol: forwarded unchanged)
/// and sending it to `up`.
pub async fn gateway_for(up: &Upstream, ca: &TestCa) -> TestGateway {
    let base = up.base_url();
    TestGateway::start(ca, move |c| {
        c.intercept.hosts.push("files.test".into());
        c.upstream
            .overrides
            .insert("files.test".into(), base.clone());
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn intercepted_h1_and_h2_reach_the_upstream_unchanged() {
    let ca = TestCa::new();
    let up = Upstream::tls(&ca, fixed("v1.0.0\nv1.1.0\n")).await;
    let gw = gateway_for(&up, &ca).await;
    for _ in 0..2 {
        let (status, _, body) = gw
            .get("files.test:443", "/example.com/m/@v/list?x=1", Alpn::H1)
            .await;
        assert_eq!(status, 200);
        assert_eq!(&body[..], b"v1.0.0\nv1.1.0\n");
    }
    let seen = up.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    for s in &seen {
        assert_eq!(s.path, "/example.com/m/@v/list?x=1");
        assert!(!s.headers.contains_key("proxy-authorization"));
        // Pass-through forwarding uses pooled HTTP/1.1 upstream connections even when the
        // upstream offers h2 (module fetches use h2: public.rs).
        assert_eq!(s.version, http::Version::HTTP_11, "forwarded over HTTP/1.1");
    }
    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            "modgate_request_duration_seconds_count",
            &[("route", "forward"), ("status", "2xx")]
        ),
        2.0
    );
    assert_eq!(
        metric(
            &m,
            "modgate_upstream_duration_seconds_count",
            &[("upstream", "files.test")]
        ),
        2.0
    );
    assert_eq!(
        metric(
            &m,
            "modgate_tls_handshake_duration_seconds_count",
            &[("side", "client")]
        ),
        2.0
    );
    assert_eq!(
        metric(
            &m,
            "modgate_egress_decisions_total",
            &[("decision", "intercept")]
        ),
        2.0
    );
    // HTTP/2 is offered on module-proxy and checksum-database hosts only: a client that speaks
    // nothing else is refused here (git and go offer both, and get HTTP/1.1).
    let (stream, _) = connect(gw.proxy, "files.test:443", "").await;
    assert!(
        tls_connect(stream, "files.test", gw.roots(), Alpn::H2)
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_errors_are_plain_text_502() {
    let ca = TestCa::new();
    // Nothing listens on this port.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    let gw = TestGateway::start(&ca, move |c| {
        c.upstream.overrides.insert(
            "proxy.golang.org".into(),
            format!("https://127.0.0.1:{port}"),
        );
    })
    .await;
    let (status, headers, body) = gw
        .get("proxy.golang.org:443", "/x.com/m/@v/list", Alpn::H1)
        .await;
    assert_eq!(status, 502);
    assert_eq!(headers["content-type"], "text/plain; charset=utf-8");
    assert!(String::from_utf8_lossy(&body).starts_with("modgate: cannot connect to 127.0.0.1"));
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_certificate_is_always_verified() {
    let ca = TestCa::new();
    let other_ca = TestCa::new();
    // The upstream's certificate is signed by a CA the gateway does not trust.
    let up = Upstream::tls(&other_ca, fixed("secret")).await;
    let gw = gateway_for(&up, &ca).await;
    let (status, _, body) = gw.get("files.test:443", "/x", Alpn::H1).await;
    assert_eq!(status, 502);
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("TLS with 127.0.0.1 failed"), "{body}");
    assert!(
        up.paths().is_empty(),
        "no request may reach an unverified upstream"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sni_must_match_the_connect_host() {
    let ca = TestCa::new();
    let up = Upstream::tls(&ca, fixed("ok")).await;
    let gw = TestGateway::start(&ca, {
        let base = up.base_url();
        move |c| {
            c.intercept.hosts.push("other.test".into());
            c.intercept.hosts.push("files.test".into());
            c.upstream.overrides.insert("files.test".into(), base);
        }
    })
    .await;
    let (stream, head) = connect(gw.proxy, "files.test:443", "").await;
    assert_eq!(status(&head), 200);
    let err = tls_connect(stream, "other.test", gw.roots(), Alpn::H1).await;
    assert!(
        err.is_err(),
        "an SNI other than the CONNECT host must be refused"
    );
    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            "modgate_tls_failures_total",
            &[("reason", "sni_mismatch")]
        ),
        1.0
    );
    // Other clients are unaffected.
    let (status, _, _) = gw.get("files.test:443", "/", Alpn::H1).await;
    assert_eq!(status, 200);
    assert!(up.paths().len() == 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn non_tls_bytes_on_an_intercepted_tunnel_get_a_plain_refusal() {
    let ca = TestCa::new();
    let up = Upstream::tls(&ca, fixed("ok")).await;
    let gw = gateway_for(&up, &ca).await;
    let (mut stream, head) = connect(gw.proxy, "files.test:443", "").await;
    assert_eq!(status(&head), 200);
    stream
        .write_all(b"GET /x HTTP/1.1\r\nHost: proxy.golang.org\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut out))
        .await
        .expect("connection closes")
        .unwrap();
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(
        out.contains("expected a TLS ClientHello for files.test"),
        "{out}"
    );
    let m = gw
        .metric_reaches("modgate_tls_failures_total", &[("reason", "not_tls")], 1.0)
        .await;
    assert_eq!(
        metric(&m, "modgate_tls_failures_total", &[("reason", "not_tls")]),
        1.0
    );
    let (status, _, _) = gw.get("files.test:443", "/", Alpn::H1).await;
    assert_eq!(status, 200);
    assert!(
        up.paths().len() == 1,
        "the refused request never reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn leaf_certificate_properties() {
    let ca = TestCa::new();
    let gw = TestGateway::start(&ca, |c| {
        c.intercept.hosts.push("127.0.0.1".into());
    })
    .await;
    let ca_der = rustls_pemfile::certs(&mut gw.ca_pem.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    let (_, ca_cert) = X509Certificate::from_der(&ca_der).unwrap();

    // CA properties.
    let bc = ca_cert.basic_constraints().unwrap().unwrap();
    assert!(bc.critical && bc.value.ca && bc.value.path_len_constraint == Some(0));
    let ku = ca_cert.key_usage().unwrap().unwrap();
    assert!(ku.critical && ku.value.key_cert_sign() && ku.value.crl_sign());
    assert!(!ku.value.digital_signature());
    let ca_years = (ca_cert.validity().not_after.timestamp()
        - ca_cert.validity().not_before.timestamp())
        / (365 * 24 * 3600);
    assert!((9..=10).contains(&ca_years), "{ca_years}");
    assert_eq!(
        ca_cert.public_key().algorithm.algorithm.to_id_string(),
        "1.2.840.10045.2.1",
        "EC key"
    );

    for (target, sni) in [
        ("proxy.golang.org:443", "proxy.golang.org"),
        ("127.0.0.1:443", "127.0.0.1"),
    ] {
        let (stream, head) = connect(gw.proxy, target, "").await;
        assert_eq!(status(&head), 200);
        let tls = tls_connect(stream, sni, gw.roots(), Alpn::H1)
            .await
            .unwrap();
        let leaf_der = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
        let (_, leaf) = X509Certificate::from_der(&leaf_der).unwrap();
        let san = leaf.subject_alternative_name().unwrap().unwrap();
        assert_eq!(san.value.general_names.len(), 1);
        match &san.value.general_names[0] {
            GeneralName::DNSName(n) => assert_eq!(*n, sni),
            GeneralName::IPAddress(ip) => {
                assert_eq!(*ip, &[127, 0, 0, 1][..]);
                assert_eq!(sni, "127.0.0.1");
            }
            other => panic!("unexpected SAN {other:?}"),
        }
        let eku = leaf.extended_key_usage().unwrap().unwrap();
        assert!(eku.value.server_auth && !eku.value.client_auth);
        assert!(!leaf.is_ca());
        assert_ne!(
            leaf.public_key().raw,
            ca_cert.public_key().raw,
            "leaf has its own key"
        );
        assert_eq!(leaf.issuer(), ca_cert.subject());
        assert!(leaf.verify_signature(Some(ca_cert.public_key())).is_ok());
        let serial = leaf.raw_serial();
        let serial = if serial[0] == 0 { &serial[1..] } else { serial };
        assert_eq!(serial.len(), 16, "128-bit serial");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let nb = leaf.validity().not_before.timestamp();
        let na = leaf.validity().not_after.timestamp();
        assert!((now - nb - 3600).abs() < 120, "backdated one hour");
        assert!(na - nb <= 30 * 24 * 3600 + 3600, "at most 30 days");
        assert!(na > now);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_first_connections_sign_once() {
    let ca = TestCa::new();
    let up = Upstream::tls(&ca, fixed("ok")).await;
    let gw = gateway_for(&up, &ca).await;
    let mut tasks = vec![];
    for _ in 0..20 {
        let proxy = gw.proxy;
        let roots = gw.roots();
        tasks.push(tokio::spawn(async move {
            let (stream, head) = connect(proxy, "files.test:443", "").await;
            assert_eq!(status(&head), 200);
            tls_connect(stream, "files.test", roots, Alpn::H1)
                .await
                .unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let m = gw.metrics().await;
    assert_eq!(metric(&m, "modgate_certs_issued_total", &[]), 1.0);
}

/// An HTTP/1.1 connection to the intercepted `host:443` through the gateway.
async fn h1_through(
    gw: &TestGateway,
    host: &str,
) -> hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>> {
    let (stream, head) = connect(gw.proxy, &format!("{host}:443"), "").await;
    assert_eq!(status(&head), 200, "{head}");
    let tls = tls_connect(stream, host, gw.roots(), Alpn::H1)
        .await
        .expect("TLS with gateway");
    let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

async fn get_on(
    send: &mut hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    host: &str,
    path: &str,
) -> (http::StatusCode, bytes::Bytes) {
    use http_body_util::BodyExt as _;
    send.ready().await.unwrap();
    let req = http::Request::builder()
        .uri(path)
        .header(http::header::HOST, host)
        .body(http_body_util::Empty::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status();
    (status, resp.into_body().collect().await.unwrap().to_bytes())
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarded_requests_of_a_client_connection_share_one_upstream_connection() {
    let ca = TestCa::new();
    let up = Upstream::tls(&ca, fixed("forwarded")).await;
    let gw = gateway_for(&up, &ca).await;
    let mut a = h1_through(&gw, "files.test").await;
    for i in 0..5 {
        let (s, body) = get_on(&mut a, "files.test", &format!("/a/{i}")).await;
        assert_eq!((s.as_u16(), &body[..]), (200, &b"forwarded"[..]));
    }
    assert_eq!(
        up.accepted(),
        1,
        "five requests of one client connection, one upstream connection"
    );
    // Closed, the client connection gives its upstream connection back to the pool, and the
    // next client connection forwards on it.
    drop(a);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut b = h1_through(&gw, "files.test").await;
    for i in 0..3 {
        let (s, _) = get_on(&mut b, "files.test", &format!("/b/{i}")).await;
        assert_eq!(s, 200);
    }
    assert_eq!(
        up.accepted(),
        1,
        "the parked upstream connection was reused"
    );
    // A client connection that is busy elsewhere does not lend its upstream connection: two
    // client connections at once use two.
    let mut c = h1_through(&gw, "files.test").await;
    let (s, _) = get_on(&mut c, "files.test", "/c").await;
    assert_eq!(s, 200);
    assert_eq!(up.accepted(), 2);
    let seen: Vec<String> = up.paths();
    assert_eq!(seen.len(), 9, "{seen:?}");
    for s in up.seen.lock().unwrap().iter() {
        assert_eq!(s.headers["host"], up.addr.to_string().as_str());
    }
    drop((b, c));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_connection_the_upstream_closed_is_not_used_again() {
    let ca = TestCa::new();
    let up = Upstream::tls(&ca, fixed("fresh")).await;
    let gw = gateway_for(&up, &ca).await;
    // Closed while pinned to a client connection.
    let mut a = h1_through(&gw, "files.test").await;
    assert_eq!(get_on(&mut a, "files.test", "/1").await.0, 200);
    up.close_connections();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (s, body) = get_on(&mut a, "files.test", "/2").await;
    assert_eq!((s.as_u16(), &body[..]), (200, &b"fresh"[..]));
    assert_eq!(up.accepted(), 2);
    // Closed while parked in the pool.
    drop(a);
    tokio::time::sleep(Duration::from_millis(500)).await;
    up.close_connections();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut b = h1_through(&gw, "files.test").await;
    let (s, body) = get_on(&mut b, "files.test", "/3").await;
    assert_eq!((s.as_u16(), &body[..]), (200, &b"fresh"[..]));
    assert_eq!(up.accepted(), 3);
    assert_eq!(up.paths(), ["/1", "/2", "/3"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_http2_connection_lets_go_of_its_read_and_write_buffers() {
    // HTTP/2 clients hold open connections between requests (the go command's, up to 90 s):
    // one quiet for a second keeps no h2 read (8 KiB), write (16 KiB) or HPACK scratch (4 KiB)
    // buffer.
    idle_heap_per_connection_below(Alpn::H2, 36 * 1024).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_http1_connection_keeps_only_its_tls_session() {
    // Quiet for a second, an HTTP/1.1 connection hibernates: hyper's read and write buffers
    // (8 and 8 KiB) go, and nothing is kept of the CONNECT exchange either (hyper's 8 KiB
    // read buffer of the proxy connection). About 17 KB stay: the TLS session, the
    // connection's task and contexts.
    idle_heap_per_connection_below(Alpn::H1, 20 * 1024).await;
}

/// Asserts the gateway's heap per idle intercepted connection is under `bound` bytes: 64
/// clients each CONNECT, speak `alpn`, send one request and stay quiet past the hibernation
/// delay. The clients run on a thread of their own whose allocations are not counted, so the
/// heap counted is the gateway's. Also checks that the connections leave (almost) nothing
/// behind once closed.
async fn idle_heap_per_connection_below(alpn: Alpn, bound: isize) {
    const N: isize = 64;
    let ca = TestCa::new();
    let gw = TestGateway::start(&ca, |_| {}).await;
    let (proxy, roots) = (gw.proxy, gw.roots());
    let (opened_tx, opened) = std::sync::mpsc::channel::<Vec<u16>>();
    let (go_tx, go) = std::sync::mpsc::channel::<()>();
    let (close_tx, close) = std::sync::mpsc::channel::<()>();
    let clients = std::thread::spawn(move || {
        let _uncounted = Uncounted::enter();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut held = Vec::new();
            for n in [1, N] {
                if n == N {
                    go.recv().unwrap();
                }
                let mut statuses = Vec::new();
                for _ in 0..n {
                    let (status, send, conn) = idle_client(proxy, roots.clone(), alpn).await;
                    statuses.push(status);
                    held.push((send, conn));
                }
                opened_tx.send(statuses).unwrap();
            }
            while close.try_recv().is_err() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            for (send, conn) in held {
                drop(send);
                conn.await.unwrap().unwrap();
            }
        })
    });
    // One connection first, so what the gateway keeps once (its leaf certificate, lazily built
    // state) is in the baseline.
    let first = opened.recv().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = heap_live();
    go_tx.send(()).unwrap();
    let statuses = opened.recv().unwrap();
    assert!(
        first
            .iter()
            .chain(&statuses)
            .all(|s| (400..500).contains(s)),
        "{first:?} {statuses:?}"
    );
    // Quiet past the hibernation delay (1 s).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let per_connection = (heap_live() - before) / N;
    assert!(
        per_connection < bound,
        "each idle {alpn:?} connection holds {per_connection} bytes of the gateway's heap"
    );
    close_tx.send(()).unwrap();
    tokio::task::spawn_blocking(move || clients.join().unwrap())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let left = (heap_live() - before) / N;
    assert!(
        left < 1024,
        "{left} bytes per connection stayed after the connections closed"
    );
    eprintln!("idle {alpn:?} connection: {per_connection} bytes of heap; after close {left}");
}

/// A client connection to proxy.golang.org through `proxy` that has had one answer, kept open:
/// the answer's status, the connection's request handle and its task. Dropping the handle
/// ends the connection; the task then returns.
async fn idle_client(
    proxy: std::net::SocketAddr,
    roots: rustls::RootCertStore,
    alpn: Alpn,
) -> (
    u16,
    Box<dyn std::any::Any>,
    tokio::task::JoinHandle<hyper::Result<()>>,
) {
    // Answered by the gateway itself (not a module path): no upstream in play.
    let req = http::Request::builder()
        .uri("https://proxy.golang.org/not-a-module-path")
        .header("host", "proxy.golang.org")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    match alpn {
        Alpn::H2 => {
            let (mut send, conn) = h2_through(proxy, "proxy.golang.org", roots).await;
            let status = answered(send.send_request(req).await.unwrap()).await;
            (status, Box::new(send), conn)
        }
        Alpn::H1 => {
            let (stream, head) = connect(proxy, "proxy.golang.org:443", "").await;
            assert_eq!(status(&head), 200, "{head}");
            let tls = tls_connect(stream, "proxy.golang.org", roots, Alpn::H1)
                .await
                .expect("TLS with gateway");
            let (mut send, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                    .await
                    .unwrap();
            let conn = tokio::spawn(conn);
            let status = answered(send.send_request(req).await.unwrap()).await;
            (status, Box::new(send), conn)
        }
    }
}

/// The status of a response whose body has been read to the end.
async fn answered(resp: http::Response<hyper::body::Incoming>) -> u16 {
    let status = resp.status().as_u16();
    http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap();
    status
}

/// One HTTP/2 frame: type, flags, stream, payload.
type Frame = (u8, u8, u32, Vec<u8>);

fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

async fn read_h2_frame<S: tokio::io::AsyncRead + Unpin>(io: &mut S) -> Frame {
    let mut head = [0u8; 9];
    io.read_exact(&mut head).await.expect("a frame");
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0; len];
    io.read_exact(&mut payload).await.unwrap();
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    (head[3], head[4], stream, payload)
}

/// Reads frames, acknowledging SETTINGS, until `stream` ends; every frame for it.
async fn h2_stream_frames<S>(io: &mut S, stream: u32) -> Vec<Frame>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    const DATA: u8 = 0;
    const HEADERS: u8 = 1;
    const RST_STREAM: u8 = 3;
    const SETTINGS: u8 = 4;
    const GOAWAY: u8 = 7;
    let mut got = Vec::new();
    loop {
        // A frame the gateway lost part of would leave it waiting for the rest, not answering.
        let frame = tokio::time::timeout(Duration::from_secs(10), read_h2_frame(io))
            .await
            .unwrap_or_else(|_| panic!("no answer on stream {stream} within 10 s"));
        assert_ne!(
            frame.0, GOAWAY,
            "the gateway ended the connection: {frame:?}"
        );
        if frame.0 == SETTINGS && frame.1 & 1 == 0 {
            io.write_all(&h2_frame(SETTINGS, 1, 0, &[])).await.unwrap();
        }
        if frame.2 == stream {
            assert_ne!(frame.0, RST_STREAM, "stream {stream} reset: {frame:?}");
            let end = matches!(frame.0, DATA | HEADERS) && frame.1 & 1 != 0;
            got.push(frame);
            if end {
                return got;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_http2_connection_keeps_its_header_table_and_half_read_frames_across_idle_spells() {
    // Raw frames, so that the second request names headers by the gateway's HPACK dynamic table
    // and arrives in two halves around an idle spell: letting go of the idle connection's
    // buffers (after 1 s quiet) keeps the table and any bytes of a frame not yet whole.
    let ca = TestCa::new();
    let gw = TestGateway::start(&ca, |_| {}).await;
    let (stream, head) = connect(gw.proxy, "proxy.golang.org:443", "").await;
    assert_eq!(status(&head), 200, "{head}");
    let mut tls = tls_connect(stream, "proxy.golang.org", gw.roots(), Alpn::H2)
        .await
        .expect("TLS with gateway");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (headers, settings) = (1, 4);
    let (end_stream_and_headers, none) = (0x5, 0);
    let literal_indexed = |name_index: u8, value: &str| {
        let mut b = vec![0x40 | name_index, value.len() as u8];
        b.extend_from_slice(value.as_bytes());
        b
    };
    // :method GET, :scheme https (static), :path and :authority added to the dynamic table.
    let mut block = vec![0x82, 0x87];
    block.extend(literal_indexed(4, "/not-a-module-path"));
    block.extend(literal_indexed(1, "proxy.golang.org"));
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend(h2_frame(settings, none, 0, &[]));
    hello.extend(h2_frame(headers, end_stream_and_headers, 1, &block));
    tls.write_all(&hello).await.unwrap();
    let first = h2_stream_frames(&mut tls, 1).await;
    assert_eq!(first[0].0, headers, "{first:?}");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // Stream 3 names :authority (dynamic 62) and :path (dynamic 63); its first half, then quiet
    // past the release, then the rest.
    let again = h2_frame(
        headers,
        end_stream_and_headers,
        3,
        &[0x82, 0x87, 0xbe, 0xbf],
    );
    tls.write_all(&again[..6]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    tls.write_all(&again[6..]).await.unwrap();
    let second = h2_stream_frames(&mut tls, 3).await;
    assert_eq!(second[0].0, headers, "{second:?}");
    // The same answer both times (the server's own HPACK state intact too: the same encoding
    // of the same head, or a shorter one from its table).
    let body = |frames: &[Frame]| -> Vec<u8> {
        frames
            .iter()
            .filter(|f| f.0 == 0)
            .flat_map(|f| f.3.clone())
            .collect()
    };
    assert_eq!(body(&first), body(&second));
    assert!(!body(&first).is_empty(), "{first:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_quiet_http1_connection_hibernates_and_wakes_on_its_next_request() {
    let ca = TestCa::new();
    let up = Upstream::tls(&ca, fixed("awake")).await;
    let gw = gateway_for(&up, &ca).await;
    let (stream, head) = connect(gw.proxy, "files.test:443", "").await;
    assert_eq!(status(&head), 200, "{head}");
    let mut a = tls_connect(stream, "files.test", gw.roots(), Alpn::H1)
        .await
        .expect("TLS with gateway");
    a.write_all(b"GET /1 HTTP/1.1\r\nHost: files.test\r\n\r\n")
        .await
        .unwrap();
    let (s, _, body) = read_response(&mut a).await;
    assert_eq!((s, body.as_str()), (200, "awake"));
    // Half a request head, then quiet past the hibernation delay (1 s): the connection lets go
    // of hyper's state and of its upstream connection, which another client connection now
    // forwards on.
    a.write_all(b"GET /2 HTTP/1.1\r\nHo").await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut b = h1_through(&gw, "files.test").await;
    assert_eq!(get_on(&mut b, "files.test", "/b").await.0, 200);
    assert_eq!(
        up.accepted(),
        1,
        "the hibernated connection gave its upstream connection back"
    );
    // The rest of the head arrives: the request is whole (the half kept across hibernation),
    // answered, and the connection stays open for the next one.
    a.write_all(b"st: files.test\r\n\r\n").await.unwrap();
    let (s, head, body) = read_response(&mut a).await;
    assert_eq!((s, body.as_str()), (200, "awake"), "{head}");
    assert!(
        !head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    a.write_all(b"GET /3 HTTP/1.1\r\nHost: files.test\r\n\r\n")
        .await
        .unwrap();
    let (s, _, body) = read_response(&mut a).await;
    assert_eq!((s, body.as_str()), (200, "awake"));
    let mut paths = up.paths();
    paths.sort();
    assert_eq!(paths, ["/1", "/2", "/3", "/b"]);
}

/// A client that sends its ClientHello in the same write as the CONNECT, before the gateway's
/// answer: hyper reads both, and the hello (what it read past the CONNECT head) must reach the
/// TLS handshake ahead of the socket's later bytes.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_hello_sent_with_the_connect_is_not_lost() {
    use std::io::{Read, Write};
    let ca = TestCa::new();
    let up = Upstream::tls(&ca, fixed("pipelined\n")).await;
    let gw = gateway_for(&up, &ca).await;
    let (proxy, roots) = (gw.proxy, gw.roots());
    let answer = tokio::task::spawn_blocking(move || {
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("files.test").unwrap();
        let mut tls = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
        let mut first = b"CONNECT files.test:443 HTTP/1.1\r\nHost: files.test:443\r\n\r\n".to_vec();
        tls.write_tls(&mut first).unwrap();
        let mut s = std::net::TcpStream::connect(proxy).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(&first).unwrap();
        let mut head = vec![];
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(s.read(&mut byte).unwrap(), 1, "CONNECT answer cut short");
            head.push(byte[0]);
        }
        assert!(
            head.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        let mut stream = rustls::Stream::new(&mut tls, &mut s);
        stream
            .write_all(b"GET /p HTTP/1.1\r\nHost: files.test\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut answer = vec![];
        let _ = stream.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer).into_owned()
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("pipelined\n"), "{answer}");
}
