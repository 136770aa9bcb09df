//! Connections to backends: connect with a timeout and TCP_NODELAY, HTTP/1.1 keep-alive
//! pooling in a lock-free queue, and a response body that returns its connection when done.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_queue::ArrayQueue;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::state::{BackendShared, PoolShared};
use crate::tls::BackendTls;

/// Idle connections kept per backend.
const MAX_IDLE: usize = 256;
/// An idle connection older than this is not reused, and the sweep closes it (Tomcat closes
/// idle keep-alive at 20 s by default, nginx at 75 s).
pub const IDLE_REUSE: Duration = Duration::from_secs(15);

type Sender = http1::SendRequest<ReqBody>;

/// The body sent to a backend: the client's, streamed, or none (a replayed request).
pub enum ReqBody {
    Client(Incoming),
    Empty,
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ReqBody::Client(b) => Pin::new(b).poll_frame(cx),
            ReqBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Client(b) => b.is_end_stream(),
            ReqBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Client(b) => b.size_hint(),
            ReqBody::Empty => SizeHint::with_exact(0),
        }
    }
}

struct Idle {
    sender: Sender,
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

    fn put(&self, sender: Sender) {
        if !sender.is_closed() {
            // A full pool drops the connection, which closes it.
            let _ = self.idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    fn take(&self) -> Option<Sender> {
        while let Some(idle) = self.idle.pop() {
            if !idle.sender.is_closed() && idle.since.elapsed() < IDLE_REUSE {
                return Some(idle.sender);
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
            if !i.sender.is_closed() && i.since.elapsed() < IDLE_REUSE {
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
    Connect(#[source] std::io::Error),
    #[error("connect timed out")]
    ConnectTimeout,
    #[error("could not resolve backend address")]
    Resolve,
    #[error("TLS handshake with the backend failed: {0}")]
    Tls(#[source] std::io::Error),
    #[error("handshake failed: {0}")]
    Handshake(#[source] hyper::Error),
    #[error("backend did not answer in time")]
    ResponseTimeout,
    #[error("backend failed: {0}")]
    Http(#[source] hyper::Error),
    #[error("backend broke the protocol: {0}")]
    Protocol(&'static str),
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
        matches!(self, UpstreamError::Http(_))
    }

    /// A short label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            UpstreamError::Connect(_) => "connect",
            UpstreamError::ConnectTimeout => "connect_timeout",
            UpstreamError::Resolve => "resolve",
            UpstreamError::Tls(_) => "tls",
            UpstreamError::Handshake(_) => "handshake",
            UpstreamError::ResponseTimeout => "response_timeout",
            UpstreamError::Http(_) => "response",
            UpstreamError::Protocol(_) => "protocol",
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
pub async fn checkout(t: &Target<'_>) -> Result<(Sender, bool), UpstreamError> {
    while let Some(mut s) = t.shared.conns.take() {
        // Pooled connections whose previous response is done become ready at once; a
        // closed one errors and is dropped.
        if s.ready().await.is_ok() {
            return Ok((s, true));
        }
    }
    connect(t).await.map(|s| (s, false))
}

async fn connect(t: &Target<'_>) -> Result<Sender, UpstreamError> {
    // TCP connect and (for HTTPS backends) the TLS handshake share `connect_timeout`.
    tokio::time::timeout(t.connect_timeout, async {
        let stream = tcp_connect(t.address, t.socket_addr).await?;
        let _ = stream.set_nodelay(true);
        match t.tls {
            None => handshake(stream).await,
            Some(tls) => {
                let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
                let stream = connector
                    .connect(tls.name.clone(), stream)
                    .await
                    .map_err(UpstreamError::Tls)?;
                handshake(stream).await
            }
        }
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

async fn handshake<I>(io: I) -> Result<Sender, UpstreamError>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(io))
        .await
        .map_err(UpstreamError::Handshake)?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "backend connection ended");
        }
    });
    Ok(sender)
}

/// Why a send failed, and the request when it was never written (a pooled connection the
/// backend had closed meanwhile), so the caller can send it again on a fresh connection.
pub struct SendFailure {
    pub error: UpstreamError,
    pub unsent: Option<Request<ReqBody>>,
}

/// Sends `req` on a ready connection and waits for the response head.
pub async fn send(
    mut sender: Sender,
    req: Request<ReqBody>,
    response_timeout: Duration,
) -> Result<(Response<Incoming>, Sender), SendFailure> {
    match tokio::time::timeout(response_timeout, sender.try_send_request(req)).await {
        Err(_) => Err(SendFailure {
            error: UpstreamError::ResponseTimeout,
            unsent: None,
        }),
        Ok(Ok(res)) => Ok((res, sender)),
        Ok(Err(mut e)) => {
            let unsent = e.take_message();
            Err(SendFailure {
                error: UpstreamError::Http(e.into_error()),
                unsent,
            })
        }
    }
}

/// A fresh connection, skipping the pool (after a pooled one turned out stale).
pub async fn connect_fresh(t: &Target<'_>) -> Result<Sender, UpstreamError> {
    connect(t).await
}

/// Counts one request in flight on a backend and its pool until dropped.
pub struct InFlight {
    backend: Arc<BackendShared>,
    pool: Arc<PoolShared>,
}

impl InFlight {
    pub fn new(backend: Arc<BackendShared>, pool: Arc<PoolShared>) -> Self {
        backend.in_flight.fetch_add(1, Ordering::Relaxed);
        pool.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight { backend, pool }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.backend.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.pool.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A backend response body streamed to the client. When it ends cleanly its connection goes
/// back to the pool; the in-flight count drops when the body ends or the client goes away.
pub struct UpstreamBody {
    inner: Incoming,
    sender: Option<Sender>,
    backend: Arc<BackendShared>,
    in_flight: Option<InFlight>,
}

impl UpstreamBody {
    pub fn new(
        inner: Incoming,
        sender: Option<Sender>,
        backend: Arc<BackendShared>,
        in_flight: InFlight,
    ) -> Self {
        let mut body = UpstreamBody {
            inner,
            sender,
            backend,
            in_flight: Some(in_flight),
        };
        // An empty body (204, 304, HEAD) may never be polled: release it now.
        if body.inner.is_end_stream() {
            body.finish();
        }
        body
    }

    fn finish(&mut self) {
        if let Some(s) = self.sender.take() {
            self.backend.conns.put(s);
        }
        self.in_flight = None;
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // Fully read but never polled to `None`: the connection is still good.
        if self.sender.is_some() && self.inner.is_end_stream() {
            self.finish();
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        match &r {
            Poll::Ready(None) => this.finish(),
            // The last frame: hyper's server stops polling once Content-Length bytes are
            // written, so the end may never be seen as `None`. Release the connection now.
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.finish(),
            Poll::Ready(Some(Err(_))) => {
                this.sender = None;
                this.in_flight = None;
            }
            _ => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
