//! Replays the fuzzing seed corpus (and any crash inputs kept as regressions) through the
//! same entry points the fuzzers use, so CI catches regressions without cargo-fuzz.
// Test code: a panic on a setup failure is how a test fails (see [lints] in Cargo.toml).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

fn replay(target: &str, f: fn(&[u8])) {
    let mut n = 0;
    for dir in ["fuzz/seeds", "fuzz/regressions"] {
        let d = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir).join(target);
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let path = e.unwrap().path();
            f(&std::fs::read(&path).unwrap());
            n += 1;
        }
    }
    assert!(n >= 2, "{target}: no seeds replayed");
}

#[test]
fn cookie_corpus() {
    replay("cookie", tether::fuzz_targets::cookie);
}

#[test]
fn route_corpus() {
    replay("route", tether::fuzz_targets::route);
}

#[test]
fn config_corpus() {
    replay("config", tether::fuzz_targets::config);
}

#[test]
fn forwarded_for_corpus() {
    replay("forwarded_for", tether::fuzz_targets::forwarded_for);
}

#[test]
fn http1_corpus() {
    replay("http1", tether::fuzz_targets::http1);
}
