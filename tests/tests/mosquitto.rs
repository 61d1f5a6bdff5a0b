//! The same pipeline against a real Mosquitto started by the test with the
//! repository's config/acl and config/passwords: results still equal the
//! integer reference. Skipped (saying why) when no mosquitto binary is
//! installed, except in CI, where `.ci/run` installs it.
#![allow(clippy::unwrap_used)] // a test: a panic is its failure report

use veil_broker::mosquitto::Mosquitto;
use veil_e2e::*;
use veil_edge_agent::Output;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_runs_on_a_real_mosquitto() {
    init_logging();
    let Some(bin) = Mosquitto::find() else {
        if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
            panic!("CI must install mosquitto (apt-get install mosquitto)");
        }
        note_skip("no mosquitto binary (Debian: apt-get install mosquitto)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mosquitto = Mosquitto::start(
        &bin,
        &dir.path().join("mosquitto"),
        &repo("config/acl"),
        &repo("config/passwords"),
        PATIENCE,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let addr = mosquitto.addr();
    let mut servers = Servers::new(dir.path(), "pima-tanh", addr);
    servers.start().await;
    let mut options = agent_options(dir.path(), "devA", addr, servers.pins());
    options.model = "pima-tanh".into();
    let mut agent = start_agent(options).await;
    let rows: Vec<_> = pima_rows().into_iter().skip(40).take(10).collect();
    let mut inputs = std::collections::BTreeMap::new();
    for (x, _) in &rows {
        let t = agent.capture(x, None).unwrap();
        inputs.insert(t, servers.model.encode_input(x).unwrap());
    }
    let outputs = collect(&mut agent, rows.len()).await;
    let sid = agent.session().unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for o in outputs {
        let Output::Result(r) = o else {
            panic!("not a result: {o:?}");
        };
        assert!(seen.insert(r.t));
        assert_eq!(r.raw, servers.reference(&inputs[&r.t], sid, r.t));
    }
    assert_eq!(seen.len(), rows.len());
    agent.shutdown().await;
    servers.stop().await;
}
