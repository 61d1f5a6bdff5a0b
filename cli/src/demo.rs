//! `veil demo`: the whole system in one process over real MQTT on
//! loopback — the embedded broker with config/acl and config/passwords,
//! both servers and an edge agent, each a separate task — replaying a test
//! set and printing every prediction.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::ValueEnum;
use veil_broker::{Broker, BrokerConfig};
use veil_edge_agent::{AgentOptions, EdgeAgent, Output, Pins};
use veil_link::MqttSettings;
use veil_model::{CompiledModel, PLAN_EXTENSION};
use veil_paillier::{KeySize, SecretKey};
use veil_protocol::Params;

/// Run the whole pipeline on this machine: broker, server A, server B and
/// an edge agent talking MQTT on loopback, replaying a test set.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Which test set to replay.
    #[arg(long, value_enum, default_value_t = Dataset::Pima)]
    pub dataset: Dataset,
    /// Model name in models/ (default: pima-mlp, or mnist-mlp for MNIST).
    #[arg(long)]
    pub model: Option<String>,
    /// Replay only the first N rows.
    #[arg(long)]
    pub frames: Option<usize>,
    /// Keys (generated on first use) and state; runs start from fresh
    /// state but keep the keys.
    #[arg(long, default_value = "var/demo")]
    pub state_dir: PathBuf,
    /// Capture every frame at once instead of one after the other
    /// (latencies then include waiting behind earlier frames).
    #[arg(long)]
    pub burst: bool,
    /// Print the summary only.
    #[arg(long, short)]
    pub quiet: bool,
    /// Serve instead of replaying: run the broker and both servers until
    /// SIGINT/SIGTERM, and write an edge-agent configuration for devA and
    /// devB (with the pins) into the state directory, for agents running
    /// elsewhere (the ARM smoke test runs one under emulation).
    #[arg(long)]
    pub serve: bool,
    /// Broker address.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: std::net::SocketAddr,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Dataset {
    Pima,
    Mnist,
}

impl std::fmt::Display for Dataset {
    // As the data sets are spelled in prose, not as the enum's Debug.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Dataset::Pima => "Pima",
            Dataset::Mnist => "MNIST",
        })
    }
}

/// Rows of the chosen test set: features and label.
pub fn rows(dataset: Dataset) -> Result<Vec<(Vec<f32>, u8)>> {
    Ok(match dataset {
        Dataset::Pima => {
            let path = crate::share::dir("data")?.join("pima-test.csv");
            let data = veil_model::data::load_pima(&path).context("loading the Pima test set")?;
            data.features
                .into_iter()
                .map(|f| f.to_vec())
                .zip(data.labels)
                .collect()
        }
        Dataset::Mnist => {
            let d = crate::share::dir("data")?;
            let data = veil_model::data::load_mnist(
                &d.join("mnist-10k-images-idx3-ubyte.gz"),
                &d.join("mnist-10k-labels-idx1-ubyte.gz"),
            )
            .context("loading MNIST")?;
            data.images.into_iter().zip(data.labels).collect()
        }
    })
}

/// A shipped model from its precompiled `models/<name>.plan`, so that the
/// demo needs no ONNX import (`veil import` regenerates the files; a model
/// test checks that they match the ONNX files).
pub fn load_model(name: &str) -> Result<Arc<CompiledModel>> {
    let path = crate::share::dir("models")?.join(format!("{name}.{PLAN_EXTENSION}"));
    let model =
        CompiledModel::load(&path).with_context(|| format!("loading {}", path.display()))?;
    Ok(Arc::new(model))
}

/// The demo broker: the repository's ACL and password files, loopback,
/// a free port.
pub fn broker_config(password_file: PathBuf) -> Result<BrokerConfig> {
    Ok(BrokerConfig {
        listen: ([127, 0, 0, 1], 0).into(),
        password_file: Some(password_file),
        acl_file: Some(crate::share::dir("config")?.join("acl")),
        ..BrokerConfig::default()
    })
}

/// MQTT settings with the demo password of `user` (config/passwords).
pub fn demo_mqtt(addr: std::net::SocketAddr, user: &str, password: &str) -> MqttSettings {
    MqttSettings {
        url: format!("mqtt://{addr}"),
        username: Some(user.into()),
        password: Some(password.into()),
        backoff_min_ms: 100,
        backoff_max_ms: 2000,
        ..MqttSettings::default()
    }
}

