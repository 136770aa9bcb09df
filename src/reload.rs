//! Hot reload: one task re-reads the config file when it changes (its directory is watched,
//! so write-rename saves and symlink swaps are seen), on SIGHUP, or from the admin API;
//! validates everything first, then swaps one snapshot in. A bad file changes nothing.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use notify::Watcher;
use tokio::sync::{mpsc, oneshot};

use crate::app::App;
use crate::config::{Config, ConfigError, Diagnostic};
use crate::server::Listeners;

/// Events closer together than this are one edit.
const DEBOUNCE: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, thiserror::Error)]
pub enum ReloadError {
    #[error("this instance was not started from a config file")]
    NoFile,
    #[error("{0}")]
    Read(String),
    #[error("{}", .0.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Diagnostic>),
    #[error("{0}")]
    Listen(String),
    #[error("the reload task has stopped")]
    Stopped,
}

impl ReloadError {
    /// Every error line (one per config diagnostic).
    pub fn lines(&self) -> Vec<String> {
        match self {
            ReloadError::Invalid(d) => d.iter().map(|d| d.to_string()).collect(),
            e => vec![e.to_string()],
        }
    }
}

/// Why a reload is attempted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The watcher saw the file or its directory change: skipped if the text is unchanged.
    FileChanged,
    /// SIGHUP, the admin API or `tether ctl reload`: always reloads.
    Requested,
}

/// What a reload ends with: the new generation (`None` when a watcher event found the text
/// unchanged), or why the previous config keeps serving.
pub type Outcome = Result<Option<u64>, ReloadError>;

/// One trigger sent to the reload task, with where its result goes if the sender waits.
struct Job {
    trigger: Trigger,
    reply: Option<oneshot::Sender<Outcome>>,
}

/// The handle to the one task that reloads the config. The file watcher, SIGHUP and the admin
/// API all send it their triggers, so reloads never overlap, and each reload reads the file
/// after every trigger it answers was sent: an older file can never be applied after a newer
/// one. Cloning is cheap; the task ends when the last handle is dropped.
#[derive(Clone)]
pub struct Reloader {
    tx: mpsc::UnboundedSender<Job>,
}

impl Reloader {
    /// Starts the reload task for `app` (inside a tokio runtime); a reload changes
    /// `listeners` to match the new `[listen]`.
    pub fn spawn(app: Arc<App>, listeners: Listeners) -> Reloader {
        let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                // Triggers that queued while the previous reload ran share the next one: it
                // starts after all of them were sent, so it reads the file they were about.
                let mut jobs = vec![first];
                while let Ok(j) = rx.try_recv() {
                    jobs.push(j);
                }
                let trigger = if jobs.iter().any(|j| j.trigger == Trigger::Requested) {
                    Trigger::Requested
                } else {
                    Trigger::FileChanged
                };
                let outcome = reload(&app, &listeners, trigger);
                for reply in jobs.into_iter().filter_map(|j| j.reply) {
                    let _ = reply.send(outcome.clone());
                }
            }
        });
        Reloader { tx }
    }

    /// Asks for a reload and waits for its outcome: that of a reload which started after this
    /// call, so it saw the file as it is now (or newer).
    pub async fn reload(&self, trigger: Trigger) -> Outcome {
        let (reply, outcome) = oneshot::channel();
        let job = Job {
            trigger,
            reply: Some(reply),
        };
        self.tx.send(job).map_err(|_| ReloadError::Stopped)?;
        outcome.await.map_err(|_| ReloadError::Stopped)?
    }

    /// Asks for a reload without waiting for it (the watcher and SIGHUP: the outcome is
    /// logged and counted, and shown in `/status`).
    pub fn trigger(&self, trigger: Trigger) {
        let _ = self.tx.send(Job {
            trigger,
            reply: None,
        });
    }
}

/// Re-reads the config file and, if it is valid, applies it. Only the reload task calls
/// this, one reload at a time.
fn reload(app: &App, listeners: &Listeners, trigger: Trigger) -> Outcome {
    let path = app.meta().path.clone().ok_or(ReloadError::NoFile)?;
    let _one_at_a_time = app.reload_lock.lock();
    let result = read_and_apply(app, listeners, &path, trigger);
    if !matches!(result, Ok(None)) {
        crate::systemd::ready();
    }
    match &result {
        Ok(Some(generation)) => {
            app.reloads_ok.fetch_add(1, Ordering::Relaxed);
            tracing::info!(file = %path.display(), generation, "config reloaded");
        }
        Ok(None) => {}
        Err(e) => {
            app.reloads_failed.fetch_add(1, Ordering::Relaxed);
            for line in e.lines() {
                tracing::error!(
                    "config reload rejected, the previous config keeps serving: {line}"
                );
            }
            app.meta().last_reload_error = Some(e.to_string());
        }
    }
    result
}

