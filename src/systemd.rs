//! systemd service notifications (`Type=notify`): READY, RELOADING, STOPPING and MAINPID
//! through the `sd-notify` crate; every call is a no-op when `NOTIFY_SOCKET` is unset.

use sd_notify::NotifyState;

/// Every listener is bound and accepting (and, after an upgrade, this process is the one).
pub fn ready() {
    send(&[NotifyState::Ready], "READY");
}

/// A reload starts. systemd 253+ requires `MONOTONIC_USEC` with it (to match the reload to
/// the `systemctl reload` that asked for it); [`ready`] must follow, also when the reload is
/// rejected.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now], "RELOADING"),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read CLOCK_MONOTONIC; RELOADING=1 sent without MONOTONIC_USEC");
            send(&[NotifyState::Reloading], "RELOADING");
        }
    }
}

/// Shutting down (not sent by an instance that handed its listeners to an upgrade).
pub fn stopping() {
    send(&[NotifyState::Stopping], "STOPPING");
}

/// After an upgrade: this process, not the one systemd started, is now the service's main
/// process; [`ready`] follows.
pub fn main_pid() {
    send(&[NotifyState::MainPid(std::process::id())], "MAINPID");
}

fn send(states: &[NotifyState], what: &str) {
    // A lost notification must not stop the proxy: systemd times out and says why.
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot send {what} to systemd (NOTIFY_SOCKET)");
    }
}
