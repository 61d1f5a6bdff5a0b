use std::path::Path;
use std::sync::Arc;

use tract_onnx::prelude::{
    Datum, Framework, InferenceFact, InferenceModelExt, IntoRunnable, Tensor, TypedRunnableModel,
    tvec,
};

use crate::affine::Affine;
use crate::compiled::CompiledModel;
use crate::error::ModelError;
use crate::fixed::{ActivationMode, FixedPoint, RoundingSource, WeightScale};
use crate::import::{FloatStage, ImportedGraph, InputScale, decode, import};
use crate::plan::{LinearLayer, Plan};
use crate::semantics::{permute_eval, pow2};
use crate::topology::{ActivationKind, ActivationSpec, LinearSpec, Stage, Topology};

/// Largest bound (in bits) accepted at any stage; the protocol's masks add
/// σ bits on top and must stay well inside the Paillier plaintext space.
pub const MAX_BOUND_BITS: u32 = 100;

/// How to turn an ONNX file into a [`Model`].
#[derive(Clone, Debug)]
pub struct ImportOptions {
    /// The fixed-point format.
    pub fixed: FixedPoint,
    /// How each linear layer's weight bits follow from `fixed.weight_bits`.
    pub weight_scale: WeightScale,
    /// Per-feature `[lo, hi]`. Takes precedence over everything else.
    pub input_bounds: Option<Vec<(f64, f64)>>,
    /// Per-feature input scale: features encode as `x̂_i = round(x_i ·
    /// scale_i)`, and the first linear stage's weights take `2^(f+w) /
    /// scale_i` so that its outputs keep the scale `2^(f+w)`. A feature's
    /// native precision (1/255 for a pixel stored as a byte) is its
    /// cheapest exact encoding. Takes precedence over the ONNX metadata
    /// `veil.input_scale`; by default every feature has scale `2^f`.
    pub input_scale: Option<Vec<f64>>,
    /// Rows of representative inputs: bounds are their per-feature min and
    /// max, each side widened by `calibration_margin × max(hi − lo, |lo|, |hi|, 1)`.
    /// Used when `input_bounds` is `None`; takes precedence over the metadata.
    pub calibration: Option<Vec<Vec<f32>>>,
    /// A file of representative inputs, read with
    /// [`crate::data::load_features`] once the importer knows the input
    /// width (every row; a CSV's first columns are the features): bounds as
    /// for `calibration`, which takes precedence over it.
    pub calibration_file: Option<std::path::PathBuf>,
    /// Relative widening of calibration bounds (see `calibration`).
    pub calibration_margin: f64,
    /// Model name in the topology; defaults to the file stem or graph name.
    pub name: Option<String>,
    /// Largest dense matrix that fusing non-conv combinations may create.
    pub max_dense_weights: usize,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions {
            fixed: FixedPoint::default(),
            weight_scale: WeightScale::default(),
            input_bounds: None,
            input_scale: None,
            calibration: None,
            calibration_file: None,
            calibration_margin: 0.1,
            name: None,
            max_dense_weights: 4 << 20,
        }
    }
}

/// An imported ONNX model: the [`CompiledModel`] (public topology, private
/// plan, integer reference) plus what only import knows — the float
/// reference (tract) and the exact stage intervals.
pub struct Model {
    compiled: CompiledModel,
    intervals: Vec<Vec<(i128, i128)>>,
    float: Arc<TypedRunnableModel>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("topology", self.compiled.topology())
            .finish_non_exhaustive()
    }
}

fn bits(v: u128) -> u32 {
    128 - v.leading_zeros()
}

fn interval_bits(iv: &[(i128, i128)]) -> u32 {
    iv.iter()
        .map(|(lo, hi)| bits(lo.unsigned_abs().max(hi.unsigned_abs())))
        .max()
        .unwrap_or(0)
        .max(1)
}

