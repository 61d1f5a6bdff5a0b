//! One function per supported ONNX operator: each checks its node's
//! attributes and constant inputs and appends what the operator does to
//! the walk (an affine operation, a shape change, or an activation).

use super::FloatActivation;
use super::{Ctx, Walker, broadcast, constant, product};
use crate::affine::{FloatConv, Op};
use crate::error::ModelError;
use crate::plan::ConvGeometry;
use crate::topology::{MAX_ELEMENTS, PoolSpec};

impl Walker {
    /// Flattens everything but the batch dimension (shape only).
    pub(super) fn flatten(&mut self, ctx: &Ctx) -> Result<(), ModelError> {
        let n = self.live_len();
        let axis = ctx.int("axis", 1);
        if axis != 1 && i64::try_from(self.shape.len()).map_or(true, |rank| axis != -rank) {
            return Err(ctx.usage(format!(
                "axis {axis}: only flattening everything but the batch"
            )));
        }
        self.shape = vec![n];
        Ok(())
    }

    /// A reshape that keeps the batch dimension and the element count (shape only).
    pub(super) fn reshape(&mut self, ctx: &Ctx, live_pos: usize) -> Result<(), ModelError> {
        let n = self.live_len();
        let cst = |i: usize| constant(&self.consts, ctx, i);
        if live_pos != 0 {
            return Err(ctx.usage("the shape must be a constant"));
        }
        let target = cst(1)?;
        let mut full = vec![1usize];
        full.extend_from_slice(&self.shape);
        let mut dims = Vec::with_capacity(target.data.len());
        let mut infer = None;
        for (i, d) in target.data.iter().enumerate() {
            // Shape values come from the file: integers that fit an i64
            // only (checked), converted exactly.
            if !(d.fract() == 0.0 && d.abs() < 2f64.powi(63)) {
                return Err(ctx.usage(format!("shape value {d}")));
            }
            #[allow(clippy::cast_possible_truncation)]
            let d = *d as i64;
            match d {
                0 => dims.push(
                    *full
                        .get(i)
                        .ok_or_else(|| ctx.usage("0 past the input rank"))?,
                ),
                -1 if infer.is_none() => {
                    infer = Some(i);
                    dims.push(1);
                }
                d if d > 0 => dims
                    .push(usize::try_from(d).map_err(|_| ctx.usage(format!("shape value {d}")))?),
                d => return Err(ctx.usage(format!("shape value {d}"))),
            }
        }
        let known = product(&dims).unwrap_or(0);
        if let Some(i) = infer {
            if known == 0 || !n.is_multiple_of(known) {
                return Err(ctx.usage("cannot infer the -1 dimension"));
            }
            dims[i] = n / known;
        }
        if product(&dims) != Some(n) || dims.first() != Some(&1) {
            return Err(ctx.usage(format!(
                "reshape {full:?} -> {dims:?} must keep the batch dimension and the element count"
            )));
        }
        self.shape = dims[1..].to_vec();
        Ok(())
    }

    /// Add, Sub, Mul or Div by a constant: an elementwise affine map.
    pub(super) fn elementwise(
        &mut self,
        ctx: &Ctx,
        op: &str,
        live_pos: usize,
    ) -> Result<(), ModelError> {
        let n = self.live_len();
        let cst = |i: usize| constant(&self.consts, ctx, i);
        let c = broadcast(cst(1 - live_pos)?, &self.shape, ctx)?;
        let (scale, shift) = match (op, live_pos) {
            ("Add", _) => (vec![1.0; n], c),
            ("Sub", 0) => (vec![1.0; n], c.iter().map(|v| -v).collect()),
            ("Sub", _) => (vec![-1.0; n], c),
            ("Mul", _) => (c, vec![0.0; n]),
            ("Div", 0) => {
                if c.contains(&0.0) {
                    return Err(ctx.usage("division by zero"));
                }
                (c.iter().map(|v| 1.0 / v).collect(), vec![0.0; n])
            }
            _ => return Err(ctx.usage("dividing by the data tensor is not linear")),
        };
        self.apply_op(Op::Elementwise { scale, shift }, self.shape.clone())?;
        Ok(())
    }

