//! Accuracy of the shipped models on held-out data, float and integer
//! references side by side, plus their agreement over the full sets. Its
//! output is the table in models/README.md:
//!
//!     cargo run -p veil-model --example evaluate

use std::path::PathBuf;
use std::time::Instant;

use veil_model::data::{load_pima, load_workspace_mnist, workspace_data_dir};
use veil_model::{ActivationMode, ImportOptions, LinearKind, Model, SeededRounding, Stage};

/// First 8000 MNIST images train, the last 2000 are held out (see train.py).
const MNIST_TRAIN: usize = 8000;

fn argmax<T: PartialOrd + Copy>(v: &[T]) -> usize {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best
}

struct Row {
    float_pred: usize,
    int_pred: usize,
    label: usize,
    max_diff: f64,
}

fn evaluate(model: &Model, rows: &[(Vec<f32>, usize)], modes: &[ActivationMode]) -> Vec<Row> {
    let rounding = SeededRounding { key: [7u8; 32] };
    rows.iter()
        .map(|(x, label)| {
            let f = model.run_float(x).expect("float reference");
            let q = model.encode_input(x).expect("encode");
            let out = model
                .run_int(&q, modes, &rounding)
                .expect("integer reference");
            let d = model.decode_output(&out);
            let max_diff = f
                .iter()
                .zip(&d)
                .map(|(a, b)| (f64::from(*a) - b).abs())
                .fold(0.0, f64::max);
            Row {
                float_pred: argmax(&f),
                int_pred: argmax(&d),
                label: *label,
                max_diff,
            }
        })
        .collect()
}

fn main() {
    let models = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models");
    let mnist = load_workspace_mnist().expect("mnist");
    let mnist_rows: Vec<(Vec<f32>, usize)> = mnist
        .images
        .iter()
        .cloned()
        .zip(mnist.labels.iter().map(|l| *l as usize))
        .collect();
    let pima = load_pima(&workspace_data_dir().join("pima-test.csv")).expect("pima");
    let pima_rows: Vec<(Vec<f32>, usize)> = pima
        .features
        .iter()
        .map(|f| f.to_vec())
        .zip(pima.labels.iter().map(|l| *l as usize))
        .collect();

    println!(
        "| model | stages | held-out rows | float accuracy | integer accuracy (default modes) | agreement (all rows) | max logit diff | integer accuracy (permute) |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (name, rows, held_out_from) in [
        ("mnist-mlp", &mnist_rows, MNIST_TRAIN),
        ("mnist-cnn", &mnist_rows, MNIST_TRAIN),
        ("pima-mlp", &pima_rows, 0),
        ("pima-tanh", &pima_rows, 0),
    ] {
        let model = Model::load(
            &models.join(format!("{name}.onnx")),
            &ImportOptions::default(),
        )
        .expect("load");
        let t = model.topology();
        let shape: Vec<String> = t
            .stages
            .iter()
            .map(|s| match s {
                Stage::Linear(l) => {
                    let kind = if matches!(l.kind, LinearKind::Dense) {
                        "Dense"
                    } else {
                        "Conv2d"
                    };
                    format!(
                        "{kind} {}→{} (κ={})",
                        l.input_len, l.output_len, l.output_bound_bits
                    )
                }
                Stage::Activation(a) => format!("{:?}", a.kind),
            })
            .collect();
        let start = Instant::now();
        let res = evaluate(&model, rows, &t.default_modes());
        let elapsed = start.elapsed();
        let perm = evaluate(&model, &rows[held_out_from..], &t.permute_modes());
        let held = &res[held_out_from..];
        let acc = |f: &dyn Fn(&Row) -> bool, r: &[Row]| {
            r.iter().filter(|x| f(x)).count() as f64 / r.len() as f64
        };
        let agree = acc(&|r| r.float_pred == r.int_pred, &res);
        let max_diff = res.iter().map(|r| r.max_diff).fold(0.0, f64::max);
        println!(
            "| {name} | {} | {} | {:.2}% | {:.2}% | {:.2}% of {} | {:.2e} | {:.2}% |",
            shape.join(", "),
            held.len(),
            100.0 * acc(&|r| r.float_pred == r.label, held),
            100.0 * acc(&|r| r.int_pred == r.label, held),
            100.0 * agree,
            res.len(),
            max_diff,
            100.0 * acc(&|r| r.int_pred == r.label, &perm),
        );
        eprintln!(
            "{name}: {} rows in {:.2?}; fingerprint {}",
            rows.len(),
            elapsed,
            t.fingerprint_hex()
        );
    }
}
