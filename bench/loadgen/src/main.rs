//! loadgen: the benchmark load client for modgate, plus the pieces a benchmark needs around it.
//!
//! - `run`: fixed concurrency, fixed duration (or request count), keep-alive or a new
//!   connection + TLS handshake per request, HTTP/1.1 or h2, optionally through an HTTP CONNECT
//!   proxy, trusting extra roots; prints one JSON line with throughput and latency percentiles.
//!   In duration mode the run ends at the deadline: requests still in flight are abandoned and
//!   MB/s counts the body bytes received before it (so one slow 100 MB download cannot stretch
//!   a run). `--connect-only` measures CONNECT alone (proxy answers 200, connection closed).
//! - `idle`: opens N connections (each completes one request), prints one JSON line once all
//!   are open, then holds them idle for a while — the idle-tunnel memory scenario.
//! - `serve`: a static HTTPS file server (h1 and h2) — the "direct upstream" limit. Files up to
//!   1 MiB are read whole; larger ones are streamed from disk with a Content-Length. With
//!   `--rate`/`--first-byte` every answer is paced like a distant upstream (a wide-area link).
//! - `certs`: a CA and a 127.0.0.1/localhost server certificate for `serve`.
//! - `mkzip`: a valid module zip of a given size (stored, incompressible content).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Generate load and print a JSON summary.
    Run(RunArgs),
    /// Open connections, one request each, then hold them idle.
    Idle(IdleArgs),
    /// Serve a directory over HTTPS on 127.0.0.1; prints the address.
    Serve {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        cert: PathBuf,
        #[arg(long)]
        key: PathBuf,
        #[arg(long, default_value = "127.0.0.1:0")]
        addr: SocketAddr,
        /// Pace each answer's body at this many bytes per second (0: as fast as possible).
        #[arg(long, default_value_t = 0)]
        rate: u64,
        /// Wait this long before each answer (a round trip to a distant upstream).
        #[arg(long, value_parser = parse_duration, default_value = "0ms")]
        first_byte: Duration,
    },
    /// Write ca.pem, cert.pem and key.pem (server certificate for 127.0.0.1 and localhost).
    Certs {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Write a module zip of about `size` bytes.
    Mkzip {
        #[arg(long)]
        module: String,
        #[arg(long)]
        version: String,
        #[arg(long)]
        size: u64,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Parser, Clone)]
struct RunArgs {
    /// https:// URLs, requested round-robin.
    #[arg(long = "url", required = true)]
    urls: Vec<String>,
    /// HTTP proxy (host:port) to CONNECT through.
    #[arg(long)]
    proxy: Option<String>,
    /// PEM roots to trust (in addition to none: only these are trusted).
    #[arg(long)]
    ca: Vec<PathBuf>,
    /// Use h2 (ALPN h2), else HTTP/1.1.
    #[arg(long)]
    h2: bool,
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Run for this long (e.g. 10s).
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    duration: Duration,
    /// Stop after this many requests in total instead.
    #[arg(long)]
    requests: Option<u64>,
    /// Open a new connection (and TLS handshake) for every request.
    #[arg(long)]
    new_conn: bool,
    /// Only CONNECT through the proxy (needs --proxy): each "request" is a new connection that
    /// is closed as soon as the proxy answers 200.
    #[arg(long)]
    connect_only: bool,
    /// A label copied into the output.
    #[arg(long, default_value = "")]
    label: String,
}

#[derive(Parser, Clone)]
struct IdleArgs {
    /// The https:// URL requested once on each connection.
    #[arg(long)]
    url: String,
    #[arg(long)]
    proxy: Option<String>,
    #[arg(long)]
    ca: Vec<PathBuf>,
    /// Connections to open and hold.
    #[arg(long, default_value_t = 1000)]
    count: usize,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 32)]
    parallel: usize,
    /// How long to hold them once all are open.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    hold: Duration,
    /// HTTP/2 (ALPN h2) instead of HTTP/1.1.
    #[arg(long)]
    h2: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| format!("bad duration {s}"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(60 * n)),
        _ => Err(format!("bad duration {s}")),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Run(args) => run(args).await,
        Cmd::Idle(args) => idle(args).await,
        Cmd::Serve {
            dir,
            cert,
            key,
            addr,
            rate,
            first_byte,
        } => serve(dir, cert, key, addr, Pace { rate, first_byte }).await,
        Cmd::Certs { dir } => certs(&dir),
        Cmd::Mkzip {
            module,
            version,
            size,
            out,
        } => mkzip(&module, &version, size, &out),
    }
}

