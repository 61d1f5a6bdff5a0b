//! The conventional homomorphic-encryption approach that veil is measured
//! against, as sans-IO state machines like veil's own parties.
//!
//! The device owns a Paillier key pair (generated when its session opens:
//! its one-time cost). Per frame it encrypts its fixed-point frame
//! `x̂ = round(x·2^f)` value by value (CRT encryption: the device holds the
//! factorization), server A computes each linear layer homomorphically
//! under the device's key and sends the pre-activations back, packed many
//! per ciphertext; the device decrypts them (CRT), applies the exact
//! activation in veil's integer semantics ([`veil_model::activate`]), and
//! encrypts the activations again (CRT), one ciphertext per value, because
//! A's next linear layer needs each value in its own ciphertext. The
//! device finally decrypts the outputs. Nothing here is private from the
//! device, so it can evaluate every activation exactly.
//!
//! Server A is given every optimization veil's server A has that applies:
//! dot products as signed multi-exponentiations over prepared bases, rows
//! in parallel, biases added as constants, and packing of everything it
//! sends down (the device then decrypts a few ciphertexts instead of one
//! per value, which is the largest saving available to the baseline).

use rand_core::CryptoRng;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use veil_model::{ActivationMode, Plan, SeededRounding, Stage, Topology};
use veil_paillier::{KeySize, PaillierError, PublicKey, SecretKey};
use veil_protocol::{SessionId, codec};

/// Why a conventional-baseline party refused or failed a step.
#[derive(Debug, thiserror::Error)]
pub enum ConvError {
    /// The Paillier engine refused an operation.
    #[error("paillier: {0}")]
    Paillier(#[from] PaillierError),
    /// The model refused an input.
    #[error("model: {0}")]
    Model(#[from] veil_model::ModelError),
    /// A message did not decode.
    #[error("encoding: {0}")]
    Codec(#[from] veil_protocol::ProtocolError),
    /// A session the server does not know.
    #[error("unknown session {0}")]
    UnknownSession(SessionId),
    /// A session claimed by another device.
    #[error("session {sid} belongs to {owner}, not {claimed}")]
    WrongDevice {
        /// The session.
        sid: SessionId,
        /// The device that opened it.
        owner: String,
        /// The device claiming it.
        claimed: String,
    },
    /// A session for another model than the server's.
    #[error("session names model {got:?} (topology {got_fp}), this server serves {expected:?}")]
    WrongModel {
        /// The model named.
        got: String,
        /// Its topology fingerprint, hex.
        got_fp: String,
        /// The server's model.
        expected: String,
    },
    /// A stage that cannot run as asked.
    #[error("stage {stage}: {reason}")]
    Stage {
        /// The stage.
        stage: usize,
        /// Why.
        reason: String,
    },
    /// A message of the wrong size.
    #[error("size: {0}")]
    Size(String),
    /// A message not expected now.
    #[error("unexpected message: {0}")]
    Unexpected(String),
    /// A value outside its range.
    #[error("value does not fit 128 bits: {0}")]
    Range(String),
}

/// The baseline's result type.
pub type Result<T, E = ConvError> = std::result::Result<T, E>;

/// The version of the baseline's messages.
pub const CONV_VERSION: u16 = 1;

/// A baseline message and its routing header.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConvEnvelope {
    /// Message format version.
    pub version: u16,
    /// The device.
    pub device: String,
    /// The session.
    pub sid: SessionId,
    /// The frame counter.
    pub t: u64,
    /// The message.
    pub body: ConvBody,
}

/// The baseline's messages.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConvBody {
    /// Device → A, once per session: the device's public key and the model
    /// it wants.
    Session {
        /// The model asked for.
        model: String,
        /// Its topology fingerprint.
        topology: [u8; 32],
        /// The device's public key, encoded.
        public_key: Vec<u8>,
    },
    /// Device → A: the inputs of linear stage `stage`, one ciphertext per
    /// value (the frame itself for stage 0).
    Inputs {
        /// The linear stage they feed.
        stage: u16,
        /// One ciphertext per value.
        values: Vec<Vec<u8>>,
    },
    /// A → device: the `count` outputs of the linear stages before `stage`
    /// (`stage` = number of stages: the model's outputs), packed at
    /// `value_bits` per slot.
    Linear {
        /// The stage whose outputs these are.
        stage: u16,
        /// How many values are packed.
        count: u32,
        /// Bits per packed slot.
        value_bits: u16,
        /// The packed ciphertexts.
        values: Vec<Vec<u8>>,
    },
}

impl ConvEnvelope {
    fn new(device: &str, sid: SessionId, t: u64, body: ConvBody) -> ConvEnvelope {
        ConvEnvelope {
            version: CONV_VERSION,
            device: device.to_string(),
            sid,
            t,
            body,
        }
    }

