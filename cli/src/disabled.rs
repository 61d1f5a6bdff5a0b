//! Subcommands left out of this build by a Cargo feature. They stay in the
//! command line so that calling one says which feature to build with,
//! instead of clap's "unrecognized subcommand".

use anyhow::{Result, bail};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Whatever was passed; ignored.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    rest: Vec<String>,
}

/// The error for `veil <command>` built without `feature`.
pub fn refuse(command: &str, feature: &str) -> Result<()> {
    // The evaluation's figures were measured on the dist profile, so point
    // there; ONNX import is fine on the everyday release profile.
    let profile = if feature == "bench" {
        "--profile dist"
    } else {
        "--release"
    };
    bail!(
        "`veil {command}` is not in this build of veil: rebuild with the `{feature}` feature, \
         e.g. `cargo build {profile} -p veil --features {feature}`"
    )
}
