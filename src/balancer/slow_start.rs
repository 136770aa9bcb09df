//! Slow start: how much of its weight a backend that just came up has earned, and which
//! placement keys it admits so far; pure (the caller supplies the clock).
//!
//! Each (key, backend) pair has a fixed threshold in [0, 1) derived from the key's hash; the
//! backend admits a key once the window's elapsed fraction passes that threshold. The
//! fraction only rises during a window, so a key that has come to the backend never leaves
//! it again (no flip-flop), and the admitted share of the keys that map to it is the
//! fraction itself: its share of new sessions rises linearly from 0 to its full weight.

use super::hash::{mix, seeded, KEY_SEED};

/// Seed for a backend's slow-start thresholds.
pub const RAMP_SEED: u64 = 0x7465_7468_6572_0004;

/// The share of its full weight a backend has after `elapsed_ms` of a `window_ms` window:
/// 0 at the start, rising linearly, 1 from the end on (and for an empty window).
pub fn fraction(elapsed_ms: u64, window_ms: u64) -> f64 {
    if window_ms == 0 || elapsed_ms >= window_ms {
        1.0
    } else {
        elapsed_ms as f64 / window_ms as f64
    }
}

/// This key's threshold for this backend, uniform in [0, 1) and fixed for the pair (the
/// same in every process, like the mapping itself).
pub fn threshold(key: &[u8], backend_id: &str) -> f64 {
    let h = mix(seeded(key, KEY_SEED) ^ seeded(backend_id.as_bytes(), RAMP_SEED));
    // The top 53 bits make an exact f64 in [0, 1).
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// Does a backend at `fraction` of its ramp take new sessions placed by `key`?
pub fn admits(key: &[u8], backend_id: &str, fraction: f64) -> bool {
    fraction >= 1.0 || threshold(key, backend_id) < fraction
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_curve_is_linear_from_zero_to_full() {
        assert_eq!(fraction(0, 60_000), 0.0);
        assert_eq!(fraction(15_000, 60_000), 0.25);
        assert_eq!(fraction(30_000, 60_000), 0.5);
        assert_eq!(fraction(59_999, 60_000), 59_999.0 / 60_000.0);
        assert_eq!(fraction(60_000, 60_000), 1.0);
        assert_eq!(fraction(600_000, 60_000), 1.0);
        assert_eq!(fraction(5, 0), 1.0, "no window: full weight at once");
        // Monotone: never falls back within a window.
        let mut last = 0.0;
        for t in (0..=70_000).step_by(700) {
            let f = fraction(t, 60_000);
            assert!(f >= last);
            last = f;
        }
    }

    #[test]
    fn admitted_share_follows_the_fraction() {
        let keys: Vec<String> = (0..20_000)
            .map(|i| format!("10.1.{}.{}", i / 256, i % 256))
            .collect();
        for f in [0.0, 0.1, 0.25, 0.5, 0.75, 0.9] {
            let n = keys
                .iter()
                .filter(|k| admits(k.as_bytes(), "app3", f))
                .count();
            let share = n as f64 / keys.len() as f64;
            assert!((share - f).abs() < 0.015, "fraction {f}: admitted {share}");
        }
        assert!(keys.iter().all(|k| admits(k.as_bytes(), "app3", 1.0)));
        assert!(!keys.iter().any(|k| admits(k.as_bytes(), "app3", 0.0)));
    }

    #[test]
    fn each_key_returns_once_and_never_flips_back() {
        // Walk a window in small steps; record each key's first admitted step and check
        // it stays admitted at every later step.
        let keys: Vec<String> = (0..2_000).map(|i| format!("user-{i}")).collect();
        let window = 60_000;
        let mut admitted_at: Vec<Option<u64>> = vec![None; keys.len()];
        for t in (0..=window).step_by(250) {
            let f = fraction(t, window);
            for (k, at) in keys.iter().zip(admitted_at.iter_mut()) {
                let now = admits(k.as_bytes(), "node-b", f);
                match *at {
                    Some(first) => assert!(now, "{k} admitted at {first} ms, dropped at {t} ms"),
                    None if now => *at = Some(t),
                    None => {}
                }
            }
        }
        assert!(
            admitted_at.iter().all(Option::is_some),
            "all back by the end"
        );
        // Returns are spread over the window, not bunched at one end.
        let early = admitted_at
            .iter()
            .filter(|a| a.unwrap() <= window / 2)
            .count();
        assert!(
            (900..=1100).contains(&early),
            "{early} of 2000 back by half-time"
        );
    }

    #[test]
    fn thresholds_differ_per_backend_and_are_pinned() {
        let a = threshold(b"10.0.0.1", "app1");
        let b = threshold(b"10.0.0.1", "app2");
        assert_ne!(a, b);
        assert!((0.0..1.0).contains(&a));
        // Fixed across processes and releases (like the mapping).
        assert_eq!(threshold(b"10.0.0.1", "app1"), a);
    }
}