    /// The message's wire encoding.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        Ok(codec::encode(self)?)
    }

    /// Decodes with the same size limit and exactness as veil's messages.
    pub fn from_bytes(bytes: &[u8]) -> Result<ConvEnvelope> {
        let envelope: ConvEnvelope = codec::decode(bytes)?;
        if envelope.version != CONV_VERSION {
            return Err(ConvError::Unexpected(format!(
                "message version {} (this build speaks {CONV_VERSION})",
                envelope.version
            )));
        }
        veil_protocol::check_device_name(&envelope.device)?;
        Ok(envelope)
    }
}

fn to_i128(v: veil_protocol::I256, what: &str) -> Result<i128> {
    i128::try_from(v).map_err(|_| ConvError::Range(what.to_string()))
}

/// What a device step produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConvStep {
    /// A message for server A.
    Send(ConvEnvelope),
    /// The frame's outputs, at the model's output scale.
    Done {
        /// The frame counter.
        t: u64,
        /// The outputs.
        outputs: Vec<i128>,
    },
}

struct ConvSession {
    sid: SessionId,
    key: SecretKey,
}

/// The device of the conventional approach.
pub struct ConvDevice {
    device: String,
    topology: Arc<Topology>,
    modes: Vec<ActivationMode>,
    /// Pooling windows per stage, computed once.
    windows: Vec<Option<Vec<Vec<u32>>>>,
    key_size: KeySize,
    session: Option<ConvSession>,
    /// Rounding randomness of each frame in flight.
    frames: HashMap<u64, SeededRounding>,
}

impl ConvDevice {
    /// A device with the model's topology; its key is made when a session opens.
    pub fn new(device: &str, topology: Arc<Topology>, key_size: KeySize) -> Result<ConvDevice> {
        veil_protocol::check_device_name(device)?;
        if !matches!(topology.stages.first(), Some(Stage::Linear(_))) {
            return Err(ConvError::Stage {
                stage: 0,
                reason: "the first stage must be linear".into(),
            });
        }
        let windows = topology
            .stages
            .iter()
            .map(|stage| match stage {
                Stage::Activation(spec) => spec.pool.as_ref().map(|p| p.windows()),
                Stage::Linear(_) => None,
            })
            .collect();
        Ok(ConvDevice {
            device: device.to_string(),
            modes: topology.default_modes(),
            windows,
            topology,
            key_size,
            session: None,
            frames: HashMap::new(),
        })
    }

    /// Generates the device's key pair and the message publishing its
    /// public key: the one-time set-up of the conventional approach.
    pub fn open_session<R: CryptoRng + ?Sized>(&mut self, rng: &mut R) -> Result<ConvEnvelope> {
        let key = SecretKey::generate(rng, self.key_size)?;
        self.install_session(SessionId::random(rng), key)
    }

    /// Uses an existing key pair (for replaying recorded frames).
    pub fn install_session(&mut self, sid: SessionId, key: SecretKey) -> Result<ConvEnvelope> {
        let body = ConvBody::Session {
            model: self.topology.name.clone(),
            topology: self.topology.fingerprint(),
            public_key: key.public_key().to_bytes(),
        };
        self.session = Some(ConvSession { sid, key });
        self.frames.clear();
        Ok(ConvEnvelope::new(&self.device, sid, 0, body))
    }

