//! PROXY protocol v1 and v2 (`[listen] proxy_protocol`): the header an L4 balancer sends
//! before anything else on a connection, parsed with the `ppp` crate; its source address
//! becomes the client's.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
use ppp::v2::{Command, Protocol};
use ppp::{v1, v2, HeaderResult, PartialResult};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The v2 signature; a v2 header is these 12 bytes, 4 more, then a 16-bit length of the rest.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 header, CRLF included.
const V1_MAX: usize = 107;
/// Bytes peeked at first: a whole v1 header (at most 107) or a v2 one with a few TLVs.
const FIRST_PEEK: usize = 256;
/// While a header is incomplete, how long to wait before looking again.
const PARTIAL_WAIT: Duration = Duration::from_millis(5);

/// What the first bytes of a connection say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// A valid header of `len` bytes. `source` is the client it names; `None` for v2
    /// `LOCAL` (a balancer's own health check), v1 `UNKNOWN` and non-IP families: the peer
    /// address stands.
    Header {
        len: usize,
        source: Option<SocketAddr>,
    },
    /// Could still become a valid header with more bytes; at least `need` in total.
    Incomplete { need: usize },
    /// Cannot start a valid header.
    Invalid,
}

/// Parses a PROXY header at the start of `buf`. Pure, total: any bytes give an answer.
pub fn parse(buf: &[u8]) -> Parsed {
    if buf.is_empty() {
        return Parsed::Incomplete { need: 1 };
    }
    // A v2 header announces its length: wait for all of it before asking the parser.
    let sig = buf.len().min(V2_SIGNATURE.len());
    if buf[..sig] == V2_SIGNATURE[..sig] {
        if buf.len() < 16 {
            return Parsed::Incomplete { need: 16 };
        }
        let total = 16 + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
        if buf.len() < total {
            return Parsed::Incomplete { need: total };
        }
    } else {
        // v1: "PROXY " ... CRLF, at most 107 bytes. Judged once its line has ended (the
        // parser takes some cut-off lines for bad ones); anything else is not a header.
        const PREFIX: &[u8] = b"PROXY ";
        let n = buf.len().min(PREFIX.len());
        if buf[..n] != PREFIX[..n] {
            return Parsed::Invalid;
        }
        if !buf[..buf.len().min(V1_MAX)].contains(&b'\n') {
            return if buf.len() >= V1_MAX {
                Parsed::Invalid
            } else {
                Parsed::Incomplete {
                    need: buf.len() + 1,
                }
            };
        }
    }
    match HeaderResult::parse(buf) {
        HeaderResult::V2(Ok(h)) => Parsed::Header {
            len: h.len(),
            source: match (h.command, h.protocol, h.addresses) {
                (Command::Local, _, _) => None,
                (Command::Proxy, Protocol::Stream, v2::Addresses::IPv4(a)) => {
                    Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
                }
                (Command::Proxy, Protocol::Stream, v2::Addresses::IPv6(a)) => {
                    Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
                }
                _ => None,
            },
        },
        HeaderResult::V1(Ok(h)) => Parsed::Header {
            len: h.header.len(),
            source: match h.addresses {
                v1::Addresses::Tcp4(a) => {
                    Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
                }
                v1::Addresses::Tcp6(a) => {
                    Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
                }
                v1::Addresses::Unknown => None,
            },
        },
        r if r.is_incomplete() => Parsed::Incomplete {
            need: buf.len() + 1,
        },
        _ => Parsed::Invalid,
    }
}

