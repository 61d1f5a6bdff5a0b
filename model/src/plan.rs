use serde::{Deserialize, Serialize};

use crate::error::ModelError;
use crate::topology::LinearKind;

/// Geometry of a 2-D convolution (groups 1, dilation 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ConvGeometry {
    /// Input channels.
    pub in_c: usize,
    /// Input height.
    pub in_h: usize,
    /// Input width.
    pub in_w: usize,
    /// Output channels.
    pub out_c: usize,
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

impl ConvGeometry {
    /// Output height.
    pub fn out_h(&self) -> usize {
        crate::topology::out_dim(
            self.in_h,
            self.pad_top,
            self.pad_bottom,
            self.kernel_h,
            self.stride_h,
        )
    }
    /// Output width.
    pub fn out_w(&self) -> usize {
        crate::topology::out_dim(
            self.in_w,
            self.pad_left,
            self.pad_right,
            self.kernel_w,
            self.stride_w,
        )
    }
    // Saturating: a garbled geometry must fail the length checks, not overflow.
    /// Number of input elements.
    pub fn input_len(&self) -> usize {
        self.in_c
            .saturating_mul(self.in_h)
            .saturating_mul(self.in_w)
    }
    /// Number of output elements.
    pub fn output_len(&self) -> usize {
        self.out_c
            .saturating_mul(self.out_h())
            .saturating_mul(self.out_w())
    }
    /// Weights per output channel (in_c · kernel_h · kernel_w).
    pub fn kernel_len(&self) -> usize {
        self.out_c
            .saturating_mul(self.in_c)
            .saturating_mul(self.kernel_h)
            .saturating_mul(self.kernel_w)
    }

    /// Dense or convolution, with its geometry.
    pub fn kind(&self) -> LinearKind {
        LinearKind::Conv2d {
            in_c: self.in_c,
            in_h: self.in_h,
            in_w: self.in_w,
            out_c: self.out_c,
            out_h: self.out_h(),
            out_w: self.out_w(),
            kernel_h: self.kernel_h,
            kernel_w: self.kernel_w,
            stride_h: self.stride_h,
            stride_w: self.stride_w,
            pad_top: self.pad_top,
            pad_left: self.pad_left,
            pad_bottom: self.pad_bottom,
            pad_right: self.pad_right,
        }
    }

    /// Calls `f(output, input, kernel)` for every (output, input, kernel
    /// index) term of the convolution, skipping padded cells. Shared by the
    /// float and integer paths so that both use one definition of a conv.
    pub(crate) fn for_each_term(&self, mut f: impl FnMut(usize, usize, usize)) {
        let (oh, ow) = (self.out_h(), self.out_w());
        for oc in 0..self.out_c {
            for y in 0..oh {
                for x in 0..ow {
                    let out = (oc * oh + y) * ow + x;
                    for ic in 0..self.in_c {
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
                                let input = (ic * self.in_h + iy) * self.in_w + ix;
                                let k = ((oc * self.in_c + ic) * self.kernel_h + ky)
                                    * self.kernel_w
                                    + kx;
                                f(out, input, k);
                            }
                        }
                    }
                }
            }
        }
    }
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Weights {
    /// Row-major `output_len × input_len`.
    Dense {
        input_len: usize,
        output_len: usize,
        weights: Vec<i64>,
    },
    /// `out_c × in_c × kernel_h × kernel_w`, shared across positions.
    Conv {
        geometry: ConvGeometry,
        kernel: Vec<i64>,
    },
}

/// One quantized linear stage: weights `round(W·2^w)`, biases `round(c·2^(f+w))`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinearLayer {
    weights: Weights,
    bias: Vec<i128>,
}

impl std::fmt::Debug for LinearLayer {
    // Weights are server A's secret: never print them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "LinearLayer {{ {} -> {}, .. }}",
            self.input_len(),
            self.output_len()
        )
    }
}

impl LinearLayer {
    /// A dense layer from row-major weights and biases.
    pub fn dense(
        input_len: usize,
        output_len: usize,
        weights: Vec<i64>,
        bias: Vec<i128>,
    ) -> Result<LinearLayer, ModelError> {
        let want = input_len
            .checked_mul(output_len)
            .ok_or(ModelError::LengthMismatch {
                expected: usize::MAX,
                got: weights.len(),
            })?;
        if weights.len() != want {
            return Err(ModelError::LengthMismatch {
                expected: want,
                got: weights.len(),
            });
        }
        if bias.len() != output_len {
            return Err(ModelError::LengthMismatch {
                expected: output_len,
                got: bias.len(),
            });
        }
        Ok(LinearLayer {
            weights: Weights::Dense {
                input_len,
                output_len,
                weights,
            },
            bias,
        })
    }

