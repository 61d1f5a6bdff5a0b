//! Every refusal rule: unknown sessions, wrong devices, wrong sizes,
//! replays, out-of-order rounds, rounds that do not fit the published
//! topology, foreign parameters, bad versions and garbage bytes.
#![allow(clippy::unwrap_used)] // a test: a panic is its failure report

mod common;

use common::{model, plain_engine};
use veil_protocol::codec::{pack_fields, unpack_fields};
use veil_protocol::{
    Body, Engine, Envelope, Outgoing, Params, Peer, Plain, ProtocolError, PublicOps, RejectCode,
    SecretOps, SessionId,
};

fn x_hat(name: &str) -> Vec<i64> {
    let m = model(name);
    let row = common::pima_rows().into_iter().next().expect("a row").0;
    m.encode_input(&row).expect("in bounds")
}

/// Delivers `out` and everything it causes, except messages of the kinds in
/// `hold`, which are returned undelivered.
fn pump<P: PublicOps, S: SecretOps>(
    engine: &mut Engine<P, S>,
    first: Outgoing,
    hold: &[&str],
) -> Vec<Outgoing> {
    let mut queue = vec![first];
    let mut held = Vec::new();
    while let Some(out) = queue.pop() {
        if hold.contains(&out.envelope.body.kind()) || out.to == Peer::Device {
            held.push(out);
            continue;
        }
        let replies = match out.to {
            Peer::ServerA => engine.a_mut().handle(out.envelope).expect("A accepts"),
            Peer::ServerB => engine.b_mut().handle(out.envelope).expect("B accepts"),
            Peer::Device => unreachable!(),
        };
        queue.extend(replies);
        while engine.a_mut().has_offline_work() {
            queue.extend(engine.a_mut().offline_step().expect("precomputation"));
        }
    }
    held
}

fn started_frame(engine: &mut Engine<Plain, Plain>, x: &[i64], t: u64) -> (Outgoing, Outgoing) {
    let frame = engine.device_mut().mask_frame(x, t, &[]).expect("masks");
    let held = pump(engine, frame.clone(), &["round", "output"]);
    let round = held
        .into_iter()
        .find(|o| o.envelope.body.kind() == "round")
        .expect("A sends a round");
    (frame, round)
}

fn fresh(name: &str) -> Engine<Plain, Plain> {
    let m = model(name);
    let mut engine = plain_engine(&m, &Params::default(), 11);
    engine
        .infer(&x_hat(name))
        .expect("a first frame opens the session");
    engine
}

#[test]
fn replays_and_unknown_sessions_are_refused() {
    let mut engine = fresh("pima-mlp");
    let x = x_hat("pima-mlp");
    let (frame, round) = started_frame(&mut engine, &x, 10);
    // The same frame again.
    let again = engine.a_mut().handle(frame.envelope.clone());
    assert!(
        matches!(again, Err(ProtocolError::Replay { t: 10, .. })),
        "{again:?}"
    );
    // An older counter after a newer one.
    let older = engine
        .device_mut()
        .mask_frame(&x, 7, &[])
        .expect("device masks whatever it is told");
    assert!(matches!(
        engine.a_mut().handle(older.envelope),
        Err(ProtocolError::Replay { .. })
    ));
    // Finish frame 10, then replay its round and output at B.
    let held = pump(&mut engine, round.clone(), &["output"]);
    let output = held
        .into_iter()
        .find(|o| o.envelope.body.kind() == "output")
        .expect("output");
    let result = engine
        .b_mut()
        .handle(output.envelope.clone())
        .expect("B accepts the output");
    assert_eq!(result.len(), 1);
    assert!(matches!(
        engine.b_mut().handle(output.envelope),
        Err(ProtocolError::Replay { t: 10, .. })
    ));
    assert!(matches!(
        engine.b_mut().handle(round.envelope.clone()),
        Err(ProtocolError::Replay { .. })
    ));
    // Unknown session and the wrong device.
    let mut stranger = frame.envelope.clone();
    stranger.sid = SessionId([9; 16]);
    assert!(matches!(
        engine.a_mut().handle(stranger.clone()),
        Err(ProtocolError::UnknownSession(_))
    ));
    assert!(matches!(
        engine.b_mut().handle(Envelope {
            body: round.envelope.body.clone(),
            ..stranger
        }),
        Err(ProtocolError::UnknownSession(_))
    ));
    let mut impostor = engine
        .device_mut()
        .mask_frame(&x, 11, &[])
        .expect("masks")
        .envelope;
    impostor.device = "devB".into();
    assert!(matches!(
        engine.a_mut().handle(impostor),
        Err(ProtocolError::WrongDevice { .. })
    ));
}

