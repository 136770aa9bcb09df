//! tether's own affinity cookie: `v1.<client-key>.<backend-token>[.<issued>][.<mac>]`.
//!
//! - client key: 16 hex digits, random per session; re-places an orphaned session evenly;
//! - backend token: 12 hex digits derived from the backend id (and the secret, when set),
//!   the same in every instance, never an address;
//! - issued: Unix seconds, present when `max_idle` is set;
//! - mac: HMAC-SHA256 over the cookie name and the rest of the value, first 16 bytes,
//!   base64url, present when `secret` is set.
//!
//! Decoding takes any bytes and never fails loudly: whatever is not a valid, current cookie
//! is simply absent.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::balancer::hash::seeded;
use crate::config::{CookieConfig, SameSite, Secure};

type HmacSha256 = Hmac<Sha256>;

const TOKEN_SEED: u64 = 0x7465_7468_6572_0010;
const MAC_BYTES: usize = 16;
/// Longest value we try to decode; anything longer is not ours.
const MAX_VALUE: usize = 128;

/// A decoded, verified pin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pin {
    pub client_key: u64,
    pub token: u64,
    /// Issue time (Unix seconds) when `max_idle` is set.
    pub issued: Option<u64>,
}

/// Encodes and verifies cookie values for one pool.
#[derive(Clone)]
pub struct CookieCodec {
    name: String,
    mac: Option<HmacSha256>,
    max_idle_secs: Option<u64>,
    /// `; Path=/; HttpOnly; ...` without and with `Secure`.
    attrs_plain: String,
    attrs_secure: String,
    secure: Secure,
}

impl std::fmt::Debug for CookieCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CookieCodec")
            .field("name", &self.name)
            .field("signed", &self.mac.is_some())
            .finish()
    }
}

