//! Test harness: a gateway on ephemeral loopback ports, TLS upstream fixtures with their own test
//! CA, and an agent that speaks CONNECT, TLS, HTTP/1.1 and h2 like a real client.

#![allow(dead_code)]

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use modgate::Gateway;
use modgate::body::{Body, full};
use modgate::config::Config;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// === TestCa ===

/// A CA for upstream fixtures (not the gateway's CA).
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pub pem: String,
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

impl TestCa {
    pub fn new() -> TestCa {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "modgate test upstream CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("upstream-ca.pem");
        std::fs::write(&path, cert.pem()).unwrap();
        TestCa {
            issuer: Issuer::new(params, key),
            pem: cert.pem(),
            path,
            _dir: dir,
        }
    }

    /// A server certificate for `names` (DNS names or IP literals).
    pub fn leaf(&self, names: &[&str]) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
    }
}

// === Upstream fixture ===

/// One request an upstream fixture received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub version: http::Version,
    pub headers: http::HeaderMap,
}

pub type Handler = Arc<
    dyn Fn(http::request::Parts, Bytes) -> Pin<Box<dyn Future<Output = Response<Body>> + Send>>
        + Send
        + Sync,
>;

/// A TLS server configuration for a test upstream, offering `alpn`.
fn server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    alpn: &[&[u8]],
) -> rustls::ServerConfig {
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    cfg
}

/// A TLS (or plain) HTTP server on 127.0.0.1 that records every request.
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// Connections accepted so far, each one's task (to close them from the server side).
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    /// Starts a TLS server with a certificate for 127.0.0.1 and localhost signed by `ca`.
    pub async fn tls(ca: &TestCa, handler: Handler) -> Upstream {
        let (certs, key) = ca.leaf(&["127.0.0.1", "localhost"]);
        Self::tls_with_cert(certs, key, handler).await
    }

    pub async fn tls_with_cert(
        certs: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        handler: Handler,
    ) -> Upstream {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        Self::tls_on(listener, certs, key, handler).await
    }

    /// A TLS server on a socket bound by the caller (in a network namespace, say).
    pub async fn tls_on(
        listener: std::net::TcpListener,
        certs: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        handler: Handler,
    ) -> Upstream {
        let cfg = server_config(certs, key, &[b"h2", b"http/1.1"]);
        Self::start(
            listener,
            Some(tokio_rustls::TlsAcceptor::from(Arc::new(cfg))),
            handler,
        )
        .await
    }

    /// Starts a plain-HTTP server.
    pub async fn plain(handler: Handler) -> Upstream {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        Self::start(listener, None, handler).await
    }

    /// A plain-HTTP server on a socket bound by the caller.
    pub async fn plain_on(listener: std::net::TcpListener, handler: Handler) -> Upstream {
        Self::start(listener, None, handler).await
    }

    async fn start(
        listener: std::net::TcpListener,
        tls: Option<tokio_rustls::TlsAcceptor>,
        handler: Handler,
    ) -> Upstream {
        listener.set_nonblocking(true).unwrap();
        let listener = TcpListener::from_std(listener).unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(vec![]));
        let seen2 = seen.clone();
        let conns = Arc::new(Mutex::new(vec![]));
        let conns2 = conns.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let handler = handler.clone();
                let seen = seen2.clone();
                let tls = tls.clone();
                let conn = tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let handler = handler.clone();
                        let seen = seen.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            seen.lock().unwrap().push(Seen {
                                method: parts.method.to_string(),
                                path: parts
                                    .uri
                                    .path_and_query()
                                    .map(|p| p.to_string())
                                    .unwrap_or_default(),
                                version: parts.version,
                                headers: parts.headers.clone(),
                            });
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            Ok::<_, std::convert::Infallible>(handler(parts, body).await)
                        }
                    });
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match tls {
                        Some(acceptor) => {
                            if let Ok(s) = acceptor.accept(stream).await {
                                let _ = builder.serve_connection(TokioIo::new(s), svc).await;
                            }
                        }
                        None => {
                            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                        }
                    }
                });
                conns2.lock().unwrap().push(conn.abort_handle());
            }
        });
        Upstream {
            addr,
            seen,
            conns,
            task,
        }
    }

    /// TCP connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.conns.lock().unwrap().len()
    }

    /// Closes every connection accepted so far, as a server whose idle timeout struck would.
    pub fn close_connections(&self) {
        for c in self.conns.lock().unwrap().iter() {
            c.abort();
        }
    }

    pub fn base_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    pub fn paths(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|s| s.path.clone())
            .collect()
    }
}

