//! A device whose state folder is restored from an old copy (a VM snapshot,
//! an SD-card image) brings back an old counter mark and uses counters a
//! second time; because every agent start opens a fresh session, no
//! (session seed, counter) pair is ever used twice and every result is
//! still exact.
#![allow(clippy::unwrap_used)] // a test: a panic is its failure report

use std::collections::BTreeSet;
use std::path::Path;

use veil_e2e::*;
use veil_edge_agent::{EdgeAgent, Output};
use veil_protocol::SessionId;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_state_folder_never_reuses_a_seed_and_counter() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker("127.0.0.1:0".parse().unwrap()).await;
    let mut servers = Servers::new(dir.path(), "pima-mlp", broker.local_addr());
    servers.start().await;
    let options = agent_options(dir.path(), "devA", broker.local_addr(), servers.pins());
    let state = options.state_dir.clone();
    let snapshot = dir.path().join("snapshot");
    let rows = pima_rows();
    let model = std::sync::Arc::clone(&servers.model);

    // Three lives of the device: the first, the second, and the second
    // again from a copy of the folder taken between the two.
    let mut used: Vec<(SessionId, u64)> = Vec::new();
    let mut counters_per_life: Vec<BTreeSet<u64>> = Vec::new();
    for life in 0..3 {
        if life == 1 {
            copy_dir(&state, &snapshot);
        }
        if life == 2 {
            std::fs::remove_dir_all(&state).unwrap();
            copy_dir(&snapshot, &state);
        }
        let mut agent: EdgeAgent = start_agent(options.clone()).await;
        let mut inputs = std::collections::BTreeMap::new();
        for (x, _) in rows.iter().skip(2 * life).take(2) {
            let t = agent.capture(x, None).expect("capture");
            inputs.insert(t, model.encode_input(x).unwrap());
        }
        let mut counters = BTreeSet::new();
        for o in collect(&mut agent, 2).await {
            let Output::Result(r) = o else {
                panic!("not a result: {o:?}");
            };
            let sid = SessionId::from_hex(&r.session).expect("a session id");
            assert_eq!(r.raw, servers.reference(&inputs[&r.t], sid, r.t));
            used.push((sid, r.t));
            counters.insert(r.t);
        }
        counters_per_life.push(counters);
        agent.shutdown().await;
    }
    assert!(
        !counters_per_life[1].is_disjoint(&counters_per_life[2]),
        "the restored folder reused counters: {counters_per_life:?}"
    );
    let distinct: BTreeSet<_> = used.iter().collect();
    assert_eq!(
        distinct.len(),
        used.len(),
        "a (session, counter) pair was used twice: {used:?}"
    );
    servers.stop().await;
    broker.shutdown().await;
}