impl CookieCodec {
    pub fn new(cfg: &CookieConfig) -> CookieCodec {
        let mac = cfg.secret.as_ref().map(|s| {
            // HMAC accepts keys of any length, so this cannot fail.
            #[allow(clippy::expect_used)]
            HmacSha256::new_from_slice(s.as_bytes()).expect("HMAC takes any key length")
        });
        CookieCodec {
            name: cfg.name.clone(),
            mac,
            max_idle_secs: cfg.max_idle.map(|d| d.as_secs()),
            attrs_plain: attributes(cfg, false),
            attrs_secure: attributes(cfg, true),
            secure: cfg.secure,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The token a backend id is known by in cookies. Keyed by the secret when there is one,
    /// so tokens cannot be computed from ids by outsiders.
    pub fn backend_token(&self, id: &str) -> u64 {
        let t = match &self.mac {
            Some(mac) => {
                let mut m = mac.clone();
                m.update(b"tether-backend-token\0");
                m.update(id.as_bytes());
                let out = m.finalize().into_bytes();
                u64::from_be_bytes([0, 0, out[0], out[1], out[2], out[3], out[4], out[5]])
            }
            None => seeded(id.as_bytes(), TOKEN_SEED),
        };
        t & 0xffff_ffff_ffff
    }

    /// Builds a cookie value. `now` is Unix seconds.
    pub fn encode(&self, pin_key: u64, token: u64, now: u64) -> String {
        let mut v = format!("v1.{pin_key:016x}.{:012x}", token & 0xffff_ffff_ffff);
        if self.max_idle_secs.is_some() {
            v.push('.');
            v.push_str(&now.to_string());
        }
        if let Some(mac) = &self.mac {
            let tag = self.tag(mac, v.as_bytes());
            v.push('.');
            v.push_str(&URL_SAFE_NO_PAD.encode(tag));
        }
        v
    }

    fn tag(&self, mac: &HmacSha256, value: &[u8]) -> [u8; MAC_BYTES] {
        let mut m = mac.clone();
        m.update(self.name.as_bytes());
        m.update(b"=");
        m.update(value);
        let full = m.finalize().into_bytes();
        let mut out = [0u8; MAC_BYTES];
        out.copy_from_slice(&full[..MAC_BYTES]);
        out
    }

    /// Decodes and verifies a value; `None` for anything malformed, forged or idle too long.
    pub fn decode(&self, value: &[u8], now: u64) -> Option<Pin> {
        if value.len() > MAX_VALUE {
            return None;
        }
        let value = std::str::from_utf8(value).ok()?;
        let (signed, mac) = match &self.mac {
            Some(_) => {
                let (body, mac) = value.rsplit_once('.')?;
                (body, Some(mac))
            }
            None => (value, None),
        };
        let mut parts = signed.split('.');
        if parts.next()? != "v1" {
            return None;
        }
        let client_key = parse_hex(parts.next()?, 16)?;
        let token = parse_hex(parts.next()?, 12)?;
        let issued = match self.max_idle_secs {
            Some(_) => {
                let s = parts.next()?;
                if s.is_empty() || s.len() > 12 || !s.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                Some(s.parse::<u64>().ok()?)
            }
            None => None,
        };
        if parts.next().is_some() {
            return None;
        }
        if let (Some(mac), Some(given)) = (&self.mac, mac) {
            let given = URL_SAFE_NO_PAD.decode(given).ok()?;
            if given.len() != MAC_BYTES {
                return None;
            }
            let mut m = mac.clone();
            m.update(self.name.as_bytes());
            m.update(b"=");
            m.update(signed.as_bytes());
            // Constant-time comparison of the truncated tag.
            m.verify_truncated_left(&given).ok()?;
        }
        if let (Some(max_idle), Some(t)) = (self.max_idle_secs, issued) {
            // Idle too long, or issued in the future beyond clock skew: not a current pin.
            if now.saturating_sub(t) > max_idle || t > now + 300 {
                return None;
            }
        }
        Some(Pin {
            client_key,
            token,
            issued,
        })
    }

    /// With `max_idle`, an active user's cookie is re-issued once older than a quarter of it.
    pub fn needs_refresh(&self, pin: &Pin, now: u64) -> bool {
        match (self.max_idle_secs, pin.issued) {
            (Some(max_idle), Some(t)) => now.saturating_sub(t) > max_idle / 4,
            _ => false,
        }
    }

    /// The full `Set-Cookie` header value.
    pub fn set_cookie(&self, value: &str, client_tls: bool) -> String {
        let secure = match self.secure {
            Secure::Always => true,
            Secure::Never => false,
            Secure::Auto => client_tls,
        };
        let attrs = if secure {
            &self.attrs_secure
        } else {
            &self.attrs_plain
        };
        let mut s = String::with_capacity(self.name.len() + 1 + value.len() + attrs.len());
        s.push_str(&self.name);
        s.push('=');
        s.push_str(value);
        s.push_str(attrs);
        s
    }
}

/// `; Path=...; Domain=...; Max-Age=...; Secure; HttpOnly; SameSite=...`, rendered once per
/// pool by the `cookie` crate.
fn attributes(cfg: &CookieConfig, secure: bool) -> String {
    let mut c = cookie::Cookie::build(("x", ""))
        .path(cfg.path.clone())
        .http_only(cfg.http_only)
        .secure(secure)
        .same_site(match cfg.same_site {
            SameSite::Lax => cookie::SameSite::Lax,
            SameSite::Strict => cookie::SameSite::Strict,
            SameSite::None => cookie::SameSite::None,
        });
    if cfg.partitioned {
        c = c.partitioned(true);
    }
    if let Some(d) = &cfg.domain {
        c = c.domain(d.clone());
    }
    if let Some(age) = cfg.max_age {
        let secs = i64::try_from(age.as_secs()).unwrap_or(i64::MAX);
        c = c.max_age(cookie::time::Duration::seconds(secs));
    }
    let rendered = c.build().to_string();
    // "x=; Path=/; ..." → "; Path=/; ..."
    rendered.strip_prefix("x=").unwrap_or(&rendered).to_string()
}

/// Exactly `len` lowercase hex digits (at most 16).
fn parse_hex(s: &str, len: usize) -> Option<u64> {
    if s.len() != len || len > 16 {
        return None;
    }
    s.bytes().try_fold(0u64, |n, b| {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => return None,
        };
        Some(n << 4 | u64::from(d))
    })
}

/// Finds the first value of cookie `name` across `Cookie` header values.
pub fn find_cookie<'a>(headers: impl Iterator<Item = &'a [u8]>, name: &str) -> Option<&'a [u8]> {
    let [v] = find_cookies(headers, [Some(name)]);
    v
}

