//! `veil-server-b`: server B as a stand-alone service.

use clap::Parser;

#[derive(Parser)]
#[command(version, about = "veil server B (key server)")]
struct Cli {
    /// Log filter (RUST_LOG syntax).
    #[arg(long, env = "VEIL_LOG", default_value = "info")]
    log: String,
    #[command(flatten)]
    args: veil_server_b::cli::Args,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    veil_server_b::cli::init_logging(&cli.log);
    veil_server_b::cli::run(cli.args).await
}
