//! One exchange with a backend on the request's own task: the request head and body out
//! (framed by the encoder its head declared), interim responses relayed, the final response
//! head in, all within `response_timeout`.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http_body::Body;
use hyper::body::Incoming;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::connect::{Conn, Io};
use super::error::UpstreamError;
use crate::h1::{self, BodyEncoder, Framing, ResponseHead, WireError};

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
