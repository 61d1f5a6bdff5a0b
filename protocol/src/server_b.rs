//! Server B, the key server: it supplies first-layer masks, evaluates the
//! exact activations on what A perturbed, and turns A's masked outputs into
//! a result only the device can unmask. It refuses every round that does
//! not fit the published topology.

use crate::backend::SecretOps;
use crate::device::result_values;
use crate::error::{ProtocolError, Result};
use crate::layout::{FrameLayout, ResultLayout, input_masks, output_masks};
use crate::messages::{Body, Envelope, Outgoing, Output, Peer, Round, RoundMode};
use crate::params::{Params, output_bits};
use crate::prf::{MaskKeys, Seed, SessionId};
use crate::reply::{
    StagePlan, encode_item, item_bits, reply_key, reply_masks, round_digest, stage_plans,
};
use crate::round::{RoundShape, ciphertext_count};
use crate::session;
use ethnum::I256;
use rayon::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use veil_model::{ActivationKind, FixedPoint, Stage, Topology, permute_eval};
use veil_paillier::SecretKey;

/// Most counters one mask request may cover.
pub const MAX_MASK_REQUEST: u32 = 64;

/// What server B is configured with.
#[derive(Clone)]
pub struct ServerBConfig {
    /// The protocol parameters, as A and the devices have them.
    pub params: Params,
    /// The model's public topology (B never sees the weights).
    pub topology: Arc<Topology>,
    /// B's key pair: devices encrypt kB under it, and (with the Paillier
    /// backend) every ciphertext of the protocol is under it too.
    pub key: Arc<SecretKey>,
}

struct Session {
    device: String,
    keys: MaskKeys,
    first_counter: u64,
    /// The highest counter whose output B produced.
    completed: Option<u64>,
    /// For frames in progress: the next stage B expects.
    progress: BTreeMap<u64, usize>,
    /// Restarts granted per frame in progress.
    restarts: BTreeMap<u64, u32>,
    /// What each round B answered decrypted to, per (frame, stage) in
    /// progress: a repeat must match (see [`round_digest`]).
    answered: BTreeMap<(u64, usize), [u8; 32]>,
}

impl session::Owned for Session {
    fn device(&self) -> &str {
        &self.device
    }
}

/// Server B's state machine: first-layer masks, exact activations on
/// perturbed values, and the doubly masked result.
pub struct ServerB<S: SecretOps> {
    cfg: ServerBConfig,
    layout: FrameLayout,
    result: ResultLayout,
    backend: S,
    sessions: HashMap<SessionId, Session>,
    /// Index of each activation stage; the output comes after the last.
    activations: Vec<usize>,
    /// Each activation stage's round as an honest A sends it.
    plans: Vec<StagePlan>,
    /// B's secret for the masks of its replies.
    reply_key: Seed,
}

impl<S: SecretOps> ServerB<S> {
    /// Checks the parameters against the topology and plans every
    /// activation round an honest A will send.
    pub fn new(cfg: ServerBConfig, backend: S) -> Result<ServerB<S>> {
        cfg.params.check(&cfg.topology)?;
        let activations = cfg
            .topology
            .stages
            .iter()
            .enumerate()
            .filter_map(|(s, stage)| matches!(stage, Stage::Activation(_)).then_some(s))
            .collect();
        let plans = stage_plans(&cfg.topology, &cfg.params)?;
        Ok(ServerB {
            reply_key: reply_key(&cfg.key),
            plans,
            layout: FrameLayout::new(&cfg.topology, &cfg.params),
            result: ResultLayout::new(&cfg.topology, &cfg.params),
            cfg,
            backend,
            sessions: HashMap::new(),
            activations,
        })
    }

    /// What it was configured with.
    pub fn config(&self) -> &ServerBConfig {
        &self.cfg
    }

    /// Its crypto backend.
    pub fn backend(&self) -> &S {
        &self.backend
    }

    /// Handles one message addressed to B.
    pub fn handle(&mut self, envelope: Envelope) -> Result<Vec<Outgoing>> {
        let Envelope {
            device,
            sid,
            t,
            body,
            ..
        } = envelope;
        match body {
            Body::SessionInit(init) => self.on_session(device, sid, t, &init),
            Body::MaskRequest { count } => self.on_mask_request(&device, sid, t, count),
            Body::Round(round) => self.on_round(&device, sid, t, &round),
            Body::Output(output) => self.on_output(&device, sid, t, &output),
            Body::Ack | Body::Sync => {
                self.session(&device, sid)?;
                Ok(Vec::new())
            }
            other => Err(ProtocolError::Misdirected {
                kind: other.kind(),
                to: "server B",
            }),
        }
    }

