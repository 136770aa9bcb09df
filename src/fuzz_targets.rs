//! Entry points for fuzzing (`fuzz/`, built with `--cfg fuzzing`) and their corpus replayed
//! in `cargo test`: each takes arbitrary bytes and must never panic, hang or allocate without bound.

use std::net::IpAddr;
use std::time::Duration;

use crate::affinity::{client_ip, cookie, learn, route};
use crate::config::{Config, CookieConfig};

/// The affinity cookie: finding, stripping, decoding and verifying arbitrary bytes.
pub fn cookie(data: &[u8]) {
    let codec = cookie::CookieCodec::new(&CookieConfig {
        secret: Some("fuzzing-secret-0123456789".into()),
        max_idle: Some(Duration::from_secs(3600)),
        ..CookieConfig::default()
    });
    let plain = cookie::CookieCodec::new(&CookieConfig::default());
    let headers = [data];
    if let Some(v) = cookie::find_cookie(headers.iter().copied(), "TETHER") {
        let _ = codec.decode(v, 1_800_000_000);
        let _ = plain.decode(v, 1_800_000_000);
    }
    let _ = codec.decode(data, 1_800_000_000);
    let _ = plain.decode(data, 0);
    let _ = cookie::strip_cookie(headers.iter().copied(), Some("TETHER"));
}

/// Tomcat session ids in paths and cookies, and learn mode's Set-Cookie parsing.
pub fn route(data: &[u8]) {
    let path = String::from_utf8_lossy(data);
    let (a, b) = data.split_at(data.len() / 2);
    if let Some(sid) = route::session_id(&path, Some(b), "jsessionid") {
        let _ = route::route_of(sid);
        let _ = route::session_key(sid);
    }
    let _ = route::session_id(&String::from_utf8_lossy(a), None, "JSESSIONID");
    let _ = learn::set_cookie_values([data, a, b].into_iter(), "session");
}

/// Any bytes as a config file.
pub fn config(data: &[u8]) {
    if let Ok(c) = Config::parse(&String::from_utf8_lossy(data), "fuzz.toml") {
        let _ = c.warnings();
    }
}

/// X-Forwarded-For from a trusted proxy.
pub fn forwarded_for(data: &[u8]) {
    let trusted = [
        "127.0.0.0/8".parse().ok(),
        "10.0.0.0/8".parse().ok(),
        "::1/128".parse().ok(),
    ];
    let trusted: Vec<ipnet::IpNet> = trusted.into_iter().flatten().collect();
    let peer = IpAddr::from([127, 0, 0, 1]);
    let parts: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    let _ = client_ip::client_ip(peer, parts.iter().copied(), &trusted);
}

/// HTTP/1.1 heads and bodies off the wire: a request head (the client side), a response
/// head (the backend side), and chunked decoding of whatever follows either.
pub fn http1(data: &[u8]) {
    let mut buf = bytes::BytesMut::from(data);
    if let Ok(Some(_)) = crate::server::http1::parse_request_head(&mut buf, 16384) {
        drain_chunked(&mut buf);
    }
    let mut buf = bytes::BytesMut::from(data);
    if let Ok(Some(_)) = crate::h1::parse_response(&mut buf, false, 16384) {
        drain_chunked(&mut buf);
    }
    drain_chunked(&mut bytes::BytesMut::from(data));
}

fn drain_chunked(buf: &mut bytes::BytesMut) {
    let mut d = crate::h1::ChunkedDecoder::default();
    while let Ok(crate::h1::Decoded::Data(_)) = d.decode(buf) {}
}

/// Replays the fuzzing seed corpus (and any crash inputs kept as regressions) through the
/// entry points above, so `cargo test` catches regressions without cargo-fuzz.
#[cfg(test)]
mod replay {
    use std::path::Path;

    fn replay(target: &str, f: fn(&[u8])) {
        let mut n = 0;
        for dir in ["fuzz/seeds", "fuzz/regressions"] {
            let d = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir).join(target);
            let Ok(entries) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in entries {
                let path = e.unwrap().path();
                f(&std::fs::read(&path).unwrap());
                n += 1;
            }
        }
        assert!(n >= 2, "{target}: no seeds replayed");
    }

    #[test]
    fn cookie_corpus() {
        replay("cookie", super::cookie);
    }

    #[test]
    fn route_corpus() {
        replay("route", super::route);
    }

    #[test]
    fn config_corpus() {
        replay("config", super::config);
    }

    #[test]
    fn forwarded_for_corpus() {
        replay("forwarded_for", super::forwarded_for);
    }

    #[test]
    fn http1_corpus() {
        replay("http1", super::http1);
    }
}
