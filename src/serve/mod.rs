//! What happens to each request: one entry point, [`dispatch`], and one handler per route.
//! Handlers return `Result<Response, ServeError>`; `respond` turns errors into responses, and the
//! access log wraps every response body.

pub mod forward;
pub mod respond;
pub mod upstreams;

use std::convert::Infallible;
use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;

use crate::State;
use crate::body::Body;
use crate::proxy::ctx::ReqCtx;
use crate::telemetry::access_log;

/// Handles one intercepted request and arranges for it to be observed when its body ends.
pub async fn dispatch(
    req: Request<Incoming>,
    mut ctx: ReqCtx,
    state: Arc<State>,
) -> Result<Response<Body>, Infallible> {
    let resp = match forward::intercepted(req, &mut ctx, &state).await {
        Ok(resp) => resp,
        Err(e) => respond::error_response(&e),
    };
    Ok(finish(resp, ctx, &state))
}

/// Wraps the response body so the request is logged and measured once it is done.
pub fn finish(resp: Response<Body>, ctx: ReqCtx, state: &State) -> Response<Body> {
    let status = resp.status().as_u16();
    let metrics = state.metrics.clone();
    resp.map(|body| access_log::observe(body, ctx, status, metrics))
}
