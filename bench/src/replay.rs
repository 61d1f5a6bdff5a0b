//! Instruction counts of the device's per-frame work. The benchmark records
//! what the device received during its run; a child process (`veil bench
//! device-work`, hidden) repeats only the device's computations on those
//! messages for N frames under `valgrind --tool=callgrind`, and the count of
//! a zero-frame run (loading, start-up) is subtracted. Valgrind does not
//! run AVX-512 code, so the child uses the portable arithmetic kernel, which
//! is also what an ARM gateway runs.

use crate::conventional::{ConvDevice, ConvEnvelope, ConvStep, argmax};
use crate::veil_device::VeilDevice;
use anyhow::{Context, Result, anyhow, bail};
use rand::rngs::ChaCha20Rng;
use rand_core::SeedableRng;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use veil_model::Topology;
use veil_paillier::{KeySize, PublicKey, SecretKey};
use veil_protocol::node::{Bytes, DeviceNode, DeviceOptions, Input};
use veil_protocol::{Device, DeviceConfig, DeviceSession, Params, SessionId, topics};

/// One recorded frame: the device's input and what it received.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReplayFrame {
    /// The frame counter.
    pub t: u64,
    /// The frame's encoded input.
    pub x_hat: Vec<i64>,
    /// The messages the device received for it.
    pub received: Vec<Vec<u8>>,
}

/// Everything the child needs to redo one approach's device work.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Replay {
    /// veil's device.
    Veil {
        /// The device's name.
        device: String,
        /// The protocol parameters.
        params: Params,
        /// The topology, encoded.
        topology: Vec<u8>,
        /// Server A's public key, encoded.
        server_a: Vec<u8>,
        /// Server B's public key, encoded.
        server_b: Vec<u8>,
        /// The device's sessions.
        sessions: Vec<DeviceSession>,
        /// The session of the frames.
        current: Option<SessionId>,
        /// Frames before the measured ones (replayed in every run, so that
        /// the node's counter reaches the measured frames').
        warmup: usize,
        /// The frames, warm-up first.
        frames: Vec<ReplayFrame>,
    },
    /// The baseline's device.
    Conventional {
        /// The device's name.
        device: String,
        /// The topology, encoded.
        topology: Vec<u8>,
        /// The device's secret key file (mode 0600, deleted after the run).
        key_file: PathBuf,
        /// The session of the frames.
        sid: SessionId,
        /// The frames.
        frames: Vec<ReplayFrame>,
    },
}

impl Replay {
    /// Writes the replay file.
    pub fn write(&self, path: &Path) -> Result<()> {
        let bytes = bincode::serde::encode_to_vec(self, bincode::config::standard())
            .context("encoding the replay")?;
        std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
    }

    /// Reads a replay file.
    pub fn read(path: &Path) -> Result<Replay> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let (replay, _) = bincode::serde::decode_from_slice(&bytes, bincode::config::standard())
            .with_context(|| format!("decoding {}", path.display()))?;
        Ok(replay)
    }
}

