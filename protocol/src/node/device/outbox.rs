//! The device's outbox as one flat array in counter order: each waiting
//! frame with when it was last sent and how often its session was
//! recovered, side by side, so that the per-frame path touches one slot
//! instead of an ordered map and two hash maps. Frame buffers of settled
//! frames are kept for the next captures: a frame allocates nothing once a
//! few have gone by.

use super::OutboxEntry;
use crate::node::Millis;
use crate::prf::SessionId;

/// A frame waiting for its result, with its delivery state.
#[derive(Debug)]
pub(super) struct Slot {
    pub(super) entry: OutboxEntry,
    /// When it was last sent on this connection.
    pub(super) sent: Option<Millis>,
    /// Times it was refused for an unknown session (or as processed
    /// already) and recovered from.
    pub(super) recoveries: u32,
}

/// Buffers of settled frames kept for reuse; more than this many are
/// freed (a backlog drained after an outage).
const SPARE_BUFFERS: usize = 4;

#[derive(Debug, Default)]
pub(super) struct Outbox {
    /// Ascending counters (they are unique per device: every session
    /// takes its counters from the one durable reservation).
    slots: Vec<Slot>,
    spare: Vec<Vec<u8>>,
}

impl Outbox {
    pub(super) fn len(&self) -> usize {
        self.slots.len()
    }

    pub(super) fn entries(&self) -> impl Iterator<Item = &OutboxEntry> {
        self.slots.iter().map(|s| &s.entry)
    }

    pub(super) fn slots(&self) -> &[Slot] {
        &self.slots
    }

    pub(super) fn slots_mut(&mut self) -> &mut [Slot] {
        &mut self.slots
    }

    fn position(&self, sid: SessionId, t: u64) -> Option<usize> {
        let from = self.slots.partition_point(|s| s.entry.t < t);
        let rest = self.slots.get(from..)?;
        let at = rest
            .iter()
            .take_while(|s| s.entry.t == t)
            .position(|s| s.entry.sid == sid)?;
        Some(from + at)
    }

    pub(super) fn get(&self, sid: SessionId, t: u64) -> Option<&Slot> {
        self.slots.get(self.position(sid, t)?)
    }

    pub(super) fn get_mut(&mut self, sid: SessionId, t: u64) -> Option<&mut Slot> {
        let at = self.position(sid, t)?;
        self.slots.get_mut(at)
    }

    pub(super) fn contains(&self, sid: SessionId, t: u64) -> bool {
        self.position(sid, t).is_some()
    }

    pub(super) fn holds_session(&self, sid: SessionId) -> bool {
        self.slots.iter().any(|s| s.entry.sid == sid)
    }

    /// Adds a frame (a capture's counter is above every waiting one, so
    /// it goes at the end; a restored outbox may come in any order).
    pub(super) fn insert(&mut self, entry: OutboxEntry) {
        let at = self.slots.partition_point(|s| s.entry.t <= entry.t);
        let slot = Slot {
            entry,
            sent: None,
            recoveries: 0,
        };
        if at == self.slots.len() {
            self.slots.push(slot);
        } else {
            self.slots.insert(at, slot);
        }
    }

    pub(super) fn remove(&mut self, sid: SessionId, t: u64) -> Option<OutboxEntry> {
        let at = self.position(sid, t)?;
        Some(self.slots.remove(at).entry)
    }

    /// A cleared buffer for the next frame.
    pub(super) fn buffer(&mut self) -> Vec<u8> {
        self.spare.pop().unwrap_or_default()
    }

    /// Keeps a settled frame's buffer for a later capture.
    pub(super) fn recycle(&mut self, mut buffer: Vec<u8>) {
        if self.spare.len() < SPARE_BUFFERS {
            buffer.clear();
            self.spare.push(buffer);
        }
    }
}
