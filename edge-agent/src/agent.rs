//! The agent as a library: start it, feed it frames, read its outputs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc, watch};
use veil_model::Topology;
use veil_paillier::PublicKey;
use veil_protocol::node::{DeviceDurable, DeviceNode, DeviceOptions, OutboxEntry};
use veil_protocol::{DeviceConfig, Params, SessionId, topics};

use crate::options::AgentOptions;
use crate::shared::{Counters, Shared, StopMode};
use crate::state::Disk;
use crate::{AgentError, Output};
use veil_shell::now_ms;

/// A copy of the counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AgentStats {
    /// Frames captured (masked and stored in the outbox).
    pub captured: u64,
    /// Frame publishes (first sends and resends) and their payload bytes.
    pub frames_sent: u64,
    /// Payload bytes of those frame publishes.
    pub frame_bytes: u64,
    /// Results delivered to the application and their payload bytes.
    pub results: u64,
    /// Payload bytes of those results.
    pub result_bytes: u64,
    /// Acknowledgements and result requests (`Sync`) sent.
    pub acks: u64,
    /// Payload bytes of those acknowledgements and requests.
    pub ack_bytes: u64,
    /// Session messages (the only public-key work) and their bytes.
    pub session_bytes: u64,
    /// Frames a server refused for good.
    pub rejected: u64,
    /// Frames given up after the frame time to live.
    pub expired: u64,
    /// Connections to the broker made (the first and every reconnect).
    pub connects: u64,
    /// Frames still waiting for a result.
    pub pending: u64,
}

/// A running edge agent.
pub struct EdgeAgent {
    shared: Arc<Shared>,
    outputs: Option<mpsc::UnboundedReceiver<Output>>,
    stop: watch::Sender<StopMode>,
    task: Option<tokio::task::JoinHandle<()>>,
}

fn check_pin(what: &'static str, expected: &str, got: String) -> Result<(), AgentError> {
    if expected.trim().is_empty() {
        return Err(AgentError::Config(format!(
            "no pinned fingerprint for {what}: set it in the configuration (the servers log theirs at start)"
        )));
    }
    if !expected.trim().eq_ignore_ascii_case(&got) {
        return Err(AgentError::Pin {
            what,
            expected: expected.trim().to_string(),
            got,
        });
    }
    Ok(())
}

struct Public {
    a: PublicKey,
    b: PublicKey,
    topology: Topology,
}

fn parse_public(
    options: &AgentOptions,
    a: &[u8],
    b: &[u8],
    topology: &[u8],
) -> Result<Public, AgentError> {
    let a = PublicKey::from_bytes(a)?;
    let b = PublicKey::from_bytes(b)?;
    if a.fingerprint_hex() == b.fingerprint_hex() {
        return Err(AgentError::SameServerKeys {
            fingerprint: a.fingerprint_hex(),
        });
    }
    let topology = Topology::from_bytes(topology)?;
    check_pin(
        "server A's key",
        &options.pins.server_a,
        a.fingerprint_hex(),
    )?;
    check_pin(
        "server B's key",
        &options.pins.server_b,
        b.fingerprint_hex(),
    )?;
    check_pin(
        "the model topology",
        &options.pins.topology,
        topology.fingerprint_hex(),
    )?;
    if topology.name != options.model {
        return Err(AgentError::Config(format!(
            "the pinned topology is for model {:?}, not {:?}",
            topology.name, options.model
        )));
    }
    Ok(Public { a, b, topology })
}

/// The servers' keys and the topology: from the cache when pinned before,
/// otherwise from the servers' retained messages (then cached).
async fn provision(options: &AgentOptions, disk: &Disk) -> Result<Public, AgentError> {
    let (pin_a, pin_b) = (options.pins.server_a.trim(), options.pins.server_b.trim());
    if !pin_a.is_empty() && pin_a.eq_ignore_ascii_case(pin_b) {
        return Err(AgentError::SameServerKeys {
            fingerprint: pin_a.to_ascii_lowercase(),
        });
    }
    let topo_name = format!("topology-{}.bin", options.model);
    if let (Some(a), Some(b), Some(t)) = (
        disk.cached_public("server-a.pub"),
        disk.cached_public("server-b.pub"),
        disk.cached_public(&topo_name),
    ) {
        match parse_public(options, &a, &b, &t) {
            Ok(public) => return Ok(public),
            Err(e) => {
                tracing::warn!(error = %crate::chain(&e), "cached public material no longer matches; fetching it again")
            }
        }
    }
    let wanted = [
        topics::server_key('a'),
        topics::server_key('b'),
        topics::topology(&options.model),
    ];
    tracing::info!("fetching the servers' keys and the model topology");
    let found =
        veil_link::fetch_retained(&options.mqtt, &wanted, options.provision_timeout).await?;
    let get = |topic: &String| found.get(topic).map(Vec::as_slice).unwrap_or(&[]);
    let [ka, kb, kt] = &wanted;
    let public = parse_public(options, get(ka), get(kb), get(kt))?;
    disk.cache_public("server-a.pub", get(ka))?;
    disk.cache_public("server-b.pub", get(kb))?;
    disk.cache_public(&topo_name, get(kt))?;
    Ok(public)
}

