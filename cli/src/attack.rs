//! `veil attack`: the hostile-client test's attacker (veil-attack), aimed
//! at a deployment that runs elsewhere: its own broker process, its own
//! servers. `veil load --attack` runs the same attacker against roles in
//! one process; this command lets an operator see what each role of a real
//! deployment pays for one hostile device (scripts/hostile-roles.sh reads
//! every role's peak RSS this way).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use veil_paillier::PublicKey;

/// Flood a running deployment as one authenticated device turned hostile:
/// QoS 0 and QoS 1 publishes at full rate, maximum-size payloads, garbage,
/// counter jumps, forged sessions, client-id takeovers and forbidden
/// subscriptions, for a fixed time. Exits non-zero when the broker let any
/// takeover or forbidden subscription through.
#[derive(clap::Args)]
pub struct Args {
    /// The broker (plain MQTT: the attack measures the gate and the
    /// servers, not TLS).
    #[arg(long, default_value = "mqtt://127.0.0.1:1883")]
    broker_url: String,
    /// The attacker's own broker account: a provisioned device.
    #[arg(long)]
    username: String,
    /// File holding that account's password (first line).
    #[arg(long, value_name = "FILE")]
    password_file: PathBuf,
    /// How long to attack.
    #[arg(long, default_value_t = 60)]
    secs: u64,
    /// Client ids to try to take over (default: server-a and server-b).
    #[arg(long = "victim", value_name = "CLIENT_ID")]
    victims: Vec<String>,
    /// Filters to try to subscribe to (default: A's shared group, every
    /// device's frames, everything B sends A).
    #[arg(long = "forbid", value_name = "FILTER")]
    forbidden: Vec<String>,
    /// The broker's largest accepted payload (`max_payload_size`).
    #[arg(long, default_value_t = 16 * 1024 * 1024)]
    max_payload: usize,
    /// Server A's public key: with --b-key and --model, forged sessions
    /// carry the real pins and each one costs both servers a decryption.
    #[arg(long, value_name = "FILE", requires_all = ["b_key", "model"])]
    a_key: Option<PathBuf>,
    /// Server B's public key.
    #[arg(long, value_name = "FILE", requires_all = ["a_key", "model"])]
    b_key: Option<PathBuf>,
    /// The model server A serves (.plan).
    #[arg(long, value_name = "M.plan", requires_all = ["a_key", "b_key"])]
    model: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(attack(args))
}

async fn attack(args: Args) -> Result<()> {
    let (host, port) = host_port(&args.broker_url)?;
    let password = std::fs::read_to_string(&args.password_file)
        .with_context(|| format!("reading {}", args.password_file.display()))?
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    if password.is_empty() {
        bail!("{} holds no password", args.password_file.display());
    }
    let pins = match (&args.a_key, &args.b_key, &args.model) {
        (Some(a), Some(b), Some(model)) => Some(pins(a, b, model)?),
        _ => None,
    };
    let victims = if args.victims.is_empty() {
        vec!["server-a".into(), "server-b".into()]
    } else {
        args.victims
    };
    let forbidden_filters = if args.forbidden.is_empty() {
        vec![
            "$share/veil-a/veil/v1/dev/+/frame".into(),
            "veil/v1/dev/+/frame".into(),
            "veil/v1/ba/#".into(),
        ]
    } else {
        args.forbidden
    };
    eprintln!(
        "veil attack: {:?} flooding {host}:{port} for {} s{}",
        args.username,
        args.secs,
        if pins.is_some() {
            " (forged sessions carry the real pins)"
        } else {
            ""
        }
    );
    let attack = veil_attack::Attack::start(veil_attack::Target {
        host,
        port,
        username: args.username,
        password,
        victims,
        forbidden_filters,
        max_payload: args.max_payload,
        pins,
    });
    tokio::select! {
        () = tokio::time::sleep(Duration::from_secs(args.secs)) => {}
        _ = tokio::signal::ctrl_c() => eprintln!("veil attack: interrupted"),
    }
    let report = attack.stop().await;
    println!("{report:#?}");
    if report.takeovers_accepted > 0 || report.subscriptions_granted > 0 {
        bail!(
            "the broker let through {} takeovers and {} forbidden subscriptions",
            report.takeovers_accepted,
            report.subscriptions_granted
        );
    }
    Ok(())
}

fn pins(a: &Path, b: &Path, model: &Path) -> Result<veil_attack::Pins> {
    let a = PublicKey::read_from_file(a).with_context(|| format!("reading {}", a.display()))?;
    let b = PublicKey::read_from_file(b).with_context(|| format!("reading {}", b.display()))?;
    let model = crate::infer::load_model_file(model)?;
    let topology = model.topology();
    Ok(veil_attack::Pins {
        model: topology.name.clone(),
        topology: topology.fingerprint(),
        params: veil_protocol::Params::default().fingerprint(),
        server_a: a.fingerprint(),
        server_b: b.fingerprint(),
    })
}

/// `mqtt://host:port` (port 1883 when left out) as host and port.
fn host_port(url: &str) -> Result<(String, u16)> {
    let Some(rest) = url.strip_prefix("mqtt://") else {
        bail!("{url:?}: the attack speaks plain MQTT; give an mqtt://host:port URL");
    };
    let rest = rest.trim_end_matches('/');
    match rest.rsplit_once(':') {
        Some((host, port)) => {
            let port = port
                .parse()
                .with_context(|| format!("{url:?}: port {port:?}"))?;
            Ok((host.to_owned(), port))
        }
        None => Ok((rest.to_owned(), 1883)),
    }
}

#[cfg(test)]
mod tests {
    use super::host_port;

    #[test]
    fn broker_urls() {
        assert_eq!(
            host_port("mqtt://127.0.0.1:1884").unwrap(),
            ("127.0.0.1".into(), 1884)
        );
        assert_eq!(
            host_port("mqtt://broker/").unwrap(),
            ("broker".into(), 1883)
        );
        assert!(host_port("mqtts://broker:8883").is_err());
        assert!(host_port("mqtt://broker:x").is_err());
    }
}