/// Does the device's work of the first `count` recorded frames, exactly as
/// the device did it during the run (same code, same messages). Returns the
/// predicted classes so that nothing is optimized away.
pub fn device_work(replay: &Replay, count: usize) -> Result<Vec<usize>> {
    let mut classes = Vec::new();
    match replay {
        Replay::Veil {
            device,
            params,
            topology,
            server_a,
            server_b,
            sessions,
            current,
            warmup,
            frames,
        } => {
            let config = DeviceConfig {
                device: device.clone(),
                params: params.clone(),
                topology: Arc::new(Topology::from_bytes(topology)?),
                server_a: PublicKey::from_bytes(server_a)?,
                server_b: PublicKey::from_bytes(server_b)?,
            };
            let device = Device::restore(config, sessions.clone(), *current)?;
            let node = DeviceNode::new(device, DeviceOptions::default(), [7; 32]);
            let mut device = VeilDevice::new(node);
            // What MQTT hands the node, built before the work is counted.
            let result = topics::result(&device.node.device().config().device);
            let mut inputs: Vec<Vec<Input>> = frames
                .iter()
                .map(|f| {
                    f.received
                        .iter()
                        .map(|m| Input::Message {
                            topic: result.clone(),
                            payload: Bytes::copy_from_slice(m),
                        })
                        .collect()
                })
                .collect();
            device.handle(Input::Connected)?;
            std::hint::black_box(device.discard());
            let mut confirms = Vec::new();
            for (frame, received) in frames.iter().zip(&mut inputs).take(warmup + count) {
                if device.capture(&frame.x_hat)? != frame.t {
                    bail!("the replayed node's counter is not frame {}'s", frame.t);
                }
                device.publish(|t| {
                    confirms.extend(std::hint::black_box(t).confirm);
                    Ok(())
                })?;
                for token in confirms.drain(..) {
                    device.handle(Input::Confirmed(token))?;
                }
                for input in received.drain(..) {
                    if let Some((_, class)) = device.handle(input)? {
                        classes.push(class);
                    }
                }
            }
            classes.drain(..classes.len().min(*warmup));
        }
        Replay::Conventional {
            device,
            topology,
            key_file,
            sid,
            frames,
        } => {
            let key = SecretKey::read_from_file(key_file)?;
            let topology = Arc::new(Topology::from_bytes(topology)?);
            let mut device = ConvDevice::new(device, topology, KeySize::Bits2048)?;
            device.install_session(*sid, key)?;
            // Fixed randomness keeps the count reproducible.
            let mut rng = ChaCha20Rng::from_seed([7; 32]);
            for frame in frames.iter().take(count) {
                let out = device
                    .start_frame(&frame.x_hat, frame.t, &mut rng)?
                    .to_bytes()?;
                std::hint::black_box(out);
                for message in &frame.received {
                    let envelope = ConvEnvelope::from_bytes(message)?;
                    match device.on_message(&envelope, &mut rng)? {
                        ConvStep::Send(next) => {
                            std::hint::black_box(next.to_bytes()?);
                        }
                        ConvStep::Done { outputs, .. } => {
                            classes.push(argmax(&outputs).unwrap_or(0));
                        }
                    }
                }
            }
        }
    }
    Ok(classes)
}

