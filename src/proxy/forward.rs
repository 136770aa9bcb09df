//! Phase 3, forward: the request encoded for the backend, then sent — waiting for a
//! `max_conns` slot, on a pooled or fresh connection — and retried on another backend when
//! the chosen one cannot take it.

use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderValue};
use http::Request;

use super::error::ProxyError;
use super::headers;
use super::upstream::{self, Exchange, InFlight, Interim, Outgoing, ReqBody, Target};
use super::{ConnInfo, Trace};
use crate::affinity::{self, client_ip, Decision};
use crate::config::ProxySettings;
use crate::h1::BodyEncoder;
use crate::runtime::Pool;

/// The backend that answered, its response head, and its in-flight count (and
/// `max_conns` slot), held until the response body ends.
pub struct Forwarded {
    pub backend: usize,
    pub exchange: Exchange,
    pub in_flight: InFlight,
}

/// How the request reaches the backend: who the client is, which host it asked for,
/// whether it upgrades, and whether tether's own cookie is to be stripped.
pub struct Route<'a> {
    pub conn: ConnInfo,
    pub host: Option<&'a HeaderValue>,
    pub upgrade: bool,
    pub own_cookie: Option<&'a str>,
}

/// The request encoded for the backend, and what a replay on another backend needs.
pub struct Prepared {
    first: Outgoing,
    /// A bodiless idempotent request's head and encoder, kept to replay it if its backend
    /// fails before answering (a backend killed mid-request).
    replay: Option<(Bytes, BodyEncoder)>,
}

/// Encodes the request for the backend. Not async, so the request and its parts never
/// take room in the request's future.
pub fn prepare(
    route: Route<'_>,
    req: Request<ReqBody>,
    interim: Option<Interim>,
) -> Result<Prepared, ProxyError> {
    let replayable = replayable(&req);
    let (parts, body) = req.into_parts();
    let mut peer = [0u8; 48];
    let forwarding = headers::Forwarding {
        peer: client_ip::ip_text(route.conn.peer.ip().to_canonical(), &mut peer),
        tls: route.conn.tls,
        host: route.host,
        upgrade: route.upgrade,
        own_cookie: route.own_cookie,
    };
    let first = outgoing(&parts, body, &forwarding, interim)?;
    let replay = replayable.then(|| (first.head.clone(), first.encoder.clone()));
    Ok(Prepared { first, replay })
}

