//! Server A, the model server: it holds the weights, computes every linear
//! layer on ciphertexts under B's key, and perturbs pre-activations before B
//! sees them (fresh permutation, dummies, blinding and masking every round).

mod halves;
mod rounds;

use crate::backend::PublicOps;
use crate::codec::{FieldReader, low_mask};
use crate::device::frame_fits;
use crate::error::{ProtocolError, Result};
use crate::layout::{FrameLayout, ResultLayout, input_masks, output_masks};
use crate::messages::{Body, Envelope, Frame, Outgoing, Output, Peer, RoundMode};
use crate::params::{Params, output_bits};
use crate::perturb::GroupRef;
use crate::prf::{MaskKeys, Seed, SessionId};
use crate::reply::{StagePlan, stage_plans};
use crate::round::RoundShape;
use crate::session;
use ethnum::I256;
use rayon::prelude::*;
use rounds::{Lists, seal};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use veil_model::{Plan, SeededRounding, Stage, Topology};
use veil_paillier::SecretKey;

/// What server A is configured with.
#[derive(Clone)]
pub struct ServerAConfig {
    /// The protocol parameters, as B and the devices have them.
    pub params: Params,
    /// The model's public topology.
    pub topology: Arc<Topology>,
    /// The model's private plan: its weights.
    pub plan: Arc<Plan>,
    /// A's own key pair: devices encrypt their seed kA under it.
    pub key: Arc<SecretKey>,
    /// A's secret for truncation offsets and tie-breaking ranks.
    pub rounding_key: Seed,
}

/// The truncation randomness A uses for frame `t` of session `sid`: a
/// pure function of A's secret, so that the integer reference can replay it.
pub fn frame_rounding(rounding_key: &Seed, sid: SessionId, t: u64) -> SeededRounding {
    let mut label = b"rounding".to_vec();
    label.extend_from_slice(&sid.0);
    label.extend_from_slice(&t.to_le_bytes());
    SeededRounding {
        key: *rounding_key.derive(&label).as_bytes(),
    }
}

struct Session {
    device: String,
    keys: MaskKeys,
    first_counter: u64,
    last_frame: Option<u64>,
    /// Masks were requested for every counter below this.
    requested_until: u64,
}

impl session::Owned for Session {
    fn device(&self) -> &str {
        &self.device
    }
}

enum Masks<C> {
    /// `[[-b_i]]` and `[[-μ]]` as B sent them.
    Raw(Vec<Vec<u8>>, Vec<Vec<u8>>),
    /// The cipher half of everything the frame will send B.
    Ready(Offline<C>),
}

/// The cipher half of every ciphertext one frame sends B, computed
/// offline from B's `[[-b]]` and `[[-μ]]` and A's keyed plan, packed and
/// re-randomized: online each is joined with its plain half by one
/// multiplication.
struct Offline<C> {
    /// Per activation stage, in order (taken when its round goes out).
    rounds: Vec<Lists<C>>,
    /// The output round's `[[o + mA]]`, less `o`'s plain half and `mA`.
    output: Vec<C>,
}

/// The mask quotients A needs to undo B's truncation of one slot.
#[derive(Clone)]
struct Entry {
    /// Whether B may select this slot of a real group (see
    /// [`crate::perturb::Slot::corrected`]).
    corrected: bool,
    h1: I256,
    h2: I256,
}

struct Pending {
    stage: usize,
    shape: RoundShape,
    order: Vec<GroupRef>,
    entries: Vec<Vec<Entry>>,
}

enum FrameState {
    /// The frame arrived before its first-layer masks: `u = y - a`.
    Waiting(Vec<i128>),
    /// A round is out at B; `u` is kept so the frame can start over.
    InRound(Pending, Vec<i128>),
}

/// What one entry of a round A sent really is, known only to A: recorded
/// on request so that an audit can score what B could infer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryRole {
    /// A real pre-activation, by its index in the stage's input.
    Real(u32),
    /// An entry of a dummy group.
    Dummy,
    /// A copy filling a short pooling window.
    Padding,
    /// The slot of value 0 that hides a ReLU's sign (`hide_signs`).
    Zero,
}

/// A's record of one round, groups and slots in the order B receives
/// them (comparisons follow `RoundView::comparisons`).
#[derive(Clone, Debug)]
pub struct RoundTruth {
    /// The session.
    pub sid: SessionId,
    /// The frame counter.
    pub t: u64,
    /// The activation stage.
    pub stage: usize,
    /// How B evaluates it.
    pub mode: RoundMode,
    /// Each group's slots, in the order B receives them.
    pub groups: Vec<Vec<EntryRole>>,
}

