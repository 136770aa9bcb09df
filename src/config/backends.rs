//! `[[pools.NAME.backends]]`: backend entries (address, TLS, an id and route unique in the pool).

use std::collections::HashSet;
use std::net::SocketAddr;

use toml_edit::TableLike;

use super::reader::{as_bool, as_choice, as_int, as_str, join, Reader};
use super::{AdminState, BackendConfig, BackendTls};

pub(super) fn read_backends(
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
