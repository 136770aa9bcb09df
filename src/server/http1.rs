//! Client connections speaking HTTP/1.1: read request heads, stream request bodies, write
//! responses, keep connections alive — without holding a buffer while a connection idles.

use std::future::poll_fn;
use std::io;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{self, HeaderMap};
use http::{Method, Request, StatusCode, Uri, Version};
use http_body::Body as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::app::App;
use crate::h1::{self, ChunkedDecoder, Decoded, MAX_HEADERS, NO_SPAN};
use crate::proxy::body::ProxyBody;
use crate::proxy::upstream::ReqBody;
use crate::proxy::{self, ConnInfo, UpgradeSlot};

/// Read size for heads; bodies read in larger pieces.
const HEAD_READ: usize = 4096;
const BODY_READ: usize = 16384;
/// Response bytes gathered before a write while the body keeps producing at once.
const WRITE_BATCH: usize = 65536;
/// The HTTP/2 connection preface (prior knowledge, h2c).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A client transport the loop can serve.
pub trait ClientIo: AsyncRead + AsyncWrite + Unpin + Send {
    /// The TCP socket, when data can be waited for on it directly (plain HTTP): the read
    /// buffer is then released while the connection idles. TLS keeps its buffer (rustls
    /// may hold decrypted bytes the socket no longer shows).
    fn tcp(&self) -> Option<&TcpStream> {
        None
    }
}

impl ClientIo for TcpStream {
    fn tcp(&self) -> Option<&TcpStream> {
        Some(self)
    }
}

impl ClientIo for tokio_rustls::server::TlsStream<TcpStream> {}

/// Limits from `[proxy]`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// How long a request head may take to arrive, from a new connection or from the first
    /// byte of a keep-alive connection's next request.
    pub header_timeout: Duration,
    /// How long a keep-alive connection may wait for its next request to start.
    pub idle_timeout: Duration,
    pub max_head: usize,
}

/// How a connection ended.
pub enum Ended {
    Closed,
    /// The client opened with the HTTP/2 preface: serve it as h2c; `buf` holds what was read.
    H2 {
        buf: BytesMut,
    },
}

/// Serves HTTP/1.1 requests on `io` until the client closes, an error, or shutdown.
pub async fn serve<S: ClientIo>(
    app: Arc<App>,
    info: ConnInfo,
    io: &mut S,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
) -> Ended {
    let mut buf = BytesMut::new();
    let mut first = true;
    loop {
        let parsed = match read_head(io, &mut buf, limits, &mut shutdown, first).await {
            Ok(Head::Request(p)) => p,
            Ok(Head::H2) => return Ended::H2 { buf },
            Ok(Head::None) => return Ended::Closed,
            Err(status) => {
                let _ = send(io, &error_response(status)).await;
                let _ = io.shutdown().await;
                return Ended::Closed;
            }
        };
        first = false;
        match exchange(&app, info, io, &mut buf, parsed).await {
            Next::KeepAlive if !*shutdown.borrow() => {}
            Next::Upgraded => return Ended::Closed,
            _ => {
                let _ = io.shutdown().await;
                return Ended::Closed;
            }
        }
    }
}

// Returned once per request and taken apart at once: boxing `Parsed` would only add an
// allocation.
#[allow(clippy::large_enum_variant)]
enum Head {
    Request(Parsed),
    H2,
    /// Closed, timed out or shut down between requests.
    None,
}

struct Parsed {
    req: Request<()>,
    body: Framing,
    keep_alive: bool,
    expect_continue: bool,
    /// The request carries `Upgrade` (WebSocket and the like).
    upgrade: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
}

