//! Connecting in the background to one Redis, a Sentinel-named primary or a Redis Cluster.

use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;

use super::stats::{StoreState, StoreStats};
use super::url::{host_part, percent_decode, StoreUrl};

/// How often the Sentinels are asked who the primary is.
const SENTINEL_POLL: Duration = Duration::from_millis(500);

/// A live connection of either kind; both reconnect by themselves once established.
#[derive(Clone)]
pub(super) enum Conn {
    Single(redis::aio::ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl Conn {
    pub(super) async fn query<T: redis::FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
    ) -> redis::RedisResult<T> {
        match self.clone() {
            Conn::Single(mut c) => cmd.query_async(&mut c).await,
            Conn::Cluster(mut c) => cmd.query_async(&mut c).await,
        }
    }
}

pub(super) type Slot = ArcSwapOption<Conn>;

/// Starts the background task that fills `slot` with a connection (and, behind Sentinel,
/// moves it to each new primary).
pub(super) fn spawn(url: StoreUrl, weak: Weak<Slot>, stats: Arc<StoreStats>, what: String) {
    match url {
        StoreUrl::Single(u) => {
            tokio::spawn(connect_single(u, weak, stats, what));
        }
        StoreUrl::Cluster { nodes, password } => {
            tokio::spawn(connect_cluster(nodes, password, weak, stats, what));
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
            tokio::spawn(follow_sentinel(target, weak, stats, what));
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
