//! Health, drain and failover end to end, with the admin API and metrics: what happens to
//! sessions when backends crash, drain, flap or are disabled.
// Test code: a panic on a setup failure is how a test fails (see [lints] in Cargo.toml).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;

const TOKEN: &str = "s3cret-admin-token";

/// Cookie pool over three backends with fast health checks and the admin API.
fn health_config(backends: &[&Backend], pool_extra: &str) -> String {
    let base = pool_config(
        "retries = 2\nconnect_timeout = \"200ms\"",
        &format!("{pool_extra}\n[pools.app.health]\npath = \"/health\"\ninterval = \"50ms\"\ntimeout = \"200ms\"\nrise = 2\nfall = 2\n[pools.app.passive]\nmax_fails = 1\nfail_timeout = \"2s\""),
        backends,
    );
    format!("[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n{base}")
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..200 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

fn state_of(proxy: &Proxy, id: &str) -> &'static str {
    let snap = proxy.app.snapshot();
    snap.pools[0]
        .backends
        .iter()
        .find(|b| &*b.id == id)
        .unwrap()
        .shared
        .state()
        .as_str()
}

async fn all_up(proxy: &Proxy) {
    wait_until("all backends up", || {
        proxy.app.snapshot().pools[0]
            .backends
            .iter()
            .all(|b| b.shared.state().as_str() == "up")
    })
    .await;
}

