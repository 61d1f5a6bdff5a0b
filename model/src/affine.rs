//! Affine maps in f64, composed before quantization so that consecutive
//! linear operators become a single linear stage.

use crate::error::ModelError;
use crate::plan::ConvGeometry;

/// A convolution with a per-output-element bias (a per-channel bias
/// repeated, or position-dependent after folding a normalisation through the
/// zero padding).
#[derive(Clone, Debug)]
pub(crate) struct FloatConv {
    pub geometry: ConvGeometry,
    pub kernel: Vec<f64>,
    pub bias: Vec<f64>,
}

impl FloatConv {
    /// `second ∘ self` as one convolution. Exact when `second` has no
    /// padding: it then only reads positions that `self` computed over its
    /// own (zero-)padded input, so the combined kernel can read that same
    /// padded input. Returns `None` otherwise.
    fn compose(&self, second: &FloatConv) -> Option<FloatConv> {
        let (a, b) = (&self.geometry, &second.geometry);
        if b.pad_top + b.pad_left + b.pad_bottom + b.pad_right != 0
            || b.in_c != a.out_c
            || b.in_h != a.out_h()
            || b.in_w != a.out_w()
        {
            return None;
        }
        let kh = a.kernel_h + (b.kernel_h - 1) * a.stride_h;
        let kw = a.kernel_w + (b.kernel_w - 1) * a.stride_w;
        let geometry = ConvGeometry {
            in_c: a.in_c,
            in_h: a.in_h,
            in_w: a.in_w,
            out_c: b.out_c,
            kernel_h: kh,
            kernel_w: kw,
            stride_h: a.stride_h * b.stride_h,
            stride_w: a.stride_w * b.stride_w,
            pad_top: a.pad_top,
            pad_left: a.pad_left,
            pad_bottom: a.pad_bottom,
            pad_right: a.pad_right,
        };
        if geometry.out_h() != b.out_h() || geometry.out_w() != b.out_w() {
            return None;
        }
        let mut kernel = vec![0.0; geometry.kernel_len()];
        for o2 in 0..b.out_c {
            for o1 in 0..b.in_c {
                for by in 0..b.kernel_h {
                    for bx in 0..b.kernel_w {
                        let k2 =
                            second.kernel[((o2 * b.in_c + o1) * b.kernel_h + by) * b.kernel_w + bx];
                        if k2 == 0.0 {
                            continue;
                        }
                        for i in 0..a.in_c {
                            for ay in 0..a.kernel_h {
                                for ax in 0..a.kernel_w {
                                    let k1 = self.kernel
                                        [((o1 * a.in_c + i) * a.kernel_h + ay) * a.kernel_w + ax];
                                    let (y, x) = (by * a.stride_h + ay, bx * a.stride_w + ax);
                                    kernel[((o2 * a.in_c + i) * kh + y) * kw + x] += k2 * k1;
                                }
                            }
                        }
                    }
                }
            }
        }
        let bias = second
            .apply_linear(&self.bias)
            .iter()
            .zip(&second.bias)
            .map(|(x, y)| x + y)
            .collect();
        Some(FloatConv {
            geometry,
            kernel,
            bias,
        })
    }

    fn apply_linear(&self, x: &[f64]) -> Vec<f64> {
        let mut z = vec![0.0; self.geometry.output_len()];
        self.geometry.for_each_term(|out, input, k| {
            z[out] += self.kernel[k] * x[input];
        });
        z
    }

    fn dense_weights(&self) -> Vec<f64> {
        let n = self.geometry.input_len();
        let mut w = vec![0.0; n * self.geometry.output_len()];
        self.geometry.for_each_term(|out, input, k| {
            w[out * n + input] += self.kernel[k];
        });
        w
    }

    /// The scale of every element of channel `c` if it is the same across the
    /// channel's positions.
    fn per_channel(values: &[f64], channels: usize) -> Option<Vec<f64>> {
        let per = values.len().checked_div(channels)?;
        if per == 0 || per * channels != values.len() {
            return None;
        }
        values
            .chunks_exact(per)
            .map(|ch| {
                let first = ch[0];
                ch.iter().all(|v| *v == first).then_some(first)
            })
            .collect()
    }
}

