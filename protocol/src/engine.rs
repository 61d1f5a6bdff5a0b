//! The three parties in one process, talking through encoded messages:
//! what `veil infer`, the tests and the benchmarks drive. The engine is a
//! lossless in-memory shell around the three nodes ([`crate::node`]):
//! every transmit goes, in order, to the party subscribed to its topic
//! ([`topics::subscriber`]), every confirmed publish is confirmed on the
//! spot, and nothing needs to be durable (persist and forget events are
//! dropped). Every message is encoded and decoded exactly as on the
//! network, and can be recorded.

use crate::backend::{PublicOps, SecretOps};
use crate::device::Device;
use crate::error::{ProtocolError, Result};
use crate::messages::{Envelope, Peer};
use crate::node::{
    AEvent, AOptions, BEvent, BOptions, Bytes, DeviceEvent, DeviceNode, DeviceOptions, Input,
    Millis, Refusal, ServerANode, ServerBNode, SessionLimits, Transmit,
};
use crate::prf::SessionId;
use crate::server_a::ServerA;
use crate::server_b::ServerB;
use crate::topics;
use ethnum::I256;
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// One message as it crossed the (simulated) network.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// The sender.
    pub from: Peer,
    /// The recipient.
    pub to: Peer,
    /// The message's bytes as they travelled.
    pub bytes: Vec<u8>,
    /// The device whose own topic carried the message in the compact
    /// encoding ([`crate::wire`]), if one did.
    pub device_topic: Option<String>,
}

impl Delivery {
    /// Decodes the message in the encoding it travelled in.
    pub fn envelope(&self) -> Result<Envelope> {
        match &self.device_topic {
            Some(device) => Envelope::from_device_bytes(device, &self.bytes),
            None => Envelope::from_bytes(&self.bytes),
        }
    }
}

/// Time each party spent handling messages.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PartyTimes {
    /// The device's share.
    pub device: Duration,
    /// Server A's share.
    pub a: Duration,
    /// Server B's share.
    pub b: Duration,
}

impl PartyTimes {
    fn add(&mut self, peer: Peer, d: Duration) {
        match peer {
            Peer::Device => self.device += d,
            Peer::ServerA => self.a += d,
            Peer::ServerB => self.b += d,
        }
    }
}

/// Traffic and time, split into offline (session set-up, first-layer masks
/// and their precomputation) and online (from the frame to its result).
/// Wall time always; CPU time (all threads of the process) when the engine
/// was given a CPU clock.
#[derive(Clone, Debug, Default)]
pub struct EngineStats {
    /// Bytes per (from, to) link.
    pub bytes: BTreeMap<(PeerKey, PeerKey), u64>,
    /// Messages delivered.
    pub messages: u64,
    /// Wall time of offline work.
    pub offline: PartyTimes,
    /// Wall time of online work.
    pub online: PartyTimes,
    /// CPU time of offline work (zero without a CPU clock).
    pub offline_cpu: PartyTimes,
    /// CPU time of online work (zero without a CPU clock).
    pub online_cpu: PartyTimes,
}

/// A CPU-time clock supplied by the caller (the engine reads no clock of
/// its own beyond wall time).
pub type CpuClock = fn() -> Duration;

/// `Peer` as an ordered map key.
pub type PeerKey = u8;

/// The key of `p` in [`EngineStats::bytes`].
pub fn peer_key(p: Peer) -> PeerKey {
    match p {
        Peer::Device => 0,
        Peer::ServerA => 1,
        Peer::ServerB => 2,
    }
}

impl EngineStats {
    /// Bytes sent from `from` to `to`.
    pub fn link(&self, from: Peer, to: Peer) -> u64 {
        self.bytes
            .get(&(peer_key(from), peer_key(to)))
            .copied()
            .unwrap_or(0)
    }
}

/// The outcome of one private inference.
#[derive(Clone, Debug)]
pub struct Inference {
    /// The session the frame ran under.
    pub sid: SessionId,
    /// Its counter.
    pub t: u64,
    /// The unmasked outputs, at the model's output scale.
    pub outputs: Vec<I256>,
    /// Wall time from masking the frame to unmasking its result.
    pub latency: Duration,
    /// Bytes of the frame message the device sent.
    pub frame_bytes: usize,
    /// Bytes of the result message the device received.
    pub result_bytes: usize,
}