/// The first value of each named cookie across `Cookie` header values, in one pass over
/// them (a `None` name finds nothing).
pub fn find_cookies<'a, const N: usize>(
    headers: impl Iterator<Item = &'a [u8]>,
    names: [Option<&str>; N],
) -> [Option<&'a [u8]>; N] {
    let mut found = [None; N];
    let mut missing = names.iter().filter(|n| n.is_some()).count();
    if missing == 0 {
        return found;
    }
    for h in headers {
        for pair in h.split(|&b| b == b';') {
            let pair = trim(pair);
            for (name, slot) in names.iter().zip(found.iter_mut()) {
                let Some(name) = name.map(str::as_bytes) else {
                    continue;
                };
                if slot.is_none()
                    && pair.len() > name.len()
                    && pair.starts_with(name)
                    && pair[name.len()] == b'='
                {
                    *slot = Some(&pair[name.len() + 1..]);
                    missing -= 1;
                    if missing == 0 {
                        return found;
                    }
                }
            }
        }
    }
    found
}

/// `Cookie` header values joined with `; `, without any pair named `name` (when given);
/// `None` when no cookie remains.
pub fn strip_cookie<'a>(
    headers: impl Iterator<Item = &'a [u8]>,
    name: Option<&str>,
) -> Option<Vec<u8>> {
    let name = name.map(str::as_bytes);
    let mut out = Vec::new();
    for h in headers {
        for pair in h.split(|&b| b == b';') {
            let pair = trim(pair);
            let ours =
                name.is_some_and(|n| pair.starts_with(n) && pair.get(n.len()) == Some(&b'='));
            if pair.is_empty() || ours {
                continue;
            }
            if !out.is_empty() {
                out.extend_from_slice(b"; ");
            }
            out.extend_from_slice(pair);
        }
    }
    (!out.is_empty()).then_some(out)
}

