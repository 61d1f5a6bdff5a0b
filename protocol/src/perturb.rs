//! What server A draws to perturb one activation round before B sees it:
//! the order of real and dummy groups, each group's slots (window entries,
//! padding, the hidden zero), the masks that hide each slot's value and the
//! fresh blinding of every comparison B makes. Pure draws from a keyed
//! generator, no ciphertext arithmetic: `ServerA` turns the plan into
//! ciphertexts.
//!
//! # Why every draw is keyed
//! The generator is a function of A's secret and (sid, t, stage), so a
//! retried round is the first try bit for bit and B never gets a second,
//! independent view of one pre-activation.
//!
//! # Why comparisons instead of shared blinding
//! B needs the argmax of a pooling window. Blinding a whole window with one
//! β let B read the ratios `(z_i - z_j)/(z_k - z_l)`; every comparison
//! `β·(z_i - z_j) + γ` here has its own β and γ, so B learns the outcome and
//! a magnitude blurred over `beta_log_range` bits. With `hide_signs` a ReLU
//! group also holds a slot of value 0 at a keyed position: B's view is then
//! a total order on anonymous slots, which a uniform shuffle makes
//! independent of the values, so B learns neither signs nor whether an
//! output is 0.

use crate::messages::RoundMode;
use crate::params::Params;
use crate::prf::{Seed, SessionId};
use crate::round::RoundShape;
use crate::server_a::EntryRole;
use ethnum::I256;
use rand::rngs::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use veil_model::{RoundingSource, StageSamples};

/// A uniform value below `2^bits` (bits ≤ 254).
pub(crate) fn random_below_pow2(rng: &mut ChaCha20Rng, bits: u32) -> I256 {
    if bits == 0 {
        return I256::ZERO;
    }
    let lo = u128::from(rng.next_u64()) | (u128::from(rng.next_u64()) << 64);
    let hi = u128::from(rng.next_u64()) | (u128::from(rng.next_u64()) << 64);
    let value = ethnum::U256::from_words(hi, lo);
    let mask = if bits >= 256 {
        ethnum::U256::MAX
    } else {
        (ethnum::U256::ONE << bits) - 1
    };
    (value & mask).as_i256()
}

/// A uniform value in `(-2^bits, 2^bits)`.
fn random_signed(rng: &mut ChaCha20Rng, bits: u32) -> I256 {
    let magnitude = random_below_pow2(rng, bits);
    if rng.next_u32() & 1 == 1 {
        -magnitude
    } else {
        magnitude
    }
}

/// A uniform value in `[0, bound)` (`0 < bound < 2^254`), by rejection.
fn random_below(rng: &mut ChaCha20Rng, bound: I256) -> I256 {
    if bound <= I256::ONE {
        return I256::ZERO;
    }
    let bits = 256 - (bound - 1).leading_zeros();
    loop {
        let v = random_below_pow2(rng, bits);
        if v < bound {
            return v;
        }
    }
}

/// A uniform index below `n` (`n` ≥ 1), as every draw of the
/// perturbation has always made it (the same stream of values).
// The remainder is below `n`, a usize: the cast back loses nothing.
#[allow(clippy::cast_possible_truncation)]
fn index_below(rng: &mut ChaCha20Rng, n: usize) -> usize {
    (rng.next_u64() % n as u64) as usize
}

fn shuffle<T>(items: &mut [T], rng: &mut ChaCha20Rng) {
    for i in (1..items.len()).rev() {
        let j = index_below(rng, i + 1);
        items.swap(i, j);
    }
}

/// The generator of every perturbation of round `stage` of frame `t`.
fn perturbation_rng(key: &Seed, sid: SessionId, t: u64, stage: usize) -> ChaCha20Rng {
    let mut label = b"perturbation".to_vec();
    label.extend_from_slice(&sid.0);
    label.extend_from_slice(&t.to_le_bytes());
    label.extend_from_slice(&(stage as u64).to_le_bytes());
    ChaCha20Rng::from_seed(*key.derive(&label).as_bytes())
}

