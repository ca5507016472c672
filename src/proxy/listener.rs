//! The proxy listener: accepts agent connections, speaks HTTP/1.1, checks proxy credentials,
//! and handles CONNECT (intercept, tunnel or deny) and absolute-form plain-HTTP requests.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};

use crate::State;
use crate::body::Body;
use crate::policy::egress::{Decision, normalize_host};
use crate::proxy::ctx::ConnCtx;
use crate::proxy::{mitm, tunnel, upstream};
use crate::serve::respond::text;

/// Largest request head accepted from an agent.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Accepts connections until shutdown.
pub async fn run(listener: TcpListener, state: Arc<State>) {
    loop {
        let accepted = tokio::select! {
            _ = state.shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                state.tasks.spawn(serve_client(stream, peer, state.clone()));
            }
            Err(e) => {
                // Typically EMFILE: back off briefly instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

async fn serve_client(stream: TcpStream, peer: SocketAddr, state: Arc<State>) {
    let _conn = state.metrics.connection("client");
    let svc_state = state.clone();
    let svc = service_fn(move |req| handle(req, peer, svc_state.clone()));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(state.config.proxy.header_read_timeout)
        .max_buf_size(MAX_HEAD_BYTES);
    let conn = builder
        .serve_connection(TokioIo::new(stream), svc)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => {
            if let Err(e) = res {
                tracing::debug!(%peer, error = %e, "client connection ended with error");
            }
        }
        _ = state.shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

async fn handle(
    req: Request<Incoming>,
    peer: SocketAddr,
    state: Arc<State>,
) -> Result<Response<Body>, Infallible> {
    if let Some(auth) = &state.auth
        && !auth.check(req.headers()).await
    {
        state.metrics.auth_failures.inc();
        let mut resp = text(
            StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            "modgate: proxy authentication required (set credentials in HTTPS_PROXY as http://user:password@host:port)",
        );
        resp.headers_mut().insert(
            http::header::PROXY_AUTHENTICATE,
            auth.challenge()
                .parse()
                .expect("challenge is a valid header value"),
        );
        return Ok(resp);
    }
    if head_size(&req) > MAX_HEAD_BYTES {
        return Ok(text(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "modgate: request head too large",
        ));
    }
    if req.method() == Method::CONNECT {
        return Ok(connect(req, peer, state).await);
    }
    if req.uri().scheme() == Some(&http::uri::Scheme::HTTP) {
        return Ok(crate::serve::forward::plain_http(req, peer, state).await);
    }
    Ok(text(
        StatusCode::BAD_REQUEST,
        "modgate: this is a forward proxy; use it as HTTPS_PROXY (CONNECT) or send absolute-form http:// requests",
    ))
}

/// Approximate size of the request head as sent (hyper only bounds what it buffers per read).
fn head_size<B>(req: &Request<B>) -> usize {
    req.uri().to_string().len()
        + req
            .headers()
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum::<usize>()
}

/// Parses a CONNECT authority into a host and a port; the text is the client's error.
pub fn parse_connect_target(req: &Request<Incoming>) -> Result<(String, u16), String> {
    let authority = req
        .uri()
        .authority()
        .ok_or("modgate: CONNECT needs a host:port target")?;
    if authority.as_str().contains('@') {
        return Err("modgate: CONNECT target must not contain user information".into());
    }
    let port = authority
        .port_u16()
        .ok_or("modgate: CONNECT target needs a port (host:port)")?;
    if port == 0 {
        return Err("modgate: CONNECT to port 0 is not allowed".into());
    }
    let host = normalize_host(authority.host());
    if !valid_host(&host) {
        return Err(format!(
            "modgate: invalid CONNECT host {:?}",
            authority.host()
        ));
    }
    Ok((host, port))
}

/// A DNS name (letters, digits, '-', '_', dots) or an IP literal.
pub fn valid_host(host: &str) -> bool {
    if host.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

async fn connect(req: Request<Incoming>, peer: SocketAddr, state: Arc<State>) -> Response<Body> {
    let (host, port) = match parse_connect_target(&req) {
        Ok(t) => t,
        Err(reason) => return text(StatusCode::BAD_REQUEST, &reason),
    };
    let decision = state.policy.egress.decide_connect(&host);
    state
        .metrics
        .egress_decisions
        .with_label_values(&[decision.kind()])
        .inc();
    match decision {
        Decision::Deny(reason) => {
            tracing::info!(%peer, %host, port, "CONNECT denied");
            text(StatusCode::FORBIDDEN, &reason)
        }
        Decision::Tunnel => {
            let timeout = state.config.upstream.connect_timeout;
            let target =
                match tokio::time::timeout(timeout, upstream::connect_tcp(&host, port)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        return text(
                            StatusCode::BAD_GATEWAY,
                            &format!("modgate: cannot connect to {host}:{port}: {e}"),
                        );
                    }
                    Err(_) => {
                        return text(
                            StatusCode::GATEWAY_TIMEOUT,
                            &format!(
                                "modgate: connecting to {host}:{port} timed out after {timeout:?}"
                            ),
                        );
                    }
                };
            let metrics = state.metrics.clone();
            state.tasks.spawn(async move {
                match hyper::upgrade::on(req).await {
                    Ok(upgraded) => tunnel::run(TokioIo::new(upgraded), target, metrics).await,
                    Err(e) => tracing::debug!(error = %e, "CONNECT upgrade failed"),
                }
            });
            Response::new(crate::body::empty())
        }
        Decision::Intercept => {
            let conn = ConnCtx::new(peer, "connect", host, port);
            let task_state = state.clone();
            state.tasks.spawn(async move {
                match hyper::upgrade::on(req).await {
                    Ok(upgraded) => mitm::serve(TokioIo::new(upgraded), conn, task_state).await,
                    Err(e) => tracing::debug!(error = %e, "CONNECT upgrade failed"),
                }
            });
            Response::new(crate::body::empty())
        }
    }
}
