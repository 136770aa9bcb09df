//! Prometheus metrics (`tether_*`): read at scrape time from the lock-free counters in the
//! registry and encoded with `prometheus-client`; nothing here runs per request.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::app::App;
use crate::runtime::Snapshot;
use crate::state::State;

/// The metrics text for the current snapshot.
pub fn render(app: &Arc<App>) -> String {
    let mut registry = Registry::with_prefix("tether");
    registry.register_collector(Box::new(Collector {
        app: app.clone(),
        snap: app.snapshot(),
    }));
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}

struct Collector {
    app: Arc<App>,
    snap: Arc<Snapshot>,
}

impl std::fmt::Debug for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("tether metrics collector")
    }
}

type Labels<'a> = Vec<(&'static str, std::borrow::Cow<'a, str>)>;

fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: Vec<(Labels, u64)>,
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in series {
        ConstCounter::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: Vec<(Labels, i64)>,
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in series {
        ConstGauge::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

impl prometheus_client::collector::Collector for Collector {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let snap = &self.snap;
        let backends = || {
            snap.pools
                .iter()
                .flat_map(|p| p.backends.iter().map(move |b| (p, b)))
        };
        let pb = |p: &crate::runtime::Pool, b: &crate::runtime::Backend| -> Labels<'static> {
            vec![
                ("pool", p.name.to_string().into()),
                ("backend", b.id.to_string().into()),
            ]
        };

        // requests_total: per backend and status; requests no backend took count with backend="".
        let mut req = Vec::new();
        for (p, b) in backends() {
            for (code, n) in b.shared.stats.statuses() {
                let mut l = pb(p, b);
                l.push(("code", code.to_string().into()));
                req.push((l, n));
            }
        }
        for p in &snap.pools {
            let n = p.shared.no_backend.load(Ordering::Relaxed);
            if n > 0 {
                req.push((
                    vec![
                        ("pool", p.name.to_string().into()),
                        ("backend", "".into()),
                        ("code", "503".into()),
                    ],
                    n,
                ));
            }
        }
        let unrouted = self.app.unrouted.load(Ordering::Relaxed);
        if unrouted > 0 {
            req.push((
                vec![
                    ("pool", "".into()),
                    ("backend", "".into()),
                    ("code", "404".into()),
                ],
                unrouted,
            ));
        }
        counter(
            &mut enc,
            "requests",
            "Client requests by pool, backend and status code.",
            req,
        )?;

        {
            let mut m = enc.encode_descriptor(
                "request_duration_seconds",
                "Time from request to the end of the response body.",
                None,
                MetricType::Histogram,
            )?;
            for (p, b) in backends() {
                let (sum, count, buckets) = b.shared.stats.durations();
                m.encode_family(&pb(p, b))?
                    .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                        sum, count, &buckets, None,
                    )?;
            }
        }

        gauge(
            &mut enc,
            "backend_up",
            "1 when health checks pass, whatever the admin state.",
            backends()
                .map(|(p, b)| (pb(p, b), i64::from(b.shared.healthy())))
                .collect(),
        )?;
        let mut states = Vec::new();
        for (p, b) in backends() {
            let now = b.shared.state();
            for s in State::ALL {
                let mut l = pb(p, b);
                l.push(("state", s.as_str().into()));
                states.push((l, i64::from(s == now)));
            }
        }
        gauge(
            &mut enc,
            "backend_state",
            "1 for the backend's current state.",
            states,
        )?;
        gauge(
            &mut enc,
            "backend_in_flight",
            "Requests in flight to the backend.",
            backends()
                .map(|(p, b)| (pb(p, b), b.shared.in_flight() as i64))
                .collect(),
        )?;
        let mut pinned = Vec::new();
        for (p, b) in backends() {
            pinned.push((
                pb(p, b),
                b.shared.pinned_while_draining.load(Ordering::Relaxed),
            ));
        }
        counter(
            &mut enc,
            "pinned_while_draining",
            "Requests that followed a pin to the backend while it was draining.",
            pinned,
        )?;

        queue_metrics(&mut enc, snap)?;

        let mut aff = Vec::new();
        for p in &snap.pools {
            for (i, outcome) in ["hit", "new", "moved"].iter().enumerate() {
                aff.push((
                    vec![
                        ("pool", p.name.to_string().into()),
                        ("outcome", (*outcome).into()),
                    ],
                    p.shared.affinity[i].load(Ordering::Relaxed),
                ));
            }
        }
        counter(
            &mut enc,
            "affinity",
            "Affinity outcomes of client requests.",
            aff,
        )?;

        let mut errs = Vec::new();
        for (p, b) in backends() {
            for (kind, n) in b.shared.stats.errors() {
                if n > 0 {
                    let mut l = pb(p, b);
                    l.push(("kind", kind.into()));
                    errs.push((l, n));
                }
            }
        }
        counter(
            &mut enc,
            "upstream_errors",
            "Backend failures by kind.",
            errs,
        )?;
        counter(
            &mut enc,
            "retries",
            "Requests retried on another backend after a connect failure.",
            snap.pools
                .iter()
                .map(|p| {
                    (
                        vec![("pool", p.name.to_string().into())],
                        p.shared.retries.load(Ordering::Relaxed),
                    )
                })
                .collect(),
        )?;
        let mut store_ops = Vec::new();
        for p in &snap.pools {
            // A pool has at most one table (learn or remember affinity), so pool names it.
            for table in [&p.learned, &p.remembered] {
                let Some(store) = table.as_ref().and_then(|t| t.store()) else {
                    continue;
                };
                for (op, n) in store.stats.ops() {
                    let (op, result) = op.labels();
                    let l: Labels = vec![
                        ("pool", p.name.to_string().into()),
                        ("op", op.into()),
                        ("result", result.into()),
                    ];
                    store_ops.push((l, n));
                }
            }
        }
        counter(
            &mut enc,
            "store_operations",
            "Shared-store (Redis) operations of session tables, by result.",
            store_ops,
        )?;
        counter(
            &mut enc,
            "config_reloads",
            "Config loads after the first, by result.",
            vec![
                (
                    vec![("result", "success".into())],
                    self.app.reloads_ok.load(Ordering::Relaxed),
                ),
                (
                    vec![("result", "error".into())],
                    self.app.reloads_failed.load(Ordering::Relaxed),
                ),
            ],
        )?;
        let conns = self.app.connections.lock().clone();
        gauge(
            &mut enc,
            "connections_active",
            "Open client connections per listener.",
            conns
                .iter()
                .map(|(l, g)| {
                    (
                        vec![("listener", l.clone().into())],
                        g.load(Ordering::Relaxed) as i64,
                    )
                })
                .collect(),
        )?;
        let mut resolutions = Vec::new();
        for p in &snap.pools {
            for e in self.app.discovery.view(&p.name) {
                for (result, n) in crate::discovery::RESULTS.iter().zip(e.counts) {
                    let labels: Labels<'static> = vec![
                        ("pool", p.name.to_string().into()),
                        ("name", e.name.clone().into()),
                        ("result", (*result).into()),
                    ];
                    resolutions.push((labels, n));
                }
            }
        }
        counter(
            &mut enc,
            "discovery_resolutions",
            "DNS resolutions of discover entries, by result (ok, empty, error).",
            resolutions,
        )?;
        Ok(())
    }
}

