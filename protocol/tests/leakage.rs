//! What each party receives, recorded and checked: A never gets anything it
//! can decrypt and never the frame in the clear; B's view in blind mode
//! does not depend on the input beyond signs; every round has dummies; the
//! device's per-frame messages carry no Paillier ciphertext.

mod common;

use common::{keys, model, paillier_engine, pima_rows, plain_engine};
use veil_paillier::SecretKey;
use veil_protocol::{
    Body, Envelope, I256, Params, Peer, Plain, PlainCt, PublicOps, RoundMode, Seed, expand,
    frame_width, label, pre_activation_bits,
};

fn seed_from(key: &SecretKey, bytes: &[u8]) -> Seed {
    let c = key
        .public_key()
        .ciphertext_from_bytes(bytes)
        .expect("a ciphertext");
    let residue = key.decrypt(&c).expect("decrypts").residue().to_be_bytes();
    let mut seed = [0u8; 32];
    seed.copy_from_slice(&residue[residue.len() - 32..]);
    Seed::from_bytes(seed)
}

/// Bits of what `key` makes of `bytes`, or `None` if the bytes are not even a
/// ciphertext under that key's modulus.
fn decrypted_bits(key: &SecretKey, bytes: &[u8]) -> Option<u32> {
    let c = key.public_key().ciphertext_from_bytes(bytes).ok()?;
    let signed = key.decrypt(&c).ok()?.to_signed();
    Some(signed.magnitude.bit_width_vartime())
}

#[test]
fn server_a_receives_nothing_it_can_decrypt_and_never_the_frame() {
    let m = model("pima-mlp");
    let params = Params::default();
    let mut engine = paillier_engine(&m, &params, 21);
    engine.record_transcript(true);
    let rows: Vec<Vec<i64>> = pima_rows()
        .iter()
        .take(8)
        .map(|(x, _)| m.encode_input(x).expect("bounds"))
        .collect();
    for x in &rows {
        engine.infer(x).expect("runs");
    }
    let (key_a, key_b) = keys();
    let topology = m.topology();
    let mut seed_a = None;
    let mut frames = 0;
    let mut ciphertexts = 0;
    for delivery in engine.transcript.iter().filter(|d| d.to == Peer::ServerA) {
        let envelope = Envelope::from_bytes(&delivery.bytes).expect("decodes");
        match &envelope.body {
            Body::SessionInit(init) => {
                assert_eq!(
                    init.server_key,
                    key_a.public_key().fingerprint(),
                    "only A's own seed is under A's key"
                );
                seed_a = Some(seed_from(&key_a, &init.seed));
            }
            Body::Frame(frame) => {
                let seed = seed_a.as_ref().expect("the session came first");
                let width = frame_width(topology, &params);
                let y =
                    veil_protocol::codec::unpack_ints(&frame.values, frame.count as usize, width)
                        .expect("ints");
                let a = expand(
                    seed,
                    label::INPUT,
                    envelope.t,
                    topology.input_len,
                    topology.input_bound_bits + params.sigma,
                );
                let centre = I256::ONE << (topology.input_bound_bits + params.sigma);
                let x = &rows[frames];
                let mut far = 0;
                for ((y, a), x) in y.iter().zip(&a).zip(x) {
                    // What A can compute: u = y - a = x̂ + b.
                    let u = *y + centre - I256::from(*a);
                    let b = u - I256::from(*x);
                    assert!(b >= 0, "b is a non-negative mask");
                    if b >= I256::ONE << (topology.input_bound_bits + params.sigma - 8) {
                        far += 1;
                    }
                }
                assert!(
                    far * 10 >= 9 * x.len(),
                    "masks are large: {far}/{} features",
                    x.len()
                );
                frames += 1;
            }
            Body::MaskSupply { masks } => {
                for bytes in masks {
                    assert!(
                        decrypted_bits(&key_a, bytes).is_none_or(|bits| bits > 1900),
                        "A's key opens nothing"
                    );
                    let real = decrypted_bits(&key_b, bytes).expect("a ciphertext under B's key");
                    assert!(real <= topology.input_bound_bits + params.sigma);
                    ciphertexts += 1;
                }
            }
            Body::RoundReply { items, .. } => {
                for bytes in items {
                    assert!(
                        decrypted_bits(&key_a, bytes).is_none_or(|bits| bits > 1900),
                        "A's key opens nothing"
                    );
                    assert!(decrypted_bits(&key_b, bytes).is_some_and(|bits| bits < 200));
                    ciphertexts += 1;
                }
            }
            other => panic!("A received a {}", other.kind()),
        }
    }
    assert_eq!(frames, rows.len());
    assert!(ciphertexts > 100, "checked {ciphertexts} ciphertexts");
}

#[test]
fn device_sends_no_ciphertext_after_set_up() {
    let m = model("mnist-mlp");
    let params = Params::default();
    let mut engine = plain_engine(&m, &params, 22);
    engine.record_transcript(true);
    let rows = common::mnist_rows();
    for (x, _) in rows.iter().take(5) {
        engine
            .infer(&m.encode_input(x).expect("bounds"))
            .expect("runs");
    }
    let topology = m.topology();
    let width = frame_width(topology, &params) as usize;
    let mut kinds = Vec::new();
    for delivery in engine.transcript.iter().filter(|d| d.from == Peer::Device) {
        let envelope = Envelope::from_bytes(&delivery.bytes).expect("decodes");
        match &envelope.body {
            Body::SessionInit(init) => assert_eq!(
                init.seed.len(),
                512,
                "one Paillier ciphertext per server, once"
            ),
            Body::Frame(frame) => {
                assert!(
                    width < 128,
                    "a frame value is a small integer, not a 4096-bit ciphertext"
                );
                assert_eq!(frame.values.len(), (topology.input_len * width).div_ceil(8));
                // The whole message is the packed integers plus a small header.
                assert!(delivery.bytes.len() < frame.values.len() + 64);
            }
            Body::Ack => {}
            other => panic!("the device sent a {}", other.kind()),
        }
        kinds.push(envelope.body.kind());
    }
    assert_eq!(kinds.iter().filter(|k| **k == "session-init").count(), 2);
    assert_eq!(kinds.iter().filter(|k| **k == "frame").count(), 5);
    println!(
        "mnist-mlp frame message: {} bytes for {} features",
        engine
            .transcript
            .iter()
            .find(|d| d.from == Peer::Device && d.bytes.len() > 1000)
            .map_or(0, |d| d.bytes.len()),
        topology.input_len
    );
}

