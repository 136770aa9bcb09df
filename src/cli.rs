//! The command line's shape (clap): subcommands and their arguments, for the binary only.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "tether",
    version,
    about = "A sticky-session HTTP reverse proxy"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Serve with a config file.
    Run {
        #[arg(
            short,
            long,
            env = "TETHER_CONFIG",
            default_value = "config/tether.toml"
        )]
        config: PathBuf,
        /// Worker threads (default: one per CPU).
        #[arg(long, env = "TETHER_THREADS")]
        threads: Option<usize>,
        /// Take over from the running instance of this config (its listening sockets and
        /// state) without dropping a connection; exit 1 if it cannot.
        #[arg(long)]
        upgrade: bool,
    },
    /// Validate a config file and print a summary.
    Check {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Show which backend a request would reach, the fallback order, and why.
    Explain(ExplainArgs),
    /// Serve a proxy on 127.0.0.1:8080 in front of three built-in demo backends.
    Demo {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
    },
    /// Talk to a running instance's admin API.
    Ctl(CtlArgs),
}

#[derive(Args)]
pub struct CtlArgs {
    /// The admin API's base URL; repeat it (or separate with commas) to act on several
    /// tether instances.
    #[arg(
        long,
        env = "TETHER_ADMIN",
        default_value = "http://127.0.0.1:9090",
        value_delimiter = ','
    )]
    pub admin: Vec<String>,
    /// Bearer token for POST endpoints.
    #[arg(long, env = "TETHER_ADMIN_TOKEN")]
    pub token: Option<String>,
    /// Pool of the backend (needed only when the id is in several pools).
    #[arg(long)]
    pub pool: Option<String>,
    #[command(subcommand)]
    pub action: CtlAction,
}

#[derive(Subcommand)]
pub enum CtlAction {
    /// Print /status.
    Status,
    /// Exit 0 when the instance answers /healthz (for container health checks).
    Healthz,
    /// Stop new sessions on a backend; pinned sessions continue until drain_timeout.
    Drain { id: String },
    /// Return a backend to service.
    Enable { id: String },
    /// Take a backend out of service entirely.
    Disable { id: String },
    /// Re-read the config file now.
    Reload,
    /// Wait until the backend is draining (or disabled, or gone) on every instance and no
    /// pinned request has reached it for --quiet; exit 1 at --timeout.
    WaitDrained {
        id: String,
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        quiet: std::time::Duration,
        #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
}

#[derive(Args)]
#[command(group = clap::ArgGroup::new("key").required(true).multiple(true).args(["cookie", "ip", "header", "jsessionid", "session"]))]
pub struct ExplainArgs {
    #[arg(short, long)]
    pub config: PathBuf,
    #[arg(long)]
    pub pool: Option<String>,
    /// The affinity cookie's value.
    #[arg(long)]
    pub cookie: Option<String>,
    /// The client's IP address.
    #[arg(long)]
    pub ip: Option<IpAddr>,
    /// The affinity header's value.
    #[arg(long)]
    pub header: Option<String>,
    /// A Tomcat session id, e.g. `8F3A….node1` (route affinity).
    #[arg(long)]
    pub jsessionid: Option<String>,
    /// The application's session cookie value (learn affinity; this process has learned
    /// nothing, so it shows where a new session would go).
    #[arg(long)]
    pub session: Option<String>,
}