fn resolve_bounds(
    options: &ImportOptions,
    metadata: Option<Result<Vec<(f64, f64)>, ModelError>>,
    n: usize,
) -> Result<Vec<(f64, f64)>, ModelError> {
    let bounds = if let Some(b) = &options.input_bounds {
        b.clone()
    } else if let Some(rows) = &options.calibration {
        calibration_bounds(rows, n, options.calibration_margin)?
    } else if let Some(path) = &options.calibration_file {
        let rows = crate::data::load_features(path, n, usize::MAX)?;
        calibration_bounds(&rows, n, options.calibration_margin)?
    } else if let Some(m) = metadata {
        m?
    } else {
        return Err(ModelError::MissingInputBounds);
    };
    if bounds.len() != n {
        return Err(ModelError::InvalidBounds(format!(
            "{} bounds for {n} input features",
            bounds.len()
        )));
    }
    for (i, (lo, hi)) in bounds.iter().enumerate() {
        if !(lo.is_finite() && hi.is_finite() && lo <= hi) {
            return Err(ModelError::InvalidBounds(format!(
                "feature {i}: [{lo}, {hi}]"
            )));
        }
    }
    Ok(bounds)
}

/// Each feature's scale: the options', the metadata's, or `2^f`.
fn resolve_scales(
    options: &ImportOptions,
    metadata: Option<Result<InputScale, ModelError>>,
    n: usize,
    fixed: &FixedPoint,
) -> Result<Vec<f64>, ModelError> {
    let scales = match (&options.input_scale, metadata) {
        (Some(s), _) => s.clone(),
        (None, Some(m)) => match m? {
            InputScale::Every(s) => vec![s; n],
            InputScale::Each(s) => s,
        },
        (None, None) => vec![pow2(fixed.frac_bits); n],
    };
    if scales.len() != n {
        return Err(ModelError::InvalidScale(format!(
            "{} scales for {n} input features",
            scales.len()
        )));
    }
    if let Some((i, s)) = scales
        .iter()
        .enumerate()
        .find(|(_, s)| !(s.is_finite() && **s > 0.0))
    {
        return Err(ModelError::InvalidScale(format!("feature {i}: {s}")));
    }
    Ok(scales)
}

fn calibration_bounds(
    rows: &[Vec<f32>],
    n: usize,
    margin: f64,
) -> Result<Vec<(f64, f64)>, ModelError> {
    if rows.is_empty() {
        return Err(ModelError::InvalidBounds("empty calibration set".into()));
    }
    if !(margin.is_finite() && margin >= 0.0) {
        return Err(ModelError::InvalidBounds(format!(
            "calibration margin {margin}"
        )));
    }
    let mut b = vec![(f64::INFINITY, f64::NEG_INFINITY); n];
    for (r, row) in rows.iter().enumerate() {
        if row.len() != n {
            return Err(ModelError::InvalidBounds(format!(
                "calibration row {r} has {} features, expected {n}",
                row.len()
            )));
        }
        for (i, (v, (lo, hi))) in row.iter().zip(b.iter_mut()).enumerate() {
            let v = f64::from(*v);
            if !v.is_finite() {
                return Err(ModelError::InvalidBounds(format!(
                    "calibration row {r}, feature {i}: {v}"
                )));
            }
            *lo = lo.min(v);
            *hi = hi.max(v);
        }
    }
    Ok(b.into_iter()
        .map(|(lo, hi)| {
            let m = margin * (hi - lo).max(lo.abs()).max(hi.abs()).max(1.0);
            (lo - m, hi + m)
        })
        .collect())
}

pub(crate) fn quantize_weight(v: f64, scale: f64, stage: usize) -> Result<i64, ModelError> {
    let q = (v * scale).round();
    if !q.is_finite() || q.abs() >= 2f64.powi(62) {
        return Err(ModelError::WeightTooLarge { stage, value: v });
    }
    // An integer below 2^62 in magnitude (checked): exact in an i64.
    #[allow(clippy::cast_possible_truncation)]
    Ok(q as i64)
}

fn quantize_bias(v: f64, scale: f64, stage: usize) -> Result<i128, ModelError> {
    let q = (v * scale).round();
    if !q.is_finite() || q.abs() >= pow2(MAX_BOUND_BITS) {
        return Err(ModelError::BoundTooLarge {
            stage,
            bits: MAX_BOUND_BITS + 1,
        });
    }
    // An integer below 2^MAX_BOUND_BITS in magnitude (checked): exact in
    // an i128.
    #[allow(clippy::cast_possible_truncation)]
    Ok(q as i128)
}

