//! The one place errors become HTTP responses: status and a short plain-text body the go command
//! shows its user.

use http::{Response, StatusCode};

use crate::body::{Answer, Body};
use crate::egress::upstream::UpstreamError;
use modgate_core::policy::classify::ClassifyError;

/// Everything a request handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The client asked for something that cannot be served.
    #[error("{0}")]
    ClientBadRequest(String),
    /// Policy forbids it.
    #[error("{0}")]
    ClientForbidden(String),
    /// Nothing can exist here (GOPROXY fall-through semantics: 404).
    #[error("{0}")]
    ClientNotFound(String),
    /// Wrong method for a read-only protocol.
    #[error("{0}")]
    ClientMethod(String),
    /// An upstream answered with an error status.
    #[error("upstream {upstream} answered {status}{}", if detail.is_empty() { String::new() } else { format!(": {detail}") })]
    UpstreamStatus {
        upstream: String,
        status: u16,
        detail: String,
    },
    /// A shared upstream fetch failed (the text comes from the fetch that failed).
    #[error("{0}")]
    UpstreamFailed(String),
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
            ServeError::ClientNotFound(_) => "client_not_found",
            ServeError::ClientMethod(_) => "client_method",
            ServeError::UpstreamStatus { .. } => "upstream_status",
            ServeError::UpstreamFailed(_) => "upstream_failed",
            ServeError::Upstream(e) => e.kind(),
            ServeError::Internal(_) => "internal",
        }
    }

    /// The status for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ServeError::ClientBadRequest(_) => StatusCode::BAD_REQUEST,
            ServeError::ClientForbidden(_) => StatusCode::FORBIDDEN,
            ServeError::ClientNotFound(_) => StatusCode::NOT_FOUND,
            ServeError::ClientMethod(_) => StatusCode::METHOD_NOT_ALLOWED,
            ServeError::UpstreamStatus { .. } | ServeError::UpstreamFailed(_) => {
                StatusCode::BAD_GATEWAY
            }
            ServeError::Upstream(UpstreamError::Timeout { .. }) => StatusCode::GATEWAY_TIMEOUT,
            ServeError::Upstream(UpstreamError::Request(_)) => StatusCode::BAD_REQUEST,
            ServeError::Upstream(_) => StatusCode::BAD_GATEWAY,
            ServeError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<ClassifyError> for ServeError {
    fn from(e: ClassifyError) -> Self {
        match e {
            ClassifyError::BadRequest(m) => ServeError::ClientBadRequest(m),
            ClassifyError::NotFound(m) => ServeError::ClientNotFound(m),
            ClassifyError::Method(m) => ServeError::ClientMethod(m),
        }
    }
}

/// The answer for `err`: a client's fault in its own words, anything else prefixed `modgate:`.
impl From<&ServeError> for Answer {
    fn from(err: &ServeError) -> Answer {
        let msg = match err {
            ServeError::ClientBadRequest(m)
            | ServeError::ClientForbidden(m)
            | ServeError::ClientNotFound(m)
            | ServeError::ClientMethod(m) => m.clone(),
            other => format!("modgate: {other}"),
        };
        Answer::new(err.status(), msg)
    }
}

/// The response for `err`.
pub fn error_response(err: &ServeError) -> Response<Body> {
    Answer::from(err).into_response()
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
            (ServeError::ClientNotFound("x".into()), 404),
            (ServeError::ClientMethod("x".into()), 405),
            (ServeError::UpstreamFailed("x".into()), 502),
            (
                ServeError::UpstreamStatus {
                    upstream: "u".into(),
                    status: 500,
                    detail: String::new(),
                },
                502,
            ),
            (ClassifyError::BadRequest("x".into()).into(), 400),
            (ClassifyError::NotFound("x".into()).into(), 404),
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
