//! `[pools.NAME]`: the pool's own keys; its sub-sections are read by the sibling modules.

use http::HeaderName;
use toml_edit::TableLike;

use super::affinity::{read_cookie, read_learn, read_remember, read_route};
use super::backends::read_backends;
use super::checks::{read_health, read_passive};
use super::reader::{as_bool, as_choice, as_duration, as_float, as_int, as_str, join, Reader};
use super::*;

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
