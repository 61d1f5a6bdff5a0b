//! Shared set-up for the protocol tests: shipped models, fixture keys and
//! engines on either backend.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use veil_model::{ImportOptions, Model};
use veil_paillier::fixtures::{key_2048_a, key_2048_b};
use veil_paillier::{FixedBaseNoise, SecretKey};
use veil_protocol::{
    Device, DeviceConfig, Engine, I256, Noise, PaillierPublic, PaillierSecret, Params, Plain, Seed,
    ServerA, ServerAConfig, ServerB, ServerBConfig, frame_rounding,
};

pub const ROUNDING_KEY: [u8; 32] = [42; 32];

pub fn models_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models")
}

/// A shipped model, loaded once per test binary.
pub fn model(name: &str) -> Arc<Model> {
    type Cache = Mutex<Vec<(String, Arc<Model>)>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(Vec::new()));
    let mut guard = cache.lock().expect("model cache");
    if let Some((_, m)) = guard.iter().find(|(n, _)| n == name) {
        return Arc::clone(m);
    }
    let path = models_dir().join(format!("{name}.onnx"));
    let mut m = Model::load(&path, &ImportOptions::default()).expect("shipped model loads");
    let rows: Vec<Vec<i64>> = calibration_rows(name)
        .iter()
        .map(|x| m.encode_input(x).expect("training rows are within bounds"))
        .collect();
    m.calibrate(&rows, 4096).expect("calibrates");
    let m = Arc::new(m);
    guard.push((name.to_string(), Arc::clone(&m)));
    m
}

/// Training rows (never the held-out ones the tests score): A's dummies
/// are drawn from what the model does on them.
pub fn calibration_rows(name: &str) -> Vec<Vec<f32>> {
    if name.starts_with("mnist") {
        let data = veil_model::data::load_workspace_mnist().expect("mnist");
        data.images.into_iter().take(1000).collect()
    } else {
        let path = veil_model::data::workspace_data_dir().join("pima-train.csv");
        let data = veil_model::data::load_pima(&path).expect("pima training set");
        data.features.into_iter().map(|f| f.to_vec()).collect()
    }
}

fn owned(key: &SecretKey) -> Arc<SecretKey> {
    Arc::new(SecretKey::from_bytes(&key.to_bytes()).expect("fixture key copies"))
}

/// Server A's and B's key pairs (B's doubles as the Paillier backend key).
pub fn keys() -> (Arc<SecretKey>, Arc<SecretKey>) {
    (owned(key_2048_b()), owned(key_2048_a()))
}

pub fn device_for(model: &Model, params: &Params, a: &SecretKey, b: &SecretKey) -> Device {
    Device::new(DeviceConfig {
        device: "devA".into(),
        params: params.clone(),
        topology: Arc::new(model.topology().clone()),
        server_a: a.public_key().clone(),
        server_b: b.public_key().clone(),
    })
    .expect("device config")
}

pub fn configs(
    model: &Model,
    params: &Params,
    a: Arc<SecretKey>,
    b: Arc<SecretKey>,
) -> (ServerAConfig, ServerBConfig) {
    let topology = Arc::new(model.topology().clone());
    (
        ServerAConfig {
            params: params.clone(),
            topology: Arc::clone(&topology),
            plan: Arc::new(model.plan().clone()),
            key: a,
            rounding_key: Seed::from_bytes(ROUNDING_KEY),
        },
        ServerBConfig {
            params: params.clone(),
            topology,
            key: b,
        },
    )
}

pub fn plain_engine(model: &Model, params: &Params, seed: u8) -> Engine<Plain, Plain> {
    let (ka, kb) = keys();
    let device = device_for(model, params, &ka, &kb);
    let (ca, cb) = configs(model, params, ka, kb);
    let a = ServerA::new(ca, Plain::default()).expect("server A");
    let b = ServerB::new(cb, Plain::default()).expect("server B");
    Engine::new(device, a, b, [seed.wrapping_add(1); 32])
}

pub fn paillier_engine(
    model: &Model,
    params: &Params,
    seed: u8,
) -> Engine<PaillierPublic, PaillierSecret> {
    let (ka, kb) = keys();
    let device = device_for(model, params, &ka, &kb);
    let mut rng = <rand::rngs::ChaCha20Rng as rand_core::SeedableRng>::from_seed([seed; 32]);
    let a_noise = Noise::FixedBase(FixedBaseNoise::new(kb.public_key(), &mut rng));
    let b_noise = Noise::FixedBase(FixedBaseNoise::new(kb.public_key(), &mut rng));
    let a_backend = PaillierPublic::new(kb.public_key().clone(), a_noise, [seed; 32]);
    let b_backend = PaillierSecret::new(Arc::clone(&kb), b_noise, [seed.wrapping_add(1); 32]);
    let (ca, cb) = configs(model, params, ka, kb);
    let a = ServerA::new(ca, a_backend).expect("server A");
    let b = ServerB::new(cb, b_backend).expect("server B");
    Engine::new(device, a, b, [seed.wrapping_add(1); 32])
}

/// The integer reference for the frame the engine just ran.
pub fn reference(
    model: &Model,
    params: &Params,
    x_hat: &[i64],
    sid: veil_protocol::SessionId,
    t: u64,
) -> Vec<I256> {
    let rounding = frame_rounding(&Seed::from_bytes(ROUNDING_KEY), sid, t);
    let modes = params.modes(model.topology());
    model
        .run_int(x_hat, &modes, &rounding)
        .expect("reference runs")
        .into_iter()
        .map(I256::from)
        .collect()
}

pub fn argmax(values: &[f64]) -> usize {
    values
        .iter()
        .enumerate()
        .fold((0, f64::NEG_INFINITY), |best, (i, v)| {
            if *v > best.1 { (i, *v) } else { best }
        })
        .0
}

pub fn pima_rows() -> Vec<(Vec<f32>, u8)> {
    let data =
        veil_model::data::load_pima(&veil_model::data::workspace_data_dir().join("pima-test.csv"))
            .expect("pima test set");
    data.features
        .into_iter()
        .map(|f| f.to_vec())
        .zip(data.labels)
        .collect()
}

pub fn mnist_rows() -> Vec<(Vec<f32>, u8)> {
    let data = veil_model::data::load_workspace_mnist().expect("mnist");
    data.images.into_iter().zip(data.labels).collect()
}
