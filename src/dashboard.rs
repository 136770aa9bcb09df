//! The admin listener's `GET /` page: one self-contained HTML file (inline CSS and JS) that
//! reads `/status` and `/history` and posts drain/enable/disable.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;

/// The page, compiled in: nothing is fetched from anywhere but this admin listener.
pub const HTML: &str = include_str!("dashboard.html");

/// What the browser may do with the page: run its own inline script and style, talk to this
/// origin only, and not be framed by another site (its buttons change backend state).
const CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                   connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

/// `GET /` on the admin listener.
pub fn page() -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(HTML.as_bytes())));
    *r.status_mut() = StatusCode::OK;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_is_self_contained() {
        // No external script, style, font or image: it must work on an air-gapped host.
        // (The SVG namespace is an identifier, never fetched.)
        let html = HTML.replace("http://www.w3.org/2000/svg", "");
        for needle in ["http://", "https://", "<link", "src=", "@import", "url("] {
            assert!(!html.contains(needle), "dashboard.html contains {needle:?}");
        }
        assert!(HTML.contains("/status") && HTML.contains("/history"));
        let r = page();
        assert_eq!(r.status(), StatusCode::OK);
        assert!(r.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .is_ok_and(|v| v.contains("connect-src 'self'")));
    }
}
