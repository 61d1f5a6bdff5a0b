//! The session rules of both server nodes (node/sessions.rs): the
//! per-device quota retires the least recently used session, an unused
//! session expires after the TTL on the node's clock, a restart decrypts
//! only live sessions, a device over its opening rate is refused before
//! decryption, and a frame for a forgotten session comes back to the
//! device as `UnknownSession`, on which the device sends the session
//! again.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use rand::SeedableRng;
use rand::rngs::ChaCha20Rng;
use veil_model::CompiledModel;
use veil_paillier::SecretKey;
use veil_paillier::fixtures::{key_2048_a, key_2048_b};
use veil_protocol::node::{
    AEvent, ANote, AOptions, BEvent, BNote, BOptions, DeviceDurable, DeviceEvent, DeviceNode,
    DeviceOptions, Input, Millis, ServerANode, ServerBNode, SessionLimits, StoredSession, Transmit,
};
use veil_protocol::{
    Body, Device, DeviceConfig, Envelope, Params, Plain, RejectCode, Seed, ServerA, ServerAConfig,
    ServerB, ServerBConfig, SessionId, topics,
};

struct Fixture {
    model: CompiledModel,
    a_key: Arc<SecretKey>,
    b_key: Arc<SecretKey>,
}

fn fixture() -> &'static Fixture {
    static CELL: OnceLock<Fixture> = OnceLock::new();
    CELL.get_or_init(|| {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/pima-mlp.plan");
        let copy = |k: &SecretKey| Arc::new(SecretKey::from_bytes(&k.to_bytes()).expect("copy"));
        Fixture {
            model: CompiledModel::load(&path).expect("pima-mlp plan"),
            a_key: copy(key_2048_b()),
            b_key: copy(key_2048_a()),
        }
    })
}

fn device_config(name: &str) -> DeviceConfig {
    let fx = fixture();
    DeviceConfig {
        device: name.into(),
        params: Params::default(),
        topology: Arc::new(fx.model.topology().clone()),
        server_a: fx.a_key.public_key().clone(),
        server_b: fx.b_key.public_key().clone(),
    }
}

fn node_a(sessions: SessionLimits) -> ServerANode<Plain> {
    let fx = fixture();
    let machine = ServerA::new(
        ServerAConfig {
            params: Params::default(),
            topology: Arc::new(fx.model.topology().clone()),
            plan: Arc::new(fx.model.plan().clone()),
            key: Arc::clone(&fx.a_key),
            rounding_key: Seed::from_bytes([42; 32]),
        },
        Plain::default(),
    )
    .expect("server A");
    let options = AOptions {
        sessions,
        ..AOptions::default()
    };
    ServerANode::new(machine, options, Vec::new())
}

fn node_b(sessions: SessionLimits) -> ServerBNode<Plain> {
    let fx = fixture();
    let machine = ServerB::new(
        ServerBConfig {
            params: Params::default(),
            topology: Arc::new(fx.model.topology().clone()),
            key: Arc::clone(&fx.b_key),
        },
        Plain::default(),
    )
    .expect("server B");
    let options = BOptions {
        sessions,
        ..BOptions::default()
    };
    ServerBNode::new(machine, options, Vec::new())
}

/// A fresh session of `device`: its id and its messages to A and to B.
fn open(device: &str, seed: u64) -> (SessionId, Vec<u8>, Vec<u8>) {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut dev = Device::new(device_config(device)).expect("device");
    let [to_a, to_b] = dev.open_session(0, &mut rng).expect("session");
    let sid = to_a.envelope.sid;
    (
        sid,
        to_a.envelope.to_bytes().expect("encodes"),
        to_b.envelope.to_bytes().expect("encodes"),
    )
}

/// devA's node, connected, and a Pima frame within the model's bounds.
fn connected_device(seed: u8) -> (DeviceNode, Vec<i64>) {
    let fx = fixture();
    let mut dev = DeviceNode::restore(
        device_config("devA"),
        DeviceOptions::default(),
        DeviceDurable::default(),
        [seed; 32],
    )
    .expect("device node");
    dev.handle(0, Input::Connected);
    let rows =
        veil_model::data::load_pima(&veil_model::data::workspace_data_dir().join("pima-test.csv"))
            .expect("the Pima test set");
    let x_hat = rows
        .features
        .iter()
        .find_map(|f| fx.model.encode_input(f).ok())
        .expect("a row within the model's bounds");
    (dev, x_hat)
}

