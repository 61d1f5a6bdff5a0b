//! The public topology: no weight inside, small, stable fingerprint,
//! strict decoding.
#![allow(clippy::unwrap_used)] // a test: a panic is its failure report

mod common;

use common::models_dir;
use proptest::prelude::*;
use prost::Message;
use tract_onnx::pb;
use veil_model::{ImportOptions, Model, Topology};

const SHIPPED: [&str; 4] = ["mnist-mlp", "mnist-cnn", "pima-mlp", "pima-tanh"];

fn load(name: &str) -> Model {
    Model::load(
        &models_dir().join(format!("{name}.onnx")),
        &ImportOptions::default(),
    )
    .unwrap()
}

/// The float weights stored in the ONNX file.
fn onnx_floats(name: &str) -> Vec<f32> {
    let bytes = std::fs::read(models_dir().join(format!("{name}.onnx"))).unwrap();
    let proto = pb::ModelProto::decode(&bytes[..]).unwrap();
    let mut out = Vec::new();
    for t in proto.graph.unwrap().initializer {
        out.extend(t.float_data);
        out.extend(
            t.raw_data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        );
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn topology_holds_no_weight() {
    for name in SHIPPED {
        let model = load(name);
        let topo = model.topology().to_bytes();
        let plan = model.plan().to_bytes();
        let t = model.topology();
        // Per feature: bounds 16 bytes, scale 8, integer range at most 18;
        // everything else is a few bytes per stage.
        let per_feature = 42;
        let budget = 256 + per_feature * t.input_len + 96 * t.stages.len();
        assert!(
            topo.len() <= budget,
            "{name}: {} bytes > {budget}",
            topo.len()
        );
        let weights: usize = model.plan().layers().map(|(_, l)| l.weight_count()).sum();
        assert!(weights > 100, "{name}: {weights} weights");
        let mut bare = t.clone();
        bare.input_bounds.clear();
        bare.input_scales.clear();
        bare.input_ranges.clear();
        let structure = bare.canonical_bytes().len();
        println!(
            "{name}: topology {} bytes ({structure} without the per-feature bounds, scales and ranges), plan {} bytes",
            topo.len(),
            plan.len()
        );
        assert!(
            structure * 3 < plan.len(),
            "{name}: topology {structure} vs plan {}",
            plan.len()
        );

        // The payload (the header holds its own length as a fixed-width integer).
        let topo = model.topology().canonical_bytes();
        let mut checked = 0;
        for (_, layer) in model.plan().layers() {
            // Small integers also occur as lengths and bit counts; weights of
            // at least 2^12 (1/16 in float) cannot collide with those.
            for w in layer
                .weights()
                .iter()
                .filter(|w| w.unsigned_abs() >= 1 << 12)
            {
                assert!(
                    !contains(&topo, &w.to_le_bytes()),
                    "{name}: quantized weight {w} found"
                );
                assert!(
                    !contains(&topo, &(*w as i32).to_le_bytes()),
                    "{name}: quantized weight {w} found"
                );
                checked += 1;
            }
        }
        for f in onnx_floats(name).into_iter().filter(|f| f.abs() > 1e-3) {
            assert!(
                !contains(&topo, &f.to_le_bytes()),
                "{name}: float weight {f} found"
            );
            assert!(
                !contains(&topo, &f64::from(f).to_le_bytes()),
                "{name}: float weight {f} found"
            );
            checked += 1;
        }
        assert!(checked > 100, "{name}: only {checked} weights checked");
        // Debug output of the private parts shows shapes only.
        assert!(format!("{:?}", model.plan()).len() < 64);
        assert!(format!("{model:?}").len() < 64 * 1024);
    }
}

#[test]
fn fingerprint_is_stable_across_imports_and_round_trips() {
    for name in SHIPPED {
        let a = load(name);
        let b = load(name);
        assert_eq!(a.topology().fingerprint(), b.topology().fingerprint());
        assert_eq!(a.plan().to_bytes(), b.plan().to_bytes());
        let decoded = Topology::from_bytes(&a.topology().to_bytes()).unwrap();
        assert_eq!(&decoded, a.topology());
        assert_eq!(decoded.fingerprint(), a.topology().fingerprint());
        let plan = veil_model::Plan::from_bytes(&a.plan().to_bytes()).unwrap();
        assert_eq!(&plan, a.plan());
    }
    let fps: std::collections::HashSet<_> = SHIPPED
        .iter()
        .map(|n| load(n).topology().fingerprint())
        .collect();
    assert_eq!(fps.len(), SHIPPED.len());
}

#[test]
fn header_tampering_is_refused() {
    let t = load("pima-mlp").topology().to_bytes();
    let mut bad_magic = t.clone();
    bad_magic[0] ^= 1;
    assert!(
        Topology::from_bytes(&bad_magic)
            .unwrap_err()
            .to_string()
            .contains("magic")
    );
    let mut bad_version = t.clone();
    bad_version[8] = 9;
    assert!(
        Topology::from_bytes(&bad_version)
            .unwrap_err()
            .to_string()
            .contains("version")
    );
    let mut padded = t.clone();
    padded.push(0);
    assert!(Topology::from_bytes(&padded).is_err());
    let mut wrong_len = t.clone();
    wrong_len[10] ^= 4;
    assert!(
        Topology::from_bytes(&wrong_len)
            .unwrap_err()
            .to_string()
            .contains("length")
    );
}

fn pima() -> &'static Topology {
    static T: std::sync::OnceLock<Topology> = std::sync::OnceLock::new();
    T.get_or_init(|| load("pima-tanh").topology().clone())
}

proptest! {
    #[test]
    fn truncated_topology_bytes_are_refused(cut in 0usize..10_000) {
        let bytes = pima().to_bytes();
        let cut = cut % bytes.len();
        prop_assert!(Topology::from_bytes(&bytes[..cut]).is_err());
    }

    #[test]
    fn garbled_topology_bytes_never_decode_to_the_original(pos in 0usize..10_000, xor in 1u8..=255) {
        let mut bytes = pima().to_bytes();
        let pos = pos % bytes.len();
        bytes[pos] ^= xor;
        if let Ok(t) = Topology::from_bytes(&bytes) {
            // What matters is that a pin notices: the fingerprint. (A flipped
            // sign bit of a 0.0 bound decodes to -0.0, which f64 equality
            // calls equal, so `t != original` is the wrong property.)
            prop_assert_ne!(t.fingerprint(), pima().fingerprint());
            prop_assert!(t.validate().is_ok());
        }
    }

    #[test]
    fn topology_round_trips_and_fingerprints_track_content(
        name in "[a-z0-9-]{0,20}",
        lo in -1e6f64..0.0,
        hi in 0.0f64..1e6,
        feature in 0usize..7,
        softmax: bool,
    ) {
        let mut t = pima().clone();
        t.name = name;
        t.input_bounds[feature] = (lo, hi);
        t.device_softmax = softmax;
        let decoded = Topology::from_bytes(&t.to_bytes()).unwrap();
        prop_assert_eq!(&decoded, &t);
        prop_assert_eq!(decoded.fingerprint(), t.fingerprint());
        prop_assert_eq!(t.fingerprint() == pima().fingerprint(), &t == pima());
    }
}

#[test]
fn model_can_be_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>(_: &T) {}
    let model = load("pima-mlp");
    assert_send_sync(&model);
    let x = [1.0, 100.0, 70.0, 30.0, 30.0, 0.5, 40.0];
    let here = model.run_float(&x).unwrap();
    let there = std::thread::scope(|s| s.spawn(|| model.run_float(&x).unwrap()).join().unwrap());
    assert_eq!(here, there);
}
