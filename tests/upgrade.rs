//! `tether run --upgrade` with the real binary: under keep-alive and new-connection load with
//! sticky sessions, upgrades in a row fail no request, refuse no connection and move no
//! session; admin drains and learned sessions survive; a broken config leaves the old
//! instance serving; a WebSocket lives on until the old process's deadline.
// Test code: a panic on a setup failure is how a test fails (see [lints] in Cargo.toml).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{three, Backend};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;

struct Setup {
    http: SocketAddr,
    admin: SocketAddr,
    cfg: PathBuf,
}

fn setup(pool_extra: &str, backends: &[&Backend]) -> Setup {
    let (http, admin) = (common::free_addr(), common::free_addr());
    let mut text = format!(
        "[listen]\nhttp = [\"{http}\"]\nhandover = \"handover.sock\"\n[admin]\nlisten = \"{admin}\"\n"
    );
    text.push_str(&common::pool_config(
        "shutdown_timeout = \"4s\"",
        pool_extra,
        backends,
    ));
    let cfg = common::config_file(&text);
    Setup { http, admin, cfg }
}

fn tether(cfg: &Path, upgrade: bool) -> Child {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tether"));
    c.args(["run", "-c", cfg.to_str().unwrap()]);
    if upgrade {
        c.arg("--upgrade");
    }
    c.env("RUST_LOG", "warn")
        .env_remove("NOTIFY_SOCKET")
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// Starts `tether run --upgrade` and waits until `old` has handed over and exited 0.
async fn upgrade(s: &Setup, old: Child) -> Child {
    let new = tether(&s.cfg, true);
    let status = tokio::time::timeout(Duration::from_secs(30), wait(old))
        .await
        .expect("the old instance did not exit after the upgrade");
    assert_eq!(status, Some(0), "the old instance's exit code");
    new
}

async fn wait(mut c: Child) -> Option<i32> {
    c.wait().await.unwrap().code()
}

/// One GET on a fresh connection (`Connection: close`): Err("refused") when the connect
/// fails, else the status and the backend that answered.
async fn fresh_get(addr: SocketAddr, headers: &str) -> Result<(u16, String), &'static str> {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|_| "refused")?;
    let req = format!("GET / HTTP/1.1\r\nHost: test.local\r\nConnection: close\r\n{headers}\r\n");
    s.write_all(req.as_bytes()).await.map_err(|_| "write")?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .map_err(|_| "timeout")?
        .map_err(|_| "read")?;
    parse(&out).ok_or("no response")
}

fn parse(raw: &[u8]) -> Option<(u16, String)> {
    let text = String::from_utf8_lossy(raw);
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let backend = text
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("x-backend")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    Some((status, backend))
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    refused: AtomicU64,
    moved: AtomicU64,
    /// Keep-alive requests sent again on a new connection after an idle close.
    retried: AtomicU64,
}