/// Reads until a whole request head is in `buf`; a status is the error to answer with.
async fn read_head<S: ClientIo>(
    io: &mut S,
    buf: &mut BytesMut,
    limits: Limits,
    shutdown: &mut watch::Receiver<bool>,
    first: bool,
) -> Result<Head, StatusCode> {
    // A keep-alive connection waits up to idle_timeout for the next request to start, and
    // then has header_timeout to finish its head.
    let mut waiting = !first && buf.is_empty();
    let mut deadline = Instant::now()
        + if waiting {
            limits.idle_timeout
        } else {
            limits.header_timeout
        };
    loop {
        if waiting && !buf.is_empty() {
            waiting = false;
            deadline = Instant::now() + limits.header_timeout;
        }
        if first && H2_PREFACE.starts_with(&buf[..buf.len().min(H2_PREFACE.len())]) {
            if buf.len() >= H2_PREFACE.len() {
                return Ok(Head::H2);
            }
        } else if !buf.is_empty() {
            if let Some(p) = parse_request(buf, limits.max_head)? {
                return Ok(Head::Request(p));
            }
        }
        if buf.is_empty() {
            if let Some(tcp) = io.tcp() {
                // Idle: wait for data without holding a buffer.
                let ready = poll_fn(|cx| Poll::Ready(tcp.poll_read_ready(cx).is_ready())).await;
                if !ready {
                    *buf = BytesMut::new();
                    tokio::select! {
                        r = tcp.readable() => if r.is_err() { return Ok(Head::None) },
                        _ = tokio::time::sleep_until(deadline) => return Ok(Head::None),
                        _ = shutdown.changed() => return Ok(Head::None),
                    }
                }
            }
        }
        if buf.capacity() - buf.len() < HEAD_READ / 2 {
            buf.reserve(HEAD_READ);
        }
        let idle = buf.is_empty();
        let n = tokio::select! {
            r = io.read_buf(buf) => r,
            _ = tokio::time::sleep_until(deadline) => return Ok(Head::None),
            _ = shutdown.changed(), if idle => return Ok(Head::None),
        };
        match n {
            Ok(0) | Err(_) => return Ok(Head::None),
            Ok(_) => {}
        }
    }
}

/// Parses a request head from the front of `buf`, removing it.
fn parse_request(buf: &mut BytesMut, max_head: usize) -> Result<Option<Parsed>, StatusCode> {
    let mut spans = [NO_SPAN; MAX_HEADERS];
    let (len, count, method, path, minor) = {
        let mut storage = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut []);
        let len = match req.parse_with_uninit_headers(buf, &mut storage) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buf.len() > max_head => {
                return Err(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
            }
            Err(_) => return Err(StatusCode::BAD_REQUEST),
        };
        if len > max_head {
            return Err(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        }
        let method = Method::from_bytes(req.method.unwrap_or("").as_bytes())
            .map_err(|_| StatusCode::BAD_REQUEST)?;
        let path = req.path.map(|p| {
            let start = h1::offset(buf, p.as_bytes()) as usize;
            (start, start + p.len())
        });
        let count = h1::record_spans(buf, req.headers, &mut spans);
        (len, count, method, path, req.version.unwrap_or(1))
    };
    let head = buf.split_to(len).freeze();
    let (ps, pe) = path.ok_or(StatusCode::BAD_REQUEST)?;
    // `get` then `slice_ref`: bounds are checked, never a panic on odd input.
    let target = head.get(ps..pe).ok_or(StatusCode::BAD_REQUEST)?;
    let uri =
        Uri::from_maybe_shared(head.slice_ref(target)).map_err(|_| StatusCode::BAD_REQUEST)?;
    let (headers, seen) = h1::header_map(&head, &spans[..count]).ok_or(StatusCode::BAD_REQUEST)?;
    let version = if minor == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let body = request_framing(version, &headers, seen)?;
    let keep_alive = match version {
        Version::HTTP_11 => {
            !(seen.connection && h1::has_token(&headers, header::CONNECTION, b"close"))
        }
        _ => seen.connection && h1::has_token(&headers, header::CONNECTION, b"keep-alive"),
    };
    let expect_continue = seen.expect
        && headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let mut req = Request::new(());
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = version;
    *req.headers_mut() = headers;
    Ok(Some(Parsed {
        req,
        body,
        keep_alive,
        expect_continue,
        upgrade: seen.upgrade,
    }))
}

/// [`parse_request`] for the fuzzer: whether a head parsed, without exposing its shape.
pub fn parse_request_head(buf: &mut BytesMut, max_head: usize) -> Result<Option<()>, StatusCode> {
    parse_request(buf, max_head).map(|p| p.map(|_| ()))
}

