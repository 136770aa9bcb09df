//! The shared side of session tables: one Redis, a Sentinel-managed primary or a Redis
//! Cluster, reached in the background (connect, follow failover, write) so that requests only
//! ever wait for a read, and then at most [`READ_DEADLINE`].

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::{ArcSwapOption, Guard};
use tokio::sync::{mpsc, Semaphore};

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
/// How often the Sentinels are asked who the primary is.
const SENTINEL_POLL: Duration = Duration::from_millis(500);

/// Errors in a store URL.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum StoreUrlError {
    #[error(
        "{0:?} is not a store URL (redis://, rediss://, redis-sentinel:// or redis-cluster://)"
    )]
    Scheme(String),
    #[error("{url:?}: {why}")]
    Invalid { url: String, why: String },
}

/// A parsed store URL.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreUrl {
    /// `redis://` or `rediss://`: one server (the URL as given).
    Single(String),
    /// `redis-sentinel://[:PASSWORD@]H1:P1,H2:P2/MASTER[/DB]`.
    Sentinel {
        sentinels: Vec<(String, u16)>,
        master: String,
        db: i64,
        /// The primary's password, still percent-encoded as written.
        password: Option<String>,
    },
    /// `redis-cluster://[:PASSWORD@]H1:P1,H2:P2,…`.
    Cluster {
        nodes: Vec<(String, u16)>,
        password: Option<String>,
    },
}

impl StoreUrl {
    pub fn parse(url: &str) -> Result<StoreUrl, StoreUrlError> {
        let invalid = |why: &str| StoreUrlError::Invalid {
            url: redact(url),
            why: why.to_string(),
        };
        if url.starts_with("redis://") || url.starts_with("rediss://") {
            return match redis::IntoConnectionInfo::into_connection_info(url) {
                Ok(_) => Ok(StoreUrl::Single(url.to_string())),
                Err(e) => Err(invalid(&e.to_string())),
            };
        }
        let (sentinel, rest) = if let Some(r) = url.strip_prefix("redis-sentinel://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("redis-cluster://") {
            (false, r)
        } else {
            return Err(StoreUrlError::Scheme(redact(url)));
        };
        let (password, rest) = match rest.rsplit_once('@') {
            Some((userinfo, r)) => {
                let pw = userinfo.split_once(':').map_or(userinfo, |(_, p)| p);
                (Some(pw.to_string()).filter(|p| !p.is_empty()), r)
            }
            None => (None, rest),
        };
        let (hosts, path) = rest.split_once('/').unwrap_or((rest, ""));
        let mut nodes = Vec::new();
        for h in hosts.split(',').filter(|h| !h.is_empty()) {
            let (host, port) = h
                .rsplit_once(':')
                .ok_or_else(|| invalid(&format!("{h:?} needs HOST:PORT")))?;
            let port: u16 = port
                .parse()
                .map_err(|_| invalid(&format!("{port:?} is not a port")))?;
            if host.is_empty() {
                return Err(invalid(&format!("{h:?} has no host")));
            }
            nodes.push((host.trim_matches(['[', ']']).to_string(), port));
        }
        if nodes.is_empty() {
            return Err(invalid("no HOST:PORT given"));
        }
        if !sentinel {
            if !path.is_empty() {
                return Err(invalid("a cluster has no database part"));
            }
            return Ok(StoreUrl::Cluster { nodes, password });
        }
        let mut parts = path.split('/');
        let master = parts.next().unwrap_or("").to_string();
        if master.is_empty() {
            return Err(invalid(
                "needs the master name: redis-sentinel://H1:P1,H2:P2/MASTER/DB",
            ));
        }
        let db = match parts.next() {
            None | Some("") => 0,
            Some(d) => d
                .parse()
                .map_err(|_| invalid(&format!("{d:?} is not a database number")))?,
        };
        if parts.next().is_some() {
            return Err(invalid("too many path parts"));
        }
        Ok(StoreUrl::Sentinel {
            sentinels: nodes,
            master,
            db,
            password,
        })
    }

    pub fn kind(&self) -> &'static str {
        match self {
            StoreUrl::Single(u) if u.starts_with("rediss://") => "rediss",
            StoreUrl::Single(_) => "redis",
            StoreUrl::Sentinel { .. } => "redis-sentinel",
            StoreUrl::Cluster { .. } => "redis-cluster",
        }
    }
}

