//! The same pipeline against a real Mosquitto started by the test with the
//! repository's config/acl and config/passwords: results still equal the
//! integer reference. Skipped (saying why) when no mosquitto binary is
//! installed, except in CI, where `.ci/run` installs it.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use veil_e2e::*;
use veil_edge_agent::Output;

struct Mosquitto(Child);

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn find_mosquitto() -> Option<String> {
    [
        "/usr/sbin/mosquitto",
        "/usr/bin/mosquitto",
        "/usr/local/sbin/mosquitto",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists())
    .map(str::to_string)
}

async fn start_mosquitto(bin: &str, dir: &std::path::Path) -> (Mosquitto, SocketAddr) {
    let addr = free_addr();
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {} 127.0.0.1\nallow_anonymous false\npassword_file {}\nacl_file {}\npersistence false\n",
            addr.port(),
            repo("config/passwords").display(),
            repo("config/acl").display()
        ),
    )
    .unwrap();
    let child = Command::new(bin)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto starts");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "mosquitto never listened"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (Mosquitto(child), addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_runs_on_a_real_mosquitto() {
    init_logging();
    let Some(bin) = find_mosquitto() else {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("CI must install mosquitto (apt-get install mosquitto)");
        }
        note_skip("no mosquitto binary (Debian: apt-get install mosquitto)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (_mosquitto, addr) = start_mosquitto(&bin, dir.path()).await;
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