fn message(topic: String, payload: Vec<u8>) -> Input {
    Input::Message {
        topic,
        payload: payload.into(),
    }
}

fn b_events(node: &mut ServerBNode<Plain>) -> Vec<BEvent> {
    std::iter::from_fn(|| node.poll_event()).collect()
}

fn a_events(node: &mut ServerANode<Plain>) -> Vec<AEvent> {
    std::iter::from_fn(|| node.poll_event()).collect()
}

fn b_transmits(node: &mut ServerBNode<Plain>) -> Vec<Transmit> {
    std::iter::from_fn(|| node.poll_transmit()).collect()
}

fn a_transmits(node: &mut ServerANode<Plain>) -> Vec<Transmit> {
    std::iter::from_fn(|| node.poll_transmit()).collect()
}

fn forgotten_b(events: &[BEvent]) -> Vec<SessionId> {
    events
        .iter()
        .filter_map(|e| match e {
            BEvent::ForgetSession { sid } => Some(*sid),
            _ => None,
        })
        .collect()
}

fn count_b(events: &[BEvent], note: BNote) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, BEvent::Note(n) if *n == note))
        .count()
}

/// The refusal code of an envelope, if it is one.
/// A refusal's session, counter and code. Refusals on a device's result
/// topic travel in the device's compact encoding, the others as whole
/// envelopes.
fn reject_code(topic: &str, payload: &[u8]) -> Option<(SessionId, u64, RejectCode)> {
    let device = topic
        .strip_prefix("veil/v1/dev/")
        .and_then(|rest| rest.strip_suffix("/result"));
    let env = match device {
        Some(device) => Envelope::from_device_bytes(device, payload).ok()?,
        None => Envelope::from_bytes(payload).ok()?,
    };
    match env.body {
        Body::Reject { code, .. } => Some((env.sid, env.t, code)),
        _ => None,
    }
}

const MINUTE: Millis = 60_000;

fn limits(max_per_device: usize, ttl: Millis) -> SessionLimits {
    SessionLimits {
        max_per_device,
        ttl,
        max_opens_per_minute: 0,
    }
}

/// Hands devA the one refusal B relays on its result topic, at `now`.
fn relay_one_refusal(b: &mut ServerBNode<Plain>, dev: &mut DeviceNode, now: Millis) {
    let relayed: Vec<Transmit> = b_transmits(b)
        .into_iter()
        .filter(|m| m.topic == topics::result("devA"))
        .collect();
    assert_eq!(relayed.len(), 1, "B relays the refusal to devA");
    for m in relayed {
        dev.handle(now, message(m.topic, m.payload));
    }
}

#[test]
fn opening_past_the_quota_retires_the_least_recently_used_session() {
    let mut b = node_b(limits(2, 30 * 24 * 3600 * 1000));
    let sessions: Vec<_> = (0..3).map(|i| open("devA", i)).collect();
    let topic = topics::session("devA", 'b');
    b.handle(0, message(topic.clone(), sessions[0].2.clone()));
    b.handle(MINUTE, message(topic.clone(), sessions[1].2.clone()));
    // Session 0 is used again (A asks B for masks under it): session 1 is
    // now the least recently used.
    let request = Envelope::new("devA", sessions[0].0, 0, Body::MaskRequest { count: 1 });
    b.handle(
        2 * MINUTE,
        message(topics::a_to_b("a1"), request.to_bytes().expect("encodes")),
    );
    assert!(forgotten_b(&b_events(&mut b)).is_empty());
    b_transmits(&mut b);
    // Another device's sessions do not count against devA.
    b.handle(
        3 * MINUTE,
        message(topics::session("devB", 'b'), open("devB", 9).2),
    );
    b.handle(4 * MINUTE, message(topic, sessions[2].2.clone()));
    let events = b_events(&mut b);
    assert_eq!(forgotten_b(&events), vec![sessions[1].0]);
    assert_eq!(count_b(&events, BNote::SessionRetired), 1);

    // A's message for the retired session is refused at once, to A and to
    // the device (which then sends the session again).
    let round = Envelope::new("devA", sessions[1].0, 0, Body::MaskRequest { count: 1 });
    b.handle(
        5 * MINUTE,
        message(topics::a_to_b("a1"), round.to_bytes().expect("encodes")),
    );
    let refusals: Vec<(String, RejectCode)> = b_transmits(&mut b)
        .into_iter()
        .filter_map(|t| Some((t.topic.clone(), reject_code(&t.topic, &t.payload)?.2)))
        .collect();
    assert_eq!(
        refusals,
        vec![
            (topics::b_to_a("a1"), RejectCode::UnknownSession),
            (topics::result("devA"), RejectCode::UnknownSession),
        ]
    );
}