/// Whether a message is offline work (a session message, a mask request
/// or supply), read from its topic and its head.
fn offline_message(topic: &str, payload: &[u8]) -> bool {
    if topics::compact_device(topic).is_some() {
        return false;
    }
    if topics::device_of(topic).is_some() {
        return true;
    }
    matches!(
        Envelope::peek_kind(payload),
        Ok("mask-request" | "mask-supply")
    )
}

/// A result the device delivered: its values and the bytes it came in.
type Delivered = (Vec<I256>, usize);

/// All three parties in one process, wired by an in-memory broker that
/// delivers in order and loses nothing: the same nodes the shells run,
/// for tests, benchmarks and `veil demo`.
pub struct Engine<P: PublicOps, S: SecretOps> {
    device: DeviceNode,
    a: ServerANode<P>,
    b: ServerBNode<S>,
    /// The logical clock: one millisecond per delivered message. A
    /// lossless run never reaches a node's timeout.
    now: Millis,
    record: bool,
    /// Every message delivered, when recording is on.
    pub transcript: Vec<Delivery>,
    /// Traffic and time so far.
    pub stats: EngineStats,
    /// Offline messages sent during a frame, delivered by the next
    /// [`Engine::prepare`].
    deferred: VecDeque<(Peer, Transmit)>,
    cpu: Option<CpuClock>,
    delivered: BTreeMap<(SessionId, u64), Delivered>,
}

/// Wall and CPU time of one piece of work.
struct Timer {
    wall: Instant,
    cpu: Option<(CpuClock, Duration)>,
}

impl Timer {
    fn start(cpu: Option<CpuClock>) -> Timer {
        Timer {
            wall: Instant::now(),
            cpu: cpu.map(|clock| (clock, clock())),
        }
    }

    fn stop(self, stats: &mut EngineStats, peer: Peer, offline: bool) {
        let wall = self.wall.elapsed();
        let cpu = self
            .cpu
            .map(|(clock, start)| clock().saturating_sub(start))
            .unwrap_or_default();
        if offline {
            stats.offline.add(peer, wall);
            stats.offline_cpu.add(peer, cpu);
        } else {
            stats.online.add(peer, wall);
            stats.online_cpu.add(peer, cpu);
        }
    }
}

impl<P: PublicOps, S: SecretOps> Engine<P, S> {
    /// `rng_seed` drives the device's seeds and session ids.
    pub fn new(device: Device, a: ServerA<P>, b: ServerB<S>, rng_seed: [u8; 32]) -> Engine<P, S> {
        // One trusted device in one process: no quota on how fast it
        // opens sessions (the logical clock runs fast), and its
        // acknowledgements ride on its frames only, never on their own.
        let sessions = SessionLimits {
            max_opens_per_minute: 0,
            ..SessionLimits::default()
        };
        let a_options = AOptions {
            sessions: sessions.clone(),
            ..AOptions::default()
        };
        let b_options = BOptions {
            sessions,
            ..BOptions::default()
        };
        let device_options = DeviceOptions {
            counter_block: 1024,
            ack_delay: Millis::MAX,
            ..DeviceOptions::default()
        };
        let mut engine = Engine {
            device: DeviceNode::new(device, device_options, rng_seed),
            a: ServerANode::new(a, a_options, Vec::new()),
            b: ServerBNode::new(b, b_options, Vec::new()),
            now: 0,
            record: false,
            transcript: Vec::new(),
            stats: EngineStats::default(),
            deferred: VecDeque::new(),
            cpu: None,
            delivered: BTreeMap::new(),
        };
        // Connecting costs the device one `Sync` to B, which finds nothing
        // queued: set-up, not counted in the statistics.
        let mut queue = VecDeque::new();
        for peer in [Peer::ServerB, Peer::ServerA, Peer::Device] {
            engine.input(peer, Input::Connected);
            if let Ok(out) = engine.drain(peer) {
                queue.extend(out);
            }
        }
        if let Err(e) = engine.pump(queue, true) {
            tracing::warn!(error = %e, "connecting the in-process parties");
        }
        engine.stats = EngineStats::default();
        engine
    }

