//! Randomized properties (proptest): membership changes, candidate orders, and parsers that
//! must take any bytes without panicking.

use proptest::prelude::*;
use tether::affinity::client_ip::client_ip;
use tether::affinity::cookie::{find_cookie, strip_cookie, CookieCodec};
use tether::balancer::{Algorithm, Balancer, Member};
use tether::config::{Config, CookieConfig};

fn ids_strategy() -> impl Strategy<Value = Vec<(String, u32)>> {
    prop::collection::btree_map("[a-z][a-z0-9-]{0,12}", 1u32..4, 2..30)
        .prop_map(|m| m.into_iter().collect())
}

fn build(alg: Algorithm, members: &[(String, u32)]) -> Balancer {
    let m: Vec<Member> = members
        .iter()
        .map(|(id, w)| Member {
            id,
            address: id,
            weight: *w,
        })
        .collect();
    Balancer::build(alg, &m)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn removing_a_backend_moves_only_its_keys_in_ketama(members in ids_strategy(), victim in any::<prop::sample::Index>()) {
        let k = victim.index(members.len());
        let before = build(Algorithm::Ketama, &members);
        let mut rest = members.clone();
        let gone = rest.remove(k).0;
        let after = build(Algorithm::Ketama, &rest);
        for i in 0..2000 {
            let key = format!("k{i}");
            let b = &members[before.primary(key.as_bytes()).unwrap()].0;
            let a = &rest[after.primary(key.as_bytes()).unwrap()].0;
            if *b != gone {
                prop_assert_eq!(a, b);
            }
        }
    }

    #[test]
    fn removing_a_non_winner_moves_little_in_maglev(members in ids_strategy(), victim in any::<prop::sample::Index>()) {
        // Unweighted, ≤ 30 backends on the default table: ≤ 1.5/N of keys move.
        let members: Vec<(String, u32)> = members.into_iter().map(|(id, _)| (id, 1)).collect();
        let n = members.len();
        let alg = Algorithm::Maglev { table_size: 65537 };
        let before = build(alg, &members);
        let mut rest = members.clone();
        rest.remove(victim.index(n));
        let after = build(alg, &rest);
        let keys = 20_000;
        let moved = (0..keys).filter(|i| {
            let key = format!("k{i}");
            members[before.primary(key.as_bytes()).unwrap()].0 != rest[after.primary(key.as_bytes()).unwrap()].0
        }).count();
        // 1.5/N plus sampling slack of the key set.
        prop_assert!((moved as f64 / keys as f64) <= 1.5 / n as f64 + 0.01, "n={} moved {}", n, moved);
    }

    #[test]
    fn candidates_are_a_permutation(members in ids_strategy(), key in any::<Vec<u8>>(), ketama in any::<bool>()) {
        let alg = if ketama { Algorithm::Ketama } else { Algorithm::Maglev { table_size: 1009 } };
        let b = build(alg, &members);
        let mut c: Vec<usize> = b.candidates(&key).collect();
        prop_assert_eq!(Some(c[0]), b.primary(&key));
        c.sort_unstable();
        prop_assert_eq!(c, (0..members.len()).collect::<Vec<_>>());
    }

    #[test]
    fn cookie_decoding_takes_any_bytes(value in any::<Vec<u8>>(), header in any::<Vec<u8>>()) {
        let codec = CookieCodec::new(&CookieConfig {
            secret: Some("0123456789abcdef".into()),
            max_idle: Some(std::time::Duration::from_secs(60)),
            ..CookieConfig::default()
        });
        prop_assert_eq!(codec.decode(&value, 1_000_000), None);
        let _ = find_cookie([header.as_slice()].into_iter(), "TETHER");
        let _ = strip_cookie([header.as_slice()].into_iter(), Some("TETHER"));
    }

    #[test]
    fn forwarded_for_parsing_takes_any_bytes(xff in any::<Vec<u8>>()) {
        let trusted = vec!["127.0.0.0/8".parse().unwrap()];
        let _ = client_ip("127.0.0.1".parse().unwrap(), [xff.as_slice()].into_iter(), &trusted);
    }

    #[test]
    fn config_parsing_takes_any_text(text in any::<String>()) {
        let _ = Config::parse(&text, "p.toml");
    }
}
