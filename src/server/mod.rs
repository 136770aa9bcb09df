//! Listeners: accept connections, serve HTTP/1.1 (tether's own loop) and HTTP/2 (hyper)
//! with the proxy service, and shut down gracefully (stop accepting, finish in-flight
//! requests, give up at a deadline).

pub mod http1;
mod listeners;
pub mod proxy_protocol;

pub use listeners::{bind, bind_one, Kind, Listeners};

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use std::net::SocketAddr;

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Request;
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::app::App;
use crate::config::ProxySettings;
use crate::proxy::upstream::ReqBody;
use crate::proxy::{self, ConnInfo};
use tokio_rustls::TlsAcceptor;

/// The proxy serves what the HTTP/1.1 loop reads.
impl http1::Handler for Arc<App> {
    fn call(
        &self,
        info: ConnInfo,
        req: Request<ReqBody>,
        hooks: proxy::ClientHooks,
    ) -> proxy::Handling {
        proxy::handle_boxed(self.clone(), info, req, hooks)
    }
}

/// Serves until `shutdown` completes, then stops accepting and waits for open connections
/// to finish their in-flight requests, at most `shutdown_timeout` (from the config current
/// at that moment).
pub async fn serve(
    app: Arc<App>,
    listeners: Listeners,
    bound: Vec<(SocketAddr, Kind, TcpListener)>,
    shutdown: impl Future<Output = ()>,
) {
    let rx = listeners.start(&app, bound);
    let Some(mut rx) = rx else {
        tracing::error!("serve called twice for one App; not serving");
        return;
    };

    let graceful = GracefulShutdown::new();
    // HTTP/1.1 connections hold a receiver each: `send(true)` asks them to finish, and
    // `closed()` completes when the last one has.
    let (h1_stop, _) = watch::channel(false);
    tokio::pin!(shutdown);
    let mut stopping = false;
    loop {
        tokio::select! {
            conn = rx.recv() => {
                // Closed once the acceptors are gone: connections they had already accepted
                // are served first, not dropped.
                let Some((stream, peer, kind, gauge)) = conn else { break };
                let snap = app.snapshot();
                let settings = snap.config.proxy.clone();
                let open = app.open_connections.load(Ordering::Relaxed);
                if settings.max_connections > 0 && open >= settings.max_connections {
                    refuse(stream, kind);
                    continue;
                }
                let tls = match kind {
                    Kind::Http => None,
                    Kind::Https => match &snap.tls_server {
                        // The certificates current at accept time: reloads reach new connections.
                        Some(c) => Some(TlsAcceptor::from(c.clone())),
                        None => continue,
                    },
                };
                let proxy_protocol = snap.config.listen.proxy_protocol;
                drop(snap);
                let watcher = graceful.watcher();
                let stop = h1_stop.subscribe();
                let app = app.clone();
                let total = app.open_connections.clone();
                tokio::spawn(async move {
                    gauge.fetch_add(1, Ordering::Relaxed);
                    total.fetch_add(1, Ordering::Relaxed);
                    let _open = (Decrement(gauge), Decrement(total));
                    let _ = stream.set_nodelay(true);
                    let mut stream = stream;
                    // Behind an L4 balancer: the header names the client (read before TLS).
                    let peer = if proxy_protocol {
                        match proxy_protocol::accept(&mut stream, peer, &settings.trusted_proxies, settings.header_timeout).await {
                            Ok(client) => client,
                            Err(e) => {
                                tracing::debug!(peer = %peer, error = %e, "closed without an answer");
                                return;
                            }
                        }
                    } else {
                        peer
                    };
                    let info = ConnInfo { peer, tls: tls.is_some() };
                    let limits = http1::Limits {
                        header_timeout: settings.header_timeout,
                        idle_timeout: settings.idle_timeout,
                        max_head: settings.max_header_bytes.max(1024),
                    };
                    let service = {
                        let app = app.clone();
                        service_fn(move |req: Request<Incoming>| {
                            proxy::handle_boxed(app.clone(), info, req.map(ReqBody::Client), proxy::ClientHooks::default())
                        })
                    };
                    let result = match tls {
                        None => {
                            let mut stream = stream;
                            match http1::serve(&app, info, &mut stream, limits, stop).await {
                                http1::Ended::Closed => Ok(()),
                                // h2c with prior knowledge: hyper serves it, fed the bytes read.
                                http1::Ended::H2 { buf } => {
                                    let io = Prefixed { prefix: buf.freeze(), inner: stream };
                                    let builder = builder(&settings);
                                    let conn = builder.serve_connection(TokioIo::new(io), service);
                                    watcher.watch(conn).await
                                }
                            }
                        }
                        Some(acceptor) => {
                            let Ok(Ok(mut tls_stream)) = tokio::time::timeout(settings.header_timeout, acceptor.accept(stream)).await else {
                                tracing::debug!(client = %peer, "TLS handshake failed or timed out");
                                return;
                            };
                            if tls_stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                                let builder = builder(&settings);
                                let conn = builder.serve_connection(TokioIo::new(tls_stream), service);
                                watcher.watch(conn).await
                            } else {
                                match http1::serve(&app, info, &mut tls_stream, limits, stop).await {
                                    http1::Ended::Closed => Ok(()),
                                    // The HTTP/2 preface without ALPN h2: not served over TLS.
                                    http1::Ended::H2 { .. } => Ok(()),
                                }
                            }
                        }
                    };
                    if let Err(e) = result {
                        tracing::debug!(client = %peer, error = %e, "client connection ended with an error");
                    }
                });
            }
            _ = &mut shutdown, if !stopping => {
                stopping = true;
                listeners.stop_all();
            }
        }
    }
    let deadline = app.snapshot().config.proxy.shutdown_timeout;
    tracing::info!(
        connections = app.open_connections.load(Ordering::Relaxed),
        "shutting down: finishing in-flight requests"
    );
    let started = tokio::time::Instant::now();
    let _ = h1_stop.send(true);
    let finished = async {
        graceful.shutdown().await;
        h1_stop.closed().await;
    };
    if tokio::time::timeout(deadline, finished).await.is_err() {
        tracing::warn!("shutdown timeout reached; closing remaining connections");
    }
    // Upgraded connections (WebSockets) live on after their HTTP connection: give them the
    // rest of the deadline, then close them cleanly. Every tunnel holds a receiver of
    // `close_tunnels` until it ends, so `closed()` completes when the last one has ended.
    let rest = deadline.saturating_sub(started.elapsed());
    if tokio::time::timeout(rest, app.close_tunnels.closed())
        .await
        .is_err()
    {
        tracing::info!(
            tunnels = app.tunnels.load(Ordering::Relaxed),
            "closing open WebSockets"
        );
        let _ = app.close_tunnels.send(true);
        let all_closed = app.close_tunnels.closed();
        let _ = tokio::time::timeout(Duration::from_secs(1), all_closed).await;
    }
}

