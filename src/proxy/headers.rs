//! Header rewriting between client and backend: hop-by-hop removal, X-Forwarded-*, our
//! cookie stripped, and `Cache-Control: private` on responses that set a pin.

use bytes::BytesMut;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::affinity::cookie;
use crate::h1::{self, BodyEncoder, Framing};

pub(super) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The tokens of `Connection` headers that name other headers to drop. `close` and
/// `keep-alive` are left out: the first names nothing, the second is hop-by-hop anyway.
fn connection_tokens(h: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    h.get_all(header::CONNECTION)
        .into_iter()
        .flat_map(|v| h1::tokens(v.as_bytes()))
        .filter(|t| !t.eq_ignore_ascii_case(b"close") && !t.eq_ignore_ascii_case(b"keep-alive"))
}

/// What the backend's request says about the client, beyond the client's own headers.
pub struct Forwarding<'a> {
    /// The client's address as text (for X-Forwarded-For).
    pub peer: &'a [u8],
    pub tls: bool,
    /// The host the client asked for (sent as Host and X-Forwarded-Host).
    pub host: Option<&'a HeaderValue>,
    /// An upgrade (WebSocket): `Upgrade` and `Connection: upgrade` are kept.
    pub upgrade: bool,
    /// tether's own affinity cookie, removed from `Cookie`.
    pub own_cookie: Option<&'a str>,
}

