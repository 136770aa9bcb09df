//! Request heads from clients, held strictly to RFC 9112: anything another implementation
//! could read differently (framing, line ends, Host, targets) is refused with the status
//! the client gets.

use std::mem::MaybeUninit;

use bytes::BytesMut;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Uri, Version};

use super::parse::{
    accept_any_minor, content_length, decimal, header_map, offset, record_spans, Seen, Span,
    NO_SPAN,
};
use super::{has_token, Framing, WireError, MAX_HEADERS};

/// A parsed request head.
#[derive(Debug)]
pub struct RequestHead {
    /// Method, target, version and headers; the framing headers are normalised: at most one
    /// `Content-Length` (identical duplicates collapsed), never `Transfer-Encoding`.
    pub req: Request<()>,
    pub framing: Framing,
    pub keep_alive: bool,
    /// HTTP/1.1 with `Expect: 100-continue` (HTTP/1.0 clients get no 100).
    pub expect_continue: bool,
    /// The request carries `Upgrade` (WebSocket and the like).
    pub upgrade: bool,
}

/// Parses one request head from the front of `buf`, removing it. `Ok(None)`: more bytes
/// are needed. Every refusal is an error whose [`WireError::status`] answers the client.
pub fn parse_request(
    buf: &mut BytesMut,
    max_head: usize,
) -> Result<Option<RequestHead>, WireError> {
    let line_end = memchr::memchr(b'\n', buf);
    if line_end.is_none_or(|i| i > max_head) && buf.len() > max_head {
        return Err(WireError::LineTooLong);
    }
    if let Some(i) = line_end {
        accept_any_minor(&mut buf[..i], true);
    }
    let mut spans = [NO_SPAN; MAX_HEADERS];
    let (len, count, method, path, minor) = {
        let mut storage = [const { MaybeUninit::uninit() }; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut []);
        let len = match req.parse_with_uninit_headers(buf, &mut storage) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buf.len() > max_head => {
                return Err(WireError::TooLarge)
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err(WireError::TooLarge),
            Err(httparse::Error::Version) => return Err(WireError::Version),
            Err(_) => return Err(WireError::Head),
        };
        if len > max_head {
            return Err(WireError::TooLarge);
        }
        let method =
            Method::from_bytes(req.method.unwrap_or("").as_bytes()).map_err(|_| WireError::Head)?;
        let path = req.path.map(|p| {
            let start = offset(buf, p.as_bytes()) as usize;
            (start, start + p.len())
        });
        let count = record_spans(buf, req.headers, &mut spans);
        (len, count, method, path, req.version.unwrap_or(1))
    };
    let head = buf.split_to(len).freeze();
    strict_line_ends(&head, &spans[..count])?;
    let (ps, pe) = path.ok_or(WireError::Head)?;
    // `get` then `slice_ref`: bounds are checked, never a panic on odd input.
    let target = head.get(ps..pe).ok_or(WireError::Head)?;
    let uri = Uri::from_maybe_shared(head.slice_ref(target)).map_err(|_| WireError::Target)?;
    if method == Method::CONNECT {
        return Err(WireError::Connect);
    }
    check_target(&method, &uri)?;
    let (mut headers, seen) = header_map(&head, &spans[..count]).ok_or(WireError::Head)?;
    let version = if minor == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    check_host(version, &head, seen)?;
    let framing = request_framing(version, &mut headers, seen)?;
    let keep_alive = match version {
        Version::HTTP_11 => !(seen.connection && has_token(&headers, header::CONNECTION, b"close")),
        _ => seen.connection && has_token(&headers, header::CONNECTION, b"keep-alive"),
    };
    let expect_continue = seen.expect
        && version == Version::HTTP_11
        && headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let mut req = Request::new(());
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = version;
    *req.headers_mut() = headers;
    Ok(Some(RequestHead {
        req,
        framing,
        keep_alive,
        expect_continue,
        upgrade: seen.upgrade,
    }))
}

/// RFC 9112 §2.2: tether accepts CRLF only. httparse already refuses a CR that is not
/// followed by LF (in the request line, names and values alike, as the table tests show);
/// it does accept a bare LF as a line end, which is refused here, as a peer might split
/// lines differently. A line can only end before a field name or at the head's end, so
/// those places are all that need a look — unless the head starts with empty lines, which
/// httparse skips: then every LF is checked.
fn strict_line_ends(head: &[u8], spans: &[Span]) -> Result<(), WireError> {
    let crlf_before = |i: u32| {
        let i = i as usize;
        i >= 2 && head.get(i - 2..i) == Some(&b"\r\n"[..])
    };
    let ok = if head.first().is_some_and(|b| *b == b'\r' || *b == b'\n') {
        every_lf_after_cr(head)
    } else {
        head.ends_with(b"\r\n\r\n") && spans.iter().all(|&(name, ..)| crlf_before(name))
    };
    if ok {
        Ok(())
    } else {
        Err(WireError::Head)
    }
}

