//! The proxy listener: accepts agent connections, speaks HTTP/1.1, checks proxy credentials,
//! and handles CONNECT (intercept, tunnel or deny) and absolute-form plain-HTTP requests.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

use tracing::Instrument as _;

use crate::body::Answer;
use crate::body::Body;
use crate::egress::upstream;
use crate::ingress::Ingress as State;
use crate::ingress::io::Prefixed;
use crate::ingress::{conn, mitm, tunnel};
use crate::serve::state::AddrRefused;
use crate::telemetry::ctx::ConnCtx;
use crate::telemetry::labels::Mode;
use modgate_core::policy::egress::Decision;
use modgate_core::policy::host::{normalize_host, valid_host};

/// Accepts connections until shutdown.
pub async fn run(listener: TcpListener, state: Arc<State>) {
    conn::accept_loop(
        listener,
        state,
        "proxy",
        |stream, peer, state, permit| async move {
            serve_client(stream, peer, state, Arc::new(permit)).await
        },
    )
    .await
}

async fn serve_client(
    stream: TcpStream,
    peer: SocketAddr,
    state: Arc<State>,
    permit: Arc<tokio::sync::OwnedSemaphorePermit>,
) {
    let _conn = state.serve.metrics.connection("client");
    let svc_state = state.clone();
    // Boxed: hyper keeps a slot the size of the service's future for every connection.
    let svc = service_fn(move |req| Box::pin(handle(req, peer, svc_state.clone(), permit.clone())));
    let builder = conn::http1_builder(&state);
    let conn = builder
        .serve_connection(TokioIo::new(stream), svc)
        .with_upgrades();
    // hyper-util's graceful shutdown cannot watch this connection: `GracefulConnection` is
    // sealed and not implemented for hyper's `http1::UpgradeableConnection` (hyper-util 0.1.21),
    // and its `auto` builder, which has one, lacks the `max_header_size` limit. So this one
    // connection kind is drained by hand.
    tokio::pin!(conn);
    let res = tokio::select! {
        res = conn.as_mut() => res,
        _ = state.shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = res {
        conn::count_conn_error(&state, &e);
        tracing::debug!(%peer, error = %e, "client connection ended with error");
    }
}

async fn handle(
    req: Request<Incoming>,
    peer: SocketAddr,
    state: Arc<State>,
    permit: Arc<tokio::sync::OwnedSemaphorePermit>,
) -> Result<Response<Body>, Infallible> {
    let dynamic = state.serve.live();
    let mut user = None;
    if let Some(auth) = state.auth.load_full() {
        let verdict = auth.check(req.headers(), peer.ip()).await;
        if let crate::ingress::auth::Verdict::Allowed(name) = verdict {
            user = Some(name);
        } else {
            state.serve.metrics.auth_failures.inc();
            if verdict == crate::ingress::auth::Verdict::Limited {
                state
                    .serve
                    .metrics
                    .limit_hits
                    .with_label_values(&["auth_rate"])
                    .inc();
                return Ok(Answer::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "modgate: too many failed proxy authentications from this address; wait a minute",
                )
                .into_response());
            }
            return Ok(Answer::new(
                StatusCode::PROXY_AUTHENTICATION_REQUIRED,
                "modgate: proxy authentication required (set credentials in HTTPS_PROXY as http://user:password@host:port)",
            )
            .with_header(
                http::header::PROXY_AUTHENTICATE,
                auth.challenge()
                    .parse()
                    .expect("challenge is a valid header value"),
            )
            .into_response());
        }
    }
    if req.method() == Method::CONNECT {
        return Ok(connect(req, peer, user, state, &dynamic, permit).await);
    }
    if req.uri().scheme() == Some(&http::uri::Scheme::HTTP) {
        return Ok(crate::serve::forward::plain_http(
            req,
            peer,
            user,
            state.serve.clone(),
            Mode::Connect,
        )
        .await);
    }
    Ok(Answer::new(
        StatusCode::BAD_REQUEST,
        "modgate: this is a forward proxy; use it as HTTPS_PROXY (CONNECT) or send absolute-form http:// requests",
    ).into_response())
}

/// A CONNECT target that cannot be used; the text is the client's error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectTargetError {
    #[error("modgate: CONNECT needs a host:port target")]
    NoAuthority,
    #[error("modgate: CONNECT target must not contain user information")]
    UserInfo,
    #[error("modgate: CONNECT target needs a port (host:port)")]
    NoPort,
    #[error("modgate: CONNECT to port 0 is not allowed")]
    PortZero,
    #[error("modgate: invalid CONNECT host {0:?}")]
    Host(String),
}

