//! Application-session affinity: Tomcat routes (jvmRoute in JSESSIONID or `;jsessionid=`)
//! and sessions learned from the application's own cookie.

mod common;

use common::*;

fn route_pool(backends: &[&Backend]) -> String {
    let mut t = String::from("[log]\naccess = \"off\"\n[proxy]\ntrusted_proxies = [\"127.0.0.1/32\"]\n[pools.tc]\naffinity = \"route\"\n");
    for (i, b) in backends.iter().enumerate() {
        t.push_str(&format!(
            "[[pools.tc.backends]]\nid = \"{}\"\naddress = \"{}\"\nroute = \"node{}\"\n",
            b.name,
            b.addr,
            i + 1
        ));
    }
    t
}

#[tokio::test]
async fn the_route_in_jsessionid_picks_the_backend() {
    let (a, b, c) = three().await;
    let proxy = Proxy::start(&route_pool(&[&a, &b, &c])).await;
    for (route, want) in [("node1", "b1"), ("node2", "b2"), ("node3", "b3")] {
        for i in 0..5 {
            let cookie = format!("JSESSIONID=5E1D{i}A.{route}; other=1");
            let ans = get(
                proxy.addr,
                "/",
                &[
                    ("cookie", &cookie),
                    ("x-forwarded-for", &format!("10.1.1.{i}")),
                ],
            )
            .await;
            assert_eq!(ans.backend(), want);
            assert!(ans.tether_cookie().is_none(), "route mode sets no cookie");
            assert_eq!(
                ans.headers.get("x-seen-cookie").unwrap().to_str().unwrap(),
                cookie,
                "the app's cookie passes untouched"
            );
        }
    }
    // A URL-rewritten session (no cookie) sticks too, and the path parameter wins.
    let ans = get(
        proxy.addr,
        "/cart;jsessionid=77AB.node3?item=1",
        &[("cookie", "JSESSIONID=1.node1")],
    )
    .await;
    assert_eq!(ans.backend(), "b3");
}

#[tokio::test]
async fn unknown_or_down_routes_are_placed_without_a_cookie() {
    let (a, b, c) = three().await;
    let cfg = route_pool(&[&a, &b, &c]);
    let proxy = Proxy::start(&cfg).await;
    // Unknown route: placed by session id, stably.
    let x = get(proxy.addr, "/", &[("cookie", "JSESSIONID=ABCD.node9")]).await;
    let y = get(proxy.addr, "/", &[("cookie", "JSESSIONID=ABCD.node9")]).await;
    assert_eq!(x.status, 200);
    assert_eq!(x.backend(), y.backend());
    assert!(x.tether_cookie().is_none());
    // node2's backend disabled: its sessions spread over the others.
    let disabled = cfg.replacen(
        "route = \"node2\"",
        "route = \"node2\"\nstate = \"disabled\"",
        1,
    );
    proxy
        .app
        .load_and_install(tether::config::Config::parse(&disabled, "t").unwrap())
        .unwrap();
    let mut seen = std::collections::HashSet::new();
    for i in 0..40 {
        let ans = get(
            proxy.addr,
            "/",
            &[("cookie", &format!("JSESSIONID=S{i}.node2"))],
        )
        .await;
        assert_ne!(ans.backend(), "b2");
        seen.insert(ans.backend());
    }
    assert_eq!(
        seen.len(),
        2,
        "orphaned sessions spread over both survivors"
    );
}

fn learn_pool(backends: &[&Backend], extra: &str) -> String {
    pool_config("", &format!("affinity = \"learn\"\n[pools.app.learn]\ncookie = \"session\"\nttl = \"10m\"\ncapacity = 1000\n{extra}"), backends)
}

#[tokio::test]
async fn learned_sessions_stick_are_relearned_and_survive_reloads() {
    let (a, b, c) = three().await;
    let cfg = learn_pool(&[&a, &b, &c], "");
    let proxy = Proxy::start(&cfg).await;
    let mut homes = Vec::new();
    for i in 0..30 {
        let ip = format!("10.2.0.{}", i + 1);
        // The application issues a session on login; tether learns which backend did.
        let login = get(
            proxy.addr,
            &format!("/set-session?v=sess{i}"),
            &[("x-forwarded-for", &ip)],
        )
        .await;
        let home = login.backend();
        assert!(
            login.tether_cookie().is_none(),
            "learn mode sets no cookie of its own"
        );
        for _ in 0..5 {
            // From other IPs too: the session, not the IP, decides.
            let ans = get(
                proxy.addr,
                "/",
                &[
                    ("cookie", &format!("session=sess{i}")),
                    ("x-forwarded-for", "192.0.2.200"),
                ],
            )
            .await;
            assert_eq!(ans.backend(), home, "session {i}");
        }
        homes.push(home);
    }
    assert_eq!(
        counts(homes.clone()).len(),
        3,
        "sessions spread over all backends"
    );
    // An unrelated reload keeps what was learned.
    proxy
        .app
        .load_and_install(
            tether::config::Config::parse(
                &cfg.replace("ttl = \"10m\"", "ttl = \"10m\" # edited"),
                "t",
            )
            .unwrap(),
        )
        .unwrap();
    let ans = get(
        proxy.addr,
        "/",
        &[
            ("cookie", "session=sess0"),
            ("x-forwarded-for", "192.0.2.201"),
        ],
    )
    .await;
    assert_eq!(ans.backend(), homes[0]);
    // A changed value is learned again (on whichever backend set it).
    let relogin = get(
        proxy.addr,
        "/set-session?v=renamed0",
        &[("cookie", "session=sess0")],
    )
    .await;
    let ans = get(
        proxy.addr,
        "/",
        &[
            ("cookie", "session=renamed0"),
            ("x-forwarded-for", "192.0.2.202"),
        ],
    )
    .await;
    assert_eq!(ans.backend(), relogin.backend());
    // A deleted session is forgotten: the next request is placed as new (by IP).
    get(
        proxy.addr,
        "/set-session?del=1",
        &[("cookie", "session=renamed0")],
    )
    .await;
    let table = proxy.app.snapshot().pools[0].learned.clone().unwrap();
    assert!(table.lookup(b"renamed0").is_none());
}

#[tokio::test]
async fn learned_sessions_of_a_down_backend_move_and_are_learned_anew() {
    let (a, b, c) = three().await;
    let cfg = learn_pool(&[&a, &b, &c], "");
    let proxy = Proxy::start(&cfg).await;
    let mut on_b1 = None;
    for i in 0..30 {
        let ans = get(
            proxy.addr,
            &format!("/set-session?v=s{i}"),
            &[("x-forwarded-for", &format!("10.3.0.{}", i + 1))],
        )
        .await;
        if ans.backend() == "b1" {
            on_b1 = Some(format!("s{i}"));
            break;
        }
    }
    let s = on_b1.expect("a session on b1");
    proxy
        .app
        .load_and_install(
            tether::config::Config::parse(
                &cfg.replacen("id = \"b1\"", "id = \"b1\"\nstate = \"disabled\"", 1),
                "t",
            )
            .unwrap(),
        )
        .unwrap();
    let ans = get(proxy.addr, "/", &[("cookie", &format!("session={s}"))]).await;
    assert_ne!(ans.backend(), "b1");
    let m =
        proxy.app.snapshot().pools[0].shared.affinity[2].load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(m, 1, "counted as moved");
}
