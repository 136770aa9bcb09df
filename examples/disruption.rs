//! Prints how many keys move when one of N backends is removed, for maglev tables of
//! several sizes: `cargo run --release --example disruption`. The README's guidance on
//! `table_size` comes from this table.

use tether::balancer::{Algorithm, Balancer, Member};

fn main() {
    const KEYS: usize = 100_000;
    println!("table_size  backends  worst keys moved (× 1/N)");
    for m in [65537u32, 131071, 262139, 655373] {
        for n in [10usize, 50, 100, 200] {
            let ids: Vec<String> = (0..n).map(|i| format!("app{i}")).collect();
            let map = |skip: Option<usize>| {
                let members: Vec<Member> = ids
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| Some(*i) != skip)
                    .map(|(_, id)| Member {
                        id,
                        address: id,
                        weight: 1,
                    })
                    .collect();
                let b = Balancer::build(Algorithm::Maglev { table_size: m }, &members);
                (0..KEYS)
                    .map(|k| {
                        members[b.primary(format!("key-{k}").as_bytes()).unwrap_or(0)]
                            .id
                            .to_string()
                    })
                    .collect::<Vec<_>>()
            };
            let before = map(None);
            let worst = [0, n / 3, n / 2, n - 1]
                .iter()
                .map(|&s| {
                    let after = map(Some(s));
                    before.iter().zip(&after).filter(|(a, b)| a != b).count() as f64 / KEYS as f64
                        * n as f64
                })
                .fold(0.0, f64::max);
            println!("{m:>10}  {n:>8}  {worst:.2}");
        }
    }
}