/// Every LF in `head` comes right after a CR.
fn every_lf_after_cr(head: &[u8]) -> bool {
    memchr::memchr_iter(b'\n', head).all(|i| i > 0 && head[i - 1] == b'\r')
}

/// RFC 9112 §3.2: origin-form, absolute-form without userinfo, or `*` for OPTIONS. The
/// authority-form belongs to CONNECT only, which is refused before this.
fn check_target(method: &Method, uri: &Uri) -> Result<(), WireError> {
    match (uri.scheme(), uri.authority()) {
        (Some(scheme), Some(authority)) => {
            let http = scheme == &http::uri::Scheme::HTTP || scheme == &http::uri::Scheme::HTTPS;
            if !http || authority.as_str().contains('@') || authority.host().is_empty() {
                return Err(WireError::Target);
            }
            Ok(())
        }
        (None, None) => {
            let path = uri.path();
            if path.starts_with('/') || (path == "*" && method == Method::OPTIONS) {
                Ok(())
            } else {
                Err(WireError::Target)
            }
        }
        _ => Err(WireError::Target),
    }
}

/// RFC 9112 §3.2: exactly one `Host` on HTTP/1.1 (at most one on 1.0), a valid authority
/// without userinfo. Reads the field where the header map's build noted it (no lookup).
fn check_host(version: Version, head: &[u8], seen: Seen) -> Result<(), WireError> {
    match seen.hosts {
        0 if version == Version::HTTP_10 => Ok(()),
        1 => {
            let v = head
                .get(seen.host.0 as usize..seen.host.1 as usize)
                .ok_or(WireError::Host)?;
            if v.is_empty() {
                return Ok(()); // allowed when the target has no authority (RFC 9112 §3.2)
            }
            if plain_host(v) {
                return Ok(());
            }
            match http::uri::Authority::try_from(v) {
                Ok(a) if !a.as_str().contains('@') => Ok(()),
                _ => Err(WireError::Host),
            }
        }
        _ => Err(WireError::Host),
    }
}

/// The usual `Host`: a registered name or IPv4 address (RFC 3986 reg-name characters,
/// never `@`), with an optional all-digit port. Checked byte by byte, as the general
/// authority parser (kept for IPv6 literals and anything unusual) costs more per request.
fn plain_host(v: &[u8]) -> bool {
    let (host, port) = match memchr::memrchr(b':', v) {
        Some(i) => (&v[..i], &v[i + 1..]),
        None => (v, &b""[..]),
    };
    !host.is_empty()
        && host.iter().all(|&b| HOST_BYTE[usize::from(b)])
        && port.len() <= 5
        && port.iter().all(u8::is_ascii_digit)
}

/// The bytes of a reg-name or IPv4 address: unreserved and sub-delims (RFC 3986 §3.2.2).
static HOST_BYTE: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            );
        b += 1;
    }
    t
};

