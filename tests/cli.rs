//! The command line: `check` exit codes and messages, `explain` answers.

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
