//! `veil-server-a`: server A as a stand-alone service.

use clap::Parser;

#[derive(Parser)]
#[command(version, about = "veil server A (model server)")]
struct Cli {
    #[command(flatten)]
    log: veil_shell::LogArgs,
    #[command(flatten)]
    args: veil_server_a::cli::Args,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    cli.log.init(veil_shell::logging::SERVICE_FILTER);
    veil_shell::exit_status(veil_server_a::cli::run(cli.args).await)
}
