//! Git smart-HTTP for private repositories (direct mode): forwarded to the internal git host with
//! the route's credentials injected, streaming both ways, never cached. Agents hold no
//! credentials; whatever they send in `Authorization` is dropped.

use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;

use crate::body::{self, Body};
use crate::serve::forward::strip_hop_by_hop;
use crate::serve::respond::ServeError;
use crate::telemetry::ctx::ReqCtx;
use modgate_core::base_url::BaseUrl;
use modgate_core::policy::private::RepoMatch;

/// Request headers a git client needs the server to see.
const FORWARDED: [HeaderName; 6] = [
    header::CONTENT_TYPE,
    header::CONTENT_ENCODING,
    header::ACCEPT,
    header::ACCEPT_ENCODING,
    header::USER_AGENT,
    HeaderName::from_static("git-protocol"),
];

/// Forwards one git request for `repo` (whose request path starts with `request_prefix`).
pub async fn forward(
    req: Request<Incoming>,
    repo: &RepoMatch,
    request_prefix: &str,
    ctx: &mut ReqCtx,
    dynamic: &crate::serve::Live,
) -> Result<Response<Body>, ServeError> {
    let backend = dynamic
        .private
        .get(repo.route)
        .ok_or_else(|| ServeError::Internal("private route vanished".into()))?;
    let suffix = req
        .uri()
        .path()
        .strip_prefix(request_prefix)
        .ok_or_else(|| {
            ServeError::ClientBadRequest("modgate: not a git request for this repository".into())
        })?;
    let path_and_query = match req.uri().query() {
        Some(q) => format!("{suffix}?{q}"),
        None => suffix.to_string(),
    };
    let base = dynamic.resolve(
        &BaseUrl::parse(&repo.git_url)
            .map_err(|e| ServeError::Internal(format!("route git URL: {e}")))?,
    );
    let uri = base
        .join(&path_and_query)
        .map_err(|e| ServeError::ClientBadRequest(format!("modgate: invalid git request: {e}")))?;
    let (parts, body_in) = req.into_parts();
    let mut out = Request::builder()
        .method(parts.method)
        .uri(uri)
        .version(Version::HTTP_11);
    for name in FORWARDED.iter() {
        for v in parts.headers.get_all(name) {
            out = out.header(name, v);
        }
    }
    if let Some(auth) = backend.auth_header() {
        let mut v = HeaderValue::from_str(auth)
            .map_err(|_| ServeError::Internal("credential is not a header value".into()))?;
        v.set_sensitive(true);
        out = out.header(header::AUTHORIZATION, v);
    }
    let out = out
        .body(body::boxed(body_in))
        .map_err(|e| ServeError::Internal(e.to_string()))?;
    let (resp, waited) = backend.client.send(out, "private_git").await?;
    ctx.upstream_time = Some(waited);
    match resp.status() {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
            Err(ServeError::UpstreamFailed(format!(
                "the internal git host refused modgate's credentials for {} ({})",
                repo.root,
                resp.status()
            )))
        }
        StatusCode::NOT_FOUND | StatusCode::GONE => Err(ServeError::ClientNotFound(format!(
            "not found: repository {} does not exist on the internal git host",
            repo.root
        ))),
        _ => {
            let (mut parts, body_out) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            parts.headers.remove(header::SET_COOKIE);
            parts.headers.remove(header::WWW_AUTHENTICATE);
            Ok(Response::from_parts(parts, body::boxed(body_out)))
        }
    }
}
