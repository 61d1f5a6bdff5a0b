//! How a frame's features and a result's outputs travel, and the masks
//! that go with them.
//!
//! Input feature `i` has the integer range `[L_i, L_i + R_i]` (the
//! topology's, from its bounds and native scale). Its masks `a_i`, `b_i`
//! are uniform below `2^m_i` with `m_i = bits(R_i) + σ`, so `x̂_i - L_i +
//! b_i` is within `2^-σ` of `b_i` alone. The device sends `v_i = (x̂_i -
//! L_i + a_i + b_i) mod 2^(m_i + 1)`: A's `u'_i = (v_i - a_i) mod 2^(m_i+1)`
//! is then exactly `x̂_i - L_i + b_i`, which an honest device keeps below
//! `2^m_i + R_i`.
//!
//! Output `j` satisfies `|o_j| < 2^κ`; its masks are uniform below
//! `2^(κ+σ)`.
//!
//! All of counter `t`'s masks under one seed come from one keystream
//! ([`crate::prf`]): first the outputs' (`κ + σ` bits each), then the
//! features' (`m_i` bits each), so that B's output masks are a short
//! prefix and the device expands one stream per seed and frame. B sends `r_j = (o_j + mA_j + mB_j) mod 2^(κ+1)`: `mB_j mod
//! 2^(κ+1)` is exactly uniform, so the result shows the network nothing,
//! and the device, which knows both masks, reads `o_j` back as the
//! representative of `r_j - mA_j - mB_j` in `[-2^κ, 2^κ)`.

use crate::codec::{low_mask, packed_len};
use crate::params::{Params, output_bits};
use crate::prf::{MaskKeys, expand_derived, expand_into};
use veil_model::Topology;

/// One input feature on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InputField {
    /// `L`: the feature's least encoded value.
    pub offset: i64,
    /// `R`: its largest encoded value minus `L`.
    pub range: u64,
    /// `m = bits(R) + σ`: its masks are uniform below `2^m`.
    pub mask_bits: u32,
}

impl InputField {
    /// Bits of the field on the wire: `m + 1`.
    pub fn wire_bits(&self) -> u32 {
        self.mask_bits + 1
    }

    /// The largest `x̂ - L + b` an honest device's frame gives A.
    pub fn max_masked(&self) -> u128 {
        low_mask(self.mask_bits) + u128::from(self.range)
    }
}

/// The fields of a frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameLayout {
    /// One per input feature, in the model's input order.
    pub fields: Vec<InputField>,
    /// Bytes of the packed values.
    pub bytes: usize,
}

fn bits_of(v: u64) -> u32 {
    64 - v.leading_zeros()
}

impl FrameLayout {
    /// The layout the model's input bounds and σ imply.
    pub fn new(topology: &Topology, params: &Params) -> FrameLayout {
        let fields: Vec<InputField> = topology
            .input_ranges
            .iter()
            .map(|(lo, hi)| {
                let range = hi.abs_diff(*lo);
                InputField {
                    offset: *lo,
                    range,
                    mask_bits: bits_of(range) + params.sigma,
                }
            })
            .collect();
        let bytes = packed_len(fields.iter().map(InputField::wire_bits));
        FrameLayout { fields, bytes }
    }

    /// The width of each feature's mask, in input order.
    pub fn mask_bits(&self) -> impl Iterator<Item = u32> + Clone + '_ {
        self.fields.iter().map(|f| f.mask_bits)
    }

    /// The width each feature travels in, in input order.
    pub fn wire_bits(&self) -> Vec<u32> {
        self.fields.iter().map(InputField::wire_bits).collect()
    }
}

/// The fields of a result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResultLayout {
    /// How many outputs.
    pub count: usize,
    /// `κ`: every output satisfies `|o| < 2^κ`.
    pub bound_bits: u32,
    /// Bits of the output masks: `κ + σ`.
    pub mask_bits: u32,
    /// Bytes of the packed values.
    pub bytes: usize,
}

impl ResultLayout {
    /// The layout the model's output bound and σ imply.
    pub fn new(topology: &Topology, params: &Params) -> ResultLayout {
        let bound_bits = output_bits(topology);
        let count = topology.output_len;
        ResultLayout {
            count,
            bound_bits,
            mask_bits: bound_bits + params.sigma,
            bytes: packed_len(std::iter::repeat_n(bound_bits + 1, count)),
        }
    }

    /// Bits of one output on the wire: `κ + 1`.
    pub fn wire_bits(&self) -> u32 {
        self.bound_bits + 1
    }

    /// The output whose residue modulo `2^(κ+1)` is `residue`.
    // Masked to κ + 1 ≤ MAX_VALUE_BITS < 128 bits (`Params::check`), the
    // residue fits an i128 as it is.
    #[allow(clippy::cast_possible_wrap)]
    pub fn centred(&self, residue: u128) -> i128 {
        let residue = (residue & low_mask(self.wire_bits())) as i128;
        if residue >> self.bound_bits != 0 {
            residue - (1i128 << self.wire_bits())
        } else {
            residue
        }
    }
}

/// The widths of counter `t`'s masks in stream order: the outputs', then
/// the features'.
pub fn mask_fields<'a>(
    frame: &'a FrameLayout,
    result: &ResultLayout,
) -> impl Iterator<Item = u32> + Clone + 'a {
    std::iter::repeat_n(result.mask_bits, result.count).chain(frame.mask_bits())
}

/// Masks of the frame inputs (`a` with kA's keys, `b` with kB's).
pub(crate) fn input_masks(
    keys: &MaskKeys,
    t: u64,
    frame: &FrameLayout,
    result: &ResultLayout,
) -> Vec<u128> {
    let mut out = Vec::with_capacity(frame.fields.len());
    let skip = result.count;
    let fields = mask_fields(frame, result);
    expand_into(&keys.masks, t, fields, &mut Vec::new(), |i, v| {
        if i >= skip {
            out.push(v);
        }
    });
    out
}

/// Masks of the outputs (`mA`, `mB`).
pub(crate) fn output_masks(keys: &MaskKeys, t: u64, result: &ResultLayout) -> Vec<u128> {
    expand_derived(&keys.masks, t, result.count, result.mask_bits)
}
