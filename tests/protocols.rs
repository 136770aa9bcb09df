//! Protocol behaviour through the proxy: h2c, WebSocket, streaming bodies with flat memory,
//! server-sent events, host routing, error statuses, retries, header limits.
// Test code: a panic on a setup failure is how a test fails (see [lints] in Cargo.toml).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{header, Request};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_client_streams_stick_to_one_backend() {
    let (a, b, c) = (
        Backend::start("b1").await,
        Backend::start("b2").await,
        Backend::start("b3").await,
    );
    let proxy = Proxy::start(&pool_config("", "", &[&a, &b, &c])).await;
    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let send = |mut s: hyper::client::conn::http2::SendRequest<Body>, cookie: Option<String>| async move {
        let mut b = Request::get("http://test.local/").header("x-forwarded-for", "10.0.0.1");
        if let Some(c) = cookie {
            b = b.header(header::COOKIE, format!("TETHER={c}"));
        }
        let res = s.send_request(b.body(empty()).unwrap()).await.unwrap();
        assert_eq!(res.version(), http::Version::HTTP_2);
        let backend = res
            .headers()
            .get("x-backend")
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        let cookie = res
            .headers()
            .get("set-cookie")
            .map(|v| v.to_str().unwrap().to_string());
        (backend, cookie)
    };
    let (first, set) = send(sender.clone(), None).await;
    let cookie = set
        .unwrap()
        .strip_prefix("TETHER=")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    // 50 concurrent streams on the same connection, all carrying the cookie.
    let mut tasks = Vec::new();
    for _ in 0..50 {
        tasks.push(tokio::spawn(send(sender.clone(), Some(cookie.clone()))));
    }
    for t in tasks {
        let (backend, set) = t.await.unwrap();
        assert_eq!(backend, first);
        assert!(set.is_none());
    }
}