#[test]
fn an_unused_session_expires_after_the_ttl_on_the_node_clock() {
    let ttl = 10 * MINUTE;
    let mut a = node_a(limits(4, ttl));
    let (sid, to_a, _) = open("devA", 1);
    a.handle(1_000, message(topics::session("devA", 'a'), to_a));
    a_events(&mut a);
    a_transmits(&mut a);
    assert_eq!(a.poll_timeout(), Some(1_000 + ttl));
    a.handle_timeout(1_000 + ttl - 1);
    assert!(
        !a_events(&mut a)
            .iter()
            .any(|e| matches!(e, AEvent::ForgetSession { .. }))
    );
    a.handle_timeout(1_000 + ttl);
    let events = a_events(&mut a);
    assert!(events.contains(&AEvent::ForgetSession { sid }));
    assert!(events.contains(&AEvent::Note(ANote::SessionExpired)));
    assert_eq!(a.load().0, 0);
    assert_eq!(a.poll_timeout(), None);
}

#[test]
fn a_device_over_its_opening_rate_is_refused_before_decryption() {
    let mut b = node_b(SessionLimits {
        max_per_device: 100,
        ttl: 30 * 24 * 3600 * 1000,
        max_opens_per_minute: 3,
    });
    let topic = topics::session("devA", 'b');
    for i in 0..5 {
        b.handle(i * 1_000, message(topic.clone(), open("devA", i).2));
    }
    let events = b_events(&mut b);
    assert_eq!(count_b(&events, BNote::Session), 3);
    assert_eq!(count_b(&events, BNote::SessionThrottled), 2);
    let refused: Vec<RejectCode> = events
        .iter()
        .filter_map(|e| match e {
            BEvent::Refused(r) => Some(r.code),
            _ => None,
        })
        .collect();
    assert_eq!(refused, vec![RejectCode::TooManySessions; 2]);
    // A minute after the first, the device may open again.
    b.handle(MINUTE, message(topic, open("devA", 7).2));
    assert_eq!(count_b(&b_events(&mut b), BNote::Session), 1);
}