#[test]
fn rounds_must_fit_the_topology() {
    let mut engine = fresh("pima-mlp");
    let x = x_hat("pima-mlp");
    let (_, round) = started_frame(&mut engine, &x, 20);
    let Body::Round(good) = round.envelope.body.clone() else {
        panic!("a round")
    };
    let with = |f: &dyn Fn(&mut veil_protocol::Round)| {
        let mut r = good.clone();
        f(&mut r);
        Envelope {
            body: Body::Round(r),
            ..round.envelope.clone()
        }
    };
    let cases: Vec<(&str, Envelope)> = vec![
        ("later stage first", with(&|r| r.stage = 3)),
        ("a linear stage", with(&|r| r.stage = 0)),
        ("group size", with(&|r| r.group_size = 2)),
        ("no dummies", with(&|r| r.groups = 16)),
        ("too many dummies", with(&|r| r.groups = 500)),
        ("packing flag", with(&|r| r.packed = false)),
        (
            "missing ciphertext",
            with(&|r| {
                r.values.pop();
            }),
        ),
        (
            "extra masked ciphertext",
            with(&|r| r.masked.push(r.masked[0].clone())),
        ),
        (
            "leaky values on a ReLU",
            with(&|r| r.masked_alpha = r.masked.clone()),
        ),
        ("garbled ciphertext", with(&|r| r.values[0] = vec![1, 2, 3])),
        (
            "permute values with masks",
            with(&|r| r.mode = veil_protocol::RoundMode::Permute),
        ),
    ];
    for (what, envelope) in cases {
        let outcome = engine.b_mut().handle(envelope);
        assert!(
            outcome.is_err(),
            "{what}: B accepted a round that does not fit"
        );
        println!(
            "{what}: {}",
            outcome.err().map(|e| e.to_string()).unwrap_or_default()
        );
    }
    // The untouched round still goes through, and its reply has the right shape.
    let replies = engine
        .b_mut()
        .handle(round.envelope.clone())
        .expect("the genuine round");
    let Body::RoundReply { items, .. } = &replies[0].envelope.body else {
        panic!("a reply")
    };
    // [[X]] and a selection bit for each of the entry and the zero slot.
    assert_eq!(items.len(), good.groups as usize * 3);
    // A refuses a reply of the wrong length.
    let mut short = replies[0].envelope.clone();
    if let Body::RoundReply { items, .. } = &mut short.body {
        items.pop();
    }
    assert!(matches!(
        engine.a_mut().handle(short),
        Err(ProtocolError::Size { .. })
    ));
}

#[test]
fn blind_rounds_are_refused_for_functions_that_need_values() {
    let mut engine = fresh("pima-tanh");
    let x = x_hat("pima-tanh");
    let (_, round) = started_frame(&mut engine, &x, 5);
    let Body::Round(r) = &round.envelope.body else {
        panic!("a round")
    };
    assert_eq!(
        r.mode,
        veil_protocol::RoundMode::Permute,
        "tanh runs in permute mode"
    );
    let mut blind = r.clone();
    blind.mode = veil_protocol::RoundMode::Blind;
    let outcome = engine.b_mut().handle(Envelope {
        body: Body::Round(blind),
        ..round.envelope.clone()
    });
    assert!(
        matches!(outcome, Err(ProtocolError::BlindUnsupported { .. })),
        "{outcome:?}"
    );
}

