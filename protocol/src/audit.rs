//! What server B actually decrypts from a round, computed with B's own
//! backend exactly as B does: the ground on which `veil audit` and the
//! leakage tests score what a curious B could infer.

use crate::backend::SecretOps;
use crate::codec::{low_mask, unpack_fields};
use crate::error::{ProtocolError, Result};
use crate::layout::{FrameLayout, ResultLayout, input_masks};
use crate::messages::{Frame, Output, Round, RoundMode};
use crate::params::{Params, output_bits};
use crate::prf::MaskKeys;
use crate::round::{RoundShape, ciphertext_count};
use ethnum::I256;
use veil_model::Topology;

/// One round as B sees it after decryption, entries in received order.
#[derive(Clone, Debug)]
pub struct RoundView {
    /// The activation stage.
    pub stage: usize,
    /// How B evaluates it.
    pub mode: RoundMode,
    /// Groups received, dummies included.
    pub groups: usize,
    /// Window entries per group (padded).
    pub group_size: usize,
    /// Blind mode: slots per group (the window, plus the zero slot when
    /// signs are hidden); `masked` holds one entry per slot.
    pub slots: usize,
    /// Blind mode: what each of a group's values compares, slot `i`
    /// against slot `j` or against an implicit 0 (`None`).
    pub comparisons: Vec<(usize, Option<usize>)>,
    /// Blind: `β·(z_i - z_j) + γ`, one per comparison; permute: `z`, one
    /// per window entry. Grouped by `values_per_group`.
    pub values: Vec<I256>,
    /// Entries of `values` per group.
    pub values_per_group: usize,
    /// `z + ρ`, one per slot (blind only).
    pub masked: Vec<I256>,
    /// `α_q·z + ρ'`, one per slot (blind leaky ReLU only).
    pub masked_alpha: Vec<I256>,
}

/// Decrypts a round the way B does (same layout, same checks).
pub fn open_round<S: SecretOps>(
    backend: &S,
    topology: &Topology,
    params: &Params,
    round: &Round,
) -> Result<RoundView> {
    let s = usize::from(round.stage);
    let shape = RoundShape::new(topology, params, s, round.mode)?;
    let groups = round.groups as usize;
    let open = |items: &[Vec<u8>], bits: u32, entries: usize| -> Result<Vec<I256>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let slots = if round.packed {
            backend.slots(bits)?
        } else {
            1
        };
        let expected = ciphertext_count(entries, slots, round.packed);
        if items.len() != expected {
            return Err(ProtocolError::Ciphertexts {
                what: "round",
                entries,
                expected,
                got: items.len(),
            });
        }
        let mut out = Vec::with_capacity(entries);
        for (i, bytes) in items.iter().enumerate() {
            let c = backend.decode(bytes)?;
            if round.packed {
                let count = slots.min(entries - i * slots);
                out.extend(backend.unpack(&c, bits, count)?);
            } else {
                out.push(backend.decrypt(&c)?);
            }
        }
        Ok(out)
    };
    let per_slot = groups * shape.masked_per_group();
    Ok(RoundView {
        stage: s,
        mode: round.mode,
        groups,
        group_size: shape.group_size,
        slots: shape.masked_per_group(),
        values: open(
            &round.values,
            shape.value_bits,
            groups * shape.values_per_group(),
        )?,
        values_per_group: shape.values_per_group(),
        masked: open(&round.masked, shape.masked_bits, per_slot)?,
        masked_alpha: match shape.alpha_bits {
            Some(bits) => open(&round.masked_alpha, bits, per_slot)?,
            None => Vec::new(),
        },
        comparisons: shape.comparisons,
    })
}

/// Decrypts an output message the way B does: `o + mA`, one per output.
pub fn open_output<S: SecretOps>(
    backend: &S,
    topology: &Topology,
    params: &Params,
    output: &Output,
) -> Result<Vec<I256>> {
    let bits = output_bits(topology) + params.sigma + 1;
    let entries = output.count as usize;
    let slots = if output.packed {
        backend.slots(bits)?
    } else {
        1
    };
    let expected = ciphertext_count(entries, slots, output.packed);
    if output.values.len() != expected {
        return Err(ProtocolError::Ciphertexts {
            what: "output",
            entries,
            expected,
            got: output.values.len(),
        });
    }
    let mut out = Vec::with_capacity(entries);
    for (i, bytes) in output.values.iter().enumerate() {
        let c = backend.decode(bytes)?;
        if output.packed {
            out.extend(backend.unpack(&c, bits, slots.min(entries - i * slots))?);
        } else {
            out.push(backend.decrypt(&c)?);
        }
    }
    Ok(out)
}

/// What A learns from a frame, computed as A does: `u = x̂ + b`.
pub fn frame_as_a(
    keys: &MaskKeys,
    topology: &Topology,
    params: &Params,
    t: u64,
    frame: &Frame,
) -> Result<Vec<I256>> {
    let layout = FrameLayout::new(topology, params);
    let values = unpack_fields(&frame.values, &layout.wire_bits())?;
    let a = input_masks(keys, t, &layout, &ResultLayout::new(topology, params));
    Ok(values
        .iter()
        .zip(&a)
        .zip(&layout.fields)
        .map(|((v, a), field)| {
            let masked = v.wrapping_sub(*a) & low_mask(field.wire_bits());
            I256::from(masked) + I256::from(field.offset)
        })
        .collect())
}
