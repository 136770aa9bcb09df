//! The `tether` command line: run, check, explain, demo.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tether::config::{Config, ConfigError};
use tether::runtime::App;
use tether::{demo, explain, server};

#[derive(Parser)]
#[command(
    name = "tether",
    version,
    about = "A sticky-session HTTP reverse proxy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve with a config file.
    Run {
        #[arg(
            short,
            long,
            env = "TETHER_CONFIG",
            default_value = "config/tether.toml"
        )]
        config: PathBuf,
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
}

#[derive(Args)]
#[command(group = clap::ArgGroup::new("key").required(true).multiple(true).args(["cookie", "ip", "header"]))]
struct ExplainArgs {
    #[arg(short, long)]
    config: PathBuf,
    #[arg(long)]
    pool: Option<String>,
    /// The affinity cookie's value.
    #[arg(long)]
    cookie: Option<String>,
    /// The client's IP address.
    #[arg(long)]
    ip: Option<IpAddr>,
    /// The affinity header's value.
    #[arg(long)]
    header: Option<String>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check { config } => return check(&config),
        Command::Explain(args) => explain_cmd(args),
        Command::Run { config } => runtime().and_then(|rt| rt.block_on(run(config))),
        Command::Demo { listen } => runtime().and_then(|rt| rt.block_on(run_demo(listen))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn load(path: &Path) -> anyhow::Result<Config> {
    Config::load(path).map_err(|e| anyhow::anyhow!("{e}"))
}

fn check(path: &Path) -> ExitCode {
    match Config::load(path) {
        Ok(c) => {
            println!("{}: OK", path.display());
            for w in c.warnings() {
                println!("warning: {w}");
            }
            println!(
                "listen http: {}",
                c.listen
                    .http
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            for r in &c.routes {
                println!(
                    "route host {} path {} → pool {}",
                    r.host, r.path_prefix, r.pool
                );
            }
            for p in &c.pools {
                println!(
                    "pool {}: affinity {}, hash {}, {} backends",
                    p.name,
                    p.affinity.as_str(),
                    p.hash.as_str(),
                    p.backends.len()
                );
                for b in &p.backends {
                    println!(
                        "  {} {} weight {} route {} {}",
                        b.id,
                        b.address,
                        b.weight,
                        b.route,
                        b.state.as_str()
                    );
                }
            }
            ExitCode::SUCCESS
        }
        Err(ConfigError::Invalid(errors)) => {
            for e in &errors {
                eprintln!("{e}");
            }
            eprintln!("{} error(s)", errors.len());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn explain_cmd(a: ExplainArgs) -> anyhow::Result<()> {
    let config = load(&a.config)?;
    let q = explain::Query {
        cookie: a.cookie,
        ip: a.ip,
        header: a.header,
    };
    print!("{}", explain::explain(&config, a.pool.as_deref(), &q)?);
    Ok(())
}

async fn run(path: PathBuf) -> anyhow::Result<()> {
    let config = load(&path)?;
    let listeners = server::bind(&config.listen.http).await?;
    for l in &listeners {
        tracing::info!(address = %l.local_addr()?, "listening (http)");
    }
    let app = App::new(config);
    server::serve(app, listeners, server::shutdown_signal()).await;
    Ok(())
}

async fn run_demo(listen: SocketAddr) -> anyhow::Result<()> {
    let mut backends = Vec::new();
    for name in ["demo-1", "demo-2", "demo-3"] {
        backends.push(demo::spawn_backend(name).await?);
    }
    let config = demo::config(listen, &backends).map_err(|e| anyhow::anyhow!("{e}"))?;
    let listeners = server::bind(&config.listen.http).await?;
    eprintln!("tether demo: proxy on http://{listen}, backends demo-1..3 on {backends:?}");
    eprintln!(
        "try:  curl -c jar -b jar http://{listen}/   (repeat: same backend, visit count rises)"
    );
    eprintln!(
        "      curl http://{listen}/                 (no cookie jar: a new session each time)"
    );
    server::serve(App::new(config), listeners, server::shutdown_signal()).await;
    Ok(())
}
