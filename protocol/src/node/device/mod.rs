//! The device's node: the outbox (every frame kept until its result,
//! refusal or expiry), resending on a timer, asking B for queued results
//! (`Sync`) on every connection, the session messages (retained), counter
//! reservation, delivering each result to the application once, and
//! acknowledging it: on the session's next frame (A passes it on to B), or
//! on its own once it has waited `ack_delay` for one.

use super::{Input, Millis, Transmit};
use crate::counter::CounterReservation;
use crate::device::{Device, DeviceConfig, DeviceSession};
use crate::error::{ProtocolError, Result};
use crate::messages::{Body, Envelope, RejectCode};
use crate::prf::SessionId;
use crate::topics;
use ethnum::I256;
use rand::rngs::ChaCha20Rng;
use rand_core::SeedableRng;
use std::collections::{BTreeMap, HashMap, VecDeque};

mod recv;

/// How the device's node behaves.
#[derive(Clone, Debug)]
pub struct DeviceOptions {
    /// A frame without a result after this long is sent again (and the
    /// device asks B for its queued results).
    pub resend_after: Millis,
    /// A frame without a result after this long is given up.
    pub frame_ttl: Millis,
    /// Frame counters reserved per write of the counter mark.
    pub counter_block: u64,
    /// Times a frame refused for an unknown session gets its session
    /// messages sent again before the refusal is final.
    pub session_recoveries: u32,
    /// Settled frames remembered (to acknowledge redeliveries without
    /// delivering twice): at most this many, for at most `settled_ttl`.
    pub settled_max: usize,
    /// How long a settled frame is remembered.
    pub settled_ttl: Millis,
    /// How long the acknowledgement of a result waits for a frame of its
    /// session to ride on before it goes on its own (a message of its own
    /// costs the device about 50 bytes with MQTT's).
    pub ack_delay: Millis,
}

impl Default for DeviceOptions {
    fn default() -> DeviceOptions {
        DeviceOptions {
            resend_after: 30_000,
            frame_ttl: 24 * 3600 * 1000,
            counter_block: 64,
            session_recoveries: 3,
            settled_max: 4096,
            settled_ttl: 30 * 24 * 3600 * 1000,
            ack_delay: 10_000,
        }
    }
}

/// A frame waiting for its result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxEntry {
    /// Its session.
    pub sid: SessionId,
    /// Its counter.
    pub t: u64,
    /// The frame message as published (and published again on a resend).
    pub envelope: Vec<u8>,
    /// When the application captured it.
    pub captured: Millis,
    /// The application's label for it, handed back with its result.
    pub label: Option<String>,
}

/// How a frame ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settled {
    /// Its result arrived and was delivered.
    Result,
    /// A server refused it for good.
    Rejected,
    /// No result within the frame's TTL.
    Expired,
}

/// What survives a restart of the device.
#[derive(Clone, Debug, Default)]
pub struct DeviceDurable {
    /// The sessions whose secrets were persisted.
    pub sessions: Vec<DeviceSession>,
    /// The highest counter reserved: counters below it are never reused.
    pub counter_mark: u64,
    /// Frames waiting for their result.
    pub outbox: Vec<OutboxEntry>,
    /// Settled frames and when they settled.
    pub settled: Vec<(SessionId, u64, Millis)>,
}

