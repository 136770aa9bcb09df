//! The shared side of session tables: one Redis, a Sentinel-managed primary or a Redis
//! Cluster, reached in the background (connect, follow failover, write) so that requests only
//! ever wait for a read, and then at most [`READ_DEADLINE`].

mod connect;
mod stats;
mod url;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::Guard;
use tokio::sync::{mpsc, Semaphore};

use connect::{Conn, Slot};
pub use stats::{Op, StoreState, StoreStats};
pub use url::{redact, StoreUrl, StoreUrlError};

/// How long a request may wait for the store before it is placed as new (spec: <= 50 ms).
pub const READ_DEADLINE: Duration = Duration::from_millis(40);
/// How long a background write keeps retrying (a failover or resharding in progress) before it
/// is given up; the local table still has the entry.
const WRITE_PATIENCE: Duration = Duration::from_secs(6);
/// One attempt of a background write.
const WRITE_ATTEMPT: Duration = Duration::from_millis(500);
/// Queued writes beyond this are dropped (counted as `dropped`).
const WRITE_QUEUE: usize = 8192;
/// Writes in flight at once.
const WRITE_CONCURRENCY: usize = 64;

/// A store shared by the instances of a fleet, under key prefix `tether:KIND:POOL:`.
pub struct Store {
    conn: Arc<Slot>,
    writes: mpsc::Sender<(String, String)>,
    prefix: String,
    url: String,
    kind: &'static str,
    pub stats: Arc<StoreStats>,
}

impl Store {
    /// Starts connecting in the background (needs a tokio runtime). `kind` is `learn` or
    /// `remember`; entries expire in the store after `ttl`.
    pub fn start(url: &StoreUrl, raw: &str, kind: &str, pool: &str, ttl: Duration) -> Arc<Store> {
        let conn: Arc<Slot> = Arc::default();
        let stats = Arc::new(StoreStats::new());
        let (tx, rx) = mpsc::channel::<(String, String)>(WRITE_QUEUE);
        let store = Arc::new(Store {
            conn: conn.clone(),
            writes: tx,
            prefix: format!("tether:{kind}:{pool}:"),
            url: redact(raw),
            kind: url.kind(),
            stats: stats.clone(),
        });
        let weak = Arc::downgrade(&conn);
        let what = format!("{kind} store for pool {pool}");
        connect::spawn(url.clone(), weak, stats.clone(), what);
        tokio::spawn(write_loop(rx, conn, stats, ttl.as_millis().max(1) as u64));
        store
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn kind(&self) -> &'static str {
        self.kind
    }

    fn key(&self, key: &[u8]) -> String {
        format!("{}{}", self.prefix, String::from_utf8_lossy(key))
    }

    /// Queues `key` → `backend` for writing; never waits.
    pub fn write(&self, key: &[u8], backend: &str) {
        if self
            .writes
            .try_send((self.key(key), backend.to_string()))
            .is_err()
        {
            self.stats.count(Op::WriteDropped);
        }
    }

    /// The backend stored for `key`, or `None` (also when the store is slow, down or not
    /// connected yet).
    pub async fn read(&self, key: &[u8]) -> Option<String> {
        let Some(conn) = self.conn.load_full() else {
            self.stats.count(Op::ReadTimeout);
            return None;
        };
        let cmd = redis::cmd("GET").arg(self.key(key)).clone();
        match tokio::time::timeout(READ_DEADLINE, conn.query::<Option<String>>(&cmd)).await {
            Ok(Ok(Some(v))) => {
                self.stats.count(Op::ReadHit);
                self.stats.set_state(StoreState::Connected);
                Some(v)
            }
            Ok(Ok(None)) => {
                self.stats.count(Op::ReadMiss);
                self.stats.set_state(StoreState::Connected);
                None
            }
            Ok(Err(e)) => {
                self.stats.count(Op::ReadError);
                self.stats.fail(e);
                None
            }
            Err(_) => {
                self.stats.count(Op::ReadTimeout);
                None
            }
        }
    }
}

/// Writes `SET key backend PX ttl` in the background, several at once, each retried for up
/// to [`WRITE_PATIENCE`] so that a failover or resharding in progress loses nothing.
async fn write_loop(
    mut rx: mpsc::Receiver<(String, String)>,
    conn: Arc<Slot>,
    stats: Arc<StoreStats>,
    ttl_ms: u64,
) {
    let permits = Arc::new(Semaphore::new(WRITE_CONCURRENCY));
    while let Some((key, backend)) = rx.recv().await {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let conn = conn.clone();
        let stats = stats.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let cmd = redis::cmd("SET")
                .arg(&key)
                .arg(&backend)
                .arg("PX")
                .arg(ttl_ms)
                .clone();
            let start = tokio::time::Instant::now();
            loop {
                let current: Guard<Option<Arc<Conn>>> = conn.load();
                let r = match current.as_ref() {
                    Some(c) => {
                        let c = c.clone();
                        drop(current);
                        tokio::time::timeout(WRITE_ATTEMPT, c.query::<()>(&cmd))
                            .await
                            .map_err(|_| "write timed out".to_string())
                            .and_then(|r| r.map_err(|e| e.to_string()))
                    }
                    None => Err("not connected".to_string()),
                };
                match r {
                    Ok(()) => {
                        stats.count(Op::WriteOk);
                        stats.set_state(StoreState::Connected);
                        return;
                    }
                    Err(e) => {
                        if start.elapsed() > WRITE_PATIENCE {
                            stats.count(Op::WriteError);
                            stats.fail(e);
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        });
    }
}
