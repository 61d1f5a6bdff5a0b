//! The precompiled `models/*.plan` files that the demo and the servers load
//! instead of importing ONNX: each must be exactly what importing its ONNX
//! file produces today, so that the two cannot drift apart. After a
//! deliberate change to import or quantization, regenerate them with
//! `veil import models/*.onnx` (or `VEIL_BLESS_PLANS=1 cargo test -p
//! veil-model --test plans`).
#![allow(clippy::unwrap_used)] // a test: a panic is its failure report

mod common;

use common::models_dir;
use veil_model::{
    ActivationMode, CompiledModel, ImportOptions, Model, ModelError, SeededRounding,
    load_model_file,
};

const SHIPPED: [&str; 4] = ["mnist-mlp", "mnist-cnn", "pima-mlp", "pima-tanh"];

/// As `veil import --calibration <training data>` makes the shipped plans.
fn import(name: &str) -> Model {
    let mut model = Model::load(
        &models_dir().join(format!("{name}.onnx")),
        &ImportOptions::default(),
    )
    .unwrap();
    let data = veil_model::data::workspace_data_dir().join(if name.starts_with("mnist") {
        "mnist-10k-images-idx3-ubyte.gz"
    } else {
        "pima-train.csv"
    });
    model
        .calibrate_from(&data, veil_model::CALIBRATION_ROWS)
        .unwrap();
    model
}

#[test]
fn shipped_plans_match_a_fresh_import() {
    let bless = std::env::var_os("VEIL_BLESS_PLANS").is_some();
    for name in SHIPPED {
        let fresh = import(name).compiled().to_bytes();
        let path = models_dir().join(format!("{name}.plan"));
        if bless {
            std::fs::write(&path, &fresh).unwrap();
        }
        let shipped = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{}: {e}; run `veil import`", path.display()));
        assert!(
            shipped == fresh,
            "{} differs from importing {name}.onnx: run `veil import models/{name}.onnx`",
            path.display()
        );
    }
}

#[test]
fn a_plan_file_runs_like_the_imported_model() {
    let rounding = SeededRounding {
        key: *b"veil-model plan file parity key!",
    };
    for name in SHIPPED {
        let model = import(name);
        let path = models_dir().join(format!("{name}.plan"));
        let loaded = load_model_file(&path).unwrap();
        assert_eq!(&loaded, model.compiled());
        assert!(
            loaded.is_calibrated(),
            "{name}: shipped without calibration"
        );
        assert_eq!(
            loaded.topology().fingerprint(),
            model.topology().fingerprint()
        );
        let n = loaded.topology().input_len;
        let modes: Vec<ActivationMode> = loaded.topology().default_modes();
        for row in 0..3 {
            // Inputs anywhere inside the bounds will do.
            let x: Vec<f32> = loaded
                .topology()
                .input_bounds
                .iter()
                .enumerate()
                .map(|(i, (lo, hi))| {
                    let t = ((i * 7 + row * 13) % 11) as f64 / 10.0;
                    (lo + (hi - lo) * t) as f32
                })
                .collect();
            assert_eq!(x.len(), n);
            let x_hat = loaded.encode_input(&x).unwrap();
            assert_eq!(
                loaded.run_int(&x_hat, &modes, &rounding).unwrap(),
                model.run_int(&x_hat, &modes, &rounding).unwrap()
            );
        }
    }
}

#[test]
fn damaged_plan_files_are_refused() {
    let bytes = import("pima-mlp").compiled().to_bytes();
    for cut in [0, 4, 12, 40, bytes.len() - 1] {
        assert!(matches!(
            CompiledModel::from_bytes(&bytes[..cut]),
            Err(ModelError::Encoding(_))
        ));
    }
    let mut magic = bytes.clone();
    magic[0] ^= 1;
    assert!(CompiledModel::from_bytes(&magic).is_err());
    let mut padded = bytes.clone();
    padded.push(0);
    assert!(CompiledModel::from_bytes(&padded).is_err());

    // A plan that belongs to another topology.
    let pima = import("pima-mlp").into_compiled();
    let mnist = import("mnist-mlp").into_compiled();
    assert!(matches!(
        CompiledModel::new(pima.topology().clone(), mnist.plan().clone()),
        Err(ModelError::Encoding(_))
    ));
    // The plan holds the private weights: its Debug must not show them.
    assert!(format!("{pima:?}").len() < 4096);
    assert!(!format!("{pima:?}").contains("weights"));
}

#[test]
fn an_unreadable_plan_names_its_path() {
    let err = load_model_file(std::path::Path::new("/nonexistent/x.plan")).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/x.plan"), "{err}");
}
