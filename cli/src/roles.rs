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
    #[command(flatten)]
    pub metrics: veil_shell::MetricsArgs,
}

pub fn broker(args: BrokerArgs) -> Result<()> {
    runtime()?.block_on(async {
        let config = veil_broker::BrokerConfig::from_toml_file(&args.config)
            .context("loading the broker configuration")?;
        let broker = veil_broker::Broker::start(config)
            .await
            .context("starting the broker")?;
        eprintln!("veil broker listening on {}", broker.local_addr());
        if let Some(addr) = args.metrics.metrics_listen {
            crate::broker_metrics::serve(addr, &broker).await?;
        }
        veil_shell::notify::ready();
        veil_shell::notify::spawn_runtime_watchdog();
        reload_on_hangup(&broker, veil_shell::wait_for_stop()).await;
        veil_shell::notify::stopping();
        broker.shutdown().await;
        Ok(())
    })
}

/// Reloads the broker's password and ACL files on every SIGHUP (systemd's
/// `ExecReload`) until `stop` completes. A file that cannot be read or
/// parsed is logged with its reason and changes nothing.
async fn reload_on_hangup(broker: &veil_broker::BrokerHandle, stop: impl Future<Output = ()>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(hangup) => hangup,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP: reloading needs a restart");
                stop.await;
                return;
            }
        };
        let mut stop = std::pin::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => return,
                Some(()) = hangup.recv() => {
                    if let Err(e) = broker.reload() {
                        tracing::error!(
                            "SIGHUP: reload refused, the previous password and ACL files stay in force: {:#}",
                            anyhow::Error::from(e)
                        );
                    }
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = broker;
        stop.await;
    }
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
