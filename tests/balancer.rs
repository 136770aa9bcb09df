//! Selection properties: minimal disruption, balance, weights, health applied at lookup,
//! a golden file pinning mappings, and bit-for-bit nginx compatibility of ketama.
// Test code: a panic on a setup failure is how a test fails (see [lints] in Cargo.toml).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;

use tether::balancer::{pick_bounded, Algorithm, Balancer, Maglev, Member};

const MAGLEV: Algorithm = Algorithm::Maglev { table_size: 65537 };

struct Pool {
    ids: Vec<String>,
    addrs: Vec<String>,
    weights: Vec<u32>,
}

impl Pool {
    fn new(n: usize) -> Pool {
        Pool {
            ids: (0..n).map(|i| format!("app{i}")).collect(),
            addrs: (0..n)
                .map(|i| format!("10.0.{}.{}:8080", i / 250, i % 250 + 1))
                .collect(),
            weights: vec![1; n],
        }
    }

    fn members(&self) -> Vec<Member<'_>> {
        (0..self.ids.len())
            .map(|i| Member {
                id: &self.ids[i],
                address: &self.addrs[i],
                weight: self.weights[i],
            })
            .collect()
    }

    fn without(&self, k: usize) -> Pool {
        let mut p = Pool {
            ids: self.ids.clone(),
            addrs: self.addrs.clone(),
            weights: self.weights.clone(),
        };
        p.ids.remove(k);
        p.addrs.remove(k);
        p.weights.remove(k);
        p
    }
}

/// key index → backend id for `keys` keys.
fn mapping(pool: &Pool, alg: Algorithm, keys: usize) -> Vec<String> {
    let b = Balancer::build(alg, &pool.members());
    (0..keys)
        .map(|k| pool.ids[b.primary(format!("key-{k}").as_bytes()).unwrap()].clone())
        .collect()
}

fn moved(a: &[String], b: &[String]) -> usize {
    a.iter().zip(b).filter(|(x, y)| x != y).count()
}

/// The default table keeps the bound up to about 50 backends; beyond that the table must
/// grow with the pool (about 1300 slots per backend; `tether check` warns).
fn table_for(n: usize) -> Algorithm {
    if n <= 50 {
        MAGLEV
    } else {
        Algorithm::Maglev { table_size: 131071 }
    }
}

#[test]
fn maglev_removing_one_of_n_moves_at_most_1_5_over_n() {
    const KEYS: usize = 50_000;
    for n in [3, 5, 10, 50, 100] {
        let full = Pool::new(n);
        let before = mapping(&full, table_for(n), KEYS);
        for k in [0, n / 2, n - 1] {
            let after = mapping(&full.without(k), table_for(n), KEYS);
            let frac = moved(&before, &after) as f64 / KEYS as f64;
            assert!(
                frac <= 1.5 / n as f64,
                "n={n} removing {k}: moved {frac:.4} > {:.4}",
                1.5 / n as f64
            );
        }
    }
}

#[test]
fn maglev_adding_one_to_n_moves_at_most_1_5_over_n_plus_one() {
    const KEYS: usize = 50_000;
    for n in [3, 4, 10, 49, 99] {
        let small = Pool::new(n);
        let big = Pool::new(n + 1);
        let alg = table_for(n + 1);
        let frac =
            moved(&mapping(&small, alg, KEYS), &mapping(&big, alg, KEYS)) as f64 / KEYS as f64;
        assert!(
            frac <= 1.5 / (n + 1) as f64,
            "n={n}: adding one moved {frac:.4}"
        );
    }
}

#[test]
fn ketama_removing_a_backend_moves_only_its_keys() {
    const KEYS: usize = 20_000;
    for n in [3, 10, 40] {
        let full = Pool::new(n);
        let before = mapping(&full, Algorithm::Ketama, KEYS);
        let gone = full.ids[n / 2].clone();
        let after = mapping(&full.without(n / 2), Algorithm::Ketama, KEYS);
        for (b, a) in before.iter().zip(&after) {
            if *b != gone {
                assert_eq!(a, b, "a key not on the removed backend moved");
            }
        }
        assert!(moved(&before, &after) > 0);
    }
}

