//! The `veil-edge-agent` / `veil edge-agent` command: CSV replay or stdin
//! lines in, JSON lines out.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use veil_link::MqttSettings;

use crate::input::{Refusal, parse_line, read_csv};
use crate::local::{LocalBridge, LocalSettings, SensorRefusal};
use crate::{AgentOptions, EdgeAgent, Output, Pins};

/// Run the edge agent: mask frames, send them to server A, print results.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Configuration file (see config/edge-agent.toml); environment
    /// variables (VEIL_BROKER_URL, VEIL_MQTT_PASSWORD, VEIL_DEVICE,
    /// VEIL_STATE_DIR) override it.
    #[arg(long, short, env = "VEIL_EDGE_AGENT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Replay the rows of a CSV file (header required; every numeric column
    /// but the label column is a feature).
    #[arg(long, conflicts_with = "stdin")]
    pub csv: Option<PathBuf>,
    /// Column of the CSV file holding the label (passed through to the
    /// output). Default: the first of label, type, class, y present.
    #[arg(long)]
    pub label_column: Option<String>,
    /// Read frames from standard input: one per line, features separated
    /// by commas or spaces, or a JSON array.
    #[arg(long)]
    pub stdin: bool,
    /// Wait this long between replayed frames.
    #[arg(long, default_value_t = 0)]
    pub interval_ms: u64,
    /// Append the JSON lines to this file instead of standard output.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    /// After the input ends, wait at most this long for pending results.
    #[arg(long, default_value_t = 120)]
    pub wait_secs: u64,
    /// Where to serve Prometheus metrics and health checks.
    #[command(flatten)]
    pub metrics: veil_shell::MetricsArgs,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct File {
    device: Option<String>,
    model: Option<String>,
    state_dir: Option<PathBuf>,
    pins: Pins,
    mqtt: Option<MqttSettings>,
    resend_after_secs: Option<u64>,
    frame_ttl_secs: Option<u64>,
    counter_block: Option<u64>,
    provision_timeout_secs: Option<u64>,
    /// The gateway's own broker (results out, sensor readings in).
    local: Option<LocalSettings>,
}

/// The agent's options from its TOML file and the environment.
pub fn load_options(path: Option<&Path>) -> Result<AgentOptions> {
    load_config(path).map(|(options, _)| options)
}

/// The agent's options and its `[local]` broker settings, if any. The
/// file is read as the servers read theirs (`veil_shell::config`): every
/// relative path in it (state folder, password, CA, client certificate
/// and key files, of both brokers) is taken relative to the file's
/// folder; then the environment overrides.
pub fn load_config(path: Option<&Path>) -> Result<(AgentOptions, Option<LocalSettings>)> {
    let mut file = match path {
        Some(path) => {
            let mut file: File = veil_shell::config::read_toml(path)?;
            let File {
                state_dir,
                mqtt,
                local,
                ..
            } = &mut file;
            let files = state_dir
                .iter_mut()
                .chain(mqtt.iter_mut().flat_map(veil_shell::config::mqtt_files))
                .chain(
                    local
                        .iter_mut()
                        .flat_map(|l| veil_shell::config::mqtt_files(&mut l.mqtt)),
                );
            veil_shell::config::relative_to_file(path, files);
            file
        }
        None => File::default(),
    };
    let device = std::env::var("VEIL_DEVICE")
        .ok()
        .or(file.device.take())
        .context("no device id: set `device` in the configuration or VEIL_DEVICE")?;
    let mut mqtt = file.mqtt.take().unwrap_or_default();
    if mqtt.username.is_none() {
        mqtt.username = Some(device.clone());
    }
    mqtt.apply_env("VEIL_");
    let mut state_dir = file
        .state_dir
        .take()
        .unwrap_or_else(|| PathBuf::from("/var/lib/veil/edge-agent"));
    if let Ok(v) = std::env::var("VEIL_STATE_DIR") {
        state_dir = v.into();
    }
    let mut options = AgentOptions::new(&device, mqtt, state_dir);
    if let Some(model) = file.model {
        options.model = model;
    }
    options.pins = file.pins;
    if let Some(s) = file.resend_after_secs {
        options.resend_after = Duration::from_secs(s.max(1));
    }
    if let Some(s) = file.frame_ttl_secs {
        options.frame_ttl = Duration::from_secs(s.max(1));
    }
    if let Some(b) = file.counter_block {
        options.counter_block = b.max(1);
    }
    if let Some(s) = file.provision_timeout_secs {
        options.provision_timeout = Duration::from_secs(s.max(1));
    }
    Ok((options, file.local))
}

