//! `[pools.NAME]` and everything under it: affinity, cookie, route, learn, checks, backends.

use std::collections::HashSet;
use std::net::SocketAddr;

use http::HeaderName;
use toml_edit::TableLike;

use super::reader::{as_bool, as_choice, as_duration, as_float, as_int, as_str, join, Reader};
use super::*;

fn read_health(r: &mut Reader, t: &dyn TableLike, path: &str) -> HealthConfig {
    r.check_keys(
        t,
        path,
        &["path", "interval", "timeout", "rise", "fall", "expect"],
    );
    let health_path = r.opt(t, path, "path", |v| {
        as_str(v).and_then(|s| {
            if s.starts_with('/') && s.parse::<http::Uri>().is_ok() {
                Ok(s)
            } else {
                Err(format!("{s:?} is not a path starting with '/'"))
            }
        })
    });
    let mut h = HealthConfig {
        path: health_path,
        ..HealthConfig::default()
    };
    for (key, slot) in [("interval", &mut h.interval), ("timeout", &mut h.timeout)] {
        if let Some(d) = r.opt(t, path, key, as_duration) {
            if d < std::time::Duration::from_millis(10) {
                r.error_at(
                    Reader::span_of(t, key),
                    &join(path, key),
                    "must be at least 10ms",
                );
            }
            *slot = d;
        }
    }
    if let Some(n) = r.opt(t, path, "rise", |v| as_int(v, 1, 100)) {
        h.rise = n as u32;
    }
    if let Some(n) = r.opt(t, path, "fall", |v| as_int(v, 1, 100)) {
        h.fall = n as u32;
    }
    if let Some(e) = r.opt(t, path, "expect", |v| {
        as_str(v).and_then(|s| parse_status_range(&s))
    }) {
        h.expect = e;
    }
    h
}

/// `"200-399"` or `"200"`.
fn parse_status_range(s: &str) -> Result<(u16, u16), String> {
    let err = || format!("{s:?} is not a status code or range like \"200-399\"");
    let code = |x: &str| {
        x.trim()
            .parse::<u16>()
            .ok()
            .filter(|c| (100..=599).contains(c))
    };
    let (lo, hi) = match s.split_once('-') {
        Some((a, b)) => (code(a).ok_or_else(err)?, code(b).ok_or_else(err)?),
        None => {
            let c = code(s).ok_or_else(err)?;
            (c, c)
        }
    };
    if lo > hi {
        return Err(err());
    }
    Ok((lo, hi))
}

fn read_passive(r: &mut Reader, t: &dyn TableLike, path: &str) -> PassiveConfig {
    r.check_keys(t, path, &["max_fails", "fail_timeout"]);
    let mut p = PassiveConfig::default();
    if let Some(n) = r.opt(t, path, "max_fails", |v| as_int(v, 0, 1000)) {
        p.max_fails = n as u32;
    }
    if let Some(d) = r.opt(t, path, "fail_timeout", as_duration) {
        p.fail_timeout = d;
    }
    p
}

pub(super) fn read_pools(r: &mut Reader, root: &dyn TableLike) -> Vec<PoolConfig> {
    let mut pools = Vec::new();
    let Some(t) = r.table(root, "", "pools") else {
        r.error_at(
            None,
            "pools",
            "at least one pool is required ([pools.NAME])",
        );
        return pools;
    };
    for (name, _) in t.iter() {
        let path = join("pools", name);
        if let Some(pt) = r.table(t, "pools", name) {
            if let Some(p) = read_pool(r, pt, name, &path) {
                pools.push(p);
            }
        }
    }
    if pools.is_empty() && r.errors.is_empty() {
        r.error_at(
            t.key("pools").and_then(|k| k.span()),
            "pools",
            "at least one pool is required",
        );
    }
    pools
}

