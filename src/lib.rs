//! tether: a sticky-session HTTP reverse proxy.
//!
//! A request's way through the modules (README's Layout section has the long form):
//! - [`server`] accepts connections (PROXY protocol, TLS) and reads requests: HTTP/1.1 with
//!   its own loop over [`h1`], the one HTTP/1.1 implementation; HTTP/2 through hyper;
//! - [`proxy::handle`] loads the [`runtime::Snapshot`] once and runs the phases in order:
//!   [`proxy::route`] → [`proxy::choose`] ([`affinity`] over the pure [`balancer`], with
//!   [`sessions`] for learned and remembered keys) → [`proxy::forward`] (a [`queue`] slot,
//!   then [`proxy::upstream`]) → [`proxy::decorate`] → account (counters, [`access_log`]);
//! - [`state`] keeps what outlives a snapshot (health, overrides, counters, connection
//!   pools), read by [`metrics`], [`admin`], [`history`] and the [`dashboard`];
//! - [`app`] holds the snapshot and the process-wide services: [`health`] checks,
//!   [`discovery`] (DNS); [`reload`] builds the next snapshot from [`config`] (pure);
//!   [`handover`] passes sockets and state to a new process; [`systemd`] reports status;
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
