//! Walking the upstream list with GOPROXY fall-through, and following redirects as the go
//! command would.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::{NOT_FOUND_TEXT_MAX, Source, Spec};
use crate::serve::State;
use crate::serve::respond::ServeError;
use modgate_core::base_url::BaseUrl;
use modgate_core::policy::egress::Decision;
use modgate_core::policy::host::normalize_host;

/// Result of walking the upstream list.
pub(super) enum Fetched {
    Ok(Response<crate::body::Body>, Duration),
    NotFound { status: u16, text: Bytes },
    Err(ServeError),
}

/// Walks the sources with GOPROXY fall-through rules.
pub(super) async fn fetch(spec: &Spec, state: &State) -> Fetched {
    let mut not_found: Option<(u16, Bytes)> = None;
    let mut error: Option<ServeError> = None;
    let mut total_wait = Duration::ZERO;
    for source in &spec.sources {
        let (base, label, on_any_error) = match source {
            Source::Direct => {
                return match super::direct::fetch(spec, state).await {
                    Fetched::NotFound { status, text } => Fetched::NotFound { status, text },
                    other => other,
                };
            }
            Source::Off => {
                not_found = Some((
                    404,
                    Bytes::from_static(b"not found: module lookup disabled by GOPROXY=off"),
                ));
                break;
            }
            Source::Url {
                base,
                label,
                on_any_error,
            } => (base, label, *on_any_error),
        };
        let uri = match base.join(&spec.path) {
            Ok(u) => u,
            Err(e) => return Fetched::Err(ServeError::Internal(format!("bad upstream URL: {e}"))),
        };
        match get_following_redirects(uri, label, state, &mut total_wait).await {
            Ok(resp) => {
                match resp.status() {
                    StatusCode::OK => {
                        let resp = resp.map(|b| b.map_err(crate::body::BoxError::from).boxed());
                        return Fetched::Ok(resp, total_wait);
                    }
                    StatusCode::NOT_FOUND | StatusCode::GONE => {
                        let status = resp.status().as_u16();
                        let text = read_text(resp.into_body(), state).await;
                        // Of several not-found answers the go command reports the last
                        // (modfetch `TryProxies`); so does the gateway.
                        not_found = Some((status, text));
                        continue;
                    }
                    other => {
                        let text = read_text(resp.into_body(), state).await;
                        let e = ServeError::UpstreamStatus {
                            upstream: base.to_string(),
                            status: other.as_u16(),
                            detail: String::from_utf8_lossy(&text)
                                .lines()
                                .next()
                                .unwrap_or("")
                                .chars()
                                .take(200)
                                .collect(),
                        };
                        if on_any_error {
                            error = Some(e);
                            continue;
                        }
                        return Fetched::Err(e);
                    }
                }
            }
            Err(e) => {
                if on_any_error {
                    error = Some(e);
                    continue;
                }
                return Fetched::Err(e);
            }
        }
    }
    if let Some(e) = error {
        return Fetched::Err(e);
    }
    match not_found {
        Some((status, text)) => Fetched::NotFound { status, text },
        None => Fetched::Err(ServeError::Internal("no upstream configured".into())),
    }
}

/// Requests per upstream fetch, the first and its redirects: the go command's HTTP client
/// stops at the tenth (`checkRedirect`: "stopped after 10 redirects").
pub(super) const MAX_REQUESTS: usize = 10;