fn read_pool(r: &mut Reader, t: &dyn TableLike, name: &str, path: &str) -> Option<PoolConfig> {
    r.check_keys(
        t,
        path,
        &[
            "affinity",
            "hash",
            "table_size",
            "balance_factor",
            "drain_timeout",
            "redirect_http",
            "header",
            "cookie",
            "route",
            "learn",
            "remember",
            "health",
            "passive",
            "max_conns",
            "queue_timeout",
            "max_queue",
            "backends",
            "discover",
            "slow_start",
        ],
    );
    let affinity = r
        .opt(t, path, "affinity", |v| {
            as_choice(
                v,
                &[
                    ("cookie", Affinity::Cookie),
                    ("route", Affinity::Route),
                    ("learn", Affinity::Learn),
                    ("ip", Affinity::Ip),
                    ("header", Affinity::Header),
                    ("none", Affinity::None),
                ],
            )
        })
        .unwrap_or(Affinity::Cookie);
    let hash = r
        .opt(t, path, "hash", |v| {
            as_choice(
                v,
                &[
                    ("maglev", HashAlgorithm::Maglev),
                    ("ketama", HashAlgorithm::Ketama),
                ],
            )
        })
        .unwrap_or(HashAlgorithm::Maglev);
    let table_size = r
        .opt(t, path, "table_size", |v| {
            let n = as_int(v, 7, 10_000_019)?;
            if is_prime(n as u64) {
                Ok(n as u32)
            } else {
                Err(format!("must be a prime number (e.g. 65537), found {n}"))
            }
        })
        .unwrap_or(crate::balancer::DEFAULT_TABLE_SIZE);
    let balance_factor = r
        .opt(t, path, "balance_factor", |v| {
            let f = as_float(v)?;
            if f == 0.0 {
                Ok(None)
            } else if f > 1.0 && f.is_finite() {
                Ok(Some(f))
            } else {
                Err(format!(
                    "must be 0 (off) or a number greater than 1, found {f}"
                ))
            }
        })
        .unwrap_or(None);
    let drain_timeout = r
        .opt(t, path, "drain_timeout", as_duration)
        .unwrap_or(std::time::Duration::from_secs(30 * 60));
    let header = r.opt(t, path, "header", |v| {
        as_str(v).and_then(|s| {
            HeaderName::from_bytes(s.as_bytes())
                .map_err(|_| format!("{s:?} is not a valid header name"))
        })
    });
    match (affinity, &header) {
        (Affinity::Header, None) if t.get("header").is_none() => {
            r.error_at(
                Reader::span_of(t, "affinity"),
                &join(path, "header"),
                "affinity = \"header\" needs `header = \"Header-Name\"`",
            );
        }
        (a, Some(_)) if a != Affinity::Header => {
            r.error_at(
                Reader::span_of(t, "header"),
                &join(path, "header"),
                "only used with affinity = \"header\"",
            );
        }
        _ => {}
    }
    let cookie_path = join(path, "cookie");
    let cookie = match r.table(t, path, "cookie") {
        Some(ct) => {
            if affinity != Affinity::Cookie {
                r.error_at(
                    Reader::span_of(t, "cookie"),
                    &cookie_path,
                    "only used with affinity = \"cookie\"",
                );
            }
            Some(read_cookie(r, ct, &cookie_path))
        }
        None => None,
    };
    let cookie = match affinity {
        Affinity::Cookie => Some(cookie.unwrap_or_default()),
        _ => None,
    };
    let redirect_http = r.opt(t, path, "redirect_http", as_bool).unwrap_or(false);
    let route = sub_section(r, t, path, "route", affinity == Affinity::Route, read_route);
    let learn = sub_section(r, t, path, "learn", affinity == Affinity::Learn, read_learn);
    let remember_path = join(path, "remember");
    let remember = r
        .table(t, path, "remember")
        .map(|rt| read_remember(r, rt, &remember_path));
    if remember.is_some() && !matches!(affinity, Affinity::Ip | Affinity::Header) {
        r.error_at(
            Reader::span_of(t, "remember"),
            &remember_path,
            format!(
                "only used with affinity = \"ip\" or \"header\" (this pool has affinity = \"{}\"; learn mode has its own ttl, capacity and store under [{}])",
                affinity.as_str(),
                join(path, "learn")
            ),
        );
    }
    let health = r
        .table(t, path, "health")
        .map(|h| read_health(r, h, &join(path, "health")));
    let passive = r
        .table(t, path, "passive")
        .map(|p| read_passive(r, p, &join(path, "passive")))
        .unwrap_or_default();
    let max_conns = r
        .opt(t, path, "max_conns", |v| as_int(v, 0, 1_000_000))
        .unwrap_or(0) as u32;
    let queue_timeout = r
        .opt(t, path, "queue_timeout", as_duration)
        .unwrap_or(std::time::Duration::from_secs(10));
    let max_queue = r
        .opt(t, path, "max_queue", |v| as_int(v, 0, 100_000_000))
        .unwrap_or(0) as u32;
    let discover = super::discover::read_discover(r, t, path);
    let slow_start = super::discover::read_slow_start(r, t, path);
    let backends = read_backends(r, t, path, !discover.is_empty());
    if backends.len() as u64 > u64::from(table_size) {
        r.error_at(
            Reader::span_of(t, "table_size"),
            &join(path, "table_size"),
            "must be larger than the number of backends (100× is best)",
        );
    }
    Some(PoolConfig {
        name: name.to_string(),
        affinity,
        hash,
        table_size,
        balance_factor,
        drain_timeout,
        header,
        cookie,
        route,
        learn,
        remember,
        redirect_http,
        health,
        passive,
        max_conns,
        queue_timeout,
        max_queue,
        backends,
        discover,
        slow_start,
    })
}

