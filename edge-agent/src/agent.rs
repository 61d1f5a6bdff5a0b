//! The agent as a library: start it, feed it frames, read its outputs.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc, watch};
use veil_link::MqttSettings;
use veil_model::Topology;
use veil_paillier::PublicKey;
use veil_protocol::{
    CounterReservation, Device, DeviceConfig, Params, ProtocolError, SessionId, topics,
};

use crate::state::{Disk, OutboxEntry, SessionsFile, now_ms};
use crate::{AgentError, Output};

/// The fingerprints (SHA-256, hex) the device trusts: both servers' keys
/// and the model's public topology. Nothing else is accepted.
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pins {
    pub server_a: String,
    pub server_b: String,
    pub topology: String,
}

#[derive(Clone, Debug)]
pub struct AgentOptions {
    /// The device id: its MQTT username and topic level.
    pub device: String,
    pub mqtt: MqttSettings,
    /// Outbox, sessions, counter (owner-only).
    pub state_dir: PathBuf,
    /// The model to use, by name.
    pub model: String,
    pub pins: Pins,
    /// A frame without a result after this long is sent again (and the
    /// device asks B for its queued results).
    pub resend_after: Duration,
    /// A frame without a result after this long is given up.
    pub frame_ttl: Duration,
    /// Frame counters reserved per write of the counter mark.
    pub counter_block: u64,
    /// How long to wait for the servers' public keys and the topology on
    /// the very first start (afterwards they are cached).
    pub provision_timeout: Duration,
}

impl AgentOptions {
    pub fn new(device: &str, mqtt: MqttSettings, state_dir: impl Into<PathBuf>) -> AgentOptions {
        AgentOptions {
            device: device.to_string(),
            mqtt,
            state_dir: state_dir.into(),
            model: "pima-mlp".into(),
            pins: Pins::default(),
            resend_after: Duration::from_secs(30),
            frame_ttl: Duration::from_secs(24 * 3600),
            counter_block: 64,
            provision_timeout: Duration::from_secs(60),
        }
    }
}

/// Traffic and outcome counters.
#[derive(Default, Debug)]
pub struct Counters {
    pub captured: AtomicU64,
    pub frames_sent: AtomicU64,
    pub frame_bytes: AtomicU64,
    pub resent: AtomicU64,
    pub results: AtomicU64,
    pub result_bytes: AtomicU64,
    pub duplicates: AtomicU64,
    pub acks: AtomicU64,
    pub ack_bytes: AtomicU64,
    pub session_bytes: AtomicU64,
    pub rejected: AtomicU64,
    pub expired: AtomicU64,
    pub connects: AtomicU64,
}

/// A copy of the counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AgentStats {
    pub captured: u64,
    /// Frames published (first time) and their payload bytes.
    pub frames_sent: u64,
    pub frame_bytes: u64,
    pub resent: u64,
    /// Results delivered to the application and their payload bytes.
    pub results: u64,
    pub result_bytes: u64,
    /// Results received again and dropped.
    pub duplicates: u64,
    pub acks: u64,
    pub ack_bytes: u64,
    /// Session messages (the only public-key work) and their bytes.
    pub session_bytes: u64,
    pub rejected: u64,
    pub expired: u64,
    pub connects: u64,
    /// Frames still waiting for a result.
    pub pending: u64,
}

pub(crate) struct Inner {
    pub device: Device,
    pub counter: CounterReservation,
    pub inits: Option<(Vec<u8>, Vec<u8>)>,
    /// Bumped whenever a new session's messages need publishing.
    pub inits_version: u64,
}