    /// `bias` has one entry per output element (a per-channel bias repeated,
    /// or a position-dependent one after folding a normalisation).
    pub fn conv(
        geometry: ConvGeometry,
        kernel: Vec<i64>,
        bias: Vec<i128>,
    ) -> Result<LinearLayer, ModelError> {
        if kernel.len() != geometry.kernel_len() {
            return Err(ModelError::LengthMismatch {
                expected: geometry.kernel_len(),
                got: kernel.len(),
            });
        }
        if bias.len() != geometry.output_len() {
            return Err(ModelError::LengthMismatch {
                expected: geometry.output_len(),
                got: bias.len(),
            });
        }
        Ok(LinearLayer {
            weights: Weights::Conv { geometry, kernel },
            bias,
        })
    }

    /// Number of input elements.
    pub fn input_len(&self) -> usize {
        match &self.weights {
            Weights::Dense { input_len, .. } => *input_len,
            Weights::Conv { geometry, .. } => geometry.input_len(),
        }
    }

    /// Number of output elements.
    pub fn output_len(&self) -> usize {
        self.bias.len()
    }

    /// Dense or convolution, with its geometry.
    pub fn kind(&self) -> LinearKind {
        match &self.weights {
            Weights::Dense { .. } => LinearKind::Dense,
            Weights::Conv { geometry, .. } => geometry.kind(),
        }
    }

    /// Number of stored weights (a conv shares its kernel).
    pub fn weight_count(&self) -> usize {
        match &self.weights {
            Weights::Dense { weights, .. } => weights.len(),
            Weights::Conv { kernel, .. } => kernel.len(),
        }
    }

    /// Every stored weight, for leak checks and statistics.
    pub fn weights(&self) -> &[i64] {
        match &self.weights {
            Weights::Dense { weights, .. } => weights,
            Weights::Conv { kernel, .. } => kernel,
        }
    }

    /// Bias of output `out` at scale `2^(f+w)`; 0 past the end.
    pub fn bias(&self, out: usize) -> i128 {
        self.bias.get(out).copied().unwrap_or(0)
    }

    /// The biases, one per output.
    pub fn biases(&self) -> &[i128] {
        &self.bias
    }

    /// The nonzero `(input index, weight)` terms of output `out`.
    // Input indices are below the stage's input length, at most
    // MAX_ELEMENTS (2^26, checked when a plan or topology is read): they
    // fit a u32.
    #[allow(clippy::cast_possible_truncation)]
    pub fn row(&self, out: usize) -> Vec<(u32, i64)> {
        match &self.weights {
            Weights::Dense {
                input_len,
                output_len,
                weights,
            } => {
                if out >= *output_len {
                    return Vec::new();
                }
                let start = out * input_len;
                weights
                    .get(start..start + input_len)
                    .unwrap_or(&[])
                    .iter()
                    .enumerate()
                    .filter(|(_, w)| **w != 0)
                    .map(|(i, w)| (i as u32, *w))
                    .collect()
            }
            Weights::Conv { geometry, kernel } => {
                let g = geometry;
                let (oh, ow) = (g.out_h(), g.out_w());
                if out >= g.output_len() {
                    return Vec::new();
                }
                let (oc, y, x) = (out / (oh * ow), (out / ow) % oh, out % ow);
                let mut terms = Vec::new();
                for ic in 0..g.in_c {
                    for ky in 0..g.kernel_h {
                        let Some(iy) = (y * g.stride_h + ky)
                            .checked_sub(g.pad_top)
                            .filter(|iy| *iy < g.in_h)
                        else {
                            continue;
                        };
                        for kx in 0..g.kernel_w {
                            let Some(ix) = (x * g.stride_w + kx)
                                .checked_sub(g.pad_left)
                                .filter(|ix| *ix < g.in_w)
                            else {
                                continue;
                            };
                            let k = ((oc * g.in_c + ic) * g.kernel_h + ky) * g.kernel_w + kx;
                            let w = kernel.get(k).copied().unwrap_or(0);
                            if w != 0 {
                                let input = (ic * g.in_h + iy) * g.in_w + ix;
                                terms.push((input as u32, w));
                            }
                        }
                    }
                }
                terms
            }
        }
    }

    /// Exact `z = W·x + c` in i128.
    pub fn apply(&self, x: &[i128]) -> Result<Vec<i128>, ModelError> {
        let mut z = self.apply_without_bias(x)?;
        for (zi, b) in z.iter_mut().zip(&self.bias) {
            *zi = zi
                .checked_add(*b)
                .ok_or(ModelError::Overflow { stage: 0 })?;
        }
        Ok(z)
    }