/// Whether valgrind can be run.
pub fn valgrind_available() -> bool {
    Command::new("valgrind")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Instructions executed by `exe bench device-work --replay FILE --frames N`
/// under callgrind, portable arithmetic, one rayon thread.
fn callgrind_count(exe: &Path, replay: &Path, frames: usize, dir: &Path) -> Result<u64> {
    let out = dir.join(format!("callgrind.{frames}.out"));
    let status = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg("-q")
        .arg(exe)
        .args(["bench", "device-work", "--replay"])
        .arg(replay)
        .args(["--frames", &frames.to_string()])
        .env("VEIL_PORTABLE_ARITH", "1")
        .env("RAYON_NUM_THREADS", "1")
        .env("VEIL_LOG", "error")
        .status()
        .context("running valgrind")?;
    if !status.success() {
        bail!("callgrind run of {frames} frames failed ({status})");
    }
    let text =
        std::fs::read_to_string(&out).with_context(|| format!("reading {}", out.display()))?;
    parse_callgrind_total(&text).ok_or_else(|| anyhow!("no instruction total in {}", out.display()))
}

/// The `summary:` (or `totals:`) line of a callgrind output file.
pub fn parse_callgrind_total(text: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let rest = line
            .strip_prefix("summary:")
            .or_else(|| line.strip_prefix("totals:"))?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Instructions per frame of the device's work: `(I(n) - I(0)) / n`.
pub fn instructions_per_frame(exe: &Path, replay: &Replay, frames: usize) -> Result<f64> {
    if frames == 0 {
        bail!("at least one frame is needed");
    }
    let dir = tempfile::tempdir().context("creating a directory for callgrind")?;
    let file = dir.path().join("replay.bin");
    replay.write(&file)?;
    let base = callgrind_count(exe, &file, 0, dir.path())?;
    let with = callgrind_count(exe, &file, frames, dir.path())?;
    Ok(with.saturating_sub(base) as f64 / frames as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conventional::{ConvServer, ConvServerConfig};
    use crate::load_model;

    /// The replayed device work reaches the same classes as the live run
    /// it was recorded from, for both approaches.
    #[test]
    fn replays_reproduce_the_recorded_frames() {
        let model = load_model("pima-mlp").expect("model");
        let topology = Arc::new(model.topology().clone());
        let rows = crate::Dataset::Pima
            .rows(&veil_model::data::workspace_data_dir(), 2)
            .expect("rows");
        let inputs: Vec<Vec<i64>> = rows
            .iter()
            .map(|x| model.encode_input(x).expect("encode"))
            .collect();

        // Conventional: record what the device receives from A.
        let fixture = veil_paillier::fixtures::key_2048_a();
        let dir = tempfile::tempdir().expect("tempdir");
        let key_file = dir.path().join("device.key");
        fixture.write_to_file(&key_file).expect("key file");
        let sid = SessionId([5; 16]);
        let mut device =
            ConvDevice::new("devA", Arc::clone(&topology), KeySize::Bits2048).expect("device");
        let key = SecretKey::from_bytes(&fixture.to_bytes()).expect("key");
        let mut server = ConvServer::new(ConvServerConfig {
            topology: Arc::clone(&topology),
            plan: Arc::new(model.plan().clone()),
        })
        .expect("server");
        server
            .handle(device.install_session(sid, key).expect("session"))
            .expect("accepted");
        let mut rng = rand::rng();
        let mut frames = Vec::new();
        let mut live = Vec::new();
        for (t, x_hat) in inputs.iter().enumerate() {
            let mut message = device
                .start_frame(x_hat, t as u64, &mut rng)
                .expect("frame");
            let mut received = Vec::new();
            loop {
                let reply = server.handle(message).expect("A").expect("an answer");
                received.push(reply.to_bytes().expect("bytes"));
                match device.on_message(&reply, &mut rng).expect("step") {
                    ConvStep::Send(next) => message = next,
                    ConvStep::Done { outputs, .. } => {
                        live.push(argmax(&outputs).unwrap_or(0));
                        break;
                    }
                }
            }
            frames.push(ReplayFrame {
                t: t as u64,
                x_hat: x_hat.clone(),
                received,
            });
        }
        let replay = Replay::Conventional {
            device: "devA".into(),
            topology: topology.to_bytes(),
            key_file,
            sid,
            frames,
        };
        let file = dir.path().join("conv.bin");
        replay.write(&file).expect("write");
        let replay = Replay::read(&file).expect("read");
        assert_eq!(device_work(&replay, 2).expect("replay"), live);
        assert_eq!(
            device_work(&replay, 0).expect("replay"),
            Vec::<usize>::new()
        );

        // veil: record the results B sent the device in the in-process engine.
        let keys = (
            Arc::new(
                SecretKey::from_bytes(&veil_paillier::fixtures::key_2048_b().to_bytes())
                    .expect("key"),
            ),
            Arc::new(SecretKey::from_bytes(&fixture.to_bytes()).expect("key")),
        );
        let mut engine = crate::paillier_engine(&model, &Params::default(), &keys).expect("engine");
        engine.prepare().expect("session");
        let sessions: Vec<DeviceSession> = engine.device().sessions().cloned().collect();
        let current = engine.device().current().map(|s| s.sid);
        engine.record_transcript(true);
        let mut frames = Vec::new();
        let mut live = Vec::new();
        for x_hat in &inputs {
            engine.transcript.clear();
            let run = engine.infer(x_hat).expect("frame");
            live.push(argmax(&run.outputs).unwrap_or(0));
            let received = engine
                .transcript
                .iter()
                .filter(|d| d.to == veil_protocol::Peer::Device)
                .map(|d| d.bytes.clone())
                .collect();
            frames.push(ReplayFrame {
                t: run.t,
                x_hat: x_hat.clone(),
                received,
            });
        }
        let config = engine.device().config().clone();
        let replay = |warmup: usize| Replay::Veil {
            device: config.device.clone(),
            params: config.params.clone(),
            topology: config.topology.to_bytes(),
            server_a: config.server_a.to_bytes(),
            server_b: config.server_b.to_bytes(),
            sessions: sessions.clone(),
            current,
            warmup,
            frames: frames.clone(),
        };
        assert_eq!(device_work(&replay(0), 2).expect("replay"), live);
        // With the first frame as warm-up, only the second is counted.
        assert_eq!(device_work(&replay(1), 1).expect("replay"), live[1..]);
    }

    #[test]
    fn callgrind_totals_are_parsed() {
        let text = "version: 1\ncreator: callgrind-3.19.0\nevents: Ir\nsummary: 123456\n\nfn=x\n";
        assert_eq!(parse_callgrind_total(text), Some(123_456));
        assert_eq!(parse_callgrind_total("totals: 42 7\n"), Some(42));
        assert_eq!(parse_callgrind_total("events: Ir\n"), None);
    }
}
