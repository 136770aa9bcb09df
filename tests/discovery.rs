//! Dynamic pools in-process: backends from DNS (answered by a table standing in for the
//! resolver), draining on vanish, failures that change nothing, reloads, slow start, and the
//! drain-done signal. The real-DNS version of these checks is tests/e2e/e2e_dns.py.
// Test code: a panic on a setup failure is how a test fails (see [lints] in Cargo.toml).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use http::{Response, StatusCode};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tether::app::App;
use tether::config::Config;
use tether::discovery::resolve::{SharedLookup, SrvRecord, Table};
use tokio::net::TcpListener;

/// A backend on a given address that names itself in `x-backend`.
async fn backend_at(addr: SocketAddr, name: String) -> tokio::task::JoinHandle<()> {
    let listener = TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let name = name.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |_req| {
                    let name = name.clone();
                    async move {
                        Ok::<_, Infallible>(
                            Response::builder()
                                .header("x-backend", name.clone())
                                .body(full(name))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    })
}

/// A port free on 127.0.0.2..=127.0.0.9 (all loopback).
fn common_port() -> u16 {
    'next: loop {
        let l = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
        let port = l.local_addr().unwrap().port();
        for i in 3..=9 {
            if std::net::TcpListener::bind(format!("127.0.0.{i}:{port}")).is_err() {
                continue 'next;
            }
        }
        return port;
    }
}

struct Running {
    app: Arc<App>,
    reloader: tether::reload::Reloader,
    proxy: SocketAddr,
    admin: SocketAddr,
}

async fn start(config: &str, table: &Arc<Table>, path: Option<std::path::PathBuf>) -> Running {
    let config = Config::parse(config, "test.toml").unwrap_or_else(|e| panic!("{e}\n{config}"));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = listener.local_addr().unwrap();
    let listen = config.listen.http[0];
    let lookup: SharedLookup = table.clone();
    let app = App::with_lookup(config, path, Some(lookup)).unwrap();
    app.discovery
        .first_resolutions(Duration::from_secs(5))
        .await;
    app.end_startup();
    let running = tether::server::Listeners::default();
    tokio::spawn(tether::server::serve(
        app.clone(),
        running.clone(),
        vec![(listen, tether::server::Kind::Http, listener)],
        std::future::pending(),
    ));
    let admin_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = admin_l.local_addr().unwrap();
    let reloader = tether::reload::Reloader::spawn(app.clone(), running);
    tokio::spawn(tether::admin::serve(
        app.clone(),
        reloader.clone(),
        admin_l,
        std::future::pending(),
    ));
    Running {
        app,
        reloader,
        proxy,
        admin,
    }
}

fn status(r: &Running) -> serde_json::Value {
    tether::admin::status(&r.app)
}

/// Backend id → (state, source) from /status.
fn states(r: &Running) -> HashMap<String, (String, String)> {
    status(r)["pools"]["app"]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["id"].as_str().unwrap().to_string(),
                (
                    b["state"].as_str().unwrap().to_string(),
                    b["source"].as_str().unwrap().to_string(),
                ),
            )
        })
        .collect()
}

/// Polls until `cond` holds (panics after `limit`).
async fn until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