    /// The device's secret key, once a session is open.
    pub fn secret_key(&self) -> Option<&SecretKey> {
        self.session.as_ref().map(|s| &s.key)
    }

    /// The open session, if any.
    pub fn sid(&self) -> Option<SessionId> {
        self.session.as_ref().map(|s| s.sid)
    }

    fn session(&self) -> Result<&ConvSession> {
        self.session
            .as_ref()
            .ok_or_else(|| ConvError::Unexpected("no session: open one first".into()))
    }

    /// Encrypts frame `x̂` (counter `t`) for server A, one CRT encryption
    /// per feature.
    pub fn start_frame<R: CryptoRng + ?Sized>(
        &mut self,
        x_hat: &[i64],
        t: u64,
        rng: &mut R,
    ) -> Result<ConvEnvelope> {
        let topology = Arc::clone(&self.topology);
        if x_hat.len() != topology.input_len {
            return Err(ConvError::Size(format!(
                "frame has {} features, the model takes {}",
                x_hat.len(),
                topology.input_len
            )));
        }
        let bound = 1i128 << topology.input_bound_bits;
        if let Some(i) = x_hat.iter().position(|v| i128::from(*v).abs() >= bound) {
            return Err(ConvError::Range(format!(
                "feature {i} exceeds the model's input bound 2^{}",
                topology.input_bound_bits
            )));
        }
        let values: Vec<i128> = x_hat.iter().map(|v| i128::from(*v)).collect();
        let mut key = [0u8; 32];
        rng.fill_bytes(&mut key);
        let session = self.session()?;
        let body = encrypt_inputs(&session.key, 0, &values, rng)?;
        let sid = session.sid;
        self.frames.insert(t, SeededRounding { key });
        Ok(ConvEnvelope::new(&self.device, sid, t, body))
    }

    /// Handles A's pre-activations (or outputs) for a frame in flight.
    pub fn on_message<R: CryptoRng + ?Sized>(
        &mut self,
        envelope: &ConvEnvelope,
        rng: &mut R,
    ) -> Result<ConvStep> {
        let session = self.session()?;
        if envelope.device != self.device || envelope.sid != session.sid {
            return Err(ConvError::UnknownSession(envelope.sid));
        }
        let ConvBody::Linear {
            stage,
            count,
            value_bits,
            values,
        } = &envelope.body
        else {
            return Err(ConvError::Unexpected(
                "the device only takes A's results".into(),
            ));
        };
        let t = envelope.t;
        let topology = Arc::clone(&self.topology);
        let stages = &topology.stages;
        let mut s = usize::from(*stage);
        let expected = match stages.get(s) {
            None if s == stages.len() => topology.output_len,
            Some(Stage::Activation(spec)) => spec.input_len,
            _ => {
                return Err(ConvError::Stage {
                    stage: s,
                    reason: "results must precede an activation or end the model".into(),
                });
            }
        };
        if *count as usize != expected {
            return Err(ConvError::Size(format!(
                "{count} values for stage {s}, expected {expected}"
            )));
        }
        let rounding = self
            .frames
            .get(&t)
            .cloned()
            .ok_or_else(|| ConvError::Unexpected(format!("frame {t} is not in flight")))?;
        let key = &session.key;
        let public = key.public_key();
        let layout = public.pack_layout(u32::from(*value_bits))?;
        if values.len() != layout.ciphertexts_for(expected) {
            return Err(ConvError::Size(format!(
                "{} ciphertexts for {expected} values of {value_bits} bits",
                values.len()
            )));
        }
        let cts = public.ciphertexts_from_bytes(values)?;
        let mut z = Vec::with_capacity(expected);
        for (i, ct) in cts.iter().enumerate() {
            let here = (expected - i * layout.slots).min(layout.slots);
            for v in key.decrypt(ct)?.unpack(&layout, here)? {
                z.push(to_i128(v, "a decrypted value")?);
            }
        }
        while let Some(Stage::Activation(spec)) = stages.get(s) {
            let mode = self
                .modes
                .get(s)
                .copied()
                .unwrap_or(ActivationMode::Permute);
            let windows = self.windows.get(s).and_then(Option::as_ref);
            z = veil_model::activate(
                s,
                spec,
                mode,
                windows,
                &z,
                &topology.stage_fixed(s),
                &rounding,
            )?;
            s += 1;
        }
        if s >= stages.len() {
            self.frames.remove(&t);
            return Ok(ConvStep::Done { t, outputs: z });
        }
        let body = encrypt_inputs(key, s, &z, rng)?;
        Ok(ConvStep::Send(ConvEnvelope::new(
            &self.device,
            session.sid,
            t,
            body,
        )))
    }
}