#[test]
fn maglev_table_is_balanced_at_100_backends() {
    let pool = Pool::new(100);
    let m = Maglev::build(&pool.members(), 65537);
    let counts = m.slot_counts();
    let avg = 65537.0 / 100.0;
    let max = *counts.iter().max().unwrap() as f64;
    assert!(max / avg <= 1.02, "max/avg = {}", max / avg);
}

fn shares(pool: &Pool, alg: Algorithm, keys: usize) -> Vec<f64> {
    let b = Balancer::build(alg, &pool.members());
    let mut counts = vec![0usize; pool.ids.len()];
    for k in 0..keys {
        counts[b.primary(format!("k{k}").as_bytes()).unwrap()] += 1;
    }
    counts.iter().map(|&c| c as f64 / keys as f64).collect()
}

/// Maglev follows weights within 5%. Ketama must reproduce nginx's continuum exactly (160
/// points per weight unit), whose own unevenness is several percent, so its bound is 10%.
#[test]
fn traffic_follows_weights() {
    let mut pool = Pool::new(4);
    pool.weights = vec![1, 2, 3, 4];
    let total: u32 = pool.weights.iter().sum();
    for (alg, tolerance) in [(MAGLEV, 0.05), (Algorithm::Ketama, 0.10)] {
        let keys = 200_000;
        let s = shares(&pool, alg, keys);
        for (i, share) in s.iter().enumerate() {
            let want = pool.weights[i] as f64 / total as f64;
            let err = (share - want).abs() / want;
            assert!(
                err <= tolerance,
                "{alg:?}: backend {i} got {share:.4}, want {want:.4} (±{tolerance})"
            );
        }
    }
}

#[test]
fn health_is_applied_at_lookup_so_only_the_lost_backends_keys_move() {
    for alg in [MAGLEV, Algorithm::Ketama] {
        let pool = Pool::new(5);
        let b = Balancer::build(alg, &pool.members());
        let down = 2usize;
        let mut spread = [0usize; 5];
        for k in 0..20_000 {
            let key = format!("client-{k}");
            let primary = b.primary(key.as_bytes()).unwrap();
            let chosen =
                pick_bounded(b.candidates(key.as_bytes()), |i| i != down, |_| 0, None).unwrap();
            if primary == down {
                assert_ne!(chosen, down);
                spread[chosen] += 1;
            } else {
                assert_eq!(chosen, primary, "a key on a healthy backend moved");
            }
        }
        // The lost backend's keys spread over all four survivors, none taking most of them.
        let moved: usize = spread.iter().sum();
        for (i, &c) in spread.iter().enumerate() {
            if i != down {
                assert!(
                    c as f64 > moved as f64 * 0.10,
                    "{alg:?}: survivor {i} got {c} of {moved}"
                );
                assert!(
                    (c as f64) < moved as f64 * 0.45,
                    "{alg:?}: survivor {i} got {c} of {moved}"
                );
            }
        }
    }
}

#[test]
fn candidates_list_every_backend_once() {
    for alg in [MAGLEV, Algorithm::Ketama] {
        for n in [1, 7, 130, 300] {
            let pool = Pool::new(n);
            let b = Balancer::build(alg, &pool.members());
            let mut c: Vec<usize> = b.candidates(b"some-key").collect();
            assert_eq!(c.len(), n);
            c.sort_unstable();
            c.dedup();
            assert_eq!(c.len(), n, "{alg:?} n={n}: repeats");
        }
    }
}

#[test]
fn maglev_ignores_member_order() {
    let pool = Pool::new(10);
    let mut rev = Pool::new(10);
    rev.ids.reverse();
    rev.addrs.reverse();
    assert_eq!(mapping(&pool, MAGLEV, 5000), mapping(&rev, MAGLEV, 5000));
}

