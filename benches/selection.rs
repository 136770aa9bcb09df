//! Selection micro-benchmarks: lookup (key hashing included) for maglev, ketama and bounded
//! loads at 10/100/1000 backends, and table build time. `cargo bench --bench selection`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use tether::balancer::{pick_bounded, Algorithm, Balancer, Bound, Member};

struct Pool {
    ids: Vec<String>,
    addrs: Vec<String>,
}

impl Pool {
    fn new(n: usize) -> Pool {
        Pool {
            ids: (0..n).map(|i| format!("app{i}")).collect(),
            addrs: (0..n)
                .map(|i| format!("10.0.{}.{}:8080", i / 250, i % 250 + 1))
                .collect(),
        }
    }
    fn members(&self) -> Vec<Member<'_>> {
        self.ids
            .iter()
            .zip(&self.addrs)
            .map(|(id, address)| Member {
                id,
                address,
                weight: 1,
            })
            .collect()
    }
}

/// Client-IP-like keys, as ip affinity hashes them.
fn keys() -> Vec<String> {
    (0..1024)
        .map(|i| format!("198.51.{}.{}", i / 256, i % 256))
        .collect()
}

fn lookup(c: &mut Criterion) {
    let keys = keys();
    let mut g = c.benchmark_group("lookup");
    for n in [10usize, 100, 1000] {
        let pool = Pool::new(n);
        for (name, alg) in [
            ("maglev", Algorithm::Maglev { table_size: 65537 }),
            ("ketama", Algorithm::Ketama),
        ] {
            let b = Balancer::build(alg, &pool.members());
            let mut i = 0;
            g.bench_with_input(BenchmarkId::new(name, n), &n, |bench, _| {
                bench.iter(|| {
                    i = (i + 1) & 1023;
                    black_box(b.primary(black_box(keys[i].as_bytes())))
                })
            });
        }
        // Bounded loads: maglev candidates, every backend eligible, a few busy ones skipped.
        let b = Balancer::build(Algorithm::Maglev { table_size: 65537 }, &pool.members());
        let loads: Vec<u64> = (0..n).map(|i| if i % 7 == 0 { 50 } else { 3 }).collect();
        let total: u64 = loads.iter().sum();
        let mut i = 0;
        g.bench_with_input(
            BenchmarkId::new("maglev_bounded_1.25", n),
            &n,
            |bench, _| {
                bench.iter(|| {
                    i = (i + 1) & 1023;
                    let bound = Bound::new(1.25, total, n);
                    black_box(pick_bounded(
                        b.candidates(black_box(keys[i].as_bytes())),
                        |_| true,
                        |j| loads[j],
                        Some(bound),
                    ))
                })
            },
        );
    }
    g.finish();
}

fn build(c: &mut Criterion) {
    let mut g = c.benchmark_group("build");
    g.sample_size(20);
    for n in [10usize, 100, 1000] {
        let pool = Pool::new(n);
        let members = pool.members();
        g.bench_with_input(BenchmarkId::new("maglev_65537", n), &n, |bench, _| {
            bench.iter(|| {
                black_box(Balancer::build(
                    Algorithm::Maglev { table_size: 65537 },
                    black_box(&members),
                ))
            })
        });
        g.bench_with_input(BenchmarkId::new("ketama", n), &n, |bench, _| {
            bench.iter(|| black_box(Balancer::build(Algorithm::Ketama, black_box(&members))))
        });
    }
    g.finish();
}

criterion_group!(benches, lookup, build);
criterion_main!(benches);