/// A handler serving a fixed map of path -> body, 404 otherwise.
pub fn files(map: HashMap<String, Vec<u8>>) -> Handler {
    let map = Arc::new(map);
    Arc::new(move |parts, _body| {
        let map = map.clone();
        Box::pin(async move {
            match map.get(parts.uri.path()) {
                Some(data) => Response::new(full(data.clone())),
                None => {
                    let mut r = Response::new(full("not found"));
                    *r.status_mut() = StatusCode::NOT_FOUND;
                    r
                }
            }
        })
    })
}

/// A handler answering every request with `text`.
pub fn fixed(text: &'static str) -> Handler {
    Arc::new(move |_, _| Box::pin(async move { Response::new(full(text)) }))
}

// === Gateway ===

/// A gateway on ephemeral ports with its CA and data in a temporary directory.
pub struct TestGateway {
    pub gateway: Option<Gateway>,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    pub ca_pem: String,
    pub ca_path: PathBuf,
    /// The configuration file the gateway was started with (reloadable).
    pub config_path: PathBuf,
}

impl TestGateway {
    /// Starts a gateway; `edit` adjusts the test configuration (loopback ports, temp dirs, and
    /// the test CA trusted for upstreams).
    pub async fn start(upstream_ca: &TestCa, edit: impl FnOnce(&mut Config)) -> TestGateway {
        Self::try_start(upstream_ca, edit)
            .await
            .expect("gateway starts")
    }

    /// Like [`start`](Self::start), handing back why the gateway refused to start.
    pub async fn try_start(
        upstream_ca: &TestCa,
        edit: impl FnOnce(&mut Config),
    ) -> anyhow::Result<TestGateway> {
        // RUST_LOG=modgate=debug shows the gateway's logs for a failing test.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config::default();
        cfg.proxy.listen = "127.0.0.1:0".parse().unwrap();
        cfg.admin.listen = "127.0.0.1:0".parse().unwrap();
        cfg.ca.dir = dir.path().join("certs");
        cfg.storage.data_dir = dir.path().join("data");
        cfg.upstream.extra_ca_file = Some(upstream_ca.path.clone());
        cfg.upstream.connect_timeout = std::time::Duration::from_secs(5);
        // Test upstreams are in no checksum database; tests of verification turn it on.
        cfg.sumdb.verify = "off".into();
        // Test upstreams listen on loopback, at random ports: the explicit exception a gateway
        // needs to reach them (tests of the default clear it).
        cfg.egress.allow_addresses = vec!["127.0.0.0/8".into(), "::1/128".into()];
        cfg.egress.connect_ports = vec!["1-65535".into()];
        edit(&mut cfg);
        // Written out, so that a test can reload it and point modgate's commands at it.
        let config_path = dir.path().join("modgate.toml");
        std::fs::write(&config_path, toml::to_string(&cfg).unwrap()).unwrap();
        let gateway = Gateway::start_with_path(cfg, Some(config_path.clone())).await?;
        let ca_path = gateway.ca().cert_path();
        Ok(TestGateway {
            proxy: gateway.proxy_addr(),
            admin: gateway.admin_addr(),
            ca_pem: gateway.ca().cert_pem().to_string(),
            ca_path,
            config_path,
            gateway: Some(gateway),
            dir,
        })
    }

    /// Edits the configuration file and reloads it, as SIGHUP does.
    pub fn reload_with(&self, edit: impl FnOnce(&mut Config)) {
        let mut cfg = modgate::config::load(&self.config_path).unwrap();
        edit(&mut cfg);
        std::fs::write(&self.config_path, toml::to_string(&cfg).unwrap()).unwrap();
        self.gw().runtime().reload().unwrap();
    }

    pub fn gw(&self) -> &Gateway {
        self.gateway.as_ref().unwrap()
    }

    /// Roots holding only the gateway CA, as an agent has them.
    pub fn roots(&self) -> rustls::RootCertStore {
        roots_from_pem(&self.ca_pem)
    }

    /// CONNECT to `target`, TLS with `sni` trusting the gateway CA, then one GET over `alpn`.
    pub async fn get(
        &self,
        target: &str,
        path: &str,
        alpn: Alpn,
    ) -> (StatusCode, http::HeaderMap, Bytes) {
        self.request(target, http::Method::GET, path, alpn).await
    }

    /// A GET whose answer's body is left to the caller, to read as it arrives.
    pub async fn open(&self, target: &str, path: &str) -> http::Response<hyper::body::Incoming> {
        let (stream, head) = connect(self.proxy, target, "").await;
        assert_eq!(status(&head), 200, "CONNECT {target}: {head}");
        let host = target.rsplit_once(':').unwrap().0;
        let tls = tls_connect(stream, host, self.roots(), Alpn::H1)
            .await
            .expect("TLS with gateway");
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::builder()
            .uri(path)
            .header(http::header::HOST, host)
            .body(Empty::<Bytes>::new())
            .unwrap();
        send.send_request(req).await.unwrap()
    }

