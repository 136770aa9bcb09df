//! Active health checks: a task per backend of every pool with `[health]`, reconciled with
//! each snapshot, turning consecutive probe results (rise/fall) into up/down verdicts.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::task::JoinHandle;

use crate::config::HealthConfig;
use crate::proxy::upstream::connect::tcp_connect;
use crate::runtime::Snapshot;
use crate::state::BackendShared;
use crate::tls::BackendTls;

/// How often a backend without a verdict yet is probed, so new backends join quickly.
const FIRST_VERDICT_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Hash, PartialEq, Eq, Clone)]
struct Key {
    pool: String,
    id: String,
    address: String,
}

/// Owns the checker tasks; dropping it stops them all.
#[derive(Default)]
pub struct Checker {
    tasks: Mutex<HashMap<Key, (HealthConfig, JoinHandle<()>)>>,
}

impl Drop for Checker {
    fn drop(&mut self) {
        let tasks = self.tasks.get_mut();
        for (_, (_, t)) in tasks.drain() {
            t.abort();
        }
    }
}

impl Checker {
    /// Starts checks for new backends (or changed check settings) and stops checks of
    /// backends no longer configured. Must run inside a tokio runtime.
    pub fn reconcile(&self, snap: &Snapshot) {
        let mut tasks = self.tasks.lock();
        let mut wanted = HashMap::new();
        for (pool, pcfg) in snap.pools.iter().zip(&snap.config.pools) {
            let Some(h) = &pcfg.health else { continue };
            for b in &pool.backends {
                let key = Key {
                    pool: pool.name.to_string(),
                    id: b.id.to_string(),
                    address: b.address.to_string(),
                };
                wanted.insert(
                    key,
                    (h.clone(), b.socket_addr, b.tls.clone(), b.shared.clone()),
                );
            }
        }
        tasks.retain(|k, (cfg, task)| {
            let keep = wanted.get(k).is_some_and(|(h, _, _, _)| h == cfg);
            if !keep {
                task.abort();
            }
            keep
        });
        for (key, (cfg, addr, tls, shared)) in wanted {
            if tasks.contains_key(&key) {
                continue;
            }
            let address = key.address.clone();
            let c = cfg.clone();
            let task = tokio::spawn(async move { run(address, addr, tls, c, shared).await });
            tasks.insert(key, (cfg, task));
        }
    }

    /// Number of running checker tasks.
    pub fn len(&self) -> usize {
        self.tasks.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Waits until every checked backend has a first verdict, at most `limit`.
pub async fn first_verdicts(snap: &Snapshot, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        let pending = snap
            .pools
            .iter()
            .flat_map(|p| &p.backends)
            .any(|b| !b.shared.has_verdict());
        if !pending {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How long startup may wait for first verdicts with this config.
pub fn first_verdict_limit(snap: &Snapshot) -> Duration {
    snap.config
        .pools
        .iter()
        .filter_map(|p| p.health.as_ref())
        .map(|h| (h.timeout + FIRST_VERDICT_INTERVAL) * h.rise.max(h.fall))
        .max()
        .unwrap_or(Duration::ZERO)
}

async fn run(
    address: String,
    addr: Option<SocketAddr>,
    tls: Option<Arc<BackendTls>>,
    cfg: HealthConfig,
    shared: Arc<BackendShared>,
) {
    let (mut oks, mut fails) = (0u32, 0u32);
    loop {
        let ok = probe(&address, addr, tls.as_deref(), &cfg).await;
        if ok {
            oks += 1;
            fails = 0;
        } else {
            fails += 1;
            oks = 0;
        }
        let verdict = shared
            .has_verdict()
            .then(|| shared.state_is_actively_healthy());
        if ok && oks >= cfg.rise && verdict != Some(true) {
            shared.set_active_verdict(true);
            tracing::info!(backend = %address, "health check: backend is up");
        } else if !ok && fails >= cfg.fall && verdict != Some(false) {
            shared.set_active_verdict(false);
            tracing::warn!(backend = %address, "health check: backend is down");
        }
        let wait = if shared.has_verdict() {
            cfg.interval
        } else {
            cfg.interval.min(FIRST_VERDICT_INTERVAL)
        };
        tokio::time::sleep(wait).await;
    }
}

/// One probe: TCP connect (plus the TLS handshake for an HTTPS backend), or an HTTP GET
/// whose status must fall in `expect`.
async fn probe(
    address: &str,
    addr: Option<SocketAddr>,
    tls: Option<&BackendTls>,
    cfg: &HealthConfig,
) -> bool {
    let attempt = async {
        let stream = tcp_connect(address, addr).await.ok()?;
        match tls {
            None => http_check(stream, address, cfg).await,
            Some(t) => {
                let connector = tokio_rustls::TlsConnector::from(t.config.clone());
                let stream = connector.connect(t.name.clone(), stream).await.ok()?;
                http_check(stream, address, cfg).await
            }
        }
    };
    matches!(
        tokio::time::timeout(cfg.timeout, attempt).await,
        Ok(Some(true))
    )
}

async fn http_check<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    address: &str,
    cfg: &HealthConfig,
) -> Option<bool> {
    let Some(path) = &cfg.path else {
        return Some(true);
    };
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nUser-Agent: tether-health-check\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(req.as_bytes()).await.ok()?;
    let mut buf = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        let m = stream.read(&mut buf[n..]).await.ok()?;
        if m == 0 {
            break;
        }
        n += m;
    }
    let code = parse_status(&buf[..n])?;
    Some((cfg.expect.0..=cfg.expect.1).contains(&code))
}

/// The status code of an `HTTP/1.x NNN` status line.
fn parse_status(head: &[u8]) -> Option<u16> {
    let rest = head.strip_prefix(b"HTTP/1.")?;
    let code = rest.get(2..5)?;
    if rest.get(1) != Some(&b' ') || !code.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(code).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(parse_status(b"HTTP/1.0 503 x"), Some(503));
        assert_eq!(parse_status(b"HTTP/1.1 20"), None);
        assert_eq!(parse_status(b"garbage"), None);
    }
}
