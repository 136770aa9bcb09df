//! Long-lived per-backend and per-pool state (counters, connections, drain start), keyed by
//! identity and kept across config reloads.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::proxy::upstream::ConnPool;

/// What survives a reload for one backend. Identity is (pool, id, address): a backend whose
/// address changes is a new backend.
#[derive(Debug)]
pub struct BackendShared {
    pub in_flight: AtomicU64,
    pub requests: AtomicU64,
    /// Requests that followed a pin to this backend while it was draining.
    pub pinned_while_draining: AtomicU64,
    /// Unix milliseconds of the last such request; 0 = never.
    pub last_pinned_at_ms: AtomicU64,
    /// Milliseconds since the registry's epoch when draining began, plus one; 0 = not draining.
    drain_started: AtomicU64,
    /// Idle keep-alive connections to this backend.
    pub conns: ConnPool,
}

impl BackendShared {
    fn new() -> Self {
        BackendShared {
            in_flight: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            pinned_while_draining: AtomicU64::new(0),
            last_pinned_at_ms: AtomicU64::new(0),
            drain_started: AtomicU64::new(0),
            conns: ConnPool::new(),
        }
    }

    /// State not registered anywhere (used only if the registry and config ever disagree).
    pub fn detached() -> Self {
        BackendShared::new()
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Milliseconds (since the registry epoch) when draining began, if draining.
    pub fn drain_started_ms(&self) -> Option<u64> {
        match self.drain_started.load(Ordering::Relaxed) {
            0 => None,
            t => Some(t - 1),
        }
    }

    fn set_draining(&self, draining: bool, now_ms: u64) {
        if draining {
            let _ = self.drain_started.compare_exchange(
                0,
                now_ms + 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        } else {
            self.drain_started.store(0, Ordering::Relaxed);
        }
    }

    pub fn note_pinned_while_draining(&self) {
        self.pinned_while_draining.fetch_add(1, Ordering::Relaxed);
        self.last_pinned_at_ms.store(unix_ms(), Ordering::Relaxed);
    }
}

/// Pool-wide counters used by bounded loads and least-in-flight placement.
#[derive(Debug, Default)]
pub struct PoolShared {
    pub in_flight: AtomicU64,
    /// Rotating start for least-in-flight ties.
    pub rotor: AtomicUsize,
}

#[derive(Hash, PartialEq, Eq, Clone)]
struct BackendKey {
    pool: String,
    id: String,
    address: String,
}

/// All long-lived state. Locked only while a snapshot is built, never per request: the
/// snapshot holds `Arc`s to the entries it uses.
pub struct Registry {
    epoch: Instant,
    backends: Mutex<HashMap<BackendKey, Arc<BackendShared>, ahash::RandomState>>,
    pools: Mutex<HashMap<String, Arc<PoolShared>, ahash::RandomState>>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            epoch: Instant::now(),
            backends: Mutex::default(),
            pools: Mutex::default(),
        }
    }
}

/// A backend as the snapshot builder names it.
pub struct BackendIdentity<'a> {
    pub pool: &'a str,
    pub id: &'a str,
    pub address: &'a str,
    pub draining: bool,
}

impl Registry {
    /// Milliseconds since this registry was created (monotonic).
    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The shared state of each backend in the new config (existing entries reused, new ones
    /// created), and the state of backends no longer configured dropped.
    pub fn sync(&self, wanted: &[BackendIdentity<'_>]) -> Vec<Arc<BackendShared>> {
        let now = self.now_ms();
        // A poisoned lock only means another builder panicked; the map itself is still valid.
        let mut map = self.backends.lock().unwrap_or_else(|e| e.into_inner());
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
                .or_insert_with(|| Arc::new(BackendShared::new()))
                .clone();
            shared.set_draining(w.draining, now);
            keep.insert(key);
            out.push(shared);
        }
        map.retain(|k, _| keep.contains(k));
        out
    }

    pub fn pool(&self, name: &str) -> Arc<PoolShared> {
        let mut map = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(name.to_string()).or_default().clone()
    }
}

/// Wall-clock Unix time in milliseconds (0 if the clock is before 1970).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ident<'a>(id: &'a str, address: &'a str, draining: bool) -> BackendIdentity<'a> {
        BackendIdentity {
            pool: "p",
            id,
            address,
            draining,
        }
    }

    #[test]
    fn state_survives_resync_by_identity_and_is_dropped_when_removed() {
        let r = Registry::default();
        let first = r.sync(&[
            ident("a", "127.0.0.1:1", false),
            ident("b", "127.0.0.1:2", false),
        ]);
        first[0].requests.store(5, Ordering::Relaxed);
        let second = r.sync(&[ident("a", "127.0.0.1:1", false)]);
        assert!(Arc::ptr_eq(&first[0], &second[0]));
        assert_eq!(second[0].requests.load(Ordering::Relaxed), 5);
        // b was removed, so coming back it starts fresh.
        let third = r.sync(&[ident("b", "127.0.0.1:2", false)]);
        assert!(!Arc::ptr_eq(&first[1], &third[0]));
        // Same id at a new address is a different backend.
        let moved = r.sync(&[ident("b", "127.0.0.1:3", false)]);
        assert!(!Arc::ptr_eq(&third[0], &moved[0]));
    }

    #[test]
    fn drain_start_is_kept_while_draining() {
        let r = Registry::default();
        let s = r.sync(&[ident("a", "x:1", true)]);
        let t0 = s[0].drain_started_ms().expect("draining");
        std::thread::sleep(std::time::Duration::from_millis(5));
        let s = r.sync(&[ident("a", "x:1", true)]);
        assert_eq!(s[0].drain_started_ms(), Some(t0));
        let s = r.sync(&[ident("a", "x:1", false)]);
        assert_eq!(s[0].drain_started_ms(), None);
    }
}
