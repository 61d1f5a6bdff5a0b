//! The `veil-server-a` / `veil server-a` command.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use veil_paillier::{PublicKey, SecretKey};
use veil_protocol::{Params, topics};

use crate::{Config, ServerA, Setup};

/// Run server A, the model server: linear layers on ciphertexts, the
/// perturbation of every activation round, the durable frame store.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Configuration file (see config/server-a.toml); environment variables
    /// (VEIL_BROKER_URL, VEIL_MQTT_PASSWORD, VEIL_STATE_DIR, ...) override it.
    #[arg(long, short, env = "VEIL_SERVER_A_CONFIG")]
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
    /// Import options of an ONNX model_file without veil's metadata (over
    /// the `[onnx]` table of the configuration).
    #[command(flatten)]
    pub onnx: crate::ModelOptions,
}

/// Loads the configuration, keys and model, runs until SIGINT or SIGTERM,
/// then stops cleanly.
pub async fn run(args: Args) -> Result<()> {
    let mut config = Config::load(args.config.as_deref()).context("loading the configuration")?;
    if let Some(workers) = args.workers {
        config.workers = workers;
    }
    if !args.allow_open_key_file {
        veil_shell::check_owner_only(&config.key_file).context("checking A's key file")?;
    }
    let key = SecretKey::read_from_file(&config.key_file)
        .with_context(|| format!("reading A's key {}", config.key_file.display()))?;
    let model = args
        .onnx
        .or(config.onnx.clone())
        .load(&config.model_file)
        .with_context(|| format!("loading the model {}", config.model_file.display()))?;
    let b_key = load_b_key(&config).await?;
    let server = ServerA::start(
        config.options(),
        Setup {
            key: Arc::new(key),
            b_key,
            model: Arc::new(model),
            params: Params::default(),
        },
    )
    .await
    .context("starting server A")?;
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

async fn load_b_key(config: &Config) -> Result<PublicKey> {
    let key = match &config.b_key_file {
        Some(path) => PublicKey::read_from_file(path)
            .with_context(|| format!("reading B's public key {}", path.display()))?,
        None => {
            let topic = topics::server_key('b');
            tracing::info!(%topic, "fetching the key server B publishes");
            let found = veil_link::fetch_retained(
                &config.mqtt,
                std::slice::from_ref(&topic),
                Duration::from_secs(60),
            )
            .await
            .context("fetching B's public key")?;
            let bytes = found.get(&topic).context("B's key missing")?;
            PublicKey::from_bytes(bytes).context("decoding B's published key")?
        }
    };
    if let Some(pin) = &config.b_key_fingerprint
        && !pin.eq_ignore_ascii_case(&key.fingerprint_hex())
    {
        bail!(
            "B's key fingerprint {} does not match the pinned {pin}",
            key.fingerprint_hex()
        );
    }
    Ok(key)
}

/// Serves server A's statistics as Prometheus metrics (`veil_server_a_*`)
/// on `addr`; returns the bound address.
pub async fn serve_metrics(
    addr: std::net::SocketAddr,
    stats: Arc<crate::Stats>,
) -> Result<std::net::SocketAddr> {
    let mut metrics = veil_shell::Metrics::new("server-a");
    let sessions = metrics.counter("sessions", "Device sessions accepted");
    let frames = metrics.counter("frames", "Frames accepted");
    let outputs = metrics.counter("outputs", "Frames whose output went to B");
    let duplicates = metrics.counter("duplicates", "Duplicate frames dropped");
    let retries = metrics.counter("retries", "Frames started over after B timed out");
    let abandoned = metrics.counter("abandoned", "Frames given up after the last retry");
    let rejected = metrics.counter("rejected", "Messages refused");
    let replayed = metrics.counter("replayed", "Frames taken back up from the store at start");
    let precomputed = metrics.counter("precomputed", "Mask sets precomputed offline");
    let dropped = metrics.counter(
        "dropped",
        "Frames dropped unstored: their device had too many parked",
    );
    metrics.latency(
        "frame_latency",
        "Frame accepted to its output acknowledged by the broker",
        &stats.frame_latency,
    );
    metrics
        .serve_refreshed(addr, move || {
            let s = stats.snapshot();
            sessions.follow(s.sessions);
            frames.follow(s.frames);
            outputs.follow(s.outputs);
            duplicates.follow(s.duplicates);
            retries.follow(s.retries);
            abandoned.follow(s.abandoned);
            rejected.follow(s.rejected);
            replayed.follow(s.replayed);
            precomputed.follow(s.precomputed);
            dropped.follow(s.dropped);
            true
        })
        .await
        .with_context(|| format!("serving metrics on {addr}"))
}
