//! TLS interception: after CONNECT to an intercepted host, terminate the client's TLS with a leaf
//! certificate for that host (ALPN h2 and http/1.1 on module-proxy and checksum-database hosts,
//! http/1.1 elsewhere) and serve each request.
//!
//! The ClientHello's SNI must equal the CONNECT host (an IP-literal CONNECT may omit SNI);
//! anything else, including bytes that are not TLS, ends the connection with a clear refusal.
//! This is the one place a [`ReqCtx`] is created.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::egress::lane::Lane;

use bytes::Bytes;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_rustls::LazyConfigAcceptor;
use tokio_rustls::server::TlsStream;

use crate::body::Answer;
use crate::ingress::Ingress as State;
use crate::ingress::io::Prefixed;
use crate::telemetry::ctx::{ConnActivity, ConnCtx, ReqCtx};
use hyper_util::server::graceful::GracefulShutdown;
use modgate_core::policy::host::normalize_host;

/// Serves one intercepted tunnel until it closes or the gateway shuts down.
pub async fn serve<IO>(io: IO, conn: Arc<ConnCtx>, state: Arc<State>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let _guard = state.serve.metrics.connection("intercept");
    let started = Instant::now();
    let timeout = state.serve.config.intercept.tls_handshake_timeout;
    // The handshake's state is boxed and freed once it is done: a connection's task holds only
    // what serving needs for as long as the connection lives (idle ones included).
    let handshake = Box::pin(tokio::time::timeout(timeout, accept_tls(io, &conn, &state)));
    let tls = match handshake.await {
        Ok(Ok(tls)) => tls,
        Ok(Err(reason)) => {
            state
                .serve
                .metrics
                .tls_failures
                .with_label_values(&[reason])
                .inc();
            tracing::info!(client = %conn.client, host = %conn.host, reason, "intercepted TLS refused");
            return;
        }
        Err(_) => {
            state
                .serve
                .metrics
                .tls_failures
                .with_label_values(&["timeout"])
                .inc();
            state
                .serve
                .metrics
                .limit_hits
                .with_label_values(&["tls_handshake_timeout"])
                .inc();
            tracing::info!(client = %conn.client, host = %conn.host, "TLS handshake timed out");
            return;
        }
    };
    state
        .serve
        .metrics
        .tls_handshake_duration
        .with_label_values(&["client"])
        .observe(started.elapsed().as_secs_f64());
    let serve_state = state.serve.clone();
    let handler = move |req, ctx, lane| crate::serve::dispatch(req, ctx, serve_state.clone(), lane);
    if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
        Box::pin(serve_http(tls, conn, state, handler)).await
    } else {
        Box::pin(serve_h1(tls, conn, state, handler)).await
    }
}

/// What answers one request of a connection modgate terminated: `dispatch`, or the endpoint's
/// handler in front of it.
pub trait Handler<F>:
    Fn(http::Request<hyper::body::Incoming>, ReqCtx, Arc<Lane>) -> F + Send + Sync + 'static
{
}

impl<T, F> Handler<F> for T where
    T: Fn(http::Request<hyper::body::Incoming>, ReqCtx, Arc<Lane>) -> F + Send + Sync + 'static
{
}

/// A [`Handler`]'s answer.
pub trait Handled:
    Future<Output = Result<http::Response<crate::body::Body>, Infallible>> + Send + 'static
{
}

impl<T> Handled for T where
    T: Future<Output = Result<http::Response<crate::body::Body>, Infallible>> + Send + 'static
{
}