/// Quantizes one linear stage. Its inputs have scale `input_scales[i]`
/// (`2^f` for every input when `None`: activations), its outputs
/// `2^(f+w_l)` with the layer's weight bits `w_l` (per `weight_scale`):
/// weight `(o, i)` becomes `round(W_oi · 2^f / input_scales[i] · 2^w_l)`.
/// Returns the layer and `w_l`.
fn quantize_layer(
    affine: &Affine,
    fixed: &FixedPoint,
    w: u32,
    stage: usize,
    limit: usize,
    input_scales: Option<&[f64]>,
) -> Result<(LinearLayer, u32), ModelError> {
    let activation = [pow2(fixed.frac_bits)];
    let input_scales = match input_scales {
        Some(scales) => scales,
        None => &activation[..],
    };
    // One scale stands for every input.
    let scale_of = |i: usize| match input_scales {
        [one] => *one,
        many => many.get(i).copied().unwrap_or(f64::NAN),
    };
    // A weight counted at its input's scale: what multiplies 2^w_l.
    let frac_scale = pow2(fixed.frac_bits);
    let weight_unit = pow2(w);
    match affine {
        Affine::Conv(c) => {
            let g = &c.geometry;
            let plane = g.in_h * g.in_w;
            // A kernel weight meets every position of its input channel.
            let channel_scale = (0..g.in_c)
                .map(|ic| {
                    let first = scale_of(ic * plane);
                    if (ic * plane..(ic + 1) * plane).all(|i| scale_of(i) == first) {
                        Ok(frac_scale / first)
                    } else {
                        Err(ModelError::InvalidScale(format!(
                            "stage {stage}: a convolution's input channel {ic} needs one scale"
                        )))
                    }
                })
                .collect::<Result<Vec<f64>, _>>()?;
            let taps = g.kernel_h * g.kernel_w;
            let factor = |k: usize| {
                channel_scale
                    .get((k / taps) % g.in_c.max(1))
                    .copied()
                    .unwrap_or(1.0)
            };
            let kernel = c
                .kernel
                .iter()
                .enumerate()
                .map(|(k, v)| quantize_weight(*v, factor(k) * weight_unit, stage))
                .collect::<Result<Vec<_>, _>>()?;
            let bias = quantize_biases(&c.bias, frac_scale * weight_unit, stage)?;
            Ok((LinearLayer::conv(c.geometry, kernel, bias)?, w))
        }
        other => {
            let (weights, b) = other.to_dense(limit)?;
            let n = other.in_len().max(1);
            let factor = |k: usize| frac_scale / scale_of(k % n);
            let weights = weights
                .iter()
                .enumerate()
                .map(|(k, v)| quantize_weight(*v, factor(k) * weight_unit, stage))
                .collect::<Result<Vec<_>, _>>()?;
            let bias = quantize_biases(&b, frac_scale * weight_unit, stage)?;
            Ok((
                LinearLayer::dense(other.in_len(), other.out_len(), weights, bias)?,
                w,
            ))
        }
    }
}

fn quantize_biases(b: &[f64], scale: f64, stage: usize) -> Result<Vec<i128>, ModelError> {
    b.iter().map(|v| quantize_bias(*v, scale, stage)).collect()
}

/// Exact integer interval of every output of `layer` for inputs in `input`.
fn linear_intervals(
    layer: &LinearLayer,
    input: &[(i128, i128)],
    stage: usize,
) -> Result<Vec<(i128, i128)>, ModelError> {
    // Past i128 the bound is far beyond MAX_BOUND_BITS anyway.
    let too_large = || ModelError::BoundTooLarge { stage, bits: 128 };
    if input.len() != layer.input_len() {
        return Err(ModelError::LengthMismatch {
            expected: layer.input_len(),
            got: input.len(),
        });
    }
    (0..layer.output_len())
        .map(|o| {
            let (mut lo, mut hi) = (layer.bias(o), layer.bias(o));
            for (i, w) in layer.row(o) {
                let (a, b) = input.get(i as usize).copied().unwrap_or((0, 0));
                let w = i128::from(w);
                let p = w.checked_mul(a).ok_or_else(too_large)?;
                let q = w.checked_mul(b).ok_or_else(too_large)?;
                lo = lo.checked_add(p.min(q)).ok_or_else(too_large)?;
                hi = hi.checked_add(p.max(q)).ok_or_else(too_large)?;
            }
            Ok((lo, hi))
        })
        .collect()
}

fn floor_shift(v: i128, k: u32) -> i128 {
    v >> k
}

fn ceil_shift(v: i128, k: u32) -> i128 {
    -((-v) >> k)
}

