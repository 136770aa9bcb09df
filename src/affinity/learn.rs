//! Learned sessions (nginx `sticky learn`): the application's session cookie value → the
//! backend that issued it, in a bounded, idle-expiring table kept across reloads, optionally
//! shared between instances through Redis.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use tokio::sync::mpsc;

use super::cookie::trim;

/// Session values longer than this are not learned (memory stays bounded).
pub const MAX_VALUE: usize = 512;
/// How long a request may wait for Redis before it is placed as new.
pub const STORE_DEADLINE: Duration = Duration::from_millis(40);

#[derive(Clone)]
struct Entry {
    backend: Arc<str>,
    /// When this entry was last written to the shared store.
    written: Instant,
}

/// One pool's learned sessions.
pub struct LearnTable {
    cache: moka::sync::Cache<Box<[u8]>, Entry, ahash::RandomState>,
    ttl: Duration,
    store: Option<Arc<Store>>,
}

impl LearnTable {
    /// `capacity` bounds the entries; `ttl` is the idle expiry. With `store`, learned sessions
    /// are shared through Redis under `tether:learn:<pool>:`.
    pub fn new(pool: &str, capacity: u64, ttl: Duration, store: Option<&str>) -> LearnTable {
        LearnTable {
            cache: moka::sync::Cache::builder()
                .max_capacity(capacity)
                .time_to_idle(ttl)
                .build_with_hasher(ahash::RandomState::new()),
            ttl,
            // The store needs a runtime for its background tasks; `tether explain` has none.
            store: store
                .filter(|_| tokio::runtime::Handle::try_current().is_ok())
                .map(|url| Store::start(url, pool, ttl)),
        }
    }

    /// The backend id a session value was learned for (refreshing its idle time locally and,
    /// now and then, in the store).
    pub fn lookup(&self, value: &[u8]) -> Option<Arc<str>> {
        let e = self.cache.get(value)?;
        if let Some(store) = &self.store {
            if e.written.elapsed() > self.ttl / 4 {
                store.write(value, &e.backend);
                self.cache.insert(
                    value.into(),
                    Entry {
                        backend: e.backend.clone(),
                        written: Instant::now(),
                    },
                );
            }
        }
        Some(e.backend)
    }

    /// Learns (or re-learns) `value` → `backend`.
    pub fn learn(&self, value: &[u8], backend: &Arc<str>) {
        if value.is_empty() || value.len() > MAX_VALUE {
            return;
        }
        if let Some(e) = self.cache.get(value) {
            if e.backend == *backend && e.written.elapsed() <= self.ttl / 4 {
                return;
            }
        }
        if let Some(store) = &self.store {
            store.write(value, backend);
        }
        self.cache.insert(
            value.into(),
            Entry {
                backend: backend.clone(),
                written: Instant::now(),
            },
        );
    }

    pub fn forget(&self, value: &[u8]) {
        self.cache.invalidate(value);
    }

