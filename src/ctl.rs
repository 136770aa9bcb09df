//! `tether ctl wait-drained`: polls one or more instances' admin API until a backend is
//! draining (or disabled, or gone) everywhere and no pinned request has reached it for the
//! quiet period.

use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::Value;
use tokio::time::Instant;

use crate::admin::{call, percent_encode, CtlError};

#[derive(Debug, Clone)]
pub struct WaitOptions {
    /// Admin API base URLs, one per tether instance.
    pub admins: Vec<String>,
    pub token: Option<String>,
    /// The backend's pool; found from `/status` when absent.
    pub pool: Option<String>,
    pub id: String,
    /// No pinned request (and none in flight) for this long.
    pub quiet: Duration,
    pub timeout: Duration,
    /// Time between polls.
    pub poll: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    #[error("timed out after {timeout:?}; still waiting on: {pending}")]
    Timeout { timeout: Duration, pending: String },
    #[error("backend {id:?} is in pools {pools:?} at {admin}; choose one with --pool")]
    Ambiguous {
        id: String,
        pools: Vec<String>,
        admin: String,
    },
}

/// What one poll of one instance says.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    /// Draining or disabled with `pinned` requests counted so far and `in_flight` now.
    Out { pinned: u64, in_flight: u64 },
    /// Still taking new sessions (up) or down.
    In(String),
    /// No such backend (or pool) there any more.
    Gone,
    /// The instance did not answer.
    Unreachable(String),
}

/// One instance's progress.
struct Watch {
    admin: String,
    pool: Option<String>,
    last_pinned: Option<u64>,
    /// Since when nothing has reached the backend there (as this waiter saw it).
    quiet_since: Option<Instant>,
    unreachable_since: Option<Instant>,
    last: Option<Seen>,
}

impl Watch {
    /// Folds in one observation; true when this instance is done.
    fn note(&mut self, seen: Seen, now: Instant, quiet: Duration) -> bool {
        let done = match &seen {
            Seen::Gone => true,
            Seen::Out { pinned, in_flight } => {
                self.unreachable_since = None;
                if *in_flight > 0 || self.last_pinned != Some(*pinned) {
                    self.quiet_since = Some(now);
                    self.last_pinned = Some(*pinned);
                }
                if *in_flight > 0 {
                    false
                } else {
                    let since = *self.quiet_since.get_or_insert(now);
                    now.duration_since(since) >= quiet
                }
            }
            Seen::In(_) => {
                self.unreachable_since = None;
                self.quiet_since = None;
                self.last_pinned = None;
                false
            }
            // An instance that stays unreachable for the quiet period sends nothing.
            Seen::Unreachable(_) => {
                let since = *self.unreachable_since.get_or_insert(now);
                now.duration_since(since) >= quiet
            }
        };
        self.last = Some(seen);
        done
    }
}

async fn poll(w: &mut Watch, o: &WaitOptions) -> Result<Seen, WaitError> {
    let token = o.token.as_deref();
    let pool = match (&o.pool, &w.pool) {
        (Some(p), _) | (None, Some(p)) => p.clone(),
        (None, None) => match call(&w.admin, Method::GET, "/status", token).await {
            Ok(body) => {
                let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                let pools = pools_with(&v, &o.id);
                match pools.as_slice() {
                    [] => return Ok(Seen::Gone),
                    [one] => {
                        w.pool = Some(one.clone());
                        one.clone()
                    }
                    _ => {
                        return Err(WaitError::Ambiguous {
                            id: o.id.clone(),
                            pools,
                            admin: w.admin.clone(),
                        })
                    }
                }
            }
            Err(e) => return Ok(Seen::Unreachable(e.to_string())),
        },
    };
    let path = format!(
        "/pools/{}/backends/{}",
        percent_encode(&pool),
        percent_encode(&o.id)
    );
    Ok(match call(&w.admin, Method::GET, &path, token).await {
        Ok(body) => {
            let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            interpret(&v)
        }
        Err(CtlError::Status { status, .. }) if status == StatusCode::NOT_FOUND => Seen::Gone,
        Err(e) => Seen::Unreachable(e.to_string()),
    })
}

fn interpret(v: &Value) -> Seen {
    let state = v["state"].as_str().unwrap_or("unknown");
    match state {
        "draining" | "disabled" => Seen::Out {
            pinned: v["pinned_while_draining"].as_u64().unwrap_or(0),
            in_flight: v["in_flight"].as_u64().unwrap_or(0),
        },
        other => Seen::In(other.to_string()),
    }
}

