//! The `tether` command line: run, check, explain, demo.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use tether::app::App;
use tether::config::{Config, ConfigError};
use tether::{admin, demo, explain, health, reload, server};

// The global allocator implements the unsafe `GlobalAlloc` trait over mimalloc's C API: the
// one place in tether that needs unsafe code (Cargo.toml denies it everywhere else, and the
// library forbids it). Each unsafe block there carries its `// SAFETY:` argument.
#[allow(unsafe_code)]
mod alloc;
mod cli;

use cli::{Cli, Command, CtlAction, CtlArgs, ExplainArgs};

// mimalloc: the per-request allocations (read buffers, header maps, the request future)
// cost a fraction of glibc's price; see BENCHMARKS.md and `alloc`.
#[global_allocator]
static ALLOC: alloc::Mimalloc = alloc::Mimalloc;

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
        Command::Run {
            config,
            threads,
            upgrade,
        } => runtime(threads).and_then(|rt| rt.block_on(run(config, upgrade))),
        Command::Demo { listen } => runtime(None).and_then(|rt| rt.block_on(run_demo(listen))),
        Command::Ctl(args) => runtime(Some(1)).and_then(|rt| rt.block_on(ctl(args))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// One worker thread runs on a current-thread runtime (no work-stealing overhead); more use
/// the multi-thread scheduler.
fn runtime(threads: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut b = match threads {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n.max(1));
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    b.enable_all().build().context("starting the async runtime")
}

fn load(path: &Path) -> anyhow::Result<Config> {
    Config::load(path).map_err(|e| anyhow::anyhow!("{e}"))
}

fn diagnostics(d: Vec<tether::config::Diagnostic>) -> anyhow::Error {
    anyhow::anyhow!(d
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("\n"))
}

fn check(path: &Path) -> ExitCode {
    let loaded = Config::load(path).and_then(|c| {
        // Certificates and keys are part of the config: read and match them too.
        match tether::tls::load(&c, &tether::app::base_dir(Some(path))) {
            Ok(tls) => Ok((c, tls.warnings)),
            Err(d) => Err(ConfigError::Invalid(d)),
        }
    });
    match loaded {
        Ok((c, tls_warnings)) => {
            for w in tls_warnings {
                println!("warning: {w}");
            }
            println!("{}: OK", path.display());
            for w in c.warnings() {
                println!("warning: {w}");
            }
            let addrs = |v: &[SocketAddr]| {
                v.iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            println!("listen http: {}", addrs(&c.listen.http));
            println!(
                "handover socket: {}",
                tether::handover::path(&c, path).display()
            );
            if !c.listen.https.is_empty() {
                println!("listen https: {}", addrs(&c.listen.https));
            }
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
                for d in &p.discover {
                    println!("  discover {} every {:?}", d.name, d.interval);
                }
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
            print_discovery(&c);
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

/// `check`: resolve each `discover` entry once; a failure is a warning (DNS may not be
/// reachable where the check runs).
fn print_discovery(c: &Config) {
    if c.pools.iter().all(|p| p.discover.is_empty()) {
        return;
    }
    let results = match runtime(Some(1)) {
        Ok(rt) => rt.block_on(tether::discovery::check(c)),
        Err(e) => {
            println!("warning: cannot resolve discover entries: {e:#}");
            return;
        }
    };
    for (pool, name, result) in results {
        match result {
            Ok(found) => {
                println!("pool {pool}: {name} resolves to {} backends", found.len());
                for f in found {
                    println!(
                        "  {} {} weight {} route {}",
                        f.id, f.address, f.weight, f.route
                    );
                }
            }
            Err(e) => println!("warning: pools.{pool}: {name}: resolution failed: {e}"),
        }
    }
}

fn explain_cmd(a: ExplainArgs) -> anyhow::Result<()> {
    let config = load(&a.config)?;
    let q = explain::Query {
        cookie: a.cookie,
        ip: a.ip,
        header: a.header,
        jsessionid: a.jsessionid,
        session: a.session,
    };
    print!("{}", explain::explain(&config, a.pool.as_deref(), &q)?);
    Ok(())
}

async fn run(path: PathBuf, upgrade: bool) -> anyhow::Result<()> {
    let config = load(&path)?;
    let handover_path = tether::handover::path(&config, &path);
    // An upgrade checks everything it can before it touches the running instance: the
    // config (above) and its certificates.
    let mut takeover = if upgrade {
        tether::tls::load(&config, &tether::app::base_dir(Some(&path))).map_err(diagnostics)?;
        let p = handover_path.clone();
        Some(tokio::task::spawn_blocking(move || tether::handover::connect(&p)).await??)
    } else {
        None
    };
    let listeners = match &mut takeover {
        Some(t) => t.listeners(&config.listen)?,
        None => server::bind(&config.listen).await?,
    };
    let admin_listener = match (&config.admin, &mut takeover) {
        (Some(a), Some(t)) => Some(t.admin_listener(a.listen)?),
        (Some(a), None) => Some(
            tokio::net::TcpListener::bind(a.listen)
                .await
                .with_context(|| format!("cannot listen on {} (admin)", a.listen))?,
        ),
        (None, _) => None,
    };
    let app = App::new(config, Some(path)).map_err(diagnostics)?;
    if let Some(t) = &takeover {
        t.import(&app);
    }
    // Backends from DNS first, then first health verdicts: new backends are checked before
    // they get sessions.
    app.discovery
        .first_resolutions(std::time::Duration::from_secs(5))
        .await;
    let snap = app.snapshot();
    health::first_verdicts(&snap, health::first_verdict_limit(&snap)).await;
    drop(snap);
    // Backends up now serve at full weight; later ones get slow start.
    app.end_startup();
    for (_, kind, l) in &listeners {
        tracing::info!(address = %l.local_addr()?, ?kind, "listening");
    }
    // The running listeners: started by `serve`, changed by reloads, handed to an upgrade.
    let running = server::Listeners::default();
    let reloader = reload::Reloader::spawn(app.clone(), running.clone());
    reload::spawn_triggers(&app, &reloader);
    let admin_fd = match &admin_listener {
        Some(l) => Some((
            l.local_addr()?,
            std::os::fd::AsFd::as_fd(l).try_clone_to_owned()?,
        )),
        None => None,
    };
    // Without a handover socket tether still serves; it just cannot be upgraded in place.
    let handed_over = match tether::handover::offer(
        app.clone(),
        running.clone(),
        &handover_path,
        admin_fd,
    ) {
        Ok(rx) => Some(rx),
        Err(e) => {
            tracing::warn!(error = %e, "no handover socket: `tether run --upgrade` will not find this instance");
            None
        }
    };
    tether::handover::spawn_on_sigusr2();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    if let Some(l) = admin_listener {
        tracing::info!(address = %l.local_addr()?, "admin API listening");
        let mut rx = stop_rx.clone();
        tokio::spawn(admin::serve(app.clone(), reloader, l, async move {
            let _ = rx.changed().await;
        }));
    }
    // Every listener is bound (the kernel completes handshakes into their backlogs) and the
    // accept loops start as `serve` is first polled, just below. After an upgrade the old
    // instance stops accepting only now, on the same sockets: no connection is refused.
    if let Some(t) = takeover {
        t.go()?;
        tether::systemd::main_pid();
    }
    tether::systemd::ready();
    server::serve(app, running, listeners, async move {
        let taken_over = async {
            let done = match handed_over {
                Some(rx) => rx.await.is_ok(),
                None => false,
            };
            if !done {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            _ = server::shutdown_signal() => tether::systemd::stopping(),
            // The new process is the service now: no STOPPING=1 from this one.
            _ = taken_over => {}
        }
        let _ = stop_tx.send(true);
    })
    .await;
    drop(stop_rx);
    Ok(())
}

async fn ctl(a: CtlArgs) -> anyhow::Result<()> {
    let token = a.token.as_deref();
    let (id, action) = match a.action {
        CtlAction::Status => {
            for admin in &a.admin {
                let body = admin::call(admin, http::Method::GET, "/status", token).await?;
                let v: serde_json::Value = serde_json::from_str(&body)?;
                if a.admin.len() > 1 {
                    println!("# {admin}");
                }
                println!("{}", serde_json::to_string_pretty(&v)?);
            }
            return Ok(());
        }
        CtlAction::Reload => {
            for admin in &a.admin {
                print!(
                    "{}",
                    admin::call(admin, http::Method::POST, "/reload", token).await?
                );
            }
            return Ok(());
        }
        CtlAction::Healthz => {
            for admin in &a.admin {
                admin::call(admin, http::Method::GET, "/healthz", token).await?;
            }
            return Ok(());
        }
        CtlAction::WaitDrained { id, quiet, timeout } => {
            let o = tether::ctl::WaitOptions {
                admins: a.admin.clone(),
                token: a.token.clone(),
                pool: a.pool.clone(),
                id,
                quiet,
                timeout,
                poll: std::time::Duration::from_secs(1)
                    .min(quiet.max(std::time::Duration::from_millis(100))),
            };
            tether::ctl::wait_drained(&o).await?;
            println!("{}: drained", o.id);
            return Ok(());
        }
        CtlAction::Drain { id } => (id, "drain"),
        CtlAction::Enable { id } => (id, "enable"),
        CtlAction::Disable { id } => (id, "disable"),
    };
    // Every instance is asked, even when one fails (a preStop hook drains what it can).
    let mut failed = Vec::new();
    for admin in &a.admin {
        if let Err(e) = ctl_one(admin, token, a.pool.as_deref(), &id, action).await {
            eprintln!("{admin}: {e:#}");
            failed.push(admin.clone());
        }
    }
    if !failed.is_empty() {
        anyhow::bail!("{action} failed at {}", failed.join(", "));
    }
    Ok(())
}

async fn ctl_one(
    admin: &str,
    token: Option<&str>,
    pool: Option<&str>,
    id: &str,
    action: &str,
) -> anyhow::Result<()> {
    let pool = match pool {
        Some(p) => p.to_string(),
        None => {
            let body = admin::call(admin, http::Method::GET, "/status", token).await?;
            let v: serde_json::Value = serde_json::from_str(&body)?;
            let pools: Vec<String> = v["pools"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .filter(|(_, p)| {
                            p["backends"]
                                .as_array()
                                .is_some_and(|bs| bs.iter().any(|b| b["id"] == id))
                        })
                        .map(|(name, _)| name.clone())
                        .collect()
                })
                .unwrap_or_default();
            match pools.as_slice() {
                [one] => one.clone(),
                [] => anyhow::bail!("no backend {id:?} in any pool"),
                _ => anyhow::bail!("backend {id:?} is in pools {pools:?}; choose one with --pool"),
            }
        }
    };
    let path = format!(
        "/pools/{}/backends/{}/{action}",
        admin::percent_encode(&pool),
        admin::percent_encode(id)
    );
    let body = admin::call(admin, http::Method::POST, &path, token).await?;
    print!("{body}");
    Ok(())
}

async fn run_demo(listen: SocketAddr) -> anyhow::Result<()> {
    let mut backends = Vec::new();
    for name in ["demo-1", "demo-2", "demo-3"] {
        backends.push(demo::spawn_backend(name).await?);
    }
    let config = demo::config(listen, &backends).map_err(|e| anyhow::anyhow!("{e}"))?;
    let listeners = server::bind(&config.listen).await?;
    eprintln!("tether demo: proxy on http://{listen}, backends demo-1..3 on {backends:?}");
    eprintln!(
        "try:  curl -c jar -b jar http://{listen}/   (repeat: same backend, visit count rises)"
    );
    eprintln!(
        "      curl http://{listen}/                 (no cookie jar: a new session each time)"
    );
    let app = App::new(config, None).map_err(diagnostics)?;
    server::serve(
        app,
        server::Listeners::default(),
        listeners,
        server::shutdown_signal(),
    )
    .await;
    Ok(())
}
