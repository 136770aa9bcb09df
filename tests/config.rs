//! Config loading: the example files parse, and bad files report every error with its
//! location and key path.

use std::time::Duration;

use tether::config::{Affinity, Config, ConfigError, HashAlgorithm, HostMatch, Secure};

fn errors(text: &str) -> Vec<String> {
    match Config::parse(text, "t.toml") {
        Ok(_) => panic!("expected errors for:\n{text}"),
        Err(ConfigError::Invalid(d)) => d.iter().map(|d| d.to_string()).collect(),
        Err(e) => panic!("unexpected error {e}"),
    }
}

const MINIMAL: &str = r#"
[pools.p]
[[pools.p.backends]]
address = "127.0.0.1:1"
"#;

#[test]
fn every_example_config_parses() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            Config::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            n += 1;
        }
    }
    assert!(
        n >= 4,
        "expected tether.toml plus cookie, ip and header examples, found {n}"
    );
}

#[test]
fn every_example_directory_config_parses() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path().join("tether.toml");
        if path.exists() {
            Config::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            n += 1;
        }
    }
    assert!(n >= 2, "examples/tomcat and examples/flask, found {n}");
}

#[test]
fn full_example_has_the_documented_values() {
    let c =
        Config::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/tether.toml"))
            .unwrap();
    assert_eq!(c.proxy.connect_timeout, Duration::from_secs(2));
    assert_eq!(c.proxy.max_header_bytes, 65536);
    let shop = c.pool("shop").unwrap();
    assert_eq!(shop.affinity, Affinity::Cookie);
    assert_eq!(shop.hash, HashAlgorithm::Maglev);
    assert_eq!(shop.balance_factor, Some(1.25));
    let cookie = shop.cookie.as_ref().unwrap();
    assert_eq!(cookie.max_age, Some(Duration::from_secs(30 * 86400)));
    assert_eq!(cookie.secure, Secure::Auto);
    assert_eq!(shop.backends[0].route, "node1");
    let api = c.pool("api").unwrap();
    assert_eq!(api.hash, HashAlgorithm::Ketama);
    assert_eq!(
        api.backends[0].id, "127.0.0.1:9001",
        "id defaults to the address"
    );
    assert_eq!(
        c.routes[0].host,
        HostMatch::Exact("shop.example.com".into())
    );
}

#[test]
fn defaults_fill_a_minimal_file() {
    let c = Config::parse(MINIMAL, "t.toml").unwrap();
    let p = &c.pools[0];
    assert_eq!(p.affinity, Affinity::Cookie);
    assert_eq!(p.cookie.as_ref().unwrap().name, "TETHER");
    assert_eq!(p.table_size, 65537);
    assert_eq!(p.backends[0].weight, 1);
    assert_eq!(c.listen.http[0].to_string(), "0.0.0.0:8080");
}

#[test]
fn all_errors_are_reported_with_line_column_and_path() {
    let text = r#"[listen]
http = ["nope"]

[proxy]
connect_timeout = "2 parsecs"
surprise = 1

[pools.shop]
affinity = "cookies"

[[pools.shop.backends]]
address = "10.0.0.2:80"
wieght = 2
"#;
    let e = errors(text);
    assert_eq!(e.len(), 5, "{e:#?}");
    assert!(e[0].starts_with("t.toml:2:8: listen.http: "), "{}", e[0]);
    assert!(
        e[1].starts_with("t.toml:5:19: proxy.connect_timeout: invalid duration"),
        "{}",
        e[1]
    );
    assert_eq!(e[2], "t.toml:6:1: proxy.surprise: unknown key (expected one of: connect_timeout, response_timeout, idle_timeout, header_timeout, max_header_bytes, retries, trusted_proxies, shutdown_timeout, max_connections)");
    assert!(
        e[3].starts_with("t.toml:9:12: pools.shop.affinity: expected one of"),
        "{}",
        e[3]
    );
    assert!(
        e[4].starts_with("t.toml:13:1: pools.shop.backends[0].wieght: unknown key"),
        "{}",
        e[4]
    );
}

#[test]
fn syntax_errors_are_located() {
    let e = errors("[pools.a\nx = 1\n");
    assert_eq!(e.len(), 1);
    assert!(e[0].starts_with("t.toml:1:9: "), "{}", e[0]);
}

