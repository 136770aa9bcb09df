//! Test harness: in-process backends and proxies on 127.0.0.1:0, and small HTTP clients.
#![allow(dead_code)]
// Test code: a panic on a setup failure is how a test fails (see [lints] in Cargo.toml).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{header, HeaderMap, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Notify};
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;

use tether::app::App;
use tether::config::Config;

pub type Body = BoxBody<Bytes, Infallible>;

pub fn empty() -> Body {
    Empty::new().boxed()
}

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed()
}

static CHUNK: [u8; 65536] = [b'x'; 65536];

/// A body of `total` bytes produced on the fly, never held in memory at once.
pub fn generated(total: u64) -> Body {
    let chunks = total.div_ceil(CHUNK.len() as u64);
    let stream = futures_util::stream::iter(0..chunks).map(move |i| {
        let left = total - i * CHUNK.len() as u64;
        let n = left.min(CHUNK.len() as u64) as usize;
        Ok::<_, Infallible>(Frame::data(Bytes::from_static(&CHUNK[..n])))
    });
    BodyExt::boxed(StreamBody::new(stream))
}

/// An in-process backend that names itself in every answer.
pub struct Backend {
    pub name: &'static str,
    pub addr: SocketAddr,
    pub hits: Arc<AtomicU64>,
    /// Released by the test to let `/sse` send its second event.
    pub sse_gate: Arc<Notify>,
    /// `/health` answers: 0 = 200, 1 = 500, 2 = alternate.
    pub health_mode: Arc<AtomicU8>,
    /// Connections accepted so far.
    pub accepted: Arc<AtomicU64>,
    stop: Option<oneshot::Sender<()>>,
    tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Backend {
    pub async fn start(name: &'static str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicU64::new(0));
        let sse_gate = Arc::new(Notify::new());
        let health_mode = Arc::new(AtomicU8::new(0));
        let tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let (tx, mut rx) = oneshot::channel();
        let accepted = Arc::new(AtomicU64::new(0));
        let (h, g, m, t) = (
            hits.clone(),
            sse_gate.clone(),
            health_mode.clone(),
            tasks.clone(),
        );
        let acc_count = accepted.clone();
        let accept = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = &mut rx => return,
                    acc = listener.accept() => {
                        let Ok((stream, _)) = acc else { continue };
                        acc_count.fetch_add(1, Ordering::Relaxed);
                        let (h, g, m) = (h.clone(), g.clone(), m.clone());
                        let conn = tokio::spawn(async move {
                            let svc = service_fn(move |req| handle(name, h.clone(), g.clone(), m.clone(), req));
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), svc)
                                .with_upgrades()
                                .await;
                        });
                        t.lock().push(conn);
                    }
                }
            }
        });
        tasks.lock().push(accept);
        Backend {
            name,
            addr,
            hits,
            sse_gate,
            health_mode,
            accepted,
            stop: Some(tx),
            tasks,
        }
    }

    /// Dies at once: the listener and every open connection close (in-flight requests get
    /// no answer), as when the process is killed.
    pub fn kill(&mut self) {
        self.stop();
        for t in self.tasks.lock().drain(..) {
            t.abort();
        }
    }

    /// Stops accepting new connections (existing ones finish).
    pub fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }
}

/// Three backends named b1, b2, b3.
pub async fn three() -> (Backend, Backend, Backend) {
    (
        Backend::start("b1").await,
        Backend::start("b2").await,
        Backend::start("b3").await,
    )
}

fn query(req: &Request<Incoming>, key: &str) -> Option<String> {
    req.uri()
        .query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")).map(str::to_string))
}