/// Why a connection was closed before its header was read.
#[derive(Debug, thiserror::Error)]
pub enum ProxyProtocolError {
    #[error("peer {0} is not in trusted_proxies")]
    Untrusted(IpAddr),
    #[error("not a PROXY protocol header")]
    Invalid,
    #[error("no complete PROXY protocol header within header_timeout")]
    Timeout,
    #[error("connection closed before the PROXY protocol header ended")]
    Closed,
    #[error("reading the PROXY protocol header: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads (and consumes) the header from `stream`, leaving every byte after it unread (a TLS
/// ClientHello or an HTTP request). Returns the client address: the header's source, or
/// `peer` for LOCAL/UNKNOWN. With `trusted` non-empty, only those peers may send one.
pub async fn accept(
    stream: &mut TcpStream,
    peer: SocketAddr,
    trusted: &[IpNet],
    timeout: Duration,
) -> Result<SocketAddr, ProxyProtocolError> {
    let ip = peer.ip().to_canonical();
    if !trusted.is_empty() && !trusted.iter().any(|n| n.contains(&ip)) {
        return Err(ProxyProtocolError::Untrusted(ip));
    }
    match tokio::time::timeout(timeout, read(stream, peer)).await {
        Ok(r) => r,
        Err(_) => Err(ProxyProtocolError::Timeout),
    }
}

async fn read(stream: &mut TcpStream, peer: SocketAddr) -> Result<SocketAddr, ProxyProtocolError> {
    let mut buf = vec![0u8; FIRST_PEEK];
    let mut seen = 0;
    loop {
        // Peek, so the bytes after the header stay in the socket for whoever reads next.
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Err(ProxyProtocolError::Closed);
        }
        match parse(&buf[..n]) {
            Parsed::Header { len, source } => {
                let mut header = vec![0u8; len];
                stream.read_exact(&mut header).await?;
                return Ok(source.unwrap_or(peer));
            }
            Parsed::Invalid => return Err(ProxyProtocolError::Invalid),
            Parsed::Incomplete { need } => {
                if need > buf.len() {
                    buf.resize(need, 0);
                } else if n == seen {
                    // Nothing new yet (a header split across packets): peek returns at
                    // once while any byte is waiting, so look again a little later.
                    tokio::time::sleep(PARTIAL_WAIT).await;
                }
                seen = n;
            }
        }
    }
}

/// For the fuzzer: [`parse`] must answer for any input, and a header it accepts must lie
/// within the input.
pub fn fuzz(data: &[u8]) {
    match parse(data) {
        Parsed::Header { len, .. } => assert!(len <= data.len() && len > 0),
        Parsed::Incomplete { need } => assert!(need > data.len()),
        Parsed::Invalid => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, addr: &[u8], tlvs: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(family);
        let len = (addr.len() + tlvs.len()) as u16;
        h.extend_from_slice(&len.to_be_bytes());
        h.extend_from_slice(addr);
        h.extend_from_slice(tlvs);
        h
    }

    #[test]
    fn v1_headers_give_their_source() {
        let h = b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 8080\r\nGET / HTTP/1.1\r\n";
        assert_eq!(
            parse(h),
            Parsed::Header {
                len: 44,
                source: Some("203.0.113.7:51234".parse().unwrap())
            }
        );
        let h6 = b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n";
        assert!(
            matches!(parse(h6), Parsed::Header { source: Some(s), .. } if s.ip() == "2001:db8::1".parse::<IpAddr>().unwrap())
        );
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n"),
            Parsed::Header {
                len: 15,
                source: None
            }
        );
    }

    #[test]
    fn v2_headers_give_their_source_and_local_gives_none() {
        let addr = [203, 0, 113, 7, 10, 0, 0, 1, 0xc8, 0x22, 0x1f, 0x90];
        let h = v2(1, 0x11, &addr, &[0x04, 0x00, 0x01, 0xaa]);
        let mut with_body = h.clone();
        with_body.extend_from_slice(b"\x16\x03\x01");
        assert_eq!(
            parse(&with_body),
            Parsed::Header {
                len: h.len(),
                source: Some("203.0.113.7:51234".parse().unwrap())
            }
        );
        let local = v2(0, 0x00, &[], &[]);
        assert_eq!(
            parse(&local),
            Parsed::Header {
                len: 16,
                source: None
            }
        );
    }

    #[test]
    fn partial_headers_wait_and_anything_else_is_invalid() {
        let h = b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 8080\r\n";
        for i in 1..h.len() {
            assert!(
                matches!(parse(&h[..i]), Parsed::Incomplete { .. }),
                "{:?}",
                String::from_utf8_lossy(&h[..i])
            );
        }
        let addr = [203, 0, 113, 7, 10, 0, 0, 1, 0xc8, 0x22, 0x1f, 0x90];
        let v = v2(1, 0x11, &addr, &[]);
        for i in 1..v.len() {
            assert!(matches!(parse(&v[..i]), Parsed::Incomplete { .. }), "{i}");
        }
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Parsed::Invalid);
        assert_eq!(parse(b"\x16\x03\x01\x02\x00"), Parsed::Invalid);
        assert_eq!(
            parse(b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n"),
            Parsed::Invalid
        );
        assert_eq!(parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n"), Parsed::Invalid);
    }

    #[test]
    fn fuzz_entry_accepts_anything() {
        for input in [
            &b""[..],
            b"\r\n\r\n\0\r\nQUIT\n\x21\x11\xff\xff",
            b"PROXY",
            b"\xff",
        ] {
            fuzz(input);
        }
    }
}
