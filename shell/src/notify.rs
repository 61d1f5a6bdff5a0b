//! systemd's notify protocol: READY once a role serves, and the watchdog.
//!
//! Outside systemd (no `NOTIFY_SOCKET`) every call does nothing. The
//! watchdog is pinged from the async runtime: a runtime that stops turning
//! (a deadlock, a blocked executor) gets the unit restarted. The servers'
//! worker threads have no heartbeat of their own yet, so a worker stuck on
//! its own is not caught by it.

use sd_notify::NotifyState;

/// Tells systemd the service is ready (`Type=notify`).
pub fn ready() {
    if let Err(e) = sd_notify::notify(&[NotifyState::Ready]) {
        tracing::debug!(error = %e, "sd_notify READY");
    }
}

/// Tells systemd the service is stopping.
pub fn stopping() {
    let _ = sd_notify::notify(&[NotifyState::Stopping]);
}

/// Pings the watchdog at half its period; does nothing when the unit has
/// no `WatchdogSec`.
pub fn spawn_watchdog() {
    let Some(period) = sd_notify::watchdog_enabled() else {
        return;
    };
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period / 2);
        loop {
            tick.tick().await;
            let _ = sd_notify::notify(&[NotifyState::Watchdog]);
        }
    });
}