async fn handle(
    name: &'static str,
    hits: Arc<AtomicU64>,
    gate: Arc<Notify>,
    health_mode: Arc<AtomicU8>,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    if req.uri().path() == "/health" {
        let ok = match health_mode.load(Ordering::Relaxed) {
            0 => true,
            1 => false,
            // Alternate (modes 2 and 3): flip the low bit on every probe.
            _ => health_mode.fetch_xor(1, Ordering::Relaxed) & 1 == 0,
        };
        let mut r = Response::new(empty());
        *r.status_mut() = if ok {
            StatusCode::OK
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        };
        return Ok(r);
    }
    hits.fetch_add(1, Ordering::Relaxed);
    let mut res = Response::new(full(name));
    let seen = |h: &str| req.headers().get(h).cloned();
    let echo: Vec<(&str, Option<header::HeaderValue>)> = vec![
        ("x-seen-cookie", seen("cookie")),
        ("x-seen-xff", seen("x-forwarded-for")),
        ("x-seen-proto", seen("x-forwarded-proto")),
        ("x-seen-host", seen("x-forwarded-host")),
        ("x-seen-host-header", seen("host")),
        ("x-seen-connection", seen("connection")),
        ("x-seen-private", seen("x-private")),
        ("x-seen-keep-alive", seen("keep-alive")),
    ];
    match req.uri().path() {
        "/upload" => {
            let mut n = 0u64;
            let mut body = req.into_body();
            while let Some(frame) = body.frame().await {
                if let Ok(d) = frame.map(|f| f.into_data()) {
                    n += d.map(|d| d.len() as u64).unwrap_or(0);
                } else {
                    break;
                }
            }
            res = Response::new(full(n.to_string()));
        }
        "/download" => {
            let n: u64 = query(&req, "n").and_then(|v| v.parse().ok()).unwrap_or(0);
            res = Response::new(generated(n));
        }
        "/sse" => {
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
            tokio::spawn(async move {
                let _ = tx
                    .send(Ok(Frame::data(Bytes::from_static(b"data: first\n\n"))))
                    .await;
                gate.notified().await;
                let _ = tx
                    .send(Ok(Frame::data(Bytes::from_static(b"data: second\n\n"))))
                    .await;
            });
            let stream = tokio_stream_from(rx);
            res = Response::new(BodyExt::boxed(StreamBody::new(stream)));
            res.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/event-stream"),
            );
        }
        "/set-session" => {
            // Sets the application's own session cookie: ?n=NAME&v=VALUE[&del=1]
            let n = query(&req, "n").unwrap_or_else(|| "session".into());
            let v = query(&req, "v").unwrap_or_default();
            let c = if query(&req, "del").is_some() {
                format!("{n}=; Max-Age=0; Path=/")
            } else {
                format!("{n}={v}; Path=/; HttpOnly")
            };
            res.headers_mut()
                .insert(header::SET_COOKIE, c.parse().unwrap());
        }
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        "/status" => {
            let code: u16 = query(&req, "code")
                .and_then(|v| v.parse().ok())
                .unwrap_or(200);
            *res.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
            if let Some(cc) = query(&req, "cc") {
                res.headers_mut().insert(
                    header::CACHE_CONTROL,
                    cc.replace("%20", " ").parse().unwrap(),
                );
            }
        }
        "/ws" => {
            let key = req.headers().get("sec-websocket-key").cloned();
            let Some(key) = key else {
                *res.status_mut() = StatusCode::BAD_REQUEST;
                return Ok(res);
            };
            let accept =
                tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let Ok(up) = upgrade.await else { return };
                let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                    TokioIo::new(up),
                    Role::Server,
                    None,
                )
                .await;
                while let Some(Ok(msg)) = ws.next().await {
                    if let Message::Text(t) = msg {
                        if ws.send(Message::text(format!("{name}:{t}"))).await.is_err() {
                            return;
                        }
                    }
                }
            });
            let mut r = Response::new(empty());
            *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            r.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("Upgrade"),
            );
            r.headers_mut().insert(
                header::UPGRADE,
                header::HeaderValue::from_static("websocket"),
            );
            r.headers_mut()
                .insert("sec-websocket-accept", accept.parse().unwrap());
            return Ok(r);
        }
        _ => {}
    }
    res.headers_mut()
        .insert("x-backend", header::HeaderValue::from_static(name));
    for (k, v) in echo {
        if let Some(v) = v {
            res.headers_mut().insert(k, v);
        }
    }
    Ok(res)
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// A running proxy; dropping it shuts it down.
pub struct Proxy {
    pub addr: SocketAddr,
    /// The first https listener, if any.
    pub tls_addr: Option<SocketAddr>,
    pub app: Arc<App>,
    /// The reload task: what the watcher, SIGHUP and the admin API of this proxy feed.
    pub reloader: tether::reload::Reloader,
    stop: Option<oneshot::Sender<()>>,
    pub done: Option<tokio::task::JoinHandle<()>>,
}

