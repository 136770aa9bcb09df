//! Session affinity: what a request carries (cookie pin, client IP, header) and which backend
//! it goes to — pinned first, then placed by consistent hashing.

pub mod client_ip;
pub mod cookie;
pub mod learn;
pub mod remember;
pub mod route;

use std::net::IpAddr;
use std::sync::atomic::Ordering;

use crate::balancer::{pick_bounded, Bound};
use crate::config::Affinity;
use crate::runtime::Pool;

/// How a request's affinity turned out (the `affinity_total` outcome).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Followed a valid pin (or, for ip/header, reached its key's own backend).
    Hit,
    /// Created a pin (a new session, or `none` affinity).
    New,
    /// Its pin (or its key's own backend) was unavailable and it was re-placed.
    Moved,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::New => "new",
            Outcome::Moved => "moved",
        }
    }
}

/// A placement key, kept inline when short (client IPs, cookie client keys).
#[derive(Clone)]
pub enum Key {
    Inline([u8; 48], u8),
    Heap(Box<[u8]>),
}

impl Key {
    pub fn new(bytes: &[u8]) -> Key {
        if bytes.len() <= 48 {
            let mut buf = [0u8; 48];
            buf[..bytes.len()].copy_from_slice(bytes);
            Key::Inline(buf, bytes.len() as u8)
        } else {
            Key::Heap(bytes.into())
        }
    }

    pub fn ip(ip: IpAddr) -> Key {
        let mut buf = [0u8; 48];
        let len = client_ip::ip_text(ip, &mut buf).len();
        Key::Inline(buf, len as u8)
    }

    /// A cookie client key, hashed as its 16 hex digits (as it appears in the cookie).
    pub fn client_key(k: u64) -> Key {
        let mut buf = [0u8; 48];
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for (i, b) in buf[..16].iter_mut().enumerate() {
            *b = HEX[((k >> (60 - 4 * i)) & 0xf) as usize];
        }
        Key::Inline(buf, 16)
    }

    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Key::Inline(b, n) => &b[..*n as usize],
            Key::Heap(b) => b,
        }
    }
}

/// What affinity needs from a request.
pub struct RequestKeys<'a> {
    pub client_ip: IpAddr,
    /// The value of the pool's cookie, if the request has one.
    pub cookie: Option<&'a [u8]>,
    /// The value of the pool's affinity header, if any.
    pub header: Option<&'a [u8]>,
    /// The application's session id: route mode's JSESSIONID (path parameter or cookie),
    /// learn mode's session cookie value.
    pub session: Option<&'a [u8]>,
    /// Unix seconds.
    pub now: u64,
}

/// Where a request goes and what it means for its session.
#[derive(Clone)]
pub struct Decision {
    pub backend: usize,
    pub outcome: Outcome,
    /// Cookie mode: the client key to issue a cookie for (on the chosen backend), when the
    /// response must carry a fresh `Set-Cookie`.
    pub issue_cookie: Option<u64>,
    /// The key that placed (or would re-place) this request; retries continue from it.
    pub key: Key,
    /// The request followed a pin to a draining backend.
    pub pinned_to_draining: bool,
    /// ip/header with `[remember]`: the key is to be remembered at the backend that answers
    /// (it was unknown, or its remembered backend could not take it).
    pub remember: bool,
}

/// Why a request went where it did, for `tether explain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    Pinned,
    PinRefreshed,
    PinInvalid,
    PinOrphaned,
    KeyOwner,
    KeyOwnerUnavailable,
    /// ip/header with `[remember]`: the key was remembered at this backend.
    Remembered,
    /// ip/header with `[remember]`: the key's remembered backend cannot take it; re-placed.
    RememberedUnavailable,
    NewSession,
    LeastInFlight,
}

/// Chooses a backend for a request in `pool`; `None` when no backend can take it.
pub fn decide(pool: &Pool, req: &RequestKeys<'_>) -> Option<(Decision, Reason)> {
    match pool.affinity {
        Affinity::Cookie => decide_cookie(pool, req),
        Affinity::Route => {
            // Any session id is a pin; an unknown route pins to nothing (re-placed).
            let pinned = req.session.map(|sid| {
                let b = route::route_of(sid).and_then(|r| pool.by_route(r));
                (b, Key::new(route::session_key(sid)))
            });
            decide_session(pool, req, pinned, req.session.map(route::session_key))
        }
        Affinity::Learn => {
            // A learned session is a pin (to nothing if its backend was removed); an unknown
            // one is a new session.
            let pinned = req.session.and_then(|v| {
                let id = pool.learned.as_ref()?.lookup(v)?;
                Some((pool.by_id(&id), Key::new(v)))
            });
            decide_session(pool, req, pinned, req.session)
        }
        Affinity::Ip | Affinity::Header => decide_keyed(pool, keyed_key(pool, req)),
        Affinity::None => least_in_flight(pool, &[]).map(|b| {
            let d = Decision {
                backend: b,
                outcome: Outcome::New,
                issue_cookie: None,
                key: Key::new(b""),
                pinned_to_draining: false,
                remember: false,
            };
            (d, Reason::LeastInFlight)
        }),
    }
}