/// The map from a linear segment's input to its current tensor.
#[derive(Clone, Debug)]
pub(crate) enum Affine {
    /// `y = scale ⊙ x + shift`.
    Diag {
        scale: Vec<f64>,
        shift: Vec<f64>,
    },
    /// Row-major `out × in` weights.
    Dense {
        in_len: usize,
        w: Vec<f64>,
        b: Vec<f64>,
    },
    Conv(FloatConv),
}

/// One linear ONNX operator, applied after the current affine map.
#[derive(Clone, Debug)]
pub(crate) enum Op {
    Elementwise {
        scale: Vec<f64>,
        shift: Vec<f64>,
    },
    Dense {
        in_len: usize,
        w: Vec<f64>,
        b: Vec<f64>,
    },
    Conv(FloatConv),
}

impl Op {
    fn out_len(&self) -> usize {
        match self {
            Op::Elementwise { scale, .. } => scale.len(),
            Op::Dense { b, .. } => b.len(),
            Op::Conv(c) => c.bias.len(),
        }
    }

    fn apply_linear(&self, x: &[f64]) -> Vec<f64> {
        match self {
            Op::Elementwise { scale, .. } => scale.iter().zip(x).map(|(s, v)| s * v).collect(),
            Op::Dense { in_len, w, .. } => dense_mul(w, *in_len, x),
            Op::Conv(c) => c.apply_linear(x),
        }
    }

    fn bias(&self) -> &[f64] {
        match self {
            Op::Elementwise { shift, .. } => shift,
            Op::Dense { b, .. } => b,
            Op::Conv(c) => &c.bias,
        }
    }
}

fn dense_mul(w: &[f64], in_len: usize, x: &[f64]) -> Vec<f64> {
    w.chunks_exact(in_len.max(1))
        .map(|row| row.iter().zip(x).map(|(a, b)| a * b).sum())
        .collect()
}

fn check_size(what: &str, rows: usize, cols: usize, limit: usize) -> Result<(), ModelError> {
    let weights = rows.saturating_mul(cols);
    if weights > limit {
        return Err(ModelError::TooLarge {
            what: what.to_string(),
            weights,
            limit,
        });
    }
    Ok(())
}

impl Affine {
    pub fn identity(n: usize) -> Affine {
        Affine::Diag {
            scale: vec![1.0; n],
            shift: vec![0.0; n],
        }
    }

    pub fn is_identity(&self) -> bool {
        match self {
            Affine::Diag { scale, shift } => {
                scale.iter().all(|s| *s == 1.0) && shift.iter().all(|t| *t == 0.0)
            }
            _ => false,
        }
    }

    pub fn in_len(&self) -> usize {
        match self {
            Affine::Diag { scale, .. } => scale.len(),
            Affine::Dense { in_len, .. } => *in_len,
            Affine::Conv(c) => c.geometry.input_len(),
        }
    }

    pub fn out_len(&self) -> usize {
        match self {
            Affine::Diag { scale, .. } => scale.len(),
            Affine::Dense { b, .. } => b.len(),
            Affine::Conv(c) => c.bias.len(),
        }
    }

    /// `W·x + c` in f64.
    #[cfg(test)]
    pub fn apply(&self, x: &[f64]) -> Vec<f64> {
        let (lin, b) = match self {
            Affine::Diag { scale, shift } => (
                scale.iter().zip(x).map(|(s, v)| s * v).collect::<Vec<_>>(),
                shift,
            ),
            Affine::Dense { in_len, w, b } => (dense_mul(w, *in_len, x), b),
            Affine::Conv(c) => (c.apply_linear(x), &c.bias),
        };
        lin.iter().zip(b).map(|(a, b)| a + b).collect()
    }