/// A value drawn from the stage's calibrated pre-activations: between two
/// neighbouring samples, so that B, who sees permute-mode values exactly,
/// never meets the same sample twice.
fn sample_value(sorted: &[i128], rng: &mut ChaCha20Rng) -> Option<I256> {
    let (first, rest) = sorted.split_first()?;
    if rest.is_empty() {
        return Some(I256::from(*first));
    }
    let i = index_below(rng, rest.len());
    let lo = I256::from(*sorted.get(i)?);
    let hi = I256::from(*sorted.get(i + 1)?);
    Some(lo + random_below(rng, hi - lo + 1))
}

fn clamp(v: I256, kappa: u32) -> I256 {
    let bound = (I256::ONE << kappa) - 1;
    v.clamp(-bound, bound)
}

/// A dummy group: in blind mode a whole calibration group (B sees only
/// comparisons, so its exact values never show, and a pooling window keeps
/// its realistic spread); in permute mode fresh values from the calibrated
/// distribution. Without calibration: signs at random and magnitudes
/// log-uniform below the bound, which B can tell apart from real entries
/// (documented).
fn dummy_group(
    mode: RoundMode,
    kappa: u32,
    k: usize,
    samples: Option<&StageSamples>,
    rng: &mut ChaCha20Rng,
) -> Vec<(I256, usize)> {
    let samples = samples.filter(|s| !s.groups.is_empty() && !s.sorted.is_empty());
    let out: Vec<I256> = match (samples, mode) {
        (Some(samples), RoundMode::Blind) => {
            let g = index_below(rng, samples.groups.len());
            samples
                .groups
                .get(g)
                .map(|group| group.iter().take(k).map(|v| I256::from(*v)).collect())
                .unwrap_or_default()
        }
        (Some(samples), RoundMode::Permute) => (0..k)
            .filter_map(|_| sample_value(&samples.sorted, rng))
            .collect(),
        (None, _) => (0..k)
            .map(|_| {
                let bits = 1 + rng.next_u32() % kappa.max(1);
                random_signed(rng, bits)
            })
            .collect(),
    };
    let mut out: Vec<(I256, usize)> = out
        .into_iter()
        .enumerate()
        .map(|(i, v)| (clamp(v, kappa), i))
        .collect();
    pad_with_copies(&mut out, k, rng);
    out
}

/// Fills a short group up to `k` with copies of its own entries, each
/// tagged with its original's tag: every entry once (in a random order)
/// before any twice. A copy never changes a maximum, and unlike a value
/// below every entry (`-2^κ`) its comparisons with other slots are those of
/// a real entry; its comparison with its original, an exact tie, is
/// replaced by a decoy (`decoy_difference`). Copying evenly matters: when
/// every entry has as many copies, an entry and its copies are
/// interchangeable in B's view, while copies of random picks crowd the
/// middle ranks (measured: balanced accuracy 0.57 for telling them apart).
fn pad_with_copies<T: Clone>(group: &mut Vec<(T, usize)>, k: usize, rng: &mut ChaCha20Rng) {
    let real = group.len();
    if real == 0 {
        return;
    }
    let mut order: Vec<usize> = (0..real).collect();
    shuffle(&mut order, rng);
    for pick in order.iter().cycle().take(k.saturating_sub(real)) {
        if let Some(copy) = group.get(*pick).cloned() {
            group.push(copy);
        }
    }
}

/// What A sends in place of the comparison of an entry with its own copy:
/// either order of a tie gives the same result, so any outcome is correct,
/// and the difference of two entries of a calibration window as short as
/// this one (edge windows differ from inner ones) makes it look like the
/// window's other comparisons, ties included as often as they occur.
fn decoy_difference(samples: Option<&StageSamples>, window: usize, rng: &mut ChaCha20Rng) -> I256 {
    let windows = samples.map_or(&[][..], |s| s.groups.as_slice());
    let alike: Vec<&Vec<i128>> = windows
        .iter()
        .filter(|g| g.len() == window.max(2))
        .collect();
    let pool: Vec<&Vec<i128>> = if alike.is_empty() {
        windows.iter().collect()
    } else {
        alike
    };
    if pool.is_empty() {
        return I256::ZERO;
    }
    let group = pool
        .get(index_below(rng, pool.len()))
        .map_or(&[][..], |g| g.as_slice());
    let mut pick = || {
        group
            .get(index_below(rng, group.len().max(1)))
            .copied()
            .unwrap_or(0)
    };
    let (a, b) = (pick(), pick());
    I256::from(a) - I256::from(b)
}

