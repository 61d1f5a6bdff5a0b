//! Walks an ONNX graph and turns it into alternating float linear segments
//! and activations. Nothing is approximated: an operator outside the
//! supported list is refused with its type and node name.

use std::collections::HashMap;

use tract_onnx::pb;

use crate::affine::{Affine, FloatConv, Op};
use crate::error::ModelError;
use crate::plan::ConvGeometry;
use crate::topology::{ActivationKind, MAX_ELEMENTS, PoolSpec};

/// Key of the ONNX metadata entry that carries per-feature input bounds.
pub const INPUT_BOUNDS_KEY: &str = "veil.input_bounds";
/// Key of the ONNX metadata entry that carries the input scale: a JSON
/// number for every feature, or a list with one per feature; features
/// encode as `x̂_i = round(x_i · scale_i)`.
pub const INPUT_SCALE_KEY: &str = "veil.input_scale";

#[derive(Clone, Debug)]
pub(crate) enum FloatStage {
    Linear(Affine),
    Activation {
        kind: FloatActivation,
        input_len: usize,
        pool: Option<PoolSpec>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum FloatActivation {
    Relu,
    LeakyRelu(f64),
    Sigmoid,
    Tanh,
    MaxPool,
    ReluMaxPool,
}

impl FloatActivation {
    pub fn quantize(self, weight_bits: u32) -> ActivationKind {
        match self {
            FloatActivation::Relu => ActivationKind::Relu,
            FloatActivation::LeakyRelu(alpha) => ActivationKind::LeakyRelu {
                alpha_q: (alpha * 2f64.powi(weight_bits as i32)).round() as i64,
            },
            FloatActivation::Sigmoid => ActivationKind::Sigmoid,
            FloatActivation::Tanh => ActivationKind::Tanh,
            FloatActivation::MaxPool => ActivationKind::MaxPool,
            FloatActivation::ReluMaxPool => ActivationKind::ReluMaxPool,
        }
    }
}

pub(crate) struct ImportedGraph {
    pub graph_name: String,
    pub input_shape: Vec<usize>,
    pub stages: Vec<FloatStage>,
    pub output_len: usize,
    pub device_softmax: bool,
    pub metadata_bounds: Option<Result<Vec<(f64, f64)>, ModelError>>,
    pub metadata_scale: Option<Result<InputScale, ModelError>>,
    /// The model for the float reference, with a final Softmax removed.
    pub float_proto: pb::ModelProto,
}

#[derive(Clone, Debug)]
struct Const {
    dims: Vec<usize>,
    data: Vec<f64>,
}

struct Ctx<'a> {
    node: &'a pb::NodeProto,
}

impl Ctx<'_> {
    fn usage(&self, reason: impl Into<String>) -> ModelError {
        ModelError::UnsupportedUsage {
            op_type: self.node.op_type.clone(),
            node: self.node.name.clone(),
            reason: reason.into(),
        }
    }

    fn attr(&self, name: &str) -> Option<&pb::AttributeProto> {
        self.node.attribute.iter().find(|a| a.name == name)
    }

    fn int(&self, name: &str, default: i64) -> i64 {
        self.attr(name).map(|a| a.i).unwrap_or(default)
    }

    fn float(&self, name: &str, default: f32) -> f64 {
        f64::from(self.attr(name).map(|a| a.f).unwrap_or(default))
    }

    fn ints(&self, name: &str) -> Option<Vec<i64>> {
        self.attr(name).map(|a| a.ints.clone())
    }

    fn string(&self, name: &str) -> Option<String> {
        self.attr(name)
            .map(|a| String::from_utf8_lossy(&a.s).into_owned())
    }

    fn input(&self, i: usize) -> Option<&str> {
        self.node
            .input
            .get(i)
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }

    fn output(&self) -> Result<&str, ModelError> {
        self.node
            .output
            .first()
            .map(String::as_str)
            .ok_or_else(|| self.usage("node has no output"))
    }