impl Proxy {
    /// A proxy that also serves the admin API; returns it and the admin address.
    pub async fn start_with_admin(config_text: &str) -> (Proxy, SocketAddr) {
        let proxy = Proxy::start(config_text).await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = listener.local_addr().unwrap();
        tokio::spawn(tether::admin::serve(
            proxy.app.clone(),
            proxy.reloader.clone(),
            listener,
            std::future::pending(),
        ));
        (proxy, admin)
    }

    pub async fn start(config_text: &str) -> Proxy {
        let config = Config::parse(config_text, "test.toml")
            .unwrap_or_else(|e| panic!("bad test config: {e}\n{config_text}"));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Proxy::serve(config, listener, None).await
    }

    /// A proxy loaded from a file (so it can reload it), with its reload triggers running.
    pub async fn start_file(path: &std::path::Path) -> Proxy {
        let config = Config::load(path).unwrap_or_else(|e| panic!("bad test config: {e}"));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = Proxy::serve(config, listener, Some(path.to_path_buf())).await;
        tether::reload::spawn_triggers(&proxy.app, &proxy.reloader);
        proxy
    }

    async fn serve(
        config: Config,
        listener: TcpListener,
        path: Option<std::path::PathBuf>,
    ) -> Proxy {
        use tether::server::Kind;
        // The given listener stands for the config's first address (so reloads that keep
        // that address leave it alone); other configured addresses get their own loopback
        // listeners on ephemeral ports.
        let mut listeners = Vec::new();
        let mut first = Some(listener);
        let mut tls_addr = None;
        let mut addr = None;
        let http = config.listen.http.iter().map(|a| (*a, Kind::Http));
        let https = config.listen.https.iter().map(|a| (*a, Kind::Https));
        for (configured, kind) in http.chain(https) {
            let l = match first.take() {
                Some(l) => l,
                None => TcpListener::bind("127.0.0.1:0").await.unwrap(),
            };
            let local = l.local_addr().unwrap();
            addr.get_or_insert(local);
            if kind == Kind::Https {
                tls_addr.get_or_insert(local);
            }
            listeners.push((configured, kind, l));
        }
        let addr = addr.expect("a listener");
        let app = App::new(config, path).unwrap_or_else(|e| panic!("{e:?}"));
        let (tx, rx) = oneshot::channel::<()>();
        let running = tether::server::Listeners::default();
        let done = tokio::spawn(tether::server::serve(
            app.clone(),
            running.clone(),
            listeners,
            async {
                let _ = rx.await;
            },
        ));
        Proxy {
            addr,
            tls_addr,
            reloader: tether::reload::Reloader::spawn(app.clone(), running),
            app,
            stop: Some(tx),
            done: Some(done),
        }
    }

