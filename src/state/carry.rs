//! Long-lived state carried across an upgrade (`tether run --upgrade`): one export/import
//! pair per kind — backend states (health verdict, admin override, drain start) and session
//! tables (learned sessions, remembered keys) — as serde values the handover sends as JSON.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use base64::Engine;
use serde::{Deserialize, Serialize};

use super::{admin_code, now_ms, Registry, HEALTHY, UNCHECKED, UNHEALTHY};

/// One backend's state, by identity (pool, id, address).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BackendCarry {
    pub pool: String,
    pub id: String,
    pub address: String,
    /// The admin API's override (`active`, `drain`, `disabled`), if any …
    pub admin: Option<String>,
    /// … and the file state it was set against (the file wins once it changes).
    pub admin_file_state: Option<String>,
    /// How long it has been draining, in milliseconds.
    pub draining_for_ms: Option<u64>,
    /// The active checker's verdict: `healthy`, `unhealthy`, or none yet.
    pub verdict: Option<String>,
}

fn admin_name(code: u8) -> Option<String> {
    super::admin_from(code).map(|s| s.as_str().to_string())
}

fn admin_parse(name: Option<&str>) -> u8 {
    let s = match name {
        Some("active") => Some(crate::config::AdminState::Active),
        Some("drain") => Some(crate::config::AdminState::Drain),
        Some("disabled") => Some(crate::config::AdminState::Disabled),
        _ => None,
    };
    admin_code(s)
}

/// Backend states, for the new process.
pub fn export_backends(r: &Registry) -> Vec<BackendCarry> {
    let map = r.backends.lock();
    let now = now_ms();
    map.iter()
        .map(|(k, b)| BackendCarry {
            pool: k.pool.clone(),
            id: k.id.clone(),
            address: k.address.clone(),
            admin: admin_name(b.admin.load(Ordering::Relaxed)),
            admin_file_state: admin_name(b.admin_file_state.load(Ordering::Relaxed)),
            draining_for_ms: b.drain_started_ms().map(|t| now.saturating_sub(t)),
            verdict: match b.active.load(Ordering::Relaxed) {
                HEALTHY => Some("healthy".into()),
                UNHEALTHY => Some("unhealthy".into()),
                _ => None,
            },
        })
        .collect()
}

/// Applies exported backend states to the backends this process's config has with the same
/// identity (others are ignored). An admin override set against a file state that the new
/// config changed is dropped: the file wins, as on a reload. Returns how many applied.
pub fn import_backends(r: &Registry, carried: &[BackendCarry]) -> usize {
    let map = r.backends.lock();
    let now = now_ms();
    let mut applied = 0;
    for c in carried {
        let key = super::registry::BackendKey {
            pool: c.pool.clone(),
            id: c.id.clone(),
            address: c.address.clone(),
        };
        let Some(b) = map.get(&key) else { continue };
        let against = admin_parse(c.admin_file_state.as_deref());
        if c.admin.is_some() && against == b.file_state.load(Ordering::Relaxed) {
            b.admin_file_state.store(against, Ordering::Relaxed);
            b.admin
                .store(admin_parse(c.admin.as_deref()), Ordering::Relaxed);
        }
        b.refresh_drain();
        if let (Some(age), Some(_)) = (c.draining_for_ms, b.drain_started_ms()) {
            b.drain_started
                .store(now.saturating_sub(age).max(1), Ordering::Relaxed);
        }
        if b.checked.load(Ordering::Relaxed) {
            let v = match c.verdict.as_deref() {
                Some("healthy") => HEALTHY,
                Some("unhealthy") => UNHEALTHY,
                _ => UNCHECKED,
            };
            b.active.store(v, Ordering::Relaxed);
        }
        applied += 1;
    }
    applied
}

/// One session table (learned sessions or remembered ip/header keys) of one pool: (key in
/// base64, backend id).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SessionsCarry {
    /// `learn` or `remember`.
    pub kind: String,
    pub pool: String,
    pub entries: Vec<(String, String)>,
}

/// Every session table's entries.
pub fn export_sessions(r: &Registry) -> Vec<SessionsCarry> {
    let map = r.tables.lock();
    let b64 = base64::engine::general_purpose::STANDARD_NO_PAD;
    map.iter()
        .map(|((kind, pool), (_, t))| SessionsCarry {
            kind: kind.to_string(),
            pool: pool.clone(),
            entries: t
                .export()
                .into_iter()
                .map(|(k, b)| (b64.encode(k), b.to_string()))
                .collect(),
        })
        .collect()
}

/// Entries into this process's tables of the same kind and pool (tables the new config no
/// longer has are skipped); returns how many.
pub fn import_sessions(r: &Registry, carried: &[SessionsCarry]) -> usize {
    let map = r.tables.lock();
    let b64 = base64::engine::general_purpose::STANDARD_NO_PAD;
    let mut n = 0;
    for c in carried {
        let Some((_, table)) = map
            .iter()
            .find(|((kind, pool), _)| *kind == c.kind && *pool == c.pool)
            .map(|(_, v)| v)
        else {
            continue;
        };
        for (k, backend) in &c.entries {
            if let Ok(k) = b64.decode(k) {
                table.import(&k, Arc::from(backend.as_str()));
                n += 1;
            }
        }
    }
    n
}
