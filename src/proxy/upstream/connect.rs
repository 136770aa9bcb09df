//! Opening backend connections: TCP (a literal address, or the first of a name's addresses
//! that accepts) with TCP_NODELAY, then TLS for HTTPS backends, within `connect_timeout`.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::error::UpstreamError;
use crate::tls::BackendTls;

/// Read size for backend connections.
const READ_CHUNK: usize = 8192;

/// Where and how to reach one backend.
#[derive(Clone, Copy)]
pub struct Endpoint<'a> {
    pub address: &'a str,
    pub socket_addr: Option<SocketAddr>,
    pub connect_timeout: Duration,
    pub tls: Option<&'a Arc<BackendTls>>,
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
    pub(super) fn new(io: Io) -> Self {
        Conn {
            io,
            buf: BytesMut::new(),
        }
    }

    /// Whether an idle connection can take a request: the backend has not closed it or sent
    /// anything unasked. Looks at the socket without waiting (no system call unless the
    /// socket became readable).
    pub(super) fn looks_open(&self) -> bool {
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
    pub(super) fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 2 {
            self.buf.reserve(READ_CHUNK);
        }
        // `read_buf` keeps nothing between polls, so a fresh future per poll is fine.
        pin!(self.io.read_buf(&mut self.buf)).poll(cx)
    }
}

/// A fresh connection, skipping the pool (after a pooled one turned out stale).
pub async fn connect(t: &Endpoint<'_>) -> Result<Conn, UpstreamError> {
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