fn union(a: Option<(i128, i128)>, b: (i128, i128)) -> (i128, i128) {
    match a {
        Some((lo, hi)) => (lo.min(b.0), hi.max(b.1)),
        None => b,
    }
}

/// Sound output interval of one activation output whose (window-max)
/// input lies in `[lo, hi]`, for both modes where blind is allowed.
fn activation_interval(
    kind: &ActivationKind,
    lo: i128,
    hi: i128,
    fixed: &FixedPoint,
) -> (i128, i128) {
    let w = fixed.weight_bits;
    // Permute mode: φ is monotone on each side of 0, so its extremes are at
    // lo, hi or 0; one unit of slack covers a libm that is not monotone to
    // the last ulp.
    let mut cands = vec![lo, hi];
    if lo < 0 && hi > 0 {
        cands.push(0);
    }
    let vals: Vec<i128> = cands
        .iter()
        .map(|v| permute_eval(kind, *v, fixed))
        .collect();
    let mut out = (
        vals.iter().copied().min().unwrap_or(0) - 1,
        vals.iter().copied().max().unwrap_or(0) + 1,
    );
    let one = 1i128 << fixed.frac_bits;
    match kind {
        ActivationKind::Sigmoid => out = (out.0.max(0), out.1.min(one)),
        ActivationKind::Tanh => out = (out.0.max(-one), out.1.min(one)),
        _ => {}
    }
    if !kind.supports_blind() {
        return out;
    }
    let mut blind: Option<(i128, i128)> = None;
    let positive = |lo: i128| (floor_shift(lo.max(1), w), ceil_shift(hi, w));
    match kind {
        ActivationKind::MaxPool => blind = Some((floor_shift(lo, w), ceil_shift(hi, w))),
        ActivationKind::LeakyRelu { alpha_q } => {
            if hi > 0 {
                blind = Some(positive(lo));
            }
            if lo <= 0 {
                let a = i128::from(*alpha_q);
                let (p, q) = (a.saturating_mul(lo), a.saturating_mul(hi.min(0)));
                blind = Some(union(
                    blind,
                    (floor_shift(p.min(q), 2 * w), ceil_shift(p.max(q), 2 * w)),
                ));
            }
        }
        _ => {
            if hi > 0 {
                blind = Some(positive(lo));
            }
            if lo <= 0 {
                blind = Some(union(blind, (0, 0)));
            }
        }
    }
    match blind {
        Some(b) => union(Some(out), b),
        None => out,
    }
}

impl Model {
    /// Reads and imports an ONNX file; the model name defaults to the file stem.
    pub fn load(path: &Path, options: &ImportOptions) -> Result<Model, ModelError> {
        let bytes = std::fs::read(path).map_err(|source| ModelError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned());
        Self::build(&bytes, options, stem)
    }

    /// Imports an ONNX model held in memory.
    pub fn from_bytes(onnx: &[u8], options: &ImportOptions) -> Result<Model, ModelError> {
        Self::build(onnx, options, None)
    }

