//! Session tables (learned sessions, remembered ip/header keys): key → backend id, bounded,
//! idle-expiring, kept across reloads, optionally shared between instances through a store.

pub mod store;

use std::sync::Arc;
use std::time::{Duration, Instant};

pub use store::{Store, StoreUrl};

/// Keys longer than this are not kept (memory stays bounded).
pub const MAX_KEY: usize = 512;

#[derive(Clone)]
struct Entry {
    backend: Arc<str>,
    /// When this entry was last written to the shared store.
    written: Instant,
}

/// The settings a table is built from; a reload with the same settings keeps the table.
#[derive(Debug, Clone, PartialEq)]
pub struct TableSettings {
    pub ttl: Duration,
    pub capacity: u64,
    pub store: Option<String>,
}

/// One pool's table of one kind (`learn` or `remember`).
pub struct SessionTable {
    cache: moka::sync::Cache<Box<[u8]>, Entry, ahash::RandomState>,
    ttl: Duration,
    store: Option<Arc<Store>>,
}

impl SessionTable {
    /// `capacity` bounds the entries (the least recently used go first); `ttl` is the idle
    /// expiry. With a store, entries are shared under `tether:<kind>:<pool>:`.
    pub fn new(kind: &str, pool: &str, s: &TableSettings) -> SessionTable {
        // The store needs a runtime for its background tasks; `tether explain` has none.
        let store = s
            .store
            .as_deref()
            .filter(|_| tokio::runtime::Handle::try_current().is_ok())
            .and_then(|raw| match StoreUrl::parse(raw) {
                Ok(url) => Some(Store::start(&url, raw, kind, pool, s.ttl)),
                Err(e) => {
                    // Config checking rejects bad URLs before a table is built.
                    tracing::error!(error = %e, "invalid store URL; entries stay local");
                    None
                }
            });
        SessionTable {
            cache: moka::sync::Cache::builder()
                .max_capacity(s.capacity)
                // Beyond capacity the least recently seen keys go. (moka's default, TinyLFU,
                // may refuse a new key outright when the table is full: a new client would
                // then not be remembered at all.)
                .eviction_policy(moka::policy::EvictionPolicy::lru())
                .time_to_idle(s.ttl)
                .build_with_hasher(ahash::RandomState::new()),
            ttl: s.ttl,
            store,
        }
    }

    /// The backend id `key` belongs to (refreshing its idle time locally and, now and then, in
    /// the store).
    pub fn lookup(&self, key: &[u8]) -> Option<Arc<str>> {
        let e = self.cache.get(key)?;
        if let Some(store) = &self.store {
            if e.written.elapsed() > self.ttl / 4 {
                store.write(key, &e.backend);
                self.cache.insert(
                    key.into(),
                    Entry {
                        backend: e.backend.clone(),
                        written: Instant::now(),
                    },
                );
            }
        }
        Some(e.backend)
    }

    /// Records (or re-records) `key` → `backend`.
    pub fn insert(&self, key: &[u8], backend: &Arc<str>) {
        if key.is_empty() || key.len() > MAX_KEY {
            return;
        }
        if let Some(e) = self.cache.get(key) {
            if e.backend == *backend && e.written.elapsed() <= self.ttl / 4 {
                return;
            }
        }
        if let Some(store) = &self.store {
            store.write(key, backend);
        }
        self.cache.insert(
            key.into(),
            Entry {
                backend: backend.clone(),
                written: Instant::now(),
            },
        );
    }

    pub fn forget(&self, key: &[u8]) {
        self.cache.invalidate(key);
    }

    /// Every entry (key, backend id), for an upgrade handover.
    pub fn export(&self) -> Vec<(Vec<u8>, Arc<str>)> {
        self.cache
            .iter()
            .map(|(k, e)| (k.to_vec(), e.backend))
            .collect()
    }

    /// Takes over entries exported by [`SessionTable::export`] (locally only: a shared
    /// store already has them).
    pub fn import(&self, key: &[u8], backend: Arc<str>) {
        if key.is_empty() || key.len() > MAX_KEY {
            return;
        }
        let entry = Entry {
            backend,
            written: Instant::now(),
        };
        self.cache.insert(key.into(), entry);
    }

    /// On a local miss, asks the shared store (within [`store::READ_DEADLINE`]) and keeps the
    /// answer. Never fails: an unreachable or slow store is a miss.
    pub async fn lookup_shared(&self, key: &[u8]) -> Option<Arc<str>> {
        let store = self.store.as_ref()?;
        if key.is_empty() || key.len() > MAX_KEY {
            return None;
        }
        let backend: Arc<str> = store.read(key).await?.into();
        self.cache.insert(
            key.into(),
            Entry {
                backend: backend.clone(),
                written: Instant::now(),
            },
        );
        Some(backend)
    }

