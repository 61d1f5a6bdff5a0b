//! `veil`: one command bundling every role of the system.

use clap::Parser;

/// Privacy-preserving deep-learning inference for constrained edge devices.
#[derive(Parser)]
#[command(version, about)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    Ok(())
}
