//! The rounds A sends B and what it does with B's replies: building and
//! packing a round from its keyed plan, the offline cipher halves of the
//! corrections, and the online plain halves from B's masked answers.

use super::{Corrections, Entry, FrameState, Half, Pending, RoundTruth, ServerA, frame_rounding};
use crate::backend::PublicOps;
use crate::error::{ProtocolError, Result};
use crate::messages::{Outgoing, Round, RoundMode};
use crate::perturb::{GroupRef, PlanInput, RoundPlan, Slot, Source, plan_round};
use crate::prf::SessionId;
use crate::reply::decode_item;
use crate::round::{RoundShape, round_mode};
use ethnum::I256;
use rayon::prelude::*;
use std::sync::Arc;
use veil_model::{ActivationKind, ActivationMode, Stage};

impl<P: PublicOps> ServerA<P> {
    pub(super) fn build_round(
        &mut self,
        sid: SessionId,
        t: u64,
        s: usize,
        z: &[P::Ct],
    ) -> Result<(Round, Pending)> {
        let params = self.cfg.params.clone();
        let topology = Arc::clone(&self.cfg.topology);
        let mode = round_mode(
            self.modes
                .get(s)
                .copied()
                .unwrap_or(ActivationMode::Permute),
        );
        let shape = RoundShape::new(&topology, &params, s, mode)?;
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
        let backend = &self.backend;
        let input = |idx: u32| -> Result<&P::Ct> {
            z.get(idx as usize).ok_or(ProtocolError::Index {
                what: "round entry",
                index: idx as usize,
                len: z.len(),
            })
        };
        let all_slots: Vec<&Slot> = plan.slots.iter().flatten().collect();
        // The sealed values, masked values and masked α-values of the round.
        let (values, masked, masked_alpha) = match mode {
            RoundMode::Permute => {
                let values = all_slots
                    .par_iter()
                    .map(|slot| match slot.source {
                        Source::Real(idx) => input(idx).cloned(),
                        Source::Value(v) => Ok(backend.constant(v)),
                    })
                    .collect::<Result<Vec<_>>>()?;
                let zeros = vec![0; values.len()];
                let offsets = vec![I256::ZERO; values.len()];
                (
                    self.seal_shifted(&values, &zeros, &offsets, shape.value_bits)?,
                    Vec::new(),
                    Vec::new(),
                )
            }
            RoundMode::Blind => {
                // Negative weights of the comparisons share one batch
                // inversion of the stage's inputs.
                let prepared = backend.prepare(z)?;
                let values = plan
                    .comparisons
                    .par_iter()
                    .map(|c| -> Result<P::Ct> {
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
                    .map(|slot| -> Result<Masked<P::Ct>> {
                        Ok(match slot.source {
                            Source::Real(idx) => {
                                let x = input(idx)?;
                                (
                                    backend.add_plain(x, slot.rho1),
                                    alpha_q.map(|a| {
                                        backend.add_plain(&backend.scale(x, a), slot.rho2)
                                    }),
                                )
                            }
                            Source::Value(v) => (
                                backend.constant(v + slot.rho1),
                                alpha_q.map(|a| backend.constant(a * v + slot.rho2)),
                            ),
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                let (masked, masked_alpha): (Vec<P::Ct>, Vec<Option<P::Ct>>) =
                    masked.into_iter().unzip();
                let masked_alpha: Vec<P::Ct> = masked_alpha.into_iter().flatten().collect();
                let shifts: Vec<u32> = plan.comparisons.iter().map(|c| c.shift).collect();
                let offsets: Vec<I256> = plan.comparisons.iter().map(|c| c.gamma_lo).collect();
                (
                    self.seal_shifted(&values, &shifts, &offsets, shape.value_bits)?,
                    self.seal(&masked, shape.masked_bits)?,
                    match shape.alpha_bits {
                        Some(bits) => self.seal(&masked_alpha, bits)?,
                        None => Vec::new(),
                    },
                )
            }
        };
        let round = Round {
            stage: narrow("stage index", s, u16::MAX.into())?,
            mode,
            groups: narrow("groups in a round", plan.order.len(), u32::MAX.into())?,
            group_size: narrow("entries in a group", shape.group_size, u16::MAX.into())?,
            packed: params.pack,
            values,
            masked,
            masked_alpha,
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

    /// The cipher halves of frame `t`'s corrections, from B's `[[-μ]]`:
    /// per real group `[[-μ_X]] · Π_e [[-μ_e]]^(c_e)`, with `c_e = H_e`
    /// (leaky ReLU: `H_e - H'_e`) over the group's slots. The `H` are
    /// keyed, not data, so this is the online `[[-s]]^H` work done ahead.
    pub(super) fn prepare_corrections(
        &self,
        sid: SessionId,
        t: u64,
        mu: &[P::Ct],
    ) -> Result<Corrections<P::Ct>> {
        let backend = &self.backend;
        let mut offset = 0;
        let mut out = Vec::with_capacity(self.plans.len());
        for stage in &self.plans {
            let plan = self.round_plan(sid, t, stage.stage, &stage.shape);
            let per_group = stage.shape.replies_per_group();
            let leaky = stage.shape.alpha_bits.is_some();
            let mine = mu
                .get(offset..offset + stage.items())
                .ok_or(ProtocolError::Index {
                    what: "reply mask",
                    index: offset + stage.items(),
                    len: mu.len(),
                })?;
            offset += stage.items();
            let groups = plan
                .order
                .par_iter()
                .zip(plan.slots.par_iter())
                .enumerate()
                .map(|(pos, (group, slots))| -> Result<Option<P::Ct>> {
                    if matches!(group, GroupRef::Dummy) {
                        return Ok(None);
                    }
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
                    Ok(Some(acc))
                })
                .collect::<Result<Vec<_>>>()?;
            let next = stage.stage + 1;
            out.push(match self.cfg.topology.stages.get(next) {
                Some(Stage::Linear(_)) => {
                    let mut by_output: Vec<Option<P::Ct>> = vec![None; stage.shape.groups.len()];
                    for (group, cipher) in plan.order.iter().zip(groups) {
                        if let GroupRef::Real(o) = group
                            && let Some(slot) = by_output.get_mut(*o)
                        {
                            *slot = cipher;
                        }
                    }
                    let x = by_output
                        .into_iter()
                        .collect::<Option<Vec<_>>>()
                        .ok_or(ProtocolError::Inconsistent("a real group has no mask"))?;
                    Half::Linear(self.linear_terms(next, &x)?)
                }
                _ => Half::Groups(groups),
            });
        }
        Ok(out)
    }

    /// Packs (when enabled) and re-randomizes ciphertexts bound for B, so
    /// that B cannot link them to anything it produced.
    pub(super) fn seal(&self, values: &[P::Ct], bits: u32) -> Result<Vec<Vec<u8>>> {
        let backend = &self.backend;
        if values.is_empty() {
            return Ok(Vec::new());
        }
        if self.cfg.params.pack {
            let slots = backend.slots(bits)?;
            values
                .par_chunks(slots.max(1))
                .map(|chunk| Ok(backend.encode(&backend.rerandomize(&backend.pack(bits, chunk)?))))
                .collect()
        } else {
            Ok(values
                .par_iter()
                .map(|v| backend.encode(&backend.rerandomize(v)))
                .collect())
        }
    }

    /// [`ServerA::seal`] for values still to be multiplied by `2^shift`
    /// and then offset.
    pub(super) fn seal_shifted(
        &self,
        values: &[P::Ct],
        shifts: &[u32],
        offsets: &[I256],
        bits: u32,
    ) -> Result<Vec<Vec<u8>>> {
        let backend = &self.backend;
        if values.is_empty() {
            return Ok(Vec::new());
        }
        if self.cfg.params.pack {
            let slots = backend.slots(bits)?.max(1);
            values
                .par_chunks(slots)
                .zip(shifts.par_chunks(slots))
                .zip(offsets.par_chunks(slots))
                .map(|((chunk, shifts), offsets)| {
                    let packed = backend.pack_shifted(bits, chunk, shifts, offsets)?;
                    Ok(backend.encode(&backend.rerandomize(&packed)))
                })
                .collect()
        } else {
            Ok(values
                .par_iter()
                .zip(shifts.par_iter())
                .zip(offsets.par_iter())
                .map(|((v, e), o)| {
                    let shifted = backend.add_plain(&backend.shift(v, *e), *o);
                    backend.encode(&backend.rerandomize(&shifted))
                })
                .collect())
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
        let index = self
            .plans
            .iter()
            .position(|p| p.stage == pending.stage)
            .ok_or(ProtocolError::Inconsistent(
                "a round of no activation stage",
            ))?;
        let Some(halves) = self
            .corrections
            .get_mut(&key)
            .and_then(|c| c.get_mut(index))
            .map(|h| std::mem::replace(h, Half::Groups(Vec::new())))
        else {
            return Err(ProtocolError::Inconsistent(
                "no offline corrections for this round",
            ));
        };
        let Some((_, FrameState::InRound(pending, _))) = self.frames.remove(&key) else {
            return Err(ProtocolError::Inconsistent("round state vanished"));
        };
        let leaky = pending.shape.alpha_bits.is_some();
        let backend = &self.backend;
        let overflow = || ProtocolError::Overflow {
            what: "a masked reply beyond its bound",
        };
        let plains: Vec<(usize, usize, I256)> = pending
            .order
            .par_iter()
            .enumerate()
            .filter_map(|(pos, group)| match group {
                GroupRef::Real(o) => Some((pos, *o)),
                GroupRef::Dummy => None,
            })
            .map(|(pos, o)| -> Result<(usize, usize, I256)> {
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
                Ok((pos, o, plain))
            })
            .collect::<Result<Vec<_>>>()?;
        let missing = || ProtocolError::Inconsistent("a real group has no answer");
        match halves {
            Half::Groups(halves) => {
                let mut next: Vec<Option<P::Ct>> = vec![None; pending.shape.groups.len()];
                for (pos, o, plain) in plains {
                    let cipher = halves
                        .get(pos)
                        .and_then(Option::as_ref)
                        .ok_or_else(missing)?;
                    if let Some(slot) = next.get_mut(o) {
                        *slot = Some(backend.add_plain(cipher, plain));
                    }
                }
                let next = next
                    .into_iter()
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(missing)?;
                self.advance(device, sid, t, next, pending.stage + 1)
            }
            Half::Linear(terms) => {
                let mut x: Vec<Option<I256>> = vec![None; pending.shape.groups.len()];
                for (_, o, plain) in plains {
                    if let Some(slot) = x.get_mut(o) {
                        *slot = Some(plain);
                    }
                }
                let x = x
                    .into_iter()
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(missing)?;
                let s = pending.stage + 1;
                let plain = self.linear_plain(s, &x)?;
                if plain.len() != terms.len() {
                    return Err(ProtocolError::StageSize {
                        stage: s,
                        what: "plain halves",
                        expected: terms.len(),
                        got: plain.len(),
                    });
                }
                let backend = &self.backend;
                let z: Vec<P::Ct> = terms
                    .par_iter()
                    .zip(plain.par_iter())
                    .map(|(c, p)| backend.add_plain(c, *p))
                    .collect();
                self.advance(device, sid, t, z, s + 1)
            }
        }
    }
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