    /// Dense `(weights, bias)`, refused past `limit` weights.
    pub fn to_dense(&self, limit: usize) -> Result<(Vec<f64>, Vec<f64>), ModelError> {
        check_size("dense expansion", self.in_len(), self.out_len(), limit)?;
        Ok(match self {
            Affine::Diag { scale, shift } => {
                let n = scale.len();
                let mut w = vec![0.0; n * n];
                for (i, s) in scale.iter().enumerate() {
                    w[i * n + i] = *s;
                }
                (w, shift.clone())
            }
            Affine::Dense { w, b, .. } => (w.clone(), b.clone()),
            Affine::Conv(c) => (c.dense_weights(), c.bias.clone()),
        })
    }

    /// `op ∘ self`, keeping convolution structure where it survives and
    /// expanding to dense (within `limit` weights) where it does not.
    pub fn then(self, op: Op, limit: usize) -> Result<Affine, ModelError> {
        if op_in_len(&op) != Some(self.out_len()) {
            return Err(ModelError::UnsupportedGraph(format!(
                "operator expects {:?} inputs, tensor has {}",
                op_in_len(&op),
                self.out_len()
            )));
        }
        match (self, op) {
            (Affine::Diag { scale, shift }, Op::Elementwise { scale: a, shift: c }) => {
                Ok(Affine::Diag {
                    scale: scale.iter().zip(&a).map(|(s, a)| s * a).collect(),
                    shift: shift
                        .iter()
                        .zip(a.iter().zip(&c))
                        .map(|(t, (a, c))| a * t + c)
                        .collect(),
                })
            }
            (Affine::Dense { in_len, mut w, b }, Op::Elementwise { scale: a, shift: c }) => {
                for (row, a) in w.chunks_exact_mut(in_len.max(1)).zip(&a) {
                    row.iter_mut().for_each(|v| *v *= a);
                }
                let b = b
                    .iter()
                    .zip(a.iter().zip(&c))
                    .map(|(b, (a, c))| a * b + c)
                    .collect();
                Ok(Affine::Dense { in_len, w, b })
            }
            (Affine::Conv(conv), Op::Elementwise { scale: a, shift: c })
                if FloatConv::per_channel(&a, conv.geometry.out_c).is_some() =>
            {
                let per = FloatConv::per_channel(&a, conv.geometry.out_c).unwrap_or_default();
                let mut conv = conv;
                let k_per = conv.geometry.in_c * conv.geometry.kernel_h * conv.geometry.kernel_w;
                for (ks, s) in conv.kernel.chunks_exact_mut(k_per.max(1)).zip(&per) {
                    ks.iter_mut().for_each(|v| *v *= s);
                }
                conv.bias = conv
                    .bias
                    .iter()
                    .zip(a.iter().zip(&c))
                    .map(|(b, (a, c))| a * b + c)
                    .collect();
                Ok(Affine::Conv(conv))
            }
            (Affine::Diag { scale, shift }, Op::Dense { in_len, w, b }) => {
                let shifted = dense_mul(&w, in_len, &shift);
                let mut w = w;
                for row in w.chunks_exact_mut(in_len.max(1)) {
                    row.iter_mut().zip(&scale).for_each(|(v, s)| *v *= s);
                }
                let b = b.iter().zip(&shifted).map(|(b, s)| b + s).collect();
                Ok(Affine::Dense { in_len, w, b })
            }
            (Affine::Diag { scale, shift }, Op::Conv(conv))
                if FloatConv::per_channel(&scale, conv.geometry.in_c).is_some() =>
            {
                let per = FloatConv::per_channel(&scale, conv.geometry.in_c).unwrap_or_default();
                let shifted = conv.apply_linear(&shift);
                let mut conv = conv;
                let g = conv.geometry;
                let khw = g.kernel_h * g.kernel_w;
                for (i, ks) in conv.kernel.chunks_exact_mut(khw.max(1)).enumerate() {
                    let s = per[i % g.in_c];
                    ks.iter_mut().for_each(|v| *v *= s);
                }
                conv.bias = conv.bias.iter().zip(&shifted).map(|(b, s)| b + s).collect();
                Ok(Affine::Conv(conv))
            }
            (Affine::Conv(first), Op::Conv(second)) if first.compose(&second).is_some() => first
                .compose(&second)
                .map(Affine::Conv)
                .ok_or_else(|| ModelError::UnsupportedGraph("convolutions do not compose".into())),
            (cur, op) => {
                let in_len = cur.in_len();
                check_size("fused linear layer", in_len, op.out_len(), limit)?;
                let (w1, b1) = cur.to_dense(limit)?;
                let out_len = op.out_len();
                let mut w = vec![0.0; out_len * in_len];
                let mut col = vec![0.0; cur.out_len()];
                for i in 0..in_len {
                    for (r, v) in col.iter_mut().enumerate() {
                        *v = w1[r * in_len + i];
                    }
                    if col.iter().all(|v| *v == 0.0) {
                        continue;
                    }
                    for (o, v) in op.apply_linear(&col).into_iter().enumerate() {
                        w[o * in_len + i] = v;
                    }
                }
                let b = op
                    .apply_linear(&b1)
                    .iter()
                    .zip(op.bias())
                    .map(|(a, b)| a + b)
                    .collect();
                Ok(Affine::Dense { in_len, w, b })
            }
        }
    }
}

