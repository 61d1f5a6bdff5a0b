//! The broker as veil relies on it: QoS 1 (at least once, in order per
//! publisher, topic and subscriber unless a fault reorders), retained
//! messages replayed on subscription, persistent sessions for the servers
//! (messages wait while they are away) and clean sessions for devices
//! (messages to an absent device are lost).

use crate::Party;
use std::collections::{BTreeMap, HashMap};
use veil_protocol::node::{Bytes, Millis, Transmit};
use veil_protocol::{Peer, topics};

/// Something on its way to a party.
#[derive(Clone, Debug)]
pub enum Payload {
    Message { topic: String, payload: Bytes },
    Confirmed(u64),
}

#[derive(Clone, Debug)]
pub struct Delivery {
    pub to: Party,
    pub at: Millis,
    pub seq: u64,
    pub what: Payload,
}

/// Network faults, as probabilities in 1/1000 per delivery.
#[derive(Clone, Copy, Debug, Default)]
pub struct NetFaults {
    /// Messages dropped.
    pub drop: u64,
    /// Messages delivered twice.
    pub duplicate: u64,
    /// Messages delivered out of order.
    pub reorder: u64,
    /// Messages delayed.
    pub delay: u64,
}

#[derive(Default)]
pub struct Broker {
    /// Devices in the simulation (for routing result topics).
    pub devices: usize,
    pub pending: Vec<Delivery>,
    retained: BTreeMap<String, Bytes>,
    last: HashMap<(Party, Party, String), Millis>,
    seq: u64,
}

/// Who subscribes to `topic` (the servers' and devices' filters).
pub fn routes(topic: &str, devices: usize) -> Vec<Party> {
    match topics::subscriber(topic) {
        Some(Peer::ServerA) => vec![Party::A],
        Some(Peer::ServerB) => vec![Party::B],
        Some(Peer::Device) => {
            let device = topics::device_of(topic);
            (0..devices)
                .filter(|d| Some(crate::device_name(*d).as_str()) == device)
                .map(Party::Device)
                .collect()
        }
        None => Vec::new(),
    }
}

impl Broker {
    pub fn new(devices: usize) -> Broker {
        Broker {
            devices,
            ..Broker::default()
        }
    }

    fn push(&mut self, to: Party, at: Millis, what: Payload) {
        self.seq += 1;
        self.pending.push(Delivery {
            to,
            at,
            seq: self.seq,
            what,
        });
    }

    /// Publishes from `from`; `reachable(p)` says whether a clean-session
    /// subscriber is connected. Returns 1 when the publish was lost.
    pub fn publish(
        &mut self,
        from: Party,
        t: Transmit,
        now: Millis,
        faults: NetFaults,
        rng: &mut crate::SimRng,
        reachable: &dyn Fn(Party) -> bool,
    ) -> u64 {
        // A publish is lost on its way to the broker (the connection died
        // before the PUBACK, and the client's in-flight queue with it):
        // nobody gets it and the publisher gets no confirmation. Once the
        // broker has it, QoS 1 delivers it.
        if rng.chance(faults.drop) {
            return 1;
        }
        let payload = Bytes::from(t.payload);
        if t.retain {
            if payload.is_empty() {
                self.retained.remove(&t.topic);
            } else {
                self.retained.insert(t.topic.clone(), payload.clone());
            }
        }
        if let Some(token) = t.confirm {
            let at = now + 1 + rng.below(5);
            self.push(from, at, Payload::Confirmed(token));
        }
        for to in routes(&t.topic, self.devices) {
            if !reachable(to) {
                continue;
            }
            let mut at = now + 1 + rng.below(40);
            if rng.chance(faults.delay) {
                at += rng.below(20_000);
            }
            // Reordering stays within what MQTT allows: messages on
            // different topics overtake each other, one publisher's
            // messages on one topic never do.
            if rng.chance(faults.reorder) {
                at += rng.below(2_000);
            }
            let key = (from, to, t.topic.clone());
            let last = self.last.get(&key).copied().unwrap_or(0);
            at = at.max(last);
            self.last.insert(key, at);
            let what = Payload::Message {
                topic: t.topic.clone(),
                payload: payload.clone(),
            };
            if rng.chance(faults.duplicate) {
                let again = at + rng.below(5_000);
                self.push(to, again, what.clone());
            }
            self.push(to, at, what);
        }
        0
    }

    /// A party (re)subscribed: retained messages it subscribes to.
    pub fn subscribed(&mut self, party: Party, now: Millis) {
        let retained: Vec<(String, Bytes)> = self
            .retained
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (topic, payload) in retained {
            if routes(&topic, self.devices).contains(&party) {
                self.push(party, now + 1, Payload::Message { topic, payload });
            }
        }
    }

    /// A clean-session party went away: what was on its way is lost.
    pub fn forget(&mut self, party: Party) {
        self.pending.retain(|d| d.to != party);
    }

    /// The next delivery due by `now` to a party `ready` accepts, in
    /// (time, sequence) order.
    pub fn next_due(&mut self, now: Millis, ready: &dyn Fn(Party) -> bool) -> Option<Delivery> {
        let index = self
            .pending
            .iter()
            .enumerate()
            .filter(|(_, d)| d.at <= now && ready(d.to))
            .min_by_key(|(_, d)| (d.at, d.seq))
            .map(|(i, _)| i)?;
        Some(self.pending.swap_remove(index))
    }

    /// When the next delivery to a ready party is due.
    pub fn next_time(&self, ready: &dyn Fn(Party) -> bool) -> Option<Millis> {
        self.pending
            .iter()
            .filter(|d| ready(d.to))
            .map(|d| d.at)
            .min()
    }
}