/// Server A's state machine: linear layers on ciphertexts, and the
/// perturbed rounds it sends B, keyed so that every worker retrying a
/// frame repeats it exactly.
pub struct ServerA<P: PublicOps> {
    cfg: ServerAConfig,
    layout: FrameLayout,
    result: ResultLayout,
    /// Rounds as A built them, when an audit asked for them.
    truth: Option<Vec<RoundTruth>>,
    backend: P,
    sessions: HashMap<SessionId, Session>,
    masks: BTreeMap<(SessionId, u64), Masks<P::Ct>>,
    frames: HashMap<(SessionId, u64), (String, FrameState)>,
    /// `u = y - a` of every frame in flight, to start it over if needed.
    inputs: HashMap<(SessionId, u64), Vec<i128>>,
    /// The offline halves of every frame in flight.
    offline: HashMap<(SessionId, u64), Offline<P::Ct>>,
    /// Each activation stage's round as A sends it.
    plans: Vec<StagePlan>,
}

impl<P: PublicOps> ServerA<P> {
    /// Takes no randomness: every perturbation is keyed by
    /// `cfg.rounding_key`, which all of A's workers share, so that any
    /// worker retrying a frame repeats it exactly.
    pub fn new(cfg: ServerAConfig, backend: P) -> Result<ServerA<P>> {
        cfg.params.check(&cfg.topology)?;
        if !matches!(cfg.topology.stages.first(), Some(Stage::Linear(_))) {
            return Err(ProtocolError::FirstStageNotLinear);
        }
        for (s, stage) in cfg.topology.stages.iter().enumerate() {
            if let Stage::Linear(spec) = stage {
                let layer = cfg
                    .plan
                    .layer(s)
                    .ok_or(ProtocolError::MissingLayer { stage: s })?;
                if layer.input_len() != spec.input_len || layer.output_len() != spec.output_len {
                    return Err(ProtocolError::PlanMismatch { stage: s });
                }
            }
        }
        let plans = stage_plans(&cfg.topology, &cfg.params)?;
        Ok(ServerA {
            plans,
            offline: HashMap::new(),
            layout: FrameLayout::new(&cfg.topology, &cfg.params),
            result: ResultLayout::new(&cfg.topology, &cfg.params),
            cfg,
            backend,
            sessions: HashMap::new(),
            masks: BTreeMap::new(),
            frames: HashMap::new(),
            inputs: HashMap::new(),
            truth: None,
        })
    }

    /// How this model's frames travel.
    pub fn frame_layout(&self) -> &FrameLayout {
        &self.layout
    }

    /// Keeps (or stops keeping) a [`RoundTruth`] of every round built, for
    /// audits; never enabled by the servers.
    pub fn record_truth(&mut self, on: bool) {
        self.truth = on.then(Vec::new);
    }