/// `max_conns` queues: waiting requests, wait times, timeouts and refusals per backend.
fn queue_metrics(enc: &mut DescriptorEncoder, snap: &Snapshot) -> std::fmt::Result {
    let backends = || {
        snap.pools
            .iter()
            .flat_map(|p| p.backends.iter().map(move |b| (p, b)))
    };
    let pb = |p: &crate::runtime::Pool, b: &crate::runtime::Backend| -> Labels<'static> {
        vec![
            ("pool", p.name.to_string().into()),
            ("backend", b.id.to_string().into()),
        ]
    };
    gauge(
        enc,
        "backend_queue",
        "Requests waiting for a max_conns slot on the backend.",
        backends()
            .map(|(p, b)| (pb(p, b), b.shared.queue.queued() as i64))
            .collect(),
    )?;
    {
        let mut m = enc.encode_descriptor(
            "queue_wait_seconds",
            "Time queued requests waited for a slot (until served or timed out).",
            None,
            MetricType::Histogram,
        )?;
        for (p, b) in backends() {
            let (sum, count, buckets) = b.shared.queue.waits();
            m.encode_family(&pb(p, b))?
                .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                    sum, count, &buckets, None,
                )?;
        }
    }
    counter(
        enc,
        "queue_timeouts",
        "Requests answered 503 after waiting queue_timeout for a slot.",
        backends()
            .map(|(p, b)| (pb(p, b), b.shared.queue.timeouts()))
            .collect(),
    )?;
    counter(
        enc,
        "queue_rejected",
        "Requests answered 503 at once because the backend's queue held max_queue.",
        backends()
            .map(|(p, b)| (pb(p, b), b.shared.queue.rejected()))
            .collect(),
    )
}