/// Where a slot's value comes from.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Source {
    /// The stage input at this index (a ciphertext).
    Real(u32),
    /// A value A encrypts itself: padding, a dummy, or the zero slot.
    Value(I256),
}

/// One slot of a group as sent: its value masked by `ρ1 = h1·2^w + r1`
/// (and `α_q·z + ρ2` for leaky ReLU), which B truncates and returns for the
/// slot it selects.
#[derive(Clone, Debug)]
pub(crate) struct Slot {
    pub source: Source,
    pub role: EntryRole,
    pub h1: I256,
    pub h2: I256,
    pub rho1: I256,
    pub rho2: I256,
}

impl Slot {
    /// Whether B's selection of this slot needs A's correction: every slot
    /// of a real group (padding copies an entry, so it can tie for the
    /// maximum and win); dummies are dropped.
    pub fn corrected(&self, real_group: bool) -> bool {
        real_group
    }
}

/// One blinded comparison: B receives `β·(left - right) + γ` with
/// `β = beta·2^shift` and `γ = gamma_hi·2^shift + gamma_lo` uniform in
/// `[0, β)`; the shift and `gamma_lo` are applied while packing.
#[derive(Clone, Debug)]
pub(crate) struct Comparison {
    pub left: Source,
    /// `None`: against an implicit 0 (signs not hidden).
    pub right: Option<Source>,
    pub beta: i64,
    pub shift: u32,
    pub gamma_hi: I256,
    pub gamma_lo: I256,
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum GroupRef {
    Real(usize),
    Dummy,
}

/// Everything A draws for one round, groups in the order B receives them.
pub(crate) struct RoundPlan {
    pub order: Vec<GroupRef>,
    /// `shape.slots` per group in blind mode, `group_size` in permute mode.
    pub slots: Vec<Vec<Slot>>,
    /// `shape.comparisons.len()` per group, flattened (blind only).
    pub comparisons: Vec<Comparison>,
}

/// What A knows of the round it perturbs.
pub(crate) struct PlanInput<'a> {
    pub params: &'a Params,
    pub shape: &'a RoundShape,
    pub stage: usize,
    pub weight_bits: u32,
    pub samples: Option<&'a StageSamples>,
    pub rounding: &'a dyn RoundingSource,
}

