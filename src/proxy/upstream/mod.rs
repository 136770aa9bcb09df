//! Connections to backends: connect with a timeout and TCP_NODELAY, HTTP/1.1 keep-alive
//! pooling in a lock-free queue, the exchange itself (request out, response head in) on
//! the request's own task, and a response body that returns its connection when done.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{ready, Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use crossbeam_queue::ArrayQueue;
use http_body::Body;
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::h1::{self, BodyEncoder, Framing, ResponseHead, WireError};
use crate::state::BackendShared;
use crate::tls::BackendTls;

mod body;
pub use body::{InFlight, UpstreamBody};

/// Idle connections kept per backend.
const MAX_IDLE: usize = 256;
/// An idle connection older than this is not reused, and the sweep closes it (Tomcat closes
/// idle keep-alive at 20 s by default, nginx at 75 s).
pub const IDLE_REUSE: Duration = Duration::from_secs(15);
/// Read size for backend connections.
const READ_CHUNK: usize = 8192;

/// The body sent to a backend: the client's, streamed (from hyper for HTTP/2, or from
/// tether's HTTP/1.1 connection loop through a channel), or none.
pub enum ReqBody {
    Client(Incoming),
    /// The channel closing without [`BodyPiece::End`] is an aborted body: the backend then
    /// gets a message it can tell is incomplete, never a shorter complete one.
    Channel(tokio::sync::mpsc::Receiver<BodyPiece>),
    Empty,
}

/// One piece of a request body read by the HTTP/1.1 loop.
#[derive(Debug)]
pub enum BodyPiece {
    Data(Bytes),
    /// The body is complete.
    End,
}

impl ReqBody {
    pub fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Client(b) => b.is_end_stream(),
            // Only requests with a body get a channel.
            ReqBody::Channel(_) => false,
            ReqBody::Empty => true,
        }
    }

    /// The next piece of the body; `None` at its end.
    pub(crate) fn poll_data(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, UpstreamError>>> {
        match self {
            ReqBody::Client(incoming) => loop {
                match ready!(Pin::new(&mut *incoming).poll_frame(cx)) {
                    None => return Poll::Ready(None),
                    Some(Err(e)) => {
                        return Poll::Ready(Some(Err(UpstreamError::ClientBody(Box::new(e)))))
                    }
                    // Trailers are not forwarded.
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            return Poll::Ready(Some(Ok(data)));
                        }
                    }
                }
            },
            ReqBody::Channel(rx) => Poll::Ready(match ready!(rx.poll_recv(cx)) {
                Some(BodyPiece::Data(d)) => Some(Ok(d)),
                Some(BodyPiece::End) => {
                    *self = ReqBody::Empty;
                    None
                }
                None => Some(Err(UpstreamError::ClientBody(
                    "the client's body ended early or was malformed".into(),
                ))),
            }),
            ReqBody::Empty => Poll::Ready(None),
        }
    }
}

/// Where the HTTP/1.1 loop wants interim (1xx) responses, put in the request's extensions
/// for HTTP/1.1 clients only (RFC 9110 §15.2: never to HTTP/1.0 ones).
#[derive(Clone)]
pub struct Interim(pub tokio::sync::mpsc::Sender<Box<InterimHead>>);

/// A 1xx response head from the backend.
#[derive(Debug)]
pub struct InterimHead {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
}

impl Interim {
    fn forward(&self, head: ResponseHead) {
        // Interim responses are advisory: when the client side is slow, drop them.
        let _ = self.0.try_send(Box::new(InterimHead {
            status: head.status,
            headers: head.headers,
        }));
    }
}

/// A request ready for the wire: its encoded head, the encoder for the framing the head
/// declared, and its body.
pub struct Outgoing {
    pub head: Bytes,
    pub encoder: BodyEncoder,
    pub body: ReqBody,
    /// A HEAD request: the response has no body whatever its headers say.
    pub head_request: bool,
    pub interim: Option<Interim>,
}

/// The transport under a backend connection.
pub enum Io {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_write(cx, b),
            Io::Tls(s) => Pin::new(s).poll_write(cx, b),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// One HTTP/1.1 connection to a backend and the bytes read from it but not yet consumed.
pub struct Conn {
    pub io: Io,
    pub buf: BytesMut,
}

impl Conn {
    fn new(io: Io) -> Self {
        Conn {
            io,
            buf: BytesMut::new(),
        }
    }

