//! The edge device's side: session set-up (its only public-key work),
//! masking frames, and unmasking results.
//!
//! A frame costs the device two ChaCha20 expansions (its input masks,
//! which [`Device::prepare`] can do ahead of the capture), one addition
//! and one bit-field write per feature; a result two short expansions (its
//! output masks) and one subtraction per output. The per-frame path
//! allocates nothing: [`Device::write_frame`] encodes into the caller's
//! buffer and [`Device::read_result`] decodes into the caller's outputs.

use crate::codec::{FieldReader, FieldWriter, low_mask};
use crate::error::{ProtocolError, Result};
use crate::layout::{FrameLayout, ResultLayout, mask_fields};
use crate::messages::{
    Body, Envelope, Frame, FrameResult, Outgoing, Peer, SessionInit, check_device_name,
};
use crate::params::Params;
use crate::prf::{MaskKeys, Seed, SessionId, expand_sum_into};
use crate::wire::{self, Kind};
use ethnum::I256;
use rand_core::CryptoRng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::OnceLock;
use veil_model::Topology;
use veil_paillier::{BoxedUint, PublicKey};

/// What a device is configured with: its name, the model it uses, and the
/// servers' public keys, pinned.
#[derive(Clone)]
pub struct DeviceConfig {
    /// The device's name, as its topics and the broker's ACL spell it.
    pub device: String,
    /// The protocol parameters both servers run with.
    pub params: Params,
    /// The model's public topology (its fingerprint is pinned).
    pub topology: Arc<Topology>,
    /// Server A's public key, pinned.
    pub server_a: PublicKey,
    /// Server B's public key, pinned.
    pub server_b: PublicKey,
}

/// The secrets of one session. The device keeps them (persisted with mode
/// 0600 by its shell) until every result of the session has arrived.
#[derive(Clone, Serialize, Deserialize)]
pub struct DeviceSession {
    /// The session's id.
    pub sid: SessionId,
    k_a: Seed,
    k_b: Seed,
    /// The counter of its first frame.
    pub first_counter: u64,
    /// How many counters it covers, from `first_counter`.
    pub frames: u64,
    /// Mask keys of kA and kB, derived on first use (not persisted).
    #[serde(skip)]
    keys: OnceLock<(MaskKeys, MaskKeys)>,
}

impl DeviceSession {
    fn keys(&self) -> &(MaskKeys, MaskKeys) {
        self.keys
            .get_or_init(|| (MaskKeys::new(&self.k_a), MaskKeys::new(&self.k_b)))
    }
}

impl std::fmt::Debug for DeviceSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "DeviceSession({}, first {}, {} frames)",
            self.sid, self.first_counter, self.frames
        )
    }
}

/// An unmasked result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opened {
    /// The session the result belongs to.
    pub sid: SessionId,
    /// The frame's counter.
    pub t: u64,
    /// The model outputs at scale `2^output_scale_bits`.
    pub values: Vec<I256>,
}

/// The device's cryptography: sessions (two seeds each, encrypted to A
/// and B), frames masked with both seeds' keystreams, results unmasked.
/// The node ([`crate::node::DeviceNode`]) decides when each happens.
pub struct Device {
    cfg: DeviceConfig,
    layout: FrameLayout,
    result: ResultLayout,
    sessions: BTreeMap<SessionId, DeviceSession>,
    current: Option<SessionId>,
    /// The frame whose masks `sums` and `out_sums` hold, expanded ahead
    /// of its capture by [`Device::prepare`]; they serve one capture.
    prepared: Option<(SessionId, u64)>,
    sums_ready: bool,
    /// `a_i + b_i` per feature.
    sums: Vec<u128>,
    /// `mA_j + mB_j` per output.
    out_sums: Vec<u128>,
    /// The latest frame written and its output masks, moved out of
    /// `out_sums` by its capture so that the next frame's can be expanded
    /// before its result arrives (an older result's are expanded again).
    sent: Option<(SessionId, u64)>,
    sent_out_sums: Vec<u128>,
    /// Keystreams (kA's, kB's) of the expansion at hand.
    scratch: [Vec<u8>; 2],
}

