//! The proxy service: route a request to a pool, choose a backend, forward it with retries on
//! connect failures, stream the response back, and tunnel upgrades.

pub mod body;
pub mod error;
pub mod headers;
pub mod upstream;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};

use crate::access_log::Record;
use crate::affinity::{self, client_ip, cookie, Decision, RequestKeys};
use crate::app::App;
use crate::config::{AccessLog, Affinity};
use crate::runtime::{Pool, Snapshot};
use body::{Finish, ProxyBody};
use error::ProxyError;
use upstream::{InFlight, Outgoing, ReqBody, Target, UpstreamBody, UpstreamError};

/// What the proxy knows about the client connection a request came on.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
}

/// Where a request went, filled in as `proxy` learns it; counted and logged by `handle`.
#[derive(Default)]
struct Trace {
    pool: Option<usize>,
    backend: Option<usize>,
    affinity: Option<affinity::Outcome>,
    client: Option<std::net::IpAddr>,
}

/// The future of [`handle`], boxed: it is large (several KB across its await points), and
/// the connection code that awaits it would otherwise grow by that much and copy it.
pub type Handling = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>,
>;

/// [`handle`], boxed once.
pub fn handle_boxed(app: Arc<App>, conn: ConnInfo, req: Request<ReqBody>) -> Handling {
    Box::pin(handle(app, conn, req))
}

/// Serves one request; never fails (errors become responses).
pub async fn handle(
    app: Arc<App>,
    conn: ConnInfo,
    req: Request<ReqBody>,
) -> Result<Response<ProxyBody>, Infallible> {
    let start = Instant::now();
    // One snapshot for the whole request, whatever reloads happen meanwhile.
    let snap = app.snapshot();
    let format = snap.config.log.access;
    let log = (format != AccessLog::Off).then(|| {
        Box::new(Record {
            format,
            client: conn.peer.ip().to_canonical(),
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            referer: req.headers().get(header::REFERER).cloned(),
            user_agent: req.headers().get(header::USER_AGENT).cloned(),
            status: 0,
            pool: None,
            backend: None,
            affinity: None,
        })
    });
    let mut trace = Trace::default();
    // Boxed: awaited inline, rustc lays the ~2.5 KB proxy future out next to a second copy
    // of the request's state, doubling handle's size and the bytes moved per request.
    let mut res = match Box::pin(proxy(&app, &snap, conn, req, &mut trace)).await {
        Ok(res) => res,
        Err(e) => {
            tracing::debug!(error = %e, client = %conn.peer, "answered by the proxy");
            e.into_response()
        }
    };
    let status = res.status().as_u16();
    let pool = trace.pool.map(|p| &snap.pools[p]);
    let backend = trace.backend.and_then(|b| pool.map(|p| &p.backends[b]));
    match (pool, backend) {
        (_, Some(b)) => b.shared.stats.count_status(status),
        (Some(p), None) => {
            p.shared.no_backend.fetch_add(1, Ordering::Relaxed);
        }
        (None, None) => {
            app.unrouted.fetch_add(1, Ordering::Relaxed);
        }
    }
    if let (Some(p), Some(o)) = (pool, trace.affinity) {
        p.shared.affinity[o as usize].fetch_add(1, Ordering::Relaxed);
    }
    let log = log.map(|mut r| {
        r.status = status;
        r.client = trace.client.unwrap_or(r.client);
        r.pool = pool.map(|p| p.name.clone());
        r.backend = backend.map(|b| b.id.clone());
        r.affinity = trace.affinity.map(affinity::Outcome::as_str);
        r
    });
    if log.is_some() || backend.is_some() {
        res.body_mut().set_finish(Finish {
            start,
            backend: backend.map(|b| b.shared.clone()),
            log,
            app: app.clone(),
            bytes: 0,
        });
    }
    Ok(res)
}