    /// Whether an idle connection can take a request: the backend has not closed it or sent
    /// anything unasked. Looks at the socket without waiting (no system call unless the
    /// socket became readable).
    fn looks_open(&self) -> bool {
        let tcp = match &self.io {
            Io::Tcp(s) => s,
            Io::Tls(s) => s.get_ref().0,
        };
        let mut cx = Context::from_waker(Waker::noop());
        let mut byte = [0u8; 1];
        let mut rb = ReadBuf::new(&mut byte);
        match tcp.poll_peek(&mut cx, &mut rb) {
            Poll::Pending => true,
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => false,
            // Plain HTTP: bytes nobody asked for. TLS: may be a session ticket, which the
            // TLS layer consumes on the next read.
            Poll::Ready(Ok(_)) => matches!(self.io, Io::Tls(_)),
        }
    }

    /// Reads more bytes into the buffer; `Ok(0)` is the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 2 {
            self.buf.reserve(READ_CHUNK);
        }
        // `read_buf` keeps nothing between polls, so a fresh future per poll is fine.
        pin!(self.io.read_buf(&mut self.buf)).poll(cx)
    }
}

struct Idle {
    conn: Conn,
    since: Instant,
}

/// Idle keep-alive connections to one backend.
pub struct ConnPool {
    idle: ArrayQueue<Idle>,
}

impl std::fmt::Debug for ConnPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ConnPool({} idle)", self.idle.len())
    }
}

impl Default for ConnPool {
    fn default() -> Self {
        Self::new()
    }
}

impl ConnPool {
    pub fn new() -> Self {
        ConnPool {
            idle: ArrayQueue::new(MAX_IDLE),
        }
    }

    fn put(&self, conn: Conn) {
        // A full pool drops the connection, which closes it.
        let _ = self.idle.push(Idle {
            conn,
            since: Instant::now(),
        });
    }

    fn take(&self) -> Option<Conn> {
        while let Some(idle) = self.idle.pop() {
            if idle.since.elapsed() < IDLE_REUSE && idle.conn.looks_open() {
                return Some(idle.conn);
            }
        }
        None
    }

    pub fn idle_count(&self) -> usize {
        self.idle.len()
    }

    /// Closes idle connections past [`IDLE_REUSE`] or closed by the backend.
    pub fn sweep(&self) {
        for _ in 0..self.idle.len() {
            let Some(i) = self.idle.pop() else { break };
            if i.since.elapsed() < IDLE_REUSE && i.conn.looks_open() {
                // Back in the queue; if it filled meanwhile, the connection is dropped.
                let _ = self.idle.push(i);
            }
        }
    }
}

