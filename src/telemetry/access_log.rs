//! The one observation point for requests: when a response body ends (or is dropped), the
//! request's [`ReqCtx`] writes its access-log line and metrics (a `ReqCtx` dropped before any
//! response records itself as `client_closed`).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame, SizeHint};

use crate::body::{Body, BoxError};
use crate::telemetry::ctx::ReqCtx;
use crate::telemetry::labels::Outcome;

/// Wraps `body` so that the request is recorded exactly once, when the body ends, fails or is
/// dropped (client went away).
pub fn observe(body: Body, ctx: ReqCtx, status: u16) -> Body {
    ObservedBody {
        inner: body,
        bytes: 0,
        pending: Some(Pending { ctx, status }),
    }
    .boxed()
}

struct Pending {
    ctx: ReqCtx,
    status: u16,
}

struct ObservedBody {
    inner: Body,
    bytes: u64,
    pending: Option<Pending>,
}

impl ObservedBody {
    fn finish(&mut self, outcome: Outcome) {
        if let Some(mut p) = self.pending.take() {
            p.ctx.finish(p.status, self.bytes, outcome);
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
                    this.finish(Outcome::Complete);
                }
            }
            Poll::Ready(Some(Err(_))) => this.finish(Outcome::UpstreamError),
            Poll::Ready(None) => this.finish(Outcome::Complete),
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
            self.finish(Outcome::Complete);
        } else {
            self.finish(Outcome::ClientGone);
        }
    }
}
