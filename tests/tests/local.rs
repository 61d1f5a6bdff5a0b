//! The gateway's own broker: results reach a local subscriber as JSON,
//! sensor readings published locally become frames, and no decoded result
//! ever reaches the remote broker (a spy reading every topic there sees
//! only veil's masked traffic).
#![allow(clippy::unwrap_used)] // a test: a panic is its failure report

use std::path::Path;
use std::time::Duration;

use veil_broker::{Broker, BrokerConfig, BrokerHandle, PasswordFile};
use veil_e2e::*;
use veil_edge_agent::cli::run;
use veil_link::{Link, LinkEvent, MqttSettings};

/// The remote broker with the shipped ACL plus a `spy` account that reads
/// everything.
async fn remote_broker_with_spy(dir: &Path) -> BrokerHandle {
    let acl = std::fs::read_to_string(repo("config/acl")).unwrap() + "\nuser spy\ntopic read #\n";
    let passwords = std::fs::read_to_string(repo("config/passwords")).unwrap()
        + "\n"
        + &PasswordFile::line("spy", "demo-spy", [3; 12])
        + "\n";
    std::fs::write(dir.join("acl"), acl).unwrap();
    std::fs::write(dir.join("passwords"), passwords).unwrap();
    Broker::start(BrokerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        acl_file: Some(dir.join("acl")),
        password_file: Some(dir.join("passwords")),
        ..BrokerConfig::default()
    })
    .await
    .expect("remote broker starts")
}

/// The gateway's broker: loopback, anonymous, no ACL.
async fn local_broker() -> BrokerHandle {
    Broker::start(BrokerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        allow_anonymous: true,
        ..BrokerConfig::default()
    })
    .await
    .expect("local broker starts")
}

struct Subscriber {
    link: Link,
}

impl Subscriber {
    async fn start(settings: MqttSettings, filters: &[&str]) -> Subscriber {
        let link = Link::start(&settings).unwrap();
        link.handle
            .subscribe(filters.iter().map(|f| f.to_string()).collect());
        let mut s = Subscriber { link };
        // Subscribed before anything is published.
        loop {
            if let Some(LinkEvent::Subscribed { .. }) = s.next_event().await {
                return s;
            }
        }
    }

    async fn next_event(&mut self) -> Option<LinkEvent> {
        tokio::time::timeout(PATIENCE, self.link.events.recv())
            .await
            .ok()
            .flatten()
    }

    /// Messages until `done` holds for what was received, or PATIENCE.
    async fn collect(
        &mut self,
        done: impl Fn(&[(String, Vec<u8>)]) -> bool,
    ) -> Vec<(String, Vec<u8>)> {
        let mut got = Vec::new();
        while !done(&got) {
            match self.next_event().await {
                Some(LinkEvent::Message(m)) => {
                    got.push((m.topic.clone(), m.payload.to_vec()));
                    self.link.handle.ack(m.ack);
                }
                Some(_) => {}
                None => break,
            }
        }
        got
    }

    /// Everything that arrives within `quiet`.
    async fn drain(&mut self, quiet: Duration) -> Vec<(String, Vec<u8>)> {
        let mut got = Vec::new();
        while let Ok(Some(event)) = tokio::time::timeout(quiet, self.link.events.recv()).await {
            if let LinkEvent::Message(m) = event {
                got.push((m.topic.clone(), m.payload.to_vec()));
                self.link.handle.ack(m.ack);
            }
        }
        got
    }
}

fn anonymous(addr: std::net::SocketAddr, client: &str) -> MqttSettings {
    MqttSettings {
        url: format!("mqtt://{addr}"),
        client_id: client.into(),
        persistent_session: false,
        backoff_min_ms: 50,
        backoff_max_ms: 500,
        ..MqttSettings::default()
    }
}

fn agent_config(
    dir: &Path,
    remote: std::net::SocketAddr,
    local: std::net::SocketAddr,
    pins: &veil_edge_agent::Pins,
    extra: &str,
) -> std::path::PathBuf {
    let local_table = format!(
        "[local]\n{extra}\n[local.mqtt]\nurl = \"mqtt://{local}\"\npersistent_session = false\n"
    );
    write_agent_config(dir, "pima-mlp", remote, pins, &local_table)
}