#[test]
fn frames_and_outputs_with_wrong_sizes_are_refused() {
    let mut engine = fresh("pima-mlp");
    let x = x_hat("pima-mlp");
    let frame = engine.device_mut().mask_frame(&x, 30, &[]).expect("masks");
    let Body::Frame(good) = frame.envelope.body.clone() else {
        panic!("a frame")
    };
    let with = |f: &dyn Fn(&mut veil_protocol::Frame)| {
        let mut g = good.clone();
        f(&mut g);
        Envelope {
            body: Body::Frame(g),
            ..frame.envelope.clone()
        }
    };
    for (what, envelope) in [
        (
            "bytes",
            with(&|g| {
                g.values.pop();
            }),
        ),
        (
            "value out of the masked range",
            with(&|g| g.values.iter_mut().for_each(|b| *b = 0xff)),
        ),
    ] {
        assert!(engine.a_mut().handle(envelope).is_err(), "{what}");
    }
    assert!(
        engine.device_mut().mask_frame(&x[..6], 31, &[]).is_err(),
        "too few features"
    );
    let mut huge = x.clone();
    huge[1] = i64::MAX / 2;
    assert!(matches!(
        engine.device_mut().mask_frame(&huge, 31, &[]),
        Err(ProtocolError::Feature { index: 1, .. })
    ));
    // An output before any round of its frame.
    let (_, round) = started_frame(&mut engine, &x, 40);
    let output = Envelope {
        body: Body::Output(veil_protocol::Output {
            count: 2,
            packed: true,
            values: vec![],
        }),
        ..round.envelope
    };
    assert!(matches!(
        engine.b_mut().handle(output),
        Err(ProtocolError::OutputEarly { .. })
    ));
}

#[test]
fn sessions_for_another_model_parameters_or_key_are_refused() {
    let m = model("pima-mlp");
    let params = Params::default();
    let mut engine = plain_engine(&m, &params, 12);
    let [to_a, to_b] = engine
        .device_mut()
        .open_session(0, &mut rand::rng())
        .expect("session");
    let Body::SessionInit(init) = to_a.envelope.body.clone() else {
        panic!("init")
    };
    let variants: Vec<(&str, veil_protocol::SessionInit)> = vec![
        (
            "model",
            veil_protocol::SessionInit {
                topology: [0; 32],
                ..init.clone()
            },
        ),
        (
            "params",
            veil_protocol::SessionInit {
                params: [1; 32],
                ..init.clone()
            },
        ),
        (
            "key",
            veil_protocol::SessionInit {
                server_key: [2; 32],
                ..init.clone()
            },
        ),
        (
            "seed",
            veil_protocol::SessionInit {
                seed: vec![0; 512],
                ..init.clone()
            },
        ),
    ];
    for (what, variant) in variants {
        let envelope = Envelope {
            body: Body::SessionInit(variant),
            ..to_a.envelope.clone()
        };
        assert!(
            engine.a_mut().handle(envelope).is_err(),
            "A accepted a session with a foreign {what}"
        );
    }
    // B's seed is under B's key: A cannot open it.
    let crossed = Envelope {
        body: to_b.envelope.body.clone(),
        ..to_a.envelope.clone()
    };
    assert!(engine.a_mut().handle(crossed).is_err());
    assert_eq!(
        engine
            .a_mut()
            .handle(to_a.envelope.clone())
            .expect("genuine")
            .len(),
        1,
        "A asks B for masks"
    );
    assert!(
        engine
            .a_mut()
            .handle(to_a.envelope)
            .expect("redelivered")
            .is_empty(),
        "a redelivered session is idempotent"
    );
    engine
        .b_mut()
        .handle(to_b.envelope)
        .expect("B accepts its own");
}

