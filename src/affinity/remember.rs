//! Remembered ip and header keys (`[pools.NAME.remember]`, like an HAProxy stick table on the
//! source): a key that reached a backend keeps reaching it while it stays active and that
//! backend is up or draining, whatever a membership change does to the hash mapping.

use super::{place, Decision, Key, Outcome, Reason, RequestKeys};
use crate::runtime::{Backend, Pool};
use crate::sessions::SessionTable;

/// The decision for a key the table knows: its backend if that can take it (hit), else a
/// re-placement that will be remembered (moved). `None` for a key the table does not know:
/// it is placed by hashing as without `remember`, and remembered where it lands.
pub fn recall(pool: &Pool, table: &SessionTable, key: &Key) -> Option<Option<(Decision, Reason)>> {
    let id = table.lookup(key.as_bytes())?;
    let decision = |backend, outcome, pinned_to_draining, remember| Decision {
        backend,
        outcome,
        issue_cookie: None,
        key: key.clone(),
        pinned_to_draining,
        remember,
    };
    if let Some(b) = pool.by_id(&id).filter(|&b| pool.takes_pinned(b)) {
        let d = decision(b, Outcome::Hit, !pool.takes_new(b), false);
        return Some(Some((d, Reason::Remembered)));
    }
    // Its backend is down, disabled, past its drain or removed: re-placed, remembered anew.
    Some(place(pool, key.as_bytes(), &[]).map(|b| {
        (
            decision(b, Outcome::Moved, false, true),
            Reason::RememberedUnavailable,
        )
    }))
}

/// After `backend` answered: remembers the key there when the decision asks for it.
pub fn note(pool: &Pool, d: &Decision, backend: &Backend) {
    if let (true, Some(table)) = (d.remember, &pool.remembered) {
        table.insert(d.key.as_bytes(), &backend.id);
    }
}

/// With a shared store: a key this instance does not know may be known there (another
/// instance placed it). Asks within the store's read deadline; a slow store is a miss.
pub async fn recall_shared(pool: &Pool, req: &RequestKeys<'_>) {
    let Some(table) = pool.remembered.as_ref().filter(|t| t.has_store()) else {
        return;
    };
    let key = super::keyed_key(pool, req);
    if table.lookup(key.as_bytes()).is_none() {
        table.lookup_shared(key.as_bytes()).await;
    }
}
