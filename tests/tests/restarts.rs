//! Server B restarted in the middle of a stream, then server A, then the
//! broker (which forgets every retained message and session): no frame and
//! no result is lost, none is delivered twice, and every result is still
//! exact.
#![allow(clippy::unwrap_used)] // a test: a panic is its failure report

use std::collections::BTreeMap;
use std::time::Duration;

use veil_e2e::*;
use veil_edge_agent::{EdgeAgent, Output};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_of_b_a_and_the_broker_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let broker = start_broker(addr).await;
    let mut servers = Servers::new(dir.path(), "pima-mlp", addr);
    servers.round_timeout = Duration::from_secs(3);
    servers.start().await;
    let mut options = agent_options(dir.path(), "devA", addr, servers.pins());
    options.resend_after = Duration::from_secs(3);
    let mut agent = start_agent(options).await;
    let rows = pima_rows();
    let mut inputs = BTreeMap::new();
    let mut outputs: Vec<Output> = Vec::new();
    let mut next = 0usize;
    let model = std::sync::Arc::clone(&servers.model);
    let mut capture = |agent: &EdgeAgent, n: usize| {
        for _ in 0..n {
            let (x, _) = &rows[next];
            next += 1;
            let t = agent.capture(x, None).expect("capture");
            inputs.insert(t, model.encode_input(x).unwrap());
        }
    };

    // A stream is running when B goes down (as in a crash) and comes back.
    capture(&agent, 8);
    outputs.extend(collect(&mut agent, 2).await);
    servers.b.take().unwrap().abort().await;
    capture(&agent, 4);
    servers.start_b().await;
    outputs.extend(collect(&mut agent, 4).await);

    // Then A.
    capture(&agent, 4);
    servers.a.take().unwrap().abort().await;
    capture(&agent, 4);
    servers.start_a().await;
    outputs.extend(collect(&mut agent, 4).await);

    // Then the broker, on the same address.
    capture(&agent, 4);
    broker.shutdown().await;
    capture(&agent, 4);
    let broker = start_broker(addr).await;
    let missing = inputs.len() - outputs.len();
    outputs.extend(collect(&mut agent, missing).await);
    wait_until("B's queue to drain", || {
        servers.b.as_ref().unwrap().stats().queued == 0
    })
    .await;
    while let Ok(Some(o)) = tokio::time::timeout(Duration::from_millis(300), agent.recv()).await {
        outputs.push(o);
    }

    let sid = agent.session().expect("session");
    let mut seen = BTreeMap::new();
    for o in &outputs {
        let Output::Result(r) = o else {
            panic!("not a result: {o:?}");
        };
        assert!(
            seen.insert(r.t, ()).is_none(),
            "frame {} delivered twice",
            r.t
        );
        assert_eq!(
            r.raw,
            servers.reference(&inputs[&r.t], sid, r.t),
            "frame {}",
            r.t
        );
    }
    assert_eq!(seen.len(), inputs.len(), "a frame was lost");
    agent.shutdown().await;
    servers.stop().await;
    broker.shutdown().await;
}
