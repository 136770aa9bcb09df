//! The stable key hash: XXH3-64 with fixed, documented seeds.
//!
//! These seeds are part of tether's compatibility contract: every process, machine, CPU and
//! release maps a key to the same backend. XXH3's output is specified independently of the
//! SIMD path used to compute it. Changing anything here breaks the golden file on purpose.

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Seed for hashing request keys (client IP text, header value, cookie client key).
pub const KEY_SEED: u64 = 0x7465_7468_6572_0001; // "tether" 0x0001
/// Seed for a maglev backend's permutation offset.
pub const OFFSET_SEED: u64 = 0x7465_7468_6572_0002;
/// Seed for a maglev backend's permutation skip.
pub const SKIP_SEED: u64 = 0x7465_7468_6572_0003;

/// The hash of a request key.
#[inline]
pub fn key_hash(key: &[u8]) -> u64 {
    xxh3_64_with_seed(key, KEY_SEED)
}

#[inline]
pub fn seeded(bytes: &[u8], seed: u64) -> u64 {
    xxh3_64_with_seed(bytes, seed)
}

/// splitmix64's finalizer: derives the k-th independent probe from one key hash.
#[inline]
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_hash_is_pinned() {
        // Pinned values: if these change, every deployed mapping changes.
        assert_eq!(key_hash(b""), 0xae87_de90_bbf8_a130);
        assert_eq!(key_hash(b"10.0.0.1"), 0x1a40_ecbe_fbea_495d);
        assert_eq!(key_hash(b"user-42"), 0x80f7_e980_9d13_ac15);
    }
}