#[tokio::test]
async fn websocket_is_tunnelled_to_the_pinned_backend() {
    let (a, b, c) = (
        Backend::start("b1").await,
        Backend::start("b2").await,
        Backend::start("b3").await,
    );
    let proxy = Proxy::start(&pool_config("", "", &[&a, &b, &c])).await;
    for i in 0..6 {
        let mut client = Client::new(format!("10.3.0.{}", i * 40 + 1));
        let pinned = client.get(proxy.addr, "/").await.backend();
        let mut req = format!("ws://{}/ws", proxy.addr)
            .into_client_request()
            .unwrap();
        req.headers_mut().insert(
            "cookie",
            format!("TETHER={}", client.cookie.clone().unwrap())
                .parse()
                .unwrap(),
        );
        let (mut ws, res) = tokio_tungstenite::connect_async(req).await.unwrap();
        assert_eq!(res.status(), 101);
        for n in 0..3 {
            ws.send(Message::text(format!("hello {n}"))).await.unwrap();
            let reply = ws.next().await.unwrap().unwrap();
            assert_eq!(
                reply.into_text().unwrap().as_str(),
                format!("{pinned}:hello {n}")
            );
        }
        ws.close(None).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_megabytes_stream_both_ways_with_flat_memory() {
    const SIZE: u64 = 50 * 1024 * 1024;
    let a = Backend::start("b1").await;
    let proxy = Proxy::start(&pool_config("", "", &[&a])).await;
    // Warm up allocations, then measure.
    let _ = request(
        proxy.addr,
        Request::post("/upload")
            .header("host", "t")
            .body(generated(1 << 20))
            .unwrap(),
    )
    .await;
    let before = rss_kib();

    let up = request(
        proxy.addr,
        Request::post("/upload")
            .header("host", "t")
            .body(generated(SIZE))
            .unwrap(),
    )
    .await;
    assert_eq!(up.status, 200);
    assert_eq!(up.text(), SIZE.to_string());

    // Download without collecting: count bytes as they arrive.
    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let res = sender
        .send_request(
            Request::get(format!("/download?n={SIZE}"))
                .header("host", "t")
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let mut body = res.into_body();
    let mut got = 0u64;
    while let Some(frame) = body.frame().await {
        got += frame
            .unwrap()
            .into_data()
            .map(|d: Bytes| d.len() as u64)
            .unwrap_or(0);
    }
    assert_eq!(got, SIZE);
    let grown_mib = rss_kib().saturating_sub(before) / 1024;
    assert!(
        grown_mib < 25,
        "memory grew by {grown_mib} MiB while streaming 2 × 50 MiB"
    );
}

#[tokio::test]
async fn server_sent_events_arrive_before_the_response_ends() {
    let a = Backend::start("b1").await;
    let proxy = Proxy::start(&pool_config("", "", &[&a])).await;
    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let res = sender
        .send_request(
            Request::get("/sse")
                .header("host", "t")
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let mut body = res.into_body();
    let first = tokio::time::timeout(Duration::from_secs(2), body.frame())
        .await
        .expect("first event streamed at once");
    assert_eq!(
        first.unwrap().unwrap().into_data().unwrap(),
        "data: first\n\n"
    );
    // Only now may the backend send the second event.
    a.sse_gate.notify_one();
    let second = tokio::time::timeout(Duration::from_secs(2), body.frame())
        .await
        .unwrap();
    assert_eq!(
        second.unwrap().unwrap().into_data().unwrap(),
        "data: second\n\n"
    );
}

#[tokio::test]
async fn routes_pick_pools_by_host_and_path() {
    let (shop, api, wild, fallback) = (
        Backend::start("shop").await,
        Backend::start("api").await,
        Backend::start("wild").await,
        Backend::start("fallback").await,
    );
    let cfg = format!(
        r#"
[[routes]]
host = "shop.example.com"
pool = "shop"
[[routes]]
host = "shop.example.com"
path_prefix = "/api/"
pool = "api"
[[routes]]
host = "*.example.org"
pool = "wild"
[[routes]]
pool = "fallback"

[pools.shop]
[[pools.shop.backends]]
address = "{}"
[pools.api]
affinity = "ip"
[[pools.api.backends]]
address = "{}"
[pools.wild]
[[pools.wild.backends]]
address = "{}"
[pools.fallback]
[[pools.fallback.backends]]
address = "{}"
"#,
        shop.addr, api.addr, wild.addr, fallback.addr
    );
    let proxy = Proxy::start(&cfg).await;
    let route = |host: &'static str, path: &'static str| {
        let addr = proxy.addr;
        async move {
            let req = Request::get(path)
                .header("host", host)
                .body(empty())
                .unwrap();
            request(addr, req).await.backend()
        }
    };
    assert_eq!(route("shop.example.com", "/").await, "shop");
    assert_eq!(route("SHOP.example.com:8080", "/cart").await, "shop");
    assert_eq!(route("shop.example.com", "/api/v1").await, "api");
    assert_eq!(route("a.b.example.org", "/").await, "wild");
    assert_eq!(route("example.org", "/").await, "fallback");
    assert_eq!(route("other.test", "/api/").await, "fallback");
    // The backend sees the original host and the forwarding headers.
    let a = request(
        proxy.addr,
        Request::get("/")
            .header("host", "shop.example.com")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(
        a.headers.get("x-seen-host-header").unwrap(),
        "shop.example.com"
    );
    assert_eq!(a.headers.get("x-seen-host").unwrap(), "shop.example.com");
    assert_eq!(a.headers.get("x-seen-proto").unwrap(), "http");
    assert_eq!(a.headers.get("x-seen-xff").unwrap(), "127.0.0.1");
}

#[tokio::test]
async fn unmatched_route_is_404() {
    let a = Backend::start("a").await;
    let cfg = format!("[[routes]]\nhost = \"only.test\"\npool = \"p\"\n[pools.p]\n[[pools.p.backends]]\naddress = \"{}\"\n", a.addr);
    let proxy = Proxy::start(&cfg).await;
    let ans = get(proxy.addr, "/", &[]).await;
    assert_eq!(ans.status, 404);
}

/// An address nothing listens on.
async fn dead_address() -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

#[tokio::test]
async fn refused_backend_is_502_without_revealing_its_address() {
    let dead = dead_address().await;
    let cfg =
        format!("[proxy]\nretries = 0\n[pools.p]\n[[pools.p.backends]]\naddress = \"{dead}\"\n");
    let proxy = Proxy::start(&cfg).await;
    let ans = get(proxy.addr, "/", &[]).await;
    assert_eq!(ans.status, 502);
    assert!(
        !ans.text().contains(&dead.port().to_string()),
        "{}",
        ans.text()
    );
    assert!(!ans.text().contains("127.0.0.1"));
    assert_eq!(
        ans.headers.get("content-type").unwrap(),
        "text/plain; charset=utf-8"
    );
}

#[tokio::test]
async fn slow_backend_is_504() {
    let a = Backend::start("slow").await;
    let proxy = Proxy::start(&pool_config("response_timeout = \"300ms\"", "", &[&a])).await;
    let t = std::time::Instant::now();
    let ans = get(proxy.addr, "/slow", &[]).await;
    assert_eq!(ans.status, 504);
    assert!(t.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn connect_failure_is_retried_on_another_backend_and_the_session_moves() {
    let live = Backend::start("live").await;
    let dead = dead_address().await;
    let cfg = format!(
        "[proxy]\ntrusted_proxies = [\"127.0.0.1/32\"]\nretries = 1\n[pools.app]\n[[pools.app.backends]]\nid = \"dead\"\naddress = \"{dead}\"\n[[pools.app.backends]]\nid = \"live\"\naddress = \"{}\"\n",
        live.addr
    );
    let proxy = Proxy::start(&cfg).await;
    let mut saw_retry = false;
    for i in 0..40 {
        // POST with a body: the body survives the failed connect.
        let req = Request::post("/upload")
            .header("host", "t")
            .header("x-forwarded-for", format!("10.2.0.{i}"))
            .body(full("twelve bytes"))
            .unwrap();
        let ans = request(proxy.addr, req).await;
        assert_eq!(ans.status, 200, "client {i}");
        assert_eq!(ans.text(), "12");
        let cookie = ans.tether_cookie().unwrap();
        // Whatever the first choice was, the cookie now names the live backend.
        let again = get(proxy.addr, "/", &[("cookie", &format!("TETHER={cookie}"))]).await;
        assert_eq!(again.backend(), "live");
        assert!(again.tether_cookie().is_none());
        saw_retry |= proxy.app.snapshot().pools[0].backends[0]
            .shared
            .requests
            .load(std::sync::atomic::Ordering::Relaxed)
            == 0;
    }
    assert!(saw_retry);
}

#[tokio::test]
async fn all_backends_down_is_503_with_retry_after() {
    let cfg = "[pools.p]\n[[pools.p.backends]]\naddress = \"127.0.0.1:9\"\nstate = \"disabled\"\n";
    let proxy = Proxy::start(cfg).await;
    let ans = get(proxy.addr, "/", &[]).await;
    assert_eq!(ans.status, 503);
    assert!(ans.headers.contains_key("retry-after"));
}

#[tokio::test]
async fn oversized_request_head_is_431() {
    let a = Backend::start("a").await;
    let proxy = Proxy::start(&pool_config("max_header_bytes = 16384", "", &[&a])).await;
    let big = "y".repeat(20_000);
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(format!("GET / HTTP/1.1\r\nHost: t\r\nX-Big: {big}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = vec![0u8; 256];
    let n = s.read(&mut buf).await.unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 431"), "{head}");
    // A normal request still works.
    assert_eq!(get(proxy.addr, "/", &[]).await.status, 200);
}

#[tokio::test]
async fn slow_request_head_is_cut_at_header_timeout() {
    let a = Backend::start("a").await;
    let proxy = Proxy::start(&pool_config("header_timeout = \"300ms\"", "", &[&a])).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n").await.unwrap();
    let t = std::time::Instant::now();
    let mut buf = vec![0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
        .await
        .expect("closed in time")
        .unwrap_or(0);
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(n == 0 || head.starts_with("HTTP/1.1 408"), "{head}");
    assert!(t.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn hop_by_hop_headers_do_not_reach_the_backend() {
    let a = Backend::start("a").await;
    let proxy = Proxy::start(&pool_config("", "", &[&a])).await;
    let ans = get(
        proxy.addr,
        "/",
        &[
            ("connection", "keep-alive, x-private"),
            ("x-private", "secret"),
            ("keep-alive", "timeout=5"),
        ],
    )
    .await;
    assert_eq!(ans.status, 200);
    assert!(ans.headers.get("x-seen-connection").is_none());
    assert!(
        ans.headers.get("x-seen-private").is_none(),
        "a header named by Connection is hop-by-hop"
    );
    assert!(ans.headers.get("x-seen-keep-alive").is_none());
}

#[tokio::test]
async fn shutdown_finishes_in_flight_requests() {
    let a = Backend::start("slow").await;
    let proxy = Proxy::start(&pool_config("shutdown_timeout = \"10s\"", "", &[&a])).await;
    let addr = proxy.addr;
    let in_flight = tokio::spawn(async move { get(addr, "/slow", &[]).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = std::time::Instant::now();
    proxy.shutdown().await;
    let ans = in_flight.await.unwrap();
    assert_eq!(
        ans.status, 200,
        "the request that started before shutdown finished"
    );
    assert!(t.elapsed() < Duration::from_secs(8));
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test]
async fn backend_connections_are_kept_alive_and_reused() {
    let a = Backend::start("a").await;
    let proxy = Proxy::start(&pool_config("", "", &[&a])).await;
    let mut client = KeepAlive::connect(proxy.addr).await;
    for _ in 0..50 {
        // A body with Content-Length: hyper stops polling it once written, and the
        // connection must still go back to the pool.
        let ans = client.get("/", &[]).await.unwrap();
        assert_eq!(ans.status, 200);
        let ans = client.get("/download?n=70000", &[]).await.unwrap();
        assert_eq!(ans.body.len(), 70000);
    }
    let n = a.accepted.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        n <= 2,
        "100 sequential requests opened {n} backend connections"
    );
}

#[tokio::test]
async fn idle_backend_connections_are_swept() {
    let mut a = Backend::start("a").await;
    let proxy = Proxy::start(&pool_config("", "", &[&a])).await;
    assert_eq!(get(proxy.addr, "/", &[]).await.status, 200);
    let shared = proxy.app.snapshot().pools[0].backends[0].shared.clone();
    assert_eq!(shared.conns.idle_count(), 1, "kept for reuse");
    shared.conns.sweep();
    assert_eq!(
        shared.conns.idle_count(),
        1,
        "young connections survive a sweep"
    );
    // The backend closes it: the sweep drops it (and its file descriptor).
    a.kill();
    tokio::time::sleep(Duration::from_millis(100)).await;
    shared.conns.sweep();
    assert_eq!(shared.conns.idle_count(), 0);
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let a = Backend::start("a").await;
    let proxy = Proxy::start(&pool_config("", "", &[&a])).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(
        b"GET /status?code=201 HTTP/1.1\r\nHost: t\r\n\r\nGET /status?code=202 HTTP/1.1\r\nHost: t\r\n\r\nGET /status?code=203 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let got = read_to_close(&mut s).await;
    let statuses: Vec<&str> = got
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &got[i + 9..i + 12])
        .collect();
    assert_eq!(statuses, ["201", "202", "203"], "{got}");
    assert_eq!(a.hits(), 3);
}

#[tokio::test]
async fn expect_continue_gets_a_100_before_the_body_is_sent() {
    let a = Backend::start("a").await;
    let proxy = Proxy::start(&pool_config("", "", &[&a])).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
        .await
        .expect("an interim answer")
        .unwrap();
    assert_eq!(&buf[..n], b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(b"hello world").await.unwrap();
    let got = read_to_close(&mut s).await;
    assert!(
        got.starts_with("HTTP/1.1 200 OK\r\n") && got.ends_with("\r\n\r\n11"),
        "{got}"
    );
}

#[tokio::test]
async fn http_1_0_clients_get_a_closed_connection_or_keep_alive_when_asked() {
    let a = Backend::start("a").await;
    let proxy = Proxy::start(&pool_config("", "", &[&a])).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let got = read_to_close(&mut s).await;
    assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
    assert!(
        got.contains("\r\nconnection: close\r\n") && got.ends_with("\r\n\r\na"),
        "{got}"
    );

    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    let got = String::from_utf8_lossy(&buf[..n]);
    assert!(got.contains("\r\nconnection: keep-alive\r\n"), "{got}");
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    assert!(
        read_to_close(&mut s).await.starts_with("HTTP/1.1 200"),
        "the connection stayed open"
    );
}

#[tokio::test]
async fn chunked_uploads_arrive_whole() {
    let a = Backend::start("a").await;
    let proxy = Proxy::start(&pool_config("", "", &[&a])).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.write_all(b"6;x=y\r\n world\r\n0\r\n\r\n").await.unwrap();
    let got = read_to_close(&mut s).await;
    assert!(
        got.starts_with("HTTP/1.1 200") && got.ends_with("11"),
        "{got}"
    );
}

#[tokio::test]
async fn keep_alive_waits_idle_timeout_between_requests_not_header_timeout() {
    let a = Backend::start("a").await;
    // A long idle allowance with a short header allowance: a client may pause between
    // requests for longer than header_timeout.
    let proxy = Proxy::start(&pool_config(
        "idle_timeout = \"5s\"\nheader_timeout = \"300ms\"",
        "",
        &[&a],
    ))
    .await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let mut buf = vec![0u8; 4096];
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    assert!(s.read(&mut buf).await.unwrap() > 0);
    tokio::time::sleep(Duration::from_millis(800)).await;
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    assert!(read_to_close(&mut s).await.starts_with("HTTP/1.1 200"));

    // And an idle connection is closed at idle_timeout.
    let proxy = Proxy::start(&pool_config(
        "idle_timeout = \"300ms\"\nheader_timeout = \"5s\"",
        "",
        &[&a],
    ))
    .await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    assert!(s.read(&mut buf).await.unwrap() > 0);
    let t = std::time::Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
        .await
        .expect("closed by the proxy")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
}
