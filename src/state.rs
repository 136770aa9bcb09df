//! Long-lived per-backend and per-pool state (health, admin overrides, counters,
//! connections, drain start), keyed by identity and kept across config reloads.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub mod carry;
mod registry;
mod stats;

use crate::config::AdminState;
use crate::proxy::upstream::pool::ConnPool;
use crate::queue::BackendQueue;

pub use registry::{BackendIdentity, Registry};
pub use stats::{BackendStats, PoolShared, DURATION_BUCKETS};

/// Milliseconds on a process-wide monotonic clock (starts near 1, never 0).
pub fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// Wall-clock Unix time in milliseconds (0 if the clock is before 1970).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A backend's effective state, as `/status` and selection see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Up,
    Down,
    Draining,
    Disabled,
}

impl State {
    pub const ALL: [State; 4] = [State::Up, State::Down, State::Draining, State::Disabled];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Up => "up",
            State::Down => "down",
            State::Draining => "draining",
            State::Disabled => "disabled",
        }
    }
}

fn admin_code(s: Option<AdminState>) -> u8 {
    match s {
        None => 0,
        Some(AdminState::Active) => 1,
        Some(AdminState::Drain) => 2,
        Some(AdminState::Disabled) => 3,
    }
}

fn admin_from(c: u8) -> Option<AdminState> {
    match c {
        1 => Some(AdminState::Active),
        2 => Some(AdminState::Drain),
        3 => Some(AdminState::Disabled),
        _ => None,
    }
}

/// Active check verdicts.
const UNCHECKED: u8 = 0;
const HEALTHY: u8 = 1;
const UNHEALTHY: u8 = 2;

/// What survives a reload for one backend. Identity is (pool, id, address): a backend whose
/// address changes is a new backend.
#[derive(Debug)]
pub struct BackendShared {
    pub in_flight: AtomicU64,
    pub requests: AtomicU64,
    /// Requests that followed a pin to this backend while it was draining.
    pub pinned_while_draining: AtomicU64,
    /// Unix milliseconds of the last such request; 0 = never.
    pub last_pinned_at_ms: AtomicU64,
    /// `now_ms()` when draining began; 0 = not draining.
    drain_started: AtomicU64,
    /// The state the config file gives this backend.
    file_state: AtomicU8,
    /// The admin API's override (0 = none) and the file state it was set against.
    admin: AtomicU8,
    admin_file_state: AtomicU8,
    /// Active health check verdict.
    active: AtomicU8,
    /// Consecutive passive failures, and until when (now_ms) they keep the backend down.
    passive_fails: AtomicU32,
    passive_down_until: AtomicU64,
    /// Whether the pool has active checks (else the active verdict is always healthy).
    pub checked: AtomicBool,
    pub stats: BackendStats,
    /// Idle keep-alive connections to this backend.
    pub conns: ConnPool,
    /// Discovered backend whose DNS record is gone: draining until removed.
    vanished: AtomicBool,
    /// `now_ms()` when the slow-start clock first saw it up; 0 = not up (or not seen yet);
    /// [`NO_RAMP`] = up without a warm-up window.
    up_since: AtomicU64,
    /// Configured when tether started and not seen up yet: no slow start when it first is.
    initial: AtomicBool,
    /// `max_conns` slots and the requests waiting for one.
    pub queue: BackendQueue,
}

impl crate::queue::HasQueue for BackendShared {
    fn queue(&self) -> &BackendQueue {
        &self.queue
    }
}

/// `up_since` of a backend that takes its full weight at once.
pub const NO_RAMP: u64 = u64::MAX;

impl BackendShared {
    fn new(active_checks: bool) -> Self {
        BackendShared {
            in_flight: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            pinned_while_draining: AtomicU64::new(0),
            last_pinned_at_ms: AtomicU64::new(0),
            drain_started: AtomicU64::new(0),
            file_state: AtomicU8::new(admin_code(Some(AdminState::Active))),
            admin: AtomicU8::new(0),
            admin_file_state: AtomicU8::new(0),
            // A backend with active checks gets no new sessions before its first verdict.
            active: AtomicU8::new(if active_checks { UNCHECKED } else { HEALTHY }),
            passive_fails: AtomicU32::new(0),
            passive_down_until: AtomicU64::new(0),
            checked: AtomicBool::new(active_checks),
            stats: BackendStats::default(),
            conns: ConnPool::new(),
            vanished: AtomicBool::new(false),
            up_since: AtomicU64::new(0),
            initial: AtomicBool::new(false),
            queue: BackendQueue::default(),
        }
    }

