//! `[[pools.NAME.discover]]` and `slow_start` in the config file: what parses, and the
//! errors (with their key paths) for what does not.

use std::time::Duration;

use tether::config::{Config, ConfigError, DiscoverQuery};

fn errors(text: &str) -> Vec<String> {
    match Config::parse(text, "t.toml") {
        Ok(_) => panic!("expected errors for:\n{text}"),
        Err(ConfigError::Invalid(d)) => d.iter().map(|d| d.to_string()).collect(),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn discover_entries_parse_with_defaults() {
    let c = Config::parse(
        r#"
[pools.p]
slow_start = "45s"
[[pools.p.discover]]
dns = "App.Svc.Cluster.Local."
port = 8080
[[pools.p.discover]]
srv = "_http._tcp.api.service.consul"
interval = "2s"
hold = "0s"
resolver = ["127.0.0.1:8600", "10.0.0.2"]
tls = true
"#,
        "t.toml",
    )
    .unwrap();
    let p = &c.pools[0];
    assert!(
        p.backends.is_empty(),
        "a pool may have only discover entries"
    );
    assert_eq!(p.slow_start, Some(Duration::from_secs(45)));
    let a = &p.discover[0];
    assert_eq!(a.name, "dns:app.svc.cluster.local");
    assert_eq!(
        a.query,
        DiscoverQuery::Host {
            name: "app.svc.cluster.local".into(),
            port: 8080
        }
    );
    assert_eq!(a.interval, Duration::from_secs(5));
    assert_eq!(a.hold, Duration::from_secs(30));
    assert_eq!(a.resolver, None);
    assert_eq!(a.weight, 1);
    let s = &p.discover[1];
    assert_eq!(s.name, "dns:_http._tcp.api.service.consul");
    assert_eq!(
        s.resolver.as_deref(),
        Some(
            &[
                "127.0.0.1:8600".parse().unwrap(),
                "10.0.0.2:53".parse().unwrap()
            ][..]
        )
    );
    assert_eq!(
        s.tls.as_ref().unwrap().server_name,
        "_http._tcp.api.service.consul"
    );
}

#[test]
fn slow_start_is_off_by_default_and_when_zero() {
    let text =
        |s: &str| format!("[pools.p]\n{s}\n[[pools.p.backends]]\naddress = \"127.0.0.1:1\"\n");
    assert_eq!(
        Config::parse(&text(""), "t").unwrap().pools[0].slow_start,
        None
    );
    assert_eq!(
        Config::parse(&text("slow_start = \"0s\""), "t")
            .unwrap()
            .pools[0]
            .slow_start,
        None
    );
}

#[test]
fn bad_discover_entries_are_reported_each_at_its_key() {
    let e = errors(
        r#"
[pools.p]
slow_start = "soon"
[[pools.p.discover]]
dns = "app.local"
[[pools.p.discover]]
dns = "a.local"
srv = "_x._tcp.local"
[[pools.p.discover]]
srv = "_x._tcp.local"
port = 80
weight = 2
[[pools.p.discover]]
dns = "not a name"
port = 80
interval = "500ms"
resolver = ["localhost"]
[[pools.p.discover]]
port = 80
server_name = "x"
[[pools.p.discover]]
dns = "app.local"
port = 70000
"#,
    );
    let all = e.join("\n");
    for want in [
        "pools.p.slow_start",
        "pools.p.discover[0]: `dns` needs `port`",
        "pools.p.discover[1]: give `dns` or `srv`, not both",
        "pools.p.discover[2].port: only used with `dns`",
        "pools.p.discover[2].weight: only used with `dns`",
        "pools.p.discover[3].dns: \"not a name\" is not a DNS name",
        "pools.p.discover[3].interval: must be at least 1s",
        "pools.p.discover[3].resolver",
        "pools.p.discover[4]: needs `dns` (with `port`) or `srv`",
        "`ca` and `server_name` need `tls = true`",
        "pools.p.discover[5].port",
    ] {
        assert!(all.contains(want), "missing {want:?} in:\n{all}");
    }
}

#[test]
fn the_same_name_twice_in_a_pool_is_an_error() {
    let e = errors(
        "[pools.p]\n[[pools.p.discover]]\ndns = \"a.local\"\nport = 1\n[[pools.p.discover]]\ndns = \"A.local.\"\nport = 2\n",
    );
    assert!(
        e.iter()
            .any(|l| l.contains("dns:a.local is already discovered")),
        "{e:?}"
    );
}

#[test]
fn a_pool_needs_backends_or_discover() {
    let e = errors("[pools.p]\naffinity = \"ip\"\n");
    assert!(
        e.iter()
            .any(|l| l.contains("at least one [[backends]] or [[discover]] entry")),
        "{e:?}"
    );
}
