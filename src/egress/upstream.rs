//! The upstream client: pooled HTTP/1.1 and HTTP/2 over rustls, with Mozilla roots plus an
//! optional extra CA file, and separate connect, TLS, response-head and idle timeouts.
//!
//! Upstream certificates are always verified; there is no switch to turn that off.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, BufReader, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::lane::{IdlePool, Lane, Origin, Pinned, Sent};
use crate::body::{Body, BoxError};
use crate::config::UpstreamConfig;
use crate::telemetry::metrics::Metrics;

/// Why an upstream exchange failed. Texts never contain credentials.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to {host}: {reason}")]
    Connect { host: String, reason: String },
    #[error("TLS with {host} failed: {reason}")]
    Tls { host: String, reason: String },
    #[error("{host} did not answer within {timeout:?}")]
    Timeout { host: String, timeout: Duration },
    #[error("request to {host} failed: {reason}")]
    Protocol { host: String, reason: String },
    #[error("cannot build upstream request: {0}")]
    Request(String),
}

impl UpstreamError {
    /// Bounded label.
    pub fn kind(&self) -> &'static str {
        match self {
            UpstreamError::Connect { .. } => "connect",
            UpstreamError::Tls { .. } => "tls",
            UpstreamError::Timeout { .. } => "timeout",
            UpstreamError::Protocol { .. } => "protocol",
            UpstreamError::Request(_) => "request",
        }
    }
}

/// Connector-level failure, carried through hyper-util's error as the source.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("{0}")]
    Tcp(String),
    #[error("{0}")]
    Tls(String),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

/// Which HTTP versions an upstream exchange may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire {
    /// HTTP/2 when the upstream offers it (one multiplexed connection per host), else HTTP/1.1.
    Negotiate,
    /// HTTP/1.1 only, from a pool of connections. Used for pass-through forwarding, where a
    /// large body streamed to one client would otherwise share a connection (its flow-control
    /// window and its one task) with every other client's requests.
    Http1,
}

/// A trust-anchor file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RootsError {
    #[error("{path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path}: {reason}")]
    Certificate { path: PathBuf, reason: String },
    #[error("{0}: no CERTIFICATE blocks")]
    Empty(PathBuf),
}

/// The pooled upstream client shared by all connections.
#[derive(Clone)]
pub struct UpstreamClient {
    client: Client<Connector, Body>,
    h1: Client<Connector, Body>,
    /// Opens HTTP/1.1 connections for lanes.
    h1_connector: Connector,
    /// Upstream connections between lanes.
    idle: Arc<IdlePool>,
    response_timeout: Duration,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for UpstreamClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamClient")
            .field("response_timeout", &self.response_timeout)
            .finish_non_exhaustive()
    }
}

impl UpstreamClient {
    /// Builds the client from validated configuration.
    pub fn new(cfg: &UpstreamConfig, metrics: Arc<Metrics>) -> Result<UpstreamClient, RootsError> {
        Self::with_roots(cfg, &[], metrics)
    }

    /// Like [`new`](Self::new), also trusting the roots in `extra_ca_files`.
    pub fn with_roots(
        cfg: &UpstreamConfig,
        extra_ca_files: &[&Path],
        metrics: Arc<Metrics>,
    ) -> Result<UpstreamClient, RootsError> {
        let mut files: Vec<&Path> = cfg.extra_ca_file.as_deref().into_iter().collect();
        files.extend_from_slice(extra_ca_files);
        let tls = client_tls_config(&files)?;
        let mut tls_h1 = tls.clone();
        tls_h1.alpn_protocols = vec![b"http/1.1".to_vec()];
        let connector = |tls: rustls::ClientConfig| Connector {
            tls: TlsConnector::from(Arc::new(tls)),
            connect_timeout: cfg.connect_timeout,
            tls_timeout: cfg.tls_timeout,
            metrics: metrics.clone(),
        };
        let h1_connector = connector(tls_h1.clone());
        let build = |tls: rustls::ClientConfig| {
            let connector = connector(tls);
            Client::builder(TokioExecutor::new())
                .pool_idle_timeout(cfg.idle_timeout)
                .pool_max_idle_per_host(cfg.max_idle_per_host)
                .pool_timer(TokioTimer::new())
                .timer(TokioTimer::new())
                .http2_adaptive_window(true)
                .build(connector)
        };
        Ok(UpstreamClient {
            client: build(tls),
            h1: build(tls_h1),
            h1_connector,
            idle: IdlePool::new(cfg.max_idle_per_host, cfg.idle_timeout),
            response_timeout: cfg.response_timeout,
            metrics,
        })
    }

