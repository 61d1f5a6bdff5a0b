//! `veil infer`: every row of a CSV file through the full three-party
//! protocol in one process.

use crate::keygen;
use anyhow::{Context, Result, bail};
use clap::ValueEnum;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::{BufRead, BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use veil_model::CompiledModel;
use veil_paillier::{FixedBaseNoise, KeySize, SecretKey};
use veil_protocol::{
    Device, DeviceConfig, Engine, Noise, PaillierPublic, PaillierSecret, Params, Plain, PublicOps,
    SecretOps, Seed, ServerA, ServerAConfig, ServerB, ServerBConfig,
};
use veil_server_a::ModelOptions;

/// Run every row of a CSV file through the private protocol, in one process.
///
/// Each line of the input is one frame: comma-separated numbers, as many as
/// the model has inputs (a first line that is not numeric is a header and is
/// skipped). Each output line holds the model's outputs (logits) for that
/// row, comma-separated. The device, server A and server B run as separate
/// state machines exchanging encoded messages, exactly as over MQTT.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    run: RunArgs,
    /// Where to write the outputs (default: standard output).
    #[arg(long, value_name = "Y.csv")]
    output: Option<PathBuf>,
    #[command(flatten)]
    onnx: ModelOptions,
}

/// What `veil infer` and `veil audit` both need to run the protocol.
#[derive(clap::Args)]
pub(crate) struct RunArgs {
    /// The model: a .plan file (models/*.plan, or `veil import`'s output),
    /// or an .onnx file in builds with the `onnx` feature.
    #[arg(long, value_name = "M.plan")]
    pub model: PathBuf,
    /// Input rows (CSV): as many comma-separated numbers as the model has
    /// inputs; a first line that is not numeric is a header.
    #[arg(long, value_name = "X.csv")]
    pub input: PathBuf,
    /// `paillier` runs the real cryptography; `plain` runs the same protocol
    /// with identity "encryption" (fast; for checking results, not private).
    #[arg(long, value_enum, default_value_t = Backend::Paillier)]
    pub backend: Backend,
    /// Directory holding the servers' keys (server-a.key, server-b.key);
    /// missing keys are generated there. Without it, fresh keys are made
    /// for this run only.
    #[arg(long, value_name = "DIR")]
    pub keys: Option<PathBuf>,
    /// Evaluate every activation in permute mode (B sees pre-activation
    /// values) instead of blind mode wherever possible.
    #[arg(long)]
    pub force_permute: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Backend {
    Paillier,
    Plain,
}

/// Reads the rows, checking each against the model before anything runs.
pub(crate) fn read_rows(path: &Path, model: &CompiledModel) -> Result<Vec<Vec<i64>>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let topology = model.topology();
    let mut rows = Vec::new();
    for (index, line) in std::io::BufReader::new(file).lines().enumerate() {
        let number = index + 1;
        let line = line.with_context(|| format!("{}: reading line {number}", path.display()))?;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let parsed: Result<Vec<f32>, _> = fields.iter().map(|f| f.parse::<f32>()).collect();
        let values = match parsed {
            Ok(values) => values,
            Err(_) if rows.is_empty() && index == 0 => continue,
            Err(e) => bail!(
                "{}: line {number}: not a number ({e}): {line:.60}",
                path.display()
            ),
        };
        if values.len() != topology.input_len {
            bail!(
                "{}: line {number} has {} values; model {} takes {}",
                path.display(),
                values.len(),
                topology.name,
                topology.input_len
            );
        }
        let encoded = model
            .encode_input(&values)
            .with_context(|| format!("{}: line {number}", path.display()))?;
        rows.push(encoded);
    }
    if rows.is_empty() {
        bail!("{}: no rows", path.display());
    }
    Ok(rows)
}

/// A `.plan` file, or an `.onnx` file when this build has the `onnx`
/// feature. Decided by veil's own feature rather than its libraries',
/// which other crates of a workspace build may switch on: the same command
/// line then behaves the same in every build of the binary.
pub(crate) fn load_model_file(path: &Path) -> Result<CompiledModel> {
    load_model_with(path, &ModelOptions::default())
}

/// [`load_model_file`] with the import options of `veil infer` (read as
/// server A reads them): an ONNX file is imported with them; a `.plan` is
/// already quantized, so only `--calibration` applies to it.
pub(crate) fn load_model_with(path: &Path, onnx: &ModelOptions) -> Result<CompiledModel> {
    let is_onnx = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("onnx"));
    if is_onnx && !cfg!(feature = "onnx") {
        return Err(veil_model::ModelError::OnnxDisabled {
            path: path.display().to_string(),
        }
        .into());
    }
    Ok(onnx.load(path)?)
}

