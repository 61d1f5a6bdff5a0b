//! `veil topology`: the public topology of a model, for pinning.

use anyhow::{Context, Result};
use std::path::PathBuf;

/// Print a model's topology fingerprint and write its topology file.
///
/// Server B and every device pin the fingerprint (B's
/// `topology_fingerprint`, the agent's `[pins] topology`); B can also load
/// the file itself (`topology_file`) instead of waiting for the one server A
/// publishes, so that B can start before A.
#[derive(clap::Args)]
pub struct Args {
    /// The model: a .plan file (as server A serves it), or an .onnx file
    /// in builds with the `onnx` feature.
    #[arg(long, value_name = "M.plan")]
    model: PathBuf,
    /// Write the topology (what A publishes, retained) to this file.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    let model = crate::infer::load_model_file(&args.model)?;
    let topology = model.topology();
    if let Some(out) = &args.out {
        std::fs::write(out, topology.to_bytes())
            .with_context(|| format!("writing {}", out.display()))?;
    }
    println!("model        {}", topology.name);
    println!("inputs       {}", topology.input_len);
    println!("fingerprint  {}", topology.fingerprint_hex());
    if let Some(out) = &args.out {
        println!("written to   {}", out.display());
    }
    Ok(())
}
