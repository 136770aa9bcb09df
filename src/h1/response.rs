//! Response heads from backends, parsed with httparse into header maps that share the read buffer.

use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{StatusCode, Version};

use super::parse::{accept_any_minor, decimal, offset, parse_decimal, record_spans, Span, NO_SPAN};
use super::{is_hop_by_hop, tokens, Framing, WireError, MAX_HEADERS};

/// A parsed response head.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: StatusCode,
    pub version: Version,
    /// The reason phrase, when it is not the standard one for the status.
    pub reason: Option<Bytes>,
    /// End-to-end headers only. `Content-Length` is left out (the framing says it), except
    /// one normalised value on a bodiless response that may carry it (HEAD, 304).
    pub headers: HeaderMap,
    pub framing: Framing,
    /// The connection may carry another request after this response.
    pub keep_alive: bool,
}

/// Parses one response head from the front of `buf`, removing it. `Ok(None)`: more bytes
/// are needed. Header values share the buffer's memory instead of being copied.
pub fn parse_response(
    buf: &mut BytesMut,
    head_request: bool,
    max_head: usize,
) -> Result<Option<ResponseHead>, WireError> {
    if buf.len() >= 8 {
        accept_any_minor(&mut buf[..8], false);
    }
    let mut spans = [NO_SPAN; MAX_HEADERS];
    let (len, count, code, minor, reason) = {
        let mut storage = [const { MaybeUninit::uninit() }; MAX_HEADERS];
        let mut res = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut res,
            buf,
            &mut storage,
        );
        let len = match parsed {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buf.len() > max_head => {
                return Err(WireError::TooLarge)
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err(WireError::TooLarge),
            Err(_) => return Err(WireError::Head),
        };
        if len > max_head {
            return Err(WireError::TooLarge);
        }
        let reason = res.reason.map(|r| {
            let r = r.as_bytes();
            (offset(buf, r), offset(buf, r) + r.len() as u32)
        });
        (
            len,
            record_spans(buf, res.headers, &mut spans),
            res.code.unwrap_or(0),
            res.version.unwrap_or(1),
            reason,
        )
    };
    let head = buf.split_to(len).freeze();
    let status = StatusCode::from_u16(code).map_err(|_| WireError::Head)?;
    let upgrade = status == StatusCode::SWITCHING_PROTOCOLS;
    let (mut headers, hop) = response_map(&head, &spans[..count], upgrade)?;
    let reason = reason
        .and_then(|(s, e)| head.get(s as usize..e as usize))
        .map(|r| head.slice_ref(r))
        .filter(|r| status.canonical_reason().map(str::as_bytes) != Some(&r[..]));
    let version = if minor == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let framing = framing(status, head_request, &hop)?;
    // HEAD and 304 may say how long the body would be; nothing else keeps the header.
    let declares_length = framing == Framing::Empty
        && !hop.transfer_encoding
        && (head_request || status == StatusCode::NOT_MODIFIED);
    match hop.content_length {
        Some(n) if declares_length => {
            let mut digits = [0u8; 20];
            if let Ok(v) = HeaderValue::from_bytes(decimal(n, &mut digits)) {
                headers.insert(header::CONTENT_LENGTH, v);
            }
        }
        _ => {}
    }
    let keep_alive = framing != Framing::Close
        && match version {
            Version::HTTP_11 => !hop.close,
            _ => hop.keep_alive,
        };
    Ok(Some(ResponseHead {
        status,
        version,
        reason,
        headers,
        framing,
        keep_alive,
    }))
}

/// What a response's hop-by-hop and framing headers said. They describe the link to the
/// backend, not the one to the client, so they are read here and left out of the map.
#[derive(Debug, Default)]
struct HopFacts {
    /// `Connection` lists `close` / `keep-alive`.
    close: bool,
    keep_alive: bool,
    /// `Connection` names other headers, which are then hop-by-hop too.
    names_others: bool,
    transfer_encoding: bool,
    /// The last transfer coding is `chunked`.
    chunked: bool,
    content_length: Option<u64>,
    /// Content-Length values that are malformed or differ (an error unless
    /// Transfer-Encoding overrides them).
    bad_length: bool,
}

