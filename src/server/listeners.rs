//! The listening sockets: bound from `[listen]`, each with an accept task feeding the one
//! serve loop; changed by reloads, duplicated for an upgrade handover.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::app::App;
use crate::config::Listen;

/// Whether a listener terminates TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Http,
    Https,
}

/// Binds every `[listen]` address; each listener is kept with the address the config names
/// it by, and its kind.
pub async fn bind(listen: &Listen) -> std::io::Result<Vec<(SocketAddr, Kind, TcpListener)>> {
    let http = listen.http.iter().map(|a| (*a, Kind::Http));
    let https = listen.https.iter().map(|a| (*a, Kind::Https));
    http.chain(https)
        .map(|(a, k)| bind_one(a).map(|l| (a, k, l)))
        .collect()
}

pub fn bind_one(a: SocketAddr) -> std::io::Result<TcpListener> {
    let std = std::net::TcpListener::bind(a)
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {a}: {e}")))?;
    std.set_nonblocking(true)?;
    TcpListener::from_std(std)
}

pub(super) type Accepted = (TcpStream, SocketAddr, Kind, Arc<AtomicU64>);

/// The running listeners, by configured address and kind, and where they hand
/// connections. The channel exists from the start, so a reload before `serve` runs still
/// applies.
struct ListenerSet {
    tx: Option<mpsc::Sender<Accepted>>,
    rx: Option<mpsc::Receiver<Accepted>>,
    acceptors: Vec<(SocketAddr, Kind, JoinHandle<()>)>,
    /// A duplicate of each acceptor's socket (same order), for an upgrade handover.
    fds: Vec<std::os::fd::OwnedFd>,
}

impl Default for ListenerSet {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(1024);
        ListenerSet {
            tx: Some(tx),
            rx: Some(rx),
            acceptors: Vec::new(),
            fds: Vec::new(),
        }
    }
}

impl ListenerSet {
    pub(super) fn start(&mut self, app: &App, configured: SocketAddr, kind: Kind, l: TcpListener) {
        let Some(tx) = self.tx.clone() else { return };
        use std::os::fd::AsFd;
        let Ok(fd) = l.as_fd().try_clone_to_owned() else {
            tracing::error!(address = %configured, "cannot duplicate a listening socket; not listening on it");
            return;
        };
        let name = l.local_addr().map(|a| a.to_string()).unwrap_or_default();
        let gauge = app.listener_gauge(&name);
        let task = tokio::spawn(async move {
            loop {
                match l.accept().await {
                    Ok((stream, peer)) => {
                        if tx.send((stream, peer, kind, gauge.clone())).await.is_err() {
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
        });
        self.acceptors.push((configured, kind, task));
        self.fds.push(fd);
    }

    pub(super) fn stop_all(&mut self) {
        self.tx = None;
        self.fds.clear();
        for (_, _, t) in self.acceptors.drain(..) {
            t.abort();
        }
    }
}

/// A handle to the running listeners, shared by the serve loop, the reload task and the
/// upgrade handover. It exists before `serve` runs, so a reload before then still applies.
#[derive(Clone, Default)]
pub struct Listeners(Arc<Mutex<ListenerSet>>);

impl Listeners {
    /// Starts accepting on `bound`, and hands over the receiving end of the accept channel
    /// (once: `None` if `serve` already took it).
    pub(super) fn start(
        &self,
        app: &App,
        bound: Vec<(SocketAddr, Kind, TcpListener)>,
    ) -> Option<mpsc::Receiver<Accepted>> {
        let mut set = self.0.lock();
        for (a, k, l) in bound {
            set.start(app, a, k, l);
        }
        set.rx.take()
    }

    /// Stops every accept task; connections already accepted are served.
    pub(super) fn stop_all(&self) {
        self.0.lock().stop_all();
    }

    /// Makes the listeners match `listen`: binds the new addresses first (if any fails, nothing
    /// changes and the error is returned), then starts them and stops accepting on addresses no
    /// longer wanted. Connections already accepted finish normally. Does nothing once the
    /// server has shut down.
    pub fn apply(&self, app: &App, listen: &Listen) -> std::io::Result<()> {
        let mut set = self.0.lock();
        if set.tx.is_none() {
            return Ok(());
        }
        let wanted: Vec<(SocketAddr, Kind)> = listen
            .http
            .iter()
            .map(|a| (*a, Kind::Http))
            .chain(listen.https.iter().map(|a| (*a, Kind::Https)))
            .collect();
        let current: Vec<(SocketAddr, Kind)> =
            set.acceptors.iter().map(|(a, k, _)| (*a, *k)).collect();
        let mut fresh = Vec::new();
        for (a, k) in wanted.iter().filter(|w| !current.contains(w)) {
            fresh.push((*a, *k, bind_one(*a)?));
        }
        let keep: Vec<bool> = set
            .acceptors
            .iter()
            .map(|(a, k, _)| wanted.contains(&(*a, *k)))
            .collect();
        let mut i = 0;
        set.fds.retain(|_| {
            i += 1;
            keep[i - 1]
        });
        set.acceptors.retain(|(a, k, task)| {
            let keep = wanted.contains(&(*a, *k));
            if !keep {
                tracing::info!(address = %a, "no longer listening (removed from [listen])");
                task.abort();
            }
            keep
        });
        for (a, k, l) in fresh {
            tracing::info!(address = %a, kind = ?k, "listening (added by reload)");
            set.start(app, a, k, l);
        }
        Ok(())
    }

    /// Duplicates of the running listeners' sockets with their configured address and kind
    /// (for an upgrade handover); empty once the server has shut down.
    pub fn fds(&self) -> Vec<(SocketAddr, Kind, std::os::fd::OwnedFd)> {
        let set = self.0.lock();
        set.acceptors
            .iter()
            .zip(&set.fds)
            .filter_map(|((a, k, _), fd)| fd.try_clone().ok().map(|fd| (*a, *k, fd)))
            .collect()
    }
}
