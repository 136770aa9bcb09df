//! Client connections speaking HTTP/1.1: read request heads, stream request bodies, relay
//! interim and final responses, keep connections alive — without holding a buffer while a
//! connection idles. The wire format itself is `h1`; this is the connection loop, which
//! takes any transport and any [`Handler`], so tests can script it byte for byte.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use http::header;
use http::{Method, Request, StatusCode, Version};
use http_body::Body as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::h1::{self, BodyDecoder, BodyEncoder, Decoded, Framing, RequestHead, WireError};
use crate::proxy::body::ProxyBody;
use crate::proxy::upstream::{BodyPiece, Interim, InterimHead, ReqBody};
use crate::proxy::{self, ClientHooks, ConnInfo, Handling};

/// Read size for heads; bodies read in larger pieces.
const HEAD_READ: usize = 4096;
const BODY_READ: usize = 16384;
/// Response bytes gathered before a write while the body keeps producing at once.
const WRITE_BATCH: usize = 65536;
/// The HTTP/2 connection preface (prior knowledge, h2c).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What serves the requests the loop reads: the proxy, or a test's closure.
pub trait Handler: Send + Sync {
    fn call(&self, info: ConnInfo, req: Request<ReqBody>, hooks: ClientHooks) -> Handling;
}

/// A closure as a [`Handler`].
pub struct HandlerFn<F>(pub F);

impl<F> Handler for HandlerFn<F>
where
    F: Fn(ConnInfo, Request<ReqBody>, ClientHooks) -> Handling + Send + Sync,
{
    fn call(&self, info: ConnInfo, req: Request<ReqBody>, hooks: ClientHooks) -> Handling {
        (self.0)(info, req, hooks)
    }
}

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

/// In-memory pipes: tests script the client's bytes.
impl ClientIo for tokio::io::DuplexStream {}

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
pub async fn serve<S: ClientIo, H: Handler>(
    handler: &H,
    info: ConnInfo,
    io: &mut S,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
) -> Ended {
    let mut buf = BytesMut::new();
    let mut first = true;
    let mut interim = None;
    loop {
        let parsed = match read_head(io, &mut buf, limits, &mut shutdown, first).await {
            Ok(Head::Request(p)) => p,
            Ok(Head::H2) => return Ended::H2 { buf },
            Ok(Head::None) => return Ended::Closed,
            Err(e) => {
                tracing::debug!(client = %info.peer, error = %e, "refused a request head");
                // A peer that does not speak HTTP/1.x cannot read an HTTP/1.1 answer.
                if e != WireError::Version {
                    let _ = send(io, &error_response(e.status())).await;
                }
                let _ = io.shutdown().await;
                return Ended::Closed;
            }
        };
        first = false;
        match exchange(handler, info, io, &mut buf, &mut interim, parsed).await {
            Next::KeepAlive if !*shutdown.borrow() => {}
            Next::Upgraded => return Ended::Closed,
            _ => {
                let _ = io.shutdown().await;
                Box::pin(linger(io)).await; // boxed: keeps the per-connection future small
                return Ended::Closed;
            }
        }
    }
}

/// After closing our side, reads and discards what the client still sends (an upload
/// answered early) for a moment: closing a socket with unread data resets the connection,
/// which can destroy the response before the client reads it (RFC 9112 §9.6).
async fn linger<S: ClientIo>(io: &mut S) {
    let mut sink = vec![0u8; 8192];
    let mut left: usize = 1 << 20;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while left > 0 {
            match io.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}

// Returned once per request and taken apart at once: boxing `Parsed` would only add an
// allocation.
#[allow(clippy::large_enum_variant)]
enum Head {
    Request(RequestHead),
    H2,
    /// Closed, timed out or shut down between requests.
    None,
}

/// Reads until a whole request head is in `buf`; a status is the error to answer with.
async fn read_head<S: ClientIo>(
    io: &mut S,
    buf: &mut BytesMut,
    limits: Limits,
    shutdown: &mut watch::Receiver<bool>,
    first: bool,
) -> Result<Head, WireError> {
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
            if let Some(p) = h1::parse_request(buf, limits.max_head)? {
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
                        // A new connection still gets its first request served: the
                        // client has just been accepted (on shutdown or an upgrade).
                        _ = shutdown.changed(), if !first => return Ok(Head::None),
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
            _ = shutdown.changed(), if idle && !first => return Ok(Head::None),
        };
        match n {
            Ok(0) | Err(_) => return Ok(Head::None),
            Ok(_) => {}
        }
    }
}

