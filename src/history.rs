//! The dashboard's 15-minute history: a sampler reads the counters `/status` and `/metrics`
//! read, every [`INTERVAL`], into fixed-size rings of per-second rates and gauges.
//!
//! Nothing here runs per request. Memory is fixed per series (`CAPACITY` values allocated
//! when the series first appears), and a series whose backend or pool has been gone for the
//! whole window is dropped, so the total is bounded by what the last 15 minutes held.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use parking_lot::Mutex;
use serde_json::{json, Map, Value};

use crate::runtime::Snapshot;

/// Time between two samples.
pub const INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);
/// Samples kept per series: 15 minutes at one every 2 s.
pub const CAPACITY: usize = 450;

/// A ring of `cap` values allocated once: pushing past `cap` overwrites the oldest.
#[derive(Debug, Clone)]
pub struct Ring<T> {
    buf: Box<[T]>,
    /// Index of the oldest value.
    start: usize,
    len: usize,
}

impl<T: Copy> Ring<T> {
    /// A ring of capacity `cap` (at least 1) already holding `len` copies of `fill` (at most
    /// `cap`), so a series that appears late lines up with the older ones.
    pub fn filled(cap: usize, fill: T, len: usize) -> Self {
        let cap = cap.max(1);
        Ring {
            buf: vec![fill; cap].into_boxed_slice(),
            start: 0,
            len: len.min(cap),
        }
    }

    pub fn push(&mut self, v: T) {
        let cap = self.buf.len();
        if self.len < cap {
            self.buf[(self.start + self.len) % cap] = v;
            self.len += 1;
        } else {
            self.buf[self.start] = v;
            self.start = (self.start + 1) % cap;
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.buf.len()
    }

    /// Oldest first.
    pub fn iter(&self) -> impl Iterator<Item = T> + '_ {
        (0..self.len).map(move |i| self.buf[(self.start + i) % self.buf.len()])
    }

    pub fn last(&self) -> Option<T> {
        (self.len > 0).then(|| self.buf[(self.start + self.len - 1) % self.buf.len()])
    }
}

/// Per-second rate of a counter that went from `prev` to `cur` in `dt_s` seconds. A counter
/// that went down was reset (its backend was re-created by a reload, or removed and added
/// again): it counted `cur` since it restarted from zero, never a negative rate.
pub fn rate(prev: u64, cur: u64, dt_s: f64) -> f32 {
    if dt_s <= 0.0 || !dt_s.is_finite() {
        return f32::NAN;
    }
    let delta = if cur >= prev { cur - prev } else { cur };
    (delta as f64 / dt_s) as f32
}

/// A counter's rate series plus the last value read.
#[derive(Debug)]
struct CounterSeries {
    prev: Option<u64>,
    rates: Ring<f32>,
}

impl CounterSeries {
    fn new(len: usize) -> Self {
        CounterSeries {
            prev: None,
            rates: Ring::filled(CAPACITY, f32::NAN, len),
        }
    }

    /// Records `cur`; the first reading (no previous one) and a missing interval give a gap.
    fn record(&mut self, cur: u64, dt_s: Option<f64>) {
        let v = match (self.prev, dt_s) {
            (Some(prev), Some(dt)) => rate(prev, cur, dt),
            _ => f32::NAN,
        };
        self.prev = Some(cur);
        self.rates.push(v);
    }

    /// The series' owner is gone this sample: a gap, and the next reading starts afresh.
    fn absent(&mut self) {
        self.prev = None;
        self.rates.push(f32::NAN);
    }

    fn all_absent(&self) -> bool {
        self.rates.iter().all(f32::is_nan)
    }
}

#[derive(Debug)]
struct BackendSeries {
    address: String,
    requests: CounterSeries,
    pinned: CounterSeries,
    in_flight: Ring<f32>,
    /// Requests waiting in the backend's queue (`max_conns`).
    queued: Ring<f32>,
}

impl BackendSeries {
    /// Present in at least one sample of the window (its in-flight gauge is read whenever
    /// it is).
    fn seen_in_window(&self) -> bool {
        self.in_flight.iter().any(|v| !v.is_nan())
    }
}

