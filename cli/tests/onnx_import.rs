//! `veil import` and `veil infer` on an ONNX file from another exporter
//! (scikit-learn through skl2onnx, with none of veil's metadata), through
//! the binary: bounds given or measured, the fixed-point format, and the
//! quantization report.
#![cfg(feature = "onnx")]
#![allow(clippy::unwrap_used)] // a test: a panic is its failure report

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn veil(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_veil"))
        .args(args)
        .output()
        .expect("veil runs")
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn sklearn_model() -> PathBuf {
    repo().join("model/tests/fixtures/pima-sklearn.onnx")
}

/// The `max logit error` that `veil import` printed.
fn logit_error(stdout: &str) -> f64 {
    let rest = stdout
        .split("quantization: max logit error ")
        .nth(1)
        .unwrap_or_else(|| panic!("no report in {stdout}"));
    rest.split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no number in {stdout}"))
}

#[test]
fn import_measures_bounds_on_data_and_reports_the_quantization_error() {
    let dir = tempfile::tempdir().unwrap();
    let model = sklearn_model();
    let train = repo().join("data/pima-train.csv");
    let plan = dir.path().join("sk.plan");

    let out = veil(&["import", path(&model), "--out", path(&plan)]);
    assert!(!out.status.success());
    let message = text(&out);
    assert!(
        message.contains("--input-bounds") && message.contains("--calibration"),
        "{message}"
    );

    let import = |fixed: &str| {
        let out = veil(&[
            "import",
            path(&model),
            "--out",
            path(&plan),
            "--calibration",
            path(&train),
            "--fixed-point",
            fixed,
        ]);
        assert!(out.status.success(), "{}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(stdout.contains("over 200 rows"), "{stdout}");
        logit_error(&stdout)
    };
    let (w16, w24) = (import("16,16"), import("16,24"));
    assert!(w24 * 16.0 < w16, "w = 16: {w16:.3e}, w = 24: {w24:.3e}");

    let out = veil(&["import", path(&model), "--fixed-point", "16"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("F,W"), "{}", text(&out));
}

#[test]
fn infer_takes_bounds_as_a_list_or_a_file_and_refuses_them_for_a_plan() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let rows = std::fs::read_to_string(repo().join("data/pima-test.csv")).unwrap();
    let features: Vec<&str> = rows
        .lines()
        .skip(1)
        .take(8)
        .map(|l| l.rsplit_once(',').expect("label column").0)
        .collect();
    let input = d.join("x.csv");
    std::fs::write(&input, features.join("\n") + "\n").unwrap();
    // The shipped Pima models' physiological ranges (models/README.md).
    let bounds = "0:20,0:300,0:200,0:120,10:80,0:3,18:120";
    let bounds_file = d.join("bounds.txt");
    std::fs::write(
        &bounds_file,
        format!(
            "# npreg glu bp skin bmi ped age\n{}\n",
            bounds.replace(',', "\n")
        ),
    )
    .unwrap();

    let infer = |model: &Path, bounds: &str| {
        veil(&[
            "infer",
            "--model",
            path(model),
            "--input",
            path(&input),
            "--backend",
            "plain",
            "--input-bounds",
            bounds,
        ])
    };
    let run = |bounds: &str| {
        let out = infer(&sklearn_model(), bounds);
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let listed = run(bounds);
    // One diabetes score a row.
    assert_eq!(listed.lines().count(), 8, "{listed}");
    assert!(listed.lines().all(|l| l.parse::<f64>().is_ok()), "{listed}");
    // The protocol's rounding is random: the same bounds give the same
    // scores up to the quantization error.
    let from_file = run(path(&bounds_file));
    for (a, b) in listed.lines().zip(from_file.lines()) {
        let (a, b): (f64, f64) = (a.parse().unwrap(), b.parse().unwrap());
        assert!((a - b).abs() < 1e-3, "{listed}\n{from_file}");
    }

    let out = infer(&repo().join("models/pima-mlp.plan"), bounds);
    assert!(!out.status.success());
    assert!(text(&out).contains("already quantized"), "{}", text(&out));
}