async fn status_of(admin: SocketAddr, backend: &str) -> String {
    let body = common::get(admin, "/status", &[]).await.text();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["pools"]["app"]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["id"] == backend)
        .map(|b| b["state"].as_str().unwrap_or_default().to_string())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_upgrades_under_load_fail_nothing_and_keep_drains_and_sessions() {
    let (a, b, c) = three().await;
    let s = setup("", &[&a, &b, &c]);
    let mut proc = tether(&s.cfg, false);
    common::wait_listening(s.http).await;
    common::wait_listening(s.admin).await;

    // Sticky sessions: 24 cookie clients, each with its home backend.
    let mut sessions = Vec::new();
    for i in 0..24 {
        let mut cl = common::Client::new(format!("10.9.0.{}", i + 1));
        let home = cl.get(s.http, "/").await.backend();
        sessions.push((cl.cookie.clone().unwrap(), home));
    }
    assert_eq!(
        common::counts(sessions.iter().map(|s| s.1.clone())).len(),
        3
    );
    // An admin drain before the upgrades: b3 takes no new sessions, its own still reach it.
    let drained = common::post(s.admin, "/pools/app/backends/b3/drain", &[]).await;
    assert_eq!(drained.status, 200, "{}", drained.text());
    assert_eq!(status_of(s.admin, "b3").await, "draining");

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let mut load = Vec::new();
    // New-connection load: every request on a fresh connection.
    for (i, (cookie, home)) in sessions.iter().cloned().enumerate().take(12) {
        let (stop, tally, http) = (stop.clone(), tally.clone(), s.http);
        load.push(tokio::spawn(async move {
            let headers = format!(
                "Cookie: TETHER={cookie}\r\nX-Forwarded-For: 10.9.0.{}\r\n",
                i + 1
            );
            while !stop.load(Ordering::Relaxed) {
                match fresh_get(http, &headers).await {
                    Ok((200, got)) if got == home => tally.ok.fetch_add(1, Ordering::Relaxed),
                    Ok((200, _)) => tally.moved.fetch_add(1, Ordering::Relaxed),
                    Ok(other) => {
                        eprintln!("new connection: answered {other:?}");
                        tally.failed.fetch_add(1, Ordering::Relaxed)
                    }
                    Err("refused") => tally.refused.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        eprintln!("new connection: {e}");
                        tally.failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    // Keep-alive load. A connection the old instance closes while idle is reopened and the
    // request sent again once, as HTTP clients do with idempotent requests on a reused
    // connection; the request counts as failed only if that fails too.
    for (i, (cookie, home)) in sessions.iter().cloned().enumerate().skip(12) {
        let (stop, tally, http) = (stop.clone(), tally.clone(), s.http);
        load.push(tokio::spawn(async move {
            let cookie = format!("TETHER={cookie}");
            let ip = format!("10.9.0.{}", i + 1);
            let headers = [
                ("cookie", cookie.as_str()),
                ("x-forwarded-for", ip.as_str()),
            ];
            let mut conn = common::KeepAlive::connect(http).await;
            while !stop.load(Ordering::Relaxed) {
                let mut answer = conn.get("/", &headers).await;
                if answer.is_none() {
                    match tokio::net::TcpStream::connect(http).await {
                        Ok(_) => {}
                        Err(_) => {
                            tally.refused.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                    }
                    tally.retried.fetch_add(1, Ordering::Relaxed);
                    conn = common::KeepAlive::connect(http).await;
                    answer = conn.get("/", &headers).await;
                }
                match answer {
                    Some(a) if a.status == 200 && a.backend() == home => {
                        tally.ok.fetch_add(1, Ordering::Relaxed)
                    }
                    Some(a) if a.status == 200 => tally.moved.fetch_add(1, Ordering::Relaxed),
                    other => {
                        eprintln!("keep-alive: {:?}", other.map(|a| a.status));
                        tally.failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }

    tokio::time::sleep(Duration::from_millis(500)).await;
    for n in 1..=3 {
        let before = tally.ok.load(Ordering::Relaxed);
        proc = upgrade(&s, proc).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            tally.ok.load(Ordering::Relaxed) > before,
            "no request served after upgrade {n}"
        );
    }
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    let (ok, failed, refused, moved) = (
        tally.ok.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed),
        tally.refused.load(Ordering::Relaxed),
        tally.moved.load(Ordering::Relaxed),
    );
    let retried = tally.retried.load(Ordering::Relaxed);
    eprintln!("requests: {ok} ok, {failed} failed, {refused} refused, {moved} moved; {retried} keep-alive requests resent after an idle close");
    assert!(ok > 500, "too little load to show anything: {ok}");
    assert_eq!((failed, refused, moved), (0, 0, 0));

    // The drain set before the upgrades is still in force: new sessions avoid `b3`.
    assert_eq!(status_of(s.admin, "b3").await, "draining");
    let fresh = common::new_sessions(s.http, "10.8.0", 60).await;
    assert!(fresh.iter().all(|a| a.backend() != "b3"));
    // The config generation went on rising: 1, then one per upgrade.
    let st: serde_json::Value =
        serde_json::from_str(&common::get(s.admin, "/status", &[]).await.text()).unwrap();
    assert_eq!(st["config"]["generation"], 4, "{st}");

    proc.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learned_session_reaches_its_node_after_an_upgrade() {
    let (a, b, c) = three().await;
    let s = setup(
        "affinity = \"learn\"\n[pools.app.learn]\ncookie = \"session\"\nttl = \"10m\"\ncapacity = 1000",
        &[&a, &b, &c],
    );
    let proc = tether(&s.cfg, false);
    common::wait_listening(s.http).await;
    let mut homes = Vec::new();
    for i in 0..20 {
        let ip = format!("10.7.0.{}", i + 1);
        let login = common::get(
            s.http,
            &format!("/set-session?v=up{i}"),
            &[("x-forwarded-for", &ip)],
        )
        .await;
        homes.push(login.backend());
    }
    assert!(common::counts(homes.clone()).len() > 1);
    let proc = upgrade(&s, proc).await;
    for (i, home) in homes.iter().enumerate() {
        // From another client IP: only the learned session can send it home.
        let ans = common::get(
            s.http,
            "/",
            &[
                ("cookie", &format!("session=up{i}")),
                ("x-forwarded-for", "192.0.2.77"),
            ],
        )
        .await;
        assert_eq!(&ans.backend(), home, "session up{i}");
    }
    drop(proc);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_with_a_broken_config_exits_1_and_the_old_instance_serves_on() {
    let (a, b, c) = three().await;
    let s = setup("", &[&a, &b, &c]);
    let mut proc = tether(&s.cfg, false);
    common::wait_listening(s.http).await;
    let good = std::fs::read_to_string(&s.cfg).unwrap();

    // A config that does not parse: the new process stops before touching the old one.
    let broken = s.cfg.with_file_name("broken.toml");
    std::fs::write(
        &broken,
        good.replace("[pools.app]", "[pools.app]\nweight = \"x\""),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["run", "-c", broken.to_str().unwrap(), "--upgrade"])
        .env("RUST_LOG", "warn")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));

    // No instance at the handover path (another config file, so another default path).
    let lonely = s.cfg.with_file_name("lonely.toml");
    std::fs::write(
        &lonely,
        good.replace("handover = \"handover.sock\"", "handover = \"nobody.sock\""),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["run", "-c", lonely.to_str().unwrap(), "--upgrade"])
        .env("RUST_LOG", "warn")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no running tether"), "{err}");

    // A valid config whose new listener cannot be bound: taken sockets go back untouched.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    std::fs::write(
        &s.cfg,
        good.replace(
            &format!("http = [\"{}\"]", s.http),
            &format!(
                "http = [\"{}\", \"{}\"]",
                s.http,
                taken.local_addr().unwrap()
            ),
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["run", "-c", s.cfg.to_str().unwrap(), "--upgrade"])
        .env("RUST_LOG", "warn")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    std::fs::write(&s.cfg, &good).unwrap();

    // The old instance never noticed: it serves, and a later upgrade still works.
    assert!(
        proc.try_wait().unwrap().is_none(),
        "the old instance exited"
    );
    for _ in 0..20 {
        assert_eq!(common::get(s.http, "/", &[]).await.status, 200);
    }
    let proc = upgrade(&s, proc).await;
    assert_eq!(common::get(s.http, "/", &[]).await.status, 200);
    drop(proc);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_open_across_an_upgrade_works_until_the_old_deadline() {
    let (a, b, c) = three().await;
    let s = setup("", &[&a, &b, &c]);
    let proc = tether(&s.cfg, false);
    common::wait_listening(s.http).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", s.http))
        .await
        .unwrap();
    ws.send(Message::text("before")).await.unwrap();
    let reply = ws.next().await.unwrap().unwrap();
    assert!(reply.to_text().unwrap().ends_with(":before"), "{reply:?}");

    let old_pid = proc.id().unwrap();
    let new = tether(&s.cfg, true);
    let started = tokio::time::Instant::now();
    // The new instance serves while the old one still carries the WebSocket.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(common::get(s.http, "/", &[]).await.status, 200);
    ws.send(Message::text("during")).await.unwrap();
    let reply = ws.next().await.unwrap().unwrap();
    assert!(reply.to_text().unwrap().ends_with(":during"), "{reply:?}");
    // At the old instance's deadline (shutdown_timeout = 4s) the WebSocket is closed
    // cleanly and the old process exits 0.
    let status = tokio::time::timeout(Duration::from_secs(15), wait(proc))
        .await
        .unwrap();
    assert_eq!(status, Some(0), "old pid {old_pid}");
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let end = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap();
    assert!(
        matches!(end, None | Some(Ok(Message::Close(_))) | Some(Err(_))),
        "{end:?}"
    );
    assert_eq!(common::get(s.http, "/", &[]).await.status, 200);
    drop(new);
}

/// `tether check` prints the handover socket: `[listen] handover` relative to the file, or
/// the default name (a hash of the file's canonical path) in `$RUNTIME_DIRECTORY`.
#[test]
fn check_prints_the_handover_socket() {
    use sha2::Digest;
    let check = |cfg: &Path, runtime_dir: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tether"))
            .args(["check", "-c", cfg.to_str().unwrap()])
            .env("RUNTIME_DIRECTORY", runtime_dir)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("handover socket: ").map(str::to_string))
            .unwrap()
    };
    let set = common::config_file(
        "[listen]\nhttp = [\"127.0.0.1:1\"]\nhandover = \"h.sock\"\n[pools.p]\n[[pools.p.backends]]\nid = \"a\"\naddress = \"127.0.0.1:2\"\n",
    );
    assert_eq!(
        check(&set, "/run/elsewhere"),
        set.with_file_name("h.sock").display().to_string()
    );
    let default = common::config_file(
        "[listen]\nhttp = [\"127.0.0.1:1\"]\n[pools.p]\n[[pools.p.backends]]\nid = \"a\"\naddress = \"127.0.0.1:2\"\n",
    );
    let canonical = std::fs::canonicalize(&default).unwrap();
    let digest = sha2::Sha256::digest(canonical.as_os_str().as_encoded_bytes());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hex.len(), 16);
    assert_eq!(
        check(&default, "/run/tether-test"),
        format!("/run/tether-test/handover-{hex}.sock")
    );
}

/// The handover socket is owner-only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handover_socket_is_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let (a, b, c) = three().await;
    let s = setup("", &[&a, &b, &c]);
    let proc = tether(&s.cfg, false);
    common::wait_listening(s.http).await;
    let sock = s.cfg.with_file_name("handover.sock");
    for _ in 0..100 {
        if sock.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    drop(proc);
}

/// Remembered header keys pass to the new process: the upgrade's config adds a fourth
/// backend, and no remembered key moves to it (a fresh table would move about a quarter).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remembered_keys_survive_an_upgrade_that_adds_a_backend() {
    let (a, b, c) = three().await;
    let d = Backend::start("b4").await;
    let pool = "affinity = \"header\"\nheader = \"X-User\"\n[pools.app.remember]\nttl = \"10m\"\ncapacity = 10000";
    let s = setup(pool, &[&a, &b, &c]);
    let proc = tether(&s.cfg, false);
    common::wait_listening(s.http).await;
    let mut homes = Vec::new();
    for u in 0..80 {
        let user = format!("user-{u}");
        homes.push(
            common::get(s.http, "/", &[("x-user", &user)])
                .await
                .backend(),
        );
    }
    let text = std::fs::read_to_string(&s.cfg).unwrap();
    std::fs::write(
        &s.cfg,
        format!(
            "{text}\n[[pools.app.backends]]\nid = \"b4\"\naddress = \"{}\"\n",
            d.addr
        ),
    )
    .unwrap();
    let proc = upgrade(&s, proc).await;
    let mut moved = 0;
    for (u, home) in homes.iter().enumerate() {
        let user = format!("user-{u}");
        if &common::get(s.http, "/", &[("x-user", &user)])
            .await
            .backend()
            != home
        {
            moved += 1;
        }
    }
    assert_eq!(moved, 0, "remembered keys moved after the upgrade");
    // The new backend is in service: new keys reach it.
    let mut fresh = Vec::new();
    for u in 0..80 {
        let user = format!("new-{u}");
        fresh.push(
            common::get(s.http, "/", &[("x-user", &user)])
                .await
                .backend(),
        );
    }
    assert!(fresh.iter().any(|b| b == "b4"), "{fresh:?}");
    drop(proc);
}
