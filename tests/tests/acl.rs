//! The ACL matrix of config/acl, end to end on the embedded broker: every
//! forbidden cell is tried, and each is checked against a canary message
//! that the same observer is allowed to get (so a silent observer proves
//! the refusal, not a broken connection).
#![allow(clippy::unwrap_used)] // a test: a panic is its failure report

use std::net::SocketAddr;

use veil_e2e::*;

/// `writer` publishes to `topic`, which it may not; `observer` (allowed to
/// read `topic`) must then see only the canary that `allowed` publishes
/// there.
async fn forbidden_write(
    addr: SocketAddr,
    writer: &str,
    topic: &str,
    observer: &str,
    allowed: &str,
) {
    let tag = format!("{writer}->{topic}");
    let mut obs = Raw::connect(addr, observer, &format!("obs-{tag}")).await;
    obs.subscribe(topic).await;
    let mut w = Raw::connect(addr, writer, &format!("w-{tag}")).await;
    w.publish(topic, b"forged".to_vec()).await;
    let mut ok = Raw::connect(addr, allowed, &format!("ok-{tag}")).await;
    ok.publish(topic, b"canary".to_vec()).await;
    let got = obs.expect_on(topic, 1).await;
    assert_eq!(
        got,
        vec![b"canary".to_vec()],
        "{writer} could publish to {topic}"
    );
}

/// `reader` subscribes to `topic`, which it may not read; `writer` (allowed)
/// publishes there, then `canary_writer` publishes on the reader's own
/// `canary` topic. The reader must get the canary only.
async fn forbidden_read(
    addr: SocketAddr,
    reader: &str,
    topic: &str,
    writer: &str,
    canary: &str,
    canary_writer: &str,
) {
    let tag = format!("{reader}<-{topic}");
    let mut r = Raw::connect(addr, reader, &format!("r-{tag}")).await;
    r.subscribe(topic).await;
    r.subscribe(canary).await;
    let mut w = Raw::connect(addr, writer, &format!("w-{tag}")).await;
    w.publish(topic, b"secret".to_vec()).await;
    let mut c = Raw::connect(addr, canary_writer, &format!("c-{tag}")).await;
    c.publish(canary, b"canary".to_vec()).await;
    let leaked = r.until_canary(canary).await;
    assert!(leaked.is_empty(), "{reader} read {topic}: {leaked:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_forbidden_cell_is_refused() {
    let broker = start_broker("127.0.0.1:0".parse().unwrap()).await;
    let addr = broker.local_addr();
    let dev = |d: &str, leaf: &str| format!("veil/v1/dev/{d}/{leaf}");

    // A device reads nothing of another device, nor the servers' channels.
    let a_result = dev("devA", "result");
    for (topic, writer) in [
        (dev("devB", "result"), "server-b"),
        (dev("devB", "frame"), "devB"),
        (dev("devB", "session/a"), "devB"),
        (dev("devB", "session/b"), "devB"),
        (dev("devB", "ack"), "devB"),
        ("veil/v1/ab/a1".to_string(), "server-a"),
        ("veil/v1/ba/a1".to_string(), "server-b"),
    ] {
        forbidden_read(addr, "devA", &topic, writer, &a_result, "server-b").await;
    }
    // ...and writes nothing under another device, nor as a server.
    for (topic, observer, allowed) in [
        (dev("devB", "frame"), "server-a", "devB"),
        (dev("devB", "session/a"), "server-a", "devB"),
        (dev("devB", "session/b"), "server-b", "devB"),
        (dev("devB", "ack"), "server-b", "devB"),
        (dev("devB", "result"), "devB", "server-b"),
        (dev("devA", "result"), "devA", "server-b"),
        ("veil/v1/ab/a1".to_string(), "server-b", "server-a"),
        ("veil/v1/ba/a1".to_string(), "server-a", "server-b"),
        ("veil/v1/pub/a/key".to_string(), "devB", "server-a"),
        ("veil/v1/pub/b/key".to_string(), "devB", "server-b"),
        (
            "veil/v1/pub/models/pima-mlp".to_string(),
            "devB",
            "server-a",
        ),
    ] {
        forbidden_write(addr, "devA", &topic, observer, allowed).await;
    }

    // Server A: not B's half of a session, not results, acks or its own
    // outgoing round topic; it writes neither results nor B's replies.
    let a_canary = dev("devA", "frame");
    for (topic, writer) in [
        (dev("devA", "session/b"), "devA"),
        (dev("devA", "result"), "server-b"),
        (dev("devA", "ack"), "devA"),
        ("veil/v1/ab/a1".to_string(), "server-a"),
    ] {
        forbidden_read(addr, "server-a", &topic, writer, &a_canary, "devA").await;
    }
    for (topic, observer, allowed) in [
        (dev("devA", "result"), "devA", "server-b"),
        ("veil/v1/ba/a1".to_string(), "server-a", "server-b"),
        (dev("devA", "session/b"), "server-b", "devA"),
        (dev("devA", "ack"), "server-b", "devA"),
        ("veil/v1/pub/b/key".to_string(), "devA", "server-b"),
    ] {
        forbidden_write(addr, "server-a", &topic, observer, allowed).await;
    }

    // Server B: not A's half of a session, not frames, not A's replies.
    let b_canary = dev("devA", "ack");
    for (topic, writer) in [
        (dev("devA", "session/a"), "devA"),
        (dev("devA", "frame"), "devA"),
        ("veil/v1/ba/a1".to_string(), "server-b"),
    ] {
        forbidden_read(addr, "server-b", &topic, writer, &b_canary, "devA").await;
    }
    for (topic, observer, allowed) in [
        ("veil/v1/ab/a1".to_string(), "server-b", "server-a"),
        (dev("devA", "frame"), "server-a", "devA"),
        (dev("devA", "session/a"), "server-a", "devA"),
        ("veil/v1/pub/a/key".to_string(), "devA", "server-a"),
        (
            "veil/v1/pub/models/pima-mlp".to_string(),
            "devA",
            "server-a",
        ),
    ] {
        forbidden_write(addr, "server-b", &topic, observer, allowed).await;
    }
    broker.shutdown().await;
}
