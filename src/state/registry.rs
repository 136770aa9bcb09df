//! The registry: backend state, pool counters and session tables by identity, synced on reload.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::config::AdminState;
use crate::sessions::{SessionTable, TableSettings};

use super::{BackendShared, PoolShared};

#[derive(Hash, PartialEq, Eq, Clone)]
pub(super) struct BackendKey {
    pub(super) pool: String,
    pub(super) id: String,
    pub(super) address: String,
}

/// Session tables by (kind, pool), with the settings they were built from.
type Tables =
    HashMap<(&'static str, String), (TableSettings, Arc<SessionTable>), ahash::RandomState>;

/// All long-lived state. Locked only while a snapshot is built or the admin API looks a
/// backend up, never per request: the snapshot holds `Arc`s to the entries it uses.
#[derive(Default)]
pub struct Registry {
    pub(super) backends: Mutex<HashMap<BackendKey, Arc<BackendShared>, ahash::RandomState>>,
    pools: Mutex<HashMap<String, Arc<PoolShared>, ahash::RandomState>>,
    /// Session tables by (kind, pool): learned sessions and remembered keys.
    pub(super) tables: Mutex<Tables>,
    /// Set once the first backends have had their chance to come up (no slow start for
    /// them); backends created before it are `initial`.
    started: AtomicBool,
}

/// A backend as the snapshot builder names it.
pub struct BackendIdentity<'a> {
    pub pool: &'a str,
    pub id: &'a str,
    pub address: &'a str,
    pub file_state: AdminState,
    pub active_checks: bool,
    /// A discovered backend whose record is gone.
    pub vanished: bool,
}