impl EdgeAgent {
    /// Restores the device's state, pins the servers' material (fetching it
    /// on the very first start) and starts the network side. Capture works
    /// as soon as this returns, connected or not.
    pub async fn start(options: AgentOptions) -> Result<EdgeAgent, AgentError> {
        veil_protocol::check_device_name(&options.device)?;
        let disk = Disk::open(&options.state_dir)?;
        disk.prune_delivered(30 * 24 * 3600 * 1000);
        let public = provision(&options, &disk).await?;
        let topology = Arc::new(public.topology);
        let disk_outbox = disk.outbox();
        let durable = DeviceDurable {
            sessions: disk.load_sessions()?.sessions,
            counter_mark: disk.load_counter()?,
            outbox: disk_outbox
                .into_iter()
                .map(|e| OutboxEntry {
                    sid: SessionId(e.sid),
                    t: e.t,
                    envelope: e.envelope,
                    captured: e.captured_ms,
                    label: e.label,
                })
                .collect(),
            settled: disk.settled(),
        };
        let config = DeviceConfig {
            device: options.device.clone(),
            params: Params::default(),
            topology: Arc::clone(&topology),
            server_a: public.a,
            server_b: public.b,
        };
        let node_options = DeviceOptions {
            resend_after: millis(options.resend_after),
            frame_ttl: millis(options.frame_ttl),
            counter_block: options.counter_block,
            ..DeviceOptions::default()
        };
        // The device's session seeds: the shell draws them from the OS.
        let mut seed = [0u8; 32];
        rand::Rng::fill_bytes(&mut rand::rng(), &mut seed);
        let node = DeviceNode::restore(config, node_options, durable, seed)?;
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            topology,
            node: Mutex::new(node),
            disk,
            counters: Counters::default(),
            notify: Notify::new(),
            captured_at: Mutex::new(HashMap::new()),
            outputs: out_tx,
            heartbeat: veil_shell::Heartbeat::default(),
            options,
        });
        let (stop, stop_rx) = watch::channel(StopMode::Run);
        let task = crate::net::spawn(Arc::clone(&shared), stop_rx)?;
        tracing::info!(
            device = %shared.options.device,
            pending = shared.disk.outbox_len(),
            "edge agent started"
        );
        Ok(EdgeAgent {
            shared,
            outputs: Some(out_rx),
            stop,
            task: Some(task),
        })
    }

    /// The model's public topology, as pinned.
    pub fn topology(&self) -> &Topology {
        &self.shared.topology
    }

    /// The device's name.
    pub fn device(&self) -> &str {
        &self.shared.options.device
    }

    /// Encodes, masks and stores one frame, and returns its counter. Never
    /// waits for the network: the frame goes out when the broker is there.
    pub fn capture(&self, features: &[f32], label: Option<String>) -> Result<u64, AgentError> {
        let x_hat = self.shared.topology.encode_input(features)?;
        let t = {
            let mut node = self.shared.lock();
            let captured = node.capture(now_ms(), &x_hat, label);
            // Written before the network task may send what depends on it.
            let written = self.shared.apply_events(&mut node);
            let (_, t) = captured?;
            written?;
            t
        };
        self.shared
            .captured_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(t, Instant::now());
        self.shared
            .counters
            .captured
            .fetch_add(1, Ordering::Relaxed);
        self.shared.notify.notify_one();
        Ok(t)
    }

    /// The next output (result, refusal or expiry); `None` once stopped.
    pub async fn recv(&mut self) -> Option<Output> {
        self.outputs.as_mut()?.recv().await
    }

    /// Hands the output stream to another task (after which
    /// [`EdgeAgent::recv`] returns `None`).
    pub fn take_outputs(&mut self) -> Option<mpsc::UnboundedReceiver<Output>> {
        self.outputs.take()
    }

    /// Frames still waiting for their result.
    pub fn pending(&self) -> usize {
        self.shared.disk.outbox_len()
    }

    /// The counters now.
    pub fn stats(&self) -> AgentStats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        AgentStats {
            captured: get(&c.captured),
            frames_sent: get(&c.frames_sent),
            frame_bytes: get(&c.frame_bytes),
            results: get(&c.results),
            result_bytes: get(&c.result_bytes),
            acks: get(&c.acks),
            ack_bytes: get(&c.ack_bytes),
            session_bytes: get(&c.session_bytes),
            rejected: get(&c.rejected),
            expired: get(&c.expired),
            connects: get(&c.connects),
            pending: self.shared.disk.outbox_len() as u64,
        }
    }

    /// Capture to result latencies (clones share the counts).
    pub fn latency(&self) -> veil_shell::Latency {
        self.shared.counters.latency.clone()
    }

    /// The network task's heartbeat: what the systemd watchdog follows.
    pub fn heartbeat(&self) -> veil_shell::Heartbeat {
        self.shared.heartbeat.clone()
    }

    /// The current session, if one is open.
    pub fn session(&self) -> Option<SessionId> {
        self.shared.session()
    }

    /// Disconnects cleanly; the outbox and sessions stay on disk.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(StopMode::Graceful);
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }

    /// Stops as a power cut would: no DISCONNECT.
    pub async fn abort(mut self) {
        let _ = self.stop.send(StopMode::Crash);
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Drop for EdgeAgent {
    fn drop(&mut self) {
        let _ = self.stop.send(StopMode::Crash);
    }
}