/// B's view of the rounds of `frames` runs of one input.
struct View {
    /// `log2 |β·z|` of every entry.
    blinded: Vec<f64>,
    /// `(z + ρ) / 2^(κ+σ)` of every entry.
    masked: Vec<f64>,
    /// Permute mode: `z / 2^κ`.
    values: Vec<f64>,
    groups_over_real: Vec<(usize, usize)>,
}

fn b_view(name: &str, params: &Params, row: usize, frames: usize, seed: u8) -> View {
    let m = model(name);
    // Each view gets its own randomness, as two real runs would.
    let mut engine = plain_engine(&m, params, seed);
    engine.record_transcript(true);
    let x = m.encode_input(&pima_rows()[row].0).expect("bounds");
    for _ in 0..frames {
        engine.infer(&x).expect("runs");
    }
    let plain = Plain::default();
    let unpack = |items: &[Vec<u8>]| -> Vec<f64> {
        items
            .iter()
            .flat_map(|bytes| match plain.decode(bytes).expect("plain ct") {
                PlainCt::Packed { values, .. } => values,
                PlainCt::Value(v) => vec![v],
            })
            .map(|v: I256| v.as_f64())
            .collect()
    };
    let mut view = View {
        blinded: vec![],
        masked: vec![],
        values: vec![],
        groups_over_real: vec![],
    };
    for delivery in engine.transcript.iter().filter(|d| d.to == Peer::ServerB) {
        let envelope = Envelope::from_bytes(&delivery.bytes).expect("decodes");
        let Body::Round(round) = envelope.body else {
            continue;
        };
        let s = usize::from(round.stage);
        let kappa = pre_activation_bits(m.topology(), s).expect("activation");
        let real = match &m.topology().stages[s] {
            veil_model::Stage::Activation(spec) => spec.output_len,
            _ => unreachable!(),
        };
        view.groups_over_real.push((round.groups as usize, real));
        match round.mode {
            RoundMode::Blind => {
                view.blinded.extend(
                    unpack(&round.values)
                        .into_iter()
                        .map(|v| v.abs().max(1.0).log2()),
                );
                let scale = 2f64.powi((kappa + params.sigma) as i32);
                view.masked
                    .extend(unpack(&round.masked).into_iter().map(|v| v / scale));
            }
            RoundMode::Permute => {
                let scale = 2f64.powi(kappa as i32);
                view.values
                    .extend(unpack(&round.values).into_iter().map(|v| v / scale));
            }
        }
    }
    view
}

/// Two-sample Kolmogorov-Smirnov statistic.
fn ks(a: &[f64], b: &[f64]) -> f64 {
    let mut a = a.to_vec();
    let mut b = b.to_vec();
    a.sort_by(f64::total_cmp);
    b.sort_by(f64::total_cmp);
    let (mut i, mut j, mut d) = (0, 0, 0f64);
    while i < a.len() && j < b.len() {
        if a[i] <= b[j] {
            i += 1;
        } else {
            j += 1;
        }
        d = d.max((i as f64 / a.len() as f64 - j as f64 / b.len() as f64).abs());
    }
    d
}

#[test]
fn b_sees_only_signs_in_blind_mode_and_every_round_has_dummies() {
    let params = Params::default();
    // Two patients far apart in feature space.
    let one = b_view("pima-mlp", &params, 0, 60, 31);
    let other = b_view("pima-mlp", &params, 7, 60, 32);
    for view in [&one, &other] {
        assert!(view.values.is_empty(), "ReLU rounds are blind");
        for (groups, real) in &view.groups_over_real {
            assert!(
                groups >= &(real + params.min_dummies as usize),
                "{groups} groups for {real} real"
            );
        }
        assert!(view.masked.iter().all(|v| (-0.01..1.01).contains(v)));
    }
    let n = one.masked.len().min(other.masked.len()) as f64;
    // At α = 0.001 two samples of this size differ by less than this.
    let critical = 1.95 * (2.0 / n).sqrt();
    let d_masked = ks(&one.masked, &other.masked);
    let d_blinded = ks(&one.blinded, &other.blinded);
    println!(
        "blind: {} samples, KS masked {d_masked:.3}, KS log|βz| {d_blinded:.3}, critical {critical:.3}",
        n
    );
    assert!(d_masked < critical, "masked values depend on the input");
    assert!(
        d_blinded < critical,
        "blinded magnitudes depend on the input"
    );

    // The same statistic does see the difference where B is shown values.
    let permute = Params {
        force_permute: true,
        ..Params::default()
    };
    let one = b_view("pima-mlp", &permute, 0, 20, 33);
    let other = b_view("pima-mlp", &permute, 7, 20, 34);
    let d_values = ks(&one.values, &other.values);
    println!("permute: KS values {d_values:.3}");
    assert!(
        d_values > 1.95 * (2.0 / one.values.len() as f64).sqrt(),
        "the test can tell inputs apart when they leak"
    );
}