    /// The device's state machine.
    pub fn device(&self) -> &Device {
        self.device.device()
    }

    /// The device's state machine, to step outside the protocol's rules.
    pub fn device_mut(&mut self) -> &mut Device {
        self.device.device_mut()
    }

    /// Server A's state machine.
    pub fn a(&self) -> &ServerA<P> {
        self.a.machine()
    }

    /// Server A's state machine, to configure it or step outside the
    /// protocol's rules.
    pub fn a_mut(&mut self) -> &mut ServerA<P> {
        self.a.machine_mut()
    }

    /// Server B's state machine.
    pub fn b(&self) -> &ServerB<S> {
        self.b.machine()
    }

    /// Server B's state machine, to step outside the protocol's rules.
    pub fn b_mut(&mut self) -> &mut ServerB<S> {
        self.b.machine_mut()
    }

    /// Measures CPU time too, with this clock (process CPU time: every
    /// thread, since the servers compute in parallel).
    pub fn set_cpu_clock(&mut self, clock: CpuClock) {
        self.cpu = Some(clock);
    }

    /// Keeps a copy of every message from now on.
    pub fn record_transcript(&mut self, on: bool) {
        self.record = on;
    }

    /// Opens a session when needed and runs every pending precomputation,
    /// so that the next frame finds its first-layer masks ready.
    pub fn prepare(&mut self) -> Result<()> {
        let timer = Timer::start(self.cpu);
        if self.device.prepare_session(self.now)? {
            timer.stop(&mut self.stats, Peer::Device, true);
            let out = self.drain(Peer::Device)?;
            self.deferred.extend(out);
        }
        loop {
            let pending = std::mem::take(&mut self.deferred);
            self.pump(pending, true)?;
            if !self.a.has_work() {
                let timer = Timer::start(self.cpu);
                self.a.machine().backend().precompute();
                timer.stop(&mut self.stats, Peer::ServerA, true);
                let timer = Timer::start(self.cpu);
                self.b.machine().backend().precompute();
                timer.stop(&mut self.stats, Peer::ServerB, true);
                return Ok(());
            }
            self.work(true)?;
        }
    }

    /// Runs one frame `x̂` through the three-party protocol.
    pub fn infer(&mut self, x_hat: &[i64]) -> Result<Inference> {
        self.prepare()?;
        let started = Instant::now();
        let timer = Timer::start(self.cpu);
        let (sid, t) = self.device.capture(self.now, x_hat, None)?;
        timer.stop(&mut self.stats, Peer::Device, false);
        let frame_bytes = self
            .device
            .outbox_entry(sid, t)
            .map_or(0, |e| e.envelope.len());
        let out = self.drain(Peer::Device)?;
        self.pump(out.into(), false)?;
        let latency = started.elapsed();
        // Results of other frames (none are expected) are dropped.
        let delivered = std::mem::take(&mut self.delivered).remove(&(sid, t));
        let (outputs, result_bytes) = delivered.ok_or(ProtocolError::NoResult(t))?;
        // The acknowledgement rides on the next frame; catch up on
        // precomputation off the clock.
        self.prepare()?;
        Ok(Inference {
            sid,
            t,
            outputs,
            latency,
            frame_bytes,
            result_bytes,
        })
    }

    /// One unit of A's precomputation, timed as offline work.
    fn work(&mut self, defer: bool) -> Result<()> {
        let timer = Timer::start(self.cpu);
        self.a.work(self.now);
        timer.stop(&mut self.stats, Peer::ServerA, true);
        let out = self.drain(Peer::ServerA)?;
        if defer {
            self.deferred.extend(out);
            Ok(())
        } else {
            self.pump(out.into(), false)
        }
    }

