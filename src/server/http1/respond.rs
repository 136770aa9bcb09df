//! Writing responses to the client: status line and headers (with `Date`), the body in
//! the framing the head declared, interim heads, and the loop's own error answers.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::Poll;

use bytes::{BufMut, BytesMut};
use http::header;
use http::StatusCode;
use http_body::Body as _;
use tokio::io::AsyncWriteExt;

use super::{ClientIo, WRITE_BATCH};
use crate::h1::{self, BodyEncoder};
use crate::proxy::body::ProxyBody;
use crate::proxy::upstream::InterimHead;

/// An interim (1xx) response head.
pub(super) fn interim_head(h: &InterimHead) -> BytesMut {
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
pub(super) async fn write_body<S: ClientIo>(
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
pub(super) async fn send<S: ClientIo>(io: &mut S, bytes: &[u8]) -> io::Result<()> {
    io.write_all(bytes).await?;
    io.flush().await
}

/// `HTTP/1.1 <status> <reason>`.
pub(super) fn status_line(
    status: StatusCode,
    reason: Option<&hyper::ext::ReasonPhrase>,
    out: &mut BytesMut,
) {
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
pub(super) fn error_response(status: StatusCode) -> Vec<u8> {
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
