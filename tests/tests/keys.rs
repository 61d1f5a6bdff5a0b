//! Key mix-ups an operator can make, and that must stop a role at start
//! instead of letting one party hold both keys.
#![allow(clippy::unwrap_used)] // a test: a panic is its failure report

use std::sync::Arc;

use veil_e2e::*;
use veil_edge_agent::{AgentError, EdgeAgent};
use veil_protocol::Params;
use veil_server_a::{ServerA, ServerAError, Setup};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_a_refuses_to_encrypt_under_its_own_key() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker("127.0.0.1:0".parse().unwrap()).await;
    let servers = Servers::new(dir.path(), "pima-mlp", broker.local_addr());
    // `b_key_file` pointing at A's own public key, or B's secret key copied
    // to A: either way the two keys are one.
    for (own, given_as_b) in [
        (&servers.key_a, &servers.key_a),
        (&servers.key_b, &servers.key_b),
    ] {
        let outcome = ServerA::start(
            servers.a_options(),
            Setup {
                key: Arc::clone(own),
                b_key: given_as_b.public_key().clone(),
                model: Arc::clone(&servers.model),
                params: Params::default(),
            },
        )
        .await;
        match outcome {
            Err(ServerAError::SameKeys { fingerprint }) => {
                assert_eq!(fingerprint, own.public_key().fingerprint_hex())
            }
            Err(other) => panic!("refused for another reason: {other}"),
            Ok(_) => panic!("server A started holding B's key"),
        }
    }
    // Nothing of A's state was created by the refused starts.
    assert!(!dir.path().join("server-a").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_refuses_two_servers_with_one_key() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker("127.0.0.1:0".parse().unwrap()).await;
    let servers = Servers::new(dir.path(), "pima-mlp", broker.local_addr());
    let mut pins = servers.pins();
    pins.server_b = pins.server_a.to_uppercase();
    let options = agent_options(dir.path(), "devA", broker.local_addr(), pins);
    match EdgeAgent::start(options).await {
        Err(AgentError::SameServerKeys { fingerprint }) => {
            assert_eq!(fingerprint, servers.key_a.public_key().fingerprint_hex())
        }
        Err(other) => panic!("refused for another reason: {other}"),
        Ok(_) => panic!("the agent started with one key pinned for both servers"),
    }
}
