use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::ModelError;
use crate::fixed::{ActivationMode, FixedPoint};

/// The public description of a model: everything server B and the device
/// need (shapes, activation kinds, fixed-point parameters, value bounds), and
/// no weight.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Topology {
    /// The model's name.
    pub name: String,
    /// Number of input features `n`.
    pub input_len: usize,
    /// `(C, H, W)` when the model takes an image.
    pub input_shape: Option<(usize, usize, usize)>,
    /// Per-feature float bounds `[lo, hi]` that `encode_input` enforces.
    pub input_bounds: Vec<(f64, f64)>,
    /// Per-feature scale: `x̂_i = round(x_i · input_scales[i])` (`2^f`
    /// unless the model states a native precision, such as 255 for pixels
    /// stored as bytes).
    pub input_scales: Vec<f64>,
    /// Per-feature integer range `[lo, hi]` of `x̂_i`: the bounds, scaled
    /// and rounded. The protocol sizes each feature's mask and wire field
    /// by its range.
    pub input_ranges: Vec<(i64, i64)>,
    /// `ℓ`: every encoded input satisfies `|x̂| < 2^ℓ`.
    pub input_bound_bits: u32,
    /// The fixed-point format: `frac_bits` is every activation's, and
    /// `weight_bits` the import's weight budget; each linear stage states
    /// the weight bits it got ([`LinearSpec::weight_bits`],
    /// [`Topology::stage_fixed`]).
    pub fixed: FixedPoint,
    /// Linear and activation stages, in order.
    pub stages: Vec<Stage>,
    /// Number of outputs.
    pub output_len: usize,
    /// Scale of the outputs of `run_int`: `f + w` (the last layer's `w`)
    /// after a linear stage, `f` after an activation.
    pub output_scale_bits: u32,
    /// The ONNX graph ended with a Softmax, which the device applies to the
    /// decoded logits.
    pub device_softmax: bool,
}

/// One step of the model.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stage {
    /// A linear layer (server A, on ciphertexts).
    Linear(LinearSpec),
    /// An activation (server B, on perturbed values).
    Activation(ActivationSpec),
}

/// A linear stage's public shape.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinearSpec {
    /// Number of inputs.
    pub input_len: usize,
    /// Number of outputs.
    pub output_len: usize,
    /// Dense or convolution.
    pub kind: LinearKind,
    /// `κ`: every output `z` satisfies `|z| < 2^κ` for inputs within bounds.
    pub output_bound_bits: u32,
    /// `w` of this layer: its weights carry `w` fraction bits, so its
    /// outputs have scale `2^(f+w)` and the activation after it truncates
    /// `w` bits. Chosen per layer at import ([`crate::WeightScale`]).
    pub weight_bits: u32,
}

/// The kind of a linear stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LinearKind {
    /// A fully connected layer.
    Dense,
    /// A 2-D convolution (groups 1, dilation 1).
    Conv2d {
        /// Input channels.
        in_c: usize,
        /// Input height.
        in_h: usize,
        /// Input width.
        in_w: usize,
        /// Output channels.
        out_c: usize,
        /// Output height.
        out_h: usize,
        /// Output width.
        out_w: usize,
        /// Kernel height.
        kernel_h: usize,
        /// Kernel width.
        kernel_w: usize,
        /// Vertical stride.
        stride_h: usize,
        /// Horizontal stride.
        stride_w: usize,
        /// Padding rows above.
        pad_top: usize,
        /// Padding columns on the left.
        pad_left: usize,
        /// Padding rows below.
        pad_bottom: usize,
        /// Padding columns on the right.
        pad_right: usize,
    },
}

/// An activation stage's public shape.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivationSpec {
    /// Which activation.
    pub kind: ActivationKind,
    /// Number of inputs.
    pub input_len: usize,
    /// Number of outputs.
    pub output_len: usize,
    /// Present for MaxPool and ReluMaxPool.
    pub pool: Option<PoolSpec>,
    /// Every output satisfies `|out| < 2^bits` (scale `2^f`).
    pub output_bound_bits: u32,
}

/// The activations veil evaluates exactly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ActivationKind {
    /// `max(0, x)`.
    Relu,
    /// `alpha_q = round(alpha · 2^w)`.
    LeakyRelu {
        /// The slope for negative inputs, at weight scale.
        alpha_q: i64,
    },
    /// The logistic function (permute mode).
    Sigmoid,
    /// The hyperbolic tangent (permute mode).
    Tanh,
    /// Maximum over each window.
    MaxPool,
    /// ReLU and max-pool fused (they commute).
    ReluMaxPool,
}