/// Runs the agent from the command line.
pub async fn run(args: Args) -> Result<()> {
    let (options, local) = load_config(args.config.as_deref())?;
    let device = options.device.clone();
    let mut agent = EdgeAgent::start(options)
        .await
        .context("starting the edge agent")?;
    let mut local = match local {
        Some(settings) => {
            Some(LocalBridge::start(settings, &device).context("connecting to the local broker")?)
        }
        None => None,
    };
    let mut outputs = agent.take_outputs().context("output stream")?;
    let mut sink: Box<dyn Write + Send> = match &args.output {
        Some(path) => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening {}", path.display()))?,
        ),
        None => Box::new(std::io::stdout()),
    };
    let agent = Arc::new(agent);
    if let Some(addr) = args.metrics.metrics_listen {
        serve_metrics(addr, Arc::clone(&agent)).await?;
    }
    veil_shell::notify::ready();
    veil_shell::notify::spawn_watchdog(agent.heartbeat());
    // Rows refused before they became frames, for the output.
    let (refusals_tx, mut refusals) = tokio::sync::mpsc::unbounded_channel::<Refusal>();
    // Capture runs on its own thread: reading stdin blocks, and capture
    // never waits for the network anyway.
    let feeder = {
        let agent = Arc::clone(&agent);
        let csv = args.csv.clone();
        let label_column = args.label_column.clone();
        let stdin = args.stdin;
        let interval = Duration::from_millis(args.interval_ms);
        tokio::task::spawn_blocking(move || -> Result<u64> {
            let mut count = 0;
            let refuse = |refusal: Refusal| {
                let _ = refusals_tx.send(refusal);
            };
            let mut feed =
                |row: usize, columns: &[String], features: &[f32], label: Option<String>| {
                    match agent.capture(features, label.clone()) {
                        Ok(_) => count += 1,
                        Err(e) => refuse(Refusal::from_capture(row, columns, label, &e)),
                    }
                    if !interval.is_zero() {
                        std::thread::sleep(interval);
                    }
                };
            if let Some(path) = csv {
                let table = read_csv(&path, label_column.as_deref())?;
                for (i, row) in table.rows.into_iter().enumerate() {
                    match row {
                        Ok((features, label)) => feed(i + 1, &table.columns, &features, label),
                        Err(refusal) => refuse(refusal),
                    }
                }
            } else if stdin {
                for (i, line) in std::io::stdin().lock().lines().enumerate() {
                    let line = line.context("reading stdin")?;
                    match parse_line(&line) {
                        Ok(Some(features)) => feed(i + 1, &[], &features, None),
                        Ok(None) => {}
                        Err(e) => refuse(Refusal {
                            kind: "refused-at-capture",
                            row: i + 1,
                            column: None,
                            reason: format!("{e:#}"),
                            label: None,
                        }),
                    }
                }
            }
            Ok(count)
        })
    };
    let finite = args.csv.is_some() || args.stdin;
    let mut input_done = false;
    let mut feeder = Some(feeder);
    let wait = Duration::from_secs(args.wait_secs);
    let mut deadline: Option<tokio::time::Instant> = None;
    let mut tally = Tally::default();
    let stop = veil_shell::wait_for_stop();
    tokio::pin!(stop);
    let mut write = |line: String| -> Result<()> {
        writeln!(sink, "{line}").context("writing output")?;
        sink.flush().context("writing output")
    };
    loop {
        if input_done && agent.pending() == 0 {
            // Refusals the capture thread sent before it ended.
            while let Ok(refusal) = refusals.try_recv() {
                tally.refused_at_capture += 1;
                write(refusal.to_json())?;
            }
            break;
        }
        let sleep_until =
            deadline.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            out = outputs.recv() => match out {
                Some(out) => {
                    tally.count(&out);
                    if let Some(local) = &local {
                        local.publish(&out);
                    }
                    write(out.to_json())?;
                }
                None => break,
            },
            Some(frame) = async { local.as_mut().expect("guarded").next_frame().await }, if local.is_some() => {
                let refusal = match frame {
                    Ok((features, label)) => match agent.capture(&features, label) {
                        Ok(_) => None,
                        Err(e) => Some(SensorRefusal { topic: String::new(), reason: e.to_string() }),
                    },
                    Err(refusal) => Some(refusal),
                };
                if let Some(refusal) = refusal {
                    tracing::warn!(topic = %refusal.topic, reason = %refusal.reason, "sensor reading refused");
                    if let Some(local) = &local {
                        local.publish_refusal(&refusal);
                    }
                }
            }
            Some(refusal) = refusals.recv() => {
                tally.refused_at_capture += 1;
                if let Some(local) = &local {
                    local.publish_line(refusal.to_json());
                }
                write(refusal.to_json())?;
            }
            done = async { feeder.as_mut().expect("guarded").await }, if feeder.is_some() => {
                feeder = None;
                let count = done.context("capture thread")??;
                tracing::info!(frames = count, "input finished; waiting for pending results");
                if finite {
                    input_done = true;
                    deadline = Some(tokio::time::Instant::now() + wait);
                }
            }
            _ = tokio::time::sleep_until(sleep_until), if deadline.is_some() => {
                tally.unanswered = agent.pending() as u64;
                eprintln!("{} frames still without a result after {}s; they stay in the outbox", tally.unanswered, args.wait_secs);
                break;
            }
            // Every run stops cleanly on SIGINT/SIGTERM, a finite one too:
            // frames not yet answered stay in the outbox for the next start.
            _ = &mut stop => {
                tracing::info!(pending = agent.pending(), "stopping");
                break;
            }
        }
    }
    if let Some(local) = local.take() {
        local.shutdown().await;
    }
    match Arc::try_unwrap(agent) {
        Ok(agent) => agent.shutdown().await,
        Err(_) => tracing::debug!("capture thread still holds the agent"),
    }
    if finite && tally.failed() > 0 {
        bail!(
            "{} of {} frames got no result: {} refused at capture, {} refused by a server, \
             {} expired, {} unanswered (each has its line in the output)",
            tally.failed(),
            tally.failed() + tally.results,
            tally.refused_at_capture,
            tally.rejected,
            tally.expired,
            tally.unanswered
        );
    }
    Ok(())
}

