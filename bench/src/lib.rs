//! veil-bench owns the evaluation: measuring what the private protocol
//! costs each party per model (time split offline/online, bytes on every
//! link), comparing the device's cost against the conventional
//! homomorphic-encryption approach, and the clocks and statistics those
//! measurements need (process and thread CPU time, percentiles).

#![warn(missing_docs)]

pub mod conventional;
pub mod cores;
pub mod harness;
pub mod meter;
pub mod plot;
pub mod replay;
pub mod report;
pub mod veil_device;

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use veil_model::{ImportOptions, Model};
use veil_paillier::{FixedBaseNoise, KeySize, NoisePool, PoolFiller, SecretKey};
use veil_protocol::{
    Device, DeviceConfig, Engine, Noise, PaillierPublic, PaillierSecret, Params, Seed, ServerA,
    ServerAConfig, ServerB, ServerBConfig,
};

/// Reads a CPU clock; zero if the clock cannot be read.
// Thread CPU clocks of other threads have no safe wrapper in libc or rustix.
#[allow(unsafe_code)]
pub(crate) fn clock(id: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec it is given.
    let rc = unsafe { libc::clock_gettime(id, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// CPU time of the whole process (every thread).
pub fn process_cpu_time() -> Duration {
    clock(libc::CLOCK_PROCESS_CPUTIME_ID)
}

/// CPU time of the calling thread.
pub fn thread_cpu_time() -> Duration {
    clock(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// The `p`-th percentile (0..=100) by nearest rank; zero for no samples.
pub fn percentile(samples: &[Duration], p: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    let mut sorted = samples.to_vec();
    sorted.sort();
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The repository's `models/` directory.
pub fn models_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models")
}

/// Loads a shipped model by name.
pub fn load_model(name: &str) -> Result<Model> {
    let path = models_dir().join(format!("{name}.onnx"));
    Model::load(&path, &ImportOptions::default())
        .with_context(|| format!("loading {}", path.display()))
}

/// Fresh key pairs for A and B.
pub fn fresh_keys() -> Result<(Arc<SecretKey>, Arc<SecretKey>)> {
    let mut rng = rand::rng();
    Ok((
        Arc::new(SecretKey::generate(&mut rng, KeySize::Bits2048)?),
        Arc::new(SecretKey::generate(&mut rng, KeySize::Bits2048)?),
    ))
}

/// Encryption noise for a server: fixed-base values, precomputed into a pool
/// of `capacity` during idle time (the engine refills it offline).
pub fn pooled_noise(key: &veil_paillier::PublicKey, capacity: usize) -> Noise {
    let table = Arc::new(FixedBaseNoise::new(key, &mut rand::rng()));
    Noise::Pool(NoisePool::new(
        PoolFiller::FixedBase(table),
        capacity,
        0,
        rand::random(),
    ))
}

/// A's noise as server A uses it by default: textbook `r^N`, since A
/// re-randomizes for B, who holds the key. With packing on (`pack`) every
/// ciphertext A sends is packed and gets its noise with the packing, which
/// shares its squarings, so nothing is pooled; without, a pool of
/// `capacity` values refilled offline.
pub fn textbook_noise(key: &veil_paillier::PublicKey, pack: bool, capacity: usize) -> Noise {
    if pack {
        return Noise::Textbook;
    }
    Noise::Pool(NoisePool::new(
        PoolFiller::Public(key.clone()),
        capacity,
        0,
        rand::random(),
    ))
}

/// The three parties on the Paillier backend, in one process: A with
/// textbook noise, B with pooled fixed-base noise (its replies go to A, who
/// cannot decrypt them anyway).
pub fn paillier_engine(
    model: &Model,
    params: &Params,
    keys: &(Arc<SecretKey>, Arc<SecretKey>),
) -> Result<Engine<PaillierPublic, PaillierSecret>> {
    // Unpacked, a CNN frame sends about 5,000 ciphertexts to B; a pool
    // smaller than that runs dry and the rest of the noise is made online.
    let a_noise = textbook_noise(keys.1.public_key(), params.pack, 16384);
    paillier_engine_with(model, params, keys, a_noise)
}

/// [`paillier_engine`] with A's noise chosen by the caller (to measure
/// what textbook noise costs against fixed-base noise).
pub fn paillier_engine_with(
    model: &Model,
    params: &Params,
    keys: &(Arc<SecretKey>, Arc<SecretKey>),
    a_noise: Noise,
) -> Result<Engine<PaillierPublic, PaillierSecret>> {
    let (key_a, key_b) = keys;
    let topology = Arc::new(model.topology().clone());
    let device = Device::new(DeviceConfig {
        device: "bench".into(),
        params: params.clone(),
        topology: Arc::clone(&topology),
        server_a: key_a.public_key().clone(),
        server_b: key_b.public_key().clone(),
    })?;
    let mut rng = rand::rng();
    let public = key_b.public_key().clone();
    let a = ServerA::new(
        ServerAConfig {
            params: params.clone(),
            topology: Arc::clone(&topology),
            plan: Arc::new(model.plan().clone()),
            key: Arc::clone(key_a),
            rounding_key: Seed::random(&mut rng),
        },
        PaillierPublic::new(public.clone(), a_noise, [1; 32]),
    )?;
    let b = ServerB::new(
        ServerBConfig {
            params: params.clone(),
            topology,
            key: Arc::clone(key_b),
        },
        PaillierSecret::new(Arc::clone(key_b), pooled_noise(&public, 16384), [2; 32]),
    )?;
    let mut engine = Engine::new(device, a, b, [2; 32]);
    engine.set_cpu_clock(process_cpu_time);
    Ok(engine)
}

/// The data a device benchmark draws its frames from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dataset {
    /// The held-out MNIST images (the last 2,000 of `data/`).
    Mnist,
    /// The Pima test rows (`data/pima-test.csv`).
    Pima,
}

impl Dataset {
    /// The data set's name.
    pub fn name(self) -> &'static str {
        match self {
            Dataset::Mnist => "mnist",
            Dataset::Pima => "pima",
        }
    }

    /// `count` raw rows from the data sets in `data_dir`, cycling through
    /// the set if it is shorter.
    pub fn rows(self, data_dir: &std::path::Path, count: usize) -> Result<Vec<Vec<f32>>> {
        let all: Vec<Vec<f32>> = match self {
            Dataset::Mnist => veil_model::data::load_mnist(
                &data_dir.join("mnist-10k-images-idx3-ubyte.gz"),
                &data_dir.join("mnist-10k-labels-idx1-ubyte.gz"),
            )?
            .images
            .into_iter()
            .skip(8000)
            .collect(),
            Dataset::Pima => veil_model::data::load_pima(&data_dir.join("pima-test.csv"))?
                .features
                .iter()
                .map(|f| f.to_vec())
                .collect(),
        };
        if all.is_empty() {
            bail!("the {} data set is empty", self.name());
        }
        Ok(all.iter().cycle().take(count).cloned().collect())
    }
}

/// What `veil bench device` runs.
#[derive(Clone, Debug)]
pub struct DeviceBenchOptions {
    /// The model file.
    pub model: PathBuf,
    /// The data set its frames come from.
    pub dataset: Dataset,
    /// The folder holding the data sets (`data/` of a checkout,
    /// /usr/share/veil/data of a package).
    pub data_dir: PathBuf,
    /// Frames measured per approach, after `warmup` unmeasured ones.
    pub frames: usize,
    /// Frames run before measuring.
    pub warmup: usize,
    /// The `veil` executable to run under callgrind (None: no instruction
    /// counts).
    pub callgrind_exe: Option<PathBuf>,
    /// Frames each approach replays under callgrind (capped at `frames`).
    pub callgrind_frames_veil: usize,
    /// Frames of the baseline replayed under callgrind (each costs minutes).
    pub callgrind_frames_conventional: usize,
    /// No progress on stderr.
    pub quiet: bool,
    /// Give the device's thread a CPU of its own, and the servers, the
    /// broker and the relays the others ([`cores`]), instead of sharing
    /// every CPU.
    pub own_core: bool,
}

fn machine_info() -> std::collections::BTreeMap<String, String> {
    let mut info = std::collections::BTreeMap::new();
    if let Ok(text) = std::fs::read_to_string("/proc/cpuinfo")
        && let Some(name) = text.lines().find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|r| r.split(':').nth(1))
        })
    {
        info.insert("cpu".into(), name.trim().to_string());
    }
    info.insert(
        "cores".into(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .to_string(),
    );
    #[cfg(target_arch = "x86_64")]
    let ifma = std::is_x86_feature_detected!("avx512ifma");
    #[cfg(not(target_arch = "x86_64"))]
    let ifma = false;
    let portable = std::env::var_os("VEIL_PORTABLE_ARITH").is_some() || !ifma;
    info.insert(
        "arithmetic_kernel".into(),
        if portable { "portable" } else { "avx512-ifma" }.into(),
    );
    info.insert("os".into(), std::env::consts::OS.into());
    info.insert("arch".into(), std::env::consts::ARCH.into());
    info
}

/// Runs both approaches over the embedded broker and measures them.
pub fn run_device_bench(opts: &DeviceBenchOptions) -> Result<report::DeviceReport> {
    use veil_model::FloorRounding;
    if opts.frames == 0 {
        bail!("--frames must be at least 1");
    }
    let model = Model::load(&opts.model, &ImportOptions::default())
        .with_context(|| format!("loading {}", opts.model.display()))?;
    let topology = model.topology();
    let total = opts.warmup + opts.frames;
    let modes = topology.default_modes();
    let inputs = opts
        .dataset
        .rows(&opts.data_dir, total)?
        .iter()
        .map(|x| -> Result<harness::Input> {
            let x_hat = model.encode_input(x).with_context(|| {
                format!(
                    "a {} row does not fit model {}",
                    opts.dataset.name(),
                    topology.name
                )
            })?;
            let reference = model.run_int(&x_hat, &modes, &FloorRounding)?;
            Ok(harness::Input {
                reference_class: conventional::argmax(&reference),
                x_hat,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let quiet = opts.quiet;
    let say = |s: &str| {
        if !quiet {
            eprintln!("{s}");
        }
    };
    say(&format!(
        "{}: {} measured frames (+{} warm-up) per approach",
        topology.name, opts.frames, opts.warmup
    ));
    let placement = if opts.own_core {
        cores::Placement::own_core().context("reading this process's CPUs")?
    } else {
        cores::Placement::Shared
    };
    say(&format!("placement: {}", placement.describe()));
    // Everything started from here on (broker, servers, relays) inherits
    // the others' CPUs; the device's thread moves to its own.
    let everywhere = cores::allowed().context("reading this process's CPUs")?;
    cores::restrict(placement.others()).context("moving the servers off the device's CPU")?;
    let runs = (|| {
        let broker = harness::BenchBroker::start()?;
        let addr = broker.addr()?;
        let veil = harness::run_veil(addr, &model, &inputs, opts.warmup, &placement, quiet)?;
        let conv =
            harness::run_conventional(addr, &model, &inputs, opts.warmup, &placement, quiet)?;
        drop(broker);
        Ok::<_, anyhow::Error>((veil, conv))
    })();
    cores::restrict(&everywhere).context("restoring this thread's CPUs")?;
    let ((veil_run, veil_state), (conv_run, conv_key, conv_sid)) = runs?;

    let measured = &inputs[opts.warmup..];
    let veil_classes: Vec<usize> = veil_run.report.frames.iter().map(|f| f.class).collect();
    let conv_classes: Vec<usize> = conv_run.report.frames.iter().map(|f| f.class).collect();
    let mut report = report::DeviceReport {
        model: topology.name.clone(),
        dataset: opts.dataset.name().into(),
        frames: opts.frames,
        warmup_frames: opts.warmup,
        key_bits: 2048,
        classes_agree: veil_classes
            .iter()
            .zip(&conv_classes)
            .filter(|(a, b)| a == b)
            .count(),
        veil_matches_reference: veil_classes
            .iter()
            .zip(measured)
            .filter(|(c, input)| input.reference_class == Some(**c))
            .count(),
        veil: veil_run.report,
        conventional: conv_run.report,
        machine: {
            let mut info = machine_info();
            info.insert("device_placement".into(), placement.describe());
            info
        },
        ..report::DeviceReport::default()
    };

    match &opts.callgrind_exe {
        None => report.instructions_note = Some("instruction counts not requested".into()),
        Some(_) if !replay::valgrind_available() => {
            say("valgrind is not installed: instruction counts are left out");
            report.instructions_note = Some("valgrind not available".into());
        }
        Some(exe) => {
            let frames_of = |received: &[Vec<Vec<u8>>], limit: usize| {
                measured
                    .iter()
                    .zip(received)
                    .enumerate()
                    .take(limit.min(opts.frames))
                    .map(|(i, (input, got))| replay::ReplayFrame {
                        t: (opts.warmup + i) as u64,
                        x_hat: input.x_hat.clone(),
                        received: got.clone(),
                    })
                    .collect::<Vec<_>>()
            };
            let mut veil_frames: Vec<replay::ReplayFrame> = inputs
                .iter()
                .zip(&veil_state.warmup_received)
                .enumerate()
                .map(|(t, (input, got))| replay::ReplayFrame {
                    t: t as u64,
                    x_hat: input.x_hat.clone(),
                    received: got.clone(),
                })
                .collect();
            let measured_frames = frames_of(&veil_run.received, opts.callgrind_frames_veil);
            let n_veil = measured_frames.len();
            veil_frames.extend(measured_frames);
            let veil_replay = replay::Replay::Veil {
                device: veil_state.config.device.clone(),
                params: veil_state.config.params.clone(),
                topology: veil_state.config.topology.to_bytes(),
                server_a: veil_state.config.server_a.to_bytes(),
                server_b: veil_state.config.server_b.to_bytes(),
                sessions: veil_state.sessions.clone(),
                current: veil_state.current,
                warmup: opts.warmup,
                frames: veil_frames,
            };
            say(&format!("callgrind: veil device work, {n_veil} frames..."));
            let veil_instr = replay::instructions_per_frame(exe, &veil_replay, n_veil)?;
            let key_dir = tempfile::tempdir().context("creating a key directory")?;
            let key_file = key_dir.path().join("device.key");
            conv_key.write_to_file(&key_file)?;
            let conv_frames = frames_of(&conv_run.received, opts.callgrind_frames_conventional);
            let n_conv = conv_frames.len();
            let conv_replay = replay::Replay::Conventional {
                device: harness::DEVICE_USER.into(),
                topology: topology.to_bytes(),
                key_file,
                sid: conv_sid,
                frames: conv_frames,
            };
            say(&format!(
                "callgrind: conventional device work, {n_conv} frames (slow under valgrind)..."
            ));
            let conv_instr = replay::instructions_per_frame(exe, &conv_replay, n_conv)?;
            report.veil.instructions_per_frame = Some(veil_instr);
            report.conventional.instructions_per_frame = Some(conv_instr);
            report.instructions_note = Some(format!(
                "callgrind, portable arithmetic kernel, one thread; veil over {n_veil} frames, conventional over {n_conv}, minus a zero-frame run"
            ));
        }
    }
    report.compute_ratios();
    Ok(report)
}

/// Writes `text` to `path`, creating its directory.
pub fn write_file(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let ms = |v: u64| Duration::from_millis(v);
        let samples: Vec<Duration> = (1..=100).map(ms).collect();
        assert_eq!(percentile(&samples, 50.0), ms(50));
        assert_eq!(percentile(&samples, 95.0), ms(95));
        assert_eq!(percentile(&samples, 100.0), ms(100));
        assert_eq!(percentile(&samples, 0.0), ms(1));
        assert_eq!(percentile(&[], 50.0), Duration::ZERO);
    }

    #[test]
    fn cpu_clocks_advance_with_work() {
        let before = thread_cpu_time();
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(thread_cpu_time() > before);
        assert!(process_cpu_time() >= thread_cpu_time());
    }
}