/// The response's header map without its hop-by-hop and framing headers (values share
/// `head`), and what those said. `Upgrade` stays only on a 101 (`upgrade`).
fn response_map(
    head: &Bytes,
    spans: &[Span],
    upgrade: bool,
) -> Result<(HeaderMap, HopFacts), WireError> {
    let get = |s: u32, e: u32| head.get(s as usize..e as usize).ok_or(WireError::Head);
    let mut hop = HopFacts::default();
    // Connection first: the headers it names may come before it.
    for &(ns, ne, vs, ve) in spans {
        if get(ns, ne)?.eq_ignore_ascii_case(b"connection") {
            for t in tokens(get(vs, ve)?) {
                if t.eq_ignore_ascii_case(b"close") {
                    hop.close = true;
                } else if t.eq_ignore_ascii_case(b"keep-alive") {
                    hop.keep_alive = true;
                } else if !t.eq_ignore_ascii_case(b"upgrade") && !is_hop_by_hop(t) {
                    hop.names_others = true;
                }
            }
        }
    }
    let mut headers = HeaderMap::with_capacity(spans.len());
    for &(ns, ne, vs, ve) in spans {
        let (name, value) = (get(ns, ne)?, get(vs, ve)?);
        if is_hop_by_hop(name) {
            if name.eq_ignore_ascii_case(b"transfer-encoding") {
                hop.transfer_encoding = true;
                // Over all Transfer-Encoding lines: the last coding decides.
                hop.chunked = tokens(value)
                    .last()
                    .map_or(hop.chunked, |t| t.eq_ignore_ascii_case(b"chunked"));
            }
            continue;
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            for part in value.split(|&b| b == b',') {
                match parse_decimal(part.trim_ascii()) {
                    Some(n) if hop.content_length.is_none_or(|l| l == n) => {
                        hop.content_length = Some(n)
                    }
                    _ => hop.bad_length = true,
                }
            }
            continue;
        }
        if (!upgrade && name.eq_ignore_ascii_case(b"upgrade"))
            || (hop.names_others && named_by_connection(head, spans, name))
        {
            continue;
        }
        let name = HeaderName::from_bytes(name).map_err(|_| WireError::Head)?;
        let value =
            HeaderValue::from_maybe_shared(head.slice_ref(value)).map_err(|_| WireError::Head)?;
        headers.append(name, value);
    }
    Ok((headers, hop))
}

/// Whether a `Connection` header in the head lists `name` (only asked when one names
/// headers beyond the standard tokens, which is rare).
fn named_by_connection(head: &[u8], spans: &[Span], name: &[u8]) -> bool {
    spans.iter().any(|&(ns, ne, vs, ve)| {
        head.get(ns as usize..ne as usize)
            .is_some_and(|n| n.eq_ignore_ascii_case(b"connection"))
            && head
                .get(vs as usize..ve as usize)
                .is_some_and(|v| tokens(v).any(|t| t.eq_ignore_ascii_case(name)))
    })
}

