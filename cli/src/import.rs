//! `veil import`: ONNX models compiled to the `.plan` files that the demo,
//! the servers and `veil infer` load without tract.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use veil_model::PLAN_EXTENSION;

/// Compile ONNX models into .plan files (topology and quantized weights).
///
/// Each M.onnx becomes M.plan next to it (or `--out`). Input bounds come
/// from `--input-bounds`, else the file's metadata, else `--calibration`;
/// the fixed-point format is `--fixed-point` (default f = w = 16). With
/// `--calibration`, the float and integer models are compared on its rows
/// and the largest logit error is printed.
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
    #[command(flatten)]
    onnx: veil_server_a::ModelOptions,
}

pub fn run(args: Args) -> Result<()> {
    if args.out.is_some() && args.models.len() != 1 {
        bail!("--out takes one model, {} given", args.models.len());
    }
    let mut stale = Vec::new();
    for onnx in &args.models {
        let model = args.onnx.import(onnx)?;
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
        let weight_bits: Vec<String> = model
            .topology()
            .stages
            .iter()
            .filter_map(|stage| match stage {
                veil_model::Stage::Linear(l) => Some(l.weight_bits.to_string()),
                veil_model::Stage::Activation(_) => None,
            })
            .collect();
        println!(
            "  fixed point: f = {}, weight bits per layer {}",
            model.topology().fixed.frac_bits,
            weight_bits.join(", ")
        );
        if let Some(report) = args.onnx.report(&model)? {
            println!("  quantization: {report}");
        }
    }
    if !stale.is_empty() {
        bail!(
            "out of date (run `veil import` on their ONNX files): {}",
            stale.join(", ")
        );
    }
    Ok(())
}
