//! Models from other exporters, with none of veil's metadata: scikit-learn
//! through skl2onnx (model/tests/fixtures/pima_sklearn.py made the file),
//! bounds measured on data, the fixed-point format, and the quantization
//! report.
#![allow(clippy::unwrap_used)] // a test: a panic is its failure report

mod common;

use std::path::{Path, PathBuf};

use common::{Attr, Graph, values};
use veil_model::{FixedPoint, ImportOptions, Model, ModelError, Stage, WeightScale};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pima-sklearn.onnx")
}

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../data")
        .join(name)
}

/// Feature rows of a Pima CSV (its label column dropped).
fn pima_rows(name: &str) -> Vec<Vec<f32>> {
    veil_model::data::load_features(&data(name), 7, usize::MAX).unwrap()
}

fn from_training_data(fixed: FixedPoint) -> Model {
    with_weight_scale(fixed, WeightScale::default())
}

fn with_weight_scale(fixed: FixedPoint, weight_scale: WeightScale) -> Model {
    Model::load(
        &fixture(),
        &ImportOptions {
            calibration_file: Some(data("pima-train.csv")),
            fixed,
            weight_scale,
            ..ImportOptions::default()
        },
    )
    .unwrap()
}

fn weight_bits(model: &Model) -> Vec<u32> {
    model
        .topology()
        .stages
        .iter()
        .filter_map(|s| match s {
            Stage::Linear(l) => Some(l.weight_bits),
            Stage::Activation(_) => None,
        })
        .collect()
}

#[test]
fn a_scikit_learn_model_needs_bounds_and_takes_them_from_data() {
    let err = Model::load(&fixture(), &ImportOptions::default()).unwrap_err();
    assert!(matches!(err, ModelError::MissingInputBounds), "{err}");
    let message = err.to_string();
    assert!(message.contains("--input-bounds"), "{message}");
    assert!(message.contains("--calibration"), "{message}");

    let model = from_training_data(FixedPoint::default());
    let train = pima_rows("pima-train.csv");
    // Every training row lies inside, with the 10% margin to spare: glu
    // spans [56, 199] there, widened by 0.1 · max(143, 56, 199, 1).
    for row in &train {
        model.encode_input(row).unwrap();
    }
    let (lo, hi) = model.topology().input_bounds[1];
    assert!((lo - (56.0 - 19.9)).abs() < 1e-9, "{lo}");
    assert!((hi - (199.0 + 19.9)).abs() < 1e-9, "{hi}");

    let report = model.quantization_report(&train).unwrap();
    assert_eq!((report.rows, report.outputs), (train.len(), 1));
    assert!(!report.to_string().contains("top-1"), "{report}");
    assert!(report.max_logit_error > 0.0, "{report}");
    assert!(report.max_logit_error < 1e-2, "{report}");
}

#[test]
fn more_weight_bits_shrink_the_quantization_error() {
    let train = pima_rows("pima-train.csv");
    let error = |weight_bits| {
        with_weight_scale(
            FixedPoint {
                frac_bits: 16,
                weight_bits,
            },
            WeightScale::Uniform,
        )
        .quantization_report(&train)
        .unwrap()
        .max_logit_error
    };
    let (w16, w24) = (error(16), error(24));
    assert!(w24 * 16.0 < w16, "w = 16: {w16:.3e}, w = 24: {w24:.3e}");
}

/// The standardization folded into the first layer makes it read glucose
/// in mg/dL and age in years: at a uniform w = 16 the logits were off by
/// 1.367e-3 (1e-3 of the largest), at per-layer scales by 5.4e-5 with the
/// first layer at w = 23 and the others at 16.
#[test]
fn a_first_layer_reading_raw_features_gets_the_weight_bits_it_needs() {
    let train = pima_rows("pima-train.csv");
    let uniform = with_weight_scale(FixedPoint::default(), WeightScale::Uniform);
    let per_layer = with_weight_scale(FixedPoint::default(), WeightScale::PerLayer);
    assert_eq!(weight_bits(&uniform), [16, 16, 16]);
    let bits = weight_bits(&per_layer);
    assert!(bits[0] > 20, "{bits:?}");
    assert_eq!(bits[1..], [16, 16]);
    assert_eq!(
        per_layer.topology().output_scale_bits,
        16 + 16,
        "the last layer's scale"
    );

    let before = uniform.quantization_report(&train).unwrap();
    let after = per_layer.quantization_report(&train).unwrap();
    assert!(
        after.max_logit_error * 10.0 < before.max_logit_error,
        "uniform: {before}; per layer: {after}"
    );
    // Within 2^-14 of the largest logit.
    assert!(
        after.max_logit_error < after.max_abs_logit / 16384.0,
        "{after}"
    );
}

/// Models whose first layer reads features near 1 (pixels) or at their
/// native precision (the Pima models' integer features) get w = 16
/// everywhere: per-layer scales leave the shipped models as they were.
#[test]
fn per_layer_scales_leave_the_shipped_models_unchanged() {
    for name in ["mnist-mlp", "mnist-cnn", "pima-mlp", "pima-tanh"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../models")
            .join(format!("{name}.onnx"));
        let load = |weight_scale| {
            Model::load(
                &path,
                &ImportOptions {
                    weight_scale,
                    ..ImportOptions::default()
                },
            )
            .unwrap()
        };
        let (uniform, per_layer) = (load(WeightScale::Uniform), load(WeightScale::PerLayer));
        assert_eq!(uniform.topology(), per_layer.topology(), "{name}");
        assert!(weight_bits(&per_layer).iter().all(|w| *w == 16), "{name}");
    }
}

/// x (3 features in [-1, 1]) → Cast(to) → MatMul.
fn cast_then_matmul(to: i64) -> Vec<u8> {
    let mut g = Graph::new(&[3]);
    let w = g.init("w", &[3, 2], values(1, 6, 1.0));
    g.node("Cast", "cast", &[""], &[("to", Attr::Int(to))])
        .node("MatMul", "mm", &["", &w], &[])
        .bounds(-1.0, 1.0);
    g.bytes()
}

#[test]
fn a_cast_to_float_passes_and_other_casts_are_refused() {
    let model = Model::from_bytes(&cast_then_matmul(1), &ImportOptions::default()).unwrap();
    let x = [0.5, -0.25, 1.0];
    let report = model.quantization_report(&[x.to_vec()]).unwrap();
    assert!(report.max_logit_error < 1e-3, "{report}");

    // 7 is int64.
    let err = Model::from_bytes(&cast_then_matmul(7), &ImportOptions::default()).unwrap_err();
    let message = err.to_string();
    assert!(
        matches!(err, ModelError::UnsupportedUsage { .. }),
        "{message}"
    );
    assert!(message.contains("element type 7"), "{message}");
}
