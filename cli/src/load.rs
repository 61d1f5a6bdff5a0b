//! `veil load`: K simulated devices × M frames through the embedded broker
//! and both servers, reporting throughput, latency and loss.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use veil_broker::{Broker, PasswordFile};
use veil_edge_agent::{AgentOptions, EdgeAgent, Output};

use crate::demo::{
    Dataset, broker_config, demo_mqtt, keys, load_model, percentile, rows, start_servers,
};

/// Load test: K devices, each sending M frames, all through the embedded
/// broker on loopback. Fails when any frame is lost. With `--attack`, one
/// more authenticated device floods the deployment meanwhile (veil-attack:
/// the hostile-client test's attacker), and the run also fails when any
/// of its takeovers or forbidden subscriptions succeeds.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Simulated devices (K).
    #[arg(long, short = 'k', default_value_t = 4)]
    pub devices: usize,
    /// Frames per device (M).
    #[arg(long, short = 'm', default_value_t = 25)]
    pub frames: usize,
    /// Frames each device keeps outstanding (1: the next frame is captured
    /// when the previous result arrives).
    #[arg(long, default_value_t = 1)]
    pub window: usize,
    /// Model name in models/ (Pima models replay the Pima test set, MNIST
    /// models the MNIST digits).
    #[arg(long, default_value = "pima-mlp")]
    pub model: String,
    /// Keys (generated on first use) and state.
    #[arg(long, default_value = "var/load")]
    pub state_dir: std::path::PathBuf,
    /// Give up waiting after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout_secs: u64,
    /// Run a hostile device alongside: floods, maximum-size payloads,
    /// session spam, counter jumps, client-id takeovers, `$share` joins.
    #[arg(long)]
    pub attack: bool,
}

/// A `password_file` line with a random salt.
fn password_line(user: &str, password: &str) -> String {
    let mut salt = [0u8; 12];
    rand::fill(&mut salt);
    PasswordFile::line(user, password, salt)
}