fn decide_cookie(pool: &Pool, req: &RequestKeys<'_>) -> Option<(Decision, Reason)> {
    let codec = pool.cookie.as_ref()?;
    let pin = req.cookie.and_then(|v| codec.decode(v, req.now));
    if let Some(pin) = pin {
        if let Some(b) = pool.by_token(pin.token).filter(|&b| pool.takes_pinned(b)) {
            let refresh = codec.needs_refresh(&pin, req.now);
            let d = Decision {
                backend: b,
                outcome: Outcome::Hit,
                issue_cookie: refresh.then_some(pin.client_key),
                key: Key::client_key(pin.client_key),
                pinned_to_draining: !pool.takes_new(b),
                remember: false,
            };
            let why = if refresh {
                Reason::PinRefreshed
            } else {
                Reason::Pinned
            };
            return Some((d, why));
        }
        // The pinned backend is gone, down or disabled: re-place by the client key.
        let key = Key::client_key(pin.client_key);
        let b = place(pool, key.as_bytes(), &[])?;
        let d = Decision {
            backend: b,
            outcome: Outcome::Moved,
            issue_cookie: Some(pin.client_key),
            key,
            pinned_to_draining: false,
            remember: false,
        };
        return Some((d, Reason::PinOrphaned));
    }
    let key = Key::ip(req.client_ip);
    let b = place(pool, key.as_bytes(), &[])?;
    let d = Decision {
        backend: b,
        outcome: Outcome::New,
        issue_cookie: Some(new_client_key()),
        key,
        pinned_to_draining: false,
        remember: false,
    };
    let why = if req.cookie.is_some() {
        Reason::PinInvalid
    } else {
        Reason::NewSession
    };
    Some((d, why))
}

/// route and learn modes: the application's session names a backend (`pinned`: the backend,
/// if it still exists, and the key that re-places the session). If that backend can take
/// it, it goes there; otherwise it is re-placed by the session id (spreading orphans evenly)
/// and counts as moved. A request without a session is placed by client IP as new. tether
/// sets no cookie of its own.
fn decide_session(
    pool: &Pool,
    req: &RequestKeys<'_>,
    pinned: Option<(Option<usize>, Key)>,
    session: Option<&[u8]>,
) -> Option<(Decision, Reason)> {
    let decision = |backend, outcome, key, pinned_to_draining| Decision {
        backend,
        outcome,
        issue_cookie: None,
        key,
        pinned_to_draining,
        remember: false,
    };
    if let Some((b, key)) = pinned {
        if let Some(b) = b.filter(|&b| pool.takes_pinned(b)) {
            return Some((
                decision(b, Outcome::Hit, key, !pool.takes_new(b)),
                Reason::Pinned,
            ));
        }
        let b = place(pool, key.as_bytes(), &[])?;
        return Some((decision(b, Outcome::Moved, key, false), Reason::PinOrphaned));
    }
    let key = Key::ip(req.client_ip);
    let b = place(pool, key.as_bytes(), &[])?;
    let why = if session.is_some() {
        Reason::PinInvalid
    } else {
        Reason::NewSession
    };
    Some((decision(b, Outcome::New, key, false), why))
}

/// ip and header modes: the key's own backend while it can serve the key (a draining one
/// keeps its keys until `drain_timeout`, as they may be returning clients), else the next
/// candidate. With `[remember]`, the backend a key is remembered at comes first (see
/// [`remember::recall`]).
fn decide_keyed(pool: &Pool, key: Key) -> Option<(Decision, Reason)> {
    if let Some(table) = &pool.remembered {
        if let Some(found) = remember::recall(pool, table, &key) {
            return found;
        }
    }
    let owner = pool.balancer.primary(key.as_bytes())?;
    if pool.draining_within_timeout(owner) {
        let d = Decision {
            backend: owner,
            outcome: Outcome::Hit,
            issue_cookie: None,
            key,
            pinned_to_draining: true,
            remember: pool.remembered.is_some(),
        };
        return Some((d, Reason::KeyOwner));
    }
    let b = place(pool, key.as_bytes(), &[])?;
    let (outcome, why) = if b == owner {
        (Outcome::Hit, Reason::KeyOwner)
    } else {
        (Outcome::Moved, Reason::KeyOwnerUnavailable)
    };
    let d = Decision {
        backend: b,
        outcome,
        issue_cookie: None,
        key,
        pinned_to_draining: false,
        remember: pool.remembered.is_some(),
    };
    Some((d, why))
}

/// The placement key of ip and header modes: the header's value, else the client IP.
pub fn keyed_key(pool: &Pool, req: &RequestKeys<'_>) -> Key {
    match (pool.affinity, req.header) {
        (Affinity::Header, Some(h)) => Key::new(h),
        _ => Key::ip(req.client_ip),
    }
}