/// RFC 9112 §6.3 for requests, strictly: Transfer-Encoding with Content-Length, any coding
/// but a single `chunked`, or differing lengths are refused (request smuggling). Identical
/// lengths are collapsed into one header.
fn request_framing(version: Version, h: &mut HeaderMap, seen: Seen) -> Result<Framing, WireError> {
    if seen.transfer_encoding {
        if version == Version::HTTP_10 || seen.content_length {
            return Err(WireError::TransferEncoding);
        }
        let mut codings = h
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .map(<[u8]>::trim_ascii);
        return match (codings.next(), codings.next()) {
            (Some(t), None) if t.eq_ignore_ascii_case(b"chunked") => {
                h.remove(header::TRANSFER_ENCODING);
                Ok(Framing::Chunked)
            }
            _ => Err(WireError::TransferEncoding),
        };
    }
    if !seen.content_length {
        return Ok(Framing::Empty);
    }
    let length = content_length(h)?;
    if let Some(n) = length {
        let mut digits = [0u8; 20];
        let d = decimal(n, &mut digits);
        let mut all = h.get_all(header::CONTENT_LENGTH).iter();
        let single = matches!((all.next(), all.next()), (Some(v), None) if v.as_bytes() == d);
        if !single {
            let v = HeaderValue::from_bytes(d).map_err(|_| WireError::Length)?;
            h.insert(header::CONTENT_LENGTH, v);
        }
    }
    Ok(match length {
        None | Some(0) => Framing::Empty,
        Some(n) => Framing::Length(n),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(raw: &[u8]) -> Result<Option<RequestHead>, WireError> {
        parse_request(&mut BytesMut::from(raw), 65536)
    }

    #[test]
    fn request_heads_parse_with_framing_and_keep_alive() {
        let p = req(b"POST /a?b=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
            .unwrap()
            .unwrap();
        assert_eq!(p.req.method(), Method::POST);
        assert_eq!(p.req.uri().path_and_query().unwrap().as_str(), "/a?b=1");
        assert_eq!(p.req.headers()["host"], "x");
        assert!(p.framing == Framing::Length(5) && p.keep_alive && !p.expect_continue);
        let p = req(b"GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!p.keep_alive && p.framing == Framing::Empty);
        let p = req(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(p.keep_alive);
        let p = req(
            b"PUT / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert!(p.framing == Framing::Chunked && p.expect_continue);
        assert!(p.req.headers().get(header::TRANSFER_ENCODING).is_none());
        assert!(req(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap().is_none());
        let p =
            req(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\ncontent-length: 3, 3\r\n\r\n")
                .unwrap()
                .unwrap();
        let lengths: Vec<_> = p
            .req
            .headers()
            .get_all(header::CONTENT_LENGTH)
            .iter()
            .collect();
        assert_eq!(lengths, ["3"], "identical lengths collapse into one");
    }

    proptest::proptest! {
        /// Network input: any bytes give a parse, "need more", or an error — never a panic.
        #[test]
        fn request_parsing_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            let _ = req(&bytes);
            let _ = crate::h1::parse_response(&mut BytesMut::from(&bytes[..]), false, 65536);
        }

        /// Mutations of a valid head with a chunked body: still no panic, in the head
        /// parsers or the body decoder.
        #[test]
        fn mutated_requests_never_panic(at in 0usize..120, byte in proptest::prelude::any::<u8>(), cut in 0usize..120) {
            let mut raw = b"POST /a?b=1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nCookie: a=1\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_vec();
            let at = at % raw.len();
            raw[at] = byte;
            raw.truncate(raw.len() - cut % raw.len());
            let mut buf = BytesMut::from(&raw[..]);
            if let Ok(Some(_)) = parse_request(&mut buf, 65536) {
                let mut d = crate::h1::ChunkedDecoder::default();
                while let Ok(crate::h1::Decoded::Data(_)) = d.decode(&mut buf) {}
            }
            let mut res = BytesMut::from(&raw[..]);
            let _ = crate::h1::parse_response(&mut res, false, 65536);
        }
    }

    #[test]
    fn plain_hosts_pass_the_fast_check_and_anything_else_goes_to_the_full_parser() {
        for ok in [
            &b"shop.example.com"[..],
            b"shop.example.com:8080",
            b"10.0.0.1:80",
            b"a_b-c~",
        ] {
            assert!(plain_host(ok), "{:?}", String::from_utf8_lossy(ok));
        }
        for other in [
            &b"user@shop.example.com"[..],
            b"[::1]:80",
            b":80",
            b"shop.example.com:80a",
            b"shop.example.com:123456",
            b"shop example",
            b"shop%41",
            b"shop/path",
        ] {
            assert!(!plain_host(other), "{:?}", String::from_utf8_lossy(other));
        }
        // What the fast check leaves to the parser is still judged the same way.
        for (host, ok) in [("[::1]:80", true), ("user@shop.example.com", false)] {
            let mut buf =
                BytesMut::from(format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").as_str());
            let r = parse_request(&mut buf, 8192);
            assert_eq!(r.is_ok(), ok, "{host}: {r:?}");
        }
        // Two Host fields, or none on HTTP/1.1, are refused; none on HTTP/1.0 is fine.
        for (head, ok) in [
            (&b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n"[..], false),
            (b"GET / HTTP/1.1\r\n\r\n", false),
            (b"GET / HTTP/1.0\r\n\r\n", true),
        ] {
            let mut buf = BytesMut::from(head);
            assert_eq!(parse_request(&mut buf, 8192).is_ok(), ok);
        }
    }

    /// The look at field-name starts and the head's end finds every bare LF the full scan
    /// finds, in every head httparse accepts.
    #[test]
    fn line_end_check_agrees_with_a_full_scan() {
        let heads: [&[u8]; 9] = [
            b"GET / HTTP/1.1\r\nHost: t\r\n\r\n",
            b"GET / HTTP/1.1\nHost: t\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: t\n\r\n",
            b"GET / HTTP/1.1\r\nHost: t\r\n\n",
            b"GET / HTTP/1.1\r\nHost: t\r\nA: b\nC: d\r\n\r\n",
            b"GET / HTTP/1.0\n\n",
            b"\r\nGET / HTTP/1.1\r\nHost: t\r\n\r\n",
            b"\nGET / HTTP/1.1\r\nHost: t\r\n\r\n",
            b"GET / HTTP/1.0\r\n\r\n",
        ];
        for head in heads {
            let mut buf = BytesMut::from(head);
            let fast = parse_request(&mut buf, 8192).map(|r| r.is_some());
            let full_ok = every_lf_after_cr(head);
            assert_eq!(
                !matches!(fast, Err(WireError::Head)),
                full_ok,
                "{:?}: {fast:?}",
                String::from_utf8_lossy(head)
            );
        }
    }
}
