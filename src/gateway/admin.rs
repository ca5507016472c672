//! The admin listener: `/metrics` (Prometheus text), `/healthz`, `/readyz`, `/cache/stats` (the
//! report of `modgate cache stats`, from the running index) and `/ca.pem`.
//! It never serves the CA key.

use std::convert::Infallible;
use std::sync::Arc;

use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::body::Answer;
use crate::body::{Body, full};
use crate::gateway::Runtime as State;

/// The header of `/metrics` naming the gateway's data directory (canonical path).
pub const DATA_DIR_HEADER: &str = "x-modgate-data-dir";

/// Serves admin requests until shutdown.
pub async fn run(listener: TcpListener, state: Arc<State>) {
    loop {
        let (stream, _) = tokio::select! {
            _ = state.ingress.shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc_state = state.clone();
            let svc = service_fn(move |req| handle(req, svc_state.clone()));
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(state.ingress.serve.config.proxy.header_read_timeout)
                .serve_connection(TokioIo::new(stream), svc);
            let _ = conn.await;
        });
    }
}

async fn handle(req: Request<Incoming>, state: Arc<State>) -> Result<Response<Body>, Infallible> {
    if req.uri().path() == "/-/reload" {
        if req.method() != Method::POST {
            return Ok(
                Answer::new(StatusCode::METHOD_NOT_ALLOWED, "use POST to reload").into_response(),
            );
        }
        let st = state.clone();
        let res = tokio::task::spawn_blocking(move || st.reload())
            .await
            .map_err(|e| anyhow::anyhow!("reload task failed: {e}"))
            .and_then(|r| r);
        return Ok(match res {
            Ok(r) if r.restart_keys.is_empty() => {
                Answer::new(StatusCode::OK, "reloaded").into_response()
            }
            Ok(r) => Answer::new(
                StatusCode::OK,
                format!(
                    "reloaded; these keys changed but take effect only after a restart: {}",
                    r.restart_keys.join(", ")
                ),
            )
            .into_response(),
            Err(e) => Answer::new(
                StatusCode::BAD_REQUEST,
                format!("reload refused, previous configuration kept: {e:#}"),
            )
            .into_response(),
        });
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(Answer::new(StatusCode::METHOD_NOT_ALLOWED, "use GET").into_response());
    }
    let resp = match req.uri().path() {
        "/metrics" => {
            let mut resp = with_type(
                full(state.ingress.serve.metrics.render()),
                "text/plain; version=0.0.4; charset=utf-8",
            );
            // Which data directory this gateway serves, so `modgate cache stats` reports the
            // hit ratio of the gateway in front of its cache, not of any that answers.
            if let Some(v) = data_dir_value(&state.ingress.serve.config.storage.data_dir) {
                resp.headers_mut().insert(DATA_DIR_HEADER, v);
            }
            resp
        }
        "/healthz" => Answer::new(StatusCode::OK, "ok").into_response(),
        "/readyz" if state.ingress.shutdown.is_cancelled() => {
            Answer::new(StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response()
        }
        "/readyz" => {
            // Serving while the cache index is built counts as ready: hits are served meanwhile.
            let ix = state.ingress.serve.cache.indexing();
            let text = if ix.complete {
                format!("ready; cache index complete ({} entries)", ix.entries)
            } else {
                format!(
                    "ready; cache index building: {} entries so far, {:.0} s since start",
                    ix.entries,
                    ix.elapsed.as_secs_f64()
                )
            };
            Answer::new(StatusCode::OK, text).into_response()
        }
        "/cache/stats" => {
            let serve = state.ingress.serve.clone();
            let made = tokio::task::spawn_blocking(move || {
                let bound = serve.config.cache.max_size;
                crate::store::report::of_index(&serve.cache, &serve.pins, bound)
            })
            .await;
            let mut resp = match made {
                Ok(Ok(text)) => Answer::new(StatusCode::OK, text).into_response(),
                Ok(Err(e)) => Answer::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("cannot read the pin log: {e}"),
                )
                .into_response(),
                Err(e) => Answer::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("the report failed: {e}"),
                )
                .into_response(),
            };
            if let Some(v) = data_dir_value(&state.ingress.serve.config.storage.data_dir) {
                resp.headers_mut().insert(DATA_DIR_HEADER, v);
            }
            resp
        }
        "/ca.pem" => with_type(
            full(state.ca.cert_pem().to_string()),
            "application/x-pem-file",
        ),
        _ => Answer::new(
            StatusCode::NOT_FOUND,
            "not found; try /metrics, /healthz, /readyz, /cache/stats or /ca.pem",
        )
        .into_response(),
    };
    Ok(resp)
}

fn with_type(body: Body, content_type: &'static str) -> Response<Body> {
    let mut resp = Response::new(body);
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    resp
}

/// The data directory, canonical, as a header value.
fn data_dir_value(dir: &std::path::Path) -> Option<HeaderValue> {
    std::fs::canonicalize(dir)
        .ok()
        .and_then(|d| HeaderValue::from_str(&d.to_string_lossy()).ok())
}