impl Registry {
    /// The shared state of each backend in the new config (existing entries reused, new ones
    /// created), and the state of backends no longer configured dropped.
    pub fn sync(&self, wanted: &[BackendIdentity<'_>]) -> Vec<Arc<BackendShared>> {
        let mut map = self.backends.lock();
        let mut out = Vec::with_capacity(wanted.len());
        let mut keep = std::collections::HashSet::with_capacity(wanted.len());
        for w in wanted {
            let key = BackendKey {
                pool: w.pool.to_string(),
                id: w.id.to_string(),
                address: w.address.to_string(),
            };
            let shared = map
                .entry(key.clone())
                .or_insert_with(|| {
                    let s = BackendShared::new(w.active_checks);
                    s.initial
                        .store(!self.started.load(Ordering::Relaxed), Ordering::Relaxed);
                    Arc::new(s)
                })
                .clone();
            shared.set_file_state(w.file_state);
            shared.set_active_checks(w.active_checks);
            shared.set_vanished(w.vanished);
            keep.insert(key);
            out.push(shared);
        }
        map.retain(|k, _| keep.contains(k));
        out
    }

    /// A pool's session table of `kind` (`learn` or `remember`): kept across reloads while
    /// its settings stay the same (changed settings start a fresh table). Tables no longer
    /// configured are dropped by [`Registry::retain_tables`].
    pub fn session_table(
        &self,
        kind: &'static str,
        pool: &str,
        settings: &TableSettings,
    ) -> Arc<SessionTable> {
        let mut map = self.tables.lock();
        let key = (kind, pool.to_string());
        if let Some((s, t)) = map.get(&key) {
            if s == settings {
                return t.clone();
            }
        }
        let t = Arc::new(SessionTable::new(kind, pool, settings));
        map.insert(key, (settings.clone(), t.clone()));
        t
    }

    /// Drops the session tables not in `wanted` ((kind, pool) pairs).
    pub fn retain_tables(&self, wanted: &[(&str, &str)]) {
        let mut map = self.tables.lock();
        map.retain(|(kind, pool), _| wanted.contains(&(*kind, pool.as_str())));
    }

    /// Startup is over: backends that come up from now on get slow start.
    pub fn end_startup(&self) {
        if self.started.swap(true, Ordering::Relaxed) {
            return;
        }
        let map = self.backends.lock();
        for b in map.values() {
            b.initial.store(false, Ordering::Relaxed);
        }
    }

    pub fn pool(&self, name: &str) -> Arc<PoolShared> {
        let mut map = self.pools.lock();
        map.entry(name.to_string()).or_default().clone()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::state::{State, NO_RAMP};

    fn ident<'a>(id: &'a str, address: &'a str, file_state: AdminState) -> BackendIdentity<'a> {
        BackendIdentity {
            pool: "p",
            id,
            address,
            file_state,
            active_checks: false,
            vanished: false,
        }
    }

    #[test]
    fn state_survives_resync_by_identity_and_is_dropped_when_removed() {
        let r = Registry::default();
        let first = r.sync(&[
            ident("a", "127.0.0.1:1", AdminState::Active),
            ident("b", "127.0.0.1:2", AdminState::Active),
        ]);
        first[0].requests.store(5, Ordering::Relaxed);
        let second = r.sync(&[ident("a", "127.0.0.1:1", AdminState::Active)]);
        assert!(Arc::ptr_eq(&first[0], &second[0]));
        assert_eq!(second[0].requests.load(Ordering::Relaxed), 5);
        // b was removed, so coming back it starts fresh.
        let third = r.sync(&[ident("b", "127.0.0.1:2", AdminState::Active)]);
        assert!(!Arc::ptr_eq(&first[1], &third[0]));
        // Same id at a new address is a different backend.
        let moved = r.sync(&[ident("b", "127.0.0.1:3", AdminState::Active)]);
        assert!(!Arc::ptr_eq(&third[0], &moved[0]));
    }

    #[test]
    fn drain_start_is_kept_while_draining() {
        let r = Registry::default();
        let s = r.sync(&[ident("a", "x:1", AdminState::Drain)]);
        let t0 = s[0].drain_started_ms().expect("draining");
        #[allow(clippy::disallowed_methods)] // a plain #[test]: no runtime to stall
        std::thread::sleep(Duration::from_millis(5));
        let s = r.sync(&[ident("a", "x:1", AdminState::Drain)]);
        assert_eq!(s[0].drain_started_ms(), Some(t0));
        let s = r.sync(&[ident("a", "x:1", AdminState::Active)]);
        assert_eq!(s[0].drain_started_ms(), None);
    }

    #[test]
    fn admin_override_survives_reloads_until_the_file_changes_that_backend() {
        let r = Registry::default();
        let s = r.sync(&[ident("a", "x:1", AdminState::Active)]);
        s[0].set_admin(Some(AdminState::Disabled));
        assert_eq!(s[0].state(), State::Disabled);
        // An unrelated reload keeps the override.
        let s = r.sync(&[ident("a", "x:1", AdminState::Active)]);
        assert_eq!(s[0].state(), State::Disabled);
        // The file now says drain: the file wins.
        let s = r.sync(&[ident("a", "x:1", AdminState::Drain)]);
        assert_eq!(s[0].state(), State::Draining);
    }

    #[test]
    fn a_vanished_backend_drains_and_comes_back_to_its_earlier_state() {
        let r = Registry::default();
        let gone = |v| BackendIdentity {
            vanished: v,
            ..ident("a", "x:1", AdminState::Active)
        };
        let s = r.sync(&[gone(false)]);
        assert_eq!(s[0].state(), State::Up);
        let s = r.sync(&[gone(true)]);
        assert_eq!(s[0].state(), State::Draining);
        let t0 = s[0].drain_started_ms().expect("drain clock started");
        #[allow(clippy::disallowed_methods)] // a plain #[test]: no runtime to stall
        std::thread::sleep(Duration::from_millis(3));
        assert_eq!(r.sync(&[gone(true)])[0].drain_started_ms(), Some(t0));
        let s = r.sync(&[gone(false)]);
        assert_eq!(s[0].state(), State::Up);
        assert_eq!(s[0].drain_started_ms(), None);
        // An operator's disable outlives a vanish and a return.
        s[0].set_admin(Some(AdminState::Disabled));
        r.sync(&[gone(true)]);
        let s = r.sync(&[gone(false)]);
        assert_eq!(s[0].state(), State::Disabled);
        // An operator's drain too, with its own start time.
        s[0].set_admin(Some(AdminState::Drain));
        let t1 = s[0].drain_started_ms().unwrap();
        r.sync(&[gone(true)]);
        let s = r.sync(&[gone(false)]);
        assert_eq!(s[0].state(), State::Draining);
        assert_eq!(s[0].drain_started_ms(), Some(t1));
    }

    #[test]
    fn the_slow_start_clock_restarts_on_each_return_and_spares_startup_backends() {
        let r = Registry::default();
        let s = r.sync(&[ident("boot", "x:1", AdminState::Active)]);
        s[0].observe_up();
        assert_eq!(
            s[0].up_since_ms(),
            Some(NO_RAMP),
            "up at startup: no warm-up"
        );
        r.end_startup();
        let s = r.sync(&[
            ident("boot", "x:1", AdminState::Active),
            ident("new", "x:2", AdminState::Active),
        ]);
        s[1].observe_up();
        let first = s[1].up_since_ms().expect("seen up");
        assert_ne!(first, NO_RAMP, "added later: warms up");
        // Disabled: the clock stops; enabled again: it restarts.
        s[1].set_admin(Some(AdminState::Disabled));
        s[1].observe_up();
        assert_eq!(s[1].up_since_ms(), None);
        #[allow(clippy::disallowed_methods)] // a plain #[test]: no runtime to stall
        std::thread::sleep(Duration::from_millis(3));
        s[1].set_admin(None);
        s[1].observe_up();
        assert!(s[1].up_since_ms().unwrap() > first);
        // The startup backend, back from down, warms up too.
        s[0].set_admin(Some(AdminState::Disabled));
        s[0].observe_up();
        s[0].set_admin(None);
        s[0].observe_up();
        assert_ne!(s[0].up_since_ms(), Some(NO_RAMP));
    }
}
