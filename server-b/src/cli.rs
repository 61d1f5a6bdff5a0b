//! The `veil-server-b` / `veil server-b` command.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use veil_model::Topology;
use veil_paillier::SecretKey;
use veil_protocol::{Params, topics};

use crate::{Config, ServerB};

/// Run server B, the key server: first-layer masks, exact activations on
/// perturbed values, and the durable result queue.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Configuration file (see config/server-b.toml); environment variables
    /// (VEIL_BROKER_URL, VEIL_MQTT_PASSWORD, VEIL_STATE_DIR, ...) override it.
    #[arg(long, short, env = "VEIL_SERVER_B_CONFIG")]
    pub config: Option<PathBuf>,
    /// Start even when the secret key file is readable by group or others
    /// (by default that refuses to start: a key others can read is shared).
    #[arg(long, env = "VEIL_ALLOW_OPEN_KEY_FILE")]
    pub allow_open_key_file: bool,
    /// Worker threads, each owning the devices hashed to it (over the
    /// configuration's `workers`; 0: one per available core).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Where to serve Prometheus metrics and health checks.
    #[command(flatten)]
    pub metrics: veil_shell::MetricsArgs,
}

/// Loads the configuration, the key and the topology, runs until SIGINT or
/// SIGTERM, then stops cleanly.
pub async fn run(args: Args) -> Result<()> {
    let mut config = Config::load(args.config.as_deref()).context("loading the configuration")?;
    if let Some(workers) = args.workers {
        config.workers = workers;
    }
    if !args.allow_open_key_file {
        veil_shell::check_owner_only(&config.key_file).context("checking B's key file")?;
    }
    let key = SecretKey::read_from_file(&config.key_file)
        .with_context(|| format!("reading B's key {}", config.key_file.display()))?;
    let topology = load_topology(&config).await?;
    let server = ServerB::start(
        config.options(),
        Arc::new(key),
        Arc::new(topology),
        Params::default(),
    )
    .await
    .context("starting server B")?;
    if let Some(addr) = args.metrics.metrics_listen {
        serve_metrics(addr, server.stats_handle()).await?;
    }
    veil_shell::notify::ready();
    veil_shell::notify::spawn_watchdog(server.heartbeat());
    veil_shell::wait_for_stop().await;
    veil_shell::notify::stopping();
    tracing::info!("stopping");
    server.shutdown().await;
    Ok(())
}

async fn load_topology(config: &Config) -> Result<Topology> {
    let topology = match &config.topology_file {
        Some(path) => {
            let bytes =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            Topology::from_bytes(&bytes).with_context(|| format!("decoding {}", path.display()))?
        }
        None => {
            let topic = topics::topology(&config.model);
            tracing::info!(%topic, "fetching the model topology published by server A");
            let found = veil_link::fetch_retained(
                &config.mqtt,
                std::slice::from_ref(&topic),
                Duration::from_secs(60),
            )
            .await
            .context("fetching the topology")?;
            let bytes = found.get(&topic).context("topology missing")?;
            Topology::from_bytes(bytes).context("decoding the published topology")?
        }
    };
    if let Some(pin) = &config.topology_fingerprint
        && !pin.eq_ignore_ascii_case(&topology.fingerprint_hex())
    {
        bail!(
            "topology fingerprint {} does not match the pinned {pin}",
            topology.fingerprint_hex()
        );
    }
    if topology.name != config.model {
        bail!(
            "the topology is for model {:?}, not {:?}",
            topology.name,
            config.model
        );
    }
    Ok(topology)
}

/// Serves server B's statistics as Prometheus metrics (`veil_server_b_*`)
/// on `addr`; returns the bound address.
pub async fn serve_metrics(
    addr: std::net::SocketAddr,
    stats: Arc<crate::Stats>,
) -> Result<std::net::SocketAddr> {
    let mut metrics = veil_shell::Metrics::new("server-b");
    let sessions = metrics.counter("sessions", "Device sessions accepted");
    let results = metrics.counter("results", "Results produced and queued");
    let redelivered = metrics.counter("redelivered", "Results sent again on a device's Sync");
    let acked = metrics.counter("acked", "Results acknowledged by their device");
    let expired = metrics.counter("expired", "Results dropped unacknowledged after their TTL");
    let rejected = metrics.counter("rejected", "Messages refused");
    let queued = metrics.gauge("queued_results", "Results waiting for an acknowledgement");
    metrics.latency(
        "round_latency",
        "A round message taken to its answer handed to the link",
        &stats.round_latency,
    );
    metrics.latency(
        "result_latency",
        "A frame's first round message taken to its result handed to the link",
        &stats.result_latency,
    );
    metrics
        .serve_refreshed(addr, move || {
            let s = stats.snapshot();
            sessions.follow(s.sessions);
            results.follow(s.results);
            redelivered.follow(s.redelivered);
            acked.follow(s.acked);
            expired.follow(s.expired);
            rejected.follow(s.rejected);
            queued.set(i64::try_from(s.queued).unwrap_or(i64::MAX));
            true
        })
        .await
        .with_context(|| format!("serving metrics on {addr}"))
}
