//! Phase 1, route: the pool a request belongs to, by host and path; plain-HTTP requests to a
//! `redirect_http` pool get a 308 to https instead.

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri};

use super::body::ProxyBody;
use super::error::ProxyError;
use super::upstream::ReqBody;
use super::ConnInfo;
use crate::runtime::Snapshot;

/// Where routing sent a request.
pub enum Routed {
    /// To the pool at this index of the snapshot; `host` is what the client asked for.
    Pool {
        index: usize,
        host: Option<HeaderValue>,
    },
    /// Answered at once (`redirect_http`); boxed, as it is rare.
    Answer(Box<Response<ProxyBody>>),
}

/// Finds the request's pool (a 404 when no route matches).
pub fn route(
    snap: &Snapshot,
    conn: ConnInfo,
    req: &Request<ReqBody>,
) -> Result<Routed, ProxyError> {
    let host = request_host(req);
    let index = snap
        .route(
            host.as_ref().and_then(|h| h.to_str().ok()).map(strip_port),
            req.uri().path(),
        )
        .ok_or(ProxyError::NoRoute)?;
    if snap.pools[index].redirect_http && !conn.tls {
        let res = redirect_to_https(snap, host.as_ref(), req.uri());
        return Ok(Routed::Answer(Box::new(res)));
    }
    Ok(Routed::Pool { index, host })
}

/// `redirect_http`: 308 to the same host and path on the first https listener.
fn redirect_to_https(
    snap: &Snapshot,
    host: Option<&HeaderValue>,
    uri: &Uri,
) -> Response<ProxyBody> {
    let name = host
        .and_then(|h| h.to_str().ok())
        .map(strip_port)
        .unwrap_or("localhost");
    let name = if name.contains(':') {
        format!("[{name}]")
    } else {
        name.to_string()
    };
    let port = snap.config.listen.https.first().map_or(443, |a| a.port());
    let authority = if port == 443 {
        name
    } else {
        format!("{name}:{port}")
    };
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut res = Response::new(ProxyBody::full(&b"308 permanent redirect to https\n"[..]));
    *res.status_mut() = StatusCode::PERMANENT_REDIRECT;
    if let Ok(v) = HeaderValue::from_str(&format!("https://{authority}{path}")) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

/// The host the client asked for: the URI authority (HTTP/2, absolute-form), else `Host`.
fn request_host(req: &Request<ReqBody>) -> Option<HeaderValue> {
    match req.uri().authority() {
        Some(a) => HeaderValue::from_str(a.as_str()).ok(),
        None => req.headers().get(header::HOST).cloned(),
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split(']').next().map(|h| &h[1..]).unwrap_or(host);
    }
    match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_port_handles_names_and_v6() {
        assert_eq!(strip_port("shop.example.com:8080"), "shop.example.com");
        assert_eq!(strip_port("shop.example.com"), "shop.example.com");
        assert_eq!(strip_port("[::1]:80"), "::1");
    }
}
