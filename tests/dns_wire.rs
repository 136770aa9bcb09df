//! The hickory-resolver path against a small DNS server on 127.0.0.1 (UDP): A and SRV
//! answers become backends, NXDOMAIN is "empty", SERVFAIL and a dead server are errors; and
//! `tether check` resolves once and prints, with a failure only a warning.
// Test code: a panic on a setup failure is how a test fails (see [lints] in Cargo.toml).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use hickory_resolver::proto::op::{Message, MessageType, ResponseCode};
use hickory_resolver::proto::rr::rdata::{A, SRV};
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use tether::config::{DiscoverConfig, DiscoverQuery};
use tether::discovery::resolve::{resolve, Hickory, LookupError};

/// Answers `app.test` (A: 127.0.0.2, 127.0.0.3), `_http._tcp.app.test` (SRV: two targets
/// at priority 1, one backup at 2) and the targets' A records; NXDOMAIN for anything else;
/// SERVFAIL for everything while `fail` is set.
fn dns_server() -> (SocketAddr, Arc<AtomicBool>) {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap();
    let fail = Arc::new(AtomicBool::new(false));
    let f = fail.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        loop {
            let Ok((n, peer)) = sock.recv_from(&mut buf) else {
                return;
            };
            let Ok(q) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut r = Message::new();
            r.set_id(q.id())
                .set_message_type(MessageType::Response)
                .set_recursion_desired(q.recursion_desired())
                .set_recursion_available(true)
                .set_authoritative(true);
            for query in q.queries() {
                r.add_query(query.clone());
            }
            let Some(query) = q.queries().first() else {
                continue;
            };
            let name = query.name().to_ascii().to_ascii_lowercase();
            let a = |ip: [u8; 4]| {
                Record::from_rdata(query.name().clone(), 0, RData::A(A(Ipv4Addr::from(ip))))
            };
            let srv = |prio, weight, port, target: &str| {
                let t = Name::from_ascii(target).unwrap();
                Record::from_rdata(
                    query.name().clone(),
                    0,
                    RData::SRV(SRV::new(prio, weight, port, t)),
                )
            };
            let qt = query.query_type();
            if f.load(Ordering::Relaxed) {
                r.set_response_code(ResponseCode::ServFail);
            } else {
                match (name.as_str(), qt) {
                    ("app.test.", RecordType::A) => {
                        r.add_answer(a([127, 0, 0, 2]));
                        r.add_answer(a([127, 0, 0, 3]));
                    }
                    ("node-1.app.test.", RecordType::A) => {
                        r.add_answer(a([127, 0, 0, 4]));
                    }
                    ("node-2.app.test.", RecordType::A) => {
                        r.add_answer(a([127, 0, 0, 5]));
                    }
                    ("_http._tcp.app.test.", RecordType::SRV) => {
                        r.add_answer(srv(1, 10, 8081, "node-1.app.test."));
                        r.add_answer(srv(1, 20, 8082, "node-2.app.test."));
                        r.add_answer(srv(2, 1, 8083, "backup.app.test."));
                    }
                    // Known names without records of the type asked: NODATA.
                    ("app.test." | "node-1.app.test." | "node-2.app.test.", _) => {}
                    _ => {
                        r.set_response_code(ResponseCode::NXDomain);
                    }
                }
            }
            if let Ok(bytes) = r.to_vec() {
                let _ = sock.send_to(&bytes, peer);
            }
        }
    });
    (addr, fail)
}

fn entry(query: DiscoverQuery, resolver: SocketAddr) -> DiscoverConfig {
    DiscoverConfig {
        name: format!("dns:{}", query.name()),
        query,
        interval: std::time::Duration::from_secs(1),
        hold: std::time::Duration::from_secs(30),
        resolver: Some(vec![resolver]),
        weight: 1,
        tls: None,
        max_conns: None,
    }
}

#[tokio::test]
async fn hickory_turns_real_answers_into_backends_and_tells_empty_from_failed() {
    let (addr, fail) = dns_server();
    let h = Hickory::new(Some(&[addr])).unwrap();
    let a = entry(
        DiscoverQuery::Host {
            name: "app.test".into(),
            port: 8080,
        },
        addr,
    );
    let found = resolve(&h, &a).await.unwrap();
    let ids: Vec<&str> = found.iter().map(|f| f.id.as_str()).collect();
    assert_eq!(ids, ["127.0.0.2:8080", "127.0.0.3:8080"]);

    let s = entry(
        DiscoverQuery::Srv {
            name: "_http._tcp.app.test".into(),
        },
        addr,
    );
    let found = resolve(&h, &s).await.unwrap();
    let got: Vec<(&str, &str, u32, &str)> = found
        .iter()
        .map(|f| {
            (
                f.id.as_str(),
                f.address.as_str(),
                f.weight,
                f.route.as_str(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("node-1.app.test:8081", "127.0.0.4:8081", 10, "node-1"),
            ("node-2.app.test:8082", "127.0.0.5:8082", 20, "node-2"),
        ]
    );

    let missing = entry(
        DiscoverQuery::Host {
            name: "gone.test".into(),
            port: 80,
        },
        addr,
    );
    assert_eq!(resolve(&h, &missing).await, Err(LookupError::Empty));

    fail.store(true, Ordering::Relaxed);
    let r = resolve(&h, &a).await;
    assert!(matches!(r, Err(LookupError::Failed(_))), "{r:?}");

    // Nothing listens: an error, not an empty pool.
    let dead = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let h = Hickory::new(Some(&[dead])).unwrap();
    let r = resolve(
        &h,
        &entry(
            DiscoverQuery::Host {
                name: "app.test".into(),
                port: 80,
            },
            dead,
        ),
    )
    .await;
    assert!(matches!(r, Err(LookupError::Failed(_))), "{r:?}");
}

fn tether_check(text: &str) -> (i32, String) {
    let dir = std::env::temp_dir().join(format!("tether-dns-wire-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{}.toml", text.len()));
    std::fs::write(&path, text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(["check", "-c"])
        .arg(&path)
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn check_resolves_once_and_a_failure_is_only_a_warning() {
    let (addr, _) = dns_server();
    let (code, out) = tether_check(&format!(
        "[pools.p]\n[[pools.p.discover]]\nsrv = \"_http._tcp.app.test\"\nresolver = [\"{addr}\"]\n"
    ));
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("pool p: dns:_http._tcp.app.test resolves to 2 backends"),
        "{out}"
    );
    assert!(
        out.contains("node-2.app.test:8082 127.0.0.5:8082 weight 20 route node-2"),
        "{out}"
    );

    let dead = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (code, out) = tether_check(&format!(
        "[pools.p]\n[[pools.p.discover]]\ndns = \"app.test\"\nport = 80\nresolver = [\"{dead}\"]\n"
    ));
    assert_eq!(code, 0, "a DNS failure does not fail the check: {out}");
    assert!(
        out.contains("warning: pools.p: dns:app.test: resolution failed"),
        "{out}"
    );
}
