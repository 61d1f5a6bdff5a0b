//! The shipped models: on the full MNIST 10k set and the full Pima test set,
//! the integer reference (the private protocol's exact arithmetic) predicts
//! the same class as the float reference (tract) for at least 99.9% of rows.
#![allow(clippy::unwrap_used)] // a test: a panic is its failure report

mod common;

use common::{argmax, models_dir};
use veil_model::data::{load_pima, load_workspace_mnist, workspace_data_dir};
use veil_model::{ActivationMode, ImportOptions, Model, SeededRounding};

const MIN_AGREEMENT: f64 = 0.999;

fn load(name: &str) -> Model {
    Model::load(
        &models_dir().join(format!("{name}.onnx")),
        &ImportOptions::default(),
    )
    .unwrap()
}

fn mnist_rows() -> Vec<Vec<f32>> {
    load_workspace_mnist().unwrap().images
}

fn pima_rows() -> Vec<Vec<f32>> {
    let p = load_pima(&workspace_data_dir().join("pima-test.csv")).unwrap();
    p.features.iter().map(|f| f.to_vec()).collect()
}

/// Returns (agreement, largest dequantized logit difference).
fn agreement(
    model: &Model,
    rows: &[Vec<f32>],
    modes: &[ActivationMode],
    label: &str,
) -> (f64, f64) {
    let rounding = SeededRounding {
        key: *b"veil-model shipped agreement key",
    };
    let mut agree = 0usize;
    let mut max_diff = 0f64;
    for x in rows {
        let float: Vec<f64> = model
            .run_float(x)
            .unwrap()
            .into_iter()
            .map(f64::from)
            .collect();
        let out = model
            .run_int(&model.encode_input(x).unwrap(), modes, &rounding)
            .unwrap();
        let int = model.decode_output(&out);
        assert_eq!(int.len(), float.len());
        agree += usize::from(argmax(&float) == argmax(&int));
        for (a, b) in float.iter().zip(&int) {
            max_diff = max_diff.max((a - b).abs());
        }
    }
    let rate = agree as f64 / rows.len() as f64;
    println!(
        "{} [{label}]: agreement {agree}/{} = {:.4}%, max logit difference {max_diff:.3e}",
        model.topology().name,
        rows.len(),
        100.0 * rate
    );
    (rate, max_diff)
}

fn check(name: &str, rows: &[Vec<f32>], permute_too: bool) {
    let model = load(name);
    let t = model.topology();
    let (rate, _) = agreement(&model, rows, &t.default_modes(), "default modes");
    assert!(rate >= MIN_AGREEMENT, "{name}: agreement {rate}");
    if permute_too {
        let (rate, _) = agreement(&model, rows, &t.permute_modes(), "permute modes");
        assert!(rate >= MIN_AGREEMENT, "{name} (permute): agreement {rate}");
    }
}

#[test]
fn mnist_mlp_integer_matches_float_on_all_10k() {
    check("mnist-mlp", &mnist_rows(), true);
}

#[test]
fn mnist_cnn_integer_matches_float_on_all_10k() {
    check("mnist-cnn", &mnist_rows(), false);
}

#[test]
fn pima_mlp_integer_matches_float_on_the_test_set() {
    check("pima-mlp", &pima_rows(), true);
}

#[test]
fn pima_tanh_integer_matches_float_on_the_test_set() {
    check("pima-tanh", &pima_rows(), true);
}

#[test]
fn shipped_models_have_the_expected_structure() {
    use veil_model::{ActivationKind as K, LinearKind, Stage};
    let kinds = |m: &Model| -> Vec<String> {
        m.topology()
            .stages
            .iter()
            .map(|s| match s {
                Stage::Linear(l) if l.kind == LinearKind::Dense => format!("Dense{}", l.output_len),
                Stage::Linear(l) => format!("Conv{}", l.output_len),
                Stage::Activation(a) => format!("{:?}", a.kind),
            })
            .collect()
    };
    assert_eq!(kinds(&load("mnist-mlp")), ["Dense128", "Relu", "Dense10"]);
    // Conv structure survives the folded input normalisation; ReLU and max-pool fuse.
    assert_eq!(
        kinds(&load("mnist-cnn")),
        [
            "Conv3136",
            "ReluMaxPool",
            "Conv1152",
            "ReluMaxPool",
            "Dense10"
        ]
    );
    assert_eq!(
        kinds(&load("pima-mlp")),
        ["Dense16", "Relu", "Dense8", "Relu", "Dense2"]
    );
    assert_eq!(
        kinds(&load("pima-tanh")),
        ["Dense16", "Tanh", "Dense8", "Sigmoid", "Dense2"]
    );
    let cnn = load("mnist-cnn");
    let t = cnn.topology();
    assert_eq!(t.input_shape, Some((1, 28, 28)));
    assert_eq!(t.input_bounds, vec![(0.0, 1.0); 784]);
    assert_eq!(t.output_scale_bits, 32);
    assert!(!t.device_softmax);
    let modes = t.default_modes();
    assert_eq!(modes[1], ActivationMode::Blind);
    let tanh = load("pima-tanh");
    assert!(
        tanh.topology()
            .default_modes()
            .iter()
            .all(|m| *m == ActivationMode::Permute)
    );
    assert!(matches!(
        tanh.topology().stages[1],
        Stage::Activation(ref a) if a.kind == K::Tanh
    ));
}