/// What the device's shell must do besides publishing.
#[derive(Clone, Debug)]
pub enum DeviceEvent {
    /// Make the counter mark durable.
    PersistCounter(u64),
    /// Make the session secrets durable (before any frame uses them).
    PersistSessions(Vec<DeviceSession>),
    /// Make the frame durable in the outbox (before it is published).
    PersistOutbox(OutboxEntry),
    /// Remove the frame from the outbox and remember how it ended.
    Settle {
        /// The frame's session.
        sid: SessionId,
        /// The frame's counter.
        t: u64,
        /// How it ended.
        how: Settled,
    },
    /// Hand a result to the application.
    Deliver {
        /// The frame's session.
        sid: SessionId,
        /// The frame's counter.
        t: u64,
        /// The model's outputs, unmasked, at scale `2^output_scale_bits`.
        values: Vec<I256>,
        /// When the frame was captured.
        captured: Millis,
        /// The application's label for the frame.
        label: Option<String>,
        /// The result message's size.
        bytes: usize,
    },
    /// A server refused the frame for good; the application hears why.
    Refused {
        /// The frame's session.
        sid: SessionId,
        /// The frame's counter.
        t: u64,
        /// The refusal's code.
        code: RejectCode,
        /// The refusal's text, for a person.
        detail: String,
        /// The application's label for the frame.
        label: Option<String>,
    },
    /// No result came within the frame's TTL.
    Expired {
        /// The frame's session.
        sid: SessionId,
        /// The frame's counter.
        t: u64,
        /// The application's label for the frame.
        label: Option<String>,
    },
    /// Something arrived that the device ignores (for logs).
    Ignored {
        /// The session the message named.
        sid: SessionId,
        /// The counter it named.
        t: u64,
        /// Why it was ignored.
        why: String,
    },
}

/// The device with its delivery rules; see the module documentation.
pub struct DeviceNode {
    device: Device,
    options: DeviceOptions,
    counter: CounterReservation,
    rng: ChaCha20Rng,
    outbox: BTreeMap<(SessionId, u64), OutboxEntry>,
    /// When each outbox frame was last sent on this connection.
    sent: HashMap<(SessionId, u64), Millis>,
    settled: BTreeMap<(SessionId, u64), Millis>,
    /// Times each waiting frame was refused for an unknown session and
    /// its session messages were sent again.
    recoveries: HashMap<(SessionId, u64), u32>,
    /// Delivered results not yet acknowledged, with when they arrived.
    acks_due: BTreeMap<(SessionId, u64), Millis>,
    /// The frame publish the broker has not confirmed yet: (token, key).
    inflight: Option<(u64, (SessionId, u64))>,
    next_token: u64,
    /// When each session's messages were last sent again.
    republished: HashMap<SessionId, Millis>,
    /// Session messages of the current session, to publish (retained).
    inits: Option<(Vec<u8>, Vec<u8>)>,
    inits_published: bool,
    connected: bool,
    last_sync: Millis,
    transmits: VecDeque<Transmit>,
    events: VecDeque<DeviceEvent>,
    /// The device's topics, named once.
    topics: DeviceTopics,
    /// The latest result's outputs, unmasked (reused).
    outputs: Vec<i128>,
}

/// The topics of one device.
struct DeviceTopics {
    frame: String,
    result: String,
    ack: String,
}

impl DeviceNode {
    /// A device from its durable state (empty on first start). Every start
    /// opens a fresh session at the first capture: a restored copy of the
    /// state brings back an older counter mark, and under the old
    /// session's seeds the counters above it would be used twice. Sessions
    /// with frames waiting are kept for their results. `seed` drives the
    /// session seeds and ids.
    pub fn restore(
        cfg: DeviceConfig,
        options: DeviceOptions,
        durable: DeviceDurable,
        seed: [u8; 32],
    ) -> Result<DeviceNode> {
        let waiting: Vec<SessionId> = durable.outbox.iter().map(|e| e.sid).collect();
        let sessions = durable
            .sessions
            .into_iter()
            .filter(|s| waiting.contains(&s.sid))
            .collect();
        let device = Device::restore(cfg, sessions, None)?;
        let mut node = DeviceNode::new(device, options, seed);
        node.counter =
            CounterReservation::recover(durable.counter_mark, node.options.counter_block);
        node.outbox = durable
            .outbox
            .into_iter()
            .map(|e| ((e.sid, e.t), e))
            .collect();
        node.settled = durable
            .settled
            .into_iter()
            .map(|(sid, t, at)| ((sid, t), at))
            .collect();
        Ok(node)
    }