/// Where a connection's interim responses arrive.
type InterimChannel = mpsc::Receiver<Box<InterimHead>>;

/// What the connection does after an exchange.
enum Next {
    KeepAlive,
    Close,
    Upgraded,
}

/// One request and its response. The request body is pumped to the handler while the
/// loop also relays interim responses and watches for the final one: a final response
/// that comes before the body is read is relayed at once, and the connection then closes.
async fn exchange<S: ClientIo, H: Handler>(
    handler: &H,
    info: ConnInfo,
    io: &mut S,
    buf: &mut BytesMut,
    interim: &mut Option<(mpsc::Sender<Box<InterimHead>>, InterimChannel)>,
    parsed: RequestHead,
) -> Next {
    let RequestHead {
        req,
        framing,
        mut keep_alive,
        expect_continue,
        upgrade: wants_upgrade,
    } = parsed;
    let head_request = req.method() == Method::HEAD;
    let version = req.version();
    let (parts, ()) = req.into_parts();
    let mut hooks = ClientHooks::default();
    let upgrade_rx = wants_upgrade.then(|| {
        let (tx, rx) = oneshot::channel();
        hooks.upgrade = Some(tx);
        rx
    });
    // Interim responses go to HTTP/1.1 clients only.
    let mut interim_rx = None;
    if version == Version::HTTP_11 {
        // One channel per connection, made at its first HTTP/1.1 request: each request
        // gets a sender handle (no allocation per request).
        let (tx, rx) = interim.get_or_insert_with(|| mpsc::channel(4));
        while rx.try_recv().is_ok() {} // nothing from an earlier exchange goes out now
        hooks.interim = Some(Interim(tx.clone()));
        interim_rx = Some(rx);
    }
    // A chunked body that is already here and malformed is refused before anything goes
    // to a backend (a later malformation aborts the upload instead).
    if framing == Framing::Chunked && !buf.is_empty() {
        let mut probe = h1::ChunkedDecoder::default();
        let mut copy = buf.clone();
        loop {
            match probe.decode(&mut copy) {
                Ok(Decoded::Data(_)) => {}
                Ok(_) => break,
                Err(e) => {
                    tracing::debug!(client = %info.peer, error = %e, "malformed request body");
                    let _ = send(io, &error_response(e.status())).await;
                    return Next::Close;
                }
            }
        }
    }
    let mut decoder = BodyDecoder::new(framing);
    let mut sent_continue = false;
    let (body, mut tx) = if decoder.is_done() {
        (ReqBody::Empty, None)
    } else {
        if expect_continue {
            if send(io, b"HTTP/1.1 100 Continue\r\n\r\n").await.is_err() {
                return Next::Close;
            }
            sent_continue = true;
        }
        let (tx, rx) = mpsc::channel(2);
        (ReqBody::Channel(rx), Some(tx))
    };
    let mut handling = handler.call(info, Request::from_parts(parts, body), hooks);
    let mut piece: Option<BodyPiece> = None;
    let mut client_watch = ClientWatch::Off;
    let res = loop {
        if piece.is_none() && tx.is_some() {
            match decoder.decode(buf) {
                Ok(Decoded::Data(d)) => piece = Some(BodyPiece::Data(d)),
                Ok(Decoded::Done) => piece = Some(BodyPiece::End),
                Ok(Decoded::NeedMore) => {}
                Err(e) => {
                    // Dropping the request aborts what went to the backend: it sees an
                    // incomplete message, never a complete shorter one.
                    tracing::debug!(client = %info.peer, error = %e, "malformed request body");
                    drop(handling);
                    let _ = send(io, &error_response(e.status())).await;
                    return Next::Close;
                }
            }
        }
        let reading = tx.is_some() && piece.is_none();
        let watching = client_watch == ClientWatch::On;
        let step = tokio::select! {
            biased;
            r = poll_fn(|cx| poll_unless_queued(&mut handling, cx)) => match r {
                Some(r) => break r,
                // It waits in a backend's queue: from now on a client that leaves takes
                // its request out of the queue (read below).
                None => {
                    client_watch = ClientWatch::On;
                    Step::Continue
                }
            },
            Some(h) = next_interim(&mut interim_rx) => {
                if !(h.status == StatusCode::CONTINUE && sent_continue)
                    && send(io, &interim_head(&h)).await.is_err()
                {
                    return Next::Close;
                }
                Step::Continue
            }
            permit = reserve(&tx), if piece.is_some() => match (permit, piece.take()) {
                (Some(p), Some(x)) => {
                    let end = matches!(x, BodyPiece::End);
                    p.send(x);
                    if end { Step::StopBody } else { Step::Continue }
                }
                // Nobody wants the rest of the body.
                _ => Step::StopBody,
            },
            n = read_more(io, buf), if reading || watching => match n {
                Ok(n) if n > 0 => {
                    if !reading {
                        // Pipelined bytes, kept for the next request; stop reading ahead.
                        client_watch = ClientWatch::Done;
                    }
                    Step::Continue
                }
                // The client left while its request was queued: drop the request, so it
                // never reaches the backend.
                _ if watching => return Next::Close,
                // The client went away mid-body: the dropped sender aborts the upload.
                _ => Step::StopBody,
            },
        };
        if let Step::StopBody = step {
            tx = None;
        }
    };
    // An answer before the whole body was read (or a broken body): the rest of the
    // body is still on the wire, so the connection cannot carry another request.
    if !decoder.is_done() {
        keep_alive = false;
    }
    // Interim responses that came just before the final one still go first.
    if let Some(rx) = interim_rx {
        while let Ok(h) = rx.try_recv() {
            if !(h.status == StatusCode::CONTINUE && sent_continue)
                && send(io, &interim_head(&h)).await.is_err()
            {
                return Next::Close;
            }
        }
    }
    let Ok(res) = res;
    let (parts, body) = res.into_parts();
    if parts.status == StatusCode::SWITCHING_PROTOCOLS {
        let Some(rx) = upgrade_rx else {
            return Next::Close;
        };
        let mut out = BytesMut::new();
        write_status_and_headers(&parts, false, &mut out);
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
    // RFC 9112 §6.3: no body after HEAD, 1xx, 204 or 304; 204 never declares a length.
    let no_body = head_request
        || parts.status.is_informational()
        || parts.status == StatusCode::NO_CONTENT
        || parts.status == StatusCode::NOT_MODIFIED;
    let mut out = BytesMut::with_capacity(512);
    let keeps_length = no_body && parts.status != StatusCode::NO_CONTENT;
    write_status_and_headers(&parts, keeps_length, &mut out);
    let framing = if no_body {
        Framing::Empty
    } else if let Some(n) = body.size_hint().exact() {
        Framing::Length(n)
    } else if version == Version::HTTP_11 {
        Framing::Chunked
    } else {
        keep_alive = false; // the body ends when the connection does
        Framing::Close
    };
    if !keep_alive {
        out.put_slice(b"connection: close\r\n");
    } else if version == Version::HTTP_10 {
        out.put_slice(b"connection: keep-alive\r\n");
    }
    let encoder = h1::finish_head(framing, &mut out);
    if no_body {
        drop(body);
        return match send(io, &out).await {
            Ok(()) if keep_alive => Next::KeepAlive,
            _ => Next::Close,
        };
    }
    match write_body(io, out, body, encoder).await {
        true if keep_alive => Next::KeepAlive,
        _ => Next::Close,
    }
}

/// What one turn of the exchange loop did.
enum Step {
    Continue,
    /// No more of the request body goes to the handler.
    StopBody,
}

/// The next interim response, or never when the client gets none.
async fn next_interim(rx: &mut Option<&mut InterimChannel>) -> Option<Box<InterimHead>> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Room for one more piece of the request body; `None` when the handler dropped it.
async fn reserve(tx: &Option<mpsc::Sender<BodyPiece>>) -> Option<mpsc::Permit<'_, BodyPiece>> {
    match tx {
        Some(tx) => tx.reserve().await.ok(),
        None => std::future::pending().await,
    }
}

