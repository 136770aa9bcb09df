//! One request and its response on a client connection: the body pumped to the handler
//! while interim responses are relayed, the final response watched for, and a queued
//! request's client watched so a leaving client leaves the queue.

use std::future::poll_fn;
use std::io;
use std::task::Poll;

use bytes::{BufMut, BytesMut};
use http::{Method, Request, StatusCode, Version};
use http_body::Body as _;
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, oneshot};

use super::respond::{error_response, interim_head, send, write_body, write_status_and_headers};
use super::{ClientIo, Handler, BODY_READ};
use crate::h1::{self, BodyDecoder, Decoded, Framing, RequestHead};
use crate::proxy::body::ProxyBody;
use crate::proxy::upstream::{BodyPiece, Interim, InterimHead, ReqBody};
use crate::proxy::{self, ClientHooks, ConnInfo, Handling};

/// Where a connection's interim responses arrive.
type InterimChannel = mpsc::Receiver<Box<InterimHead>>;

/// What the connection does after an exchange.
pub(super) enum Next {
    KeepAlive,
    Close,
    Upgraded,
}

/// A request handed to the handler, and what the exchange needs to see it through.
struct Started<'a> {
    handling: Handling,
    /// Where the request body goes (`None`: it has none).
    tx: Option<mpsc::Sender<BodyPiece>>,
    decoder: BodyDecoder,
    upgrade_rx: Option<oneshot::Receiver<proxy::Tunnel>>,
    interim_rx: Option<&'a mut InterimChannel>,
    head_request: bool,
    version: Version,
    keep_alive: bool,
    expect_continue: bool,
    /// A chunked body already read and malformed: refused before anything goes to a
    /// backend (a later malformation aborts the upload instead). The handler's future is
    /// then dropped unpolled, so nothing was sent.
    refused: Option<h1::WireError>,
}

/// Builds the request and calls the handler (which only makes its future).
fn start<'a, H: Handler>(
    handler: &H,
    info: ConnInfo,
    buf: &BytesMut,
    interim: &'a mut Option<(mpsc::Sender<Box<InterimHead>>, InterimChannel)>,
    parsed: RequestHead,
) -> Started<'a> {
    let RequestHead {
        req,
        framing,
        keep_alive,
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
    let mut refused = None;
    if framing == Framing::Chunked && !buf.is_empty() {
        let mut probe = h1::ChunkedDecoder::default();
        let mut copy = buf.clone();
        loop {
            match probe.decode(&mut copy) {
                Ok(Decoded::Data(_)) => {}
                Ok(_) => break,
                Err(e) => {
                    refused = Some(e);
                    break;
                }
            }
        }
    }
    let decoder = BodyDecoder::new(framing);
    let (body, tx) = if decoder.is_done() {
        (ReqBody::Empty, None)
    } else {
        let (tx, rx) = mpsc::channel(2);
        (ReqBody::Channel(rx), Some(tx))
    };
    Started {
        handling: handler.call(info, Request::from_parts(parts, body), hooks),
        tx,
        decoder,
        upgrade_rx,
        interim_rx,
        head_request,
        version,
        keep_alive,
        expect_continue,
        refused,
    }
}