impl ActivationKind {
    /// Positively homogeneous kinds, which the sign-only blind mode can evaluate.
    pub fn supports_blind(&self) -> bool {
        matches!(
            self,
            ActivationKind::Relu
                | ActivationKind::LeakyRelu { .. }
                | ActivationKind::MaxPool
                | ActivationKind::ReluMaxPool
        )
    }

    /// Whether the activation pools windows.
    pub fn is_pool(&self) -> bool {
        matches!(self, ActivationKind::MaxPool | ActivationKind::ReluMaxPool)
    }
}

/// Largest tensor (in elements) at any stage; far above any model that the
/// Paillier protocol can serve, and low enough that a garbled topology
/// cannot request absurd allocations.
pub const MAX_ELEMENTS: usize = 1 << 26;

/// Max-pool windows over a CHW input; padded cells are excluded from a window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PoolSpec {
    /// Channels (pooled independently).
    pub channels: usize,
    /// Input height.
    pub in_h: usize,
    /// Input width.
    pub in_w: usize,
    /// Kernel height.
    pub kernel_h: usize,
    /// Kernel width.
    pub kernel_w: usize,
    /// Vertical stride.
    pub stride_h: usize,
    /// Horizontal stride.
    pub stride_w: usize,
    /// Padding rows above.
    pub pad_top: usize,
    /// Padding columns on the left.
    pub pad_left: usize,
    /// Padding rows below.
    pub pad_bottom: usize,
    /// Padding columns on the right.
    pub pad_right: usize,
}

impl PoolSpec {
    /// Output height.
    pub fn out_h(&self) -> usize {
        out_dim(
            self.in_h,
            self.pad_top,
            self.pad_bottom,
            self.kernel_h,
            self.stride_h,
        )
    }
    /// Output width.
    pub fn out_w(&self) -> usize {
        out_dim(
            self.in_w,
            self.pad_left,
            self.pad_right,
            self.kernel_w,
            self.stride_w,
        )
    }
    // Saturating: a garbled spec must fail the length checks, not overflow.
    /// Number of input elements.
    pub fn input_len(&self) -> usize {
        self.channels
            .saturating_mul(self.in_h)
            .saturating_mul(self.in_w)
    }
    /// Number of output elements.
    pub fn output_len(&self) -> usize {
        self.channels
            .saturating_mul(self.out_h())
            .saturating_mul(self.out_w())
    }

    /// Input indices of each output's window, in output order (row-major CHW).
    // Indices are below the input length, at most MAX_ELEMENTS (2^26,
    // checked when a topology is read): they fit a u32.
    #[allow(clippy::cast_possible_truncation)]
    pub fn windows(&self) -> Vec<Vec<u32>> {
        let (oh, ow) = (self.out_h(), self.out_w());
        let mut out = Vec::with_capacity(self.channels * oh * ow);
        for c in 0..self.channels {
            for y in 0..oh {
                for x in 0..ow {
                    let mut win = Vec::with_capacity(self.kernel_h * self.kernel_w);
                    for ky in 0..self.kernel_h {
                        let Some(iy) = (y * self.stride_h + ky)
                            .checked_sub(self.pad_top)
                            .filter(|iy| *iy < self.in_h)
                        else {
                            continue;
                        };
                        for kx in 0..self.kernel_w {
                            let Some(ix) = (x * self.stride_w + kx)
                                .checked_sub(self.pad_left)
                                .filter(|ix| *ix < self.in_w)
                            else {
                                continue;
                            };
                            let idx = (c * self.in_h + iy) * self.in_w + ix;
                            win.push(idx as u32);
                        }
                    }
                    out.push(win);
                }
            }
        }
        out
    }
}

/// Output size of a convolution or pool along one axis (floor mode).
pub(crate) fn out_dim(
    input: usize,
    pad_a: usize,
    pad_b: usize,
    kernel: usize,
    stride: usize,
) -> usize {
    let padded = input.saturating_add(pad_a).saturating_add(pad_b);
    if stride == 0 || kernel == 0 || padded < kernel {
        0
    } else {
        (padded - kernel) / stride + 1
    }
}

const MAGIC: &[u8; 8] = b"VEILTOPO";
// 2: per-feature input scales and integer ranges.
// 3: weight bits per linear stage.
const VERSION: u16 = 3;
const HEADER_LEN: usize = 8 + 2 + 8;
/// Topologies are small; anything bigger than this is garbage.
const MAX_PAYLOAD: usize = 64 << 20;

fn decode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_PAYLOAD>()
}

