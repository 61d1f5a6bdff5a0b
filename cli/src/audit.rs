//! `veil audit`: runs a model over a CSV file through the real protocol in
//! one process and writes, as JSON lines, exactly what one party decrypts
//! or receives, so that anyone can run their own attack on it. The format
//! is documented in docs/protocol.md ("Auditing a party's view").

use crate::infer::{Backend, RunArgs};
use anyhow::{Context, Result};
use clap::ValueEnum;
use serde_json::{Value, json};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use veil_model::CompiledModel;
use veil_paillier::{FixedBaseNoise, SecretKey};
use veil_protocol::audit::{frame_as_a, open_output, open_round};
use veil_protocol::{
    Body, Device, DeviceConfig, Engine, EntryRole, Envelope, I256, MaskKeys, Noise, PaillierPublic,
    PaillierSecret, Params, Peer, Plain, PublicOps, SecretOps, Seed, ServerA, ServerAConfig,
    ServerB, ServerBConfig, frame_rounding, peer_key,
};

/// Write what one party of the protocol sees, frame by frame.
///
/// Every row of the input runs through the full protocol (device, A and B
/// as separate state machines, every message encoded as on the network).
/// For `--party b` each activation round is written with every group and
/// entry B decrypts, in the order B receives them; `--truth` adds, from
/// A's records, which groups are real, dummy or padding and the true
/// pre-activations.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    run: RunArgs,
    /// Whose view to write.
    #[arg(long, value_enum)]
    party: Party,
    /// Where to write the view (default: standard output).
    #[arg(long, value_name = "VIEW.jsonl")]
    output: Option<PathBuf>,
    /// Also write the ground truth of every round here.
    #[arg(long, value_name = "TRUTH.jsonl")]
    truth: Option<PathBuf>,
    /// Rows A measures its dummy distribution on (as `veil import
    /// --calibration`), replacing the plan's own calibration; without
    /// either, A falls back to a distribution B can recognise.
    #[arg(long, value_name = "FILE")]
    calibration: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Party {
    A,
    B,
    Broker,
}

fn decimal(values: &[I256]) -> Vec<String> {
    values.iter().map(ToString::to_string).collect()
}

fn grouped(values: &[I256], k: usize) -> Value {
    Value::from(
        values
            .chunks(k.max(1))
            .map(|g| Value::from(decimal(g)))
            .collect::<Vec<_>>(),
    )
}

fn peer_name(p: Peer) -> &'static str {
    match p {
        Peer::Device => "device",
        Peer::ServerA => "a",
        Peer::ServerB => "b",
    }
}

pub fn run(args: Args) -> Result<()> {
    let mut model = crate::infer::load_model_file(&args.run.model)?;
    let rows = crate::infer::read_rows(&args.run.input, &model)?;
    if let Some(path) = &args.calibration {
        model
            .calibrate_from(path, veil_model::CALIBRATION_ROWS)
            .with_context(|| format!("calibrating on {}", path.display()))?;
    }
    if !model.is_calibrated() {
        eprintln!(
            "warning: the model carries no calibration and no --calibration was given: \
             A's dummies come from a fallback distribution that B can tell apart"
        );
    }
    let (key_a, key_b) = crate::infer::keys(args.run.keys.as_deref())?;
    let params = Params {
        force_permute: args.run.force_permute,
        ..Params::default()
    };
    let topology = Arc::new(model.topology().clone());
    let device = Device::new(DeviceConfig {
        device: "veil-audit".into(),
        params: params.clone(),
        topology: Arc::clone(&topology),
        server_a: key_a.public_key().clone(),
        server_b: key_b.public_key().clone(),
    })?;
    let rounding_key = Seed::random(&mut rand::rng());
    let config_a = ServerAConfig {
        params: params.clone(),
        topology: Arc::clone(&topology),
        plan: Arc::new(model.plan().clone()),
        key: Arc::clone(&key_a),
        rounding_key: rounding_key.clone(),
    };
    let config_b = ServerBConfig {
        params,
        topology,
        key: Arc::clone(&key_b),
    };
    let mut seed = [0u8; 32];
    rand::Rng::fill_bytes(&mut rand::rng(), &mut seed);
    let audit = Audit {
        model: &model,
        rows: &rows,
        party: args.party,
        key_a: &key_a,
        rounding_key,
    };
    match args.run.backend {
        Backend::Plain => {
            let a = ServerA::new(config_a, Plain::default())?;
            let b = ServerB::new(config_b, Plain::default())?;
            audit.drive(Engine::new(device, a, b, seed), &args)
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
                PaillierSecret::new(Arc::clone(&key_b), b_noise, rand::random()),
            )?;
            audit.drive(Engine::new(device, a, b, seed), &args)
        }
    }
}

