//! Upgrading tether without dropping a connection (`tether run --upgrade`): the running
//! instance offers its listening sockets and long-lived state on the handover Unix socket;
//! a new process takes them, starts accepting, and tells the old one to stop.

pub mod wire;

use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::app::App;
use crate::config::{Config, Listen};
use crate::server::Kind;
use crate::server::Listeners;
use crate::state::carry::{self, BackendCarry, SessionsCarry};

#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error("handover: {0}: {1}")]
    Io(&'static str, std::io::Error),
    #[error("handover: {0}")]
    Protocol(&'static str),
    #[error("no running tether at the handover socket {path}: {error}")]
    NoInstance { path: String, error: std::io::Error },
    #[error("handover socket {path}: {error}")]
    Socket { path: String, error: std::io::Error },
    #[error("handover state: {0}")]
    State(#[from] serde_json::Error),
    #[error("{0}")]
    Listen(std::io::Error),
}

/// Where the handover socket of the instance serving `config_path` is: `[listen] handover`
/// (relative to the config file's directory), else `handover-<16 hex digits of the SHA-256
/// of the config file's canonical path>.sock` in `$RUNTIME_DIRECTORY`, `$XDG_RUNTIME_DIR`
/// or `/run/tether`.
pub fn path(config: &Config, config_path: &Path) -> PathBuf {
    if let Some(p) = &config.listen.handover {
        return crate::app::base_dir(Some(config_path)).join(p);
    }
    let dir = std::env::var_os("RUNTIME_DIRECTORY")
        // systemd may list several directories, separated by colons: the first is ours.
        .and_then(|v| {
            v.to_str()
                .and_then(|s| s.split(':').next())
                .map(PathBuf::from)
        })
        .filter(|d| !d.as_os_str().is_empty())
        .or_else(|| std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from))
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from("/run/tether"));
    let canonical = std::fs::canonicalize(config_path).unwrap_or_else(|_| config_path.into());
    let digest = sha2::Sha256::digest(canonical.as_os_str().as_encoded_bytes());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    dir.join(format!("handover-{hex}.sock"))
}

/// Set once this process has handed its sockets to a new one.
static HANDED_OVER: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A listening socket as the handover names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Http,
    Https,
    Admin,
}

impl From<Kind> for Role {
    fn from(k: Kind) -> Role {
        match k {
            Kind::Http => Role::Http,
            Kind::Https => Role::Https,
        }
    }
}

/// What passes besides the sockets, as JSON.
#[derive(Debug, Serialize, Deserialize)]
pub struct Carried {
    /// The running instance's config generation (the new one goes on from it).
    pub generation: u64,
    /// One per socket, in the order they were sent: the configured address and role.
    pub listeners: Vec<(SocketAddr, Role)>,
    pub backends: Vec<BackendCarry>,
    /// Learned sessions and remembered keys.
    pub sessions: Vec<SessionsCarry>,
}

/// Creates the handover socket at `path`, owner-only, replacing any previous one
/// atomically (a new process replaces its predecessor's only once it is ready).
fn bind_socket(path: &Path) -> Result<UnixListener, HandoverError> {
    let err = |error| HandoverError::Socket {
        path: path.display().to_string(),
        error,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(err)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
        }
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.new", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let l = UnixListener::bind(&tmp).map_err(err)?;
    let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .and_then(|_| std::fs::rename(&tmp, path));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(e));
    }
    Ok(l)
}

