//! `veil broker`, `veil server-a`, `veil server-b`, `veil edge-agent`: each
//! role as a long-running service (what the systemd units start).

use std::path::PathBuf;

use anyhow::{Context, Result};

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Run the embedded MQTT broker (rumqttd behind veil's ACL gate).
#[derive(clap::Args, Debug)]
pub struct BrokerArgs {
    /// Broker configuration (see config/broker.toml). The default is an
    /// absolute path, like the servers' defaults under /etc/veil, so that
    /// what the broker reads does not depend on the working folder.
    #[arg(
        long,
        short,
        env = "VEIL_BROKER_CONFIG",
        default_value = "/etc/veil/broker.toml"
    )]
    pub config: PathBuf,
}

pub fn broker(args: BrokerArgs) -> Result<()> {
    runtime()?.block_on(async {
        let config = veil_broker::BrokerConfig::from_toml_file(&args.config)
            .context("loading the broker configuration")?;
        let broker = veil_broker::Broker::start(config)
            .await
            .context("starting the broker")?;
        eprintln!("veil broker listening on {}", broker.local_addr());
        veil_shell::notify::ready();
        veil_shell::notify::spawn_watchdog();
        veil_shell::wait_for_stop().await;
        veil_shell::notify::stopping();
        broker.shutdown().await;
        Ok(())
    })
}

pub fn server_a(args: veil_server_a::cli::Args) -> Result<()> {
    runtime()?.block_on(veil_server_a::cli::run(args))
}

pub fn server_b(args: veil_server_b::cli::Args) -> Result<()> {
    runtime()?.block_on(veil_server_b::cli::run(args))
}

pub fn edge_agent(args: veil_edge_agent::cli::Args) -> Result<()> {
    runtime()?.block_on(veil_edge_agent::cli::run(args))
}
