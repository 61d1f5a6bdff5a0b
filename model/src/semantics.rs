//! The integer semantics of one activation stage, shared by the integer
//! reference and the private protocol (which must agree bit for bit).

use crate::error::ModelError;
use crate::fixed::{ActivationMode, FixedPoint, RoundingSource, truncate};
use crate::topology::{ActivationKind, ActivationSpec};

/// One activation stage in integer semantics (see the crate docs).
pub fn activate(
    stage: usize,
    spec: &ActivationSpec,
    mode: ActivationMode,
    windows: Option<&Vec<Vec<u32>>>,
    z: &[i128],
    fixed: &FixedPoint,
    rounding: &dyn RoundingSource,
) -> Result<Vec<i128>, ModelError> {
    if z.len() != spec.input_len {
        return Err(ModelError::LengthMismatch {
            expected: spec.input_len,
            got: z.len(),
        });
    }
    if mode == ActivationMode::Blind && !spec.kind.supports_blind() {
        return Err(ModelError::InvalidMode {
            stage,
            reason: format!("{:?} cannot be evaluated in blind mode", spec.kind),
        });
    }
    let w = fixed.weight_bits;
    let overflow = || ModelError::Overflow { stage };
    let tr = |v: i128, k: u32, index: usize, which: u8| -> Result<i128, ModelError> {
        truncate(v, k, rounding.offset(stage, index, which, k)).ok_or_else(overflow)
    };
    if spec.kind.is_pool() {
        let owned;
        let windows = match windows {
            Some(ws) => ws,
            None => {
                owned = spec.pool.as_ref().map(|p| p.windows()).ok_or_else(|| {
                    ModelError::InvalidMode {
                        stage,
                        reason: "pooling stage without a pool spec".into(),
                    }
                })?;
                &owned
            }
        };
        let relu = spec.kind == ActivationKind::ReluMaxPool;
        return windows
            .iter()
            .enumerate()
            .map(|(o, win)| {
                let vals: Vec<i128> = win
                    .iter()
                    .map(|i| z.get(*i as usize).copied().unwrap_or(0))
                    .collect();
                let v = vals
                    .iter()
                    .copied()
                    .max()
                    .ok_or_else(|| ModelError::InvalidMode {
                        stage,
                        reason: format!("window {o} is empty"),
                    })?;
                match mode {
                    ActivationMode::Permute => Ok(permute_eval(&spec.kind, v, fixed)),
                    ActivationMode::Blind => {
                        // Rounded with the window's own offset: which of
                        // several equal maxima B picks (it cannot tell them
                        // apart once blinded) must not change the result.
                        if relu && v <= 0 {
                            Ok(0)
                        } else {
                            tr(v, w, o, 0)
                        }
                    }
                }
            })
            .collect();
    }
    z.iter()
        .enumerate()
        .map(|(j, &v)| match (mode, spec.kind) {
            (ActivationMode::Permute, kind) => Ok(permute_eval(&kind, v, fixed)),
            (ActivationMode::Blind, ActivationKind::LeakyRelu { alpha_q }) => {
                if v > 0 {
                    tr(v, w, j, 0)
                } else {
                    let p = i128::from(alpha_q).checked_mul(v).ok_or_else(overflow)?;
                    tr(p, 2 * w, j, 1)
                }
            }
            (ActivationMode::Blind, _) => {
                if v > 0 {
                    tr(v, w, j, 0)
                } else {
                    Ok(0)
                }
            }
        })
        .collect()
}

/// Server B's evaluation of one value in permute mode:
/// `round(φ(v / 2^(f+w)) · 2^f)` in f64 (half away from zero). For pooling
/// kinds `v` is already the window maximum, so φ is the identity (MaxPool) or
/// ReLU (ReluMaxPool). Both the reference and server B call this function,
/// so they agree bit for bit on the same platform.
// |φ(x)|·2^f stays below |v|·2^-w + 2^f: the rounded value fits an
// i128, so `as` (saturating) never changes it.
#[allow(clippy::cast_possible_truncation)]
pub fn permute_eval(kind: &ActivationKind, v: i128, fixed: &FixedPoint) -> i128 {
    let scale_in = pow2(fixed.linear_scale_bits());
    let scale_out = pow2(fixed.frac_bits);
    let x = v as f64 / scale_in;
    let y = match kind {
        ActivationKind::Relu | ActivationKind::ReluMaxPool => {
            if x > 0.0 {
                x
            } else {
                0.0
            }
        }
        ActivationKind::LeakyRelu { alpha_q } => {
            if x > 0.0 {
                x
            } else {
                x * (*alpha_q as f64 / pow2(fixed.weight_bits))
            }
        }
        ActivationKind::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        ActivationKind::Tanh => x.tanh(),
        ActivationKind::MaxPool => x,
    };
    (y * scale_out).round() as i128
}

/// `2^bits` as an f64, exact for every width a model uses (a width past
/// `i32::MAX` reads as infinity rather than wrapping negative).
pub(crate) fn pow2(bits: u32) -> f64 {
    2f64.powi(i32::try_from(bits).unwrap_or(i32::MAX))
}
