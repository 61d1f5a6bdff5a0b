//! The device's node: the outbox (every frame kept until its result,
//! refusal or expiry), resending on a timer, asking B for queued results
//! (`Sync`) on every connection, the session messages (retained), counter
//! reservation, delivering each result to the application once, and
//! acknowledging it: on the session's next frame (A passes it on to B), or
//! on its own once it has waited `ack_delay` for one.
//!
//! The per-frame path (a capture, the broker's confirmation of its
//! frame, its result) allocates nothing in steady state but the result's
//! values handed to the application: the outbox is one array in counter
//! order ([`outbox`]), each frame's buffer is reused once its frame
//! settles, the settled set is a ring with a hash index ([`settled`]),
//! frames and acknowledgements are published from the node's own buffers
//! ([`DeviceNode::poll_publish`]) and the outbox event names the frame
//! instead of copying it. Its rare paths (refusals, recoveries,
//! reconnections, timers) are kept out of line, so that the code a frame
//! runs stays compact: measured on this machine, most of a frame's time
//! is refetching that code and data after the wait for the servers.

use super::{Input, Millis, Transmit};
use crate::counter::CounterReservation;
use crate::device::{Device, DeviceConfig, DeviceSession};
use crate::error::{ProtocolError, Result};
use crate::messages::{Body, Envelope, RejectCode};
use crate::prf::SessionId;
use crate::topics;
use ethnum::I256;
use outbox::Outbox;
use rand::rngs::ChaCha20Rng;
use rand_core::SeedableRng;
use settled::SettledSet;
use std::collections::{HashMap, VecDeque};

mod outbox;
mod publish;
mod recv;
mod settled;