/// `n` clients, each with its own IP and cookie, after one request each.
async fn clients(addr: SocketAddr, n: usize) -> Vec<(Client, String)> {
    let mut out = Vec::new();
    for i in 0..n {
        let mut c = Client::new(format!("10.20.{}.{}", i / 200, i % 200 + 1));
        let home = c.get(addr, "/").await.backend();
        out.push((c, home));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_killed_under_load_fails_no_get_and_moves_only_its_sessions() {
    let (a, mut b, c) = three().await;
    let (proxy, _) = Proxy::start_with_admin(&health_config(&[&a, &b, &c], "")).await;
    all_up(&proxy).await;
    let sessions = clients(proxy.addr, 100).await;
    let on_b = sessions.iter().filter(|(_, h)| h == "b2").count();
    assert!(on_b > 10, "enough sessions on b2 to see it ({on_b})");

    // 100 concurrent sessions keep requesting while b2 dies.
    let addr = proxy.addr;
    let mut tasks = Vec::new();
    for (mut client, home) in sessions {
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..30 {
                let ans = client.get(addr, "/").await;
                assert_eq!(ans.status, 200, "a GET failed for a client of {home}");
                seen.push(ans.backend());
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (home, seen)
        }));
    }
    tokio::time::sleep(Duration::from_millis(40)).await;
    b.kill();
    let mut moved_from_b = 0;
    for t in tasks {
        let (home, seen) = t.await.unwrap();
        if home == "b2" {
            // Its session moved once, then stuck to the new backend.
            let after: Vec<&String> = seen.iter().skip_while(|s| *s == "b2").collect();
            assert!(!after.is_empty(), "a b2 session never moved");
            assert!(
                after.iter().all(|s| **s == *after[0]),
                "moved session bounced: {seen:?}"
            );
            assert_ne!(after[0], "b2");
            moved_from_b += 1;
        } else {
            assert!(
                seen.iter().all(|s| *s == home),
                "a session of {home} moved: {seen:?}"
            );
        }
    }
    assert_eq!(moved_from_b, on_b);
    wait_until("b2 marked down", || state_of(&proxy, "b2") == "down").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drained_backend_keeps_its_sessions_takes_no_new_ones_then_releases_them() {
    let (a, b, c) = three().await;
    let (proxy, admin) =
        Proxy::start_with_admin(&health_config(&[&a, &b, &c], "drain_timeout = \"1s\"")).await;
    all_up(&proxy).await;
    let mut sessions = clients(proxy.addr, 60).await;
    let ans = post(
        admin,
        "/pools/app/backends/b1/drain",
        &[("authorization", &format!("Bearer {TOKEN}"))],
    )
    .await;
    assert_eq!(ans.status, 200, "{}", ans.text());
    assert_eq!(state_of(&proxy, "b1"), "draining");

    for (client, home) in sessions.iter_mut() {
        let ans = client.get(proxy.addr, "/").await;
        assert_eq!(
            &ans.backend(),
            home,
            "pinned sessions continue, including b1's"
        );
    }
    for ans in new_sessions(proxy.addr, "10.30.0", 100).await {
        assert_ne!(
            ans.backend(),
            "b1",
            "a new session landed on the draining backend"
        );
    }
    // /status tells the operator that pinned requests still arrive.
    let status: serde_json::Value =
        serde_json::from_slice(&get(admin, "/status", &[]).await.body).unwrap();
    let b1 = status["pools"]["app"]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["id"] == "b1")
        .unwrap()
        .clone();
    let on_b1 = sessions.iter().filter(|(_, h)| h == "b1").count() as u64;
    assert_eq!(b1["state"], "draining");
    assert_eq!(b1["pinned_while_draining"], on_b1);
    assert!(b1["last_pinned_at"].as_str().unwrap().ends_with('Z'));

    tokio::time::sleep(Duration::from_millis(1100)).await;
    for (client, home) in sessions.iter_mut() {
        let ans = client.get(proxy.addr, "/").await;
        if home == "b1" {
            assert_ne!(ans.backend(), "b1", "after drain_timeout the session moves");
            assert!(ans.tether_cookie().is_some());
        } else {
            assert_eq!(&ans.backend(), home);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flapping_backend_never_reaches_rise() {
    let (a, b, c) = three().await;
    b.health_mode.store(2, Ordering::Relaxed); // alternates 200 / 500
    let (proxy, _) = Proxy::start_with_admin(&health_config(&[&a, &b, &c], "")).await;
    wait_until("a and c up", || {
        state_of(&proxy, "b1") == "up" && state_of(&proxy, "b3") == "up"
    })
    .await;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(25)).await;
        assert_eq!(state_of(&proxy, "b2"), "down", "a flapping backend came up");
    }
    for ans in new_sessions(proxy.addr, "10.40.0", 60).await {
        assert_ne!(ans.backend(), "b2");
    }
    // Steady answers bring it up after `rise` checks.
    b.health_mode.store(0, Ordering::Relaxed);
    wait_until("b2 up once steady", || state_of(&proxy, "b2") == "up").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_backend_gets_no_traffic_at_all() {
    let (a, b, c) = three().await;
    let (proxy, admin) = Proxy::start_with_admin(&health_config(&[&a, &b, &c], "")).await;
    all_up(&proxy).await;
    let mut sessions = clients(proxy.addr, 40).await;
    let auth = format!("Bearer {TOKEN}");
    assert_eq!(
        post(
            admin,
            "/pools/app/backends/b3/disable",
            &[("authorization", &auth)]
        )
        .await
        .status,
        200
    );
    let before = c.hits();
    for (client, home) in sessions.iter_mut() {
        let ans = client.get(proxy.addr, "/").await;
        assert_eq!(ans.status, 200);
        if home == "b3" {
            assert!(
                ans.tether_cookie().is_some(),
                "moved sessions get a new cookie"
            );
        } else {
            assert_eq!(&ans.backend(), home);
        }
    }
    assert_eq!(c.hits(), before, "a disabled backend receives nothing");
    assert_eq!(state_of(&proxy, "b3"), "disabled");
    // Health checks still run and say it is healthy; only the admin state keeps it out.
    let status: serde_json::Value =
        serde_json::from_slice(&get(admin, "/status", &[]).await.body).unwrap();
    let b3 = status["pools"]["app"]["backends"][2].clone();
    assert_eq!(
        (
            b3["id"].as_str(),
            b3["state"].as_str(),
            b3["healthy"].as_bool()
        ),
        (Some("b3"), Some("disabled"), Some(true))
    );
    assert_eq!(
        post(
            admin,
            "/pools/app/backends/b3/enable",
            &[("authorization", &auth)]
        )
        .await
        .status,
        200
    );
    assert_eq!(state_of(&proxy, "b3"), "up");
}

#[tokio::test]
async fn admin_api_checks_the_token_and_names() {
    let (a, b, c) = three().await;
    let (proxy, admin) = Proxy::start_with_admin(&health_config(&[&a, &b, &c], "")).await;
    assert_eq!(
        post(admin, "/pools/app/backends/b1/drain", &[])
            .await
            .status,
        401
    );
    assert_eq!(
        post(
            admin,
            "/pools/app/backends/b1/drain",
            &[("authorization", "Bearer wrong-token-xx")]
        )
        .await
        .status,
        401
    );
    let auth = format!("Bearer {TOKEN}");
    assert_eq!(
        post(
            admin,
            "/pools/nope/backends/b1/drain",
            &[("authorization", &auth)]
        )
        .await
        .status,
        404
    );
    assert_eq!(
        post(
            admin,
            "/pools/app/backends/nope/drain",
            &[("authorization", &auth)]
        )
        .await
        .status,
        404
    );
    assert_eq!(
        post(
            admin,
            "/pools/app/backends/b1/explode",
            &[("authorization", &auth)]
        )
        .await
        .status,
        404
    );
    assert_ne!(
        state_of(&proxy, "b1"),
        "draining",
        "nothing changed on refused calls"
    );
    let ok = post(
        admin,
        "/pools/app/backends/b1/drain",
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(ok.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&ok.body).unwrap();
    assert_eq!(v["backend"], "b1");
    assert_eq!(get(admin, "/healthz", &[]).await.text(), "ok\n");
    assert_eq!(get(admin, "/status", &[]).await.status, 200);
    assert_eq!(post(admin, "/status", &[]).await.status, 405);
    let status: serde_json::Value =
        serde_json::from_slice(&get(admin, "/status", &[]).await.body).unwrap();
    assert_eq!(status["config"]["generation"], 1);
    assert!(status["config"]["last_reload_error"].is_null());
    assert_eq!(status["pools"]["app"]["affinity"], "cookie");
}

/// Parses Prometheus text into (name{labels} → value), checking every line's shape.
fn parse_metrics(text: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
            assert!(
                line.is_empty()
                    || line.starts_with("# HELP ")
                    || line.starts_with("# TYPE ")
                    || line == "# EOF",
                "bad line {line:?}"
            );
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        assert!(series.starts_with("tether_"), "{line}");
        out.insert(series.to_string(), v);
    }
    out
}

fn sum(m: &HashMap<String, f64>, prefix: &str) -> f64 {
    m.iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .map(|(_, v)| v)
        .sum()
}

#[tokio::test]
async fn metrics_parse_and_add_up_to_the_requests_sent() {
    let (a, b, c) = three().await;
    let (proxy, admin) = Proxy::start_with_admin(&health_config(&[&a, &b, &c], "")).await;
    all_up(&proxy).await;
    let mut sent = 0;
    for i in 0..30 {
        let mut cl = Client::new(format!("10.50.0.{}", i + 1));
        for _ in 0..3 {
            cl.get(proxy.addr, "/").await;
            sent += 1;
        }
        cl.get(proxy.addr, "/status?code=404").await;
        sent += 1;
    }
    // Health checks are not client requests and must not count.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let text = get(admin, "/metrics", &[]).await.text();
    let m = parse_metrics(&text);
    assert_eq!(sum(&m, "tether_requests_total{"), sent as f64, "{text}");
    assert_eq!(sum(&m, "tether_affinity_total{"), sent as f64);
    assert_eq!(
        m["tether_affinity_total{pool=\"app\",outcome=\"new\"}"],
        30.0
    );
    assert_eq!(
        m["tether_affinity_total{pool=\"app\",outcome=\"hit\"}"],
        (sent - 30) as f64
    );
    assert_eq!(
        sum(&m, "tether_request_duration_seconds_count{"),
        sent as f64
    );
    let per_code_404: f64 = m
        .iter()
        .filter(|(k, _)| k.starts_with("tether_requests_total{") && k.contains("code=\"404\""))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(per_code_404, 30.0);
    for id in ["b1", "b2", "b3"] {
        assert_eq!(
            m[&format!("tether_backend_up{{pool=\"app\",backend=\"{id}\"}}")],
            1.0
        );
        assert_eq!(
            m[&format!("tether_backend_state{{pool=\"app\",backend=\"{id}\",state=\"up\"}}")],
            1.0
        );
        assert_eq!(
            m[&format!("tether_backend_state{{pool=\"app\",backend=\"{id}\",state=\"down\"}}")],
            0.0
        );
    }
    assert!(text.contains("# TYPE tether_request_duration_seconds histogram"));
    assert!(m.contains_key("tether_config_reloads_total{result=\"error\"}"));
    assert!(m
        .keys()
        .any(|k| k.starts_with("tether_connections_active{listener=")));
    assert_eq!(m["tether_retries_total{pool=\"app\"}"], 0.0);
}

#[tokio::test]
async fn connect_failures_mark_a_backend_down_passively_and_are_counted() {
    let (a, mut b, c) = three().await;
    // No active checks: only passive ones.
    let cfg = pool_config(
        "retries = 2",
        "[pools.app.passive]\nmax_fails = 1\nfail_timeout = \"5s\"",
        &[&a, &b, &c],
    );
    let (proxy, admin) = Proxy::start_with_admin(&cfg).await;
    b.kill();
    let mut failed = 0;
    for ans in new_sessions(proxy.addr, "10.60.0", 60).await {
        failed += usize::from(ans.status != 200);
        assert_ne!(ans.backend(), "b2");
    }
    assert_eq!(failed, 0);
    assert_eq!(state_of(&proxy, "b2"), "down");
    let m = parse_metrics(&get(admin, "/metrics", &[]).await.text());
    assert!(m["tether_upstream_errors_total{pool=\"app\",backend=\"b2\",kind=\"connect\"}"] >= 1.0);
    assert!(m["tether_retries_total{pool=\"app\"}"] >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_backends_are_checked_first_and_removed_ones_stop_being_checked() {
    let (a, b, c) = three().await;
    let d = Backend::start("b4").await;
    d.health_mode.store(1, Ordering::Relaxed); // failing at first
    let three_cfg = health_config(&[&a, &b, &c], "");
    let (proxy, _) = Proxy::start_with_admin(&three_cfg).await;
    all_up(&proxy).await;
    assert_eq!(proxy.app.health.len(), 3);

    let four = tether::config::Config::parse(&health_config(&[&a, &b, &c, &d], ""), "t").unwrap();
    proxy.app.load_and_install(four).unwrap();
    assert_eq!(proxy.app.health.len(), 4);
    assert_eq!(
        state_of(&proxy, "b4"),
        "down",
        "unchecked: no new sessions yet"
    );
    for ans in new_sessions(proxy.addr, "10.70.0", 80).await {
        assert_ne!(ans.backend(), "b4");
    }
    d.health_mode.store(0, Ordering::Relaxed);
    wait_until("b4 up", || state_of(&proxy, "b4") == "up").await;
    let mut landed = 0;
    for ans in new_sessions(proxy.addr, "10.71.0", 80).await {
        landed += usize::from(ans.backend() == "b4");
    }
    assert!(landed > 5, "b4 takes new sessions once up ({landed})");

    // Remove b4: its checks stop.
    proxy
        .app
        .load_and_install(tether::config::Config::parse(&three_cfg, "t").unwrap())
        .unwrap();
    assert_eq!(proxy.app.health.len(), 3);
    // In alternating mode every probe flips the mode's low bit: a bit that stays put means
    // nothing probes the removed backend any more.
    d.health_mode.store(2, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        d.health_mode.load(Ordering::Relaxed),
        2,
        "the removed backend is still probed"
    );
    // Control: a configured backend in the same mode is probed (its bit flips).
    a.health_mode.store(2, Ordering::Relaxed);
    wait_until("b1 probed", || a.health_mode.load(Ordering::Relaxed) != 2).await;
}
