//! The GOPROXY endpoint (`endpoint.listen`): modgate answering as a module proxy itself, for
//! agents that set `GOPROXY=https://gateway:8443/go` instead of HTTPS_PROXY. Every request is
//! read as on an intercepted proxy host (GOPROXY calls and `/sumdb/<name>/...`) and served by
//! [`crate::serve::dispatch`] from the same cache, policy and private routes; nothing is
//! forwarded as it came.
//!
//! TLS uses the configured certificate, or a leaf from modgate's CA for `endpoint.names`
//! (renewed like every leaf); plain HTTP only when `endpoint.plain_http` says so. With
//! `auth.users`, every request needs `Authorization: Basic` or `Bearer` (401 otherwise).

use crate::egress::lane::Lane;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::LazyConfigAcceptor;
use tokio_rustls::server::TlsStream;
use tracing::Instrument as _;

use crate::body::{Answer, Body};
use crate::config::EndpointConfig;
use crate::ingress::Ingress as State;
use crate::ingress::auth::Verdict;
use crate::ingress::conn;
use crate::telemetry::ctx::{ConnCtx, ReqCtx};
use crate::telemetry::labels::Mode;
use modgate_core::policy::host::normalize_host;

/// How the endpoint's TLS is set up (restart-only).
#[derive(Debug)]
pub enum EndpointTls {
    /// Plain HTTP (`endpoint.plain_http`).
    Off,
    /// The operator's certificate (`endpoint.cert_file`, `endpoint.key_file`).
    Fixed(Arc<rustls::ServerConfig>),
    /// A leaf from modgate's CA for the name the client asks for, one of `names`; a client
    /// that sends no SNI (it dialled an address) gets the first address-like name, else the
    /// first name.
    Leaf { names: Vec<String>, default: String },
}

impl EndpointTls {
    pub fn new(cfg: &EndpointConfig) -> anyhow::Result<EndpointTls> {
        if cfg.plain_http {
            return Ok(EndpointTls::Off);
        }
        if let (Some(cert), Some(key)) = (&cfg.cert_file, &cfg.key_file) {
            return Ok(EndpointTls::Fixed(Arc::new(load_pem(cert, key)?)));
        }
        let names = cfg.leaf_names();
        let default = names
            .iter()
            .find(|n| n.parse::<std::net::IpAddr>().is_ok())
            .or(names.first())
            .cloned()
            .unwrap_or_else(|| "localhost".to_string());
        Ok(EndpointTls::Leaf { names, default })
    }
}

