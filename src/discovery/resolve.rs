//! Asking DNS: the [`Lookup`] seam (hickory-resolver in production, a table in tests) and
//! turning an answer into the backends a `discover` entry yields.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::proto::ProtoErrorKind;
use hickory_resolver::{ResolveError, TokioResolver};

use crate::config::{DiscoverConfig, DiscoverQuery};

/// A lookup's result that is not a list of records.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    /// NXDOMAIN, or the name has no records of that type.
    #[error("no records")]
    Empty,
    /// Timeout, SERVFAIL, refused, no name server reachable, no resolv.conf, …
    #[error("{0}")]
    Failed(String),
}

/// One SRV record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvRecord {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    /// Target host name (may end with a dot).
    pub target: String,
}

pub type LookupFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, LookupError>> + Send + 'a>>;

/// Where discovery asks its questions. Production uses [`Hickory`]; tests substitute a table.
pub trait Lookup: Send + Sync {
    /// A and AAAA records of `name`.
    fn ips<'a>(&'a self, name: &'a str) -> LookupFuture<'a, Vec<IpAddr>>;
    /// SRV records of `name`.
    fn srv<'a>(&'a self, name: &'a str) -> LookupFuture<'a, Vec<SrvRecord>>;
}

/// A backend an entry found.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Found {
    /// `ADDRESS:PORT` (A/AAAA) or `TARGET:PORT` (SRV).
    pub id: String,
    /// `IP:PORT` to connect to.
    pub address: String,
    pub weight: u32,
    /// Tomcat jvmRoute: the first label of the SRV target, else the id.
    pub route: String,
}

/// The hickory-resolver client: the entry's `resolver` list, or the system's resolv.conf.
pub struct Hickory(TokioResolver);

impl Hickory {
    pub fn new(servers: Option<&[SocketAddr]>) -> Result<Hickory, LookupError> {
        let mut builder = match servers {
            Some(list) => {
                let mut group = Vec::new();
                for &addr in list {
                    group.push(NameServerConfig::new(addr, Protocol::Udp));
                    group.push(NameServerConfig::new(addr, Protocol::Tcp));
                }
                TokioResolver::builder_with_config(
                    ResolverConfig::from_parts(None, Vec::new(), group),
                    TokioConnectionProvider::default(),
                )
            }
            None => TokioResolver::builder_tokio()
                .map_err(|e| LookupError::Failed(format!("system resolver: {e}")))?,
        };
        let opts = builder.options_mut();
        // Every interval asks the server again: a cache would hide changes for a TTL.
        opts.cache_size = 0;
        opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        opts.timeout = Duration::from_secs(2);
        opts.attempts = 1;
        if servers.is_some() {
            opts.use_hosts_file = ResolveHosts::Never;
        }
        Ok(Hickory(builder.build()))
    }
}

/// NXDOMAIN and NODATA are an empty answer; everything else (SERVFAIL and REFUSED, which
/// hickory also reports as "no records", timeouts, I/O) is a failure.
fn classify(e: ResolveError) -> LookupError {
    if let Some(ProtoErrorKind::NoRecordsFound { response_code, .. }) = e.proto().map(|p| p.kind())
    {
        return match *response_code {
            ResponseCode::NoError | ResponseCode::NXDomain => LookupError::Empty,
            code => LookupError::Failed(format!("the name server answered {code}")),
        };
    }
    LookupError::Failed(e.to_string())
}

impl Lookup for Hickory {
    fn ips<'a>(&'a self, name: &'a str) -> LookupFuture<'a, Vec<IpAddr>> {
        Box::pin(async move {
            let answer = self.0.lookup_ip(name).await.map_err(classify)?;
            Ok(answer.iter().collect())
        })
    }

    fn srv<'a>(&'a self, name: &'a str) -> LookupFuture<'a, Vec<SrvRecord>> {
        Box::pin(async move {
            let answer = self.0.srv_lookup(name).await.map_err(classify)?;
            Ok(answer
                .iter()
                .map(|r| SrvRecord {
                    priority: r.priority(),
                    weight: r.weight(),
                    port: r.port(),
                    target: r.target().to_ascii(),
                })
                .collect())
        })
    }
}

/// Resolves one entry: the backends it yields, sorted by id. `Err(Empty)` when the name
/// has no usable records.
pub async fn resolve(lookup: &dyn Lookup, cfg: &DiscoverConfig) -> Result<Vec<Found>, LookupError> {
    let mut found = match &cfg.query {
        DiscoverQuery::Host { name, port } => lookup
            .ips(name)
            .await?
            .into_iter()
            .map(|ip| {
                let id = SocketAddr::new(ip, *port).to_string();
                Found {
                    address: id.clone(),
                    route: id.clone(),
                    id,
                    weight: cfg.weight,
                }
            })
            .collect::<Vec<_>>(),
        DiscoverQuery::Srv { name } => {
            let records = lookup.srv(name).await?;
            let Some(best) = records.iter().map(|r| r.priority).min() else {
                return Err(LookupError::Empty);
            };
            let mut out = Vec::new();
            for r in records.iter().filter(|r| r.priority == best) {
                let target = r.target.trim_end_matches('.').to_ascii_lowercase();
                // "." means "no service here" (RFC 2782).
                if target.is_empty() {
                    continue;
                }
                let ip = match lookup.ips(&target).await {
                    Ok(mut ips) => {
                        // One backend per target: the lowest address, the same everywhere.
                        ips.sort();
                        match ips.first() {
                            Some(ip) => *ip,
                            None => continue,
                        }
                    }
                    Err(LookupError::Empty) => continue,
                    Err(e) => return Err(e),
                };
                let route = target.split('.').next().unwrap_or(&target).to_string();
                out.push(Found {
                    id: format!("{target}:{}", r.port),
                    address: SocketAddr::new(ip, r.port).to_string(),
                    // SRV weight 0 ("rarely") still gets the smallest share tether has.
                    weight: u32::from(r.weight).clamp(1, 1000),
                    route,
                });
            }
            out
        }
    };
    found.sort();
    found.dedup_by(|a, b| a.id == b.id);
    if found.is_empty() {
        return Err(LookupError::Empty);
    }
    Ok(found)
}