/// Serves the requests of a connection modgate terminated (an intercepted one once its TLS is
/// established, or one to the GOPROXY endpoint), each by `handler`, HTTP/1.1 or HTTP/2, until
/// it closes, idles out or the gateway drains.
pub async fn serve_http<IO, H, F>(io: IO, conn: Arc<ConnCtx>, state: Arc<State>, handler: H)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Handler<F>,
    F: Handled,
{
    let (svc, activity, lane) = service(&conn, &state, handler);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(state.serve.config.proxy.header_read_timeout)
        .max_buf_size(state.serve.config.proxy.max_head_size.as_u64() as usize)
        .max_headers(state.serve.config.proxy.max_headers);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(state.serve.config.intercept.h2_max_concurrent_streams)
        .max_pending_accept_reset_streams(state.serve.config.intercept.h2_max_pending_reset_streams)
        .max_header_list_size(
            (state.serve.config.proxy.max_head_size.as_u64() as u32).max(16 * 1024),
        );
    let http = builder.serve_connection(TokioIo::new(io), svc);
    // Closed gracefully by hyper-util when the gateway drains, or by this connection's own
    // closer when no request has been in flight for `proxy.idle_timeout` (HTTP/1.1 idle
    // connections are also closed by the header-read timeout).
    let closer = GracefulShutdown::new();
    let http = closer.watch(http);
    tokio::pin!(http);
    let idle = state.serve.config.proxy.idle_timeout;
    let idle_watch = async {
        loop {
            // Awake just past [`HIBERNATE_AFTER`] into each quiet spell too: the poll of the
            // connection that this wake brings lets an HTTP/2 connection, idle since, go of its
            // read, write and HPACK buffers (vendor/h2, after 0.9 s idle).
            let quiet = activity.quiet();
            let nap = if activity.inflight() != 0 {
                HIBERNATE_AFTER
            } else if quiet < HIBERNATE_AFTER {
                HIBERNATE_AFTER - quiet + Duration::from_millis(50)
            } else {
                idle / 4
            };
            tokio::time::sleep(nap.min(idle / 4)).await;
            if activity.inflight() != 0 {
                continue;
            }
            if activity.quiet() >= idle {
                return;
            }
            // Quiet for a while: the pinned upstream connection goes back to the pool.
            if activity.quiet() >= idle / 4 {
                lane.park_if_idle();
            }
        }
    };
    let serving = async {
        tokio::select! {
            res = http.as_mut() => res,
            close = async {
                tokio::select! {
                    _ = idle_watch => true,
                    _ = state.shutdown.cancelled() => false,
                }
            } => {
                if close {
                    state.serve.metrics.limit_hits.with_label_values(&["idle_timeout"]).inc();
                }
                drop(closer);
                http.await
            }
        }
    };
    let res = tokio::select! {
        res = serving => res,
        never = lane.drive() => match never {},
    };
    if let Err(e) = res {
        if let Some(he) = e.downcast_ref::<hyper::Error>() {
            crate::ingress::conn::count_conn_error(&state, he);
        }
        if is_reset_flood(e.as_ref()) {
            state
                .serve
                .metrics
                .limit_hits
                .with_label_values(&["h2_reset_flood"])
                .inc();
        }
        tracing::debug!(client = %conn.client, host = %conn.host, error = %e, "intercepted connection ended with error");
    }
}

/// How long a connection is quiet (no request in flight) before it hibernates: an HTTP/1.1 one
/// is taken apart ([`serve_h1`]), an HTTP/2 one lets go of its buffers ([`serve_http`]).
const HIBERNATE_AFTER: Duration = Duration::from_secs(1);