impl Topology {
    /// `x̂_i = round(x_i · s_i)` with the feature's scale `s_i`, refusing
    /// features outside their bounds: what the device does to a frame
    /// before masking it.
    pub fn encode_input(&self, x: &[f32]) -> Result<Vec<i64>, ModelError> {
        let t = self;
        if x.len() != t.input_len {
            return Err(ModelError::LengthMismatch {
                expected: t.input_len,
                got: x.len(),
            });
        }
        let limit = crate::semantics::pow2(t.input_bound_bits.min(63));
        x.iter()
            .zip(t.input_bounds.iter().zip(&t.input_scales))
            .enumerate()
            .map(|(index, (v, ((lo, hi), scale)))| {
                let v = f64::from(*v);
                if !(v >= *lo && v <= *hi) {
                    return Err(ModelError::InputOutOfBounds {
                        index,
                        value: v,
                        lo: *lo,
                        hi: *hi,
                    });
                }
                let q = (v * scale).round();
                // `q` is an integer (rounded) and the input bound keeps it
                // below 2^63 once checked; the report's `as i128` saturates
                // a value too large to say exactly.
                #[allow(clippy::cast_possible_truncation)]
                if q.abs() >= limit {
                    return Err(ModelError::EncodedInputTooLarge {
                        index,
                        encoded: q as i128,
                        bits: t.input_bound_bits,
                    });
                }
                #[allow(clippy::cast_possible_truncation)]
                Ok(q as i64)
            })
            .collect()
    }