fn read_and_apply(app: &App, listeners: &Listeners, path: &Path, trigger: Trigger) -> Outcome {
    let text = std::fs::read_to_string(path);
    if let Ok(text) = &text {
        let hash = xxhash_rust::xxh3::xxh3_64(text.as_bytes());
        if trigger == Trigger::FileChanged && app.meta().content_hash == Some(hash) {
            return Ok(None);
        }
    }
    // From here on this is a reload (`reload` sends READY=1 when it ends, however it ends).
    crate::systemd::reloading();
    let text = text.map_err(|e| {
        ReloadError::Read(format!("{}: cannot read config file: {e}", path.display()))
    })?;
    let hash = xxhash_rust::xxh3::xxh3_64(text.as_bytes());
    let config = Config::parse(&text, &path.display().to_string()).map_err(|e| match e {
        ConfigError::Invalid(d) => ReloadError::Invalid(d),
        other => ReloadError::Read(other.to_string()),
    })?;
    warn_restart_needed(app, &config);
    let tls = crate::tls::load(&config, &crate::app::base_dir(Some(path)))
        .map_err(ReloadError::Invalid)?;
    listeners
        .apply(app, &config.listen)
        .map_err(|e| ReloadError::Listen(e.to_string()))?;
    app.install(config, tls);
    let mut meta = app.meta();
    meta.content_hash = Some(hash);
    Ok(Some(meta.generation))
}

/// The admin listener is bound once at start; a changed `[admin] listen` needs a restart.
fn warn_restart_needed(app: &App, new: &Config) {
    let old = app.snapshot();
    let listen = |c: &Config| c.admin.as_ref().map(|a| a.listen);
    if listen(&old.config) != listen(new) {
        tracing::warn!(
            "[admin] listen changed: the admin API keeps its current address until tether restarts"
        );
    }
}

/// Remembers the text of the file loaded at start, so the watcher ignores saves that change
/// nothing.
pub fn remember_loaded_text(app: &App, text: &str) {
    app.meta().content_hash = Some(xxhash_rust::xxh3::xxh3_64(text.as_bytes()));
}

/// Starts the file watcher and the SIGHUP handler (inside a tokio runtime), both feeding
/// `reloader`.
pub fn spawn_triggers(app: &App, reloader: &Reloader) {
    // Bound first: a guard in an `if let` scrutinee would live through the block.
    let path = app.meta().path.clone();
    if let Some(path) = path {
        if let Ok(text) = std::fs::read_to_string(&path) {
            remember_loaded_text(app, &text);
        }
        if let Err(e) = watch(reloader.clone(), &path) {
            tracing::warn!(error = %e, file = %path.display(), "cannot watch the config file; reload with SIGHUP or the admin API");
        }
    }
    #[cfg(unix)]
    {
        let reloader = reloader.clone();
        tokio::spawn(async move {
            let Ok(mut hup) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            else {
                return;
            };
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP received: reloading");
                reloader.trigger(Trigger::Requested);
            }
        });
    }
}

/// Watches the config file's directory; any change there (debounced) asks for a reload.
/// Watching the directory rather than the file sees editors' write-to-temp-then-rename saves
/// and Kubernetes' symlink swaps, which replace the file's inode.
pub fn watch(reloader: Reloader, path: &Path) -> notify::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res {
            if !ev.kind.is_access() {
                let _ = tx.send(());
            }
        }
    })?;
    watcher.watch(&dir, notify::RecursiveMode::NonRecursive)?;
    tokio::spawn(async move {
        // The watcher lives as long as this task.
        let _watcher = watcher;
        while rx.recv().await.is_some() {
            tokio::time::sleep(DEBOUNCE).await;
            while rx.try_recv().is_ok() {}
            reloader.trigger(Trigger::FileChanged);
        }
    });
    Ok(())
}