/// RFC 9112 §6.3 for requests, strictly: Transfer-Encoding with Content-Length, an unknown
/// coding, or differing lengths are refused (request smuggling).
fn request_framing(version: Version, h: &HeaderMap, seen: h1::Seen) -> Result<Framing, StatusCode> {
    if seen.transfer_encoding {
        if version == Version::HTTP_10 || seen.content_length {
            return Err(StatusCode::BAD_REQUEST);
        }
        let mut codings = h
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|t| !t.is_empty());
        return match (codings.next(), codings.next()) {
            (Some(t), None) if t.eq_ignore_ascii_case(b"chunked") => Ok(Framing::Chunked),
            _ => Err(StatusCode::BAD_REQUEST),
        };
    }
    if !seen.content_length {
        return Ok(Framing::None);
    }
    let length = h1::content_length(h).map_err(|_| StatusCode::BAD_REQUEST)?;
    Ok(match length {
        None | Some(0) => Framing::None,
        Some(n) => Framing::Length(n),
    })
}

/// What the connection does after an exchange.
enum Next {
    KeepAlive,
    Close,
    Upgraded,
}

/// One request and its response.
async fn exchange<S: ClientIo>(
    app: &Arc<App>,
    info: ConnInfo,
    io: &mut S,
    buf: &mut BytesMut,
    parsed: Parsed,
) -> Next {
    let Parsed {
        req,
        body: framing,
        mut keep_alive,
        expect_continue,
        upgrade: wants_upgrade,
    } = parsed;
    let head_request = req.method() == Method::HEAD;
    let version = req.version();
    let (mut parts, ()) = req.into_parts();
    let upgrade_rx = wants_upgrade.then(|| {
        let (tx, rx) = oneshot::channel();
        parts
            .extensions
            .insert(UpgradeSlot(Arc::new(parking_lot::Mutex::new(Some(tx)))));
        rx
    });
    let res = if framing == Framing::None {
        let req = Request::from_parts(parts, ReqBody::Empty);
        proxy::handle_boxed(app.clone(), info, req).await
    } else {
        if expect_continue
            && io
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .is_err()
        {
            return Next::Close;
        }
        let (tx, rx) = mpsc::channel(2);
        let req = Request::from_parts(parts, ReqBody::Channel(rx));
        let mut handling = proxy::handle_boxed(app.clone(), info, req);
        let mut pumping = pin!(pump_body(io, buf, framing, tx));
        let mut pumped = None;
        let res = loop {
            tokio::select! {
                biased;
                r = &mut handling => break r,
                p = &mut pumping, if pumped.is_none() => pumped = Some(p),
            }
        };
        // An answer before the whole body was read (or a broken body): the rest of the
        // body is still on the wire, so the connection cannot carry another request.
        if pumped != Some(true) {
            keep_alive = false;
        }
        res
    };
    let Ok(res) = res;
    let (parts, body) = res.into_parts();
    if parts.status == StatusCode::SWITCHING_PROTOCOLS {
        let Some(rx) = upgrade_rx else {
            return Next::Close;
        };
        let mut out = BytesMut::new();
        write_status_and_headers(&parts, &mut out);
        out.put_slice(b"\r\n");
        if send(io, &out).await.is_err() {
            return Next::Close;
        }
        if let Ok(tunnel) = rx.await {
            let early = buf.split().freeze();
            // Boxed: inline, the tunnel's state would add ~0.9 KB to every exchange's
            // future, copied on each request.
            Box::pin(proxy::run_tunnel(&mut *io, early, tunnel)).await;
        }
        return Next::Upgraded;
    }
    let no_body = head_request
        || parts.status.is_informational()
        || parts.status == StatusCode::NO_CONTENT
        || parts.status == StatusCode::NOT_MODIFIED;
    let mut out = BytesMut::with_capacity(512);
    let has_length = write_status_and_headers(&parts, &mut out);
    let mut chunked = false;
    if !no_body && !has_length {
        if let Some(n) = body.size_hint().exact() {
            out.put_slice(b"content-length: ");
            out.put_slice(h1::decimal(n, &mut [0u8; 20]));
            out.put_slice(b"\r\n");
        } else if version == Version::HTTP_11 {
            out.put_slice(b"transfer-encoding: chunked\r\n");
            chunked = true;
        } else {
            keep_alive = false; // the body ends when the connection does
        }
    }
    if !keep_alive {
        out.put_slice(b"connection: close\r\n");
    } else if version == Version::HTTP_10 {
        out.put_slice(b"connection: keep-alive\r\n");
    }
    out.put_slice(b"\r\n");
    if no_body {
        drop(body);
        return finish(io, &out, keep_alive).await;
    }
    match write_body(io, out, body, chunked).await {
        true if keep_alive => Next::KeepAlive,
        _ => Next::Close,
    }
}

