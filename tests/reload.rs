//! Hot reload: no request fails while the config is swapped under load, edits move only the
//! keys they must, bad files change nothing, and the watcher sees editors' saves.
// Test code: a panic on a setup failure is how a test fails (see [lints] in Cargo.toml).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tether::reload::{ReloadError, Trigger};

fn write(path: &std::path::Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_keep_alive_clients_see_no_failure_while_reloading_every_100ms() {
    let (a, b, c) = three().await;
    let d = Backend::start("b4").await;
    let list_one = pool_config("", "", &[&a, &b, &c]);
    let list_two = pool_config("", "", &[&a, &b, &d]);
    let path = config_file(&list_one);
    let proxy = Proxy::start_file(&path).await;
    // Clients run until the reloads are done (bounded by a 30 s cap), so a loaded machine
    // that fits fewer reloads per second still sees all of them happen under load.
    let done = Arc::new(AtomicBool::new(false));
    let cap = Instant::now() + Duration::from_secs(30);
    let ok = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for i in 0..200 {
        let (addr, ok, done) = (proxy.addr, ok.clone(), done.clone());
        clients.push(tokio::spawn(async move {
            let mut conn = KeepAlive::connect(addr).await;
            let ip = format!("10.80.{}.{}", i / 200, i % 200 + 1);
            let mut cookie: Option<String> = None;
            let mut failures = Vec::new();
            while !done.load(Ordering::Relaxed) && Instant::now() < cap {
                let c = cookie.as_ref().map(|c| format!("TETHER={c}"));
                let mut h = vec![("x-forwarded-for", ip.as_str())];
                if let Some(c) = &c {
                    h.push(("cookie", c.as_str()));
                }
                match conn.get("/", &h).await {
                    Some(ans) if ans.status == 200 => {
                        if let Some(v) = ans.tether_cookie() {
                            cookie = Some(v);
                        }
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(ans) => failures.push(format!("status {}", ans.status)),
                    None => {
                        failures.push("connection error".to_string());
                        conn = KeepAlive::connect(addr).await;
                    }
                }
            }
            failures
        }));
    }
    let mut reloads = 0;
    while reloads < 20 && Instant::now() < cap {
        tokio::time::sleep(Duration::from_millis(100)).await;
        write(
            &path,
            if reloads % 2 == 0 {
                &list_two
            } else {
                &list_one
            },
        );
        proxy.reloader.reload(Trigger::Requested).await.unwrap();
        reloads += 1;
    }
    done.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for c in clients {
        failures.extend(c.await.unwrap());
    }
    assert!(
        failures.is_empty(),
        "{} failed requests, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert_eq!(reloads, 20, "the reloads did not finish within the cap");
    assert!(
        ok.load(Ordering::Relaxed) > 1000,
        "too little load: {}",
        ok.load(Ordering::Relaxed)
    );
    // Every requested reload applies once; the file watcher may apply a write first (then
    // the requested reload of the same text applies again), so a generation per write at
    // least, and at most two.
    let generation = proxy.app.meta().generation;
    assert!(
        (1 + reloads..=1 + 2 * reloads).contains(&generation),
        "generation {generation} after {reloads} reloads"
    );
}

/// Backend answers for 300 IPs in the ip pool and 100 cookie sessions in the cookie pool.
async fn snapshot_answers(proxy: &Proxy, cookies: &mut Vec<Client>) -> (Vec<String>, Vec<String>) {
    let mut ip = Vec::new();
    for i in 0..300 {
        let x = format!("10.90.{}.{}", i / 200, i % 200 + 1);
        let req = http::Request::get("/")
            .header("host", "ip.test")
            .header("x-forwarded-for", x)
            .body(empty())
            .unwrap();
        ip.push(request(proxy.addr, req).await.backend());
    }
    if cookies.is_empty() {
        for i in 0..100 {
            cookies.push(Client::new(format!("10.91.0.{}", i + 1)));
        }
    }
    let mut ck = Vec::new();
    for cl in cookies.iter_mut() {
        let cookie = cl.cookie.as_ref().map(|c| format!("TETHER={c}"));
        let mut b = http::Request::get("/")
            .header("host", "cookie.test")
            .header("x-forwarded-for", cl.ip.clone());
        if let Some(c) = cookie {
            b = b.header("cookie", c);
        }
        let ans = request(proxy.addr, b.body(empty()).unwrap()).await;
        if let Some(v) = ans.tether_cookie() {
            cl.cookie = Some(v);
        }
        ck.push(ans.backend());
    }
    (ip, ck)
}

fn two_pools(backends: &[&Backend], connect_timeout: &str) -> String {
    let mut t = format!(
        "[log]\naccess = \"off\"\n[proxy]\ntrusted_proxies = [\"127.0.0.1/32\"]\nconnect_timeout = \"{connect_timeout}\"\n[[routes]]\nhost = \"ip.test\"\npool = \"ip\"\n[[routes]]\nhost = \"cookie.test\"\npool = \"web\"\n[pools.ip]\naffinity = \"ip\"\n[pools.web]\naffinity = \"cookie\"\n"
    );
    for pool in ["ip", "web"] {
        for b in backends {
            t.push_str(&format!(
                "[[pools.{pool}.backends]]\nid = \"{}\"\naddress = \"{}\"\n",
                b.name, b.addr
            ));
        }
    }
    t
}

#[tokio::test]
async fn an_unrelated_edit_moves_nothing_and_keeps_the_tables() {
    let (a, b, c) = three().await;
    let path = config_file(&two_pools(&[&a, &b, &c], "2s"));
    let proxy = Proxy::start_file(&path).await;
    let mut cookies = Vec::new();
    let before = snapshot_answers(&proxy, &mut cookies).await;
    let table_before = proxy.app.snapshot().pools[0].balancer.clone();
    write(&path, &two_pools(&[&a, &b, &c], "3s"));
    assert_eq!(
        proxy.reloader.reload(Trigger::Requested).await.unwrap(),
        Some(2)
    );
    assert_eq!(
        proxy.app.snapshot().config.proxy.connect_timeout,
        Duration::from_secs(3)
    );
    assert!(
        Arc::ptr_eq(&table_before, &proxy.app.snapshot().pools[0].balancer),
        "table rebuilt for an unrelated edit"
    );
    let after = snapshot_answers(&proxy, &mut cookies).await;
    assert_eq!(before.0, after.0, "ip keys moved");
    assert_eq!(before.1, after.1, "cookie sessions moved");
}

#[tokio::test]
async fn adding_a_fourth_backend_moves_a_quarter_of_ip_keys_and_no_cookie_session() {
    let (a, b, c) = three().await;
    let d = Backend::start("b4").await;
    let path = config_file(&two_pools(&[&a, &b, &c], "2s"));
    let proxy = Proxy::start_file(&path).await;
    let mut cookies = Vec::new();
    let before = snapshot_answers(&proxy, &mut cookies).await;
    write(&path, &two_pools(&[&a, &b, &c, &d], "2s"));
    proxy.reloader.reload(Trigger::Requested).await.unwrap();
    let after = snapshot_answers(&proxy, &mut cookies).await;
    let moved = before
        .0
        .iter()
        .zip(&after.0)
        .filter(|(x, y)| x != y)
        .count() as f64
        / before.0.len() as f64;
    assert!(
        (0.15..=1.5 / 4.0).contains(&moved),
        "ip keys moved: {moved:.3}"
    );
    assert!(
        before
            .0
            .iter()
            .zip(&after.0)
            .all(|(x, y)| x == y || y == "b4"),
        "keys only move to the new backend"
    );
    assert_eq!(before.1, after.1, "cookie sessions moved");
}

#[tokio::test]
async fn an_invalid_file_keeps_serving_and_is_reported_until_fixed() {
    let (a, b, c) = three().await;
    let good = pool_config("", "", &[&a, &b, &c]);
    let path = config_file(&good);
    let (proxy, admin) = {
        let p = Proxy::start_file(&path).await;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = l.local_addr().unwrap();
        tokio::spawn(tether::admin::serve(
            p.app.clone(),
            p.reloader.clone(),
            l,
            std::future::pending(),
        ));
        (p, admin)
    };
    write(
        &path,
        &good.replace(
            "[pools.app]",
            "[pools.app]\naffinity = \"sticky\"\nbogus = 1",
        ),
    );
    let err = proxy.reloader.reload(Trigger::Requested).await.unwrap_err();
    let ReloadError::Invalid(d) = &err else {
        panic!("{err}")
    };
    assert_eq!(d.len(), 2, "every error is reported: {d:?}");
    assert_eq!(
        get(proxy.addr, "/", &[]).await.status,
        200,
        "the old config keeps serving"
    );
    let status: serde_json::Value =
        serde_json::from_slice(&get(admin, "/status", &[]).await.body).unwrap();
    assert_eq!(status["config"]["generation"], 1);
    let msg = status["config"]["last_reload_error"].as_str().unwrap();
    assert!(
        msg.contains("tether.toml:") && msg.contains("pools.app.affinity"),
        "{msg}"
    );
    // The admin API answers 422 with the errors.
    let ans = post(admin, "/reload", &[]).await;
    assert_eq!(ans.status, 422);
    let v: serde_json::Value = serde_json::from_slice(&ans.body).unwrap();
    assert_eq!(v["errors"].as_array().unwrap().len(), 2);
    let metrics = get(admin, "/metrics", &[]).await.text();
    assert!(
        metrics.contains("tether_config_reloads_total{result=\"error\"} 2"),
        "{metrics}"
    );
    // Fixing the file clears the error.
    write(&path, &good);
    let ans = post(admin, "/reload", &[]).await;
    assert_eq!(ans.status, 200, "{}", ans.text());
    let status: serde_json::Value =
        serde_json::from_slice(&get(admin, "/status", &[]).await.body).unwrap();
    assert_eq!(status["config"]["generation"], 2);
    assert!(status["config"]["last_reload_error"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watcher_sees_a_write_rename_save() {
    let (a, b, c) = three().await;
    let path = config_file(&pool_config("", "", &[&a, &b]));
    let proxy = Proxy::start_file(&path).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Touching the file without changing it is not a reload.
    write(&path, &pool_config("", "", &[&a, &b]));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(proxy.app.meta().generation, 1);
    // An editor's save: write a temporary file, rename it over the config.
    let tmp = path.with_extension("toml.swp");
    write(&tmp, &pool_config("", "", &[&a, &b, &c]));
    std::fs::rename(&tmp, &path).unwrap();
    let t = Instant::now();
    while proxy.app.meta().generation == 1 {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the watcher missed the save"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(proxy.app.snapshot().pools[0].backends.len(), 3);
    // And it keeps watching after the inode changed.
    write(&path, &pool_config("", "", &[&a]));
    let t = Instant::now();
    while proxy.app.snapshot().pools[0].backends.len() != 1 {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the watcher stopped after a rename"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The file watcher, SIGHUP's way (`Reloader::trigger`) and `POST /reload`, 100 triggers in
/// flight at once while the file keeps changing: every answer comes from a reload that read
/// the file as it was when asked (or newer), and the last file is the one left applied.
/// (Four workers on fewer cores: reloads that were not serialised overlapped, and an older
/// file won, in 4 of 4 runs of this test against reloads run inline as before the task.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_concurrent_triggers_over_a_changing_file_end_with_the_last_file_applied() {
    let a = Backend::start("a").await;
    // Version i of the file sets max_connections to 10_000 + i, and a new maglev table size
    // (rebuilding the table makes each reload take long enough for overlaps to show).
    let version = |i: u64| {
        let table = ["262139", "262147", "262151"][i as usize % 3];
        let proxy = format!("max_connections = {}", 10_000 + i);
        pool_config(&proxy, &format!("table_size = {table}"), &[&a])
    };
    let applied = |app: &tether::app::App| app.snapshot().config.proxy.max_connections - 10_000;
    let path = config_file(&version(0));
    let proxy = Proxy::start_file(&path).await;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = l.local_addr().unwrap();
    tokio::spawn(tether::admin::serve(
        proxy.app.clone(),
        proxy.reloader.clone(),
        l,
        std::future::pending(),
    ));
    let mut asked = Vec::new();
    for i in 1..=100u64 {
        // Replaced in one step (an editor's save), so no reload reads a half-written file.
        let tmp = path.with_extension("toml.tmp");
        write(&tmp, &version(i));
        std::fs::rename(&tmp, &path).unwrap();
        let (app, reloader) = (proxy.app.clone(), proxy.reloader.clone());
        asked.push(tokio::spawn(async move {
            let generation = match i % 3 {
                0 => {
                    let ans = post(admin, "/reload", &[]).await;
                    assert_eq!(ans.status, 200, "{}", ans.text());
                    let v: serde_json::Value = serde_json::from_slice(&ans.body).unwrap();
                    v["generation"].as_u64().unwrap()
                }
                1 => reloader
                    .reload(Trigger::Requested)
                    .await
                    .unwrap()
                    .expect("a requested reload always applies"),
                _ => {
                    // What the SIGHUP handler does: ask, and do not wait.
                    reloader.trigger(Trigger::Requested);
                    return;
                }
            };
            // Reloads apply files in the order they read them, so what is applied now is at
            // least what the reload that answered this trigger applied.
            let now = applied(&app);
            assert!(
                now >= i,
                "trigger {i} was answered by a reload of file {now}"
            );
            assert!(app.meta().generation >= generation);
        }));
        // A little time between saves, so reloads run while the file keeps changing.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    for t in asked {
        t.await.unwrap();
    }
    // The triggers that did not wait, and the watcher's (debounced) ones, settle.
    let t = Instant::now();
    let mut last = (0, Instant::now());
    while last.1.elapsed() < Duration::from_millis(600) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "reloads never settled"
        );
        let g = proxy.app.meta().generation;
        if g != last.0 {
            last = (g, Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(applied(&proxy.app), 100, "an older file won");
    assert_eq!(proxy.app.reloads_failed.load(Ordering::Relaxed), 0);
    // And the watcher's record of the applied text is the last file's: nothing to do.
    assert_eq!(
        proxy.reloader.reload(Trigger::FileChanged).await.unwrap(),
        None
    );
}

#[tokio::test]
async fn listener_changes_are_applied() {
    let a = Backend::start("a").await;
    let second = free_addr();
    let base = pool_config("", "", &[&a]);
    let path = config_file(&format!("[listen]\nhttp = [\"127.0.0.1:0\"]\n{base}"));
    let proxy = Proxy::start_file(&path).await;
    write(
        &path,
        &format!("[listen]\nhttp = [\"127.0.0.1:0\", \"{second}\"]\n{base}"),
    );
    proxy.reloader.reload(Trigger::Requested).await.unwrap();
    assert_eq!(
        get(second, "/", &[]).await.status,
        200,
        "new listener serves"
    );
    assert_eq!(
        get(proxy.addr, "/", &[]).await.status,
        200,
        "old listener still serves"
    );
    // Drop the first address: it stops accepting; the second keeps serving.
    write(&path, &format!("[listen]\nhttp = [\"{second}\"]\n{base}"));
    proxy.reloader.reload(Trigger::Requested).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        tokio::net::TcpStream::connect(proxy.addr).await.is_err(),
        "removed listener still accepts"
    );
    assert_eq!(get(second, "/", &[]).await.status, 200);
    // An address that cannot be bound rejects the whole reload.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    write(
        &path,
        &format!(
            "[listen]\nhttp = [\"{second}\", \"{}\"]\n{base}",
            taken.local_addr().unwrap()
        ),
    );
    assert!(matches!(
        proxy.reloader.reload(Trigger::Requested).await,
        Err(ReloadError::Listen(_))
    ));
    assert_eq!(proxy.app.meta().generation, 3);
}