/// Why a backend did not answer.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connect failed: {0}")]
    Connect(#[source] io::Error),
    #[error("connect timed out")]
    ConnectTimeout,
    #[error("could not resolve backend address")]
    Resolve,
    #[error("TLS handshake with the backend failed: {0}")]
    Tls(#[source] io::Error),
    #[error("backend did not answer in time")]
    ResponseTimeout,
    #[error("backend connection failed: {0}")]
    Io(#[source] io::Error),
    #[error("backend closed the connection before answering")]
    Closed,
    #[error("backend sent a bad response: {0}")]
    Wire(#[from] WireError),
    #[error("backend broke the protocol: {0}")]
    Protocol(&'static str),
    #[error("reading the client's request body failed: {0}")]
    ClientBody(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl UpstreamError {
    /// Failures before any byte of the request reached the backend: safe to retry elsewhere.
    pub fn is_connect(&self) -> bool {
        matches!(
            self,
            UpstreamError::Connect(_)
                | UpstreamError::ConnectTimeout
                | UpstreamError::Resolve
                | UpstreamError::Tls(_)
        )
    }

    /// The backend failed before answering (reset, closed, broken response), as opposed to
    /// being slow: a request that can be replayed may go to another backend.
    pub fn is_replayable_failure(&self) -> bool {
        matches!(
            self,
            UpstreamError::Io(_) | UpstreamError::Closed | UpstreamError::Wire(_)
        )
    }

    /// A short label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            UpstreamError::Connect(_) => "connect",
            UpstreamError::ConnectTimeout => "connect_timeout",
            UpstreamError::Resolve => "resolve",
            UpstreamError::Tls(_) => "tls",
            UpstreamError::ResponseTimeout => "response_timeout",
            UpstreamError::Io(_) | UpstreamError::Closed => "response",
            UpstreamError::Wire(_) | UpstreamError::Protocol(_) => "protocol",
            UpstreamError::ClientBody(_) => "client_body",
        }
    }
}

/// Where and how to reach one backend.
pub struct Target<'a> {
    pub address: &'a str,
    pub socket_addr: Option<SocketAddr>,
    pub shared: &'a Arc<BackendShared>,
    pub connect_timeout: Duration,
    pub tls: Option<&'a Arc<BackendTls>>,
}

/// A ready connection, and whether it was reused from the pool (a reused one may race
/// with the backend closing it).
pub async fn checkout(t: &Target<'_>) -> Result<(Conn, bool), UpstreamError> {
    if let Some(c) = t.shared.conns.take() {
        return Ok((c, true));
    }
    // Boxed: the connect future (with a TLS handshake) is large and rarely needed; kept
    // inline it would grow, and be copied with, every request's future.
    Box::pin(connect(t)).await.map(|c| (c, false))
}

/// A fresh connection, skipping the pool (after a pooled one turned out stale).
pub async fn connect(t: &Target<'_>) -> Result<Conn, UpstreamError> {
    // TCP connect and (for HTTPS backends) the TLS handshake share `connect_timeout`.
    tokio::time::timeout(t.connect_timeout, async {
        let stream = tcp_connect(t.address, t.socket_addr).await?;
        let _ = stream.set_nodelay(true);
        Ok(Conn::new(match t.tls {
            None => Io::Tcp(stream),
            Some(tls) => {
                let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
                let stream = connector
                    .connect(tls.name.clone(), stream)
                    .await
                    .map_err(UpstreamError::Tls)?;
                Io::Tls(Box::new(stream))
            }
        }))
    })
    .await
    .map_err(|_| UpstreamError::ConnectTimeout)?
}

/// A TCP connection to a literal address, or to the first address a name resolves to that
/// accepts.
pub async fn tcp_connect(
    address: &str,
    socket_addr: Option<SocketAddr>,
) -> Result<TcpStream, UpstreamError> {
    if let Some(a) = socket_addr {
        return TcpStream::connect(a).await.map_err(UpstreamError::Connect);
    }
    let addrs = tokio::net::lookup_host(address)
        .await
        .map_err(|_| UpstreamError::Resolve)?;
    let mut last = UpstreamError::Resolve;
    for a in addrs {
        match TcpStream::connect(a).await {
            Ok(s) => return Ok(s),
            Err(e) => last = UpstreamError::Connect(e),
        }
    }
    Err(last)
}

/// Why a send failed, and the request when the backend cannot have received it whole (the
/// head could not be written), so the caller can send it again on a fresh connection.
pub struct SendFailure {
    pub error: UpstreamError,
    pub unsent: Option<Outgoing>,
}

/// A response head and the connection its body comes on.
pub struct Exchange {
    pub head: ResponseHead,
    pub conn: Conn,
}

/// Writes `req` on `conn` and reads the response head, all within `response_timeout`.
/// Interim responses (1xx but 101) go to the request's [`Interim`] if it has one. A final
/// response that arrives while the body is still going out ends the upload at once: it is
/// returned, and the connection is not reused.
pub async fn send(
    mut conn: Conn,
    req: Outgoing,
    response_timeout: Duration,
    max_head: usize,
) -> Result<Exchange, SendFailure> {
    let exchange = async {
        if let Err(e) = write_all_flush(&mut conn.io, &req.head).await {
            return Err(SendFailure {
                error: UpstreamError::Io(e),
                unsent: Some(req),
            });
        }
        let fail = |error| SendFailure {
            error,
            unsent: None,
        };
        let Outgoing {
            mut encoder,
            body,
            head_request,
            interim,
            ..
        } = req;
        let interim = interim.as_ref();
        if encoder.framing() != Framing::Empty {
            // Boxed for the same reason as connect: most requests have no body.
            let sent = Box::pin(send_body(
                &mut conn,
                body,
                &mut encoder,
                head_request,
                max_head,
                interim,
            ))
            .await;
            match sent {
                Ok(None) => {}
                Ok(Some(mut head)) => {
                    head.keep_alive = false;
                    return Ok(Exchange { head, conn });
                }
                Err(e @ (UpstreamError::ClientBody(_) | UpstreamError::Wire(_))) => {
                    return Err(fail(e))
                }
                // The backend stopped reading (and may have answered, e.g. 413 and close).
                Err(e) => match read_head(&mut conn, head_request, max_head, interim).await {
                    Ok(mut head) => {
                        head.keep_alive = false;
                        return Ok(Exchange { head, conn });
                    }
                    Err(_) => return Err(fail(e)),
                },
            }
        }
        read_head(&mut conn, head_request, max_head, interim)
            .await
            .map(|head| Exchange { head, conn })
            .map_err(fail)
    };
    match tokio::time::timeout(response_timeout, exchange).await {
        Ok(r) => r,
        Err(_) => Err(SendFailure {
            error: UpstreamError::ResponseTimeout,
            unsent: None,
        }),
    }
}

async fn write_all_flush(io: &mut Io, b: &[u8]) -> io::Result<()> {
    io.write_all(b).await?;
    io.flush().await
}

/// Streams the request body through `encoder` while watching for the response: `Ok(None)`
/// once the whole body is written and flushed, `Ok(Some(head))` if a final response came
/// first.
async fn send_body(
    conn: &mut Conn,
    mut body: ReqBody,
    encoder: &mut BodyEncoder,
    head_request: bool,
    max_head: usize,
    interim: Option<&Interim>,
) -> Result<Option<ResponseHead>, UpstreamError> {
    let mut out = BytesMut::new();
    let mut ended = false;
    let mut read_closed = false;
    std::future::poll_fn(|cx| {
        // The backend's side: an early answer ends the upload.
        while !read_closed {
            if !conn.buf.is_empty() {
                match h1::parse_response(&mut conn.buf, head_request, max_head)? {
                    Some(head) if is_interim(&head) => {
                        if let Some(i) = interim {
                            i.forward(head);
                        }
                        continue;
                    }
                    Some(head) => return Poll::Ready(Ok(Some(head))),
                    None => {}
                }
            }
            match conn.poll_fill(cx) {
                Poll::Ready(Ok(0)) => read_closed = true,
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(UpstreamError::Io(e))),
                Poll::Pending => break,
            }
        }
        // The body, framed as the head declared.
        loop {
            if !out.is_empty() {
                match ready!(Pin::new(&mut conn.io).poll_write(cx, &out)) {
                    Ok(0) => {
                        return Poll::Ready(Err(UpstreamError::Io(io::ErrorKind::WriteZero.into())))
                    }
                    Ok(n) => out.advance(n),
                    Err(e) => return Poll::Ready(Err(UpstreamError::Io(e))),
                }
                continue;
            }
            if ended {
                return Pin::new(&mut conn.io)
                    .poll_flush(cx)
                    .map(|r| r.map(|()| None).map_err(UpstreamError::Io));
            }
            match ready!(body.poll_data(cx)) {
                Some(Ok(data)) => encoder.encode(&data, &mut out)?,
                Some(Err(e)) => return Poll::Ready(Err(e)),
                None => {
                    encoder.finish(&mut out)?;
                    ended = true;
                }
            }
        }
    })
    .await
}

/// A 1xx response other than 101: the final answer follows.
fn is_interim(head: &ResponseHead) -> bool {
    head.status.is_informational() && head.status != http::StatusCode::SWITCHING_PROTOCOLS
}

async fn read_head(
    conn: &mut Conn,
    head_request: bool,
    max_head: usize,
    interim: Option<&Interim>,
) -> Result<ResponseHead, UpstreamError> {
    loop {
        if let Some(head) = h1::parse_response(&mut conn.buf, head_request, max_head)? {
            if is_interim(&head) {
                if let Some(i) = interim {
                    i.forward(head);
                }
                continue;
            }
            return Ok(head);
        }
        let n = std::future::poll_fn(|cx| conn.poll_fill(cx))
            .await
            .map_err(UpstreamError::Io)?;
        if n == 0 {
            return Err(if conn.buf.is_empty() {
                UpstreamError::Closed
            } else {
                UpstreamError::Wire(WireError::Head)
            });
        }
    }
}