/// One request and its response. The request body is pumped to the handler while the
/// loop also relays interim responses and watches for the final one: a final response
/// that comes before the body is read is relayed at once, and the connection then closes.
pub(super) async fn exchange<S: ClientIo, H: Handler>(
    handler: &H,
    info: ConnInfo,
    io: &mut S,
    buf: &mut BytesMut,
    interim: &mut Option<(mpsc::Sender<Box<InterimHead>>, InterimChannel)>,
    parsed: RequestHead,
) -> Next {
    // Everything up to the handler's call is done before the first await, so the parsed
    // head and the request never take room in this (per-request, moved) future.
    let Started {
        mut handling,
        mut tx,
        mut decoder,
        upgrade_rx,
        mut interim_rx,
        head_request,
        version,
        mut keep_alive,
        expect_continue,
        refused,
    } = start(handler, info, buf, interim, parsed);
    if let Some(e) = refused {
        tracing::debug!(client = %info.peer, error = %e, "malformed request body");
        drop(handling);
        let _ = send(io, &error_response(e.status())).await;
        return Next::Close;
    }
    let mut sent_continue = false;
    if expect_continue && tx.is_some() {
        if send(io, b"HTTP/1.1 100 Continue\r\n\r\n").await.is_err() {
            return Next::Close;
        }
        sent_continue = true;
    }
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
        // In a block: `event` may borrow `tx`, and must be gone before `tx` changes.
        let step = {
            let event = if piece.is_none() && !reading && !watching {
                // Most requests: no body to pump, no client to watch; only the handler.
                poll_fn(|cx| poll_handling(&mut handling, &mut interim_rx, cx)).await
            } else {
                tokio::select! {
                    biased;
                    e = poll_fn(|cx| poll_handling(&mut handling, &mut interim_rx, cx)) => e,
                    permit = reserve(&tx), if piece.is_some() => Event::Room(permit),
                    n = read_more(io, buf), if reading || watching => Event::Read(n),
                }
            };
            match event {
                Event::Answered(r) => break r,
                // It waits in a backend's queue: from now on a client that leaves takes its
                // request out of the queue (read below).
                Event::Queued => {
                    client_watch = ClientWatch::On;
                    Step::Continue
                }
                Event::Interim(h) => {
                    if !(h.status == StatusCode::CONTINUE && sent_continue)
                        && send(io, &interim_head(&h)).await.is_err()
                    {
                        return Next::Close;
                    }
                    Step::Continue
                }
                Event::Room(permit) => match (permit, piece.take()) {
                    (Some(p), Some(x)) => {
                        let end = matches!(x, BodyPiece::End);
                        p.send(x);
                        if end {
                            Step::StopBody
                        } else {
                            Step::Continue
                        }
                    }
                    // Nobody wants the rest of the body.
                    _ => Step::StopBody,
                },
                Event::Read(n) => match n {
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
            }
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

/// What woke the exchange. Made and taken apart at once, never stored: boxing the answer
/// would only add an allocation.
#[allow(clippy::large_enum_variant)]
enum Event<'a> {
    /// The handler's final response.
    Answered(Result<http::Response<ProxyBody>, std::convert::Infallible>),
    /// The request has just started waiting in a backend's queue.
    Queued,
    /// An interim response to relay.
    Interim(Box<InterimHead>),
    /// Room for a piece of the request body (`None`: the handler dropped the body).
    Room(Option<mpsc::Permit<'a, BodyPiece>>),
    /// Bytes from the client (or its end).
    Read(io::Result<usize>),
}

/// Polls the request: its final response; or that it has just started waiting in a
/// backend's queue (a thread-local mark the queue sets during this poll; requests that
/// never queue pay a thread-local read per poll for this); or an interim response it
/// produced. Interim responses come only from the backend exchange, which runs inside this
/// poll, so a look at the channel after each poll sees them without a waker of its own.
fn poll_handling<'a>(
    handling: &mut Handling,
    interim: &mut Option<&mut InterimChannel>,
    cx: &mut std::task::Context<'_>,
) -> Poll<Event<'a>> {
    if let Poll::Ready(r) = handling.as_mut().poll(cx) {
        return Poll::Ready(Event::Answered(r));
    }
    if crate::queue::take_started_waiting() {
        return Poll::Ready(Event::Queued);
    }
    match interim.as_mut().map(|rx| rx.try_recv()) {
        Some(Ok(h)) => Poll::Ready(Event::Interim(h)),
        _ => Poll::Pending,
    }
}

async fn read_more<S: ClientIo>(io: &mut S, buf: &mut BytesMut) -> io::Result<usize> {
    if buf.capacity() - buf.len() < BODY_READ / 2 {
        buf.reserve(BODY_READ);
    }
    io.read_buf(buf).await
}
