use thiserror::Error;

/// Everything that can go wrong while importing, encoding or running a model.
#[derive(Debug, Error)]
pub enum ModelError {
    /// A model, plan or data file that could not be read.
    #[error("cannot read {path}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Bytes that are not a valid ONNX model.
    #[error("malformed ONNX model: {0}")]
    MalformedOnnx(String),
    /// An operator veil does not evaluate.
    #[error("unsupported ONNX operator {op_type} (node {node:?}){detail}")]
    UnsupportedOperator {
        /// The operator.
        op_type: String,
        /// The node's name.
        node: String,
        /// What would make it supported, if anything.
        detail: String,
    },
    /// A supported operator with attributes or inputs veil does not evaluate.
    #[error("unsupported use of {op_type} (node {node:?}): {reason}")]
    UnsupportedUsage {
        /// The operator.
        op_type: String,
        /// The node's name.
        node: String,
        /// What is unsupported.
        reason: String,
    },
    /// A graph that is not a chain of supported stages.
    #[error("unsupported graph structure: {0}")]
    UnsupportedGraph(String),
    #[error(
        "the model states no input bounds (ONNX metadata_props \"veil.input_bounds\"): give \
         them with --input-bounds, or derive them from data with --calibration \
         (ImportOptions::input_bounds, calibration or calibration_file in the library)"
    )]
    /// No input bounds in the file and none given.
    MissingInputBounds,
    /// Bounds of the wrong count, inverted or not finite.
    #[error("invalid input bounds: {0}")]
    InvalidBounds(String),
    /// Input scales of the wrong count or not positive.
    #[error("invalid input scale: {0}")]
    InvalidScale(String),
    /// Fraction bits out of the supported range.
    #[error("invalid fixed-point parameters: {0}")]
    InvalidFixedPoint(String),
    #[error("value bound of stage {stage} needs {bits} bits, more than the supported 100")]
    /// Values of a stage too large for the protocol's plaintexts.
    BoundTooLarge {
        /// The stage.
        stage: usize,
        /// Bits its values need.
        bits: u32,
    },
    #[error("weight {value} of stage {stage} does not fit a 64-bit fixed-point integer")]
    /// A weight that does not fit 64 bits at the weight scale.
    WeightTooLarge {
        /// The stage.
        stage: usize,
        /// The weight.
        value: f64,
    },
    #[error("layer {what} would need {weights} dense weights (limit {limit})")]
    /// A layer too large to serve.
    TooLarge {
        /// Which layer.
        what: String,
        /// Dense weights it would need.
        weights: usize,
        /// The limit.
        limit: usize,
    },
    #[error("expected {expected} values, got {got}")]
    /// An input or output vector of the wrong length.
    LengthMismatch {
        /// The length the model takes.
        expected: usize,
        /// The length given.
        got: usize,
    },
    #[error("feature {index} = {value} is outside its bounds [{lo}, {hi}]")]
    /// A feature outside the model's input bounds.
    InputOutOfBounds {
        /// The feature's index.
        index: usize,
        /// Its value.
        value: f64,
        /// Its lower bound.
        lo: f64,
        /// Its upper bound.
        hi: f64,
    },
    #[error("feature {index} encodes to {encoded}, not below 2^{bits} in magnitude")]
    /// A feature whose encoding breaks the input bound `ℓ`.
    EncodedInputTooLarge {
        /// The feature's index.
        index: usize,
        /// Its encoding.
        encoded: i128,
        /// `ℓ`.
        bits: u32,
    },
    #[error("stage {stage}: {reason}")]
    /// An activation mode the stage does not allow.
    InvalidMode {
        /// The stage.
        stage: usize,
        /// Why.
        reason: String,
    },
    #[error("integer overflow in stage {stage}")]
    /// An integer overflow in the reference (a bound was wrong).
    Overflow {
        /// The stage.
        stage: usize,
    },
    #[error(
        "{path} is an ONNX model and this build has no ONNX import: load its precompiled \
         .plan file (`veil import` writes one), or rebuild with the `onnx` feature \
         (`cargo build --release -p veil --features onnx`)"
    )]
    /// An ONNX file given to a build without ONNX import.
    OnnxDisabled {
        /// The file.
        path: String,
    },
    /// The float reference did not run.
    #[error("float reference (tract) failed: {0}")]
    Tract(String),
    /// A topology or plan file that does not decode.
    #[error("topology encoding: {0}")]
    Encoding(String),
    #[error("malformed data file {path}: {reason}")]
    /// A data set file that does not parse.
    MalformedData {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}
