//! The one place errors become HTTP responses: status and a short plain-text body the go command
//! shows its user.

use http::{HeaderValue, Response, StatusCode};

use crate::body::{Body, full};
use crate::proxy::upstream::UpstreamError;

/// Everything a request handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The client asked for something that cannot be served.
    #[error("{0}")]
    ClientBadRequest(String),
    /// Policy forbids it.
    #[error("{0}")]
    ClientForbidden(String),
    /// The upstream failed.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// A bug or a local fault.
    #[error("{0}")]
    Internal(String),
}

impl ServeError {
    /// Bounded label.
    pub fn kind(&self) -> &'static str {
        match self {
            ServeError::ClientBadRequest(_) => "client_bad_request",
            ServeError::ClientForbidden(_) => "client_forbidden",
            ServeError::Upstream(e) => e.kind(),
            ServeError::Internal(_) => "internal",
        }
    }

    /// The status for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ServeError::ClientBadRequest(_) => StatusCode::BAD_REQUEST,
            ServeError::ClientForbidden(_) => StatusCode::FORBIDDEN,
            ServeError::Upstream(UpstreamError::Timeout { .. }) => StatusCode::GATEWAY_TIMEOUT,
            ServeError::Upstream(UpstreamError::Request(_)) => StatusCode::BAD_REQUEST,
            ServeError::Upstream(_) => StatusCode::BAD_GATEWAY,
            ServeError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// The response for `err`.
pub fn error_response(err: &ServeError) -> Response<Body> {
    let msg = match err {
        ServeError::ClientBadRequest(m) | ServeError::ClientForbidden(m) => m.clone(),
        other => format!("modgate: {other}"),
    };
    text(err.status(), &msg)
}

/// A `text/plain; charset=utf-8` response whose body is `msg` plus a newline.
pub fn text(status: StatusCode, msg: &str) -> Response<Body> {
    let mut resp = Response::new(full(format!("{}\n", msg.trim_end())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn status_table() {
        let host = || "h".to_string();
        let cases = [
            (ServeError::ClientBadRequest("x".into()), 400),
            (ServeError::ClientForbidden("x".into()), 403),
            (ServeError::Internal("x".into()), 500),
            (
                UpstreamError::Connect {
                    host: host(),
                    reason: "r".into(),
                }
                .into(),
                502,
            ),
            (
                UpstreamError::Tls {
                    host: host(),
                    reason: "r".into(),
                }
                .into(),
                502,
            ),
            (
                UpstreamError::Protocol {
                    host: host(),
                    reason: "r".into(),
                }
                .into(),
                502,
            ),
            (
                UpstreamError::Timeout {
                    host: host(),
                    timeout: Duration::from_secs(1),
                }
                .into(),
                504,
            ),
            (UpstreamError::Request("r".into()).into(), 400),
        ];
        for (err, want) in cases {
            let resp = error_response(&err);
            assert_eq!(resp.status().as_u16(), want, "{err:?}");
            assert_eq!(resp.headers()["content-type"], "text/plain; charset=utf-8");
        }
    }
}
