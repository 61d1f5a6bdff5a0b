//! How far the integer model strays from the float one on given inputs:
//! what `veil import` prints after quantizing, so that a model imported
//! with too few weight bits shows up before it is deployed.

use crate::error::ModelError;
use crate::fixed::SeededRounding;
use crate::model::Model;

/// The float reference (tract on the ONNX graph) against the integer
/// reference (default activation modes, the protocol's randomized
/// rounding with a fixed key), over a set of input rows.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QuantizationReport {
    /// Rows compared.
    pub rows: usize,
    /// Outputs per row.
    pub outputs: usize,
    /// Largest `|float logit − dequantized integer logit|` over every
    /// output of every row.
    pub max_logit_error: f64,
    /// Largest `|float logit|` seen, to read the error against.
    pub max_abs_logit: f64,
    /// Rows whose largest output is the same output in both (every row
    /// when the model has one output).
    pub top1_agree: usize,
}

impl std::fmt::Display for QuantizationReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "max logit error {:.3e} (largest |logit| {:.3}) over {} rows",
            self.max_logit_error, self.max_abs_logit, self.rows
        )?;
        if self.outputs > 1 {
            write!(f, "; top-1 agrees on {} of {}", self.top1_agree, self.rows)?;
        }
        Ok(())
    }
}

fn argmax<T: PartialOrd + Copy>(values: impl IntoIterator<Item = T>) -> Option<usize> {
    let mut best: Option<(usize, T)> = None;
    for (i, v) in values.into_iter().enumerate() {
        if best.is_none_or(|(_, b)| v > b) {
            best = Some((i, v));
        }
    }
    best.map(|(i, _)| i)
}

impl Model {
    /// Runs both references on `rows` (raw features; each must lie inside
    /// the model's input bounds) and reports how far they differ.
    pub fn quantization_report(&self, rows: &[Vec<f32>]) -> Result<QuantizationReport, ModelError> {
        let modes = self.topology().default_modes();
        // Any fixed key: the report describes the quantization, not one
        // server's secret rounding.
        let rounding = SeededRounding { key: [0x5a; 32] };
        let mut report = QuantizationReport {
            rows: rows.len(),
            outputs: self.topology().output_len,
            max_logit_error: 0.0,
            max_abs_logit: 0.0,
            top1_agree: 0,
        };
        for x in rows {
            let float = self.run_float(x)?;
            let int =
                self.decode_output(&self.run_int(&self.encode_input(x)?, &modes, &rounding)?);
            for (f, i) in float.iter().zip(&int) {
                let f = f64::from(*f);
                report.max_logit_error = report.max_logit_error.max((f - i).abs());
                report.max_abs_logit = report.max_abs_logit.max(f.abs());
            }
            if argmax(float.iter().copied()) == argmax(int.iter().copied()) {
                report.top1_agree += 1;
            }
        }
        Ok(report)
    }
}
