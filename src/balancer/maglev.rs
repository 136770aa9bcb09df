//! Maglev hashing (Eisenbud et al., NSDI 2016) with weights: a prime-sized lookup table
//! filled from per-backend permutations, so each backend owns ~1/N of the slots and a
//! membership change moves few of them.

use super::hash::{key_hash, mix, seeded, OFFSET_SEED, SKIP_SEED};
use super::Member;

#[derive(Debug, Clone)]
pub struct Maglev {
    /// slot → member index.
    table: Vec<u16>,
    members: usize,
}

/// Members beyond this are not supported by the u16 table.
pub const MAX_MEMBERS: usize = u16::MAX as usize;

impl Maglev {
    /// Builds the table. The result does not depend on the order of `members` (they are
    /// filled in order of id), so reordering the config file moves nothing.
    ///
    /// `table_size` should be a prime larger than the member count (validated by config);
    /// members past [`MAX_MEMBERS`] are ignored.
    pub fn build(members: &[Member<'_>], table_size: u32) -> Maglev {
        let m = table_size.max(2) as usize;
        let n = members.len().min(MAX_MEMBERS);
        if n == 0 {
            return Maglev {
                table: Vec::new(),
                members: 0,
            };
        }
        // Fill order by id keeps the table independent of file order.
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| members[a].id.cmp(members[b].id));

        // Per member: current permutation position and skip.
        let mut pos = Vec::with_capacity(n);
        let mut skip = Vec::with_capacity(n);
        for &i in &order {
            let id = members[i].id.as_bytes();
            pos.push((seeded(id, OFFSET_SEED) % m as u64) as usize);
            skip.push((seeded(id, SKIP_SEED) % (m as u64 - 1) + 1) as usize);
        }
        const EMPTY: u16 = u16::MAX;
        let mut table = vec![EMPTY; m];
        let mut filled = 0;
        'fill: loop {
            for (k, &i) in order.iter().enumerate() {
                for _ in 0..members[i].weight.max(1) {
                    // Next unfilled slot in this member's permutation.
                    let mut c = pos[k];
                    while table[c] != EMPTY {
                        c += skip[k];
                        if c >= m {
                            c -= m;
                        }
                    }
                    table[c] = i as u16;
                    let mut next = c + skip[k];
                    if next >= m {
                        next -= m;
                    }
                    pos[k] = next;
                    filled += 1;
                    if filled == m {
                        break 'fill;
                    }
                }
            }
        }
        Maglev { table, members: n }
    }

    pub fn len(&self) -> usize {
        self.members
    }

    pub fn is_empty(&self) -> bool {
        self.members == 0
    }

    /// The member owning this key's slot.
    #[inline]
    pub fn lookup(&self, key: &[u8]) -> Option<usize> {
        self.slot_owner(key_hash(key), 0)
    }

    #[inline]
    fn slot_owner(&self, h: u64, attempt: u64) -> Option<usize> {
        if self.table.is_empty() {
            return None;
        }
        let h = if attempt == 0 {
            h
        } else {
            mix(h ^ attempt.wrapping_mul(0x9e37_79b9_7f4a_7c15))
        };
        Some(self.table[reduce(h, self.table.len())] as usize)
    }

    /// Preference order: the key's slot, then slots of independent re-hashes of the key
    /// (so the sessions of a lost backend spread evenly over the rest), then, should those
    /// run out, every member in index order. May repeat members; [`super::Candidates`]
    /// removes repeats.
    pub fn candidates(&self, key: &[u8]) -> Probe<'_> {
        Probe {
            maglev: self,
            hash: key_hash(key),
            attempt: 0,
            limit: 8 * self.members as u64 + 32,
            sweep: 0,
        }
    }

    /// How many table slots each member owns.
    pub fn slot_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.members];
        for &i in &self.table {
            counts[i as usize] += 1;
        }
        counts
    }
}

/// Maps a 64-bit hash uniformly onto `0..n` with a multiply-shift (Lemire's fast range
/// reduction) instead of a division. Part of the pinned mapping.
#[inline]
fn reduce(h: u64, n: usize) -> usize {
    ((u128::from(h) * n as u128) >> 64) as usize
}

/// Candidate probe sequence of one key.
pub struct Probe<'a> {
    maglev: &'a Maglev,
    hash: u64,
    attempt: u64,
    limit: u64,
    sweep: usize,
}

impl Iterator for Probe<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        if self.attempt < self.limit {
            let owner = self.maglev.slot_owner(self.hash, self.attempt);
            self.attempt += 1;
            return owner;
        }
        if self.sweep < self.maglev.members {
            self.sweep += 1;
            return Some(self.sweep - 1);
        }
        None
    }
}
