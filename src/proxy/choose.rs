//! Phase 2, choose: the backend for a request — its pin or key (affinity), placed by the
//! pool's balancer when it has none — from the client address and one scan of `Cookie`.

use std::net::IpAddr;

use http::header::{self, HeaderValue};
use http::Request;

use super::error::ProxyError;
use super::upstream::ReqBody;
use super::{unix_now, ConnInfo, Trace};
use crate::affinity::{self, client_ip, cookie, Decision, RequestKeys};
use crate::config::ProxySettings;
use crate::runtime::Pool;

/// What choosing decided, and what the later phases need from it.
pub struct Choice {
    pub decision: Decision,
    /// tether's own cookie came with the request (it is not forwarded).
    pub own_cookie: bool,
    /// learn affinity: the session the request carried, forgotten if the response deletes
    /// its cookie.
    pub learn_session: Option<Box<[u8]>>,
}

/// Decides where the request goes. Waits only to ask a shared session store about a
/// session or key this instance does not know.
pub async fn choose(
    pool: &Pool,
    settings: &ProxySettings,
    conn: ConnInfo,
    req: &Request<ReqBody>,
    trace: &mut Trace,
) -> Result<Choice, ProxyError> {
    // X-Forwarded-For counts only from trusted proxies: without any, not even looked up.
    let client: IpAddr = if settings.trusted_proxies.is_empty() {
        conn.peer.ip().to_canonical()
    } else {
        client_ip::client_ip(
            conn.peer.ip(),
            req.headers()
                .get_all(&super::headers::X_FORWARDED_FOR)
                .iter()
                .map(HeaderValue::as_bytes),
            &settings.trusted_proxies,
        )
    };
    trace.client = Some(client);
    // route and learn read the application's own session cookie.
    let app_cookie = match (&pool.route_cfg, &pool.learn_cfg) {
        (Some(r), _) => Some(r.cookie.as_str()),
        (None, Some(l)) => Some(l.cookie.as_str()),
        _ => None,
    };
    let [own, app] = cookie::find_cookies(
        req.headers()
            .get_all(header::COOKIE)
            .iter()
            .map(HeaderValue::as_bytes),
        [pool.cookie.as_ref().map(|c| c.name()), app_cookie],
    );
    let session: Option<&[u8]> = match &pool.route_cfg {
        Some(r) => affinity::route::session_id(req.uri().path(), app, &r.url_param),
        None => app,
    };
    let learn_session = session.filter(|_| pool.learned.is_some()).map(Into::into);
    // learn with a shared store: a session this instance does not know may be known there.
    if let (Some(v), Some(table)) = (session, &pool.learned) {
        if table.has_store() && table.lookup(v).is_none() {
            Box::pin(table.lookup_shared(v)).await;
        }
    }
    let keys = RequestKeys {
        session,
        client_ip: client,
        cookie: own,
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
        // max_conns: a new session does not start on a full backend.
        affinity::skip_full(pool, &mut decision);
    }
    trace.affinity = Some(decision.outcome);
    Ok(Choice {
        decision,
        own_cookie: own.is_some(),
        learn_session,
    })
}
