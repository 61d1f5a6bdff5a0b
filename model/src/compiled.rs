//! A model as the protocol runs it — public topology plus private plan —
//! with the integer reference, and its file format (`models/<name>.plan`).
//! Neither needs tract: the servers and the demo load a precompiled file
//! instead of importing ONNX at start-up, so builds without the `onnx`
//! feature stay light.

use std::path::Path;

use crate::error::ModelError;
use crate::fixed::{ActivationMode, RoundingSource};
use crate::plan::{Plan, StageSamples};
use crate::semantics::activate;
use crate::topology::{Stage, Topology};

/// The extension of a compiled model file (`veil import` writes one).
pub const PLAN_EXTENSION: &str = "plan";

/// Calibration rows `veil import` runs by default.
pub const CALIBRATION_ROWS: usize = 1000;
/// Groups per activation stage a calibrated plan keeps.
pub const CALIBRATION_GROUPS: usize = 4096;

const MAGIC: &[u8; 8] = b"VEILPLAN";
// 2: the plan carries calibration samples per activation stage.
const VERSION: u16 = 2;
const HEADER_LEN: usize = 8 + 2 + 8;

/// A model ready for private inference without its ONNX source: the
/// public [`Topology`], the private [`Plan`] and the integer reference.
#[derive(Clone, PartialEq)]
pub struct CompiledModel {
    topology: Topology,
    plan: Plan,
    /// Max-pool windows per stage, derived from the topology once so that
    /// the reference does not rebuild them on every frame.
    windows: Vec<Option<Vec<Vec<u32>>>>,
}

impl std::fmt::Debug for CompiledModel {
    // The plan holds the private weights: never print them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledModel")
            .field("topology", &self.topology)
            .finish_non_exhaustive()
    }
}

impl CompiledModel {
    /// Pairs a topology with its plan, refusing a plan whose layers do not
    /// match the topology's linear stages.
    pub fn new(topology: Topology, plan: Plan) -> Result<CompiledModel, ModelError> {
        topology.validate()?;
        let bad = |m: String| Err(ModelError::Encoding(m));
        for (s, stage) in topology.stages.iter().enumerate() {
            match (stage, plan.layer(s)) {
                (Stage::Linear(spec), Some(layer)) => {
                    if layer.input_len() != spec.input_len
                        || layer.output_len() != spec.output_len
                        || layer.kind() != spec.kind
                    {
                        return bad(format!("plan layer {s} does not match the topology"));
                    }
                }
                (Stage::Linear(_), None) => return bad(format!("plan has no layer for stage {s}")),
                (Stage::Activation(_), Some(_)) => {
                    return bad(format!("plan has a layer for activation stage {s}"));
                }
                (Stage::Activation(_), None) => {}
            }
        }
        if plan.layers().any(|(s, _)| s >= topology.stages.len()) {
            return bad("plan has layers past the topology's stages".into());
        }
        let windows = topology
            .stages
            .iter()
            .map(|stage| match stage {
                Stage::Activation(spec) => spec.pool.map(|p| p.windows()),
                Stage::Linear(_) => None,
            })
            .collect();
        Ok(CompiledModel {
            topology,
            plan,
            windows,
        })
    }

    /// The public part: shapes, kinds, fixed-point parameters, bounds.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// The private part (weights); only server A holds it.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Magic, version, topology length, the topology's own encoding, then
    /// the plan's. Deterministic, so the shipped files can be checked
    /// against a fresh import byte for byte.
    pub fn to_bytes(&self) -> Vec<u8> {
        let topology = self.topology.to_bytes();
        let plan = self.plan.to_bytes();
        let mut out = Vec::with_capacity(HEADER_LEN + topology.len() + plan.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(topology.len() as u64).to_le_bytes());
        out.extend_from_slice(&topology);
        out.extend_from_slice(&plan);
        out
    }

    /// Inverse of [`CompiledModel::to_bytes`]; rejects truncated, garbled or
    /// inconsistent files.
    pub fn from_bytes(bytes: &[u8]) -> Result<CompiledModel, ModelError> {
        let enc = |m: &str| ModelError::Encoding(m.to_string());
        let (magic, rest) = bytes
            .split_at_checked(8)
            .ok_or_else(|| enc("truncated plan file"))?;
        if magic != MAGIC {
            return Err(enc("not a veil plan file (bad magic)"));
        }
        let (version, rest) = rest
            .split_at_checked(2)
            .ok_or_else(|| enc("truncated plan file"))?;
        let version = u16::from_le_bytes([version[0], version[1]]);
        if version != VERSION {
            return Err(ModelError::Encoding(format!(
                "plan file version {version}, this build reads version {VERSION}"
            )));
        }
        let (len, rest) = rest
            .split_at_checked(8)
            .ok_or_else(|| enc("truncated plan file"))?;
        let mut len_bytes = [0u8; 8];
        len_bytes.copy_from_slice(len);
        let len = usize::try_from(u64::from_le_bytes(len_bytes))
            .map_err(|_| enc("topology length out of range"))?;
        let (topology, plan) = rest
            .split_at_checked(len)
            .ok_or_else(|| enc("truncated topology"))?;
        CompiledModel::new(Topology::from_bytes(topology)?, Plan::from_bytes(plan)?)
    }

