//! tether: a sticky-session HTTP reverse proxy.
//!
//! How the pieces fit:
//! - [`config`] reads the TOML file into validated types (pure);
//! - [`balancer`] maps keys to backends with maglev or ketama, plus bounded loads (pure);
//! - [`affinity`] decides where a request goes: its pin (cookie) or its key (IP, header);
//! - [`runtime`] builds the immutable [`runtime::Snapshot`] that each request loads once, and
//!   [`state`] keeps what must outlive a snapshot (counters, connections, drain start);
//! - [`proxy`] handles one request (routing, affinity, the backend exchange over [`h1`]);
//!   [`server`] accepts connections, serves HTTP/1.1 itself and HTTP/2 through hyper, and
//!   shuts down gracefully;
//! - [`reload`] re-reads the file (watched, SIGHUP, admin API) and swaps a new snapshot in;
//! - [`app`] holds the current snapshot and the process-wide services: [`health`] checks,
//!   the [`access_log`], and the counters that [`metrics`] and the [`admin`] API expose;
//! - [`queue`] enforces per-backend `max_conns` with a FIFO wait queue;
//! - [`explain`] answers "where would this request go, and why?"; [`demo`] runs a showcase.

// The lint policy is in Cargo.toml's [lints] (and clippy.toml). Cargo can only deny
// unsafe code, because the binary's allocator needs it; the library forbids it outright,
// so no module here can opt back in.
#![forbid(unsafe_code)]

pub mod access_log;
pub mod admin;
pub mod affinity;
pub mod app;
pub mod balancer;
pub mod config;
pub mod ctl;
pub mod dashboard;
pub mod demo;
pub mod discovery;
pub mod explain;
// Only for the fuzzers (cargo-fuzz builds with `--cfg fuzzing`) and for this crate's own
// tests, which replay the seed corpus through the same entry points: not part of the API.
#[cfg(any(fuzzing, test))]
#[doc(hidden)]
pub mod fuzz_targets;
pub mod h1;
pub mod handover;
pub mod health;
pub mod history;
pub mod metrics;
pub mod proxy;
pub mod queue;
pub mod reload;
pub mod runtime;
pub mod server;
pub mod sessions;
pub mod state;
pub mod systemd;
pub mod tls;