/// A pool sub-table that belongs to one affinity mode: an error when present for another
/// mode, defaults when absent for its own.
fn sub_section<T: Default>(
    r: &mut Reader,
    t: &dyn TableLike,
    path: &str,
    key: &str,
    wanted: bool,
    read: fn(&mut Reader, &dyn TableLike, &str) -> T,
) -> Option<T> {
    let full = join(path, key);
    let given = r.table(t, path, key).map(|sub| read(r, sub, &full));
    if given.is_some() && !wanted {
        r.error_at(
            Reader::span_of(t, key),
            &full,
            format!("only used with affinity = \"{key}\""),
        );
    }
    wanted.then(|| given.unwrap_or_default())
}

fn token_name(what: &str) -> impl Fn(&toml_edit::Value) -> Result<String, String> + '_ {
    move |v| {
        as_str(v).and_then(|s| {
            let ok = !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            if ok {
                Ok(s)
            } else {
                Err(format!("{s:?} is not a valid {what}"))
            }
        })
    }
}

fn read_route(r: &mut Reader, t: &dyn TableLike, path: &str) -> RouteConfig {
    r.check_keys(t, path, &["cookie", "url_param"]);
    let mut c = RouteConfig::default();
    if let Some(v) = r.opt(t, path, "cookie", token_name("cookie name")) {
        c.cookie = v;
    }
    if let Some(v) = r.opt(t, path, "url_param", token_name("path parameter name")) {
        c.url_param = v;
    }
    c
}

fn read_learn(r: &mut Reader, t: &dyn TableLike, path: &str) -> LearnConfig {
    r.check_keys(t, path, &["cookie", "ttl", "capacity", "store"]);
    let mut c = LearnConfig::default();
    if let Some(v) = r.opt(t, path, "cookie", token_name("cookie name")) {
        c.cookie = v;
    }
    if let Some(d) = r.opt(t, path, "ttl", as_duration) {
        c.ttl = d;
    }
    if let Some(n) = r.opt(t, path, "capacity", |v| as_int(v, 1, 100_000_000)) {
        c.capacity = n as u64;
    }
    c.store = r.opt(t, path, "store", as_store_url);
    c
}

