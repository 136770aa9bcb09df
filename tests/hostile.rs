//! Hostile clients and backends: slow or malformed requests, smuggling attempts, clients
//! that vanish, backends that stall, truncate, babble or flood; plus shutdown under load.
// Test code: a panic on a setup failure is how a test fails (see [lints] in Cargo.toml).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

use common::*;

/// Sends raw bytes, returns what comes back until the peer closes or 3 s pass.
async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    read_to_close(&mut s).await
}

/// A backend that answers every connection with `reply` (raw bytes), then behaves per `then`.
async fn raw_backend(reply: Vec<u8>, close_after: bool) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            let reply = reply.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(&reply).await;
                if close_after {
                    let _ = s.shutdown().await;
                } else {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }
            });
        }
    });
    addr
}

fn single(addr: SocketAddr, proxy_extra: &str) -> String {
    format!("[log]\naccess = \"off\"\n[proxy]\nretries = 0\n{proxy_extra}\n[pools.p]\n[[pools.p.backends]]\nid = \"b\"\naddress = \"{addr}\"\n")
}

#[tokio::test]
async fn a_client_trickling_its_head_byte_by_byte_is_cut_at_header_timeout() {
    let a = Backend::start("a").await;
    let proxy = Proxy::start(&pool_config("header_timeout = \"500ms\"", "", &[&a])).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let start = Instant::now();
    let head = b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let mut cut = false;
    for b in head {
        if s.write_all(&[*b]).await.is_err() {
            cut = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        if start.elapsed() > Duration::from_secs(2) {
            break;
        }
    }
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
        .await
        .map(|r| r.unwrap_or(0))
        .unwrap_or(0);
    let got = String::from_utf8_lossy(&buf[..n]);
    assert!(cut || n == 0 || got.starts_with("HTTP/1.1 408"), "{got}");
    assert!(
        start.elapsed() < Duration::from_millis(2500),
        "cut late: {:?}",
        start.elapsed()
    );
    assert_eq!(a.hits(), 0);
}

#[tokio::test]
async fn invalid_requests_get_400_and_never_reach_a_backend() {
    let a = Backend::start("a").await;
    let proxy = Proxy::start(&pool_config("", "", &[&a])).await;
    for bad in [
        &b"GE\x01T / HTTP/1.1\r\nHost: t\r\n\r\n"[..],
        b"GET /\x7fpath HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET / HTTP/9.9\r\nHost: t\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    ] {
        let got = raw(proxy.addr, bad).await;
        assert!(
            got.is_empty() || got.starts_with("HTTP/1.1 400"),
            "{bad:?} -> {got}"
        );
    }
    assert_eq!(a.hits(), 0);
}

#[tokio::test]
async fn request_smuggling_attempts_are_rejected_or_normalised() {
    let a = Backend::start("a").await;
    let proxy = Proxy::start(&pool_config("", "", &[&a])).await;
    // Conflicting Content-Length values.
    let got = raw(
        proxy.addr,
        b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 400"), "{got}");
    // Content-Length with Transfer-Encoding: either refused, or forwarded with one framing
    // only (the chunked body, 5 bytes) — never both headers to the backend.
    let got = raw(
        proxy.addr,
        b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n",
    )
    .await;
    assert!(
        got.starts_with("HTTP/1.1 400")
            || (got.starts_with("HTTP/1.1 200") && got.ends_with("\r\n\r\n5")),
        "{got}"
    );
    // Obfuscated Transfer-Encoding is not chunked framing.
    let got = raw(
        proxy.addr,
        b"POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: xchunked\r\n\r\n",
    )
    .await;
    assert!(
        got.starts_with("HTTP/1.1 400") || got.starts_with("HTTP/1.1 501"),
        "{got}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_vanishing_mid_transfer_release_the_backend() {
    let a = Backend::start("a").await;
    let proxy = Proxy::start(&pool_config("", "", &[&a])).await;
    // Mid-upload: announce 10 MB, send 64 KiB, vanish.
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 10000000\r\n\r\n")
        .await
        .unwrap();
    s.write_all(&[b'x'; 65536]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(s);
    // Mid-download: ask for 50 MB, read a little, vanish.
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET /download?n=50000000 HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 65536];
    let _ = s.read(&mut buf).await;
    drop(s);
    let shared = proxy.app.snapshot().pools[0].backends[0].shared.clone();
    let t = Instant::now();
    while shared.in_flight() != 0 {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "in-flight stuck at {}",
            shared.in_flight()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(get(proxy.addr, "/", &[]).await.status, 200);
}

#[tokio::test]
async fn max_connections_refuses_cleanly_and_recovers() {
    let a = Backend::start("a").await;
    let proxy = Proxy::start(&pool_config("max_connections = 3", "", &[&a])).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(KeepAlive::connect(proxy.addr).await);
    }
    for h in held.iter_mut() {
        assert_eq!(h.get("/", &[]).await.unwrap().status, 200);
    }
    let got = raw(proxy.addr, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert!(
        got.starts_with("HTTP/1.1 503") && got.contains("Retry-After: 1"),
        "{got}"
    );
    drop(held);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(get(proxy.addr, "/", &[]).await.status, 200);
}

#[tokio::test]
async fn a_backend_that_never_answers_gives_504() {
    let silent = raw_backend(Vec::new(), false).await;
    let proxy = Proxy::start(&single(silent, "response_timeout = \"300ms\"")).await;
    let t = Instant::now();
    assert_eq!(get(proxy.addr, "/", &[]).await.status, 504);
    assert!(t.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn a_backend_closing_mid_response_truncates_without_hanging() {
    let b = raw_backend(
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nonly ten b".to_vec(),
        true,
    )
    .await;
    let proxy = Proxy::start(&single(b, "")).await;
    let t = Instant::now();
    let got = raw(proxy.addr, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(
        got.ends_with("only ten b"),
        "truncated body passed on: {got}"
    );
    assert!(t.elapsed() < Duration::from_secs(2), "client left hanging");
}

#[tokio::test]
async fn interim_responses_are_relayed_and_chunked_bodies_decoded() {
    let b = raw_backend(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 Fine Thanks\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5;ext=x\r\nhello\r\n7\r\n, world\r\n0\r\nX-Trailer: t\r\n\r\n"
            .to_vec(),
        true,
    )
    .await;
    let proxy = Proxy::start(&single(b, "")).await;
    let res = get(proxy.addr, "/", &[]).await;
    assert_eq!(res.status, 200);
    assert_eq!(res.text(), "hello, world");
    let got = raw(
        proxy.addr,
        b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    // RFC 9110 §15.2: interim responses go to HTTP/1.1 clients, in order, before the final.
    assert!(
        got.starts_with(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\nHTTP/1.1 200 Fine Thanks\r\n"
        ),
        "{got}"
    );
}

#[tokio::test]
async fn garbage_and_huge_headers_from_a_backend_are_502() {
    let garbage = raw_backend(b"NOT HTTP AT ALL\r\n\r\n".to_vec(), true).await;
    let proxy = Proxy::start(&single(garbage, "")).await;
    assert_eq!(get(proxy.addr, "/", &[]).await.status, 502);

    let mut huge = b"HTTP/1.1 200 OK\r\nX-Huge: ".to_vec();
    huge.extend(std::iter::repeat_n(b'h', 2 * 1024 * 1024));
    huge.extend_from_slice(b"\r\nContent-Length: 0\r\n\r\n");
    let flood = raw_backend(huge, true).await;
    let proxy = Proxy::start(&single(flood, "")).await;
    let before = rss_kib();
    for _ in 0..5 {
        assert_eq!(get(proxy.addr, "/", &[]).await.status, 502);
    }
    assert!(
        rss_kib().saturating_sub(before) < 64 * 1024,
        "memory grew on huge backend headers"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_under_load_finishes_started_requests_and_closes_websockets_cleanly() {
    let (a, b, c) = three().await;
    let proxy = Proxy::start(&pool_config("shutdown_timeout = \"4s\"", "", &[&a, &b, &c])).await;
    let addr = proxy.addr;
    // 30 slow requests (3 s each) in flight, and a WebSocket.
    let mut slow = Vec::new();
    for i in 0..30 {
        slow.push(tokio::spawn(async move {
            get(
                addr,
                "/slow",
                &[("x-forwarded-for", &format!("10.4.0.{i}"))],
            )
            .await
            .status
        }));
    }
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .unwrap();
    ws.send(Message::text("hi")).await.unwrap();
    assert!(ws.next().await.unwrap().is_ok());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    let stop = tokio::spawn(proxy.shutdown());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "new connections are refused during shutdown"
    );
    for s in slow {
        assert_eq!(
            s.await.unwrap(),
            200,
            "a request started before shutdown failed"
        );
    }
    // The WebSocket gets a proper close frame (1001 going away) at the deadline.
    let msg = tokio::time::timeout(Duration::from_secs(6), ws.next())
        .await
        .expect("closed by the deadline");
    match msg {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(u16::from(frame.code), 1001),
        other => panic!("expected a close frame, got {other:?}"),
    }
    stop.await.unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(6),
        "shutdown took {:?}",
        t.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_when_the_last_websocket_closes_before_the_deadline() {
    let (a, b, c) = three().await;
    let proxy = Proxy::start(&pool_config(
        "shutdown_timeout = \"20s\"",
        "",
        &[&a, &b, &c],
    ))
    .await;
    let addr = proxy.addr;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .unwrap();
    ws.send(Message::text("hi")).await.unwrap();
    assert!(ws.next().await.unwrap().is_ok());
    let stop = tokio::spawn(proxy.shutdown());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!stop.is_finished(), "shutdown waits for the open WebSocket");
    // The client says goodbye; once the tunnel is gone shutdown is done, long before 20 s.
    let t = Instant::now();
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
    drop(ws);
    tokio::time::timeout(Duration::from_secs(3), stop)
        .await
        .expect("shutdown ended when the last WebSocket closed")
        .unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "took {:?}",
        t.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_idle_connections_do_not_stop_new_clients() {
    // The proxy runs as its own process (file descriptors: 10,000 on each side); raise the
    // soft limit to what the machine allows, for this process and the child.
    let limit = rlimit::increase_nofile_limit(20_000).unwrap_or(0);
    assert!(
        limit >= 10_500,
        "need ~10,500 file descriptors, the limit is {limit}"
    );
    let a = Backend::start("a").await;
    let http = free_addr();
    let cfg = config_file(&format!("[listen]\nhttp = [\"{http}\"]\n[log]\naccess = \"off\"\n[proxy]\nheader_timeout = \"60s\"\nidle_timeout = \"60s\"\n[pools.p]\n[[pools.p.backends]]\naddress = \"{}\"\n", a.addr));
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["run", "-c", cfg.to_str().unwrap(), "--threads", "1"])
        .env("RUST_LOG", "off")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_listening(http).await;
    let mut idle = Vec::with_capacity(10_000);
    for _ in 0..10_000 {
        match TcpStream::connect(http).await {
            Ok(s) => idle.push(s),
            Err(e) => panic!("connection {} refused: {e}", idle.len()),
        }
    }
    let t = Instant::now();
    let ans = get(http, "/", &[]).await;
    assert_eq!(ans.status, 200);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "a new client waited {:?}",
        t.elapsed()
    );
    drop(idle);
    drop(child);
}