/// Writes the head of the request sent to the backend, straight from the client's headers:
/// hop-by-hop headers and those `Connection` names are left out, the cookies go as one
/// `Cookie` header without tether's own, and Host and X-Forwarded-For/-Proto/-Host are set.
/// The client's framing headers are not copied: `framing` alone says how the body goes,
/// and the returned encoder holds the body to it.
pub fn write_request_head(
    method: &http::Method,
    target: &str,
    h: &HeaderMap,
    f: &Forwarding<'_>,
    framing: Framing,
    out: &mut BytesMut,
) -> BodyEncoder {
    h1::request_line(method, target, out);
    let named: Vec<&[u8]> = if h.contains_key(header::CONNECTION) {
        connection_tokens(h)
            .filter(|t| !(f.upgrade && t.eq_ignore_ascii_case(b"upgrade")))
            .collect()
    } else {
        Vec::new()
    };
    // Noted on the way through, so the usual case needs no lookups afterwards.
    let mut cookies = 0;
    let mut first_cookie: Option<&HeaderValue> = None;
    let mut forwarded_for = false;
    let mut had_length = false;
    for (name, value) in h {
        let skip = h1::is_hop_by_hop(name.as_str().as_bytes())
            || name == header::CONTENT_LENGTH
            || (name == header::UPGRADE && !f.upgrade)
            || name == header::HOST
            || name == X_FORWARDED_FOR
            || name == X_FORWARDED_PROTO
            || name == X_FORWARDED_HOST
            || named
                .iter()
                .any(|t| t.eq_ignore_ascii_case(name.as_str().as_bytes()));
        if name == header::COOKIE {
            cookies += 1;
            first_cookie = first_cookie.or(Some(value));
        } else if name == X_FORWARDED_FOR {
            forwarded_for = true;
        } else if name == header::CONTENT_LENGTH {
            had_length = true;
        } else if !skip {
            h1::header_line(name.as_str().as_bytes(), value.as_bytes(), out);
        }
    }
    if let Some(host) = f.host {
        h1::header_line(b"host", host.as_bytes(), out);
    }
    // HTTP/2 may send several cookie headers; HTTP/1.1 wants one.
    if let Some(first) = first_cookie {
        match (cookies, f.own_cookie) {
            (1, None) => h1::header_line(b"cookie", first.as_bytes(), out),
            (1, own) => {
                if let Some(v) = cookie::strip_cookie(std::iter::once(first.as_bytes()), own) {
                    h1::header_line(b"cookie", &v, out);
                }
            }
            (_, own) => {
                let values = h
                    .get_all(header::COOKIE)
                    .into_iter()
                    .map(HeaderValue::as_bytes);
                if let Some(v) = cookie::strip_cookie(values, own) {
                    h1::header_line(b"cookie", &v, out);
                }
            }
        }
    }
    if !forwarded_for {
        h1::header_line(b"x-forwarded-for", f.peer, out);
    } else {
        let xff = h.get_all(&X_FORWARDED_FOR);
        out.extend_from_slice(b"x-forwarded-for: ");
        for v in xff {
            out.extend_from_slice(v.as_bytes());
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(f.peer);
        out.extend_from_slice(b"\r\n");
    }
    let proto: &[u8] = if f.tls { b"https" } else { b"http" };
    h1::header_line(b"x-forwarded-proto", proto, out);
    if let Some(host) = f.host {
        h1::header_line(b"x-forwarded-host", host.as_bytes(), out);
    }
    if f.upgrade {
        h1::header_line(b"connection", b"upgrade", out);
    }
    // A bodiless POST, PUT or PATCH without a length (HTTP/2 allows that) says it has none,
    // as does a request that said `Content-Length: 0`.
    let framing = match framing {
        Framing::Empty
            if had_length
                || matches!(
                    *method,
                    http::Method::POST | http::Method::PUT | http::Method::PATCH
                ) =>
        {
            Framing::Length(0)
        }
        f => f,
    };
    h1::finish_head(framing, out)
}

/// Makes a response that sets a pin unstorable by shared caches: adds `Cache-Control:
/// private` unless it already says `private` or `no-store`; a `public` directive is dropped.
pub fn make_private(h: &mut HeaderMap) {
    let existing: Vec<String> = h
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|d| d.trim().to_string())
        .filter(|d| !d.is_empty())
        .collect();
    let forbids = existing.iter().any(|d| {
        let name = d.split('=').next().unwrap_or("").trim();
        name.eq_ignore_ascii_case("private") || name.eq_ignore_ascii_case("no-store")
    });
    if forbids {
        return;
    }
    if existing.is_empty() {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("private"));
        return;
    }
    let mut v = String::from("private");
    for d in existing
        .iter()
        .filter(|d| !d.eq_ignore_ascii_case("public"))
    {
        v.push_str(", ");
        v.push_str(d);
    }
    if let Ok(v) = HeaderValue::from_str(&v) {
        h.insert(header::CACHE_CONTROL, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head_for(h: &HeaderMap, f: &Forwarding<'_>) -> String {
        let mut out = BytesMut::new();
        let _ = write_request_head(&http::Method::GET, "/p", h, f, Framing::Empty, &mut out);
        String::from_utf8(out.to_vec()).unwrap()
    }

    fn plain<'a>(host: Option<&'a HeaderValue>) -> Forwarding<'a> {
        Forwarding {
            peer: b"10.0.0.9",
            tls: false,
            host,
            upgrade: false,
            own_cookie: None,
        }
    }

    #[test]
    fn request_head_sets_forwarded_headers_and_host() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("original"));
        h.append("x-forwarded-for", HeaderValue::from_static("1.1.1.1"));
        h.append("x-forwarded-for", HeaderValue::from_static("2.2.2.2"));
        h.insert("x-forwarded-host", HeaderValue::from_static("evil"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("gopher"));
        h.insert("accept", HeaderValue::from_static("*/*"));
        let host = HeaderValue::from_static("shop.example.com");
        assert_eq!(
            head_for(&h, &plain(Some(&host))),
            "GET /p HTTP/1.1\r\naccept: */*\r\nhost: shop.example.com\r\n\
             x-forwarded-for: 1.1.1.1, 2.2.2.2, 10.0.0.9\r\nx-forwarded-proto: http\r\n\
             x-forwarded-host: shop.example.com\r\n\r\n"
        );
        let no_host = head_for(&HeaderMap::new(), &plain(None));
        assert_eq!(
            no_host,
            "GET /p HTTP/1.1\r\nx-forwarded-for: 10.0.0.9\r\nx-forwarded-proto: http\r\n\r\n"
        );
    }

    #[test]
    fn request_head_leaves_out_hop_by_hop_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret, upgrade"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        let head = head_for(&h, &plain(None));
        assert!(head.contains("x-kept: 1\r\n"), "{head}");
        for gone in ["x-secret", "keep-alive", "te:", "upgrade", "connection"] {
            assert!(!head.contains(gone), "{gone} in {head}");
        }
        let ws = head_for(
            &h,
            &Forwarding {
                upgrade: true,
                ..plain(None)
            },
        );
        assert!(
            ws.contains("upgrade: websocket\r\n") && ws.contains("connection: upgrade\r\n"),
            "{ws}"
        );
        assert!(!ws.contains("x-secret"), "{ws}");
    }

    #[test]
    fn request_head_sends_one_cookie_header_without_ours() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1; TETHER=v1.x"));
        h.append(header::COOKIE, HeaderValue::from_static("b=2"));
        let head = head_for(
            &h,
            &Forwarding {
                own_cookie: Some("TETHER"),
                ..plain(None)
            },
        );
        assert!(head.contains("\r\ncookie: a=1; b=2\r\n"), "{head}");
        assert_eq!(head.matches("cookie:").count(), 1, "{head}");
        let mut only_ours = HeaderMap::new();
        only_ours.insert(header::COOKIE, HeaderValue::from_static("TETHER=v1.x"));
        let head = head_for(
            &only_ours,
            &Forwarding {
                own_cookie: Some("TETHER"),
                ..plain(None)
            },
        );
        assert!(!head.contains("cookie"), "{head}");
        let mut one = HeaderMap::new();
        one.insert(header::COOKIE, HeaderValue::from_static("a=1;b=2"));
        assert!(head_for(&one, &plain(None)).contains("\r\ncookie: a=1;b=2\r\n"));
    }

    #[test]
    fn private_is_added_unless_already_forbidden() {
        let mut h = HeaderMap::new();
        make_private(&mut h);
        assert_eq!(h.get(header::CACHE_CONTROL).unwrap(), "private");

        let mut h = HeaderMap::new();
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=60"),
        );
        make_private(&mut h);
        assert_eq!(h.get(header::CACHE_CONTROL).unwrap(), "private, max-age=60");

        let mut h = HeaderMap::new();
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        make_private(&mut h);
        assert_eq!(h.get(header::CACHE_CONTROL).unwrap(), "no-store");
    }
}
