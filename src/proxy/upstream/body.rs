//! The backend's response body as the client side streams it: decoded by the framing its
//! head declared, its connection back to the pool when it ends cleanly, and the in-flight
//! count held until then.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::{Conn, Exchange, UpstreamError};
use crate::h1::{BodyDecoder, Decoded, WireError};
use crate::state::{BackendShared, PoolShared};

/// Counts one request in flight on a backend and its pool until dropped.
pub struct InFlight {
    backend: Arc<BackendShared>,
    pool: Arc<PoolShared>,
    /// Holds one of the backend's `max_conns` slots, given back with the in-flight count.
    slot: bool,
}

impl InFlight {
    pub fn new(
        backend: Arc<BackendShared>,
        pool: Arc<PoolShared>,
        slot: Option<crate::queue::Slot>,
    ) -> Self {
        backend.in_flight.fetch_add(1, Ordering::Relaxed);
        pool.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight {
            backend,
            pool,
            slot: slot.is_some_and(crate::queue::Slot::hand_over),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.backend.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.pool.in_flight.fetch_sub(1, Ordering::Relaxed);
        if self.slot {
            self.backend.queue.give_back();
        }
    }
}

/// A backend response body streamed to the client. When it ends cleanly its connection goes
/// back to the pool (if the backend keeps it alive); the in-flight count drops when the body
/// ends or the client goes away.
pub struct UpstreamBody {
    conn: Option<Conn>,
    decoder: BodyDecoder,
    keep_alive: bool,
    /// An error was seen and will be returned on the next poll.
    failing: Option<UpstreamError>,
    backend: Arc<BackendShared>,
    in_flight: Option<InFlight>,
}

impl UpstreamBody {
    pub fn new(
        exchange: Exchange,
        backend: Arc<BackendShared>,
        in_flight: InFlight,
    ) -> (http::response::Parts, Self) {
        let Exchange { head, conn } = exchange;
        let mut body = UpstreamBody {
            conn: Some(conn),
            decoder: BodyDecoder::new(head.framing),
            keep_alive: head.keep_alive,
            failing: None,
            backend,
            in_flight: Some(in_flight),
        };
        // An empty body (204, 304, HEAD) may never be polled: release it now.
        if body.decoder.is_done() {
            body.finish();
        }
        let mut res = http::Response::new(());
        *res.status_mut() = head.status;
        *res.version_mut() = head.version;
        *res.headers_mut() = head.headers;
        if let Some(r) = head
            .reason
            .and_then(|r| hyper::ext::ReasonPhrase::try_from(r).ok())
        {
            res.extensions_mut().insert(r);
        }
        (res.into_parts().0, body)
    }

    /// The body ended: a clean keep-alive connection goes back to the pool. Bytes past the
    /// body (more than the backend declared) mean the connection is not reused.
    fn finish(&mut self) {
        if let Some(c) = self.conn.take() {
            if self.keep_alive && c.buf.is_empty() {
                self.backend.conns.put(c);
            }
        }
        self.in_flight = None;
    }

    /// Ends the body with an error, after yielding once: the client side then flushes the bytes it holds (the head, the last data) before the error
    /// closes the client connection, so the client sees how far the body got.
    fn fail(
        &mut self,
        e: UpstreamError,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        self.conn = None;
        self.in_flight = None;
        self.failing = Some(e);
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = UpstreamError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        let this = &mut *self;
        loop {
            if let Some(e) = this.failing.take() {
                return Poll::Ready(Some(Err(e)));
            }
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match this.decoder.decode(&mut conn.buf) {
                Ok(Decoded::Data(data)) => {
                    // The client side stops polling once the declared bytes are written:
                    // release the connection with the last bytes, not at a `None`.
                    if this.decoder.is_done() {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Decoded::Done) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(Decoded::NeedMore) => {}
                Err(e) => return this.fail(e.into(), cx),
            }
            match ready!(conn.poll_fill(cx)) {
                Ok(0) => match this.decoder.eof() {
                    Ok(()) => {
                        this.keep_alive = false;
                        this.finish();
                        return Poll::Ready(None);
                    }
                    Err(WireError::BodyShort) => return this.fail(UpstreamError::Closed, cx),
                    Err(e) => return this.fail(e.into(), cx),
                },
                Ok(_) => {}
                Err(e) => return this.fail(UpstreamError::Io(e), cx),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failing.is_none() && (self.decoder.is_done() || self.conn.is_none())
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder.exact_remaining() {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}