    /// On a local miss, asks the shared store (within [`STORE_DEADLINE`]) and remembers the
    /// answer. Never fails: an unreachable or slow store is a miss.
    pub async fn lookup_shared(&self, value: &[u8]) -> Option<Arc<str>> {
        let store = self.store.as_ref()?;
        if value.is_empty() || value.len() > MAX_VALUE {
            return None;
        }
        let backend: Arc<str> = store.read(value).await?.into();
        self.cache.insert(
            value.into(),
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

    /// Approximate number of learned sessions.
    pub fn len(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The Redis side: a background connection (re-established whenever Redis comes back) and
/// a background writer, so requests never wait on Redis except for bounded reads.
pub struct Store {
    conn: Arc<ArcSwapOption<redis::aio::ConnectionManager>>,
    writes: mpsc::Sender<(String, String)>,
    prefix: String,
    ttl_ms: u64,
}

impl Store {
    fn start(url: &str, pool: &str, ttl: Duration) -> Arc<Store> {
        let conn: Arc<ArcSwapOption<redis::aio::ConnectionManager>> = Arc::default();
        let (tx, mut rx) = mpsc::channel::<(String, String)>(4096);
        let store = Arc::new(Store {
            conn: conn.clone(),
            writes: tx,
            prefix: format!("tether:learn:{pool}:"),
            ttl_ms: ttl.as_millis().max(1) as u64,
        });
        let url = url.to_string();
        let ttl_ms = store.ttl_ms;
        // Connect in the background, retrying until Redis answers.
        let c = conn.clone();
        tokio::spawn(async move {
            let client = match redis::Client::open(url.as_str()) {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(error = %e, "invalid learn.store URL; sessions stay local");
                    return;
                }
            };
            let config = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Duration::from_millis(500))
                .set_response_timeout(Duration::from_millis(500))
                .set_number_of_retries(2)
                .set_max_delay(1000);
            loop {
                match redis::aio::ConnectionManager::new_with_config(client.clone(), config.clone())
                    .await
                {
                    Ok(m) => {
                        tracing::info!("learn store: connected to Redis");
                        c.store(Some(Arc::new(m)));
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "learn store: Redis unreachable; retrying, sessions stay local meanwhile");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
        // Write learned sessions in the background, with key expiry = ttl.
        tokio::spawn(async move {
            while let Some((key, backend)) = rx.recv().await {
                let Some(m) = conn.load_full() else { continue };
                let mut m = (*m).clone();
                let cmd = redis::cmd("SET")
                    .arg(&key)
                    .arg(&backend)
                    .arg("PX")
                    .arg(ttl_ms)
                    .clone();
                let r =
                    tokio::time::timeout(Duration::from_millis(500), cmd.query_async::<()>(&mut m))
                        .await;
                if !matches!(r, Ok(Ok(()))) {
                    tracing::debug!("learn store: a write to Redis failed");
                }
            }
        });
        store
    }

    fn key(&self, value: &[u8]) -> String {
        format!("{}{}", self.prefix, String::from_utf8_lossy(value))
    }

    fn write(&self, value: &[u8], backend: &str) {
        // A full queue (Redis slow or down) drops the write; the local table has it.
        let _ = self.writes.try_send((self.key(value), backend.to_string()));
    }

    async fn read(&self, value: &[u8]) -> Option<String> {
        let m = self.conn.load_full()?;
        let mut m = (*m).clone();
        let cmd = redis::cmd("GET").arg(self.key(value)).clone();
        match tokio::time::timeout(STORE_DEADLINE, cmd.query_async::<Option<String>>(&mut m)).await
        {
            Ok(Ok(v)) => v,
            _ => None,
        }
    }
}

/// The values of cookie `name` set by `Set-Cookie` header values, with whether each deletes
/// the cookie (`Max-Age=0` or an empty value).
pub fn set_cookie_values<'a>(
    headers: impl Iterator<Item = &'a [u8]>,
    name: &str,
) -> Vec<(&'a [u8], bool)> {
    let name = name.as_bytes();
    headers
        .filter_map(|h| {
            let mut parts = h.split(|&b| b == b';');
            let first = trim(parts.next()?);
            let value = first.strip_prefix(name)?.strip_prefix(b"=")?;
            let value = trim(value);
            let value = value
                .strip_prefix(b"\"")
                .and_then(|v| v.strip_suffix(b"\""))
                .unwrap_or(value);
            let deleted = value.is_empty()
                || parts.any(|a| {
                    let a = trim(a);
                    a.len() >= 9
                        && a[..8].eq_ignore_ascii_case(b"max-age=")
                        && matches!(&a[8..], b"0" | b"-1")
                });
            Some((value, deleted))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_set_cookie_values_and_deletions() {
        let hs: Vec<&[u8]> = vec![
            b"session=abc123; Path=/; HttpOnly",
            b"other=1",
            b"session=; Max-Age=0",
            b"session=\"quoted\"",
            b"session=gone; Max-Age=0; Path=/",
        ];
        let got = set_cookie_values(hs.into_iter(), "session");
        assert_eq!(
            got,
            vec![
                (&b"abc123"[..], false),
                (&b""[..], true),
                (&b"quoted"[..], false),
                (&b"gone"[..], true)
            ]
        );
    }

    #[tokio::test]
    async fn learns_forgets_and_bounds_entries() {
        let t = LearnTable::new("p", 100, Duration::from_secs(60), None);
        let a: Arc<str> = "a".into();
        t.learn(b"s1", &a);
        assert_eq!(t.lookup(b"s1").as_deref(), Some("a"));
        t.learn(b"s1", &"b".into());
        assert_eq!(
            t.lookup(b"s1").as_deref(),
            Some("b"),
            "a changed value is learned again"
        );
        t.forget(b"s1");
        assert_eq!(t.lookup(b"s1"), None);
        t.learn(&vec![b'x'; MAX_VALUE + 1], &a);
        assert_eq!(t.lookup(&vec![b'x'; MAX_VALUE + 1]), None);
        for i in 0..1000 {
            t.learn(format!("k{i}").as_bytes(), &a);
        }
        assert!(t.len() <= 100, "capacity is a hard bound: {}", t.len());
    }

    #[tokio::test]
    async fn idle_sessions_expire() {
        let t = LearnTable::new("p", 100, Duration::from_millis(100), None);
        t.learn(b"s", &"a".into());
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(t.lookup(b"s"), None);
    }

    #[tokio::test]
    async fn an_unreachable_store_is_a_fast_miss() {
        let t = LearnTable::new(
            "p",
            100,
            Duration::from_secs(60),
            Some("redis://127.0.0.1:9/0"),
        );
        let start = Instant::now();
        assert_eq!(t.lookup_shared(b"s").await, None);
        assert!(start.elapsed() < Duration::from_millis(200));
        t.learn(b"s", &"a".into());
        assert_eq!(
            t.lookup(b"s").as_deref(),
            Some("a"),
            "local table works without Redis"
        );
    }
}
