//! `max_conns`, `queue_timeout`, `max_queue`: backends never see more than their limit, pinned
//! requests wait for their own backend, refusals are 503 + Retry-After, and a client that
//! leaves the queue never reaches the backend.

// Test code: a panic on a setup failure is how a test fails (see [lints] in Cargo.toml).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::{Duration, Instant};

use common::{get, Proxy};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An in-process backend that takes `delay` per request and records the most requests it
/// ever had at once, every path it served, and per-session visit counts.
struct Slow {
    name: &'static str,
    addr: SocketAddr,
    now: Arc<AtomicU64>,
    max: Arc<AtomicU64>,
    paths: Arc<Mutex<Vec<String>>>,
    visits: Arc<Mutex<HashMap<String, u64>>>,
}

impl Slow {
    async fn start(name: &'static str, delay: Duration) -> Slow {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let s = Slow {
            name,
            addr,
            now: Arc::default(),
            max: Arc::default(),
            paths: Arc::default(),
            visits: Arc::default(),
        };
        let (now, max, paths, visits) = (
            s.now.clone(),
            s.max.clone(),
            s.paths.clone(),
            s.visits.clone(),
        );
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (now, max, paths, visits) =
                    (now.clone(), max.clone(), paths.clone(), visits.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let (now, max, paths, visits) =
                            (now.clone(), max.clone(), paths.clone(), visits.clone());
                        async move {
                            let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                            max.fetch_max(n, Ordering::SeqCst);
                            paths.lock().push(req.uri().path().to_string());
                            let session = req
                                .headers()
                                .get("x-session")
                                .map(|v| v.to_str().unwrap().to_string())
                                .unwrap_or_default();
                            let count = {
                                let mut v = visits.lock();
                                let c = v.entry(session).or_insert(0);
                                *c += 1;
                                *c
                            };
                            tokio::time::sleep(delay).await;
                            now.fetch_sub(1, Ordering::SeqCst);
                            Ok::<_, std::convert::Infallible>(
                                Response::builder()
                                    .header("x-backend", name)
                                    .body(Full::new(Bytes::from(count.to_string())))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        s
    }

    fn max(&self) -> u64 {
        self.max.load(Ordering::SeqCst)
    }

    fn served(&self, path: &str) -> usize {
        self.paths.lock().iter().filter(|p| *p == path).count()
    }
}

fn config(pool_extra: &str, backends: &[&Slow]) -> String {
    let mut t = format!(
        "[log]\naccess = \"off\"\n[proxy]\ntrusted_proxies = [\"127.0.0.1/32\"]\n\n[pools.app]\n{pool_extra}\n"
    );
    for b in backends {
        t.push_str(&format!(
            "\n[[pools.app.backends]]\nid = \"{}\"\naddress = \"{}\"\n",
            b.name, b.addr
        ));
    }
    t
}

fn queued(proxy: &Proxy, backend: usize) -> u64 {
    let s = tether::admin::status(&proxy.app);
    s["pools"]["app"]["backends"][backend]["queued"]
        .as_u64()
        .unwrap()
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn cookie_of(a: &common::Answer) -> String {
    a.tether_cookie().expect("a new session gets a cookie")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sessions_wait_for_their_own_backend_which_never_exceeds_max_conns() {
    let backends = [
        Slow::start("b1", Duration::from_millis(30)).await,
        Slow::start("b2", Duration::from_millis(30)).await,
        Slow::start("b3", Duration::from_millis(30)).await,
    ];
    let refs: Vec<&Slow> = backends.iter().collect();
    let proxy = Proxy::start(&config(
        "affinity = \"cookie\"\nmax_conns = 1\nqueue_timeout = \"30s\"",
        &refs,
    ))
    .await;
    let addr = proxy.addr;
    // 12 sessions, each placed by its own request first.
    let mut sessions = Vec::new();
    for i in 0..12 {
        let sid = format!("s{i}");
        let ip = format!("10.1.{i}.7");
        let a = get(addr, "/", &[("x-forwarded-for", &ip), ("x-session", &sid)]).await;
        assert_eq!(a.status, 200);
        sessions.push((sid, cookie_of(&a), a.backend()));
    }
    // Then 3 requests per session, all 36 at once.
    let mut tasks = Vec::new();
    for (sid, cookie, home) in &sessions {
        for _ in 0..3 {
            let (sid, cookie, home) = (sid.clone(), cookie.clone(), home.clone());
            tasks.push(tokio::spawn(async move {
                let c = format!("TETHER={cookie}");
                let a = get(addr, "/", &[("cookie", &c), ("x-session", &sid)]).await;
                (a.status, a.backend(), home)
            }));
        }
    }
    for t in tasks {
        let (status, backend, home) = t.await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(
            backend, home,
            "a pinned request is never sent elsewhere for load"
        );
    }
    for b in &backends {
        assert_eq!(b.max(), 1, "{} had more than max_conns at once", b.name);
    }
    // Every session reached its backend exactly 4 times: nothing lost, nothing doubled.
    let mut total = 0;
    for (sid, _, home) in &sessions {
        let b = backends.iter().find(|b| b.name == home).unwrap();
        assert_eq!(b.visits.lock().get(sid), Some(&4), "{sid}");
        total += 1;
    }
    assert_eq!(total, 12);
    let waits = tether::metrics::render(&proxy.app);
    assert!(
        waits.contains("tether_queue_wait_seconds_count{pool=\"app\",backend=\"b"),
        "{waits}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_beyond_max_queue_gets_exactly_the_expected_503s() {
    let b = Slow::start("b1", Duration::from_millis(1500)).await;
    let proxy = Proxy::start(&config(
        "affinity = \"ip\"\nmax_conns = 1\nmax_queue = 2\nqueue_timeout = \"10s\"",
        &[&b],
    ))
    .await;
    let addr = proxy.addr;
    // One in flight first, so the burst meets a full backend.
    let first = tokio::spawn(async move { get(addr, "/first", &[]).await.status });
    until("first request in flight", || b.max() == 1).await;
    let mut tasks = Vec::new();
    for i in 0..10 {
        tasks.push(tokio::spawn(async move {
            let a = get(addr, &format!("/burst{i}"), &[]).await;
            (a.status, a.headers.get("retry-after").cloned())
        }));
    }
    // The two that found room in the queue are visible while they wait.
    until("two queued", || queued(&proxy, 0) == 2).await;
    let metrics = tether::metrics::render(&proxy.app);
    assert!(
        metrics.contains("tether_backend_queue{pool=\"app\",backend=\"b1\"} 2"),
        "{metrics}"
    );
    let mut ok = 0;
    let mut refused = 0;
    for t in tasks {
        match t.await.unwrap() {
            (s, _) if s == 200 => ok += 1,
            (s, Some(retry)) if s == 503 => {
                assert_eq!(retry, "10", "Retry-After is queue_timeout in whole seconds");
                refused += 1;
            }
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert_eq!(first.await.unwrap(), 200);
    assert_eq!((ok, refused), (2, 8));
    assert_eq!(b.max(), 1);
    let shared = proxy.app.snapshot().pools[0].backends[0].shared.clone();
    assert_eq!(shared.queue.rejected(), 8);
    assert_eq!(shared.queue.timeouts(), 0);
    let codes: Vec<(u16, u64)> = shared.stats.statuses().collect();
    assert_eq!(codes, vec![(200, 3), (503, 8)], "each 503 counted once");
    let metrics = tether::metrics::render(&proxy.app);
    assert!(metrics.contains("tether_queue_rejected_total{pool=\"app\",backend=\"b1\"} 8"));
    assert!(metrics.contains("tether_backend_queue{pool=\"app\",backend=\"b1\"} 0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_waits_queue_timeout_gets_503_with_retry_after() {
    let b = Slow::start("b1", Duration::from_millis(1200)).await;
    let proxy = Proxy::start(&config(
        "affinity = \"ip\"\nmax_conns = 1\nqueue_timeout = \"200ms\"",
        &[&b],
    ))
    .await;
    let addr = proxy.addr;
    let first = tokio::spawn(async move { get(addr, "/first", &[]).await.status });
    until("first in flight", || b.max() == 1).await;
    let started = Instant::now();
    let a = get(addr, "/second", &[]).await;
    let waited = started.elapsed();
    assert_eq!(a.status, 503);
    assert_eq!(a.headers["retry-after"], "1", "rounded up to whole seconds");
    assert!(
        waited >= Duration::from_millis(190) && waited < Duration::from_millis(1000),
        "{waited:?}"
    );
    assert_eq!(first.await.unwrap(), 200);
    assert_eq!(b.served("/second"), 0);
    let shared = proxy.app.snapshot().pools[0].backends[0].shared.clone();
    assert_eq!(shared.queue.timeouts(), 1);
    let metrics = tether::metrics::render(&proxy.app);
    assert!(metrics.contains("tether_queue_timeouts_total{pool=\"app\",backend=\"b1\"} 1"));
    assert!(metrics.contains("tether_requests_total{pool=\"app\",backend=\"b1\",code=\"503\"} 1"));
}

/// Sends `raw` on a fresh connection, waits until it is queued, then closes the connection.
async fn queue_and_leave(proxy: &Proxy, raw: &[u8]) {
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(raw).await.unwrap();
    until("queued", || queued(proxy, 0) == 1).await;
    drop(s);
    until("left the queue", || queued(proxy, 0) == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_while_queued_never_reaches_the_backend() {
    let b = Slow::start("b1", Duration::from_millis(600)).await;
    let proxy = Proxy::start(&config(
        "affinity = \"ip\"\nmax_conns = 1\nqueue_timeout = \"30s\"",
        &[&b],
    ))
    .await;
    let addr = proxy.addr;
    let first = tokio::spawn(async move { get(addr, "/first", &[]).await.status });
    until("first in flight", || b.max() == 1).await;
    queue_and_leave(&proxy, b"GET /gone HTTP/1.1\r\nHost: t\r\n\r\n").await;
    // A request with a body, read completely before it queued.
    queue_and_leave(
        &proxy,
        b"POST /gone-post HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await;
    assert_eq!(first.await.unwrap(), 200);
    // The slot is free again and goes to the next request, not to the departed ones.
    let a = get(addr, "/after", &[]).await;
    assert_eq!(a.status, 200);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(b.served("/gone"), 0);
    assert_eq!(b.served("/gone-post"), 0);
    assert_eq!(b.served("/after"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn new_sessions_skip_full_backends_and_ip_keys_wait_for_theirs() {
    let delay = Duration::from_millis(400);
    let (b1, b2) = (
        Slow::start("b1", delay).await,
        Slow::start("b2", delay).await,
    );
    // Cookie mode: two new sessions from the same address (same first candidate) at once.
    let proxy = Proxy::start(&config(
        "affinity = \"cookie\"\nmax_conns = 1\nqueue_timeout = \"10s\"",
        &[&b1, &b2],
    ))
    .await;
    let addr = proxy.addr;
    let started = Instant::now();
    let one = tokio::spawn(async move { get(addr, "/", &[("x-forwarded-for", "10.9.9.9")]).await });
    until("first in flight", || b1.max() + b2.max() == 1).await;
    let two = get(addr, "/", &[("x-forwarded-for", "10.9.9.9")]).await;
    let one = one.await.unwrap();
    assert_eq!((one.status.as_u16(), two.status.as_u16()), (200, 200));
    assert_ne!(
        one.backend(),
        two.backend(),
        "the new session skipped the full backend"
    );
    assert!(started.elapsed() < delay * 2, "{:?}", started.elapsed());
    drop(proxy);

    // ip mode: the key's backend is its pin, so the second request waits for it.
    let proxy = Proxy::start(&config(
        "affinity = \"ip\"\nmax_conns = 1\nqueue_timeout = \"10s\"",
        &[&b1, &b2],
    ))
    .await;
    let addr = proxy.addr;
    let (m1, m2) = (b1.max(), b2.max());
    b1.max.store(0, Ordering::SeqCst);
    b2.max.store(0, Ordering::SeqCst);
    let started = Instant::now();
    let one = tokio::spawn(async move { get(addr, "/", &[("x-forwarded-for", "10.8.8.8")]).await });
    until("first in flight", || b1.max() + b2.max() == 1).await;
    let two = get(addr, "/", &[("x-forwarded-for", "10.8.8.8")]).await;
    let one = one.await.unwrap();
    assert_eq!((one.status.as_u16(), two.status.as_u16()), (200, 200));
    assert_eq!(one.backend(), two.backend());
    assert!(
        started.elapsed() >= delay * 2,
        "the second waited for the first"
    );
    assert_eq!(b1.max().max(b2.max()), 1);
    assert_eq!((m1, m2), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_websocket_holds_its_slot() {
    let b = common::Backend::start("b1").await;
    let proxy = Proxy::start(&common::pool_config(
        "",
        "affinity = \"ip\"\nmax_conns = 1\nqueue_timeout = \"150ms\"",
        &[&b],
    ))
    .await;
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", proxy.addr))
        .await
        .unwrap();
    let a = get(proxy.addr, "/", &[]).await;
    assert_eq!(a.status, 503, "the WebSocket holds the only slot");
    drop(ws);
    let start = Instant::now();
    loop {
        let a = get(proxy.addr, "/", &[]).await;
        if a.status == 200 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "slot never came back"
        );
    }
}

#[tokio::test]
async fn queued_requests_from_a_raw_socket_are_answered_in_order() {
    // Keep-alive connection reuse after a queued request: the connection stays usable.
    let b = Slow::start("b1", Duration::from_millis(50)).await;
    let proxy = Proxy::start(&config(
        "affinity = \"ip\"\nmax_conns = 1\nqueue_timeout = \"5s\"",
        &[&b],
    ))
    .await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET /a HTTP/1.1\r\nHost: t\r\n\r\nGET /b HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.matches("HTTP/1.1 200").count(), 2, "{out}");
    assert_eq!(b.served("/a") + b.served("/b"), 2);
}
