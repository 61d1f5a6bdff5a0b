//! The private protocol's cost per shipped model, in one process, Paillier
//! backend (N = 2048), precomputation warm: server A and B CPU time per
//! inference split offline/online, bytes between A and B, the device's
//! bytes per frame, and online latency.
//!
//! `cargo bench -p veil-bench --bench protocol [-- MODEL...]`; writes
//! `target/veil-bench/protocol.json` as well as the table.

use std::time::Duration;
use veil_bench::{
    fresh_keys, load_model, paillier_engine, paillier_engine_with, percentile, pooled_noise,
};
use veil_protocol::{EngineStats, Params, Peer};

struct Row {
    model: String,
    frames: usize,
    p50: Duration,
    p95: Duration,
    a_online: Duration,
    b_online: Duration,
    a_offline: Duration,
    b_offline: Duration,
    ab_bytes: f64,
    device_sent: f64,
    device_received: f64,
}

fn per_frame(d: Duration, n: usize) -> Duration {
    d / n.max(1) as u32
}

/// The privacy knobs, to price each one: `--no-hide-signs`,
/// `--beta-log-range=N`, `--a-noise=fixed-base`.
struct Knobs {
    params: Params,
    fixed_base_a: bool,
}

impl Knobs {
    fn from_args() -> anyhow::Result<Knobs> {
        let mut knobs = Knobs {
            params: Params::default(),
            fixed_base_a: false,
        };
        for arg in std::env::args().skip(1) {
            if arg == "--no-hide-signs" {
                knobs.params.hide_signs = false;
            } else if let Some(v) = arg.strip_prefix("--beta-log-range=") {
                knobs.params.beta_log_range = v.parse()?;
            } else if arg == "--a-noise=fixed-base" {
                knobs.fixed_base_a = true;
            }
        }
        Ok(knobs)
    }
}

fn run(name: &str, frames: usize, knobs: &Knobs) -> anyhow::Result<Row> {
    let model = load_model(name)?;
    let keys = fresh_keys()?;
    let mut engine = if knobs.fixed_base_a {
        let public = keys.1.public_key();
        paillier_engine_with(&model, &knobs.params, &keys, pooled_noise(public, 16384))?
    } else {
        paillier_engine(&model, &knobs.params, &keys)?
    };
    let data: Vec<Vec<f32>> = if name.starts_with("mnist") {
        veil_model::data::load_workspace_mnist()?
            .images
            .into_iter()
            .take(frames + 1)
            .collect()
    } else {
        let pima = veil_model::data::load_pima(
            &veil_model::data::workspace_data_dir().join("pima-test.csv"),
        )?;
        pima.features
            .iter()
            .take(frames + 1)
            .map(|f| f.to_vec())
            .collect()
    };
    let inputs: Vec<Vec<i64>> = data
        .iter()
        .map(|x| model.encode_input(x))
        .collect::<Result<_, _>>()?;
    // The first frame opens the session and warms everything up.
    engine.infer(&inputs[0])?;
    engine.stats = EngineStats::default();
    let mut latencies = Vec::new();
    let mut device_sent = 0usize;
    let mut device_received = 0usize;
    for x in &inputs[1..] {
        let run = engine.infer(x)?;
        latencies.push(run.latency);
        device_sent += run.frame_bytes;
        device_received += run.result_bytes;
    }
    let n = latencies.len();
    let s = &engine.stats;
    let ab = s.link(Peer::ServerA, Peer::ServerB) + s.link(Peer::ServerB, Peer::ServerA);
    Ok(Row {
        model: name.to_string(),
        frames: n,
        p50: percentile(&latencies, 50.0),
        p95: percentile(&latencies, 95.0),
        a_online: per_frame(s.online_cpu.a, n),
        b_online: per_frame(s.online_cpu.b, n),
        a_offline: per_frame(s.offline_cpu.a, n),
        b_offline: per_frame(s.offline_cpu.b, n),
        ab_bytes: ab as f64 / n as f64,
        device_sent: device_sent as f64 / n as f64,
        device_received: device_received as f64 / n as f64,
    })
}

fn main() -> anyhow::Result<()> {
    let knobs = Knobs::from_args()?;
    let selected: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let plan = [
        ("pima-mlp", 60),
        ("pima-tanh", 60),
        ("mnist-mlp", 12),
        ("mnist-cnn", 4),
    ];
    let mut rows = Vec::new();
    for (name, frames) in plan {
        if !selected.is_empty() && !selected.iter().any(|s| s == name) {
            continue;
        }
        eprintln!("{name}: {frames} frames...");
        rows.push(run(name, frames, &knobs)?);
    }
    println!(
        "| model | frames | online latency p50 / p95 | A CPU online / offline | B CPU online / offline | A↔B bytes per frame | device bytes sent / received per frame |"
    );
    println!("|---|---|---|---|---|---|---|");
    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1e3);
    for r in &rows {
        println!(
            "| {} | {} | {} / {} | {} / {} | {} / {} | {:.0} | {:.0} / {:.0} |",
            r.model,
            r.frames,
            ms(r.p50),
            ms(r.p95),
            ms(r.a_online),
            ms(r.a_offline),
            ms(r.b_online),
            ms(r.b_offline),
            r.ab_bytes,
            r.device_sent,
            r.device_received
        );
    }
    let json: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            serde_json::json!({
                "model": r.model, "frames": r.frames,
                "online_latency_p50_ms": r.p50.as_secs_f64() * 1e3, "online_latency_p95_ms": r.p95.as_secs_f64() * 1e3,
                "a_cpu_online_ms": r.a_online.as_secs_f64() * 1e3, "a_cpu_offline_ms": r.a_offline.as_secs_f64() * 1e3,
                "b_cpu_online_ms": r.b_online.as_secs_f64() * 1e3, "b_cpu_offline_ms": r.b_offline.as_secs_f64() * 1e3,
                "ab_bytes_per_frame": r.ab_bytes, "device_bytes_sent": r.device_sent, "device_bytes_received": r.device_received,
            })
        })
        .collect();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/veil-bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("protocol.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    Ok(())
}
