//! The proxy service, one request at a time, in the order a request meets its phases:
//! [`route`] (the pool) → [`choose`] (affinity and balancer pick the backend) → [`forward`]
//! (the send, with queueing and retries) → [`decorate`] (cookie, learned sessions, upgrades)
//! → `account` (counters, access log, the response body's finisher).

pub mod body;
pub mod choose;
pub mod decorate;
pub mod error;
pub mod forward;
pub mod headers;
pub mod route;
pub mod tunnel;
pub mod upstream;

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use http::header;
use http::{Request, Response, Version};
use tokio::sync::oneshot;

use crate::access_log::Record;
use crate::affinity;
use crate::app::App;
use crate::config::AccessLog;
use crate::runtime::Snapshot;
use body::{Finish, ProxyBody};
use error::ProxyError;
use route::Routed;
pub use tunnel::{run_tunnel, Tunnel, TunnelGuard};
use upstream::{Interim, ReqBody};

/// What the proxy knows about the client connection a request came on.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
}

/// What the client's HTTP/1.1 connection offers a request besides the request itself
/// (HTTP/2 requests get neither).
#[derive(Default)]
pub struct ClientHooks {
    /// Where interim (1xx) responses go: HTTP/1.1 clients only (RFC 9110 §15.2).
    pub interim: Option<Interim>,
    /// Where a 101's backend connection goes, for a request that asks to upgrade.
    pub upgrade: Option<oneshot::Sender<Tunnel>>,
}

/// Where a request went, filled in by the phases as they learn it; counted and logged by
/// `account` whatever the outcome.
#[derive(Default)]
pub struct Trace {
    pool: Option<usize>,
    backend: Option<usize>,
    affinity: Option<affinity::Outcome>,
    client: Option<IpAddr>,
}

/// The future of [`handle`], boxed: it is large (several KB across its await points), and
/// the connection code that awaits it would otherwise grow by that much and copy it.
pub type Handling = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>,
>;

/// [`handle`], boxed once.
pub fn handle_boxed(
    app: Arc<App>,
    conn: ConnInfo,
    req: Request<ReqBody>,
    hooks: ClientHooks,
) -> Handling {
    Box::pin(handle(app, conn, req, hooks))
}

/// Serves one request; never fails (errors become responses).
pub async fn handle(
    app: Arc<App>,
    conn: ConnInfo,
    req: Request<ReqBody>,
    hooks: ClientHooks,
) -> Result<Response<ProxyBody>, Infallible> {
    let start = Instant::now();
    // One snapshot for the whole request, whatever reloads happen meanwhile.
    let snap = app.snapshot();
    let log = (snap.config.log.access != AccessLog::Off)
        .then(|| Record::of_request(snap.config.log.access, conn.peer.ip(), &req));
    let mut trace = Trace::default();
    // Boxed: awaited inline, rustc lays the ~2.5 KB proxy future out next to a second copy
    // of the request's state, doubling handle's size and the bytes moved per request.
    let res = match Box::pin(proxy(&app, &snap, conn, req, hooks, &mut trace)).await {
        Ok(res) => res,
        Err(e) => {
            tracing::debug!(error = %e, client = %conn.peer, "answered by the proxy");
            e.into_response()
        }
    };
    Ok(account(&app, &snap, &trace, start, log, res))
}

/// The phases from route to decorate; an error ends the request with the proxy's answer.
async fn proxy(
    app: &App,
    snap: &Snapshot,
    conn: ConnInfo,
    req: Request<ReqBody>,
    hooks: ClientHooks,
    trace: &mut Trace,
) -> Result<Response<ProxyBody>, ProxyError> {
    let (pool, host) = match route::route(snap, conn, &req)? {
        Routed::Answer(res) => return Ok(*res),
        Routed::Pool { index, host } => {
            trace.pool = Some(index);
            (&snap.pools[index], host)
        }
    };
    let settings = &snap.config.proxy;
    let mut choice = choose::choose(pool, settings, conn, &req, trace).await?;
    let upgrade = is_upgrade(&req);
    let route = forward::Route {
        conn,
        host: host.as_ref(),
        upgrade,
        // Our cookie is not the backend's business.
        own_cookie: pool
            .cookie
            .as_ref()
            .map(|c| c.name())
            .filter(|_| choice.own_cookie),
    };
    let prepared = forward::prepare(route, req, hooks.interim)?;
    let fwd = forward::forward(pool, settings, prepared, &mut choice.decision, trace).await?;
    trace.backend = Some(fwd.backend);
    trace.affinity = Some(choice.decision.outcome);
    // Only tether's HTTP/1.1 loop offers upgrades (HTTP/2 requests never ask for one).
    let tunnel_to = hooks.upgrade.filter(|_| upgrade);
    decorate::decorate(app, pool, conn, &choice, fwd, tunnel_to)
}

/// Phase 5, account: counts the response against its backend, pool or the unrouted, and
/// hands the response body what it records when it ends (duration, access log line).
fn account(
    app: &App,
    snap: &Snapshot,
    trace: &Trace,
    start: Instant,
    log: Option<Box<Record>>,
    mut res: Response<ProxyBody>,
) -> Response<ProxyBody> {
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
        r.affinity = trace.affinity;
        (r, app.access_log.clone())
    });
    if log.is_some() || backend.is_some() {
        res.body_mut().set_finish(Finish {
            start,
            backend: backend.map(|b| b.shared.clone()),
            log,
            bytes: 0,
        });
    }
    res
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

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod future_size {
    fn size_of_future<A, B, C, D, F>(_: impl Fn(A, B, C, D) -> F) -> usize {
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