    /// Exact `W·x` in i128 (the conv is computed directly, with its kernel shared).
    pub fn apply_without_bias(&self, x: &[i128]) -> Result<Vec<i128>, ModelError> {
        if x.len() != self.input_len() {
            return Err(ModelError::LengthMismatch {
                expected: self.input_len(),
                got: x.len(),
            });
        }
        let overflow = ModelError::Overflow { stage: 0 };
        match &self.weights {
            Weights::Dense {
                input_len, weights, ..
            } => {
                let mut z = Vec::with_capacity(self.bias.len());
                for row in weights.chunks_exact((*input_len).max(1)) {
                    let mut acc: i128 = 0;
                    for (w, xi) in row.iter().zip(x) {
                        if *w != 0 {
                            acc = i128::from(*w)
                                .checked_mul(*xi)
                                .and_then(|p| acc.checked_add(p))
                                .ok_or(ModelError::Overflow { stage: 0 })?;
                        }
                    }
                    z.push(acc);
                }
                // A zero-width layer has no rows to chunk.
                z.resize(self.bias.len(), 0);
                Ok(z)
            }
            Weights::Conv { geometry, kernel } => {
                let mut z = vec![0i128; geometry.output_len()];
                let mut ok = true;
                geometry.for_each_term(|out, input, k| {
                    let w = i128::from(kernel[k]);
                    match w.checked_mul(x[input]).and_then(|p| z[out].checked_add(p)) {
                        Some(v) => z[out] = v,
                        None => ok = false,
                    }
                });
                if ok { Ok(z) } else { Err(overflow) }
            }
        }
    }
}

/// The private part of a model: quantized weights of every linear stage.
/// Only server A loads it; it is never logged.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Indexed by stage; `None` for activation stages.
    layers: Vec<Option<LinearLayer>>,
    /// Indexed by stage; `None` where no calibration was run.
    samples: Vec<Option<StageSamples>>,
}

/// Pre-activations of one activation stage measured by running the integer
/// reference over calibration data. Server A draws its dummies from them,
/// so that B cannot tell dummies from real entries by their distribution;
/// they describe the weights' behaviour, so they are as private as the
/// weights.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageSamples {
    /// Whole groups as the stage sees them: one value per element, or a
    /// pooling window's values.
    pub groups: Vec<Vec<i128>>,
    /// Every value of `groups`, sorted.
    pub sorted: Vec<i128>,
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Plan {{ {} linear layers, .. }}",
            self.layers.iter().flatten().count()
        )
    }
}

impl Plan {
    /// A plan from the linear layer of each stage (`None` for activation stages).
    pub fn new(layers: Vec<Option<LinearLayer>>) -> Plan {
        Plan {
            layers,
            samples: Vec::new(),
        }
    }

    /// Calibration samples of activation stage `stage`, if measured.
    pub fn samples(&self, stage: usize) -> Option<&StageSamples> {
        self.samples.get(stage).and_then(Option::as_ref)
    }

    /// Sets the calibration samples of an activation stage.
    pub fn set_samples(&mut self, stage: usize, samples: StageSamples) {
        if self.samples.len() <= stage {
            self.samples.resize(stage + 1, None);
        }
        if let Some(slot) = self.samples.get_mut(stage) {
            *slot = Some(samples);
        }
    }

    /// The linear layer of stage `stage`, if that stage is linear.
    pub fn layer(&self, stage: usize) -> Option<&LinearLayer> {
        self.layers.get(stage).and_then(Option::as_ref)
    }

    /// `(stage index, layer)` for every linear stage.
    pub fn layers(&self) -> impl Iterator<Item = (usize, &LinearLayer)> {
        self.layers
            .iter()
            .enumerate()
            .filter_map(|(s, l)| l.as_ref().map(|l| (s, l)))
    }

    /// The plan's file encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Plain structs with sized sequences always serialize into a Vec.
        bincode::serde::encode_to_vec(self, bincode::config::standard()).unwrap_or_default()
    }

    /// Decodes and validates a plan file.
    pub fn from_bytes(bytes: &[u8]) -> Result<Plan, ModelError> {
        let (plan, used): (Plan, usize) = bincode::serde::decode_from_slice(
            bytes,
            bincode::config::standard().with_limit::<{ 1 << 30 }>(),
        )
        .map_err(|e| ModelError::Encoding(e.to_string()))?;
        if used != bytes.len() {
            return Err(ModelError::Encoding("trailing bytes after the plan".into()));
        }
        for l in plan.layers.iter().flatten() {
            match &l.weights {
                Weights::Dense {
                    input_len,
                    output_len,
                    weights,
                } => {
                    if input_len.checked_mul(*output_len) != Some(weights.len())
                        || l.bias.len() != *output_len
                    {
                        return Err(ModelError::Encoding("inconsistent dense layer".into()));
                    }
                }
                Weights::Conv { geometry, kernel } => {
                    if geometry.output_len() > crate::topology::MAX_ELEMENTS
                        || geometry.input_len() > crate::topology::MAX_ELEMENTS
                        || kernel.len() != geometry.kernel_len()
                        || l.bias.len() != geometry.output_len()
                    {
                        return Err(ModelError::Encoding("inconsistent conv layer".into()));
                    }
                }
            }
        }
        Ok(plan)
    }
}
