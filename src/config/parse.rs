//! The top-level sections (listen, tls, proxy, admin, log, routes) into typed config; pools in `pool.rs`.

use std::net::SocketAddr;

use ipnet::IpNet;
use toml_edit::{Document, TableLike};

use super::reader::{
    as_bool, as_choice, as_duration, as_int, as_list, as_str, join, Diagnostic, Reader,
};
use super::*;

pub(super) fn parse(text: &str, file: &str) -> Result<Config, Vec<Diagnostic>> {
    let mut r = Reader::new(text, file);
    let doc = match Document::parse(text) {
        Ok(d) => d,
        Err(e) => {
            let msg = e.message().trim().to_string();
            r.error_at(e.span(), "(syntax)", msg);
            return Err(r.errors);
        }
    };
    let root = doc.as_table() as &dyn TableLike;
    r.check_keys(
        root,
        "",
        &["listen", "tls", "proxy", "admin", "log", "routes", "pools"],
    );

    let listen = read_listen(&mut r, root);
    let tls = read_tls(&mut r, root);
    if !listen.https.is_empty() && tls.is_none() && r.errors.is_empty() {
        r.error_at(
            Reader::span_of(root, "listen"),
            "listen.https",
            "https listeners need a [tls] section with cert and key",
        );
    }
    let proxy = read_proxy(&mut r, root);
    let admin = read_admin(&mut r, root);
    let log = read_log(&mut r, root);
    let pools = super::pool::read_pools(&mut r, root);
    let routes = read_routes(&mut r, root, &pools);

    r.errors.sort_by_key(|d| (d.line, d.col));
    if r.errors.is_empty() {
        Ok(Config {
            listen,
            tls,
            proxy,
            admin,
            log,
            routes,
            pools,
        })
    } else {
        Err(r.errors)
    }
}

fn read_listen(r: &mut Reader, root: &dyn TableLike) -> Listen {
    let mut listen = Listen {
        http: vec![SocketAddr::from(([0, 0, 0, 0], 8080))],
        https: Vec::new(),
        proxy_protocol: false,
        handover: None,
    };
    if let Some(t) = r.table(root, "", "listen") {
        r.check_keys(
            t,
            "listen",
            &["http", "https", "proxy_protocol", "handover"],
        );
        listen.proxy_protocol = r
            .opt(t, "listen", "proxy_protocol", as_bool)
            .unwrap_or(false);
        listen.handover = r.opt(t, "listen", "handover", |v| {
            super::reader::as_str(v).and_then(|s| match s.is_empty() {
                true => Err("an empty path".to_string()),
                false => Ok(std::path::PathBuf::from(s)),
            })
        });
        let addrs = |v: &toml_edit::Value| {
            as_list(v, |s| {
                s.parse::<SocketAddr>().map_err(|_| {
                    format!("{s:?} is not an address like \"0.0.0.0:8080\" or \"[::]:8080\"")
                })
            })
        };
        if let Some(http) = r.opt(t, "listen", "http", addrs) {
            listen.http = http;
        } else if t.get("https").is_some() && t.get("http").is_none() {
            // Only https configured: no plain listener unless asked for.
            listen.http = Vec::new();
        }
        if let Some(https) = r.opt(t, "listen", "https", addrs) {
            listen.https = https;
        }
        if listen.http.is_empty() && listen.https.is_empty() {
            r.error_at(
                Reader::span_of(root, "listen"),
                "listen",
                "at least one http or https address is required",
            );
        }
        if let Some(a) = listen.http.iter().find(|a| listen.https.contains(a)) {
            let msg = format!("{a} is also an http listener");
            r.error_at(Reader::span_of(t, "https"), "listen.https", msg);
        }
    }
    listen
}

