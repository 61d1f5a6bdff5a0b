//! `veil infer` end to end: the binary on a CSV file, both backends, and
//! its refusals.

use std::path::{Path, PathBuf};
use std::process::Command;

fn veil() -> Command {
    Command::new(env!("CARGO_BIN_EXE_veil"))
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The first `rows` Pima test rows without the label column, with a header.
fn pima_csv(dir: &Path, rows: usize) -> (PathBuf, Vec<String>) {
    let text = std::fs::read_to_string(repo().join("data/pima-test.csv")).expect("pima data");
    let mut lines = text.lines();
    let header = lines.next().expect("header");
    let mut out = vec![header.rsplit_once(',').expect("label column").0.to_string()];
    let mut labels = Vec::new();
    for line in lines.take(rows) {
        let (features, label) = line.rsplit_once(',').expect("label column");
        out.push(features.to_string());
        labels.push(label.to_string());
    }
    let path = dir.join("x.csv");
    std::fs::write(&path, out.join("\n") + "\n").expect("write csv");
    (path, labels)
}

fn logits(text: &str) -> Vec<Vec<f64>> {
    text.lines()
        .map(|l| {
            l.split(',')
                .map(|v| v.parse::<f64>().expect("a number"))
                .collect()
        })
        .collect()
}

#[test]
fn both_backends_give_the_same_predictions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (input, _) = pima_csv(dir.path(), 12);
    let model = repo().join("models/pima-mlp.plan");
    let keys = dir.path().join("keys");
    let run = |backend: &str| {
        let out = veil()
            .args(["infer", "--model"])
            .arg(&model)
            .arg("--input")
            .arg(&input)
            .args(["--backend", backend, "--keys"])
            .arg(&keys)
            .output()
            .expect("runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(stderr.contains("12 rows"), "summary: {stderr}");
        logits(&String::from_utf8_lossy(&out.stdout))
    };
    let real = run("paillier");
    let plain = run("plain");
    assert_eq!(real.len(), 12);
    for (r, p) in real.iter().zip(&plain) {
        assert_eq!(r.len(), 2);
        // Different runs round differently in the last bit; classes agree.
        assert_eq!(r[0] > r[1], p[0] > p[1]);
        for (a, b) in r.iter().zip(p) {
            assert!((a - b).abs() < 1e-3, "{a} vs {b}");
        }
    }
    // Keys were created once, privately, and reused.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(keys.join("server-b.key"))
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let output = dir.path().join("y.csv");
    let status = veil()
        .args(["infer", "--backend", "plain", "--model"])
        .arg(&model)
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .status()
        .expect("runs");
    assert!(status.success());
    assert_eq!(
        logits(&std::fs::read_to_string(&output).expect("output file")).len(),
        12
    );
}

#[test]
fn bad_rows_stop_with_the_line_number() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = repo().join("models/pima-mlp.plan");
    for (content, expect) in [
        (
            "npreg,glu,bp,skin,bmi,ped,age\n1,100,70,30,30,0.5,40\n1,100,70\n",
            "line 3 has 3 values",
        ),
        ("1,100,70,30,30,0.5,40\n1,100,70,30,30,0.5,400\n", "line 2"),
        (
            "1,100,70,30,30,0.5,40\n1,x,70,30,30,0.5,40\n",
            "line 2: not a number",
        ),
    ] {
        let input = dir.path().join("bad.csv");
        std::fs::write(&input, content).expect("write");
        let out = veil()
            .args(["infer", "--backend", "plain", "--model"])
            .arg(&model)
            .arg("--input")
            .arg(&input)
            .output()
            .expect("runs");
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expect), "expected {expect:?} in {stderr}");
        assert!(
            out.stdout.is_empty(),
            "nothing is written when a row is bad"
        );
    }
}

/// Builds without the `onnx` feature refuse an ONNX model saying how to
/// rebuild, and refuse the left-out subcommands the same way.
#[cfg(not(feature = "onnx"))]
#[test]
fn left_out_features_say_how_to_rebuild() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (input, _) = pima_csv(dir.path(), 1);
    let out = veil()
        .args(["infer", "--backend", "plain", "--model"])
        .arg(repo().join("models/pima-mlp.onnx"))
        .arg("--input")
        .arg(&input)
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--features onnx"), "{stderr}");
    for (args, feature) in [
        (&["import", "models/pima-mlp.onnx"][..], "--features onnx"),
        (
            &["bench", "device", "--frames", "1"][..],
            "--features bench",
        ),
    ] {
        let out = veil().args(args).output().expect("runs");
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(feature), "{stderr}");
    }
}

/// `veil import --check` confirms that the shipped .plan files are what
/// importing their ONNX files gives, with the calibration data they were
/// made with (models/README.md).
#[cfg(feature = "onnx")]
#[test]
fn shipped_plans_are_up_to_date() {
    for (models, data) in [
        (["mnist-mlp", "mnist-cnn"], "mnist-10k-images-idx3-ubyte.gz"),
        (["pima-mlp", "pima-tanh"], "pima-train.csv"),
    ] {
        let out = veil()
            .args(["import", "--check"])
            .args(models.map(|m| repo().join(format!("models/{m}.onnx"))))
            .arg("--calibration")
            .arg(repo().join("data").join(data))
            .output()
            .expect("runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