async fn finish<S: ClientIo>(io: &mut S, out: &[u8], keep_alive: bool) -> Next {
    match send(io, out).await {
        Ok(()) if keep_alive => Next::KeepAlive,
        _ => Next::Close,
    }
}

/// Streams the response body after its head, gathering what is ready into one write.
/// False: the body or the client failed, and the connection must close.
async fn write_body<S: ClientIo>(
    io: &mut S,
    mut out: BytesMut,
    mut body: ProxyBody,
    chunked: bool,
) -> bool {
    loop {
        // Take what the body has ready without waiting; write when it has to be waited for.
        let frame = match poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await {
            Poll::Ready(f) => f,
            Poll::Pending => {
                // Flushed, not just written: TLS may otherwise hold the bytes (SSE).
                if !out.is_empty() {
                    if send(io, &out).await.is_err() {
                        return false;
                    }
                    out.clear();
                }
                poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
            }
        };
        match frame {
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                if data.is_empty() {
                    continue;
                }
                if chunked {
                    h1::chunk_header(data.len(), &mut out);
                }
                if data.len() > WRITE_BATCH {
                    if io.write_all(&out).await.is_err() || io.write_all(&data).await.is_err() {
                        return false;
                    }
                    out.clear();
                } else {
                    out.put_slice(&data);
                }
                if chunked {
                    out.put_slice(b"\r\n");
                }
                if out.len() >= WRITE_BATCH {
                    if io.write_all(&out).await.is_err() {
                        return false;
                    }
                    out.clear();
                }
            }
            Some(Err(e)) => {
                tracing::debug!(error = %e, "response body failed; closing the client connection");
                // What arrived goes out, so the client sees how far the body got.
                let _ = send(io, &out).await;
                return false;
            }
            None => {
                if chunked {
                    out.put_slice(b"0\r\n\r\n");
                }
                return send(io, &out).await.is_ok();
            }
        }
    }
}

/// Writes and flushes (TLS buffers inside the stream until flushed; TCP flush is free).
async fn send<S: ClientIo>(io: &mut S, bytes: &[u8]) -> io::Result<()> {
    io.write_all(bytes).await?;
    io.flush().await
}

/// Reads the request body from the client and hands it on through `tx`. True when the
/// whole body was read.
async fn pump_body<S: ClientIo>(
    io: &mut S,
    buf: &mut BytesMut,
    framing: Framing,
    tx: mpsc::Sender<io::Result<Bytes>>,
) -> bool {
    let mut decoder = ChunkedDecoder::default();
    let mut left = match framing {
        Framing::Length(n) => n,
        _ => 0,
    };
    loop {
        let piece = match framing {
            Framing::None => return true,
            Framing::Length(_) if left == 0 => return true,
            Framing::Length(_) if !buf.is_empty() => {
                let n = left.min(buf.len() as u64);
                left -= n;
                Some(buf.split_to(n as usize).freeze())
            }
            Framing::Chunked if !buf.is_empty() => match decoder.decode(buf) {
                Ok(Decoded::Data(d)) => Some(d),
                Ok(Decoded::Done) => return true,
                Ok(Decoded::NeedMore) => None,
                Err(e) => {
                    let _ = tx
                        .send(Err(io::Error::new(io::ErrorKind::InvalidData, e)))
                        .await;
                    return false;
                }
            },
            _ => None,
        };
        if let Some(piece) = piece {
            if tx.send(Ok(piece)).await.is_err() {
                return false; // nobody wants the rest
            }
            continue;
        }
        if buf.capacity() - buf.len() < BODY_READ / 2 {
            buf.reserve(BODY_READ);
        }
        match io.read_buf(buf).await {
            Ok(0) => {
                let eof = io::Error::new(io::ErrorKind::UnexpectedEof, "client closed mid-body");
                let _ = tx.send(Err(eof)).await;
                return false;
            }
            Ok(_) => {}
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return false;
            }
        }
    }
}

