//! Idle keep-alive connections to one backend, in a lock-free queue: taken when still open
//! and fresh, swept when stale.

use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;

use super::connect::Conn;

/// Idle connections kept per backend.
const MAX_IDLE: usize = 256;
/// An idle connection older than this is not reused, and the sweep closes it (Tomcat closes
/// idle keep-alive at 20 s by default, nginx at 75 s).
pub const IDLE_REUSE: Duration = Duration::from_secs(15);

struct Idle {
    conn: Conn,
    since: Instant,
}

/// Idle keep-alive connections to one backend.
pub struct ConnPool {
    idle: ArrayQueue<Idle>,
}

impl std::fmt::Debug for ConnPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ConnPool({} idle)", self.idle.len())
    }
}

impl Default for ConnPool {
    fn default() -> Self {
        Self::new()
    }
}

impl ConnPool {
    pub fn new() -> Self {
        ConnPool {
            idle: ArrayQueue::new(MAX_IDLE),
        }
    }

    pub(super) fn put(&self, conn: Conn) {
        // A full pool drops the connection, which closes it.
        let _ = self.idle.push(Idle {
            conn,
            since: Instant::now(),
        });
    }

    pub(super) fn take(&self) -> Option<Conn> {
        while let Some(idle) = self.idle.pop() {
            if idle.since.elapsed() < IDLE_REUSE && idle.conn.looks_open() {
                return Some(idle.conn);
            }
        }
        None
    }

    pub fn idle_count(&self) -> usize {
        self.idle.len()
    }

    /// Closes idle connections past [`IDLE_REUSE`] or closed by the backend.
    pub fn sweep(&self) {
        for _ in 0..self.idle.len() {
            let Some(i) = self.idle.pop() else { break };
            if i.since.elapsed() < IDLE_REUSE && i.conn.looks_open() {
                // Back in the queue; if it filled meanwhile, the connection is dropped.
                let _ = self.idle.push(i);
            }
        }
    }
}
