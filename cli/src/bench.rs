//! `veil bench`: the evaluation. `veil bench device` measures what veil
//! costs the edge device against the conventional homomorphic-encryption
//! approach; `veil bench plot` draws several of its JSON results in one
//! figure.

use anyhow::{Context, Result, bail};
use clap::{Subcommand, ValueEnum};
use std::path::PathBuf;
use veil_bench::report::{AMORTIZE_OVER, ApproachReport, DeviceReport};
use veil_bench::{Dataset, DeviceBenchOptions};

/// Benchmarks: the device's cost against conventional HE.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Subcommand)]
enum BenchCommand {
    Device(DeviceArgs),
    Plot(PlotArgs),
    /// Internal: the device's per-frame work alone, replayed from a
    /// recording (run under callgrind by `veil bench device`).
    #[command(hide = true)]
    DeviceWork(WorkArgs),
}

/// Measure the edge device's cost: veil against conventional HE.
///
/// Both approaches run in this process over the same MQTT transport: veil's
/// embedded broker on loopback with the shipped ACL and demo passwords, each
/// party (device, server A, server B; for the baseline device and server A)
/// a separate MQTT client on its own thread driving its state machine.
///
/// veil: the device masks its frame with PRF masks and unmasks the result;
/// A computes the linear layers on Paillier ciphertexts under B's key, B
/// evaluates the exact activations on values A perturbed.
///
/// Conventional baseline: the device owns a 2048-bit Paillier key pair
/// (generated at session set-up), encrypts every input feature (CRT
/// encryption), and for every activation layer decrypts the
/// pre-activations that server A computed homomorphically (A packs many per
/// ciphertext), applies the exact activation and encrypts each result
/// again (CRT); finally it decrypts the outputs. Same model, same
/// fixed-point encoding, same activation semantics.
///
/// Measured on the device, per frame: CPU time of the device's own work
/// (the device runs on one thread, as on a one-core gateway; its thread
/// CPU clock is read around masking, encryption, decryption, activations
/// and message encoding; the MQTT client's own work is left out for both),
/// wall time from frame capture to decoded result, and bytes sent and
/// received counted at the socket (a relay between the device's MQTT client
/// and the broker: every packet with its headers, PUBLISH and PUBACK). The
/// session set-up (baseline: key generation and publishing the public key;
/// veil: the two seed encryptions and session messages) is measured on its
/// own (CPU: mean of five openings, key generation time varies) and then
/// amortized over 1, 10, 100 and 1000 frames. Ratios are conventional
/// divided by veil; `time_ratio` and `bytes_ratio` are per frame in steady
/// state, set-up excluded, averaged over the measured frames. Servers' CPU per inference
/// (online and offline) and A↔B bytes are reported too. With valgrind
/// installed, the instructions of the device's per-frame work are counted
/// with callgrind (portable arithmetic kernel, as on an ARM gateway).
///
/// Prints a Markdown table on stdout; progress goes to stderr.
#[derive(clap::Args)]
struct DeviceArgs {
    /// The model (ONNX), e.g. models/mnist-mlp.onnx.
    #[arg(long, value_name = "M.onnx")]
    model: PathBuf,
    /// Where the frames come from: the held-out MNIST images or the Pima
    /// test rows (cycled when more frames are asked for).
    #[arg(long, value_enum)]
    dataset: DatasetArg,
    /// Frames measured per approach (steady state: set-up excluded). Each
    /// approach first runs `--warmup` unmeasured frames.
    #[arg(long, default_value_t = 10, value_name = "N")]
    frames: usize,
    /// Unmeasured frames run first by each approach.
    #[arg(long, default_value_t = 1, value_name = "N")]
    warmup: usize,
    /// Write every figure as JSON (ratios `time_ratio`, `bytes_ratio`,
    /// `time_ratio_amortized`, `bytes_ratio_amortized` keyed "1", "10",
    /// "100", "1000", and each approach's measurements).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Write the figures as CSV rows `model,approach,metric,value`.
    #[arg(long, value_name = "FILE")]
    csv: Option<PathBuf>,
    /// Draw the device-cost ratio against inferences per session (log x
    /// axis) as SVG.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    /// Skip the callgrind instruction counts (they take minutes for the
    /// baseline, which valgrind runs about fifty times slower).
    #[arg(long)]
    no_callgrind: bool,
    /// Baseline frames replayed under callgrind (veil replays every
    /// measured frame: its work is tiny).
    #[arg(long, default_value_t = 1, value_name = "N")]
    callgrind_frames: usize,
    /// Give the device's thread the first CPU to itself and run the
    /// servers, the broker and the relays on the others (with two CPUs or
    /// more), as on a gateway whose servers are other machines. Not the
    /// default: on the 2-core VM this project measures on, the device's
    /// cost per frame comes from waking after its ~40 ms wait for the
    /// result, not from the servers evicting its caches, and an idle core
    /// of its own made it dearer (pima-mlp: 32.0 µs against 26.2 µs
    /// shared, 2026-11-29).
    #[arg(long)]
    own_core: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum DatasetArg {
    Mnist,
    Pima,
}

/// Draw several `veil bench device --json` results in one SVG figure.
#[derive(clap::Args)]
struct PlotArgs {
    /// The SVG file to write.
    #[arg(long, value_name = "FILE.svg")]
    out: PathBuf,
    /// JSON results of `veil bench device`, one per model.
    #[arg(required = true, value_name = "RESULT.json")]
    results: Vec<PathBuf>,
}

#[derive(clap::Args)]
struct WorkArgs {
    #[arg(long)]
    replay: PathBuf,
    #[arg(long)]
    frames: usize,
}

pub fn run(args: Args) -> Result<()> {
    match args.command {
        BenchCommand::Device(a) => device(a),
        BenchCommand::Plot(a) => plot(a),
        BenchCommand::DeviceWork(a) => {
            let replay = veil_bench::replay::Replay::read(&a.replay)?;
            let classes = veil_bench::replay::device_work(&replay, a.frames)?;
            std::hint::black_box(classes);
            Ok(())
        }
    }
}

fn device(args: DeviceArgs) -> Result<()> {
    if args.frames == 0 {
        bail!("--frames must be at least 1");
    }
    let callgrind_exe = if args.no_callgrind {
        None
    } else {
        Some(std::env::current_exe().context("locating the veil executable")?)
    };
    let options = DeviceBenchOptions {
        model: args.model,
        dataset: match args.dataset {
            DatasetArg::Mnist => Dataset::Mnist,
            DatasetArg::Pima => Dataset::Pima,
        },
        data_dir: crate::share::dir("data")?,
        frames: args.frames,
        warmup: args.warmup,
        callgrind_exe,
        callgrind_frames_veil: args.frames,
        callgrind_frames_conventional: args.callgrind_frames.max(1),
        quiet: false,
        own_core: args.own_core,
    };
    let report = veil_bench::run_device_bench(&options)?;
    print!("{}", table(&report));
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report).context("encoding JSON")?;
        veil_bench::write_file(path, &format!("{text}\n"))?;
    }
    if let Some(path) = &args.csv {
        veil_bench::write_file(path, &report.to_csv())?;
    }
    if let Some(path) = &args.plot {
        veil_bench::write_file(
            path,
            &veil_bench::plot::device_overhead_svg(std::slice::from_ref(&report)),
        )?;
    }
    Ok(())
}

