//! Counters: per-backend responses, upstream errors and durations, and the pool-wide counters.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crate::proxy::upstream::error::ErrorKind;

/// Upper bounds (seconds) of the request duration histogram.
pub const DURATION_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// Per-backend counters, lock-free; rendered by the metrics endpoint.
#[derive(Debug)]
pub struct BackendStats {
    /// Responses by status code 100..=599.
    codes: Box<[AtomicU64]>,
    errors: [AtomicU64; ErrorKind::ALL.len()],
    /// Per-bucket (not cumulative) counts; the last slot is +Inf.
    duration_buckets: [AtomicU64; DURATION_BUCKETS.len() + 1],
    duration_sum_us: AtomicU64,
}

impl Default for BackendStats {
    fn default() -> Self {
        BackendStats {
            codes: (100..600).map(|_| AtomicU64::new(0)).collect(),
            errors: Default::default(),
            duration_buckets: Default::default(),
            duration_sum_us: AtomicU64::new(0),
        }
    }
}

impl BackendStats {
    pub fn count_status(&self, code: u16) {
        if let Some(c) = self.codes.get(usize::from(code).wrapping_sub(100)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// (code, count) for every code seen.
    pub fn statuses(&self) -> impl Iterator<Item = (u16, u64)> + '_ {
        self.codes.iter().enumerate().filter_map(|(i, c)| {
            let n = c.load(Ordering::Relaxed);
            (n > 0).then_some((i as u16 + 100, n))
        })
    }

    pub fn count_error(&self, kind: ErrorKind) {
        self.errors[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn errors(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        ErrorKind::ALL
            .iter()
            .zip(&self.errors)
            .map(|(k, c)| (k.as_str(), c.load(Ordering::Relaxed)))
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = DURATION_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(DURATION_BUCKETS.len());
        self.duration_buckets[i].fetch_add(1, Ordering::Relaxed);
        self.duration_sum_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// (sum in seconds, count, per-bucket counts with upper bounds; the last is +Inf).
    pub fn durations(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut buckets = Vec::with_capacity(DURATION_BUCKETS.len() + 1);
        let mut count = 0;
        for (i, c) in self.duration_buckets.iter().enumerate() {
            let n = c.load(Ordering::Relaxed);
            count += n;
            buckets.push((DURATION_BUCKETS.get(i).copied().unwrap_or(f64::INFINITY), n));
        }
        let sum = self.duration_sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        (sum, count, buckets)
    }
}

/// Pool-wide counters used by bounded loads, least-in-flight placement and metrics.
#[derive(Debug, Default)]
pub struct PoolShared {
    pub in_flight: AtomicU64,
    /// Rotating start for least-in-flight ties.
    pub rotor: AtomicUsize,
    /// affinity_total by outcome: hit, new, moved.
    pub affinity: [AtomicU64; 3],
    pub retries: AtomicU64,
    /// Requests answered 503 because no backend could take them.
    pub no_backend: AtomicU64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_and_durations_are_counted() {
        let st = BackendStats::default();
        st.count_status(200);
        st.count_status(200);
        st.count_status(503);
        st.count_status(42); // ignored, never panics
        assert_eq!(st.statuses().collect::<Vec<_>>(), vec![(200, 2), (503, 1)]);
        st.observe(Duration::from_millis(3));
        st.observe(Duration::from_secs(60));
        let (_, count, buckets) = st.durations();
        assert_eq!(count, 2);
        assert_eq!(buckets.last().unwrap().1, 1, "+Inf bucket");
    }
}