/// `url` with any password replaced by `***` (for logs and `/status`).
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (hosts, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match hosts.rsplit_once('@') {
        Some((userinfo, h)) => {
            let user = userinfo.split_once(':').map_or("", |(u, _)| u);
            format!("{scheme}://{user}:***@{h}{path}")
        }
        None => url.to_string(),
    }
}

/// What the store connection is doing, for `/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreState {
    Connecting,
    Connected,
    /// The last operation failed (the connection is being re-established).
    Failing,
}

impl StoreState {
    pub fn as_str(self) -> &'static str {
        match self {
            StoreState::Connecting => "connecting",
            StoreState::Connected => "connected",
            StoreState::Failing => "failing",
        }
    }
}

/// Store operations counted in `tether_store_operations_total{op,result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// A read that found the key.
    ReadHit,
    /// A read that found nothing.
    ReadMiss,
    ReadError,
    /// A read not answered within [`READ_DEADLINE`] (or with no connection yet).
    ReadTimeout,
    WriteOk,
    /// A write given up after [`WRITE_PATIENCE`].
    WriteError,
    /// A write dropped because the queue was full.
    WriteDropped,
}

const OPS: [Op; 7] = [
    Op::ReadHit,
    Op::ReadMiss,
    Op::ReadError,
    Op::ReadTimeout,
    Op::WriteOk,
    Op::WriteError,
    Op::WriteDropped,
];

impl Op {
    /// (`op`, `result`) labels.
    pub fn labels(self) -> (&'static str, &'static str) {
        match self {
            Op::ReadHit => ("read", "hit"),
            Op::ReadMiss => ("read", "miss"),
            Op::ReadError => ("read", "error"),
            Op::ReadTimeout => ("read", "timeout"),
            Op::WriteOk => ("write", "ok"),
            Op::WriteError => ("write", "error"),
            Op::WriteDropped => ("write", "dropped"),
        }
    }
}

/// Lock-free store health and counters.
pub struct StoreStats {
    state: AtomicU8,
    last_error: ArcSwapOption<(String, u64)>,
    ops: [AtomicU64; OPS.len()],
}

impl StoreStats {
    fn new() -> StoreStats {
        StoreStats {
            state: AtomicU8::new(0),
            last_error: ArcSwapOption::empty(),
            ops: Default::default(),
        }
    }

    pub fn state(&self) -> StoreState {
        match self.state.load(Ordering::Relaxed) {
            0 => StoreState::Connecting,
            1 => StoreState::Connected,
            _ => StoreState::Failing,
        }
    }

    fn set_state(&self, s: StoreState) {
        let v = match s {
            StoreState::Connecting => 0,
            StoreState::Connected => 1,
            StoreState::Failing => 2,
        };
        self.state.store(v, Ordering::Relaxed);
    }

    fn fail(&self, e: impl std::fmt::Display) {
        self.set_state(StoreState::Failing);
        self.last_error
            .store(Some(Arc::new((e.to_string(), unix_ms()))));
    }

    /// The last error and when it happened (unix ms).
    pub fn last_error(&self) -> Option<(String, u64)> {
        self.last_error.load_full().map(|e| (*e).clone())
    }

