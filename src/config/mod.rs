//! The config file: TOML text → validated, typed [`Config`]; pure (no I/O but reading the file).

mod affinity;
mod backends;
mod checks;
mod discover;
mod parse;
mod pool;
mod pool_types;
mod reader;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use ipnet::IpNet;

pub use pool_types::{
    AdminState, Affinity, BackendConfig, BackendTls, CookieConfig, DiscoverConfig, DiscoverQuery,
    Discovered, HashAlgorithm, HealthConfig, LearnConfig, PassiveConfig, PoolConfig,
    RememberConfig, RouteConfig, SameSite, Secure,
};
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

impl std::fmt::Display for HostMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostMatch::Any => f.write_str("*"),
            HostMatch::Exact(h) => f.write_str(h),
            HostMatch::Suffix(s) => write!(f, "*{s}"),
        }
    }
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
