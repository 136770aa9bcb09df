//! Backend selection: maglev and ketama consistent hashing, fallback order and bounded loads; pure.
//!
//! A [`Balancer`] is built from pool *membership* only (ids, addresses, weights), never from
//! health, so health flaps and drains move no keys: the caller walks [`Balancer::candidates`]
//! and skips whatever is unavailable at lookup time.

pub mod hash;
pub mod ketama;
pub mod maglev;
pub mod slow_start;

pub use ketama::Ketama;
pub use maglev::Maglev;

/// Default maglev table size: prime, ~65 slots per backend at 1000 backends.
pub const DEFAULT_TABLE_SIZE: u32 = 65537;

/// One pool member as selection sees it.
#[derive(Debug, Clone, Copy)]
pub struct Member<'a> {
    /// Stable identity; maglev places a backend by this.
    pub id: &'a str,
    /// `host:port` as written; ketama places a backend by this (as nginx does).
    pub address: &'a str,
    pub weight: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Maglev { table_size: u32 },
    Ketama,
}

/// A built selection table for one pool.
#[derive(Debug, Clone)]
pub enum Balancer {
    Maglev(Maglev),
    Ketama(Ketama),
}

impl Balancer {
    /// Builds the table. Indices returned by lookups are positions in `members`.
    pub fn build(algorithm: Algorithm, members: &[Member<'_>]) -> Balancer {
        match algorithm {
            Algorithm::Maglev { table_size } => {
                Balancer::Maglev(Maglev::build(members, table_size))
            }
            Algorithm::Ketama => Balancer::Ketama(Ketama::build(members)),
        }
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        match self {
            Balancer::Maglev(m) => m.len(),
            Balancer::Ketama(k) => k.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every member exactly once, most preferred first, for this key.
    pub fn candidates<'a>(&'a self, key: &[u8]) -> Candidates<'a> {
        let inner = match self {
            Balancer::Maglev(m) => Inner::Maglev(m.candidates(key)),
            Balancer::Ketama(k) => Inner::Ketama(k.candidates(key)),
        };
        Candidates {
            inner,
            seen: Seen::default(),
            left: self.len(),
        }
    }

    /// The first candidate for this key, ignoring availability.
    #[inline]
    pub fn primary(&self, key: &[u8]) -> Option<usize> {
        match self {
            Balancer::Maglev(m) => m.lookup(key),
            Balancer::Ketama(k) => k.lookup(key),
        }
    }
}

/// Iterator over distinct member indices in preference order.
pub struct Candidates<'a> {
    inner: Inner<'a>,
    seen: Seen,
    left: usize,
}

enum Inner<'a> {
    Maglev(maglev::Probe<'a>),
    Ketama(ketama::Walk<'a>),
}

impl Iterator for Candidates<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        while self.left > 0 {
            let i = match &mut self.inner {
                Inner::Maglev(p) => p.next(),
                Inner::Ketama(w) => w.next(),
            }?;
            if self.seen.insert(i) {
                self.left -= 1;
                return Some(i);
            }
        }
        None
    }
}

/// A set of member indices that allocates only past 128 members.
#[derive(Default)]
struct Seen {
    small: u128,
    big: Vec<u64>,
}

impl Seen {
    /// Adds `i`; false when it was already there.
    fn insert(&mut self, i: usize) -> bool {
        if i < 128 {
            let bit = 1u128 << i;
            let new = self.small & bit == 0;
            self.small |= bit;
            return new;
        }
        let (word, bit) = ((i - 128) / 64, 1u64 << ((i - 128) % 64));
        if self.big.len() <= word {
            self.big.resize(word + 1, 0);
        }
        let new = self.big[word] & bit == 0;
        self.big[word] |= bit;
        new
    }
}

/// Bounded loads ("consistent hashing with bounded loads", Mirrokni et al.): the first
/// `eligible` candidate whose in-flight count stays within
/// `ceil(factor × (total + 1) / eligible_count)`. With no factor, simply the first eligible one.
/// If every eligible candidate is over the bound (only possible with stale counts), the
/// first eligible one is returned rather than nothing.
pub fn pick_bounded(
    candidates: impl Iterator<Item = usize>,
    eligible: impl Fn(usize) -> bool,
    load: impl Fn(usize) -> u64,
    bound: Option<Bound>,
) -> Option<usize> {
    let mut first = None;
    for i in candidates {
        if !eligible(i) {
            continue;
        }
        match bound {
            None => return Some(i),
            Some(b) => {
                if load(i) < b.capacity {
                    return Some(i);
                }
                first.get_or_insert(i);
            }
        }
    }
    first
}

/// The per-backend in-flight limit of bounded loads for one lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bound {
    pub capacity: u64,
}

impl Bound {
    /// `factor` > 1; `total` = in-flight requests over the pool; `eligible` = backends that
    /// could take new sessions. A backend may take a new request while its load is below the
    /// capacity.
    pub fn new(factor: f64, total: u64, eligible: usize) -> Bound {
        let eligible = eligible.max(1) as f64;
        let capacity = (factor * (total as f64 + 1.0) / eligible).ceil() as u64;
        Bound {
            capacity: capacity.max(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_handles_small_and_large_indices() {
        let mut s = Seen::default();
        assert!(s.insert(3));
        assert!(!s.insert(3));
        assert!(s.insert(127));
        assert!(s.insert(1000));
        assert!(!s.insert(1000));
        assert!(s.insert(129));
    }

    #[test]
    fn bounded_pick_skips_overloaded_backends() {
        // Loads: backend 0 is busy, 1 and 2 are idle; total 10 over 3 → cap ceil(1.25*11/3)=5.
        let loads = [10u64, 0, 0];
        let b = Bound::new(1.25, 10, 3);
        assert_eq!(b.capacity, 5);
        let got = pick_bounded([0, 1, 2].into_iter(), |_| true, |i| loads[i], Some(b));
        assert_eq!(got, Some(1));
        // Without a bound the first eligible candidate wins.
        let got = pick_bounded([0, 1, 2].into_iter(), |i| i != 0, |i| loads[i], None);
        assert_eq!(got, Some(1));
        // Nothing eligible: nothing picked.
        assert_eq!(
            pick_bounded([0, 1].into_iter(), |_| false, |_| 0, None),
            None
        );
    }
}
