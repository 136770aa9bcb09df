//! Listeners: accept connections, serve HTTP/1.1 and h2c with the proxy service, and shut
//! down gracefully (stop accepting, finish in-flight requests, give up at a deadline).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::app::App;
use crate::config::ProxySettings;
use crate::proxy::{self, ConnInfo};

/// Binds every address in `[listen] http`.
pub async fn bind(addrs: &[std::net::SocketAddr]) -> std::io::Result<Vec<TcpListener>> {
    let mut out = Vec::with_capacity(addrs.len());
    for a in addrs {
        let l = TcpListener::bind(a)
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {a}: {e}")))?;
        out.push(l);
    }
    Ok(out)
}

/// Serves until `shutdown` completes, then stops accepting and waits for open connections
/// to finish their in-flight requests, at most `shutdown_timeout` (from the config current
/// at that moment).
pub async fn serve(app: Arc<App>, listeners: Vec<TcpListener>, shutdown: impl Future<Output = ()>) {
    type Accepted = (TcpStream, std::net::SocketAddr, Arc<AtomicU64>);
    let (tx, mut rx) = mpsc::channel::<Accepted>(1024);
    let acceptors: Vec<_> = listeners
        .into_iter()
        .map(|l| {
            let tx = tx.clone();
            let name = l.local_addr().map(|a| a.to_string()).unwrap_or_default();
            let gauge = app.listener_gauge(&name);
            tokio::spawn(async move {
                loop {
                    match l.accept().await {
                        Ok((stream, peer)) => {
                            if tx.send((stream, peer, gauge.clone())).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            // EMFILE and friends: back off instead of spinning.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
            })
        })
        .collect();
    drop(tx);

    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            conn = rx.recv() => {
                let Some((stream, peer, gauge)) = conn else { break };
                let settings = app.snapshot().config.proxy.clone();
                let watcher = graceful.watcher();
                let app = app.clone();
                tokio::spawn(async move {
                    gauge.fetch_add(1, Ordering::Relaxed);
                    let _open = Decrement(gauge);
                    let _ = stream.set_nodelay(true);
                    let info = ConnInfo { peer, tls: false };
                    let builder = builder(&settings);
                    let service = service_fn(move |req| proxy::handle(app.clone(), info, req));
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    if let Err(e) = watcher.watch(conn.into_owned()).await {
                        tracing::debug!(client = %peer, error = %e, "client connection ended with an error");
                    }
                });
            }
            _ = &mut shutdown => break,
        }
    }
    for a in &acceptors {
        a.abort();
    }
    drop(rx);
    let deadline = app.snapshot().config.proxy.shutdown_timeout;
    tracing::info!(
        connections = graceful.count(),
        "shutting down: finishing in-flight requests"
    );
    if tokio::time::timeout(deadline, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("shutdown timeout reached; closing remaining connections");
    }
}

/// Decrements a gauge when dropped.
struct Decrement(Arc<AtomicU64>);

impl Drop for Decrement {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Per-connection HTTP settings from `[proxy]`.
fn builder(p: &ProxySettings) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        // Also bounds how long a keep-alive connection may sit idle before its next request.
        .header_read_timeout(p.header_timeout.min(p.idle_timeout))
        .max_buf_size(p.max_header_bytes.max(8192))
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
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
