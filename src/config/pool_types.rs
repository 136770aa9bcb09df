//! Validated `[pools.NAME]` types: the pool, its affinity settings, checks, discovery, backends.

use std::net::SocketAddr;
use std::time::Duration;

use http::HeaderName;

use super::FileRef;

/// `[pools.NAME.health]`: active checks.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    /// HTTP GET path; `None` = TCP connect check.
    pub path: Option<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    /// Inclusive range of healthy status codes.
    pub expect: (u16, u16),
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            path: None,
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
            expect: (200, 399),
        }
    }
}

/// `[pools.NAME.passive]`: connect failures seen by real traffic.
#[derive(Debug, Clone, PartialEq)]
pub struct PassiveConfig {
    /// Consecutive connect errors/timeouts that mark a backend down; 0 = off.
    pub max_fails: u32,
    pub fail_timeout: Duration,
}

impl Default for PassiveConfig {
    fn default() -> Self {
        PassiveConfig {
            max_fails: 3,
            fail_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Affinity {
    Cookie,
    Route,
    Learn,
    Ip,
    Header,
    None,
}

impl Affinity {
    pub fn as_str(self) -> &'static str {
        match self {
            Affinity::Cookie => "cookie",
            Affinity::Route => "route",
            Affinity::Learn => "learn",
            Affinity::Ip => "ip",
            Affinity::Header => "header",
            Affinity::None => "none",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashAlgorithm {
    Maglev,
    Ketama,
}

impl HashAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            HashAlgorithm::Maglev => "maglev",
            HashAlgorithm::Ketama => "ketama",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    pub name: String,
    pub affinity: Affinity,
    pub hash: HashAlgorithm,
    /// Maglev lookup table size (a prime).
    pub table_size: u32,
    /// Bounded loads on in-flight requests; `None` = off.
    pub balance_factor: Option<f64>,
    pub drain_timeout: Duration,
    /// For `affinity = "header"`.
    pub header: Option<HeaderName>,
    /// For `affinity = "cookie"` (defaults filled in).
    pub cookie: Option<CookieConfig>,
    /// For `affinity = "route"`.
    pub route: Option<RouteConfig>,
    /// For `affinity = "learn"`.
    pub learn: Option<LearnConfig>,
    /// For `affinity = "ip"` or `"header"`: keys remembered at the backend they reached.
    pub remember: Option<RememberConfig>,
    /// Answer plain-HTTP requests with a 308 redirect to https.
    pub redirect_http: bool,
    /// Active checks; `None` = none (backends are up unless passive checks say otherwise).
    pub health: Option<HealthConfig>,
    pub passive: PassiveConfig,
    /// Backends from the file, then (in a running instance's snapshot) discovered ones.
    /// Requests in flight per backend from this instance (0 = no limit); a backend's own
    /// `max_conns` overrides it.
    pub max_conns: u32,
    /// How long a request over the limit waits for a slot.
    pub queue_timeout: Duration,
    /// Requests waiting per backend (0 = no bound).
    pub max_queue: u32,
    pub backends: Vec<BackendConfig>,
    /// `[[pools.NAME.discover]]` entries.
    pub discover: Vec<DiscoverConfig>,
    /// New sessions reach a backend that just became up with a weight rising over this.
    pub slow_start: Option<Duration>,
}

/// `[[pools.NAME.discover]]`: backends from DNS.
#[derive(Debug, Clone, PartialEq)]
pub struct DiscoverConfig {
    /// `dns:NAME`: the `source` of the backends it yields.
    pub name: String,
    pub query: DiscoverQuery,
    pub interval: Duration,
    /// How long an empty answer (or NXDOMAIN) must persist before it empties the set.
    pub hold: Duration,
    /// Name servers to ask; `None` = the system's resolv.conf.
    pub resolver: Option<Vec<SocketAddr>>,
    /// Weight of A/AAAA backends (SRV records carry their own).
    pub weight: u32,
    /// HTTPS to the discovered backends.
    pub tls: Option<BackendTls>,
    /// `max_conns` of the discovered backends (overrides the pool's).
    pub max_conns: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiscoverQuery {
    /// A/AAAA: every address is a backend on `port`.
    Host { name: String, port: u16 },
    /// SRV: target, port and weight from the lowest-priority records.
    Srv { name: String },
}

impl DiscoverQuery {
    /// The name asked for (lower case, no final dot).
    pub fn name(&self) -> &str {
        match self {
            DiscoverQuery::Host { name, .. } | DiscoverQuery::Srv { name } => name,
        }
    }
}

/// Where a backend of a running snapshot came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovered {
    /// The `discover` entry's name (`dns:NAME`).
    pub source: String,
    /// Its record is gone: it drains until `drain_timeout` or until it is down.
    pub vanished: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secure {
    /// Only when the client came over TLS.
    Auto,
    Always,
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameSite {
    Lax,
    Strict,
    None,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CookieConfig {
    pub name: String,
    pub max_age: Option<Duration>,
    pub max_idle: Option<Duration>,
    pub secret: Option<String>,
    pub path: String,
    pub domain: Option<String>,
    pub secure: Secure,
    pub http_only: bool,
    pub same_site: SameSite,
    /// CHIPS: add `Partitioned` (needs secure = true and same_site = "none").
    pub partitioned: bool,
}

impl Default for CookieConfig {
    fn default() -> Self {
        CookieConfig {
            name: "TETHER".into(),
            max_age: None,
            max_idle: None,
            secret: None,
            path: "/".into(),
            domain: None,
            secure: Secure::Auto,
            http_only: true,
            same_site: SameSite::Lax,
            partitioned: false,
        }
    }
}

/// `[pools.NAME.route]`: Tomcat jvmRoute affinity.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    /// The session cookie whose value ends in `.<route>`.
    pub cookie: String,
    /// The `;name=` path parameter of URL-rewritten sessions (checked first).
    pub url_param: String,
}

impl Default for RouteConfig {
    fn default() -> Self {
        RouteConfig {
            cookie: "JSESSIONID".into(),
            url_param: "jsessionid".into(),
        }
    }
}

/// `[pools.NAME.learn]`: sessions learned from the application's own cookie.
#[derive(Debug, Clone, PartialEq)]
pub struct LearnConfig {
    pub cookie: String,
    /// Idle expiry of a learned session.
    pub ttl: Duration,
    /// Bound on remembered sessions.
    pub capacity: u64,
    /// A store URL (`redis://`, `rediss://`, `redis-sentinel://`, `redis-cluster://`) to share
    /// learned sessions between instances.
    pub store: Option<String>,
}

impl Default for LearnConfig {
    fn default() -> Self {
        LearnConfig {
            cookie: "session".into(),
            ttl: Duration::from_secs(30 * 60),
            capacity: 1_000_000,
            store: None,
        }
    }
}

/// `[pools.NAME.remember]`: ip/header keys kept at the backend they reached.
#[derive(Debug, Clone, PartialEq)]
pub struct RememberConfig {
    /// A key not seen for this long is forgotten.
    pub ttl: Duration,
    /// Beyond it the least recently seen keys are forgotten.
    pub capacity: u64,
    /// A store URL to share remembered keys between instances.
    pub store: Option<String>,
}

impl Default for RememberConfig {
    fn default() -> Self {
        RememberConfig {
            ttl: Duration::from_secs(30 * 60),
            capacity: 1_000_000,
            store: None,
        }
    }
}

/// The state an operator gives a backend in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminState {
    Active,
    Drain,
    Disabled,
}

impl AdminState {
    pub fn as_str(self) -> &'static str {
        match self {
            AdminState::Active => "active",
            AdminState::Drain => "drain",
            AdminState::Disabled => "disabled",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct BackendConfig {
    /// Stable identity (default: the address).
    pub id: String,
    /// `host:port` exactly as written (ketama hashes this text).
    pub address: String,
    pub weight: u32,
    /// Tomcat jvmRoute (default: the id).
    pub route: String,
    pub state: AdminState,
    /// HTTPS to this backend (`tls = true`, or an `https://` address).
    pub tls: Option<BackendTls>,
    /// `None`: written in the file; else found by a `discover` entry.
    pub discovered: Option<Discovered>,
    /// Overrides the pool's `max_conns`.
    pub max_conns: Option<u32>,
}

/// How to reach a backend over TLS.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendTls {
    /// PEM file of CAs to trust instead of the system roots.
    pub ca: Option<FileRef>,
    /// SNI and certificate name; default: the address's host.
    pub server_name: String,
}