/// Both servers, started as tasks of this process.
pub struct Servers {
    pub a: veil_server_a::ServerA,
    pub b: veil_server_b::ServerB,
    pub pins: Pins,
}

/// Loads (or generates, the first time) both key pairs in `keys`.
pub fn keys(dir: &Path) -> Result<(Arc<SecretKey>, Arc<SecretKey>)> {
    let a = crate::keygen::load_or_create(dir, "server-a", KeySize::Bits2048)?;
    let b = crate::keygen::load_or_create(dir, "server-b", KeySize::Bits2048)?;
    Ok((Arc::new(a), Arc::new(b)))
}

pub async fn start_servers(
    state: &Path,
    addr: std::net::SocketAddr,
    model: &Arc<CompiledModel>,
    (key_a, key_b): (Arc<SecretKey>, Arc<SecretKey>),
    passwords: (&str, &str),
) -> Result<Servers> {
    let b = veil_server_b::ServerB::start(
        veil_server_b::Options::new(
            demo_mqtt(addr, "server-b", passwords.1),
            state.join("server-b"),
        ),
        Arc::clone(&key_b),
        Arc::new(model.topology().clone()),
        Params::default(),
    )
    .await
    .context("starting server B")?;
    let a = veil_server_a::ServerA::start(
        veil_server_a::Options::new(
            demo_mqtt(addr, "server-a", passwords.0),
            state.join("server-a"),
        ),
        veil_server_a::Setup {
            key: Arc::clone(&key_a),
            b_key: key_b.public_key().clone(),
            model: Arc::clone(model),
            params: Params::default(),
        },
    )
    .await
    .context("starting server A")?;
    let pins = Pins {
        server_a: key_a.public_key().fingerprint_hex(),
        server_b: key_b.public_key().fingerprint_hex(),
        topology: model.topology().fingerprint_hex(),
    };
    Ok(Servers { a, b, pins })
}

/// Percentile of sorted values (nearest rank).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted
        .get(rank.saturating_sub(1).min(sorted.len() - 1))
        .copied()
        .unwrap_or(0.0)
}

pub fn run(args: Args) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(demo(args))
}