/// Whether a frame's values and counter fit the session and the model,
/// before anything is stored: its byte length is the model's.
pub(crate) fn frame_fits(frame: &Frame, layout: &FrameLayout) -> Result<()> {
    if frame.values.len() == layout.bytes {
        return Ok(());
    }
    Err(ProtocolError::Size {
        what: "bytes of frame values",
        expected: layout.bytes,
        got: frame.values.len(),
    })
}

fn seed_plaintext(seed: &Seed) -> BoxedUint {
    BoxedUint::from_be_slice_vartime(seed.as_bytes())
}

impl Device {
    /// A device with no session yet; refuses a bad name or parameters
    /// that do not fit the topology.
    pub fn new(cfg: DeviceConfig) -> Result<Device> {
        check_device_name(&cfg.device)?;
        cfg.params.check(&cfg.topology)?;
        let layout = FrameLayout::new(&cfg.topology, &cfg.params);
        let result = ResultLayout::new(&cfg.topology, &cfg.params);
        Ok(Device {
            sums: Vec::with_capacity(layout.fields.len()),
            layout,
            result,
            cfg,
            sessions: BTreeMap::new(),
            current: None,
            prepared: None,
            sums_ready: false,
            out_sums: Vec::new(),
            sent: None,
            sent_out_sums: Vec::new(),
            scratch: [Vec::new(), Vec::new()],
        })
    }

    /// How this model's frames travel.
    pub fn frame_layout(&self) -> &FrameLayout {
        &self.layout
    }

    /// How this model's results travel.
    pub fn result_layout(&self) -> &ResultLayout {
        &self.result
    }

    /// Rebuilds a device from persisted sessions.
    pub fn restore(
        cfg: DeviceConfig,
        sessions: Vec<DeviceSession>,
        current: Option<SessionId>,
    ) -> Result<Device> {
        let mut device = Device::new(cfg)?;
        for s in sessions {
            device.sessions.insert(s.sid, s);
        }
        device.current = current.filter(|sid| device.sessions.contains_key(sid));
        Ok(device)
    }

    /// What the device was configured with.
    pub fn config(&self) -> &DeviceConfig {
        &self.cfg
    }

    /// Every session it still keeps (some results outstanding).
    pub fn sessions(&self) -> impl Iterator<Item = &DeviceSession> {
        self.sessions.values()
    }

    /// The session new frames use, if one is open.
    pub fn current(&self) -> Option<&DeviceSession> {
        self.current.and_then(|sid| self.sessions.get(&sid))
    }

    /// Whether a new session must be opened before the next frame.
    pub fn needs_session(&self) -> bool {
        self.current()
            .is_none_or(|s| s.frames >= self.cfg.params.rekey_after)
    }

    /// Opens a session starting at counter `first_counter`: draws kA, kB
    /// and the session id, and encrypts each seed under its server's key.
    /// These two encryptions are the only public-key work the device does.
    pub fn open_session<R: CryptoRng + ?Sized>(
        &mut self,
        first_counter: u64,
        rng: &mut R,
    ) -> Result<[Outgoing; 2]> {
        let sid = SessionId::random(rng);
        let k_a = Seed::random(rng);
        let k_b = Seed::random(rng);
        self.sessions.insert(
            sid,
            DeviceSession {
                sid,
                k_a,
                k_b,
                first_counter,
                frames: 0,
                keys: OnceLock::new(),
            },
        );
        self.current = Some(sid);
        self.session_messages(sid, rng)
    }