/// Sends the request to `decision`'s backend, moving on (by `affinity::retry`) when a
/// backend cannot be reached or fails before answering a request that can be replayed.
pub async fn forward(
    pool: &Pool,
    settings: &ProxySettings,
    prepared: Prepared,
    decision: &mut Decision,
    trace: &mut Trace,
) -> Result<Forwarded, ProxyError> {
    let Prepared { first, replay } = prepared;
    let head_request = first.head_request;
    let mut req = Some(first);
    let max_head = settings.max_header_bytes.max(8192);

    // Connect first, so a connect failure keeps the request (and its body) for the next
    // candidate.
    let mut tried: Vec<usize> = Vec::new();
    loop {
        let b = &pool.backends[decision.backend];
        trace.backend = Some(decision.backend);
        trace.affinity = Some(decision.outcome);
        // max_conns: wait for a slot on this backend (a 503 under it if none comes).
        let slot = if b.max_conns == 0 {
            None
        } else {
            Some(Box::pin(crate::queue::acquire(&b.shared, pool.queue)).await?)
        };
        let in_flight = InFlight::new(b.shared.clone(), pool.shared.clone(), slot);
        let target = target(pool, decision.backend, settings.connect_timeout);
        let mut conn = upstream::checkout(&target).await;
        let mut stale_retries = 0;
        let failure = loop {
            let (backend_conn, reused) = match conn {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(pool = %pool.name, backend = %b.id, error = %e, "backend connect failed");
                    b.shared.stats.count_error(e.kind());
                    if b.shared
                        .note_connect_failure(pool.passive.max_fails, pool.passive.fail_timeout)
                    {
                        tracing::warn!(pool = %pool.name, backend = %b.id, "passive check: backend is down for fail_timeout");
                    }
                    break e;
                }
            };
            b.shared.note_connect_success();
            let Some(r) = req.take().or_else(|| {
                replay.as_ref().map(|(head, encoder)| Outgoing {
                    head: head.clone(),
                    encoder: encoder.clone(),
                    body: ReqBody::Empty,
                    head_request,
                    interim: None,
                })
            }) else {
                return Err(ProxyError::BadRequest);
            };
            match upstream::send(backend_conn, r, settings.response_timeout, max_head).await {
                Ok(exchange) => {
                    if decision.pinned_to_draining {
                        b.shared.note_pinned_while_draining();
                    }
                    b.shared.requests.fetch_add(1, Ordering::Relaxed);
                    return Ok(Forwarded {
                        backend: decision.backend,
                        exchange,
                        in_flight,
                    });
                }
                // The pooled connection was closed before the request was written: the
                // request is intact; try a fresh connection to the same backend.
                Err(f) if f.unsent.is_some() && stale_retries < 2 => {
                    stale_retries += 1;
                    req = f.unsent;
                    conn = Box::pin(upstream::connect(&target))
                        .await
                        .map(|c| (c, false));
                }
                // A reused connection failed before any response (the backend closed it as
                // we sent: a keep-alive race). A replayable request goes once more to the
                // same backend on a fresh connection, so a healthy backend keeps its
                // sessions; if the backend is really gone, that connect fails and the
                // request moves on.
                Err(f)
                    if reused
                        && stale_retries < 2
                        && replay.is_some()
                        && f.error.is_replayable_failure() =>
                {
                    stale_retries += 1;
                    tracing::debug!(pool = %pool.name, backend = %b.id, error = %f.error, "reused connection failed; retrying on a fresh one");
                    conn = Box::pin(upstream::connect(&target))
                        .await
                        .map(|c| (c, false));
                }
                Err(f) => {
                    b.shared.stats.count_error(f.error.kind());
                    tracing::warn!(pool = %pool.name, backend = %b.id, error = %f.error, "backend request failed");
                    if f.unsent.is_some() {
                        req = f.unsent;
                    } else if !(f.error.is_replayable_failure() && replay.is_some()) {
                        return Err(f.error.into());
                    }
                    break f.error;
                }
            }
        };
        tried.push(decision.backend);
        if tried.len() > settings.retries as usize
            || affinity::retry(pool, decision, &tried).is_none()
        {
            return Err(failure.into());
        }
        pool.shared.retries.fetch_add(1, Ordering::Relaxed);
    }
}

/// Encodes the request for the backend (HTTP/1.1, origin-form): one `Content-Length`
/// (differing values are a 400), or re-chunked when the length is unknown; no body, no
/// length (or `Content-Length: 0` where one is expected).
fn outgoing(
    parts: &http::request::Parts,
    body: ReqBody,
    f: &headers::Forwarding<'_>,
    interim: Option<Interim>,
) -> Result<Outgoing, ProxyError> {
    // A request without a body (most) needs no look at its length headers.
    let framing = if body.is_end_stream() {
        crate::h1::Framing::Empty
    } else {
        match crate::h1::content_length(&parts.headers).map_err(|_| ProxyError::BadRequest)? {
            Some(n) => crate::h1::Framing::Length(n),
            None => crate::h1::Framing::Chunked,
        }
    };
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut head = BytesMut::new();
    let encoder =
        headers::write_request_head(&parts.method, target, &parts.headers, f, framing, &mut head);
    Ok(Outgoing {
        head: head.freeze(),
        encoder,
        body,
        head_request: parts.method == http::Method::HEAD,
        interim,
    })
}

/// GET, HEAD and OPTIONS without a body, not upgrading.
fn replayable(req: &Request<ReqBody>) -> bool {
    matches!(
        *req.method(),
        http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
    ) && req.body().is_end_stream()
        && !req.headers().contains_key(header::UPGRADE)
}

fn target(pool: &Pool, i: usize, connect_timeout: std::time::Duration) -> Target<'_> {
    let b = &pool.backends[i];
    Target {
        address: &b.address,
        socket_addr: b.socket_addr,
        shared: &b.shared,
        connect_timeout,
        tls: b.tls.as_ref(),
    }
}