#[test]
fn bounded_loads_spill_from_a_hot_backend() {
    let pool = Pool::new(3);
    let b = Balancer::build(MAGLEV, &pool.members());
    let key = b"hot";
    let owner = b.primary(key).unwrap();
    // The owner carries 30 of 30 in-flight requests: ceil(1.25 × 31 / 3) = 13 < 30.
    let loads: HashMap<usize, u64> = [(owner, 30)].into_iter().collect();
    let load = |i: usize| loads.get(&i).copied().unwrap_or(0);
    let bound = tether::balancer::Bound::new(1.25, 30, 3);
    let chosen = pick_bounded(b.candidates(key), |_| true, load, Some(bound)).unwrap();
    assert_ne!(chosen, owner);
    // Without load the owner keeps it.
    let chosen = pick_bounded(
        b.candidates(key),
        |_| true,
        |_| 0,
        Some(tether::balancer::Bound::new(1.25, 0, 3)),
    )
    .unwrap();
    assert_eq!(chosen, owner);
}

// ---- golden file ------------------------------------------------------------------------

/// The pinned configuration: seven backends with mixed weights.
fn golden_pool() -> Pool {
    Pool {
        ids: (1..=7).map(|i| format!("node{i}")).collect(),
        addrs: (1..=7).map(|i| format!("192.0.2.{i}:8080")).collect(),
        weights: vec![1, 1, 2, 1, 3, 1, 1],
    }
}

fn golden_text(alg: Algorithm) -> String {
    let pool = golden_pool();
    let b = Balancer::build(alg, &pool.members());
    let mut out = String::from("# key primary second (tests/balancer.rs golden_pool); changing this file is a breaking change\n");
    for k in 0..10_000 {
        let key = if k % 2 == 0 {
            format!("198.51.{}.{}", k / 256 % 256, k % 256)
        } else {
            format!("user-{k}")
        };
        let mut c = b.candidates(key.as_bytes());
        let first = c.next().unwrap();
        let second = c.next().unwrap();
        out.push_str(&format!("{key} {} {}\n", pool.ids[first], pool.ids[second]));
    }
    out
}

fn check_golden(name: &str, alg: Algorithm) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    let got = golden_text(alg);
    if std::env::var_os("TETHER_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &got).unwrap();
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (TETHER_BLESS=1 writes it)", path.display()));
    let diff = want
        .lines()
        .zip(got.lines())
        .filter(|(a, b)| a != b)
        .count();
    assert_eq!(want.lines().count(), 10_001);
    assert_eq!(
        diff, 0,
        "{name}: {diff} mappings differ from the golden file: a breaking change"
    );
}

#[test]
fn golden_maglev_mapping_is_unchanged() {
    check_golden("maglev.txt", MAGLEV);
}

#[test]
fn golden_ketama_mapping_is_unchanged() {
    check_golden("ketama.txt", Algorithm::Ketama);
}

// ---- nginx compatibility ------------------------------------------------------------------

#[test]
fn ketama_matches_real_nginx_hash_consistent() {
    let text = include_str!("fixtures/nginx-ketama.txt");
    let servers_line = text.lines().nth(1).unwrap();
    let fields: Vec<&str> = servers_line
        .split(": ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .collect();
    let pool = Pool {
        ids: fields.chunks(2).map(|c| c[0].to_string()).collect(),
        addrs: fields.chunks(2).map(|c| c[0].to_string()).collect(),
        weights: fields.chunks(2).map(|c| c[1].parse().unwrap()).collect(),
    };
    let b = Balancer::build(Algorithm::Ketama, &pool.members());
    let mut n = 0;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (key, server) = line.split_once(' ').unwrap();
        let got = &pool.addrs[b.primary(key.as_bytes()).unwrap()];
        assert_eq!(got, server, "key {key:?}");
        n += 1;
    }
    assert_eq!(n, 2000);
}