/// Like [`serve_http`], for a connection that speaks HTTP/1.1 only (its ALPN said so): after
/// [`HIBERNATE_AFTER`] with no request in flight, hyper's connection (its read and write
/// buffers, 16 KiB) is taken apart and only the TLS stream is kept, waiting for the client's
/// next byte; that byte and anything hyper had read but not parsed start a new hyper
/// connection on the same stream. An idle connection is still closed `proxy.header_read_timeout`
/// after its last request, as hyper closes one.
pub async fn serve_h1<IO, H, F>(io: IO, conn: Arc<ConnCtx>, state: Arc<State>, handler: H)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Handler<F>,
    F: Handled,
{
    let (svc, activity, lane) = service(&conn, &state, handler);
    let header_timeout = state.serve.config.proxy.header_read_timeout;
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(state.serve.config.proxy.max_head_size.as_u64() as usize)
        .max_headers(state.serve.config.proxy.max_headers);
    let serving = async {
        let mut io = Prefixed::new(Bytes::new(), io);
        loop {
            let mut http = builder.serve_connection(TokioIo::new(io), svc.clone());
            let done_before = activity.done();
            let (mut asked, mut hibernate) = (false, false);
            let mut check = Box::pin(tokio::time::sleep(HIBERNATE_AFTER));
            let res = {
                let mut drain = std::pin::pin!(state.shutdown.cancelled());
                std::future::poll_fn(|cx| {
                    if !asked {
                        if drain.as_mut().poll(cx).is_ready() {
                            Pin::new(&mut http).graceful_shutdown();
                            asked = true;
                        } else if check.as_mut().poll(cx).is_ready() {
                            // Only between exchanges: hyper closes an idle connection at once,
                            // and one that has served nothing yet would answer its first
                            // request with `Connection: close` instead.
                            let quiet = activity.quiet();
                            if activity.inflight() == 0
                                && activity.done() > done_before
                                && quiet >= HIBERNATE_AFTER
                            {
                                Pin::new(&mut http).graceful_shutdown();
                                (asked, hibernate) = (true, true);
                            } else {
                                let wait = HIBERNATE_AFTER.saturating_sub(quiet);
                                check.as_mut().reset(
                                    tokio::time::Instant::now() + wait.max(HIBERNATE_AFTER / 4),
                                );
                                let _ = check.as_mut().poll(cx);
                            }
                        }
                    }
                    http.poll_without_shutdown(cx)
                })
                .await
            };
            if let Err(e) = res {
                crate::ingress::conn::count_conn_error(&state, &e);
                tracing::debug!(client = %conn.client, host = %conn.host, error = %e, "intercepted connection ended with error");
                return;
            }
            let parts = http.into_parts();
            io = parts.io.into_inner();
            io.unread(parts.read_buf);
            if !hibernate {
                // The client closed, or the gateway drains: close our side too.
                let _ = tokio::time::timeout(Duration::from_secs(1), io.shutdown()).await;
                return;
            }
            // Hibernating: the pinned upstream connection goes back to the pool, and the
            // connection waits for the client holding nothing but its TLS session (or starts
            // again at once with what hyper had read of the next request).
            lane.park_if_idle();
            if io.has_unread() {
                continue;
            }
            let left = header_timeout.saturating_sub(activity.quiet());
            let mut first = [0u8; 1];
            let woke = tokio::select! {
                r = io.read(&mut first) => r.ok().filter(|&n| n > 0),
                _ = tokio::time::sleep(left) => {
                    state.serve.metrics.limit_hits.with_label_values(&["header_timeout"]).inc();
                    None
                }
                _ = state.shutdown.cancelled() => None,
            };
            if woke.is_none() {
                let _ = tokio::time::timeout(Duration::from_secs(1), io.shutdown()).await;
                return;
            }
            io.unread(Bytes::copy_from_slice(&first));
        }
    };
    tokio::select! {
        () = serving => {}
        never = lane.drive() => match never {},
    }
}

/// The service of one connection, with the connection's [`ConnActivity`] (each request counts
/// until its response body is sent) and its own upstream connection for forwarded requests
/// (`egress::lane`, to be driven beside the HTTP server). The service counts the HTTP/2 stream
/// limit, makes each request's context and runs `handler`.
#[allow(clippy::type_complexity)]
fn service<H, F>(
    conn: &Arc<ConnCtx>,
    state: &Arc<State>,
    handler: H,
) -> (
    impl hyper::service::Service<
        http::Request<hyper::body::Incoming>,
        Response = http::Response<crate::body::Body>,
        Error = Infallible,
        Future = Pin<Box<F>>,
    > + Clone
    + Send
    + 'static,
    Arc<ConnActivity>,
    Arc<Lane>,
)
where
    H: Handler<F>,
    F: Handled,
{
    let (activity, lane) = (ConnActivity::new(), Arc::new(Lane::default()));
    let (conn, state) = (conn.clone(), state.clone());
    let (svc_activity, svc_lane) = (activity.clone(), lane.clone());
    let handler = Arc::new(handler);
    let max_streams = state.serve.config.intercept.h2_max_concurrent_streams;
    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let (n, guard) = svc_activity.begin();
        if req.version() == http::Version::HTTP_2 && n >= max_streams {
            state
                .serve
                .metrics
                .limit_hits
                .with_label_values(&["h2_streams"])
                .inc();
        }
        let mut ctx = ReqCtx::for_request(conn.clone(), &req, state.serve.metrics.clone());
        ctx.activity = Some(guard);
        // Boxed: hyper keeps a slot the size of this future for every HTTP/1.1 connection,
        // in use or idle; the request's state machine is large, the box is a pointer.
        Box::pin((*handler)(req, ctx, svc_lane.clone()))
    });
    (svc, activity, lane)
}

