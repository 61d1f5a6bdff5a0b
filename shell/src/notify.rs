//! systemd's notify protocol: READY once a role serves, and the watchdog.
//!
//! Outside systemd (no `NOTIFY_SOCKET`) every call does nothing. A role
//! with a protocol worker feeds the watchdog from that worker's
//! [`Heartbeat`]: a worker stuck in one turn (a deadlock, a lock held
//! forever, a runaway computation) stops the pings and systemd restarts
//! the unit, even though the async runtime that sends them still turns.
//! The broker, whose work is all on the runtime, uses
//! [`spawn_runtime_watchdog`].

use std::time::Duration;

use sd_notify::NotifyState;

use crate::heartbeat::{Heartbeat, stalled};

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

/// Pings the watchdog at half its period while `worker` beats (see
/// [`stalled`]); does nothing when the unit has no `WatchdogSec`.
pub fn spawn_watchdog(worker: Heartbeat) {
    let Some(period) = sd_notify::watchdog_enabled() else {
        return;
    };
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period / 2);
        let mut reported = false;
        loop {
            tick.tick().await;
            let age = Duration::from_millis(worker.age_ms());
            if stalled(age, period) {
                if !reported {
                    tracing::error!(
                        stalled_ms = worker.age_ms(),
                        "the protocol worker makes no progress; withholding the watchdog ping"
                    );
                    reported = true;
                }
                continue;
            }
            reported = false;
            let _ = sd_notify::notify(&[NotifyState::Watchdog]);
        }
    });
}

/// Pings the watchdog at half its period from the async runtime: a
/// runtime that stops turning gets the unit restarted.
pub fn spawn_runtime_watchdog() {
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