// === run ===

struct Target {
    host: String,
    port: u16,
    path: String,
}

fn parse_url(url: &str) -> anyhow::Result<Target> {
    let uri: http::Uri = url.parse()?;
    if uri.scheme_str() != Some("https") {
        bail!("only https:// URLs are supported: {url}");
    }
    Ok(Target {
        host: uri.host().context("no host")?.to_string(),
        port: uri.port_u16().unwrap_or(443),
        path: uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or("/".into()),
    })
}

fn tls_config(cas: &[PathBuf], h2: bool) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in cas {
        let pem = std::fs::read(ca).with_context(|| ca.display().to_string())?;
        for c in rustls_pemfile::certs(&mut pem.as_slice()) {
            roots.add(c?)?;
        }
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![if h2 {
        b"h2".to_vec()
    } else {
        b"http/1.1".to_vec()
    }];
    Ok(Arc::new(cfg))
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

async fn open(
    t: &Target,
    proxy: Option<&str>,
    h2: bool,
    tls: &Arc<rustls::ClientConfig>,
) -> anyhow::Result<Sender> {
    let tcp = match proxy {
        Some(p) => connect_via(p, t).await?,
        None => {
            let s = TcpStream::connect((t.host.as_str(), t.port)).await?;
            s.set_nodelay(true)?;
            s
        }
    };
    let name = ServerName::try_from(t.host.clone())?;
    let io = tokio_rustls::TlsConnector::from(tls.clone())
        .connect(name, tcp)
        .await?;
    handshake(io, h2).await
}

/// A TCP connection to `proxy` on which CONNECT to `t` has been answered 200.
async fn connect_via(proxy: &str, t: &Target) -> anyhow::Result<TcpStream> {
    let mut s = TcpStream::connect(proxy).await?;
    s.set_nodelay(true)?;
    let authority = format!("{}:{}", t.host, t.port);
    s.write_all(format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes())
        .await?;
    let head = read_head(&mut s).await?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        bail!("CONNECT refused: {}", head.lines().next().unwrap_or(""));
    }
    Ok(s)
}

async fn handshake<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    io: S,
    h2: bool,
) -> anyhow::Result<Sender> {
    if h2 {
        let (send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io)).await?;
        tokio::spawn(conn);
        Ok(Sender::H2(send))
    } else {
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
        tokio::spawn(conn);
        Ok(Sender::H1(send))
    }
}

async fn read_head(s: &mut TcpStream) -> anyhow::Result<String> {
    let mut buf = Vec::new();
    let mut b = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if s.read(&mut b).await? == 0 {
            bail!("proxy closed the connection");
        }
        buf.push(b[0]);
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

async fn one(sender: &mut Sender, t: &Target, received: &AtomicU64) -> anyhow::Result<u64> {
    let req =
        http::Request::get(format!("https://{}:{}{}", t.host, t.port, t.path)).body(Empty::new())?;
    let resp = match sender {
        Sender::H1(s) => {
            let mut req = req;
            *req.uri_mut() = t.path.parse()?;
            // With the port unless it is 443 (RFC 9110 §7.2): squid builds the URL from Host.
            // Only on HTTP/1.1: h2 carries :authority, and nginx answers 400 to both.
            let host = if t.port == 443 {
                t.host.clone()
            } else {
                format!("{}:{}", t.host, t.port)
            };
            req.headers_mut()
                .insert(http::header::HOST, http::HeaderValue::try_from(host)?);
            s.ready().await?;
            s.send_request(req).await?
        }
        Sender::H2(s) => {
            s.ready().await?;
            s.send_request(req).await?
        }
    };
    if resp.status() != 200 {
        bail!("status {}", resp.status());
    }
    let mut body = resp.into_body();
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(d) = frame?.into_data() {
            n += d.len() as u64;
            received.fetch_add(d.len() as u64, Ordering::Relaxed);
        }
    }
    Ok(n)
}

