//! The immutable runtime snapshot built from a [`Config`]: pools with their selection tables
//! and routes. One `ArcSwap<Snapshot>` is loaded once per request.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;

use crate::affinity::cookie::CookieCodec;
use crate::balancer::slow_start;
use crate::balancer::{Algorithm, Balancer, Member};
use crate::config::{
    Affinity, Config, HashAlgorithm, HostMatch, LearnConfig, PassiveConfig, PoolConfig, RouteConfig,
};
use crate::sessions::{SessionTable, TableSettings};
use crate::state::{now_ms, BackendIdentity, BackendShared, PoolShared, Registry, State, NO_RAMP};
use crate::tls::{BackendTls, TlsMaterial};

pub struct Snapshot {
    pub config: Arc<Config>,
    /// The https listeners' TLS settings (certificates as loaded with this config).
    pub tls_server: Option<Arc<rustls::ServerConfig>>,
    /// Backends' TLS settings as loaded with this config, kept so that a change of
    /// discovered membership rebuilds the snapshot without re-reading files.
    pub tls_backends: std::collections::HashMap<(String, String), Arc<BackendTls>>,
    pub pools: Vec<Pool>,
    /// Routes sorted most specific first.
    routes: Vec<RouteEntry>,
}

struct RouteEntry {
    host: HostMatch,
    prefix: String,
    pool: usize,
}

pub struct Pool {
    pub name: Arc<str>,
    pub affinity: Affinity,
    pub header: Option<HeaderName>,
    pub balance_factor: Option<f64>,
    pub drain_timeout: Duration,
    pub balancer: Arc<Balancer>,
    pub algorithm: Algorithm,
    pub backends: Vec<Backend>,
    pub cookie: Option<CookieCodec>,
    /// Cookie backend token → backend index.
    tokens: ahash::HashMap<u64, usize>,
    /// Tomcat route → backend index.
    routes: ahash::HashMap<Arc<str>, usize>,
    /// Backend id → index.
    ids: ahash::HashMap<Arc<str>, usize>,
    pub route_cfg: Option<RouteConfig>,
    pub learn_cfg: Option<LearnConfig>,
    /// Plain-HTTP requests get a 308 to https.
    pub redirect_http: bool,
    /// Learned sessions (learn affinity), kept across reloads.
    pub learned: Option<Arc<SessionTable>>,
    /// Remembered ip/header keys (`[remember]`), kept across reloads.
    pub remembered: Option<Arc<SessionTable>>,
    pub shared: Arc<PoolShared>,
    pub passive: PassiveConfig,
    /// Slow-start window for backends that become up.
    pub slow_start: Option<Duration>,
    /// Some backend has `max_conns` (new sessions then skip full backends).
    pub limited: bool,
    /// `queue_timeout` and `max_queue`.
    pub queue: crate::queue::Limits,
}

pub struct Backend {
    pub id: Arc<str>,
    /// `host:port` as written.
    pub address: Arc<str>,
    /// Parsed once when the address is a literal IP; DNS names are resolved on connect.
    pub socket_addr: Option<SocketAddr>,
    pub weight: u32,
    pub route: Arc<str>,
    /// HTTPS to this backend.
    pub tls: Option<Arc<BackendTls>>,
    pub token: u64,
    pub shared: Arc<BackendShared>,
    /// `None`: from the config file; else the `discover` entry (`dns:NAME`) that found it.
    pub source: Option<Arc<str>>,
    /// Effective `max_conns` (0 = no limit): checked before the queue is touched.
    pub max_conns: u32,
}