async fn proxy(
    app: &App,
    snap: &Snapshot,
    conn: ConnInfo,
    mut req: Request<ReqBody>,
    trace: &mut Trace,
) -> Result<Response<ProxyBody>, ProxyError> {
    let host = request_host(&req);
    let pool_index = snap
        .route(
            host.as_ref().and_then(|h| h.to_str().ok()).map(strip_port),
            req.uri().path(),
        )
        .ok_or(ProxyError::NoRoute)?;
    trace.pool = Some(pool_index);
    let pool = &snap.pools[pool_index];
    if pool.redirect_http && !conn.tls {
        return Ok(redirect_to_https(snap, host.as_ref(), req.uri()));
    }
    let settings = &snap.config.proxy;

    let client = client_ip::client_ip(
        conn.peer.ip(),
        req.headers()
            .get_all("x-forwarded-for")
            .iter()
            .map(HeaderValue::as_bytes),
        &settings.trusted_proxies,
    );
    let cookie_name = pool.cookie.as_ref().map(|c| c.name());
    let cookie_value = cookie_name.and_then(|name| {
        cookie::find_cookie(
            req.headers()
                .get_all(header::COOKIE)
                .iter()
                .map(HeaderValue::as_bytes),
            name,
        )
    });
    trace.client = Some(client);
    // route and learn: the application's own session id.
    let session: Option<&[u8]> = match (&pool.route_cfg, &pool.learn_cfg) {
        (Some(r), _) => {
            let c = cookie::find_cookie(
                req.headers()
                    .get_all(header::COOKIE)
                    .iter()
                    .map(HeaderValue::as_bytes),
                &r.cookie,
            );
            affinity::route::session_id(req.uri().path(), c, &r.url_param)
        }
        (None, Some(l)) => cookie::find_cookie(
            req.headers()
                .get_all(header::COOKIE)
                .iter()
                .map(HeaderValue::as_bytes),
            &l.cookie,
        ),
        _ => None,
    };
    // Kept (only in learn mode) to forget the session if the response deletes it.
    let learn_session: Option<Box<[u8]>> =
        session.filter(|_| pool.learned.is_some()).map(Into::into);
    // learn with a shared store: a session this instance does not know may be known there.
    if let (Some(v), Some(table)) = (session, &pool.learned) {
        if table.has_store() && table.lookup(v).is_none() {
            Box::pin(table.lookup_shared(v)).await;
        }
    }
    let keys = RequestKeys {
        session,
        client_ip: client,
        cookie: cookie_value,
        header: pool
            .header
            .as_ref()
            .and_then(|h| req.headers().get(h))
            .map(HeaderValue::as_bytes),
        now: unix_now(),
    };
    if pool.remembered.is_some() {
        Box::pin(affinity::remember::recall_shared(pool, &keys)).await;
    }
    let (mut decision, _) = affinity::decide(pool, &keys).ok_or(ProxyError::NoBackend)?;
    if pool.limited {
        affinity::skip_full(pool, &mut decision);
    }
    trace.affinity = Some(decision.outcome);
    // Our cookie is not the backend's business.
    let own_cookie = cookie_name.filter(|_| cookie_value.is_some());

    let upgrade = is_upgrade(&req);
    // Only tether's HTTP/1.1 loop offers upgrades (HTTP/2 requests never ask for one).
    let client_upgrade = req
        .extensions_mut()
        .remove::<UpgradeSlot>()
        .filter(|_| upgrade);
    let interim = req.extensions_mut().remove::<upstream::Interim>();

    // A bodiless idempotent request can be replayed on another backend if its backend
    // fails before answering (a backend killed mid-request); its encoded head is kept.
    let replayable = replayable(&req);
    let (parts, body) = req.into_parts();
    let mut peer = [0u8; 48];
    let forwarding = headers::Forwarding {
        peer: client_ip::ip_text(conn.peer.ip().to_canonical(), &mut peer),
        tls: conn.tls,
        host: host.as_ref(),
        upgrade,
        own_cookie,
    };
    let first = outgoing(&parts, body, &forwarding, interim)?;
    drop(parts);
    let replay = replayable.then(|| (first.head.clone(), first.encoder.clone()));
    let head_request = first.head_request;
    let mut req = Some(first);
    let max_head = settings.max_header_bytes.max(8192);

    // Connect first, so a connect failure keeps the request (and its body) for the next
    // candidate.
    let mut tried: Vec<usize> = Vec::new();
    let (backend_index, exchange, in_flight) = 'attempts: loop {
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
                    break 'attempts (decision.backend, exchange, in_flight);
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
            || affinity::retry(pool, &mut decision, &tried).is_none()
        {
            return Err(failure.into());
        }
        pool.shared.retries.fetch_add(1, Ordering::Relaxed);
    };
    trace.backend = Some(backend_index);
    trace.affinity = Some(decision.outcome);
    let backend = &pool.backends[backend_index];
    affinity::remember::note(pool, &decision, backend);

    if exchange.head.status == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            // A 101 to a request that did not ask for one is a broken backend.
            return Err(UpstreamError::Protocol(
                "101 Switching Protocols to a request that did not ask to upgrade",
            )
            .into());
        };
        let upstream::Exchange {
            head,
            conn: backend_conn,
        } = exchange;
        let websocket = head
            .headers
            .get(header::UPGRADE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
        let tunnel = Tunnel {
            backend: backend_conn,
            in_flight,
            guard: TunnelGuard {
                close: app.close_tunnels.subscribe(),
                open: app.tunnels.clone(),
            },
            websocket,
        };
        let tx = client_upgrade.0.lock().take();
        if let Some(tx) = tx {
            let _ = tx.send(tunnel);
        }
        let mut res = Response::new(ProxyBody::empty());
        *res.status_mut() = head.status;
        // The head came without hop-by-hop headers (h1::parse_response); Upgrade stayed.
        *res.headers_mut() = head.headers;
        res.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        add_cookie(pool, &decision, conn, res.headers_mut());
        return Ok(res);
    }
    let (mut parts, body) = UpstreamBody::new(exchange, backend.shared.clone(), in_flight);
    add_cookie(pool, &decision, conn, &mut parts.headers);
    learn_from_response(pool, backend, learn_session.as_deref(), &parts.headers);
    Ok(Response::from_parts(parts, ProxyBody::upstream(body)))
}