/// Pools of a `/status` document that have a backend with this id.
fn pools_with(status: &Value, id: &str) -> Vec<String> {
    status["pools"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(_, p)| {
                    p["backends"]
                        .as_array()
                        .is_some_and(|bs| bs.iter().any(|b| b["id"] == id))
                })
                .map(|(name, _)| name.clone())
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until every instance is done; `Err(Timeout)` at `timeout`.
pub async fn wait_drained(o: &WaitOptions) -> Result<(), WaitError> {
    let start = Instant::now();
    let mut watches: Vec<Watch> = o
        .admins
        .iter()
        .map(|a| Watch {
            admin: a.clone(),
            pool: None,
            last_pinned: None,
            quiet_since: None,
            unreachable_since: None,
            last: None,
        })
        .collect();
    let mut done = vec![false; watches.len()];
    loop {
        for (w, d) in watches.iter_mut().zip(done.iter_mut()) {
            let seen = poll(w, o).await?;
            // An instance once done stays done unless the backend is back in service there.
            let now_done = w.note(seen.clone(), Instant::now(), o.quiet);
            *d = now_done || (*d && !matches!(seen, Seen::In(_)));
        }
        if done.iter().all(|d| *d) {
            return Ok(());
        }
        if start.elapsed() >= o.timeout {
            let pending = watches
                .iter()
                .zip(&done)
                .filter(|(_, d)| !**d)
                .map(|(w, _)| format!("{} ({})", w.admin, describe(w.last.as_ref())))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(WaitError::Timeout {
                timeout: o.timeout,
                pending,
            });
        }
        let left = o.timeout.saturating_sub(start.elapsed());
        tokio::time::sleep(o.poll.min(left).max(Duration::from_millis(10))).await;
    }
}

fn describe(seen: Option<&Seen>) -> String {
    match seen {
        None => "not polled".into(),
        Some(Seen::Out { pinned, in_flight }) => {
            format!("draining, {pinned} pinned requests so far, {in_flight} in flight")
        }
        Some(Seen::In(state)) => format!("state {state}"),
        Some(Seen::Gone) => "gone".into(),
        Some(Seen::Unreachable(e)) => format!("unreachable: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watch() -> Watch {
        Watch {
            admin: "http://127.0.0.1:1".into(),
            pool: None,
            last_pinned: None,
            quiet_since: None,
            unreachable_since: None,
            last: None,
        }
    }

    #[test]
    fn quiet_restarts_whenever_a_pinned_request_arrives() {
        let q = Duration::from_secs(30);
        let t0 = Instant::now();
        let mut w = watch();
        let out = |pinned, in_flight| Seen::Out { pinned, in_flight };
        assert!(!w.note(out(5, 0), t0, q));
        assert!(
            !w.note(out(6, 0), t0 + Duration::from_secs(20), q),
            "a new pin"
        );
        assert!(!w.note(out(6, 0), t0 + Duration::from_secs(49), q));
        assert!(w.note(out(6, 0), t0 + Duration::from_secs(50), q));
        // In flight holds it, whatever the counter says.
        let mut w = watch();
        assert!(!w.note(out(1, 1), t0, q));
        assert!(!w.note(out(1, 1), t0 + Duration::from_secs(60), q));
        assert!(!w.note(out(1, 0), t0 + Duration::from_secs(61), q));
        assert!(w.note(out(1, 0), t0 + Duration::from_secs(91), q));
    }

    #[test]
    fn up_backends_are_not_done_and_gone_ones_are() {
        let q = Duration::from_secs(1);
        let t0 = Instant::now();
        let mut w = watch();
        assert!(!w.note(Seen::In("up".into()), t0 + Duration::from_secs(100), q));
        assert!(w.note(Seen::Gone, t0, q));
        let mut w = watch();
        assert!(!w.note(Seen::Unreachable("refused".into()), t0, q));
        assert!(w.note(Seen::Unreachable("refused".into()), t0 + q, q));
    }

    #[test]
    fn status_documents_are_read() {
        let v: Value =
            serde_json::json!({"state": "draining", "pinned_while_draining": 3, "in_flight": 1});
        assert_eq!(
            interpret(&v),
            Seen::Out {
                pinned: 3,
                in_flight: 1
            }
        );
        let v: Value = serde_json::json!({"state": "up"});
        assert_eq!(interpret(&v), Seen::In("up".into()));
        let s =
            serde_json::json!({"pools": {"a": {"backends": [{"id": "x"}]}, "b": {"backends": []}}});
        assert_eq!(pools_with(&s, "x"), ["a"]);
        assert!(pools_with(&s, "y").is_empty());
    }
}
