//! DNS discovery: a task per `[[pools.NAME.discover]]` entry re-resolves its name every
//! `interval` and keeps the set of backends it found (long-lived, outside the snapshot).
//! A change reaches the snapshot through the same rebuild a reload uses: a pool's
//! membership is its file backends plus the discovered ones ([`Discovery::merge`]), so
//! per-backend state is kept by identity exactly as on reloads.
//!
//! A backend whose record vanishes stays a member, draining, until `drain_timeout` or until
//! it is down (or disabled); then it is dropped. A failed resolution changes nothing; an
//! empty one counts only after it has lasted `hold`.

pub mod resolve;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use parking_lot::{Mutex, MutexGuard};
use tokio::task::JoinHandle;

use crate::config::{AdminState, BackendConfig, Config, DiscoverConfig, Discovered};
use crate::runtime::{Pool, Snapshot};
use crate::state::{now_ms, unix_ms, State};
use resolve::{Found, Hickory, LookupError, SharedLookup};

/// A resolution that takes longer than this counts as failed.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// How discovery reaches the rest of the process (set once by the app).
pub struct Hooks {
    /// The current snapshot (to see whether a vanished backend is done draining).
    pub snapshot: Box<dyn Fn() -> Option<Arc<Snapshot>> + Send + Sync>,
    /// Membership changed: rebuild the snapshot.
    pub changed: Box<dyn Fn() + Send + Sync>,
}

/// One member of an entry's set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub found: Found,
    /// Its record is gone; it drains until it is dropped.
    pub vanished: bool,
}

/// Resolutions by result: ok, empty, error.
pub const RESULTS: [&str; 3] = ["ok", "empty", "error"];

struct Entry {
    cfg: DiscoverConfig,
    /// Sorted by id.
    members: Vec<Member>,
    last_resolved_unix_ms: Option<u64>,
    last_error: Option<String>,
    /// `now_ms()` of the first empty answer of the current run of empty answers.
    empty_since: Option<u64>,
    counts: [u64; 3],
    resolved_once: bool,
    task: Option<JoinHandle<()>>,
}

/// What `/status` shows for one entry.
#[derive(Debug, Clone)]
pub struct EntryView {
    pub name: String,
    /// Ids of the backends it yields (vanished ones included while they drain).
    pub addresses: Vec<String>,
    pub last_resolved_unix_ms: Option<u64>,
    pub last_error: Option<String>,
    pub counts: [u64; 3],
}

type Key = (String, String);

/// Every entry's discovered set, resolution counters and task.
pub struct Discovery {
    entries: Mutex<HashMap<Key, Entry>>,
    /// Replaces hickory-resolver for every entry (tests).
    lookup: Option<SharedLookup>,
    hooks: OnceLock<Hooks>,
}

impl Drop for Discovery {
    fn drop(&mut self) {
        let entries = self.entries.get_mut();
        for e in entries.values_mut() {
            if let Some(t) = e.task.take() {
                t.abort();
            }
        }
    }
}

impl Discovery {
    /// `lookup`: answer every entry from it instead of DNS (tests); `None` = hickory.
    pub fn new(lookup: Option<SharedLookup>) -> Discovery {
        Discovery {
            entries: Mutex::new(HashMap::new()),
            lookup,
            hooks: OnceLock::new(),
        }
    }

