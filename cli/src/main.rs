//! `veil`: one command bundling every role of the system, the in-process
//! private inference (`infer`), key generation and the demo.

mod bench;
mod infer;
mod keygen;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Privacy-preserving deep-learning inference for constrained edge devices.
///
/// A device masks its sensor frame with pseudo-random masks; server A (which
/// holds the model) computes the linear layers on Paillier ciphertexts;
/// server B (which holds the secret key) evaluates the exact activations on
/// values A has perturbed. Neither server sees the frame or the result.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    /// Log filter (RUST_LOG syntax), e.g. "info" or "veil_protocol=debug".
    #[arg(long, global = true, env = "VEIL_LOG", default_value = "warn")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Bench(bench::Args),
    Infer(infer::Args),
    Keygen(keygen::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cli.log).unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let outcome = match cli.command {
        Command::Bench(args) => bench::run(args),
        Command::Infer(args) => infer::run(args),
        Command::Keygen(args) => keygen::run(args),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
