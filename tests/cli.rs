//! The command line: `check` exit codes and messages, `explain` answers.
// Test code: a panic on a setup failure is how a test fails (see [lints] in Cargo.toml).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn tether(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn temp_file(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("tether-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn check_prints_a_summary_and_exits_0() {
    let (code, out, _) = tether(&["check", "-c", "config/tether.toml"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("pool shop: affinity cookie, hash maglev, 3 backends"),
        "{out}"
    );
    assert!(
        out.contains("app3 127.0.0.1:8083 weight 1 route app3 drain"),
        "{out}"
    );
}

#[test]
fn check_lists_every_error_and_exits_1() {
    let p = temp_file("bad.toml", "[pools.p]\naffinity = \"sticky\"\nbogus = 1\n[[pools.p.backends]]\naddress = \"nowhere\"\n");
    let (code, _, err) = tether(&["check", "-c", p.to_str().unwrap()]);
    assert_eq!(code, 1);
    let file = p.display().to_string();
    assert!(
        err.contains(&format!("{file}:2:12: pools.p.affinity: expected one of")),
        "{err}"
    );
    assert!(
        err.contains(&format!("{file}:3:1: pools.p.bogus: unknown key")),
        "{err}"
    );
    assert!(
        err.contains(&format!("{file}:5:11: pools.p.backends[0].address:")),
        "{err}"
    );
    assert!(err.contains("3 error(s)"), "{err}");
}

#[test]
fn explain_names_the_backend_the_reason_and_the_fallback_order() {
    let (code, out, err) = tether(&[
        "explain",
        "-c",
        "config/ip-hash.toml",
        "--ip",
        "203.0.113.9",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("pool web (affinity ip, hash ketama, 3 backends)"),
        "{out}"
    );
    assert!(out.contains("→ 127.0.0.1:808"), "{out}");
    assert!(
        out.contains("why: consistent hashing of the key picks this backend"),
        "{out}"
    );
    assert!(
        out.contains("fallback order (key \"203.0.113.9\"):"),
        "{out}"
    );

    let (_, out, _) = tether(&[
        "explain",
        "-c",
        "config/cookie.toml",
        "--cookie",
        "TETHER=forged",
        "--ip",
        "10.0.0.1",
    ]);
    assert!(out.contains("affinity outcome: new"), "{out}");
    assert!(out.contains("the cookie is not valid here"), "{out}");
}

#[test]
fn explain_follows_a_real_cookie() {
    // Ask the cookie codec for a cookie naming app2, as the proxy would issue it.
    let cfg = tether::config::Config::load(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/cookie.toml"
    )))
    .unwrap();
    let codec = tether::affinity::cookie::CookieCodec::new(cfg.pools[0].cookie.as_ref().unwrap());
    let value = codec.encode(42, codec.backend_token("app2"), 0);
    let (code, out, err) = tether(&["explain", "-c", "config/cookie.toml", "--cookie", &value]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("→ app2 (127.0.0.1:8082), affinity outcome: hit"),
        "{out}"
    );
}

#[test]
fn explain_reads_a_tomcat_route() {
    let (code, out, err) = tether(&[
        "explain",
        "-c",
        "examples/tomcat/tether.toml",
        "--jsessionid",
        "8F3AC1.node2",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("→ tc2 (10.0.0.12:8080), affinity outcome: hit"),
        "{out}"
    );
    let (_, out, _) = tether(&[
        "explain",
        "-c",
        "examples/tomcat/tether.toml",
        "--jsessionid",
        "8F3AC1.node7",
    ]);
    assert!(out.contains("affinity outcome: moved"), "{out}");
}

#[test]
fn explain_needs_a_key_and_a_pool_choice() {
    let (code, _, err) = tether(&["explain", "-c", "config/cookie.toml"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("--cookie") || err.contains("required"),
        "{err}"
    );
    let (code, _, err) = tether(&["explain", "-c", "config/tether.toml", "--ip", "10.0.0.1"]);
    assert_eq!(code, 1);
    assert!(err.contains("choose one with --pool"), "{err}");
}

mod common;

/// `tether run` as a real process: serves, writes the access log, obeys `tether ctl`, and
/// exits 0 on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_logs_and_obeys_ctl_then_stops_on_sigterm() {
    let a = common::Backend::start("one").await;
    let b = common::Backend::start("two").await;
    let (http, admin) = (common::free_addr(), common::free_addr());
    let cfg = temp_file(
        "run.toml",
        &format!(
            "[listen]\nhttp = [\"{http}\"]\n[admin]\nlisten = \"{admin}\"\ntoken = \"ctl-token-123\"\n[log]\naccess = \"combined\"\n[pools.web]\n[pools.web.health]\npath = \"/health\"\ninterval = \"100ms\"\n[[pools.web.backends]]\nid = \"one\"\naddress = \"{}\"\n[[pools.web.backends]]\nid = \"two\"\naddress = \"{}\"\n",
            a.addr, b.addr
        ),
    );
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["run", "-c", cfg.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    common::wait_listening(http).await;
    let first = common::get(http, "/hello", &[("user-agent", "cli-test")]).await;
    assert_eq!(first.status, 200);
    let home = first.backend();

    let ctl = |args: Vec<String>| async move {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tether"))
            .arg("ctl")
            .args([
                "--admin",
                &format!("http://{admin}"),
                "--token",
                "ctl-token-123",
            ])
            .args(args)
            .output()
            .await
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = ctl(vec!["disable".into(), home.clone()]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("\"state\":\"disabled\""), "{out}");
    let moved = common::get(
        http,
        "/",
        &[(
            "cookie",
            &format!("TETHER={}", first.tether_cookie().unwrap()),
        )],
    )
    .await;
    assert_ne!(moved.backend(), home);
    let (code, out, _) = ctl(vec!["status".into()]).await;
    assert_eq!(code, Some(0));
    assert!(out.contains("\"state\": \"disabled\""), "{out}");
    assert_eq!(ctl(vec!["healthz".into()]).await.0, Some(0));
    let (code, out, err) = ctl(vec!["reload".into()]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("\"generation\":2"), "{out}");
    let (code, _, err) = ctl(vec!["drain".into(), "nope".into()]).await;
    assert_eq!(code, Some(1));
    assert!(err.contains("no backend \"nope\""), "{err}");

    // SIGTERM: exits 0; the access log lines are on stdout.
    let pid = child.id().unwrap() as i32;
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let out = tokio::time::timeout(std::time::Duration::from_secs(10), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let log = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 2, "{log}");
    assert!(lines[0].starts_with("127.0.0.1 - - ["), "{}", lines[0]);
    assert!(
        lines[0].contains("\"GET /hello HTTP/1.1\" 200 3 \"-\" \"cli-test\""),
        "{}",
        lines[0]
    );
    assert!(
        lines[0].ends_with(&format!("pool=web backend={home} affinity=new")),
        "{}",
        lines[0]
    );
    assert!(lines[1].ends_with("affinity=moved"), "{}", lines[1]);
}
