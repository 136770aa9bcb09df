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
    if let Ok(Some(_)) = crate::h1::parse_request(&mut buf, 16384) {
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

/// Differential, request side: client bytes through tether's request path (head parser,
/// body decoder, forwarded-head writer, body encoder), and the forwarded bytes read back by
/// a second, independent parser (httparse with its own strict length rules). The backend
/// must see exactly the requests tether accepted, with the same bodies, each complete
/// one framed by one header, and an aborted upload never as a complete message.
pub fn http1_requests(data: &[u8]) {
    use crate::h1::{self, BodyDecoder, Decoded, Framing};
    let mut buf = bytes::BytesMut::from(data);
    let mut forwarded = bytes::BytesMut::new();
    let mut accepted: Vec<(String, String, Vec<u8>)> = Vec::new();
    let mut aborted = false;
    for _ in 0..16 {
        let Ok(Some(head)) = h1::parse_request(&mut buf, 16384) else {
            break;
        };
        let (parts, ()) = head.req.into_parts();
        // As proxy::outgoing chooses it: the client's (normalised) length, else chunked.
        let framing = match (head.framing, h1::content_length(&parts.headers)) {
            (Framing::Empty, _) => Framing::Empty,
            (_, Ok(Some(n))) => Framing::Length(n),
            (_, Ok(None)) => Framing::Chunked,
            (_, Err(_)) => panic!("a length the request parser accepted is unreadable"),
        };
        let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        // As proxy::request_host: an absolute-form target's authority wins over Host.
        let host = match parts.uri.authority() {
            Some(a) => http::HeaderValue::from_str(a.as_str()).ok(),
            None => parts.headers.get(http::header::HOST).cloned(),
        };
        let forwarding = crate::proxy::headers::Forwarding {
            peer: b"127.0.0.1",
            tls: false,
            host: host.as_ref(),
            upgrade: false,
            own_cookie: None,
        };
        let mut encoder = crate::proxy::headers::write_request_head(
            &parts.method,
            target,
            &parts.headers,
            &forwarding,
            framing,
            &mut forwarded,
        );
        let mut decoder = BodyDecoder::new(head.framing);
        let mut body = Vec::new();
        let complete = loop {
            match decoder.decode(&mut buf) {
                Ok(Decoded::Data(d)) => {
                    if let Err(e) = encoder.encode(&d, &mut forwarded) {
                        panic!("the decoder gave more than the head declared: {e}");
                    }
                    body.extend_from_slice(&d);
                }
                Ok(Decoded::Done) => break true,
                Ok(Decoded::NeedMore) | Err(_) => break false,
            }
        };
        if !complete {
            aborted = true; // the upload is cut: no last chunk, fewer bytes than declared
            break;
        }
        if let Err(e) = encoder.finish(&mut forwarded) {
            panic!("a complete body is not as long as declared: {e}");
        }
        accepted.push((parts.method.to_string(), target.to_string(), body));
    }
    let mut at = 0;
    for (method, target, body) in &accepted {
        let (m, t, b, len) = strict::request(&forwarded[at..])
            .unwrap_or_else(|| panic!("the backend cannot read request {method} {target}"));
        assert_eq!((&m, &t, &b), (method, target, body));
        at += len;
    }
    if aborted {
        assert!(
            strict::request(&forwarded[at..]).is_none(),
            "an aborted upload reads as a complete request"
        );
    } else {
        assert_eq!(at, forwarded.len(), "bytes after the last request");
    }
}

/// Differential, response side: backend bytes through tether's response path (head parser,
/// body decoder, client head writer, body encoder) and back through the independent parser:
/// the client reads one response with the body tether decoded — or, when the backend's body
/// was broken, a message it can tell is incomplete. The first byte picks a HEAD request.
pub fn http1_responses(data: &[u8]) {
    use crate::h1::{self, BodyDecoder, Decoded, Framing};
    use http::StatusCode;
    let Some((&flags, data)) = data.split_first() else {
        return;
    };
    let head_request = flags & 1 == 1;
    let mut buf = bytes::BytesMut::from(data);
    let head = loop {
        match h1::parse_response(&mut buf, head_request, 16384) {
            Ok(Some(h)) if h.status.is_informational() && h.status != 101 => continue,
            Ok(Some(h)) => break h,
            _ => return,
        }
    };
    if head.status == StatusCode::SWITCHING_PROTOCOLS {
        return;
    }
    let mut decoder = BodyDecoder::new(head.framing);
    let exact = decoder.exact_remaining();
    let mut res = http::Response::new(());
    *res.status_mut() = head.status;
    *res.headers_mut() = head.headers;
    let (parts, ()) = res.into_parts();
    // As server::http1::exchange writes it.
    let no_body = head_request
        || parts.status.is_informational()
        || parts.status == StatusCode::NO_CONTENT
        || parts.status == StatusCode::NOT_MODIFIED;
    let mut out = bytes::BytesMut::new();
    crate::server::http1::write_status_and_headers(
        &parts,
        no_body && parts.status != StatusCode::NO_CONTENT,
        &mut out,
    );
    let framing = match exact {
        _ if no_body => Framing::Empty,
        Some(n) => Framing::Length(n),
        None => Framing::Chunked,
    };
    let mut encoder = h1::finish_head(framing, &mut out);
    let mut body = Vec::new();
    let mut complete = true;
    if !no_body {
        complete = loop {
            match decoder.decode(&mut buf) {
                Ok(Decoded::Data(d)) => {
                    if encoder.encode(&d, &mut out).is_err() {
                        break false;
                    }
                    body.extend_from_slice(&d);
                }
                Ok(Decoded::Done) => break true,
                Ok(Decoded::NeedMore) => break decoder.eof().is_ok(),
                Err(_) => break false,
            }
        };
        complete = complete && encoder.finish(&mut out).is_ok();
    }
    match strict::response(&out, head_request) {
        Some((status, b, len)) => {
            assert!(complete, "a broken body reads as a complete response");
            assert_eq!(status, parts.status.as_u16());
            assert_eq!(b, body);
            assert_eq!(len, out.len(), "bytes after the response");
        }
        None => assert!(!complete, "the client cannot read a complete response"),
    }
}

/// The second parser for the differential targets: httparse for heads, and RFC 9112 §6
/// length rules written here without tether's code — at most one framing header, plain
/// digits, `chunked` alone, strict chunk lines.
mod strict {
    /// One complete request at the front of `b`: method, target, body, bytes used.
    pub fn request(b: &[u8]) -> Option<(String, String, Vec<u8>, usize)> {
        let mut headers = [httparse::EMPTY_HEADER; 160];
        let mut req = httparse::Request::new(&mut headers);
        let head = match req.parse(b) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return None,
            Err(e) => panic!("tether forwarded a head httparse refuses: {e}"),
        };
        let hosts = req
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("host"))
            .count();
        assert!(hosts <= 1, "several Host headers forwarded");
        let (body, used) = body(req.headers, &b[head..], false, true)?;
        Some((
            req.method?.to_string(),
            req.path?.to_string(),
            body,
            head + used,
        ))
    }

    /// One complete response at the front of `b`: status, body, bytes used.
    pub fn response(b: &[u8], head_request: bool) -> Option<(u16, Vec<u8>, usize)> {
        let mut headers = [httparse::EMPTY_HEADER; 160];
        let mut res = httparse::Response::new(&mut headers);
        let head = match res.parse(b) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return None,
            Err(e) => panic!("tether wrote a head httparse refuses: {e}"),
        };
        let status = res.code?;
        let no_body = head_request || status == 204 || status == 304 || status < 200;
        if status == 204 {
            assert!(
                !res.headers
                    .iter()
                    .any(|h| h.name.eq_ignore_ascii_case("content-length")),
                "204 with Content-Length"
            );
        }
        let (body, used) = body(res.headers, &b[head..], no_body, false)?;
        Some((status, body, head + used))
    }

    /// A message body by its framing header; `request`: none means no body (RFC 9112
    /// §6.3 ¶7), while a response tether writes to an HTTP/1.1 client always declares one.
    fn body(
        headers: &[httparse::Header<'_>],
        b: &[u8],
        no_body: bool,
        request: bool,
    ) -> Option<(Vec<u8>, usize)> {
        let mut length = None;
        let mut chunked = false;
        for h in headers {
            if h.name.eq_ignore_ascii_case("content-length") {
                assert!(length.is_none(), "two Content-Length headers");
                assert!(
                    !h.value.is_empty() && h.value.iter().all(u8::is_ascii_digit),
                    "Content-Length {:?}",
                    h.value
                );
                length = Some(std::str::from_utf8(h.value).ok()?.parse::<usize>().ok()?);
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                assert!(!chunked, "two Transfer-Encoding headers");
                assert_eq!(h.value, b"chunked", "Transfer-Encoding other than chunked");
                chunked = true;
            }
        }
        assert!(
            !(chunked && length.is_some()),
            "Content-Length beside Transfer-Encoding"
        );
        if no_body {
            assert!(!chunked, "Transfer-Encoding on a bodiless response");
            return Some((Vec::new(), 0));
        }
        if !chunked {
            let n = if request {
                length.unwrap_or(0)
            } else {
                length?
            };
            return (b.len() >= n).then(|| (b[..n].to_vec(), n));
        }
        let mut body = Vec::new();
        let mut at = 0;
        loop {
            let line = b[at..].windows(2).position(|w| w == b"\r\n")? + at;
            let size_text = std::str::from_utf8(&b[at..line]).ok()?;
            assert!(
                !size_text.is_empty() && size_text.bytes().all(|c| c.is_ascii_hexdigit()),
                "chunk size {size_text:?}"
            );
            let size = usize::from_str_radix(size_text, 16).ok()?;
            at = line + 2;
            if size == 0 {
                return (b.get(at..at + 2)? == b"\r\n").then(|| (body, at + 2));
            }
            body.extend_from_slice(b.get(at..at + size)?);
            assert_eq!(
                b.get(at + size..at + size + 2)?,
                b"\r\n",
                "chunk not ended by CRLF"
            );
            at += size + 2;
        }
    }
}

/// The first bytes of a connection on a `proxy_protocol` listener: PROXY v1/v2 headers.
pub fn proxy_protocol(data: &[u8]) {
    crate::server::proxy_protocol::fuzz(data);
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

    #[test]
    fn http1_requests_corpus() {
        replay("http1_requests", super::http1_requests);
    }

    #[test]
    fn http1_responses_corpus() {
        replay("http1_responses", super::http1_responses);
    }

    #[test]
    fn proxy_protocol_corpus() {
        replay("proxy_protocol", super::proxy_protocol);
    }
}