/// Placement: the first candidate for `key` that takes new sessions and, with
/// `balance_factor`, is within the load bound; `exclude` lists backends already tried.
pub fn place(pool: &Pool, key: &[u8], exclude: &[usize]) -> Option<usize> {
    let bound = pool.balance_factor.map(|f| {
        let eligible = (0..pool.backends.len())
            .filter(|&i| pool.takes_new(i))
            .count();
        Bound::new(f, pool.total_in_flight(), eligible)
    });
    if pool.slow_start.is_none() {
        return pick(pool, key, exclude, bound, |i| pool.takes_new(i));
    }
    // Slow start admits a rising share of keys to a backend that just came up; if every
    // candidate is still warming up, one of them takes the session anyway.
    pick(pool, key, exclude, bound, |i| pool.takes_new_for(i, key))
        .or_else(|| pick(pool, key, exclude, bound, |i| pool.takes_new(i)))
}

fn pick(
    pool: &Pool,
    key: &[u8],
    exclude: &[usize],
    bound: Option<Bound>,
    eligible: impl Fn(usize) -> bool,
) -> Option<usize> {
    pick_bounded(
        pool.balancer
            .candidates(key)
            .filter(|i| !exclude.contains(i)),
        eligible,
        |i| pool.backends[i].shared.in_flight(),
        bound,
    )
}

/// `none` affinity: the backend with the fewest in-flight requests, ties rotating.
pub fn least_in_flight(pool: &Pool, exclude: &[usize]) -> Option<usize> {
    let n = pool.backends.len();
    if n == 0 {
        return None;
    }
    let start = pool.shared.rotor.fetch_add(1, Ordering::Relaxed) % n;
    let pick = |ramped: bool| {
        (0..n)
            .map(|k| (start + k) % n)
            .filter(|i| pool.takes_new(*i) && !exclude.contains(i))
            // Slow start: a warming backend is a candidate with the probability it has earned.
            .filter(|&i| !ramped || fastrand::f64() < pool.ramp(i))
            .min_by_key(|&i| pool.backends[i].shared.in_flight())
    };
    if pool.slow_start.is_none() {
        return pick(false);
    }
    pick(true).or_else(|| pick(false))
}

/// `max_conns`: a request that is not following its session (new, or re-placed) skips
/// backends whose every slot is taken, along its own candidate order; when all are full it
/// stays on its first choice and queues there. Pinned requests, and every request in `ip`
/// and `header` mode (the key's backend is its pin), are left where they are.
pub fn skip_full(pool: &Pool, d: &mut Decision) {
    if d.outcome == Outcome::Hit
        || matches!(pool.affinity, Affinity::Ip | Affinity::Header)
        || !pool.backends[d.backend].shared.queue.is_full()
    {
        return;
    }
    let full: Vec<usize> = (0..pool.backends.len())
        .filter(|&i| pool.backends[i].shared.queue.is_full())
        .collect();
    let next = match pool.affinity {
        Affinity::None => least_in_flight(pool, &full),
        _ => place(pool, d.key.as_bytes(), &full),
    };
    if let Some(b) = next {
        d.backend = b;
    }
}

/// The next backend after a connect failure, never one already tried. In cookie mode the
/// session is re-placed by its client key (issuing a cookie for it) and counts as moved.
pub fn retry(pool: &Pool, d: &mut Decision, tried: &[usize]) -> Option<usize> {
    let next = match pool.affinity {
        Affinity::None => least_in_flight(pool, tried)?,
        Affinity::Cookie => {
            if d.outcome == Outcome::Hit {
                // Keep the session's own client key for its new cookie.
                let ck = client_key_of(&d.key).unwrap_or_else(new_client_key);
                d.issue_cookie = Some(ck);
                d.outcome = Outcome::Moved;
            }
            place(pool, d.key.as_bytes(), tried)?
        }
        Affinity::Ip | Affinity::Header | Affinity::Route | Affinity::Learn => {
            if d.outcome == Outcome::Hit {
                d.outcome = Outcome::Moved;
            }
            // A remembered key is remembered again where it ends up.
            d.remember = pool.remembered.is_some();
            place(pool, d.key.as_bytes(), tried)?
        }
    };
    d.backend = next;
    d.pinned_to_draining = false;
    Some(next)
}

fn client_key_of(key: &Key) -> Option<u64> {
    let s = std::str::from_utf8(key.as_bytes()).ok()?;
    (s.len() == 16)
        .then(|| u64::from_str_radix(s, 16).ok())
        .flatten()
}

/// A fresh random client key for a new session.
pub fn new_client_key() -> u64 {
    fastrand::u64(..)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_key_text_round_trips() {
        let k = Key::client_key(0x0123_4567_89ab_cdef);
        assert_eq!(k.as_bytes(), b"0123456789abcdef");
        assert_eq!(client_key_of(&k), Some(0x0123_4567_89ab_cdef));
    }

    #[test]
    fn long_keys_go_to_the_heap_and_keep_their_bytes() {
        let long = vec![b'x'; 200];
        assert_eq!(Key::new(&long).as_bytes(), &long[..]);
        assert_eq!(Key::new(b"abc").as_bytes(), b"abc");
    }
}