#[test]
fn semantic_errors() {
    let cases: &[(&str, &str)] = &[
        (
            r#"[pools.p]
affinity = "header"
[[pools.p.backends]]
address = "127.0.0.1:1""#,
            "needs `header",
        ),
        (
            r#"[pools.p]
[[pools.p.backends]]
id = "a"
address = "127.0.0.1:1"
[[pools.p.backends]]
id = "a"
address = "127.0.0.1:2""#,
            "duplicate backend id",
        ),
        (
            r#"[pools.p]
table_size = 65536
[[pools.p.backends]]
address = "127.0.0.1:1""#,
            "must be a prime",
        ),
        (
            r#"[pools.p]
[pools.q]
[[pools.p.backends]]
address = "127.0.0.1:1"
[[pools.q.backends]]
address = "127.0.0.1:2""#,
            "with more than one pool",
        ),
        (
            r#"[[routes]]
pool = "missing"
[pools.p]
[[pools.p.backends]]
address = "127.0.0.1:1""#,
            "no pool named \"missing\"",
        ),
        (
            r#"[pools.p]
[pools.p.cookie]
secret = "short"
[[pools.p.backends]]
address = "127.0.0.1:1""#,
            "at least 16 characters",
        ),
        (
            r#"[pools.p]
affinity = "ip"
[pools.p.cookie]
name = "X"
[[pools.p.backends]]
address = "127.0.0.1:1""#,
            "only used with affinity = \"cookie\"",
        ),
        (
            r#"[listen]
https = ["127.0.0.1:8443"]
[pools.p]
[[pools.p.backends]]
address = "127.0.0.1:1""#,
            "https listeners need a [tls] section",
        ),
    ];
    for (text, want) in cases {
        let e = errors(text);
        assert!(
            e.iter().any(|l| l.contains(want)),
            "wanted {want:?} in {e:#?}"
        );
    }
}

#[test]
fn load_reports_missing_file() {
    let e = Config::load(std::path::Path::new("/nonexistent/tether.toml")).unwrap_err();
    assert!(e.to_string().contains("cannot read config file"), "{e}");
}

#[test]
fn arbitrary_bytes_never_panic() {
    // A cheap stand-in until the fuzzer lands: mutate a valid file byte by byte.
    let base = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/tether.toml"),
    )
    .unwrap();
    let bytes = base.as_bytes();
    let mut rng = 0x1234_5678_u64;
    for _ in 0..300 {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let mut b = bytes.to_vec();
        let at = (rng >> 33) as usize % b.len();
        b[at] = (rng >> 7) as u8;
        let text = String::from_utf8_lossy(&b);
        let _ = Config::parse(&text, "m.toml");
    }
}

#[test]
fn small_maglev_tables_for_big_pools_warn() {
    let mut text = String::from("[pools.p]\n");
    for i in 0..60 {
        text.push_str(&format!(
            "[[pools.p.backends]]\naddress = \"127.0.0.1:{}\"\n",
            1000 + i
        ));
    }
    let c = Config::parse(&text, "t.toml").unwrap();
    assert_eq!(c.warnings().len(), 1, "{:?}", c.warnings());
    let c = Config::parse(
        &text.replace("[pools.p]\n", "[pools.p]\ntable_size = 131071\n"),
        "t.toml",
    )
    .unwrap();
    assert!(c.warnings().is_empty());
}

#[test]
fn backend_protection_and_listener_keys() {
    let c = Config::parse(
        r#"
[listen]
http = ["127.0.0.1:1"]
proxy_protocol = true
[pools.p]
max_conns = 4
queue_timeout = "250ms"
max_queue = 8
[[pools.p.backends]]
address = "127.0.0.1:1"
[[pools.p.backends]]
address = "127.0.0.1:2"
max_conns = 50
"#,
        "t.toml",
    )
    .unwrap();
    assert!(c.listen.proxy_protocol);
    let p = &c.pools[0];
    assert_eq!((p.max_conns, p.max_queue), (4, 8));
    assert_eq!(p.queue_timeout, Duration::from_millis(250));
    assert_eq!(p.backends[0].max_conns, None);
    assert_eq!(p.backends[1].max_conns, Some(50));
    let d = Config::parse(MINIMAL, "t.toml").unwrap();
    assert!(!d.listen.proxy_protocol);
    assert_eq!((d.pools[0].max_conns, d.pools[0].max_queue), (0, 0));
    assert_eq!(d.pools[0].queue_timeout, Duration::from_secs(10));
    let d = Config::parse(
        "[pools.p]\n[[pools.p.discover]]\ndns = \"app.test\"\nport = 80\nmax_conns = 7\n",
        "t.toml",
    )
    .unwrap();
    assert_eq!(d.pools[0].discover[0].max_conns, Some(7));
    let e = errors("[pools.p]\nmax_conns = -1\n[[pools.p.backends]]\naddress = \"127.0.0.1:1\"\n");
    assert!(
        e[0].starts_with("t.toml:2:13: pools.p.max_conns: "),
        "{}",
        e[0]
    );
}

#[test]
fn partitioned_cookies_need_secure_and_same_site_none() {
    let e = errors(
        r#"
[pools.p.cookie]
secure = "auto"
same_site = "lax"
partitioned = true
[[pools.p.backends]]
address = "127.0.0.1:1"
"#,
    );
    assert_eq!(
        e,
        vec![
            "t.toml:5:15: pools.p.cookie.partitioned: partitioned = true needs secure = true and same_site = \"none\"".to_string()
        ]
    );
    let c = Config::parse(
        r#"
[pools.p.cookie]
secure = true
same_site = "none"
partitioned = true
[[pools.p.backends]]
address = "127.0.0.1:1"
"#,
        "t.toml",
    )
    .unwrap();
    assert!(c.pools[0].cookie.as_ref().unwrap().partitioned);
}
