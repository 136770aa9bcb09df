//! Remembered ip and header keys (`[pools.NAME.remember]`): active keys keep their backend
//! through membership changes; keys of unavailable backends move once and stay.
// Test code: a panic on a setup failure is how a test fails (see [lints] in Cargo.toml).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;

use common::*;
use tether::config::Config;

const REMEMBER: &str = "[pools.app.remember]\nttl = \"10m\"\ncapacity = 10000\n";

fn ip_pool(backends: &[&Backend], remember: bool) -> String {
    let r = if remember { REMEMBER } else { "" };
    pool_config(
        "",
        &format!(
            "affinity = \"ip\"\n[pools.app.passive]\nmax_fails = 1\nfail_timeout = \"30s\"\n{r}"
        ),
        backends,
    )
}

fn install(proxy: &Proxy, cfg: &str) {
    proxy
        .app
        .load_and_install(Config::parse(cfg, "t").unwrap())
        .unwrap();
}

/// The backend each client address reaches (one request each).
async fn homes(proxy: &Proxy, ips: &[String]) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for ip in ips {
        let ans = get(proxy.addr, "/", &[("x-forwarded-for", ip)]).await;
        assert_eq!(ans.status, 200, "{ip}");
        out.insert(ip.clone(), ans.backend());
    }
    out
}

fn ips(net: &str, n: usize) -> Vec<String> {
    (1..=n)
        .map(|i| format!("{net}.{}.{}", i / 250, i % 250 + 1))
        .collect()
}

fn moved(before: &HashMap<String, String>, after: &HashMap<String, String>) -> usize {
    before.iter().filter(|(ip, b)| after[*ip] != **b).count()
}

#[tokio::test]
async fn adding_a_backend_moves_no_active_key_and_new_keys_reach_it() {
    let (a, b, c) = three().await;
    let d = Backend::start("b4").await;
    let active = ips("10.20", 200);
    let proxy = Proxy::start(&ip_pool(&[&a, &b, &c], true)).await;
    let before = homes(&proxy, &active).await;
    assert_eq!(counts(before.values().cloned()).len(), 3);
    install(&proxy, &ip_pool(&[&a, &b, &c, &d], true));
    let after = homes(&proxy, &active).await;
    assert_eq!(moved(&before, &after), 0, "no active client moves");
    // New addresses follow the new mapping, so the new backend gets its share of them.
    let fresh = homes(&proxy, &ips("10.30", 200)).await;
    let on_new = fresh.values().filter(|b| *b == "b4").count();
    assert!(
        on_new > 20,
        "new keys reach the new backend: {on_new} of 200"
    );
    // The same change without `remember` moves about a quarter: what remember prevents.
    let plain = Proxy::start(&ip_pool(&[&a, &b, &c], false)).await;
    let plain_before = homes(&plain, &active).await;
    install(&plain, &ip_pool(&[&a, &b, &c, &d], false));
    let plain_after = homes(&plain, &active).await;
    assert!(
        moved(&plain_before, &plain_after) > 20,
        "without remember the hash mapping moves keys: {}",
        moved(&plain_before, &plain_after)
    );
}

#[tokio::test]
async fn keys_of_a_killed_backend_move_once_and_stay() {
    let (a, mut b, c) = three().await;
    let active = ips("10.21", 120);
    let cfg = ip_pool(&[&a, &b, &c], true);
    let proxy = Proxy::start(&cfg).await;
    let before = homes(&proxy, &active).await;
    let on_b2: Vec<String> = active
        .iter()
        .filter(|ip| before[*ip] == "b2")
        .cloned()
        .collect();
    assert!(on_b2.len() > 10);
    b.kill();
    // Every request still succeeds (connect failure → next candidate).
    let moved_to = homes(&proxy, &active).await;
    for ip in &active {
        if before[ip] == "b2" {
            assert_ne!(moved_to[ip], "b2", "{ip}");
        } else {
            assert_eq!(
                moved_to[ip], before[ip],
                "{ip}: only the dead backend's keys move"
            );
        }
    }
    // They stay where they moved, request after request.
    let again = homes(&proxy, &active).await;
    assert_eq!(moved(&moved_to, &again), 0);
    let table = proxy.app.snapshot().pools[0].remembered.clone().unwrap();
    for ip in &on_b2 {
        assert_eq!(
            table.lookup(ip.as_bytes()).as_deref(),
            Some(moved_to[ip].as_str()),
            "{ip} is remembered at its new backend"
        );
    }
}