/// One request on worker's connection (opening one first if needed): body bytes, or the error
/// and whether it came from opening the connection.
async fn step(
    sender: &mut Option<Sender>,
    t: &Target,
    args: &RunArgs,
    tls: &Arc<rustls::ClientConfig>,
    received: &AtomicU64,
) -> Result<u64, (&'static str, anyhow::Error)> {
    if args.connect_only {
        let proxy = args
            .proxy
            .as_deref()
            .ok_or_else(|| ("connect", anyhow::anyhow!("--connect-only needs --proxy")))?;
        connect_via(proxy, t).await.map_err(|e| ("connect", e))?;
        return Ok(0);
    }
    if sender.is_none() || args.new_conn {
        *sender = Some(
            open(t, args.proxy.as_deref(), args.h2, tls)
                .await
                .map_err(|e| ("connect", e))?,
        );
    }
    let s = sender.as_mut().expect("opened above");
    match one(s, t, received).await {
        Ok(n) => Ok(n),
        Err(e) => {
            *sender = None;
            Err(("request", e))
        }
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let targets: Arc<Vec<Target>> = Arc::new(
        args.urls
            .iter()
            .map(|u| parse_url(u))
            .collect::<Result<_, _>>()?,
    );
    let tls = tls_config(&args.ca, args.h2)?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let issued = Arc::new(AtomicU64::new(0));
    let received = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = vec![];
    for w in 0..args.concurrency {
        let (targets, tls, mut stop_rx, issued, received, args) = (
            targets.clone(),
            tls.clone(),
            stop_rx.clone(),
            issued.clone(),
            received.clone(),
            args.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut hist =
                hdrhistogram::Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).unwrap();
            let mut errors = 0u64;
            let mut sender: Option<Sender> = None;
            let mut i = w;
            loop {
                if *stop_rx.borrow() {
                    break;
                }
                // With a request count, the n-th request overall goes to the n-th URL (round
                // robin), so `--requests` equal to the URL count fetches each exactly once.
                let k = match args.requests {
                    Some(max) => match issued.fetch_add(1, Ordering::Relaxed) {
                        k if k >= max => break,
                        k => k as usize,
                    },
                    None => {
                        i += 1;
                        i - 1
                    }
                };
                let t = &targets[k % targets.len()];
                let t0 = Instant::now();
                let result = tokio::select! {
                    biased;
                    _ = stop_rx.wait_for(|stop| *stop) => break,
                    r = step(&mut sender, t, &args, &tls, &received) => r,
                };
                match result {
                    Ok(_) => {
                        hist.record(t0.elapsed().as_micros().max(1) as u64).ok();
                    }
                    Err((stage, e)) => {
                        errors += 1;
                        if errors < 3 {
                            eprintln!("{stage}: {e:#}");
                        }
                        if stage == "connect" {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
            }
            (hist, errors)
        }));
    }
    // In duration mode, throughput is what arrived before the deadline; in-flight requests are
    // abandoned (their latency is not recorded).
    let mut cut: Option<(u64, f64)> = None;
    if args.requests.is_none() {
        tokio::time::sleep(args.duration).await;
        cut = Some((
            received.load(Ordering::Relaxed),
            start.elapsed().as_secs_f64(),
        ));
        let _ = stop_tx.send(true);
    }
    let mut hist = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let mut errors = 0u64;
    for t in tasks {
        let (h, e) = t.await?;
        hist.add(h)?;
        errors += e;
    }
    let (bytes, secs) = cut.unwrap_or_else(|| {
        (
            received.load(Ordering::Relaxed),
            start.elapsed().as_secs_f64(),
        )
    });
    let out = serde_json::json!({
        "label": args.label,
        "requests": hist.len(),
        "errors": errors,
        "seconds": (secs * 1000.0).round() / 1000.0,
        "rps": (hist.len() as f64 / secs * 10.0).round() / 10.0,
        "mb_per_s": (bytes as f64 / secs / 1e6 * 10.0).round() / 10.0,
        "p50_ms": hist.value_at_quantile(0.5) as f64 / 1000.0,
        "p99_ms": hist.value_at_quantile(0.99) as f64 / 1000.0,
        "bytes": bytes,
    });
    println!("{out}");
    Ok(())
}

// === idle ===

async fn idle(args: IdleArgs) -> anyhow::Result<()> {
    let t = Arc::new(parse_url(&args.url)?);
    let tls = tls_config(&args.ca, args.h2)?;
    let start = Instant::now();
    let gate = Arc::new(tokio::sync::Semaphore::new(args.parallel.max(1)));
    let received = Arc::new(AtomicU64::new(0));
    let mut tasks = vec![];
    for _ in 0..args.count {
        let (t, tls, gate, received, proxy) = (
            t.clone(),
            tls.clone(),
            gate.clone(),
            received.clone(),
            args.proxy.clone(),
        );
        let h2 = args.h2;
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await?;
            let mut s = open(&t, proxy.as_deref(), h2, &tls).await?;
            one(&mut s, &t, &received).await?;
            anyhow::Ok(s)
        }));
    }
    let mut held = vec![];
    let mut errors = 0u64;
    for task in tasks {
        match task.await? {
            Ok(s) => held.push(s),
            Err(e) => {
                errors += 1;
                if errors < 3 {
                    eprintln!("idle: {e:#}");
                }
            }
        }
    }
    let out = serde_json::json!({
        "open": held.len(),
        "errors": errors,
        "open_seconds": (start.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
    });
    println!("{out}");
    use std::io::Write;
    std::io::stdout().flush()?;
    tokio::time::sleep(args.hold).await;
    drop(held);
    Ok(())
}

