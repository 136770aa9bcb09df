//! `tether demo`: three built-in backends that name themselves and count visits per
//! session, behind a cookie-affinity proxy on 127.0.0.1:8080.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;
use tokio::net::TcpListener;

use crate::config::Config;

/// Starts one demo backend on 127.0.0.1 (ephemeral port); it runs until the process ends.
pub async fn spawn_backend(name: &'static str) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let visits: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let visits = visits.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let visits = visits.clone();
                    async move { Ok::<_, std::convert::Infallible>(answer(name, &visits, &req)) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

fn answer(
    name: &str,
    visits: &Mutex<HashMap<String, u64>>,
    req: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    let existing = req
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|p| p.trim().strip_prefix("demo_session=").map(str::to_string));
    let (session, new) = match existing {
        Some(s) => (s, false),
        None => (format!("{:08x}", fastrand::u32(..)), true),
    };
    let count = {
        let mut v = visits.lock();
        let c = v.entry(session.clone()).or_insert(0);
        *c += 1;
        *c
    };
    let body = format!("{name}: visit {count} of session {session}\n");
    let mut res = Response::new(Full::new(Bytes::from(body)));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if new {
        if let Ok(v) = header::HeaderValue::from_str(&format!("demo_session={session}; Path=/")) {
            res.headers_mut().insert(header::SET_COOKIE, v);
        }
    }
    res
}

/// The demo's config: one cookie-affinity pool of the three backends.
pub fn config(
    listen: SocketAddr,
    backends: &[SocketAddr],
) -> Result<Config, crate::config::ConfigError> {
    let mut text = format!(
        "[listen]\nhttp = [\"{listen}\"]\n\n[proxy]\n# Lets curl simulate other clients with X-Forwarded-For.\ntrusted_proxies = [\"127.0.0.0/8\"]\n\n[pools.demo]\naffinity = \"cookie\"\n\n[pools.demo.cookie]\nname = \"TETHER\"\n"
    );
    for (i, b) in backends.iter().enumerate() {
        text.push_str(&format!(
            "\n[[pools.demo.backends]]\nid = \"demo-{}\"\naddress = \"{b}\"\n",
            i + 1
        ));
    }
    Config::parse(&text, "(demo)")
}
