//! Phase 4, decorate: the backend's response made the client's — the affinity cookie when
//! a pin was made or moved, sessions learned from its `Set-Cookie`, and a 101's connection
//! handed over as a tunnel.

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use tokio::sync::oneshot;

use super::body::ProxyBody;
use super::choose::Choice;
use super::error::ProxyError;
use super::forward::Forwarded;
use super::headers;
use super::tunnel::{Tunnel, TunnelGuard};
use super::upstream::{Exchange, UpstreamBody, UpstreamError};
use super::{unix_now, ConnInfo};
use crate::affinity::{self, Decision};
use crate::app::App;
use crate::config::Affinity;
use crate::runtime::{Backend, Pool};

/// The client's response to `fwd`. `upgrade` is where a 101's backend connection goes, when
/// the client asked to upgrade.
pub fn decorate(
    app: &App,
    pool: &Pool,
    conn: ConnInfo,
    choice: &Choice,
    fwd: Forwarded,
    upgrade: Option<oneshot::Sender<Tunnel>>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let backend = &pool.backends[fwd.backend];
    affinity::remember::note(pool, &choice.decision, backend);
    if fwd.exchange.head.status == StatusCode::SWITCHING_PROTOCOLS {
        let Some(upgrade) = upgrade else {
            // A 101 to a request that did not ask for one is a broken backend.
            return Err(UpstreamError::Protocol(
                "101 Switching Protocols to a request that did not ask to upgrade",
            )
            .into());
        };
        let Exchange {
            head,
            conn: backend_conn,
        } = fwd.exchange;
        let websocket = head
            .headers
            .get(header::UPGRADE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
        let _ = upgrade.send(Tunnel {
            backend: backend_conn,
            in_flight: fwd.in_flight,
            guard: TunnelGuard {
                close: app.close_tunnels.subscribe(),
                open: app.tunnels.clone(),
            },
            websocket,
        });
        let mut res = Response::new(ProxyBody::empty());
        *res.status_mut() = head.status;
        // The head came without hop-by-hop headers (h1::parse_response); Upgrade stayed.
        *res.headers_mut() = head.headers;
        res.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        add_cookie(pool, &choice.decision, conn, res.headers_mut());
        return Ok(res);
    }
    let (mut parts, body) = UpstreamBody::new(fwd.exchange, backend.shared.clone(), fwd.in_flight);
    add_cookie(pool, &choice.decision, conn, &mut parts.headers);
    learn_from_response(
        pool,
        backend,
        choice.learn_session.as_deref(),
        &parts.headers,
    );
    Ok(Response::from_parts(parts, ProxyBody::upstream(body)))
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
    backend: &Backend,
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