/// A server configuration from PEM files: the certificate chain and its key.
fn load_pem(cert: &std::path::Path, key: &std::path::Path) -> anyhow::Result<rustls::ServerConfig> {
    let pem = std::fs::read(cert)
        .with_context(|| format!("endpoint.cert_file: cannot read {}", cert.display()))?;
    let chain = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("endpoint.cert_file: {} is not PEM", cert.display()))?;
    anyhow::ensure!(
        !chain.is_empty(),
        "endpoint.cert_file: {} holds no certificate",
        cert.display()
    );
    let pem = std::fs::read(key)
        .with_context(|| format!("endpoint.key_file: cannot read {}", key.display()))?;
    let key_der = rustls_pemfile::private_key(&mut pem.as_slice())
        .with_context(|| format!("endpoint.key_file: {} is not PEM", key.display()))?
        .with_context(|| format!("endpoint.key_file: {} holds no private key", key.display()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(crate::tls::tls_provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .context("endpoint.cert_file and endpoint.key_file do not make a usable certificate")?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

/// Accepts connections until shutdown.
pub async fn run(listener: TcpListener, state: Arc<State>, tls: Arc<EndpointTls>) {
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    conn::accept_loop(
        listener,
        state,
        "endpoint",
        move |stream, peer, state, permit| {
            let tls = tls.clone();
            async move {
                serve_conn(stream, peer, port, state, tls).await;
                drop(permit);
            }
        },
    )
    .await
}

async fn serve_conn(
    stream: TcpStream,
    peer: SocketAddr,
    port: u16,
    state: Arc<State>,
    tls: Arc<EndpointTls>,
) {
    let _guard = state.serve.metrics.connection("endpoint");
    let started = Instant::now();
    let conn = ConnCtx::new(peer, Mode::Endpoint, String::new(), port);
    let span = conn.span.clone();
    let handler_state = state.clone();
    let handler = move |req, ctx, lane| request(req, ctx, handler_state.clone(), lane);
    async move {
        if matches!(*tls, EndpointTls::Off) {
            crate::ingress::mitm::serve_http(stream, conn, state, handler).await;
            return;
        }
        let timeout = state.serve.config.intercept.tls_handshake_timeout;
        let handshake = Box::pin(tokio::time::timeout(
            timeout,
            accept_tls(stream, &tls, &state),
        ));
        let reason = match handshake.await {
            Ok(Ok(stream)) => {
                state
                    .serve
                    .metrics
                    .tls_handshake_duration
                    .with_label_values(&["client"])
                    .observe(started.elapsed().as_secs_f64());
                let serving = crate::ingress::mitm::serve_http(stream, conn, state, handler);
                Box::pin(serving).await;
                return;
            }
            Ok(Err(reason)) => reason,
            Err(_) => {
                state
                    .serve
                    .metrics
                    .limit_hits
                    .with_label_values(&["tls_handshake_timeout"])
                    .inc();
                "timeout"
            }
        };
        state
            .serve
            .metrics
            .tls_failures
            .with_label_values(&[reason])
            .inc();
        tracing::debug!(%peer, reason, "GOPROXY endpoint handshake refused");
    }
    .instrument(span)
    .await
}

/// The TLS handshake: the operator's certificate, or a leaf for the name the client asked for
/// when it is one of the endpoint's names. The error is a bounded reason label.
async fn accept_tls(
    stream: TcpStream,
    tls: &EndpointTls,
    state: &State,
) -> Result<TlsStream<TcpStream>, &'static str> {
    match tls {
        EndpointTls::Off => unreachable!("plain HTTP has no handshake"),
        EndpointTls::Fixed(cfg) => tokio_rustls::TlsAcceptor::from(cfg.clone())
            .accept(stream)
            .await
            .map_err(|_| "handshake"),
        EndpointTls::Leaf { names, default } => {
            let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream)
                .await
                .map_err(|_| "bad_client_hello")?;
            let name = match start.client_hello().server_name() {
                Some(sni) => normalize_host(sni),
                None => default.clone(),
            };
            if !names.contains(&name) {
                return Err("sni_mismatch");
            }
            let cfg = state
                .leaves
                .server_config(&name, true)
                .await
                .map_err(|_| "cert_error")?;
            start.into_stream(cfg).await.map_err(|_| "handshake")
        }
    }
}

/// One request: credentials, then the endpoint's path prefix, then the request path of every
/// other entry.
async fn request(
    mut req: Request<Incoming>,
    mut ctx: ReqCtx,
    state: Arc<State>,
    lane: Arc<Lane>,
) -> Result<Response<Body>, Infallible> {
    if let Some(auth) = state.auth.load_full() {
        let verdict = auth
            .check_value(
                req.headers().get(http::header::AUTHORIZATION),
                ctx.conn.client.ip(),
            )
            .await;
        if let Verdict::Allowed(user) = &verdict {
            ctx.user = Some(user.clone());
        } else {
            state.serve.metrics.auth_failures.inc();
            let answer = if verdict == Verdict::Limited {
                state
                    .serve
                    .metrics
                    .limit_hits
                    .with_label_values(&["auth_rate"])
                    .inc();
                Answer::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "modgate: too many failed authentications from this address; wait a minute",
                )
            } else {
                let mut a = Answer::new(
                    StatusCode::UNAUTHORIZED,
                    "modgate: authentication required: give a modgate user's name and password in ~/.netrc (machine HOST login USER password PASSWORD), in GOPROXY as https://USER:PASSWORD@HOST/..., or as a bearer token through GOAUTH",
                );
                for c in auth.endpoint_challenges() {
                    a = a.with_header(
                        http::header::WWW_AUTHENTICATE,
                        c.parse().expect("challenge is a valid header value"),
                    );
                }
                a
            };
            return Ok(finish_local(answer, ctx));
        }
    }
    let prefix = state.serve.config.endpoint.path_prefix.as_str();
    let path = req.uri().path();
    let rest = match path.strip_prefix(prefix) {
        Some(rest) if rest.starts_with('/') => rest.to_string(),
        _ => {
            let answer = Answer::new(
                StatusCode::NOT_FOUND,
                format!(
                    "not found: modgate's GOPROXY endpoint serves the module protocol under {prefix}/ (set GOPROXY to https://HOST{prefix})"
                ),
            );
            return Ok(finish_local(answer, ctx));
        }
    };
    if !prefix.is_empty() {
        let pq = match req.uri().query() {
            Some(q) => format!("{rest}?{q}"),
            None => rest,
        };
        match pq.parse::<http::uri::PathAndQuery>() {
            Ok(pq) => {
                let mut parts = req.uri().clone().into_parts();
                parts.path_and_query = Some(pq);
                if let Ok(uri) = http::Uri::from_parts(parts) {
                    *req.uri_mut() = uri;
                }
            }
            Err(_) => {
                let answer = Answer::new(StatusCode::BAD_REQUEST, "invalid request path");
                return Ok(finish_local(answer, ctx));
            }
        }
    }
    crate::serve::dispatch(req, ctx, state.serve.clone(), lane).await
}

/// An answer made here (no route was taken): observed like every other.
fn finish_local(answer: Answer, mut ctx: ReqCtx) -> Response<Body> {
    ctx.set_route("invalid", ctx.kind);
    ctx.reason = Some(answer.text.clone());
    crate::serve::finish(answer.into_response(), ctx)
}

/// Binds the endpoint's listener.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("endpoint.listen: cannot bind {addr}"))
}