/// Draws round `stage` of frame `t`.
pub(crate) fn plan_round(key: &Seed, sid: SessionId, t: u64, input: &PlanInput<'_>) -> RoundPlan {
    let PlanInput {
        params,
        shape,
        stage: s,
        weight_bits: w,
        samples,
        rounding,
    } = *input;
    let mut rng = perturbation_rng(key, sid, t, s);
    let rng = &mut rng;
    let mode = shape.mode;
    let kappa = shape.kappa;
    let k = shape.group_size;
    let real = shape.groups.len();
    let mut order: Vec<GroupRef> = (0..real).map(GroupRef::Real).collect();
    order.extend(std::iter::repeat_n(GroupRef::Dummy, params.dummies(real)));
    shuffle(&mut order, rng);
    let h1_bits = (kappa + params.sigma).saturating_sub(w);
    let h2_bits = (kappa + shape.alpha_q_bits + params.sigma).saturating_sub(2 * w);
    let mut slots = Vec::with_capacity(order.len());
    let mut comparisons = Vec::with_capacity(order.len() * shape.comparisons.len());
    for group in &order {
        // ((source, role, r1, r2), origin) of every slot, before the
        // shuffle; a copy's origin is its original's.
        type Member = (Source, EntryRole, I256, I256);
        let mut members: Vec<(Member, usize)> = Vec::with_capacity(shape.slots);
        // Entries before padding, for the decoys of copies.
        let mut window_len = k;
        let (r1, r2) = match group {
            // Indexed by group, not entry: see `veil_model::activate`.
            GroupRef::Real(o) => (
                I256::from(rounding.offset(s, *o, 0, w)),
                if shape.alpha_bits.is_some() {
                    I256::from(rounding.offset(s, *o, 1, 2 * w))
                } else {
                    I256::ZERO
                },
            ),
            GroupRef::Dummy => (random_below_pow2(rng, w), random_below_pow2(rng, 2 * w)),
        };
        match group {
            GroupRef::Real(o) => {
                let window = shape.groups.get(*o).map(Vec::as_slice).unwrap_or(&[]);
                window_len = window.len();
                members.extend(
                    window
                        .iter()
                        .enumerate()
                        .map(|(e, idx)| ((Source::Real(*idx), EntryRole::Real(*idx), r1, r2), e)),
                );
                // Copies share the window's offset, so whichever of an
                // entry and its copy wins gives the same result.
                pad_with_copies(&mut members, k, rng);
                for (member, _) in members.iter_mut().skip(window.len()) {
                    member.1 = EntryRole::Padding;
                }
            }
            GroupRef::Dummy => {
                for (value, origin) in dummy_group(mode, kappa, k, samples, rng) {
                    let (d1, d2) = (random_below_pow2(rng, w), random_below_pow2(rng, 2 * w));
                    members.push(((Source::Value(value), EntryRole::Dummy, d1, d2), origin));
                }
            }
        }
        if shape.zero_slot {
            // ⌊(0 + r1)/2^w⌋ = 0: selecting it yields the ReLU's 0.
            members.push((
                (Source::Value(I256::ZERO), EntryRole::Zero, r1, r2),
                usize::MAX,
            ));
        }
        // Where the maximum, the padding and the zero sit is not B's to
        // know. Ties are harmless: equal maxima round with the group's
        // offset, and the zero slot ties only with a real 0.
        shuffle(&mut members, rng);
        let origins: Vec<usize> = members.iter().map(|(_, origin)| *origin).collect();
        let group_slots: Vec<Slot> = members
            .into_iter()
            .map(|((source, role, r1, r2), _)| {
                let h1 = random_below_pow2(rng, h1_bits);
                let h2 = random_below_pow2(rng, h2_bits);
                Slot {
                    source,
                    role,
                    h1,
                    h2,
                    rho1: (h1 << w) + r1,
                    rho2: (h2 << (2 * w)) + r2,
                }
            })
            .collect();
        if mode == RoundMode::Blind {
            for (i, j) in &shape.comparisons {
                let top = I256::ONE << (params.beta_bits - 1);
                // β' < 2^62 (checked with the parameters).
                let beta = (random_below_pow2(rng, params.beta_bits - 1) | top).as_i64();
                let shift = rng.next_u32() % params.beta_log_range.max(1);
                let gamma = random_below(rng, I256::from(beta) << shift);
                let gamma_hi = gamma >> shift;
                let source = |index: usize| {
                    group_slots
                        .get(index)
                        .map_or(Source::Value(I256::ZERO), |slot| slot.source)
                };
                let copies = j.is_some_and(|j| origins.get(*i) == origins.get(j));
                let (left, right) = if copies {
                    let decoy = decoy_difference(samples, window_len, rng);
                    (Source::Value(decoy), Some(Source::Value(I256::ZERO)))
                } else {
                    (source(*i), j.map(source))
                };
                comparisons.push(Comparison {
                    left,
                    right,
                    beta,
                    shift,
                    gamma_hi,
                    gamma_lo: gamma - (gamma_hi << shift),
                });
            }
        }
        slots.push(group_slots);
    }
    RoundPlan {
        order,
        slots,
        comparisons,
    }
}
