//! Header rewriting between client and backend: hop-by-hop removal, X-Forwarded-*, our
//! cookie stripped, and `Cache-Control: private` on responses that set a pin.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Hop-by-hop headers (RFC 9110 §7.6.1) that never cross the proxy.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Removes hop-by-hop headers and those the `Connection` header names. With `keep_upgrade`,
/// `Connection: upgrade` and `Upgrade` survive (WebSocket and other upgrades).
pub fn remove_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    if h.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = h
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .filter(|n| !(keep_upgrade && n == header::UPGRADE))
            .collect();
        for n in named {
            h.remove(n);
        }
    }
    for n in &HOP_BY_HOP {
        h.remove(n);
    }
    if keep_upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        h.remove(header::UPGRADE);
    }
}

/// Appends the client to X-Forwarded-For and sets X-Forwarded-Proto and -Host.
pub fn set_forwarded(h: &mut HeaderMap, peer: &[u8], tls: bool, host: Option<&HeaderValue>) {
    let mut xff: Vec<u8> = Vec::with_capacity(64);
    for v in h.get_all(&X_FORWARDED_FOR) {
        if !xff.is_empty() {
            xff.extend_from_slice(b", ");
        }
        xff.extend_from_slice(v.as_bytes());
    }
    if !xff.is_empty() {
        xff.extend_from_slice(b", ");
    }
    xff.extend_from_slice(peer);
    if let Ok(v) = HeaderValue::from_bytes(&xff) {
        h.insert(X_FORWARDED_FOR.clone(), v);
    }
    h.insert(
        X_FORWARDED_PROTO.clone(),
        HeaderValue::from_static(if tls { "https" } else { "http" }),
    );
    match host {
        Some(host) => {
            h.insert(X_FORWARDED_HOST.clone(), host.clone());
        }
        None => {
            h.remove(&X_FORWARDED_HOST);
        }
    }
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

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn keeps_upgrade_for_websocket() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        remove_hop_by_hop(&mut h, true);
        assert_eq!(h.get(header::UPGRADE).unwrap(), "websocket");
        assert_eq!(h.get(header::CONNECTION).unwrap(), "upgrade");
    }

    #[test]
    fn forwarded_headers_append_and_set() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("1.1.1.1"));
        h.insert("x-forwarded-host", HeaderValue::from_static("evil"));
        let host = HeaderValue::from_static("shop.example.com");
        set_forwarded(&mut h, b"10.0.0.9", false, Some(&host));
        assert_eq!(h.get("x-forwarded-for").unwrap(), "1.1.1.1, 10.0.0.9");
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "http");
        assert_eq!(h.get("x-forwarded-host").unwrap(), "shop.example.com");
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
