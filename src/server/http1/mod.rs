//! Client connections speaking HTTP/1.1: read request heads, stream request bodies, relay
//! interim and final responses, keep connections alive — without holding a buffer while a
//! connection idles. The wire format itself is `h1`; this is the connection loop, which
//! takes any transport and any [`Handler`], so tests can script it byte for byte.

use std::future::poll_fn;
use std::future::Future;
use std::pin::{pin, Pin};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use http::Request;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::h1::{self, RequestHead, WireError};
use crate::proxy::upstream::ReqBody;
use crate::proxy::{ClientHooks, ConnInfo, Handling};

mod exchange;
mod respond;

use exchange::{exchange, Next};
use respond::{error_response, send};
// The response fuzz target writes heads the way the loop does.
#[cfg(any(fuzzing, test))]
pub(crate) use respond::write_status_and_headers;

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
    // One timer and one shutdown watch for the connection's life, moved forward for each
    // request rather than made anew: registering and cancelling them per request cost more
    // than the rest of the head's reading.
    let mut timer = pin!(tokio::time::sleep_until(
        Instant::now() + limits.header_timeout
    ));
    let stopping = shutdown.clone();
    let mut stop = pin!(async move {
        let _ = shutdown.changed().await;
    });
    let mut waits = Waits {
        timer: timer.as_mut(),
        stop: stop.as_mut(),
        stopped: false,
    };
    loop {
        let parsed = match read_head(io, &mut buf, limits, &mut waits, first).await {
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
            Next::KeepAlive if !*stopping.borrow() => {}
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

/// What a connection waits on besides its client: the deadline for the head being read (or
/// for the next request to start), and shutdown.
struct Waits<'a> {
    timer: Pin<&'a mut tokio::time::Sleep>,
    stop: Pin<&'a mut (dyn Future<Output = ()> + Send)>,
    /// `stop` has completed (it must not be polled again).
    stopped: bool,
}

impl Waits<'_> {
    /// `Ready` when the deadline has passed, or (if `stop` is set) shutdown has begun.
    fn poll_over(&mut self, cx: &mut Context<'_>, stop: bool) -> Poll<()> {
        if self.timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        if stop && !self.stopped {
            ready!(self.stop.as_mut().poll(cx));
            self.stopped = true;
        }
        if stop && self.stopped {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

/// Reads until a whole request head is in `buf`; a status is the error to answer with.
async fn read_head<S: ClientIo>(
    io: &mut S,
    buf: &mut BytesMut,
    limits: Limits,
    waits: &mut Waits<'_>,
    first: bool,
) -> Result<Head, WireError> {
    // A keep-alive connection waits up to idle_timeout for the next request to start, and
    // then has header_timeout to finish its head.
    let mut waiting = !first && buf.is_empty();
    waits.timer.as_mut().reset(
        Instant::now()
            + if waiting {
                limits.idle_timeout
            } else {
                limits.header_timeout
            },
    );
    loop {
        if waiting && !buf.is_empty() {
            waiting = false;
            waits
                .timer
                .as_mut()
                .reset(Instant::now() + limits.header_timeout);
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
        // A new connection still gets its first request served: the client has just been
        // accepted (on shutdown or an upgrade). Between requests, shutdown ends it.
        let idle = buf.is_empty() && !first;
        if buf.is_empty() {
            if let Some(tcp) = io.tcp() {
                // Idle: wait for data without holding a buffer (released only when the
                // client has sent nothing yet).
                let over = poll_fn(|cx| match tcp.poll_read_ready(cx) {
                    // An error shows again on the read below.
                    Poll::Ready(_) => Poll::Ready(false),
                    Poll::Pending => {
                        if buf.capacity() > 0 {
                            *buf = BytesMut::new();
                        }
                        waits.poll_over(cx, idle).map(|()| true)
                    }
                })
                .await;
                if over {
                    return Ok(Head::None);
                }
            }
        }
        if buf.capacity() - buf.len() < HEAD_READ / 2 {
            buf.reserve(HEAD_READ);
        }
        let n = {
            let mut read = pin!(io.read_buf(buf));
            poll_fn(|cx| match read.as_mut().poll(cx) {
                Poll::Ready(r) => Poll::Ready(Some(r)),
                Poll::Pending => waits.poll_over(cx, idle).map(|()| None),
            })
            .await
        };
        match n {
            Some(Ok(0)) | Some(Err(_)) | None => return Ok(Head::None),
            Some(Ok(_)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::body::ProxyBody;
    use http::Response;
    use http::StatusCode;
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