/// Over `max_connections`: plain HTTP clients get an immediate 503 with `Connection:
/// close`; TLS clients are closed before the handshake.
fn refuse(stream: TcpStream, kind: Kind) {
    tracing::debug!("max_connections reached: refusing a connection");
    tokio::spawn(async move {
        let mut stream = stream;
        if kind == Kind::Http {
            use tokio::io::AsyncWriteExt;
            let msg = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 21\r\nRetry-After: 1\r\nConnection: close\r\n\r\ntoo many connections\n";
            let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(msg)).await;
            let _ = stream.shutdown().await;
        }
    });
}

/// Decrements a gauge when dropped.
struct Decrement(Arc<AtomicU64>);

impl Drop for Decrement {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A stream that first yields bytes already read from it (the HTTP/2 preface the HTTP/1.1
/// loop saw before handing the connection to hyper).
struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let head = self.prefix.split_to(n);
            buf.put_slice(&head);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        b: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, b)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The HTTP/2 server for one connection (h2c with prior knowledge, or TLS with ALPN h2):
/// HTTP/2 only, so a client that negotiated h2 and then speaks HTTP/1.1 gets a protocol
/// error, never a second HTTP/1.1 implementation.
fn builder(p: &ProxySettings) -> hyper::server::conn::http2::Builder<TokioExecutor> {
    let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(p.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(p.idle_timeout))
        .keep_alive_timeout(p.header_timeout);
    b
}

/// Completes on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received"),
        _ = term => tracing::info!("SIGTERM received"),
    }
}