/// Parses a CONNECT authority into a host and a port.
pub fn parse_connect_target(req: &Request<Incoming>) -> Result<(String, u16), ConnectTargetError> {
    let authority = req
        .uri()
        .authority()
        .ok_or(ConnectTargetError::NoAuthority)?;
    if authority.as_str().contains('@') {
        return Err(ConnectTargetError::UserInfo);
    }
    let port = authority.port_u16().ok_or(ConnectTargetError::NoPort)?;
    if port == 0 {
        return Err(ConnectTargetError::PortZero);
    }
    let host = normalize_host(authority.host());
    if !valid_host(&host) {
        return Err(ConnectTargetError::Host(authority.host().to_string()));
    }
    Ok((host, port))
}

async fn connect(
    req: Request<Incoming>,
    peer: SocketAddr,
    user: Option<Arc<str>>,
    state: Arc<State>,
    dynamic: &crate::serve::Live,
    permit: Arc<tokio::sync::OwnedSemaphorePermit>,
) -> Response<Body> {
    let (host, port) = match parse_connect_target(&req) {
        Ok(t) => t,
        Err(reason) => {
            return Answer::new(StatusCode::BAD_REQUEST, reason.to_string()).into_response();
        }
    };
    let decision = state
        .serve
        .counted(dynamic.policy.egress.decide_connect(&host));
    match decision {
        Decision::Deny(reason) => {
            tracing::info!(%peer, %host, port, "CONNECT denied");
            Answer::new(StatusCode::FORBIDDEN, &reason).into_response()
        }
        Decision::Tunnel => {
            // Agent-chosen: the port, then every resolved address, by the address rules.
            if let Err(r) = dynamic.addresses.check_port(port) {
                state
                    .serve
                    .metrics
                    .egress_refusals
                    .with_label_values(&[r.rule()])
                    .inc();
                return Answer::new(StatusCode::FORBIDDEN, r.to_string()).into_response();
            }
            let timeout = state.serve.config.upstream.connect_timeout;
            let addrs = match state.serve.allowed_addrs(dynamic, &host, port).await {
                Ok(a) => a,
                Err(AddrRefused::Refused(r)) => {
                    tracing::info!(%peer, %host, port, rule = r.rule(), "CONNECT refused by address");
                    return Answer::new(StatusCode::FORBIDDEN, r.to_string()).into_response();
                }
                Err(AddrRefused::Resolve(e)) => {
                    return Answer::new(
                        StatusCode::BAD_GATEWAY,
                        format!("modgate: cannot connect to {host}:{port}: {e}"),
                    )
                    .into_response();
                }
            };
            let target = match tokio::time::timeout(timeout, upstream::connect_addrs(&host, &addrs))
                .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    return Answer::new(
                        StatusCode::BAD_GATEWAY,
                        format!("modgate: cannot connect to {host}:{port}: {e}"),
                    )
                    .into_response();
                }
                Err(_) => {
                    return Answer::new(
                        StatusCode::GATEWAY_TIMEOUT,
                        format!("modgate: connecting to {host}:{port} timed out after {timeout:?}"),
                    )
                    .into_response();
                }
            };
            let metrics = state.serve.metrics.clone();
            state.tasks.spawn(
                async move {
                    let _permit = permit;
                    match hyper::upgrade::on(req).await {
                        // The client's socket itself, with what hyper read past the
                        // CONNECT head: the tunnel then holds no buffer while idle.
                        Ok(upgraded) => match upgraded.downcast::<TokioIo<TcpStream>>() {
                            Ok(parts) => {
                                tunnel::run(parts.io.into_inner(), parts.read_buf, target, metrics)
                                    .await
                            }
                            Err(_) => tracing::warn!("CONNECT upgrade is not a TCP stream"),
                        },
                        Err(e) => tracing::debug!(error = %e, "CONNECT upgrade failed"),
                    }
                }
                .in_current_span(),
            );
            Response::new(crate::body::empty())
        }
        Decision::Intercept => {
            let conn = ConnCtx::with_user(peer, Mode::Connect, host, port, user);
            let task_state = state.clone();
            state.tasks.spawn(
                async move {
                    let _permit = permit;
                    match hyper::upgrade::on(req).await {
                        // As for a tunnel, the client's socket itself with what hyper read past
                        // the CONNECT head: TLS then reads and writes the socket, not hyper's
                        // upgrade wrapper around it (the same stream type as transparent mode).
                        Ok(upgraded) => match upgraded.downcast::<TokioIo<TcpStream>>() {
                            Ok(parts) => {
                                // Copied out, and hyper's read buffer (8 KiB) dropped here: the
                                // slice would hold all of it for the connection's life.
                                let early = Bytes::copy_from_slice(&parts.read_buf);
                                let io = Prefixed::new(early, parts.io.into_inner());
                                drop(parts.read_buf);
                                let span = conn.span.clone();
                                mitm::serve(io, conn, task_state).instrument(span).await
                            }
                            Err(_) => tracing::warn!("CONNECT upgrade is not a TCP stream"),
                        },
                        Err(e) => tracing::debug!(error = %e, "CONNECT upgrade failed"),
                    }
                }
                .in_current_span(),
            );
            Response::new(crate::body::empty())
        }
    }
}