/// The running instance's side: listens on the handover socket in a thread of its own.
/// `admin` is the admin listener, if any. The returned receiver completes when a new
/// process has taken over (then stop accepting and finish, without `STOPPING=1`).
pub fn offer(
    app: Arc<App>,
    listeners: Listeners,
    path: &Path,
    admin: Option<(SocketAddr, OwnedFd)>,
) -> Result<tokio::sync::oneshot::Receiver<()>, HandoverError> {
    let listener = bind_socket(path)?;
    let (done, rx) = tokio::sync::oneshot::channel();
    let path = path.to_path_buf();
    tracing::info!(socket = %path.display(), "handover socket ready (tether run --upgrade)");
    std::thread::Builder::new()
        .name("tether-handover".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let conn = match conn {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "handover: accept failed");
                        #[allow(
                            clippy::disallowed_methods,
                            reason = "the handover thread is its own OS thread, not a tokio worker"
                        )]
                        std::thread::sleep(std::time::Duration::from_millis(100));
                        continue;
                    }
                };
                match hand_over(&app, &listeners, &conn, admin.as_ref()) {
                    Ok(true) => {
                        HANDED_OVER.store(true, std::sync::atomic::Ordering::Relaxed);
                        tracing::info!(
                            "handover done: the new process accepts; finishing in-flight requests"
                        );
                        let _ = done.send(());
                        return;
                    }
                    Ok(false) => {
                        tracing::warn!("handover: the new process gave up; serving on")
                    }
                    Err(e) => tracing::warn!(error = %e, "handover failed; serving on"),
                }
            }
        })
        .map_err(|error| HandoverError::Socket {
            path: path.display().to_string(),
            error,
        })?;
    Ok(rx)
}

/// One attempt: send sockets and state, wait for the answer. `Ok(true)`: taken over.
fn hand_over(
    app: &App,
    running: &Listeners,
    conn: &UnixStream,
    admin: Option<&(SocketAddr, OwnedFd)>,
) -> Result<bool, HandoverError> {
    let mut fds = Vec::new();
    let mut listeners = Vec::new();
    for (a, k, fd) in running.fds() {
        fds.push(fd);
        listeners.push((a, Role::from(k)));
    }
    if let Some((a, fd)) = admin {
        fds.push(
            fd.as_fd()
                .try_clone_to_owned()
                .map_err(|e| HandoverError::Io("duplicating the admin socket", e))?,
        );
        listeners.push((*a, Role::Admin));
    }
    let carried = Carried {
        generation: app.meta().generation,
        listeners,
        backends: carry::export_backends(&app.registry),
        sessions: carry::export_sessions(&app.registry),
    };
    let state = serde_json::to_vec(&carried)?;
    wire::send(conn, &wire::borrow(&fds), &state)?;
    drop(fds);
    Ok(wire::read_answer(conn) == wire::GO)
}

/// The new process's side, between connecting and telling the old one to stop.
pub struct Takeover {
    conn: UnixStream,
    carried: Carried,
    fds: Vec<Option<OwnedFd>>,
}

/// Connects to the running instance at `path` and receives its sockets and state. Blocking.
pub fn connect(path: &Path) -> Result<Takeover, HandoverError> {
    let conn = UnixStream::connect(path).map_err(|error| HandoverError::NoInstance {
        path: path.display().to_string(),
        error,
    })?;
    conn.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .map_err(|e| HandoverError::Io("setting a timeout", e))?;
    let (fds, state) = wire::receive(&conn)?;
    let carried: Carried = serde_json::from_slice(&state)?;
    if carried.listeners.len() != fds.len() {
        return Err(HandoverError::Protocol(
            "socket list does not match the sockets",
        ));
    }
    Ok(Takeover {
        conn,
        carried,
        fds: fds.into_iter().map(Some).collect(),
    })
}

impl Takeover {
    /// The running instance's socket for `addr` in `role`, if it had one (taken once).
    fn take(&mut self, addr: SocketAddr, role: Role) -> Option<OwnedFd> {
        let i = self
            .carried
            .listeners
            .iter()
            .position(|l| *l == (addr, role))?;
        self.fds[i].take()
    }