/// GETs `uri`, following redirects as the go command would against the upstream itself
/// (proxy.golang.org answers zips with a 302 to its storage): at most [`MAX_REQUESTS`] in all,
/// never from https to http, only to hosts the egress policy allows, and through the target
/// host's `upstream.overrides` entry if any.
pub(super) async fn get_following_redirects(
    mut uri: http::Uri,
    label: &str,
    state: &State,
    total_wait: &mut Duration,
) -> Result<Response<Incoming>, ServeError> {
    let mut requests = 0;
    loop {
        requests += 1;
        let req = Request::get(uri.clone())
            .header(
                http::header::USER_AGENT,
                concat!("modgate/", env!("CARGO_PKG_VERSION")),
            )
            .header(http::header::ACCEPT_ENCODING, "identity")
            .body(crate::body::empty())
            .expect("static request parts are valid");
        let (resp, waited) = state.upstream.send(req, label).await?;
        *total_wait += waited;
        let redirect = matches!(resp.status().as_u16(), 301 | 302 | 303 | 307 | 308);
        // A 3xx without a Location is an answer, as in Go's client.
        let Some(location) = resp
            .headers()
            .get(http::header::LOCATION)
            .filter(|v| redirect && !v.is_empty())
        else {
            return Ok(resp);
        };
        let from = uri.to_string();
        let status = resp.status().as_u16();
        let redirect_error = |detail: String| ServeError::UpstreamStatus {
            upstream: from.clone(),
            status,
            detail,
        };
        if requests == MAX_REQUESTS {
            return Err(redirect_error(format!(
                "stopped after {MAX_REQUESTS} redirects"
            )));
        }
        let location = location
            .to_str()
            .map_err(|_| redirect_error("Location is not text".into()))?
            .to_string();
        let next = redirect_target(&uri, &location, &state.live())
            .map_err(|e| redirect_error(e.to_string()))?;
        // Let the connection go back to the pool: the redirect's body is small or empty.
        let _ = read_text(resp.into_body(), state).await;
        tracing::debug!(from = %uri, to = %next, "upstream redirect");
        uri = next;
    }
}

/// Why modgate does not follow an upstream's redirect.
#[derive(Debug, thiserror::Error)]
pub(super) enum RedirectError {
    #[error("bad URL {url}: {source}")]
    From {
        url: String,
        source: url::ParseError,
    },
    #[error("bad redirect Location {location:?}: {source}")]
    Location {
        location: String,
        source: url::ParseError,
    },
    #[error("redirected from https to insecure URL {0}")]
    Insecure(url::Url),
    #[error("redirect to unsupported scheme {0:?}")]
    Scheme(String),
    #[error("redirect Location carries credentials")]
    Credentials,
    #[error("redirect to {next} refused: {reason}")]
    Denied { next: url::Url, reason: String },
    #[error("bad redirect target: {0}")]
    Origin(#[from] modgate_core::base_url::UrlError),
    #[error("bad redirect target {next}: {source}")]
    Target { next: url::Url, source: http::Error },
}

/// Where `location`, from a response to `from`, leads: resolved as a URL reference, https to
/// http refused, the new host's override applied.
pub(super) fn redirect_target(
    from: &http::Uri,
    location: &str,
    dynamic: &crate::serve::Live,
) -> Result<http::Uri, RedirectError> {
    let base = url::Url::parse(&from.to_string()).map_err(|source| RedirectError::From {
        url: from.to_string(),
        source,
    })?;
    let next = base
        .join(location)
        .map_err(|source| RedirectError::Location {
            location: location.to_string(),
            source,
        })?;
    match next.scheme() {
        "https" => {}
        "http" if base.scheme() == "http" => {}
        "http" => return Err(RedirectError::Insecure(next)),
        other => return Err(RedirectError::Scheme(other.to_string())),
    }
    if !next.username().is_empty() || next.password().is_some() {
        return Err(RedirectError::Credentials);
    }
    // The gateway's own egress rules hold for where an upstream sends it.
    let host = next.host_str().unwrap_or_default();
    if let Decision::Deny(reason) = dynamic.policy.egress.decide_forward(&normalize_host(
        host.trim_start_matches('[').trim_end_matches(']'),
    )) {
        return Err(RedirectError::Denied { next, reason });
    }
    let origin = next.origin().ascii_serialization();
    let target = BaseUrl::parse(&origin)?;
    let path = match next.query() {
        Some(q) => format!("{}?{q}", next.path()),
        None => next.path().to_string(),
    };
    dynamic
        .resolve(&target)
        .join(&path)
        .map_err(|source| RedirectError::Target { next, source })
}

/// Reads at most a few KB of an error body, with the response timeout.
pub(super) async fn read_text(mut body: Incoming, state: &State) -> Bytes {
    let mut buf = BytesMut::new();
    let read = async {
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(data) = frame.into_data() {
                buf.extend_from_slice(&data);
                if buf.len() >= NOT_FOUND_TEXT_MAX {
                    break;
                }
            }
        }
    };
    let _ = tokio::time::timeout(state.config.upstream.response_timeout, read).await;
    buf.truncate(NOT_FOUND_TEXT_MAX);
    buf.freeze()
}