    /// The rounds recorded since the last call.
    pub fn take_truth(&mut self) -> Vec<RoundTruth> {
        self.truth.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// What it was configured with.
    pub fn config(&self) -> &ServerAConfig {
        &self.cfg
    }

    /// Its crypto backend.
    pub fn backend(&self) -> &P {
        &self.backend
    }

    /// Sessions known, frames in flight and mask sets held (for logs).
    pub fn load(&self) -> (usize, usize, usize) {
        (self.sessions.len(), self.frames.len(), self.masks.len())
    }

    /// Handles one message addressed to A.
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
            Body::Frame(frame) => self.on_frame(&device, sid, t, &frame),
            Body::MaskSupply { masks, replies } => self.on_masks(&device, sid, t, masks, replies),
            Body::RoundReply { stage, items } => self.on_reply(&device, sid, t, stage, &items),
            Body::Reject { code, detail } => {
                tracing::warn!(%sid, t, %code, %detail, "B refused a message of this frame; dropping it");
                self.forget_frame(sid, t);
                Ok(Vec::new())
            }
            other => Err(ProtocolError::Misdirected {
                kind: other.kind(),
                to: "server A",
            }),
        }
    }

    fn session(&self, device: &str, sid: SessionId) -> Result<&Session> {
        session::lookup(&self.sessions, device, sid)
    }

    /// Drops frame `t` of session `sid` and whatever A held for it (given
    /// up, or already answered by B).
    pub fn forget_frame(&mut self, sid: SessionId, t: u64) {
        self.frames.remove(&(sid, t));
        self.offline.remove(&(sid, t));
        self.inputs.remove(&(sid, t));
        self.masks.remove(&(sid, t));
    }

    /// Drops session `sid` and every frame and mask A held for it (the
    /// node retired it).
    pub fn forget_session(&mut self, sid: SessionId) {
        self.sessions.remove(&sid);
        self.frames.retain(|(s, _), _| *s != sid);
        self.offline.retain(|(s, _), _| *s != sid);
        self.inputs.retain(|(s, _), _| *s != sid);
        self.masks.retain(|(s, _), _| *s != sid);
    }

    fn on_session(
        &mut self,
        device: String,
        sid: SessionId,
        first_counter: u64,
        init: &crate::messages::SessionInit,
    ) -> Result<Vec<Outgoing>> {
        if session::known(&self.sessions, &device, sid)? {
            // A redelivered (retained) session message: nothing to do.
            return Ok(Vec::new());
        }
        let seed = session::accept(init, &self.cfg.key, &self.cfg.topology, &self.cfg.params)?;
        let lookahead = self.lookahead();
        self.sessions.insert(
            sid,
            Session {
                device: device.clone(),
                keys: MaskKeys::new(&seed),
                first_counter,
                last_frame: None,
                requested_until: first_counter.saturating_add(lookahead),
            },
        );
        tracing::info!(%sid, %device, "session accepted");
        Ok(vec![mask_request(&device, sid, first_counter, lookahead)])
    }

    fn on_frame(
        &mut self,
        device: &str,
        sid: SessionId,
        t: u64,
        frame: &Frame,
    ) -> Result<Vec<Outgoing>> {
        let session = self.session(device, sid)?;
        if t < session.first_counter {
            return Err(ProtocolError::BeforeSession {
                counter: t,
                first: session.first_counter,
            });
        }
        if let Some(last) = session.last_frame
            && t <= last
        {
            return Err(ProtocolError::Replay { sid, t, last });
        }
        // `t` is the sender's claim: near u64::MAX the look-ahead window
        // would wrap (a panic in debug builds, a bogus request in release).
        let lookahead = self.lookahead();
        let (next, until) = t
            .checked_add(1)
            .and_then(|next| Some((next, next.checked_add(lookahead)?)))
            .ok_or(ProtocolError::NoLookahead {
                counter: t,
                lookahead,
            })?;
        frame_fits(frame, &self.layout)?;
        let a = input_masks(&session.keys, t, &self.layout, &self.result);
        let mut reader = FieldReader::new(&frame.values);
        let mut u = Vec::with_capacity(a.len());
        for (i, (field, a)) in self.layout.fields.iter().zip(&a).enumerate() {
            let width = field.wire_bits();
            // x̂ - L + b, which an honest device keeps below 2^m + R.
            let masked = reader.get(width).wrapping_sub(*a) & low_mask(width);
            // u = x̂ + b: fits, as m + 1 ≤ 125 bits.
            let masked = i128::try_from(masked)
                .ok()
                .filter(|_| masked <= field.max_masked())
                .ok_or(ProtocolError::MaskedInput { index: i })?;
            u.push(masked + i128::from(field.offset));
        }
        let mut out = Vec::new();
        let have_masks = self.masks.contains_key(&(sid, t));
        let starts_now = matches!(self.masks.get(&(sid, t)), Some(Masks::Ready(..)));
        let session = self
            .sessions
            .get_mut(&sid)
            .ok_or(ProtocolError::UnknownSession(sid))?;
        session.last_frame = Some(t);
        if !have_masks && t >= session.requested_until {
            // The device skipped counters (a crash, a lost block): ask for
            // this one and the ones after it.
            out.push(mask_request(device, sid, t, until - t));
            session.requested_until = until;
        } else if !starts_now {
            out.extend(Self::lookahead_request(device, sid, session, next, until));
        }
        // A frame that starts now asks for the counters ahead with its
        // output: B generates a counter's masks in one piece (7.5 ms of
        // B's time on mnist-mlp, 2026-11-29), and a request sent ahead of
        // the first round held that round up, its 626 kB supply then
        // queued ahead of B's reply at the broker.
        // Masks of counters the device skipped will never be used.
        let stale: Vec<(SessionId, u64)> = self
            .masks
            .range((sid, 0)..(sid, t))
            .map(|(k, _)| *k)
            .collect();
        for key in stale {
            self.masks.remove(&key);
        }
        match self.masks.get(&(sid, t)) {
            Some(Masks::Ready(..)) => out.extend(self.first_layer(device, sid, t, &u)?),
            _ => {
                self.frames
                    .insert((sid, t), (device.to_string(), FrameState::Waiting(u)));
            }
        }
        Ok(out)
    }

    /// Frames in flight: `(device, session, counter)`, for the shell's
    /// timers.
    pub fn frames_in_flight(&self) -> Vec<(String, SessionId, u64)> {
        self.frames
            .iter()
            .map(|((sid, t), (device, _))| (device.clone(), *sid, *t))
            .collect()
    }

    /// Starts frame `t` over from its first layer, with fresh first-layer
    /// masks (B derives the same `b` and encrypts it anew) and fresh
    /// perturbations: for when B's reply is lost or B restarted.
    pub fn retry_frame(&mut self, sid: SessionId, t: u64) -> Result<Vec<Outgoing>> {
        let Some((device, state)) = self.frames.remove(&(sid, t)) else {
            return Err(ProtocolError::NotInFlight { sid, frame: t });
        };
        let u = match state {
            FrameState::Waiting(u) => u,
            FrameState::InRound(_, u) => u,
        };
        self.inputs.remove(&(sid, t));
        self.masks.remove(&(sid, t));
        self.offline.remove(&(sid, t));
        self.frames
            .insert((sid, t), (device.clone(), FrameState::Waiting(u)));
        Ok(vec![mask_request(&device, sid, t, 1)])
    }

    fn on_masks(
        &mut self,
        device: &str,
        sid: SessionId,
        t: u64,
        masks: Vec<Vec<u8>>,
        replies: Vec<Vec<u8>>,
    ) -> Result<Vec<Outgoing>> {
        let n = self.cfg.topology.input_len;
        let session = self.session(device, sid)?;
        if masks.len() != n {
            return Err(ProtocolError::Size {
                what: "input masks",
                expected: n,
                got: masks.len(),
            });
        }
        let items: usize = self.plans.iter().map(StagePlan::items).sum();
        if replies.len() != items {
            return Err(ProtocolError::Size {
                what: "reply masks",
                expected: items,
                got: replies.len(),
            });
        }
        let waiting = matches!(
            self.frames.get(&(sid, t)),
            Some((_, FrameState::Waiting(_)))
        );
        if session.last_frame.is_some_and(|last| t <= last) && !waiting {
            // Masks for a counter already used or skipped: never needed.
            return Ok(Vec::new());
        }
        if self.masks.contains_key(&(sid, t)) {
            return Ok(Vec::new());
        }
        // Decoded (and checked) by the offline step: a supply for the
        // counters ahead costs the online path nothing.
        self.masks.insert((sid, t), Masks::Raw(masks, replies));
        Ok(Vec::new())
    }

    /// Whether a frame is held up by precomputation that could be done now.
    /// A shell must do that step before taking further messages: on a
    /// server that is never idle, precomputing only when idle starves the
    /// frame for as long as the load lasts.
    pub fn has_waiting_frame(&self) -> bool {
        self.frames.iter().any(|(key, (_, state))| {
            matches!(state, FrameState::Waiting(_))
                && matches!(self.masks.get(key), Some(Masks::Raw(..)))
        })
    }

    /// Whether a frame has a round out at B, its reply due.
    pub fn has_frame_in_round(&self) -> bool {
        self.frames
            .values()
            .any(|(_, state)| matches!(state, FrameState::InRound(..)))
    }

    /// Whether a session has raw masks and none ready: its next frame
    /// would wait for precomputation.
    pub fn has_session_without_ready_masks(&self) -> bool {
        let mut session = None;
        let (mut raw, mut ready) = (false, false);
        for ((sid, _), masks) in &self.masks {
            if session != Some(*sid) {
                if raw && !ready {
                    return true;
                }
                session = Some(*sid);
                (raw, ready) = (false, false);
            }
            match masks {
                Masks::Raw(..) => raw = true,
                Masks::Ready(_) => ready = true,
            }
        }
        raw && !ready
    }

    /// Whether precomputation is waiting to be done.
    pub fn has_offline_work(&self) -> bool {
        self.masks.values().any(|m| matches!(m, Masks::Raw(..)))
    }

    /// Does one unit of precomputation: `W·[[-b]]` for one frame counter
    /// (a frame already waiting for it first). A frame that was waiting
    /// continues, and its messages are returned.
    pub fn offline_step(&mut self) -> Result<Vec<Outgoing>> {
        let waiting_key = self.masks.iter().find_map(|(key, m)| {
            let frame_waits = matches!(self.frames.get(key), Some((_, FrameState::Waiting(_))));
            (matches!(m, Masks::Raw(..)) && frame_waits).then_some(*key)
        });
        let key = waiting_key.or_else(|| {
            self.masks
                .iter()
                .find_map(|(key, m)| matches!(m, Masks::Raw(..)).then_some(*key))
        });
        let Some(key) = key else {
            return Ok(Vec::new());
        };
        let Some(Masks::Raw(raw, replies)) = self.masks.remove(&key) else {
            return Ok(Vec::new());
        };
        let (sid, t) = key;
        let layer = self
            .cfg
            .plan
            .layer(0)
            .ok_or(ProtocolError::MissingLayer { stage: 0 })?;
        let backend = &self.backend;
        let raw = backend.decode_many(&raw)?;
        let prepared = backend.prepare(&raw)?;
        let ready = (0..layer.output_len())
            .into_par_iter()
            .map(|o| backend.dot(&prepared, &layer.row(o)))
            .collect::<Result<Vec<_>>>()?;
        let replies = backend.decode_many(&replies)?;
        let offline = self.prepare_offline(sid, t, ready, &replies)?;
        self.masks.insert(key, Masks::Ready(offline));
        match self.frames.remove(&key) {
            Some((device, FrameState::Waiting(u))) => self.first_layer(&device, sid, t, &u),
            Some(other) => {
                self.frames.insert(key, other);
                Ok(Vec::new())
            }
            None => Ok(Vec::new()),
        }
    }

    /// The online first layer: the plain half `W·u + c` of
    /// `[[W·x̂ + c]] = (W·u + c) ⊕ W·[[-b]]`, whose cipher half went into
    /// the offline work.
    fn first_layer(
        &mut self,
        device: &str,
        sid: SessionId,
        t: u64,
        u: &[i128],
    ) -> Result<Vec<Outgoing>> {
        let Some(Masks::Ready(offline)) = self.masks.remove(&(sid, t)) else {
            return Err(ProtocolError::Inconsistent("first layer without masks"));
        };
        self.offline.insert((sid, t), offline);
        let layer = self
            .cfg
            .plan
            .layer(0)
            .ok_or(ProtocolError::MissingLayer { stage: 0 })?;
        self.inputs.insert((sid, t), u.to_vec());
        let z: Vec<I256> = layer.apply(u)?.into_iter().map(I256::from).collect();
        self.advance(device, sid, t, z, 1)
    }

    /// Runs linear stages from `s` on over plain halves until an activation
    /// round goes out to B or the outputs do.
    fn advance(
        &mut self,
        device: &str,
        sid: SessionId,
        t: u64,
        mut z: Vec<I256>,
        mut s: usize,
    ) -> Result<Vec<Outgoing>> {
        let topology = Arc::clone(&self.cfg.topology);
        loop {
            match topology.stages.get(s) {
                None => return self.output(device, sid, t, &z),
                Some(Stage::Linear(_)) => {
                    z = self.linear_plain(s, &z)?;
                    s += 1;
                }
                Some(Stage::Activation(_)) => {
                    let (round, pending) = self.build_round(sid, t, s, &z)?;
                    let u = self.inputs.get(&(sid, t)).cloned().unwrap_or_default();
                    self.frames.insert(
                        (sid, t),
                        (device.to_string(), FrameState::InRound(pending, u)),
                    );
                    return Ok(vec![Outgoing::new(
                        Peer::ServerB,
                        Envelope::new(device, sid, t, Body::Round(round)),
                    )]);
                }
            }
        }
    }

    fn layer(&self, s: usize, inputs: usize) -> Result<&veil_model::LinearLayer> {
        let layer = self
            .cfg
            .plan
            .layer(s)
            .ok_or(ProtocolError::MissingLayer { stage: s })?;
        if inputs != layer.input_len() {
            return Err(ProtocolError::StageSize {
                stage: s,
                what: "inputs",
                expected: layer.input_len(),
                got: inputs,
            });
        }
        Ok(layer)
    }

    /// `W·[[x]]` of linear stage `s`, without its bias: the cipher half of
    /// its outputs, offline.
    fn linear_terms(&self, s: usize, x: &[P::Ct]) -> Result<Vec<P::Ct>> {
        let layer = self.layer(s, x.len())?;
        let backend = &self.backend;
        let prepared = backend.prepare(x)?;
        (0..layer.output_len())
            .into_par_iter()
            .map(|o| backend.dot(&prepared, &layer.row(o)))
            .collect()
    }

    /// `W·x + c` of linear stage `s` over plain halves: exact integers
    /// (B's masks keep them far below 2^255; an overflow is refused, never
    /// wrapped).
    fn linear_plain(&self, s: usize, x: &[I256]) -> Result<Vec<I256>> {
        let layer = self.layer(s, x.len())?;
        let overflow = || ProtocolError::Overflow {
            what: "a plain half of a linear stage overflows",
        };
        (0..layer.output_len())
            .into_par_iter()
            .map(|o| {
                let mut acc = I256::from(layer.bias(o));
                for (i, w) in layer.row(o) {
                    let v = x.get(i as usize).ok_or_else(overflow)?;
                    acc = v
                        .checked_mul(I256::from(w))
                        .and_then(|p| acc.checked_add(p))
                        .ok_or_else(overflow)?;
                }
                Ok(acc)
            })
            .collect()
    }

    fn output(
        &mut self,
        device: &str,
        sid: SessionId,
        t: u64,
        z: &[I256],
    ) -> Result<Vec<Outgoing>> {
        let topology = Arc::clone(&self.cfg.topology);
        let params = self.cfg.params.clone();
        let session = self.session(device, sid)?;
        if z.len() != topology.output_len {
            return Err(ProtocolError::Size {
                what: "outputs",
                expected: topology.output_len,
                got: z.len(),
            });
        }
        let masks = output_masks(&session.keys, t, &self.result);
        let residues = self.backend.residues();
        let masked: Vec<_> = z
            .iter()
            .zip(&masks)
            .map(|(v, m)| residues.add_plain(&residues.constant(*v), I256::from(*m)))
            .collect();
        let bits = output_bits(&topology) + params.sigma + 1;
        let plain = seal(residues, params.pack, masked, bits)?;
        let cipher = self
            .offline
            .get_mut(&(sid, t))
            .map(|o| std::mem::take(&mut o.output))
            .ok_or(ProtocolError::Inconsistent(
                "no offline halves for the output",
            ))?;
        let values = self.join(&cipher, &plain)?;
        self.frames.remove(&(sid, t));
        self.inputs.remove(&(sid, t));
        self.offline.remove(&(sid, t));
        let lookahead = self.lookahead();
        let request = self.sessions.get_mut(&sid).and_then(|session| {
            // The latest frame's window: an earlier frame finishing late
            // asks for nothing the latest one did not.
            let next = session.last_frame?.checked_add(1)?;
            let until = next.checked_add(lookahead)?;
            Self::lookahead_request(device, sid, session, next, until)
        });
        let output = Outgoing::new(
            Peer::ServerB,
            Envelope::new(
                device,
                sid,
                t,
                Body::Output(Output {
                    count: u32::try_from(z.len()).map_err(|_| ProtocolError::TooLarge {
                        what: "outputs",
                        limit: u64::from(u32::MAX),
                        got: z.len() as u64,
                    })?,
                    packed: params.pack,
                    values,
                }),
            ),
        );
        Ok(std::iter::once(output).chain(request).collect())
    }

    /// How many counters ahead of the latest frame A keeps masks asked for.
    fn lookahead(&self) -> u64 {
        self.cfg.params.mask_lookahead.max(1)
    }

    /// The request for the masks of the counters from `next` up to `until`
    /// not asked for yet, if any.
    fn lookahead_request(
        device: &str,
        sid: SessionId,
        session: &mut Session,
        next: u64,
        until: u64,
    ) -> Option<Outgoing> {
        if session.requested_until >= until {
            return None;
        }
        let from = session.requested_until.max(next);
        session.requested_until = until;
        Some(mask_request(device, sid, from, until - from))
    }
}

fn mask_request(device: &str, sid: SessionId, from: u64, count: u64) -> Outgoing {
    Outgoing::new(
        Peer::ServerB,
        Envelope::new(
            device,
            sid,
            from,
            Body::MaskRequest {
                count: u32::try_from(count).unwrap_or(u32::MAX),
            },
        ),
    )
}