    fn build(
        onnx: &[u8],
        options: &ImportOptions,
        default_name: Option<String>,
    ) -> Result<Model, ModelError> {
        let fixed = options.fixed;
        fixed.validate()?;
        let proto = decode(onnx)?;
        let ImportedGraph {
            graph_name,
            input_shape,
            stages: float_stages,
            output_len,
            device_softmax,
            metadata_bounds,
            metadata_scale,
            float_proto,
        } = import(proto, options.max_dense_weights)?;
        let n: usize = input_shape.iter().product();
        let input_bounds = resolve_bounds(options, metadata_bounds, n)?;
        let input_scales = resolve_scales(options, metadata_scale, n, &fixed)?;

        let limit = pow2(MAX_BOUND_BITS.min(62));
        let mut ranges = Vec::with_capacity(n);
        for ((lo, hi), scale) in input_bounds.iter().zip(&input_scales) {
            let (a, b) = ((lo * scale).round(), (hi * scale).round());
            if a.abs() >= limit || b.abs() >= limit {
                return Err(ModelError::BoundTooLarge {
                    stage: 0,
                    bits: MAX_BOUND_BITS.min(62) + 1,
                });
            }
            // Integers below 2^62 in magnitude (checked): exact in an i64.
            #[allow(clippy::cast_possible_truncation)]
            ranges.push((a as i64, b as i64));
        }
        let input_ranges: Vec<(i64, i64)> = ranges;
        let mut intervals: Vec<(i128, i128)> = input_ranges
            .iter()
            .map(|(lo, hi)| (i128::from(*lo), i128::from(*hi)))
            .collect();
        let input_bound_bits = interval_bits(&intervals);

        let mut stages = Vec::with_capacity(float_stages.len());
        let mut layers = Vec::with_capacity(float_stages.len());
        let mut all_intervals = Vec::with_capacity(float_stages.len());
        // The format at the current stage: the last linear layer's weight bits.
        let mut layer_fixed = fixed;
        for (s, fs) in float_stages.iter().enumerate() {
            let (stage, layer, next) = match fs {
                FloatStage::Linear(affine) => {
                    // Only the first stage reads the features; later ones
                    // read activations at scale 2^f.
                    let scales = (s == 0).then_some(input_scales.as_slice());
                    let w = options
                        .weight_scale
                        .layer_bits(&fixed, (s == 0).then_some(intervals.as_slice()));
                    let (layer, weight_bits) =
                        quantize_layer(affine, &fixed, w, s, options.max_dense_weights, scales)?;
                    layer_fixed.weight_bits = weight_bits;
                    let z = linear_intervals(&layer, &intervals, s)?;
                    let spec = LinearSpec {
                        input_len: layer.input_len(),
                        output_len: layer.output_len(),
                        kind: layer.kind(),
                        output_bound_bits: interval_bits(&z),
                        weight_bits,
                    };
                    (Stage::Linear(spec), Some(layer), z)
                }
                FloatStage::Activation {
                    kind,
                    input_len,
                    pool,
                } => {
                    let kind = kind.quantize(layer_fixed.weight_bits, s)?;
                    let win = pool.as_ref().map(|p| p.windows());
                    let out: Vec<(i128, i128)> = match &win {
                        Some(ws) => ws
                            .iter()
                            .map(|w| {
                                let get =
                                    |i: &u32| intervals.get(*i as usize).copied().unwrap_or((0, 0));
                                let lo = w.iter().map(|i| get(i).0).max().unwrap_or(0);
                                let hi = w.iter().map(|i| get(i).1).max().unwrap_or(0);
                                activation_interval(&kind, lo, hi, &layer_fixed)
                            })
                            .collect(),
                        None => intervals
                            .iter()
                            .map(|(lo, hi)| activation_interval(&kind, *lo, *hi, &layer_fixed))
                            .collect(),
                    };
                    let spec = ActivationSpec {
                        kind,
                        input_len: *input_len,
                        output_len: out.len(),
                        pool: *pool,
                        output_bound_bits: interval_bits(&out),
                    };
                    (Stage::Activation(spec), None, out)
                }
            };
            let b = match &stage {
                Stage::Linear(l) => l.output_bound_bits,
                Stage::Activation(a) => a.output_bound_bits,
            };
            if b > MAX_BOUND_BITS || input_bound_bits > MAX_BOUND_BITS {
                return Err(ModelError::BoundTooLarge {
                    stage: s,
                    bits: b.max(input_bound_bits),
                });
            }
            stages.push(stage);
            layers.push(layer);
            all_intervals.push(next.clone());
            intervals = next;
        }
        let output_scale_bits = match stages.last() {
            Some(Stage::Linear(l)) => fixed.frac_bits + l.weight_bits,
            _ => fixed.frac_bits,
        };
        let name = options.name.clone().or(default_name).unwrap_or_else(|| {
            if graph_name.is_empty() {
                "model".into()
            } else {
                graph_name
            }
        });
        let input_shape_chw = match input_shape.as_slice() {
            [c, h, w] => Some((*c, *h, *w)),
            _ => None,
        };
        let topology = Topology {
            name,
            input_len: n,
            input_shape: input_shape_chw,
            input_bounds,
            input_scales,
            input_ranges,
            input_bound_bits,
            fixed,
            stages,
            output_len,
            output_scale_bits,
            device_softmax,
        };
        topology.validate()?;

        let mut dims = vec![1usize];
        dims.extend_from_slice(&input_shape);
        let tract_err = |e: tract_onnx::prelude::TractError| ModelError::Tract(format!("{e:#}"));
        let float = tract_onnx::onnx()
            .model_for_proto_model(&float_proto)
            .map_err(tract_err)?
            .with_input_fact(0, InferenceFact::dt_shape(f32::datum_type(), dims))
            .map_err(tract_err)?
            .into_optimized()
            .map_err(tract_err)?
            .into_runnable()
            .map_err(tract_err)?;
        tracing::debug!(
            model = %topology.name,
            stages = topology.stages.len(),
            fingerprint = %topology.fingerprint_hex(),
            "imported model"
        );
        Ok(Model {
            compiled: CompiledModel::new(topology, Plan::new(layers))?,
            intervals: all_intervals,
            float,
        })
    }