    /// The canonical encoding that the fingerprint hashes.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        // Plain structs with sized sequences always serialize into a Vec; the
        // fallback is unreachable.
        bincode::serde::encode_to_vec(self, bincode::config::standard()).unwrap_or_default()
    }

    /// SHA-256 of the canonical encoding; devices and B pin it.
    pub fn fingerprint(&self) -> [u8; 32] {
        Sha256::digest(self.canonical_bytes()).into()
    }

    /// The fingerprint as 64 hex digits (what devices and B pin).
    pub fn fingerprint_hex(&self) -> String {
        hex::encode(self.fingerprint())
    }

    /// Versioned, length-prefixed encoding: magic, version, payload length, payload.
    pub fn to_bytes(&self) -> Vec<u8> {
        let payload = self.canonical_bytes();
        let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        out.extend_from_slice(&payload);
        out
    }

    /// Inverse of [`Topology::to_bytes`]; rejects truncated, padded, garbled
    /// or internally inconsistent encodings.
    pub fn from_bytes(bytes: &[u8]) -> Result<Topology, ModelError> {
        let enc = |m: &str| ModelError::Encoding(m.to_string());
        let (magic, rest) = bytes
            .split_at_checked(8)
            .ok_or_else(|| enc("truncated header"))?;
        if magic != MAGIC {
            return Err(enc("not a veil topology (bad magic)"));
        }
        let (version, rest) = rest
            .split_at_checked(2)
            .ok_or_else(|| enc("truncated header"))?;
        let version = u16::from_le_bytes([version[0], version[1]]);
        if version != VERSION {
            return Err(ModelError::Encoding(format!(
                "topology version {version}, this build reads version {VERSION}"
            )));
        }
        let (len, payload) = rest
            .split_at_checked(8)
            .ok_or_else(|| enc("truncated header"))?;
        let mut len_bytes = [0u8; 8];
        len_bytes.copy_from_slice(len);
        let len = u64::from_le_bytes(len_bytes);
        if len != payload.len() as u64 {
            return Err(ModelError::Encoding(format!(
                "payload length {} does not match the declared {len}",
                payload.len()
            )));
        }
        let (topo, used): (Topology, usize) =
            bincode::serde::decode_from_slice(payload, decode_config())
                .map_err(|e| ModelError::Encoding(e.to_string()))?;
        if used != payload.len() {
            return Err(enc("trailing bytes after the topology"));
        }
        topo.validate()?;
        Ok(topo)
    }

    /// Structural consistency: stages start with Linear and alternate, lengths chain.
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |m: String| Err(ModelError::Encoding(m));
        self.fixed.validate()?;
        if self.input_bounds.len() != self.input_len {
            return bad(format!(
                "{} input bounds for {} inputs",
                self.input_bounds.len(),
                self.input_len
            ));
        }
        if self.input_scales.len() != self.input_len || self.input_ranges.len() != self.input_len {
            return bad("input scales or ranges do not match the input length".into());
        }
        if let Some(i) = self
            .input_scales
            .iter()
            .position(|s| !(s.is_finite() && *s > 0.0))
        {
            return bad(format!("feature {i}: input scale is not a positive number"));
        }
        let bound = 1i128 << self.input_bound_bits.min(100);
        if let Some(i) = self.input_ranges.iter().position(|(lo, hi)| {
            lo > hi || i128::from(*lo).abs() >= bound || i128::from(*hi).abs() >= bound
        }) {
            return bad(format!(
                "feature {i}: input range is empty or exceeds 2^{}",
                self.input_bound_bits
            ));
        }
        if let Some((c, h, w)) = self.input_shape
            && c.checked_mul(h).and_then(|v| v.checked_mul(w)) != Some(self.input_len)
        {
            return bad("input shape does not match the input length".into());
        }
        if self.stages.is_empty() {
            return bad("no stages".into());
        }
        let mut len = self.input_len;
        for (s, stage) in self.stages.iter().enumerate() {
            let want_linear = s % 2 == 0;
            let (i, o, bits) = match stage {
                Stage::Linear(l) if want_linear => {
                    if let LinearKind::Conv2d {
                        in_c,
                        in_h,
                        in_w,
                        out_c,
                        out_h,
                        out_w,
                        ..
                    } = l.kind
                        && (in_c.checked_mul(in_h).and_then(|v| v.checked_mul(in_w))
                            != Some(l.input_len)
                            || out_c.checked_mul(out_h).and_then(|v| v.checked_mul(out_w))
                                != Some(l.output_len))
                    {
                        return bad(format!("stage {s}: conv shape does not match its lengths"));
                    }
                    if !(1..=30).contains(&l.weight_bits) {
                        return bad(format!(
                            "stage {s}: {} weight bits, expected 1..=30",
                            l.weight_bits
                        ));
                    }
                    (l.input_len, l.output_len, l.output_bound_bits)
                }
                Stage::Activation(a) if !want_linear => {
                    match (&a.pool, a.kind.is_pool()) {
                        (Some(p), true) => {
                            if p.input_len() != a.input_len || p.output_len() != a.output_len {
                                return bad(format!("stage {s}: pool shape does not match"));
                            }
                        }
                        (None, false) => {
                            if a.input_len != a.output_len {
                                return bad(format!("stage {s}: element-wise length changes"));
                            }
                        }
                        _ => return bad(format!("stage {s}: pool spec does not match the kind")),
                    }
                    (a.input_len, a.output_len, a.output_bound_bits)
                }
                _ => {
                    return bad(format!(
                        "stage {s}: stages must alternate Linear, Activation"
                    ));
                }
            };
            if i != len {
                return bad(format!(
                    "stage {s}: input length {i}, previous output {len}"
                ));
            }
            if bits > 100 {
                return bad(format!("stage {s}: bound of {bits} bits"));
            }
            // Indices into a stage travel as u32 (windows, plan rows).
            if i.max(o) > MAX_ELEMENTS {
                return bad(format!(
                    "stage {s}: {i} inputs, {o} outputs, above {MAX_ELEMENTS}"
                ));
            }
            len = o;
        }
        if len != self.output_len {
            return bad("output length does not match the last stage".into());
        }
        let expected_scale = match self.stages.last() {
            Some(Stage::Linear(l)) => self.fixed.frac_bits + l.weight_bits,
            _ => self.fixed.frac_bits,
        };
        if self.output_scale_bits != expected_scale {
            return bad("output scale does not match the last stage".into());
        }
        Ok(())
    }

    /// The fixed-point format at stage `s`: the activations' `f` with the
    /// weight bits of the linear stage at or just before `s`, which set the
    /// scale `2^(f+w)` an activation stage reads and truncates.
    pub fn stage_fixed(&self, s: usize) -> FixedPoint {
        let weight_bits = self
            .stages
            .get(..=s.min(self.stages.len().saturating_sub(1)))
            .and_then(|before| {
                before.iter().rev().find_map(|stage| match stage {
                    Stage::Linear(l) => Some(l.weight_bits),
                    Stage::Activation(_) => None,
                })
            })
            .unwrap_or(self.fixed.weight_bits);
        FixedPoint {
            frac_bits: self.fixed.frac_bits,
            weight_bits,
        }
    }

    /// Blind wherever the activation allows it, permute elsewhere.
    pub fn default_modes(&self) -> Vec<ActivationMode> {
        self.stages
            .iter()
            .map(|s| match s {
                Stage::Activation(a) if a.kind.supports_blind() => ActivationMode::Blind,
                _ => ActivationMode::Permute,
            })
            .collect()
    }

    /// Permute mode for every stage.
    pub fn permute_modes(&self) -> Vec<ActivationMode> {
        vec![ActivationMode::Permute; self.stages.len()]
    }
}