fn plot(args: PlotArgs) -> Result<()> {
    let reports = args
        .results
        .iter()
        .map(|path| -> Result<DeviceReport> {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
        })
        .collect::<Result<Vec<_>>>()?;
    veil_bench::write_file(&args.out, &veil_bench::plot::device_overhead_svg(&reports))
}

fn duration_us(us: f64) -> String {
    if us >= 1e6 {
        format!("{:.2} s", us / 1e6)
    } else if us >= 1e3 {
        format!("{:.1} ms", us / 1e3)
    } else {
        format!("{us:.1} µs")
    }
}

fn bytes(b: f64) -> String {
    if b >= 1e6 {
        format!("{:.2} MB", b / 1e6)
    } else if b >= 1e4 {
        format!("{:.1} kB", b / 1e3)
    } else {
        format!("{b:.0} B")
    }
}

fn times(r: f64) -> String {
    if !r.is_finite() {
        "—".into()
    } else if r >= 100.0 {
        format!("{r:.0}×")
    } else {
        format!("{r:.1}×")
    }
}

/// The figures as a Markdown table.
pub fn table(r: &DeviceReport) -> String {
    let (v, c) = (&r.veil, &r.conventional);
    let mut rows: Vec<[String; 4]> = Vec::new();
    let mut row = |name: &str, f: &dyn Fn(&ApproachReport) -> String, ratio: String| {
        rows.push([name.to_string(), f(v), f(c), ratio]);
    };
    row(
        "device CPU per frame (mean)",
        &|a| duration_us(a.cpu_us.mean),
        times(r.time_ratio),
    );
    row(
        "device CPU per frame (p95)",
        &|a| duration_us(a.cpu_us.p95),
        String::new(),
    );
    row(
        "of which at the capture / on the replies (mean)",
        &|a| {
            format!(
                "{} / {}",
                duration_us(a.capture_cpu_us.mean),
                duration_us(a.cpu_us.mean - a.capture_cpu_us.mean)
            )
        },
        String::new(),
    );
    row(
        "device wall time per frame",
        &|a| duration_us(a.wall_ms.mean * 1e3),
        times(r.wall_ratio),
    );
    row(
        "device bytes sent per frame",
        &|a| bytes(a.bytes_sent.mean),
        times(r.bytes_sent_ratio),
    );
    row(
        "device bytes received per frame",
        &|a| bytes(a.bytes_received.mean),
        String::new(),
    );
    row(
        "device bytes per frame (both ways)",
        &|a| bytes(a.bytes.mean),
        times(r.bytes_ratio),
    );
    row(
        "device instructions per frame",
        &|a| match a.instructions_per_frame {
            Some(i) => format!("{:.3e}", i),
            None => "n/a".into(),
        },
        r.instructions_ratio.map(times).unwrap_or_default(),
    );
    row(
        "session set-up: device CPU",
        &|a| duration_us(a.setup.cpu_ms * 1e3),
        String::new(),
    );
    row(
        "session set-up: device bytes",
        &|a| bytes((a.setup.bytes_sent + a.setup.bytes_received) as f64),
        String::new(),
    );
    row(
        "session end (veil: the last acknowledgement on its own): device CPU / bytes",
        &|a| {
            format!(
                "{} / {}",
                duration_us(a.setup.end_cpu_us),
                bytes(a.setup.end_bytes() as f64)
            )
        },
        String::new(),
    );
    for n in AMORTIZE_OVER {
        let key = n.to_string();
        let t = r
            .time_ratio_amortized
            .get(&key)
            .copied()
            .unwrap_or(f64::NAN);
        let b = r
            .bytes_ratio_amortized
            .get(&key)
            .copied()
            .unwrap_or(f64::NAN);
        row(
            &format!("amortized over {n} frames: time / bytes ratio"),
            &|_| String::new(),
            format!("{} / {}", times(t), times(b)),
        );
    }
    row(
        "server A CPU per inference (online / offline)",
        &|a| {
            format!(
                "{} / {}",
                duration_us(a.server.a_cpu_online_ms * 1e3),
                duration_us(a.server.a_cpu_offline_ms * 1e3)
            )
        },
        String::new(),
    );
    row(
        "server B CPU per inference (online / offline)",
        &|a| {
            if a.server.b_cpu_online_ms == 0.0 && a.server.b_cpu_offline_ms == 0.0 {
                "—".into()
            } else {
                format!(
                    "{} / {}",
                    duration_us(a.server.b_cpu_online_ms * 1e3),
                    duration_us(a.server.b_cpu_offline_ms * 1e3)
                )
            }
        },
        String::new(),
    );
    row(
        "A↔B bytes per inference",
        &|a| bytes(a.server.ab_bytes),
        String::new(),
    );
    let mut out = format!(
        "{} on {}: {} measured frames per approach (+{} warm-up), Paillier {} bits; classes agree on {}/{} frames\n\n",
        r.model, r.dataset, r.frames, r.warmup_frames, r.key_bits, r.classes_agree, r.frames
    );
    out.push_str("| | veil | conventional HE | conventional ÷ veil |\n|---|---|---|---|\n");
    for [a, b, c, d] in rows {
        out.push_str(&format!("| {a} | {b} | {c} | {d} |\n"));
    }
    if let Some(note) = &r.instructions_note {
        out.push_str(&format!("\ninstructions: {note}\n"));
    }
    out
}
