//! The edge device's side: session set-up (its only public-key work),
//! masking frames, and unmasking results.

use crate::codec::{pack_ints, unpack_ints};
use crate::error::{ProtocolError, Result};
use crate::messages::{Body, Envelope, Frame, Outgoing, Peer, SessionInit, check_device_name};
use crate::params::{Params, output_bits};
use crate::prf::{MaskKeys, Seed, SessionId, expand_derived};
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
    pub device: String,
    pub params: Params,
    pub topology: Arc<Topology>,
    pub server_a: PublicKey,
    pub server_b: PublicKey,
}

/// The secrets of one session. The device keeps them (persisted with mode
/// 0600 by its shell) until every result of the session has arrived.
#[derive(Clone, Serialize, Deserialize)]
pub struct DeviceSession {
    pub sid: SessionId,
    k_a: Seed,
    k_b: Seed,
    pub first_counter: u64,
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
    pub sid: SessionId,
    pub t: u64,
    /// The model outputs at scale `2^output_scale_bits`.
    pub values: Vec<I256>,
}

pub struct Device {
    cfg: DeviceConfig,
    sessions: BTreeMap<SessionId, DeviceSession>,
    current: Option<SessionId>,
}

/// Bits of one masked input value on the wire: `y - 2^(ℓ+σ)` lies strictly
/// within `±2^(ℓ+σ+1)`.
pub fn frame_width(topology: &Topology, params: &Params) -> u32 {
    topology.input_bound_bits + params.sigma + 2
}

/// Whether a frame has the model's shape (value count, width, byte
/// length), checked before anything is stored.
pub(crate) fn frame_fits(frame: &Frame, topology: &Topology, params: &Params) -> Result<()> {
    let inputs = topology.input_len;
    let width = frame_width(topology, params);
    let bytes = u64::try_from(inputs)
        .unwrap_or(u64::MAX)
        .saturating_mul(u64::from(width))
        .div_ceil(8);
    let fits = usize::try_from(frame.count).is_ok_and(|count| count == inputs)
        && u32::from(frame.width) == width
        && u64::try_from(frame.values.len()).is_ok_and(|len| len == bytes);
    if fits {
        return Ok(());
    }
    Err(ProtocolError::Size(format!(
        "frame has {} values of {} bits in {} bytes; the model takes {inputs} of {width} bits",
        frame.count,
        frame.width,
        frame.values.len()
    )))
}

/// Bits of one masked output on the wire, centred the same way.
pub fn result_width(topology: &Topology, params: &Params) -> u32 {
    output_bits(topology) + params.sigma + 2
}

/// Masks of the frame inputs: uniform below `2^(ℓ+σ)`.
pub(crate) fn input_masks(
    keys: &MaskKeys,
    t: u64,
    topology: &Topology,
    params: &Params,
) -> Vec<u128> {
    let bits = topology.input_bound_bits + params.sigma;
    expand_derived(&keys.input, t, topology.input_len, bits)
}

/// Masks of the outputs: uniform below `2^(κ_out+σ)`.
pub(crate) fn output_masks(
    keys: &MaskKeys,
    t: u64,
    topology: &Topology,
    params: &Params,
) -> Vec<u128> {
    let bits = output_bits(topology) + params.sigma;
    expand_derived(&keys.output, t, topology.output_len, bits)
}

pub(crate) fn centre(bits: u32) -> I256 {
    I256::ONE << bits
}

fn seed_plaintext(seed: &Seed) -> BoxedUint {
    BoxedUint::from_be_slice_vartime(seed.as_bytes())
}

