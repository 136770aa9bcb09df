//! `[listen] proxy_protocol`: the PROXY header's source is the client (affinity,
//! X-Forwarded-For), on plain and TLS listeners; bad, late or untrusted headers close the
//! connection without an answer.

// Test code: a panic on a setup failure is how a test fails (see [lints] in Cargo.toml).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LISTEN_PP: &str = "[listen]\nhttp = [\"127.0.0.1:0\"]\nproxy_protocol = true\n";

fn v1(src: &str, port: u16) -> Vec<u8> {
    format!("PROXY TCP4 {src} 127.0.0.1 {port} 80\r\n").into_bytes()
}

fn v2(src: [u8; 4], port: u16, local: bool) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    if local {
        h.extend_from_slice(&[0x20, 0x00, 0, 0]);
        return h;
    }
    h.extend_from_slice(&[0x21, 0x11, 0, 12 + 7]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&[127, 0, 0, 1]);
    h.extend_from_slice(&port.to_be_bytes());
    h.extend_from_slice(&80u16.to_be_bytes());
    // A TLV (AWS NLB sends its VPC endpoint id this way): type 0xEA, 4 bytes.
    h.extend_from_slice(&[0xEA, 0, 4, b'v', b'p', b'c', b'e']);
    h
}

/// Sends `header` then a GET on one connection (header and request in one write, as an LB
/// does); returns the raw response text.
async fn raw_get(addr: SocketAddr, header: &[u8], path: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut msg = header.to_vec();
    msg.extend_from_slice(
        format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    s.write_all(&msg).await.unwrap();
    read_to_close(&mut s).await
}

fn header_of<'a>(raw: &'a str, name: &str) -> Option<&'a str> {
    raw.split("\r\n").find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_header_source_is_the_client_for_affinity_and_forwarded_for() {
    let (b1, b2, b3) = three().await;
    let backends = [&b1, &b2, &b3];
    let pp = Proxy::start(&format!(
        "{LISTEN_PP}{}",
        pool_config("", "affinity = \"ip\"", &backends)
    ))
    .await;
    // The same pool without the PROXY protocol, told the client by a trusted XFF instead:
    // the mapping must be the same.
    let plain = Proxy::start(&pool_config("", "affinity = \"ip\"", &backends)).await;
    let mut seen = std::collections::HashSet::new();
    for i in 0..20u8 {
        let src = format!("198.51.100.{}", i + 1);
        let expected = get(plain.addr, "/", &[("x-forwarded-for", &src)])
            .await
            .backend();
        for header in [
            v1(&src, 40000 + u16::from(i)),
            v2([198, 51, 100, i + 1], 40000, false),
        ] {
            let raw = raw_get(pp.addr, &header, "/").await;
            assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
            assert_eq!(header_of(&raw, "x-backend"), Some(expected.as_str()));
            let xff = header_of(&raw, "x-seen-xff").unwrap();
            assert_eq!(xff.rsplit(',').next().unwrap().trim(), src);
        }
        seen.insert(expected);
    }
    assert!(seen.len() > 1, "20 addresses spread over the pool");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_and_unknown_headers_use_the_peer_address() {
    let b = Backend::start("b1").await;
    let pp = Proxy::start(&format!("{LISTEN_PP}{}", pool_config("", "", &[&b]))).await;
    for header in [v2([0; 4], 0, true), b"PROXY UNKNOWN\r\n".to_vec()] {
        let raw = raw_get(pp.addr, &header, "/").await;
        assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
        assert_eq!(header_of(&raw, "x-seen-xff"), Some("127.0.0.1"));
    }
}

/// Connects, sends `bytes`, and returns what came back before the close and when.
async fn closed_after(addr: SocketAddr, bytes: &[u8]) -> (String, Duration) {
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("the connection is closed");
    (
        String::from_utf8_lossy(&out).into_owned(),
        started.elapsed(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_late_or_untrusted_headers_are_closed_without_an_answer() {
    let b = Backend::start("b1").await;
    let pp = Proxy::start(&format!(
        "{LISTEN_PP}{}",
        pool_config("header_timeout = \"300ms\"", "", &[&b])
    ))
    .await;
    // Not a header at all: closed at once.
    let (out, took) = closed_after(pp.addr, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert_eq!(out, "");
    assert!(took < Duration::from_millis(250), "{took:?}");
    // Half a header, then nothing: closed at header_timeout.
    let (out, took) = closed_after(pp.addr, b"PROXY TCP4 198.51.100.1 ").await;
    assert_eq!(out, "");
    assert!(took >= Duration::from_millis(280), "{took:?}");
    // A header split across writes is fine.
    let mut s = TcpStream::connect(pp.addr).await.unwrap();
    s.write_all(b"PROXY TCP4 198.51.1").await.unwrap();
    tokio::time::sleep(Duration::from_millis(30)).await;
    s.write_all(b"00.9 127.0.0.1 5 80\r\nGET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let raw = read_to_close(&mut s).await;
    assert_eq!(header_of(&raw, "x-seen-xff"), Some("198.51.100.9"), "{raw}");
    assert_eq!(b.hits(), 1, "only the good connection reached the backend");

    // trusted_proxies set and the peer (loopback) outside it.
    let strict = Proxy::start(&format!(
        "{LISTEN_PP}[log]\naccess = \"off\"\n[proxy]\ntrusted_proxies = [\"10.0.0.0/8\"]\n[pools.app]\n[[pools.app.backends]]\nid = \"b1\"\naddress = \"{}\"\n",
        b.addr
    ))
    .await;
    let mut msg = v1("198.51.100.1", 1);
    msg.extend_from_slice(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    let (out, _) = closed_after(strict.addr, &msg).await;
    assert_eq!(out, "");
    assert_eq!(b.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_https_listeners_the_header_comes_before_tls() {
    let b = Backend::start("b1").await;
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dir = config_file("").parent().unwrap().to_path_buf();
    let (cert, key) = (dir.join("pp-cert.pem"), dir.join("pp-key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let proxy = Proxy::start(&format!(
        "[listen]\nhttps = [\"127.0.0.1:0\"]\nproxy_protocol = true\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n{}",
        cert.display(),
        key.display(),
        pool_config("", "", &[&b])
    ))
    .await;
    let addr = proxy.tls_addr.unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ck.cert.der().clone()).unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(&v2([203, 0, 113, 50], 1234, false))
        .await
        .unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    tls.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out).await;
    let raw = String::from_utf8_lossy(&out);
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert_eq!(header_of(&raw, "x-seen-xff"), Some("203.0.113.50"));
    assert_eq!(header_of(&raw, "x-seen-proto"), Some("https"));
}