    /// The two session messages of a session the device holds, its seeds
    /// encrypted afresh: for a server that lost or never got them.
    pub fn session_messages<R: CryptoRng + ?Sized>(
        &self,
        sid: SessionId,
        rng: &mut R,
    ) -> Result<[Outgoing; 2]> {
        let session = self
            .sessions
            .get(&sid)
            .ok_or(ProtocolError::UnknownSession(sid))?;
        let topology = self.cfg.topology.fingerprint();
        let params = self.cfg.params.fingerprint();
        let mut init = |key: &PublicKey, seed: &Seed| -> Result<Body> {
            let residue = zeroize::Zeroizing::new(seed_plaintext(seed));
            let plaintext = zeroize::Zeroizing::new(key.plaintext_from_residue(&residue)?);
            let ciphertext = key.encrypt(&plaintext, rng)?;
            Ok(Body::SessionInit(SessionInit {
                model: self.cfg.topology.name.clone(),
                topology,
                params,
                server_key: key.fingerprint(),
                seed: ciphertext.to_bytes(),
            }))
        };
        let to_a = init(&self.cfg.server_a, &session.k_a)?;
        let to_b = init(&self.cfg.server_b, &session.k_b)?;
        let device = &self.cfg.device;
        let first_counter = session.first_counter;
        Ok([
            Outgoing::new(
                Peer::ServerA,
                Envelope::new(device, sid, first_counter, to_a),
            ),
            Outgoing::new(
                Peer::ServerB,
                Envelope::new(device, sid, first_counter, to_b),
            ),
        ])
    }

    /// Expands the input masks of counter `t` of the current session ahead
    /// of its capture (idle time: the node does it right after the previous
    /// capture, while the result is on its way),
    /// so that [`Device::write_frame`] only adds and packs.
    pub fn prepare(&mut self, t: u64) {
        let Some(session) = self.current.and_then(|sid| self.sessions.get(&sid)) else {
            return;
        };
        if t < session.first_counter || (self.sums_ready && self.prepared == Some((session.sid, t)))
        {
            return;
        }
        let sums = (&mut self.sums, &mut self.out_sums, &mut self.scratch);
        expand_sums(sums, session.keys(), t, &self.layout, &self.result);
        self.prepared = Some((session.sid, t));
        self.sums_ready = true;
    }

    /// Masks an encoded frame `x̂` for counter `t` (which the caller took
    /// from a [`crate::CounterReservation`]) and writes its message, in the
    /// encoding of the device's frame topic, into `out` (cleared first):
    /// `v_i = (x̂_i - L_i + a_i + b_i) mod 2^(m_i+1)`, pseudo-random
    /// expansion and integer additions only. `acks` are counters of the
    /// current session whose results arrived (B may forget them). Returns
    /// the frame's session. Allocates nothing once `out` has grown to a
    /// frame's size.
    pub fn write_frame(
        &mut self,
        x_hat: &[i64],
        t: u64,
        acks: &[u64],
        out: &mut Vec<u8>,
    ) -> Result<SessionId> {
        let fields = &self.layout.fields;
        if x_hat.len() != fields.len() {
            return Err(ProtocolError::Size {
                what: "features",
                expected: fields.len(),
                got: x_hat.len(),
            });
        }
        let rekey = self.cfg.params.rekey_after;
        let session = self
            .current
            .and_then(|sid| self.sessions.get_mut(&sid))
            .ok_or(ProtocolError::NoSession)?;
        if session.frames >= rekey {
            return Err(ProtocolError::RekeyNeeded(rekey));
        }
        if t < session.first_counter {
            return Err(ProtocolError::BeforeSession {
                counter: t,
                first: session.first_counter,
            });
        }
        let sid = session.sid;
        if !self.sums_ready || self.prepared != Some((sid, t)) {
            let sums = (&mut self.sums, &mut self.out_sums, &mut self.scratch);
            expand_sums(sums, session.keys(), t, &self.layout, &self.result);
            self.prepared = Some((sid, t));
        }
        self.sums_ready = false;
        std::mem::swap(&mut self.out_sums, &mut self.sent_out_sums);
        self.sent = Some((sid, t));
        out.clear();
        // One allocation for a fresh buffer: header, acknowledgements
        // (at most 10 bytes each), values.
        out.reserve(wire::HEADER_MAX + 10 * (acks.len() + 1) + self.layout.bytes);
        wire::write_header(out, Kind::Frame, &sid, t);
        wire::write_acks(out, t, acks)?;
        let mut writer = FieldWriter::new(out);
        for (i, ((x, field), sum)) in x_hat.iter().zip(fields).zip(&self.sums).enumerate() {
            // Two's complement reinterpretation; the range check below
            // refuses every x that wrapped.
            #[allow(clippy::cast_sign_loss)]
            let shifted = x.wrapping_sub(field.offset) as u64;
            if *x < field.offset || shifted > field.range {
                return Err(ProtocolError::Feature {
                    index: i,
                    low: i128::from(field.offset),
                    high: i128::from(field.offset) + i128::from(field.range),
                });
            }
            writer.put(u128::from(shifted).wrapping_add(*sum), field.wire_bits());
        }
        writer.finish();
        session.frames += 1;
        Ok(sid)
    }

