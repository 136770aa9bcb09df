//! The admin API (`[admin] listen`): liveness, status JSON, Prometheus metrics, and backend
//! drain/enable/disable; plus the small client `tether ctl` uses.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};

use crate::app::App;
use crate::config::AdminState;
use crate::reload::{Reloader, Trigger};

/// Serves the admin API until `shutdown` completes; `POST /reload` goes to `reloader`.
pub async fn serve(
    app: Arc<App>,
    reloader: Reloader,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            acc = listener.accept() => {
                let Ok((stream, _)) = acc else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let (app, reloader) = (app.clone(), reloader.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let (app, reloader) = (app.clone(), reloader.clone());
                        async move { Ok::<_, Infallible>(route(&app, &reloader, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
            _ = &mut shutdown => return,
        }
    }
}

fn reply(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r
}

fn json_reply(status: StatusCode, v: Value) -> Response<Full<Bytes>> {
    reply(status, "application/json", format!("{v}\n"))
}

fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    json_reply(status, json!({ "error": message }))
}

async fn route(
    app: &Arc<App>,
    reloader: &Reloader,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    // Ids may hold characters a URL path escapes (an IPv6 `[::1]:8080`).
    let decoded: Vec<String> = path
        .trim_matches('/')
        .split('/')
        .map(percent_decode)
        .collect();
    let segments: Vec<&str> = decoded.iter().map(String::as_str).collect();
    match (req.method(), segments.as_slice()) {
        (&Method::GET, [""]) => crate::dashboard::page(),
        (&Method::GET, ["history"]) => json_reply(StatusCode::OK, app.history.to_json()),
        (&Method::GET, ["healthz"]) => reply(StatusCode::OK, "text/plain", "ok\n"),
        (&Method::GET, ["status"]) => json_reply(StatusCode::OK, status(app)),
        (&Method::GET, ["metrics"]) => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            crate::metrics::render(app),
        ),
        (&Method::POST, ["reload"]) => {
            if !authorized(app, &req) {
                return error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
            }
            match reloader.reload(Trigger::Requested).await {
                Ok(generation) => json_reply(
                    StatusCode::OK,
                    json!({ "reloaded": true, "generation": generation }),
                ),
                Err(e) => json_reply(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    json!({ "reloaded": false, "errors": e.lines() }),
                ),
            }
        }
        (&Method::POST, ["pools", pool, "backends", id, action]) => {
            if !authorized(app, &req) {
                return error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
            }
            let state = match *action {
                "drain" => Some(AdminState::Drain),
                "disable" => Some(AdminState::Disabled),
                "enable" => None,
                _ => {
                    return error(
                        StatusCode::NOT_FOUND,
                        "unknown action (drain, enable, disable)",
                    )
                }
            };
            set_state(app, pool, id, state)
        }
        (&Method::GET, ["pools", pool, "backends", id]) => backend(app, pool, id),
        (_, [""] | ["history"] | ["healthz"] | ["status"] | ["metrics"] | ["reload"])
        | (_, ["pools", _, "backends", _])
        | (_, ["pools", _, "backends", _, _]) => {
            error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        _ => error(StatusCode::NOT_FOUND, "not found"),
    }
}

/// `%XX` escapes decoded (invalid ones kept as written); not valid UTF-8 → lossy.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).and_then(|c| hex(*c)),
            b.get(i + 2).and_then(|c| hex(*c)),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Escapes a path segment for the admin API (everything but unreserved characters and `:`).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.bytes() {
        if c.is_ascii_alphanumeric() || b"-._~:".contains(&c) {
            out.push(c as char);
        } else {
            out.push_str(&format!("%{c:02X}"));
        }
    }
    out
}

/// Bearer-token check for POST endpoints (always true without a token).
fn authorized(app: &App, req: &Request<Incoming>) -> bool {
    let snap = app.snapshot();
    let Some(token) = snap.config.admin.as_ref().and_then(|a| a.token.as_deref()) else {
        return true;
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    constant_time_eq(given.as_bytes(), token.as_bytes())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `enable` clears the override (back to the file's state, which may itself be `drain`):
/// an operator who enables a backend the file drains gets it active.
fn set_state(app: &App, pool: &str, id: &str, state: Option<AdminState>) -> Response<Full<Bytes>> {
    let snap = app.snapshot();
    let Some(p) = snap.pools.iter().find(|p| &*p.name == pool) else {
        return error(StatusCode::NOT_FOUND, "no such pool");
    };
    let Some(b) = p.backends.iter().find(|b| &*b.id == id) else {
        return error(StatusCode::NOT_FOUND, "no such backend in this pool");
    };
    b.shared
        .set_admin(Some(state.unwrap_or(AdminState::Active)));
    tracing::info!(
        pool,
        backend = id,
        state = b.shared.state().as_str(),
        "admin API changed backend state"
    );
    json_reply(
        StatusCode::OK,
        json!({ "pool": pool, "backend": id, "state": b.shared.state().as_str() }),
    )
}

fn rfc3339(unix_ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(unix_ms)).to_string()
}

/// One backend's `/status` entry.
fn backend_json(b: &crate::runtime::Backend) -> Value {
    let s = &b.shared;
    // `/status` showing a backend up starts its slow-start window at the latest.
    s.observe_up();
    let last = s.last_pinned_at_ms.load(Ordering::Relaxed);
    json!({
        "id": &*b.id,
        "address": &*b.address,
        "weight": b.weight,
        "state": s.state().as_str(),
        "healthy": s.healthy(),
        "in_flight": s.in_flight(),
        "requests": s.requests.load(Ordering::Relaxed),
        "pinned_while_draining": s.pinned_while_draining.load(Ordering::Relaxed),
        "last_pinned_at": (last > 0).then(|| rfc3339(last)),
        "queued": s.queue.queued(),
        "source": b.source.as_deref().unwrap_or("file"),
    })
}

/// `GET /pools/{pool}/backends/{id}`: that backend's `/status` entry.
fn backend(app: &App, pool: &str, id: &str) -> Response<Full<Bytes>> {
    let snap = app.snapshot();
    let Some(p) = snap.pools.iter().find(|p| &*p.name == pool) else {
        return error(StatusCode::NOT_FOUND, "no such pool");
    };
    match p.backends.iter().find(|b| &*b.id == id) {
        Some(b) => json_reply(StatusCode::OK, backend_json(b)),
        None => error(StatusCode::NOT_FOUND, "no such backend in this pool"),
    }
}

/// The `/status` document.
pub fn status(app: &App) -> Value {
    let snap = app.snapshot();
    let meta = app.meta().clone();
    let mut pools = serde_json::Map::new();
    for p in &snap.pools {
        let backends: Vec<Value> = p.backends.iter().map(backend_json).collect();
        let discover: Vec<Value> = app
            .discovery
            .view(&p.name)
            .into_iter()
            .map(|e| {
                json!({
                    "name": e.name,
                    "addresses": e.addresses,
                    "last_resolved_at": e.last_resolved_unix_ms.map(rfc3339),
                    "last_error": e.last_error,
                })
            })
            .collect();
        let mut pool =
            json!({ "affinity": p.affinity.as_str(), "backends": backends, "discover": discover });
        for (kind, table) in [("learn", &p.learned), ("remember", &p.remembered)] {
            if let Some(t) = table {
                pool[kind] = t.status();
            }
        }
        pools.insert(p.name.to_string(), pool);
    }
    let loaded_ms = meta
        .loaded_at
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    json!({
        "config": {
            "path": meta.path.map(|p| p.display().to_string()),
            "loaded_at": rfc3339(loaded_ms),
            "generation": meta.generation,
            "last_reload_error": meta.last_reload_error,
        },
        "pools": pools,
    })
}

/// Errors of `tether ctl`.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("invalid admin URL {0:?} (expected http://host:port)")]
    Url(String),
    #[error("cannot reach the admin API at {0}: {1}")]
    Connect(String, std::io::Error),
    #[error("admin API request failed: {0}")]
    Http(#[from] hyper::Error),
    #[error("admin API answered {status}: {body}")]
    Status { status: StatusCode, body: String },
}

/// One request to the admin API; returns the body of a 2xx answer.
pub async fn call(
    base: &str,
    method: Method,
    path: &str,
    token: Option<&str>,
) -> Result<String, CtlError> {
    let uri: http::Uri = base.parse().map_err(|_| CtlError::Url(base.to_string()))?;
    let authority = uri
        .authority()
        .filter(|_| uri.scheme_str() == Some("http"))
        .ok_or_else(|| CtlError::Url(base.to_string()))?
        .clone();
    let stream = TcpStream::connect(authority.as_str())
        .await
        .map_err(|e| CtlError::Connect(authority.to_string(), e))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, authority.as_str());
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    // Built from a parsed authority and a fixed path: cannot be invalid.
    #[allow(clippy::expect_used)]
    let req = req
        .body(http_body_util::Empty::<Bytes>::new())
        .expect("valid admin request");
    let res = sender.send_request(req).await?;
    let status = res.status();
    let body = res.into_body().collect().await?.to_bytes();
    let body = String::from_utf8_lossy(&body).into_owned();
    if status.is_success() {
        Ok(body)
    } else {
        Err(CtlError::Status { status, body })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_round_trip() {
        for id in ["[::1]:8080", "app1", "node-a.app.local:8081", "a b/c%"] {
            assert_eq!(percent_decode(&percent_encode(id)), id);
        }
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"secret-token", b"secret-token"));
        assert!(!constant_time_eq(b"secret-token", b"secret-tokeN"));
        assert!(!constant_time_eq(b"short", b"secret-token"));
    }
}