/// RFC 9112 §6.3: how the body of this response is delimited. Differing lengths are an
/// error (a 502) unless Transfer-Encoding overrides them.
fn framing(status: StatusCode, head_request: bool, hop: &HopFacts) -> Result<Framing, WireError> {
    if hop.bad_length && !hop.transfer_encoding {
        return Err(WireError::Length);
    }
    if head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(Framing::Empty);
    }
    if hop.transfer_encoding {
        // Chunked only if it is the last coding; otherwise the body runs to the close.
        return Ok(if hop.chunked {
            Framing::Chunked
        } else {
            Framing::Close
        });
    }
    Ok(match hop.content_length {
        Some(0) => Framing::Empty,
        Some(n) => Framing::Length(n),
        None => Framing::Close,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8], head: bool) -> Result<Option<ResponseHead>, WireError> {
        parse_response(&mut BytesMut::from(raw), head, 65536)
    }

    #[test]
    fn partial_head_asks_for_more_and_keeps_the_bytes() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Len";
        let mut buf = BytesMut::from(&raw[..]);
        assert!(parse_response(&mut buf, false, 65536).unwrap().is_none());
        assert_eq!(&buf[..], raw);
    }

    #[test]
    fn head_is_split_off_and_body_bytes_stay() {
        let mut buf =
            BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Y: z\r\n\r\nhello"[..]);
        let r = parse_response(&mut buf, false, 65536).unwrap().unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.framing, Framing::Length(5));
        assert!(r.keep_alive);
        assert_eq!(r.headers["x-y"], "z");
        assert_eq!(r.reason, None);
        assert_eq!(&buf[..], b"hello");
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let f = |raw: &[u8], head| parse(raw, head).unwrap().unwrap().framing;
        assert_eq!(
            f(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true),
            Framing::Empty
        );
        assert_eq!(f(b"HTTP/1.1 204 No Content\r\n\r\n", false), Framing::Empty);
        assert_eq!(
            f(
                b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
                false
            ),
            Framing::Empty
        );
        assert_eq!(
            f(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 3\r\n\r\n",
                false
            ),
            Framing::Chunked
        );
        assert_eq!(
            f(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", false),
            Framing::Close
        );
        assert_eq!(f(b"HTTP/1.1 200 OK\r\n\r\n", false), Framing::Close);
        assert_eq!(
            f(b"HTTP/1.1 200 OK\r\nContent-Length: 7, 7\r\n\r\n", false),
            Framing::Length(7)
        );
        assert_eq!(
            parse(
                b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nContent-Length: 8\r\n\r\n",
                false
            )
            .unwrap_err(),
            WireError::Length
        );
        assert_eq!(
            parse(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", false).unwrap_err(),
            WireError::Length
        );
    }

    #[test]
    fn keep_alive_depends_on_version_and_connection() {
        let ka = |raw: &[u8]| parse(raw, false).unwrap().unwrap().keep_alive;
        assert!(!ka(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        ));
        assert!(!ka(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"));
        assert!(ka(
            b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n"
        ));
        assert!(
            !ka(b"HTTP/1.1 200 OK\r\n\r\n"),
            "a body delimited by close ends the connection"
        );
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_left_out() {
        // x-secret is named by Connection after it appears; the parse still drops it.
        let r = parse(
            b"HTTP/1.1 200 OK\r\nX-Secret: 1\r\nConnection: keep-alive, X-Secret\r\n\
              Keep-Alive: timeout=5\r\nTransfer-Encoding: chunked\r\nUpgrade: websocket\r\n\
              Proxy-Connection: x\r\nTE: trailers\r\nTrailer: x-t\r\nX-Kept: 1\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        let names: Vec<&str> = r.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-kept"]);
        assert_eq!(
            r.framing,
            Framing::Chunked,
            "dropped, but still read for framing"
        );
    }

    #[test]
    fn a_101_keeps_upgrade_and_a_200_does_not() {
        let raw = |status: &str| {
            format!("HTTP/1.1 {status}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nContent-Length: 0\r\n\r\n")
        };
        let r = parse(raw("101 Switching Protocols").as_bytes(), false)
            .unwrap()
            .unwrap();
        assert_eq!(r.headers[header::UPGRADE], "websocket");
        assert!(r.headers.get(header::CONNECTION).is_none());
        let r = parse(raw("200 OK").as_bytes(), false).unwrap().unwrap();
        assert!(r.headers.get(header::UPGRADE).is_none());
        assert!(
            r.headers.get(header::CONTENT_LENGTH).is_none(),
            "the framing says the length; the head writer declares it"
        );
    }

    #[test]
    fn bad_content_length_is_ignored_under_transfer_encoding() {
        let r = parse(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: x\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(r.framing, Framing::Chunked);
    }

    #[test]
    fn custom_reason_is_kept_and_garbage_rejected() {
        let r = parse(b"HTTP/1.1 200 Fine\r\nContent-Length: 0\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert_eq!(r.reason.as_deref(), Some(&b"Fine"[..]));
        assert_eq!(
            parse(b"SMTP ready\r\n\r\n", false).unwrap_err(),
            WireError::Head
        );
        let big = [b"HTTP/1.1 200 OK\r\nX: ".as_slice(), &[b'a'; 70000]].concat();
        assert_eq!(parse(&big, false).unwrap_err(), WireError::TooLarge);
    }
}
