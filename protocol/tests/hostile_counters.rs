//! Counters and list lengths are the sender's claims: values at the edge of
//! their types must be refused with a reason, never wrap or panic.
#![allow(clippy::unwrap_used)] // a test: a panic is its failure report

mod common;

use common::{model, plain_engine};
use veil_protocol::{
    Body, DecodeError, Engine, Envelope, MAX_LIST_ITEMS, MAX_MASK_REQUEST, Params, Plain,
    ProtocolError, SessionId,
};

fn fresh() -> (Engine<Plain, Plain>, Vec<i64>) {
    let m = model("pima-mlp");
    let row = common::pima_rows().into_iter().next().expect("a row").0;
    let x = m.encode_input(&row).expect("in bounds");
    let mut engine = plain_engine(&m, &Params::default(), 5);
    engine.infer(&x).expect("a first frame opens the session");
    (engine, x)
}

#[test]
fn frame_counters_at_the_top_of_u64_are_refused_not_wrapped() {
    let (mut engine, x) = fresh();
    let lookahead = Params::default().mask_lookahead;
    for t in [u64::MAX, u64::MAX - 1, u64::MAX - lookahead] {
        let frame = engine
            .device_mut()
            .mask_frame(&x, t, &[])
            .expect("device masks");
        let got = engine.a_mut().handle(frame.envelope);
        assert!(
            matches!(got, Err(ProtocolError::NoLookahead { .. })),
            "t = {t}: {got:?}"
        );
    }
    // The highest counter whose look-ahead still fits is served, and asks B
    // for exactly the counters up to u64::MAX.
    let t = u64::MAX - lookahead - 1;
    let frame = engine
        .device_mut()
        .mask_frame(&x, t, &[])
        .expect("device masks");
    let out = engine
        .a_mut()
        .handle(frame.envelope)
        .expect("A takes the frame");
    let request = out
        .iter()
        .find(|o| o.envelope.body.kind() == "mask-request")
        .expect("A asks B for masks");
    let Body::MaskRequest { count } = request.envelope.body else {
        unreachable!("checked by kind")
    };
    assert_eq!(request.envelope.t, t);
    assert_eq!(u64::from(count), lookahead + 1);
    // B serves a request that reaches past u64::MAX only below u64::MAX
    // (a range's end is exclusive, and no frame can use u64::MAX anyway).
    for (t, served) in [(u64::MAX - 1, vec![u64::MAX - 1]), (u64::MAX, vec![])] {
        let mut late = request.envelope.clone();
        late.t = t;
        late.body = Body::MaskRequest {
            count: MAX_MASK_REQUEST,
        };
        let supplies = engine.b_mut().handle(late).expect("B serves the request");
        let counters: Vec<u64> = supplies.iter().map(|o| o.envelope.t).collect();
        assert_eq!(counters, served, "request at {t}");
    }
}

fn supply(masks: Vec<Vec<u8>>) -> Vec<u8> {
    let replies = vec![vec![7u8]];
    Envelope::new(
        "devA",
        SessionId([1; 16]),
        3,
        Body::MaskSupply { masks, replies },
    )
    .to_bytes()
    .expect("encodes")
}

#[test]
fn byte_lists_refuse_empty_items_and_too_many_items() {
    let empty = supply(vec![Vec::new(); 1000]);
    let got = Envelope::from_bytes(&empty);
    assert!(
        matches!(got, Err(ProtocolError::Decode(DecodeError::Bincode(_)))),
        "{got:?}"
    );

    // One item past the limit is refused; the limit itself decodes below.
    let too_many = supply(vec![vec![7u8]; MAX_LIST_ITEMS + 1]);
    let got = Envelope::from_bytes(&too_many);
    assert!(
        matches!(got, Err(ProtocolError::Decode(DecodeError::Bincode(_)))),
        "{got:?}"
    );

    let most = supply(vec![vec![7u8]; MAX_LIST_ITEMS]);
    let Body::MaskSupply { masks, .. } = Envelope::from_bytes(&most).expect("decodes").body else {
        panic!("a mask supply")
    };
    assert_eq!(masks.len(), MAX_LIST_ITEMS);
}