/// Whether the loop watches for its client leaving while a request is handled.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ClientWatch {
    /// Not queued: not watched (no read registered for it, nothing paid).
    Off,
    /// The request waits (or waited) in a backend's queue: a close drops it.
    On,
    /// The client sent more meanwhile (pipelining): kept in the buffer, no more watching.
    Done,
}

/// Polls the request; `Ready(None)` when it has just started waiting in a backend's queue
/// (a thread-local mark the queue sets during this poll). Requests that never queue pay a
/// thread-local read per poll for this.
fn poll_unless_queued(
    handling: &mut Handling,
    cx: &mut std::task::Context<'_>,
) -> Poll<Option<Result<http::Response<ProxyBody>, std::convert::Infallible>>> {
    match handling.as_mut().poll(cx) {
        Poll::Ready(r) => Poll::Ready(Some(r)),
        Poll::Pending if crate::queue::take_started_waiting() => Poll::Ready(None),
        Poll::Pending => Poll::Pending,
    }
}

async fn read_more<S: ClientIo>(io: &mut S, buf: &mut BytesMut) -> io::Result<usize> {
    if buf.capacity() - buf.len() < BODY_READ / 2 {
        buf.reserve(BODY_READ);
    }
    io.read_buf(buf).await
}

/// An interim (1xx) response head.
fn interim_head(h: &InterimHead) -> BytesMut {
    let mut out = BytesMut::with_capacity(256);
    status_line(h.status, None, &mut out);
    for (name, value) in &h.headers {
        h1::header_line(name.as_str().as_bytes(), value.as_bytes(), &mut out);
    }
    out.put_slice(b"\r\n");
    out
}

