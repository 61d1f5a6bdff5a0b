//! A device that loses its network gets every result once it is back:
//! frames in flight when it dropped off, frames captured while offline
//! (kept in the outbox across a reboot), none lost and none handed to the
//! application twice.
#![allow(clippy::unwrap_used)] // a test: a panic is its failure report

use std::collections::BTreeMap;
use std::time::Duration;

use veil_e2e::*;
use veil_edge_agent::{EdgeAgent, Output};
use veil_protocol::SessionId;

async fn drain(agent: &mut EdgeAgent, into: &mut Vec<Output>) {
    while let Ok(Some(o)) = tokio::time::timeout(Duration::from_millis(200), agent.recv()).await {
        into.push(o);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_device_gets_every_result_once_after_reconnecting() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker("127.0.0.1:0".parse().unwrap()).await;
    let mut servers = Servers::new(dir.path(), "pima-mlp", broker.local_addr());
    servers.start().await;
    let relay = Relay::start(broker.local_addr()).await;
    let mut options = agent_options(dir.path(), "devA", relay.addr, servers.pins());
    options.resend_after = Duration::from_secs(3);
    let rows = pima_rows();
    let mut inputs = BTreeMap::new();
    let mut outputs = Vec::new();

    let mut agent = start_agent(options.clone()).await;
    let mut capture = |agent: &EdgeAgent, i: usize| {
        let (x, _) = &rows[i];
        let t = agent
            .capture(x, None)
            .expect("capture never needs the network");
        inputs.insert(t, servers.model.encode_input(x).unwrap());
    };
    for i in 0..3 {
        capture(&agent, i);
    }
    outputs.extend(collect(&mut agent, 3).await);

    // Frames in flight when the network goes, then frames captured offline.
    for i in 3..6 {
        capture(&agent, i);
    }
    relay.set_online(false);
    for i in 6..10 {
        capture(&agent, i);
    }
    drain(&mut agent, &mut outputs).await;
    // A reboot while offline: the outbox and the sessions are on disk.
    agent.abort().await;
    let mut agent = start_agent(options.clone()).await;
    for i in 10..12 {
        capture(&agent, i);
    }
    assert!(agent.pending() >= 2, "captured frames wait in the outbox");

    relay.set_online(true);
    let missing = inputs.len() - outputs.len();
    outputs.extend(collect(&mut agent, missing).await);
    // Every acknowledgement reached B: nothing is left to redeliver, and
    // nothing more reaches the application.
    wait_until("B's queue to drain", || {
        servers.b.as_ref().unwrap().stats().queued == 0
    })
    .await;
    drain(&mut agent, &mut outputs).await;

    let mut seen = BTreeMap::new();
    for o in &outputs {
        let Output::Result(r) = o else {
            panic!("not a result: {o:?}");
        };
        assert!(
            seen.insert(r.t, ()).is_none(),
            "frame {} reached the application twice",
            r.t
        );
        // The reboot opened a new session: frames before it belong to the
        // old one.
        let sid = SessionId::from_hex(&r.session).expect("a session id");
        assert_eq!(
            r.raw,
            servers.reference(&inputs[&r.t], sid, r.t),
            "frame {}",
            r.t
        );
    }
    assert_eq!(seen.len(), inputs.len(), "every frame has its result");
    assert_eq!(agent.pending(), 0);
    agent.shutdown().await;
    servers.stop().await;
    broker.shutdown().await;
}