    /// Reads a plan file (as written by `veil import`).
    pub fn load(path: &Path) -> Result<CompiledModel, ModelError> {
        let bytes = std::fs::read(path).map_err(|source| ModelError::Io {
            path: path.display().to_string(),
            source,
        })?;
        CompiledModel::from_bytes(&bytes).map_err(|e| match e {
            ModelError::Encoding(reason) => {
                ModelError::Encoding(format!("{}: {reason}", path.display()))
            }
            e => e,
        })
    }

    /// `x̂_i = round(x_i · s_i)` with each feature's scale, refusing features outside their bounds
    /// (see [`Topology::encode_input`]).
    pub fn encode_input(&self, x: &[f32]) -> Result<Vec<i64>, ModelError> {
        self.topology.encode_input(x)
    }

    /// The integer reference: exactly what the private protocol computes
    /// for these modes and this rounding randomness.
    ///
    /// Inputs are at their features' scales (the first linear stage's
    /// weights carry `2^(f+w)` divided by each one), activations at
    /// `2^f`. A linear stage computes `z = W·x + c` exactly (scale
    /// `2^(f+w)`). With `tr(v, k, r) = floor((v + r) / 2^k)`
    /// (toward −∞) and `r = rounding.offset(stage, index, which, bits)`, an
    /// activation stage `s` gives, in blind mode: ReLU `tr(z_j, w, r(s,j,0,w))`
    /// if `z_j > 0` else 0; leaky ReLU the same for `z_j > 0`, else
    /// `tr(alpha_q·z_j, 2w, r(s,j,1,2w))`; max-pool over window `o` its
    /// maximum `v` as `tr(v, w, r(s, o, 0, w))` (the window's offset, so
    /// which of equal maxima wins does not matter), or 0 for ReluMaxPool
    /// when `v ≤ 0`. In permute mode every kind
    /// gives [`crate::permute_eval`] of `z_j` (of the exact window maximum
    /// for pools). `modes` is indexed by stage; linear stages ignore theirs.
    pub fn run_int(
        &self,
        x_hat: &[i64],
        modes: &[ActivationMode],
        rounding: &dyn RoundingSource,
    ) -> Result<Vec<i128>, ModelError> {
        let mut trace = self.run_int_trace(x_hat, modes, rounding)?;
        Ok(trace.pop().unwrap_or_default())
    }

    /// Measures every activation stage's pre-activations on calibration
    /// inputs (already encoded) and keeps at most `limit` groups per stage
    /// in the plan, for server A's dummies.
    pub fn calibrate(&mut self, rows: &[Vec<i64>], limit: usize) -> Result<(), ModelError> {
        let modes = self.topology.default_modes();
        let rounding = crate::fixed::FloorRounding;
        let mut samples: Vec<StageSamples> =
            vec![StageSamples::default(); self.topology.stages.len()];
        let per_row: usize = self
            .topology
            .stages
            .iter()
            .enumerate()
            .filter_map(|(s, stage)| match stage {
                Stage::Activation(spec) => Some(
                    self.windows
                        .get(s)
                        .and_then(Option::as_ref)
                        .map_or(spec.input_len, Vec::len),
                ),
                Stage::Linear(_) => None,
            })
            .max()
            .unwrap_or(1);
        let stride = (rows.len() * per_row).div_ceil(limit.max(1)).max(1);
        let mut taken = 0usize;
        for row in rows {
            let trace = self.run_int_trace(row, &modes, &rounding)?;
            for (s, stage) in self.topology.stages.iter().enumerate() {
                let Stage::Activation(spec) = stage else {
                    continue;
                };
                let Some(z) = s.checked_sub(1).and_then(|p| trace.get(p)) else {
                    continue;
                };
                let singles;
                let groups = match self.windows.get(s).and_then(Option::as_ref) {
                    Some(windows) if spec.kind.is_pool() => windows,
                    _ => {
                        // At most MAX_ELEMENTS (2^26) entries: indices fit a u32.
                        let n = u32::try_from(z.len()).unwrap_or(u32::MAX);
                        singles = (0..n).map(|j| vec![j]).collect::<Vec<_>>();
                        &singles
                    }
                };
                let Some(out) = samples.get_mut(s) else {
                    continue;
                };
                for (g, window) in groups.iter().enumerate() {
                    // A hash, not a stride: a stride that divides the row
                    // length would keep the same few units of every row.
                    if !splitmix((taken + g) as u64).is_multiple_of(stride as u64) {
                        continue;
                    }
                    let values: Vec<i128> = window
                        .iter()
                        .filter_map(|i| z.get(*i as usize).copied())
                        .collect();
                    out.sorted.extend(&values);
                    out.groups.push(values);
                }
            }
            taken += per_row;
        }
        for (s, mut sample) in samples.into_iter().enumerate() {
            if !sample.groups.is_empty() {
                sample.sorted.sort_unstable();
                self.plan.set_samples(s, sample);
            }
        }
        Ok(())
    }