#[test]
fn bad_bytes_versions_and_messages_for_the_wrong_party() {
    assert!(matches!(
        Envelope::from_bytes(&[1, 2, 3]),
        Err(ProtocolError::Decode(_))
    ));
    assert!(
        Envelope::from_bytes(&vec![0xff; 70 << 20]).is_err(),
        "oversized input is refused unread"
    );
    let mut engine = fresh("pima-mlp");
    let ack = engine.device_mut().ack(SessionId([0; 16]), 0).envelope;
    let other = veil_protocol::PROTOCOL_VERSION + 1;
    let mut bytes = Envelope {
        version: other,
        ..ack.clone()
    }
    .to_bytes()
    .expect("encodes");
    assert!(matches!(
        Envelope::from_bytes(&bytes),
        Err(ProtocolError::Version { got, .. }) if got == other
    ));
    bytes = Envelope {
        device: "dev/../x".into(),
        ..ack.clone()
    }
    .to_bytes()
    .expect("encodes");
    assert!(
        Envelope::from_bytes(&bytes).is_err(),
        "device names must be topic-safe"
    );
    assert!(matches!(
        engine.a_mut().handle(ack.clone()),
        Err(ProtocolError::Misdirected { .. })
    ));
    let frame = engine
        .device_mut()
        .mask_frame(&x_hat("pima-mlp"), 50, &[])
        .expect("masks")
        .envelope;
    assert!(matches!(
        engine.b_mut().handle(frame),
        Err(ProtocolError::Misdirected { .. })
    ));
    let result = Envelope {
        body: Body::Result(veil_protocol::FrameResult { values: vec![0] }),
        ..ack
    };
    assert!(engine.device_mut().open_result(&result).is_err());
}

#[test]
fn a_frame_can_start_over_after_a_lost_reply() {
    let mut engine = fresh("pima-mlp");
    let x = x_hat("pima-mlp");
    let (_, lost_round) = started_frame(&mut engine, &x, 60);
    // B answers, but the reply is lost; A retries the whole frame.
    engine
        .b_mut()
        .handle(lost_round.envelope.clone())
        .expect("B answers");
    let retry = engine
        .a_mut()
        .retry_frame(lost_round.envelope.sid, 60)
        .expect("retry");
    let mut results = Vec::new();
    for out in retry {
        results.extend(pump(&mut engine, out, &[]));
    }
    let result = results
        .iter()
        .find(|o| o.envelope.body.kind() == "result")
        .expect("the retried frame finishes");
    let opened = engine
        .device_mut()
        .open_result(&result.envelope)
        .expect("unmasks");
    let expected = common::reference(&model("pima-mlp"), &Params::default(), &x, opened.sid, 60);
    assert_eq!(opened.values, expected);
    assert!(
        engine
            .a_mut()
            .retry_frame(lost_round.envelope.sid, 60)
            .is_err(),
        "a finished frame cannot be retried"
    );
}

#[test]
fn a_frame_held_up_by_precomputation_is_flagged_until_it_moves_on() {
    let mut engine = fresh("pima-mlp");
    let x = x_hat("pima-mlp");
    // A counter far past the look-ahead: A has no masks for it yet.
    let frame = engine.device_mut().mask_frame(&x, 40, &[]).expect("masks");
    let mut queue = vec![frame];
    let mut rounds = Vec::new();
    // Deliver everything it causes, but do no precomputation.
    while let Some(out) = queue.pop() {
        if out.envelope.body.kind() == "round" {
            rounds.push(out);
            continue;
        }
        let replies = match out.to {
            Peer::ServerA => engine.a_mut().handle(out.envelope).expect("A accepts"),
            Peer::ServerB => engine.b_mut().handle(out.envelope).expect("B accepts"),
            Peer::Device => continue,
        };
        queue.extend(replies);
    }
    assert!(
        rounds.is_empty(),
        "the frame cannot start without its masks"
    );
    assert!(engine.a_mut().has_waiting_frame());
    // One step serves the waiting frame first, whatever else is queued.
    let out = engine.a_mut().offline_step().expect("precomputation");
    assert!(
        out.iter()
            .any(|o| o.envelope.body.kind() == "round" && o.envelope.t == 40),
        "the waiting frame's round follows its precomputation"
    );
    assert!(!engine.a_mut().has_waiting_frame());
}