fn op_in_len(op: &Op) -> Option<usize> {
    match op {
        Op::Elementwise { scale, .. } => Some(scale.len()),
        Op::Dense { in_len, .. } => Some(*in_len),
        Op::Conv(c) => Some(c.geometry.input_len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(in_c: usize, out_c: usize, pad: usize) -> FloatConv {
        let geometry = ConvGeometry {
            in_c,
            in_h: 5,
            in_w: 4,
            out_c,
            kernel_h: 3,
            kernel_w: 2,
            stride_h: 1,
            stride_w: 2,
            pad_top: pad,
            pad_left: pad,
            pad_bottom: pad,
            pad_right: 0,
        };
        let kernel = (0..geometry.kernel_len())
            .map(|i| ((i * 7) % 11) as f64 - 5.0)
            .collect();
        let bias = (0..geometry.output_len()).map(|i| (i % 3) as f64).collect();
        FloatConv {
            geometry,
            kernel,
            bias,
        }
    }

    fn close(a: &[f64], b: &[f64]) -> bool {
        a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|(x, y)| (x - y).abs() < 1e-9 * (1.0 + x.abs()))
    }

    // Composition must equal applying the two maps one after the other, on
    // every path (structured and dense fallback).
    #[test]
    fn composition_matches_sequential_application() {
        let c = conv(2, 3, 1);
        let n = c.geometry.input_len();
        let x: Vec<f64> = (0..n).map(|i| (i as f64 * 0.37).sin()).collect();
        let per_channel = Affine::Diag {
            scale: (0..n).map(|i| if i < n / 2 { 2.0 } else { -0.5 }).collect(),
            shift: (0..n).map(|i| i as f64 * 0.1).collect(),
        };
        let varying = Affine::Diag {
            scale: (0..n).map(|i| 1.0 + i as f64).collect(),
            shift: vec![0.25; n],
        };
        for first in [per_channel, varying, Affine::identity(n)] {
            let mid = first.apply(&x);
            let op = Op::Conv(c.clone());
            let expect: Vec<f64> = op
                .apply_linear(&mid)
                .iter()
                .zip(op.bias())
                .map(|(a, b)| a + b)
                .collect();
            let fused = first.clone().then(op, 1 << 20).unwrap();
            assert!(close(&fused.apply(&x), &expect));
            let m = fused.out_len();
            let ew = Op::Elementwise {
                scale: (0..m).map(|i| if i < m / 3 { 3.0 } else { 1.5 }).collect(),
                shift: (0..m).map(|i| i as f64).collect(),
            };
            let expect2: Vec<f64> = ew
                .apply_linear(&expect)
                .iter()
                .zip(ew.bias())
                .map(|(a, b)| a + b)
                .collect();
            let fused2 = fused.then(ew, 1 << 20).unwrap();
            assert!(close(&fused2.apply(&x), &expect2));
            let second = Op::Conv(FloatConv {
                geometry: ConvGeometry {
                    in_c: 3,
                    in_h: c.geometry.out_h(),
                    in_w: c.geometry.out_w(),
                    out_c: 2,
                    kernel_h: 2,
                    kernel_w: 1,
                    stride_h: 1,
                    stride_w: 1,
                    pad_top: 0,
                    pad_left: 0,
                    pad_bottom: 0,
                    pad_right: 0,
                },
                kernel: vec![
                    1.0, -2.0, 0.5, 3.0, 1.0, 1.0, 2.0, -1.0, 0.0, 4.0, 1.5, -0.5,
                ],
                bias: vec![0.5; 2 * (c.geometry.out_h() - 1) * c.geometry.out_w()],
            });
            let expect3: Vec<f64> = second
                .apply_linear(&expect2)
                .iter()
                .zip(second.bias())
                .map(|(a, b)| a + b)
                .collect();
            let was_conv = matches!(fused2, Affine::Conv(_));
            let fused3 = fused2.then(second, 1 << 20).unwrap();
            // An unpadded conv after a conv composes into one conv.
            assert_eq!(matches!(fused3, Affine::Conv(_)), was_conv);
            assert!(close(&fused3.apply(&x), &expect3));
        }
    }

    // Random geometries: the composed conv equals the two applied in turn.
    #[test]
    fn composed_convolutions_match_sequential_application() {
        let mut state = 0x1234_5678_9abc_def0u64;
        let mut next = |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            usize::try_from(state % n as u64).unwrap_or(0)
        };
        let mut composed = 0;
        for _ in 0..300 {
            let g1 = ConvGeometry {
                in_c: 1 + next(2),
                in_h: 3 + next(6),
                in_w: 3 + next(6),
                out_c: 1 + next(3),
                kernel_h: 1 + next(3),
                kernel_w: 1 + next(3),
                stride_h: 1 + next(2),
                stride_w: 1 + next(2),
                pad_top: next(2),
                pad_left: next(2),
                pad_bottom: next(2),
                pad_right: next(2),
            };
            let g2 = ConvGeometry {
                in_c: g1.out_c,
                in_h: g1.out_h(),
                in_w: g1.out_w(),
                out_c: 1 + next(3),
                kernel_h: 1 + next(2),
                kernel_w: 1 + next(2),
                stride_h: 1 + next(2),
                stride_w: 1 + next(2),
                pad_top: 0,
                pad_left: 0,
                pad_bottom: 0,
                pad_right: 0,
            };
            if g1.output_len() == 0 || g2.output_len() == 0 {
                continue;
            }
            let mk = |g: ConvGeometry, seed: usize| FloatConv {
                geometry: g,
                kernel: (0..g.kernel_len())
                    .map(|i| ((i * 31 + seed) % 13) as f64 - 6.0)
                    .collect(),
                bias: (0..g.output_len())
                    .map(|i| ((i + seed) % 5) as f64)
                    .collect(),
            };
            let (c1, c2) = (mk(g1, 3), mk(g2, 7));
            let x: Vec<f64> = (0..g1.input_len())
                .map(|i| ((i * 17) % 11) as f64 - 5.0)
                .collect();
            let mid: Vec<f64> = c1
                .apply_linear(&x)
                .iter()
                .zip(&c1.bias)
                .map(|(a, b)| a + b)
                .collect();
            let want: Vec<f64> = c2
                .apply_linear(&mid)
                .iter()
                .zip(&c2.bias)
                .map(|(a, b)| a + b)
                .collect();
            let c = c1.compose(&c2).unwrap();
            let got: Vec<f64> = c
                .apply_linear(&x)
                .iter()
                .zip(&c.bias)
                .map(|(a, b)| a + b)
                .collect();
            assert_eq!(got, want, "{g1:?} then {g2:?}");
            composed += 1;
        }
        assert!(composed > 100);
    }

    #[test]
    fn dense_fallback_respects_the_limit() {
        let c = conv(2, 3, 0);
        let n = c.geometry.input_len();
        let varying = Affine::Diag {
            scale: (0..n).map(|i| 1.0 + i as f64).collect(),
            shift: vec![0.0; n],
        };
        let err = varying.then(Op::Conv(c), 10).unwrap_err();
        assert!(
            matches!(err, ModelError::TooLarge { limit: 10, .. }),
            "{err}"
        );
    }
}