    /// A device with no durable state yet (an in-process run, where
    /// nothing outlives the process).
    pub fn new(device: Device, options: DeviceOptions, seed: [u8; 32]) -> DeviceNode {
        let name = &device.config().device;
        let topics = DeviceTopics {
            frame: topics::frame(name),
            result: topics::result(name),
            ack: topics::ack(name),
        };
        DeviceNode {
            topics,
            outputs: Vec::new(),
            device,
            counter: CounterReservation::recover(0, options.counter_block),
            options,
            rng: ChaCha20Rng::from_seed(seed),
            outbox: BTreeMap::new(),
            sent: HashMap::new(),
            settled: BTreeMap::new(),
            recoveries: HashMap::new(),
            acks_due: BTreeMap::new(),
            republished: HashMap::new(),
            inflight: None,
            next_token: 1,
            inits: None,
            inits_published: false,
            connected: false,
            last_sync: 0,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// The device's cryptography and sessions.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The wrapped device, for tests and audits that step outside the
    /// node's rules.
    pub fn device_mut(&mut self) -> &mut Device {
        &mut self.device
    }

    /// Opens the next session now if the device needs one, so that its
    /// messages (and the servers' precomputation for it) go out ahead of
    /// the next capture. Whether it opened one.
    pub fn prepare_session(&mut self, now: Millis) -> Result<bool> {
        if !self.device.needs_session() {
            return Ok(false);
        }
        self.open_session()?;
        self.send_new(now);
        Ok(true)
    }

    /// Frames waiting for their result.
    pub fn pending(&self) -> usize {
        self.outbox.len()
    }

    /// Frames waiting, in counter order.
    pub fn outbox(&self) -> impl Iterator<Item = &OutboxEntry> {
        self.outbox.values()
    }

    /// Settled frames remembered.
    pub fn settled_len(&self) -> usize {
        self.settled.len()
    }

    /// The captured time of a waiting frame.
    pub fn outbox_entry(&self, sid: SessionId, t: u64) -> Option<&OutboxEntry> {
        self.outbox.get(&(sid, t))
    }

    /// Masks and queues one encoded frame; returns its session and
    /// counter. Never waits for the network.
    pub fn capture(
        &mut self,
        now: Millis,
        x_hat: &[i64],
        label: Option<String>,
    ) -> Result<(SessionId, u64)> {
        if self.device.needs_session() {
            self.open_session()?;
        }
        let t = loop {
            match self.counter.take() {
                Ok(t) => break t,
                Err(ProtocolError::ReservationNeeded { mark }) => {
                    self.events.push_back(DeviceEvent::PersistCounter(mark));
                    self.counter.confirm(mark);
                }
                Err(e) => return Err(e),
            }
        };
        // The session's due acknowledgements ride on its frame; written
        // straight into the frame's buffer, which the outbox then keeps
        // (no envelope is built and encoded again).
        let mut acks = [0u64; crate::wire::MAX_ACKS];
        let mut count = 0;
        if let Some(sid) = self.device.current().map(|s| s.sid) {
            for (((_, acked), _), slot) in self.acks_due.range((sid, 0)..(sid, t)).zip(&mut acks) {
                *slot = *acked;
                count += 1;
            }
        }
        let acks = acks.get(..count).unwrap_or_default();
        let mut envelope = Vec::new();
        let sid = self.device.write_frame(x_hat, t, acks, &mut envelope)?;
        for acked in acks {
            self.acks_due.remove(&(sid, *acked));
        }
        let entry = OutboxEntry {
            sid,
            t,
            envelope,
            captured: now,
            label,
        };
        self.events
            .push_back(DeviceEvent::PersistOutbox(entry.clone()));
        self.outbox.insert((sid, t), entry);
        self.send_new(now);
        // Idle time until the result: the next frame's masks now, while
        // the session's keys and the model's layout are in cache (measured:
        // 8 µs of a 25 µs result on Pima went to expanding them after a
        // 40 ms wait; bench/examples/device_cache.rs).
        self.device.prepare(self.counter.peek());
        Ok((sid, t))
    }

    /// Draws a new session (two Paillier encryptions: the device's only
    /// public-key work); its secrets are persisted before any frame uses
    /// them.
    fn open_session(&mut self) -> Result<()> {
        let first = self.counter.peek();
        let [to_a, to_b] = self.device.open_session(first, &mut self.rng)?;
        let inits = (to_a.envelope.to_bytes()?, to_b.envelope.to_bytes()?);
        self.events.push_back(DeviceEvent::PersistSessions(
            self.device.sessions().cloned().collect(),
        ));
        self.inits = Some(inits);
        self.inits_published = false;
        Ok(())
    }

    /// Takes one input from the shell: a message, a confirmation, or a
    /// change of connection.
    pub fn handle(&mut self, now: Millis, input: Input) {
        match input {
            Input::Connected => {
                self.connected = true;
                self.sent.clear();
                self.inflight = None;
                // The broker may have lost its retained messages.
                self.inits_published = false;
                // Before the Sync, or B sends those results again.
                self.send_acks(|_| true);
                self.sync(now);
                self.send_new(now);
            }
            Input::Disconnected => self.connected = false,
            Input::Confirmed(token) => {
                if self.inflight.is_some_and(|(t, _)| t == token) {
                    self.inflight = None;
                    self.send_new(now);
                }
            }
            Input::Message { topic, payload } => {
                if topic == self.topics.result {
                    self.on_result(now, &payload);
                }
            }
        }
    }

    /// The next message to publish.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next thing the shell must make durable or tell the application.
    pub fn poll_event(&mut self) -> Option<DeviceEvent> {
        self.events.pop_front()
    }

    /// When the node next needs [`DeviceNode::handle_timeout`].
    pub fn poll_timeout(&self) -> Option<Millis> {
        let expiry = self
            .outbox
            .values()
            .map(|e| e.captured.saturating_add(self.options.frame_ttl))
            .min();
        // Resends and lone acknowledgements wait for a connection.
        let due = |since: &mut dyn Iterator<Item = &Millis>, delay: Millis| {
            since
                .map(|at| at.saturating_add(delay))
                .min()
                .filter(|_| self.connected)
        };
        let resend = due(&mut self.sent.values(), self.options.resend_after);
        let acks = due(&mut self.acks_due.values(), self.options.ack_delay);
        expiry.into_iter().chain(resend).chain(acks).min()
    }

    /// Sends the due acknowledgements that `pick` selects (by when their
    /// result arrived) on their own.
    fn send_acks(&mut self, pick: impl Fn(Millis) -> bool) {
        let keys: Vec<(SessionId, u64)> = self
            .acks_due
            .iter()
            .filter(|(_, at)| pick(**at))
            .map(|(k, _)| *k)
            .collect();
        for (sid, t) in keys {
            self.acks_due.remove(&(sid, t));
            self.ack(sid, t);
        }
    }

    /// Runs what is due at `now`: resends, expiries, lone acknowledgements.
    pub fn handle_timeout(&mut self, now: Millis) {
        let ttl = self.options.frame_ttl;
        let expired: Vec<OutboxEntry> = self
            .outbox
            .values()
            .filter(|e| now >= e.captured.saturating_add(ttl))
            .cloned()
            .collect();
        for e in expired {
            self.settle(now, e.sid, e.t, Settled::Expired);
            self.events.push_back(DeviceEvent::Expired {
                sid: e.sid,
                t: e.t,
                label: e.label,
            });
        }
        let cutoff = now.saturating_sub(self.options.settled_ttl);
        self.settled.retain(|_, at| *at >= cutoff);
        if !self.connected {
            return;
        }
        let ack_delay = self.options.ack_delay;
        self.send_acks(|at| now >= at.saturating_add(ack_delay));
        let resend_after = self.options.resend_after;
        let mut stale: Vec<(SessionId, u64)> = self
            .sent
            .iter()
            .filter(|(_, at)| now >= at.saturating_add(resend_after))
            .map(|(k, _)| *k)
            .collect();
        // In counter order: MQTT keeps a topic's order, and A refuses a
        // frame that arrives after a later one of its session.
        stale.sort_by_key(|(sid, t)| (sid.0, *t));
        let resent = !stale.is_empty();
        let topic = &self.topics.frame;
        for key in stale {
            if let Some(entry) = self.outbox.get(&key) {
                self.sent.insert(key, now);
                let mut publish = Transmit::new(topic.clone(), entry.envelope.clone());
                publish.confirm = self
                    .inflight
                    .filter(|(_, k)| *k == key)
                    .map(|(token, _)| token);
                self.transmits.push_back(publish);
            } else {
                self.sent.remove(&key);
            }
        }
        // Its result may be waiting at B already (lost on the way here).
        if resent && now >= self.last_sync.saturating_add(resend_after / 2) {
            self.sync(now);
        }
    }

    fn publish_inits(&mut self) {
        if self.inits_published {
            return;
        }
        let Some((to_a, to_b)) = self.inits.clone() else {
            return;
        };
        let device = self.device.config().device.clone();
        // Retained, so that a server that starts later still learns them.
        for (server, bytes) in [('a', to_a), ('b', to_b)] {
            let mut publish = Transmit::new(topics::session(&device, server), bytes);
            publish.retain = true;
            self.transmits.push_back(publish);
        }
        self.inits_published = true;
    }

    /// Asks B for every result it still holds for this device.
    fn sync(&mut self, now: Millis) {
        let device = &self.device.config().device;
        let sid = self.device.current().map_or(SessionId([0; 16]), |s| s.sid);
        if let Ok(bytes) = Envelope::new(device, sid, 0, Body::Sync).to_device_bytes() {
            self.transmits
                .push_back(Transmit::new(self.topics.ack.clone(), bytes));
        }
        self.last_sync = now;
    }

    /// Publishes every outbox frame not yet sent on this connection.
    fn send_new(&mut self, now: Millis) {
        if !self.connected {
            return;
        }
        self.publish_inits();
        // One frame at a time until the broker has it: A and B take a
        // session's frames in counter order, and a lost publish must not
        // let a later frame overtake it.
        if self.inflight.is_some() {
            return;
        }
        let next = self
            .outbox
            .values()
            .filter(|e| !self.sent.contains_key(&(e.sid, e.t)))
            .min_by_key(|e| (e.captured, e.t))
            .map(|e| ((e.sid, e.t), e.envelope.clone()));
        let Some((key, envelope)) = next else {
            return;
        };
        let token = self.next_token;
        self.next_token += 1;
        self.sent.insert(key, now);
        self.inflight = Some((token, key));
        let mut publish = Transmit::new(self.topics.frame.clone(), envelope);
        publish.confirm = Some(token);
        self.transmits.push_back(publish);
    }

    /// Removes a frame from the outbox (returned) and remembers how it
    /// ended.
    fn settle(&mut self, now: Millis, sid: SessionId, t: u64, how: Settled) -> Option<OutboxEntry> {
        let entry = self.outbox.remove(&(sid, t));
        self.sent.remove(&(sid, t));
        self.recoveries.remove(&(sid, t));
        self.settled.insert((sid, t), now);
        if self.inflight.is_some_and(|(_, key)| key == (sid, t)) {
            // Settled before the broker confirmed this copy (an earlier
            // copy got through): the next frame may go.
            self.inflight = None;
            self.send_new(now);
        }
        if self.settled.len() > self.options.settled_max {
            self.forget_oldest_settled();
        }
        self.events.push_back(DeviceEvent::Settle { sid, t, how });
        // A session whose frames have all settled and that is no longer
        // current needs no secrets any more.
        let current = self.device.current().map(|s| s.sid);
        if current != Some(sid) && !self.outbox.keys().any(|(s, _)| *s == sid) {
            self.device.forget_session(sid);
            self.republished.remove(&sid);
            self.events.push_back(DeviceEvent::PersistSessions(
                self.device.sessions().cloned().collect(),
            ));
        }
        entry
    }

    /// Forgets the oldest eighth of the settled set at once (by when they
    /// settled): one pass over the set per `settled_max / 8` frames
    /// instead of one per frame once it is full.
    fn forget_oldest_settled(&mut self) {
        let keep = self.options.settled_max - self.options.settled_max / 8;
        let excess = self.settled.len().saturating_sub(keep);
        let Some(nth) = excess.checked_sub(1) else {
            return;
        };
        let mut times: Vec<Millis> = self.settled.values().copied().collect();
        // `nth < excess <= times.len()`.
        let (_, cutoff, _) = times.select_nth_unstable(nth);
        let cutoff = *cutoff;
        // Ties at the cutoff: only as many as needed go.
        let mut left = excess;
        self.settled.retain(|_, at| {
            let forget = left > 0 && *at <= cutoff;
            left -= usize::from(forget);
            !forget
        });
    }
}