#[tokio::test]
async fn disabled_then_enabled_backend_does_not_take_its_moved_keys_back() {
    let (a, b, c) = three().await;
    let active = ips("10.22", 120);
    let cfg = ip_pool(&[&a, &b, &c], true);
    let proxy = Proxy::start(&cfg).await;
    let before = homes(&proxy, &active).await;
    let disabled = cfg.replacen(
        &format!("id = \"b2\"\naddress = \"{}\"\n", b.addr),
        &format!(
            "id = \"b2\"\naddress = \"{}\"\nstate = \"disabled\"\n",
            b.addr
        ),
        1,
    );
    assert_ne!(disabled, cfg);
    install(&proxy, &disabled);
    let during = homes(&proxy, &active).await;
    for ip in &active {
        if before[ip] == "b2" {
            assert_ne!(during[ip], "b2");
        } else {
            assert_eq!(during[ip], before[ip]);
        }
    }
    // b2 is back: the keys that moved stay on their new backends (they are active there).
    install(&proxy, &cfg);
    let after = homes(&proxy, &active).await;
    assert_eq!(
        moved(&during, &after),
        0,
        "moved keys stay where they were re-placed"
    );
    // Removing a backend re-places its keys too, and they are remembered there.
    install(&proxy, &ip_pool(&[&a, &b], true));
    let removed = homes(&proxy, &active).await;
    for ip in &active {
        if after[ip] == "b3" {
            assert_ne!(removed[ip], "b3");
        } else {
            assert_eq!(removed[ip], after[ip], "{ip}");
        }
    }
    install(&proxy, &cfg);
    assert_eq!(moved(&removed, &homes(&proxy, &active).await), 0);
}

#[tokio::test]
async fn a_draining_backend_keeps_its_remembered_keys() {
    let (a, b, c) = three().await;
    let active = ips("10.23", 90);
    let proxy = Proxy::start(&ip_pool(&[&a, &b, &c], true)).await;
    let before = homes(&proxy, &active).await;
    let snap = proxy.app.snapshot();
    let i = snap.pools[0].by_id("b1").unwrap();
    snap.pools[0].backends[i]
        .shared
        .set_admin(Some(tether::config::AdminState::Drain));
    let after = homes(&proxy, &active).await;
    assert_eq!(moved(&before, &after), 0);
    assert!(
        snap.pools[0].backends[i]
            .shared
            .pinned_while_draining
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );
}

#[tokio::test]
async fn header_keys_are_remembered_across_reloads() {
    let (a, b, c) = three().await;
    let d = Backend::start("b4").await;
    let pool = |bs: &[&Backend], note: &str| {
        pool_config(
            "",
            &format!("affinity = \"header\"\nheader = \"X-User\"\n[pools.app.remember]\nttl = \"10m\"\ncapacity = 10000 {note}\n"),
            bs,
        )
    };
    let proxy = Proxy::start(&pool(&[&a, &b, &c], "")).await;
    let mut before = HashMap::new();
    for u in 0..150 {
        let user = format!("user-{u}");
        let ans = get(proxy.addr, "/", &[("x-user", &user)]).await;
        before.insert(user, ans.backend());
    }
    let table = proxy.app.snapshot().pools[0].remembered.clone().unwrap();
    assert_eq!(table.len(), 150);
    // An unrelated edit keeps the table; adding a backend in the same reload moves nobody.
    install(&proxy, &pool(&[&a, &b, &c, &d], "# edited"));
    let kept = proxy.app.snapshot().pools[0].remembered.clone().unwrap();
    assert!(
        std::sync::Arc::ptr_eq(&table, &kept),
        "the table survives the reload"
    );
    for (user, home) in &before {
        // From another client address: the header, not the IP, is the key.
        let ans = get(
            proxy.addr,
            "/",
            &[("x-user", user), ("x-forwarded-for", "192.0.2.77")],
        )
        .await;
        assert_eq!(&ans.backend(), home, "{user}");
    }
}