    /// Inference-mode batch normalization: a per-channel affine map.
    pub(super) fn batch_norm(&mut self, ctx: &Ctx, live_pos: usize) -> Result<(), ModelError> {
        let n = self.live_len();
        let cst = |i: usize| constant(&self.consts, ctx, i);
        if live_pos != 0 {
            return Err(ctx.usage("the data must be the first input"));
        }
        if ctx.int("training_mode", 0) != 0 {
            return Err(ctx.usage("training_mode = 1"));
        }
        let eps = ctx.float("epsilon", 1e-5);
        let channels = *self
            .shape
            .first()
            .ok_or_else(|| ctx.usage("scalar input"))?;
        let (gamma, beta, mean, var) = (cst(1)?, cst(2)?, cst(3)?, cst(4)?);
        for t in [gamma, beta, mean, var] {
            if t.data.len() != channels {
                return Err(ctx.usage(format!(
                    "parameter has {} values for {channels} channels",
                    t.data.len()
                )));
            }
        }
        let per = n / channels.max(1);
        let mut scale = Vec::with_capacity(n);
        let mut shift = Vec::with_capacity(n);
        for ch in 0..channels {
            let s = gamma.data[ch] / (var.data[ch] + eps).sqrt();
            let t = beta.data[ch] - mean.data[ch] * s;
            scale.extend(std::iter::repeat_n(s, per));
            shift.extend(std::iter::repeat_n(t, per));
        }
        self.apply_op(Op::Elementwise { scale, shift }, self.shape.clone())?;
        Ok(())
    }

    /// Gemm or MatMul with a constant weight: a dense layer.
    pub(super) fn dense(&mut self, ctx: &Ctx, op: &str, live_pos: usize) -> Result<(), ModelError> {
        let n = self.live_len();
        let cst = |i: usize| constant(&self.consts, ctx, i);
        if live_pos != 0 || self.shape.len() != 1 {
            return Err(ctx.usage(format!(
                "the data must be the first input, of shape (N, K); it has shape {:?}",
                self.shape
            )));
        }
        let b = cst(1)?;
        let (alpha, beta, trans_b) = if op == "Gemm" {
            if ctx.int("transA", 0) != 0 {
                return Err(ctx.usage("transA = 1 on the data input"));
            }
            (
                ctx.float("alpha", 1.0),
                ctx.float("beta", 1.0),
                ctx.int("transB", 0) != 0,
            )
        } else {
            (1.0, 1.0, false)
        };
        let [r, c] = b.dims.as_slice() else {
            return Err(ctx.usage(format!("weight of shape {:?}, expected 2-D", b.dims)));
        };
        let (k, m) = if trans_b { (*c, *r) } else { (*r, *c) };
        if k != n {
            return Err(ctx.usage(format!("weight expects {k} inputs, data has {n}")));
        }
        let mut w = vec![0.0; m * k];
        for o in 0..m {
            for i in 0..k {
                let src = if trans_b { o * k + i } else { i * m + o };
                w[o * k + i] = alpha * b.data[src];
            }
        }
        let bias = match ctx.input(2) {
            Some(_) => broadcast(cst(2)?, &[m], ctx)?
                .into_iter()
                .map(|v| beta * v)
                .collect(),
            None => vec![0.0; m],
        };
        self.apply_op(
            Op::Dense {
                in_len: k,
                w,
                b: bias,
            },
            vec![m],
        )?;
        Ok(())
    }

