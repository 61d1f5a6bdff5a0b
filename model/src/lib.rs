//! veil-model owns everything about the neural network itself: importing an
//! ONNX file (tract-onnx) into alternating linear and activation stages,
//! fusing consecutive linear operators and quantizing them to fixed point
//! (weights at `2^w_l`, each layer's own, activations at `2^f`, biases at
//! `2^(f+w_l)`: [`WeightScale`]), bounding
//! every intermediate value by interval arithmetic, the public [`Topology`]
//! (shapes, kinds, bounds; no weight) with its fingerprint, the private
//! [`Plan`] that only server A loads, and the two references that protocol
//! runs are checked against: the float one (tract runs the ONNX graph) and
//! the integer one ([`Model::run_int`]) whose semantics — including the
//! truncation rule and max-pool tie-breaking with injected randomness — the
//! private protocol reproduces bit for bit. A [`CompiledModel`] (topology,
//! plan and integer reference, stored as `models/<name>.plan`) needs no
//! tract: only ONNX import and the float reference sit behind the `onnx`
//! feature. It also loads the MNIST and Pima data sets shipped in `data/`.

#![warn(
    missing_docs,
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

#[cfg(feature = "onnx")]
mod affine;
mod compiled;
pub mod data;
mod error;
mod fixed;
pub mod fuzzing;
#[cfg(feature = "onnx")]
mod import;
#[cfg(feature = "onnx")]
mod model;
mod options;
mod plan;
#[cfg(feature = "onnx")]
mod quantization;
mod semantics;
mod topology;

pub use compiled::{
    CALIBRATION_GROUPS, CALIBRATION_ROWS, CompiledModel, PLAN_EXTENSION, load_model_file,
};
pub use error::ModelError;
pub use fixed::{
    ActivationMode, FixedPoint, FloorRounding, RoundingSource, SeededRounding, WeightScale,
    truncate,
};
#[cfg(feature = "onnx")]
pub use import::{INPUT_BOUNDS_KEY, INPUT_SCALE_KEY};
#[cfg(feature = "onnx")]
pub use model::{ImportOptions, MAX_BOUND_BITS, Model};
pub use options::{
    BoundsError, FixedPointError, WeightScaleError, parse_bounds, parse_fixed_point,
    parse_weight_scale,
};
pub use plan::{ConvGeometry, LinearLayer, Plan, StageSamples};
#[cfg(feature = "onnx")]
pub use quantization::QuantizationReport;
pub use semantics::{activate, permute_eval};
pub use topology::{
    ActivationKind, ActivationSpec, LinearKind, LinearSpec, MAX_ELEMENTS, PoolSpec, Stage, Topology,
};