    /// Calibrates on the first `rows` rows of a data file
    /// ([`crate::data::load_features`]), keeping [`CALIBRATION_GROUPS`]
    /// groups per stage.
    pub fn calibrate_from(&mut self, path: &Path, rows: usize) -> Result<(), ModelError> {
        let features = crate::data::load_features(path, self.topology.input_len, rows)?;
        let encoded = features
            .iter()
            .map(|x| self.encode_input(x))
            .collect::<Result<Vec<_>, _>>()?;
        self.calibrate(&encoded, CALIBRATION_GROUPS)
    }

    /// Whether every activation stage carries calibration samples, so that
    /// server A's dummies follow the real entries' distribution.
    pub fn is_calibrated(&self) -> bool {
        self.topology
            .stages
            .iter()
            .enumerate()
            .all(|(s, stage)| matches!(stage, Stage::Linear(_)) || self.plan.samples(s).is_some())
    }

    /// Like [`CompiledModel::run_int`], returning every stage's output
    /// (index `s` holds the output of stage `s`), for step-by-step comparison.
    pub fn run_int_trace(
        &self,
        x_hat: &[i64],
        modes: &[ActivationMode],
        rounding: &dyn RoundingSource,
    ) -> Result<Vec<Vec<i128>>, ModelError> {
        let t = &self.topology;
        if x_hat.len() != t.input_len {
            return Err(ModelError::LengthMismatch {
                expected: t.input_len,
                got: x_hat.len(),
            });
        }
        if modes.len() != t.stages.len() {
            return Err(ModelError::LengthMismatch {
                expected: t.stages.len(),
                got: modes.len(),
            });
        }
        let mut x: Vec<i128> = x_hat.iter().map(|v| i128::from(*v)).collect();
        let mut trace = Vec::with_capacity(t.stages.len());
        for (s, stage) in t.stages.iter().enumerate() {
            x = match stage {
                Stage::Linear(_) => {
                    let layer = self.plan.layer(s).ok_or(ModelError::InvalidMode {
                        stage: s,
                        reason: "plan has no layer for this linear stage".into(),
                    })?;
                    layer.apply(&x).map_err(|e| match e {
                        ModelError::Overflow { .. } => ModelError::Overflow { stage: s },
                        e => e,
                    })?
                }
                Stage::Activation(spec) => {
                    let mode = modes.get(s).copied().unwrap_or(ActivationMode::Permute);
                    let windows = self.windows.get(s).and_then(Option::as_ref);
                    activate(s, spec, mode, windows, &x, &t.stage_fixed(s), rounding)?
                }
            };
            trace.push(x.clone());
        }
        Ok(trace)
    }

    /// Output integers to floats: divide by `2^output_scale_bits`.
    pub fn decode_output(&self, out: &[i128]) -> Vec<f64> {
        let scale = crate::semantics::pow2(self.topology.output_scale_bits);
        out.iter().map(|v| *v as f64 / scale).collect()
    }
}

/// Loads a model file by its extension: a `.plan` file always, an `.onnx`
/// file only in builds with the `onnx` feature (tract), imported with the
/// default [`crate::ImportOptions`] when it is there.
pub fn load_model_file(path: &Path) -> Result<CompiledModel, ModelError> {
    let is_onnx = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("onnx"));
    if !is_onnx {
        return CompiledModel::load(path);
    }
    #[cfg(feature = "onnx")]
    {
        crate::Model::load(path, &crate::ImportOptions::default()).map(crate::Model::into_compiled)
    }
    #[cfg(not(feature = "onnx"))]
    {
        Err(ModelError::OnnxDisabled {
            path: path.display().to_string(),
        })
    }
}

/// A well-mixed hash of a counter: calibration keeps the groups whose hash
/// falls on the stride, since a plain stride that divides the row length
/// would keep the same few units of every row.
fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
