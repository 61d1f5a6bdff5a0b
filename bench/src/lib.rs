//! veil-bench owns the evaluation: measuring what the private protocol
//! costs each party per model (time split offline/online, bytes on every
//! link), comparing the device's cost against the conventional
//! homomorphic-encryption approach, and the clocks and statistics those
//! measurements need (process and thread CPU time, percentiles).

use anyhow::{Context, Result};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use veil_model::{ImportOptions, Model};
use veil_paillier::{FixedBaseNoise, KeySize, NoisePool, PoolFiller, SecretKey};
use veil_protocol::{
    Device, DeviceConfig, Engine, Noise, PaillierPublic, PaillierSecret, Params, Seed, ServerA,
    ServerAConfig, ServerB, ServerBConfig,
};

fn clock(id: libc::clockid_t) -> Duration {
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
    Noise::Pool(NoisePool::new(PoolFiller::FixedBase(table), capacity, 0))
}

/// The three parties on the Paillier backend, pooled fixed-base noise on
/// both servers, in one process.
pub fn paillier_engine(
    model: &Model,
    params: &Params,
    keys: &(Arc<SecretKey>, Arc<SecretKey>),
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
        PaillierPublic::new(public.clone(), pooled_noise(&public, 1024)),
        [1; 32],
    )?;
    let b = ServerB::new(
        ServerBConfig {
            params: params.clone(),
            topology,
            key: Arc::clone(key_b),
        },
        PaillierSecret::new(Arc::clone(key_b), pooled_noise(&public, 16384)),
    )?;
    let mut engine = Engine::new(device, a, b, [2; 32]);
    engine.set_cpu_clock(process_cpu_time);
    Ok(engine)
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