#[test]
fn a_retried_round_repeats_the_first_try_and_restarts_are_limited() {
    let mut engine = fresh("pima-mlp");
    let x = x_hat("pima-mlp");
    let params = Params::default();
    let topology = model("pima-mlp").topology().clone();
    let (_, first) = started_frame(&mut engine, &x, 70);
    let sid = first.envelope.sid;
    let opened = |round: &Outgoing| {
        let Body::Round(r) = &round.envelope.body else {
            panic!("a round")
        };
        let view = veil_protocol::audit::open_round(&Plain::default(), &topology, &params, r)
            .expect("B opens it");
        (view.values, view.masked)
    };
    let seen = opened(&first);
    let reply = engine
        .b_mut()
        .handle(first.envelope.clone())
        .expect("B answers");
    let items = |out: &[Outgoing]| match out.first().map(|o| &o.envelope.body) {
        Some(Body::RoundReply { items, .. }) => items.clone(),
        _ => panic!("a reply"),
    };
    let answered = items(&reply);
    let mut restarts = 0;
    loop {
        // The reply is lost each time; A starts the frame over.
        let retry = engine.a_mut().retry_frame(sid, 70).expect("retry");
        let mut held = Vec::new();
        for out in retry {
            held.extend(pump(&mut engine, out, &["round", "output"]));
        }
        let again = held
            .into_iter()
            .find(|o| o.envelope.body.kind() == "round")
            .expect("A sends the round again");
        assert!(
            opened(&again) == seen,
            "B decrypts exactly what it saw before"
        );
        match engine.b_mut().handle(again.envelope.clone()) {
            Ok(out) => {
                assert_eq!(items(&out), answered, "B masks a repeat with the same μ");
                restarts += 1;
            }
            Err(ProtocolError::TooManyRestarts { .. }) => break,
            Err(e) => panic!("{e:?}"),
        }
        assert!(restarts <= params.max_restarts, "B kept granting restarts");
    }
    assert_eq!(restarts, params.max_restarts);
}

#[test]
fn refusal_codes_carry_no_detail() {
    let detailed = ProtocolError::Bound {
        what: "masked",
        bits: 81,
    };
    assert_eq!(detailed.code(), RejectCode::Refused);
    let packing = ProtocolError::Paillier(veil_paillier::PaillierError::Packing(
        "slot 3 broke its bound".into(),
    ));
    assert_eq!(packing.code(), RejectCode::Refused);
    assert_eq!(
        ProtocolError::StageOrder {
            what: "round",
            frame: 3,
            expected: 1,
            got: 3
        }
        .code(),
        RejectCode::OutOfOrder
    );
}

/// A device knows its own mask b, and A sees only `u = x̂ + b`, so a device
/// can send `x̂` far beyond a feature's range `R < 2^k` (up to about
/// 2^(k+σ)) and probe the model with inputs it was never meant to take.
/// A's range check and B's checks on the first round catch it: always at
/// the extreme, mostly at 2^16 past the range, rarely just past it (rates
/// printed).
#[test]
fn inputs_beyond_the_bound_are_refused_by_b() {
    let name = "pima-mlp";
    let m = model(name);
    let params = Params::default();
    let mut engine = fresh(name);
    let x = x_hat(name);
    let layout = veil_protocol::FrameLayout::new(m.topology(), &params);
    let widths = layout.wire_bits();
    // Feature 0's range takes k bits.
    let k = layout.fields[0].mask_bits - params.sigma;
    let mut t = 100;
    for excess in [1, 4, 16, 20, params.sigma - 2] {
        let delta = 1u128 << (k + excess);
        let (mut by_a, mut by_b, mut passed) = (0, 0, 0);
        for _ in 0..40 {
            t += 1;
            let mut frame = engine.device_mut().mask_frame(&x, t, &[]).expect("masks");
            let Body::Frame(body) = &mut frame.envelope.body else {
                panic!("a frame")
            };
            let mut values = unpack_fields(&body.values, &widths).expect("fields");
            values[0] = (values[0] + delta) & ((1u128 << widths[0]) - 1);
            body.values = pack_fields(&values, &widths).expect("packs");
            let mut queue = match engine.a_mut().handle(frame.envelope) {
                Err(ProtocolError::MaskedInput { .. }) => {
                    by_a += 1;
                    continue;
                }
                other => other.expect("A refuses only by range"),
            };
            let mut round = None;
            while let Some(out) = queue.pop() {
                if out.envelope.body.kind() == "round" {
                    round = Some(out);
                    continue;
                }
                queue.extend(match out.to {
                    Peer::ServerA => engine.a_mut().handle(out.envelope).expect("A accepts"),
                    Peer::ServerB => engine.b_mut().handle(out.envelope).expect("B accepts"),
                    Peer::Device => Vec::new(),
                });
                while engine.a_mut().has_offline_work() {
                    queue.extend(engine.a_mut().offline_step().expect("precomputation"));
                }
            }
            let round = round.expect("A sends the first round");
            // A slot past its guard bits, or a masked value past the
            // honest range.
            match engine.b_mut().handle(round.envelope) {
                Err(_) => by_b += 1,
                Ok(_) => passed += 1,
            }
        }
        println!(
            "x̂ beyond its range by 2^(k+{excess}): refused by A {by_a}, by B {by_b}, served {passed} of 40"
        );
        // The checks are statistical (see `ServerB::on_round`): mild
        // excesses mostly pass, large ones mostly do not, extreme ones never.
        let most = match excess {
            20 => 4,
            e if e >= params.sigma - 2 => 0,
            _ => 40,
        };
        assert!(
            passed <= most,
            "{passed} of 40 inputs 2^(k+{excess}) past the range were served"
        );
    }
}

