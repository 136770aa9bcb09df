//! Process-wide state: the current snapshot (one `ArcSwap`), the long-lived registry, the
//! health checker, the access logger, and what `/status` says about the config.

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use crate::access_log::AccessLogger;
use crate::config::{Config, Diagnostic};
use crate::discovery::resolve::SharedLookup;
use crate::discovery::{Discovery, Hooks};
use crate::health::Checker;
use crate::runtime::Snapshot;
use crate::state::Registry;
use crate::tls::TlsMaterial;

/// Facts about the loaded config for `/status`.
#[derive(Debug, Clone)]
pub struct ConfigMeta {
    pub path: Option<PathBuf>,
    pub loaded_at: SystemTime,
    /// 1 for the first config, +1 for every successful load after it.
    pub generation: u64,
    pub last_reload_error: Option<String>,
    /// Hash of the file text last loaded, so a watcher event without a change is ignored.
    pub content_hash: Option<u64>,
}

pub struct App {
    snapshot: ArcSwap<Snapshot>,
    pub registry: Arc<Registry>,
    pub health: Checker,
    pub access_log: Arc<AccessLogger>,
    /// Read by the admin API, written on (re)load; never touched per request.
    pub meta: Mutex<ConfigMeta>,
    /// Requests no route matched (404).
    pub unrouted: AtomicU64,
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    /// Open client connections per listener address.
    pub connections: Mutex<Vec<(String, Arc<AtomicU64>)>>,
    /// Open client connections over all listeners (for `max_connections`).
    pub open_connections: Arc<AtomicU64>,
    /// Set to true when open WebSocket/upgrade tunnels must close (shutdown deadline).
    pub close_tunnels: tokio::sync::watch::Sender<bool>,
    /// Tunnels currently open.
    pub tunnels: Arc<AtomicU64>,
    /// Backends found by DNS (kept across reloads).
    pub discovery: Arc<Discovery>,
    /// The dashboard's last 15 minutes, sampled every 2 s.
    pub history: crate::history::History,
    /// Serializes snapshot builds (reloads and discovery changes), so none is lost.
    install_lock: Mutex<()>,
    /// Serializes whole reloads (read, validate, install, remember the text), so a watcher
    /// event racing a requested reload of the same text sees it loaded and skips it.
    pub(crate) reload_lock: Mutex<()>,
}

/// How often the slow-start clock looks at backend states.
const STATE_TICK: std::time::Duration = std::time::Duration::from_millis(100);

impl App {
    /// Builds the first snapshot and starts health checks and the access log writer. Must
    /// run inside a tokio runtime. Fails only on TLS files (certificates, keys, CAs).
    pub fn new(config: Config, path: Option<PathBuf>) -> Result<Arc<App>, Vec<Diagnostic>> {
        App::with_lookup(config, path, None)
    }