struct Audit<'a> {
    model: &'a CompiledModel,
    rows: &'a [Vec<i64>],
    party: Party,
    key_a: &'a SecretKey,
    rounding_key: Seed,
}

fn sink(path: Option<&Path>) -> Result<BufWriter<Box<dyn Write>>> {
    let out: Box<dyn Write> = match path {
        Some(path) => Box::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        ),
        None => Box::new(std::io::stdout().lock()),
    };
    Ok(BufWriter::new(out))
}

impl Audit<'_> {
    fn drive<P: PublicOps, S: SecretOps>(
        &self,
        mut engine: Engine<P, S>,
        args: &Args,
    ) -> Result<()> {
        let mut view = sink(args.output.as_deref())?;
        let mut truth = args.truth.as_deref().map(|p| sink(Some(p))).transpose()?;
        engine.record_transcript(true);
        engine.a_mut().record_truth(truth.is_some());
        let topology = self.model.topology();
        let params = engine.a().config().params.clone();
        let modes = params.modes(topology);
        let mut keys_a: Option<MaskKeys> = None;
        for (frame, x_hat) in self.rows.iter().enumerate() {
            let run = engine
                .infer(x_hat)
                .with_context(|| format!("row {}", frame + 1))?;
            for delivery in std::mem::take(&mut engine.transcript) {
                let envelope = delivery.envelope()?;
                let line = match self.party {
                    Party::Broker => Some(json!({
                        "frame": frame,
                        "from": peer_name(delivery.from),
                        "to": peer_name(delivery.to),
                        "link": [peer_key(delivery.from), peer_key(delivery.to)],
                        "kind": envelope.body.kind(),
                        "device": envelope.device,
                        "sid": envelope.sid.to_hex(),
                        "t": envelope.t,
                        "bytes": delivery.bytes.len(),
                    })),
                    Party::A if delivery.to == Peer::ServerA => {
                        self.a_line(frame, &envelope, &mut keys_a, topology, &params)?
                    }
                    Party::B if delivery.to == Peer::ServerB => {
                        b_line(frame, &envelope, engine.b().backend(), topology, &params)?
                    }
                    _ => None,
                };
                if let Some(line) = line {
                    writeln!(view, "{line}").context("writing the view")?;
                }
            }
            if let Some(out) = truth.as_mut() {
                let rounding = frame_rounding(&self.rounding_key, run.sid, run.t);
                let trace = self.model.run_int_trace(x_hat, &modes, &rounding)?;
                for round in engine.a_mut().take_truth() {
                    let z = round
                        .stage
                        .checked_sub(1)
                        .and_then(|p| trace.get(p))
                        .context("an activation stage follows a linear one")?;
                    let groups: Vec<Value> = round
                        .groups
                        .iter()
                        .map(|g| {
                            Value::from(
                                g.iter()
                                    .map(|role| match role {
                                        EntryRole::Real(i) => json!({
                                            "role": "real",
                                            "index": i,
                                            "z": z.get(*i as usize).map(ToString::to_string),
                                        }),
                                        EntryRole::Dummy => json!({"role": "dummy"}),
                                        EntryRole::Padding => json!({"role": "padding"}),
                                        EntryRole::Zero => json!({"role": "zero", "z": "0"}),
                                    })
                                    .collect::<Vec<_>>(),
                            )
                        })
                        .collect();
                    let line = json!({
                        "frame": frame,
                        "t": round.t,
                        "stage": round.stage,
                        "mode": format!("{:?}", round.mode).to_lowercase(),
                        "groups": groups,
                    });
                    writeln!(out, "{line}").context("writing the truth")?;
                }
            }
        }
        view.flush().context("writing the view")?;
        if let Some(mut out) = truth {
            out.flush().context("writing the truth")?;
        }
        Ok(())
    }

    fn a_line(
        &self,
        frame: usize,
        envelope: &Envelope,
        keys: &mut Option<MaskKeys>,
        topology: &veil_model::Topology,
        params: &Params,
    ) -> Result<Option<Value>> {
        let t = envelope.t;
        Ok(Some(match &envelope.body {
            Body::SessionInit(init) => {
                // A decrypts kA; the audit derives A's mask keys from it
                // to show what A then computes, not the seed itself.
                let c = self.key_a.public_key().ciphertext_from_bytes(&init.seed)?;
                let residue = self.key_a.decrypt(&c)?.residue().to_be_bytes();
                let start = residue.len().saturating_sub(32);
                let bytes: [u8; 32] = residue
                    .get(start..)
                    .and_then(|b| b.try_into().ok())
                    .context("seed width")?;
                *keys = Some(MaskKeys::new(&Seed::from_bytes(bytes)));
                json!({"frame": frame, "kind": "session-init", "t": t, "decrypted": "kA (not shown)"})
            }
            Body::Frame(body) => {
                let keys = keys.as_ref().context("a frame before its session")?;
                let u = frame_as_a(keys, topology, params, t, body)?;
                json!({"frame": frame, "kind": "frame", "t": t, "u": decimal(&u)})
            }
            Body::MaskSupply { masks, replies } => json!({
                "frame": frame, "kind": "mask-supply", "t": t,
                "ciphertexts": masks.len(), "reply_masks": replies.len()
            }),
            Body::RoundReply { stage, items } => {
                // B's answers, each masked by B's μ: what A reads in clear.
                let masked: Vec<String> = items
                    .iter()
                    .map(|b| match <[u8; 32]>::try_from(b.as_slice()) {
                        Ok(bytes) => I256::from_le_bytes(bytes).to_string(),
                        Err(_) => format!("{} bytes", b.len()),
                    })
                    .collect();
                json!({"frame": frame, "kind": "round-reply", "t": t, "stage": stage, "masked": masked})
            }
            other => json!({"frame": frame, "kind": other.kind(), "t": t}),
        }))
    }
}