#[test]
fn a_restart_decrypts_only_the_live_sessions() {
    let ttl = 24 * 3600 * 1000;
    let limits = limits(2, ttl);
    let mut b = node_b(limits.clone());
    // 4 devices, 5 sessions each, a day apart per round: what a server
    // that pruned nothing would hold after 5 restarts of every device.
    let mut store: Vec<StoredSession> = Vec::new();
    let mut now = 0;
    for round in 0..5u64 {
        for d in 0..4u64 {
            let device = format!("dev{d}");
            now = round * ttl + d;
            let (_, _, to_b) = open(&device, round * 10 + d);
            b.handle(now, message(topics::session(&device, 'b'), to_b));
        }
        for event in b_events(&mut b) {
            match event {
                BEvent::PersistSession {
                    sid,
                    device,
                    envelope,
                    opened,
                } => store.push(StoredSession {
                    sid,
                    device,
                    opened,
                    used: opened,
                    envelope,
                }),
                BEvent::ForgetSession { sid } => store.retain(|s| s.sid != sid),
                _ => {}
            }
        }
    }
    // The node kept its own rules while running: 2 per device.
    assert_eq!(store.len(), 8);
    // A store from before the rules holds every session ever opened: the
    // 12 missing ones come back as they were, and their seeds are made
    // undecryptable, so that any attempt to load one would be refused.
    for round in 0..3u64 {
        for d in 0..4u64 {
            let (sid, _, to_b) = open(&format!("dev{d}"), round * 10 + d);
            let mut envelope = to_b;
            envelope.truncate(8);
            store.push(StoredSession {
                sid,
                device: format!("dev{d}"),
                opened: round * ttl + d,
                used: round * ttl + d,
                envelope,
            });
        }
    }
    assert_eq!(store.len(), 20);

    // Restart the next morning: of each device's two, the older (a day
    // and a half unused) has expired.
    let restart = now + ttl / 2;
    // What the broker still holds, retained, for dev0: a session that is
    // dead by now.
    let stale = store
        .iter()
        .find(|s| s.device == "dev0" && s.used == 3 * ttl)
        .map(|s| (s.sid, s.envelope.clone()))
        .expect("dev0's fourth session is stored");
    let mut restarted = node_b(limits);
    restarted.restore(restart, store, Vec::new(), Vec::new(), Vec::new());
    let events = b_events(&mut restarted);
    let decrypted = count_b(&events, BNote::Session);
    let pruned = count_b(&events, BNote::SessionPruned);
    assert_eq!((decrypted, pruned), (4, 16));
    assert_eq!(forgotten_b(&events).len(), 16);
    assert!(
        !events.iter().any(|e| matches!(e, BEvent::Refused(_))),
        "a dead session was read: {events:?}"
    );
    eprintln!("restart with 20 stored sessions, 16 dead: {decrypted} decryptions (before: 20)");

    // The broker redelivers the dead session's retained message on
    // (re)subscription: not taken back (nor decrypted) until a message
    // for that session asks for it.
    restarted.handle(
        restart + 1,
        message(topics::session("dev0", 'b'), stale.1.clone()),
    );
    assert_eq!(count_b(&b_events(&mut restarted), BNote::Session), 0);
    let request = Envelope::new("dev0", stale.0, 0, Body::MaskRequest { count: 1 });
    restarted.handle(
        restart + 2,
        message(topics::a_to_b("a1"), request.to_bytes().expect("encodes")),
    );
    let told: Vec<Option<(SessionId, u64, RejectCode)>> = b_transmits(&mut restarted)
        .iter()
        .map(|t| reject_code(&t.topic, &t.payload))
        .collect();
    assert_eq!(
        told,
        vec![Some((stale.0, 0, RejectCode::UnknownSession)); 2]
    );
    restarted.handle(restart + 3, message(topics::session("dev0", 'b'), stale.1));
    assert_eq!(count_b(&b_events(&mut restarted), BNote::Session), 1);
}