    fn count(&self, op: Op) {
        // OPS lists every variant, so the position always exists.
        if let Some(i) = OPS.iter().position(|o| *o == op) {
            self.ops[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Every operation with its count.
    pub fn ops(&self) -> impl Iterator<Item = (Op, u64)> + '_ {
        OPS.iter()
            .zip(&self.ops)
            .map(|(op, n)| (*op, n.load(Ordering::Relaxed)))
    }
}

/// A live connection of either kind; both reconnect by themselves once established.
#[derive(Clone)]
enum Conn {
    Single(redis::aio::ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl Conn {
    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> redis::RedisResult<T> {
        match self.clone() {
            Conn::Single(mut c) => cmd.query_async(&mut c).await,
            Conn::Cluster(mut c) => cmd.query_async(&mut c).await,
        }
    }
}

type Slot = ArcSwapOption<Conn>;

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
        match url.clone() {
            StoreUrl::Single(u) => {
                tokio::spawn(connect_single(u, weak, stats.clone(), what));
            }
            StoreUrl::Cluster { nodes, password } => {
                tokio::spawn(connect_cluster(nodes, password, weak, stats.clone(), what));
            }
            StoreUrl::Sentinel {
                sentinels,
                master,
                db,
                password,
            } => {
                let target = SentinelTarget {
                    sentinels,
                    master,
                    db,
                    password,
                };
                tokio::spawn(follow_sentinel(target, weak, stats.clone(), what));
            }
        }
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

fn conn_config() -> redis::aio::ConnectionManagerConfig {
    redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Duration::from_millis(500))
        .set_response_timeout(Duration::from_millis(500))
        .set_number_of_retries(2)
        .set_max_delay(1000)
}

async fn connect_single(url: String, slot: Weak<Slot>, stats: Arc<StoreStats>, what: String) {
    if url.starts_with("rediss://") {
        // rustls needs a process-wide provider for the redis crate's TLS config; tether's
        // own TLS passes its provider explicitly, so installing one changes nothing else.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    let client = match redis::Client::open(url.as_str()) {
        Ok(c) => c,
        Err(e) => {
            stats.fail(&e);
            tracing::error!(error = %e, "{what}: invalid URL; sessions stay local");
            return;
        }
    };
    loop {
        let Some(s) = slot.upgrade() else { return };
        match redis::aio::ConnectionManager::new_with_config(client.clone(), conn_config()).await {
            Ok(m) => {
                tracing::info!("{what}: connected to Redis");
                stats.set_state(StoreState::Connected);
                s.store(Some(Arc::new(Conn::Single(m))));
                return;
            }
            Err(e) => {
                stats.fail(&e);
                tracing::warn!(error = %e, "{what}: Redis unreachable; retrying, sessions stay local meanwhile");
            }
        }
        drop(s);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn connect_cluster(
    nodes: Vec<(String, u16)>,
    password: Option<String>,
    slot: Weak<Slot>,
    stats: Arc<StoreStats>,
    what: String,
) {
    let urls: Vec<String> = nodes
        .iter()
        .map(|(h, p)| format!("redis://{}:{p}", host_part(h)))
        .collect();
    let mut builder = redis::cluster::ClusterClient::builder(urls)
        .connection_timeout(Duration::from_millis(500))
        .response_timeout(Duration::from_millis(500))
        .retries(3)
        .min_retry_wait(50)
        .max_retry_wait(500);
    if let Some(pw) = password {
        builder = builder.password(percent_decode(&pw));
    }
    let client = match builder.build() {
        Ok(c) => c,
        Err(e) => {
            stats.fail(&e);
            tracing::error!(error = %e, "{what}: invalid cluster settings; sessions stay local");
            return;
        }
    };
    loop {
        let Some(s) = slot.upgrade() else { return };
        match client.get_async_connection().await {
            Ok(c) => {
                tracing::info!("{what}: connected to the Redis Cluster");
                stats.set_state(StoreState::Connected);
                s.store(Some(Arc::new(Conn::Cluster(c))));
                return;
            }
            Err(e) => {
                stats.fail(&e);
                tracing::warn!(error = %e, "{what}: Redis Cluster unreachable; retrying, sessions stay local meanwhile");
            }
        }
        drop(s);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

struct SentinelTarget {
    sentinels: Vec<(String, u16)>,
    master: String,
    db: i64,
    password: Option<String>,
}

/// Asks the Sentinels who the primary is, every [`SENTINEL_POLL`], and moves the connection
/// to a new primary as soon as one is announced.
async fn follow_sentinel(
    t: SentinelTarget,
    slot: Weak<Slot>,
    stats: Arc<StoreStats>,
    what: String,
) {
    let mut current: Option<(String, u16)> = None;
    let mut sentinel_conns: Vec<Option<redis::aio::MultiplexedConnection>> =
        vec![None; t.sentinels.len()];
    loop {
        let Some(s) = slot.upgrade() else { return };
        let mut answer = None;
        for (i, (h, p)) in t.sentinels.iter().enumerate() {
            if sentinel_conns[i].is_none() {
                let Ok(c) = redis::Client::open(format!("redis://{}:{p}", host_part(h))) else {
                    continue;
                };
                let conn = tokio::time::timeout(
                    Duration::from_millis(300),
                    c.get_multiplexed_async_connection(),
                )
                .await;
                if let Ok(Ok(c)) = conn {
                    sentinel_conns[i] = Some(c);
                }
            }
            let Some(c) = sentinel_conns[i].as_mut() else {
                continue;
            };
            let cmd = redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(&t.master)
                .clone();
            let r = tokio::time::timeout(
                Duration::from_millis(300),
                cmd.query_async::<Option<(String, u16)>>(c),
            )
            .await;
            match r {
                Ok(Ok(Some(addr))) => {
                    answer = Some(addr);
                    break;
                }
                Ok(Ok(None)) => {}
                _ => sentinel_conns[i] = None,
            }
        }
        match answer {
            None => {
                stats.fail(format!("no Sentinel answered for master {:?}", t.master));
            }
            Some(addr) if Some(&addr) != current.as_ref() => {
                let pw = t
                    .password
                    .as_deref()
                    .map(|p| format!(":{p}@"))
                    .unwrap_or_default();
                let url = format!("redis://{pw}{}:{}/{}", host_part(&addr.0), addr.1, t.db);
                let m = match redis::Client::open(url.as_str()) {
                    Ok(client) => tokio::time::timeout(
                        Duration::from_secs(2),
                        redis::aio::ConnectionManager::new_with_config(client, conn_config()),
                    )
                    .await
                    .map_err(|_| "connect timed out".to_string())
                    .and_then(|r| r.map_err(|e| e.to_string())),
                    Err(e) => Err(e.to_string()),
                };
                match m {
                    Ok(m) => {
                        tracing::info!(primary = %format!("{}:{}", addr.0, addr.1), "{what}: following the primary Sentinel names");
                        stats.set_state(StoreState::Connected);
                        s.store(Some(Arc::new(Conn::Single(m))));
                        current = Some(addr);
                    }
                    Err(e) => {
                        stats.fail(format!("primary {}:{}: {e}", addr.0, addr.1));
                        tracing::warn!(error = %e, "{what}: cannot reach the primary Sentinel names; retrying");
                    }
                }
            }
            Some(_) => {}
        }
        drop(s);
        tokio::time::sleep(SENTINEL_POLL).await;
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

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `host` for a URL (IPv6 literals in brackets).
fn host_part(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

fn percent_decode(s: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_kind_of_store_url() {
        assert_eq!(
            StoreUrl::parse("redis://127.0.0.1:6379/0"),
            Ok(StoreUrl::Single("redis://127.0.0.1:6379/0".into()))
        );
        assert_eq!(
            StoreUrl::parse("rediss://:pw@h:6380/1").unwrap().kind(),
            "rediss"
        );
        assert_eq!(
            StoreUrl::parse("redis-sentinel://:s%40cret@10.0.0.1:26379,10.0.0.2:26379/mymaster/2"),
            Ok(StoreUrl::Sentinel {
                sentinels: vec![("10.0.0.1".into(), 26379), ("10.0.0.2".into(), 26379)],
                master: "mymaster".into(),
                db: 2,
                password: Some("s%40cret".into()),
            })
        );
        assert_eq!(
            StoreUrl::parse("redis-cluster://a:7000,b:7001"),
            Ok(StoreUrl::Cluster {
                nodes: vec![("a".into(), 7000), ("b".into(), 7001)],
                password: None,
            })
        );
        for bad in [
            "http://x",
            "redis-cluster://a:7000/0",
            "redis-cluster://",
            "redis-sentinel://a:1/",
            "redis-sentinel://a:x/m",
            "redis-sentinel://a:1/m/zero",
        ] {
            assert!(StoreUrl::parse(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn passwords_are_redacted_and_decoded() {
        assert_eq!(
            redact("redis-cluster://:hunter2@a:1,b:2"),
            "redis-cluster://:***@a:1,b:2"
        );
        assert_eq!(redact("redis://u:p@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redact("redis://h:1/0"), "redis://h:1/0");
        assert_eq!(percent_decode("s%40cret%"), "s@cret%");
        assert!(!format!(
            "{}",
            StoreUrl::parse("redis-cluster://:hunter2@a:x").unwrap_err()
        )
        .contains("hunter2"));
    }
}
