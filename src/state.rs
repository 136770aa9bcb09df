//! Long-lived per-backend and per-pool state (health, admin overrides, counters,
//! connections, drain start), keyed by identity and kept across config reloads.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub mod carry;

use parking_lot::Mutex;

use crate::config::AdminState;
use crate::proxy::upstream::error::ErrorKind;
use crate::proxy::upstream::pool::ConnPool;
use crate::queue::BackendQueue;
use crate::sessions::{SessionTable, TableSettings};

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

/// Upper bounds (seconds) of the request duration histogram.
pub const DURATION_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// Per-backend counters, lock-free; rendered by the metrics endpoint.
#[derive(Debug)]
pub struct BackendStats {
    /// Responses by status code 100..=599.
    codes: Box<[AtomicU64]>,
    errors: [AtomicU64; ErrorKind::ALL.len()],
    /// Per-bucket (not cumulative) counts; the last slot is +Inf.
    duration_buckets: [AtomicU64; DURATION_BUCKETS.len() + 1],
    duration_sum_us: AtomicU64,
}

impl Default for BackendStats {
    fn default() -> Self {
        BackendStats {
            codes: (100..600).map(|_| AtomicU64::new(0)).collect(),
            errors: Default::default(),
            duration_buckets: Default::default(),
            duration_sum_us: AtomicU64::new(0),
        }
    }
}