    /// State not registered anywhere (used only if the registry and config ever disagree).
    pub fn detached() -> Self {
        BackendShared::new(false)
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The administrative state: the admin override if any, else the file's.
    pub fn admin_state(&self) -> AdminState {
        admin_from(self.admin.load(Ordering::Relaxed))
            .or_else(|| admin_from(self.file_state.load(Ordering::Relaxed)))
            .unwrap_or(AdminState::Active)
    }

    /// What health checks (active and passive) say, whatever the admin state.
    pub fn healthy(&self) -> bool {
        self.active.load(Ordering::Relaxed) == HEALTHY
            && self.passive_down_until.load(Ordering::Relaxed) <= now_ms()
    }

    /// The active checker's current verdict (true = healthy), ignoring passive state.
    pub fn state_is_actively_healthy(&self) -> bool {
        self.active.load(Ordering::Relaxed) == HEALTHY
    }

    /// Has the active checker reached a verdict (or are there no active checks)?
    pub fn has_verdict(&self) -> bool {
        self.active.load(Ordering::Relaxed) != UNCHECKED
    }

    pub fn state(&self) -> State {
        match self.admin_state() {
            AdminState::Disabled => State::Disabled,
            _ if !self.healthy() => State::Down,
            AdminState::Drain => State::Draining,
            AdminState::Active if self.is_vanished() => State::Draining,
            AdminState::Active => State::Up,
        }
    }

    /// A discovered backend whose record is gone (it drains).
    pub fn is_vanished(&self) -> bool {
        self.vanished.load(Ordering::Relaxed)
    }

    fn set_vanished(&self, v: bool) {
        if self.vanished.swap(v, Ordering::Relaxed) != v {
            self.refresh_drain();
        }
    }

    /// The slow-start clock: records when this backend is first seen up (restarting each
    /// time it comes back from down, disabled or draining) and forgets it otherwise.
    /// Called by a ticker and by `/status`, so the window starts no later than the moment
    /// `/status` first shows the backend up.
    pub fn observe_up(&self) {
        let up = self.state() == State::Up;
        let since = self.up_since.load(Ordering::Relaxed);
        if up && since == 0 {
            let start = if self.initial.swap(false, Ordering::Relaxed) {
                NO_RAMP
            } else {
                now_ms()
            };
            self.up_since.store(start, Ordering::Relaxed);
        } else if !up && since != 0 {
            self.up_since.store(0, Ordering::Relaxed);
        }
    }

    /// `now_ms()` when the slow-start clock saw it come up (`NO_RAMP`: at full weight;
    /// `None`: not up, or not seen up yet).
    pub fn up_since_ms(&self) -> Option<u64> {
        match self.up_since.load(Ordering::Relaxed) {
            0 => None,
            t => Some(t),
        }
    }

    /// `now_ms()` when draining began, if draining.
    pub fn drain_started_ms(&self) -> Option<u64> {
        match self.drain_started.load(Ordering::Relaxed) {
            0 => None,
            t => Some(t),
        }
    }

    fn refresh_drain(&self) {
        if self.admin_state() == AdminState::Drain || self.is_vanished() {
            let _ = self.drain_started.compare_exchange(
                0,
                now_ms(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        } else {
            self.drain_started.store(0, Ordering::Relaxed);
        }
    }

    /// Admin API: override the file's state (`None` = follow the file again). The override
    /// lasts until the file changes this backend's `state`.
    pub fn set_admin(&self, state: Option<AdminState>) {
        self.admin_file_state
            .store(self.file_state.load(Ordering::Relaxed), Ordering::Relaxed);
        self.admin.store(admin_code(state), Ordering::Relaxed);
        self.refresh_drain();
    }

    fn set_file_state(&self, s: AdminState) {
        let code = admin_code(Some(s));
        self.file_state.store(code, Ordering::Relaxed);
        if self.admin.load(Ordering::Relaxed) != 0
            && self.admin_file_state.load(Ordering::Relaxed) != code
        {
            // The operator edited this backend's state in the file: the file wins now.
            self.admin.store(0, Ordering::Relaxed);
        }
        self.refresh_drain();
    }

    /// Health checker: a verdict after rise/fall.
    pub fn set_active_verdict(&self, healthy: bool) {
        self.active
            .store(if healthy { HEALTHY } else { UNHEALTHY }, Ordering::Relaxed);
    }

    fn set_active_checks(&self, on: bool) {
        let was = self.checked.swap(on, Ordering::Relaxed);
        if was && !on {
            // Checks turned off: nothing says it is down any more.
            self.active.store(HEALTHY, Ordering::Relaxed);
        }
    }

    /// Passive health: a connect error or connect timeout. After `max_fails` in a row the
    /// backend is down for `fail_timeout`, then tried again. Returns true when this failure
    /// marked it down.
    pub fn note_connect_failure(&self, max_fails: u32, fail_timeout: Duration) -> bool {
        if max_fails == 0 {
            return false;
        }
        let n = self.passive_fails.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= max_fails {
            self.passive_fails.store(0, Ordering::Relaxed);
            self.passive_down_until.store(
                now_ms() + fail_timeout.as_millis() as u64,
                Ordering::Relaxed,
            );
            return true;
        }
        false
    }

    pub fn note_connect_success(&self) {
        if self.passive_fails.load(Ordering::Relaxed) != 0 {
            self.passive_fails.store(0, Ordering::Relaxed);
        }
    }

    pub fn note_pinned_while_draining(&self) {
        self.pinned_while_draining.fetch_add(1, Ordering::Relaxed);
        self.last_pinned_at_ms.store(unix_ms(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn down_wins_over_draining_and_disabled_over_everything() {
        let s = BackendShared::new(true);
        assert_eq!(
            s.state(),
            State::Down,
            "unchecked backends take nothing new"
        );
        s.set_active_verdict(true);
        s.set_admin(Some(AdminState::Drain));
        assert_eq!(s.state(), State::Draining);
        s.set_active_verdict(false);
        assert_eq!(s.state(), State::Down);
        s.set_admin(Some(AdminState::Disabled));
        assert_eq!(s.state(), State::Disabled);
    }

    #[test]
    fn passive_failures_mark_down_for_fail_timeout() {
        let s = BackendShared::new(false);
        assert!(!s.note_connect_failure(2, Duration::from_millis(50)));
        s.note_connect_success();
        assert!(!s.note_connect_failure(2, Duration::from_millis(50)));
        assert!(s.note_connect_failure(2, Duration::from_millis(50)));
        assert_eq!(s.state(), State::Down);
        #[allow(clippy::disallowed_methods)] // a plain #[test]: no runtime to stall
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(s.state(), State::Up, "tried again after fail_timeout");
    }
}
