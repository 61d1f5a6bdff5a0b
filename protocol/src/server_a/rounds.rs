//! The rounds A sends B and what it does with B's replies: building and
//! packing a round from its keyed plan, the offline cipher halves of the
//! corrections, and the online plain halves from B's masked answers.

use super::halves::CipherHalves;
use super::{Entry, FrameState, Offline, Pending, RoundTruth, ServerA, frame_rounding};
use crate::backend::{PackChunk, PublicOps};
use crate::error::{ProtocolError, Result};
use crate::messages::{Outgoing, Round, RoundMode};
use crate::params::output_bits;
use crate::perturb::{GroupRef, PlanInput, RoundPlan, Slot, Source, plan_round};
use crate::prf::SessionId;
use crate::reply::{StagePlan, decode_item};
use crate::round::RoundShape;
use ethnum::I256;
use rayon::prelude::*;
use std::sync::Arc;
use veil_model::{ActivationKind, Stage};

impl<P: PublicOps> ServerA<P> {
    /// Round `s` of frame `t` from the plain halves `z` of its inputs:
    /// the plain half of every list, joined with the cipher halves
    /// prepared offline (one multiplication per ciphertext).
    pub(super) fn build_round(
        &mut self,
        sid: SessionId,
        t: u64,
        s: usize,
        z: &[I256],
    ) -> Result<(Round, Pending)> {
        let params = self.cfg.params.clone();
        let index = self.stage_index(s)?;
        let shape = self.plans[index].shape.clone();
        let mode = shape.mode;
        let plan = self.round_plan(sid, t, s, &shape);
        if let Some(truth) = self.truth.as_mut() {
            truth.push(RoundTruth {
                sid,
                t,
                stage: s,
                mode,
                groups: plan
                    .slots
                    .iter()
                    .map(|slots| slots.iter().map(|slot| slot.role).collect())
                    .collect(),
            });
        }
        let residues = self.backend.residues();
        let z: Vec<_> = z.iter().map(|v| residues.constant(*v)).collect();
        let plain = round_lists(residues, &shape, &plan, &z)?.seal(residues, params.pack)?;
        let cipher = self
            .offline
            .get_mut(&(sid, t))
            .and_then(|o| o.rounds.get_mut(index))
            .map(std::mem::take)
            .ok_or(ProtocolError::Inconsistent(
                "no offline halves for this round",
            ))?;
        let round = Round {
            stage: narrow("stage index", s, u16::MAX.into())?,
            mode,
            groups: narrow("groups in a round", plan.order.len(), u32::MAX.into())?,
            group_size: narrow("entries in a group", shape.group_size, u16::MAX.into())?,
            packed: params.pack,
            values: self.join(&cipher.values, &plain.values)?,
            masked: self.join(&cipher.masked, &plain.masked)?,
            masked_alpha: self.join(&cipher.masked_alpha, &plain.masked_alpha)?,
        };
        let entries = plan
            .order
            .iter()
            .zip(&plan.slots)
            .map(|(group, slots)| {
                let real = matches!(group, GroupRef::Real(_));
                slots
                    .iter()
                    .map(|slot| Entry {
                        corrected: slot.corrected(real),
                        h1: slot.h1,
                        h2: slot.h2,
                    })
                    .collect()
            })
            .collect();
        Ok((
            round,
            Pending {
                stage: s,
                shape,
                order: plan.order,
                entries,
            },
        ))
    }

    /// The wire bytes of each cipher half times its plain half.
    pub(super) fn join(
        &self,
        cipher: &[P::Ct],
        plain: &[<P::Residues as PublicOps>::Ct],
    ) -> Result<Vec<Vec<u8>>> {
        if cipher.len() != plain.len() {
            return Err(ProtocolError::Size {
                what: "cipher halves",
                expected: plain.len(),
                got: cipher.len(),
            });
        }
        let backend = &self.backend;
        cipher
            .par_iter()
            .zip(plain.par_iter())
            .map(|(c, p)| Ok(backend.encode(&backend.join(c, p)?)))
            .collect()
    }

    /// The position of activation stage `s` among the model's rounds.
    pub(super) fn stage_index(&self, s: usize) -> Result<usize> {
        self.plans
            .iter()
            .position(|p| p.stage == s)
            .ok_or(ProtocolError::Inconsistent(
                "a round of no activation stage",
            ))
    }

