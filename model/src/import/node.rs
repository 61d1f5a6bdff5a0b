//! Reading one ONNX node: its attributes (with the defaults the ONNX
//! operator specifications give) and its constant tensors.

use std::collections::HashMap;

use tract_onnx::pb;

use crate::error::ModelError;

#[derive(Clone, Debug)]
pub(super) struct Const {
    pub(super) dims: Vec<usize>,
    pub(super) data: Vec<f64>,
}

pub(super) struct Ctx<'a> {
    pub(super) node: &'a pb::NodeProto,
}

impl Ctx<'_> {
    pub(super) fn usage(&self, reason: impl Into<String>) -> ModelError {
        ModelError::UnsupportedUsage {
            op_type: self.node.op_type.clone(),
            node: self.node.name.clone(),
            reason: reason.into(),
        }
    }

    pub(super) fn attr(&self, name: &str) -> Option<&pb::AttributeProto> {
        self.node.attribute.iter().find(|a| a.name == name)
    }

    pub(super) fn int(&self, name: &str, default: i64) -> i64 {
        self.attr(name).map(|a| a.i).unwrap_or(default)
    }

    pub(super) fn float(&self, name: &str, default: f32) -> f64 {
        f64::from(self.attr(name).map(|a| a.f).unwrap_or(default))
    }

    pub(super) fn ints(&self, name: &str) -> Option<Vec<i64>> {
        self.attr(name).map(|a| a.ints.clone())
    }

    pub(super) fn string(&self, name: &str) -> Option<String> {
        self.attr(name)
            .map(|a| String::from_utf8_lossy(&a.s).into_owned())
    }

    pub(super) fn input(&self, i: usize) -> Option<&str> {
        self.node
            .input
            .get(i)
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }

    pub(super) fn output(&self) -> Result<&str, ModelError> {
        self.node
            .output
            .first()
            .map(String::as_str)
            .ok_or_else(|| self.usage("node has no output"))
    }

    /// Two spatial values from an attribute (kernel, strides, dilations).
    pub(super) fn pair(&self, name: &str, default: usize) -> Result<(usize, usize), ModelError> {
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
    pub(super) fn pads(&self) -> Result<[usize; 4], ModelError> {
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

pub(super) fn to_usize(v: i64, ctx: &Ctx, what: &str) -> Result<usize, ModelError> {
    usize::try_from(v).map_err(|_| ctx.usage(format!("{what} value {v} is negative")))
}

/// Input `i` of the node, which must be a constant.
pub(super) fn constant<'a>(
    consts: &'a HashMap<String, Const>,
    ctx: &Ctx,
    i: usize,
) -> Result<&'a Const, ModelError> {
    ctx.input(i)
        .and_then(|n| consts.get(n))
        .ok_or_else(|| ctx.usage(format!("input {i} must be a constant")))
}

pub(super) fn malformed(m: impl Into<String>) -> ModelError {
    ModelError::MalformedOnnx(m.into())
}

pub(super) fn product(dims: &[usize]) -> Option<usize> {
    dims.iter().try_fold(1usize, |a, d| a.checked_mul(*d))
}

pub(super) fn le_chunks<const N: usize>(
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

pub(super) fn tensor_const(t: &pb::TensorProto) -> Result<Const, ModelError> {
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
pub(super) fn broadcast(c: &Const, shape: &[usize], ctx: &Ctx) -> Result<Vec<f64>, ModelError> {
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