fn b_line<S: SecretOps>(
    frame: usize,
    envelope: &Envelope,
    backend: &S,
    topology: &veil_model::Topology,
    params: &Params,
) -> Result<Option<Value>> {
    let t = envelope.t;
    Ok(Some(match &envelope.body {
        Body::Round(round) => {
            let view = open_round(backend, topology, params, round)?;
            let comparisons: Vec<Value> = view
                .comparisons
                .iter()
                .map(|(i, j)| json!([i, j]))
                .collect();
            json!({
                "frame": frame,
                "kind": "round",
                "t": t,
                "stage": view.stage,
                "mode": format!("{:?}", view.mode).to_lowercase(),
                "groups": view.groups,
                "group_size": view.group_size,
                "slots": view.slots,
                "comparisons": comparisons,
                "values": grouped(&view.values, view.values_per_group),
                "masked": grouped(&view.masked, view.slots),
                "masked_alpha": grouped(&view.masked_alpha, view.slots),
            })
        }
        Body::Output(output) => {
            let values = open_output(backend, topology, params, output)?;
            json!({"frame": frame, "kind": "output", "t": t, "values": decimal(&values)})
        }
        Body::MaskRequest { count } => {
            json!({"frame": frame, "kind": "mask-request", "t": t, "count": count})
        }
        Body::SessionInit(_) => {
            json!({"frame": frame, "kind": "session-init", "t": t, "decrypted": "kB (not shown)"})
        }
        other => json!({"frame": frame, "kind": other.kind(), "t": t}),
    }))
}
