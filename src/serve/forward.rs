//! Pass-through forwarding: an intercepted request goes to its host (or that host's configured
//! override) unchanged but for hop-by-hop headers; an absolute-form plain-HTTP request goes to
//! its origin under the egress policy.

use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderName};
use http::{Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;

use crate::body::{self, Body};
use crate::egress::lane::Lane;
use crate::egress::upstream::Wire;
use tracing::Instrument as _;

use crate::serve::State;
use crate::serve::respond::{ServeError, error_response};
use crate::serve::state::AddrRefused;
use crate::telemetry::ctx::{ConnCtx, ReqCtx};
use crate::telemetry::labels::Mode;
use modgate_core::policy::Entry;
use modgate_core::policy::egress::Decision;
use modgate_core::policy::host::normalize_host;
use modgate_core::policy::route::Route;

/// Headers that describe one hop and must not be forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers, including any named in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most requests and answers carry none: one pass over the names, no hashing, then done.
    if !headers
        .keys()
        .any(|k| HOP_BY_HOP.contains(k) || k == "proxy-connection")
    {
        return;
    }
    // One more pass picks the names to drop (usually `Connection` alone, or with `Keep-Alive`),
    // so only those are hashed and removed and no name is parsed from `Connection`'s tokens.
    let present: Vec<HeaderName> = {
        let named: Vec<&str> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .collect();
        headers
            .keys()
            .filter(|k| {
                HOP_BY_HOP.contains(k)
                    || *k == "proxy-connection"
                    || named.iter().any(|n| k.as_str().eq_ignore_ascii_case(n))
            })
            .cloned()
            .collect()
    };
    for name in &present {
        headers.remove(name);
    }
}

/// Forwards an intercepted request to its upstream.
pub async fn intercepted(
    req: Request<Incoming>,
    ctx: &mut ReqCtx,
    state: &State,
    dynamic: &crate::serve::Live,
    lane: &Lane,
) -> Result<Response<Body>, ServeError> {
    let upstream = dynamic
        .memo
        .upstream(&ctx.conn.host, ctx.conn.port, || {
            let base = dynamic.upstream_base(&ctx.conn.host, ctx.conn.port)?;
            let label = dynamic.policy.egress.intercept_label(&ctx.conn.host);
            Ok((base, label.to_string()))
        })
        .map_err(|e: modgate_core::base_url::UrlError| ServeError::Internal(e.to_string()))?;
    let (mut parts, body) = req.into_parts();
    // Origin-form under the upstream's path prefix, with the upstream's Host (an HTTP/2
    // request's URI also names its scheme and authority).
    let pq = parts.uri.path_and_query().cloned();
    let prefix = upstream.base.prefix();
    parts.uri = match pq {
        Some(pq) if prefix.is_empty() => Uri::from(pq),
        pq => {
            let path = pq.as_ref().map_or("/", |p| p.as_str());
            Uri::try_from(format!("{prefix}{path}")).map_err(|e| {
                ServeError::ClientBadRequest(format!("modgate: invalid request target: {e}"))
            })?
        }
    };
    let sequential = parts.version != Version::HTTP_2;
    parts.version = Version::HTTP_11;
    strip_hop_by_hop(&mut parts.headers);
    parts
        .headers
        .insert(header::HOST, upstream.origin.host.clone());
    let out = Request::from_parts(parts, body::boxed(body));
    let (resp, waited) = state
        .upstream
        .forward(lane, &upstream.origin, out, &upstream.label, sequential)
        .await?;
    ctx.upstream_time = Some(waited);
    Ok(into_client_response(resp))
}

fn into_client_response(resp: Response<Incoming>) -> Response<Body> {
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, body::boxed(body))
}

/// Forwards an absolute-form `http://` request from the proxy listener.
pub async fn plain_http(
    req: Request<Incoming>,
    peer: SocketAddr,
    user: Option<Arc<str>>,
    state: Arc<State>,
    mode: Mode,
) -> Response<Body> {
    let host = req.uri().host().map(normalize_host).unwrap_or_default();
    let port = req.uri().port_u16().unwrap_or(80);
    let conn = ConnCtx::with_user(peer, mode, host.clone(), port, user);
    let mut ctx = ReqCtx::for_request(conn, &req, state.metrics.clone());
    ctx.set_route("http_forward", ctx.kind);
    let span = ctx.span.clone();
    let resp = match forward_plain(req, &host, &mut ctx, &state)
        .instrument(span)
        .await
    {
        Ok(resp) => resp,
        Err(e) => {
            ctx.reason = Some(e.to_string());
            error_response(&e)
        }
    };
    super::finish(resp, ctx)
}