const BASE: &str = "[listen]\nhttp = [\"127.0.0.1:1\"]\n[log]\naccess = \"off\"\n[proxy]\ntrusted_proxies = [\"127.0.0.1/32\"]\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_records_make_a_pool_that_follows_additions_and_drains_removals() {
    let port = common_port();
    let mut servers = Vec::new();
    for i in 2..=4 {
        let a: SocketAddr = format!("127.0.0.{i}:{port}").parse().unwrap();
        servers.push(backend_at(a, format!("n{i}")).await);
    }
    let table = Arc::new(Table::default());
    table.set_ips("app.test", &["127.0.0.2", "127.0.0.3"]);
    let config = format!(
        "{BASE}[pools.app]\ndrain_timeout = \"30s\"\n[[pools.app.discover]]\ndns = \"app.test\"\nport = {port}\ninterval = \"1s\"\n"
    );
    let r = start(&config, &table, None).await;
    let (id2, id3, id4) = (
        format!("127.0.0.2:{port}"),
        format!("127.0.0.3:{port}"),
        format!("127.0.0.4:{port}"),
    );
    let s = states(&r);
    assert_eq!(s.len(), 2, "{s:?}");
    assert_eq!(s[&id2], ("up".to_string(), "dns:app.test".to_string()));
    let disc = &status(&r)["pools"]["app"]["discover"][0];
    assert_eq!(disc["name"], "dns:app.test");
    assert_eq!(disc["addresses"], serde_json::json!([id2, id3]));
    assert!(disc["last_resolved_at"].is_string());
    assert!(disc["last_error"].is_null());

    // 60 sessions over the two.
    let mut clients: Vec<(Client, String)> = Vec::new();
    for i in 0..60 {
        let mut c = Client::new(format!("10.9.0.{}", i + 1));
        let a = c.get(r.proxy, "/").await;
        assert_eq!(a.status, StatusCode::OK);
        clients.push((c, a.backend()));
    }
    let spread = counts(clients.iter().map(|(_, b)| b.clone()));
    assert_eq!(spread.len(), 2, "{spread:?}");

    // A record appears: a new backend that new sessions reach; no existing session moves.
    table.set_ips("app.test", &["127.0.0.2", "127.0.0.3", "127.0.0.4"]);
    until(Duration::from_secs(4), "the third backend", || {
        states(&r).get(&id4).is_some_and(|s| s.0 == "up")
    })
    .await;
    let fresh: Vec<String> = new_sessions(r.proxy, "10.10.0", 90)
        .await
        .iter()
        .map(|a| a.backend())
        .collect();
    assert!(
        fresh.iter().filter(|b| *b == "n4").count() >= 10,
        "new sessions reach the new backend: {:?}",
        counts(fresh)
    );
    for (c, first) in clients.iter_mut() {
        assert_eq!(
            &c.get(r.proxy, "/").await.backend(),
            first,
            "a session moved"
        );
    }

    // A record vanishes: its backend drains; its sessions stay, no new one lands there.
    table.set_ips("app.test", &["127.0.0.3", "127.0.0.4"]);
    until(Duration::from_secs(4), "n2 draining", || {
        states(&r)[&id2].0 == "draining"
    })
    .await;
    let entry = get(r.admin, &format!("/pools/app/backends/{id2}"), &[]).await;
    assert_eq!(entry.status, StatusCode::OK);
    let entry: serde_json::Value = serde_json::from_slice(&entry.body).unwrap();
    assert_eq!(entry["state"], "draining");
    assert_eq!(entry["source"], "dns:app.test");
    for (c, first) in clients.iter_mut() {
        assert_eq!(
            &c.get(r.proxy, "/").await.backend(),
            first,
            "a pinned session left a draining backend"
        );
    }
    let fresh = new_sessions(r.proxy, "10.11.0", 60).await;
    assert!(
        fresh.iter().all(|a| a.backend() != "n2"),
        "a new session reached a draining backend"
    );

    // The drain-done signal: returns only once pinned requests stopped for --quiet.
    let opts = tether::ctl::WaitOptions {
        admins: vec![format!("http://{}", r.admin)],
        token: None,
        pool: None,
        id: id2.clone(),
        quiet: Duration::from_millis(1500),
        timeout: Duration::from_secs(20),
        poll: Duration::from_millis(100),
    };
    let started = Instant::now();
    let waiter = tokio::spawn(async move {
        tether::ctl::wait_drained(&opts)
            .await
            .map(|_| started.elapsed())
    });
    // Keep n2's users busy for 2 s: the waiter must not return meanwhile.
    let mut last_pinned = Duration::ZERO;
    let busy_until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < busy_until {
        for (c, first) in clients.iter_mut().filter(|(_, b)| b == "n2").take(3) {
            assert_eq!(&c.get(r.proxy, "/").await.backend(), first);
            last_pinned = started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            !waiter.is_finished(),
            "wait-drained returned while pinned requests arrived"
        );
    }
    let waited = waiter.await.unwrap().expect("drained");
    // Quiet is counted from the last pinned request the waiter saw, never from before it.
    assert!(
        waited >= last_pinned + Duration::from_millis(1500),
        "returned after {waited:?}, last pinned request at {last_pinned:?}"
    );
    let entry = get(r.admin, &format!("/pools/app/backends/{id2}"), &[]).await;
    let entry: serde_json::Value = serde_json::from_slice(&entry.body).unwrap();
    assert!(
        entry["pinned_while_draining"].as_u64().unwrap() > 0,
        "{entry}"
    );

    // The record comes back while draining: the backend is up again with its counters.
    let before = status(&r)["pools"]["app"]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["id"] == id2.as_str())
        .unwrap()["requests"]
        .as_u64()
        .unwrap();
    assert!(before > 0);
    table.set_ips("app.test", &["127.0.0.2", "127.0.0.3", "127.0.0.4"]);
    until(Duration::from_secs(4), "n2 back up", || {
        states(&r)[&id2].0 == "up"
    })
    .await;
    let after = status(&r)["pools"]["app"]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["id"] == id2.as_str())
        .unwrap()["requests"]
        .as_u64()
        .unwrap();
    assert!(after >= before, "counters kept: {before} → {after}");
    for s in servers {
        s.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_backend_is_removed_after_drain_timeout_and_an_operators_state_stays() {
    let port = common_port();
    let mut servers = Vec::new();
    for i in 5..=7 {
        let a: SocketAddr = format!("127.0.0.{i}:{port}").parse().unwrap();
        servers.push(backend_at(a, format!("n{i}")).await);
    }
    let table = Arc::new(Table::default());
    table.set_ips("app.test", &["127.0.0.5", "127.0.0.6", "127.0.0.7"]);
    let config = format!(
        "{BASE}[pools.app]\ndrain_timeout = \"2s\"\n[[pools.app.discover]]\ndns = \"app.test\"\nport = {port}\ninterval = \"1s\"\n"
    );
    let r = start(&config, &table, None).await;
    let (id5, id6) = (format!("127.0.0.5:{port}"), format!("127.0.0.6:{port}"));
    // An operator disables n6; its record then vanishes and comes back: still disabled.
    let a = post(r.admin, &format!("/pools/app/backends/{id6}/disable"), &[]).await;
    assert_eq!(a.status, StatusCode::OK);
    table.set_ips("app.test", &["127.0.0.5", "127.0.0.6"]);
    until(Duration::from_secs(4), "n7 draining", || {
        states(&r)[&format!("127.0.0.7:{port}")].0 == "draining"
    })
    .await;
    assert_eq!(states(&r)[&id6].0, "disabled");
    // n7 stays gone and is removed after drain_timeout.
    until(Duration::from_secs(6), "n7 removed", || {
        !states(&r).contains_key(&format!("127.0.0.7:{port}"))
    })
    .await;
    let gone = get(
        r.admin,
        &format!("/pools/app/backends/127.0.0.7:{port}"),
        &[],
    )
    .await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    assert_eq!(
        states(&r)[&id6].0,
        "disabled",
        "the operator's disable stays"
    );
    assert_eq!(states(&r)[&id5].0, "up");
    for s in servers {
        s.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_resolver_changes_nothing_and_an_empty_answer_waits_for_hold() {
    let (b1, b2, _b3) = three().await;
    let table = Arc::new(Table::default());
    table.set_srv(
        "_http._tcp.app.test",
        vec![
            SrvRecord {
                priority: 1,
                weight: 1,
                port: b1.addr.port(),
                target: "b1.app.test.".into(),
            },
            SrvRecord {
                priority: 1,
                weight: 1,
                port: b2.addr.port(),
                target: "b2.app.test.".into(),
            },
        ],
    );
    table.set_ips("b1.app.test", &["127.0.0.1"]);
    table.set_ips("b2.app.test", &["127.0.0.1"]);
    let config = format!(
        "{BASE}[pools.app]\n[[pools.app.discover]]\nsrv = \"_http._tcp.app.test\"\ninterval = \"1s\"\nhold = \"3s\"\n"
    );
    let r = start(&config, &table, None).await;
    let ids: Vec<String> = {
        let mut v: Vec<String> = states(&r).into_keys().collect();
        v.sort();
        v
    };
    assert_eq!(
        ids,
        [
            format!("b1.app.test:{}", b1.addr.port()),
            format!("b2.app.test:{}", b2.addr.port())
        ]
    );
    table.fail(Some("SERVFAIL"));
    until(Duration::from_secs(4), "the error shown", || {
        status(&r)["pools"]["app"]["discover"][0]["last_error"] == "SERVFAIL"
    })
    .await;
    let during = states(&r);
    assert!(during.values().all(|s| s.0 == "up"), "{during:?}");
    let answers = new_sessions(r.proxy, "10.12.0", 40).await;
    assert!(answers.iter().all(|a| a.status == StatusCode::OK));
    let metrics = get(r.admin, "/metrics", &[]).await.text();
    assert!(
        metrics.contains("tether_discovery_resolutions_total{pool=\"app\",name=\"dns:_http._tcp.app.test\",result=\"error\"}"),
        "{metrics}"
    );
    // Recovered: the error clears.
    table.fail(None);
    until(Duration::from_secs(4), "the error cleared", || {
        status(&r)["pools"]["app"]["discover"][0]["last_error"].is_null()
    })
    .await;
    // The name disappears: nothing changes before `hold`, then everything drains.
    table.set_srv("_http._tcp.app.test", Vec::new());
    let gone_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert!(
        states(&r).values().all(|s| s.0 == "up"),
        "emptied before hold"
    );
    until(Duration::from_secs(5), "all draining after hold", || {
        let s = states(&r);
        !s.is_empty() && s.values().all(|s| s.0 == "draining")
    })
    .await;
    assert!(gone_at.elapsed() >= Duration::from_secs(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovered_backends_keep_their_state_across_reloads() {
    let (b1, b2, _b3) = three().await;
    let table = Arc::new(Table::default());
    table.set_srv(
        "_app._tcp.test",
        vec![SrvRecord {
            priority: 0,
            weight: 3,
            port: b2.addr.port(),
            target: "node-2.test".into(),
        }],
    );
    table.set_ips("node-2.test", &["127.0.0.1"]);
    let text = |extra: &str| {
        format!(
            "{BASE}[pools.app]\naffinity = \"route\"\n{extra}\n[[pools.app.backends]]\nid = \"b1\"\naddress = \"{}\"\n[[pools.app.discover]]\nsrv = \"_app._tcp.test\"\ninterval = \"1s\"\n",
            b1.addr
        )
    };
    let path = config_file(&text(""));
    let r = start(&text(""), &table, Some(path.clone())).await;
    let id = format!("node-2.test:{}", b2.addr.port());
    let st = status(&r);
    let b = st["pools"]["app"]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["id"] == id.as_str())
        .unwrap()
        .clone();
    assert_eq!(b["weight"], 3);
    assert_eq!(b["source"], "dns:_app._tcp.test");
    // Route affinity: the SRV target's first label is the jvmRoute.
    let a = get(r.proxy, "/", &[("cookie", "JSESSIONID=abc.node-2")]).await;
    assert_eq!(a.backend(), "b2");
    assert_eq!(
        post(r.admin, &format!("/pools/app/backends/{id}/drain"), &[])
            .await
            .status,
        StatusCode::OK
    );
    std::fs::write(&path, text("drain_timeout = \"10m\"")).unwrap();
    r.reloader
        .reload(tether::reload::Trigger::Requested)
        .await
        .unwrap();
    let s = states(&r);
    assert_eq!(s[&id].0, "draining", "admin state kept over the reload");
    assert_eq!(s["b1"].1, "file");
    let b = tether::admin::status(&r.app)["pools"]["app"]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["id"] == id.as_str())
        .unwrap()
        .clone();
    assert!(b["requests"].as_u64().unwrap() >= 1, "counters kept: {b}");
}

/// Sends one request per key (client IP via X-Forwarded-For) and returns the backends.
async fn place_all(addr: SocketAddr, ips: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(ips.len());
    for ip in ips {
        out.push(get(addr, "/", &[("x-forwarded-for", ip)]).await.backend());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_start_raises_the_share_of_new_sessions_and_moves_no_pin() {
    let (b1, b2, _b3) = three().await;
    let config = pool_config("", "slow_start = \"4s\"", &[&b1, &b2]);
    let (proxy, admin) = Proxy::start_with_admin(&config).await;
    proxy.app.end_startup();
    assert_eq!(
        post(admin, "/pools/app/backends/b2/disable", &[])
            .await
            .status,
        StatusCode::OK
    );
    // Sessions made while b2 is out all live on b1.
    let mut pinned = Vec::new();
    for i in 0..40 {
        let mut c = Client::new(format!("10.20.0.{}", i + 1));
        assert_eq!(c.get(proxy.addr, "/").await.backend(), "b1");
        pinned.push(c);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        post(admin, "/pools/app/backends/b2/enable", &[])
            .await
            .status,
        StatusCode::OK
    );
    let enabled = Instant::now();
    let ips: Vec<String> = (0..200)
        .map(|i| format!("10.21.{}.{}", i / 100, i % 100 + 1))
        .collect();
    // Share of new sessions on b2 over the window, sampled several times.
    let mut samples = Vec::new();
    while enabled.elapsed() < Duration::from_millis(4500) {
        let t = enabled.elapsed().as_secs_f64();
        let got = place_all(proxy.addr, &ips).await;
        let share = got.iter().filter(|b| *b == "b2").count() as f64 / got.len() as f64;
        samples.push((t, share));
    }
    eprintln!("slow-start samples (elapsed s, share on b2): {samples:?}");
    let full = place_all(proxy.addr, &ips).await;
    let full_share = full.iter().filter(|b| *b == "b2").count() as f64 / full.len() as f64;
    assert!(
        full_share > 0.3,
        "after the window b2 takes its share: {full_share}"
    );
    let (t0, first) = samples[0];
    assert!(
        first < 0.2 * full_share + 0.1 * t0 + 0.05,
        "at {t0:.2}s b2 already had {first}"
    );
    // Rising, roughly linearly: each sample near (elapsed / window) × full share.
    let mut last = 0.0;
    for (t, share) in &samples {
        assert!(*share + 0.02 >= last, "share fell at {t:.2}s: {samples:?}");
        let expected = (t / 4.0).min(1.0) * full_share;
        assert!(
            (share - expected).abs() < 0.2,
            "at {t:.2}s: {share} vs about {expected}: {samples:?}"
        );
        last = *share;
    }
    // No pinned session moved.
    for c in pinned.iter_mut() {
        assert_eq!(c.get(proxy.addr, "/").await.backend(), "b1");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_ip_mode_each_key_comes_back_once() {
    let (b1, b2, _b3) = three().await;
    let config = pool_config("", "affinity = \"ip\"\nslow_start = \"3s\"", &[&b1, &b2]);
    let (proxy, admin) = Proxy::start_with_admin(&config).await;
    proxy.app.end_startup();
    let ips: Vec<String> = (0..150)
        .map(|i| format!("10.30.{}.{}", i / 100, i % 100 + 1))
        .collect();
    let owners = place_all(proxy.addr, &ips).await;
    assert_eq!(
        post(admin, "/pools/app/backends/b2/disable", &[])
            .await
            .status,
        StatusCode::OK
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(place_all(proxy.addr, &ips).await.iter().all(|b| b == "b1"));
    assert_eq!(
        post(admin, "/pools/app/backends/b2/enable", &[])
            .await
            .status,
        StatusCode::OK
    );
    let enabled = Instant::now();
    let mut history: Vec<Vec<String>> = Vec::new();
    while enabled.elapsed() < Duration::from_millis(3300) {
        history.push(place_all(proxy.addr, &ips).await);
    }
    history.push(place_all(proxy.addr, &ips).await);
    assert!(history.len() >= 3, "too few rounds: {}", history.len());
    let mut returned_midway = 0;
    for (k, ip) in ips.iter().enumerate() {
        let seq: Vec<&str> = history.iter().map(|h| h[k].as_str()).collect();
        let switches = seq.windows(2).filter(|w| w[0] != w[1]).count();
        if owners[k] == "b2" {
            // b1 … b1 b2 … b2: at most one switch, never back, and home by the end.
            assert!(switches <= 1, "{ip} flip-flopped: {seq:?}");
            assert_eq!(*seq.last().unwrap(), "b2", "{ip} not back after the window");
            if seq[0] == "b1" && switches == 1 {
                returned_midway += 1;
            }
        } else {
            assert!(
                seq.iter().all(|b| *b == "b1"),
                "{ip} (a b1 key) moved: {seq:?}"
            );
        }
    }
    assert!(
        returned_midway > 10,
        "keys should come back gradually, {returned_midway} did"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_discovered_backend_is_health_checked_before_it_gets_sessions_then_slow_started() {
    let (b1, b2, _b3) = three().await;
    // b2 fails its checks at first.
    b2.health_mode
        .store(1, std::sync::atomic::Ordering::Relaxed);
    let table = Arc::new(Table::default());
    let srv = |b: &Backend, t: &str| SrvRecord {
        priority: 0,
        weight: 1,
        port: b.addr.port(),
        target: t.into(),
    };
    table.set_srv("_h._tcp.test", vec![srv(&b1, "one.test")]);
    table.set_ips("one.test", &["127.0.0.1"]);
    table.set_ips("two.test", &["127.0.0.1"]);
    let config = format!(
        "{BASE}[pools.app]\nslow_start = \"2s\"\n[pools.app.health]\npath = \"/health\"\ninterval = \"100ms\"\nrise = 2\nfall = 1\n[[pools.app.discover]]\nsrv = \"_h._tcp.test\"\ninterval = \"1s\"\n"
    );
    let r = start(&config, &table, None).await;
    let two = format!("two.test:{}", b2.addr.port());
    until(Duration::from_secs(3), "one.test up", || {
        states(&r).values().any(|s| s.0 == "up")
    })
    .await;
    table.set_srv(
        "_h._tcp.test",
        vec![srv(&b1, "one.test"), srv(&b2, "two.test")],
    );
    until(Duration::from_secs(4), "two.test discovered", || {
        states(&r).contains_key(&two)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(states(&r)[&two].0, "down", "failing checks: no sessions");
    let ips: Vec<String> = (0..100).map(|i| format!("10.40.0.{}", i + 1)).collect();
    assert!(place_all(r.proxy, &ips).await.iter().all(|b| b == "b1"));
    // Checks pass: up, and its share of new sessions starts near zero.
    b2.health_mode
        .store(0, std::sync::atomic::Ordering::Relaxed);
    until(Duration::from_secs(3), "two.test up", || {
        states(&r)[&two].0 == "up"
    })
    .await;
    let early = place_all(r.proxy, &ips).await;
    let early = early.iter().filter(|b| *b == "b2").count();
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let late = place_all(r.proxy, &ips).await;
    let late = late.iter().filter(|b| *b == "b2").count();
    assert!(
        early < 25 && late > early + 15,
        "b2 took {early} then {late} of 100"
    );
}