impl Snapshot {
    /// Builds a snapshot; long-lived state comes from (and is registered in) `registry`.
    /// With `previous`, a pool whose membership, weights and hashing are unchanged keeps its
    /// selection table (no rebuild, and trivially no key moves).
    pub fn build(
        config: Arc<Config>,
        tls: TlsMaterial,
        registry: &Arc<Registry>,
        previous: Option<&Snapshot>,
    ) -> Snapshot {
        let mut identities = Vec::new();
        for p in &config.pools {
            for b in &p.backends {
                identities.push(BackendIdentity {
                    pool: &p.name,
                    id: &b.id,
                    address: &b.address,
                    file_state: b.state,
                    active_checks: p.health.is_some(),
                    vanished: b.discovered.as_ref().is_some_and(|d| d.vanished),
                });
            }
        }
        let mut shared = registry.sync(&identities).into_iter();
        let tables: Vec<(&str, &str)> = config
            .pools
            .iter()
            .flat_map(|p| {
                let learn = p.learn.is_some().then_some(("learn", p.name.as_str()));
                let remember = p
                    .remember
                    .is_some()
                    .then_some(("remember", p.name.as_str()));
                learn.into_iter().chain(remember)
            })
            .collect();
        registry.retain_tables(&tables);
        let pools = config
            .pools
            .iter()
            .map(|p| {
                let old = previous.and_then(|s| s.pools.iter().find(|o| *o.name == *p.name));
                build_pool(p, &mut shared, registry, old, &tls)
            })
            .collect::<Vec<_>>();
        let mut routes: Vec<RouteEntry> = config
            .routes
            .iter()
            .filter_map(|r| {
                let pool = pools.iter().position(|p| *p.name == *r.pool)?;
                Some(RouteEntry {
                    host: r.host.clone(),
                    prefix: r.path_prefix.clone(),
                    pool,
                })
            })
            .collect();
        // Exact host before wildcard before any; then the longest prefix.
        routes.sort_by_key(|r| {
            let rank = match &r.host {
                HostMatch::Exact(_) => 0,
                HostMatch::Suffix(s) => 1_000_000 - s.len(),
                HostMatch::Any => 2_000_000,
            };
            (rank, usize::MAX - r.prefix.len())
        });
        Snapshot {
            config,
            tls_server: tls.server,
            tls_backends: tls.backends,
            pools,
            routes,
        }
    }

    /// The pool for a request's host (without port) and path. With no routes configured,
    /// the only pool takes everything.
    pub fn route(&self, host: Option<&str>, path: &str) -> Option<usize> {
        if self.routes.is_empty() {
            return (self.pools.len() == 1).then_some(0);
        }
        let host = host.map(|h| h.strip_suffix('.').unwrap_or(h));
        self.routes
            .iter()
            .find(|r| {
                let host_ok = match (&r.host, host) {
                    (HostMatch::Any, _) => true,
                    (HostMatch::Exact(e), Some(h)) => h.eq_ignore_ascii_case(e),
                    (HostMatch::Suffix(s), Some(h)) => {
                        h.len() > s.len()
                            && h.is_char_boundary(h.len() - s.len())
                            && h[h.len() - s.len()..].eq_ignore_ascii_case(s)
                    }
                    _ => false,
                };
                host_ok && path.starts_with(r.prefix.as_str())
            })
            .map(|r| r.pool)
    }

    pub fn pool_index(&self, name: &str) -> Option<usize> {
        self.pools.iter().position(|p| &*p.name == name)
    }
}

