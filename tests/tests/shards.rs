//! Servers A and B with two worker threads each, each worker owning one
//! of two devices (devB hashes to the first, devA to the second):
//! interleaved frames of both come back exact, and after B restarts and A
//! crashes with frames of both stored, each worker restores and replays
//! its own and nothing is lost or doubled.
#![allow(clippy::unwrap_used)] // a test: a panic is its failure report

use std::collections::BTreeMap;
use std::time::Duration;

use veil_e2e::*;
use veil_edge_agent::{EdgeAgent, Output};
use veil_protocol::I256;
use veil_shell::shards::shard_of;

struct Device {
    agent: EdgeAgent,
    inputs: BTreeMap<u64, Vec<i64>>,
    results: BTreeMap<u64, Vec<I256>>,
}

impl Device {
    fn capture(&mut self, servers: &Servers, x: &[f32]) {
        let t = self.agent.capture(x, None).expect("capture");
        self.inputs
            .insert(t, servers.model.encode_input(x).unwrap());
    }

    async fn collect(&mut self, n: usize) {
        for o in collect(&mut self.agent, n).await {
            let Output::Result(r) = o else {
                panic!("not a result: {o:?}");
            };
            assert!(
                self.results.insert(r.t, r.raw).is_none(),
                "{}: frame {} delivered twice",
                self.agent.device(),
                r.t
            );
        }
    }

    fn check(&self, servers: &Servers) {
        let sid = self.agent.session().expect("session");
        assert_eq!(self.results.len(), self.inputs.len(), "a frame was lost");
        for (t, raw) in &self.results {
            assert_eq!(
                raw,
                &servers.reference(&self.inputs[t], sid, *t),
                "{} frame {t}",
                self.agent.device()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_serve_interleaved_devices_and_replay_their_own_frames() {
    assert_ne!(shard_of("devA", 2), shard_of("devB", 2));
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let broker = start_broker(addr).await;
    let mut servers = Servers::new(dir.path(), "pima-mlp", addr);
    servers.round_timeout = Duration::from_secs(3);
    servers.a_workers = Some(2);
    servers.b_workers = Some(2);
    servers.start().await;
    let mut devices = Vec::new();
    for name in ["devA", "devB"] {
        let mut options = agent_options(dir.path(), name, addr, servers.pins());
        options.resend_after = Duration::from_secs(3);
        devices.push(Device {
            agent: start_agent(options).await,
            inputs: BTreeMap::new(),
            results: BTreeMap::new(),
        });
    }
    let rows = pima_rows();
    let mut next = 0usize;

    // Both devices' frames in flight at once, captured in turn.
    for _ in 0..5 {
        for device in &mut devices {
            device.capture(&servers, &rows[next].0);
            next += 1;
        }
    }
    for device in &mut devices {
        device.collect(5).await;
    }

    // B down, so that no frame can finish: A stores both devices'
    // frames, then crashes with them on disk.
    servers.b.take().unwrap().shutdown().await;
    for _ in 0..3 {
        for device in &mut devices {
            device.capture(&servers, &rows[next].0);
            next += 1;
        }
    }
    wait_until("A to store the six frames", || {
        servers.a.as_ref().unwrap().stats().frames == 16
    })
    .await;
    servers.a.take().unwrap().abort().await;
    servers.start_b().await;
    servers.start_a().await;
    for device in &mut devices {
        device.collect(3).await;
    }
    assert_eq!(servers.a.as_ref().unwrap().stats().replayed, 6);

    for device in devices {
        device.check(&servers);
        device.agent.shutdown().await;
    }
    servers.stop().await;
    broker.shutdown().await;
}
