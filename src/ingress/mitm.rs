//! TLS interception: after CONNECT to an intercepted host, terminate the client's TLS with a leaf
//! certificate for that host (ALPN h2 and http/1.1 on module-proxy and checksum-database hosts,
//! http/1.1 elsewhere) and serve each request.
//!
//! The ClientHello's SNI must equal the CONNECT host (an IP-literal CONNECT may omit SNI);
//! anything else, including bytes that are not TLS, ends the connection with a clear refusal.
//! This is the one place a [`ReqCtx`] is created.

use crate::egress::lane::Lane;
use std::sync::Arc;
use std::time::Instant;

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
use crate::telemetry::ctx::{ConnCtx, ReqCtx};
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
    Box::pin(serve_http(tls, conn, state, started, handler)).await
}

/// Serves the requests of a connection modgate terminated (an intercepted one once its TLS is
/// established, or one to the GOPROXY endpoint), each by `handler`, HTTP/1.1 or HTTP/2, until
/// it closes, idles out or the gateway drains.
pub async fn serve_http<IO, H, F>(
    io: IO,
    conn: Arc<ConnCtx>,
    state: Arc<State>,
    started: Instant,
    handler: H,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(http::Request<hyper::body::Incoming>, ReqCtx, Arc<Lane>) -> F + Send + Sync + 'static,
    F: std::future::Future<
            Output = Result<http::Response<crate::body::Body>, std::convert::Infallible>,
        > + Send
        + 'static,
{
    let svc_state = state.clone();
    let svc_conn = conn.clone();
    // Requests in flight on this connection: reaching the HTTP/2 stream limit is counted.
    let inflight = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let watch_inflight = inflight.clone();
    // Milliseconds since `started` at the last request start or end (idle-timeout clock).
    let last_active = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let svc_last_active = last_active.clone();
    let max_streams = state.serve.config.intercept.h2_max_concurrent_streams;
    // This connection's own upstream connection for forwarded requests, driven below beside
    // the HTTP server (egress::lane).
    let lane = Arc::new(Lane::default());
    let svc_lane = lane.clone();
    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
        use std::sync::atomic::Ordering;
        svc_last_active.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
        let n = inflight.fetch_add(1, Ordering::Relaxed) + 1;
        if req.version() == http::Version::HTTP_2 && n >= max_streams {
            svc_state
                .serve
                .metrics
                .limit_hits
                .with_label_values(&["h2_streams"])
                .inc();
        }
        let inflight = inflight.clone();
        let last_active = svc_last_active.clone();
        let ctx = ReqCtx::for_request(svc_conn.clone(), &req, svc_state.serve.metrics.clone());
        // Boxed: hyper keeps a slot the size of this future for every HTTP/1.1 connection,
        // in use or idle; the request's state machine is large, the box is a pointer.
        let fut = Box::pin(handler(req, ctx, svc_lane.clone()));
        async move {
            let res = fut.await;
            inflight.fetch_sub(1, Ordering::Relaxed);
            last_active.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
            res
        }
    });
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
        use std::sync::atomic::Ordering;
        loop {
            tokio::time::sleep(idle / 4).await;
            let quiet_ms =
                started.elapsed().as_millis() as u64 - last_active.load(Ordering::Relaxed);
            if watch_inflight.load(Ordering::Relaxed) != 0 {
                continue;
            }
            if quiet_ms >= idle.as_millis() as u64 {
                return;
            }
            // Quiet for a while: the pinned upstream connection goes back to the pool.
            if quiet_ms >= (idle / 4).as_millis() as u64 {
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
