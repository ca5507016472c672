//! Answers from the cache: entries (from memory or streamed from the file) and remembered
//! not-found answers.

use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use super::{CACHE_HEADER, INLINE_MAX};
use crate::body::Body;
use crate::serve::respond::ServeError;
use crate::store::disk::{DiskCache, Found};
use crate::telemetry::labels::CacheOutcome;
use modgate_core::policy::route::Content;

pub(super) fn set_headers(
    resp: &mut Response<Body>,
    content: Content,
    cache: CacheOutcome,
    len: Option<u64>,
) {
    let h = resp.headers_mut();
    h.reserve(4);
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content.content_type()),
    );
    h.insert(CACHE_HEADER, HeaderValue::from_static(cache.as_str()));
    if let Some(n) = len {
        h.insert(http::header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    if cache == CacheOutcome::Stale {
        h.insert(
            http::header::WARNING,
            HeaderValue::from_static("110 modgate \"Response is Stale\""),
        );
    }
}

/// Serves a cached entry: small ones from memory, large ones streamed from the file.
pub async fn serve_found(
    disk: &DiskCache,
    found: &Found,
    content: Content,
    cache: CacheOutcome,
    method: &Method,
) -> Result<Response<Body>, ServeError> {
    let body: Body = if method == Method::HEAD {
        crate::body::empty()
    } else if let Some(body) = disk.hot_body(found) {
        Full::new(body).map_err(|never| match never {}).boxed()
    } else if found.len <= INLINE_MAX {
        let data = Bytes::from(
            tokio::fs::read(&found.path)
                .await
                .map_err(|e| ServeError::Internal(format!("reading cache entry: {e}")))?,
        );
        disk.keep_hot(found, data.clone());
        Full::new(data).map_err(|never| match never {}).boxed()
    } else {
        let file = tokio::fs::File::open(&found.path)
            .await
            .map_err(|e| ServeError::Internal(format!("reading cache entry: {e}")))?
            .into_std()
            .await;
        // Read from the page cache on this thread; only what is on disk alone costs a hop to
        // the blocking pool.
        crate::body::boxed(crate::store::file_body::FileBody::new(file, found.len))
    };
    let mut resp = Response::new(body);
    set_headers(&mut resp, content, cache, Some(found.len));
    Ok(resp)
}

pub(super) fn decode_not_found(data: &[u8]) -> (u16, Bytes) {
    let text = String::from_utf8_lossy(data);
    match text.split_once('\n') {
        Some((status, rest)) => (status.parse().unwrap_or(404), Bytes::from(rest.to_string())),
        None => (404, Bytes::from(text.to_string())),
    }
}

pub(super) fn not_found(status: u16, text: Bytes, cache: CacheOutcome) -> Response<Body> {
    let mut text = text.to_vec();
    if text.is_empty() {
        text.extend_from_slice(b"not found");
    }
    if !text.ends_with(b"\n") {
        text.push(b'\n');
    }
    let mut resp = Response::new(crate::body::full(text));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::NOT_FOUND);
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp.headers_mut()
        .insert(CACHE_HEADER, HeaderValue::from_static(cache.as_str()));
    resp
}
