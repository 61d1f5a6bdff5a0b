use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::ModelError;

/// Fixed-point parameters: activations carry `frac_bits` fraction bits,
/// weights `weight_bits`, so a linear output has scale `2^(f+w)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FixedPoint {
    /// `f`: fraction bits of activations.
    pub frac_bits: u32,
    /// `w`: fraction bits of weights.
    pub weight_bits: u32,
}

impl Default for FixedPoint {
    fn default() -> Self {
        FixedPoint {
            frac_bits: 16,
            weight_bits: 16,
        }
    }
}

impl FixedPoint {
    /// Both sizes must leave room for `2w`-bit leaky-ReLU products and for
    /// f64 scale factors; 1..=30 is far more than any model needs.
    pub fn validate(&self) -> Result<(), ModelError> {
        for (name, v) in [
            ("frac_bits", self.frac_bits),
            ("weight_bits", self.weight_bits),
        ] {
            if !(1..=30).contains(&v) {
                return Err(ModelError::InvalidFixedPoint(format!(
                    "{name} = {v}, expected 1..=30"
                )));
            }
        }
        Ok(())
    }

    /// Scale of a linear stage's output.
    pub fn linear_scale_bits(&self) -> u32 {
        self.frac_bits + self.weight_bits
    }
}

/// How the importer picks each linear layer's weight bits `w_l` (its
/// weights become `round(W · 2^(f+w_l) / s)` for an input of scale `s`).
///
/// Rounding weight `i` moves an output by up to half a unit times its
/// input `x̂_i`, so the error a layer adds grows with the magnitude of what
/// it reads, not with its weights. Later layers read activations at scale
/// `2^f`, which trained networks keep near 1. The first reads raw features:
/// a model with its standardization folded into the first layer reads
/// glucose in mg/dL, and at `w = 16` its logits were off by 1.4e-3
/// (model/tests/foreign.rs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WeightScale {
    /// Every layer takes [`FixedPoint::weight_bits`].
    Uniform,
    /// The first layer takes enough bits that the RMS error its weight
    /// rounding adds, over inputs spread across their bounds, stays under
    /// `2^-w` (at least `w`; at most 30); later layers take `w`.
    #[default]
    PerLayer,
}

impl WeightScale {
    /// `w_l` for a layer whose integer inputs `x̂_i` lie in `inputs`, or
    /// whose inputs are activations (`None`).
    pub fn layer_bits(self, fixed: &FixedPoint, inputs: Option<&[(i128, i128)]>) -> u32 {
        let w = fixed.weight_bits;
        let (WeightScale::PerLayer, Some(inputs)) = (self, inputs) else {
            return w;
        };
        // Rounding errors uniform in ±1/2 have variance 1/12; each scales
        // its input, at most max(|lo|, |hi|).
        let variance: f64 = inputs
            .iter()
            .map(|(lo, hi)| {
                let m = lo.unsigned_abs().max(hi.unsigned_abs()) as f64;
                m * m / 12.0
            })
            .sum();
        // In units of 2^f, an error of sqrt(variance) / 2^(f + w_l) ≤ 2^-w.
        let needed = (variance.sqrt() / crate::semantics::pow2(fixed.frac_bits)).log2();
        if !needed.is_finite() || needed <= 0.0 {
            return w;
        }
        // needed < 2^11 for any i128 input, and positive (checked): the
        // whole number in 1..=64 converts exactly.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let extra = needed.ceil().min(64.0) as u32;
        (w + extra).min(30)
    }
}

/// How server B evaluates one activation stage (DESIGN §3.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ActivationMode {
    /// B sees only signs (and, for pools, in-window order); positively
    /// homogeneous functions only.
    Blind,
    /// B sees the shuffled values and evaluates the function in f64.
    Permute,
}

/// The randomness that the private protocol injects into truncation and
/// max-pool tie-breaking. Implementations must be pure functions of their
/// arguments so that A (which derives them from a PRF) and the reference
/// agree bit for bit.
pub trait RoundingSource {
    /// Uniform in `[0, 2^bits)`.
    fn offset(&self, stage: usize, index: usize, which: u8, bits: u32) -> u128;
    /// Rank used to break ties between equal maxima of a pooling window.
    fn tie_rank(&self, stage: usize, window: usize, position: usize) -> u64;
}

/// Plain floor truncation and first-position tie-breaking.
#[derive(Clone, Copy, Debug, Default)]
pub struct FloorRounding;

impl RoundingSource for FloorRounding {
    fn offset(&self, _stage: usize, _index: usize, _which: u8, _bits: u32) -> u128 {
        0
    }
    fn tie_rank(&self, _stage: usize, _window: usize, position: usize) -> u64 {
        position as u64
    }
}

/// Keyed pseudo-random offsets: SHA-256 over (key, label, stage, index, which).
#[derive(Clone)]
pub struct SeededRounding {
    /// The key (secret to server A in the protocol).
    pub key: [u8; 32],
}

impl std::fmt::Debug for SeededRounding {
    // The key is a secret of server A.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SeededRounding { .. }")
    }
}

impl SeededRounding {
    fn hash(&self, label: &[u8], a: usize, b: usize, c: u64) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.key);
        h.update(label);
        h.update((a as u64).to_le_bytes());
        h.update((b as u64).to_le_bytes());
        h.update(c.to_le_bytes());
        h.finalize().into()
    }
}

impl RoundingSource for SeededRounding {
    fn offset(&self, stage: usize, index: usize, which: u8, bits: u32) -> u128 {
        let d = self.hash(b"off", stage, index, u64::from(which));
        let mut v = [0u8; 16];
        v.copy_from_slice(&d[..16]);
        let v = u128::from_le_bytes(v);
        if bits >= 128 {
            v
        } else {
            v & ((1u128 << bits) - 1)
        }
    }
    fn tie_rank(&self, stage: usize, window: usize, position: usize) -> u64 {
        let d = self.hash(b"tie", stage, window, position as u64);
        let mut v = [0u8; 8];
        v.copy_from_slice(&d[..8]);
        u64::from_le_bytes(v)
    }
}

/// `floor((v + r) / 2^k)`, the truncation rule of DESIGN §3.5; `r` is an
/// offset in `[0, 2^k)`. Arithmetic shift is floor division toward −∞.
pub fn truncate(v: i128, k: u32, r: u128) -> Option<i128> {
    let r = i128::try_from(r).ok()?;
    Some(v.checked_add(r)? >> k)
}
