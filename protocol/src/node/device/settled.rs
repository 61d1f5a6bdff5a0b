//! The frames the device settled, remembered so that a redelivered result
//! is acknowledged without being delivered twice: a ring in the order
//! they settled (the oldest forgotten first, one at a time) indexed by a
//! hash set with a multiplicative hash, so that remembering a frame and
//! asking after one each touch a couple of cache lines instead of a
//! 4,096-entry ordered map's path from its root.

use crate::node::Millis;
use crate::prf::SessionId;
use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

/// Room reserved up front, so that the first few thousand frames do not
/// grow (and copy) the ring and the index one doubling at a time.
const RESERVED: usize = 4096;

#[derive(Debug)]
pub(super) struct SettledSet {
    ring: VecDeque<(SessionId, u64, Millis)>,
    index: HashSet<(u128, u64), BuildHasherDefault<KeyHasher>>,
    max: usize,
}

fn key(sid: SessionId, t: u64) -> (u128, u64) {
    (u128::from_le_bytes(sid.0), t)
}

impl SettledSet {
    pub(super) fn new(max: usize) -> SettledSet {
        let room = max.min(RESERVED) + 1;
        SettledSet {
            ring: VecDeque::with_capacity(room),
            index: HashSet::with_capacity_and_hasher(room, BuildHasherDefault::default()),
            max,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.ring.len()
    }

    pub(super) fn contains(&self, sid: SessionId, t: u64) -> bool {
        self.index.contains(&key(sid, t))
    }

    /// Remembers a frame; the oldest goes once more than `max` are held.
    pub(super) fn insert(&mut self, sid: SessionId, t: u64, at: Millis) {
        if !self.index.insert(key(sid, t)) {
            return;
        }
        self.ring.push_back((sid, t, at));
        while self.ring.len() > self.max {
            self.pop_oldest();
        }
    }

    /// Forgets the frames that settled before `cutoff`, oldest first (a
    /// clock that stepped back only keeps some a little longer).
    pub(super) fn forget_before(&mut self, cutoff: Millis) {
        while self.ring.front().is_some_and(|(_, _, at)| *at < cutoff) {
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        if let Some((sid, t, _)) = self.ring.pop_front() {
            self.index.remove(&key(sid, t));
        }
    }
}

/// FxHash's mixing step: the keys are a random session id and a counter
/// the device chose itself (only its own settled frames are inserted), so
/// nobody can pick colliding ones; SipHash's cost buys nothing here.
#[derive(Default)]
pub(super) struct KeyHasher(u64);

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl KeyHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            for (w, b) in word.iter_mut().zip(chunk) {
                *w = *b;
            }
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, word: u64) {
        self.add(word);
    }

    #[allow(clippy::cast_possible_truncation)]
    fn write_u128(&mut self, word: u128) {
        self.add(word as u64);
        self.add((word >> 64) as u64);
    }
}