    /// Topology, plan and integer reference: what a `.plan` file holds.
    pub fn compiled(&self) -> &CompiledModel {
        &self.compiled
    }

    /// The compiled integer model, dropping the float reference.
    pub fn into_compiled(self) -> CompiledModel {
        self.compiled
    }

    /// The public part: shapes, kinds, fixed-point parameters, bounds.
    pub fn topology(&self) -> &Topology {
        self.compiled.topology()
    }

    /// The private part (weights); only server A holds it.
    pub fn plan(&self) -> &Plan {
        self.compiled.plan()
    }

    /// Measures every activation stage's pre-activations on calibration
    /// inputs (already encoded) and keeps at most `limit` groups per stage
    /// in the plan, for server A's dummies.
    pub fn calibrate(&mut self, rows: &[Vec<i64>], limit: usize) -> Result<(), ModelError> {
        self.compiled.calibrate(rows, limit)
    }

    /// See [`CompiledModel::calibrate_from`]: what `veil import
    /// --calibration` does.
    pub fn calibrate_from(&mut self, path: &Path, rows: usize) -> Result<(), ModelError> {
        self.compiled.calibrate_from(path, rows)
    }

    /// Per-element integer bounds `[lo, hi]` of every stage's output, for
    /// inputs within the feature bounds; the topology publishes only their
    /// bit counts. Derived from the weights, so as private as the plan.
    pub fn stage_intervals(&self) -> &[Vec<(i128, i128)>] {
        &self.intervals
    }

    /// The float reference: tract runs the ONNX graph itself (without a
    /// final Softmax, so the result is logits).
    pub fn run_float(&self, x: &[f32]) -> Result<Vec<f32>, ModelError> {
        let topology = self.compiled.topology();
        let n = topology.input_len;
        if x.len() != n {
            return Err(ModelError::LengthMismatch {
                expected: n,
                got: x.len(),
            });
        }
        let mut dims = vec![1usize];
        match topology.input_shape {
            Some((c, h, w)) => dims.extend([c, h, w]),
            None => dims.push(n),
        }
        let tract_err = |e: tract_onnx::prelude::TractError| ModelError::Tract(format!("{e:#}"));
        let input = Tensor::from_shape(&dims, x).map_err(tract_err)?;
        let out = self.float.run(tvec!(input.into())).map_err(tract_err)?;
        let first = out
            .first()
            .ok_or_else(|| ModelError::Tract("no output".into()))?;
        let view = first.to_plain_array_view::<f32>().map_err(tract_err)?;
        let v: Vec<f32> = view.iter().copied().collect();
        if v.len() != topology.output_len {
            return Err(ModelError::LengthMismatch {
                expected: topology.output_len,
                got: v.len(),
            });
        }
        Ok(v)
    }

    /// `x̂_i = round(x_i · s_i)` with each feature's scale, refusing features outside their bounds
    /// (see [`Topology::encode_input`]).
    pub fn encode_input(&self, x: &[f32]) -> Result<Vec<i64>, ModelError> {
        self.compiled.encode_input(x)
    }

    /// The integer reference; see [`CompiledModel::run_int`].
    pub fn run_int(
        &self,
        x_hat: &[i64],
        modes: &[ActivationMode],
        rounding: &dyn RoundingSource,
    ) -> Result<Vec<i128>, ModelError> {
        self.compiled.run_int(x_hat, modes, rounding)
    }

    /// Every stage's output; see [`CompiledModel::run_int_trace`].
    pub fn run_int_trace(
        &self,
        x_hat: &[i64],
        modes: &[ActivationMode],
        rounding: &dyn RoundingSource,
    ) -> Result<Vec<Vec<i128>>, ModelError> {
        self.compiled.run_int_trace(x_hat, modes, rounding)
    }

    /// Output integers to floats: divide by `2^output_scale_bits`.
    pub fn decode_output(&self, out: &[i128]) -> Vec<f64> {
        self.compiled.decode_output(out)
    }
}
