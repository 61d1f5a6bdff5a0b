//! Frame counters that never repeat, across crashes.
//!
//! A repeated counter under one session repeats the masks and leaks the
//! difference of two frames, so counters are handed out only from a block
//! whose end (the high-water mark) has been made durable first. After a
//! crash the device resumes at the persisted mark, skipping whatever was
//! left of the block: some counters go unused, none is used twice.

use crate::error::{ProtocolError, Result};
use serde::{Deserialize, Serialize};

/// The device's frame counters, handed out from blocks reserved on disk
/// first, so that a crash at any moment never lets a counter be used twice
/// under one seed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterReservation {
    next: u64,
    /// Counters below this were durably reserved.
    reserved_until: u64,
    block: u64,
}

impl CounterReservation {
    /// Resumes from the last persisted high-water mark (0 on first start).
    pub fn recover(persisted_mark: u64, block: u64) -> CounterReservation {
        CounterReservation {
            next: persisted_mark,
            reserved_until: persisted_mark,
            block: block.max(1),
        }
    }

    /// The next counter, or [`ProtocolError::ReservationNeeded`] with the
    /// mark to persist (and then [`CounterReservation::confirm`]) first.
    pub fn take(&mut self) -> Result<u64> {
        if self.next < self.reserved_until {
            let t = self.next;
            self.next += 1;
            return Ok(t);
        }
        let mark = self
            .next
            .checked_add(self.block)
            .ok_or(ProtocolError::CountersExhausted)?;
        Err(ProtocolError::ReservationNeeded { mark })
    }

    /// Records that `mark` is durable; counters below it may now be used.
    pub fn confirm(&mut self, mark: u64) {
        self.reserved_until = self.reserved_until.max(mark);
    }

    /// The counter the next call to [`CounterReservation::take`] returns.
    pub fn peek(&self) -> u64 {
        self.next
    }

    /// The durable high-water mark.
    pub fn mark(&self) -> u64 {
        self.reserved_until
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// A store that can lose everything not yet persisted, at any moment.
    struct Disk {
        mark: u64,
    }

    fn take(counter: &mut CounterReservation, disk: &mut Disk) -> u64 {
        loop {
            match counter.take() {
                Ok(t) => return t,
                Err(ProtocolError::ReservationNeeded { mark }) => {
                    disk.mark = mark;
                    counter.confirm(mark);
                }
                Err(e) => panic!("unexpected {e}"),
            }
        }
    }

    #[test]
    fn counters_never_repeat_across_crashes() {
        let mut disk = Disk { mark: 0 };
        let mut used = HashSet::new();
        let mut counter = CounterReservation::recover(disk.mark, 8);
        for step in 0..500u64 {
            let t = take(&mut counter, &mut disk);
            assert!(used.insert(t), "counter {t} reused at step {step}");
            // Crash every few frames, including right after a reservation
            // was persisted but before any counter of it was used.
            if step % 7 == 3 || step % 11 == 0 {
                counter = CounterReservation::recover(disk.mark, 8);
            }
        }
        assert!(disk.mark >= *used.iter().max().expect("used some"));
    }

    #[test]
    fn a_crash_between_reserving_and_persisting_is_safe() {
        let mut counter = CounterReservation::recover(16, 8);
        let mark = match counter.take() {
            Err(ProtocolError::ReservationNeeded { mark }) => mark,
            other => panic!("expected a reservation request, got {other:?}"),
        };
        assert_eq!(mark, 24);
        // The process dies before persisting: the disk still says 16, and
        // nothing was handed out, so resuming at 16 reuses nothing.
        let mut resumed = CounterReservation::recover(16, 8);
        assert!(resumed.take().is_err());
        resumed.confirm(24);
        assert_eq!(resumed.take().expect("reserved"), 16);
    }
}