// === serve ===

/// How `serve` paces its answers.
#[derive(Clone, Copy)]
struct Pace {
    rate: u64,
    first_byte: Duration,
}

async fn serve(
    dir: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    addr: SocketAddr,
    pace: Pace,
) -> anyhow::Result<()> {
    let certs: Vec<CertificateDer<'static>> =
        rustls_pemfile::certs(&mut std::fs::read(&cert)?.as_slice()).collect::<Result<_, _>>()?;
    let key: PrivateKeyDer<'static> =
        rustls_pemfile::private_key(&mut std::fs::read(&key)?.as_slice())?.context("no key")?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("{}", listener.local_addr()?);
    let dir = Arc::new(dir);
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        let (acceptor, dir) = (acceptor.clone(), dir.clone());
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let svc =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let dir = dir.clone();
                    async move {
                        let path = req.uri().path().replace("%21", "!");
                        let rel = path.trim_start_matches('/');
                        let safe = !rel.split('/').any(|c| c == ".." || c.is_empty());
                        // A zero sleep still waits for the timer's next tick (about 1 ms).
                        if !pace.first_byte.is_zero() {
                            tokio::time::sleep(pace.first_byte).await;
                        }
                        let resp = match safe.then(|| dir.join(rel)) {
                            Some(p) => file_response(&p, pace.rate)
                                .await
                                .unwrap_or_else(|_| not_found()),
                            None => not_found(),
                        };
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), svc)
                .await;
        });
    }
}

type ServeBody = http_body_util::Either<Full<Bytes>, FileBody>;

/// Small files are read whole; larger ones stream from disk (memory does not grow with size).
async fn file_response(p: &Path, rate: u64) -> std::io::Result<http::Response<ServeBody>> {
    // Small files are read in place: three hops to the blocking pool per request would make
    // this upstream, not the proxy in front of it, the limit of a small-GET benchmark.
    if rate == 0 {
        let meta = std::fs::metadata(p)?;
        if !meta.is_file() {
            return Err(std::io::ErrorKind::NotFound.into());
        }
        if meta.len() <= 1 << 20 {
            return Ok(http::Response::new(http_body_util::Either::Left(
                Full::new(Bytes::from(std::fs::read(p)?)),
            )));
        }
    }
    let file = tokio::fs::File::open(p).await?;
    let meta = file.metadata().await?;
    if !meta.is_file() {
        return Err(std::io::ErrorKind::NotFound.into());
    }
    if rate > 0 {
        return Ok(http::Response::new(http_body_util::Either::Right(
            FileBody {
                file,
                left: meta.len(),
                pace: Some(Paced {
                    rate,
                    next: Box::pin(tokio::time::sleep(Duration::ZERO)),
                }),
            },
        )));
    }
    if meta.len() <= 1 << 20 {
        let data = tokio::fs::read(p).await?;
        return Ok(http::Response::new(http_body_util::Either::Left(
            Full::new(Bytes::from(data)),
        )));
    }
    Ok(http::Response::new(http_body_util::Either::Right(
        FileBody {
            file,
            left: meta.len(),
            pace: None,
        },
    )))
}

