//! Every error response the proxy itself produces, in one place: status, short plain-text
//! body, never a backend address.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use super::body::ProxyBody;
use super::upstream::UpstreamError;

/// Why the proxy answered instead of a backend.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no route for this host and path")]
    NoRoute,
    #[error("no backend available")]
    NoBackend,
    #[error("bad request")]
    BadRequest,
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// No `max_conns` slot on the chosen backend (queue full or `queue_timeout`).
    #[error(transparent)]
    Queue(#[from] crate::queue::QueueError),
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::NoBackend | ProxyError::Queue(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::BadRequest => StatusCode::BAD_REQUEST,
            ProxyError::Upstream(UpstreamError::ResponseTimeout) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Upstream(_) => StatusCode::BAD_GATEWAY,
        }
    }

    pub fn into_response(self) -> Response<ProxyBody> {
        let status = self.status();
        let retry_after = match &self {
            ProxyError::Queue(q) => q.retry_after(),
            _ => 1,
        };
        let busy = matches!(self, ProxyError::Queue(_));
        let text: &'static str = match status {
            StatusCode::SERVICE_UNAVAILABLE if busy => {
                "503 service unavailable: the backend is busy, retry later\n"
            }
            StatusCode::NOT_FOUND => "404 not found: no route matches this request\n",
            StatusCode::SERVICE_UNAVAILABLE => {
                "503 service unavailable: no backend can take this request\n"
            }
            StatusCode::BAD_REQUEST => "400 bad request\n",
            StatusCode::GATEWAY_TIMEOUT => {
                "504 gateway timeout: the backend did not answer in time\n"
            }
            _ => "502 bad gateway: the backend could not be reached or failed\n",
        };
        let mut res = Response::new(ProxyBody::full(Bytes::from_static(text.as_bytes())));
        *res.status_mut() = status;
        let h = res.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if status == StatusCode::SERVICE_UNAVAILABLE {
            h.insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_in_one_place() {
        assert_eq!(ProxyError::NoBackend.status(), 503);
        assert_eq!(
            ProxyError::Upstream(UpstreamError::ResponseTimeout).status(),
            504
        );
        assert_eq!(
            ProxyError::Upstream(UpstreamError::ConnectTimeout).status(),
            502
        );
        assert_eq!(ProxyError::NoRoute.status(), 404);
        let r = ProxyError::NoBackend.into_response();
        assert!(r.headers().contains_key(header::RETRY_AFTER));
        let r = ProxyError::Queue(crate::queue::QueueError::Timeout { retry_after: 10 })
            .into_response();
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()[header::RETRY_AFTER], "10");
    }
}
