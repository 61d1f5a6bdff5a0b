use thiserror::Error;

/// Everything that can go wrong while importing, encoding or running a model.
#[derive(Debug, Error)]
pub enum ModelError {
    #[error("cannot read {path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("malformed ONNX model: {0}")]
    MalformedOnnx(String),
    #[error("unsupported ONNX operator {op_type} (node {node:?}){detail}")]
    UnsupportedOperator {
        op_type: String,
        node: String,
        detail: String,
    },
    #[error("unsupported use of {op_type} (node {node:?}): {reason}")]
    UnsupportedUsage {
        op_type: String,
        node: String,
        reason: String,
    },
    #[error("unsupported graph structure: {0}")]
    UnsupportedGraph(String),
    #[error(
        "the model states no input bounds (ONNX metadata_props \"veil.input_bounds\"): give \
         them with --input-bounds, or derive them from data with --calibration \
         (ImportOptions::input_bounds, calibration or calibration_file in the library)"
    )]
    MissingInputBounds,
    #[error("invalid input bounds: {0}")]
    InvalidBounds(String),
    #[error("invalid input scale: {0}")]
    InvalidScale(String),
    #[error("invalid fixed-point parameters: {0}")]
    InvalidFixedPoint(String),
    #[error("value bound of stage {stage} needs {bits} bits, more than the supported 100")]
    BoundTooLarge { stage: usize, bits: u32 },
    #[error("weight {value} of stage {stage} does not fit a 64-bit fixed-point integer")]
    WeightTooLarge { stage: usize, value: f64 },
    #[error("layer {what} would need {weights} dense weights (limit {limit})")]
    TooLarge {
        what: String,
        weights: usize,
        limit: usize,
    },
    #[error("expected {expected} values, got {got}")]
    LengthMismatch { expected: usize, got: usize },
    #[error("feature {index} = {value} is outside its bounds [{lo}, {hi}]")]
    InputOutOfBounds {
        index: usize,
        value: f64,
        lo: f64,
        hi: f64,
    },
    #[error("feature {index} encodes to {encoded}, not below 2^{bits} in magnitude")]
    EncodedInputTooLarge {
        index: usize,
        encoded: i128,
        bits: u32,
    },
    #[error("stage {stage}: {reason}")]
    InvalidMode { stage: usize, reason: String },
    #[error("integer overflow in stage {stage}")]
    Overflow { stage: usize },
    #[error(
        "{path} is an ONNX model and this build has no ONNX import: load its precompiled \
         .plan file (`veil import` writes one), or rebuild with the `onnx` feature \
         (`cargo build --release -p veil --features onnx`)"
    )]
    OnnxDisabled { path: String },
    #[error("float reference (tract) failed: {0}")]
    Tract(String),
    #[error("topology encoding: {0}")]
    Encoding(String),
    #[error("malformed data file {path}: {reason}")]
    MalformedData { path: String, reason: String },
}
