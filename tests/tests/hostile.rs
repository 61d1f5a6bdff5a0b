//! One authenticated device turned hostile (veil-attack: QoS 0 and QoS 1
//! floods of maximum-size payloads, garbage, counter jumps, session spam,
//! forged device names, client-id takeovers of both servers and of another
//! device, `$share` joins) while 8 honest devices run pima-mlp over the
//! embedded broker. The honest devices run once without and once with the
//! attacker, in one test, so their latencies compare on the same machine.
//!
//! Memory is the process's resident set (`VmRSS` in /proc/self/status,
//! sampled every 50 ms): broker, both servers, the agents and the attacker
//! all run in this process, so the bound covers every role together.
#![allow(clippy::unwrap_used)] // a test: a panic is its failure report

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use veil_attack::{Attack, Pins as AttackPins, Target};
use veil_broker::{Broker, BrokerConfig, PasswordFile};
use veil_e2e::*;
use veil_edge_agent::{EdgeAgent, Output};
use veil_protocol::Params;

const HONEST: usize = 8;
const FRAMES: usize = 6;
/// The p95 latency with the attacker may be at most this many times the
/// p95 without it. The issue asks for 2; see the report printed below for
/// the measured ratio.
const MAX_P95_RATIO: f64 = 2.0;
/// Peak resident set during the attack may exceed the peak without it by
/// at most this much. What the attack may legitimately add: rumqttd's
/// per-filter log of the frame topic (4 segments of 16 MiB), one
/// maximum-size packet being read and one being decoded per hop (gate in
/// and out, A's link), and the attacker's own payload.
const MAX_EXTRA_RSS: u64 = 256 << 20;
const MAX_PAYLOAD: usize = 16 << 20;

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Records the peak RSS until dropped.
struct RssPeak {
    peak: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl RssPeak {
    fn start() -> RssPeak {
        let peak = Arc::new(AtomicU64::new(rss_bytes()));
        let p = Arc::clone(&peak);
        let task = tokio::spawn(async move {
            loop {
                p.fetch_max(rss_bytes(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        RssPeak { peak, task }
    }

    fn stop(self) -> u64 {
        self.task.abort();
        self.peak.load(Ordering::Relaxed).max(rss_bytes())
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.saturating_sub(1).min(sorted.len() - 1)]
}

/// Every honest device captures `FRAMES` rows, one at a time (the next
/// when the last result is in); returns the agents and the latencies,
/// after checking that every frame got its result, once.
async fn honest_round(
    agents: Vec<EdgeAgent>,
    rows: &Arc<Vec<(Vec<f32>, u8)>>,
    phase: usize,
) -> (Vec<EdgeAgent>, Vec<f64>) {
    let mut tasks = Vec::new();
    for (i, mut agent) in agents.into_iter().enumerate() {
        let rows = Arc::clone(rows);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut seen = BTreeSet::new();
            for k in 0..FRAMES {
                let (x, _) = &rows[(phase * 97 + i * FRAMES + k) % rows.len()];
                let t = agent.capture(x, None).expect("capture");
                let output = collect(&mut agent, 1).await.pop().expect("one output");
                let Output::Result(r) = output else {
                    panic!("{}: frame {t} got {output:?}", agent.device());
                };
                assert_eq!(r.t, t, "{}: result for another frame", agent.device());
                assert!(seen.insert(r.t), "frame {} delivered twice", r.t);
                latencies.push(r.latency_ms);
            }
            (agent, latencies)
        }));
    }
    let mut agents = Vec::new();
    let mut latencies = Vec::new();
    for task in tasks {
        let (agent, l) = task.await.expect("honest device task");
        agents.push(agent);
        latencies.extend(l);
    }
    latencies.sort_by(f64::total_cmp);
    (agents, latencies)
}

fn password_file(dir: &std::path::Path, users: &[String]) -> std::path::PathBuf {
    let lines: Vec<String> = users
        .iter()
        .map(|u| PasswordFile::line(u, &format!("demo-{u}"), [42; 12]))
        .collect();
    let path = dir.join("passwords");
    std::fs::write(&path, lines.join("\n") + "\n").expect("password file");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_hostile_device_cannot_starve_evict_or_crash_the_honest_ones() {
    init_logging();
    let dir = tempfile::tempdir().unwrap();
    let honest: Vec<String> = (0..HONEST).map(|i| format!("honest-{i}")).collect();
    let mut users = honest.clone();
    users.extend(["server-a", "server-b", "devA", "evil"].map(String::from));
    let broker = Broker::start(BrokerConfig {
        password_file: Some(password_file(dir.path(), &users)),
        max_payload_size: MAX_PAYLOAD,
        ..broker_config("127.0.0.1:0".parse().unwrap())
    })
    .await
    .expect("broker starts");
    let addr: SocketAddr = broker.local_addr();
    let mut servers = Servers::new(dir.path(), "pima-mlp", addr);
    servers.start().await;
    let rows = Arc::new(pima_rows());
    let mut agents = Vec::new();
    for device in &honest {
        agents.push(start_agent(agent_options(dir.path(), device, addr, servers.pins())).await);
    }

    // Without the attacker.
    let rss = RssPeak::start();
    let (agents, calm) = honest_round(agents, &rows, 0).await;
    let calm_rss = rss.stop();
    let calm_a = servers.a.as_ref().unwrap().stats();
    let calm_b = servers.b.as_ref().unwrap().stats();

    // With it.
    let attack = Attack::start(Target {
        host: addr.ip().to_string(),
        port: addr.port(),
        username: "evil".into(),
        password: "demo-evil".into(),
        victims: vec![
            "server-a".into(),
            "server-b".into(),
            "devA".into(),
            "honest-0".into(),
        ],
        forbidden_filters: vec![
            "$share/veil-a/veil/v1/dev/+/frame".into(),
            "veil/v1/dev/+/frame".into(),
            "veil/v1/ba/#".into(),
        ],
        max_payload: MAX_PAYLOAD,
        pins: Some(AttackPins {
            model: "pima-mlp".into(),
            topology: servers.model.topology().fingerprint(),
            params: Params::default().fingerprint(),
            server_a: servers.key_a.public_key().fingerprint(),
            server_b: servers.key_b.public_key().fingerprint(),
        }),
    });
    let rss = RssPeak::start();
    // Let the flood reach full speed before measuring.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (agents, stormy) = honest_round(agents, &rows, 1).await;
    // The servers work through what the broker let in; the attacker hears
    // their refusals.
    let rejected = || {
        (
            servers.a.as_ref().unwrap().stats().rejected,
            servers.b.as_ref().unwrap().stats().rejected,
        )
    };
    wait_until("both servers to refuse the attacker's messages", || {
        let (a, b) = rejected();
        a > calm_a.rejected && b > calm_b.rejected
    })
    .await;
    wait_until("the attacker to hear a refusal", || {
        attack.report().rejects_heard > 0
    })
    .await;
    let stormy_rss = rss.stop();
    let report = attack.stop().await;
    let gate = broker.counters();
    let a = servers.a.as_ref().unwrap().stats();
    let b = servers.b.as_ref().unwrap().stats();

    let (p50c, p95c) = (percentile(&calm, 50.0), percentile(&calm, 95.0));
    let (p50s, p95s) = (percentile(&stormy, 50.0), percentile(&stormy, 95.0));
    eprintln!(
        "hostile: honest p50/p95 {p50c:.0}/{p95c:.0} ms without the attacker, \
         {p50s:.0}/{p95s:.0} ms with it (p95 ratio {:.2}); peak RSS {} MiB without, \
         {} MiB with",
        p95s / p95c,
        calm_rss >> 20,
        stormy_rss >> 20
    );
    eprintln!("hostile: attacker {report:?}");
    eprintln!("hostile: gate {gate}");
    eprintln!(
        "hostile: A rejected {} (dropped {}), B rejected {}; sessions A {} B {}; \
         new sessions refused over the opening rate A {} B {}",
        a.rejected - calm_a.rejected,
        a.dropped,
        b.rejected - calm_b.rejected,
        a.sessions,
        b.sessions,
        a.sessions_throttled,
        b.sessions_throttled
    );

    // Nothing lost: honest_round checked every frame's result.
    assert_eq!(calm.len(), HONEST * FRAMES);
    assert_eq!(stormy.len(), HONEST * FRAMES);
    assert!(
        p95s <= MAX_P95_RATIO * p95c,
        "honest p95 {p95s:.0} ms under attack, {p95c:.0} ms without"
    );
    assert!(
        stormy_rss <= calm_rss + MAX_EXTRA_RSS,
        "peak RSS {} MiB under attack, {} MiB without",
        stormy_rss >> 20,
        calm_rss >> 20
    );

    // The attack happened, at volume, and was turned away.
    assert!(
        report.qos0_published > 0 && report.qos1_published > 0,
        "{report:?}"
    );
    assert!(
        report.huge > 0 && report.sessions > 0 && report.counter_jumps > 0,
        "{report:?}"
    );
    assert_eq!(report.takeovers_accepted, 0, "{report:?}");
    assert!(report.takeovers_refused > 0, "{report:?}");
    assert_eq!(report.subscriptions_granted, 0, "{report:?}");
    assert!(report.subscriptions_refused > 0, "{report:?}");
    assert!(report.rejects_heard > 0, "{report:?}");
    assert!(gate.client_id_refused >= report.takeovers_refused, "{gate}");
    assert!(
        gate.subscribe_refused >= report.subscriptions_refused,
        "{gate}"
    );
    assert!(gate.throttled > 0, "the flood never met its quota: {gate}");
    assert!(a.rejected > calm_a.rejected && b.rejected > calm_b.rejected);
    // Its session flood met the opening rate before decryption.
    assert!(a.sessions_throttled > 0 && b.sessions_throttled > 0);
    // No session of the attacker's was accepted: one per honest device.
    assert_eq!(a.sessions, HONEST as u64);
    assert_eq!(b.sessions, HONEST as u64);
    let logs = logs();
    for line in [
        "client id refused",
        "ACL violation: refused",
        "publish quota exceeded",
        "rejected frame",
        "rejected session",
    ] {
        assert!(logs.contains(line), "nothing logged as {line:?}");
    }

    for agent in agents {
        agent.shutdown().await;
    }
    servers.stop().await;
    broker.shutdown().await;
}