    /// What A draws for round `s` of frame `t`: keyed, so the offline
    /// step and the online round draw the same.
    pub(super) fn round_plan(
        &self,
        sid: SessionId,
        t: u64,
        s: usize,
        shape: &RoundShape,
    ) -> RoundPlan {
        let rounding = frame_rounding(&self.cfg.rounding_key, sid, t);
        plan_round(
            &self.cfg.rounding_key,
            sid,
            t,
            &PlanInput {
                params: &self.cfg.params,
                shape,
                stage: s,
                weight_bits: self.cfg.topology.stage_fixed(s).weight_bits,
                samples: self.cfg.plan.samples(s),
                rounding: &rounding,
            },
        )
    }

    /// The cipher halves of activation stage `stage`'s outputs for frame
    /// `t`, by output, from B's `[[-μ]]` of the stage (`mine`): per real
    /// group `[[-μ_X]] · Π_e [[-μ_e]]^(c_e)`, with `c_e = H_e` (leaky
    /// ReLU: `H_e - H'_e`) over the group's slots. The `H` are keyed, not
    /// data, so this is the online `[[-s]]^H` work done ahead.
    pub(super) fn stage_halves(
        &self,
        stage: &StagePlan,
        plan: &RoundPlan,
        mine: &[P::Ct],
    ) -> Result<Vec<P::Ct>> {
        let backend = &self.backend;
        let per_group = stage.shape.replies_per_group();
        let leaky = stage.shape.alpha_bits.is_some();
        let groups = plan
            .order
            .par_iter()
            .zip(plan.slots.par_iter())
            .enumerate()
            .map(|(pos, (group, slots))| -> Result<Option<(usize, P::Ct)>> {
                let GroupRef::Real(o) = group else {
                    return Ok(None);
                };
                let item = |i: usize| {
                    mine.get(pos * per_group + i).ok_or(ProtocolError::Index {
                        what: "reply mask of a group",
                        index: pos * per_group + i,
                        len: mine.len(),
                    })
                };
                let mut acc = item(0)?.clone();
                if stage.shape.mode == RoundMode::Blind {
                    for (e, slot) in slots.iter().enumerate() {
                        if !slot.corrected(true) {
                            continue;
                        }
                        let c = if leaky { slot.h1 - slot.h2 } else { slot.h1 };
                        acc = backend.add(&acc, &backend.scale(item(1 + e)?, c));
                    }
                }
                Ok(Some((*o, acc)))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut by_output: Vec<Option<P::Ct>> = vec![None; stage.shape.groups.len()];
        for (o, cipher) in groups.into_iter().flatten() {
            if let Some(slot) = by_output.get_mut(o) {
                *slot = Some(cipher);
            }
        }
        by_output
            .into_iter()
            .collect::<Option<Vec<_>>>()
            .ok_or(ProtocolError::Inconsistent("a real group has no mask"))
    }

    /// Every ciphertext frame `t` will send B, as cipher halves: the
    /// stages run over `ready` (`W·[[-b]]`, the first layer's) with every
    /// constant dropped, each activation's outputs continuing from B's
    /// `[[-μ]]`, linear stages as `W·C`, and each round's lists and the
    /// output packed and re-randomized as they will travel.
    pub(super) fn prepare_offline(
        &self,
        sid: SessionId,
        t: u64,
        ready: Vec<P::Ct>,
        mu: &[P::Ct],
    ) -> Result<Offline<P::Ct>> {
        let topology = Arc::clone(&self.cfg.topology);
        let pack = self.cfg.params.pack;
        let halves = CipherHalves(&self.backend);
        let mut rounds = Vec::with_capacity(self.plans.len());
        let mut cur = ready;
        let mut offset = 0;
        let mut s = 1;
        loop {
            match topology.stages.get(s) {
                None => {
                    // Every list of the frame sealed at once: a Pima frame's
                    // seven ciphertexts fill one batch of the multi-buffer
                    // kernel, where a round's two or three ran one by one.
                    let bits = output_bits(&topology) + self.cfg.params.sigma + 1;
                    let output = ToSeal::plain(cur, bits);
                    let mut lists: Vec<&ToSeal<P::Ct>> = vec![&output];
                    for round in &rounds {
                        lists.extend(RoundToSeal::lists(round));
                    }
                    let mut sealed = seal_lists(&halves, pack, &lists)?.into_iter();
                    let output = sealed.next().unwrap_or_default();
                    let rounds = rounds
                        .iter()
                        .map(|round| round.take_sealed(&mut sealed))
                        .collect();
                    return Ok(Offline { rounds, output });
                }
                Some(Stage::Linear(_)) => cur = self.linear_terms(s, &cur)?,
                Some(Stage::Activation(_)) => {
                    let stage = self
                        .plans
                        .get(rounds.len())
                        .filter(|p| p.stage == s)
                        .ok_or(ProtocolError::Inconsistent(
                            "a round of no activation stage",
                        ))?;
                    let plan = self.round_plan(sid, t, s, &stage.shape);
                    rounds.push(round_lists(&halves, &stage.shape, &plan, &cur)?);
                    let mine =
                        mu.get(offset..offset + stage.items())
                            .ok_or(ProtocolError::Index {
                                what: "reply mask",
                                index: offset + stage.items(),
                                len: mu.len(),
                            })?;
                    offset += stage.items();
                    cur = self.stage_halves(stage, &plan, mine)?;
                }
            }
            s += 1;
        }
    }

    pub(super) fn on_reply(
        &mut self,
        device: &str,
        sid: SessionId,
        t: u64,
        stage: u16,
        items: &[Vec<u8>],
    ) -> Result<Vec<Outgoing>> {
        self.session(device, sid)?;
        let key = (sid, t);
        let pending = match self.frames.get(&key) {
            Some((owner, FrameState::InRound(p, _))) if owner == device => p,
            _ => {
                return Err(ProtocolError::NoRoundWaiting(t));
            }
        };
        if usize::from(stage) != pending.stage {
            return Err(ProtocolError::StageOrder {
                what: "reply",
                frame: t,
                expected: pending.stage,
                got: usize::from(stage),
            });
        }
        let per_group = pending.shape.replies_per_group();
        let expected = pending.order.len() * per_group;
        if items.len() != expected {
            return Err(ProtocolError::Size {
                what: "reply items",
                expected,
                got: items.len(),
            });
        }
        let decoded = items
            .iter()
            .map(|b| decode_item(b))
            .collect::<Result<Vec<_>>>()?;
        let Some((_, FrameState::InRound(pending, _))) = self.frames.remove(&key) else {
            return Err(ProtocolError::Inconsistent("round state vanished"));
        };
        let leaky = pending.shape.alpha_bits.is_some();
        let overflow = || ProtocolError::Overflow {
            what: "a masked reply beyond its bound",
        };
        let plains: Vec<(usize, I256)> = pending
            .order
            .par_iter()
            .enumerate()
            .filter_map(|(pos, group)| match group {
                GroupRef::Real(o) => Some((pos, *o)),
                GroupRef::Dummy => None,
            })
            .map(|(pos, o)| -> Result<(usize, I256)> {
                let base = pos * per_group;
                let item = |i: usize| decoded.get(base + i).copied().ok_or_else(overflow);
                // The plain half: B's masked answers through the same
                // correction as the cipher half took offline.
                let mut plain = item(0)?;
                if pending.shape.mode == RoundMode::Blind {
                    for (e, entry) in pending.entries[pos].iter().enumerate() {
                        if !entry.corrected {
                            continue;
                        }
                        let minus_s = item(1 + e)?;
                        // s·(q1 - H1) + (1-s)·(q2 - H2) = X - s·(H1 - H2) - H2.
                        let term = if leaky {
                            minus_s
                                .checked_mul(entry.h1 - entry.h2)
                                .and_then(|v| v.checked_sub(entry.h2))
                        } else {
                            minus_s.checked_mul(entry.h1)
                        };
                        plain = term
                            .and_then(|v| plain.checked_add(v))
                            .ok_or_else(overflow)?;
                    }
                }
                Ok((o, plain))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut next: Vec<Option<I256>> = vec![None; pending.shape.groups.len()];
        for (o, plain) in plains {
            if let Some(slot) = next.get_mut(o) {
                *slot = Some(plain);
            }
        }
        let next = next
            .into_iter()
            .collect::<Option<Vec<_>>>()
            .ok_or(ProtocolError::Inconsistent("a real group has no answer"))?;
        self.advance(device, sid, t, next, pending.stage + 1)
    }
}

/// What a round sends B, before encoding: its comparisons (or sealed
/// values), masked values and masked α-values, packed and sealed.
pub(super) struct Lists<C> {
    values: Vec<C>,
    masked: Vec<C>,
    masked_alpha: Vec<C>,
}

impl<C> Default for Lists<C> {
    fn default() -> Self {
        Lists {
            values: Vec::new(),
            masked: Vec::new(),
            masked_alpha: Vec::new(),
        }
    }
}

/// A round's lists over `z`, the stage's inputs, on `backend`: run once
/// offline over cipher halves and once online over plain halves.
fn round_lists<B: PublicOps>(
    backend: &B,
    shape: &RoundShape,
    plan: &RoundPlan,
    z: &[B::Ct],
) -> Result<RoundToSeal<B::Ct>> {
    let input = |idx: u32| -> Result<&B::Ct> {
        z.get(idx as usize).ok_or(ProtocolError::Index {
            what: "round entry",
            index: idx as usize,
            len: z.len(),
        })
    };
    let all_slots: Vec<&Slot> = plan.slots.iter().flatten().collect();
    match shape.mode {
        RoundMode::Permute => {
            let values = all_slots
                .par_iter()
                .map(|slot| match slot.source {
                    Source::Real(idx) => input(idx).cloned(),
                    Source::Value(v) => Ok(backend.constant(v)),
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(RoundToSeal {
                values: ToSeal::plain(values, shape.value_bits),
                masked: ToSeal::plain(Vec::new(), shape.masked_bits),
                masked_alpha: None,
            })
        }
        RoundMode::Blind => {
            // Negative weights of the comparisons share one batch
            // inversion of the stage's inputs.
            let prepared = backend.prepare(z)?;
            let values = plan
                .comparisons
                .par_iter()
                .map(|c| -> Result<B::Ct> {
                    let beta = I256::from(c.beta);
                    let mut terms: Vec<(u32, i64)> = Vec::with_capacity(2);
                    let mut constant = c.gamma_hi;
                    match c.left {
                        Source::Real(idx) => terms.push((idx, c.beta)),
                        Source::Value(v) => constant += beta * v,
                    }
                    match c.right {
                        Some(Source::Real(idx)) => terms.push((idx, -c.beta)),
                        Some(Source::Value(v)) => constant -= beta * v,
                        None => {}
                    }
                    Ok(if terms.is_empty() {
                        backend.constant(constant)
                    } else {
                        backend.add_plain(&backend.dot(&prepared, &terms)?, constant)
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let alpha_q = match shape.kind {
                ActivationKind::LeakyRelu { alpha_q } => Some(I256::from(alpha_q)),
                _ => None,
            };
            type Masked<C> = (C, Option<C>);
            let masked = all_slots
                .par_iter()
                .map(|slot| -> Result<Masked<B::Ct>> {
                    Ok(match slot.source {
                        Source::Real(idx) => {
                            let x = input(idx)?;
                            (
                                backend.add_plain(x, slot.rho1),
                                alpha_q.map(|a| backend.add_plain(&backend.scale(x, a), slot.rho2)),
                            )
                        }
                        Source::Value(v) => (
                            backend.constant(v + slot.rho1),
                            alpha_q.map(|a| backend.constant(a * v + slot.rho2)),
                        ),
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let (masked, masked_alpha): (Vec<B::Ct>, Vec<Option<B::Ct>>) =
                masked.into_iter().unzip();
            let masked_alpha: Vec<B::Ct> = masked_alpha.into_iter().flatten().collect();
            let shifts: Vec<u32> = plan.comparisons.iter().map(|c| c.shift).collect();
            let offsets: Vec<I256> = plan.comparisons.iter().map(|c| c.gamma_lo).collect();
            Ok(RoundToSeal {
                values: ToSeal {
                    values,
                    shifts,
                    offsets,
                    bits: shape.value_bits,
                },
                masked: ToSeal::plain(masked, shape.masked_bits),
                masked_alpha: shape
                    .alpha_bits
                    .map(|bits| ToSeal::plain(masked_alpha, bits)),
            })
        }
    }
}

/// One list bound for B before packing and re-randomization: values,
/// each one's shift and offset (both empty: none), and the value bound.
pub(super) struct ToSeal<C> {
    values: Vec<C>,
    shifts: Vec<u32>,
    offsets: Vec<I256>,
    bits: u32,
}

impl<C> ToSeal<C> {
    fn plain(values: Vec<C>, bits: u32) -> ToSeal<C> {
        ToSeal {
            values,
            shifts: Vec::new(),
            offsets: Vec::new(),
            bits,
        }
    }
}

/// A round's lists before sealing.
pub(super) struct RoundToSeal<C> {
    values: ToSeal<C>,
    masked: ToSeal<C>,
    masked_alpha: Option<ToSeal<C>>,
}

impl<C> RoundToSeal<C> {
    /// Its lists in the order [`RoundToSeal::take_sealed`] reads them.
    fn lists(&self) -> impl Iterator<Item = &ToSeal<C>> {
        [
            Some(&self.values),
            Some(&self.masked),
            self.masked_alpha.as_ref(),
        ]
        .into_iter()
        .flatten()
    }

    /// The round's sealed lists from `sealed`, which yields one per list
    /// of [`RoundToSeal::lists`].
    fn take_sealed(&self, sealed: &mut impl Iterator<Item = Vec<C>>) -> Lists<C> {
        let values = sealed.next().unwrap_or_default();
        let masked = sealed.next().unwrap_or_default();
        let masked_alpha = match self.masked_alpha {
            Some(_) => sealed.next().unwrap_or_default(),
            None => Vec::new(),
        };
        Lists {
            values,
            masked,
            masked_alpha,
        }
    }

    /// The round's lists sealed on `backend`.
    fn seal<B: PublicOps<Ct = C>>(self, backend: &B, pack: bool) -> Result<Lists<C>> {
        let lists: Vec<&ToSeal<C>> = self.lists().collect();
        let mut sealed = seal_lists(backend, pack, &lists)?.into_iter();
        Ok(self.take_sealed(&mut sealed))
    }
}

/// Packs (when `pack`) and re-randomizes ciphertexts bound for B, so that
/// B cannot link them to anything it produced.
pub(super) fn seal<B: PublicOps>(
    backend: &B,
    pack: bool,
    values: Vec<B::Ct>,
    bits: u32,
) -> Result<Vec<B::Ct>> {
    let list = ToSeal::plain(values, bits);
    Ok(seal_lists(backend, pack, &[&list])?
        .into_iter()
        .next()
        .unwrap_or_default())
}

/// [`seal`] of several lists in one call to the backend, which can then
/// fill its batches across them; one sealed list per list, in order.
fn seal_lists<B: PublicOps>(
    backend: &B,
    pack: bool,
    lists: &[&ToSeal<B::Ct>],
) -> Result<Vec<Vec<B::Ct>>> {
    if !pack {
        return Ok(lists
            .iter()
            .map(|list| {
                if list.shifts.is_empty() {
                    list.values
                        .par_iter()
                        .map(|v| backend.rerandomize(v))
                        .collect()
                } else {
                    list.values
                        .par_iter()
                        .zip(list.shifts.par_iter())
                        .zip(list.offsets.par_iter())
                        .map(|((v, e), o)| {
                            backend.rerandomize(&backend.add_plain(&backend.shift(v, *e), *o))
                        })
                        .collect()
                }
            })
            .collect());
    }
    let mut chunks: Vec<PackChunk<'_, B::Ct>> = Vec::new();
    let mut counts = Vec::with_capacity(lists.len());
    for list in lists {
        let slots = backend.slots(list.bits)?.max(1);
        let count = list.values.len().div_ceil(slots);
        chunks.extend((0..count).map(|i| PackChunk {
            value_bits: list.bits,
            values: part(&list.values, i, slots),
            shifts: part(&list.shifts, i, slots),
            offsets: part(&list.offsets, i, slots),
        }));
        counts.push(count);
    }
    let mut sealed = backend.seal_packed(&chunks)?.into_iter();
    Ok(counts
        .into_iter()
        .map(|count| sealed.by_ref().take(count).collect())
        .collect())
}

/// Chunk `i` of `list` cut in chunks of `slots` (empty past its end).
fn part<T>(list: &[T], i: usize, slots: usize) -> &[T] {
    list.get(i * slots..((i + 1) * slots).min(list.len()))
        .unwrap_or(&[])
}

/// `value` in the narrower integer a round's header carries it in; the
/// model file sets it, so it is checked, not truncated.
fn narrow<T: TryFrom<usize>>(what: &'static str, value: usize, limit: u64) -> Result<T> {
    T::try_from(value).map_err(|_| ProtocolError::TooLarge {
        what,
        limit,
        got: value as u64,
    })
}