pub(crate) fn keys(dir: Option<&Path>) -> Result<(Arc<SecretKey>, Arc<SecretKey>)> {
    let size = KeySize::Bits2048;
    let make = |role: &str| -> Result<SecretKey> {
        match dir {
            Some(dir) => keygen::load_or_create(dir, role, size),
            None => SecretKey::generate(&mut rand::rng(), size).context("generating a key pair"),
        }
    };
    Ok((Arc::new(make("server-a")?), Arc::new(make("server-b")?)))
}

pub fn run(args: Args) -> Result<()> {
    let model = load_model_with(&args.run.model, &args.onnx)?;
    let rows = read_rows(&args.run.input, &model)?;
    let (key_a, key_b) = keys(args.run.keys.as_deref())?;
    let params = Params {
        force_permute: args.run.force_permute,
        ..Params::default()
    };
    let topology = Arc::new(model.topology().clone());
    let device = Device::new(DeviceConfig {
        device: "veil-infer".into(),
        params: params.clone(),
        topology: Arc::clone(&topology),
        server_a: key_a.public_key().clone(),
        server_b: key_b.public_key().clone(),
    })?;
    let config_a = ServerAConfig {
        params: params.clone(),
        topology: Arc::clone(&topology),
        plan: Arc::new(model.plan().clone()),
        key: key_a,
        rounding_key: Seed::random(&mut rand::rng()),
    };
    let config_b = ServerBConfig {
        params,
        topology,
        key: Arc::clone(&key_b),
    };
    let mut seed = [0u8; 32];
    rand::Rng::fill_bytes(&mut rand::rng(), &mut seed);
    match args.run.backend {
        Backend::Plain => {
            let a = ServerA::new(config_a, Plain::default())?;
            let b = ServerB::new(config_b, Plain::default())?;
            drive(
                Engine::new(device, a, b, seed),
                &model,
                &rows,
                args.output.as_deref(),
            )
        }
        Backend::Paillier => {
            let mut rng = rand::rng();
            let public = key_b.public_key().clone();
            let a_noise = Noise::FixedBase(FixedBaseNoise::new(&public, &mut rng));
            let b_noise = Noise::FixedBase(FixedBaseNoise::new(&public, &mut rng));
            let a = ServerA::new(
                config_a,
                PaillierPublic::new(public, a_noise, rand::random()),
            )?;
            let b = ServerB::new(
                config_b,
                PaillierSecret::new(key_b, b_noise, rand::random()),
            )?;
            drive(
                Engine::new(device, a, b, seed),
                &model,
                &rows,
                args.output.as_deref(),
            )
        }
    }
}

fn drive<P: PublicOps, S: SecretOps>(
    mut engine: Engine<P, S>,
    model: &CompiledModel,
    rows: &[Vec<i64>],
    output: Option<&Path>,
) -> Result<()> {
    let sink: Box<dyn Write> = match output {
        Some(path) => Box::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        ),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut sink = BufWriter::new(sink);
    let progress = if std::io::stderr().is_terminal() {
        let bar = ProgressBar::new(rows.len() as u64);
        bar.set_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} frames, {per_sec}, eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    } else {
        ProgressBar::with_draw_target(Some(rows.len() as u64), ProgressDrawTarget::hidden())
    };
    let started = Instant::now();
    let mut frame_bytes = 0usize;
    let mut result_bytes = 0usize;
    for (i, x_hat) in rows.iter().enumerate() {
        let run = engine
            .infer(x_hat)
            .with_context(|| format!("row {}", i + 1))?;
        frame_bytes += run.frame_bytes;
        result_bytes += run.result_bytes;
        let outputs: Vec<i128> = run.outputs.iter().map(|v| v.as_i128()).collect();
        let logits = model.decode_output(&outputs);
        let line: Vec<String> = logits.iter().map(|v| v.to_string()).collect();
        writeln!(sink, "{}", line.join(",")).context("writing outputs")?;
        progress.inc(1);
    }
    sink.flush().context("writing outputs")?;
    progress.finish_and_clear();
    let elapsed = started.elapsed();
    let n = rows.len();
    eprintln!(
        "{n} rows in {:.2?} ({:.1?} per row), backend {}; device sends {} B and receives {} B per frame",
        elapsed,
        elapsed / n as u32,
        engine.a().backend().name(),
        frame_bytes / n,
        result_bytes / n
    );
    Ok(())
}
