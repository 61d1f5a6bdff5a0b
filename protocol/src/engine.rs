//! The three parties in one process, talking through encoded messages:
//! what `veil infer`, the tests and the benchmarks drive. Every message is
//! encoded and decoded exactly as on the network, and can be recorded.

use crate::backend::{PublicOps, SecretOps};
use crate::counter::CounterReservation;
use crate::device::Device;
use crate::error::{ProtocolError, Result};
use crate::messages::{Body, Envelope, Outgoing, Peer};
use crate::prf::SessionId;
use crate::server_a::ServerA;
use crate::server_b::ServerB;
use ethnum::I256;
use rand::rngs::ChaCha20Rng;
use rand_core::SeedableRng;
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// One message as it crossed the (simulated) network.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub from: Peer,
    pub to: Peer,
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
    pub device: Duration,
    pub a: Duration,
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
    pub messages: u64,
    pub offline: PartyTimes,
    pub online: PartyTimes,
    pub offline_cpu: PartyTimes,
    pub online_cpu: PartyTimes,
}

/// A CPU-time clock supplied by the caller (the engine reads no clock of
/// its own beyond wall time).
pub type CpuClock = fn() -> Duration;

/// `Peer` as an ordered map key.
pub type PeerKey = u8;

pub fn peer_key(p: Peer) -> PeerKey {
    match p {
        Peer::Device => 0,
        Peer::ServerA => 1,
        Peer::ServerB => 2,
    }
}

impl EngineStats {
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
    pub sid: SessionId,
    pub t: u64,
    pub outputs: Vec<I256>,
    /// Wall time from masking the frame to unmasking its result.
    pub latency: Duration,
    /// Bytes of the frame message the device sent.
    pub frame_bytes: usize,
    /// Bytes of the result message the device received.
    pub result_bytes: usize,
}

fn offline_kind(body: &Body) -> bool {
    matches!(
        body,
        Body::MaskRequest { .. } | Body::MaskSupply { .. } | Body::SessionInit(_)
    )
}

pub struct Engine<P: PublicOps, S: SecretOps> {
    pub device: Device,
    pub a: ServerA<P>,
    pub b: ServerB<S>,
    counter: CounterReservation,
    rng: ChaCha20Rng,
    record: bool,
    pub transcript: Vec<Delivery>,
    pub stats: EngineStats,
    deferred: VecDeque<(Peer, Outgoing)>,
    cpu: Option<CpuClock>,
    /// Results received whose acknowledgement rides on the next frame.
    acks: Vec<(SessionId, u64)>,
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
        Engine {
            device,
            a,
            b,
            counter: CounterReservation::recover(0, 1024),
            rng: ChaCha20Rng::from_seed(rng_seed),
            record: false,
            transcript: Vec::new(),
            stats: EngineStats::default(),
            deferred: VecDeque::new(),
            cpu: None,
            acks: Vec::new(),
        }
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

    fn next_counter(&mut self) -> Result<u64> {
        loop {
            match self.counter.take() {
                Ok(t) => return Ok(t),
                // In one process nothing outlives a crash: the mark needs
                // no disk.
                Err(ProtocolError::ReservationNeeded { mark }) => self.counter.confirm(mark),
                Err(e) => return Err(e),
            }
        }
    }

    /// Opens a session when needed and runs every pending precomputation,
    /// so that the next frame finds its first-layer masks ready.
    pub fn prepare(&mut self) -> Result<()> {
        if self.device.needs_session() {
            let first = self.counter.peek();
            let timer = Timer::start(self.cpu);
            let init = self.device.open_session(first, &mut self.rng)?;
            timer.stop(&mut self.stats, Peer::Device, true);
            for out in init {
                self.deferred.push_back((Peer::Device, out));
            }
        }
        loop {
            while let Some((from, out)) = self.deferred.pop_front() {
                let replies = self.deliver(from, out, true)?;
                self.deferred.extend(replies);
            }
            if !self.a.has_offline_work() {
                let timer = Timer::start(self.cpu);
                self.a.backend().precompute();
                timer.stop(&mut self.stats, Peer::ServerA, true);
                let timer = Timer::start(self.cpu);
                self.b.backend().precompute();
                timer.stop(&mut self.stats, Peer::ServerB, true);
                return Ok(());
            }
            let timer = Timer::start(self.cpu);
            let out = self.a.offline_step()?;
            timer.stop(&mut self.stats, Peer::ServerA, true);
            self.deferred
                .extend(out.into_iter().map(|o| (Peer::ServerA, o)));
        }
    }

