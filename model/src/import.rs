//! Walks an ONNX graph and turns it into alternating float linear segments
//! and activations. Nothing is approximated: an operator outside the
//! supported list is refused with its type and node name.

use std::collections::HashMap;

use tract_onnx::pb;

mod node;
mod ops;

use node::{Const, Ctx, broadcast, constant, malformed, product, tensor_const};

use crate::affine::{Affine, Op};
use crate::error::ModelError;
use crate::semantics::pow2;
use crate::topology::{ActivationKind, MAX_ELEMENTS, PoolSpec};

/// ONNX's `TensorProto.DataType` code of float32, the one element type of
/// the data path.
const FLOAT: i64 = 1;

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
    /// The integer kind at `weight_bits` of weight precision; refuses a
    /// leaky-ReLU slope (read from the model file) that does not quantize
    /// like a weight.
    pub fn quantize(self, weight_bits: u32, stage: usize) -> Result<ActivationKind, ModelError> {
        Ok(match self {
            FloatActivation::Relu => ActivationKind::Relu,
            FloatActivation::LeakyRelu(alpha) => ActivationKind::LeakyRelu {
                alpha_q: crate::model::quantize_weight(alpha, pow2(weight_bits), stage)?,
            },
            FloatActivation::Sigmoid => ActivationKind::Sigmoid,
            FloatActivation::Tanh => ActivationKind::Tanh,
            FloatActivation::MaxPool => ActivationKind::MaxPool,
            FloatActivation::ReluMaxPool => ActivationKind::ReluMaxPool,
        })
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
        match op {
            "Identity" | "Dropout" => {}
            // skl2onnx opens every graph with a Cast to float: on the float
            // data tensor it changes nothing.
            "Cast" if ctx.int("to", 0) == FLOAT => {}
            "Cast" => {
                return Err(ctx.usage(format!(
                    "Cast to element type {} (only a Cast to float, a no-op on the data, is supported)",
                    ctx.int("to", 0)
                )));
            }
            "Flatten" => self.flatten(&ctx)?,
            "Reshape" => self.reshape(&ctx, live_pos)?,
            "Add" | "Sub" | "Mul" | "Div" => self.elementwise(&ctx, op, live_pos)?,
            "BatchNormalization" => self.batch_norm(&ctx, live_pos)?,
            "Gemm" | "MatMul" => self.dense(&ctx, op, live_pos)?,
            "Conv" => self.conv(&ctx, live_pos)?,
            "AveragePool" | "GlobalAveragePool" => self.average_pool(&ctx, op)?,
            "Relu" => self.push_activation(FloatActivation::Relu, None, &ctx)?,
            "LeakyRelu" => self.push_activation(
                FloatActivation::LeakyRelu(ctx.float("alpha", 0.01)),
                None,
                &ctx,
            )?,
            "Sigmoid" => self.push_activation(FloatActivation::Sigmoid, None, &ctx)?,
            "Tanh" => self.push_activation(FloatActivation::Tanh, None, &ctx)?,
            "MaxPool" => self.max_pool(&ctx)?,
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
    "Cast",
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
            Some(Value::DimValue(v)) if *v > 0 => usize::try_from(*v)
                .map_err(|_| ModelError::UnsupportedGraph(format!("input dimension {v}"))),
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
