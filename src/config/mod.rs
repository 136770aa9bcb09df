//! The config file: TOML text → validated, typed [`Config`]; pure (no I/O but reading the file).

mod discover;
mod parse;
mod pool;
mod reader;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use http::HeaderName;
use ipnet::IpNet;

pub use reader::Diagnostic;

/// Maglev slots per backend that keep a one-backend change under 1.5/N moved keys
/// (measured by `examples/disruption.rs`).
pub const MAGLEV_SLOTS_PER_BACKEND: u64 = 1300;

/// A fully validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub listen: Listen,
    pub tls: Option<TlsConfig>,
    pub proxy: ProxySettings,
    pub admin: Option<AdminConfig>,
    pub log: LogConfig,
    pub routes: Vec<Route>,
    /// Pools in file order; names are unique.
    pub pools: Vec<PoolConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Listen {
    pub http: Vec<SocketAddr>,
    /// TLS listeners (need `[tls]`).
    pub https: Vec<SocketAddr>,
    /// Every connection on these listeners starts with a PROXY protocol header.
    pub proxy_protocol: bool,
    /// The upgrade handover socket (`None`: the default path, see `handover::path`).
    pub handover: Option<std::path::PathBuf>,
}

/// A file path from the config, with where it was written (for error messages).
#[derive(Debug, Clone, PartialEq)]
pub struct FileRef {
    pub path: String,
    pub at: Location,
}

/// A place in the config file.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Location {
    pub file: String,
    pub line: usize,
    pub col: usize,
    pub key: String,
}

impl Location {
    pub fn error(&self, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            file: self.file.clone(),
            line: self.line,
            col: self.col,
            path: self.key.clone(),
            message: message.into(),
        }
    }
}

/// `[tls]`: certificates for the https listeners.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsConfig {
    pub cert: FileRef,
    pub key: FileRef,
    /// Extra certificates chosen by SNI host name.
    pub sni: Vec<SniCert>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SniCert {
    /// Lower-case host name; `*.example.com` matches one label.
    pub host: String,
    pub cert: FileRef,
    pub key: FileRef,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProxySettings {
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub idle_timeout: Duration,
    pub header_timeout: Duration,
    pub max_header_bytes: usize,
    pub retries: u32,
    pub trusted_proxies: Vec<IpNet>,
    pub shutdown_timeout: Duration,
    /// Cap on concurrent client connections; 0 = no cap.
    pub max_connections: u64,
}

impl Default for ProxySettings {
    fn default() -> Self {
        ProxySettings {
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(75),
            header_timeout: Duration::from_secs(10),
            max_header_bytes: 65536,
            retries: 1,
            trusted_proxies: Vec::new(),
            shutdown_timeout: Duration::from_secs(30),
            max_connections: 0,
        }
    }
}

/// `[admin]`: the admin API listener.
#[derive(Debug, Clone, PartialEq)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// When set, POST endpoints need `Authorization: Bearer <token>`.
    pub token: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLog {
    Off,
    Combined,
    Json,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    pub access: AccessLog,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            access: AccessLog::Combined,
        }
    }
}

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

/// Which requests go to which pool.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub host: HostMatch,
    pub path_prefix: String,
    pub pool: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    Any,
    /// Lower-cased exact host name.
    Exact(String),
    /// `*.example.com`: stores `.example.com`; matches any name ending with it.
    Suffix(String),
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

impl std::fmt::Display for HostMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostMatch::Any => f.write_str("*"),
            HostMatch::Exact(h) => f.write_str(h),
            HostMatch::Suffix(s) => write!(f, "*{s}"),
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

/// Every problem found in a config file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read config file: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", display_all(.0))]
    Invalid(Vec<Diagnostic>),
}

fn display_all(d: &[Diagnostic]) -> String {
    d.iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Validates config text; `file` is only used in error messages.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        parse::parse(text, file).map_err(ConfigError::Invalid)
    }

    /// Advice that does not make the file invalid.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        for p in &self.pools {
            let n = p.backends.len() as u64;
            if p.hash == HashAlgorithm::Maglev
                && u64::from(p.table_size) < n * MAGLEV_SLOTS_PER_BACKEND
            {
                w.push(format!(
                    "pools.{}.table_size: {} slots for {} backends; removing one backend may move more than 1.5/N of keys (use a prime ≥ {})",
                    p.name,
                    p.table_size,
                    n,
                    n * MAGLEV_SLOTS_PER_BACKEND
                ));
            }
        }
        w
    }

    pub fn pool(&self, name: &str) -> Option<&PoolConfig> {
        self.pools.iter().find(|p| p.name == name)
    }
}
