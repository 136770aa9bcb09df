//! The shipped packaging: the packaged config parses, the systemd unit has the settings the
//! product promises, and every asset cargo-deb packs exists.
// Test code: a panic on a setup failure is how a test fails (see [lints] in Cargo.toml).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

#[test]
fn packaged_config_is_valid() {
    let c = tether::config::Config::load(&repo("packaging/tether.toml")).unwrap();
    assert!(!c.listen.http.is_empty());
    assert!(
        c.admin.is_some(),
        "the packaged config serves the admin API"
    );
    // The unit's TimeoutStopSec (45s) must leave room for the whole shutdown deadline.
    assert!(c.proxy.shutdown_timeout < std::time::Duration::from_secs(45));
}

#[test]
fn unit_is_notify_reloads_with_sighup_and_is_hardened() {
    let unit = std::fs::read_to_string(repo("packaging/tether.service")).unwrap();
    let lines: Vec<&str> = unit.lines().map(str::trim).collect();
    for want in [
        "Type=notify",
        "NotifyAccess=all",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "ExecStart=/usr/bin/tether run -c /etc/tether/tether.toml",
        "User=tether",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "RuntimeDirectory=tether",
    ] {
        assert!(
            lines.contains(&want),
            "packaging/tether.service lacks {want:?}"
        );
    }
}

#[test]
fn every_deb_asset_and_maintainer_script_exists() {
    let manifest = std::fs::read_to_string(repo("Cargo.toml")).unwrap();
    let doc = toml_edit::Document::parse(manifest).unwrap();
    let deb = &doc["package"]["metadata"]["deb"];
    let assets = deb["assets"].as_array().unwrap();
    let mut dests = Vec::new();
    for a in assets {
        let a = a.as_array().unwrap();
        let src = a.get(0).and_then(|v| v.as_str()).unwrap();
        dests.push(a.get(1).and_then(|v| v.as_str()).unwrap().to_string());
        if !src.starts_with("target/") {
            assert!(repo(src).is_file(), "asset {src} is missing");
        }
    }
    for want in [
        "usr/bin/",
        "etc/tether/tether.toml",
        "usr/lib/systemd/system/tether.service",
    ] {
        assert!(dests.iter().any(|d| d == want), "no asset installs {want}");
    }
    let scripts = repo(deb["maintainer-scripts"].as_str().unwrap());
    let postinst = std::fs::read_to_string(scripts.join("postinst")).unwrap();
    assert!(
        postinst.contains("tether"),
        "postinst creates the tether user"
    );
    for s in ["postinst", "prerm", "postrm"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(scripts.join(s))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o111, 0o111, "{s} is not executable");
    }
}