    /// Two spatial values from an attribute (kernel, strides, dilations).
    fn pair(&self, name: &str, default: usize) -> Result<(usize, usize), ModelError> {
        match self.ints(name) {
            None => Ok((default, default)),
            Some(v) if v.len() == 2 => {
                Ok((to_usize(v[0], self, name)?, to_usize(v[1], self, name)?))
            }
            Some(v) => Err(self.usage(format!(
                "{name} has {} values, only 2-D is supported",
                v.len()
            ))),
        }
    }

    /// ONNX pads `[top, left, bottom, right]`.
    fn pads(&self) -> Result<[usize; 4], ModelError> {
        match self.string("auto_pad").as_deref() {
            None | Some("NOTSET") | Some("VALID") | Some("") => {}
            Some(other) => {
                return Err(self.usage(format!(
                    "auto_pad {other} is not supported; use explicit pads"
                )));
            }
        }
        match self.ints("pads") {
            None => Ok([0; 4]),
            Some(v) if v.len() == 4 => Ok([
                to_usize(v[0], self, "pads")?,
                to_usize(v[1], self, "pads")?,
                to_usize(v[2], self, "pads")?,
                to_usize(v[3], self, "pads")?,
            ]),
            Some(v) => Err(self.usage(format!(
                "pads has {} values, only 2-D is supported",
                v.len()
            ))),
        }
    }
}

fn to_usize(v: i64, ctx: &Ctx, what: &str) -> Result<usize, ModelError> {
    usize::try_from(v).map_err(|_| ctx.usage(format!("{what} value {v} is negative")))
}

fn malformed(m: impl Into<String>) -> ModelError {
    ModelError::MalformedOnnx(m.into())
}

fn product(dims: &[usize]) -> Option<usize> {
    dims.iter().try_fold(1usize, |a, d| a.checked_mul(*d))
}

fn le_chunks<const N: usize>(
    raw: &[u8],
    count: usize,
    name: &str,
) -> Result<Vec<[u8; N]>, ModelError> {
    if raw.len() != count.saturating_mul(N) {
        return Err(malformed(format!(
            "tensor {name}: {} raw bytes for {count} elements",
            raw.len()
        )));
    }
    Ok(raw
        .chunks_exact(N)
        .map(|c| {
            let mut a = [0u8; N];
            a.copy_from_slice(c);
            a
        })
        .collect())
}

