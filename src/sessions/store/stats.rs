//! The store connection's state and per-operation counters, lock-free, for `/status` and metrics.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwapOption;

/// What the store connection is doing, for `/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreState {
    Connecting,
    Connected,
    /// The last operation failed (the connection is being re-established).
    Failing,
}

impl StoreState {
    pub fn as_str(self) -> &'static str {
        match self {
            StoreState::Connecting => "connecting",
            StoreState::Connected => "connected",
            StoreState::Failing => "failing",
        }
    }
}

/// Store operations counted in `tether_store_operations_total{op,result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// A read that found the key.
    ReadHit,
    /// A read that found nothing.
    ReadMiss,
    ReadError,
    /// A read not answered within [`READ_DEADLINE`](super::READ_DEADLINE) (or with no connection yet).
    ReadTimeout,
    WriteOk,
    /// A write given up after `WRITE_PATIENCE`.
    WriteError,
    /// A write dropped because the queue was full.
    WriteDropped,
}

const OPS: [Op; 7] = [
    Op::ReadHit,
    Op::ReadMiss,
    Op::ReadError,
    Op::ReadTimeout,
    Op::WriteOk,
    Op::WriteError,
    Op::WriteDropped,
];

impl Op {
    /// (`op`, `result`) labels.
    pub fn labels(self) -> (&'static str, &'static str) {
        match self {
            Op::ReadHit => ("read", "hit"),
            Op::ReadMiss => ("read", "miss"),
            Op::ReadError => ("read", "error"),
            Op::ReadTimeout => ("read", "timeout"),
            Op::WriteOk => ("write", "ok"),
            Op::WriteError => ("write", "error"),
            Op::WriteDropped => ("write", "dropped"),
        }
    }
}

/// Lock-free store health and counters.
pub struct StoreStats {
    state: AtomicU8,
    last_error: ArcSwapOption<(String, u64)>,
    ops: [AtomicU64; OPS.len()],
}

impl StoreStats {
    pub(super) fn new() -> StoreStats {
        StoreStats {
            state: AtomicU8::new(0),
            last_error: ArcSwapOption::empty(),
            ops: Default::default(),
        }
    }

    pub fn state(&self) -> StoreState {
        match self.state.load(Ordering::Relaxed) {
            0 => StoreState::Connecting,
            1 => StoreState::Connected,
            _ => StoreState::Failing,
        }
    }

    pub(super) fn set_state(&self, s: StoreState) {
        let v = match s {
            StoreState::Connecting => 0,
            StoreState::Connected => 1,
            StoreState::Failing => 2,
        };
        self.state.store(v, Ordering::Relaxed);
    }

    pub(super) fn fail(&self, e: impl std::fmt::Display) {
        self.set_state(StoreState::Failing);
        self.last_error
            .store(Some(Arc::new((e.to_string(), unix_ms()))));
    }

    /// The last error and when it happened (unix ms).
    pub fn last_error(&self) -> Option<(String, u64)> {
        self.last_error.load_full().map(|e| (*e).clone())
    }

    pub(super) fn count(&self, op: Op) {
        // OPS lists every variant, so the position always exists.
        if let Some(i) = OPS.iter().position(|o| *o == op) {
            self.ops[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Every operation with its count.
    pub fn ops(&self) -> impl Iterator<Item = (Op, u64)> + '_ {
        OPS.iter()
            .zip(&self.ops)
            .map(|(op, n)| (*op, n.load(Ordering::Relaxed)))
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