    /// Delivers messages until none is left. During a frame (`offline`
    /// false) offline messages wait for the next [`Engine::prepare`], and
    /// a frame held up by precomputation gets it.
    fn pump(&mut self, mut queue: VecDeque<(Peer, Transmit)>, offline: bool) -> Result<()> {
        loop {
            let Some((from, transmit)) = queue.pop_front() else {
                if !offline && self.a.has_urgent_work() {
                    self.work(false)?;
                    continue;
                }
                return Ok(());
            };
            // Nobody subscribes (a retained public key): the broker keeps it.
            let Some(to) = topics::subscriber(&transmit.topic) else {
                continue;
            };
            let kind_offline = offline_message(&transmit.topic, &transmit.payload);
            if !offline && kind_offline {
                self.deferred.push_back((from, transmit));
                continue;
            }
            self.note(from, to, &transmit);
            if let Some(token) = transmit.confirm {
                self.input(from, Input::Confirmed(token));
                queue.extend(self.drain(from)?);
            }
            self.now += 1;
            let input = Input::Message {
                topic: transmit.topic,
                payload: Bytes::from(transmit.payload),
            };
            let timer = Timer::start(self.cpu);
            self.input(to, input);
            timer.stop(&mut self.stats, to, offline || kind_offline);
            queue.extend(self.drain(to)?);
            queue.extend(self.timeouts()?);
        }
    }

    fn input(&mut self, peer: Peer, input: Input) {
        match peer {
            Peer::Device => self.device.handle(self.now, input),
            Peer::ServerA => self.a.handle(self.now, input),
            Peer::ServerB => self.b.handle(self.now, input),
        }
    }

    /// Runs the nodes' due timeouts (none in a lossless run).
    fn timeouts(&mut self) -> Result<Vec<(Peer, Transmit)>> {
        let now = self.now;
        let due = |at: Option<Millis>| at.is_some_and(|at| at <= now);
        let mut out = Vec::new();
        if due(self.device.poll_timeout()) {
            self.device.handle_timeout(now);
            out.extend(self.drain(Peer::Device)?);
        }
        if due(self.a.poll_timeout()) {
            self.a.handle_timeout(now);
            out.extend(self.drain(Peer::ServerA)?);
        }
        if due(self.b.poll_timeout()) {
            self.b.handle_timeout(now);
            out.extend(self.drain(Peer::ServerB)?);
        }
        Ok(out)
    }

    /// A node's events (a refusal ends the run; nothing needs to be
    /// durable) and then its transmits.
    fn drain(&mut self, peer: Peer) -> Result<Vec<(Peer, Transmit)>> {
        let mut out = Vec::new();
        match peer {
            Peer::Device => {
                while let Some(event) = self.device.poll_event() {
                    match event {
                        DeviceEvent::Deliver {
                            sid,
                            t,
                            values,
                            bytes,
                            ..
                        } => {
                            self.delivered.insert((sid, t), (values, bytes));
                        }
                        DeviceEvent::Refused {
                            code, detail, t, ..
                        } => {
                            return Err(ProtocolError::Refused {
                                what: "frame",
                                from: format!("device (frame {t})"),
                                code,
                                detail,
                            });
                        }
                        DeviceEvent::Expired { t, .. } => {
                            return Err(ProtocolError::Expired(t));
                        }
                        _ => {}
                    }
                }
                while let Some(t) = self.device.poll_transmit() {
                    out.push((peer, t));
                }
            }
            Peer::ServerA => {
                while let Some(event) = self.a.poll_event() {
                    if let AEvent::Refused(r) = event {
                        return Err(refused(r));
                    }
                }
                while let Some(t) = self.a.poll_transmit() {
                    out.push((peer, t));
                }
            }
            Peer::ServerB => {
                while let Some(event) = self.b.poll_event() {
                    if let BEvent::Refused(r) = event {
                        return Err(refused(r));
                    }
                }
                while let Some(t) = self.b.poll_transmit() {
                    out.push((peer, t));
                }
            }
        }
        Ok(out)
    }

    fn note(&mut self, from: Peer, to: Peer, transmit: &Transmit) {
        let bytes = &transmit.payload;
        *self
            .stats
            .bytes
            .entry((peer_key(from), peer_key(to)))
            .or_default() += bytes.len() as u64;
        self.stats.messages += 1;
        if self.record {
            self.transcript.push(Delivery {
                from,
                to,
                bytes: bytes.clone(),
                device_topic: topics::compact_device(&transmit.topic).map(str::to_string),
            });
        }
    }
}

fn refused(r: Refusal) -> ProtocolError {
    ProtocolError::Refused {
        what: r.what,
        from: r.from,
        code: r.code,
        detail: r.detail,
    }
}