fn read_tls(r: &mut Reader, root: &dyn TableLike) -> Option<TlsConfig> {
    let t = r.table(root, "", "tls")?;
    r.check_keys(t, "tls", &["cert", "key", "sni"]);
    let cert = r.file_ref(t, "tls", "cert");
    let key = r.file_ref(t, "tls", "key");
    for (k, v) in [("cert", &cert), ("key", &key)] {
        if v.is_none() && t.get(k).is_none() {
            r.error_at(
                Reader::span_of(root, "tls"),
                &join("tls", k),
                format!("missing key `{k}`"),
            );
        }
    }
    let mut sni = Vec::new();
    for (i, (st, span)) in r.tables(t, "tls", "sni").into_iter().enumerate() {
        let path = format!("tls.sni[{i}]");
        r.check_keys(st, &path, &["host", "cert", "key"]);
        let host = r.opt(st, &path, "host", |v| {
            as_str(v).and_then(|s| {
                let h = s.trim().to_ascii_lowercase();
                let name = h.strip_prefix("*.").unwrap_or(&h);
                if name.is_empty() || name.contains(['*', '/', ':', ' ']) {
                    Err(format!("{s:?} is not a host name or \"*.domain\""))
                } else {
                    Ok(h)
                }
            })
        });
        let (c, k) = (r.file_ref(st, &path, "cert"), r.file_ref(st, &path, "key"));
        match (host, c, k) {
            (Some(host), Some(cert), Some(key)) => sni.push(SniCert { host, cert, key }),
            _ => {
                for k in ["host", "cert", "key"] {
                    if st.get(k).is_none() {
                        r.error_at(span.clone(), &path, format!("missing key `{k}`"));
                    }
                }
            }
        }
    }
    Some(TlsConfig {
        cert: cert?,
        key: key?,
        sni,
    })
}

fn read_admin(r: &mut Reader, root: &dyn TableLike) -> Option<AdminConfig> {
    let t = r.table(root, "", "admin")?;
    r.check_keys(t, "admin", &["listen", "token"]);
    let listen = r.opt(t, "admin", "listen", |v| {
        as_str(v).and_then(|s| {
            s.parse::<SocketAddr>()
                .map_err(|_| format!("{s:?} is not an address like \"127.0.0.1:9090\""))
        })
    });
    let token = r.opt(t, "admin", "token", |v| {
        as_str(v).and_then(|s| {
            if s.len() >= 8 && s.bytes().all(|b| b.is_ascii_graphic()) {
                Ok(s)
            } else {
                Err("must be at least 8 printable characters without spaces".to_string())
            }
        })
    });
    if listen.is_none() && t.get("listen").is_none() {
        r.error_at(
            Reader::span_of(root, "admin"),
            "admin.listen",
            "missing key `listen`",
        );
    }
    Some(AdminConfig {
        listen: listen?,
        token,
    })
}

fn read_log(r: &mut Reader, root: &dyn TableLike) -> LogConfig {
    let mut log = LogConfig::default();
    if let Some(t) = r.table(root, "", "log") {
        r.check_keys(t, "log", &["access"]);
        if let Some(a) = r.opt(t, "log", "access", |v| {
            as_choice(
                v,
                &[
                    ("off", AccessLog::Off),
                    ("combined", AccessLog::Combined),
                    ("json", AccessLog::Json),
                ],
            )
        }) {
            log.access = a;
        }
    }
    log
}

