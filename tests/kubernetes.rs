//! `examples/kubernetes/`: every YAML document parses and names its kind; the ConfigMap's
//! tether.toml is a valid config; the app's preStop hook drains then waits, and the three
//! clocks are in the order the README asks for (--timeout < grace period <= drain_timeout).
// Test code: a panic on a setup failure is how a test fails (see [lints] in Cargo.toml).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use yaml_rust2::{Yaml, YamlLoader};

fn docs() -> Vec<(String, Yaml)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/kubernetes");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            let text = std::fs::read_to_string(&path).unwrap();
            let docs = YamlLoader::load_from_str(&text)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            for d in docs {
                out.push((path.display().to_string(), d));
            }
        }
    }
    out
}

fn find<'a>(docs: &'a [(String, Yaml)], kind: &str, name: &str) -> &'a Yaml {
    docs.iter()
        .map(|(_, d)| d)
        .find(|d| d["kind"].as_str() == Some(kind) && d["metadata"]["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

#[test]
fn every_document_parses_and_names_its_kind() {
    let docs = docs();
    assert!(docs.len() >= 6, "found {} documents", docs.len());
    for (file, d) in &docs {
        assert!(d["apiVersion"].as_str().is_some(), "{file}: apiVersion");
        assert!(d["kind"].as_str().is_some(), "{file}: kind");
        assert!(
            d["metadata"]["name"].as_str().is_some(),
            "{file}: metadata.name"
        );
    }
    let app = find(&docs, "Service", "app");
    assert_eq!(
        app["spec"]["clusterIP"].as_str(),
        Some("None"),
        "the app Service is headless"
    );
}

#[test]
fn the_configmap_holds_a_valid_config_and_the_clocks_are_ordered() {
    let docs = docs();
    let cm = find(&docs, "ConfigMap", "tether");
    let text = cm["data"]["tether.toml"]
        .as_str()
        .expect("data.tether.toml");
    let config = tether::config::Config::parse(text, "configmap:tether.toml").unwrap();
    let pool = config.pool("shop").expect("pool shop");
    assert!(
        !pool.discover.is_empty(),
        "the pool discovers the headless Service"
    );

    let app = find(&docs, "StatefulSet", "app");
    let spec = &app["spec"]["template"]["spec"];
    let grace = Duration::from_secs(spec["terminationGracePeriodSeconds"].as_i64().unwrap() as u64);
    let hook = spec["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
        .as_vec()
        .expect("preStop exec command")
        .iter()
        .filter_map(|y| y.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    let drain_at = hook.find(" drain ").expect("the hook drains");
    let wait_at = hook.find(" wait-drained ").expect("the hook waits");
    assert!(drain_at < wait_at, "drain first, then wait");
    let timeout = hook
        .split("--timeout")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .map(|v| humantime::parse_duration(v).unwrap())
        .expect("wait-drained --timeout");
    assert!(
        timeout < grace,
        "--timeout {timeout:?} must be below the grace period {grace:?}"
    );
    assert!(
        grace <= pool.drain_timeout,
        "grace {grace:?} must not exceed drain_timeout {:?}",
        pool.drain_timeout
    );
}