async fn demo(args: Args) -> Result<()> {
    let model_name = args.model.clone().unwrap_or_else(|| {
        match args.dataset {
            Dataset::Pima => "pima-mlp",
            Dataset::Mnist => "mnist-mlp",
        }
        .to_string()
    });
    let mut rows = rows(args.dataset)?;
    if let Some(n) = args.frames {
        rows.truncate(n);
    }
    if rows.is_empty() {
        bail!("no rows to replay");
    }
    let started = Instant::now();
    let model = load_model(&model_name)?;
    if model.topology().input_len != rows.first().map_or(0, |r| r.0.len()) {
        bail!(
            "model {model_name} takes {} features, the {} rows have {}",
            model.topology().input_len,
            args.dataset,
            rows.first().map_or(0, |r| r.0.len())
        );
    }
    let keys = keys(&args.state_dir.join("keys"))?;
    // Each run starts from fresh state; only the keys are kept.
    let state = args.state_dir.join("run");
    if state.exists() {
        std::fs::remove_dir_all(&state).with_context(|| format!("clearing {}", state.display()))?;
    }
    let broker = Broker::start(BrokerConfig {
        listen: args.listen,
        ..broker_config(crate::share::dir("config")?.join("passwords"))?
    })
    .await
    .context("starting the embedded broker")?;
    let addr = broker.local_addr();
    let servers = start_servers(
        &state,
        addr,
        &model,
        keys,
        ("demo-server-a", "demo-server-b"),
    )
    .await?;
    if args.serve {
        for device in ["devA", "devB"] {
            let path = args.state_dir.join(format!("edge-agent-{device}.toml"));
            let text = format!(
                "# Written by `veil demo --serve`.\ndevice = \"{device}\"\nmodel = \"{model_name}\"\n\
                 state_dir = \"agent-{device}\"\n\n[pins]\nserver_a = \"{}\"\nserver_b = \"{}\"\n\
                 topology = \"{}\"\n\n[mqtt]\nurl = \"mqtt://{addr}\"\npassword = \"demo-{device}\"\n",
                servers.pins.server_a, servers.pins.server_b, servers.pins.topology
            );
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        }
        println!(
            "serving on {addr}; agent configurations in {}",
            args.state_dir.display()
        );
        veil_shell::wait_for_stop().await;
        servers.a.shutdown().await;
        servers.b.shutdown().await;
        broker.shutdown().await;
        return Ok(());
    }
    let mut options = AgentOptions::new(
        "devA",
        demo_mqtt(addr, "devA", "demo-devA"),
        state.join("devA"),
    );
    options.model = model_name.clone();
    options.pins = servers.pins.clone();
    let mut agent = EdgeAgent::start(options)
        .await
        .context("starting the edge agent")?;
    println!(
        "veil demo: {} frames of {} through {model_name}; broker on {addr}; server A {}…, server B {}…",
        rows.len(),
        args.dataset,
        &servers.pins.server_a[..16],
        &servers.pins.server_b[..16]
    );
    let mut latencies = Vec::with_capacity(rows.len());
    let mut correct = 0usize;
    let mut labels = std::collections::HashMap::new();
    let run_started = Instant::now();
    let mut received = 0usize;
    let mut next = 0usize;
    while received < rows.len() {
        // One frame at a time, unless asked for a burst.
        while next < rows.len() && (args.burst || next == received) {
            let (x, label) = &rows[next];
            let t = agent
                .capture(x, Some(label.to_string()))
                .with_context(|| format!("capturing row {next}"))?;
            labels.insert(t, *label);
            next += 1;
        }
        let output = tokio::time::timeout(Duration::from_secs(300), agent.recv())
            .await
            .context("no result within 5 minutes")?
            .context("the agent stopped")?;
        received += 1;
        match output {
            Output::Result(r) => {
                let truth = labels.get(&r.t).copied().unwrap_or(u8::MAX);
                let ok = r.class == usize::from(truth);
                correct += usize::from(ok);
                latencies.push(r.latency_ms);
                if !args.quiet {
                    println!(
                        "frame {:>5}  predicted {}  true {}  {}  {:>7.1} ms",
                        r.t,
                        r.class,
                        truth,
                        if ok { "✓" } else { "✗" },
                        r.latency_ms
                    );
                }
            }
            other => println!("frame {:>5}  {}", other.t(), other.to_json()),
        }
    }
    let wall = run_started.elapsed();
    let stats = agent.stats();
    latencies.sort_by(f64::total_cmp);
    let n = rows.len() as f64;
    println!();
    println!(
        "accuracy {correct}/{} = {:.1}%",
        rows.len(),
        100.0 * correct as f64 / n
    );
    println!(
        "latency p50 {:.1} ms, p95 {:.1} ms ({} frames in {:.1} s, {:.1} frames/s)",
        percentile(&latencies, 50.0),
        percentile(&latencies, 95.0),
        rows.len(),
        wall.as_secs_f64(),
        n / wall.as_secs_f64().max(1e-9)
    );
    println!(
        "device payload bytes per frame (MQTT headers not counted): {:.0} sent (frame {:.0}, which carries the previous result's acknowledgement, + acks and syncs on their own {:.0}), {:.0} received; once per session: {} bytes",
        (stats.frame_bytes + stats.ack_bytes) as f64 / n,
        stats.frame_bytes as f64 / n,
        stats.ack_bytes as f64 / n,
        stats.result_bytes as f64 / n,
        stats.session_bytes
    );
    let a = servers.a.stats();
    let b = servers.b.stats();
    println!(
        "servers: A {} frames ({} precomputed mask sets, {} retries), B {} results ({} still queued, {} rejected); total {:.1} s",
        a.frames,
        a.precomputed,
        a.retries,
        b.results,
        b.queued,
        a.rejected + b.rejected,
        started.elapsed().as_secs_f64()
    );
    agent.shutdown().await;
    servers.a.shutdown().await;
    servers.b.shutdown().await;
    broker.shutdown().await;
    Ok(())
}