use publish::Pending;
pub use publish::Publish;

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
    /// Make the frame durable in the outbox (before it is published): its
    /// entry is [`DeviceNode::outbox_entry`] (not copied into the event;
    /// gone if it settled before the shell got to it, then a
    /// [`DeviceEvent::Settle`] follows).
    PersistOutbox {
        /// The frame's session.
        sid: SessionId,
        /// The frame's counter.
        t: u64,
    },
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
    outbox: Outbox,
    settled: SettledSet,
    /// Delivered results not yet acknowledged, with when they arrived,
    /// in (session, counter) order.
    acks_due: Vec<(SessionId, u64, Millis)>,
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
    transmits: VecDeque<Pending>,
    events: VecDeque<DeviceEvent>,
    /// The device's topics, named once.
    topics: DeviceTopics,
    /// The latest result's outputs, unmasked (reused).
    outputs: Vec<i128>,
    /// The lone acknowledgement [`DeviceNode::poll_publish`] lends out.
    ack_buffer: Vec<u8>,
    /// The owned message [`DeviceNode::poll_publish`] lends out.
    lent: Option<Transmit>,
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
        for entry in durable.outbox {
            node.outbox.insert(entry);
        }
        let mut settled = durable.settled;
        settled.sort_by_key(|(_, _, at)| *at);
        for (sid, t, at) in settled {
            node.settled.insert(sid, t, at);
        }
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
        let settled = SettledSet::new(options.settled_max);
        DeviceNode {
            topics,
            outputs: Vec::new(),
            device,
            counter: CounterReservation::recover(0, options.counter_block),
            options,
            rng: ChaCha20Rng::from_seed(seed),
            outbox: Outbox::default(),
            settled,
            acks_due: Vec::with_capacity(crate::wire::MAX_ACKS),
            ack_buffer: Vec::with_capacity(crate::wire::HEADER_MAX),
            lent: None,
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
        self.outbox.entries()
    }

    /// Settled frames remembered.
    pub fn settled_len(&self) -> usize {
        self.settled.len()
    }

    /// A waiting frame.
    pub fn outbox_entry(&self, sid: SessionId, t: u64) -> Option<&OutboxEntry> {
        self.outbox.get(sid, t).map(|s| &s.entry)
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
        let t = match self.counter.take() {
            Ok(t) => t,
            Err(ProtocolError::ReservationNeeded { mark }) => self.reserve(mark)?,
            Err(e) => return Err(e),
        };
        // The session's due acknowledgements ride on its frame; written
        // straight into the frame's buffer, which the outbox then keeps
        // (no envelope is built and encoded again).
        let mut acks = [0u64; crate::wire::MAX_ACKS];
        let mut count = 0;
        if let Some(sid) = self.device.current().map(|s| s.sid) {
            let due = self
                .acks_due
                .iter()
                .filter(|(s, acked, _)| *s == sid && *acked < t);
            for ((_, acked, _), slot) in due.zip(&mut acks) {
                *slot = *acked;
                count += 1;
            }
        }
        let acks = acks.get(..count).unwrap_or_default();
        let mut envelope = self.outbox.buffer();
        let sid = match self.device.write_frame(x_hat, t, acks, &mut envelope) {
            Ok(sid) => sid,
            Err(e) => {
                self.outbox.recycle(envelope);
                return Err(e);
            }
        };
        if !acks.is_empty() {
            self.acks_due
                .retain(|(s, acked, _)| *s != sid || acks.binary_search(acked).is_err());
        }
        self.outbox.insert(OutboxEntry {
            sid,
            t,
            envelope,
            captured: now,
            label,
        });
        self.events.push_back(DeviceEvent::PersistOutbox { sid, t });
        self.send_new(now);
        // Idle time until the result: the next frame's masks now, while
        // the session's keys and the model's layout are in cache (measured:
        // 8 µs of a 25 µs result on Pima went to expanding them after a
        // 40 ms wait; bench/examples/device_cache.rs).
        self.device.prepare(self.counter.peek());
        Ok((sid, t))
    }

    /// Reserves the next block of counters (once per `counter_block`
    /// frames) and takes one.
    #[cold]
    #[inline(never)]
    fn reserve(&mut self, mut mark: u64) -> Result<u64> {
        loop {
            self.events.push_back(DeviceEvent::PersistCounter(mark));
            self.counter.confirm(mark);
            match self.counter.take() {
                Ok(t) => return Ok(t),
                Err(ProtocolError::ReservationNeeded { mark: next }) => mark = next,
                Err(e) => return Err(e),
            }
        }
    }

    /// Draws a new session (two Paillier encryptions: the device's only
    /// public-key work); its secrets are persisted before any frame uses
    /// them.
    #[cold]
    #[inline(never)]
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
            Input::Connected => self.on_connected(now),
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

    #[cold]
    #[inline(never)]
    fn on_connected(&mut self, now: Millis) {
        self.connected = true;
        for slot in self.outbox.slots_mut() {
            slot.sent = None;
        }
        self.inflight = None;
        // The broker may have lost its retained messages.
        self.inits_published = false;
        // Before the Sync, or B sends those results again.
        self.send_acks(|_| true);
        self.sync(now);
        self.send_new(now);
    }

    /// The next thing the shell must make durable or tell the application.
    pub fn poll_event(&mut self) -> Option<DeviceEvent> {
        self.events.pop_front()
    }

    /// When the node next needs [`DeviceNode::handle_timeout`].
    pub fn poll_timeout(&self) -> Option<Millis> {
        let mut due = None::<Millis>;
        let mut note = |at: Millis| due = Some(due.map_or(at, |d| d.min(at)));
        for slot in self.outbox.slots() {
            note(slot.entry.captured.saturating_add(self.options.frame_ttl));
        }
        // Resends and lone acknowledgements wait for a connection.
        if self.connected {
            for slot in self.outbox.slots() {
                if let Some(at) = slot.sent {
                    note(at.saturating_add(self.options.resend_after));
                }
            }
            for (_, _, at) in &self.acks_due {
                note(at.saturating_add(self.options.ack_delay));
            }
        }
        due
    }

    /// Sends the due acknowledgements that `pick` selects (by when their
    /// result arrived) on their own.
    fn send_acks(&mut self, pick: impl Fn(Millis) -> bool) {
        let transmits = &mut self.transmits;
        self.acks_due.retain(|(sid, t, at)| {
            let send = pick(*at);
            if send {
                transmits.push_back(Pending::Ack { sid: *sid, t: *t });
            }
            !send
        });
    }

    /// Runs what is due at `now`: resends, expiries, lone acknowledgements.
    #[inline(never)]
    pub fn handle_timeout(&mut self, now: Millis) {
        let ttl = self.options.frame_ttl;
        let expired: Vec<(SessionId, u64)> = self
            .outbox
            .entries()
            .filter(|e| now >= e.captured.saturating_add(ttl))
            .map(|e| (e.sid, e.t))
            .collect();
        for (sid, t) in expired {
            if let Some(e) = self.settle(now, sid, t, Settled::Expired) {
                self.events.push_back(DeviceEvent::Expired {
                    sid,
                    t,
                    label: e.label,
                });
                self.outbox.recycle(e.envelope);
            }
        }
        self.settled
            .forget_before(now.saturating_sub(self.options.settled_ttl));
        if !self.connected {
            return;
        }
        let ack_delay = self.options.ack_delay;
        self.send_acks(|at| now >= at.saturating_add(ack_delay));
        let resend_after = self.options.resend_after;
        let inflight = self.inflight;
        let mut resent = false;
        // In counter order (the outbox's): MQTT keeps a topic's order, and
        // A refuses a frame that arrives after a later one of its session.
        for slot in self.outbox.slots_mut() {
            if slot
                .sent
                .is_some_and(|at| now >= at.saturating_add(resend_after))
            {
                slot.sent = Some(now);
                resent = true;
                let key = (slot.entry.sid, slot.entry.t);
                self.transmits.push_back(Pending::Frame {
                    sid: key.0,
                    t: key.1,
                    confirm: inflight.filter(|(_, k)| *k == key).map(|(token, _)| token),
                });
            }
        }
        // Its result may be waiting at B already (lost on the way here).
        if resent && now >= self.last_sync.saturating_add(resend_after / 2) {
            self.sync(now);
        }
    }

    fn publish_inits(&mut self) {
        if !self.inits_published {
            self.publish_inits_now();
        }
    }

    #[cold]
    #[inline(never)]
    fn publish_inits_now(&mut self) {
        let Some((to_a, to_b)) = self.inits.clone() else {
            return;
        };
        let device = self.device.config().device.clone();
        // Retained, so that a server that starts later still learns them.
        for (server, bytes) in [('a', to_a), ('b', to_b)] {
            let mut publish = Transmit::new(topics::session(&device, server), bytes);
            publish.retain = true;
            self.transmits.push_back(Pending::Owned(publish));
        }
        self.inits_published = true;
    }

    /// Asks B for every result it still holds for this device.
    #[cold]
    #[inline(never)]
    fn sync(&mut self, now: Millis) {
        let device = &self.device.config().device;
        let sid = self.device.current().map_or(SessionId([0; 16]), |s| s.sid);
        if let Ok(bytes) = Envelope::new(device, sid, 0, Body::Sync).to_device_bytes() {
            let sync = Transmit::new(self.topics.ack.clone(), bytes);
            self.transmits.push_back(Pending::Owned(sync));
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
            .slots_mut()
            .iter_mut()
            .filter(|s| s.sent.is_none())
            // Counter order, not capture time: the device's clock can
            // step back (simulator seed 8320: frame 3 went before frame 2,
            // and A refused 2 as already processed).
            .min_by_key(|s| (s.entry.t, s.entry.captured));
        let Some(slot) = next else {
            return;
        };
        slot.sent = Some(now);
        let (sid, t) = (slot.entry.sid, slot.entry.t);
        let token = self.next_token;
        self.next_token += 1;
        self.inflight = Some((token, (sid, t)));
        self.transmits.push_back(Pending::Frame {
            sid,
            t,
            confirm: Some(token),
        });
    }

    /// Removes a frame from the outbox (returned) and remembers how it
    /// ended.
    fn settle(&mut self, now: Millis, sid: SessionId, t: u64, how: Settled) -> Option<OutboxEntry> {
        let entry = self.outbox.remove(sid, t);
        self.settled.insert(sid, t, now);
        if self.inflight.is_some_and(|(_, key)| key == (sid, t)) {
            // Settled before the broker confirmed this copy (an earlier
            // copy got through): the next frame may go.
            self.inflight = None;
            self.send_new(now);
        }
        self.events.push_back(DeviceEvent::Settle { sid, t, how });
        // A session whose frames have all settled and that is no longer
        // current needs no secrets any more.
        if self.device.current().map(|s| s.sid) != Some(sid) && !self.outbox.holds_session(sid) {
            self.retire_session(sid);
        }
        entry
    }

    #[cold]
    #[inline(never)]
    fn retire_session(&mut self, sid: SessionId) {
        self.device.forget_session(sid);
        self.republished.remove(&sid);
        self.events.push_back(DeviceEvent::PersistSessions(
            self.device.sessions().cloned().collect(),
        ));
    }
}