#[tokio::test]
async fn an_unreachable_store_never_fails_a_request_and_shows_in_status_and_metrics() {
    let (a, b, c) = three().await;
    let cfg = pool_config(
        "",
        "affinity = \"ip\"\n[pools.app.remember]\nttl = \"10m\"\nstore = \"redis-cluster://:sekret@127.0.0.1:9,127.0.0.1:10\"\n",
        &[&a, &b, &c],
    );
    let (proxy, admin) = Proxy::start_with_admin(&cfg).await;
    let start = std::time::Instant::now();
    let first = homes(&proxy, &ips("10.24", 40)).await;
    let second = homes(&proxy, &ips("10.24", 40)).await;
    assert_eq!(moved(&first, &second), 0, "the local table answers");
    assert!(
        start.elapsed() < std::time::Duration::from_secs(8),
        "80 requests with a dead store took {:?}",
        start.elapsed()
    );
    // Give the connector time to record its failure.
    let mut status = serde_json::Value::Null;
    for _ in 0..50 {
        status = serde_json::from_slice(&get(admin, "/status", &[]).await.body).unwrap();
        if !status["pools"]["app"]["remember"]["store"]["last_error"].is_null() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let store = &status["pools"]["app"]["remember"]["store"];
    assert_eq!(store["kind"], "redis-cluster");
    assert_ne!(store["state"], "connected");
    assert!(store["last_error"].is_string(), "{status}");
    assert_eq!(
        store["url"],
        "redis-cluster://:***@127.0.0.1:9,127.0.0.1:10"
    );
    assert!(
        !status.to_string().contains("sekret"),
        "no password in /status"
    );
    assert_eq!(status["pools"]["app"]["remember"]["entries"], 40);
    let metrics = get(admin, "/metrics", &[]).await.text();
    assert!(
        metrics.contains(
            "tether_store_operations_total{pool=\"app\",op=\"read\",result=\"timeout\"} 40"
        ) || metrics
            .contains("tether_store_operations_total{pool=\"app\",op=\"read\",result=\"error\"}"),
        "{metrics}"
    );
}

#[test]
fn check_rejects_remember_on_other_modes_and_bad_store_urls() {
    let cfg = |affinity: &str, store: &str| {
        format!("[pools.app]\naffinity = \"{affinity}\"\n[pools.app.remember]\nttl = \"5m\"\n{store}\n[[pools.app.backends]]\naddress = \"127.0.0.1:1\"\n")
    };
    for mode in ["cookie", "route", "learn", "none"] {
        let err = Config::parse(&cfg(mode, ""), "t.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("pools.app.remember")
                && err.contains("only used with affinity = \"ip\" or \"header\""),
            "{mode}: {err}"
        );
    }
    assert!(Config::parse(&cfg("ip", ""), "t.toml").is_ok());
    for bad in [
        "store = \"memcached://x:1\"",
        "store = \"redis-cluster://a:1/0\"",
        "store = \"redis-sentinel://a:1\"",
    ] {
        let err = Config::parse(&cfg("ip", bad), "t.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("pools.app.remember.store"), "{bad}: {err}");
    }
    for good in [
        "store = \"redis-sentinel://127.0.0.1:26379,127.0.0.1:26380/mymaster/0\"",
        "store = \"redis-cluster://:pw@127.0.0.1:7000,127.0.0.1:7001\"",
        "store = \"rediss://127.0.0.1:6380/0\"",
    ] {
        assert!(Config::parse(&cfg("ip", good), "t.toml").is_ok(), "{good}");
    }
}