impl BackendStats {
    pub fn count_status(&self, code: u16) {
        if let Some(c) = self.codes.get(usize::from(code).wrapping_sub(100)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// (code, count) for every code seen.
    pub fn statuses(&self) -> impl Iterator<Item = (u16, u64)> + '_ {
        self.codes.iter().enumerate().filter_map(|(i, c)| {
            let n = c.load(Ordering::Relaxed);
            (n > 0).then_some((i as u16 + 100, n))
        })
    }

    pub fn count_error(&self, kind: ErrorKind) {
        self.errors[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn errors(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        ErrorKind::ALL
            .iter()
            .zip(&self.errors)
            .map(|(k, c)| (k.as_str(), c.load(Ordering::Relaxed)))
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = DURATION_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(DURATION_BUCKETS.len());
        self.duration_buckets[i].fetch_add(1, Ordering::Relaxed);
        self.duration_sum_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// (sum in seconds, count, per-bucket counts with upper bounds; the last is +Inf).
    pub fn durations(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut buckets = Vec::with_capacity(DURATION_BUCKETS.len() + 1);
        let mut count = 0;
        for (i, c) in self.duration_buckets.iter().enumerate() {
            let n = c.load(Ordering::Relaxed);
            count += n;
            buckets.push((DURATION_BUCKETS.get(i).copied().unwrap_or(f64::INFINITY), n));
        }
        let sum = self.duration_sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        (sum, count, buckets)
    }
}

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

/// Pool-wide counters used by bounded loads, least-in-flight placement and metrics.
#[derive(Debug, Default)]
pub struct PoolShared {
    pub in_flight: AtomicU64,
    /// Rotating start for least-in-flight ties.
    pub rotor: AtomicUsize,
    /// affinity_total by outcome: hit, new, moved.
    pub affinity: [AtomicU64; 3],
    pub retries: AtomicU64,
    /// Requests answered 503 because no backend could take them.
    pub no_backend: AtomicU64,
}

#[derive(Hash, PartialEq, Eq, Clone)]
struct BackendKey {
    pool: String,
    id: String,
    address: String,
}

/// Session tables by (kind, pool), with the settings they were built from.
type Tables =
    HashMap<(&'static str, String), (TableSettings, Arc<SessionTable>), ahash::RandomState>;

/// All long-lived state. Locked only while a snapshot is built or the admin API looks a
/// backend up, never per request: the snapshot holds `Arc`s to the entries it uses.
#[derive(Default)]
pub struct Registry {
    backends: Mutex<HashMap<BackendKey, Arc<BackendShared>, ahash::RandomState>>,
    pools: Mutex<HashMap<String, Arc<PoolShared>, ahash::RandomState>>,
    /// Session tables by (kind, pool): learned sessions and remembered keys.
    tables: Mutex<Tables>,
    /// Set once the first backends have had their chance to come up (no slow start for
    /// them); backends created before it are `initial`.
    started: AtomicBool,
}

/// A backend as the snapshot builder names it.
pub struct BackendIdentity<'a> {
    pub pool: &'a str,
    pub id: &'a str,
    pub address: &'a str,
    pub file_state: AdminState,
    pub active_checks: bool,
    /// A discovered backend whose record is gone.
    pub vanished: bool,
}

impl Registry {
    /// The shared state of each backend in the new config (existing entries reused, new ones
    /// created), and the state of backends no longer configured dropped.
    pub fn sync(&self, wanted: &[BackendIdentity<'_>]) -> Vec<Arc<BackendShared>> {
        let mut map = self.backends.lock();
        let mut out = Vec::with_capacity(wanted.len());
        let mut keep = std::collections::HashSet::with_capacity(wanted.len());
        for w in wanted {
            let key = BackendKey {
                pool: w.pool.to_string(),
                id: w.id.to_string(),
                address: w.address.to_string(),
            };
            let shared = map
                .entry(key.clone())
                .or_insert_with(|| {
                    let s = BackendShared::new(w.active_checks);
                    s.initial
                        .store(!self.started.load(Ordering::Relaxed), Ordering::Relaxed);
                    Arc::new(s)
                })
                .clone();
            shared.set_file_state(w.file_state);
            shared.set_active_checks(w.active_checks);
            shared.set_vanished(w.vanished);
            keep.insert(key);
            out.push(shared);
        }
        map.retain(|k, _| keep.contains(k));
        out
    }

    /// A pool's session table of `kind` (`learn` or `remember`): kept across reloads while
    /// its settings stay the same (changed settings start a fresh table). Tables no longer
    /// configured are dropped by [`Registry::retain_tables`].
    pub fn session_table(
        &self,
        kind: &'static str,
        pool: &str,
        settings: &TableSettings,
    ) -> Arc<SessionTable> {
        let mut map = self.tables.lock();
        let key = (kind, pool.to_string());
        if let Some((s, t)) = map.get(&key) {
            if s == settings {
                return t.clone();
            }
        }
        let t = Arc::new(SessionTable::new(kind, pool, settings));
        map.insert(key, (settings.clone(), t.clone()));
        t
    }

    /// Drops the session tables not in `wanted` ((kind, pool) pairs).
    pub fn retain_tables(&self, wanted: &[(&str, &str)]) {
        let mut map = self.tables.lock();
        map.retain(|(kind, pool), _| wanted.contains(&(*kind, pool.as_str())));
    }

    /// Startup is over: backends that come up from now on get slow start.
    pub fn end_startup(&self) {
        if self.started.swap(true, Ordering::Relaxed) {
            return;
        }
        let map = self.backends.lock();
        for b in map.values() {
            b.initial.store(false, Ordering::Relaxed);
        }
    }

    pub fn pool(&self, name: &str) -> Arc<PoolShared> {
        let mut map = self.pools.lock();
        map.entry(name.to_string()).or_default().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ident<'a>(id: &'a str, address: &'a str, file_state: AdminState) -> BackendIdentity<'a> {
        BackendIdentity {
            pool: "p",
            id,
            address,
            file_state,
            active_checks: false,
            vanished: false,
        }
    }

    #[test]
    fn state_survives_resync_by_identity_and_is_dropped_when_removed() {
        let r = Registry::default();
        let first = r.sync(&[
            ident("a", "127.0.0.1:1", AdminState::Active),
            ident("b", "127.0.0.1:2", AdminState::Active),
        ]);
        first[0].requests.store(5, Ordering::Relaxed);
        let second = r.sync(&[ident("a", "127.0.0.1:1", AdminState::Active)]);
        assert!(Arc::ptr_eq(&first[0], &second[0]));
        assert_eq!(second[0].requests.load(Ordering::Relaxed), 5);
        // b was removed, so coming back it starts fresh.
        let third = r.sync(&[ident("b", "127.0.0.1:2", AdminState::Active)]);
        assert!(!Arc::ptr_eq(&first[1], &third[0]));
        // Same id at a new address is a different backend.
        let moved = r.sync(&[ident("b", "127.0.0.1:3", AdminState::Active)]);
        assert!(!Arc::ptr_eq(&third[0], &moved[0]));
    }

    #[test]
    fn drain_start_is_kept_while_draining() {
        let r = Registry::default();
        let s = r.sync(&[ident("a", "x:1", AdminState::Drain)]);
        let t0 = s[0].drain_started_ms().expect("draining");
        #[allow(clippy::disallowed_methods)] // a plain #[test]: no runtime to stall
        std::thread::sleep(Duration::from_millis(5));
        let s = r.sync(&[ident("a", "x:1", AdminState::Drain)]);
        assert_eq!(s[0].drain_started_ms(), Some(t0));
        let s = r.sync(&[ident("a", "x:1", AdminState::Active)]);
        assert_eq!(s[0].drain_started_ms(), None);
    }

    #[test]
    fn admin_override_survives_reloads_until_the_file_changes_that_backend() {
        let r = Registry::default();
        let s = r.sync(&[ident("a", "x:1", AdminState::Active)]);
        s[0].set_admin(Some(AdminState::Disabled));
        assert_eq!(s[0].state(), State::Disabled);
        // An unrelated reload keeps the override.
        let s = r.sync(&[ident("a", "x:1", AdminState::Active)]);
        assert_eq!(s[0].state(), State::Disabled);
        // The file now says drain: the file wins.
        let s = r.sync(&[ident("a", "x:1", AdminState::Drain)]);
        assert_eq!(s[0].state(), State::Draining);
    }

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
    fn a_vanished_backend_drains_and_comes_back_to_its_earlier_state() {
        let r = Registry::default();
        let gone = |v| BackendIdentity {
            vanished: v,
            ..ident("a", "x:1", AdminState::Active)
        };
        let s = r.sync(&[gone(false)]);
        assert_eq!(s[0].state(), State::Up);
        let s = r.sync(&[gone(true)]);
        assert_eq!(s[0].state(), State::Draining);
        let t0 = s[0].drain_started_ms().expect("drain clock started");
        #[allow(clippy::disallowed_methods)] // a plain #[test]: no runtime to stall
        std::thread::sleep(Duration::from_millis(3));
        assert_eq!(r.sync(&[gone(true)])[0].drain_started_ms(), Some(t0));
        let s = r.sync(&[gone(false)]);
        assert_eq!(s[0].state(), State::Up);
        assert_eq!(s[0].drain_started_ms(), None);
        // An operator's disable outlives a vanish and a return.
        s[0].set_admin(Some(AdminState::Disabled));
        r.sync(&[gone(true)]);
        let s = r.sync(&[gone(false)]);
        assert_eq!(s[0].state(), State::Disabled);
        // An operator's drain too, with its own start time.
        s[0].set_admin(Some(AdminState::Drain));
        let t1 = s[0].drain_started_ms().unwrap();
        r.sync(&[gone(true)]);
        let s = r.sync(&[gone(false)]);
        assert_eq!(s[0].state(), State::Draining);
        assert_eq!(s[0].drain_started_ms(), Some(t1));
    }

    #[test]
    fn the_slow_start_clock_restarts_on_each_return_and_spares_startup_backends() {
        let r = Registry::default();
        let s = r.sync(&[ident("boot", "x:1", AdminState::Active)]);
        s[0].observe_up();
        assert_eq!(
            s[0].up_since_ms(),
            Some(NO_RAMP),
            "up at startup: no warm-up"
        );
        r.end_startup();
        let s = r.sync(&[
            ident("boot", "x:1", AdminState::Active),
            ident("new", "x:2", AdminState::Active),
        ]);
        s[1].observe_up();
        let first = s[1].up_since_ms().expect("seen up");
        assert_ne!(first, NO_RAMP, "added later: warms up");
        // Disabled: the clock stops; enabled again: it restarts.
        s[1].set_admin(Some(AdminState::Disabled));
        s[1].observe_up();
        assert_eq!(s[1].up_since_ms(), None);
        #[allow(clippy::disallowed_methods)] // a plain #[test]: no runtime to stall
        std::thread::sleep(Duration::from_millis(3));
        s[1].set_admin(None);
        s[1].observe_up();
        assert!(s[1].up_since_ms().unwrap() > first);
        // The startup backend, back from down, warms up too.
        s[0].set_admin(Some(AdminState::Disabled));
        s[0].observe_up();
        s[0].set_admin(None);
        s[0].observe_up();
        assert_ne!(s[0].up_since_ms(), Some(NO_RAMP));
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

    #[test]
    fn status_codes_and_durations_are_counted() {
        let st = BackendStats::default();
        st.count_status(200);
        st.count_status(200);
        st.count_status(503);
        st.count_status(42); // ignored, never panics
        assert_eq!(st.statuses().collect::<Vec<_>>(), vec![(200, 2), (503, 1)]);
        st.observe(Duration::from_millis(3));
        st.observe(Duration::from_secs(60));
        let (_, count, buckets) = st.durations();
        assert_eq!(count, 2);
        assert_eq!(buckets.last().unwrap().1, 1, "+Inf bucket");
    }
}