#[test]
fn a_frame_of_a_forgotten_session_makes_the_device_send_it_again() {
    let mut a = node_a(limits(1, 30 * 24 * 3600 * 1000));
    let mut b = node_b(limits(4, 30 * 24 * 3600 * 1000));
    let (mut dev, x_hat) = connected_device(3);
    let (sid, t) = dev.capture(0, &x_hat, None).expect("captured");
    let sent: Vec<Transmit> = std::iter::from_fn(|| dev.poll_transmit()).collect();
    // The broker acknowledges what it got.
    for token in sent.iter().filter_map(|m| m.confirm) {
        dev.handle(5, Input::Confirmed(token));
    }
    let on = |topic: &str| -> Vec<u8> {
        sent.iter()
            .find(|m| m.topic == topic)
            .map(|m| m.payload.clone())
            .unwrap_or_else(|| panic!("nothing sent on {topic}"))
    };
    let (to_a, to_b, frame) = (
        on(&topics::session("devA", 'a')),
        on(&topics::session("devA", 'b')),
        on(&topics::frame("devA")),
    );
    a.handle(10, message(topics::session("devA", 'a'), to_a.clone()));
    b.handle(10, message(topics::session("devA", 'b'), to_b));
    a.handle(20, message(topics::frame("devA"), frame.clone()));
    assert!(
        a_events(&mut a).iter().any(
            |e| matches!(e, AEvent::PersistFrame { sid: s, t: n, .. } if *s == sid && *n == t)
        )
    );
    a_transmits(&mut a);
    b_transmits(&mut b);

    // Another session of devA (a restart elsewhere, or an attacker holding
    // devA's password) takes A's only slot: the frame's session is retired
    // and the frame refused as of an unknown session, through B.
    a.handle(
        30,
        message(topics::session("devA", 'a'), open("devA", 99).1),
    );
    let events = a_events(&mut a);
    assert!(events.contains(&AEvent::ForgetSession { sid }));
    assert!(events.contains(&AEvent::ForgetFrame { sid, t }));
    let to_b_refusals: Vec<Transmit> = a_transmits(&mut a)
        .into_iter()
        .filter(|m| reject_code(&m.topic, &m.payload) == Some((sid, t, RejectCode::UnknownSession)))
        .collect();
    assert_eq!(to_b_refusals.len(), 1);
    for m in to_b_refusals {
        b.handle(40, message(m.topic, m.payload));
    }
    // The device sends the session again, then the frame.
    relay_one_refusal(&mut b, &mut dev, 50);
    let again: Vec<Transmit> = std::iter::from_fn(|| dev.poll_transmit()).collect();
    let session_again = again
        .iter()
        .find(|m| m.topic == topics::session("devA", 'a'))
        .expect("session message sent again");
    assert!(again.iter().any(|m| m.topic == topics::frame("devA")));
    assert!(
        !std::iter::from_fn(|| dev.poll_event()).any(|e| matches!(e, DeviceEvent::Refused { .. })),
        "the device gave the frame up"
    );
    // A takes the session afresh and the frame with it.
    a.handle(
        60,
        message(topics::session("devA", 'a'), session_again.payload.clone()),
    );
    a.handle(70, message(topics::frame("devA"), frame));
    let events = a_events(&mut a);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, AEvent::PersistSession { sid: s, .. } if *s == sid))
    );
    assert!(
        events.iter().any(
            |e| matches!(e, AEvent::PersistFrame { sid: s, t: n, .. } if *s == sid && *n == t)
        )
    );
}

/// Every waiting frame of a session the servers lost goes out again, in
/// counter order: the refusal of an earlier frame can be lost, and a later
/// frame that reached A first would make A refuse the earlier one as
/// already processed (found by the simulator, seed 774).
#[test]
fn a_lost_session_sends_every_waiting_frame_again_in_counter_order() {
    let mut b = node_b(limits(4, 30 * 24 * 3600 * 1000));
    let (mut dev, x_hat) = connected_device(7);
    let mut frames = Vec::new();
    let mut sid = None;
    for (now, _) in (0..2).map(|i| (i * 10, i)) {
        let (s, _) = dev.capture(now, &x_hat, None).expect("captured");
        sid = Some(s);
        for m in std::iter::from_fn(|| dev.poll_transmit()).collect::<Vec<_>>() {
            if m.topic == topics::frame("devA") {
                frames.push(m.payload.clone());
            }
            if let Some(token) = m.confirm {
                dev.handle(now + 5, Input::Confirmed(token));
            }
        }
    }
    let sid = sid.expect("a session");
    assert_eq!(frames.len(), 2, "both frames went out");
    // A refuses frame 1 as of an unknown session; its refusal of frame 0
    // is lost.
    let refusal = Envelope::new(
        "devA",
        sid,
        1,
        Body::Reject {
            code: RejectCode::UnknownSession,
            detail: "unknown session".into(),
        },
    );
    b.handle(
        30,
        message(topics::a_to_b("a1"), refusal.to_bytes().expect("encodes")),
    );
    relay_one_refusal(&mut b, &mut dev, 40);
    let mut again = Vec::new();
    for _ in 0..4 {
        for m in std::iter::from_fn(|| dev.poll_transmit()).collect::<Vec<_>>() {
            if m.topic == topics::frame("devA") {
                again.push(m.payload.clone());
            }
            if let Some(token) = m.confirm {
                dev.handle(50, Input::Confirmed(token));
            }
        }
    }
    assert_eq!(again, frames, "frames 0 and 1 again, in that order");
}

