//! A's new view: B answers every round with masked plaintexts `v + μ`.
//! A's best guesses of B's answers from them (which slot B selected, how
//! large the truncated value is) must be at chance. The plaintext backend
//! "encrypts" B's `[[-μ]]` as `-μ` itself, which lets the test read the
//! truth that A cannot.

mod common;

use common::{model, pima_rows, plain_engine};
use std::collections::HashMap;
use veil_protocol::{Body, I256, Params, Peer, Plain, PlainCt, PublicOps, RoundMode};

/// Balanced accuracy of `guess` for `truth`.
fn balanced(pairs: &[(bool, bool)]) -> f64 {
    let rate = |class: bool| {
        let members: Vec<_> = pairs.iter().filter(|(t, _)| *t == class).collect();
        let right = members.iter().filter(|(t, g)| t == g).count();
        right as f64 / members.len().max(1) as f64
    };
    (rate(true) + rate(false)) / 2.0
}

fn gcd(mut a: I256, mut b: I256) -> I256 {
    while b != I256::ZERO {
        (a, b) = (b, a % b);
    }
    a.abs()
}

fn median(values: &mut [I256]) -> I256 {
    values.sort();
    values[values.len() / 2]
}

#[test]
fn a_guesses_b_s_answers_from_the_masked_replies_at_chance() {
    let m = model("pima-mlp");
    let params = Params::default();
    let mut engine = plain_engine(&m, &params, 5);
    engine.record_transcript(true);
    let rows = pima_rows();
    for (x, _) in rows.iter().take(150) {
        engine
            .infer(&m.encode_input(x).expect("bounds"))
            .expect("runs");
    }
    let plain = Plain::default();
    let mut mu: HashMap<u64, Vec<I256>> = HashMap::new();
    let mut used: HashMap<u64, usize> = HashMap::new();
    let mut groups: HashMap<(u64, u16), (u32, RoundMode)> = HashMap::new();
    // (masked, true value) of every selection bit and every X.
    let mut bits = Vec::new();
    let mut xs = Vec::new();
    // Per group: its masked X and its slots' (masked -s, selected).
    let mut views: Vec<(I256, Vec<(I256, bool)>)> = Vec::new();
    for delivery in &engine.transcript {
        let envelope = delivery.envelope().expect("decodes");
        let t = envelope.t;
        match &envelope.body {
            Body::MaskSupply { replies, .. } => {
                let values = replies
                    .iter()
                    .map(|b| match plain.decode(b) {
                        Ok(PlainCt::Value(v)) => -v,
                        other => panic!("a plain mask: {other:?}"),
                    })
                    .collect();
                mu.insert(t, values);
            }
            Body::Round(r) if delivery.to == Peer::ServerB => {
                groups.insert((t, r.stage), (r.groups, r.mode));
            }
            Body::RoundReply { stage, items } => {
                let (count, mode) = groups[&(t, *stage)];
                assert_eq!(mode, RoundMode::Blind);
                let per_group = items.len() / count as usize;
                let offset = used.entry(t).or_insert(0);
                let masks = &mu[&t][*offset..*offset + items.len()];
                *offset += items.len();
                for (i, (bytes, m)) in items.iter().zip(masks).enumerate() {
                    let masked =
                        I256::from_le_bytes(bytes.as_slice().try_into().expect("32 bytes"));
                    let value = masked - *m;
                    if i % per_group == 0 {
                        xs.push((masked, value));
                        views.push((masked, Vec::new()));
                    } else {
                        assert!(value == 0 || value == -1, "a selection bit");
                        bits.push((masked, value == -1));
                        if let Some((_, slots)) = views.last_mut() {
                            slots.push((masked, value == -1));
                        }
                    }
                }
            }
            _ => {}
        }
    }
    assert!(bits.len() >= 2000, "{} selection bits", bits.len());
    assert!(xs.len() >= 2000, "{} truncated values", xs.len());
    let sigma = params.sigma;
    let guesses: [(&str, &dyn Fn(I256) -> bool); 4] = [
        ("parity", &|p| p & 1 == 1),
        ("two or more trailing zeros", &|p| p & 3 == 0),
        ("below half the mask range", &|p| p < I256::ONE << sigma),
        ("low byte below 128", &|p| p & 0xff < 128),
    ];
    for (name, guess) in guesses {
        let pairs: Vec<(bool, bool)> = bits.iter().map(|(p, s)| (*s, guess(*p))).collect();
        let score = balanced(&pairs);
        println!("selection bit from {name}: balanced accuracy {score:.3}");
        assert!((score - 0.5).abs() <= 0.03, "{name}: {score}");
    }
    // Within a group: the selected slot's value is one below the others'
    // before masking, so the smallest masked value is the careful guess;
    // and a factor shared with the group's masked X.
    let (mut hits, mut tries, mut chance) = (0usize, 0usize, 0f64);
    let mut shared = Vec::new();
    for (x, slots) in &views {
        if slots.iter().filter(|(_, s)| *s).count() == 1 {
            let guess = slots.iter().min_by_key(|(p, _)| *p).map(|(_, s)| *s);
            hits += usize::from(guess == Some(true));
            tries += 1;
            chance += 1.0 / slots.len() as f64;
        }
        for (p, s) in slots {
            shared.push((*s, gcd(*p, *x) > I256::ONE));
        }
    }
    assert!(tries >= 1000, "{tries} groups with one selected slot");
    let (rate, chance) = (hits as f64 / tries as f64, chance / tries as f64);
    println!("selected slot as the group's smallest masked value: {rate:.3} (chance {chance:.3})");
    assert!(
        (rate - chance).abs() <= 0.03,
        "smallest: {rate} against {chance}"
    );
    let score = balanced(&shared);
    println!("selection bit from a factor shared with X: balanced accuracy {score:.3}");
    assert!((score - 0.5).abs() <= 0.03, "gcd: {score}");

    let true_median = median(&mut xs.iter().map(|(_, v)| *v).collect::<Vec<_>>());
    let masked_median = median(&mut xs.iter().map(|(p, _)| *p).collect::<Vec<_>>());
    let pairs: Vec<(bool, bool)> = xs
        .iter()
        .map(|(p, v)| (*v > true_median, *p > masked_median))
        .collect();
    let score = balanced(&pairs);
    println!("X above its median from the masked value: balanced accuracy {score:.3}");
    assert!((score - 0.5).abs() <= 0.03, "X: {score}");
}
