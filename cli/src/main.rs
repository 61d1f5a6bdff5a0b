//! `veil`: one command bundling every role of the system, the in-process
//! private inference (`infer`), key generation and the demo. ONNX import
//! (`import`) and the evaluation (`bench`) are Cargo features, so that the
//! default build stays quick; without them their subcommands only say how
//! to rebuild.

mod attack;
mod audit;
#[cfg(feature = "bench")]
mod bench;
mod broker_metrics;
mod demo;
#[cfg(not(all(feature = "onnx", feature = "bench")))]
mod disabled;
#[cfg(feature = "onnx")]
mod import;
mod infer;
mod keygen;
mod load;
mod provision;
mod roles;
mod share;
mod topology;

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
    #[command(flatten)]
    log: veil_shell::LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Audit(audit::Args),
    #[cfg(feature = "bench")]
    Bench(bench::Args),
    /// Benchmarks (not in this build: needs the `bench` feature).
    #[cfg(not(feature = "bench"))]
    Bench(disabled::Args),
    #[cfg(feature = "onnx")]
    Import(import::Args),
    /// Compile ONNX models to .plan files (not in this build: needs the
    /// `onnx` feature).
    #[cfg(not(feature = "onnx"))]
    Import(disabled::Args),
    Infer(infer::Args),
    Keygen(keygen::Args),
    Topology(topology::Args),
    Provision(provision::Args),
    Demo(demo::Args),
    Load(load::Args),
    Attack(attack::Args),
    Broker(roles::BrokerArgs),
    ServerA(veil_server_a::cli::Args),
    ServerB(veil_server_b::cli::Args),
    EdgeAgent(veil_edge_agent::cli::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let service = matches!(
        cli.command,
        Command::Broker(_) | Command::ServerA(_) | Command::ServerB(_) | Command::EdgeAgent(_)
    );
    cli.log.init(if service {
        veil_shell::logging::SERVICE_FILTER
    } else {
        veil_shell::logging::TOOL_FILTER
    });
    let outcome = match cli.command {
        Command::Audit(args) => audit::run(args),
        #[cfg(feature = "bench")]
        Command::Bench(args) => bench::run(args),
        #[cfg(not(feature = "bench"))]
        Command::Bench(_) => disabled::refuse("bench", "bench"),
        #[cfg(feature = "onnx")]
        Command::Import(args) => import::run(args),
        #[cfg(not(feature = "onnx"))]
        Command::Import(_) => disabled::refuse("import", "onnx"),
        Command::Infer(args) => infer::run(args),
        Command::Keygen(args) => keygen::run(args),
        Command::Topology(args) => topology::run(args),
        Command::Provision(args) => provision::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Load(args) => load::run(args),
        Command::Attack(args) => attack::run(args),
        Command::Broker(args) => roles::broker(args),
        Command::ServerA(args) => roles::server_a(args),
        Command::ServerB(args) => roles::server_b(args),
        Command::EdgeAgent(args) => roles::edge_agent(args),
    };
    veil_shell::exit_status(outcome)
}