    fn session(&self, device: &str, sid: SessionId) -> Result<&Session> {
        session::lookup(&self.sessions, device, sid)
    }

    fn on_session(
        &mut self,
        device: String,
        sid: SessionId,
        first_counter: u64,
        init: &crate::messages::SessionInit,
    ) -> Result<Vec<Outgoing>> {
        if session::known(&self.sessions, &device, sid)? {
            return Ok(Vec::new());
        }
        let seed = session::accept(init, &self.cfg.key, &self.cfg.topology, &self.cfg.params)?;
        tracing::info!(%sid, %device, "session accepted");
        self.sessions.insert(
            sid,
            Session {
                device,
                keys: MaskKeys::new(&seed),
                first_counter,
                completed: None,
                progress: BTreeMap::new(),
                restarts: BTreeMap::new(),
                answered: BTreeMap::new(),
            },
        );
        Ok(Vec::new())
    }

    /// Drops session `sid`, its seeds and its frames' progress (the node
    /// retired it).
    pub fn forget_session(&mut self, sid: SessionId) {
        self.sessions.remove(&sid);
    }

    /// Restores what B knew about a session's finished frames (from its
    /// durable result queue), so replays stay refused across a restart.
    pub fn mark_completed(&mut self, sid: SessionId, t: u64) {
        if let Some(session) = self.sessions.get_mut(&sid) {
            session.completed = Some(session.completed.map_or(t, |c| c.max(t)));
        }
    }

    /// The next stage B expects of frame `t` in progress, if any.
    pub fn progress_of(&self, sid: SessionId, t: u64) -> Option<usize> {
        self.sessions.get(&sid)?.progress.get(&t).copied()
    }

    /// Restores where a frame in progress stood (from B's durable state),
    /// so that its next round or its output is taken after a restart.
    pub fn restore_progress(&mut self, sid: SessionId, t: u64, stage: usize) {
        if let Some(session) = self.sessions.get_mut(&sid)
            && session.completed.is_none_or(|c| t > c)
        {
            session.progress.insert(t, stage);
        }
    }

    fn on_mask_request(
        &mut self,
        device: &str,
        sid: SessionId,
        t: u64,
        count: u32,
    ) -> Result<Vec<Outgoing>> {
        let session = self.session(device, sid)?;
        if count == 0 || count > MAX_MASK_REQUEST {
            return Err(ProtocolError::MaskRequest {
                count: u64::from(count),
                max: u64::from(MAX_MASK_REQUEST),
            });
        }
        if t < session.first_counter {
            return Err(ProtocolError::BeforeSession {
                counter: t,
                first: session.first_counter,
            });
        }
        let backend = &self.backend;
        let mut out = Vec::new();
        for counter in t..t.saturating_add(u64::from(count)) {
            if session.completed.is_some_and(|c| counter <= c) {
                continue;
            }
            let b = input_masks(&session.keys, counter, &self.layout, &self.result);
            let masks: Vec<Vec<u8>> = b
                .par_iter()
                .map(|v| backend.encode(&backend.encrypt(-I256::from(*v))))
                .collect();
            let mu: Vec<I256> = self
                .plans
                .iter()
                .flat_map(|plan| self.masks_of(plan, plan.groups, sid, counter))
                .collect();
            let replies: Vec<Vec<u8>> = mu
                .par_iter()
                .map(|m| backend.encode(&backend.encrypt(-*m)))
                .collect();
            out.push(Outgoing::new(
                Peer::ServerA,
                Envelope::new(device, sid, counter, Body::MaskSupply { masks, replies }),
            ));
        }
        Ok(out)
    }

    /// `μ` of every reply item of `plan`'s round with `groups` groups.
    fn masks_of(&self, plan: &StagePlan, groups: usize, sid: SessionId, t: u64) -> Vec<I256> {
        reply_masks(
            &self.reply_key,
            sid,
            t,
            plan,
            groups,
            self.cfg.params.sigma,
            self.cfg.topology.fixed.frac_bits,
        )
    }

