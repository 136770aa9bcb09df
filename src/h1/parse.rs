//! Response heads from backends, parsed with httparse into header maps that share the read
//! buffer, and the pieces both head parsers share (spans, header maps, lengths, versions).

use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{StatusCode, Version};

use super::{is_hop_by_hop, tokens, Framing, WireError, MAX_HEADERS};

/// RFC 9112 §2.3: `HTTP/1.x` with any minor version is read as HTTP/1.1. httparse knows
/// only 1.0 and 1.1, so a higher minor digit in the first line is rewritten to 1 in place.
pub(super) fn accept_any_minor(line: &mut [u8], request: bool) {
    let line = match line.last() {
        Some(b'\r') if request => {
            let n = line.len() - 1;
            &mut line[..n]
        }
        _ => line,
    };
    let at = if request {
        line.len().checked_sub(8)
    } else {
        Some(0)
    };
    let Some(v) = at.and_then(|a| line.get_mut(a..a + 8)) else {
        return;
    };
    if v.starts_with(b"HTTP/1.") && (b'2'..=b'9').contains(&v[7]) {
        v[7] = b'1';
    }
}

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

/// Plain decimal digits (no sign, no spaces), at most 19 of them.
pub(super) fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 {
        return None;
    }
    s.iter().try_fold(0u64, |n, &b| {
        b.is_ascii_digit().then(|| n * 10 + u64::from(b - b'0'))
    })
}

/// The message's length from its `Content-Length` headers: `Ok(None)` without any, an error
/// for a malformed value or differing ones.
pub fn content_length(h: &HeaderMap) -> Result<Option<u64>, WireError> {
    let mut length: Option<u64> = None;
    for v in h.get_all(header::CONTENT_LENGTH) {
        for part in v.as_bytes().split(|&b| b == b',') {
            let n = parse_decimal(part.trim_ascii()).ok_or(WireError::Length)?;
            if length.is_some_and(|l| l != n) {
                return Err(WireError::Length);
            }
            length = Some(n);
        }
    }
    Ok(length)
}

/// A decimal number, as text, without the formatting machinery.
pub fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// Where one header's name and value sit in the buffer httparse read (start, end, start,
/// end), kept so the parser's borrow can end before the head is split off and frozen.
pub(super) type Span = (u32, u32, u32, u32);
pub(super) const NO_SPAN: Span = (0, 0, 0, 0);

/// Records where `headers` (which point into `buf`) are; returns how many.
pub(super) fn record_spans(
    buf: &[u8],
    headers: &[httparse::Header<'_>],
    out: &mut [Span],
) -> usize {
    for (span, h) in out.iter_mut().zip(headers) {
        let n = offset(buf, h.name.as_bytes());
        let v = offset(buf, h.value);
        *span = (n, n + h.name.len() as u32, v, v + h.value.len() as u32);
    }
    headers.len().min(out.len())
}

/// Which framing-related headers a head carries, noted while its map is built so the
/// usual absent case costs no lookups.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Seen {
    pub(super) connection: bool,
    pub(super) content_length: bool,
    pub(super) transfer_encoding: bool,
    pub(super) upgrade: bool,
    pub(super) expect: bool,
}

/// The header map, its values sharing `head` (the split-off head) without copies.
pub(super) fn header_map(head: &Bytes, spans: &[Span]) -> Option<(HeaderMap, Seen)> {
    let mut headers = HeaderMap::with_capacity(spans.len());
    let mut seen = Seen::default();
    for &(ns, ne, vs, ve) in spans {
        let name = HeaderName::from_bytes(head.get(ns as usize..ne as usize)?).ok()?;
        let value = head.get(vs as usize..ve as usize)?;
        let value = HeaderValue::from_maybe_shared(head.slice_ref(value)).ok()?;
        if name == header::CONNECTION {
            seen.connection = true;
        } else if name == header::CONTENT_LENGTH {
            seen.content_length = true;
        } else if name == header::TRANSFER_ENCODING {
            seen.transfer_encoding = true;
        } else if name == header::UPGRADE {
            seen.upgrade = true;
        } else if name == header::EXPECT {
            seen.expect = true;
        }
        headers.append(name, value);
    }
    Some((headers, seen))
}

/// Where `part` (a slice of `buf`) starts in `buf`.
pub(super) fn offset(buf: &[u8], part: &[u8]) -> u32 {
    (part.as_ptr() as usize).saturating_sub(buf.as_ptr() as usize) as u32
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