    /// Like [`get`](Self::get), with another method.
    pub async fn request(
        &self,
        target: &str,
        method: http::Method,
        path: &str,
        alpn: Alpn,
    ) -> (StatusCode, http::HeaderMap, Bytes) {
        let (stream, head) = connect(self.proxy, target, "").await;
        assert_eq!(status(&head), 200, "CONNECT {target}: {head}");
        let host = target.rsplit_once(':').unwrap().0;
        let tls = tls_connect(stream, host, self.roots(), alpn)
            .await
            .expect("TLS with gateway");
        http_request(tls, method, host, path, alpn).await
    }

    /// Waits (at most 5s) until `name{labels}` reaches `want`; returns the last scrape.
    pub async fn metric_reaches(&self, name: &str, labels: &[(&str, &str)], want: f64) -> String {
        let mut m = String::new();
        for _ in 0..250 {
            m = self.metrics().await;
            if metric(&m, name, labels) >= want {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        m
    }

    /// GET over HTTP/1.1 on an intercepted `target`: whether a 200 with a complete body arrived
    /// (false for an error status, a body that broke off, or no answer at all).
    pub async fn complete_200(&self, target: &str, path: &str) -> bool {
        let (stream, head) = connect(self.proxy, target, "").await;
        assert_eq!(status(&head), 200, "CONNECT {target}: {head}");
        let host = target.rsplit_once(':').unwrap().0;
        let tls = tls_connect(stream, host, self.roots(), Alpn::H1)
            .await
            .unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::get(path)
            .header(http::header::HOST, host)
            .body(Empty::<Bytes>::new())
            .unwrap();
        // A connection closed before the response head is no complete 200 either.
        let Ok(resp) = send.send_request(req).await else {
            return false;
        };
        let ok = resp.status() == StatusCode::OK;
        ok && resp.into_body().collect().await.is_ok()
    }

    /// Scrapes /metrics.
    pub async fn metrics(&self) -> String {
        let stream = TcpStream::connect(self.admin).await.unwrap();
        let (status, _, body) = http_get(stream, "admin", "/metrics", Alpn::H1).await;
        assert_eq!(status, 200);
        String::from_utf8(body.to_vec()).unwrap()
    }
}

/// Sum of the samples of `name` whose labels contain every `labels` pair.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = match series.split_once('{') {
                Some((n, rest)) => (n, rest),
                None => (series, ""),
            };
            if n != name {
                return None;
            }
            if !labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
            {
                return None;
            }
            value.parse::<f64>().ok()
        })
        .sum()
}

pub fn roots_from_pem(pem: &str) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    roots
}

// === Agent ===

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    H1,
    H2,
}

/// Sends `CONNECT target` (plus raw `extra` header lines) and reads the response head.
pub async fn connect(proxy: SocketAddr, target: &str, extra: &str) -> (TcpStream, String) {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{extra}\r\n").as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut s).await;
    (s, head)
}

/// Reads bytes up to and including the blank line that ends a response head.
pub async fn read_head<S: AsyncRead + Unpin>(s: &mut S) -> String {
    let mut buf = vec![];
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte).await {
            Ok(1) => buf.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// Reads a whole response (head, then a Content-Length body or until close).
pub async fn read_response<S: AsyncRead + Unpin>(s: &mut S) -> (u16, String, String) {
    let head = read_head(s).await;
    let len = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<usize>().ok())?
    });
    let mut body = vec![];
    match len {
        Some(n) => {
            body.resize(n, 0);
            s.read_exact(&mut body).await.unwrap();
        }
        None => {
            let _ =
                tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut body))
                    .await;
        }
    }
    (
        status(&head),
        head,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// Status code of a response head ("HTTP/1.1 200 ...").
pub fn status(head: &str) -> u16 {
    head.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

pub async fn tls_connect<S>(
    stream: S,
    sni: &str,
    roots: rustls::RootCertStore,
    alpn: Alpn,
) -> std::io::Result<tokio_rustls::client::TlsStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = match alpn {
        Alpn::H1 => vec![b"http/1.1".to_vec()],
        Alpn::H2 => vec![b"h2".to_vec()],
    };
    let name = ServerName::try_from(sni.to_string()).unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, stream)
        .await
}

