//! Garbage and forged messages published by raw MQTT clients are refused
//! and logged by both servers (and the device hears why), while the
//! service keeps answering a well-behaved device.
#![allow(clippy::unwrap_used)] // a test: a panic is its failure report

use veil_e2e::*;
use veil_edge_agent::Output;
use veil_protocol::{Body, Envelope, Frame, SessionId};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_payloads_are_refused_and_service_continues() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker("127.0.0.1:0".parse().unwrap()).await;
    let addr = broker.local_addr();
    let mut servers = Servers::new(dir.path(), "pima-mlp", addr);
    servers.start().await;
    let mut good = start_agent(agent_options(dir.path(), "devB", addr, servers.pins())).await;
    let rows = pima_rows();
    good.capture(&rows[0].0, None).unwrap();
    collect(&mut good, 1).await;

    let mut evil = Raw::connect(addr, "devA", "evil-devA").await;
    evil.subscribe("veil/v1/dev/devA/result").await;
    let garbage = vec![0xff, 0x00, 0x13, 0x37, 0xde, 0xad];
    evil.publish("veil/v1/dev/devA/frame", garbage.clone())
        .await;
    evil.publish("veil/v1/dev/devA/session/a", garbage.clone())
        .await;
    evil.publish("veil/v1/dev/devA/session/b", garbage.clone())
        .await;
    evil.publish("veil/v1/dev/devA/ack", garbage.clone()).await;
    // Well-formed, but claiming to be devB on devA's own session topic
    // (frames carry no name: their topic is the device's).
    let forged = Envelope::new("devB", SessionId([7; 16]), 3, Body::Sync)
        .to_bytes()
        .unwrap();
    evil.publish("veil/v1/dev/devA/session/a", forged).await;
    // A frame that cannot fit the model, for a session nobody knows: refused
    // at once, before A stores or parks it. (A well-shaped frame for an
    // unknown session is parked, and only refused after the park timeout.)
    let misshapen = Envelope::new(
        "devA",
        SessionId([8; 16]),
        4,
        Body::Frame(Frame {
            acks: Vec::new(),
            values: vec![0; 100_000],
        }),
    )
    .to_device_bytes()
    .unwrap();
    evil.publish("veil/v1/dev/devA/frame", misshapen).await;

    let mut rogue_a = Raw::connect(addr, "server-a", "rogue-a").await;
    rogue_a.publish("veil/v1/ab/a1", garbage.clone()).await;
    let mut rogue_b = Raw::connect(addr, "server-b", "rogue-b").await;
    rogue_b.publish("veil/v1/ba/a1", garbage).await;

    let a = || servers.a.as_ref().unwrap().stats().rejected;
    let b = || servers.b.as_ref().unwrap().stats().rejected;
    wait_until(
        "A to refuse the frame, the session, the forgery, the misshapen frame and B's garbage",
        || a() >= 5,
    )
    .await;
    wait_until("B to refuse the session, the ack and A's garbage", || {
        b() >= 3
    })
    .await;
    let logs = logs();
    assert!(logs.contains("rejected frame"), "A logs its refusals");
    assert!(
        logs.contains("rejected session"),
        "both servers log refused sessions"
    );
    assert!(logs.contains("rejected ack"), "B logs its refusals");

    assert_eq!(
        servers.a.as_ref().unwrap().stats().frames,
        1,
        "only the good device's frame was stored"
    );

    // The device hears why (B directly, A through B): one refusal for each
    // of its six messages.
    let refusals = evil.expect_on("veil/v1/dev/devA/result", 6).await;
    for bytes in refusals {
        let env = Envelope::from_device_bytes("devA", &bytes).expect("a well-formed refusal");
        assert_eq!(env.device, "devA");
        assert!(matches!(env.body, Body::Reject { .. }), "{:?}", env.body);
    }

    // Service continues for the well-behaved device.
    for (x, _) in rows.iter().skip(1).take(4) {
        good.capture(x, None).unwrap();
    }
    for o in collect(&mut good, 4).await {
        assert!(matches!(o, Output::Result(_)), "{o:?}");
    }
    good.shutdown().await;
    servers.stop().await;
    broker.shutdown().await;
}
