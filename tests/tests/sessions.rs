//! Session pruning across real restarts: a device restarted four times
//! holds at most the quota of sessions at each server, and a server
//! restarted once those sessions are dead decrypts none of them (before
//! the session rules it decrypted every session it had ever stored).
//! The device then opens a fresh session and gets exact results.
#![allow(clippy::unwrap_used)] // a test: a panic is its failure report

use std::time::Duration;

use veil_e2e::*;
use veil_edge_agent::Output;
use veil_protocol::SessionId;
use veil_protocol::node::SessionLimits;

async fn one_life(servers: &Servers, options: &veil_edge_agent::AgentOptions, row: &[f32]) {
    let mut agent = start_agent(options.clone()).await;
    let x_hat = servers.model.encode_input(row).expect("encodes");
    agent.capture(row, None).expect("capture");
    let outputs = collect(&mut agent, 1).await;
    let Some(Output::Result(r)) = outputs.first() else {
        panic!("not a result: {outputs:?}");
    };
    let sid = SessionId::from_hex(&r.session).expect("a session id");
    assert_eq!(r.raw, servers.reference(&x_hat, sid, r.t));
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_keep_the_quota_and_decrypt_no_dead_session_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker("127.0.0.1:0".parse().unwrap()).await;
    let mut servers = Servers::new(dir.path(), "pima-mlp", broker.local_addr());
    servers.sessions = SessionLimits {
        max_per_device: 2,
        ..SessionLimits::default()
    };
    servers.start().await;
    let options = agent_options(dir.path(), "devA", broker.local_addr(), servers.pins());
    let rows = pima_rows();

    // Four lives, four sessions: each server retires the two oldest.
    for (row, _) in rows.iter().take(4) {
        one_life(&servers, &options, row).await;
    }
    let a = servers.a.as_ref().unwrap().stats();
    let b = servers.b.as_ref().unwrap().stats();
    assert_eq!((a.sessions, a.sessions_retired), (4, 2), "{a:?}");
    assert_eq!((b.sessions, b.sessions_retired), (4, 2), "{b:?}");
    servers.stop().await;

    // A restart within the TTL decrypts the two live sessions.
    servers.start().await;
    let b = servers.b.as_ref().unwrap().stats();
    eprintln!(
        "restart, 2 live sessions stored: B decrypted {}, pruned {}",
        b.sessions, b.sessions_pruned
    );
    assert_eq!((b.sessions, b.sessions_pruned), (2, 0), "{b:?}");
    servers.stop().await;

    // Once they are dead (a TTL shorter than their age), a restart
    // deletes both without decrypting either.
    tokio::time::sleep(Duration::from_millis(20)).await;
    servers.sessions.ttl = 10;
    servers.start().await;
    let a = servers.a.as_ref().unwrap().stats();
    let b = servers.b.as_ref().unwrap().stats();
    eprintln!(
        "restart, 2 dead sessions stored: B decrypted {}, pruned {}",
        b.sessions, b.sessions_pruned
    );
    assert_eq!((a.sessions, a.sessions_pruned), (0, 2), "{a:?}");
    assert_eq!((b.sessions, b.sessions_pruned), (0, 2), "{b:?}");
    servers.stop().await;

    // With the usual TTL again, nothing is left to load, and the device's
    // next life opens a fresh session and gets an exact result.
    servers.sessions = SessionLimits::default();
    servers.start().await;
    let b = servers.b.as_ref().unwrap().stats();
    assert_eq!((b.sessions, b.sessions_pruned), (0, 0), "{b:?}");
    one_life(&servers, &options, &rows[4].0).await;
    servers.stop().await;
    broker.shutdown().await;
}
