//! Stickiness end to end through a real proxy and in-process backends: cookie, ip and header
//! affinity, bad cookies, cookie attributes, and two instances agreeing.

mod common;

use std::collections::HashSet;

use common::*;

async fn three() -> (Backend, Backend, Backend) {
    (
        Backend::start("b1").await,
        Backend::start("b2").await,
        Backend::start("b3").await,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_cookie_clients_stick_and_use_every_backend() {
    let (a, b, c) = three().await;
    let proxy = Proxy::start(&pool_config("", "affinity = \"cookie\"", &[&a, &b, &c])).await;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let addr = proxy.addr;
        tasks.push(tokio::spawn(async move {
            let mut client = Client::new(format!("10.1.{}.{}", i / 200, i % 200 + 1));
            let mut seen = HashSet::new();
            let mut cookies_set = 0;
            for _ in 0..20 {
                let a = client.get(addr, "/").await;
                assert_eq!(a.status, 200);
                if a.tether_cookie().is_some() {
                    cookies_set += 1;
                }
                seen.insert(a.backend());
            }
            assert_eq!(seen.len(), 1, "client {i} saw {seen:?}");
            assert_eq!(
                cookies_set, 1,
                "the cookie is set once, on the first response"
            );
            seen.into_iter().next().unwrap()
        }));
    }
    let mut used = Vec::new();
    for t in tasks {
        used.push(t.await.unwrap());
    }
    let per = counts(used);
    assert_eq!(per.len(), 3, "all backends used: {per:?}");
}

#[tokio::test]
async fn bad_cookies_get_a_new_placement_and_a_fresh_cookie() {
    let (a, b, c) = three().await;
    let proxy = Proxy::start(&pool_config(
        "",
        "[pools.app.cookie]\nsecret = \"0123456789abcdef0123\"",
        &[&a, &b, &c],
    ))
    .await;
    let first = get(proxy.addr, "/", &[]).await;
    let good = first.tether_cookie().unwrap();
    // Tamper with one character of the backend token.
    let mut tampered: Vec<char> = good.chars().collect();
    let i = 20;
    tampered[i] = if tampered[i] == '0' { '1' } else { '0' };
    let tampered: String = tampered.into_iter().collect();
    let huge = "v".repeat(6000);
    let cases = [
        "garbage".to_string(),
        "".to_string(),
        tampered,
        huge,
        "v1.zzzz.yyyy".to_string(),
        "\u{7f}\u{1}".to_string(),
        format!("{good}.extra"),
    ];
    for bad in cases {
        let cookie = format!("TETHER={bad}; keep=me");
        let Ok(_) = http::HeaderValue::from_str(&cookie) else {
            continue;
        };
        let ans = get(proxy.addr, "/", &[("cookie", &cookie)]).await;
        assert_eq!(ans.status, 200, "cookie {bad:?}");
        let fresh = ans
            .tether_cookie()
            .unwrap_or_else(|| panic!("no fresh cookie for {bad:?}"));
        assert_ne!(fresh, bad);
        // The backend never sees our cookie, but does see the others.
        assert_eq!(ans.headers.get("x-seen-cookie").unwrap(), "keep=me");
    }
    // The good cookie is a hit: no new cookie, backend unchanged.
    let again = get(proxy.addr, "/", &[("cookie", &format!("TETHER={good}"))]).await;
    assert_eq!(again.backend(), first.backend());
    assert!(again.tether_cookie().is_none());
    assert!(
        again.headers.get("x-seen-cookie").is_none(),
        "cookie header dropped when only ours"
    );
}

#[tokio::test]
async fn set_cookie_on_every_status_with_cache_control_private() {
    let (a, b, c) = three().await;
    let proxy = Proxy::start(&pool_config(
        "",
        "[pools.app.cookie]\nmax_age = \"1d\"",
        &[&a, &b, &c],
    ))
    .await;
    for code in [200, 302, 401, 404, 500] {
        let ans = get(proxy.addr, &format!("/status?code={code}"), &[]).await;
        assert_eq!(ans.status.as_u16(), code);
        let raw = ans
            .headers
            .get("set-cookie")
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        assert!(raw.starts_with("TETHER=v1."), "{raw}");
        assert!(
            raw.contains("Max-Age=86400") && raw.contains("HttpOnly") && raw.contains("Path=/"),
            "{raw}"
        );
        assert_eq!(
            ans.headers.get("cache-control").unwrap(),
            "private",
            "status {code}"
        );
    }
    let ans = get(proxy.addr, "/status?code=200&cc=no-store", &[]).await;
    assert_eq!(ans.headers.get("cache-control").unwrap(), "no-store");
}

#[tokio::test]
async fn ip_affinity_sticks_and_spreads() {
    let (a, b, c) = three().await;
    let proxy = Proxy::start(&pool_config("", "affinity = \"ip\"", &[&a, &b, &c])).await;
    let mut chosen = Vec::new();
    for i in 0..60 {
        let ip = format!("192.0.2.{}", i + 1);
        let first = get(proxy.addr, "/", &[("x-forwarded-for", &ip)]).await;
        for _ in 0..3 {
            let again = get(proxy.addr, "/", &[("x-forwarded-for", &ip)]).await;
            assert_eq!(again.backend(), first.backend(), "{ip}");
        }
        assert!(first.tether_cookie().is_none(), "ip mode sets no cookie");
        chosen.push(first.backend());
    }
    let per = counts(chosen);
    assert_eq!(per.len(), 3, "{per:?}");
    assert!(per.values().all(|&n| n >= 8), "{per:?}");
}

#[tokio::test]
async fn untrusted_peers_cannot_choose_their_key_with_x_forwarded_for() {
    let (a, b, c) = three().await;
    // No trusted proxies: X-Forwarded-For is ignored for affinity (but still appended).
    let cfg = pool_config("", "affinity = \"ip\"", &[&a, &b, &c])
        .replace("trusted_proxies = [\"127.0.0.1/32\"]", "");
    let proxy = Proxy::start(&cfg).await;
    let first = get(proxy.addr, "/", &[]).await;
    for i in 0..20 {
        let ans = get(
            proxy.addr,
            "/",
            &[("x-forwarded-for", &format!("198.51.100.{i}"))],
        )
        .await;
        assert_eq!(ans.backend(), first.backend());
        assert_eq!(
            ans.headers.get("x-seen-xff").unwrap().to_str().unwrap(),
            format!("198.51.100.{i}, 127.0.0.1")
        );
    }
}

#[tokio::test]
async fn header_affinity_sticks_spreads_and_falls_back_to_ip() {
    let (a, b, c) = three().await;
    let proxy = Proxy::start(&pool_config(
        "",
        "affinity = \"header\"\nheader = \"X-User-Id\"",
        &[&a, &b, &c],
    ))
    .await;
    let mut chosen = Vec::new();
    for u in 0..60 {
        let user = format!("user-{u}");
        let first = get(
            proxy.addr,
            "/",
            &[("x-user-id", &user), ("x-forwarded-for", "203.0.113.1")],
        )
        .await;
        let again = get(
            proxy.addr,
            "/",
            &[("x-user-id", &user), ("x-forwarded-for", "203.0.113.99")],
        )
        .await;
        assert_eq!(
            first.backend(),
            again.backend(),
            "the header, not the IP, decides"
        );
        chosen.push(first.backend());
    }
    assert_eq!(counts(chosen).len(), 3);
    // Without the header: the client IP decides, stably.
    let x = get(proxy.addr, "/", &[("x-forwarded-for", "203.0.113.7")]).await;
    let y = get(proxy.addr, "/", &[("x-forwarded-for", "203.0.113.7")]).await;
    assert_eq!(x.backend(), y.backend());
}

#[tokio::test]
async fn none_affinity_spreads_by_least_in_flight() {
    let (a, b, c) = three().await;
    let proxy = Proxy::start(&pool_config("", "affinity = \"none\"", &[&a, &b, &c])).await;
    let mut chosen = Vec::new();
    for _ in 0..30 {
        chosen.push(get(proxy.addr, "/", &[]).await.backend());
    }
    let per = counts(chosen);
    assert_eq!(per.len(), 3, "idle ties rotate over every backend: {per:?}");
}

#[tokio::test]
async fn disabled_backend_gets_no_traffic_and_its_sessions_move_with_a_new_cookie() {
    let (a, b, c) = three().await;
    let cfg = pool_config("", "", &[&a, &b, &c]);
    let proxy = Proxy::start(&cfg).await;
    // Find a client pinned to b2.
    let mut pinned = None;
    for i in 0..200 {
        let mut cl = Client::new(format!("10.9.{}.{}", i / 200, i % 200 + 1));
        if cl.get(proxy.addr, "/").await.backend() == "b2" {
            pinned = Some(cl);
            break;
        }
    }
    let mut cl = pinned.expect("some client lands on b2");
    let old_cookie = cl.cookie.clone().unwrap();
    // Disable b2 in the config (a new snapshot; b2's state is kept by identity).
    let disabled = cfg.replacen(
        &format!("id = \"b2\"\naddress = \"{}\"", b.addr),
        &format!(
            "id = \"b2\"\naddress = \"{}\"\nstate = \"disabled\"",
            b.addr
        ),
        1,
    );
    assert_ne!(disabled, cfg);
    proxy
        .app
        .load_and_install(tether::config::Config::parse(&disabled, "t").unwrap())
        .unwrap();
    let before = b.hits();
    let moved = cl.get(proxy.addr, "/").await;
    assert_ne!(moved.backend(), "b2");
    let new_cookie = moved
        .tether_cookie()
        .expect("a moved session gets a fresh cookie");
    assert_ne!(new_cookie, old_cookie);
    // The client key is kept: only the backend token changed.
    assert_eq!(new_cookie.split('.').nth(1), old_cookie.split('.').nth(1));
    for _ in 0..5 {
        assert_eq!(cl.get(proxy.addr, "/").await.backend(), moved.backend());
    }
    for i in 0..50 {
        get(
            proxy.addr,
            "/",
            &[("x-forwarded-for", &format!("10.8.0.{i}"))],
        )
        .await;
    }
    assert_eq!(b.hits(), before, "a disabled backend receives nothing");
    // Re-enabled, the session stays on its new backend.
    proxy
        .app
        .load_and_install(tether::config::Config::parse(&cfg, "t").unwrap())
        .unwrap();
    assert_eq!(cl.get(proxy.addr, "/").await.backend(), moved.backend());
}

#[tokio::test]
async fn draining_backend_keeps_pinned_sessions_but_takes_no_new_ones() {
    let (a, b, c) = three().await;
    let cfg = pool_config("", "", &[&a, &b, &c]);
    let proxy = Proxy::start(&cfg).await;
    let mut pinned = None;
    for i in 0..200 {
        let mut cl = Client::new(format!("10.7.0.{}", i + 1));
        if cl.get(proxy.addr, "/").await.backend() == "b1" {
            pinned = Some(cl);
            break;
        }
    }
    let mut cl = pinned.expect("some client lands on b1");
    let draining = cfg.replacen(
        &format!("id = \"b1\"\naddress = \"{}\"", a.addr),
        &format!("id = \"b1\"\naddress = \"{}\"\nstate = \"drain\"", a.addr),
        1,
    );
    proxy
        .app
        .load_and_install(tether::config::Config::parse(&draining, "t").unwrap())
        .unwrap();
    for _ in 0..5 {
        let ans = cl.get(proxy.addr, "/").await;
        assert_eq!(
            ans.backend(),
            "b1",
            "pinned session continues on the draining backend"
        );
        assert!(ans.tether_cookie().is_none());
    }
    for i in 0..100 {
        let ans = get(
            proxy.addr,
            "/",
            &[("x-forwarded-for", &format!("10.6.0.{i}"))],
        )
        .await;
        assert_ne!(
            ans.backend(),
            "b1",
            "no new session lands on a draining backend"
        );
    }
    let snap = proxy.app.snapshot();
    let b1 = &snap.pools[0].backends[0];
    assert_eq!(&*b1.id, "b1");
    assert_eq!(
        b1.shared
            .pinned_while_draining
            .load(std::sync::atomic::Ordering::Relaxed),
        5
    );
}

#[tokio::test]
async fn drain_timeout_re_places_pinned_sessions() {
    let (a, b, c) = three().await;
    let cfg = pool_config("", "drain_timeout = \"300ms\"", &[&a, &b, &c]);
    let proxy = Proxy::start(&cfg).await;
    let mut cl = Client::new("10.5.0.1");
    let home = cl.get(proxy.addr, "/").await.backend();
    let home_addr = [&a, &b, &c].iter().find(|x| x.name == home).unwrap().addr;
    let draining = cfg.replacen(
        &format!("address = \"{home_addr}\""),
        &format!("address = \"{home_addr}\"\nstate = \"drain\""),
        1,
    );
    proxy
        .app
        .load_and_install(tether::config::Config::parse(&draining, "t").unwrap())
        .unwrap();
    assert_eq!(cl.get(proxy.addr, "/").await.backend(), home);
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let after = cl.get(proxy.addr, "/").await;
    assert_ne!(
        after.backend(),
        home,
        "after drain_timeout the session is re-placed"
    );
    assert!(after.tether_cookie().is_some());
}

#[tokio::test]
async fn two_instances_with_one_config_give_identical_answers() {
    let (a, b, c) = three().await;
    for pool_extra in [
        "affinity = \"cookie\"\n[pools.app.cookie]\nsecret = \"shared-secret-0123456789\"",
        "affinity = \"ip\"",
        "affinity = \"header\"\nheader = \"X-User-Id\"\nhash = \"ketama\"",
    ] {
        let cfg = pool_config("", pool_extra, &[&a, &b, &c]);
        let one = Proxy::start(&cfg).await;
        let two = Proxy::start(&cfg).await;
        for i in 0..40 {
            let ip = format!("172.16.{}.{}", i / 100, i % 100 + 1);
            let user = format!("u{i}");
            let h = [
                ("x-forwarded-for", ip.as_str()),
                ("x-user-id", user.as_str()),
            ];
            let x = get(one.addr, "/", &h).await;
            let y = get(two.addr, "/", &h).await;
            assert_eq!(
                x.backend(),
                y.backend(),
                "{pool_extra}: new placement differs for {ip}"
            );
            if let Some(cookie) = x.tether_cookie() {
                // A cookie issued by one instance is honoured by the other.
                let with = format!("TETHER={cookie}");
                let z = get(
                    two.addr,
                    "/",
                    &[("cookie", with.as_str()), ("x-forwarded-for", "1.2.3.4")],
                )
                .await;
                assert_eq!(z.backend(), x.backend());
                assert!(z.tether_cookie().is_none(), "a hit on the other instance");
            }
        }
    }
}