#[test]
fn a_repeated_round_that_differs_is_refused() {
    // Two different rounds under one μ would give A the difference of two
    // answers: B answers a repeat only if it decrypts to the same values.
    let mut engine = fresh("pima-mlp");
    let x = x_hat("pima-mlp");
    let (_, round) = started_frame(&mut engine, &x, 80);
    engine
        .b_mut()
        .handle(round.envelope.clone())
        .expect("B answers");
    let Body::Round(r) = &round.envelope.body else {
        panic!("a round")
    };
    let plain = Plain::default();
    let mut changed = r.clone();
    let Ok(veil_protocol::PlainCt::Packed {
        value_bits,
        mut values,
    }) = plain.decode(&r.masked[0])
    else {
        panic!("packed masked values")
    };
    values[0] += 1;
    changed.masked[0] = plain.encode(&veil_protocol::PlainCt::Packed { value_bits, values });
    let outcome = engine.b_mut().handle(Envelope {
        body: Body::Round(changed),
        ..round.envelope.clone()
    });
    let err = outcome.expect_err("a different round under the same masks");
    assert_eq!(err.code(), RejectCode::Refused, "{err:?}");
    // The genuine round, repeated, is still answered.
    engine
        .b_mut()
        .handle(round.envelope.clone())
        .expect("the same round again");
}

/// The parameters refuse a topology whose widest round value (the blind
/// comparisons β·d + γ, under 2^(κ+β+e) for a one-entry group, with its
/// reply mask's σ bits) would not
/// fit the working width, and no topology whose values do: a bound one bit
/// under the limit passes, one bit over is refused.
#[test]
fn parameters_refuse_exactly_the_bounds_whose_round_values_do_not_fit() {
    let params = Params::default();
    let mut topology = model("pima-mlp").topology().clone();
    assert!(params.check(&topology).is_ok());
    // Blind comparisons of a ReLU stage: κ + β_bits + (β_log_range − 1) + σ.
    let fits = veil_protocol::MAX_VALUE_BITS
        - params.beta_bits
        - (params.beta_log_range - 1)
        - params.sigma;
    let set = |topology: &mut veil_model::Topology, bits: u32| {
        if let Some(veil_model::Stage::Linear(l)) = topology.stages.first_mut() {
            l.output_bound_bits = bits;
        }
    };
    set(&mut topology, fits);
    assert!(params.check(&topology).is_ok(), "κ = {fits} fits");
    set(&mut topology, fits + 1);
    assert!(
        matches!(
            params.check(&topology),
            Err(ProtocolError::NoRoomForMasks { stage: 1, .. })
        ),
        "κ = {} does not",
        fits + 1
    );
}