fn read_remember(r: &mut Reader, t: &dyn TableLike, path: &str) -> RememberConfig {
    r.check_keys(t, path, &["ttl", "capacity", "store"]);
    let mut c = RememberConfig::default();
    if let Some(d) = r.opt(t, path, "ttl", as_duration) {
        c.ttl = d;
    }
    if let Some(n) = r.opt(t, path, "capacity", |v| as_int(v, 1, 100_000_000)) {
        c.capacity = n as u64;
    }
    c.store = r.opt(t, path, "store", as_store_url);
    c
}

/// A `store` URL: checked as the store will read it.
fn as_store_url(v: &toml_edit::Value) -> Result<String, String> {
    let s = as_str(v)?;
    crate::sessions::StoreUrl::parse(&s).map_err(|e| e.to_string())?;
    Ok(s)
}

fn read_cookie(r: &mut Reader, t: &dyn TableLike, path: &str) -> CookieConfig {
    r.check_keys(
        t,
        path,
        &[
            "name",
            "max_age",
            "max_idle",
            "secret",
            "path",
            "domain",
            "secure",
            "http_only",
            "same_site",
            "partitioned",
        ],
    );
    let mut c = CookieConfig::default();
    if let Some(name) = r.opt(
        t,
        path,
        "name",
        token_name("cookie name (letters, digits, - _ . and no spaces)"),
    ) {
        c.name = name;
    }
    c.max_age = r.opt(t, path, "max_age", as_duration);
    c.max_idle = r.opt(t, path, "max_idle", as_duration);
    if let Some(d) = c.max_idle {
        if d.as_secs() < 4 {
            r.error_at(
                Reader::span_of(t, "max_idle"),
                &join(path, "max_idle"),
                "must be at least 4s",
            );
        }
    }
    c.secret = r.opt(t, path, "secret", |v| {
        as_str(v).and_then(|s| {
            if s.len() >= 16 {
                Ok(s)
            } else {
                Err("must be at least 16 characters".to_string())
            }
        })
    });
    let attr = |v: &toml_edit::Value| {
        as_str(v).and_then(|s| {
            if s.bytes()
                .any(|b| b == b';' || b == b',' || b.is_ascii_control() || b == b' ')
            {
                Err(format!(
                    "{s:?} may not contain ';', ',', spaces or control characters"
                ))
            } else {
                Ok(s)
            }
        })
    };
    if let Some(p) = r.opt(t, path, "path", attr) {
        c.path = p;
    }
    c.domain = r.opt(t, path, "domain", attr);
    if let Some(s) = r.opt(t, path, "secure", |v| match v.as_bool() {
        Some(true) => Ok(Secure::Always),
        Some(false) => Ok(Secure::Never),
        None => as_choice(v, &[("auto", Secure::Auto)])
            .map_err(|_| "expected \"auto\", true or false".to_string()),
    }) {
        c.secure = s;
    }
    if let Some(b) = r.opt(t, path, "http_only", as_bool) {
        c.http_only = b;
    }
    if let Some(s) = r.opt(t, path, "same_site", |v| {
        as_choice(
            v,
            &[
                ("lax", SameSite::Lax),
                ("strict", SameSite::Strict),
                ("none", SameSite::None),
            ],
        )
    }) {
        c.same_site = s;
    }
    if let Some(b) = r.opt(t, path, "partitioned", as_bool) {
        c.partitioned = b;
        // Browsers drop a Partitioned cookie that is not Secure; CHIPS is for third-party
        // (cross-site) contexts, so SameSite must be None.
        if b && (c.secure != Secure::Always || c.same_site != SameSite::None) {
            r.error_at(
                Reader::span_of(t, "partitioned"),
                &join(path, "partitioned"),
                "partitioned = true needs secure = true and same_site = \"none\"",
            );
        }
    }
    c
}

