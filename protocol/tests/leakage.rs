//! What each party receives, recorded and checked: A never gets anything it
//! can decrypt and never the frame in the clear; B's view in blind mode
//! shows neither signs nor ratios and only blurred magnitudes; every round
//! has dummies; the device's per-frame messages carry no Paillier
//! ciphertext.
#![allow(clippy::unwrap_used)] // a test: a panic is its failure report

mod common;

use common::{keys, model, paillier_engine, pima_rows, plain_engine};
use veil_paillier::SecretKey;
use veil_protocol::layout::mask_fields;
use veil_protocol::{
    Body, Envelope, FrameLayout, I256, Params, Peer, Plain, PlainCt, PublicOps, ResultLayout,
    RoundMode, Seed, expand_fields, label, pre_activation_bits,
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
    let layout = FrameLayout::new(topology, &params);
    let widest_mask = layout.mask_bits().max().expect("features");
    let mut seed_a = None;
    let mut frames = 0;
    let mut ciphertexts = 0;
    for delivery in engine.transcript.iter().filter(|d| d.to == Peer::ServerA) {
        let envelope = delivery.envelope().expect("decodes");
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
                let y = veil_protocol::codec::unpack_fields(&frame.values, &layout.wire_bits())
                    .expect("fields");
                // The outputs' masks come first in the stream.
                let result = ResultLayout::new(topology, &params);
                let bits: Vec<u32> = mask_fields(&layout, &result).collect();
                let masks = expand_fields(&seed.derive(label::MASKS), envelope.t, &bits);
                let a = &masks[result.count..];
                let x = &rows[frames];
                let mut far = 0;
                for (((y, a), x), field) in y.iter().zip(a).zip(x).zip(&layout.fields) {
                    // What A can compute: u' = y - a = x̂ - L + b.
                    let u = y.wrapping_sub(*a) & ((1u128 << field.wire_bits()) - 1);
                    let b = u as i128 - i128::from(x - field.offset);
                    assert!(b >= 0, "b is a non-negative mask");
                    if b >= 1i128 << (field.mask_bits - 8) {
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
            Body::MaskSupply { masks, replies } => {
                for (bytes, widest) in masks
                    .iter()
                    .map(|m| (m, widest_mask))
                    .chain(replies.iter().map(|m| (m, 250)))
                {
                    assert!(
                        decrypted_bits(&key_a, bytes).is_none_or(|bits| bits > 1900),
                        "A's key opens nothing"
                    );
                    let real = decrypted_bits(&key_b, bytes).expect("a ciphertext under B's key");
                    assert!(real <= widest);
                    ciphertexts += 1;
                }
            }
            Body::RoundReply { items, .. } => {
                // Masked plaintexts (tests/masked_replies.rs scores them),
                // not ciphertexts.
                for bytes in items {
                    assert_eq!(bytes.len(), 32);
                    assert!(decrypted_bits(&key_a, bytes).is_none());
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
    let layout = FrameLayout::new(topology, &params);
    let mut kinds = Vec::new();
    for delivery in engine.transcript.iter().filter(|d| d.from == Peer::Device) {
        let envelope = delivery.envelope().expect("decodes");
        match &envelope.body {
            Body::SessionInit(init) => assert_eq!(
                init.seed.len(),
                512,
                "one Paillier ciphertext per server, once"
            ),
            Body::Frame(frame) => {
                assert!(
                    layout.fields.iter().all(|f| f.wire_bits() < 128),
                    "a frame value is a small integer, not a 4096-bit ciphertext"
                );
                // Pixels are bytes: 8 + σ + 1 bits each.
                assert!(
                    layout
                        .fields
                        .iter()
                        .all(|f| f.wire_bits() == 8 + params.sigma + 1)
                );
                assert_eq!(frame.values.len(), layout.bytes);
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
    /// Whether each comparison came out non-negative.
    nonnegative: Vec<bool>,
    /// `log2 |β·d + γ|` of every comparison.
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
        nonnegative: vec![],
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
                let values = unpack(&round.values);
                view.nonnegative.extend(values.iter().map(|v| *v >= 0.0));
                view.blinded
                    .extend(values.into_iter().map(|v| v.abs().max(1.0).log2()));
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
fn b_view_in_blind_mode_hides_signs_and_every_round_has_dummies() {
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
    let share = |v: &View| {
        v.nonnegative.iter().filter(|x| **x).count() as f64 / v.nonnegative.len().max(1) as f64
    };
    let signs = (share(&one) - share(&other)).abs();
    println!(
        "blind: {} samples, KS masked {d_masked:.3}, KS log|β·d + γ| {d_blinded:.3}, \
         non-negative comparisons {:.3} vs {:.3}, critical {critical:.3}",
        n,
        share(&one),
        share(&other)
    );
    assert!(d_masked < critical, "masked values depend on the input");
    assert!(signs < critical, "comparison outcomes depend on the input");
    // Magnitudes are blurred, not removed: the distance between two inputs'
    // log2|β·d + γ| is about the shift between their log2|d| over the
    // 96-bit blur (0.025-0.047 measured), where B seeing d would give ~1.
    // What B can do with it is scored by the attack tests below.
    assert!(
        d_blinded < 0.1,
        "blinded magnitudes depend on the input ({d_blinded:.3})"
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

// ---------------------------------------------------------------------------
// Attacks on B's view. Each test runs the estimator a careful B would use on
// exactly what B decrypts (`veil_protocol::audit::open_round` with B's own
// backend), scored against A's record of which entries are real, dummy or
// padding and the integer reference's true pre-activations. The statistics
// are printed so that a regression shows as a number.

use veil_protocol::audit::{RoundView, open_round};
use veil_protocol::{EntryRole, RoundTruth, frame_rounding};

/// One slot of a blind group as B decrypted it, with what it really is.
#[derive(Clone, Copy)]
struct SeenSlot {
    role: EntryRole,
    /// `z + ρ` scaled by `2^-(κ+σ)`.
    masked: f64,
    /// The true pre-activation (real entries and the zero slot).
    z: Option<i128>,
}

/// One comparison B decrypted: `β·(z_i - z_j) + γ`, or `β·z_i + γ` against
/// an implicit 0.
#[derive(Clone, Copy)]
struct SeenComparison {
    value: I256,
    left: usize,
    right: Option<usize>,
    /// The true difference, where both sides are known values.
    d: Option<i128>,
}

/// One group in received order.
struct SeenGroup {
    real: bool,
    slots: Vec<SeenSlot>,
    comparisons: Vec<SeenComparison>,
    /// Permute mode: the window's values as B sees them.
    values: Vec<I256>,
}

/// One round: its stage, mode and groups in received order.
struct SeenRound {
    frame: usize,
    mode: RoundMode,
    groups: Vec<SeenGroup>,
}

/// Frames held out from training: the last 2,000 MNIST digits, the Pima
/// test set.
fn frames(name: &str, count: usize) -> Vec<Vec<f32>> {
    if name.starts_with("mnist") {
        let rows = common::mnist_rows();
        rows[rows.len() - 2000..]
            .iter()
            .take(count)
            .map(|(x, _)| x.clone())
            .collect()
    } else {
        pima_rows()
            .into_iter()
            .take(count)
            .map(|(x, _)| x)
            .collect()
    }
}

fn observe(name: &str, params: &Params, count: usize, seed: u8) -> Vec<SeenRound> {
    observe_model(&model(name), params, &frames(name, count), seed)
}

/// Runs `inputs` through the protocol and records B's view of every round,
/// checking each result against the integer reference on the way.
fn observe_model(
    m: &veil_model::Model,
    params: &Params,
    inputs: &[Vec<f32>],
    seed: u8,
) -> Vec<SeenRound> {
    let mut engine = plain_engine(m, params, seed);
    engine.record_transcript(true);
    engine.a_mut().record_truth(true);
    let modes = params.modes(m.topology());
    let plain = Plain::default();
    let mut seen = Vec::new();
    for (frame, x) in inputs.iter().enumerate() {
        let x_hat = m.encode_input(x).expect("bounds");
        engine.transcript.clear();
        let run = engine.infer(&x_hat).expect("runs");
        let rounding = frame_rounding(&Seed::from_bytes(common::ROUNDING_KEY), run.sid, run.t);
        let trace = m
            .run_int_trace(&x_hat, &modes, &rounding)
            .expect("reference");
        let expected: Vec<I256> = trace
            .last()
            .map(|o| o.iter().map(|v| I256::from(*v)).collect())
            .unwrap_or_default();
        assert_eq!(
            run.outputs, expected,
            "frame {frame} differs from the reference"
        );
        let truths: Vec<RoundTruth> = engine.a_mut().take_truth();
        let views: Vec<RoundView> = engine
            .transcript
            .iter()
            .filter(|d| d.to == Peer::ServerB)
            .filter_map(
                |d| match Envelope::from_bytes(&d.bytes).expect("decodes").body {
                    Body::Round(round) => {
                        Some(open_round(&plain, m.topology(), params, &round).expect("B opens it"))
                    }
                    _ => None,
                },
            )
            .collect();
        assert_eq!(truths.len(), views.len(), "one record per round");
        for (truth, view) in truths.iter().zip(&views) {
            assert_eq!(truth.stage, view.stage);
            assert_eq!(truth.groups.len(), view.groups);
            let z = &trace[view.stage - 1];
            let kappa = pre_activation_bits(m.topology(), view.stage).expect("activation");
            let scale = 2f64.powi((kappa + params.sigma) as i32);
            let per = view.values_per_group;
            let groups = truth
                .groups
                .iter()
                .enumerate()
                .map(|(g, roles)| {
                    let slots: Vec<SeenSlot> = roles
                        .iter()
                        .enumerate()
                        .map(|(e, role)| SeenSlot {
                            role: *role,
                            masked: view
                                .masked
                                .get(g * view.slots + e)
                                .map_or(0.0, |v| v.as_f64() / scale),
                            z: match role {
                                EntryRole::Real(i) => Some(z[*i as usize]),
                                EntryRole::Zero => Some(0),
                                _ => None,
                            },
                        })
                        .collect();
                    let values = view.values[g * per..(g + 1) * per].to_vec();
                    let comparisons = match view.mode {
                        RoundMode::Blind => view
                            .comparisons
                            .iter()
                            .zip(&values)
                            .map(|((i, j), value)| SeenComparison {
                                value: *value,
                                left: *i,
                                right: *j,
                                d: match j {
                                    Some(j) => slots[*i].z.zip(slots[*j].z).map(|(a, b)| a - b),
                                    None => slots[*i].z,
                                },
                            })
                            .collect(),
                        RoundMode::Permute => Vec::new(),
                    };
                    SeenGroup {
                        real: roles.iter().any(|r| matches!(r, EntryRole::Real(_))),
                        slots,
                        comparisons,
                        values,
                    }
                })
                .collect();
            seen.push(SeenRound {
                frame,
                mode: view.mode,
                groups,
            });
        }
    }
    seen
}

fn ranks(x: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|a, b| x[*a].total_cmp(&x[*b]));
    let mut r = vec![0.0; x.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && x[idx[j + 1]] == x[idx[i]] {
            j += 1;
        }
        let mean = (i + j) as f64 / 2.0;
        for k in &idx[i..=j] {
            r[*k] = mean;
        }
        i = j + 1;
    }
    r
}

fn spearman(x: &[f64], y: &[f64]) -> f64 {
    let (rx, ry) = (ranks(x), ranks(y));
    let n = rx.len() as f64;
    let (mx, my) = (rx.iter().sum::<f64>() / n, ry.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in rx.iter().zip(&ry) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
    }
    if sxx == 0.0 || syy == 0.0 {
        return 0.0;
    }
    sxy / (sxx * syy).sqrt()
}

fn magnitude(v: I256) -> ethnum::U256 {
    v.unsigned_abs()
}

fn bits(v: ethnum::U256) -> f64 {
    f64::from(256 - v.leading_zeros())
}

fn odd_part(v: ethnum::U256) -> ethnum::U256 {
    if v == ethnum::U256::ZERO {
        v
    } else {
        v >> v.trailing_zeros()
    }
}

/// What B can compute from one decrypted value without any key.
fn features(v: I256) -> Vec<(&'static str, f64)> {
    let m = magnitude(v);
    vec![
        ("bit length", bits(m)),
        ("log2 magnitude", m.as_f64().max(1.0).log2()),
        ("odd-part bit length", bits(odd_part(m))),
        // log2 odd(|β·z|) − log2 β' for the old β = β'·2^e with odd β'.
        ("log2 odd part", odd_part(m).as_f64().max(1.0).log2()),
        (
            "trailing zeros",
            if m == ethnum::U256::ZERO {
                256.0
            } else {
                f64::from(m.trailing_zeros())
            },
        ),
        ("mod 3", (m % ethnum::U256::from(3u8)).as_f64()),
        ("mod 5", (m % ethnum::U256::from(5u8)).as_f64()),
        ("mod 7", (m % ethnum::U256::from(7u8)).as_f64()),
        (
            "sign",
            if v > 0 {
                1.0
            } else if v < 0 {
                -1.0
            } else {
                0.0
            },
        ),
    ]
}

/// Balanced accuracy of the best per-feature histogram classifier, trained
/// on even frames and scored on odd ones: B given labelled examples, the
/// strongest position it could be in.
/// A labelled example: frame, whether it is the class sought, features.
type Sample = (usize, bool, Vec<(&'static str, f64)>);

fn best_classifier(samples: &[Sample]) -> (f64, &'static str) {
    let Some((_, _, first)) = samples.first() else {
        return (0.5, "none");
    };
    let mut best = (0.0f64, "none");
    for f in 0..first.len() {
        let train: Vec<(bool, f64)> = samples
            .iter()
            .filter(|(frame, _, _)| frame % 2 == 0)
            .map(|(_, label, x)| (*label, x[f].1))
            .collect();
        let mut cuts: Vec<f64> = train.iter().map(|(_, x)| *x).collect();
        cuts.sort_by(f64::total_cmp);
        cuts.dedup();
        let bins = 32usize;
        let edges: Vec<f64> = (1..bins)
            .filter_map(|i| cuts.get(i * cuts.len() / bins).copied())
            .collect();
        let bin = |x: f64| edges.partition_point(|e| *e <= x);
        let positives = train.iter().filter(|(l, _)| *l).count().max(1) as f64;
        let negatives = train.iter().filter(|(l, _)| !*l).count().max(1) as f64;
        let mut score = vec![(0.0f64, 0.0f64); bins + 1];
        for (label, x) in &train {
            let s = &mut score[bin(*x)];
            if *label {
                s.0 += 1.0 / positives;
            } else {
                s.1 += 1.0 / negatives;
            }
        }
        let (mut tp, mut p, mut tn, mut n) = (0.0, 0.0, 0.0, 0.0);
        for (_, label, x) in samples.iter().filter(|(frame, _, _)| frame % 2 == 1) {
            let s = score[bin(x[f].1)];
            let guess = s.0 > s.1;
            if *label {
                p += 1.0;
                tp += f64::from(u8::from(guess));
            } else {
                n += 1.0;
                tn += f64::from(u8::from(!guess));
            }
        }
        if p > 0.0 && n > 0.0 {
            let accuracy = (tp / p + tn / n) / 2.0;
            if accuracy > best.0 {
                best = (accuracy, first[f].0);
            }
        }
    }
    best
}

/// Features of a whole group: its largest comparison's, how many
/// comparisons come out non-negative, the spread of their bit lengths, and
/// the masked values' extremes.
fn group_features(group: &SeenGroup) -> Vec<(&'static str, f64)> {
    let top = group
        .comparisons
        .iter()
        .map(|c| c.value)
        .max()
        .unwrap_or(I256::ZERO);
    let mut x = features(top);
    let positive = group.comparisons.iter().filter(|c| c.value >= 0).count();
    x.push(("non-negative comparisons", positive as f64));
    let spread = group
        .comparisons
        .iter()
        .map(|c| bits(magnitude(c.value)))
        .fold((f64::MAX, f64::MIN), |(lo, hi), b| (lo.min(b), hi.max(b)));
    x.push(("bit-length spread", spread.1 - spread.0));
    let masked = group
        .slots
        .iter()
        .map(|s| s.masked)
        .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    x.push(("lowest masked", masked.0));
    x.push(("highest masked", masked.1));
    x
}

/// The slot B would select, from the comparisons exactly as B reads them.
fn winner(group: &SeenGroup) -> usize {
    let mut wins = vec![0usize; group.slots.len().max(1)];
    for c in &group.comparisons {
        if let Some(j) = c.right {
            wins[if c.value >= 0 { c.left } else { j }] += 1;
        }
    }
    (0..wins.len())
        .max_by_key(|i| (wins[*i], usize::MAX - i))
        .unwrap_or(0)
}

fn gcd(mut a: ethnum::U256, mut b: ethnum::U256) -> ethnum::U256 {
    while b != ethnum::U256::ZERO {
        let r = a % b;
        a = b;
        b = r;
    }
    a
}

/// B's linking attack: two blindings `β₁·z`, `β₂·z` of one value have odd
/// parts whose reduced fraction has both terms below `2^beta_bits`.
fn linked(a: I256, b: I256, beta_bits: u32) -> bool {
    let (x, y) = (odd_part(magnitude(a)), odd_part(magnitude(b)));
    if x == ethnum::U256::ZERO || y == ethnum::U256::ZERO {
        return false;
    }
    let g = gcd(x, y);
    let limit = ethnum::U256::ONE << beta_bits;
    x / g < limit && y / g < limit
}

struct Scores {
    magnitude: f64,
    magnitude_by: &'static str,
    /// log2|z_i - z_j| (or log2|z_i|) of each comparison from its value.
    difference: f64,
    difference_by: &'static str,
    /// Pooling windows: log ratios of two comparisons of one window.
    ratio: Option<f64>,
    dummy: f64,
    dummy_by: &'static str,
    padding: Option<f64>,
    /// Whether a real group's output is non-zero (its maximum is positive).
    sign: f64,
    sign_by: &'static str,
    dummy_links: f64,
    real_links: f64,
}

fn attack_blind(name: &str, params: &Params, frames: usize) -> Scores {
    score_blind(&observe(name, params, frames, 51), params)
}

fn score_blind(rounds: &[SeenRound], params: &Params) -> Scores {
    // Magnitudes: every comparison of known values against log2|d|, and
    // every real entry against log2|z| from the comparisons it is in.
    let mut truth = Vec::new();
    let mut estimates: Vec<Vec<f64>> = Vec::new();
    let mut names = Vec::new();
    let mut entry_truth = Vec::new();
    let mut entry_estimates: Vec<Vec<f64>> = vec![Vec::new(); 3];
    let (mut ratio_truth, mut ratio_estimate) = (Vec::new(), Vec::new());
    let mut group_samples = Vec::new();
    let mut padding_samples = Vec::new();
    let mut sign_samples = Vec::new();
    let (mut dummy_links, mut dummies, mut real_links, mut reals) =
        (0usize, 0usize, 0usize, 0usize);
    let log = |v: f64| (v.abs() + 1.0).log2();
    for round in rounds.iter().filter(|r| r.mode == RoundMode::Blind) {
        let real_tops: Vec<I256> = round
            .groups
            .iter()
            .filter(|g| g.real)
            .filter_map(|g| g.comparisons.first().map(|c| c.value))
            .collect();
        for group in &round.groups {
            group_samples.push((round.frame, !group.real, group_features(group)));
            if group.real {
                // B's best guess at a ReLU's or a pooling window's sign:
                // the selected slot's masked value, every comparison's
                // features, and the group's shape.
                let best = winner(group);
                let max = group.slots.iter().filter_map(|s| s.z).max().unwrap_or(0);
                let mut x = group_features(group);
                x.push(("selected slot's masked value", group.slots[best].masked));
                if let Some(c) = group.comparisons.first() {
                    x.extend(features(c.value));
                }
                sign_samples.push((round.frame, max > 0, x));
            }
            // Padding: inside the real groups that have any, every slot
            // described by what B has of it.
            let padded = group.slots.iter().any(|s| s.role == EntryRole::Padding);
            for (e, slot) in group
                .slots
                .iter()
                .enumerate()
                .filter(|_| group.real && padded)
            {
                if slot.role == EntryRole::Zero {
                    continue;
                }
                let mine: Vec<&SeenComparison> = group
                    .comparisons
                    .iter()
                    .filter(|c| c.left == e || c.right == Some(e))
                    .collect();
                let logs: Vec<f64> = mine
                    .iter()
                    .map(|c| magnitude(c.value).as_f64().max(1.0).log2())
                    .collect();
                let wins = mine
                    .iter()
                    .filter(|c| (c.value >= 0) == (c.left == e))
                    .count();
                let n = logs.len().max(1) as f64;
                padding_samples.push((
                    round.frame,
                    slot.role == EntryRole::Padding,
                    vec![
                        ("masked value", slot.masked),
                        ("mean log2 of its comparisons", logs.iter().sum::<f64>() / n),
                        ("largest", logs.iter().copied().fold(f64::MIN, f64::max)),
                        ("smallest", logs.iter().copied().fold(f64::MAX, f64::min)),
                        ("comparisons won", wins as f64),
                    ],
                ));
            }
            for (e, slot) in group.slots.iter().enumerate() {
                let (EntryRole::Real(_), Some(z)) = (slot.role, slot.z) else {
                    continue;
                };
                let logs: Vec<f64> = group
                    .comparisons
                    .iter()
                    .filter(|c| c.left == e || c.right == Some(e))
                    .map(|c| magnitude(c.value).as_f64().max(1.0).log2())
                    .collect();
                if logs.is_empty() || entry_truth.len() >= 60_000 {
                    continue;
                }
                entry_truth.push(log(z as f64));
                entry_estimates[0].push(logs.iter().sum::<f64>() / logs.len() as f64);
                entry_estimates[1].push(logs.iter().copied().fold(f64::MIN, f64::max));
                entry_estimates[2].push(logs.iter().copied().fold(f64::MAX, f64::min));
            }
            for c in &group.comparisons {
                if let Some(d) = c.d
                    && truth.len() < 60_000
                {
                    truth.push(log(d as f64));
                    let x = features(c.value);
                    if names.is_empty() {
                        names = x.iter().map(|(n, _)| *n).collect();
                        estimates = vec![Vec::new(); x.len()];
                    }
                    for (e, (_, v)) in estimates.iter_mut().zip(&x) {
                        e.push(*v);
                    }
                }
            }
            // Ratios inside a window: what one shared β used to reveal.
            let known: Vec<&SeenComparison> = group
                .comparisons
                .iter()
                .filter(|c| c.d.is_some_and(|d| d != 0) && c.right.is_some())
                .collect();
            if group.real && group.slots.len() > 2 && ratio_truth.len() < 60_000 {
                for pair in known.windows(2) {
                    let (a, b) = (pair[0], pair[1]);
                    let (da, db) = (a.d.unwrap_or(1) as f64, b.d.unwrap_or(1) as f64);
                    ratio_truth.push(log(da) - log(db));
                    ratio_estimate.push(
                        magnitude(a.value).as_f64().max(1.0).log2()
                            - magnitude(b.value).as_f64().max(1.0).log2(),
                    );
                }
            }
            // Linking, on the first rounds (quadratic in the round size).
            if round.frame < 10
                && let Some(first) = group.comparisons.first().map(|c| c.value)
            {
                let partners = real_tops.iter().filter(|r| **r != first);
                let hit = partners
                    .take(512)
                    .any(|r| linked(first, *r, params.beta_bits));
                if !group.real {
                    dummies += 1;
                    dummy_links += usize::from(hit);
                } else if reals < 4 * dummies.max(16) {
                    reals += 1;
                    real_links += usize::from(hit);
                }
            }
        }
    }
    let best = |estimates: &[Vec<f64>], names: &[&'static str], truth: &[f64]| {
        estimates
            .iter()
            .zip(names)
            .map(|(e, n)| (spearman(e, truth).abs(), *n))
            .fold((0.0, "none"), |best, x| if x.0 > best.0 { x } else { best })
    };
    let (difference, difference_by) = best(&estimates, &names, &truth);
    let (magnitude, magnitude_by) = best(
        &entry_estimates,
        &[
            "mean log2 of its comparisons",
            "largest log2 of its comparisons",
            "smallest log2 of its comparisons",
        ],
        &entry_truth,
    );
    let (dummy, dummy_by) = best_classifier(&group_samples);
    let (sign, sign_by) = best_classifier(&sign_samples);
    let padding = padding_samples
        .iter()
        .any(|(_, p, _)| *p)
        .then(|| best_classifier(&padding_samples));
    if let Some((p, by)) = padding {
        eprintln!("padding/real slots: {p:.3} by {by}");
    }
    let padding = padding.map(|(p, _)| p);
    Scores {
        magnitude,
        magnitude_by,
        difference,
        difference_by,
        ratio: (!ratio_truth.is_empty()).then(|| spearman(&ratio_estimate, &ratio_truth).abs()),
        dummy,
        dummy_by,
        padding,
        sign,
        sign_by,
        dummy_links: dummy_links as f64 / dummies.max(1) as f64,
        real_links: real_links as f64 / reals.max(1) as f64,
    }
}

fn check_blind(name: &str) {
    let s = attack_blind(name, &Params::default(), 200);
    eprintln!(
        "{name} over 200 frames: log2|z| |Spearman| {:.3} (best estimator: {}); \
         log2|z_i - z_j| |Spearman| {:.3} (by {}); window ratios |Spearman| {}; dummy/real balanced accuracy {:.3} (by {}); \
         padding/real {}; output non-zero {:.3} (by {}); \
         dummies linked to a real group {:.3}, real groups linked to another {:.3}",
        s.magnitude,
        s.magnitude_by,
        s.difference,
        s.difference_by,
        s.ratio.map_or("no pooling".into(), |r| format!("{r:.3}")),
        s.dummy,
        s.dummy_by,
        s.padding
            .map_or("no padding in this model".into(), |p| format!("{p:.3}")),
        s.sign,
        s.sign_by,
        s.dummy_links,
        s.real_links
    );
    assert!(
        s.magnitude <= 0.3,
        "{name}: B reads log2|z| (ρ = {:.3})",
        s.magnitude
    );
    if let Some(r) = s.ratio {
        assert!(r <= 0.3, "{name}: B reads ratios inside a window ({r:.3})");
    }
    assert!(
        s.dummy <= 0.55,
        "{name}: B tells dummies apart ({:.3})",
        s.dummy
    );
    if let Some(p) = s.padding {
        assert!(p <= 0.55, "{name}: B tells padding apart ({p:.3})");
    }
    assert!(
        s.sign <= 0.55,
        "{name}: B tells which outputs are 0 ({:.3} by {})",
        s.sign,
        s.sign_by
    );
    assert!(
        s.dummy_links <= s.real_links + 0.05,
        "{name}: B links dummies to real groups ({:.3} vs {:.3} by chance)",
        s.dummy_links,
        s.real_links
    );
}

#[test]
fn attack_blind_mnist_mlp() {
    check_blind("mnist-mlp");
}

#[test]
fn attack_blind_mnist_cnn() {
    check_blind("mnist-cnn");
}

#[test]
fn attack_blind_pima_mlp() {
    check_blind("pima-mlp");
}

/// The sign estimator does find signs where they are shown: against an
/// implicit 0, B reads every ReLU's sign.
#[test]
fn signs_show_without_the_zero_slot() {
    let params = Params {
        hide_signs: false,
        ..Params::default()
    };
    let s = attack_blind("pima-mlp", &params, 60);
    eprintln!(
        "pima-mlp, signs not hidden: output non-zero {:.3} (by {})",
        s.sign, s.sign_by
    );
    assert!(
        s.sign > 0.95,
        "the estimator misses shown signs ({:.3})",
        s.sign
    );
}

/// In permute mode B sees values: its best guess at which are dummies.
fn attack_permute(name: &str, params: &Params) -> f64 {
    let rounds = observe(name, params, 200, 52);
    let mut samples = Vec::new();
    for round in rounds.iter().filter(|r| r.mode == RoundMode::Permute) {
        for group in &round.groups {
            let top = group.values.iter().copied().max().unwrap_or(I256::ZERO);
            let mut x = features(top);
            x.push(("value", top.as_f64()));
            samples.push((round.frame, !group.real, x));
        }
    }
    let (accuracy, by) = best_classifier(&samples);
    eprintln!(
        "{name} permute mode over 200 frames: dummy/real balanced accuracy {accuracy:.3} (by {by})"
    );
    accuracy
}

#[test]
fn attack_permute_dummies() {
    let tanh = attack_permute("pima-tanh", &Params::default());
    let forced = attack_permute(
        "pima-mlp",
        &Params {
            force_permute: true,
            ..Params::default()
        },
    );
    assert!(tanh <= 0.6, "pima-tanh: B tells dummies apart ({tanh:.3})");
    assert!(
        forced <= 0.6,
        "pima-mlp (permute): B tells dummies apart ({forced:.3})"
    );
}

// ---------------------------------------------------------------------------
// Padded windows. No shipped model has any, so a small CNN is built here:
// a 7×7 input, a 3×3 convolution to 4 channels, and a 2×2 max-pool of
// stride 2 padded at the bottom and right, so that 28 of its 64 windows are
// cut short (to 2 or 1 entries) and filled with padding.

#[path = "../../model/tests/common/mod.rs"]
mod onnx;

fn padded_cnn(relu: bool) -> veil_model::Model {
    use onnx::{Attr, Graph, values};
    let mut g = Graph::new(&[1, 7, 7]);
    let w1 = g.init("w1", &[4, 1, 3, 3], values(11, 36, 0.6));
    let b1 = g.init("b1", &[4], values(12, 4, 0.2));
    let w2 = g.init("w2", &[3, 64], values(13, 192, 0.4));
    let b2 = g.init("b2", &[3], values(14, 3, 0.1));
    g.node(
        "Conv",
        "conv",
        &["", &w1, &b1],
        &[
            ("pads", Attr::Ints(vec![1, 1, 1, 1])),
            ("kernel_shape", Attr::Ints(vec![3, 3])),
        ],
    )
    .node(
        "MaxPool",
        "pool",
        &[""],
        &[
            ("kernel_shape", Attr::Ints(vec![2, 2])),
            ("strides", Attr::Ints(vec![2, 2])),
            ("pads", Attr::Ints(vec![0, 0, 1, 1])),
        ],
    );
    if relu {
        g.node("Relu", "relu", &[""], &[]);
    }
    g.node("Flatten", "flat", &[""], &[("axis", Attr::Int(1))])
        .node("Gemm", "fc", &["", &w2, &b2], &[("transB", Attr::Int(1))]);
    g.bounds(0.0, 1.0);
    let mut m = veil_model::Model::from_bytes(&g.bytes(), &veil_model::ImportOptions::default())
        .expect("the padded CNN imports");
    let rows: Vec<Vec<i64>> = images(300, 7)
        .iter()
        .map(|x| m.encode_input(x).expect("in bounds"))
        .collect();
    m.calibrate(&rows, 4096).expect("calibrates");
    m
}

/// Inputs in [0, 1] with MNIST-like flat zero regions.
fn images(count: usize, seed: u64) -> Vec<Vec<f32>> {
    (0..count as u64)
        .map(|i| {
            onnx::values(seed * 1_000 + i, 49, 1.0)
                .into_iter()
                .map(|v| if v < 0.0 { 0.0 } else { v })
                .collect()
        })
        .collect()
}

#[test]
fn padding_is_exact_and_not_recognisable() {
    let params = Params::default();
    for relu in [true, false] {
        let m = padded_cnn(relu);
        let short: usize = m
            .topology()
            .stages
            .iter()
            .filter_map(|stage| match stage {
                veil_model::Stage::Activation(spec) => spec.pool,
                _ => None,
            })
            .map(|p| p.windows().iter().filter(|w| w.len() < 4).count())
            .sum();
        assert_eq!(short, 28, "the model has padded windows");
        let rounds = observe_model(&m, &params, &images(200, 8), 53);
        let s = score_blind(&rounds, &params);
        let kind = if relu { "ReLU+max-pool" } else { "max-pool" };
        eprintln!(
            "padded CNN ({kind}) over 200 frames: padding/real slots in padded windows {}; \
             log2|z| |Spearman| {:.3}; window ratios {}; dummy/real {:.3}; output non-zero {:.3}",
            s.padding.map_or("none".into(), |p| format!("{p:.3}")),
            s.magnitude,
            s.ratio.map_or("none".into(), |r| format!("{r:.3}")),
            s.dummy,
            s.sign
        );
        let padding = s.padding.expect("padding was scored");
        assert!(
            padding <= 0.55,
            "{kind}: B tells padding apart ({padding:.3})"
        );
    }
}