fn encrypt_inputs<R: CryptoRng + ?Sized>(
    key: &SecretKey,
    stage: usize,
    values: &[i128],
    rng: &mut R,
) -> Result<ConvBody> {
    let public = key.public_key();
    let values = values
        .iter()
        .map(|v| Ok(key.encrypt(&public.encode_i128(*v), rng)?.to_bytes()))
        .collect::<Result<Vec<_>>>()?;
    Ok(ConvBody::Inputs {
        stage: stage as u16,
        values,
    })
}

/// What the conventional server A is configured with.
#[derive(Clone)]
pub struct ConvServerConfig {
    /// The model's public topology.
    pub topology: Arc<Topology>,
    /// The model's weights.
    pub plan: Arc<Plan>,
}

struct ServerSession {
    device: String,
    key: PublicKey,
}

/// Server A of the conventional approach: linear layers under each
/// device's key.
pub struct ConvServer {
    cfg: ConvServerConfig,
    sessions: HashMap<SessionId, ServerSession>,
}

impl ConvServer {
    /// A server for the configured model.
    pub fn new(cfg: ConvServerConfig) -> Result<ConvServer> {
        for (s, stage) in cfg.topology.stages.iter().enumerate() {
            if let Stage::Linear(spec) = stage {
                let layer = cfg.plan.layer(s).ok_or_else(|| ConvError::Stage {
                    stage: s,
                    reason: "the plan has no layer for it".into(),
                })?;
                if layer.input_len() != spec.input_len || layer.output_len() != spec.output_len {
                    return Err(ConvError::Stage {
                        stage: s,
                        reason: "plan and topology disagree".into(),
                    });
                }
            }
        }
        Ok(ConvServer {
            cfg,
            sessions: HashMap::new(),
        })
    }

    /// Handles one message from a device; answers with at most one.
    pub fn handle(&mut self, envelope: ConvEnvelope) -> Result<Option<ConvEnvelope>> {
        let ConvEnvelope {
            device,
            sid,
            t,
            body,
            ..
        } = envelope;
        match body {
            ConvBody::Session {
                model,
                topology,
                public_key,
            } => {
                if topology != self.cfg.topology.fingerprint() {
                    return Err(ConvError::WrongModel {
                        got: model,
                        got_fp: hex_prefix(&topology),
                        expected: self.cfg.topology.name.clone(),
                    });
                }
                if let Some(existing) = self.sessions.get(&sid)
                    && existing.device != device
                {
                    return Err(ConvError::WrongDevice {
                        sid,
                        owner: existing.device.clone(),
                        claimed: device,
                    });
                }
                let key = PublicKey::from_bytes(&public_key)?;
                self.sessions.insert(sid, ServerSession { device, key });
                Ok(None)
            }
            ConvBody::Inputs { stage, values } => {
                let session = self
                    .sessions
                    .get(&sid)
                    .ok_or(ConvError::UnknownSession(sid))?;
                if session.device != device {
                    return Err(ConvError::WrongDevice {
                        sid,
                        owner: session.device.clone(),
                        claimed: device,
                    });
                }
                let body = self.linear_stages(&session.key, usize::from(stage), &values)?;
                Ok(Some(ConvEnvelope::new(&device, sid, t, body)))
            }
            ConvBody::Linear { .. } => Err(ConvError::Unexpected(
                "server A does not take linear results".into(),
            )),
        }
    }

