//! The `veil-edge-agent` / `veil edge-agent` command: CSV replay or stdin
//! lines in, JSON lines out.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use veil_link::MqttSettings;

use crate::{AgentOptions, EdgeAgent, Pins};

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
}

/// The agent's options from its TOML file and the environment.
pub fn load_options(path: Option<&Path>) -> Result<AgentOptions> {
    let (file, base) = match path {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let file: File =
                toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
            (
                file,
                path.parent().map(Path::to_path_buf).unwrap_or_default(),
            )
        }
        None => (File::default(), PathBuf::new()),
    };
    let device = std::env::var("VEIL_DEVICE")
        .ok()
        .or(file.device)
        .context("no device id: set `device` in the configuration or VEIL_DEVICE")?;
    let mut mqtt = file.mqtt.unwrap_or_default();
    if mqtt.username.is_none() {
        mqtt.username = Some(device.clone());
    }
    if let Some(p) = &mut mqtt.password_file
        && p.is_relative()
    {
        *p = base.join(&*p);
    }
    mqtt.apply_env("VEIL_");
    let mut state_dir = file
        .state_dir
        .unwrap_or_else(|| PathBuf::from("/var/lib/veil/edge-agent"));
    if state_dir.is_relative() {
        state_dir = base.join(state_dir);
    }
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
    Ok(options)
}

/// A parsed input line: features and an optional label.
pub type Row = (Vec<f32>, Option<String>);

/// Parses one stdin line (comma- or space-separated numbers, or a JSON
/// array); blank lines and `#` comments give `None`.
pub fn parse_line(line: &str) -> Result<Option<Vec<f32>>> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    if line.starts_with('[') {
        let values: Vec<f32> = serde_json::from_str(line).context("not a JSON array of numbers")?;
        return Ok(Some(values));
    }
    line.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<f32>()
                .with_context(|| format!("{s:?} is not a number"))
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// Reads a CSV file with a header: the label column (if any) apart, every
/// column must be numeric.
pub fn read_csv(path: &Path, label_column: Option<&str>) -> Result<Vec<Row>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<String> = lines
        .next()
        .context("empty CSV file")?
        .split(',')
        .map(|s| s.trim().to_string())
        .collect();
    let label = match label_column {
        Some(name) => Some(
            header
                .iter()
                .position(|h| h == name)
                .with_context(|| format!("no column {name:?} in the header"))?,
        ),
        None => ["label", "type", "class", "y"]
            .iter()
            .find_map(|n| header.iter().position(|h| h.eq_ignore_ascii_case(n))),
    };
    let mut rows = Vec::new();
    for (i, line) in lines.enumerate() {
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if fields.len() != header.len() {
            bail!(
                "row {}: {} fields, the header has {}",
                i + 1,
                fields.len(),
                header.len()
            );
        }
        let mut features = Vec::with_capacity(fields.len());
        let mut tag = None;
        for (c, field) in fields.iter().enumerate() {
            if Some(c) == label {
                tag = Some(field.to_string());
            } else {
                features.push(
                    field
                        .parse::<f32>()
                        .with_context(|| format!("row {}: {field:?} is not a number", i + 1))?,
                );
            }
        }
        rows.push((features, tag));
    }
    Ok(rows)
}

/// Runs the agent from the command line.
pub async fn run(args: Args) -> Result<()> {
    let options = load_options(args.config.as_deref())?;
    let mut agent = EdgeAgent::start(options)
        .await
        .context("starting the edge agent")?;
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
            let mut feed = |features: &[f32], label: Option<String>| -> Result<()> {
                match agent.capture(features, label) {
                    Ok(_) => count += 1,
                    Err(e) => eprintln!("frame refused at capture: {e}"),
                }
                if !interval.is_zero() {
                    std::thread::sleep(interval);
                }
                Ok(())
            };
            if let Some(path) = csv {
                for (features, label) in read_csv(&path, label_column.as_deref())? {
                    feed(&features, label)?;
                }
            } else if stdin {
                for line in std::io::stdin().lock().lines() {
                    let line = line.context("reading stdin")?;
                    match parse_line(&line) {
                        Ok(Some(features)) => feed(&features, None)?,
                        Ok(None) => {}
                        Err(e) => eprintln!("skipping a line: {e:#}"),
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
    loop {
        if input_done && agent.pending() == 0 {
            break;
        }
        let sleep_until =
            deadline.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            out = outputs.recv() => match out {
                Some(out) => {
                    writeln!(sink, "{}", out.to_json()).context("writing output")?;
                    sink.flush().context("writing output")?;
                }
                None => break,
            },
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
                eprintln!("{} frames still without a result after {}s; they stay in the outbox", agent.pending(), args.wait_secs);
                break;
            }
            _ = veil_shell::wait_for_stop(), if !finite => break,
        }
    }
    match Arc::try_unwrap(agent) {
        Ok(agent) => agent.shutdown().await,
        Err(_) => tracing::debug!("capture thread still holds the agent"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_as_csv_spaces_or_json() {
        assert_eq!(parse_line("1, 2.5,3").unwrap(), Some(vec![1.0, 2.5, 3.0]));
        assert_eq!(parse_line("1 2 3").unwrap(), Some(vec![1.0, 2.0, 3.0]));
        assert_eq!(parse_line("[1,2]").unwrap(), Some(vec![1.0, 2.0]));
        assert_eq!(parse_line("  # comment").unwrap(), None);
        assert!(parse_line("1,x").is_err());
    }

    #[test]
    fn csv_rows_keep_their_label_apart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.csv");
        std::fs::write(&path, "a,b,type\n1,2,Yes\n3,4,No\n").unwrap();
        let rows = read_csv(&path, None).unwrap();
        assert_eq!(
            rows,
            vec![
                (vec![1.0, 2.0], Some("Yes".into())),
                (vec![3.0, 4.0], Some("No".into()))
            ]
        );
        assert!(read_csv(&path, Some("missing")).is_err());
        std::fs::write(&path, "a,b\n1\n").unwrap();
        assert!(read_csv(&path, None).is_err());
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
}