/// Trims spaces and tabs (cookie and Set-Cookie syntax).
pub(crate) fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn codec(secret: Option<&str>, max_idle: Option<u64>) -> CookieCodec {
        CookieCodec::new(&CookieConfig {
            secret: secret.map(str::to_string),
            max_idle: max_idle.map(Duration::from_secs),
            max_age: Some(Duration::from_secs(86400)),
            ..CookieConfig::default()
        })
    }

    #[test]
    fn round_trips_every_variant() {
        for (secret, idle) in [
            (None, None),
            (Some("0123456789abcdef"), None),
            (None, Some(3600)),
            (Some("0123456789abcdef"), Some(3600)),
        ] {
            let c = codec(secret, idle);
            let v = c.encode(0xdead_beef_0000_0001, c.backend_token("app1"), 1_000_000);
            let pin = c
                .decode(v.as_bytes(), 1_000_100)
                .expect("own cookie decodes");
            assert_eq!(pin.client_key, 0xdead_beef_0000_0001);
            assert_eq!(pin.token, c.backend_token("app1"));
            assert_eq!(pin.issued.is_some(), idle.is_some());
        }
    }

    #[test]
    fn value_never_contains_the_backend_id_or_address() {
        let c = codec(None, None);
        let v = c.encode(1, c.backend_token("10.0.0.11:8080"), 0);
        assert!(!v.contains("10.0.0.11"));
        assert!(v.starts_with("v1."));
    }

    #[test]
    fn tampered_signed_cookie_is_absent() {
        let c = codec(Some("0123456789abcdef"), None);
        let v = c.encode(7, c.backend_token("app1"), 0);
        // Flip the token to another backend's while keeping the mac.
        let forged = v.replacen(
            &format!("{:012x}", c.backend_token("app1")),
            &format!("{:012x}", c.backend_token("app2")),
            1,
        );
        assert_ne!(forged, v);
        assert_eq!(c.decode(forged.as_bytes(), 0), None);
        // A different secret does not verify it either.
        let other = codec(Some("another-secret-value"), None);
        assert_eq!(other.decode(v.as_bytes(), 0), None);
    }

    #[test]
    fn idle_cookie_expires_and_active_one_refreshes() {
        let c = codec(None, Some(400));
        let v = c.encode(1, 2, 10_000);
        let pin = c.decode(v.as_bytes(), 10_050).unwrap();
        assert!(!c.needs_refresh(&pin, 10_050));
        assert!(c.needs_refresh(&pin, 10_101));
        assert_eq!(c.decode(v.as_bytes(), 10_401), None);
    }

    #[test]
    fn garbage_is_absent() {
        let c = codec(Some("0123456789abcdef"), Some(60));
        for g in [
            &b""[..],
            b"v1",
            b"v1...",
            b"v2.0000000000000001.000000000002.5.AAAA",
            b"\xff\xfe",
            &[b'a'; 5000][..],
            b"v1.000000000000000G.000000000002",
        ] {
            assert_eq!(c.decode(g, 0), None, "{g:?}");
        }
    }

    #[test]
    fn set_cookie_has_the_attributes() {
        let c = codec(None, None);
        let s = c.set_cookie("v1.x", false);
        assert!(s.starts_with("TETHER=v1.x; "), "{s}");
        assert!(s.contains("Path=/"), "{s}");
        assert!(s.contains("HttpOnly"), "{s}");
        assert!(s.contains("SameSite=Lax"), "{s}");
        assert!(s.contains("Max-Age=86400"), "{s}");
        assert!(!s.contains("Secure"), "{s}");
        assert!(c.set_cookie("v1.x", true).contains("Secure"));
    }

    #[test]
    fn partitioned_cookies_say_so() {
        let c = CookieCodec::new(&CookieConfig {
            secure: crate::config::Secure::Always,
            same_site: SameSite::None,
            partitioned: true,
            ..CookieConfig::default()
        });
        let s = c.set_cookie("v1.x", false);
        assert!(s.contains("; Partitioned"), "{s}");
        assert!(s.contains("Secure") && s.contains("SameSite=None"), "{s}");
        assert!(!codec(None, None)
            .set_cookie("v1.x", true)
            .contains("Partitioned"));
    }

    #[test]
    fn finds_and_strips_only_our_cookie() {
        let hs: Vec<&[u8]> = vec![b"a=1; TETHER=v1.x; TETHERX=2", b"b=3"];
        assert_eq!(
            find_cookie(hs.iter().copied(), "TETHER"),
            Some(&b"v1.x"[..])
        );
        let stripped = strip_cookie(hs.iter().copied(), Some("TETHER")).unwrap();
        assert_eq!(stripped, b"a=1; TETHERX=2; b=3");
        assert_eq!(
            strip_cookie([&b"TETHER=1"[..]].into_iter(), Some("TETHER")),
            None
        );
    }

    #[test]
    fn find_cookies_takes_each_names_first_value_in_one_pass() {
        let headers: [&[u8]; 2] = [b"a=1; TETHER=x; JSESSIONID=s1", b"TETHER=y; JSESSIONID=s2"];
        let [own, app, none] = find_cookies(
            headers.iter().copied(),
            [Some("TETHER"), Some("JSESSIONID"), None],
        );
        assert_eq!(own, Some(&b"x"[..]));
        assert_eq!(app, Some(&b"s1"[..]));
        assert_eq!(none, None);
        // The same name twice finds the same value; a prefix is not a match.
        let [a, b] = find_cookies(
            [&b"TETHERX=1; TETHER=2"[..]].into_iter(),
            [Some("TETHER"); 2],
        );
        assert_eq!((a, b), (Some(&b"2"[..]), Some(&b"2"[..])));
    }
}