fn read_backends(
    r: &mut Reader,
    pool: &dyn TableLike,
    pool_path: &str,
    discovers: bool,
) -> Vec<BackendConfig> {
    let mut out: Vec<BackendConfig> = Vec::new();
    let entries = r.tables(pool, pool_path, "backends");
    if entries.is_empty() && pool.get("backends").is_none() && !discovers {
        r.error_at(
            None,
            &join(pool_path, "backends"),
            "a pool needs at least one [[backends]] or [[discover]] entry",
        );
    }
    let mut ids = HashSet::new();
    let mut routes = HashSet::new();
    for (i, (t, span)) in entries.into_iter().enumerate() {
        let path = format!("{pool_path}.backends[{i}]");
        r.check_keys(
            t,
            &path,
            &[
                "id",
                "address",
                "weight",
                "route",
                "state",
                "tls",
                "ca",
                "server_name",
                "max_conns",
            ],
        );
        // `https://host:port` means tls = true; the scheme is not part of the address.
        let mut https = false;
        let address = r.opt(t, &path, "address", |v| {
            as_str(v).and_then(|s| {
                let bare = match s.strip_prefix("https://") {
                    Some(rest) => {
                        https = true;
                        rest.trim_end_matches('/').to_string()
                    }
                    None => s,
                };
                check_address(&bare).map(|_| bare)
            })
        });
        let tls_flag = r.opt(t, &path, "tls", as_bool).unwrap_or(false) || https;
        let ca = r.file_ref(t, &path, "ca");
        let server_name = r.opt(t, &path, "server_name", as_str);
        if !tls_flag && (ca.is_some() || server_name.is_some()) {
            r.error_at(
                span.clone(),
                &path,
                "`ca` and `server_name` need `tls = true` or an https:// address",
            );
        }
        if address.is_none() && t.get("address").is_none() {
            r.error_at(span.clone(), &path, "missing key `address`");
        }
        let id = r.opt(t, &path, "id", |v| {
            as_str(v).and_then(|s| {
                if s.is_empty() || s.contains('/') || s.chars().any(char::is_control) {
                    Err(format!("{s:?} is not a valid id (non-empty, no '/')"))
                } else {
                    Ok(s)
                }
            })
        });
        let weight = r
            .opt(t, &path, "weight", |v| as_int(v, 1, 1000))
            .unwrap_or(1) as u32;
        let route = r.opt(t, &path, "route", as_str);
        let max_conns = r
            .opt(t, &path, "max_conns", |v| as_int(v, 0, 1_000_000))
            .map(|n| n as u32);
        let state = r
            .opt(t, &path, "state", |v| {
                as_choice(
                    v,
                    &[
                        ("active", AdminState::Active),
                        ("drain", AdminState::Drain),
                        ("disabled", AdminState::Disabled),
                    ],
                )
            })
            .unwrap_or(AdminState::Active);
        let Some(address) = address else { continue };
        let tls = tls_flag.then(|| BackendTls {
            ca,
            server_name: server_name.unwrap_or_else(|| {
                let host = address
                    .rsplit_once(':')
                    .map_or(address.as_str(), |(h, _)| h);
                host.trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string()
            }),
        });
        let id = id.unwrap_or_else(|| address.clone());
        let route = route.unwrap_or_else(|| id.clone());
        if !ids.insert(id.clone()) {
            let at = Reader::span_of(t, "id").or(span.clone());
            r.error_at(
                at,
                &join(&path, "id"),
                format!("duplicate backend id {id:?} in this pool"),
            );
        }
        if !routes.insert(route.clone()) {
            let at = Reader::span_of(t, "route").or(span);
            r.error_at(
                at,
                &join(&path, "route"),
                format!("duplicate route {route:?} in this pool"),
            );
        }
        out.push(BackendConfig {
            id,
            address,
            weight,
            route,
            state,
            tls,
            discovered: None,
            max_conns,
        });
    }
    out
}

/// `host:port` with a non-empty host and a numeric port.
fn check_address(s: &str) -> Result<(), String> {
    if s.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    let err =
        || format!("{s:?} is not host:port (e.g. \"10.0.0.11:8080\" or \"app1.internal:8080\")");
    let (host, port) = s.rsplit_once(':').ok_or_else(err)?;
    if host.is_empty() || host.contains([':', '/', ' ', '[', ']']) || port.parse::<u16>().is_err() {
        return Err(err());
    }
    Ok(())
}

fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}