fn tensor_const(t: &pb::TensorProto) -> Result<Const, ModelError> {
    let name = &t.name;
    if t.data_location == Some(1) || !t.external_data.is_empty() {
        return Err(malformed(format!(
            "tensor {name} uses external data, which is not supported"
        )));
    }
    let dims = t
        .dims
        .iter()
        .map(|d| {
            usize::try_from(*d).map_err(|_| malformed(format!("tensor {name} has dimension {d}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let count = product(&dims).ok_or_else(|| malformed(format!("tensor {name} is too large")))?;
    let raw = !t.raw_data.is_empty();
    let data: Vec<f64> = match t.data_type {
        1 if raw => le_chunks::<4>(&t.raw_data, count, name)?
            .into_iter()
            .map(|b| f64::from(f32::from_le_bytes(b)))
            .collect(),
        1 => t.float_data.iter().map(|v| f64::from(*v)).collect(),
        11 if raw => le_chunks::<8>(&t.raw_data, count, name)?
            .into_iter()
            .map(f64::from_le_bytes)
            .collect(),
        11 => t.double_data.clone(),
        7 if raw => le_chunks::<8>(&t.raw_data, count, name)?
            .into_iter()
            .map(|b| i64::from_le_bytes(b) as f64)
            .collect(),
        7 => t.int64_data.iter().map(|v| *v as f64).collect(),
        6 if raw => le_chunks::<4>(&t.raw_data, count, name)?
            .into_iter()
            .map(|b| f64::from(i32::from_le_bytes(b)))
            .collect(),
        6 => t.int32_data.iter().map(|v| f64::from(*v)).collect(),
        other => {
            return Err(malformed(format!(
                "tensor {name} has data type {other}; only float, double, int32 and int64 are supported"
            )));
        }
    };
    if data.len() != count {
        return Err(malformed(format!(
            "tensor {name} has {} values for shape {dims:?}",
            data.len()
        )));
    }
    Ok(Const { dims, data })
}

/// Broadcast a constant (numpy rules) against a live tensor of `shape`
/// carrying a leading batch dimension of 1.
fn broadcast(c: &Const, shape: &[usize], ctx: &Ctx) -> Result<Vec<f64>, ModelError> {
    let mut full = vec![1usize];
    full.extend_from_slice(shape);
    if c.dims.len() > full.len() {
        return Err(ctx.usage(format!(
            "constant of shape {:?} does not broadcast to the data shape {full:?}",
            c.dims
        )));
    }
    let offset = full.len() - c.dims.len();
    let mut padded = vec![1usize; offset];
    padded.extend_from_slice(&c.dims);
    for (cd, fd) in padded.iter().zip(&full) {
        if *cd != 1 && cd != fd {
            return Err(ctx.usage(format!(
                "constant of shape {:?} does not broadcast to the data shape {full:?}",
                c.dims
            )));
        }
    }
    // Strides of the constant, zero along broadcast axes.
    let mut strides = vec![0usize; full.len()];
    let mut acc = 1;
    for i in (0..full.len()).rev() {
        strides[i] = if padded[i] == 1 { 0 } else { acc };
        acc *= padded[i];
    }
    let n = product(shape).unwrap_or(0);
    let mut out = Vec::with_capacity(n);
    for flat in 0..n {
        let mut rem = flat;
        let mut idx = 0;
        for axis in (1..full.len()).rev() {
            let d = full[axis];
            idx += (rem % d) * strides[axis];
            rem /= d;
        }
        out.push(c.data.get(idx).copied().unwrap_or(0.0));
    }
    Ok(out)
}

/// An input scale as the metadata states it.
#[derive(Clone, Debug, PartialEq, serde::Deserialize)]
#[serde(untagged)]
pub(crate) enum InputScale {
    Every(f64),
    Each(Vec<f64>),
}

fn metadata_scale(model: &pb::ModelProto) -> Option<Result<InputScale, ModelError>> {
    let entry = model
        .metadata_props
        .iter()
        .find(|p| p.key == INPUT_SCALE_KEY)?;
    Some(
        serde_json::from_str::<InputScale>(&entry.value)
            .map_err(|e| ModelError::InvalidScale(format!("metadata {INPUT_SCALE_KEY}: {e}"))),
    )
}

fn metadata_bounds(model: &pb::ModelProto) -> Option<Result<Vec<(f64, f64)>, ModelError>> {
    let entry = model
        .metadata_props
        .iter()
        .find(|p| p.key == INPUT_BOUNDS_KEY)?;
    Some(
        serde_json::from_str::<Vec<(f64, f64)>>(&entry.value)
            .map_err(|e| ModelError::InvalidBounds(format!("metadata {INPUT_BOUNDS_KEY}: {e}"))),
    )
}

struct Walker {
    limit: usize,
    consts: HashMap<String, Const>,
    live_name: String,
    shape: Vec<usize>,
    affine: Affine,
    stages: Vec<FloatStage>,
}

impl Walker {
    fn live_len(&self) -> usize {
        self.affine.out_len()
    }

    fn chw(&self, ctx: &Ctx) -> Result<(usize, usize, usize), ModelError> {
        match self.shape.as_slice() {
            [c, h, w] => Ok((*c, *h, *w)),
            other => Err(ctx.usage(format!(
                "expects a (N, C, H, W) tensor, data shape is {other:?}"
            ))),
        }
    }

    fn apply_op(&mut self, op: Op, shape: Vec<usize>) -> Result<(), ModelError> {
        let affine = std::mem::replace(&mut self.affine, Affine::identity(0));
        self.affine = affine.then(op, self.limit)?;
        self.shape = shape;
        Ok(())
    }

    fn push_activation(
        &mut self,
        kind: FloatActivation,
        pool: Option<PoolSpec>,
        ctx: &Ctx,
    ) -> Result<(), ModelError> {
        let input_len = self.live_len();
        let out_shape = match &pool {
            Some(p) => vec![p.channels, p.out_h(), p.out_w()],
            None => self.shape.clone(),
        };
        if self.affine.is_identity()
            && let Some(FloatStage::Activation {
                kind: prev,
                pool: prev_pool,
                ..
            }) = self.stages.last_mut()
        {
            use FloatActivation as A;
            let fused = match (*prev, kind) {
                (A::Relu, A::MaxPool) | (A::MaxPool, A::Relu) => Some(A::ReluMaxPool),
                // ReLU is idempotent and commutes with max-pool.
                (A::Relu, A::Relu) | (A::ReluMaxPool, A::Relu) => Some(*prev),
                (A::Sigmoid | A::Tanh, A::MaxPool) => {
                    return Err(ctx.usage(
                        "MaxPool directly after Sigmoid/Tanh is not supported (only ReLU fuses with max-pool)",
                    ));
                }
                _ => None,
            };
            if let Some(f) = fused {
                *prev = f;
                if pool.is_some() {
                    *prev_pool = pool;
                }
                self.shape = out_shape;
                self.affine = Affine::identity(product(&self.shape).unwrap_or(0));
                return Ok(());
            }
        }
        // Stages alternate and start with a linear stage: an activation with
        // no linear operator before it gets an exact identity layer.
        let affine = std::mem::replace(&mut self.affine, Affine::identity(0));
        self.stages.push(FloatStage::Linear(affine));
        self.stages.push(FloatStage::Activation {
            kind,
            input_len,
            pool,
        });
        self.shape = out_shape;
        self.affine = Affine::identity(product(&self.shape).unwrap_or(0));
        Ok(())
    }

    fn pool_spec(&self, ctx: &Ctx) -> Result<PoolSpec, ModelError> {
        let (c, h, w) = self.chw(ctx)?;
        let (kh, kw) = ctx.pair("kernel_shape", 0)?;
        if kh == 0 || kw == 0 {
            return Err(ctx.usage("missing kernel_shape"));
        }
        let (sh, sw) = ctx.pair("strides", 1)?;
        if ctx.pair("dilations", 1)? != (1, 1) {
            return Err(ctx.usage("dilations other than 1"));
        }
        if ctx.int("ceil_mode", 0) != 0 {
            return Err(ctx.usage("ceil_mode = 1"));
        }
        let [pt, pl, pb, pr] = ctx.pads()?;
        if sh == 0 || sw == 0 {
            return Err(ctx.usage("zero stride"));
        }
        let spec = PoolSpec {
            channels: c,
            in_h: h,
            in_w: w,
            kernel_h: kh,
            kernel_w: kw,
            stride_h: sh,
            stride_w: sw,
            pad_top: pt,
            pad_left: pl,
            pad_bottom: pb,
            pad_right: pr,
        };
        if spec.output_len() == 0 || spec.output_len() > MAX_ELEMENTS {
            return Err(ctx.usage(format!("output of {} elements", spec.output_len())));
        }
        if pt >= kh || pb >= kh || pl >= kw || pr >= kw {
            return Err(ctx.usage("padding as large as the kernel gives windows without input"));
        }
        Ok(spec)
    }

    fn node(&mut self, node: &pb::NodeProto) -> Result<(), ModelError> {
        let ctx = Ctx { node };
        if !(node.domain.is_empty() || node.domain == "ai.onnx") {
            return Err(ModelError::UnsupportedOperator {
                op_type: format!("{}:{}", node.domain, node.op_type),
                node: node.name.clone(),
                detail: String::new(),
            });
        }
        let op = node.op_type.as_str();
        if op == "Constant" {
            let value = if let Some(t) = ctx.attr("value").and_then(|a| a.t.as_ref()) {
                tensor_const(t)?
            } else if let Some(a) = ctx.attr("value_float") {
                Const {
                    dims: vec![],
                    data: vec![f64::from(a.f)],
                }
            } else if let Some(a) = ctx.attr("value_floats") {
                Const {
                    dims: vec![a.floats.len()],
                    data: a.floats.iter().map(|v| f64::from(*v)).collect(),
                }
            } else if let Some(a) = ctx.attr("value_int") {
                Const {
                    dims: vec![],
                    data: vec![a.i as f64],
                }
            } else if let Some(a) = ctx.attr("value_ints") {
                Const {
                    dims: vec![a.ints.len()],
                    data: a.ints.iter().map(|v| *v as f64).collect(),
                }
            } else {
                return Err(ctx.usage("constant without a supported value attribute"));
            };
            self.consts.insert(ctx.output()?.to_string(), value);
            return Ok(());
        }
        if !SUPPORTED.contains(&op) {
            return Err(ModelError::UnsupportedOperator {
                op_type: node.op_type.clone(),
                node: node.name.clone(),
                detail: format!(" (supported: {})", SUPPORTED.join(", ")),
            });
        }
        // Exactly one non-constant input, which must be the live tensor.
        let mut live_pos = None;
        for (i, name) in node.input.iter().enumerate() {
            if name.is_empty() || self.consts.contains_key(name) {
                continue;
            }
            if *name != self.live_name {
                return Err(ModelError::UnsupportedGraph(format!(
                    "node {:?} ({op}) reads {name:?}, which is not the current data tensor \
                     (branches and skip connections are not supported)",
                    node.name
                )));
            }
            if live_pos.is_some() {
                return Err(ctx.usage("both operands are the data tensor"));
            }
            live_pos = Some(i);
        }
        let Some(live_pos) = live_pos else {
            return Err(
                ctx.usage("operator on constants only (constant-fold the model before export)")
            );
        };
        let out = ctx.output()?.to_string();
        if node.output.iter().skip(1).any(|o| !o.is_empty()) && !matches!(op, "Dropout") {
            return Err(ctx.usage("only the first output is supported"));
        }
        let cst = |i: usize| -> Result<&Const, ModelError> {
            ctx.input(i)
                .and_then(|n| self.consts.get(n))
                .ok_or_else(|| ctx.usage(format!("input {i} must be a constant")))
        };
        let n = self.live_len();
        match op {
            "Identity" | "Dropout" => {}
            "Flatten" => {
                let axis = ctx.int("axis", 1);
                if axis != 1 && axis != -(self.shape.len() as i64) {
                    return Err(ctx.usage(format!(
                        "axis {axis}: only flattening everything but the batch"
                    )));
                }
                self.shape = vec![n];
            }
            "Reshape" => {
                if live_pos != 0 {
                    return Err(ctx.usage("the shape must be a constant"));
                }
                let target = cst(1)?;
                let mut full = vec![1usize];
                full.extend_from_slice(&self.shape);
                let mut dims = Vec::with_capacity(target.data.len());
                let mut infer = None;
                for (i, d) in target.data.iter().enumerate() {
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
                        d if d > 0 => dims.push(d as usize),
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
            }
            "Add" | "Sub" | "Mul" | "Div" => {
                let c = broadcast(cst(1 - live_pos)?, &self.shape, &ctx)?;
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
            }
            "BatchNormalization" => {
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
            }
            "Gemm" | "MatMul" => {
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
                    Some(_) => broadcast(cst(2)?, &[m], &ctx)?
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
            }
            "Conv" => {
                if live_pos != 0 {
                    return Err(ctx.usage("the data must be the first input"));
                }
                let (c, h, wd) = self.chw(&ctx)?;
                if ctx.int("group", 1) != 1 {
                    return Err(ctx.usage("group != 1"));
                }
                if ctx.pair("dilations", 1)? != (1, 1) {
                    return Err(ctx.usage("dilations other than 1"));
                }
                let weight = cst(1)?;
                let [oc, ic, kh, kw] = weight.dims.as_slice() else {
                    return Err(
                        ctx.usage(format!("weight of shape {:?}, expected 4-D", weight.dims))
                    );
                };
                if *ic != c {
                    return Err(ctx.usage(format!("weight expects {ic} channels, data has {c}")));
                }
                if let Some(ks) = ctx.ints("kernel_shape")
                    && ks != [*kh as i64, *kw as i64]
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
            }
            "AveragePool" | "GlobalAveragePool" => {
                let (c, h, w) = self.chw(&ctx)?;
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
                    self.pool_spec(&ctx)?
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
                            what: format!("AveragePool {:?} without count_include_pad", node.name),
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
            }
            "Relu" => self.push_activation(FloatActivation::Relu, None, &ctx)?,
            "LeakyRelu" => self.push_activation(
                FloatActivation::LeakyRelu(ctx.float("alpha", 0.01)),
                None,
                &ctx,
            )?,
            "Sigmoid" => self.push_activation(FloatActivation::Sigmoid, None, &ctx)?,
            "Tanh" => self.push_activation(FloatActivation::Tanh, None, &ctx)?,
            "MaxPool" => {
                let spec = self.pool_spec(&ctx)?;
                self.push_activation(FloatActivation::MaxPool, Some(spec), &ctx)?
            }
            _ => {
                return Err(ModelError::UnsupportedOperator {
                    op_type: node.op_type.clone(),
                    node: node.name.clone(),
                    detail: String::new(),
                });
            }
        }
        self.live_name = out;
        Ok(())
    }
}

const SUPPORTED: &[&str] = &[
    "Gemm",
    "MatMul",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Conv",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "BatchNormalization",
    "Flatten",
    "Reshape",
    "Relu",
    "LeakyRelu",
    "Sigmoid",
    "Tanh",
    "Softmax",
    "Identity",
    "Dropout",
    "Constant",
];

fn value_shape(v: &pb::ValueInfoProto) -> Result<Vec<usize>, ModelError> {
    use pb::tensor_shape_proto::dimension::Value;
    let Some(pb::type_proto::Value::TensorType(t)) =
        v.r#type.as_ref().and_then(|t| t.value.as_ref())
    else {
        return Err(malformed(format!("input {:?} is not a tensor", v.name)));
    };
    if t.elem_type != 1 {
        return Err(ModelError::UnsupportedGraph(format!(
            "input {:?} has element type {}, only float32 is supported",
            v.name, t.elem_type
        )));
    }
    let dims = t
        .shape
        .as_ref()
        .map(|s| s.dim.as_slice())
        .ok_or_else(|| malformed(format!("input {:?} has no shape", v.name)))?;
    let (batch, rest) = dims
        .split_first()
        .ok_or_else(|| ModelError::UnsupportedGraph("input must have a batch dimension".into()))?;
    match &batch.value {
        Some(Value::DimValue(1)) | Some(Value::DimParam(_)) | None => {}
        Some(Value::DimValue(b)) => {
            return Err(ModelError::UnsupportedGraph(format!(
                "input batch dimension is {b}, expected 1 or symbolic"
            )));
        }
    }
    let shape = rest
        .iter()
        .map(|d| match &d.value {
            Some(Value::DimValue(v)) if *v > 0 => Ok(*v as usize),
            other => Err(ModelError::UnsupportedGraph(format!(
                "input {:?} needs fixed feature dimensions, found {other:?}",
                v.name
            ))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    if shape.is_empty() || !matches!(shape.len(), 1 | 3) {
        return Err(ModelError::UnsupportedGraph(format!(
            "input shape (N, {shape:?}): expected (N, features) or (N, C, H, W)"
        )));
    }
    Ok(shape)
}

pub(crate) fn decode(bytes: &[u8]) -> Result<pb::ModelProto, ModelError> {
    use tract_onnx::prelude::Framework;
    let proto = tract_onnx::onnx()
        .proto_model_for_read(&mut &bytes[..])
        .map_err(|e| malformed(format!("not an ONNX protobuf: {e}")))?;
    if proto.graph.as_ref().is_none_or(|g| g.node.is_empty()) {
        return Err(malformed("no graph or an empty graph"));
    }
    Ok(proto)
}

pub(crate) fn import(proto: pb::ModelProto, limit: usize) -> Result<ImportedGraph, ModelError> {
    let graph = proto.graph.as_ref().ok_or_else(|| malformed("no graph"))?;
    let mut consts = HashMap::new();
    for t in &graph.initializer {
        consts.insert(t.name.clone(), tensor_const(t)?);
    }
    if !graph.sparse_initializer.is_empty() {
        return Err(ModelError::UnsupportedGraph("sparse initializers".into()));
    }
    let inputs: Vec<&pb::ValueInfoProto> = graph
        .input
        .iter()
        .filter(|i| !consts.contains_key(&i.name))
        .collect();
    let [input] = inputs.as_slice() else {
        return Err(ModelError::UnsupportedGraph(format!(
            "expected one data input, found {}",
            inputs.len()
        )));
    };
    let [output] = graph.output.as_slice() else {
        return Err(ModelError::UnsupportedGraph(format!(
            "expected one output, found {}",
            graph.output.len()
        )));
    };
    let input_shape = value_shape(input)?;
    let n = product(&input_shape)
        .filter(|n| *n <= MAX_ELEMENTS)
        .ok_or_else(|| {
            ModelError::UnsupportedGraph(format!("input shape {input_shape:?} is too large"))
        })?;
    let mut walker = Walker {
        limit,
        consts,
        live_name: input.name.clone(),
        shape: input_shape.clone(),
        affine: Affine::identity(n),
        stages: Vec::new(),
    };
    let mut softmax: Option<(String, String)> = None;
    for node in &graph.node {
        if let Some((_, out)) = &softmax
            && (node.input.iter().any(|i| i == out) || node.op_type != "Constant")
        {
            return Err(ModelError::UnsupportedGraph(format!(
                "Softmax must be the last operator (node {:?} follows it)",
                node.name
            )));
        }
        if node.op_type == "Softmax" && (node.domain.is_empty() || node.domain == "ai.onnx") {
            let ctx = Ctx { node };
            if ctx.input(0) != Some(walker.live_name.as_str()) {
                return Err(ctx.usage("Softmax of something other than the data tensor"));
            }
            if walker.shape.len() != 1 {
                return Err(ctx.usage("Softmax over a multi-dimensional tensor"));
            }
            let axis = ctx.int("axis", -1);
            if axis != 1 && axis != -1 {
                return Err(ctx.usage(format!("Softmax over axis {axis}")));
            }
            softmax = Some((walker.live_name.clone(), ctx.output()?.to_string()));
            continue;
        }
        walker.node(node)?;
    }
    let final_name = match &softmax {
        Some((_, out)) => out,
        None => &walker.live_name,
    };
    if output.name != *final_name {
        return Err(ModelError::UnsupportedGraph(format!(
            "graph output {:?} is not the end of the data path",
            output.name
        )));
    }
    let mut stages = walker.stages;
    let ends_with_activation = walker.affine.is_identity() && !stages.is_empty();
    if !ends_with_activation {
        stages.push(FloatStage::Linear(walker.affine.clone()));
    }
    let output_len = walker.affine.out_len();
    let metadata_bounds = metadata_bounds(&proto);
    let metadata_scale = metadata_scale(&proto);
    let graph_name = graph.name.clone();
    let mut float_proto = proto;
    if let Some((logits, _)) = &softmax
        && let Some(g) = float_proto.graph.as_mut()
    {
        g.node.retain(|n| n.op_type != "Softmax");
        if let Some(o) = g.output.first_mut() {
            o.name = logits.clone();
        }
    }
    Ok(ImportedGraph {
        graph_name,
        input_shape,
        stages,
        output_len,
        device_softmax: softmax.is_some(),
        metadata_bounds,
        metadata_scale,
        float_proto,
    })
}
