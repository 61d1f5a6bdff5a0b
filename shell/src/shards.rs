//! Several protocol workers in one process, each owning the devices
//! hashed to it: which worker a device belongs to, how a broker
//! confirmation finds the worker whose publish it confirms, and the one
//! order in which the workers' acknowledgements reach the broker.
//!
//! A server's node holds per-device state (session quotas, opening rates,
//! parked frames) as well as per-session state, so a device, not a
//! session, is the unit of sharding: every session of one device lives in
//! one worker, and the node's rules hold within it unchanged.

use std::collections::BTreeMap;
use std::sync::Mutex;

use veil_link::{AckToken, LinkHandle};

/// One worker's place among `count` of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    /// This worker, `0 .. count`.
    pub index: usize,
    /// How many workers share the process.
    pub count: usize,
}

impl Shard {
    /// The only worker of a process that runs one.
    pub const ONLY: Shard = Shard { index: 0, count: 1 };

    /// Whether `device` is this worker's (its sessions, frames, stored
    /// state and every message about it).
    pub fn owns(&self, device: &str) -> bool {
        shard_of(device, self.count) == self.index
    }

    /// The process-wide token of this worker's confirmed publish number
    /// `local`: the link's confirmations then name the worker they are for.
    pub fn confirm_token(&self, local: u64) -> u64 {
        let count = self.count.max(1) as u64;
        local
            .saturating_mul(count)
            .saturating_add(self.index as u64)
    }
}

/// The cores this process may run on (its CPU affinity: `taskset`
/// narrows it), the default number of worker threads.
pub fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

/// The worker that owns `device` among `count`: FNV-1a, fixed, so that a
/// worker restoring the store picks exactly the devices the dispatcher
/// sends it.
pub fn shard_of(device: &str, count: usize) -> usize {
    if count <= 1 {
        return 0;
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in device.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    // The remainder is below `count`, a usize.
    usize::try_from(hash % count as u64).unwrap_or(0)
}

/// The worker and its own token for a process-wide confirmation token.
pub(crate) fn split_token(token: u64, count: usize) -> (usize, u64) {
    let count = count.max(1) as u64;
    (usize::try_from(token % count).unwrap_or(0), token / count)
}

/// Acknowledgements handed to the link in the order the messages came:
/// rumqttd refuses a PUBACK out of order and drops the connection, while
/// workers finish their messages in any order. A worker done with message
/// `seq` leaves its token here; every token whose predecessors are all
/// done goes out.
pub(crate) struct AckOrder {
    link: LinkHandle,
    state: Mutex<Pending>,
}

#[derive(Default)]
struct Pending {
    next: u64,
    done: BTreeMap<u64, AckToken>,
}

impl AckOrder {
    pub(crate) fn new(link: LinkHandle) -> AckOrder {
        AckOrder {
            link,
            state: Mutex::new(Pending::default()),
        }
    }

    /// Message `seq` (numbered from 0 in arrival order) is safe.
    pub(crate) fn done(&self, seq: u64, token: AckToken) {
        let mut state = match self.state.lock() {
            Ok(state) => state,
            // A worker panicked holding the lock: the numbers are intact
            // (each step below leaves them consistent).
            Err(poisoned) => poisoned.into_inner(),
        };
        state.done.insert(seq, token);
        loop {
            let next = state.next;
            let Some(token) = state.done.remove(&next) else {
                break;
            };
            self.link.ack(token);
            state.next = next + 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_spread_over_the_workers_and_tokens_find_theirs() {
        let count = 3;
        let mut seen = [0usize; 3];
        for i in 0..300 {
            let device = format!("load-{i}");
            let owner = shard_of(&device, count);
            seen[owner] += 1;
            let owners: Vec<bool> = (0..count)
                .map(|index| Shard { index, count }.owns(&device))
                .collect();
            assert_eq!(owners.iter().filter(|o| **o).count(), 1);
            assert!(owners[owner]);
        }
        assert!(seen.iter().all(|n| *n > 50), "{seen:?}");
        assert_eq!(shard_of("anything", 1), 0);
        for index in 0..count {
            let shard = Shard { index, count };
            for local in [1, 2, 77, u64::MAX / 8] {
                assert_eq!(
                    split_token(shard.confirm_token(local), count),
                    (index, local)
                );
            }
        }
        assert_eq!(Shard::ONLY.confirm_token(5), 5);
    }
}