fn read_proxy(r: &mut Reader, root: &dyn TableLike) -> ProxySettings {
    let mut p = ProxySettings::default();
    let Some(t) = r.table(root, "", "proxy") else {
        return p;
    };
    let path = "proxy";
    r.check_keys(
        t,
        path,
        &[
            "connect_timeout",
            "response_timeout",
            "idle_timeout",
            "header_timeout",
            "max_header_bytes",
            "retries",
            "trusted_proxies",
            "shutdown_timeout",
            "max_connections",
        ],
    );
    for (key, slot) in [
        ("connect_timeout", &mut p.connect_timeout),
        ("response_timeout", &mut p.response_timeout),
        ("idle_timeout", &mut p.idle_timeout),
        ("header_timeout", &mut p.header_timeout),
        ("shutdown_timeout", &mut p.shutdown_timeout),
    ] {
        if let Some(d) = r.opt(t, path, key, as_duration) {
            if d.is_zero() && key != "shutdown_timeout" {
                r.error_at(
                    Reader::span_of(t, key),
                    &join(path, key),
                    "must be greater than zero",
                );
            }
            *slot = d;
        }
    }
    if let Some(n) = r.opt(t, path, "max_header_bytes", |v| {
        as_int(v, 8192, 16 * 1024 * 1024)
    }) {
        p.max_header_bytes = n as usize;
    }
    if let Some(n) = r.opt(t, path, "max_connections", |v| as_int(v, 0, 10_000_000)) {
        p.max_connections = n as u64;
    }
    if let Some(n) = r.opt(t, path, "retries", |v| as_int(v, 0, 16)) {
        p.retries = n as u32;
    }
    if let Some(nets) = r.opt(t, path, "trusted_proxies", |v| as_list(v, parse_cidr)) {
        p.trusted_proxies = nets;
    }
    p
}

/// A CIDR (`10.0.0.0/8`) or a single address (`127.0.0.1`).
fn parse_cidr(s: &str) -> Result<IpNet, String> {
    if let Ok(n) = s.parse::<IpNet>() {
        return Ok(n.trunc());
    }
    s.parse::<std::net::IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("{s:?} is not a CIDR like \"10.0.0.0/8\" or an address"))
}

fn read_routes(r: &mut Reader, root: &dyn TableLike, pools: &[PoolConfig]) -> Vec<Route> {
    let mut routes = Vec::new();
    let entries = r.tables(root, "", "routes");
    for (i, (t, span)) in entries.iter().enumerate() {
        let path = format!("routes[{i}]");
        r.check_keys(*t, &path, &["host", "path_prefix", "pool"]);
        let host = r
            .opt(*t, &path, "host", |v| {
                as_str(v).and_then(|s| parse_host(&s))
            })
            .unwrap_or(HostMatch::Any);
        let path_prefix = r
            .opt(*t, &path, "path_prefix", |v| {
                as_str(v).and_then(|s| {
                    if s.starts_with('/') {
                        Ok(s)
                    } else {
                        Err(format!("must start with '/', found {s:?}"))
                    }
                })
            })
            .unwrap_or_else(|| "/".to_string());
        match r.opt(*t, &path, "pool", as_str) {
            Some(pool) => {
                if !pools.is_empty() && !pools.iter().any(|p| p.name == pool) {
                    r.error_at(
                        Reader::span_of(*t, "pool"),
                        &join(&path, "pool"),
                        format!("no pool named {pool:?}"),
                    );
                }
                routes.push(Route {
                    host,
                    path_prefix,
                    pool,
                });
            }
            None if t.get("pool").is_none() => {
                r.error_at(span.clone(), &path, "missing key `pool`");
            }
            None => {}
        }
    }
    if routes.is_empty() && entries.is_empty() && pools.len() > 1 {
        r.error_at(
            None,
            "routes",
            "with more than one pool, [[routes]] must say which requests go to which pool",
        );
    }
    routes
}

fn parse_host(s: &str) -> Result<HostMatch, String> {
    let s = s.trim().to_ascii_lowercase();
    if s.is_empty() || s == "*" {
        return Ok(HostMatch::Any);
    }
    let bad = |s: &str| s.is_empty() || s.contains(['*', '/', ' ', ':']);
    if let Some(rest) = s.strip_prefix("*.") {
        if bad(rest) {
            return Err(format!("{s:?} is not a host name or \"*.domain\""));
        }
        return Ok(HostMatch::Suffix(format!(".{rest}")));
    }
    if bad(&s) {
        return Err(format!(
            "{s:?} is not a host name or \"*.domain\" (no port)"
        ));
    }
    Ok(HostMatch::Exact(s))
}