    /// [`Device::write_frame`] as an envelope (for the in-process engine,
    /// the node and the tests).
    pub fn mask_frame(&mut self, x_hat: &[i64], t: u64, acks: &[u64]) -> Result<Outgoing> {
        let mut bytes = Vec::new();
        self.write_frame(x_hat, t, acks, &mut bytes)?;
        let envelope = Envelope::from_device_bytes(&self.cfg.device, &bytes)?;
        Ok(Outgoing::new(Peer::ServerA, envelope))
    }

    /// Decodes a result message (the encoding of the device's result
    /// topic) and unmasks it into `outputs` (cleared first; the model
    /// outputs at scale `2^output_scale_bits`), for any session the device
    /// still holds: `o = r - mA - mB` modulo `2^(κ+1)`, centred. Returns
    /// the result's session and counter. Allocates nothing once `outputs`
    /// has grown to the model's output count.
    pub fn read_result(
        &mut self,
        payload: &[u8],
        outputs: &mut Vec<i128>,
    ) -> Result<(SessionId, u64)> {
        let (kind, sid, t, body) = wire::read_header(payload)?;
        if kind != Kind::Result {
            return Err(ProtocolError::Misdirected {
                kind: kind.name(),
                to: "the result topic",
            });
        }
        let session = self
            .sessions
            .get(&sid)
            .ok_or(ProtocolError::UnknownSession(sid))?;
        if self.sent == Some((sid, t)) {
            unmask(&self.result, &self.sent_out_sums, body.rest(), outputs)?;
        } else if self.sums_ready && self.prepared == Some((sid, t)) {
            unmask(&self.result, &self.out_sums, body.rest(), outputs)?;
        } else {
            let sums = output_sums(session, &self.result, t, &mut self.scratch);
            unmask(&self.result, &sums, body.rest(), outputs)?;
        }
        Ok((sid, t))
    }

    /// Unmasks a result from B, for any session the device still holds.
    pub fn open_result(&self, envelope: &Envelope) -> Result<Opened> {
        if envelope.device != self.cfg.device {
            return Err(ProtocolError::WrongDevice {
                sid: envelope.sid,
                owner: self.cfg.device.clone(),
                claimed: envelope.device.clone(),
            });
        }
        let Body::Result(result) = &envelope.body else {
            return Err(ProtocolError::Misdirected {
                kind: envelope.body.kind(),
                to: "a device",
            });
        };
        let session = self
            .sessions
            .get(&envelope.sid)
            .ok_or(ProtocolError::UnknownSession(envelope.sid))?;
        let mut outputs = Vec::new();
        let sums = output_sums(session, &self.result, envelope.t, &mut Default::default());
        unmask(&self.result, &sums, &result.values, &mut outputs)?;
        Ok(Opened {
            sid: envelope.sid,
            t: envelope.t,
            values: outputs.into_iter().map(I256::from).collect(),
        })
    }