pub(crate) struct Shared {
    pub options: AgentOptions,
    pub topology: Arc<Topology>,
    pub inner: Mutex<Inner>,
    pub disk: Disk,
    pub counters: Counters,
    pub notify: Notify,
    /// Capture instants of this run's frames (for exact latencies).
    pub captured_at: Mutex<HashMap<u64, Instant>>,
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves nothing half-written that
        // the next user could misread: state changes are persisted first.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running edge agent.
pub struct EdgeAgent {
    shared: Arc<Shared>,
    outputs: Option<mpsc::UnboundedReceiver<Output>>,
    stop: watch::Sender<StopMode>,
    task: Option<tokio::task::JoinHandle<()>>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum StopMode {
    Run,
    Graceful,
    Crash,
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
    let topo_name = format!("topology-{}.bin", options.model);
    if let (Some(a), Some(b), Some(t)) = (
        disk.cached_public("server-a.pub"),
        disk.cached_public("server-b.pub"),
        disk.cached_public(&topo_name),
    ) {
        match parse_public(options, &a, &b, &t) {
            Ok(public) => return Ok(public),
            Err(e) => {
                tracing::warn!(error = %e, "cached public material no longer matches; fetching it again")
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
        let params = Params::default();
        let file = disk.load_sessions()?;
        let mark = disk.load_counter()?;
        let pending = disk.sessions_in_outbox();
        // Every start opens a fresh session (at the first capture). A
        // restored copy of this folder (a VM snapshot, an SD-card image)
        // brings back an older counter mark: under the old session's seeds
        // the counters above it would be used a second time, repeating
        // their masks. Under new seeds a repeated counter is harmless.
        // Sessions with frames waiting are kept for their results.
        let sessions: Vec<_> = file
            .sessions
            .into_iter()
            .filter(|s| pending.contains(&s.sid.0))
            .collect();
        let device = Device::restore(
            DeviceConfig {
                device: options.device.clone(),
                params,
                topology: Arc::clone(&topology),
                server_a: public.a,
                server_b: public.b,
            },
            sessions,
            None,
        )?;
        let inits = None;
        let shared = Arc::new(Shared {
            topology,
            inner: Mutex::new(Inner {
                device,
                counter: CounterReservation::recover(mark, options.counter_block),
                inits,
                inits_version: 1,
            }),
            disk,
            counters: Counters::default(),
            notify: Notify::new(),
            captured_at: Mutex::new(HashMap::new()),
            options,
        });
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let (stop, stop_rx) = watch::channel(StopMode::Run);
        let task = crate::net::spawn(Arc::clone(&shared), out_tx, stop_rx)?;
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

    pub fn topology(&self) -> &Topology {
        &self.shared.topology
    }

    pub fn device(&self) -> &str {
        &self.shared.options.device
    }

    /// Encodes, masks and stores one frame, and returns its counter. Never
    /// waits for the network: the frame goes out when the broker is there.
    pub fn capture(&self, features: &[f32], label: Option<String>) -> Result<u64, AgentError> {
        let x_hat = self.shared.topology.encode_input(features)?;
        let mut inner = self.shared.lock();
        if inner.device.needs_session() {
            self.open_session(&mut inner)?;
        }
        let t = loop {
            match inner.counter.take() {
                Ok(t) => break t,
                Err(ProtocolError::ReservationNeeded { mark }) => {
                    self.shared.disk.save_counter(mark)?;
                    inner.counter.confirm(mark);
                }
                Err(e) => return Err(e.into()),
            }
        };
        let frame = inner.device.mask_frame(&x_hat, t)?;
        let sid = frame.envelope.sid;
        let envelope = frame.envelope.to_bytes()?;
        drop(inner);
        self.shared.disk.put_outbox(&OutboxEntry {
            sid: sid.0,
            t,
            envelope,
            captured_ms: now_ms(),
            label,
        })?;
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

    /// Draws a new session (two Paillier encryptions: the device's only
    /// public-key work) and persists its secrets before any frame uses it.
    fn open_session(&self, inner: &mut Inner) -> Result<(), AgentError> {
        let first = inner.counter.peek();
        let [to_a, to_b] = inner.device.open_session(first, &mut rand::rng())?;
        let sid = to_a.envelope.sid;
        let inits = (to_a.envelope.to_bytes()?, to_b.envelope.to_bytes()?);
        let file = SessionsFile {
            sessions: inner.device.sessions().cloned().collect(),
            current: Some(sid),
            inits: Some(inits.clone()),
        };
        if let Err(e) = self.shared.disk.save_sessions(&file) {
            // Without its seeds on disk the session's results could be
            // lost with a reboot: do not use it.
            inner.device.forget_session(sid);
            return Err(e);
        }
        tracing::info!(%sid, first, "session opened");
        inner.inits = Some(inits);
        inner.inits_version += 1;
        Ok(())
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

    pub fn stats(&self) -> AgentStats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        AgentStats {
            captured: get(&c.captured),
            frames_sent: get(&c.frames_sent),
            frame_bytes: get(&c.frame_bytes),
            resent: get(&c.resent),
            results: get(&c.results),
            result_bytes: get(&c.result_bytes),
            duplicates: get(&c.duplicates),
            acks: get(&c.acks),
            ack_bytes: get(&c.ack_bytes),
            session_bytes: get(&c.session_bytes),
            rejected: get(&c.rejected),
            expired: get(&c.expired),
            connects: get(&c.connects),
            pending: self.shared.disk.outbox_len() as u64,
        }
    }

    /// The current session, if one is open.
    pub fn session(&self) -> Option<SessionId> {
        self.shared.lock().device.current().map(|s| s.sid)
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

impl Drop for EdgeAgent {
    fn drop(&mut self) {
        let _ = self.stop.send(StopMode::Crash);
    }
}
