//! The one observation point for requests: when a response body ends (or is dropped), write the
//! access-log line and the request metrics from the request's [`ReqCtx`].

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame, SizeHint};

use crate::body::{Body, BoxError};
use crate::telemetry::ctx::ReqCtx;
use crate::telemetry::metrics::{Metrics, status_class};

/// Wraps `body` so that the request is recorded exactly once, when the body ends, fails or is
/// dropped (client went away).
pub fn observe(body: Body, ctx: ReqCtx, status: u16, metrics: Arc<Metrics>) -> Body {
    ObservedBody {
        inner: body,
        bytes: 0,
        pending: Some(Pending {
            ctx,
            status,
            metrics,
        }),
    }
    .boxed()
}

struct Pending {
    ctx: ReqCtx,
    status: u16,
    metrics: Arc<Metrics>,
}

struct ObservedBody {
    inner: Body,
    bytes: u64,
    pending: Option<Pending>,
}

impl ObservedBody {
    fn finish(&mut self, outcome: &'static str) {
        if let Some(p) = self.pending.take() {
            record(&p.ctx, p.status, self.bytes, outcome, &p.metrics);
        }
    }
}

impl HttpBody for ObservedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let res = Pin::new(&mut this.inner).poll_frame(cx);
        match &res {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes += data.len() as u64;
                }
                if this.inner.is_end_stream() {
                    this.finish("complete");
                }
            }
            Poll::Ready(Some(Err(_))) => this.finish("upstream_error"),
            Poll::Ready(None) => this.finish("complete"),
            Poll::Pending => {}
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ObservedBody {
    fn drop(&mut self) {
        if self.inner.is_end_stream() {
            self.finish("complete");
        } else {
            self.finish("client_gone");
        }
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// Writes the access-log line and request metrics for one finished request.
pub fn record(ctx: &ReqCtx, status: u16, bytes: u64, outcome: &'static str, metrics: &Metrics) {
    let elapsed = ctx.start.elapsed();
    metrics
        .request_duration
        .with_label_values(&[
            ctx.route,
            ctx.kind,
            ctx.cache,
            status_class(status),
            ctx.conn.mode,
        ])
        .observe(elapsed.as_secs_f64());
    metrics
        .response_bytes
        .with_label_values(&[ctx.route])
        .inc_by(bytes);
    tracing::info!(
        target: "modgate::access",
        request_id = %ctx.request_id,
        mode = ctx.conn.mode,
        client = %ctx.conn.client,
        host = %ctx.host,
        method = %ctx.method,
        path = %ctx.path,
        status,
        bytes,
        total_ms = ms(elapsed),
        upstream_ms = ctx.upstream_time.map(ms),
        module = ctx.module.as_deref(),
        version = ctx.version.as_deref(),
        op = ctx.op,
        route = ctx.route,
        kind = ctx.kind,
        cache = ctx.cache,
        outcome,
        "request"
    );
}
