//! The HTTP/1.1 wire format, both ways: heads parsed with httparse into header maps that
//! share the read buffer, body framing (Content-Length, chunked), and head writing. Pure
//! functions over byte buffers; `proxy::upstream` speaks it to backends, `server::http1`
//! to clients.

use std::mem::MaybeUninit;

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};

/// Most headers a head may carry.
pub const MAX_HEADERS: usize = 128;
/// Longest chunk-size line (with extensions) or trailer line accepted.
const MAX_LINE: usize = 4096;

/// A response the backend sent that tether cannot relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("malformed response head")]
    Head,
    #[error("response head too large")]
    TooLarge,
    #[error("conflicting or invalid Content-Length")]
    Length,
    #[error("malformed chunked body")]
    Chunk,
}

/// How the request body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReqFraming {
    /// No body.
    None,
    /// The client's Content-Length is forwarded; the body goes as is.
    Length,
    /// Unknown length (an HTTP/2 client, or a chunked one): re-chunked.
    Chunked,
}

/// Starts a request head: `METHOD target HTTP/1.1`.
pub fn request_line(method: &Method, target: &str, out: &mut BytesMut) {
    out.reserve(512);
    out.put_slice(method.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(target.as_bytes());
    out.put_slice(b" HTTP/1.1\r\n");
}

/// One `name: value` line.
pub fn header_line(name: &[u8], value: &[u8], out: &mut BytesMut) {
    out.reserve(name.len() + value.len() + 4);
    out.put_slice(name);
    out.put_slice(b": ");
    out.put_slice(value);
    out.put_slice(b"\r\n");
}

/// Ends a request head, with the framing header a chunked body needs.
pub fn end_head(framing: ReqFraming, out: &mut BytesMut) {
    if framing == ReqFraming::Chunked {
        out.put_slice(b"transfer-encoding: chunked\r\n");
    }
    out.put_slice(b"\r\n");
}

/// The size line that goes before one chunk of a chunked body.
pub fn chunk_header(len: usize, out: &mut BytesMut) {
    out.reserve(20);
    let mut digits = [0u8; 16];
    let mut n = len;
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b"0123456789abcdef"[n & 15];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&digits[i..]);
    out.put_slice(b"\r\n");
}

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (HEAD, 204, 304).
    Empty,
    Length(u64),
    Chunked,
    /// Until the backend closes the connection.
    Close,
}

/// A parsed response head.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: StatusCode,
    pub version: Version,
    /// The reason phrase, when it is not the standard one for the status.
    pub reason: Option<Bytes>,
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
    let (headers, hop) = response_map(&head, &spans[..count], upgrade)?;
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

/// What a response's hop-by-hop headers (RFC 9110 §7.6.1) said. They describe the link to
/// the backend, not the one to the client, so they are read here and left out of the map.
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

/// Headers that are hop-by-hop whatever `Connection` says.
fn is_hop_by_hop(name: &[u8]) -> bool {
    const NAMES: [&[u8]; 8] = [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
    ];
    // eq_ignore_ascii_case compares lengths first: most names fail at once.
    NAMES.iter().any(|n| n.eq_ignore_ascii_case(name))
}

/// The non-empty items of a comma-separated header value (Connection, Transfer-Encoding).
pub fn tokens(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// The response's header map without its hop-by-hop headers (values share `head`), and
/// what those said. `Upgrade` stays only on a 101 (`upgrade`).
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
                if let Some(last) = tokens(value).last() {
                    hop.chunked = last.eq_ignore_ascii_case(b"chunked");
                }
            }
            continue;
        }
        if (!upgrade && name.eq_ignore_ascii_case(b"upgrade"))
            || (hop.names_others && named_by_connection(head, spans, name))
        {
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

/// RFC 9112 §6.3: how the body of this response is delimited.
fn framing(status: StatusCode, head_request: bool, hop: &HopFacts) -> Result<Framing, WireError> {
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
    if hop.bad_length {
        return Err(WireError::Length);
    }
    Ok(match hop.content_length {
        Some(0) => Framing::Empty,
        Some(n) => Framing::Length(n),
        None => Framing::Close,
    })
}

fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 {
        return None;
    }
    s.iter().try_fold(0u64, |n, &b| {
        b.is_ascii_digit().then(|| n * 10 + u64::from(b - b'0'))
    })
}