impl Device {
    pub fn new(cfg: DeviceConfig) -> Result<Device> {
        check_device_name(&cfg.device)?;
        cfg.params.check(&cfg.topology)?;
        Ok(Device {
            cfg,
            sessions: BTreeMap::new(),
            current: None,
        })
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

    pub fn config(&self) -> &DeviceConfig {
        &self.cfg
    }

    pub fn sessions(&self) -> impl Iterator<Item = &DeviceSession> {
        self.sessions.values()
    }

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
            let plaintext = key.plaintext_from_residue(&residue)?;
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

    /// Masks an encoded frame `x̂` for counter `t` (which the caller took
    /// from a [`crate::CounterReservation`]): `y = x̂ + a + b`, pseudo-random
    /// expansion and integer additions only.
    pub fn mask_frame(&mut self, x_hat: &[i64], t: u64) -> Result<Outgoing> {
        let topology = &self.cfg.topology;
        let params = &self.cfg.params;
        if x_hat.len() != topology.input_len {
            return Err(ProtocolError::Size(format!(
                "frame has {} features, the model takes {}",
                x_hat.len(),
                topology.input_len
            )));
        }
        let bound = 1i128 << topology.input_bound_bits;
        if let Some(i) = x_hat.iter().position(|v| i128::from(*v).abs() >= bound) {
            return Err(ProtocolError::Range(format!(
                "feature {i} exceeds the model's input bound 2^{}",
                topology.input_bound_bits
            )));
        }
        let rekey = params.rekey_after;
        let session = self
            .current
            .and_then(|sid| self.sessions.get_mut(&sid))
            .ok_or_else(|| ProtocolError::Unexpected("no session: open one first".into()))?;
        if session.frames >= rekey {
            return Err(ProtocolError::RekeyNeeded(rekey));
        }
        if t < session.first_counter {
            return Err(ProtocolError::OutOfOrder(format!(
                "counter {t} precedes the session's first counter {}",
                session.first_counter
            )));
        }
        let (keys_a, keys_b) = session.keys();
        let a = input_masks(keys_a, t, topology, params);
        let b = input_masks(keys_b, t, topology, params);
        let offset = centre(topology.input_bound_bits + params.sigma);
        let values: Vec<I256> = x_hat
            .iter()
            .zip(a.iter().zip(&b))
            .map(|(x, (a, b))| I256::from(*x) + I256::from(*a) + I256::from(*b) - offset)
            .collect();
        let width = frame_width(topology, params);
        let frame = Frame {
            count: values.len() as u32,
            width: width as u16,
            values: pack_ints(&values, width)?,
        };
        session.frames += 1;
        let device = &self.cfg.device;
        Ok(Outgoing::new(
            Peer::ServerA,
            Envelope::new(device, session.sid, t, Body::Frame(frame)),
        ))
    }

    /// Unmasks a result from B: `o = r - mA - mB`, for any session the
    /// device still holds.
    pub fn open_result(&self, envelope: &Envelope) -> Result<Opened> {
        if envelope.device != self.cfg.device {
            return Err(ProtocolError::WrongDevice {
                sid: envelope.sid,
                owner: self.cfg.device.clone(),
                claimed: envelope.device.clone(),
            });
        }
        let Body::Result(result) = &envelope.body else {
            return Err(ProtocolError::Unexpected(format!(
                "{} sent to a device",
                envelope.body.kind()
            )));
        };
        let session = self
            .sessions
            .get(&envelope.sid)
            .ok_or(ProtocolError::UnknownSession(envelope.sid))?;
        let topology = &self.cfg.topology;
        let params = &self.cfg.params;
        let width = result_width(topology, params);
        if result.count as usize != topology.output_len || u32::from(result.width) != width {
            return Err(ProtocolError::Size(format!(
                "result has {} values of {} bits, expected {} of {width}",
                result.count, result.width, topology.output_len
            )));
        }
        let r = unpack_ints(&result.values, topology.output_len, width)?;
        let t = envelope.t;
        let (keys_a, keys_b) = session.keys();
        let m_a = output_masks(keys_a, t, topology, params);
        let m_b = output_masks(keys_b, t, topology, params);
        let offset = centre(output_bits(topology) + params.sigma);
        let values = r
            .iter()
            .zip(m_a.iter().zip(&m_b))
            .map(|(r, (a, b))| *r + offset - I256::from(*a) - I256::from(*b))
            .collect();
        Ok(Opened {
            sid: envelope.sid,
            t,
            values,
        })
    }

    /// The acknowledgement that lets B drop a delivered result.
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
    }
}