/// A fixed answer table, for tests and `tether explain`-style dry runs: names map to
/// records; a name marked failing answers with an error.
#[derive(Default)]
pub struct Table {
    pub ips: parking_lot::Mutex<std::collections::HashMap<String, Vec<IpAddr>>>,
    pub srv: parking_lot::Mutex<std::collections::HashMap<String, Vec<SrvRecord>>>,
    /// When set, every lookup fails with this message (a dead resolver).
    pub failing: parking_lot::Mutex<Option<String>>,
}

impl Table {
    pub fn set_ips(&self, name: &str, ips: &[&str]) {
        let parsed = ips.iter().filter_map(|s| s.parse().ok()).collect();
        self.ips.lock().insert(name.to_string(), parsed);
    }

    pub fn set_srv(&self, name: &str, records: Vec<SrvRecord>) {
        self.srv.lock().insert(name.to_string(), records);
    }

    pub fn fail(&self, message: Option<&str>) {
        *self.failing.lock() = message.map(str::to_string);
    }

    fn check(&self) -> Result<(), LookupError> {
        match &*self.failing.lock() {
            Some(m) => Err(LookupError::Failed(m.clone())),
            None => Ok(()),
        }
    }
}

impl Lookup for Table {
    fn ips<'a>(&'a self, name: &'a str) -> LookupFuture<'a, Vec<IpAddr>> {
        Box::pin(async move {
            self.check()?;
            match self.ips.lock().get(name) {
                Some(v) if !v.is_empty() => Ok(v.clone()),
                _ => Err(LookupError::Empty),
            }
        })
    }

    fn srv<'a>(&'a self, name: &'a str) -> LookupFuture<'a, Vec<SrvRecord>> {
        Box::pin(async move {
            self.check()?;
            match self.srv.lock().get(name) {
                Some(v) if !v.is_empty() => Ok(v.clone()),
                _ => Err(LookupError::Empty),
            }
        })
    }
}

/// A shared [`Lookup`].
pub type SharedLookup = Arc<dyn Lookup>;

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(query: DiscoverQuery) -> DiscoverConfig {
        DiscoverConfig {
            name: format!("dns:{}", query.name()),
            query,
            interval: Duration::from_secs(1),
            hold: Duration::from_secs(30),
            resolver: None,
            weight: 2,
            tls: None,
            max_conns: None,
        }
    }

    fn srv(priority: u16, weight: u16, port: u16, target: &str) -> SrvRecord {
        SrvRecord {
            priority,
            weight,
            port,
            target: target.into(),
        }
    }

    #[tokio::test]
    async fn a_records_become_address_port_backends() {
        let t = Table::default();
        t.set_ips("app.local", &["127.0.0.3", "127.0.0.2", "::1"]);
        let cfg = entry(DiscoverQuery::Host {
            name: "app.local".into(),
            port: 8080,
        });
        let found = resolve(&t, &cfg).await.unwrap();
        let ids: Vec<&str> = found.iter().map(|f| f.id.as_str()).collect();
        assert_eq!(ids, ["127.0.0.2:8080", "127.0.0.3:8080", "[::1]:8080"]);
        assert!(found.iter().all(|f| f.weight == 2 && f.route == f.id));
    }

    #[tokio::test]
    async fn srv_uses_only_the_lowest_priority_and_resolves_targets() {
        let t = Table::default();
        t.set_srv(
            "_http._tcp.app",
            vec![
                srv(10, 5, 8081, "node-a.app.local."),
                srv(10, 0, 8082, "Node-B.app.local."),
                srv(20, 1, 8083, "backup.app.local."),
                srv(10, 1, 8084, "unresolvable.app.local."),
            ],
        );
        t.set_ips("node-a.app.local", &["127.0.0.5", "127.0.0.4"]);
        t.set_ips("node-b.app.local", &["127.0.0.6"]);
        t.set_ips("backup.app.local", &["127.0.0.7"]);
        let cfg = entry(DiscoverQuery::Srv {
            name: "_http._tcp.app".into(),
        });
        let found = resolve(&t, &cfg).await.unwrap();
        assert_eq!(
            found,
            vec![
                Found {
                    id: "node-a.app.local:8081".into(),
                    address: "127.0.0.4:8081".into(),
                    weight: 5,
                    route: "node-a".into(),
                },
                Found {
                    id: "node-b.app.local:8082".into(),
                    address: "127.0.0.6:8082".into(),
                    weight: 1,
                    route: "node-b".into(),
                },
            ]
        );
    }

    #[tokio::test]
    async fn empty_and_failing_answers_are_told_apart() {
        let t = Table::default();
        let cfg = entry(DiscoverQuery::Host {
            name: "gone.local".into(),
            port: 80,
        });
        assert_eq!(resolve(&t, &cfg).await, Err(LookupError::Empty));
        t.fail(Some("timed out"));
        assert_eq!(
            resolve(&t, &cfg).await,
            Err(LookupError::Failed("timed out".into()))
        );
    }
}