    /// Runs the linear stages from `s` on, then packs what the device
    /// needs next.
    fn linear_stages(&self, key: &PublicKey, s: usize, values: &[Vec<u8>]) -> Result<ConvBody> {
        use rayon::prelude::*;
        let stages = &self.cfg.topology.stages;
        let Some(Stage::Linear(first)) = stages.get(s) else {
            return Err(ConvError::Stage {
                stage: s,
                reason: "inputs must feed a linear stage".into(),
            });
        };
        if values.len() != first.input_len {
            return Err(ConvError::Size(format!(
                "{} inputs for stage {s}, which takes {}",
                values.len(),
                first.input_len
            )));
        }
        let mut z = key.ciphertexts_from_bytes(values)?;
        let mut s = s;
        let mut bound = first.output_bound_bits;
        while let Some(Stage::Linear(spec)) = stages.get(s) {
            let layer = self.cfg.plan.layer(s).ok_or_else(|| ConvError::Stage {
                stage: s,
                reason: "the plan has no layer for it".into(),
            })?;
            let prepared = key.prepare_bases(&z)?;
            z = (0..layer.output_len())
                .into_par_iter()
                .map(|o| {
                    let terms: Vec<(usize, i64)> = layer
                        .row(o)
                        .into_iter()
                        .map(|(i, w)| (i as usize, w))
                        .collect();
                    let dot = key.dot_prepared(&prepared, &terms)?;
                    Ok(key.add_i128(&dot, layer.bias(o)))
                })
                .collect::<Result<Vec<_>>>()?;
            bound = spec.output_bound_bits;
            s += 1;
        }
        let layout = key.pack_layout(bound)?;
        let packed = z
            .par_chunks(layout.slots.max(1))
            .map(|chunk| Ok(key.pack(&layout, chunk)?.to_bytes()))
            .collect::<Result<Vec<_>>>()?;
        Ok(ConvBody::Linear {
            stage: s as u16,
            count: z.len() as u32,
            value_bits: bound as u16,
            values: packed,
        })
    }
}