    /// Checks where frame `t` stands and returns the stage B expects next.
    fn expected_stage(&self, device: &str, sid: SessionId, t: u64) -> Result<usize> {
        let session = self.session(device, sid)?;
        if let Some(done) = session.completed
            && t <= done
        {
            return Err(ProtocolError::Replay { sid, t, last: done });
        }
        if t < session.first_counter {
            return Err(ProtocolError::BeforeSession {
                counter: t,
                first: session.first_counter,
            });
        }
        Ok(session
            .progress
            .get(&t)
            .copied()
            .unwrap_or_else(|| self.activations.first().copied().unwrap_or(usize::MAX)))
    }

    fn next_after(&self, stage: usize) -> usize {
        self.activations
            .iter()
            .copied()
            .find(|s| *s > stage)
            .unwrap_or(usize::MAX)
    }

    fn decode_all(&self, items: &[Vec<u8>]) -> Result<Vec<S::Ct>> {
        self.backend.decode_many(items)
    }

    /// Decrypts `entries` values of `bits` bits from `items`.
    fn open(
        &self,
        items: &[Vec<u8>],
        entries: usize,
        bits: u32,
        packed: bool,
        what: &'static str,
    ) -> Result<Vec<I256>> {
        let backend = &self.backend;
        let slots = if packed { backend.slots(bits)? } else { 1 };
        let expected = ciphertext_count(entries, slots, packed);
        if items.len() != expected {
            return Err(ProtocolError::Ciphertexts {
                what,
                entries,
                expected,
                got: items.len(),
            });
        }
        let cts = self.decode_all(items)?;
        if packed {
            let counts: Vec<usize> = (0..cts.len())
                .map(|i| slots.min(entries - i * slots))
                .collect();
            let chunks = backend.unpack_many(&cts, bits, &counts)?;
            return Ok(chunks.into_iter().flatten().collect());
        }
        let bound = I256::ONE << bits;
        let values = backend.decrypt_many(&cts)?;
        if values.iter().any(|v| *v >= bound || *v <= -bound) {
            return Err(ProtocolError::Bound { what, bits });
        }
        Ok(values)
    }