#[derive(Debug)]
struct PoolSeries {
    /// hit, new, moved (the order of `PoolShared::affinity`).
    affinity: [CounterSeries; 3],
    backends: BTreeMap<String, BackendSeries>,
}

const OUTCOMES: [&str; 3] = ["hit", "new", "moved"];

#[derive(Debug)]
struct Inner {
    /// Unix milliseconds of each sample.
    times: Ring<u64>,
    pools: BTreeMap<String, PoolSeries>,
}

/// The history `GET /history` returns. Locked by the sampler and the admin API only.
#[derive(Debug)]
pub struct History {
    inner: Mutex<Inner>,
}

impl Default for History {
    fn default() -> Self {
        History {
            inner: Mutex::new(Inner {
                times: Ring::filled(CAPACITY, 0, 0),
                pools: BTreeMap::new(),
            }),
        }
    }
}

impl History {
    /// Takes one sample of `snap`'s counters at `now_unix_ms`.
    pub fn sample(&self, snap: &Snapshot, now_unix_ms: u64) {
        let mut guard = self.inner.lock();
        let inner = &mut *guard;
        let len = inner.times.len();
        let dt_s = inner
            .times
            .last()
            .filter(|&t| now_unix_ms > t)
            .map(|t| (now_unix_ms - t) as f64 / 1000.0);
        let mut seen_pools = Vec::with_capacity(snap.pools.len());
        for p in &snap.pools {
            seen_pools.push(&*p.name);
            let ps = inner
                .pools
                .entry(p.name.to_string())
                .or_insert_with(|| PoolSeries {
                    affinity: std::array::from_fn(|_| CounterSeries::new(len)),
                    backends: BTreeMap::new(),
                });
            for (i, s) in ps.affinity.iter_mut().enumerate() {
                s.record(p.shared.affinity[i].load(Ordering::Relaxed), dt_s);
            }
            let mut seen = Vec::with_capacity(p.backends.len());
            for b in &p.backends {
                seen.push(&*b.id);
                let bs = ps
                    .backends
                    .entry(b.id.to_string())
                    .or_insert_with(|| BackendSeries {
                        address: b.address.to_string(),
                        requests: CounterSeries::new(len),
                        pinned: CounterSeries::new(len),
                        in_flight: Ring::filled(CAPACITY, f32::NAN, len),
                        queued: Ring::filled(CAPACITY, f32::NAN, len),
                    });
                if bs.address != *b.address {
                    // Same id, new address: a new backend whose counters start at zero
                    // (the reset rule of `rate` covers it).
                    bs.address = b.address.to_string();
                }
                let s = &b.shared;
                bs.requests.record(s.requests.load(Ordering::Relaxed), dt_s);
                bs.pinned
                    .record(s.pinned_while_draining.load(Ordering::Relaxed), dt_s);
                bs.in_flight.push(s.in_flight() as f32);
                bs.queued.push(s.queue.queued() as f32);
            }
            for (id, bs) in ps.backends.iter_mut() {
                if !seen.contains(&id.as_str()) {
                    bs.requests.absent();
                    bs.pinned.absent();
                    bs.in_flight.push(f32::NAN);
                    bs.queued.push(f32::NAN);
                }
            }
            ps.backends.retain(|_, bs| bs.seen_in_window());
        }
        for (name, ps) in inner.pools.iter_mut() {
            if !seen_pools.contains(&name.as_str()) {
                for s in ps.affinity.iter_mut() {
                    s.absent();
                }
                for bs in ps.backends.values_mut() {
                    bs.requests.absent();
                    bs.pinned.absent();
                    bs.in_flight.push(f32::NAN);
                    bs.queued.push(f32::NAN);
                }
                ps.backends.retain(|_, bs| bs.seen_in_window());
            }
        }
        inner
            .pools
            .retain(|_, ps| !ps.backends.is_empty() || ps.affinity.iter().any(|s| !s.all_absent()));
        inner.times.push(now_unix_ms);
    }