/// The pacing of one body: the next chunk may go at `next`.
struct Paced {
    rate: u64,
    next: std::pin::Pin<Box<tokio::time::Sleep>>,
}

/// A file body of known length, read in chunks as the connection takes them.
struct FileBody {
    file: tokio::fs::File,
    left: u64,
    pace: Option<Paced>,
}

impl hyper::body::Body for FileBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, std::io::Error>>> {
        use std::task::Poll;
        let this = self.get_mut();
        if this.left == 0 {
            return Poll::Ready(None);
        }
        let mut chunk = 256 << 10;
        if let Some(p) = &mut this.pace {
            if p.next.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            chunk = 16 << 10;
        }
        let mut buf = vec![0u8; this.left.min(chunk) as usize];
        let mut rb = tokio::io::ReadBuf::new(&mut buf);
        match std::pin::Pin::new(&mut this.file).poll_read(cx, &mut rb) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
            Poll::Ready(Ok(())) => {
                let n = rb.filled().len();
                if n == 0 {
                    return Poll::Ready(Some(Err(std::io::ErrorKind::UnexpectedEof.into())));
                }
                this.left -= n as u64;
                buf.truncate(n);
                if let Some(p) = &mut this.pace {
                    let at = p.next.deadline() + Duration::from_secs_f64(n as f64 / p.rate as f64);
                    p.next.as_mut().reset(at.max(tokio::time::Instant::now()));
                }
                Poll::Ready(Some(Ok(hyper::body::Frame::data(Bytes::from(buf)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.left)
    }
}

fn not_found() -> http::Response<ServeBody> {
    let mut r = http::Response::new(http_body_util::Either::Left(Full::new(Bytes::from_static(
        b"not found",
    ))));
    *r.status_mut() = http::StatusCode::NOT_FOUND;
    r
}

// === certs, mkzip ===

fn certs(dir: &Path) -> anyhow::Result<()> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    std::fs::create_dir_all(dir)?;
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::default();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    // Distinct subject names: with rcgen's default name on both, OpenSSL clients (squid,
    // mitmproxy) take the leaf for a self-signed certificate and refuse it.
    ca.distinguished_name
        .push(DnType::CommonName, "loadgen test CA");
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate()?;
    let mut leaf_params =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])?;
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let leaf = leaf_params.signed_by(&key, &issuer)?;
    std::fs::write(dir.join("ca.pem"), ca_cert.pem())?;
    std::fs::write(dir.join("cert.pem"), leaf.pem())?;
    std::fs::write(dir.join("key.pem"), key.serialize_pem())?;
    Ok(())
}

fn mkzip(module: &str, version: &str, size: u64, out: &Path) -> anyhow::Result<()> {
    use rand::RngCore;
    use std::io::Write;
    let f = std::fs::File::create(out)?;
    let mut z = zip::ZipWriter::new(std::io::BufWriter::new(f));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .large_file(false);
    z.start_file(format!("{module}@{version}/go.mod"), opts)?;
    z.write_all(format!("module {module}\n").as_bytes())?;
    let per_file: u64 = 1 << 20;
    let mut left = size;
    let mut rng = rand::rng();
    let mut buf = vec![0u8; per_file as usize];
    let mut i = 0;
    while left > 0 {
        let n = left.min(per_file);
        rng.fill_bytes(&mut buf[..n as usize]);
        z.start_file(format!("{module}@{version}/data/f{i:05}.bin"), opts)?;
        z.write_all(&buf[..n as usize])?;
        left -= n;
        i += 1;
    }
    z.finish()?;
    Ok(())
}