    fn on_round(
        &mut self,
        device: &str,
        sid: SessionId,
        t: u64,
        round: &Round,
    ) -> Result<Vec<Outgoing>> {
        let mut expected = self.expected_stage(device, sid, t)?;
        let s = usize::from(round.stage);
        let first = self.activations.first().copied().unwrap_or(usize::MAX);
        if s == first && expected != first {
            // A started this frame over (after losing a reply, or a
            // restart of either server). An honest A repeats its first
            // try exactly, so B learns nothing new; the limit bounds what
            // a misbehaving A could probe.
            let session = self
                .sessions
                .get_mut(&sid)
                .ok_or(ProtocolError::UnknownSession(sid))?;
            let used = session.restarts.entry(t).or_insert(0);
            if *used >= self.cfg.params.max_restarts {
                return Err(ProtocolError::TooManyRestarts {
                    frame: t,
                    used: *used,
                });
            }
            *used += 1;
            tracing::info!(%sid, t, "frame restarted by A");
            expected = first;
        }
        if s != expected {
            return Err(ProtocolError::StageOrder {
                what: "round",
                frame: t,
                expected,
                got: s,
            });
        }
        let params = &self.cfg.params;
        let shape = RoundShape::new(&self.cfg.topology, params, s, round.mode)?;
        if usize::from(round.group_size) != shape.group_size {
            return Err(ProtocolError::GroupSize {
                stage: s,
                expected: shape.group_size,
                got: usize::from(round.group_size),
            });
        }
        let real = shape.groups.len();
        let groups = round.groups as usize;
        if groups < real + params.min_dummies as usize || groups > real + params.max_dummies(real) {
            return Err(ProtocolError::GroupCount {
                groups,
                real,
                min_dummies: params.min_dummies as usize,
                max_dummies: params.max_dummies(real),
            });
        }
        if round.packed != params.pack {
            return Err(ProtocolError::PackingMismatch {
                agreed: params.pack,
                got: round.packed,
            });
        }
        let k = shape.group_size;
        let per_group = shape.values_per_group();
        let fixed = self.cfg.topology.stage_fixed(s);
        let w = fixed.weight_bits;
        let values = self.open(
            &round.values,
            groups * per_group,
            shape.value_bits,
            round.packed,
            "value",
        )?;
        let (replies, digest): (Vec<Vec<I256>>, [u8; 32]) = match round.mode {
            RoundMode::Permute => {
                if !round.masked.is_empty() || !round.masked_alpha.is_empty() {
                    return Err(ProtocolError::Superfluous {
                        what: "masked values in a permute round",
                    });
                }
                let replies = values
                    .par_chunks(k)
                    .map(|group| {
                        let v = group.iter().copied().max().unwrap_or(I256::ZERO);
                        Ok(vec![permute_value(&shape.kind, v, &fixed)?])
                    })
                    .collect::<Result<_>>()?;
                (replies, round_digest(round.groups, round.mode, &[&values]))
            }
            RoundMode::Blind => {
                let m = shape.slots;
                let masked = self.open(
                    &round.masked,
                    groups * m,
                    shape.masked_bits,
                    round.packed,
                    "masked",
                )?;
                // An honest A sends z + ρ with |z| < 2^κ (padding -2^κ) and
                // ρ uniform below 2^(κ+σ). A device that exploits knowing
                // its mask b can push x̂ far past the model's input bound
                // (A sees only x̂ + b), and so z past 2^κ: each such entry
                // lands outside this range with probability about
                // |z|/2^(κ+σ), and its comparisons overflow their bound
                // with probability about log2(|z|/2^κ)/beta_log_range.
                let low = -(I256::ONE << shape.kappa);
                let high = (I256::ONE << (shape.kappa + params.sigma)) - low;
                if masked.iter().any(|v| *v < low || *v >= high) {
                    return Err(ProtocolError::Overflow {
                        what: "a masked pre-activation is outside an honest frame's range",
                    });
                }
                let alpha = match shape.alpha_bits {
                    Some(bits) => self.open(
                        &round.masked_alpha,
                        groups * m,
                        bits,
                        round.packed,
                        "masked-alpha",
                    )?,
                    None if round.masked_alpha.is_empty() => Vec::new(),
                    None => {
                        return Err(ProtocolError::Superfluous {
                            what: "leaky-ReLU values",
                        });
                    }
                };
                let leaky = matches!(shape.kind, ActivationKind::LeakyRelu { .. });
                let replies: Vec<Vec<I256>> = (0..groups)
                    .into_par_iter()
                    .map(|g| {
                        let outcomes = values
                            .get(g * per_group..(g + 1) * per_group)
                            .unwrap_or(&[]);
                        let (best, positive) = select(&shape.comparisons, outcomes, m);
                        // MaxPool and the hidden zero slot always select;
                        // otherwise the implicit comparison with 0 decides.
                        let chosen = positive.unwrap_or(true);
                        let mut x = I256::ZERO;
                        let mut minus_s = Vec::with_capacity(m);
                        for e in 0..m {
                            let s = chosen && e == best;
                            let q1 = masked.get(g * m + e).copied().unwrap_or(I256::ZERO) >> w;
                            if s {
                                x += q1;
                            } else if leaky {
                                // Leaky ReLU: (1 - s)·q2.
                                x += alpha.get(g * m + e).copied().unwrap_or(I256::ZERO) >> (2 * w);
                            }
                            minus_s.push(if s { -I256::ONE } else { I256::ZERO });
                        }
                        let mut reply = Vec::with_capacity(1 + m);
                        reply.push(x);
                        reply.extend(minus_s);
                        Ok(reply)
                    })
                    .collect::<Result<_>>()?;
                let digest = round_digest(round.groups, round.mode, &[&values, &masked, &alpha]);
                (replies, digest)
            }
        };
        // A repeat (a restart, or a lost reply) must decrypt to what B
        // answered: two different rounds under one μ would give A the
        // difference of two answers.
        let session = self
            .sessions
            .get_mut(&sid)
            .ok_or(ProtocolError::UnknownSession(sid))?;
        match session.answered.get(&(t, s)) {
            Some(seen) if *seen != digest => {
                return Err(ProtocolError::RoundChanged { stage: s, frame: t });
            }
            _ => {
                session.answered.insert((t, s), digest);
            }
        }
        let plan = self
            .plans
            .iter()
            .find(|p| p.stage == s)
            .ok_or(ProtocolError::NotActivation { stage: s })?;
        let mu = self.masks_of(plan, groups, sid, t);
        let per_reply = shape.replies_per_group();
        let frac = fixed.frac_bits;
        let mut items = Vec::with_capacity(mu.len());
        for (i, (v, m)) in replies.iter().flatten().zip(&mu).enumerate() {
            // μ hides v only within its bound; nothing an honest A sends
            // breaks it (permute values of forced kinds included).
            let bound = I256::ONE << item_bits(&shape, i % per_reply, frac);
            if *v >= bound || *v <= -bound {
                return Err(ProtocolError::Overflow {
                    what: "a reply value beyond its bound",
                });
            }
            items.push(encode_item(*v + *m));
        }
        let next = self.next_after(s);
        if let Some(session) = self.sessions.get_mut(&sid) {
            session.progress.insert(t, next);
        }
        Ok(vec![Outgoing::new(
            Peer::ServerA,
            Envelope::new(
                device,
                sid,
                t,
                Body::RoundReply {
                    stage: round.stage,
                    items,
                },
            ),
        )])
    }