/// Encodes the request for the backend (HTTP/1.1, origin-form): one `Content-Length`
/// (differing values are a 400), or re-chunked when the length is unknown.
fn outgoing(
    parts: &http::request::Parts,
    body: ReqBody,
    f: &headers::Forwarding<'_>,
    interim: Option<upstream::Interim>,
) -> Result<Outgoing, ProxyError> {
    let length = crate::h1::content_length(&parts.headers).map_err(|_| ProxyError::BadRequest)?;
    let framing = match length {
        _ if body.is_end_stream() => crate::h1::Framing::Empty,
        Some(n) => crate::h1::Framing::Length(n),
        None => crate::h1::Framing::Chunked,
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

/// `redirect_http`: 308 to the same host and path on the first https listener.
fn redirect_to_https(
    snap: &Snapshot,
    host: Option<&HeaderValue>,
    uri: &Uri,
) -> Response<ProxyBody> {
    let name = host
        .and_then(|h| h.to_str().ok())
        .map(strip_port)
        .unwrap_or("localhost");
    let name = if name.contains(':') {
        format!("[{name}]")
    } else {
        name.to_string()
    };
    let port = snap.config.listen.https.first().map_or(443, |a| a.port());
    let authority = if port == 443 {
        name
    } else {
        format!("{name}:{port}")
    };
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut res = Response::new(ProxyBody::full(&b"308 permanent redirect to https\n"[..]));
    *res.status_mut() = StatusCode::PERMANENT_REDIRECT;
    if let Ok(v) = HeaderValue::from_str(&format!("https://{authority}{path}")) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
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

/// The host the client asked for: the URI authority (HTTP/2, absolute-form), else `Host`.
fn request_host(req: &Request<ReqBody>) -> Option<HeaderValue> {
    match req.uri().authority() {
        Some(a) => HeaderValue::from_str(a.as_str()).ok(),
        None => req.headers().get(header::HOST).cloned(),
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split(']').next().map(|h| &h[1..]).unwrap_or(host);
    }
    match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

fn is_upgrade(req: &Request<ReqBody>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

/// Adds the affinity cookie when the decision created or changed a pin.
fn add_cookie(pool: &Pool, d: &Decision, conn: ConnInfo, h: &mut http::HeaderMap) {
    let (Some(codec), Some(client_key)) = (&pool.cookie, d.issue_cookie) else {
        return;
    };
    if pool.affinity != Affinity::Cookie {
        return;
    }
    let value = codec.encode(client_key, pool.backends[d.backend].token, unix_now());
    if let Ok(v) = HeaderValue::from_str(&codec.set_cookie(&value, conn.tls)) {
        h.append(header::SET_COOKIE, v);
        headers::make_private(h);
    }
}

/// learn affinity: remember the sessions the backend's response sets; a response that
/// deletes the cookie ends the session the request carried.
fn learn_from_response(
    pool: &Pool,
    backend: &crate::runtime::Backend,
    request_session: Option<&[u8]>,
    h: &http::HeaderMap,
) {
    let (Some(table), Some(cfg)) = (&pool.learned, &pool.learn_cfg) else {
        return;
    };
    let set = h
        .get_all(header::SET_COOKIE)
        .iter()
        .map(HeaderValue::as_bytes);
    for (value, deleted) in affinity::learn::set_cookie_values(set, &cfg.cookie) {
        if deleted {
            table.forget(value);
            if let Some(s) = request_session {
                table.forget(s);
            }
        } else {
            table.insert(value, &backend.id);
        }
    }
}

/// What a tunnel needs to close cleanly at the shutdown deadline. It holds `close` for its
/// whole life: shutdown knows the last tunnel has ended when every receiver is gone.
#[derive(Clone)]
pub struct TunnelGuard {
    pub close: tokio::sync::watch::Receiver<bool>,
    pub open: Arc<std::sync::atomic::AtomicU64>,
}

/// An upgraded backend connection, handed to whoever owns the client's socket.
pub struct Tunnel {
    pub backend: upstream::Conn,
    pub in_flight: InFlight,
    pub guard: TunnelGuard,
    pub websocket: bool,
}

/// Put in a request's extensions by the HTTP/1.1 connection loop: where a 101 response's
/// backend connection goes.
#[derive(Clone)]
pub struct UpgradeSlot(pub Arc<parking_lot::Mutex<Option<tokio::sync::oneshot::Sender<Tunnel>>>>);

/// Copies bytes both ways between an upgraded client and backend until either side closes,
/// or until shutdown closes it: a WebSocket then gets a close frame (1001, going away) on
/// both sides rather than a reset. `client_early` are bytes the client sent after its
/// upgrade request, already read.
pub async fn run_tunnel<C>(mut client: C, client_early: Bytes, t: Tunnel)
where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt;
    let Tunnel {
        backend,
        in_flight,
        guard,
        websocket,
    } = t;
    let _in_flight = in_flight;
    guard.open.fetch_add(1, Ordering::Relaxed);
    let upstream::Conn {
        io: mut backend,
        buf: early,
    } = backend;
    // Bytes the backend sent right after its 101 belong to the client, and the reverse.
    if (!early.is_empty() && client.write_all(&early).await.is_err())
        || (!client_early.is_empty() && backend.write_all(&client_early).await.is_err())
    {
        guard.open.fetch_sub(1, Ordering::Relaxed);
        return;
    }
    let mut close = guard.close;
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut client, &mut backend) => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "tunnel closed with an error");
            }
        }
        _ = async { close.wait_for(|c| *c).await.is_ok() } => {
            if websocket {
                // Server→client frames are unmasked; client→server frames must be masked.
                let _ = client.write_all(&[0x88, 0x02, 0x03, 0xE9]).await;
                let mask = fastrand::u32(..).to_be_bytes();
                let payload = [0x03 ^ mask[0], 0xE9 ^ mask[1]];
                let frame = [0x88, 0x82, mask[0], mask[1], mask[2], mask[3], payload[0], payload[1]];
                let _ = backend.write_all(&frame).await;
            }
            let _ = client.shutdown().await;
            let _ = backend.shutdown().await;
        }
    }
    guard.open.fetch_sub(1, Ordering::Relaxed);
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_port_handles_names_and_v6() {
        assert_eq!(strip_port("shop.example.com:8080"), "shop.example.com");
        assert_eq!(strip_port("shop.example.com"), "shop.example.com");
        assert_eq!(strip_port("[::1]:80"), "::1");
    }
}
#[cfg(test)]
mod future_size {
    fn size_of_future<A, B, C, F>(_: impl Fn(A, B, C) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Futures are moved when awaited; the connection code awaits the boxed one, so its
    /// own future stays small whatever `handle` holds.
    #[test]
    fn the_boxed_request_future_is_a_pointer() {
        assert!(
            size_of_future(super::handle) > 256,
            "no need to box any more?"
        );
        assert_eq!(
            size_of_future(super::handle_boxed),
            std::mem::size_of::<Box<dyn std::future::Future<Output = ()>>>()
        );
    }
}