    /// Sends `req` (HTTP/2 when the upstream offers it) and waits for the response head.
    /// `label` names the upstream in metrics and must come from configuration (bounded).
    pub async fn send(
        &self,
        req: Request<Body>,
        label: &str,
    ) -> Result<(Response<Incoming>, Duration), UpstreamError> {
        self.send_on(Wire::Negotiate, req, label).await
    }

    /// Like [`send`](Self::send), on the chosen [`Wire`].
    pub async fn send_on(
        &self,
        wire: Wire,
        req: Request<Body>,
        label: &str,
    ) -> Result<(Response<Incoming>, Duration), UpstreamError> {
        let host = req.uri().host().unwrap_or_default().to_string();
        let start = Instant::now();
        let client = match wire {
            Wire::Negotiate => &self.client,
            Wire::Http1 => &self.h1,
        };
        let res = tokio::time::timeout(self.response_timeout, client.request(req)).await;
        let res = match res {
            Err(_) => Err(UpstreamError::Timeout {
                host,
                timeout: self.response_timeout,
            }),
            Ok(Err(e)) => Err(classify_client_error(host, e)),
            Ok(Ok(resp)) => Ok(resp),
        };
        self.observed(res, start, label)
    }

    /// Forwards `req` (origin-form, with its `Host`) to `origin` over HTTP/1.1 on `lane`'s own
    /// upstream connection (see [`lane`](super::lane)); `sequential` when the client's requests
    /// come one after another (HTTP/1.x), so a lane finishing its previous exchange is waited
    /// for rather than bypassed. Timeouts, errors and metrics as [`send`](Self::send).
    pub async fn forward(
        &self,
        lane: &Lane,
        origin: &Origin,
        req: Request<Body>,
        label: &str,
        sequential: bool,
    ) -> Result<(Response<Incoming>, Duration), UpstreamError> {
        let start = Instant::now();
        let res = tokio::time::timeout(
            self.response_timeout,
            self.forward_on(lane, origin, req, sequential),
        )
        .await
        .unwrap_or_else(|_| {
            Err(UpstreamError::Timeout {
                host: origin.host().to_string(),
                timeout: self.response_timeout,
            })
        });
        self.observed(res, start, label)
    }

    async fn forward_on(
        &self,
        lane: &Lane,
        origin: &Origin,
        req: Request<Body>,
        sequential: bool,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let protocol = |e: hyper::Error| UpstreamError::Protocol {
            host: origin.host().to_string(),
            reason: match std::error::Error::source(&e) {
                Some(s) => format!("{e}: {s}"),
                None => e.to_string(),
            },
        };
        let mut req = match lane.send(origin, req, sequential).await {
            Sent::Done(res) => return res.map_err(protocol),
            Sent::Back(req) => req,
            Sent::Busy(req) => return self.shared_h1(origin, req).await,
        };
        // A connection from the idle pool may have been closed by the upstream since the
        // check that took it; a request it did not send is sent once more on a new one.
        let mut fresh = false;
        loop {
            if !lane.claim() {
                return self.shared_h1(origin, req).await;
            }
            let pooled = if fresh { None } else { self.idle.take(origin) };
            let reused = pooled.is_some();
            let io = match pooled {
                Some(io) => io,
                None => match self.h1_connector.clone().connect(origin.uri()).await {
                    Ok(io) => io,
                    Err(e) => {
                        lane.unclaim();
                        return Err(connect_error(origin.host().to_string(), e));
                    }
                },
            };
            let (sender, conn) = match hyper::client::conn::http1::Builder::new()
                .handshake(io)
                .await
            {
                Ok(pair) => pair,
                Err(e) => {
                    lane.unclaim();
                    return Err(protocol(e));
                }
            };
            lane.install(Pinned {
                origin: origin.key(),
                sender,
                conn,
                pool: self.idle.clone(),
            });
            match lane.send(origin, req, true).await {
                Sent::Done(res) => return res.map_err(protocol),
                Sent::Back(r) | Sent::Busy(r) if reused => {
                    req = r;
                    fresh = true;
                }
                Sent::Back(_) | Sent::Busy(_) => {
                    return Err(UpstreamError::Protocol {
                        host: origin.host().to_string(),
                        reason: "the connection closed before the request was sent".into(),
                    });
                }
            }
        }
    }