    fn on_output(
        &mut self,
        device: &str,
        sid: SessionId,
        t: u64,
        output: &Output,
    ) -> Result<Vec<Outgoing>> {
        let expected = self.expected_stage(device, sid, t)?;
        if expected != usize::MAX {
            return Err(ProtocolError::OutputEarly {
                frame: t,
                stage: expected,
            });
        }
        let topology = Arc::clone(&self.cfg.topology);
        let params = self.cfg.params.clone();
        if output.count as usize != topology.output_len {
            return Err(ProtocolError::Size {
                what: "outputs",
                expected: topology.output_len,
                got: output.count as usize,
            });
        }
        if output.packed != params.pack {
            return Err(ProtocolError::PackingMismatch {
                agreed: params.pack,
                got: output.packed,
            });
        }
        let bits = output_bits(&topology) + params.sigma + 1;
        let masked = self.open(
            &output.values,
            topology.output_len,
            bits,
            output.packed,
            "output",
        )?;
        let session = self
            .sessions
            .get_mut(&sid)
            .ok_or(ProtocolError::UnknownSession(sid))?;
        let m_b = output_masks(&session.keys, t, &self.result);
        let result = result_values(&masked, &m_b, &self.result);
        session.progress.remove(&t);
        // Frames finish in order per session; an earlier one still in
        // progress is abandoned (its round will be refused as a replay).
        session.progress.retain(|pending, _| *pending > t);
        session.restarts.retain(|pending, _| *pending > t);
        session.answered.retain(|(pending, _), _| *pending > t);
        session.completed = Some(session.completed.map_or(t, |c| c.max(t)));
        Ok(vec![Outgoing::new(
            Peer::Device,
            Envelope::new(device, sid, t, Body::Result(result)),
        )])
    }
}

/// B's exact evaluation in permute mode, refusing values beyond what f64
/// and the model crate's evaluation handle.
fn permute_value(kind: &ActivationKind, v: I256, fixed: &FixedPoint) -> Result<I256> {
    let v = i128::try_from(v).map_err(|_| ProtocolError::Overflow {
        what: "pre-activation beyond 128 bits",
    })?;
    Ok(I256::from(permute_eval(kind, v, fixed)))
}

/// The slot B selects from one group's comparison outcomes: the one that
/// wins every comparison it takes part in (`β·(z_i - z_j) + γ ≥ 0` exactly
/// when `z_i ≥ z_j`, as `γ ∈ [0, β)`; equal values order by slot), and
/// whether it beats the implicit 0 where the round has one. A misbehaving
/// A's inconsistent outcomes still give a deterministic answer: the most
/// wins, then the lowest slot.
fn select(
    comparisons: &[(usize, Option<usize>)],
    outcomes: &[I256],
    slots: usize,
) -> (usize, Option<bool>) {
    let mut wins = vec![0usize; slots.max(1)];
    for ((i, j), v) in comparisons.iter().zip(outcomes) {
        if let Some(j) = j {
            let winner = if *v >= I256::ZERO { *i } else { *j };
            if let Some(count) = wins.get_mut(winner) {
                *count += 1;
            }
        }
    }
    let mut best = 0;
    for (slot, count) in wins.iter().enumerate() {
        if *count > wins.get(best).copied().unwrap_or(0) {
            best = slot;
        }
    }
    let positive = comparisons
        .iter()
        .zip(outcomes)
        .find(|((i, j), _)| *i == best && j.is_none())
        .map(|(_, v)| *v >= I256::ZERO);
    (best, positive)
}