    pub fn set_hooks(&self, hooks: Hooks) {
        let _ = self.hooks.set(hooks);
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Key, Entry>> {
        self.entries.lock()
    }

    /// Starts a task for each new (or changed) entry of `config` and stops those of entries
    /// no longer configured (their backends leave with them). An entry whose settings changed
    /// keeps its set. Must run inside a tokio runtime.
    pub fn reconcile(self: &Arc<Self>, config: &Config) {
        let mut entries = self.lock();
        let wanted: HashMap<Key, &DiscoverConfig> = config
            .pools
            .iter()
            .flat_map(|p| {
                p.discover
                    .iter()
                    .map(|d| ((p.name.clone(), d.name.clone()), d))
            })
            .collect();
        entries.retain(|k, e| {
            let keep = wanted.contains_key(k);
            if !keep {
                if let Some(t) = e.task.take() {
                    t.abort();
                }
            }
            keep
        });
        for (key, cfg) in wanted {
            let entry = entries.entry(key.clone()).or_insert_with(|| Entry {
                cfg: cfg.clone(),
                members: Vec::new(),
                last_resolved_unix_ms: None,
                last_error: None,
                empty_since: None,
                counts: [0; 3],
                resolved_once: false,
                task: None,
            });
            if entry.task.is_some() && entry.cfg == *cfg {
                continue;
            }
            if let Some(t) = entry.task.take() {
                t.abort();
            }
            entry.cfg = cfg.clone();
            let weak = Arc::downgrade(self);
            let (pool, cfg) = (key.0.clone(), cfg.clone());
            entry.task = Some(tokio::spawn(run(weak, pool, cfg)));
        }
    }

    /// `config` with each pool's membership = its file backends + the discovered ones (in
    /// entry order, each entry's sorted by id). An id already taken (by a file backend or an
    /// earlier entry) is skipped.
    pub fn merge(&self, config: &Config) -> Config {
        let entries = self.lock();
        let mut c = config.clone();
        for p in &mut c.pools {
            p.backends.retain(|b| b.discovered.is_none());
            let mut ids: HashSet<String> = p.backends.iter().map(|b| b.id.clone()).collect();
            for d in &p.discover {
                let Some(e) = entries.get(&(p.name.clone(), d.name.clone())) else {
                    continue;
                };
                for m in &e.members {
                    if !ids.insert(m.found.id.clone()) {
                        continue;
                    }
                    p.backends.push(BackendConfig {
                        id: m.found.id.clone(),
                        address: m.found.address.clone(),
                        weight: m.found.weight,
                        route: m.found.route.clone(),
                        state: AdminState::Active,
                        tls: d.tls.clone(),
                        max_conns: d.max_conns,
                        discovered: Some(Discovered {
                            source: d.name.clone(),
                            vanished: m.vanished,
                        }),
                    });
                }
            }
        }
        c
    }

    /// Records one resolution of entry `name` of `pool`; true when the set changed.
    pub fn apply(&self, pool: &str, name: &str, result: Result<Vec<Found>, LookupError>) -> bool {
        let snap = self.hooks.get().and_then(|h| (h.snapshot)());
        let mut entries = self.lock();
        let Some(e) = entries.get_mut(&(pool.to_string(), name.to_string())) else {
            return false;
        };
        let before = e.members.clone();
        let now = now_ms();
        match result {
            Ok(found) => {
                e.counts[0] += 1;
                e.last_resolved_unix_ms = Some(unix_ms());
                e.last_error = None;
                e.empty_since = None;
                e.members = next_members(&e.members, found);
            }
            Err(LookupError::Empty) => {
                e.counts[1] += 1;
                e.last_resolved_unix_ms = Some(unix_ms());
                e.last_error = None;
                let since = *e.empty_since.get_or_insert(now);
                if now.saturating_sub(since) >= e.cfg.hold.as_millis() as u64 {
                    e.members = next_members(&e.members, Vec::new());
                } else if !e.members.is_empty() {
                    tracing::info!(
                        pool,
                        entry = name,
                        "empty DNS answer: keeping the last set during `hold`"
                    );
                }
            }
            Err(LookupError::Failed(msg)) => {
                e.counts[2] += 1;
                tracing::warn!(pool, entry = name, error = %msg, "DNS resolution failed: the pool keeps its last known backends");
                e.last_error = Some(msg);
            }
        }
        // Vanished members leave once their drain is over.
        let p = snap
            .as_ref()
            .and_then(|s| s.pool_index(pool).map(|i| &s.pools[i]));
        e.members
            .retain(|m| !m.vanished || !p.is_some_and(|p| drain_over(p, &m.found.id)));
        let changed = e.members != before;
        if changed {
            for m in &e.members {
                let was = before.iter().find(|b| b.found.id == m.found.id);
                match (was.map(|w| w.vanished), m.vanished) {
                    (None, _) => {
                        tracing::info!(pool, entry = name, backend = %m.found.id, "discovered a backend")
                    }
                    (Some(false), true) => {
                        tracing::info!(pool, entry = name, backend = %m.found.id, "DNS record gone: backend drains")
                    }
                    (Some(true), false) => {
                        tracing::info!(pool, entry = name, backend = %m.found.id, "DNS record back: backend returns")
                    }
                    _ => {}
                }
            }
            for b in before
                .iter()
                .filter(|b| !e.members.iter().any(|m| m.found.id == b.found.id))
            {
                tracing::info!(pool, entry = name, backend = %b.found.id, "drain over: discovered backend removed");
            }
        }
        changed
    }

    fn changed(&self) {
        if let Some(h) = self.hooks.get() {
            (h.changed)();
        }
    }

    /// The entries of `pool`, in no particular order.
    pub fn view(&self, pool: &str) -> Vec<EntryView> {
        let entries = self.lock();
        let mut v: Vec<EntryView> = entries
            .iter()
            .filter(|((p, _), _)| p == pool)
            .map(|((_, name), e)| EntryView {
                name: name.clone(),
                addresses: e.members.iter().map(|m| m.found.id.clone()).collect(),
                last_resolved_unix_ms: e.last_resolved_unix_ms,
                last_error: e.last_error.clone(),
                counts: e.counts,
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Waits until every entry has been resolved once (whatever the result) and the
    /// snapshot holds what it found, at most `limit`.
    pub async fn first_resolutions(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while tokio::time::Instant::now() < deadline {
            if self.lock().values().all(|e| e.resolved_once) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The new member list after an answer: everything found (present), plus earlier members
/// missing from it (vanished). Sorted by id.
fn next_members(old: &[Member], found: Vec<Found>) -> Vec<Member> {
    let mut next: Vec<Member> = old
        .iter()
        .filter(|m| !found.iter().any(|f| f.id == m.found.id))
        .map(|m| Member {
            found: m.found.clone(),
            vanished: true,
        })
        .collect();
    next.extend(found.into_iter().map(|found| Member {
        found,
        vanished: false,
    }));
    next.sort_by(|a, b| a.found.id.cmp(&b.found.id));
    next
}

/// Is a vanished backend done: down, disabled, or draining past `drain_timeout`?
fn drain_over(pool: &Pool, id: &str) -> bool {
    let Some(i) = pool.by_id(id) else {
        return true;
    };
    match pool.backends[i].shared.state() {
        State::Down | State::Disabled => true,
        State::Draining => !pool.draining_within_timeout(i),
        // Not rebuilt as vanished yet.
        State::Up => false,
    }
}

async fn run(discovery: Weak<Discovery>, pool: String, cfg: DiscoverConfig) {
    let mut hickory: Option<SharedLookup> = None;
    loop {
        let lookup = match discovery.upgrade() {
            Some(d) => d.lookup.clone(),
            None => return,
        };
        let lookup = match lookup.or_else(|| hickory.clone()) {
            Some(l) => Ok(l),
            None => Hickory::new(cfg.resolver.as_deref()).map(|h| {
                let l: SharedLookup = Arc::new(h);
                hickory = Some(l.clone());
                l
            }),
        };
        let result = match lookup {
            Ok(l) => tokio::time::timeout(RESOLVE_TIMEOUT, resolve::resolve(&*l, &cfg))
                .await
                .unwrap_or_else(|_| Err(LookupError::Failed("resolution timed out".into()))),
            Err(e) => Err(e),
        };
        let Some(d) = discovery.upgrade() else { return };
        if d.apply(&pool, &cfg.name, result) {
            d.changed();
        }
        // Only now: the snapshot holds what this resolution found.
        if let Some(e) = d.lock().get_mut(&(pool.clone(), cfg.name.clone())) {
            e.resolved_once = true;
        }
        drop(d);
        tokio::time::sleep(cfg.interval).await;
    }
}

/// `tether check`: resolves every entry of `config` once. One line per entry.
pub async fn check(config: &Config) -> Vec<(String, String, Result<Vec<Found>, LookupError>)> {
    let mut out = Vec::new();
    for p in &config.pools {
        for d in &p.discover {
            let result = match Hickory::new(d.resolver.as_deref()) {
                Ok(h) => tokio::time::timeout(RESOLVE_TIMEOUT, resolve::resolve(&h, d))
                    .await
                    .unwrap_or_else(|_| Err(LookupError::Failed("resolution timed out".into()))),
                Err(e) => Err(e),
            };
            out.push((p.name.clone(), d.name.clone(), result));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(id: &str) -> Found {
        Found {
            id: id.into(),
            address: id.into(),
            weight: 1,
            route: id.into(),
        }
    }

    #[test]
    fn missing_members_vanish_and_come_back() {
        let m = next_members(&[], vec![found("a:1"), found("b:1")]);
        assert!(m.iter().all(|m| !m.vanished));
        let m = next_members(&m, vec![found("b:1")]);
        assert_eq!(
            m.iter()
                .map(|m| (m.found.id.as_str(), m.vanished))
                .collect::<Vec<_>>(),
            [("a:1", true), ("b:1", false)]
        );
        let m = next_members(&m, vec![found("a:1"), found("b:1"), found("c:1")]);
        assert!(m.iter().all(|m| !m.vanished));
        assert_eq!(m.len(), 3);
    }
}
