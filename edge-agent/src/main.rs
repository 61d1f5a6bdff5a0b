//! `veil-edge-agent`: the device runtime as a command.

use clap::Parser;

#[derive(Parser)]
#[command(version, about = "veil edge agent (device runtime)")]
struct Cli {
    /// Log filter (RUST_LOG syntax); logs go to stderr.
    #[arg(long, env = "VEIL_LOG", default_value = "info")]
    log: String,
    #[command(flatten)]
    args: veil_edge_agent::cli::Args,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    veil_edge_agent::cli::init_logging(&cli.log);
    veil_edge_agent::cli::run(cli.args).await
}