/// An HTTP/2 client connection to `host` through the gateway at `proxy`: CONNECT, TLS trusting
/// `roots` with ALPN h2 (asserted), the h2 handshake; its connection task is spawned.
pub async fn h2_through(
    proxy: SocketAddr,
    host: &str,
    roots: rustls::RootCertStore,
) -> (
    hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    tokio::task::JoinHandle<hyper::Result<()>>,
) {
    let (stream, head) = connect(proxy, &format!("{host}:443"), "").await;
    assert_eq!(status(&head), 200, "CONNECT {host}: {head}");
    let tls = tls_connect(stream, host, roots, Alpn::H2)
        .await
        .expect("TLS with gateway");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    (send, tokio::spawn(conn))
}

/// One GET over an established connection.
pub async fn http_get<S>(
    io: S,
    host: &str,
    path: &str,
    alpn: Alpn,
) -> (StatusCode, http::HeaderMap, Bytes)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    http_request(io, http::Method::GET, host, path, alpn).await
}

/// One request with `method` and no body; the whole answer.
pub async fn http_request<S>(
    io: S,
    method: http::Method,
    host: &str,
    path: &str,
    alpn: Alpn,
) -> (StatusCode, http::HeaderMap, Bytes)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, host)
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = match alpn {
        Alpn::H1 => {
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
                .await
                .unwrap();
            tokio::spawn(conn);
            send.send_request(req).await.unwrap()
        }
        Alpn::H2 => {
            let (mut send, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            let mut req = req;
            *req.uri_mut() = format!("https://{host}{path}").parse().unwrap();
            send.send_request(req).await.unwrap()
        }
    };
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (parts.status, parts.headers, body)
}

// === Heap accounting ===

/// The test binary's allocator: the system's, counting the bytes live that threads other than
/// [`Uncounted`] ones allocated, so a test can weigh what the gateway (in this process) holds
/// per connection without the clients that hold them open.
pub struct CountingAlloc;

static HEAP_LIVE: std::sync::atomic::AtomicIsize = std::sync::atomic::AtomicIsize::new(0);

