//! `[[pools.NAME.discover]]`: backends found by DNS (A/AAAA with a port, or SRV), and the
//! pool's `slow_start` window.

use std::net::SocketAddr;
use std::time::Duration;

use toml_edit::TableLike;

use super::reader::{as_bool, as_duration, as_int, as_list, as_str, join, Reader};
use super::{BackendTls, DiscoverConfig, DiscoverQuery, FileRef};

/// Re-resolution may not be more frequent than this.
const MIN_INTERVAL: Duration = Duration::from_secs(1);

pub(super) fn read_discover(
    r: &mut Reader,
    pool: &dyn TableLike,
    pool_path: &str,
) -> Vec<DiscoverConfig> {
    let mut out: Vec<DiscoverConfig> = Vec::new();
    for (i, (t, span)) in r
        .tables(pool, pool_path, "discover")
        .into_iter()
        .enumerate()
    {
        let path = format!("{pool_path}.discover[{i}]");
        r.check_keys(
            t,
            &path,
            &[
                "dns",
                "port",
                "srv",
                "interval",
                "hold",
                "resolver",
                "weight",
                "tls",
                "ca",
                "server_name",
                "max_conns",
            ],
        );
        let dns = r.opt(t, &path, "dns", |v| as_str(v).and_then(|s| dns_name(&s)));
        let srv = r.opt(t, &path, "srv", |v| as_str(v).and_then(|s| dns_name(&s)));
        let port = r.opt(t, &path, "port", |v| as_int(v, 1, 65535).map(|p| p as u16));
        let has = |k: &str| t.get(k).is_some();
        let query = if has("dns") && has("srv") {
            r.error_at(span.clone(), &path, "give `dns` or `srv`, not both");
            None
        } else if has("srv") {
            if has("port") {
                r.error_at(
                    Reader::span_of(t, "port"),
                    &join(&path, "port"),
                    "only used with `dns` (SRV records carry their port)",
                );
            }
            srv.map(|name| DiscoverQuery::Srv { name })
        } else if has("dns") {
            if !has("port") {
                r.error_at(span.clone(), &path, "`dns` needs `port`");
            }
            dns.zip(port)
                .map(|(name, port)| DiscoverQuery::Host { name, port })
        } else {
            r.error_at(span.clone(), &path, "needs `dns` (with `port`) or `srv`");
            None
        };
        let interval = r
            .opt(t, &path, "interval", as_duration)
            .unwrap_or(Duration::from_secs(5));
        if interval < MIN_INTERVAL {
            r.error_at(
                Reader::span_of(t, "interval"),
                &join(&path, "interval"),
                "must be at least 1s",
            );
        }
        let hold = r
            .opt(t, &path, "hold", as_duration)
            .unwrap_or(Duration::from_secs(30));
        let resolver = r.opt(t, &path, "resolver", |v| {
            let list = as_list(v, |s| {
                s.parse::<SocketAddr>()
                    .or_else(|_| {
                        s.parse::<std::net::IpAddr>()
                            .map(|ip| SocketAddr::new(ip, 53))
                    })
                    .map_err(|_| format!("{s:?} is not an IP address or IP:port"))
            })?;
            if list.is_empty() {
                Err("must name at least one server (omit it to use resolv.conf)".into())
            } else {
                Ok(list)
            }
        });
        let weight = r.opt(t, &path, "weight", |v| as_int(v, 1, 1000));
        if weight.is_some() && matches!(query, Some(DiscoverQuery::Srv { .. })) {
            r.error_at(
                Reader::span_of(t, "weight"),
                &join(&path, "weight"),
                "only used with `dns` (SRV records carry their weight)",
            );
        }
        let tls_flag = r.opt(t, &path, "tls", as_bool).unwrap_or(false);
        let ca = r
            .opt(t, &path, "ca", |v| {
                as_str(v).and_then(|s| {
                    if s.is_empty() {
                        Err("must not be empty".to_string())
                    } else {
                        Ok(s)
                    }
                })
            })
            .map(|p| FileRef {
                path: p,
                at: r.location(t, &path, "ca"),
            });
        let server_name = r.opt(t, &path, "server_name", as_str);
        if !tls_flag && (ca.is_some() || server_name.is_some()) {
            r.error_at(
                span.clone(),
                &path,
                "`ca` and `server_name` need `tls = true`",
            );
        }
        let max_conns = r
            .opt(t, &path, "max_conns", |v| as_int(v, 0, 1_000_000))
            .map(|n| n as u32);
        let Some(query) = query else { continue };
        let name = format!("dns:{}", query.name());
        if out.iter().any(|d| d.name == name) {
            r.error_at(
                span,
                &path,
                format!("{name} is already discovered in this pool"),
            );
            continue;
        }
        let tls = tls_flag.then(|| BackendTls {
            ca,
            server_name: server_name.unwrap_or_else(|| query.name().to_string()),
        });
        out.push(DiscoverConfig {
            name,
            query,
            interval,
            hold,
            resolver,
            weight: weight.unwrap_or(1) as u32,
            tls,
            max_conns,
        });
    }
    out
}

/// A DNS name: labels of letters, digits, `-` and `_` (SRV), an optional final dot.
fn dns_name(s: &str) -> Result<String, String> {
    let bare = s.strip_suffix('.').unwrap_or(s);
    let ok = !bare.is_empty()
        && bare.len() <= 253
        && bare.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if ok {
        Ok(bare.to_ascii_lowercase())
    } else {
        Err(format!("{s:?} is not a DNS name"))
    }
}

/// `slow_start = "60s"`: off when absent or zero.
pub(super) fn read_slow_start(r: &mut Reader, t: &dyn TableLike, path: &str) -> Option<Duration> {
    r.opt(t, path, "slow_start", as_duration)
        .filter(|d| !d.is_zero())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names() {
        assert_eq!(dns_name("App.Svc.").unwrap(), "app.svc");
        assert_eq!(dns_name("_http._tcp.x").unwrap(), "_http._tcp.x");
        assert!(dns_name("").is_err());
        assert!(dns_name("a..b").is_err());
        assert!(dns_name("a b").is_err());
        assert!(dns_name("10.0.0.1:80").is_err());
    }
}