async fn forward_plain(
    req: Request<Incoming>,
    host: &str,
    ctx: &mut ReqCtx,
    state: &Arc<State>,
) -> Result<Response<Body>, ServeError> {
    if !modgate_core::policy::host::valid_host(host) {
        return Err(ServeError::ClientBadRequest(format!(
            "modgate: invalid host {host:?} in request URL"
        )));
    }
    let dynamic = state.live();
    let decision = state.counted(dynamic.policy.egress.decide_forward(host));
    if let Decision::Deny(reason) = decision {
        return Err(ServeError::ClientForbidden(reason));
    }
    // The go command sends `GOPROXY=http://...` (or an http:// go-get or git URL) through
    // HTTP_PROXY as exactly this request: route decides about private paths as it does for
    // intercepted ones.
    let decided = dynamic.policy.decide(
        Entry::PlainHttp,
        host,
        req.method().as_str(),
        req.uri().path(),
        req.uri().query(),
    );
    match decided {
        Err(e) if dynamic.policy.classifier.is_read_only_host(host) => return Err(e.into()),
        Ok((_, Route::PrivateRefused { kind, message, .. })) => {
            return Err(super::refuse_private(state, kind, message));
        }
        // The firewall's rules hold in plain HTTP too: public GOPROXY calls are answered as
        // intercepted ones are, and direct VCS fetches of public modules are refused.
        Ok((target, Route::Public(f))) if dynamic.policy.firewall.is_active() => {
            ctx.set_route("public", target.kind());
            super::describe(&target, ctx);
            let method = req.method().clone();
            return super::firewall::public(f, ctx, state, &dynamic, &method).await;
        }
        Ok((target, Route::Forward)) => {
            if let Some(refusal) = super::direct_refusal(&target, req.uri().path(), state, &dynamic)
            {
                return refusal;
            }
        }
        _ => {}
    }
    let (mut parts, body) = req.into_parts();
    parts.version = Version::HTTP_11;
    strip_hop_by_hop(&mut parts.headers);
    // Agent-chosen: the request goes to an address the address rules allow, resolved once here
    // (so a name cannot resolve elsewhere in between), with the Host header it named.
    let port = parts.uri.port_u16().unwrap_or(80);
    let addrs = state
        .allowed_addrs(&dynamic, host, port)
        .await
        .map_err(|e| match e {
            AddrRefused::Refused(r) => ServeError::ClientForbidden(r.to_string()),
            AddrRefused::Resolve(e) => {
                ServeError::UpstreamFailed(format!("cannot connect to {host}:{port}: {e}"))
            }
        })?;
    if !parts.headers.contains_key(http::header::HOST)
        && let Some(a) = parts.uri.authority()
        && let Ok(v) = http::HeaderValue::from_str(a.as_str())
    {
        parts.headers.insert(http::header::HOST, v);
    }
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    parts.uri = http::Uri::builder()
        .scheme("http")
        .authority(addrs[0].to_string())
        .path_and_query(pq)
        .build()
        .map_err(|e| {
            ServeError::ClientBadRequest(format!("modgate: invalid request target: {e}"))
        })?;
    let out = Request::from_parts(parts, body::boxed(body));
    let (resp, waited) = state.upstream.send_on(Wire::Http1, out, "direct").await?;
    ctx.upstream_time = Some(waited);
    let resp = into_client_response(resp);
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        return Err(ServeError::ClientBadRequest(
            "modgate: protocol upgrades are not forwarded".into(),
        ));
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, x-secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert(header::PROXY_AUTHORIZATION, "Basic x".parse().unwrap());
        h.insert("proxy-connection", "keep-alive".parse().unwrap());
        h.insert(header::ACCEPT, "*/*".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key(header::ACCEPT));
    }

    #[test]
    fn connection_tokens_match_names_in_any_case_and_every_value_counts() {
        let mut h = HeaderMap::new();
        h.append(header::CONNECTION, "Keep-Alive".parse().unwrap());
        h.append(header::CONNECTION, " X-Hop ,, ".parse().unwrap());
        h.append("x-hop", "1".parse().unwrap());
        h.append("x-hop", "2".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        h.insert("x-kept", "3".parse().unwrap());
        h.insert(header::CONTENT_LENGTH, "4".parse().unwrap());
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["content-length", "x-kept"], "{h:?}");

        // Nothing hop-by-hop: untouched.
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, "text/plain".parse().unwrap());
        h.insert("x-connection", "close".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2);
    }
}
