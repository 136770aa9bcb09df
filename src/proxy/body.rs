//! The response body the proxy serves — a streamed backend body or a small fixed one — and
//! the bookkeeping done when it finishes (duration histogram, access log line).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};

use super::upstream::{UpstreamBody, UpstreamError};
use crate::access_log::{AccessLogger, Record};
use crate::state::BackendShared;

pub struct ProxyBody {
    inner: Inner,
    finish: Option<Finish>,
}

enum Inner {
    Upstream(UpstreamBody),
    Full(Option<Bytes>),
}

/// Recorded once, when the body ends or is dropped (client gone).
pub struct Finish {
    pub start: Instant,
    pub backend: Option<Arc<BackendShared>>,
    /// The access log line, and where it goes.
    pub log: Option<(Box<Record>, Arc<AccessLogger>)>,
    pub bytes: u64,
}

impl Drop for Finish {
    fn drop(&mut self) {
        let elapsed = self.start.elapsed();
        if let Some(b) = &self.backend {
            b.stats.observe(elapsed);
        }
        if let Some((r, logger)) = &self.log {
            logger.log(r, self.bytes, elapsed);
        }
    }
}

impl ProxyBody {
    pub fn upstream(u: UpstreamBody) -> Self {
        ProxyBody {
            inner: Inner::Upstream(u),
            finish: None,
        }
    }

    pub fn full(b: impl Into<Bytes>) -> Self {
        let b = b.into();
        ProxyBody {
            inner: Inner::Full((!b.is_empty()).then_some(b)),
            finish: None,
        }
    }

    pub fn empty() -> Self {
        ProxyBody {
            inner: Inner::Full(None),
            finish: None,
        }
    }

    /// Attaches the completion record; an already-empty body completes at once.
    pub fn set_finish(&mut self, f: Finish) {
        if self.is_end_stream() {
            drop(f);
        } else {
            self.finish = Some(f);
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = UpstreamError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        let this = self.get_mut();
        let r = match &mut this.inner {
            Inner::Upstream(u) => Pin::new(u).poll_frame(cx),
            Inner::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
        };
        match &r {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(f), Some(d)) = (&mut this.finish, frame.data_ref()) {
                    f.bytes += d.remaining() as u64;
                }
            }
            Poll::Ready(_) => this.finish = None,
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Upstream(u) => u.is_end_stream(),
            Inner::Full(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Upstream(u) => u.size_hint(),
            Inner::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}
