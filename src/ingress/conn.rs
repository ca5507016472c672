//! What every agent-facing listener shares: the accept loop with its connection limit, the
//! HTTP/1.1 server settings, and counting the limits a connection ran into.

use std::net::SocketAddr;
use std::sync::Arc;

use hyper_util::rt::TokioTimer;
use tokio::net::{TcpListener, TcpStream};

use tracing::Instrument as _;

use crate::body::Answer;
use crate::ingress::Ingress as State;

/// Accepts connections until shutdown, each holding one `proxy.max_connections` permit while
/// `serve` runs. A connection over the limit is counted and, on the proxy listener, answered 503
/// (a redirected connection is just closed: its protocol is not known yet).
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    state: Arc<State>,
    name: &'static str,
    serve: F,
) where
    F: Fn(TcpStream, SocketAddr, Arc<State>, tokio::sync::OwnedSemaphorePermit) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        let accepted = tokio::select! {
            _ = state.shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                match state.conn_limit.clone().try_acquire_owned() {
                    Ok(permit) => {
                        // `client{peer, listener}`: the connection before it becomes a tunnel or
                        // an intercepted connection (whose `conn` span is a child of this one).
                        let span = tracing::info_span!("client", %peer, listener = name);
                        state
                            .tasks
                            .spawn(serve(stream, peer, state.clone(), permit).instrument(span));
                    }
                    Err(_) => {
                        state
                            .serve
                            .metrics
                            .limit_hits
                            .with_label_values(&["connections"])
                            .inc();
                        if name == "proxy" {
                            tokio::spawn(refuse_busy(stream));
                        }
                    }
                }
            }
            Err(e) => {
                // Typically EMFILE: back off briefly instead of spinning.
                tracing::warn!(listener = name, error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// Answers 503 to a connection over `proxy.max_connections` and closes it.
async fn refuse_busy(mut stream: TcpStream) {
    use tokio::io::AsyncWriteExt;
    let answer = Answer::new(
        http::StatusCode::SERVICE_UNAVAILABLE,
        "modgate: too many connections; try again shortly",
    )
    .closing()
    .to_http1();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        let _ = stream.write_all(&answer).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// The HTTP/1.1 server settings for agent-facing connections.
pub fn http1_builder(state: &State) -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(state.serve.config.proxy.header_read_timeout)
        .max_header_size(state.serve.config.proxy.max_head_size.as_u64() as usize)
        .max_headers(state.serve.config.proxy.max_headers);
    builder
}

/// Counts the limits a finished connection ran into.
pub fn count_conn_error(state: &State, e: &hyper::Error) {
    if e.is_parse_too_large() {
        state
            .serve
            .metrics
            .limit_hits
            .with_label_values(&["head_size"])
            .inc();
    } else if e.is_timeout() {
        state
            .serve
            .metrics
            .limit_hits
            .with_label_values(&["header_timeout"])
            .inc();
    }
}