    pub fn has_store(&self) -> bool {
        self.store.is_some()
    }

    pub fn store(&self) -> Option<&Arc<Store>> {
        self.store.as_ref()
    }

    /// Approximate number of entries.
    pub fn len(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// This table in `/status`: entries, and the store's state and last error.
    pub fn status(&self) -> serde_json::Value {
        let store = self.store.as_ref().map(|s| {
            let err = s.stats.last_error();
            serde_json::json!({
                "url": s.url(),
                "kind": s.kind(),
                "state": s.stats.state().as_str(),
                "last_error": err.as_ref().map(|e| e.0.clone()),
                "last_error_at_ms": err.map(|e| e.1),
            })
        });
        serde_json::json!({ "entries": self.len(), "store": store })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(ttl: Duration, store: Option<&str>) -> TableSettings {
        TableSettings {
            ttl,
            capacity: 100,
            store: store.map(Into::into),
        }
    }

    #[tokio::test]
    async fn records_forgets_and_bounds_entries() {
        let t = SessionTable::new("learn", "p", &settings(Duration::from_secs(60), None));
        let a: Arc<str> = "a".into();
        t.insert(b"s1", &a);
        assert_eq!(t.lookup(b"s1").as_deref(), Some("a"));
        t.insert(b"s1", &"b".into());
        assert_eq!(
            t.lookup(b"s1").as_deref(),
            Some("b"),
            "a changed value is recorded again"
        );
        t.forget(b"s1");
        assert_eq!(t.lookup(b"s1"), None);
        t.insert(&vec![b'x'; MAX_KEY + 1], &a);
        assert_eq!(t.lookup(&vec![b'x'; MAX_KEY + 1]), None);
        for i in 0..1000 {
            t.insert(format!("k{i}").as_bytes(), &a);
        }
        assert!(t.len() <= 100, "capacity is a hard bound: {}", t.len());
    }

    #[tokio::test]
    async fn a_full_table_forgets_the_least_recently_seen_key() {
        let t = SessionTable::new("remember", "p", &settings(Duration::from_secs(60), None));
        let a: Arc<str> = "a".into();
        for i in 0..100 {
            t.insert(format!("k{i}").as_bytes(), &a);
        }
        // Every key is seen often (so a frequency-based policy would refuse a newcomer), k1
        // least recently.
        for _ in 0..3 {
            assert!(t.lookup(b"k1").is_some());
        }
        for _ in 0..3 {
            for i in (0..100).filter(|&i| i != 1) {
                assert!(t.lookup(format!("k{i}").as_bytes()).is_some());
            }
        }
        t.cache.run_pending_tasks();
        t.insert(b"new", &a);
        t.cache.run_pending_tasks();
        assert_eq!(
            t.lookup(b"new").as_deref(),
            Some("a"),
            "a new key is always kept"
        );
        assert!(t.lookup(b"k0").is_some(), "a recently seen key stays");
        assert_eq!(t.lookup(b"k1"), None, "the least recently seen key goes");
    }

    #[tokio::test]
    async fn idle_entries_expire() {
        let t = SessionTable::new("learn", "p", &settings(Duration::from_millis(100), None));
        t.insert(b"s", &"a".into());
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(t.lookup(b"s"), None);
    }

    #[tokio::test]
    async fn an_unreachable_store_is_a_fast_miss() {
        for url in [
            "redis://127.0.0.1:9/0",
            "redis-cluster://127.0.0.1:9,127.0.0.1:10",
            "redis-sentinel://127.0.0.1:9/mymaster/0",
        ] {
            let t = SessionTable::new(
                "remember",
                "p",
                &settings(Duration::from_secs(60), Some(url)),
            );
            let start = Instant::now();
            assert_eq!(t.lookup_shared(b"s").await, None);
            assert!(start.elapsed() < Duration::from_millis(200), "{url}");
            t.insert(b"s", &"a".into());
            assert_eq!(
                t.lookup(b"s").as_deref(),
                Some("a"),
                "local table works without {url}"
            );
            let store = t.store().unwrap();
            // The connection is retried with backoff; its first failure is recorded soon.
            for _ in 0..50 {
                if store.stats.last_error().is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert_ne!(store.stats.state(), store::StoreState::Connected, "{url}");
            assert!(
                store.stats.last_error().is_some(),
                "{url}: the error is kept for /status"
            );
        }
    }
}
