//! `veil-edge-agent`: the device runtime as a command.

use clap::Parser;

#[derive(Parser)]
#[command(version, about = "veil edge agent (device runtime)")]
struct Cli {
    #[command(flatten)]
    log: veil_shell::LogArgs,
    #[command(flatten)]
    args: veil_edge_agent::cli::Args,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    cli.log.init(veil_shell::logging::SERVICE_FILTER);
    veil_shell::exit_status(veil_edge_agent::cli::run(cli.args).await)
}