    /// `req` through the shared HTTP/1.1 pool, for a lane that is busy.
    async fn shared_h1(
        &self,
        origin: &Origin,
        mut req: Request<Body>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let mut uri = std::mem::take(req.uri_mut()).into_parts();
        uri.scheme = Some(origin.scheme.clone());
        uri.authority = Some(origin.authority.clone());
        *req.uri_mut() = Uri::from_parts(uri).map_err(|e| UpstreamError::Request(e.to_string()))?;
        self.h1
            .request(req)
            .await
            .map_err(|e| classify_client_error(origin.host().to_string(), e))
    }

    /// Counts and times an exchange's outcome.
    fn observed(
        &self,
        res: Result<Response<Incoming>, UpstreamError>,
        start: Instant,
        label: &str,
    ) -> Result<(Response<Incoming>, Duration), UpstreamError> {
        let elapsed = start.elapsed();
        let outcome = match &res {
            Ok(r) => crate::telemetry::metrics::status_class(r.status().as_u16()),
            Err(e) => e.kind(),
        };
        if matches!(res, Err(UpstreamError::Timeout { .. })) {
            self.metrics
                .limit_hits
                .with_label_values(&["upstream_timeout"])
                .inc();
        }
        self.metrics
            .upstream_duration
            .with_label_values(&[label, outcome])
            .observe(elapsed.as_secs_f64());
        res.map(|r| (r, elapsed))
    }
}

fn connect_error(host: String, e: ConnectError) -> UpstreamError {
    match e {
        ConnectError::Tcp(reason) => UpstreamError::Connect { host, reason },
        ConnectError::Tls(reason) => UpstreamError::Tls { host, reason },
        ConnectError::Timeout(timeout) => UpstreamError::Timeout { host, timeout },
    }
}

fn classify_client_error(host: String, e: hyper_util::client::legacy::Error) -> UpstreamError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(&e);
    while let Some(s) = source {
        if let Some(ce) = s.downcast_ref::<ConnectError>() {
            return connect_error(host, ce.clone());
        }
        source = s.source();
    }
    let reason = match std::error::Error::source(&e) {
        Some(s) => s.to_string(),
        None => e.to_string(),
    };
    UpstreamError::Protocol { host, reason }
}

/// rustls client configuration: Mozilla roots plus the given PEM files, ALPN h2 and http/1.1.
pub fn client_tls_config(extra_ca_files: &[&Path]) -> Result<rustls::ClientConfig, RootsError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for path in extra_ca_files {
        let bad_cert = |reason: String| RootsError::Certificate {
            path: path.to_path_buf(),
            reason,
        };
        let pem = std::fs::read(path).map_err(|source| RootsError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut n = 0;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            let cert = cert.map_err(|e| bad_cert(e.to_string()))?;
            roots.add(cert).map_err(|e| bad_cert(e.to_string()))?;
            n += 1;
        }
        if n == 0 {
            return Err(RootsError::Empty(path.to_path_buf()));
        }
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(crate::tls::tls_provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

/// Socket read size under TLS on upstream connections.
const UPSTREAM_READ_BUF: usize = 256 * 1024;

/// Opens TCP (and TLS for https) connections to upstreams.
#[derive(Clone)]
struct Connector {
    tls: TlsConnector,
    connect_timeout: Duration,
    tls_timeout: Duration,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector").finish_non_exhaustive()
    }
}

impl tower_service::Service<Uri> for Connector {
    type Response = UpstreamIo;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<UpstreamIo, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.connect(uri).await.map_err(Into::into) })
    }
}

