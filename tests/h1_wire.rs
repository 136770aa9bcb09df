//! HTTP/1.1 on the wire, as case tables: each row is one message from public
//! request-smuggling material or RFC 9112, the bytes a client (or a scripted backend)
//! sends, and exactly what tether must emit on the other side. The backend here reads
//! requests with its own parser (httparse plus strict length rules written for this file),
//! so a framing disagreement with tether's parser shows up as a different request list.
// Test code: a panic on a setup failure is how a test fails (see [lints] in Cargo.toml).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use common::*;

/// What a recording backend saw on one connection: each complete request's bytes, and
/// `INCOMPLETE` if the connection ended inside a request.
type Seen = Arc<Mutex<Vec<Vec<u8>>>>;

const INCOMPLETE: &[u8] = b"<incomplete>";

/// A backend that reads requests with an independent strict parser and answers each with
/// `reply`; records what it read.
async fn recording_backend(reply: &'static [u8]) -> (SocketAddr, Seen) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let record = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let record = record.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    match read_request(&mut s, &mut buf).await {
                        Some(req) => {
                            record.lock().push(req);
                            if s.write_all(reply).await.is_err() {
                                return;
                            }
                        }
                        None => {
                            if !buf.is_empty() {
                                record.lock().push(INCOMPLETE.to_vec());
                            }
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// One request's bytes, by httparse and RFC 9112 §6.3 read strictly; `None` at EOF, on
/// a timeout or on anything ambiguous (the caller records an incomplete request).
async fn read_request(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    loop {
        if let Some(len) = complete_request(buf) {
            return Some(buf.drain(..len).collect());
        }
        let mut chunk = [0u8; 8192];
        match tokio::time::timeout(Duration::from_secs(2), s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    }
}

/// The length of the complete request at the front of `buf`, if there is one.
fn complete_request(buf: &[u8]) -> Option<usize> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let head = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return None,
    };
    let (mut length, mut chunked) = (None, false);
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            assert!(
                length.is_none(),
                "two Content-Length headers reached the backend"
            );
            let v = std::str::from_utf8(h.value).ok()?;
            assert!(
                v.bytes().all(|b| b.is_ascii_digit()),
                "Content-Length {v:?}"
            );
            length = Some(v.parse::<usize>().ok()?);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            assert!(
                !chunked,
                "two Transfer-Encoding headers reached the backend"
            );
            assert_eq!(h.value, b"chunked");
            chunked = true;
        }
    }
    assert!(
        !(chunked && length.is_some()),
        "CL and TE reached the backend"
    );
    if chunked {
        return chunked_end(&buf[head..]).map(|n| head + n);
    }
    let n = head + length.unwrap_or(0);
    (buf.len() >= n).then_some(n)
}

/// Where a strictly chunked body ends (lowercase or uppercase hex, CRLF only).
fn chunked_end(b: &[u8]) -> Option<usize> {
    let mut at = 0;
    loop {
        let line_end = b[at..].windows(2).position(|w| w == b"\r\n")? + at;
        let size = usize::from_str_radix(std::str::from_utf8(&b[at..line_end]).ok()?, 16).ok()?;
        at = line_end + 2;
        if size == 0 {
            return (b.len() >= at + 2 && &b[at..at + 2] == b"\r\n").then_some(at + 2);
        }
        if b.len() < at + size + 2 {
            return None;
        }
        assert_eq!(&b[at + size..at + size + 2], b"\r\n");
        at += size + 2;
    }
}

fn single(addr: SocketAddr, proxy_extra: &str) -> String {
    format!("[log]\naccess = \"off\"\n[proxy]\nretries = 0\n{proxy_extra}\n[pools.p]\n[[pools.p.backends]]\nid = \"b\"\naddress = \"{addr}\"\n")
}

/// Sends raw bytes, returns what comes back until tether closes or 3 s pass.
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    read_to_close(&mut s).await
}

/// The response without its `date` line and the affinity cookie tether adds (the parts
/// that vary).
fn without_date(r: &str) -> String {
    r.split_inclusive("\r\n")
        .filter(|l| {
            !l.starts_with("date: ")
                && !l.starts_with("set-cookie: TETHER=")
                && *l != "cache-control: private\r\n"
        })
        .collect()
}

