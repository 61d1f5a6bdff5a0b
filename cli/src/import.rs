//! `veil import`: ONNX models compiled to the `.plan` files that the demo,
//! the servers and `veil infer` load without tract.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use veil_model::{ImportOptions, Model, PLAN_EXTENSION};

/// Compile ONNX models into .plan files (topology and quantized weights).
///
/// Each M.onnx becomes M.plan next to it (or `--out`), imported with the
/// default options: input bounds from the file's metadata, f = w = 16.
/// The shipped plans were made with `--calibration data/pima-train.csv`
/// (Pima) and `--calibration data/mnist-10k-images-idx3-ubyte.gz` (MNIST,
/// its first 1,000 images).
/// Builds without the `onnx` feature load only .plan files, so this is how
/// a new model reaches them. The shipped models/*.plan are this command's
/// output; `--check` verifies that they still are.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The ONNX models.
    #[arg(required = true, value_name = "M.onnx")]
    models: Vec<PathBuf>,
    /// Where to write the plan (one model only).
    #[arg(long, value_name = "M.plan")]
    out: Option<PathBuf>,
    /// Write nothing; fail when an existing .plan differs from what the
    /// import produces.
    #[arg(long, conflicts_with = "out")]
    check: bool,
    /// Calibration data: server A draws its dummies from the pre-activations
    /// the model produces on these rows, stored in the plan (an IDX image
    /// file, or a CSV whose first columns are the features). Use training
    /// data, never the rows you evaluate on. Without it, A's dummies fall
    /// back to a distribution B can tell apart from real entries.
    #[arg(long, value_name = "FILE")]
    calibration: Option<PathBuf>,
    /// How many calibration rows to run (from the start of the file).
    #[arg(long, value_name = "N", default_value_t = veil_model::CALIBRATION_ROWS)]
    calibration_rows: usize,
}

pub fn run(args: Args) -> Result<()> {
    if args.out.is_some() && args.models.len() != 1 {
        bail!("--out takes one model, {} given", args.models.len());
    }
    let mut stale = Vec::new();
    for onnx in &args.models {
        let mut model = Model::load(onnx, &ImportOptions::default())
            .with_context(|| format!("importing {}", onnx.display()))?;
        if let Some(path) = &args.calibration {
            model
                .calibrate_from(path, args.calibration_rows)
                .with_context(|| format!("calibrating {} on {}", onnx.display(), path.display()))?;
        }
        let bytes = model.compiled().to_bytes();
        let out = args
            .out
            .clone()
            .unwrap_or_else(|| onnx.with_extension(PLAN_EXTENSION));
        if args.check {
            // A missing file is as stale as a different one.
            if std::fs::read(&out).ok().as_deref() != Some(bytes.as_slice()) {
                stale.push(out.display().to_string());
            }
            continue;
        }
        std::fs::write(&out, &bytes).with_context(|| format!("writing {}", out.display()))?;
        println!(
            "{} -> {} ({} bytes, topology {})",
            onnx.display(),
            out.display(),
            bytes.len(),
            model.topology().fingerprint_hex()
        );
    }
    if !stale.is_empty() {
        bail!(
            "out of date (run `veil import` on their ONNX files): {}",
            stale.join(", ")
        );
    }
    Ok(())
}