fn hex_prefix(bytes: &[u8]) -> String {
    bytes.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

/// Runs one frame through both parties in memory (no transport): for tests
/// and for checking the baseline's results.
pub fn run_in_memory<R: CryptoRng + ?Sized>(
    device: &mut ConvDevice,
    server: &mut ConvServer,
    x_hat: &[i64],
    t: u64,
    rng: &mut R,
) -> Result<Vec<i128>> {
    let mut message = device.start_frame(x_hat, t, rng)?;
    // Each round trip passes one activation stage; the bound only guards
    // against a server that never finishes.
    for _ in 0..=device.topology.stages.len() {
        let bytes = message.to_bytes()?;
        let reply = server
            .handle(ConvEnvelope::from_bytes(&bytes)?)?
            .ok_or_else(|| ConvError::Unexpected("server A did not answer".into()))?;
        let reply = ConvEnvelope::from_bytes(&reply.to_bytes()?)?;
        match device.on_message(&reply, rng)? {
            ConvStep::Send(next) => message = next,
            ConvStep::Done { outputs, .. } => return Ok(outputs),
        }
    }
    Err(ConvError::Unexpected("the frame did not finish".into()))
}

/// The index of the largest output (first on ties).
pub fn argmax<T: PartialOrd + Copy>(values: &[T]) -> Option<usize> {
    let mut best: Option<(usize, T)> = None;
    for (i, v) in values.iter().enumerate() {
        if best.is_none_or(|(_, b)| *v > b) {
            best = Some((i, *v));
        }
    }
    best.map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load_model;
    use veil_model::FloorRounding;

    fn rows(model: &str, count: usize) -> Vec<Vec<f32>> {
        if model.starts_with("mnist") {
            veil_model::data::load_workspace_mnist()
                .expect("mnist")
                .images
                .into_iter()
                .skip(8000)
                .take(count)
                .collect()
        } else {
            veil_model::data::load_pima(
                &veil_model::data::workspace_data_dir().join("pima-test.csv"),
            )
            .expect("pima")
            .features
            .iter()
            .take(count)
            .map(|f| f.to_vec())
            .collect()
        }
    }

    /// The baseline's classes agree with the integer reference's (its
    /// rounding randomness differs, so logits may differ in the last unit).
    fn agrees_with_reference(name: &str, count: usize) {
        let model = load_model(name).expect("model");
        let topology = Arc::new(model.topology().clone());
        let key = SecretKey::from_bytes(&veil_paillier::fixtures::key_2048_a().to_bytes())
            .expect("fixture key");
        let mut device =
            ConvDevice::new("devA", Arc::clone(&topology), KeySize::Bits2048).expect("device");
        let mut rng = rand::rng();
        let init = device
            .install_session(SessionId([3; 16]), key)
            .expect("session");
        let mut server = ConvServer::new(ConvServerConfig {
            topology: Arc::clone(&topology),
            plan: Arc::new(model.plan().clone()),
        })
        .expect("server");
        assert_eq!(server.handle(init).expect("session accepted"), None);
        let modes = topology.default_modes();
        for (t, x) in rows(name, count).iter().enumerate() {
            let x_hat = model.encode_input(x).expect("encode");
            let out = run_in_memory(&mut device, &mut server, &x_hat, t as u64, &mut rng)
                .expect("baseline frame");
            let reference = model
                .run_int(&x_hat, &modes, &FloorRounding)
                .expect("reference");
            assert_eq!(out.len(), reference.len());
            assert_eq!(argmax(&out), argmax(&reference), "{name} row {t}");
            // Truncation randomness moves a logit by a few units at most.
            let scale = 2f64.powi(topology.output_scale_bits as i32);
            for (a, b) in out.iter().zip(&reference) {
                assert!(
                    ((a - b) as f64 / scale).abs() < 0.01,
                    "{name} row {t}: {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn pima_mlp_baseline_matches_reference() {
        agrees_with_reference("pima-mlp", 4);
    }

    #[test]
    fn pima_tanh_baseline_matches_reference() {
        agrees_with_reference("pima-tanh", 4);
    }

    #[test]
    fn mnist_mlp_baseline_matches_reference() {
        agrees_with_reference("mnist-mlp", 3);
    }

    #[test]
    fn messages_round_trip_and_garbage_is_refused() {
        let env = ConvEnvelope::new(
            "devA",
            SessionId([1; 16]),
            7,
            ConvBody::Inputs {
                stage: 0,
                values: vec![vec![1, 2, 3]],
            },
        );
        let bytes = env.to_bytes().expect("encodes");
        assert_eq!(ConvEnvelope::from_bytes(&bytes).expect("decodes"), env);
        assert!(ConvEnvelope::from_bytes(&bytes[..bytes.len() - 1]).is_err());
        let mut bad = env.clone();
        bad.device = "a/b".into();
        assert!(ConvEnvelope::from_bytes(&bad.to_bytes().expect("encodes")).is_err());
    }

    #[test]
    fn server_refuses_unknown_sessions_and_wrong_sizes() {
        let model = load_model("pima-mlp").expect("model");
        let topology = Arc::new(model.topology().clone());
        let mut server = ConvServer::new(ConvServerConfig {
            topology: Arc::clone(&topology),
            plan: Arc::new(model.plan().clone()),
        })
        .expect("server");
        let sid = SessionId([9; 16]);
        let inputs = ConvEnvelope::new(
            "devA",
            sid,
            0,
            ConvBody::Inputs {
                stage: 0,
                values: vec![],
            },
        );
        assert!(matches!(
            server.handle(inputs.clone()),
            Err(ConvError::UnknownSession(_))
        ));
        let key = veil_paillier::fixtures::key_2048_a();
        let mut device =
            ConvDevice::new("devA", Arc::clone(&topology), KeySize::Bits2048).expect("device");
        let key = SecretKey::from_bytes(&key.to_bytes()).expect("fixture key");
        let init = device.install_session(sid, key).expect("session");
        server.handle(init).expect("accepted");
        assert!(matches!(server.handle(inputs), Err(ConvError::Size(_))));
        let mut other = device
            .start_frame(&[0; 7], 1, &mut rand::rng())
            .expect("frame");
        other.device = "devB".into();
        assert!(matches!(
            server.handle(other),
            Err(ConvError::WrongDevice { .. })
        ));
    }
}