/// What tether adds to every forwarded head from 127.0.0.1 with `Host: t`.
const FWD: &str =
    "host: t\r\nx-forwarded-for: 127.0.0.1\r\nx-forwarded-proto: http\r\nx-forwarded-host: t\r\n";

const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

/// A request row: where it comes from, what the client sends, the status line it gets
/// first, and what the backend must receive (`None`: nothing at all).
struct Req {
    source: &'static str,
    send: &'static [u8],
    status: &'static str,
    backend: Option<&'static [&'static str]>,
}

fn refused(source: &'static str, send: &'static [u8]) -> Req {
    Req {
        source,
        send,
        status: "HTTP/1.1 400 Bad Request",
        backend: None,
    }
}

#[tokio::test]
async fn request_direction_case_table() {
    let rows: Vec<Req> = vec![
        // --- CL.TE / TE.CL (PortSwigger "HTTP request smuggling"; RFC 9112 §6.1 ¶15) ---
        refused("PortSwigger CL.TE", b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG"),
        refused("PortSwigger TE.CL", b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n"),
        // --- TE.TE obfuscation (defparam/smuggler mutations, PortSwigger TE.TE) ---
        refused("smuggler: xchunked", b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"),
        refused("smuggler: space before colon", b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n"),
        refused("smuggler: obs-fold value", b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n"),
        refused("smuggler: leading space line", b"POST / HTTP/1.1\r\nHost: t\r\n Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        refused("smuggler: chunked, identity", b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n"),
        refused("smuggler: duplicate TE lines", b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n0\r\n\r\n"),
        refused("RFC 9112 §6.1: chunked twice", b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        refused("smuggler: quoted", b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: \"chunked\"\r\n\r\n0\r\n\r\n"),
        refused("smuggler: vertical tab", b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: \x0bchunked\r\n\r\n0\r\n\r\n"),
        refused("smuggler: form feed", b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding:\x0cchunked\r\n\r\n0\r\n\r\n"),
        refused("smuggler: NUL after value", b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\x00\r\n\r\n0\r\n\r\n"),
        refused("RFC 9112 §6.1: TE on HTTP/1.0", b"POST / HTTP/1.0\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        Req {
            source: "smuggler: tab OWS and upper case are still chunked (valid)",
            send: b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding:\tCHUNKED\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            status: "HTTP/1.1 200 OK",
            backend: Some(&["POST / HTTP/1.1\r\n{FWD}transfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"]),
        },
        // --- CL.CL (RFC 9112 §6.3 ¶5; PortSwigger) ---
        refused("RFC 9112 §6.3: differing lengths", b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"),
        refused("RFC 9112 §6.3: differing list", b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3, 4\r\n\r\nabcd"),
        refused("RFC 9110 §8.6: sign", b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: +3\r\n\r\nabc"),
        refused("HTTP Garden: hex length", b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 0x3\r\n\r\nabc"),
        Req {
            source: "RFC 9112 §6.3: identical lines collapse",
            send: b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
            status: "HTTP/1.1 200 OK",
            backend: Some(&["POST / HTTP/1.1\r\n{FWD}content-length: 3\r\n\r\nabc"]),
        },
        Req {
            source: "RFC 9112 §6.3: identical list collapses",
            send: b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3, 3\r\n\r\nabc",
            status: "HTTP/1.1 200 OK",
            backend: Some(&["POST / HTTP/1.1\r\n{FWD}content-length: 3\r\n\r\nabc"]),
        },
        // --- Chunk sizes and extensions (RFC 9112 §7.1; HTTP Garden; smuggler) ---
        refused("HTTP Garden: CR inside size line", b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n2\r\r;a\r\nab\r\n0\r\n\r\n"),
        refused("HTTP Garden: leading space in size", b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n 2\r\nab\r\n0\r\n\r\n"),
        refused("HTTP Garden: trailing space in size", b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n2 \r\nab\r\n0\r\n\r\n"),
        refused("RFC 9112 §7.1: bare LF after size", b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n2\nab\r\n0\r\n\r\n"),
        refused("RFC 9112 §7.1: 0x prefix", b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0x2\r\nab\r\n0\r\n\r\n"),
        refused("RFC 9112 §7.1: negative size", b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n-2\r\nab\r\n0\r\n\r\n"),
        refused("HTTP Garden: size overflows 64 bits", b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000002\r\nab\r\n0\r\n\r\n"),
        refused("RFC 9112 §7.1: chunk without CRLF", b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXX0\r\n\r\n"),
        refused("RFC 9112 §7.1.1: control in extension", b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n2;\x01\r\nab\r\n0\r\n\r\n"),
        refused("RFC 9112 §7.1.2: bare LF in trailers", b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\nX: y\n\r\n"),
        Req {
            source: "issue 13: 16-digit zero-padded size is valid",
            send: b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0000000000000002;ext=\"v\"\r\nab\r\n0\r\nX-T: 1\r\n\r\n",
            status: "HTTP/1.1 200 OK",
            backend: Some(&["POST / HTTP/1.1\r\n{FWD}transfer-encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n"]),
        },
        // --- Heads: line ends, obs-fold, NUL, names (RFC 9112 §2.2, §5) ---
        refused("RFC 9112 §2.2: bare LF head", b"GET / HTTP/1.1\nHost: t\n\n"),
        refused("RFC 9112 §2.2: bare CR", b"GET / HTTP/1.1\r\nHost: t\r\nX: a\rb\r\n\r\n"),
        refused("RFC 9112 §2.2: bare CR in the target", b"GET /a\rb HTTP/1.1\r\nHost: t\r\n\r\n"),
        refused("RFC 9112 §2.2: request line ended by a bare CR", b"GET / HTTP/1.1\rHost: t\r\n\r\n"),
        refused("RFC 9112 §2.2: bare CR in a field name", b"GET / HTTP/1.1\r\nHost: t\r\nX\r: a\r\n\r\n"),
        refused("RFC 9112 §2.2: bare CR before the empty line", b"GET / HTTP/1.1\r\nHost: t\r\n\r\r\n"),
        refused("RFC 9112 §5.2: obs-fold", b"GET / HTTP/1.1\r\nHost: t\r\nX: a\r\n b\r\n\r\n"),
        refused("RFC 9110 §5.5: NUL in value", b"GET / HTTP/1.1\r\nHost: t\r\nX: a\x00b\r\n\r\n"),
        refused("RFC 9110 §5.1: space in name", b"GET / HTTP/1.1\r\nHost: t\r\nX Y: z\r\n\r\n"),
        refused("RFC 9110 §5.1: non-tchar name", b"GET / HTTP/1.1\r\nHost: t\r\nX@: z\r\n\r\n"),
        // --- Host and targets (RFC 9112 §3.2) ---
        refused("RFC 9112 §3.2: no Host on 1.1", b"GET / HTTP/1.1\r\nX: y\r\n\r\n"),
        refused("RFC 9112 §3.2: two Hosts", b"GET / HTTP/1.1\r\nHost: t\r\nHost: other\r\n\r\n"),
        refused("HTTP Garden: userinfo in Host", b"GET / HTTP/1.1\r\nHost: u@t\r\n\r\n"),
        refused("issue 13: userinfo in absolute-form", b"GET http://u:p@t/ HTTP/1.1\r\nHost: t\r\n\r\n"),
        refused("RFC 9112 §3.2.3: authority-form on GET", b"GET other.example:80 HTTP/1.1\r\nHost: t\r\n\r\n"),
        Req {
            source: "RFC 9112 §9.3.6: CONNECT (not a tunnel)",
            send: b"CONNECT other.example:443 HTTP/1.1\r\nHost: other.example:443\r\n\r\n",
            status: "HTTP/1.1 405 Method Not Allowed",
            backend: None,
        },
        Req {
            source: "RFC 9112 §3.2.2: absolute-form goes origin-form, Host from it",
            send: b"GET http://t/p?q=1 HTTP/1.1\r\nHost: other\r\n\r\n",
            status: "HTTP/1.1 200 OK",
            backend: Some(&["GET /p?q=1 HTTP/1.1\r\n{FWD}\r\n"]),
        },
        Req {
            source: "RFC 9112 §2.3: HTTP/1.2 is HTTP/1.1",
            send: b"GET / HTTP/1.2\r\nHost: t\r\n\r\n",
            status: "HTTP/1.1 200 OK",
            backend: Some(&["GET / HTTP/1.1\r\n{FWD}\r\n"]),
        },
        Req {
            source: "RFC 9112 §3.2: HTTP/1.0 without Host is fine",
            send: b"GET / HTTP/1.0\r\n\r\n",
            status: "HTTP/1.1 200 OK",
            backend: Some(&["GET / HTTP/1.1\r\nx-forwarded-for: 127.0.0.1\r\nx-forwarded-proto: http\r\n\r\n"]),
        },
        // --- Pipelining (RFC 9112 §9.3.2) ---
        Req {
            source: "RFC 9112 §9.3.2: pipelined requests, bodies in between",
            send: b"POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nxyGET /b HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
            status: "HTTP/1.1 200 OK",
            backend: Some(&[
                "POST /a HTTP/1.1\r\n{FWD}content-length: 2\r\n\r\nxy",
                "GET /b HTTP/1.1\r\n{FWD}\r\n",
            ]),
        },
    ];
    let mut failures = Vec::new();
    for row in &rows {
        let (b, seen) = recording_backend(OK).await;
        let proxy = Proxy::start(&single(b, "")).await;
        let got = exchange(proxy.addr, row.send).await;
        if !got.starts_with(row.status) {
            failures.push(format!("{}: answered {:?}", row.source, got.lines().next()));
        }
        // Let the backend finish reading what it got.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let seen: Vec<String> = seen
            .lock()
            .iter()
            .map(|r| String::from_utf8_lossy(r).into_owned())
            .collect();
        let want: Vec<String> = row
            .backend
            .unwrap_or(&[])
            .iter()
            .map(|w| w.replace("{FWD}", FWD))
            .collect();
        if seen != want {
            failures.push(format!(
                "{}: backend got {seen:?}, want {want:?}",
                row.source
            ));
        }
        proxy.shutdown().await;
    }
    assert!(
        failures.is_empty(),
        "{} rows failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn oversized_request_line_is_414_and_head_431() {
    let (b, seen) = recording_backend(OK).await;
    let proxy = Proxy::start(&single(b, "max_header_bytes = 8192")).await;
    let line = format!("GET /{} HTTP/1.1\r\nHost: t\r\n\r\n", "a".repeat(9000));
    assert!(exchange(proxy.addr, line.as_bytes())
        .await
        .starts_with("HTTP/1.1 414 "));
    let head = format!(
        "GET / HTTP/1.1\r\nHost: t\r\nX: {}\r\n\r\n",
        "a".repeat(9000)
    );
    assert!(exchange(proxy.addr, head.as_bytes())
        .await
        .starts_with("HTTP/1.1 431 "));
    assert!(seen.lock().is_empty());
}

/// A response row: what the backend answers to `GET /` (or `HEAD /`) and exactly what
/// the client then reads (without `date`), until tether closes or the client stops.
struct Res {
    source: &'static str,
    request: &'static [u8],
    reply: &'static [u8],
    client: &'static str,
}

/// A backend that answers the first request on each connection with `reply` and closes.
async fn scripted_backend(reply: &'static [u8]) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                if read_request(&mut s, &mut buf).await.is_some() {
                    let _ = s.write_all(reply).await;
                    let _ = s.shutdown().await;
                    // Hold the connection a moment so tether reads the whole reply.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            });
        }
    });
    addr
}

const GET_CLOSE: &[u8] = b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";

#[tokio::test]
async fn response_direction_case_table() {
    let rows = [
        Res {
            source: "issue 13 (response splitting): CL beside TE chunked, body smuggles a response",
            request: GET_CLOSE,
            reply: b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n29\r\nHTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nbad\r\n0\r\n\r\n",
            client: "HTTP/1.1 200 OK\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n29\r\nHTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nbad\r\n0\r\n\r\n",
        },
        Res {
            source: "issue 13: TE gzip beside CL, until close",
            request: GET_CLOSE,
            reply: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nContent-Length: 3\r\n\r\nabcdef",
            client: "HTTP/1.1 200 OK\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n6\r\nabcdef\r\n0\r\n\r\n",
        },
        Res {
            source: "RFC 9112 §6.3 ¶5: bytes past the length are dropped",
            request: GET_CLOSE,
            reply: b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcHTTP/1.1 200 OK\r\n\r\n",
            client: "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 3\r\n\r\nabc",
        },
        Res {
            source: "RFC 9112 §6.3 ¶5: differing lengths are a 502",
            request: GET_CLOSE,
            reply: b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
            client: "HTTP/1.1 502 Bad Gateway\r\n",
        },
        Res {
            source: "RFC 9112 §8: a short body is a truncated message",
            request: GET_CLOSE,
            reply: b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
            client: "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 10\r\n\r\nabc",
        },
        Res {
            source: "RFC 9112 §7.1: malformed chunk cuts the client off, no last chunk",
            request: GET_CLOSE,
            reply: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n 2\r\nde\r\n0\r\n\r\n",
            client: "HTTP/1.1 200 OK\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n",
        },
        Res {
            source: "RFC 9110 §8.6: 204 carries no Content-Length",
            request: GET_CLOSE,
            reply: b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
            client: "HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n",
        },
        Res {
            source: "RFC 9110 §8.6: 304 keeps its length, no body",
            request: GET_CLOSE,
            reply: b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5, 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            client: "HTTP/1.1 304 Not Modified\r\nconnection: close\r\n\r\n",
        },
        Res {
            source: "RFC 9110 §9.3.2: HEAD keeps its length, no body",
            request: b"HEAD / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
            reply: b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
            client: "HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\n",
        },
        Res {
            source: "RFC 9110 §15.2: 103 forwarded to HTTP/1.1",
            request: GET_CLOSE,
            reply: b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            client: "HTTP/1.1 103 Early Hints\r\nlink: </s.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
        },
        Res {
            source: "RFC 9110 §15.2: no 1xx to HTTP/1.0",
            request: b"GET / HTTP/1.0\r\nHost: t\r\n\r\n",
            reply: b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            client: "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
        },
        Res {
            source: "RFC 9112 §2.3: HTTP/1.2 response is HTTP/1.1",
            request: GET_CLOSE,
            reply: b"HTTP/1.2 200 OK\r\nContent-Length: 2\r\n\r\nok",
            client: "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
        },
    ];
    let mut failures = Vec::new();
    for row in &rows {
        let b = scripted_backend(row.reply).await;
        let proxy = Proxy::start(&single(b, "")).await;
        let got = without_date(&exchange(proxy.addr, row.request).await);
        let ok = if row.client.ends_with("Bad Gateway\r\n") {
            got.starts_with(row.client)
        } else {
            got == row.client
        };
        if !ok {
            failures.push(format!(
                "{}:\n  got  {got:?}\n  want {:?}",
                row.source, row.client
            ));
        }
        proxy.shutdown().await;
    }
    assert!(
        failures.is_empty(),
        "{} rows failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn an_early_final_response_is_relayed_while_the_client_still_uploads() {
    // The backend refuses the upload at once (413) without reading it (RFC 9110 §15.5.14).
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let b = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut head = [0u8; 1024];
        let _ = s.read(&mut head).await;
        let _ = s
            .write_all(
                b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            )
            .await;
        tokio::time::sleep(Duration::from_secs(5)).await;
    });
    let proxy = Proxy::start(&single(b, "response_timeout = \"10s\"")).await;
    let mut c = TcpStream::connect(proxy.addr).await.unwrap();
    c.write_all(b"PUT /big HTTP/1.1\r\nHost: t\r\nContent-Length: 100000000\r\nExpect: 100-continue\r\n\r\n")
        .await
        .unwrap();
    let start = Instant::now();
    // Upload in the background; the answer must come long before response_timeout.
    let (mut r, mut w) = c.into_split();
    let upload = tokio::spawn(async move {
        let piece = vec![b'x'; 65536];
        for _ in 0..1500 {
            if w.write_all(&piece).await.is_err() {
                break;
            }
        }
    });
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), r.read_to_end(&mut got)).await;
    let got = String::from_utf8_lossy(&got);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "waited {:?}",
        start.elapsed()
    );
    assert!(
        got.starts_with("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 413 Content Too Large\r\n"),
        "{got}"
    );
    assert!(got.contains("connection: close\r\n"), "{got}");
    upload.abort();
}

#[tokio::test]
async fn http10_clients_get_no_100_continue() {
    let (b, seen) = recording_backend(OK).await;
    let proxy = Proxy::start(&single(b, "")).await;
    let got = exchange(
        proxy.addr,
        b"POST / HTTP/1.0\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\nab",
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
    assert!(!got.contains("100 Continue"), "{got}");
    assert_eq!(seen.lock().len(), 1);
}