    /// The acknowledgement that lets B drop a delivered result, on its
    /// own (a frame usually carries it instead).
    pub fn ack(&self, sid: SessionId, t: u64) -> Outgoing {
        Outgoing::new(
            Peer::ServerB,
            Envelope::new(&self.cfg.device, sid, t, Body::Ack),
        )
    }

    /// Drops a finished session's secrets.
    pub fn forget_session(&mut self, sid: SessionId) {
        self.sessions.remove(&sid);
        if self.current == Some(sid) {
            self.current = None;
        }
        if self.prepared.is_some_and(|(s, _)| s == sid) {
            self.prepared = None;
            self.sums_ready = false;
        }
        if self.sent.is_some_and(|(s, _)| s == sid) {
            self.sent = None;
        }
    }
}

/// `sums[i] = a_i + b_i` and `out_sums[j] = mA_j + mB_j` for counter
/// `t`: one keystream per seed, read together.
fn expand_sums(
    (sums, out_sums, scratch): (&mut Vec<u128>, &mut Vec<u128>, &mut [Vec<u8>; 2]),
    (keys_a, keys_b): &(MaskKeys, MaskKeys),
    t: u64,
    layout: &FrameLayout,
    result: &ResultLayout,
) {
    sums.clear();
    out_sums.clear();
    let outputs = result.count;
    let [scratch_a, scratch_b] = scratch;
    expand_sum_into(
        (&keys_a.masks, &keys_b.masks),
        t,
        mask_fields(layout, result),
        (scratch_a, scratch_b),
        |i, sum| {
            if i < outputs {
                out_sums.push(sum);
            } else {
                sums.push(sum);
            }
        },
    );
}

/// `mA_j + mB_j` of result `t` of `session` (the prefix of each seed's
/// keystream).
fn output_sums(
    session: &DeviceSession,
    result: &ResultLayout,
    t: u64,
    scratch: &mut [Vec<u8>; 2],
) -> Vec<u128> {
    let (keys_a, keys_b) = session.keys();
    let bits = std::iter::repeat_n(result.mask_bits, result.count);
    let mut sums = Vec::with_capacity(result.count);
    let [scratch_a, scratch_b] = scratch;
    expand_sum_into(
        (&keys_a.masks, &keys_b.masks),
        t,
        bits,
        (scratch_a, scratch_b),
        |_, m| sums.push(m),
    );
    sums
}

/// `o = r - (mA + mB)` modulo `2^(κ+1)`, centred, from the packed values
/// of a result, into `outputs`.
fn unmask(
    layout: &ResultLayout,
    sums: &[u128],
    values: &[u8],
    outputs: &mut Vec<i128>,
) -> Result<()> {
    if values.len() != layout.bytes || sums.len() != layout.count {
        return Err(ProtocolError::Size {
            what: "bytes of result values",
            expected: layout.bytes,
            got: values.len(),
        });
    }
    outputs.clear();
    let mut reader = FieldReader::new(values);
    let width = layout.wire_bits();
    outputs.extend(
        sums.iter()
            .map(|m| layout.centred(reader.get(width).wrapping_sub(*m))),
    );
    Ok(())
}

/// The result message B sends for counter `t`: `r_j = (masked_j + mB_j)
/// mod 2^(κ+1)` with `masked = o + mA`.
pub(crate) fn result_values(masked: &[I256], m_b: &[u128], layout: &ResultLayout) -> FrameResult {
    let mut values = Vec::with_capacity(layout.bytes);
    let mut writer = FieldWriter::new(&mut values);
    let width = layout.wire_bits();
    for (v, m) in masked.iter().zip(m_b) {
        // Two's complement: the low bits of a negative value are its
        // residue.
        let low = v.as_u128();
        writer.put(low.wrapping_add(*m) & low_mask(width), width);
    }
    writer.finish();
    FrameResult { values }
}