fn build_pool(
    p: &PoolConfig,
    shared: &mut impl Iterator<Item = Arc<BackendShared>>,
    registry: &Arc<Registry>,
    previous: Option<&Pool>,
    tls: &TlsMaterial,
) -> Pool {
    let cookie = p.cookie.as_ref().map(CookieCodec::new);
    let backends: Vec<Backend> = p
        .backends
        .iter()
        .map(|b| Backend {
            id: b.id.as_str().into(),
            address: b.address.as_str().into(),
            socket_addr: b.address.parse().ok(),
            weight: b.weight,
            route: b.route.as_str().into(),
            // A discovered backend uses its `discover` entry's TLS settings.
            tls: tls
                .backends
                .get(&(
                    p.name.clone(),
                    b.discovered.as_ref().map_or(&b.id, |d| &d.source).clone(),
                ))
                .cloned(),
            token: cookie.as_ref().map(|c| c.backend_token(&b.id)).unwrap_or(0),
            // `sync` returned one entry per configured backend, in this order.
            shared: shared
                .next()
                .unwrap_or_else(|| Arc::new(crate::state::BackendShared::detached())),
            source: b.discovered.as_ref().map(|d| d.source.as_str().into()),
            max_conns: b.max_conns.unwrap_or(p.max_conns),
        })
        .collect();
    for b in &backends {
        b.shared.queue.set_limit(b.max_conns);
    }
    let members: Vec<Member<'_>> = backends
        .iter()
        .map(|b| Member {
            id: &b.id,
            address: &b.address,
            weight: b.weight,
        })
        .collect();
    let algorithm = match p.hash {
        HashAlgorithm::Maglev => Algorithm::Maglev {
            table_size: p.table_size,
        },
        HashAlgorithm::Ketama => Algorithm::Ketama,
    };
    let same_membership = |old: &Pool| {
        old.algorithm == algorithm
            && old.backends.len() == backends.len()
            && old
                .backends
                .iter()
                .zip(&backends)
                .all(|(o, n)| o.id == n.id && o.address == n.address && o.weight == n.weight)
    };
    let balancer = match previous.filter(|o| same_membership(o)) {
        Some(old) => old.balancer.clone(),
        None => Arc::new(Balancer::build(algorithm, &members)),
    };
    let tokens = backends
        .iter()
        .enumerate()
        .map(|(i, b)| (b.token, i))
        .collect();
    let routes = backends
        .iter()
        .enumerate()
        .map(|(i, b)| (b.route.clone(), i))
        .collect();
    let ids = backends
        .iter()
        .enumerate()
        .map(|(i, b)| (b.id.clone(), i))
        .collect();
    let learned = p.learn.as_ref().map(|l| {
        let s = TableSettings {
            ttl: l.ttl,
            capacity: l.capacity,
            store: l.store.clone(),
        };
        registry.session_table("learn", &p.name, &s)
    });
    let remembered = p.remember.as_ref().map(|r| {
        let s = TableSettings {
            ttl: r.ttl,
            capacity: r.capacity,
            store: r.store.clone(),
        };
        registry.session_table("remember", &p.name, &s)
    });
    Pool {
        name: p.name.as_str().into(),
        affinity: p.affinity,
        header: p.header.clone(),
        balance_factor: p.balance_factor,
        drain_timeout: p.drain_timeout,
        balancer,
        algorithm,
        cookie,
        tokens,
        routes,
        ids,
        route_cfg: p.route.clone(),
        learn_cfg: p.learn.clone(),
        learned,
        remembered,
        redirect_http: p.redirect_http,
        shared: registry.pool(&p.name),
        passive: p.passive.clone(),
        slow_start: p.slow_start,
        limited: backends.iter().any(|b| b.max_conns > 0),
        queue: crate::queue::Limits {
            queue_timeout: p.queue_timeout,
            max_queue: p.max_queue,
        },
        backends,
    }
}

impl Pool {
    /// The backend with this Tomcat route.
    pub fn by_route(&self, route: &[u8]) -> Option<usize> {
        let r = std::str::from_utf8(route).ok()?;
        self.routes.get(r).copied()
    }

    /// The backend with this id.
    pub fn by_id(&self, id: &str) -> Option<usize> {
        self.ids.get(id).copied()
    }

    /// The backend a cookie token names.
    pub fn by_token(&self, token: u64) -> Option<usize> {
        self.tokens.get(&token).copied()
    }

    /// May this backend receive new sessions? (up: healthy, active)
    pub fn takes_new(&self, i: usize) -> bool {
        self.backends[i].shared.state() == State::Up
    }

    /// Slow start: the share of its weight backend `i` has earned since it came up (1 when
    /// the pool has no `slow_start`, or the window is over).
    pub fn ramp(&self, i: usize) -> f64 {
        let Some(window) = self.slow_start else {
            return 1.0;
        };
        let shared = &self.backends[i].shared;
        let since = match shared.up_since_ms() {
            Some(t) => t,
            None => {
                // Not seen up by the slow-start clock yet: start it now.
                shared.observe_up();
                match shared.up_since_ms() {
                    Some(t) => t,
                    None => return 1.0,
                }
            }
        };
        if since == NO_RAMP {
            return 1.0;
        }
        slow_start::fraction(now_ms().saturating_sub(since), window.as_millis() as u64)
    }

    /// May backend `i` take a new session placed by `key`? (up, and admitted by slow start)
    pub fn takes_new_for(&self, i: usize, key: &[u8]) -> bool {
        self.takes_new(i) && {
            let f = self.ramp(i);
            f >= 1.0 || slow_start::admits(key, &self.backends[i].id, f)
        }
    }

    /// Is this backend draining (and healthy) and still within `drain_timeout`?
    pub fn draining_within_timeout(&self, i: usize) -> bool {
        let shared = &self.backends[i].shared;
        if shared.state() != State::Draining {
            return false;
        }
        match shared.drain_started_ms() {
            Some(start) => now_ms().saturating_sub(start) < self.drain_timeout.as_millis() as u64,
            None => true,
        }
    }

    /// May a request pinned to this backend still go there?
    pub fn takes_pinned(&self, i: usize) -> bool {
        self.takes_new(i) || self.draining_within_timeout(i)
    }

    pub fn total_in_flight(&self) -> u64 {
        self.shared.in_flight.load(Ordering::Relaxed)
    }
}