thread_local! {
    static UNCOUNTED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn counted() -> bool {
    UNCOUNTED.try_with(|u| !u.get()).unwrap_or(false)
}

fn count(delta: isize) {
    if counted() {
        HEAP_LIVE.fetch_add(delta, std::sync::atomic::Ordering::Relaxed);
    }
}

// SAFETY: every call goes to `System` unchanged; only a counter is updated beside it.
unsafe impl std::alloc::GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let p = unsafe { std::alloc::System.alloc(layout) };
        if !p.is_null() {
            count(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { std::alloc::System.dealloc(ptr, layout) };
        count(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new: usize) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let p = unsafe { std::alloc::System.realloc(ptr, layout, new) };
        if !p.is_null() {
            count(new as isize - layout.size() as isize);
        }
        p
    }
}

/// Bytes live on the heap, allocated by counted threads (see [`CountingAlloc`]).
pub fn heap_live() -> isize {
    HEAP_LIVE.load(std::sync::atomic::Ordering::Relaxed)
}

/// While alive, this thread's allocations are not counted (a client's side of connections).
/// Blocks allocated by a thread should be freed by it, as a client's and a server's are.
pub struct Uncounted(());

impl Uncounted {
    pub fn enter() -> Uncounted {
        UNCOUNTED.with(|u| u.set(true));
        Uncounted(())
    }
}

impl Drop for Uncounted {
    fn drop(&mut self) {
        UNCOUNTED.with(|u| u.set(false));
    }
}

// === Tools ===

/// The go commands the end-to-end tests run with: Debian bookworm's Go 1.19 and Go 1.23 from
/// bookworm-backports (`.ci/run` installs both, and Go 1.21 for the toolchain switch).
pub const GO_VERSIONS: [&str; 2] = ["1.19", "1.23"];

/// The go command of Debian's `golang-VERSION-go`; panics (never skips) when it is missing.
pub fn go_tool(version: &str) -> PathBuf {
    let p = PathBuf::from(format!("/usr/lib/go-{version}/bin/go"));
    assert!(
        p.is_file(),
        "required tool Go {version} is not installed: run .ci/run (it installs golang-{version}-go)"
    );
    p
}

/// Go `version` in `dir` with a clean environment of its own under `home` (PATH, HOME, GOPATH,
/// GOMODCACHE, GOCACHE, GOTOOLCHAIN=local, no telemetry, writable module cache, no cgo); the
/// test adds GOPROXY, GOSUMDB and the way to modgate.
pub fn go_command(version: &str, dir: &Path, home: &Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(go_tool(version));
    go_env(&mut cmd, dir, home);
    cmd
}

/// [`go_command`]'s environment on another program that runs the go command (govulncheck).
pub fn go_env(cmd: &mut std::process::Command, dir: &Path, home: &Path) {
    cmd.current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("GOPATH", home.join("gopath"))
        .env("GOMODCACHE", home.join("modcache"))
        .env("GOCACHE", home.join("gocache"))
        .env("GOTOOLCHAIN", "local")
        .env("GOTELEMETRY", "off")
        .env("GOFLAGS", "-modcacherw")
        .env("CGO_ENABLED", "0");
}

/// Path of a required tool; panics (never skips) when it is missing.
pub fn tool(name: &str) -> PathBuf {
    let candidates: &[&str] = match name {
        "go" => &[
            "/usr/lib/go-1.19/bin/go",
            "/usr/lib/go/bin/go",
            "/usr/local/go/bin/go",
        ],
        _ => &[],
    };
    for c in candidates {
        if Path::new(c).is_file() {
            return PathBuf::from(c);
        }
    }
    if let Ok(path) = which(name) {
        return path;
    }
    panic!("required tool `{name}` is not installed (run .ci/run or apt-get install it)");
}

fn which(name: &str) -> Result<PathBuf, ()> {
    let path = std::env::var_os("PATH").ok_or(())?;
    for dir in std::env::split_paths(&path) {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(())
}

// === git http-backend ===

/// A handler that runs `git http-backend` (CGI) over the repositories under `root`.
pub fn git_http_backend(root: PathBuf) -> Handler {
    Arc::new(move |parts, body| {
        let root = root.clone();
        Box::pin(async move {
            let header = |name: &str| {
                parts
                    .headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string()
            };
            let mut cmd = tokio::process::Command::new(tool("git"));
            cmd.arg("http-backend")
                .env_clear()
                .env("GIT_PROJECT_ROOT", &root)
                .env("GIT_HTTP_EXPORT_ALL", "1")
                .env("PATH_INFO", parts.uri.path())
                .env("QUERY_STRING", parts.uri.query().unwrap_or(""))
                .env("REQUEST_METHOD", parts.method.as_str())
                .env("CONTENT_TYPE", header("content-type"))
                .env("CONTENT_LENGTH", body.len().to_string())
                .env("HTTP_CONTENT_ENCODING", header("content-encoding"))
                .env("GIT_PROTOCOL", header("git-protocol"))
                .env("REMOTE_ADDR", "127.0.0.1")
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            let mut child = cmd.spawn().expect("git http-backend starts");
            let mut stdin = child.stdin.take().unwrap();
            let writer = tokio::spawn(async move {
                let _ = stdin.write_all(&body).await;
            });
            let out = child.wait_with_output().await.unwrap();
            writer.await.unwrap();
            let split = out
                .stdout
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map(|i| (i, 4))
                .or_else(|| {
                    out.stdout
                        .windows(2)
                        .position(|w| w == b"\n\n")
                        .map(|i| (i, 2))
                });
            let Some((at, sep)) = split else {
                let mut r = Response::new(full(out.stderr));
                *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                return r;
            };
            let head = String::from_utf8_lossy(&out.stdout[..at]).into_owned();
            let mut resp = Response::new(full(out.stdout[at + sep..].to_vec()));
            for line in head.lines() {
                let Some((k, v)) = line.split_once(':') else {
                    continue;
                };
                let v = v.trim();
                if k.eq_ignore_ascii_case("status") {
                    let code = v.split_whitespace().next().unwrap_or("500");
                    *resp.status_mut() = StatusCode::from_bytes(code.as_bytes()).unwrap();
                } else {
                    resp.headers_mut().append(
                        http::HeaderName::from_bytes(k.trim().as_bytes()).unwrap(),
                        http::HeaderValue::from_str(v).unwrap(),
                    );
                }
            }
            resp
        })
    })
}

/// Runs `git` with `args` in `dir`, panicking with its output on failure.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new(tool("git"))
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// === Scripted upstream ===

/// What a scripted upstream answers for one path.
#[derive(Debug, Clone)]
pub enum Reply {
    /// Status and body, after an optional delay.
    Body(u16, Vec<u8>, std::time::Duration),
    /// Declares `declared` bytes, sends `sent`, then breaks the connection.
    Abort { declared: u64, sent: Vec<u8> },
    /// A redirect: status and `Location`.
    Redirect(u16, String),
    /// Sends `body[..split]` (with a Content-Length for all of it), then the rest only once
    /// `gate` has a permit: a fill the test holds in progress.
    Gated {
        body: Vec<u8>,
        split: usize,
        gate: Arc<tokio::sync::Semaphore>,
    },
    /// Sends `body` in `chunk`-byte pieces with `delay` between them.
    Slow {
        body: Vec<u8>,
        chunk: usize,
        delay: std::time::Duration,
    },
}

/// A TLS upstream on 127.0.0.1 (HTTP/1.1 only) that answers each request with `200` and the
/// body mapped to its path, with no Content-Length and no chunking: the body ends when it
/// closes the connection, cleanly (TLS close_notify). What a misbehaving upstream sends when it
/// stops part-way but says nothing. Returns its base URL; unknown paths get an empty body.
pub async fn close_delimited_upstream(
    ca: &TestCa,
    bodies: HashMap<String, Vec<u8>>,
) -> (String, tokio::task::JoinHandle<()>) {
    use tokio::io::AsyncWriteExt as _;
    let (certs, key) = ca.leaf(&["127.0.0.1", "localhost"]);
    let cfg = server_config(certs, key, &[b"http/1.1"]);
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!(
        "https://127.0.0.1:{}",
        listener.local_addr().unwrap().port()
    );
    let bodies = Arc::new(bodies);
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (acceptor, bodies) = (acceptor.clone(), bodies.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                let head = read_head(&mut tls).await;
                let path = head.split(' ').nth(1).unwrap_or("/").to_string();
                let body = bodies.get(&path).cloned().unwrap_or_default();
                let mut out = b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n".to_vec();
                out.extend_from_slice(&body);
                let _ = tls.write_all(&out).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (base, task)
}

/// Replies by path that a test can change while the upstream runs.
#[derive(Debug, Default)]
pub struct Script {
    replies: Mutex<HashMap<String, Reply>>,
}

impl Script {
    pub fn set(&self, path: &str, reply: Reply) {
        self.replies.lock().unwrap().insert(path.to_string(), reply);
    }

    pub fn ok(&self, path: &str, body: impl Into<Vec<u8>>) {
        self.set(
            path,
            Reply::Body(200, body.into(), std::time::Duration::ZERO),
        );
    }
}

/// A handler answering from `script` (404 "not found: <path>" for unknown paths).
pub fn scripted(script: Arc<Script>) -> Handler {
    Arc::new(move |parts, _| {
        let reply = script
            .replies
            .lock()
            .unwrap()
            .get(parts.uri.path())
            .cloned();
        let path = parts.uri.path().to_string();
        Box::pin(async move {
            match reply {
                None => {
                    let mut r = Response::new(full(format!("not found: {path}")));
                    *r.status_mut() = StatusCode::NOT_FOUND;
                    r
                }
                Some(Reply::Body(status, body, delay)) => {
                    tokio::time::sleep(delay).await;
                    let mut r = Response::new(full(body));
                    *r.status_mut() = StatusCode::from_u16(status).unwrap();
                    r
                }
                Some(Reply::Redirect(status, location)) => {
                    let mut r = Response::new(full("moved"));
                    *r.status_mut() = StatusCode::from_u16(status).unwrap();
                    r.headers_mut()
                        .insert(http::header::LOCATION, location.parse().unwrap());
                    r
                }
                Some(Reply::Slow { body, chunk, delay }) => {
                    let len = body.len() as u64;
                    let pieces: Vec<Bytes> =
                        body.chunks(chunk).map(Bytes::copy_from_slice).collect();
                    let stream = futures_util::stream::unfold(
                        pieces.into_iter(),
                        move |mut it| async move {
                            let next = it.next()?;
                            tokio::time::sleep(delay).await;
                            Some((
                                Ok::<_, modgate::body::BoxError>(hyper::body::Frame::data(next)),
                                it,
                            ))
                        },
                    );
                    let mut r = Response::new(http_body_util::BodyExt::boxed(
                        http_body_util::StreamBody::new(stream),
                    ));
                    r.headers_mut()
                        .insert(http::header::CONTENT_LENGTH, len.into());
                    r
                }
                Some(Reply::Gated { body, split, gate }) => {
                    let len = body.len() as u64;
                    let rest = Bytes::copy_from_slice(&body[split..]);
                    let head = Bytes::from(body[..split].to_vec());
                    let stream = futures_util::stream::unfold(0u8, move |step| {
                        let (gate, head, rest) = (gate.clone(), head.clone(), rest.clone());
                        async move {
                            let data = match step {
                                0 => head,
                                1 => {
                                    let _ = gate.acquire().await;
                                    rest
                                }
                                _ => return None,
                            };
                            Some((
                                Ok::<_, modgate::body::BoxError>(hyper::body::Frame::data(data)),
                                step + 1,
                            ))
                        }
                    });
                    let mut r = Response::new(http_body_util::BodyExt::boxed(
                        http_body_util::StreamBody::new(stream),
                    ));
                    r.headers_mut()
                        .insert(http::header::CONTENT_LENGTH, len.into());
                    r
                }
                Some(Reply::Abort { declared, sent }) => {
                    // The head and the first bytes go out; a moment later the body breaks off.
                    let body = http_body_util::StreamBody::new(futures_util::stream::unfold(
                        Some(sent),
                        |state| async move {
                            match state {
                                Some(sent) => Some((
                                    Ok::<_, modgate::body::BoxError>(hyper::body::Frame::data(
                                        Bytes::from(sent),
                                    )),
                                    None,
                                )),
                                None => {
                                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                                    Some((Err("upstream broke off".into()), None))
                                }
                            }
                        },
                    ));
                    let mut r = Response::new(http_body_util::BodyExt::boxed(body));
                    r.headers_mut()
                        .insert(http::header::CONTENT_LENGTH, declared.into());
                    r
                }
            }
        })
    })
}

// === Module trees ===

/// A module zip as the GOPROXY protocol serves it: every entry under `module@version/`.
pub fn module_zip(module: &str, version: &str, files: &[(&str, &str)]) -> Vec<u8> {
    use std::io::Write as _;
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

/// Text that does not compress away: `n` bytes of a Go comment with pseudo-random digits.
pub fn noise(n: usize) -> String {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut s = String::from("package a\n// ");
    while s.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.push(char::from(b'0' + (x % 10) as u8));
    }
    s.push('\n');
    s
}

/// `zip` with 16 bytes flipped in the middle of its first entry's file data: the same length
/// and a valid structure, but data that fails its CRC-32 (or does not inflate).
pub fn flip_file_data(zip: &[u8]) -> Vec<u8> {
    let le16 = |i: usize| u16::from_le_bytes([zip[i], zip[i + 1]]) as usize;
    let le32 = |i: usize| u32::from_le_bytes([zip[i], zip[i + 1], zip[i + 2], zip[i + 3]]) as usize;
    assert_eq!(&zip[..4], b"PK\x03\x04", "starts with a local file header");
    let compressed = le32(18);
    let data = 30 + le16(26) + le16(28);
    assert!(compressed >= 64, "room to flip: {compressed}");
    let mut out = zip.to_vec();
    for b in &mut out[data + compressed / 2..data + compressed / 2 + 16] {
        *b ^= 0xff;
    }
    out
}

/// Writes `module@version` into a GOPROXY file tree (escaped paths): .info, .mod, .zip, list.
pub fn write_module(root: &Path, module: &str, version: &str, gomod: &str, files: &[(&str, &str)]) {
    write_module_at(root, module, version, gomod, files, "2024-01-02T03:04:05Z");
}

/// [`write_module`] with the `.info` Time `time` (RFC 3339).
pub fn write_module_at(
    root: &Path,
    module: &str,
    version: &str,
    gomod: &str,
    files: &[(&str, &str)],
    time: &str,
) {
    let esc = modgate_core::gomod::path::escape_path(module).unwrap();
    let escv = modgate_core::gomod::path::escape_version(version).unwrap();
    let dir = root.join(&esc).join("@v");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join(format!("{escv}.info")),
        format!(r#"{{"Version":"{version}","Time":"{time}"}}"#),
    )
    .unwrap();
    std::fs::write(dir.join(format!("{escv}.mod")), gomod).unwrap();
    let mut all: Vec<(&str, &str)> = vec![("go.mod", gomod)];
    all.extend_from_slice(files);
    std::fs::write(
        dir.join(format!("{escv}.zip")),
        module_zip(module, version, &all),
    )
    .unwrap();
    let list = dir.join("list");
    let mut existing = std::fs::read_to_string(&list).unwrap_or_default();
    existing.push_str(version);
    existing.push('\n');
    std::fs::write(list, existing).unwrap();
}

/// A handler serving a GOPROXY file tree from disk (request paths are percent-decoded).
pub fn files_dir(root: PathBuf) -> Handler {
    Arc::new(move |parts, _| {
        let root = root.clone();
        Box::pin(async move {
            let decoded = parts.uri.path().replace("%21", "!");
            let rel = decoded.trim_start_matches('/');
            let ok = !rel.split('/').any(|c| c == ".." || c.is_empty());
            match ok
                .then(|| std::fs::read(root.join(rel)))
                .and_then(Result::ok)
            {
                Some(data) => Response::new(full(data)),
                None => {
                    let mut r = Response::new(full(format!("not found: {decoded}")));
                    *r.status_mut() = StatusCode::NOT_FOUND;
                    r
                }
            }
        })
    })
}

// === Checksum database fixture ===

/// The Go checksum-database fixture (tests/fixtures/sumdb), serving TLS on 127.0.0.1.
pub struct SumDb {
    pub vkey: String,
    pub addr: String,
    pub log: PathBuf,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Drop for SumDb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl SumDb {
    /// Builds (once) and starts the fixture over the GOPROXY tree at `goproxy`.
    pub fn start(ca: &TestCa, goproxy: &Path) -> SumDb {
        Self::start_at(ca, goproxy, &["127.0.0.1", "localhost"], &[], "127.0.0.1:0")
    }

    /// Starts the fixture with a certificate for `names`, listening on `listen`, its command
    /// line prefixed by `wrap` (e.g. `ip netns exec NS`).
    pub fn start_at(
        ca: &TestCa,
        goproxy: &Path,
        names: &[&str],
        wrap: &[&str],
        listen: &str,
    ) -> SumDb {
        use std::io::BufRead as _;
        let bin = sumdb_fixture_binary();
        let dir = tempfile::tempdir().unwrap();
        let (certs, key) = ca.leaf(names);
        let cert_pem = pem_block("CERTIFICATE", certs[0].as_ref());
        let key_pem = pem_block("PRIVATE KEY", key.secret_der());
        std::fs::write(dir.path().join("cert.pem"), cert_pem).unwrap();
        std::fs::write(dir.path().join("key.pem"), key_pem).unwrap();
        let log = dir.path().join("requests.log");
        let (program, pre) = match wrap.split_first() {
            Some((p, rest)) => (PathBuf::from(p), rest.to_vec()),
            None => (bin.clone(), vec![]),
        };
        let mut cmd = std::process::Command::new(program);
        cmd.args(pre);
        if !wrap.is_empty() {
            cmd.arg(&bin);
        }
        let mut child = cmd
            .arg("-listen")
            .arg(listen)
            .arg("-goproxy")
            .arg(goproxy)
            .arg("-cert")
            .arg(dir.path().join("cert.pem"))
            .arg("-key")
            .arg(dir.path().join("key.pem"))
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let (vkey, addr) = line
            .trim()
            .split_once(' ')
            .expect("fixture prints key and address");
        SumDb {
            vkey: vkey.to_string(),
            addr: addr.to_string(),
            log,
            child,
            _dir: dir,
        }
    }

    pub fn base_url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Every path the database was asked for.
    pub fn requests(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with('/'))
            .map(str::to_string)
            .collect()
    }
}

fn pem_block(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Builds the sumdb fixture with the real go command and Debian's x/mod sources.
fn sumdb_fixture_binary() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let gopath = Path::new("/usr/share/gocode");
        assert!(
            gopath.join("src/golang.org/x/mod/sumdb").is_dir(),
            "golang-golang-x-mod-dev is not installed (run .ci/run or apt-get install it)"
        );
        let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("sumdb-fixture");
        std::fs::create_dir_all(&out_dir).unwrap();
        let bin = out_dir.join(format!("sumdb-fixture-{}", std::process::id()));
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sumdb/main.go");
        let out = std::process::Command::new(tool("go"))
            .arg("build")
            .arg("-o")
            .arg(&bin)
            .arg(&src)
            .env("GO111MODULE", "off")
            .env("GOPATH", gopath)
            .env("GOCACHE", out_dir.join("gocache"))
            .env("GOFLAGS", "")
            .env("HOME", &out_dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "building the sumdb fixture failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        bin
    })
    .clone()
}

/// A command for the modgate binary that is killed (SIGKILL) when the thread that started it
/// exits, so a gateway never outlives its test, even when nextest cancels a run. Start it from
/// the test's own thread (or a runtime worker), not from a short-lived one.
/// What a `modgate serve` child prints on stdout, read up to the banner's last line (`export
/// GIT_SSL_CAINFO=`, printed once it serves), and the proxy address the banner names.
pub fn read_banner(child: &mut std::process::Child) -> (Vec<String>, String) {
    use std::io::BufRead;
    let (mut banner, mut proxy) = (vec![], String::new());
    let out = child.stdout.take().expect("stdout is piped");
    for line in std::io::BufReader::new(out).lines() {
        let line = line.unwrap();
        if let Some(p) = line.strip_prefix("export HTTPS_PROXY=http://") {
            proxy = p.to_string();
        }
        let done = line.starts_with("export GIT_SSL_CAINFO=");
        banner.push(line);
        if done {
            break;
        }
    }
    (banner, proxy)
}

pub fn modgate_command() -> std::process::Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_modgate"));
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
    cmd
}

/// A GOPROXY upstream over TLS serving one module version (a go.mod and one Go file), with the
/// directory its files are in.
pub async fn one_module_upstream(
    ca: &TestCa,
    module: &str,
    version: &str,
) -> (tempfile::TempDir, Upstream) {
    let tree = tempfile::tempdir().unwrap();
    write_module(
        tree.path(),
        module,
        version,
        &format!("module {module}\n\ngo 1.19\n"),
        &[("m.go", "package m\n")],
    );
    let upstream = Upstream::tls(ca, files_dir(tree.path().to_path_buf())).await;
    (tree, upstream)
}