fn random_password() -> String {
    let mut bytes = [0u8; 18];
    rand::fill(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

pub fn run(args: Args) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(load(args))
}

struct DeviceRun {
    latencies: Vec<f64>,
    delivered: HashSet<u64>,
    captured: usize,
    problems: Vec<String>,
}

async fn device_run(
    mut agent: EdgeAgent,
    rows: Arc<Vec<(Vec<f32>, u8)>>,
    offset: usize,
    frames: usize,
    window: usize,
    deadline: tokio::time::Instant,
) -> Result<DeviceRun> {
    let mut run = DeviceRun {
        latencies: Vec::with_capacity(frames),
        delivered: HashSet::new(),
        captured: 0,
        problems: Vec::new(),
    };
    let mut outstanding = 0usize;
    let mut settled = 0usize;
    while settled < frames {
        while run.captured < frames && outstanding < window.max(1) {
            let (x, _) = &rows[(offset + run.captured) % rows.len()];
            agent.capture(x, None).context("capture")?;
            run.captured += 1;
            outstanding += 1;
        }
        let output = match tokio::time::timeout_at(deadline, agent.recv()).await {
            Ok(Some(o)) => o,
            Ok(None) => bail!("{} stopped", agent.device()),
            Err(_) => break,
        };
        outstanding = outstanding.saturating_sub(1);
        settled += 1;
        match output {
            Output::Result(r) => {
                if !run.delivered.insert(r.t) {
                    run.problems.push(format!("frame {} delivered twice", r.t));
                }
                run.latencies.push(r.latency_ms);
            }
            other => run.problems.push(other.to_json()),
        }
    }
    agent.shutdown().await;
    Ok(run)
}

async fn load(args: Args) -> Result<()> {
    if args.devices == 0 || args.frames == 0 {
        bail!("need at least one device and one frame");
    }
    let model = load_model(&args.model)?;
    let dataset = if model.topology().input_len == 7 {
        Dataset::Pima
    } else {
        Dataset::Mnist
    };
    let rows = Arc::new(rows(dataset)?);
    let keys = keys(&args.state_dir.join("keys"))?;
    let state = args.state_dir.join("run");
    if state.exists() {
        std::fs::remove_dir_all(&state).with_context(|| format!("clearing {}", state.display()))?;
    }
    std::fs::create_dir_all(&state).with_context(|| format!("creating {}", state.display()))?;
    // Every simulated device needs its own broker account: the ACL's
    // patterns give each username its own topics.
    let devices: Vec<(String, String)> = (0..args.devices)
        .map(|i| (format!("load-{i}"), random_password()))
        .collect();
    let (pw_a, pw_b) = (random_password(), random_password());
    let pw_attacker = random_password();
    let mut lines = vec![
        password_line("server-a", &pw_a),
        password_line("server-b", &pw_b),
        password_line(ATTACKER, &pw_attacker),
    ];
    lines.extend(devices.iter().map(|(u, p)| password_line(u, p)));
    let password_file = state.join("passwords");
    write_private(&password_file, &(lines.join("\n") + "\n"))?;

    let broker_config = broker_config(password_file)?;
    let max_payload = broker_config.max_payload_size;
    let broker = Broker::start(broker_config)
        .await
        .context("starting the embedded broker")?;
    let addr = broker.local_addr();
    let attack_pins = veil_attack::Pins {
        model: args.model.clone(),
        topology: model.topology().fingerprint(),
        params: veil_protocol::Params::default().fingerprint(),
        server_a: keys.0.public_key().fingerprint(),
        server_b: keys.1.public_key().fingerprint(),
    };
    let servers = start_servers(&state, addr, &model, keys, (&pw_a, &pw_b)).await?;
    let mut agents = Vec::with_capacity(args.devices);
    for (user, password) in &devices {
        let mut options =
            AgentOptions::new(user, demo_mqtt(addr, user, password), state.join(user));
        options.model = args.model.clone();
        options.pins = servers.pins.clone();
        agents.push(
            EdgeAgent::start(options)
                .await
                .with_context(|| format!("starting {user}"))?,
        );
    }
    eprintln!(
        "veil load: {} devices × {} frames of {} (window {}) through the broker on {addr}",
        args.devices, args.frames, args.model, args.window
    );
    let attack = args.attack.then(|| {
        eprintln!("veil load: attacker {ATTACKER:?} flooding the same broker");
        veil_attack::Attack::start(veil_attack::Target {
            host: addr.ip().to_string(),
            port: addr.port(),
            username: ATTACKER.into(),
            password: pw_attacker.clone(),
            victims: ["server-a", "server-b"]
                .into_iter()
                .map(String::from)
                .chain(devices.iter().take(2).map(|(u, _)| u.clone()))
                .collect(),
            forbidden_filters: vec![
                "$share/veil-a/veil/v1/dev/+/frame".into(),
                "veil/v1/dev/+/frame".into(),
                "veil/v1/ba/#".into(),
            ],
            max_payload,
            pins: Some(attack_pins),
        })
    });
    let started = Instant::now();
    let cpu_before = process_cpu_seconds();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.timeout_secs);
    let mut tasks = Vec::with_capacity(agents.len());
    for (i, agent) in agents.into_iter().enumerate() {
        tasks.push(tokio::spawn(device_run(
            agent,
            Arc::clone(&rows),
            i * 37,
            args.frames,
            args.window,
            deadline,
        )));
    }
    let mut latencies = Vec::new();
    let mut delivered = 0usize;
    let mut problems = Vec::new();
    for task in tasks {
        let run = task.await.context("device task")??;
        delivered += run.delivered.len();
        latencies.extend(run.latencies);
        problems.extend(run.problems);
    }
    let wall = started.elapsed().as_secs_f64();
    let cpu = process_cpu_seconds()
        .zip(cpu_before)
        .map(|(after, before)| after - before);
    let attack_report = match attack {
        Some(attack) => Some(attack.stop().await),
        None => None,
    };
    let total = args.devices * args.frames;
    let lost = total.saturating_sub(delivered);
    latencies.sort_by(f64::total_cmp);
    let a = servers.a.stats();
    let b = servers.b.stats();
    println!(
        "{} devices × {} frames ({}): {delivered}/{total} results in {wall:.1} s",
        args.devices, args.frames, args.model
    );
    println!(
        "throughput {:.1} frames/s",
        delivered as f64 / wall.max(1e-9)
    );
    println!(
        "latency p50 {:.1} ms, p95 {:.1} ms, max {:.1} ms",
        percentile(&latencies, 50.0),
        percentile(&latencies, 95.0),
        latencies.last().copied().unwrap_or(0.0)
    );
    println!(
        "loss {lost} ({:.2}%); server A retries {}, abandoned {}; rejected A {} B {}",
        100.0 * lost as f64 / total as f64,
        a.retries,
        a.abandoned,
        a.rejected,
        b.rejected
    );
    if let Some(cpu) = cpu {
        println!(
            "CPU {cpu:.2} s, every role ({:.1} ms per result, {:.2} cores busy)",
            1000.0 * cpu / (delivered.max(1) as f64),
            cpu / wall.max(1e-9)
        );
    }
    // Masks are prepared `mask_lookahead` counters ahead of each session's
    // frames: what a short run prepares past its last frame is CPU its
    // results did not need, and more of it gets done the more idle time
    // the run has.
    println!(
        "server A prepared {} frames' offline work for {delivered} results",
        a.precomputed
    );
    if let Some(report) = &attack_report {
        println!("attacker: {report:?}");
        println!("broker counters: {}", broker.counters());
        if report.takeovers_accepted > 0 || report.subscriptions_granted > 0 {
            problems.push(format!(
                "the attacker took over {} client ids and got {} forbidden subscriptions",
                report.takeovers_accepted, report.subscriptions_granted
            ));
        }
    }
    println!(
        "peak RSS of this process (every role): {} MiB",
        peak_rss_mib()
    );
    servers.a.shutdown().await;
    servers.b.shutdown().await;
    broker.shutdown().await;
    for p in problems.iter().take(10) {
        eprintln!("problem: {p}");
    }
    if lost > 0 || !problems.is_empty() {
        bail!("{lost} frames lost, {} problems", problems.len());
    }
    Ok(())
}

/// The username of `--attack`'s device; no simulated device has it.
const ATTACKER: &str = "attacker";

/// User and system CPU time of this process so far (every thread), from
/// /proc/self/stat; `None` where there is none.
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name, field 2, may hold spaces: count from its ')'.
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
    // utime and stime are fields 14 and 15, in USER_HZ ticks: 100 per
    // second in Linux's user-space ABI.
    Some((ticks(11)? + ticks(12)?) as f64 / 100.0)
}

/// `VmHWM` from /proc/self/status (0 where there is none).
fn peak_rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024)
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}