    /// The listeners `listen` names: the running instance's sockets where it has them,
    /// freshly bound otherwise (a failure here leaves the old instance untouched).
    pub fn listeners(
        &mut self,
        listen: &Listen,
    ) -> Result<Vec<(SocketAddr, Kind, tokio::net::TcpListener)>, HandoverError> {
        let wanted = listen
            .http
            .iter()
            .map(|a| (*a, Kind::Http))
            .chain(listen.https.iter().map(|a| (*a, Kind::Https)));
        let mut out = Vec::new();
        for (a, k) in wanted {
            let l = match self.take(a, k.into()) {
                Some(fd) => tcp(fd)?,
                None => crate::server::bind_one(a).map_err(HandoverError::Listen)?,
            };
            out.push((a, k, l));
        }
        Ok(out)
    }

    /// The admin listener: the running instance's if the address is the same.
    pub fn admin_listener(
        &mut self,
        addr: SocketAddr,
    ) -> Result<tokio::net::TcpListener, HandoverError> {
        match self.take(addr, Role::Admin) {
            Some(fd) => tcp(fd),
            None => crate::server::bind_one(addr).map_err(HandoverError::Listen),
        }
    }

    /// Takes over the long-lived state; the generation goes on from the old instance's.
    pub fn import(&self, app: &App) {
        let b = carry::import_backends(&app.registry, &self.carried.backends);
        let s = carry::import_sessions(&app.registry, &self.carried.sessions);
        let mut meta = app.meta();
        meta.generation = meta.generation.max(self.carried.generation + 1);
        tracing::info!(
            backends = b,
            sessions = s,
            generation = meta.generation,
            "took over the running instance's state"
        );
    }

    /// Tells the old instance to stop accepting (this process accepts on the same sockets).
    pub fn go(self) -> Result<(), HandoverError> {
        wire::answer(&self.conn, wire::GO)
    }
}

fn tcp(fd: OwnedFd) -> Result<tokio::net::TcpListener, HandoverError> {
    let std = std::net::TcpListener::from(fd);
    std.set_nonblocking(true)
        .map_err(|e| HandoverError::Io("a received socket", e))?;
    tokio::net::TcpListener::from_std(std).map_err(|e| HandoverError::Io("a received socket", e))
}

/// On SIGUSR2, starts `tether run --upgrade` from this process's own binary with its own
/// arguments (as nginx does with its binary upgrade).
pub fn spawn_on_sigusr2() {
    tokio::spawn(async move {
        let Ok(mut usr2) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined2())
        else {
            return;
        };
        while usr2.recv().await.is_some() {
            if HANDED_OVER.load(std::sync::atomic::Ordering::Relaxed) {
                // `systemctl kill -s USR2` reaches every process of the unit, this one
                // (finishing its last requests) too: only the running instance upgrades.
                tracing::info!("SIGUSR2 ignored: this instance has already handed over");
                continue;
            }
            let exe = match own_binary() {
                Ok(e) => e,
                Err(e) => {
                    tracing::error!(error = %e, "SIGUSR2: cannot find this binary; no upgrade");
                    continue;
                }
            };
            let mut args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
            if !args.iter().any(|a| a == "--upgrade") {
                args.push("--upgrade".into());
            }
            tracing::info!(binary = %exe.display(), ?args, "SIGUSR2: starting the upgrade");
            match tokio::process::Command::new(&exe).args(&args).spawn() {
                Ok(mut child) => {
                    tokio::spawn(async move {
                        if let Ok(status) = child.wait().await {
                            if !status.success() {
                                tracing::error!(%status, "the upgrade failed; serving on");
                            }
                        }
                    });
                }
                Err(e) => tracing::error!(error = %e, "SIGUSR2: cannot start {}", exe.display()),
            }
        }
    });
}

/// This binary's path; after a package upgrade replaced it, the path of the new file.
fn own_binary() -> std::io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let s = exe.as_os_str().to_string_lossy();
    Ok(match s.strip_suffix(" (deleted)") {
        Some(p) => PathBuf::from(p),
        None => exe,
    })
}
