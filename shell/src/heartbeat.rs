//! A worker's proof of progress: the protocol worker beats once per loop
//! turn (a message handled, a timer fired, or an idle wait timed out), and
//! the systemd watchdog is fed only while the beats are recent.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// The last beat, in milliseconds of a monotonic clock (a wall-clock step
/// must neither fake progress nor fake a stall). Clones share the beat.
/// Workers sharing a process each beat their own, and the age is the
/// oldest one's: one stuck worker is a stall however busy the others are.
#[derive(Clone, Debug)]
pub struct Heartbeat {
    beats: Arc<[AtomicU64]>,
    own: usize,
}

impl Default for Heartbeat {
    /// Beaten now: a worker is progressing when it starts.
    fn default() -> Self {
        Heartbeat::shared(1).swap_remove(0)
    }
}

impl Heartbeat {
    /// One heartbeat for each of `workers` workers (at least one), all
    /// beaten now; each one's age is the oldest beat of them all.
    pub fn shared(workers: usize) -> Vec<Heartbeat> {
        let now = monotonic_ms();
        let beats: Arc<[AtomicU64]> = (0..workers.max(1)).map(|_| AtomicU64::new(now)).collect();
        (0..beats.len())
            .map(|own| Heartbeat {
                beats: Arc::clone(&beats),
                own,
            })
            .collect()
    }

    /// The worker turned its loop.
    pub fn beat(&self) {
        if let Some(last) = self.beats.get(self.own) {
            last.store(monotonic_ms(), Ordering::Relaxed);
        }
    }

    /// Milliseconds since the last beat (of the worker that beat least
    /// recently).
    pub fn age_ms(&self) -> u64 {
        let oldest = self
            .beats
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .min()
            .unwrap_or(0);
        monotonic_ms().saturating_sub(oldest)
    }
}

/// Milliseconds since the first call in this process (monotonic).
pub fn monotonic_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Whether a worker whose last beat is `age` old counts as stalled under a
/// watchdog of `period` (`WatchdogSec`). An idle worker turns its loop at
/// least every second, so only one stuck in a single turn gets near this.
/// A whole period, not less: one turn may be a CNN frame's first layer on
/// a slow A, seconds long. With pings every half period, systemd restarts
/// a stalled worker within two periods.
pub fn stalled(age: Duration, period: Duration) -> bool {
    age >= period
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_turn_of_a_whole_period_is_a_stall() {
        let period = Duration::from_secs(30);
        for (age_ms, stall) in [
            (0, false),
            (1_000, false),
            (29_999, false),
            (30_000, true),
            (60_000, true),
            (u64::MAX, true),
        ] {
            assert_eq!(
                stalled(Duration::from_millis(age_ms), period),
                stall,
                "{age_ms} ms"
            );
        }
        // A zero period (no watchdog configured) never pings.
        assert!(stalled(Duration::ZERO, Duration::ZERO));
        let beat = Heartbeat::default();
        let copy = beat.clone();
        copy.beat();
        assert!(beat.age_ms() < 1_000);
        let workers = Heartbeat::shared(2);
        assert_eq!(workers.len(), 2);
        assert!(workers[0].age_ms() < 1_000);
    }
}