/// `HTTP/1.1 <status> <reason>` and the response's headers, plus `Date` if missing. True if
/// the headers include `Content-Length`.
fn write_status_and_headers(parts: &http::response::Parts, out: &mut BytesMut) -> bool {
    out.put_slice(b"HTTP/1.1 ");
    out.put_slice(parts.status.as_str().as_bytes());
    out.put_u8(b' ');
    match parts.extensions.get::<hyper::ext::ReasonPhrase>() {
        Some(r) => out.put_slice(r.as_bytes()),
        None => out.put_slice(
            parts
                .status
                .canonical_reason()
                .unwrap_or("Unknown")
                .as_bytes(),
        ),
    }
    out.put_slice(b"\r\n");
    let (mut has_date, mut has_length) = (false, false);
    for (name, value) in &parts.headers {
        has_date |= name == header::DATE;
        has_length |= name == header::CONTENT_LENGTH;
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    if !has_date {
        out.put_slice(b"date: ");
        date::with(|d| out.put_slice(d));
        out.put_slice(b"\r\n");
    }
    has_length
}

/// A response tether writes itself, closing the connection (bad or oversized heads).
fn error_response(status: StatusCode) -> Vec<u8> {
    format!(
        "HTTP/1.1 {} {}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{} {}\n",
        status.as_str(),
        status.canonical_reason().unwrap_or(""),
        status.as_str().len() + status.canonical_reason().unwrap_or("").len() + 2,
        status.as_str(),
        status.canonical_reason().unwrap_or(""),
    )
    .into_bytes()
}

/// The `Date` header value, formatted once per second per thread.
mod date {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};

    thread_local! {
        static CACHE: RefCell<(u64, [u8; 29])> = const { RefCell::new((u64::MAX, [0u8; 29])) };
    }

    pub fn with(f: impl FnOnce(&[u8])) {
        let now = SystemTime::now();
        let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        CACHE.with(|c| {
            let mut c = c.borrow_mut();
            if c.0 != secs {
                let text = httpdate::fmt_http_date(now);
                if text.len() == 29 {
                    c.1.copy_from_slice(text.as_bytes());
                }
                c.0 = secs;
            }
            f(&c.1);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8]) -> Result<Option<Parsed>, StatusCode> {
        parse_request(&mut BytesMut::from(raw), 65536)
    }

    #[test]
    fn request_heads_parse_with_framing_and_keep_alive() {
        let p = parse(b"POST /a?b=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
            .unwrap()
            .unwrap();
        assert_eq!(p.req.method(), Method::POST);
        assert_eq!(p.req.uri().path_and_query().unwrap().as_str(), "/a?b=1");
        assert_eq!(p.req.headers()["host"], "x");
        assert!(p.body == Framing::Length(5) && p.keep_alive && !p.expect_continue);
        let p = parse(b"GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!p.keep_alive && p.body == Framing::None);
        let p = parse(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(p.keep_alive);
        let p =
            parse(b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n")
                .unwrap()
                .unwrap();
        assert!(p.body == Framing::Chunked && p.expect_continue);
        assert!(parse(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap().is_none());
    }

    #[test]
    fn smuggling_shapes_and_garbage_are_400() {
        for bad in [
            &b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: xchunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            b"GE\x01T / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/9.9\r\n\r\n",
        ] {
            assert_eq!(parse(bad).err(), Some(StatusCode::BAD_REQUEST), "{bad:?}");
        }
        let big = [b"GET / HTTP/1.1\r\nX: ".as_slice(), &[b'a'; 70000]].concat();
        assert_eq!(
            parse(&big).err(),
            Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
        );
    }

    proptest::proptest! {
        /// Network input: any bytes give a parse, "need more", or a status — never a panic.
        #[test]
        fn request_parsing_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            let _ = parse(&bytes);
        }

        /// Mutations of a valid head with a chunked body: still no panic, in the head
        /// parser or the body decoder.
        #[test]
        fn mutated_requests_never_panic(at in 0usize..120, byte in proptest::prelude::any::<u8>(), cut in 0usize..120) {
            let mut raw = b"POST /a?b=1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nCookie: a=1\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_vec();
            let at = at % raw.len();
            raw[at] = byte;
            raw.truncate(raw.len() - cut % raw.len());
            let mut buf = BytesMut::from(&raw[..]);
            if let Ok(Some(_)) = parse_request(&mut buf, 65536) {
                let mut d = ChunkedDecoder::default();
                while let Ok(Decoded::Data(_)) = d.decode(&mut buf) {}
            }
            let mut res = BytesMut::from(&raw[..]);
            let _ = h1::parse_response(&mut res, false, 65536);
        }
    }

    #[test]
    fn error_responses_have_a_matching_length() {
        let r = String::from_utf8(error_response(StatusCode::BAD_REQUEST)).unwrap();
        let (head, body) = r.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"));
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{r}"
        );
    }
}
