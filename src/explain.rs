//! `tether explain`: which backend a request would reach, the fallback order, and why.

use std::fmt::Write;
use std::net::IpAddr;
use std::sync::Arc;

use crate::affinity::{self, Reason, RequestKeys};
use crate::config::{AdminState, Affinity, Config};
use crate::runtime::Snapshot;
use crate::state::Registry;

/// What the request carries.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// The affinity cookie's value (`NAME=` prefix allowed).
    pub cookie: Option<String>,
    pub ip: Option<IpAddr>,
    pub header: Option<String>,
    /// A Tomcat session id (`ABC123.node1`) for route affinity.
    pub jsessionid: Option<String>,
    /// The application's session cookie value for learn affinity.
    pub session: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("no pool named {0:?}")]
    UnknownPool(String),
    #[error("the config has several pools ({0}); choose one with --pool")]
    WhichPool(String),
    #[error("no backend of pool {0:?} can take this request")]
    NoBackend(String),
}

/// Explains the decision for `query` in `pool` (or the only pool), as a freshly started
/// instance whose health checks all pass would decide: states as in the file.
pub fn explain(config: &Config, pool: Option<&str>, query: &Query) -> Result<String, ExplainError> {
    let pool_cfg = match pool {
        Some(name) => config
            .pool(name)
            .ok_or_else(|| ExplainError::UnknownPool(name.to_string()))?,
        None if config.pools.len() == 1 => &config.pools[0],
        None => {
            let names: Vec<&str> = config.pools.iter().map(|p| p.name.as_str()).collect();
            return Err(ExplainError::WhichPool(names.join(", ")));
        }
    };
    let registry = Arc::new(Registry::default());
    let snap = Snapshot::build(
        Arc::new(config.clone()),
        crate::tls::TlsMaterial::default(),
        &registry,
        None,
    );
    for p in &snap.pools {
        for b in &p.backends {
            b.shared.set_active_verdict(true);
        }
    }
    let pool = snap
        .pool_index(&pool_cfg.name)
        .map(|i| &snap.pools[i])
        .ok_or_else(|| ExplainError::UnknownPool(pool_cfg.name.clone()))?;

    let mut out = String::new();
    let ip_given = query.ip.is_some();
    let ip = query.ip.unwrap_or(IpAddr::from([127, 0, 0, 1]));
    let cookie = query.cookie.as_deref().map(|v| match &pool.cookie {
        Some(c) => v
            .strip_prefix(&format!("{}=", c.name()))
            .unwrap_or(v)
            .to_string(),
        None => v.to_string(),
    });
    let session = query
        .jsessionid
        .as_deref()
        .or(query.session.as_deref())
        .map(str::as_bytes);
    let keys = RequestKeys {
        client_ip: ip,
        session,
        cookie: cookie.as_deref().map(str::as_bytes),
        header: query.header.as_deref().map(str::as_bytes),
        now: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    };
    let _ = writeln!(
        out,
        "pool {} (affinity {}, hash {}, {} backends)",
        pool.name,
        pool.affinity.as_str(),
        pool_cfg.hash.as_str(),
        pool.backends.len()
    );
    if !ip_given
        && matches!(
            pool.affinity,
            Affinity::Ip | Affinity::Cookie | Affinity::Header
        )
    {
        let _ = writeln!(out, "client IP not given: assuming {ip}");
    }
    let (d, why) = affinity::decide(pool, &keys)
        .ok_or_else(|| ExplainError::NoBackend(pool_cfg.name.clone()))?;
    let b = &pool.backends[d.backend];
    let _ = writeln!(
        out,
        "→ {} ({}), affinity outcome: {}",
        b.id,
        b.address,
        d.outcome.as_str()
    );
    let reason = match why {
        Reason::Pinned => match pool.affinity {
            Affinity::Route => "the session id's route names this backend, which can take it".to_string(),
            Affinity::Learn => "this session was learned from this backend, which can take it".to_string(),
            _ => "the cookie is valid and names this backend, which can take it".to_string(),
        },
        Reason::PinRefreshed => "the cookie names this backend; it is older than max_idle/4, so it is re-issued".to_string(),
        Reason::PinInvalid => match pool.affinity {
            Affinity::Learn => format!("this instance has not learned that session (in a fresh process only the shared store could know it), so it is placed as new by client IP {ip}"),
            _ => format!("the cookie is not valid here (malformed, forged, expired, or from another config), so this is a new session placed by client IP {ip}"),
        },
        Reason::PinOrphaned => match pool.affinity {
            Affinity::Route => "the session id's route is unknown, or its backend is down, disabled or past its drain; the request is re-placed by the session id (Tomcat will start a new session)".to_string(),
            _ => "the cookie names a backend that is gone, down, disabled or past its drain; the session is re-placed by its client key".to_string(),
        },
        Reason::KeyOwner => "consistent hashing of the key picks this backend".to_string(),
        Reason::KeyOwnerUnavailable => "the key's own backend cannot take it; this is the next candidate".to_string(),
        Reason::Remembered => "this key is remembered at this backend, which can take it".to_string(),
        Reason::RememberedUnavailable => "this key is remembered at a backend that is gone, down, disabled or past its drain; it is re-placed and remembered anew".to_string(),
        Reason::NewSession => format!("no cookie: a new session, placed by client IP {ip}"),
        Reason::LeastInFlight => "affinity = none: the backend with the fewest in-flight requests".to_string(),
    };
    let _ = writeln!(out, "why: {reason}");
    if d.issue_cookie.is_some() {
        let _ = writeln!(
            out,
            "the response sets a fresh {} cookie",
            pool.cookie.as_ref().map(|c| c.name()).unwrap_or("affinity")
        );
    }
    if pool.affinity != Affinity::None {
        let order: Vec<String> = pool
            .balancer
            .candidates(d.key.as_bytes())
            .filter(|&i| i != d.backend)
            .map(|i| {
                let b = &pool.backends[i];
                match b.shared.admin_state() {
                    AdminState::Active => b.id.to_string(),
                    AdminState::Drain => format!("{} (draining: skipped for new sessions)", b.id),
                    AdminState::Disabled => format!("{} (disabled: skipped)", b.id),
                }
            })
            .collect();
        let _ = writeln!(
            out,
            "fallback order (key {:?}): {}",
            String::from_utf8_lossy(d.key.as_bytes()),
            order.join(", ")
        );
    }
    Ok(out)
}