/// Whether a connection error is HTTP/2's own protection against a reset flood (the server sent
/// GOAWAY with ENHANCE_YOUR_CALM).
pub fn is_reset_flood(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(h2e) = err.downcast_ref::<h2::Error>()
            && h2e.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM)
        {
            return true;
        }
        cur = err.source();
    }
    false
}

/// Reads the ClientHello, checks SNI, and completes the handshake with the host's leaf.
/// The error is a bounded reason label.
async fn accept_tls<IO>(
    mut io: IO,
    conn: &ConnCtx,
    state: &State,
) -> Result<TlsStream<Prefixed<IO>>, &'static str>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    // A TLS connection starts with a handshake record (0x16). Anything else gets a plain-text
    // refusal the client can read, rather than a TLS alert.
    let mut first = vec![0u8; 8];
    let n = io.read(&mut first).await.map_err(|_| "not_tls")?;
    first.truncate(n);
    if first.first() != Some(&0x16) {
        if n > 0 {
            let answer = Answer::new(
                http::StatusCode::BAD_REQUEST,
                format!(
                    "modgate: expected a TLS ClientHello for {} after CONNECT",
                    conn.host
                ),
            )
            .closing()
            .to_http1();
            let _ = io.write_all(&answer).await;
            let _ = io.shutdown().await;
            // Discard what the client already sent, briefly: closing with unread input would
            // reset the connection and could destroy the answer before the client reads it.
            let _ = tokio::time::timeout(std::time::Duration::from_millis(200), async {
                let mut sink = [0u8; 4096];
                while matches!(io.read(&mut sink).await, Ok(n) if n > 0) {}
            })
            .await;
        }
        return Err("not_tls");
    }
    let io = Prefixed::new(Bytes::from(first), io);
    let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io)
        .await
        .map_err(|_| "bad_client_hello")?;
    let hello = start.client_hello();
    match hello.server_name() {
        Some(sni) if normalize_host(sni) == conn.host => {}
        Some(_) => return Err("sni_mismatch"),
        None if conn.host.parse::<std::net::IpAddr>().is_ok() => {}
        None => return Err("no_sni"),
    }
    // HTTP/2 only where every request is a read. git sends a fetch's request body as one small
    // DATA frame per pkt-line, and the h2 crate (0.4.16 on) closes a connection on which more
    // small frames wait than its budget allows, a budget hyper does not let us set; git over
    // HTTP/1.1 streams the same body chunked.
    let h2 = state
        .serve
        .live()
        .policy
        .classifier
        .is_read_only_host(&conn.host);
    let cfg = state
        .leaves
        .server_config(&conn.host, h2)
        .await
        .map_err(|_| "cert_error")?;
    start.into_stream(cfg).await.map_err(|_| "handshake")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_floods_are_recognised_through_the_error_chain() {
        #[derive(Debug)]
        struct Wrap(h2::Error);
        impl std::fmt::Display for Wrap {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "connection error")
            }
        }
        impl std::error::Error for Wrap {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let calm = Wrap(h2::Error::from(h2::Reason::ENHANCE_YOUR_CALM));
        assert!(is_reset_flood(&calm));
        let other = Wrap(h2::Error::from(h2::Reason::PROTOCOL_ERROR));
        assert!(!is_reset_flood(&other));
        assert!(!is_reset_flood(&std::io::Error::other("x")));
    }
}