    /// The `GET /history` document: sample times (Unix ms, oldest first) and, per pool and
    /// backend, one value per sample (`null` where there is none).
    pub fn to_json(&self) -> Value {
        let inner = self.inner.lock();
        let mut pools = Map::new();
        for (name, ps) in &inner.pools {
            let mut affinity = Map::new();
            for (i, s) in ps.affinity.iter().enumerate() {
                affinity.insert(OUTCOMES[i].to_string(), values(&s.rates));
            }
            let mut backends = Map::new();
            for (id, bs) in &ps.backends {
                backends.insert(
                    id.clone(),
                    json!({
                        "address": bs.address,
                        "requests_per_s": values(&bs.requests.rates),
                        "pinned_per_s": values(&bs.pinned.rates),
                        "in_flight": values(&bs.in_flight),
                        "queued": values(&bs.queued),
                    }),
                );
            }
            pools.insert(
                name.clone(),
                json!({ "affinity": affinity, "backends": backends }),
            );
        }
        json!({
            "interval_ms": INTERVAL.as_millis() as u64,
            "capacity": CAPACITY,
            "t": inner.times.iter().collect::<Vec<_>>(),
            "pools": pools,
        })
    }
}

/// A ring as a JSON array, gaps as `null`, rounded to 3 decimals.
fn values(r: &Ring<f32>) -> Value {
    Value::Array(
        r.iter()
            .map(|v| {
                if v.is_finite() {
                    json!((f64::from(v) * 1000.0).round() / 1000.0)
                } else {
                    Value::Null
                }
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_keeps_the_last_capacity_values_in_order() {
        let mut r = Ring::filled(3, 0u64, 0);
        assert!(r.is_empty());
        assert_eq!(r.last(), None);
        for v in 1..=2 {
            r.push(v);
        }
        assert_eq!(r.iter().collect::<Vec<_>>(), vec![1, 2]);
        for v in 3..=7 {
            r.push(v);
        }
        assert_eq!(r.len(), 3);
        assert_eq!(r.capacity(), 3);
        assert_eq!(r.iter().collect::<Vec<_>>(), vec![5, 6, 7]);
        assert_eq!(r.last(), Some(7));
    }

    #[test]
    fn ring_prefilled_lines_up_and_never_grows() {
        let mut r = Ring::filled(CAPACITY, -1i32, 10);
        assert_eq!(r.len(), 10);
        for v in 0..10_000 {
            r.push(v);
        }
        assert_eq!(r.len(), CAPACITY);
        assert_eq!(r.capacity(), CAPACITY);
        assert_eq!(r.iter().next(), Some(10_000 - CAPACITY as i32));
        // A prefill larger than the capacity is clamped.
        assert_eq!(Ring::filled(4, 0u8, 9).len(), 4);
        // A zero capacity still holds the latest value instead of panicking.
        let mut z = Ring::filled(0, 0u8, 0);
        z.push(3);
        assert_eq!(z.last(), Some(3));
    }

    #[test]
    fn rate_is_per_second_and_never_negative() {
        assert_eq!(rate(100, 120, 2.0), 10.0);
        assert_eq!(rate(5, 5, 2.0), 0.0);
        // Reset (backend re-created by a reload): it counted 4 since zero.
        assert_eq!(rate(1000, 4, 2.0), 2.0);
        assert_eq!(rate(1000, 0, 2.0), 0.0);
        assert!(rate(0, 10, 0.0).is_nan());
        assert!(rate(0, 10, -1.0).is_nan());
        assert!(rate(0, 10, f64::INFINITY).is_nan());
    }

    #[test]
    fn counter_series_gaps_then_rates() {
        let mut s = CounterSeries::new(0);
        s.record(10, None);
        s.record(30, Some(2.0));
        s.absent();
        // Back after a gap: a fresh start, so no rate against the old reading.
        s.record(2, Some(2.0));
        s.record(8, Some(2.0));
        let v: Vec<f32> = s.rates.iter().collect();
        assert!(v[0].is_nan());
        assert_eq!(v[1], 10.0);
        assert!(v[2].is_nan());
        assert!(v[3].is_nan());
        assert_eq!(v[4], 3.0);
        assert!(v.iter().all(|x| x.is_nan() || *x >= 0.0));
    }

    fn snapshot(text: &str, registry: &std::sync::Arc<crate::state::Registry>) -> Snapshot {
        let config = crate::config::Config::parse(text, "test.toml").expect("valid test config");
        Snapshot::build(
            std::sync::Arc::new(config),
            crate::tls::TlsMaterial::default(),
            registry,
            None,
        )
    }

    const TWO: &str = r#"
[listen]
http = ["127.0.0.1:0"]
[pools.shop]
affinity = "cookie"
[[pools.shop.backends]]
id = "a"
address = "127.0.0.1:1"
[[pools.shop.backends]]
id = "b"
address = "127.0.0.1:2"
"#;

    fn series(h: &History, backend: &str, name: &str) -> Vec<Value> {
        h.to_json()["pools"]["shop"]["backends"][backend][name]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    #[test]
    fn sampler_rates_survive_reloads_and_removals_without_going_negative() {
        let registry = std::sync::Arc::new(crate::state::Registry::default());
        let h = History::default();
        let snap = snapshot(TWO, &registry);
        let a = &snap.pools[0].backends[0].shared;
        h.sample(&snap, 10_000);
        a.requests.fetch_add(20, Ordering::Relaxed);
        snap.pools[0].shared.affinity[1].fetch_add(4, Ordering::Relaxed);
        h.sample(&snap, 12_000);
        assert_eq!(
            series(&h, "a", "requests_per_s"),
            vec![Value::Null, json!(10.0)]
        );
        assert_eq!(
            h.to_json()["pools"]["shop"]["affinity"]["new"],
            json!([null, 2.0])
        );

        // Reload: `a` moves to a new address (a new backend, counters from zero) and `b`
        // leaves the config.
        let moved = TWO.replace("127.0.0.1:1", "127.0.0.1:9").replace(
            "[[pools.shop.backends]]\nid = \"b\"\naddress = \"127.0.0.1:2\"\n",
            "",
        );
        let snap2 = snapshot(&moved, &registry);
        assert_eq!(snap2.pools[0].backends.len(), 1);
        snap2.pools[0].backends[0]
            .shared
            .requests
            .fetch_add(6, Ordering::Relaxed);
        h.sample(&snap2, 14_000);
        let a_rates = series(&h, "a", "requests_per_s");
        assert_eq!(a_rates.len(), 3);
        assert_eq!(a_rates[2], json!(3.0), "reset counter counted from zero");
        assert_eq!(
            h.to_json()["pools"]["shop"]["backends"]["a"]["address"],
            "127.0.0.1:9"
        );
        assert_eq!(
            series(&h, "b", "in_flight")[2],
            Value::Null,
            "removed: a gap"
        );
        assert_eq!(
            series(&h, "b", "queued")[2],
            Value::Null,
            "removed: a gap in the queue series too"
        );
        assert_eq!(
            series(&h, "a", "queued")[0],
            serde_json::json!(0.0),
            "an idle backend's queue is sampled as 0"
        );
        assert_eq!(h.to_json()["t"], json!([10_000, 12_000, 14_000]));

        // Every value ever reported is absent or non-negative, and after a full window
        // without it the removed backend's series is gone.
        for i in 0..CAPACITY as u64 {
            h.sample(&snap2, 16_000 + i * 2000);
        }
        let doc = h.to_json();
        assert!(doc["pools"]["shop"]["backends"].get("b").is_none());
        assert_eq!(doc["t"].as_array().map(Vec::len), Some(CAPACITY));
        for v in series(&h, "a", "requests_per_s") {
            assert!(v.is_null() || v.as_f64().is_some_and(|x| x >= 0.0));
        }

        // A pool renamed away: the old one gets gaps, then goes after a full window.
        let renamed = snapshot(&moved.replace("pools.shop", "pools.cart"), &registry);
        h.sample(&renamed, 2_000_000);
        let doc = h.to_json();
        assert_eq!(
            doc["pools"]["shop"]["affinity"]["hit"][CAPACITY - 1],
            Value::Null
        );
        assert!(doc["pools"]["cart"]["backends"]["a"].is_object());
        for i in 1..=CAPACITY as u64 {
            h.sample(&renamed, 2_000_000 + i * 2000);
        }
        let doc = h.to_json();
        assert!(doc["pools"].get("shop").is_none(), "a gone pool is dropped");
        assert_eq!(doc["pools"].as_object().map(|m| m.len()), Some(1));
    }
}
