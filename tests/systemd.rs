//! systemd notifications from the real `tether run`, read from a Unix datagram socket named
//! in `NOTIFY_SOCKET` (no systemd needed): READY once the listeners accept, RELOADING (with
//! MONOTONIC_USEC) then READY around every reload, also a rejected one, STOPPING on SIGTERM.
// Test code: a panic on a setup failure is how a test fails (see [lints] in Cargo.toml).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use tokio::net::UnixDatagram;

/// The next notification datagram, if one comes within `within`.
async fn try_next(sock: &UnixDatagram, within: Duration) -> Option<String> {
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(within, sock.recv(&mut buf))
        .await
        .ok()?
        .unwrap();
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// The next notification datagram (panics after `within`).
async fn next(sock: &UnixDatagram, within: Duration) -> String {
    try_next(sock, within)
        .await
        .expect("no notification in time")
}

/// `RELOADING=1` with a plausible `MONOTONIC_USEC=` (microseconds since boot).
fn assert_reloading(msg: &str) {
    let lines: Vec<&str> = msg.lines().collect();
    assert_eq!(lines.first(), Some(&"RELOADING=1"), "{msg:?}");
    let usec: u64 = lines
        .iter()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .unwrap_or_else(|| panic!("no MONOTONIC_USEC in {msg:?}"))
        .parse()
        .unwrap();
    assert!(usec > 0, "{msg:?}");
}

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_after_listeners_accept_reloading_then_ready_on_sighup_stopping_on_sigterm() {
    let backend = common::Backend::start("one").await;
    let (http, admin) = (common::free_addr(), common::free_addr());
    let good = format!(
        "[listen]\nhttp = [\"{http}\"]\n[admin]\nlisten = \"{admin}\"\n[log]\naccess = \"off\"\n[pools.web]\n[[pools.web.backends]]\nid = \"one\"\naddress = \"{}\"\n",
        backend.addr
    );
    let cfg = common::config_file(&good);
    let sock_path = cfg.with_file_name("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["run", "-c", cfg.to_str().unwrap()])
        .env("NOTIFY_SOCKET", &sock_path)
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();

    // READY=1 is the first thing sent, and by then both listeners take connections.
    assert_eq!(next(&sock, Duration::from_secs(20)).await, "READY=1\n");
    tokio::net::TcpStream::connect(http).await.unwrap();
    tokio::net::TcpStream::connect(admin).await.unwrap();
    let answer = common::get(http, "/", &[]).await;
    assert_eq!(answer.status, 200);

    // SIGHUP: RELOADING=1 + MONOTONIC_USEC, then READY=1.
    signal(pid, "-HUP");
    assert_reloading(&next(&sock, Duration::from_secs(10)).await);
    assert_eq!(next(&sock, Duration::from_secs(10)).await, "READY=1\n");

    // A rejected reload still ends in READY=1 (the old config serves on). The watcher sees
    // the edit too, so there may be two reloads: every one is a RELOADING, READY pair.
    std::fs::write(&cfg, "[listen]\nhttp = [\"not an address\"]\n").unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    signal(pid, "-HUP");
    let mut pairs = 0;
    while let Some(first) = try_next(&sock, Duration::from_secs(2)).await {
        assert_reloading(&first);
        assert_eq!(next(&sock, Duration::from_secs(5)).await, "READY=1\n");
        pairs += 1;
        if pairs == 2 {
            break;
        }
    }
    assert!(pairs >= 1, "no notification for the rejected reload");
    assert_eq!(common::get(http, "/", &[]).await.status, 200);

    // SIGTERM: STOPPING=1, then a clean exit.
    signal(pid, "-TERM");
    assert_eq!(next(&sock, Duration::from_secs(10)).await, "STOPPING=1\n");
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    let _ = std::fs::remove_file(&sock_path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_upgrade_the_new_process_sends_mainpid_then_ready_and_the_old_no_stopping() {
    let backend = common::Backend::start("one").await;
    let http = common::free_addr();
    let cfg = common::config_file(&format!(
        "[listen]\nhttp = [\"{http}\"]\nhandover = \"handover.sock\"\n[log]\naccess = \"off\"\n[proxy]\nshutdown_timeout = \"2s\"\n[pools.web]\n[[pools.web.backends]]\nid = \"one\"\naddress = \"{}\"\n",
        backend.addr
    ));
    let sock_path = cfg.with_file_name("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let start = |upgrade: bool| {
        let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_tether"));
        c.args(["run", "-c", cfg.to_str().unwrap()]);
        if upgrade {
            c.arg("--upgrade");
        }
        c.env("NOTIFY_SOCKET", &sock_path)
            .env("RUST_LOG", "warn")
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    let mut old = start(false);
    assert_eq!(next(&sock, Duration::from_secs(20)).await, "READY=1\n");

    let new = start(true);
    let new_pid = new.id().unwrap();
    assert_eq!(
        next(&sock, Duration::from_secs(20)).await,
        format!("MAINPID={new_pid}\n")
    );
    assert_eq!(next(&sock, Duration::from_secs(10)).await, "READY=1\n");
    let status = tokio::time::timeout(Duration::from_secs(15), old.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    // The old process left without a word: systemd must not think the service stops.
    assert_eq!(try_next(&sock, Duration::from_millis(500)).await, None);
    assert_eq!(common::get(http, "/", &[]).await.status, 200);

    signal(new_pid, "-TERM");
    assert_eq!(next(&sock, Duration::from_secs(10)).await, "STOPPING=1\n");
    let _ = std::fs::remove_file(&sock_path);
}

/// SIGUSR2: the running tether starts `tether run --upgrade` from its own binary and
/// arguments; the new process (found through its MAINPID=) serves and the old exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr2_upgrades_in_place_from_the_own_binary() {
    let backend = common::Backend::start("one").await;
    let http = common::free_addr();
    let cfg = common::config_file(&format!(
        "[listen]\nhttp = [\"{http}\"]\nhandover = \"handover.sock\"\n[log]\naccess = \"off\"\n[pools.web]\n[[pools.web.backends]]\nid = \"one\"\naddress = \"{}\"\n",
        backend.addr
    ));
    let sock_path = cfg.with_file_name("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let mut old = tokio::process::Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["run", "-c", cfg.to_str().unwrap()])
        .env("NOTIFY_SOCKET", &sock_path)
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    assert_eq!(next(&sock, Duration::from_secs(20)).await, "READY=1\n");
    signal(old.id().unwrap(), "-USR2");
    let main = next(&sock, Duration::from_secs(20)).await;
    let new_pid: u32 = main
        .trim()
        .strip_prefix("MAINPID=")
        .unwrap_or_else(|| panic!("{main:?}"))
        .parse()
        .unwrap();
    assert_ne!(Some(new_pid), old.id());
    // Not our child: make sure it goes when the test ends, whatever happens.
    struct KillOnDrop(u32);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &self.0.to_string()])
                .status();
        }
    }
    let _new = KillOnDrop(new_pid);
    assert_eq!(next(&sock, Duration::from_secs(10)).await, "READY=1\n");
    let status = tokio::time::timeout(Duration::from_secs(40), old.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    assert_eq!(common::get(http, "/", &[]).await.status, 200);
    signal(new_pid, "-TERM");
    assert_eq!(next(&sock, Duration::from_secs(10)).await, "STOPPING=1\n");
    let _ = std::fs::remove_file(&sock_path);
}
