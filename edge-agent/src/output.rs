//! What the agent hands to the application, and as JSON lines.

use serde::Serialize;
use veil_model::Topology;
use veil_protocol::{I256, RejectCode};

/// One unmasked result.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct FrameOutput {
    /// The device's name.
    pub device: String,
    /// The session's id in hex.
    pub session: String,
    /// The frame counter.
    pub t: u64,
    /// The predicted class: the arg-max of the logits (for one output, 1
    /// when its logit is positive).
    pub class: usize,
    /// The model's outputs as floats (softmax applied when the model ends
    /// with one).
    pub logits: Vec<f64>,
    /// Capture to result, in milliseconds.
    pub latency_ms: f64,
    /// The label given at capture (CSV replay), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// The exact integer outputs at scale `2^output_scale_bits`.
    #[serde(skip)]
    pub raw: Vec<I256>,
}

/// What the application receives.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Output {
    /// The frame's result.
    Result(FrameOutput),
    /// A server refused the frame; no result will come.
    Rejected {
        /// The device's name.
        device: String,
        /// The session's id in hex.
        session: String,
        /// The frame counter.
        t: u64,
        /// The refusal's code.
        code: RejectCode,
        /// The refusal's detail.
        reason: String,
        /// The label captured with the frame, if any.
        #[serde(skip_serializing_if = "Option::is_none")]
        label: Option<String>,
    },
    /// No result within the frame time to live; the frame was dropped.
    Expired {
        /// The device's name.
        device: String,
        /// The session's id in hex.
        session: String,
        /// The frame counter.
        t: u64,
        /// The label captured with the frame, if any.
        #[serde(skip_serializing_if = "Option::is_none")]
        label: Option<String>,
    },
}

impl Output {
    /// The JSON line (without the newline).
    pub fn to_json(&self) -> String {
        match self {
            // The result's own fields, flat, as the documented line format.
            Output::Result(r) => serde_json::to_string(r),
            other => serde_json::to_string(other),
        }
        .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// The frame counter the line is about.
    pub fn t(&self) -> u64 {
        match self {
            Output::Result(r) => r.t,
            Output::Rejected { t, .. } | Output::Expired { t, .. } => *t,
        }
    }
}

/// Integer outputs to floats, with the model's final softmax if it has one.
pub fn decode_logits(topology: &Topology, raw: &[I256]) -> Vec<f64> {
    let scale = f64::from(topology.output_scale_bits).exp2();
    let values: Vec<f64> = raw.iter().map(|v| v.as_f64() / scale).collect();
    if topology.device_softmax && !values.is_empty() {
        let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let exp: Vec<f64> = values.iter().map(|v| (v - max).exp()).collect();
        let sum: f64 = exp.iter().sum();
        return exp.into_iter().map(|e| e / sum).collect();
    }
    values
}

/// The arg-max (first maximum), or for a single output whether it is
/// positive.
pub fn predicted_class(logits: &[f64]) -> usize {
    if logits.len() == 1 {
        return usize::from(logits.first().is_some_and(|v| *v > 0.0));
    }
    let mut best = 0;
    for (i, v) in logits.iter().enumerate() {
        if logits.get(best).is_some_and(|b| v > b) {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_follow_the_largest_logit() {
        assert_eq!(predicted_class(&[0.1, 0.7, 0.2]), 1);
        assert_eq!(predicted_class(&[0.5, 0.5]), 0);
        assert_eq!(predicted_class(&[-0.3]), 0);
        assert_eq!(predicted_class(&[0.3]), 1);
        assert_eq!(predicted_class(&[]), 0);
    }
}