    /// Signals shutdown and waits for the server to finish.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(d) = self.done.take() {
            let _ = d.await;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// A pool config over `backends` with extra pool keys, listening nowhere in particular (tests
/// bind their own listener).
pub fn pool_config(proxy_extra: &str, pool_extra: &str, backends: &[&Backend]) -> String {
    let mut t = format!(
        "[log]\naccess = \"off\"\n[proxy]\ntrusted_proxies = [\"127.0.0.1/32\"]\n{proxy_extra}\n\n[pools.app]\n{pool_extra}\n"
    );
    for b in backends {
        t.push_str(&format!(
            "\n[[pools.app.backends]]\nid = \"{}\"\naddress = \"{}\"\n",
            b.name, b.addr
        ));
    }
    t
}

/// A finished response with its body collected.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn backend(&self) -> String {
        self.headers
            .get("x-backend")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    }

    /// The value our affinity cookie was set to, if any.
    pub fn tether_cookie(&self) -> Option<String> {
        self.headers
            .get_all(header::SET_COOKIE)
            .iter()
            .find_map(|v| {
                let s = v.to_str().ok()?;
                s.strip_prefix("TETHER=")
                    .map(|rest| rest.split(';').next().unwrap_or("").to_string())
            })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One HTTP/1.1 request on a fresh connection.
pub async fn request(addr: SocketAddr, req: Request<Body>) -> Answer {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let res = sender.send_request(req).await.unwrap();
    let (parts, body) = res.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// POST with no body.
pub async fn post(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut b = Request::post(path).header(header::HOST, "admin");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    request(addr, b.body(empty()).unwrap()).await
}

/// GET `path` with extra headers.
pub async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut b = Request::get(path).header(header::HOST, "test.local");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    request(addr, b.body(empty()).unwrap()).await
}

/// A client with a cookie jar (only tether's cookie) and a fixed client IP (via
/// X-Forwarded-For from the trusted loopback peer).
pub struct Client {
    pub ip: String,
    pub cookie: Option<String>,
}

impl Client {
    pub fn new(ip: impl Into<String>) -> Client {
        Client {
            ip: ip.into(),
            cookie: None,
        }
    }

    pub async fn get(&mut self, addr: SocketAddr, path: &str) -> Answer {
        let cookie = self.cookie.as_ref().map(|c| format!("other=1; TETHER={c}"));
        let mut headers = vec![("x-forwarded-for", self.ip.as_str())];
        if let Some(c) = &cookie {
            headers.push(("cookie", c.as_str()));
        }
        let a = get(addr, path, &headers).await;
        if let Some(c) = a.tether_cookie() {
            self.cookie = Some(c);
        }
        a
    }
}

pub fn counts(names: impl IntoIterator<Item = String>) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for n in names {
        *m.entry(n).or_insert(0) += 1;
    }
    m
}

/// An address on 127.0.0.1 that nothing listens on right now.
pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Waits until something accepts connections on `addr` (panics after 5 s).
pub async fn wait_listening(addr: SocketAddr) {
    for _ in 0..100 {
        if TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("nothing listens on {addr}");
}

/// `n` (≤ 250) new sessions, one GET each from client IPs `<net>.1`, `<net>.2`, … (sent as
/// X-Forwarded-For, which the test configs trust from loopback).
pub async fn new_sessions(addr: SocketAddr, net: &str, n: usize) -> Vec<Answer> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        out.push(
            get(
                addr,
                "/",
                &[("x-forwarded-for", &format!("{net}.{}", i + 1))],
            )
            .await,
        );
    }
    out
}

/// A keep-alive HTTP/1.1 client: one connection, many requests.
pub struct KeepAlive {
    sender: hyper::client::conn::http1::SendRequest<Body>,
}

impl KeepAlive {
    pub async fn connect(addr: SocketAddr) -> KeepAlive {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        KeepAlive { sender }
    }

    /// GET with headers; `None` when the request failed at the connection level.
    pub async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Option<Answer> {
        self.sender.ready().await.ok()?;
        let mut b = Request::get(path).header(header::HOST, "test.local");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let res = self
            .sender
            .send_request(b.body(empty()).unwrap())
            .await
            .ok()?;
        let (parts, body) = res.into_parts();
        let body = body.collect().await.ok()?.to_bytes();
        Some(Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }
}

/// A config file in a fresh temporary directory.
pub fn config_file(text: &str) -> std::path::PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "tether-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tether.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Resident memory of this process in KiB.
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Reads from `s` until the peer closes it (or 3 s pass), as text.
pub async fn read_to_close(s: &mut TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}