/// The agent's statistics as Prometheus metrics (`veil_edge_agent_*`).
async fn serve_metrics(addr: std::net::SocketAddr, agent: Arc<EdgeAgent>) -> Result<()> {
    let mut metrics = veil_shell::Metrics::new("edge-agent");
    let captured = metrics.counter("captured", "Frames captured and masked");
    let frames_sent = metrics.counter("frames_sent", "Frame publishes, resends included");
    let results = metrics.counter("results", "Results delivered to the application");
    let rejected = metrics.counter("rejected", "Frames refused by a server");
    let expired = metrics.counter("expired", "Frames given up without a result");
    let connects = metrics.counter(
        "connects",
        "Connections to the broker, reconnections included",
    );
    let sent_bytes = metrics.counter("sent_bytes", "Payload bytes of frames, acks and sessions");
    let pending = metrics.gauge("pending", "Frames waiting for their result");
    metrics.latency(
        "latency",
        "Capture to result delivered to the application",
        &agent.latency(),
    );
    let agent = Arc::downgrade(&agent);
    metrics
        .serve_refreshed(addr, move || {
            // The exporter must not keep the agent alive past its shutdown.
            let Some(agent) = agent.upgrade() else {
                return false;
            };
            let s = agent.stats();
            captured.follow(s.captured);
            frames_sent.follow(s.frames_sent);
            results.follow(s.results);
            rejected.follow(s.rejected);
            expired.follow(s.expired);
            connects.follow(s.connects);
            sent_bytes.follow(s.frame_bytes + s.ack_bytes + s.session_bytes);
            pending.set(i64::try_from(s.pending).unwrap_or(i64::MAX));
            true
        })
        .await
        .with_context(|| format!("serving metrics on {addr}"))?;
    Ok(())
}

/// What became of a finite run's rows: the exit status fails when any row
/// got no result, so a script notices without parsing the output.
#[derive(Default)]
struct Tally {
    results: u64,
    refused_at_capture: u64,
    rejected: u64,
    expired: u64,
    unanswered: u64,
}

impl Tally {
    fn count(&mut self, out: &Output) {
        match out {
            Output::Result(_) => self.results += 1,
            Output::Rejected { .. } => self.rejected += 1,
            Output::Expired { .. } => self.expired += 1,
        }
    }

    fn failed(&self) -> u64 {
        self.refused_at_capture + self.rejected + self.expired + self.unanswered
    }
}

#[cfg(test)]
mod example {
    #[test]
    fn the_example_configuration_parses() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/edge-agent.toml");
        let options = super::load_options(Some(&path)).expect("config/edge-agent.toml loads");
        assert_eq!(options.device, "devA");
        assert_eq!(options.mqtt.username.as_deref(), Some("devA"));
        assert_eq!(options.counter_block, 64);
    }

    #[test]
    fn paths_in_the_file_follow_its_folder() {
        let dir = tempfile::tempdir().expect("scratch folder");
        let path = dir.path().join("edge-agent.toml");
        std::fs::write(
            &path,
            "device = \"devA\"\nstate_dir = \"state\"\n\
             [mqtt]\npassword_file = \"secrets/devA.password\"\nca_file = \"tls/ca.crt\"\n\
             client_cert_file = \"tls/devA.crt\"\nclient_key_file = \"/abs/devA.key\"\n\
             [local]\n[local.mqtt]\nca_file = \"tls/local-ca.crt\"\n",
        )
        .expect("written");
        let (options, local) = super::load_config(Some(&path)).expect("loads");
        let base = dir.path();
        assert_eq!(options.state_dir, base.join("state"));
        let mqtt = &options.mqtt;
        assert_eq!(mqtt.password_file, Some(base.join("secrets/devA.password")));
        assert_eq!(mqtt.ca_file, Some(base.join("tls/ca.crt")));
        assert_eq!(mqtt.client_cert_file, Some(base.join("tls/devA.crt")));
        assert_eq!(mqtt.client_key_file, Some("/abs/devA.key".into()));
        let local = local.expect("a [local] table");
        assert_eq!(local.mqtt.ca_file, Some(base.join("tls/local-ca.crt")));
        // A file that does not parse is named in the error (read by
        // veil_shell::config, as the servers' are).
        std::fs::write(&path, "device = ").expect("written");
        let err = super::load_config(Some(&path)).expect_err("refused");
        assert!(
            matches!(
                err.downcast_ref::<veil_shell::ConfigError>(),
                Some(veil_shell::ConfigError::Toml { path: p, .. }) if *p == path
            ),
            "{err:#}"
        );
    }
}
