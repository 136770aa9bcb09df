//! The client's address: the socket peer, or X-Forwarded-For when the peer is a trusted proxy.

use std::net::IpAddr;

use ipnet::IpNet;

/// The address affinity and logging use for a request.
///
/// When the peer is in `trusted`, X-Forwarded-For is read right to left and the first address
/// that is not itself trusted is the client (as nginx `real_ip_recursive on`); an unparsable
/// entry stops the walk at the last trusted hop. Otherwise the peer address is the client.
pub fn client_ip<'a>(
    peer: IpAddr,
    xff: impl DoubleEndedIterator<Item = &'a [u8]>,
    trusted: &[IpNet],
) -> IpAddr {
    let peer = peer.to_canonical();
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if trusted.is_empty() || !is_trusted(&peer) {
        return peer;
    }
    let mut client = peer;
    for header in xff.rev() {
        for entry in header.rsplit(|&b| b == b',') {
            match parse_entry(entry) {
                Some(ip) => {
                    client = ip;
                    if !is_trusted(&ip) {
                        return ip;
                    }
                }
                None => return client,
            }
        }
    }
    client
}

/// One X-Forwarded-For element: `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1` or `[2001:db8::1]:80`.
fn parse_entry(entry: &[u8]) -> Option<IpAddr> {
    let s = std::str::from_utf8(entry).ok()?.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    s.parse::<std::net::SocketAddr>()
        .ok()
        .map(|a| a.ip().to_canonical())
}

/// Writes an address as text into `buf` without allocating; returns the used part.
pub fn ip_text(ip: IpAddr, buf: &mut [u8; 48]) -> &[u8] {
    use std::io::Write;
    if let IpAddr::V4(v4) = ip {
        // The common case, without the formatting machinery.
        let mut n = 0;
        for (i, octet) in v4.octets().into_iter().enumerate() {
            if i > 0 {
                buf[n] = b'.';
                n += 1;
            }
            if octet >= 100 {
                buf[n] = b'0' + octet / 100;
                n += 1;
            }
            if octet >= 10 {
                buf[n] = b'0' + octet / 10 % 10;
                n += 1;
            }
            buf[n] = b'0' + octet % 10;
            n += 1;
        }
        return &buf[..n];
    }
    let mut cur = std::io::Cursor::new(&mut buf[..]);
    // 48 bytes hold any IPv4 or IPv6 text form (at most 45), so this cannot fail.
    let _ = write!(cur, "{ip}");
    let n = cur.position() as usize;
    &buf[..n]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn nets(v: &[&str]) -> Vec<IpNet> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn ip_text_fast_v4_path_matches_display() {
        for s in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.100.255",
            "9.99.199.200",
            "::1",
            "2001:db8::7",
        ] {
            let mut buf = [0u8; 48];
            assert_eq!(ip_text(ip(s), &mut buf), s.as_bytes());
        }
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_it_claims() {
        let xff: Vec<&[u8]> = vec![b"1.1.1.1"];
        assert_eq!(
            client_ip(ip("203.0.113.9"), xff.into_iter(), &nets(&["10.0.0.0/8"])),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn trusted_peer_yields_rightmost_untrusted_hop() {
        let xff: Vec<&[u8]> = vec![b"6.6.6.6, 198.51.100.7", b"10.0.0.2"];
        let got = client_ip(ip("10.0.0.1"), xff.into_iter(), &nets(&["10.0.0.0/8"]));
        assert_eq!(got, ip("198.51.100.7"));
    }

    #[test]
    fn garbage_entry_stops_at_last_trusted_hop() {
        let xff: Vec<&[u8]> = vec![b"1.1.1.1, garbage, 10.0.0.3"];
        let got = client_ip(ip("10.0.0.1"), xff.into_iter(), &nets(&["10.0.0.0/8"]));
        assert_eq!(got, ip("10.0.0.3"));
    }

    #[test]
    fn ports_brackets_and_mapped_addresses() {
        let xff: Vec<&[u8]> = vec![b"[2001:db8::1]:443"];
        assert_eq!(
            client_ip(ip("127.0.0.1"), xff.into_iter(), &nets(&["127.0.0.1/32"])),
            ip("2001:db8::1")
        );
        assert_eq!(
            client_ip(ip("::ffff:192.0.2.1"), std::iter::empty(), &[]),
            ip("192.0.2.1")
        );
    }

    #[test]
    fn ip_text_matches_display() {
        let mut b = [0u8; 48];
        assert_eq!(
            ip_text(ip("ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255"), &mut b),
            b"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
        );
        assert_eq!(ip_text(ip("10.1.2.3"), &mut b), b"10.1.2.3");
    }
}