fn is_decoded_result(payload: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(payload)
        .map(|v| v.get("class").is_some() || v.get("outputs").is_some())
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_reach_the_local_broker_and_never_the_remote_one() {
    init_logging();
    let dir = tempfile::tempdir().unwrap();
    let remote = remote_broker_with_spy(dir.path()).await;
    let local = local_broker().await;
    let mut servers = Servers::new(dir.path(), "pima-mlp", remote.local_addr());
    servers.start().await;
    let mut spy = Subscriber::start(mqtt(remote.local_addr(), "spy"), &["#"]).await;
    let mut gateway = Subscriber::start(
        anonymous(local.local_addr(), "home"),
        &["veil/#", "homeassistant/#"],
    )
    .await;

    let config = agent_config(
        dir.path(),
        remote.local_addr(),
        local.local_addr(),
        &servers.pins(),
        "homeassistant = true\n",
    );
    let rows: Vec<String> = std::fs::read_to_string(repo("data/pima-test.csv"))
        .unwrap()
        .lines()
        .take(4)
        .map(str::to_string)
        .collect();
    let csv = dir.path().join("frames.csv");
    std::fs::write(&csv, rows.join("\n") + "\n").unwrap();
    run(agent_args(config, Some(csv), dir.path().join("out.jsonl")))
        .await
        .expect("three good rows, three results");

    let got = gateway
        .collect(|got| {
            got.iter()
                .any(|(t, p)| t == "veil/devA/status" && p == b"offline")
        })
        .await;
    let results: Vec<serde_json::Value> = got
        .iter()
        .filter(|(t, _)| t == "veil/devA/result")
        .map(|(_, p)| serde_json::from_slice(p).unwrap())
        .collect();
    assert_eq!(results.len(), 3, "{got:?}");
    for r in &results {
        assert_eq!(r["kind"], "result");
        assert_eq!(r["device"], "devA");
        assert!(r["class"].as_u64().is_some());
        assert!(r["result_at_ms"].as_u64() >= r["captured_at_ms"].as_u64());
    }
    let statuses: Vec<&[u8]> = got
        .iter()
        .filter(|(t, _)| t == "veil/devA/status")
        .map(|(_, p)| p.as_slice())
        .collect();
    assert_eq!(statuses.first().copied(), Some(&b"online"[..]), "{got:?}");
    let discovery = got
        .iter()
        .find(|(t, _)| t == "homeassistant/sensor/veil_devA/class/config")
        .expect("Home Assistant discovery");
    let discovery: serde_json::Value = serde_json::from_slice(&discovery.1).unwrap();
    assert_eq!(discovery["state_topic"], "veil/devA/result");

    let seen_remotely = spy.drain(Duration::from_millis(500)).await;
    assert!(!seen_remotely.is_empty(), "the spy sees veil's traffic");
    for (topic, payload) in &seen_remotely {
        assert!(topic.starts_with("veil/v1/"), "remote topic {topic}");
        assert!(
            !is_decoded_result(payload),
            "a decoded result on the remote broker: {topic}"
        );
    }
    servers.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sensor_readings_on_the_local_broker_become_frames() {
    init_logging();
    let dir = tempfile::tempdir().unwrap();
    let remote = remote_broker_with_spy(dir.path()).await;
    let local = local_broker().await;
    let mut servers = Servers::new(dir.path(), "pima-mlp", remote.local_addr());
    servers.start().await;
    let mut spy = Subscriber::start(mqtt(remote.local_addr(), "spy"), &["#"]).await;
    let mut gateway =
        Subscriber::start(anonymous(local.local_addr(), "home"), &["veil/devA/#"]).await;
    let config = agent_config(
        dir.path(),
        remote.local_addr(),
        local.local_addr(),
        &servers.pins(),
        "sensor_topic = \"sensors/+/pima\"\n\
         features = [\"npreg\", \"glu\", \"bp\", \"skin\", \"bmi\", \"ped\", \"age\"]\n\
         assemble = \"latest\"\n",
    );
    let metrics_addr = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let mut args = agent_args(config, None, dir.path().join("out.jsonl"));
    args.metrics.metrics_listen = Some(metrics_addr);
    let agent = tokio::spawn(run(args));
    // The agent is ready once it says it is online.
    gateway
        .collect(|got| got.iter().any(|(_, p)| p == b"online"))
        .await;
    let sensor = Link::start(&anonymous(local.local_addr(), "sensor")).unwrap();
    // One frame in two messages (assembled), then one that is not a number.
    sensor.handle.publish(
        "sensors/kitchen/pima",
        br#"{"npreg": 6, "glu": 148, "bp": 72, "skin": 35}"#.to_vec(),
        false,
    );
    sensor.handle.publish(
        "sensors/kitchen/pima",
        br#"{"bmi": 33.6, "ped": 0.627, "age": 50}"#.to_vec(),
        false,
    );
    sensor.handle.publish(
        "sensors/kitchen/pima",
        br#"{"glu": "high"}"#.to_vec(),
        false,
    );
    let got = gateway
        .collect(|got| {
            got.iter().any(|(_, p)| is_decoded_result(p))
                && got
                    .iter()
                    .any(|(_, p)| String::from_utf8_lossy(p).contains("refused"))
        })
        .await;
    let result = got
        .iter()
        .find(|(_, p)| is_decoded_result(p))
        .expect("a result for the assembled reading");
    let result: serde_json::Value = serde_json::from_slice(&result.1).unwrap();
    // The integer reference for the assembled row (the first Pima test
    // row), under the session and counter the result names.
    let x: Vec<f32> = vec![6.0, 148.0, 72.0, 35.0, 33.6, 0.627, 50.0];
    let x_hat = servers.model.encode_input(&x).unwrap();
    let sid = veil_protocol::SessionId::from_hex(result["session"].as_str().unwrap()).unwrap();
    let t = result["frame"].as_u64().unwrap();
    let reference = servers.reference(&x_hat, sid, t);
    let logits = veil_edge_agent::decode_logits(servers.model.topology(), &reference);
    assert_eq!(
        result["class"].as_u64().unwrap() as usize,
        veil_edge_agent::predicted_class(&logits)
    );
    let outputs: Vec<f64> = result["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    // JSON carries each f64 in its shortest decimal form; parsing it back
    // may differ in the last bit.
    assert_eq!(outputs.len(), logits.len());
    for (got, want) in outputs.iter().zip(&logits) {
        assert!(
            (got - want).abs() <= 1e-12 * want.abs().max(1.0),
            "{outputs:?} vs {logits:?}"
        );
    }
    assert!(
        got.iter()
            .any(|(_, p)| String::from_utf8_lossy(p).contains("is not a number")),
        "{got:?}"
    );
    for (topic, payload) in spy.drain(Duration::from_millis(500)).await {
        assert!(topic.starts_with("veil/v1/"), "remote topic {topic}");
        assert!(
            !is_decoded_result(&payload),
            "a decoded result on the remote broker: {topic}"
        );
    }
    // The agent's own metrics count the frame and its result (the
    // exporter refreshes every second).
    let mut page = String::new();
    for _ in 0..50 {
        page = scrape(metrics_addr).await;
        if page.contains("veil_edge_agent_results_total 1\n") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(page.contains("veil_edge_agent_results_total 1\n"), "{page}");
    assert!(
        page.contains("veil_edge_agent_captured_total 1\n"),
        "{page}"
    );
    assert!(page.contains("veil_edge_agent_pending 0\n"), "{page}");
    let latency = veil_shell::scrape::Scraped::histogram(&page, "veil_edge_agent_latency_seconds")
        .expect("the capture-to-result histogram is exported");
    assert_eq!(latency.count, 1, "{page}");
    assert!(latency.is_monotone(), "{page}");
    agent.abort();
    servers.stop().await;
}