impl Connector {
    async fn connect(self, uri: Uri) -> Result<UpstreamIo, ConnectError> {
        let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
        let host = uri
            .host()
            .ok_or_else(|| ConnectError::Tcp("URL has no host".into()))?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
            .to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tcp = tokio::time::timeout(self.connect_timeout, connect_tcp(&host, port))
            .await
            .map_err(|_| ConnectError::Timeout(self.connect_timeout))??;
        if !https {
            return Ok(UpstreamIo {
                inner: TokioIo::new(MaybeTls::Plain(tcp)),
                h2: false,
            });
        }
        let name = ServerName::try_from(host.clone())
            .map_err(|_| ConnectError::Tls(format!("invalid server name {host:?}")))?;
        let start = Instant::now();
        // rustls reads 4-16 KiB per call; reading the socket up to 256 KiB at a time cuts the
        // syscalls and window updates of a large download (BENCHMARKS.md, after run 9: 0-12%
        // less CPU per MB of a forwarded 100 MB body than 64 KiB reads, never more).
        let tcp = BufReader::with_capacity(UPSTREAM_READ_BUF, tcp);
        let tls = tokio::time::timeout(self.tls_timeout, self.tls.connect(name, tcp))
            .await
            .map_err(|_| ConnectError::Timeout(self.tls_timeout))?
            .map_err(|e| ConnectError::Tls(e.to_string()))?;
        self.metrics
            .tls_handshake_duration
            .with_label_values(&["upstream"])
            .observe(start.elapsed().as_secs_f64());
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        Ok(UpstreamIo {
            inner: TokioIo::new(MaybeTls::Tls(Box::new(tls))),
            h2,
        })
    }
}

/// Connects to the first address of `host:port` that accepts.
pub async fn connect_tcp(host: &str, port: u16) -> Result<TcpStream, ConnectError> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| ConnectError::Tcp(format!("cannot resolve {host}: {e}")))?
        .collect();
    connect_addrs(host, &addrs).await
}

/// Connects to the first of `addrs` (resolved and checked by the caller) that answers.
pub async fn connect_addrs(host: &str, addrs: &[SocketAddr]) -> Result<TcpStream, ConnectError> {
    let mut last = None;
    for &addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(ConnectError::Tcp(match last {
        Some(e) => e.to_string(),
        None => format!("{host} has no addresses"),
    }))
}

enum MaybeTls {
    Plain(TcpStream),
    Tls(Box<TlsStream<BufReader<TcpStream>>>),
}

impl AsyncRead for MaybeTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MaybeTls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            MaybeTls::Plain(s) => s.is_write_vectored(),
            MaybeTls::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_flush(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A connection to an upstream, as hyper-util's pool wants it.
pub struct UpstreamIo {
    inner: TokioIo<MaybeTls>,
    h2: bool,
}

impl std::fmt::Debug for UpstreamIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamIo")
            .field("h2", &self.h2)
            .finish_non_exhaustive()
    }
}

impl UpstreamIo {
    /// Whether the upstream has neither closed this idle connection nor sent anything on it
    /// (a read that would block). Anything else — end of stream, an error, stray bytes — and
    /// the connection is not to be reused.
    pub(super) fn is_open(&mut self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut byte = [0u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        Pin::new(self.inner.inner_mut())
            .poll_read(&mut cx, &mut buf)
            .is_pending()
    }
}

impl Connection for UpstreamIo {
    fn connected(&self) -> Connected {
        let c = Connected::new();
        if self.h2 { c.negotiated_h2() } else { c }
    }
}

impl hyper::rt::Read for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
}