/// Whether a comma-separated header (e.g. `Connection`) lists `token`.
pub fn has_token(h: &HeaderMap, name: HeaderName, token: &[u8]) -> bool {
    h.get_all(name)
        .iter()
        .any(|v| tokens(v.as_bytes()).any(|t| t.eq_ignore_ascii_case(token)))
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
pub type Span = (u32, u32, u32, u32);
pub const NO_SPAN: Span = (0, 0, 0, 0);

/// Records where `headers` (which point into `buf`) are; returns how many.
pub fn record_spans(buf: &[u8], headers: &[httparse::Header<'_>], out: &mut [Span]) -> usize {
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
pub struct Seen {
    pub connection: bool,
    pub content_length: bool,
    pub transfer_encoding: bool,
    pub upgrade: bool,
    pub expect: bool,
}

/// The header map, its values sharing `head` (the split-off head) without copies.
pub fn header_map(head: &Bytes, spans: &[Span]) -> Option<(HeaderMap, Seen)> {
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
pub fn offset(buf: &[u8], part: &[u8]) -> u32 {
    (part.as_ptr() as usize).saturating_sub(buf.as_ptr() as usize) as u32
}

/// What the chunked decoder found in the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    Data(Bytes),
    /// The buffer holds no complete piece; read more.
    NeedMore,
    /// The last chunk and the trailers are consumed.
    Done,
}

/// Decodes a chunked body incrementally (RFC 9112 §7.1); trailers are dropped.
#[derive(Debug, Default)]
pub struct ChunkedDecoder {
    state: ChunkState,
}

#[derive(Debug, Default, Clone, Copy)]
enum ChunkState {
    #[default]
    Size,
    Data(u64),
    DataEnd,
    Trailers,
    Done,
}

impl ChunkedDecoder {
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, WireError> {
        loop {
            match self.state {
                ChunkState::Size => {
                    let Some(line) = take_line(buf)? else {
                        return Ok(Decoded::NeedMore);
                    };
                    let size = line.split(|&b| b == b';').next().unwrap_or(&[]);
                    let size = parse_hex(size.trim_ascii()).ok_or(WireError::Chunk)?;
                    self.state = if size == 0 {
                        ChunkState::Trailers
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let n = left.min(buf.len() as u64);
                    let data = buf.split_to(n as usize).freeze();
                    self.state = if n == left {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left - n)
                    };
                    return Ok(Decoded::Data(data));
                }
                ChunkState::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Decoded::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(WireError::Chunk);
                    }
                    let _ = buf.split_to(2);
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailers => {
                    let Some(line) = take_line(buf)? else {
                        return Ok(Decoded::NeedMore);
                    };
                    if line.is_empty() {
                        self.state = ChunkState::Done;
                    }
                }
                ChunkState::Done => return Ok(Decoded::Done),
            }
        }
    }
}

/// Removes one CRLF- (or LF-) terminated line from the front of `buf`, without the ending.
fn take_line(buf: &mut BytesMut) -> Result<Option<Bytes>, WireError> {
    match memchr::memchr(b'\n', buf) {
        Some(i) if i <= MAX_LINE => {
            let mut line = buf.split_to(i + 1).freeze();
            line.truncate(i);
            if line.last() == Some(&b'\r') {
                line.truncate(i - 1);
            }
            Ok(Some(line))
        }
        Some(_) => Err(WireError::Chunk),
        None if buf.len() > MAX_LINE => Err(WireError::Chunk),
        None => Ok(None),
    }
}

fn parse_hex(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 15 {
        return None;
    }
    s.iter().try_fold(0u64, |n, &b| {
        let d = (b as char).to_digit(16)?;
        Some(n << 4 | u64::from(d))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8], head: bool) -> Result<Option<ResponseHead>, WireError> {
        parse_response(&mut BytesMut::from(raw), head, 65536)
    }

    #[test]
    fn request_head_is_line_headers_and_chunked_framing() {
        let mut out = BytesMut::new();
        request_line(&Method::POST, "/cart?x=1", &mut out);
        header_line(b"host", b"shop", &mut out);
        end_head(ReqFraming::Chunked, &mut out);
        assert_eq!(
            &out[..],
            b"POST /cart?x=1 HTTP/1.1\r\nhost: shop\r\ntransfer-encoding: chunked\r\n\r\n"
        );
    }

    #[test]
    fn chunk_header_is_lowercase_hex() {
        for (n, want) in [(1usize, "1\r\n"), (255, "ff\r\n"), (65536, "10000\r\n")] {
            let mut out = BytesMut::new();
            chunk_header(n, &mut out);
            assert_eq!(&out[..], want.as_bytes());
        }
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
        assert_eq!(
            r.headers[header::CONTENT_LENGTH],
            "0",
            "end-to-end headers stay"
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

    fn decode_all(mut input: BytesMut) -> Result<Vec<u8>, WireError> {
        let mut d = ChunkedDecoder::default();
        let mut out = Vec::new();
        loop {
            match d.decode(&mut input)? {
                Decoded::Data(b) => out.extend_from_slice(&b),
                Decoded::Done => return Ok(out),
                Decoded::NeedMore => return Err(WireError::Chunk),
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_with_extensions_and_trailers() {
        let body = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\nNEXT";
        let mut buf = BytesMut::from(&body[..]);
        assert_eq!(
            decode_all(buf.split_to(body.len() - 4)).unwrap(),
            b"hello world"
        );
        assert_eq!(&buf[..], b"NEXT");
    }

    #[test]
    fn chunked_decoding_resumes_byte_by_byte() {
        let body = b"3\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\n\r\n";
        let mut d = ChunkedDecoder::default();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut done = false;
        for &b in body.iter() {
            buf.put_u8(b);
            loop {
                match d.decode(&mut buf).unwrap() {
                    Decoded::Data(x) => out.extend_from_slice(&x),
                    Decoded::NeedMore => break,
                    Decoded::Done => {
                        done = true;
                        break;
                    }
                }
            }
        }
        assert!(done);
        assert_eq!(out, b"abc0123456789abcdef");
    }

    #[test]
    fn bad_chunks_are_errors_not_panics() {
        for bad in [&b"zz\r\n"[..], b"3\r\nabcXY", b"fffffffffffffffff\r\n"] {
            assert_eq!(
                decode_all(BytesMut::from(bad)).unwrap_err(),
                WireError::Chunk,
                "{bad:?}"
            );
        }
        let long = [&[b'1'; 5000][..], b"\r\n"].concat();
        assert_eq!(
            decode_all(BytesMut::from(&long[..])).unwrap_err(),
            WireError::Chunk
        );
    }
}
