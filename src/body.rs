//! The one response/request body type used between layers, and small constructors.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};

/// Boxed error carried by bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A boxed, streaming body.
pub type Body = http_body_util::combinators::BoxBody<Bytes, BoxError>;

/// A body holding `data`.
pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}

/// An empty body.
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// Boxes any body whose error converts into [`BoxError`].
pub fn boxed<B>(body: B) -> Body
where
    B: hyper::body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed()
}

/// An answer modgate makes itself, rather than relays: a status, one line of plain text the go
/// command (or curl) shows its user, and whether the connection closes after it. Handlers, the
/// ingress refusals and the admin listener all answer through it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: http::StatusCode,
    pub text: String,
    pub close: bool,
    headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

impl Answer {
    pub fn new(status: http::StatusCode, text: impl Into<String>) -> Answer {
        Answer {
            status,
            text: text.into(),
            close: false,
            headers: vec![],
        }
    }

    /// Closes the connection after the answer (HTTP/1.1 only; written raw or by hyper).
    pub fn closing(mut self) -> Answer {
        self.close = true;
        self
    }

    /// Adds a header, such as `Proxy-Authenticate`.
    pub fn with_header(mut self, name: http::HeaderName, value: http::HeaderValue) -> Answer {
        self.headers.push((name, value));
        self
    }

    /// The body: the text with one trailing newline.
    fn body(&self) -> String {
        format!("{}\n", self.text.trim_end())
    }

    /// As a response for hyper to send.
    pub fn into_response(self) -> http::Response<Body> {
        let mut resp = http::Response::new(full(self.body()));
        *resp.status_mut() = self.status;
        let headers = resp.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if self.close {
            headers.insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
        }
        for (name, value) in self.headers {
            headers.append(name, value);
        }
        resp
    }

    /// As HTTP/1.1 bytes, for a socket no HTTP server runs on yet (a refusal before the
    /// request, or inside a CONNECT tunnel that turned out not to carry TLS).
    pub fn to_http1(&self) -> Vec<u8> {
        use std::fmt::Write as _;
        let body = self.body();
        let mut head = format!(
            "HTTP/1.1 {} {}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n",
            self.status.as_u16(),
            self.status.canonical_reason().unwrap_or(""),
            body.len()
        );
        if self.close {
            head.push_str("connection: close\r\n");
        }
        for (name, value) in &self.headers {
            let _ = write!(head, "{name}: {}\r\n", value.to_str().unwrap_or_default());
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(body.as_bytes());
        out
    }
}

impl From<Answer> for http::Response<Body> {
    fn from(a: Answer) -> Self {
        a.into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_the_same_through_hyper_and_raw() {
        let a = Answer::new(http::StatusCode::SERVICE_UNAVAILABLE, "modgate: busy").closing();
        assert_eq!(
            String::from_utf8(a.to_http1()).unwrap(),
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 14\r\nconnection: close\r\n\r\nmodgate: busy\n"
        );
        let resp = a.into_response();
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.headers()["content-type"], "text/plain; charset=utf-8");
        assert_eq!(resp.headers()["connection"], "close");
        let open = Answer::new(http::StatusCode::OK, "ok\n\n").into_response();
        assert!(open.headers().get("connection").is_none());
    }
}