/// A's precomputation is a whole frame's offline work (tens of
/// milliseconds on pima-mlp): begun while B works on a round, it would hold
/// up the handling of B's reply by all of it. The node offers it only when
/// no frame has a round out, when a frame waits for it, or when its session
/// has no masks ready for the next frame.
#[test]
fn precomputation_waits_while_a_frame_has_a_round_out_at_b() {
    let day = 24 * 3600 * 1000;
    let mut a = node_a(limits(4, day));
    let mut b = node_b(limits(4, day));
    let (mut dev, x_hat) = connected_device(5);
    let (_, t) = dev.capture(0, &x_hat, None).expect("captured");
    let sent: Vec<Transmit> = std::iter::from_fn(|| dev.poll_transmit()).collect();
    let on = |topic: &str| -> Vec<u8> {
        sent.iter()
            .find(|m| m.topic == topic)
            .map(|m| m.payload.clone())
            .unwrap_or_else(|| panic!("nothing sent on {topic}"))
    };
    a.handle(
        10,
        message(
            topics::session("devA", 'a'),
            on(&topics::session("devA", 'a')),
        ),
    );
    b.handle(
        10,
        message(
            topics::session("devA", 'b'),
            on(&topics::session("devA", 'b')),
        ),
    );
    // A asks B for masks; B's supplies: the frame's own first, the later
    // counters' held back.
    b_transmits(&mut b);
    for m in a_transmits(&mut a) {
        b.handle(15, message(m.topic, m.payload));
    }
    let (own, later): (Vec<Transmit>, Vec<Transmit>) = b_transmits(&mut b)
        .into_iter()
        .filter(|m| m.topic != topics::result("devA"))
        .partition(|m| {
            Envelope::from_bytes(&m.payload)
                .is_ok_and(|e| e.t == t && matches!(e.body, Body::MaskSupply { .. }))
        });
    assert_eq!(own.len(), 1, "one supply for the frame's counter");
    assert!(!later.is_empty(), "B supplies counters ahead");
    for m in own {
        a.handle(20, message(m.topic, m.payload));
    }
    assert!(a.has_work(), "the frame's masks wait for precomputation");
    while a.has_work() {
        a.work(25);
    }
    a_transmits(&mut a);

    // The frame goes out to B for its first round; the later counters'
    // supplies arrive meanwhile.
    a.handle(
        30,
        message(topics::frame("devA"), on(&topics::frame("devA"))),
    );
    let mut to_b: Vec<Transmit> = a_transmits(&mut a)
        .into_iter()
        .filter(|m| m.topic != topics::result("devA"))
        .collect();
    assert!(!to_b.is_empty(), "the frame's first round");
    // The next counter's supply: the session has nothing else ready, so
    // its precomputation goes ahead even with the round out.
    let mut later = later.into_iter();
    let next = later.next().expect("a later counter");
    a.handle(34, message(next.topic, next.payload));
    assert!(
        a.has_work(),
        "a session with no masks ready was left waiting for the round"
    );
    while a.has_work() {
        a.work(34);
    }
    // Further counters: one is ready, so theirs wait for the round.
    let rest: Vec<Transmit> = later.collect();
    assert!(!rest.is_empty(), "B supplies more than two counters ahead");
    for m in rest {
        a.handle(35, message(m.topic, m.payload));
    }
    assert!(
        a.machine().has_offline_work(),
        "the later counters' masks are raw"
    );
    assert!(!a.has_work(), "precomputation offered while a round is out");

    // Round trips until the result: no precomputation offered while a
    // round is out (once the output is sent, A is done with the frame).
    let mut now = 40;
    let mut result = false;
    let mut rounds_out = 0;
    while !to_b.is_empty() {
        if a.machine().has_frame_in_round() {
            rounds_out += 1;
            assert!(!a.has_work(), "precomputation offered between rounds");
        }
        for m in to_b.drain(..) {
            now += 1;
            b.handle(now, message(m.topic, m.payload));
        }
        for m in b_transmits(&mut b) {
            if m.topic == topics::result("devA") {
                result = true;
                continue;
            }
            now += 1;
            a.handle(now, message(m.topic, m.payload));
        }
        for m in a_transmits(&mut a) {
            if m.topic == topics::result("devA") {
                result = true;
            } else {
                to_b.push(m);
            }
        }
    }
    assert!(result, "the frame's result");
    assert!(
        rounds_out >= 2,
        "pima-mlp's two activation layers: {rounds_out} rounds"
    );
    assert!(
        a.has_work(),
        "with no round out, the later counters' precomputation is offered"
    );
}