    /// A 2-D convolution with a constant kernel (group 1, no dilation).
    pub(super) fn conv(&mut self, ctx: &Ctx, live_pos: usize) -> Result<(), ModelError> {
        let cst = |i: usize| constant(&self.consts, ctx, i);
        if live_pos != 0 {
            return Err(ctx.usage("the data must be the first input"));
        }
        let (c, h, wd) = self.chw(ctx)?;
        if ctx.int("group", 1) != 1 {
            return Err(ctx.usage("group != 1"));
        }
        if ctx.pair("dilations", 1)? != (1, 1) {
            return Err(ctx.usage("dilations other than 1"));
        }
        let weight = cst(1)?;
        let [oc, ic, kh, kw] = weight.dims.as_slice() else {
            return Err(ctx.usage(format!("weight of shape {:?}, expected 4-D", weight.dims)));
        };
        if *ic != c {
            return Err(ctx.usage(format!("weight expects {ic} channels, data has {c}")));
        }
        if let Some(ks) = ctx.ints("kernel_shape")
            && ks
                .iter()
                .map(|k| usize::try_from(*k).ok())
                .ne([Some(*kh), Some(*kw)])
        {
            return Err(ctx.usage("kernel_shape does not match the weight"));
        }
        let (sh, sw) = ctx.pair("strides", 1)?;
        if sh == 0 || sw == 0 {
            return Err(ctx.usage("zero stride"));
        }
        let [pt, pl, pb, pr] = ctx.pads()?;
        let geometry = ConvGeometry {
            in_c: c,
            in_h: h,
            in_w: wd,
            out_c: *oc,
            kernel_h: *kh,
            kernel_w: *kw,
            stride_h: sh,
            stride_w: sw,
            pad_top: pt,
            pad_left: pl,
            pad_bottom: pb,
            pad_right: pr,
        };
        let out_len = geometry.output_len();
        if out_len == 0 || out_len > MAX_ELEMENTS || geometry.kernel_len() > MAX_ELEMENTS {
            return Err(ctx.usage(format!("output of {out_len} elements")));
        }
        let per = geometry.out_h() * geometry.out_w();
        let bias = match ctx.input(2) {
            Some(_) => {
                let b = cst(2)?;
                if b.data.len() != *oc {
                    return Err(ctx.usage("bias length differs from the output channels"));
                }
                b.data
                    .iter()
                    .flat_map(|v| std::iter::repeat_n(*v, per))
                    .collect()
            }
            None => vec![0.0; out_len],
        };
        let shape = vec![*oc, geometry.out_h(), geometry.out_w()];
        let conv = FloatConv {
            geometry,
            kernel: weight.data.clone(),
            bias,
        };
        self.apply_op(Op::Conv(conv), shape)?;
        Ok(())
    }

    /// Average pooling: a depthwise convolution, or a dense map when border windows divide by their own size.
    pub(super) fn average_pool(&mut self, ctx: &Ctx, op: &str) -> Result<(), ModelError> {
        let n = self.live_len();
        let (c, h, w) = self.chw(ctx)?;
        let spec = if op == "GlobalAveragePool" {
            PoolSpec {
                channels: c,
                in_h: h,
                in_w: w,
                kernel_h: h,
                kernel_w: w,
                stride_h: 1,
                stride_w: 1,
                pad_top: 0,
                pad_left: 0,
                pad_bottom: 0,
                pad_right: 0,
            }
        } else {
            self.pool_spec(ctx)?
        };
        let padded = spec.pad_top + spec.pad_left + spec.pad_bottom + spec.pad_right > 0;
        let shape = vec![c, spec.out_h(), spec.out_w()];
        let op = if !padded || ctx.int("count_include_pad", 0) != 0 {
            // A depthwise mean is a convolution whose kernel is
            // diagonal in the channels.
            let geometry = ConvGeometry {
                in_c: c,
                in_h: h,
                in_w: w,
                out_c: c,
                kernel_h: spec.kernel_h,
                kernel_w: spec.kernel_w,
                stride_h: spec.stride_h,
                stride_w: spec.stride_w,
                pad_top: spec.pad_top,
                pad_left: spec.pad_left,
                pad_bottom: spec.pad_bottom,
                pad_right: spec.pad_right,
            };
            let khw = spec.kernel_h * spec.kernel_w;
            let mut kernel = vec![0.0; geometry.kernel_len()];
            for ch in 0..c {
                let start = (ch * c + ch) * khw;
                kernel[start..start + khw].fill(1.0 / khw as f64);
            }
            let bias = vec![0.0; geometry.output_len()];
            Op::Conv(FloatConv {
                geometry,
                kernel,
                bias,
            })
        } else {
            // Border windows divide by their own size: not a conv.
            let windows = spec.windows();
            let limit_check = windows.len().saturating_mul(n);
            if limit_check > self.limit {
                return Err(ModelError::TooLarge {
                    what: format!("AveragePool {:?} without count_include_pad", ctx.node.name),
                    weights: limit_check,
                    limit: self.limit,
                });
            }
            let mut w = vec![0.0; windows.len() * n];
            for (o, win) in windows.iter().enumerate() {
                for i in win {
                    w[o * n + *i as usize] = 1.0 / win.len() as f64;
                }
            }
            Op::Dense {
                in_len: n,
                w,
                b: vec![0.0; windows.len()],
            }
        };
        self.apply_op(op, shape)?;
        Ok(())
    }

    /// Max pooling: an activation stage evaluated by B.
    pub(super) fn max_pool(&mut self, ctx: &Ctx) -> Result<(), ModelError> {
        let spec = self.pool_spec(ctx)?;
        self.push_activation(FloatActivation::MaxPool, Some(spec), ctx)
    }
}