    /// [`App::new`], with every `discover` entry answered by `lookup` instead of DNS when
    /// given (tests).
    pub fn with_lookup(
        config: Config,
        path: Option<PathBuf>,
        lookup: Option<SharedLookup>,
    ) -> Result<Arc<App>, Vec<Diagnostic>> {
        let tls = crate::tls::load(&config, &base_dir(path.as_deref()))?;
        let discover = config.clone();
        let registry = Arc::new(Registry::default());
        let snap = Snapshot::build(Arc::new(config), tls, &registry, None);
        let app = App {
            health: Checker::default(),
            access_log: Arc::new(AccessLogger::stdout()),
            snapshot: ArcSwap::from_pointee(snap),
            registry,
            meta: Mutex::new(ConfigMeta {
                path,
                loaded_at: SystemTime::now(),
                generation: 1,
                last_reload_error: None,
                content_hash: None,
            }),
            unrouted: AtomicU64::new(0),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            connections: Mutex::new(Vec::new()),
            open_connections: Arc::new(AtomicU64::new(0)),
            close_tunnels: tokio::sync::watch::channel(false).0,
            tunnels: Arc::new(AtomicU64::new(0)),
            discovery: Arc::new(Discovery::new(lookup)),
            history: crate::history::History::default(),
            install_lock: Mutex::new(()),
            reload_lock: Mutex::new(()),
        };
        app.health.reconcile(&app.snapshot());
        let app = Arc::new(app);
        let (w1, w2) = (Arc::downgrade(&app), Arc::downgrade(&app));
        app.discovery.set_hooks(Hooks {
            snapshot: Box::new(move || w1.upgrade().map(|a| a.snapshot())),
            changed: Box::new(move || {
                if let Some(a) = w2.upgrade() {
                    a.refresh_membership();
                }
            }),
        });
        app.discovery.reconcile(&discover);
        // The slow-start clock: notes when each backend is first seen up.
        let weak = Arc::downgrade(&app);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(STATE_TICK);
            loop {
                tick.tick().await;
                let Some(app) = weak.upgrade() else { return };
                for pool in &app.snapshot().pools {
                    for b in &pool.backends {
                        b.shared.observe_up();
                    }
                }
            }
        });
        // The dashboard's history: reads the counters, never touches the request path.
        let weak = Arc::downgrade(&app);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(crate::history::INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(app) = weak.upgrade() else { return };
                app.history.sample(&app.snapshot(), crate::state::unix_ms());
            }
        });
        // Close idle backend connections nobody will reuse.
        let weak = Arc::downgrade(&app);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
            loop {
                tick.tick().await;
                let Some(app) = weak.upgrade() else { return };
                for pool in &app.snapshot().pools {
                    for b in &pool.backends {
                        b.shared.conns.sweep();
                    }
                }
            }
        });
        Ok(app)
    }

    /// Loads `config`'s TLS files (relative to the config file) and installs it; on a TLS
    /// problem nothing changes.
    pub fn load_and_install(&self, config: Config) -> Result<(), Vec<Diagnostic>> {
        let base = base_dir(self.meta().path.as_deref());
        let tls = crate::tls::load(&config, &base)?;
        self.install(config, tls);
        Ok(())
    }

    /// The current snapshot; hold it for the whole request.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Builds a snapshot of `config` (keeping long-lived state by identity), swaps it in and
    /// brings health checks in line with it.
    pub fn install(&self, config: Config, tls: TlsMaterial) {
        let _building = self.install_lock.lock();
        self.discovery.reconcile(&config);
        let config = self.discovery.merge(&config);
        let current = self.snapshot();
        let snap = Arc::new(Snapshot::build(
            Arc::new(config),
            tls,
            &self.registry,
            Some(&current),
        ));
        self.snapshot.store(snap.clone());
        self.health.reconcile(&snap);
        let mut meta = self.meta();
        meta.generation += 1;
        meta.loaded_at = SystemTime::now();
        meta.last_reload_error = None;
    }

    /// Discovered membership changed: rebuild the snapshot from the current config (the
    /// reload path's build, so state is kept by identity), without counting a reload.
    pub fn refresh_membership(&self) {
        let _building = self.install_lock.lock();
        let current = self.snapshot();
        let config = self.discovery.merge(&current.config);
        let tls = TlsMaterial {
            server: current.tls_server.clone(),
            backends: current.tls_backends.clone(),
            warnings: Vec::new(),
        };
        let snap = Arc::new(Snapshot::build(
            Arc::new(config),
            tls,
            &self.registry,
            Some(&current),
        ));
        self.snapshot.store(snap.clone());
        self.health.reconcile(&snap);
    }

    /// Startup is over (first resolutions and health verdicts are in): backends that come
    /// up from now on get `slow_start`.
    pub fn end_startup(&self) {
        for pool in &self.snapshot().pools {
            for b in &pool.backends {
                b.shared.observe_up();
            }
        }
        self.registry.end_startup();
    }

    pub fn meta(&self) -> parking_lot::MutexGuard<'_, ConfigMeta> {
        self.meta.lock()
    }

    /// The open-connections gauge of a listener, registered on first use.
    pub fn listener_gauge(&self, listener: &str) -> Arc<AtomicU64> {
        let mut l = self.connections.lock();
        if let Some((_, g)) = l.iter().find(|(name, _)| name == listener) {
            return g.clone();
        }
        let g = Arc::new(AtomicU64::new(0));
        l.push((listener.to_string(), g.clone()));
        g
    }
}

/// Where relative file names in a config resolve: the config file's directory.
pub fn base_dir(config_path: Option<&std::path::Path>) -> PathBuf {
    config_path
        .and_then(|p| p.parent())
        .filter(|d| !d.as_os_str().is_empty())
        .map(|d| d.to_path_buf())
        .unwrap_or_else(|| PathBuf::from("."))
}