/// Streams the response body after its head through the encoder its head declared,
/// gathering what is ready into one write. False: the body, its framing or the client
/// failed, and the connection must close (the client sees a truncated message).
async fn write_body<S: ClientIo>(
    io: &mut S,
    mut out: BytesMut,
    mut body: ProxyBody,
    mut encoder: BodyEncoder,
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
                if let Err(e) = encoder.prefix(data.len(), &mut out) {
                    tracing::warn!(error = %e, "response body does not match its head; closing");
                    let _ = send(io, &out).await;
                    return false;
                }
                if data.len() > WRITE_BATCH {
                    if io.write_all(&out).await.is_err() || io.write_all(&data).await.is_err() {
                        return false;
                    }
                    out.clear();
                } else {
                    out.put_slice(&data);
                }
                encoder.suffix(data.len(), &mut out);
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
                if let Err(e) = encoder.finish(&mut out) {
                    tracing::warn!(error = %e, "response body ended early; closing");
                    let _ = send(io, &out).await;
                    return false;
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

/// `HTTP/1.1 <status> <reason>`.
fn status_line(status: StatusCode, reason: Option<&hyper::ext::ReasonPhrase>, out: &mut BytesMut) {
    out.put_slice(b"HTTP/1.1 ");
    out.put_slice(status.as_str().as_bytes());
    out.put_u8(b' ');
    match reason {
        Some(r) => out.put_slice(r.as_bytes()),
        None => out.put_slice(status.canonical_reason().unwrap_or("Unknown").as_bytes()),
    }
    out.put_slice(b"\r\n");
}

/// The status line and the response's end-to-end headers, plus `Date` if missing. Framing
/// headers are not copied (the head writer adds the one it declares), except the length a
/// bodiless HEAD or 304 response may carry (`keep_length`).
pub(crate) fn write_status_and_headers(
    parts: &http::response::Parts,
    keep_length: bool,
    out: &mut BytesMut,
) {
    status_line(
        parts.status,
        parts.extensions.get::<hyper::ext::ReasonPhrase>(),
        out,
    );
    let mut has_date = false;
    for (name, value) in &parts.headers {
        has_date |= name == header::DATE;
        if (name == header::CONTENT_LENGTH && !keep_length)
            || h1::is_hop_by_hop(name.as_str().as_bytes())
                && !(name == header::CONNECTION && parts.status == StatusCode::SWITCHING_PROTOCOLS)
        {
            continue;
        }
        h1::header_line(name.as_str().as_bytes(), value.as_bytes(), out);
    }
    if !has_date {
        out.put_slice(b"date: ");
        date::with(|d| out.put_slice(d));
        out.put_slice(b"\r\n");
    }
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
    use http::Response;
    use tokio::io::AsyncWriteExt;

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

    /// Answers `METHOD TARGET BODY` for every request, after reading the whole body.
    fn echo(_: ConnInfo, req: Request<ReqBody>, _: ClientHooks) -> Handling {
        Box::pin(async move {
            let (parts, mut body) = req.into_parts();
            let mut got = Vec::new();
            while let Some(Ok(d)) = poll_fn(|cx| body.poll_data(cx)).await {
                got.extend_from_slice(&d);
            }
            let text = format!(
                "{} {} {}",
                parts.method,
                parts.uri,
                String::from_utf8_lossy(&got)
            );
            Ok(Response::new(ProxyBody::full(text)))
        })
    }

    /// Runs the loop over an in-memory pipe: the client writes `input` and half-closes;
    /// returns everything the loop wrote, without `date` lines.
    async fn script(input: &[u8]) -> String {
        let (mut client, mut server) = tokio::io::duplex(1 << 20);
        let info = ConnInfo {
            peer: ([127, 0, 0, 1], 1).into(),
            tls: false,
        };
        let limits = Limits {
            header_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(2),
            max_head: 8192,
        };
        let (_stop, rx) = watch::channel(false);
        client.write_all(input).await.unwrap();
        client.shutdown().await.unwrap();
        let handler = HandlerFn(echo);
        let mut out = Vec::new();
        let serving = async {
            serve(&handler, info, &mut server, limits, rx).await;
            drop(server);
        };
        let (_, read) = tokio::join!(serving, client.read_to_end(&mut out));
        read.unwrap();
        String::from_utf8_lossy(&out)
            .split_inclusive("\r\n")
            .filter(|l| !l.starts_with("date: "))
            .collect()
    }

    /// The loop alone, byte for byte: (source, client bytes, bytes written back).
    #[tokio::test]
    async fn connection_loop_case_table() {
        let rows: [(&str, &[u8], &str); 7] = [
            (
                "RFC 9112 §9.3.2: pipelined requests answered in order",
                b"GET /a HTTP/1.1\r\nHost: t\r\n\r\nPOST /b HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nxy",
                "HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\nGET /a HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nPOST /b xy",
            ),
            (
                "RFC 9112 §7.1: chunked body decoded, next request read after it",
                b"POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /d HTTP/1.1\r\nHost: t\r\n\r\n",
                "HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\nPOST /c abcHTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\nGET /d ",
            ),
            (
                "RFC 9110 §10.1.1: 100 Continue for HTTP/1.1",
                b"POST /e HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nExpect: 100-continue\r\n\r\nz",
                "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nPOST /e z",
            ),
            (
                "RFC 9110 §10.1.1: no 100 Continue for HTTP/1.0",
                b"POST /f HTTP/1.0\r\nContent-Length: 1\r\nExpect: 100-continue\r\n\r\nz",
                "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 9\r\n\r\nPOST /f z",
            ),
            (
                "PortSwigger CL.TE: refused before the handler sees it",
                b"POST /g HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 16\r\nconnection: close\r\n\r\n400 Bad Request\n",
            ),
            (
                "RFC 9112 §7.1: malformed chunk is a 400 before the handler",
                b"POST /h HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n",
                "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 16\r\nconnection: close\r\n\r\n400 Bad Request\n",
            ),
            (
                "RFC 9112 §9.3.6: CONNECT is 405",
                b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
                "HTTP/1.1 405 Method Not Allowed\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 23\r\nconnection: close\r\n\r\n405 Method Not Allowed\n",
            ),
        ];
        for (source, input, want) in rows {
            assert_eq!(script(input).await, want, "{source}");
        }
    }
}