    /// Runs one frame `x̂` through the three-party protocol.
    pub fn infer(&mut self, x_hat: &[i64]) -> Result<Inference> {
        self.prepare()?;
        let t = self.next_counter()?;
        let started = Instant::now();
        // Acknowledgements of this session ride on the frame; those of an
        // older one have nowhere to go (B keeps no queue in the engine).
        let current = self.device.current().map(|s| s.sid);
        let acks: Vec<u64> = std::mem::take(&mut self.acks)
            .into_iter()
            .filter(|(sid, _)| Some(*sid) == current)
            .map(|(_, t)| t)
            .take(crate::wire::MAX_ACKS)
            .collect();
        let timer = Timer::start(self.cpu);
        let frame = self.device.mask_frame(x_hat, t, &acks)?;
        timer.stop(&mut self.stats, Peer::Device, false);
        let sid = frame.envelope.sid;
        let frame_bytes = frame.envelope.to_device_bytes()?.len();
        let mut queue = VecDeque::from([(Peer::Device, frame)]);
        let mut result = None;
        while let Some((from, out)) = queue.pop_front() {
            if out.to == Peer::Device {
                let bytes = out.envelope.to_device_bytes()?;
                self.note(from, Peer::Device, &bytes, Some(&out.envelope.device));
                let envelope = Envelope::from_device_bytes(&out.envelope.device, &bytes)?;
                let timer = Timer::start(self.cpu);
                let opened = self.device.open_result(&envelope)?;
                timer.stop(&mut self.stats, Peer::Device, false);
                if opened.sid == sid && opened.t == t {
                    result = Some((opened, bytes.len()));
                }
                continue;
            }
            if offline_kind(&out.envelope.body) {
                self.deferred.push_back((from, out));
                continue;
            }
            queue.extend(self.deliver(from, out, false)?);
        }
        let latency = started.elapsed();
        let (opened, result_bytes) = result
            .ok_or_else(|| ProtocolError::Unexpected(format!("frame {t} produced no result")))?;
        // The acknowledgement rides on the next frame; catch up on
        // precomputation off the clock.
        self.acks.push((sid, t));
        self.prepare()?;
        Ok(Inference {
            sid,
            t,
            outputs: opened.values,
            latency,
            frame_bytes,
            result_bytes,
        })
    }

    fn note(&mut self, from: Peer, to: Peer, bytes: &[u8], device_topic: Option<&str>) {
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
                bytes: bytes.to_vec(),
                device_topic: device_topic.map(str::to_string),
            });
        }
    }

    fn deliver(
        &mut self,
        from: Peer,
        out: Outgoing,
        offline: bool,
    ) -> Result<Vec<(Peer, Outgoing)>> {
        // A device's own topics carry the compact encoding; its session
        // messages and the servers' traffic whole envelopes.
        let compact = out.to == Peer::Device
            || (from == Peer::Device && !matches!(out.envelope.body, Body::SessionInit(_)));
        let bytes = if compact {
            out.envelope.to_device_bytes()?
        } else {
            out.envelope.to_bytes()?
        };
        self.note(
            from,
            out.to,
            &bytes,
            compact.then_some(out.envelope.device.as_str()),
        );
        let envelope = if compact {
            Envelope::from_device_bytes(&out.envelope.device, &bytes)?
        } else {
            Envelope::from_bytes(&bytes)?
        };
        let offline = offline || offline_kind(&envelope.body);
        let timer = Timer::start(self.cpu);
        let replies = match out.to {
            Peer::ServerA => self.a.handle(envelope)?,
            Peer::ServerB => self.b.handle(envelope)?,
            Peer::Device => {
                // Results outside `infer` (none are expected) are dropped.
                Vec::new()
            }
        };
        timer.stop(&mut self.stats, out.to, offline);
        Ok(replies.into_iter().map(|o| (out.to, o)).collect())
    }
}
