//! The fuzz targets' committed inputs (fuzz/regressions/<target>/: every
//! crash found, plus seeds) replayed through the same entry points on
//! stable, and a real run's traffic fed to them. With VEIL_FUZZ_SEEDS=<dir>
//! set, the real run's messages are also written there as seed corpora.
#![allow(clippy::unwrap_used)] // a test: a panic is its failure report

#[path = "../../fuzz/regressions.rs"]
mod committed;
mod common;

use committed::replay;
use std::path::PathBuf;

use common::{model, paillier_engine, plain_engine};
use veil_protocol::{Body, FrameLayout, Params, fuzzing};

#[test]
fn committed_inputs_replay_without_panics() {
    type Target = (&'static str, fn(&[u8]));
    let targets: [Target; 4] = [
        ("protocol_envelope", fuzzing::envelope),
        ("protocol_bits", fuzzing::bits),
        ("protocol_plain_ciphertext", fuzzing::plain_ciphertext),
        ("protocol_reply_item", fuzzing::reply_item),
    ];
    for (target, run) in targets {
        replay(target, run);
    }
}

fn write_seed(dir: &Option<PathBuf>, target: &str, name: &str, bytes: &[u8]) {
    if let Some(dir) = dir {
        let dir = dir.join(target);
        std::fs::create_dir_all(&dir).expect("seed directory");
        std::fs::write(dir.join(name), bytes).expect("seed written");
    }
}

#[test]
fn a_real_runs_messages_decode_through_the_fuzz_entry_points() {
    let seeds = std::env::var_os("VEIL_FUZZ_SEEDS").map(PathBuf::from);
    let m = model("pima-mlp");
    let rows = common::pima_rows();
    let x = |i: usize| m.encode_input(&rows[i].0).expect("in bounds");
    let mut plain = plain_engine(&m, &Params::default(), 3);
    plain.record_transcript(true);
    plain.infer(&x(0)).expect("plain frame");
    plain.infer(&x(1)).expect("plain frame");
    let mut paillier = paillier_engine(&m, &Params::default(), 4);
    paillier.record_transcript(true);
    paillier.infer(&x(2)).expect("paillier frame");

    let mut kinds = std::collections::BTreeSet::new();
    for (run, engine_transcript) in [
        ("plain", &plain.transcript),
        ("paillier", &paillier.transcript),
    ] {
        for (i, delivery) in engine_transcript.iter().enumerate() {
            let envelope = delivery.envelope().expect("real traffic decodes");
            let kind = envelope.body.kind();
            kinds.insert(kind);
            fuzzing::envelope(&delivery.bytes);
            let name = format!("{run}-{i:03}-{kind}");
            write_seed(&seeds, "protocol_envelope", &name, &delivery.bytes);
            match &envelope.body {
                Body::Frame(f) => {
                    // The widest field, none left out, then the values.
                    let width = FrameLayout::new(m.topology(), &Params::default())
                        .fields
                        .iter()
                        .map(|f| f.wire_bits())
                        .max()
                        .expect("features");
                    let mut input = vec![u8::try_from(width).expect("frame width fits a byte"), 0];
                    input.extend_from_slice(&f.values);
                    fuzzing::bits(&input);
                    write_seed(&seeds, "protocol_bits", &name, &input);
                }
                Body::RoundReply { items, .. } => {
                    for (j, item) in items.iter().take(2).enumerate() {
                        fuzzing::reply_item(item);
                        write_seed(&seeds, "protocol_reply_item", &format!("{name}-{j}"), item);
                    }
                }
                // Round replies are masked plaintexts now, not ciphertexts.
                Body::MaskSupply { masks, replies } => {
                    for (j, item) in masks
                        .iter()
                        .take(2)
                        .chain(replies.iter().take(2))
                        .enumerate()
                    {
                        let target = if run == "plain" {
                            fuzzing::plain_ciphertext(item);
                            "protocol_plain_ciphertext"
                        } else {
                            "paillier_ciphertext"
                        };
                        write_seed(&seeds, target, &format!("{name}-{j}"), item);
                    }
                }
                _ => {}
            }
        }
    }
    for kind in [
        "session-init",
        "frame",
        "mask-request",
        "mask-supply",
        "round",
        "round-reply",
        "output",
        "result",
    ] {
        assert!(
            kinds.contains(kind),
            "no {kind} in the transcript: {kinds:?}"
        );
    }
    if seeds.is_some() {
        let (a, b) = common::keys();
        for (name, key) in [("a", &a), ("b", &b)] {
            write_seed(
                &seeds,
                "paillier_public_key",
                &format!("key-{name}"),
                &key.public_key().to_bytes(),
            );
        }
    }
}
