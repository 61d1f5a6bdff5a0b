//! Over real MQTT (embedded broker, both servers, one edge agent), every
//! result equals the model's integer reference bit for bit: the plaintext
//! the protocol must reproduce, with A's truncation randomness.
#![allow(clippy::unwrap_used)] // a test: a panic is its failure report

use veil_e2e::*;
use veil_edge_agent::Output;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_equal_the_integer_reference() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker("127.0.0.1:0".parse().unwrap()).await;
    let mut servers = Servers::new(dir.path(), "pima-mlp", broker.local_addr());
    servers.start().await;
    let mut agent = start_agent(agent_options(
        dir.path(),
        "devA",
        broker.local_addr(),
        servers.pins(),
    ))
    .await;

    let rows: Vec<_> = pima_rows().into_iter().take(24).collect();
    let mut captured = Vec::new();
    for (x, label) in &rows {
        let t = agent.capture(x, Some(label.to_string())).expect("capture");
        captured.push((t, servers.model.encode_input(x).unwrap()));
    }
    let outputs = collect(&mut agent, rows.len()).await;
    let sid = agent.session().expect("a session");
    let mut seen = std::collections::BTreeSet::new();
    for output in outputs {
        let Output::Result(r) = output else {
            panic!("not a result: {output:?}");
        };
        assert!(seen.insert(r.t), "frame {} delivered twice", r.t);
        let (_, x_hat) = captured
            .iter()
            .find(|(t, _)| *t == r.t)
            .expect("a captured frame");
        assert_eq!(r.session, sid.to_hex());
        assert_eq!(
            r.raw,
            servers.reference(x_hat, sid, r.t),
            "frame {} differs from the reference",
            r.t
        );
    }
    assert_eq!(seen.len(), rows.len());
    let stats = agent.stats();
    assert_eq!(stats.results, rows.len() as u64);
    assert_eq!(stats.pending, 0);
    // Every result was acknowledged, so B's queue drains.
    wait_until("B's queue to drain", || {
        servers.b.as_ref().unwrap().stats().queued == 0
    })
    .await;
    agent.shutdown().await;
    servers.stop().await;
    broker.shutdown().await;
}
