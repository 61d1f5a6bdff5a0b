//! `veil bench device`: veil and the conventional baseline over the same
//! MQTT transport (veil's embedded broker on loopback, the shipped ACL and
//! passwords), each party a rumqttc client driving its state machine on its
//! own thread, measured on the device side.
//!
//! Measurement, per frame, on the device:
//! - CPU: the CPU clocks of the device's thread and of its one-thread rayon
//!   pool, read around each piece of the device's own work (masking,
//!   encryption, decryption, activations, encoding and decoding messages);
//!   the MQTT client's work is left out for both approaches.
//! - wall time: from the frame being handed to the device to its result
//!   being decoded.
//! - bytes: every byte of the device's MQTT connection in both directions,
//!   counted at the socket by a relay between the client and the broker
//!   (PUBLISH and PUBACK packets with their headers), between quiet points
//!   before and after the frame.
//!
//! Servers get the same treatment: each has its own rayon pool, and its CPU
//! time is the sum of its threads' clocks, split into online (the frame's
//! messages) and offline (precomputation, session and mask traffic).

use crate::conventional::{
    ConvBody, ConvDevice, ConvEnvelope, ConvServer, ConvServerConfig, ConvStep, argmax,
};
use crate::meter::{CpuGroup, Relay, Traffic, publish_packet_len};
use crate::report::{ApproachReport, FrameCost, ServerCost, SetupCost};
use crate::veil_device::VeilDevice;
use crate::{pooled_noise, thread_cpu_time};
use anyhow::{Context, Result, anyhow, bail};
use rumqttc::{Client, Connection, Event, MqttOptions, Outgoing, Packet, QoS, RecvTimeoutError};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use veil_model::{Model, Topology};
use veil_paillier::{KeySize, SecretKey};
use veil_protocol::node::{
    AEvent, AOptions, BEvent, BOptions, Bytes, Input as NodeInput, Millis, Refusal, ServerANode,
    ServerBNode, Transmit,
};
use veil_protocol::{
    Body, Device, DeviceConfig, DeviceSession, Envelope, PaillierPublic, PaillierSecret, Params,
    Peer, PublicOps, Seed, ServerA, ServerAConfig, ServerB, ServerBConfig, SessionId, topics,
};

/// The shipped ACL, plus the baseline's own topics (appended in the
/// broker's temporary configuration, not in the shipped file): a device
/// writes under `conv/<device>/up` and reads `conv/<device>/down`; server A
/// the reverse.
const SHIPPED_ACL: &str = include_str!("../../config/acl");
const SHIPPED_PASSWORDS: &str = include_str!("../../config/passwords");
const BASELINE_ACL: &str = "
# Conventional-HE baseline of `veil bench device` (added by the benchmark).
pattern write veil/v1/conv/%u/up/#
pattern read veil/v1/conv/%u/down/#
user server-a
topic read veil/v1/conv/+/up/#
topic write veil/v1/conv/+/down/#
";

pub const DEVICE_USER: &str = "devA";

fn password(user: &str) -> String {
    format!("demo-{user}")
}

fn conv_up(device: &str, kind: &str) -> String {
    format!("{}/conv/{device}/up/{kind}", topics::ROOT)
}

fn conv_down(device: &str) -> String {
    format!("{}/conv/{device}/down/result", topics::ROOT)
}

const CONV_UP_FILTER: &str = "veil/v1/conv/+/up/#";
const B_WORKER: &str = "bench";

/// The embedded broker in its own runtime, with a temporary configuration.
pub struct BenchBroker {
    handle: Option<veil_broker::BrokerHandle>,
    runtime: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

impl BenchBroker {
    pub fn start() -> Result<BenchBroker> {
        let dir = tempfile::tempdir().context("creating the broker's temporary directory")?;
        let acl = dir.path().join("acl");
        let passwords = dir.path().join("passwords");
        std::fs::write(&acl, format!("{SHIPPED_ACL}\n{BASELINE_ACL}"))
            .context("writing the broker ACL")?;
        std::fs::write(&passwords, SHIPPED_PASSWORDS).context("writing the password file")?;
        let config = veil_broker::BrokerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            password_file: Some(passwords),
            acl_file: Some(acl),
            ..veil_broker::BrokerConfig::default()
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("broker")
            .enable_all()
            .build()
            .context("starting the broker's runtime")?;
        let handle = runtime
            .block_on(veil_broker::Broker::start(config))
            .context("starting the embedded broker")?;
        Ok(BenchBroker {
            handle: Some(handle),
            runtime,
            _dir: dir,
        })
    }

    pub fn addr(&self) -> Result<SocketAddr> {
        self.handle
            .as_ref()
            .map(|h| h.local_addr())
            .ok_or_else(|| anyhow!("the broker has stopped"))
    }
}

impl Drop for BenchBroker {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            self.runtime.block_on(handle.shutdown());
        }
    }
}

/// One MQTT client behind a counting relay.
pub struct Link {
    client: Client,
    conn: Connection,
    pub relay: Relay,
    published: u64,
    acked: u64,
    /// QoS 1 messages received and PUBACKs sent for them.
    delivered: u64,
    acks_sent: u64,
}

/// What a poll of a link produced.
pub enum Polled {
    Message { topic: String, payload: Vec<u8> },
    Other,
    Timeout,
}

impl Link {
    pub fn connect(broker: SocketAddr, user: &str, client_id: &str) -> Result<Link> {
        let relay = Relay::start(broker)?;
        let addr = relay.addr();
        let mut options = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
        options
            .set_credentials(user, password(user))
            // Long enough that no keep-alive ping lands in a measurement.
            .set_keep_alive(Duration::from_secs(900))
            .set_max_packet_size(64 << 20, 64 << 20)
            .set_clean_session(true)
            .set_request_channel_capacity(1024);
        let (client, mut conn) = Client::new(options, 1024);
        // Without it every small packet waits for the peer's delayed ACK.
        let mut network = rumqttc::NetworkOptions::new();
        network.set_tcp_nodelay(true);
        conn.eventloop.set_network_options(network);
        let mut link = Link {
            client,
            conn,
            relay,
            published: 0,
            acked: 0,
            delivered: 0,
            acks_sent: 0,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match link.conn.recv_timeout(Duration::from_millis(200)) {
                Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) => {
                    if ack.code != rumqttc::ConnectReturnCode::Success {
                        bail!("broker refused {user}: {:?}", ack.code);
                    }
                    return Ok(link);
                }
                Ok(Ok(_)) | Err(RecvTimeoutError::Timeout) => {}
                Ok(Err(e)) => bail!("connecting {user}: {e}"),
                Err(RecvTimeoutError::Disconnected) => bail!("connecting {user}: closed"),
            }
            if Instant::now() > deadline {
                bail!("connecting {user}: no CONNACK");
            }
        }
    }

    /// Subscribes (QoS 1) and waits for the broker's acknowledgement.
    pub fn subscribe(&mut self, filters: &[&str]) -> Result<()> {
        for filter in filters {
            self.client
                .try_subscribe(*filter, QoS::AtLeastOnce)
                .with_context(|| format!("subscribing to {filter}"))?;
        }
        let mut pending = filters.len();
        let deadline = Instant::now() + Duration::from_secs(20);
        while pending > 0 {
            if let Ok(Ok(Event::Incoming(Packet::SubAck(ack)))) =
                self.conn.recv_timeout(Duration::from_millis(200))
            {
                if ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                {
                    bail!("the broker refused a subscription among {filters:?}");
                }
                pending -= 1;
            }
            if Instant::now() > deadline {
                bail!("no SUBACK for {filters:?}");
            }
        }
        Ok(())
    }

    pub fn publish(&mut self, topic: &str, payload: Vec<u8>, retain: bool) -> Result<()> {
        self.client
            .try_publish(topic, QoS::AtLeastOnce, retain, payload)
            .with_context(|| format!("publishing on {topic}"))?;
        self.published += 1;
        Ok(())
    }

    pub fn poll(&mut self, timeout: Duration) -> Result<Polled> {
        match self.conn.recv_timeout(timeout) {
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                if p.qos != QoS::AtMostOnce {
                    self.delivered += 1;
                }
                Ok(Polled::Message {
                    topic: p.topic,
                    payload: p.payload.to_vec(),
                })
            }
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => {
                self.acked += 1;
                Ok(Polled::Other)
            }
            Ok(Ok(Event::Outgoing(Outgoing::PubAck(_)))) => {
                self.acks_sent += 1;
                Ok(Polled::Other)
            }
            Ok(Ok(_)) => Ok(Polled::Other),
            Ok(Err(e)) => Err(anyhow!("MQTT connection: {e}")),
            Err(RecvTimeoutError::Timeout) => Ok(Polled::Timeout),
            Err(RecvTimeoutError::Disconnected) => Err(anyhow!("MQTT connection closed")),
        }
    }

    /// Polls until every QoS 1 exchange is complete both ways, then until
    /// the socket has been quiet for a moment: a point between frames.
    pub fn settle(&mut self) -> Result<Traffic> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.acked < self.published || self.acks_sent < self.delivered {
            if let Polled::Message { topic, .. } = self.poll(Duration::from_millis(20))? {
                bail!("unexpected message on {topic} between frames");
            }
            if Instant::now() > deadline {
                bail!("acknowledgements did not complete");
            }
        }
        Ok(self
            .relay
            .settle(Duration::from_millis(40), Duration::from_secs(5)))
    }

    pub fn disconnect(mut self) {
        let _ = self.client.try_disconnect();
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            match self.conn.recv_timeout(Duration::from_millis(50)) {
                Ok(Ok(Event::Outgoing(Outgoing::Disconnect))) | Ok(Err(_)) => break,
                Err(RecvTimeoutError::Disconnected) => break,
                _ => {}
            }
        }
    }
}

/// What a server's shell reports to the harness.
#[derive(Default)]
pub struct ServerStats {
    online_ns: AtomicU64,
    offline_ns: AtomicU64,
    /// Messages handled plus offline steps done.
    events: AtomicU64,
    busy: AtomicBool,
    pending: AtomicBool,
    /// PUBLISH bytes sent to the other server.
    peer_bytes: AtomicU64,
    errors: Mutex<Vec<String>>,
    stop: AtomicBool,
}

/// A server snapshot, for per-frame deltas.
#[derive(Clone, Copy, Debug, Default)]
pub struct ServerSnapshot {
    pub online: Duration,
    pub offline: Duration,
    pub peer_bytes: u64,
    pub socket: Traffic,
}

impl ServerSnapshot {
    fn since(&self, e: &ServerSnapshot) -> ServerSnapshot {
        ServerSnapshot {
            online: self.online.saturating_sub(e.online),
            offline: self.offline.saturating_sub(e.offline),
            peer_bytes: self.peer_bytes.saturating_sub(e.peer_bytes),
            socket: self.socket.since(&e.socket),
        }
    }
}

/// A message a server sends.
pub struct Publish {
    pub topic: String,
    pub payload: Vec<u8>,
    /// Bound for the other server (counted as A↔B traffic).
    pub to_peer: bool,
}

/// A server's protocol logic, as its shell drives it.
pub trait ServerRole: Send {
    fn filters(&self) -> Vec<&'static str>;
    /// Whether a message is frame work (its CPU time counts as online);
    /// asked outside the timed region.
    fn is_online(&self, topic: &str, payload: &[u8]) -> bool;
    fn on_message(&mut self, topic: &str, payload: &[u8]) -> Result<Vec<Publish>>;
    /// What went wrong without failing a step (refusals), for the report.
    fn take_errors(&mut self) -> Vec<String> {
        Vec::new()
    }
    fn has_offline_work(&self) -> bool {
        false
    }
    fn offline_step(&mut self) -> Result<Vec<Publish>> {
        Ok(Vec::new())
    }
}

/// A running server: its thread, its stats and its relay's counters.
pub struct ServerHandle {
    pub stats: Arc<ServerStats>,
    relay_traffic: Arc<Mutex<Traffic>>,
    thread: Option<JoinHandle<Result<()>>>,
}

impl ServerHandle {
    pub fn spawn<R: ServerRole + 'static>(
        broker: SocketAddr,
        user: &'static str,
        client_id: &str,
        threads: usize,
        role: R,
    ) -> Result<ServerHandle> {
        let stats = Arc::new(ServerStats::default());
        let relay_traffic = Arc::new(Mutex::new(Traffic::default()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
        let shared = Arc::clone(&stats);
        let traffic = Arc::clone(&relay_traffic);
        let client_id = client_id.to_string();
        let thread = std::thread::Builder::new()
            .name(client_id.clone())
            .spawn(move || -> Result<()> {
                let setup = || -> Result<(Link, rayon::ThreadPool, CpuGroup)> {
                    let group = CpuGroup::default();
                    group.join_current();
                    let pool = group.pool(threads, &client_id)?;
                    let mut link = Link::connect(broker, user, &client_id)?;
                    link.subscribe(&role.filters())?;
                    Ok((link, pool, group))
                };
                let (mut link, pool, group) = match setup() {
                    Ok(v) => {
                        let _ = ready_tx.send(Ok(()));
                        v
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(anyhow!("{e:#}")));
                        return Err(e);
                    }
                };
                serve(&mut link, &pool, &group, role, &shared, &traffic)
            })
            .context("starting a server thread")?;
        ready_rx
            .recv_timeout(Duration::from_secs(60))
            .context("server did not start")??;
        Ok(ServerHandle {
            stats,
            relay_traffic,
            thread: Some(thread),
        })
    }

    pub fn snapshot(&self) -> ServerSnapshot {
        let s = &self.stats;
        ServerSnapshot {
            online: Duration::from_nanos(s.online_ns.load(Ordering::SeqCst)),
            offline: Duration::from_nanos(s.offline_ns.load(Ordering::SeqCst)),
            peer_bytes: s.peer_bytes.load(Ordering::SeqCst),
            socket: self.relay_traffic.lock().map(|t| *t).unwrap_or_default(),
        }
    }

    fn quiet_state(&self) -> (bool, u64) {
        let s = &self.stats;
        let idle = !s.busy.load(Ordering::SeqCst) && !s.pending.load(Ordering::SeqCst);
        (idle, s.events.load(Ordering::SeqCst))
    }

    pub fn errors(&self) -> Vec<String> {
        self.stats
            .errors
            .lock()
            .map(|e| e.clone())
            .unwrap_or_default()
    }

    pub fn stop(mut self) -> Result<()> {
        self.stats.stop.store(true, Ordering::SeqCst);
        match self.thread.take() {
            Some(t) => t.join().map_err(|_| anyhow!("a server thread panicked"))?,
            None => Ok(()),
        }
    }
}

fn serve<R: ServerRole>(
    link: &mut Link,
    pool: &rayon::ThreadPool,
    group: &CpuGroup,
    mut role: R,
    stats: &ServerStats,
    traffic: &Mutex<Traffic>,
) -> Result<()> {
    let record_error = |e: anyhow::Error| {
        if let Ok(mut errors) = stats.errors.lock() {
            errors.push(format!("{e:#}"));
        }
    };
    let send = |link: &mut Link, out: Vec<Publish>| -> Result<()> {
        for p in out {
            if p.to_peer {
                stats.peer_bytes.fetch_add(
                    publish_packet_len(&p.topic, p.payload.len()) as u64,
                    Ordering::SeqCst,
                );
            }
            link.publish(&p.topic, p.payload, false)?;
        }
        Ok(())
    };
    while !stats.stop.load(Ordering::SeqCst) {
        if let Ok(mut t) = traffic.lock() {
            *t = link.relay.traffic();
        }
        let offline = role.has_offline_work();
        stats.pending.store(offline, Ordering::SeqCst);
        let wait = if offline { 1 } else { 20 };
        match link.poll(Duration::from_millis(wait))? {
            Polled::Message { topic, payload } => {
                stats.busy.store(true, Ordering::SeqCst);
                let online = role.is_online(&topic, &payload);
                let before = group.total();
                let outcome = pool.install(|| role.on_message(&topic, &payload));
                let spent = group.total().saturating_sub(before);
                let counter = if online {
                    &stats.online_ns
                } else {
                    &stats.offline_ns
                };
                counter.fetch_add(spent.as_nanos() as u64, Ordering::SeqCst);
                match outcome {
                    Ok(out) => send(link, out)?,
                    Err(e) => record_error(e.context(format!("handling a message on {topic}"))),
                }
                for e in role.take_errors() {
                    record_error(anyhow!(e));
                }
                stats.events.fetch_add(1, Ordering::SeqCst);
                stats.busy.store(false, Ordering::SeqCst);
            }
            Polled::Timeout if offline => {
                stats.busy.store(true, Ordering::SeqCst);
                let before = group.total();
                let outcome = pool.install(|| role.offline_step());
                let spent = group.total().saturating_sub(before);
                stats
                    .offline_ns
                    .fetch_add(spent.as_nanos() as u64, Ordering::SeqCst);
                match outcome {
                    Ok(out) => send(link, out)?,
                    Err(e) => record_error(e.context("offline work")),
                }
                stats.events.fetch_add(1, Ordering::SeqCst);
                stats.busy.store(false, Ordering::SeqCst);
            }
            Polled::Timeout | Polled::Other => {}
        }
    }
    Ok(())
}

/// Waits until every server has been idle, with nothing in flight, for a
/// while.
pub fn wait_quiet(servers: &[&ServerHandle]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut last: Vec<u64> = Vec::new();
    let mut stable_since = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(5));
        let states: Vec<(bool, u64)> = servers.iter().map(|s| s.quiet_state()).collect();
        let events: Vec<u64> = states.iter().map(|(_, e)| *e).collect();
        let idle = states.iter().all(|(i, _)| *i);
        if !idle || events != last {
            last = events;
            stable_since = Instant::now();
        } else if stable_since.elapsed() >= Duration::from_millis(80) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the servers did not go quiet");
        }
    }
}

// ---------------------------------------------------------------------------
// veil's servers.

/// Milliseconds since the server started (the nodes' clock).
fn millis_since(start: Instant) -> Millis {
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

fn is_online(body: &Body) -> bool {
    matches!(
        body,
        Body::Frame(_) | Body::Round(_) | Body::RoundReply { .. } | Body::Output(_)
    )
}

/// A node's transmits as publishes (A↔B ones counted as peer traffic),
/// and its refusals into `errors`: in the bench nothing is malformed or
/// lost, so a refusal is a bug.
fn publishes(
    transmits: Vec<Transmit>,
    refusals: Vec<Refusal>,
    errors: &mut Vec<String>,
) -> Vec<Publish> {
    errors.extend(refusals.into_iter().map(|r| {
        format!(
            "{} from {} refused ({}): {}",
            r.what, r.from, r.code, r.detail
        )
    }));
    transmits
        .into_iter()
        .map(|t| Publish {
            to_peer: t.topic == topics::a_to_b(B_WORKER) || t.topic == topics::b_to_a(B_WORKER),
            topic: t.topic,
            payload: t.payload,
        })
        .collect()
}

fn node_message(topic: &str, payload: &[u8]) -> NodeInput {
    NodeInput::Message {
        topic: topic.to_string(),
        payload: Bytes::copy_from_slice(payload),
    }
}

/// Server A as its shell runs it: the node owns routing, the device-topic
/// check, parking and ordering; the bench moves bytes and times them.
struct VeilA {
    node: ServerANode<PaillierPublic>,
    precompute_due: bool,
    started: Instant,
    errors: Vec<String>,
}

impl VeilA {
    fn drain(&mut self) -> Vec<Publish> {
        let mut out = Vec::new();
        loop {
            let transmits: Vec<Transmit> =
                std::iter::from_fn(|| self.node.poll_transmit()).collect();
            let refusals = std::iter::from_fn(|| self.node.poll_event())
                .filter_map(|e| match e {
                    AEvent::Refused(r) => Some(r),
                    _ => None,
                })
                .collect();
            let tokens: Vec<u64> = transmits.iter().filter_map(|t| t.confirm).collect();
            out.extend(publishes(transmits, refusals, &mut self.errors));
            if tokens.is_empty() {
                return out;
            }
            // The broker is on loopback and nothing crashes: an output
            // handed to the client counts as confirmed (which may start
            // the session's next frame).
            let now = millis_since(self.started);
            for token in tokens {
                self.node.handle(now, NodeInput::Confirmed(token));
            }
        }
    }
}

fn envelope_is_online(payload: &[u8]) -> bool {
    Envelope::from_bytes(payload).is_ok_and(|e| is_online(&e.body))
}

impl ServerRole for VeilA {
    fn filters(&self) -> Vec<&'static str> {
        vec![
            topics::filters::FRAMES,
            topics::filters::SESSIONS_A,
            "veil/v1/ba/bench",
        ]
    }

    fn is_online(&self, _topic: &str, payload: &[u8]) -> bool {
        envelope_is_online(payload)
    }

    fn on_message(&mut self, topic: &str, payload: &[u8]) -> Result<Vec<Publish>> {
        self.node
            .handle(millis_since(self.started), node_message(topic, payload));
        self.precompute_due = true;
        Ok(self.drain())
    }

    fn has_offline_work(&self) -> bool {
        self.precompute_due || self.node.has_work()
    }

    fn offline_step(&mut self) -> Result<Vec<Publish>> {
        if self.node.has_work() {
            self.node.work(millis_since(self.started));
            return Ok(self.drain());
        }
        self.node.machine().backend().precompute();
        self.precompute_due = false;
        Ok(Vec::new())
    }

    fn take_errors(&mut self) -> Vec<String> {
        std::mem::take(&mut self.errors)
    }
}

/// Server B as its shell runs it (see [`VeilA`]).
struct VeilB {
    node: ServerBNode<PaillierSecret>,
    precompute_due: bool,
    started: Instant,
    errors: Vec<String>,
}

impl ServerRole for VeilB {
    fn filters(&self) -> Vec<&'static str> {
        vec![
            topics::filters::SESSIONS_B,
            topics::filters::ACKS,
            topics::filters::A_TO_B,
        ]
    }

    fn is_online(&self, _topic: &str, payload: &[u8]) -> bool {
        envelope_is_online(payload)
    }

    fn on_message(&mut self, topic: &str, payload: &[u8]) -> Result<Vec<Publish>> {
        self.node
            .handle(millis_since(self.started), node_message(topic, payload));
        self.precompute_due = true;
        let transmits = std::iter::from_fn(|| self.node.poll_transmit()).collect();
        let refusals = std::iter::from_fn(|| self.node.poll_event())
            .filter_map(|e| match e {
                BEvent::Refused(r) => Some(r),
                _ => None,
            })
            .collect();
        Ok(publishes(transmits, refusals, &mut self.errors))
    }

    fn has_offline_work(&self) -> bool {
        self.precompute_due
    }

    fn offline_step(&mut self) -> Result<Vec<Publish>> {
        self.node.machine().backend().precompute();
        self.precompute_due = false;
        Ok(Vec::new())
    }

    fn take_errors(&mut self) -> Vec<String> {
        std::mem::take(&mut self.errors)
    }
}

struct ConvA {
    server: ConvServer,
}

impl ServerRole for ConvA {
    fn filters(&self) -> Vec<&'static str> {
        vec![CONV_UP_FILTER]
    }

    fn is_online(&self, _topic: &str, payload: &[u8]) -> bool {
        ConvEnvelope::from_bytes(payload).is_ok_and(|e| matches!(e.body, ConvBody::Inputs { .. }))
    }

    fn on_message(&mut self, topic: &str, payload: &[u8]) -> Result<Vec<Publish>> {
        let envelope = ConvEnvelope::from_bytes(payload)?;
        let owner = topic
            .strip_prefix("veil/v1/conv/")
            .and_then(|rest| rest.split('/').next());
        if owner != Some(envelope.device.as_str()) {
            bail!(
                "topic {topic} carries a message of device {}",
                envelope.device
            );
        }
        let out = match self.server.handle(envelope)? {
            Some(reply) => vec![Publish {
                topic: conv_down(&reply.device),
                payload: reply.to_bytes()?,
                to_peer: false,
            }],
            None => Vec::new(),
        };
        Ok(out)
    }
}

// ---------------------------------------------------------------------------
// The device side.

/// A frame's input and its reference class.
pub struct Input {
    pub x_hat: Vec<i64>,
    pub reference_class: Option<usize>,
}

/// What one approach's run produced, for the report and for replay.
pub struct Run {
    pub report: ApproachReport,
    /// Messages the device received per measured frame, in order.
    pub received: Vec<Vec<Vec<u8>>>,
}

/// The device's CPU. The device's whole loop runs on the single worker of
/// a one-thread rayon pool (a gateway has one core to spare), so anything
/// its code does in parallel (key generation's prime search, batch
/// ciphertext validation) runs inline on that thread, and the thread's own
/// CPU clock read around each piece of work holds all of it, with no
/// cross-thread hand-off in the measurement.
fn on_device_thread<T: Send>(f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .thread_name(|_| "device".into())
        .build()
        .context("building the device's thread")?;
    pool.install(f)
}

/// Runs device work, adding its CPU time to `spent`.
fn device_work<T>(spent: &mut Duration, f: impl FnOnce() -> T) -> T {
    let before = thread_cpu_time();
    let out = f();
    *spent += thread_cpu_time().saturating_sub(before);
    out
}

/// Session openings measured per approach: the one over the network and
/// repetitions of the same device code.
const SETUP_SAMPLES: usize = 5;

fn setup_cost(samples: &[Duration], wall: Duration, traffic: Traffic) -> SetupCost {
    let ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    SetupCost {
        cpu_ms: ms.iter().sum::<f64>() / ms.len().max(1) as f64,
        cpu_ms_samples: ms,
        wall_ms: wall.as_secs_f64() * 1e3,
        bytes_sent: traffic.sent,
        bytes_received: traffic.received,
        ..SetupCost::default()
    }
}

fn server_cost(a: ServerSnapshot, b: Option<ServerSnapshot>, frames: usize) -> ServerCost {
    let n = frames.max(1) as f64;
    let ms = |d: Duration| d.as_secs_f64() * 1e3 / n;
    let b = b.unwrap_or_default();
    ServerCost {
        a_cpu_online_ms: ms(a.online),
        a_cpu_offline_ms: ms(a.offline),
        b_cpu_online_ms: ms(b.online),
        b_cpu_offline_ms: ms(b.offline),
        ab_bytes: (a.peer_bytes + b.peer_bytes) as f64 / n,
        a_socket_bytes: a.socket.total() as f64 / n,
        b_socket_bytes: b.socket.total() as f64 / n,
    }
}

fn check_servers(servers: &[&ServerHandle]) -> Result<()> {
    for s in servers {
        let errors = s.errors();
        if let Some(first) = errors.first() {
            bail!("a server failed ({} errors), first: {first}", errors.len());
        }
        if s.thread.as_ref().is_some_and(|t| t.is_finished()) {
            bail!("a server's MQTT connection ended");
        }
    }
    Ok(())
}

fn progress(quiet: bool, text: &str) {
    if !quiet {
        eprintln!("{text}");
    }
}

/// One approach's frames: the cost of each measured one, the messages the
/// device received for it, and a progress line per frame.
struct FrameLog {
    approach: &'static str,
    total: usize,
    warmup: usize,
    quiet: bool,
    frames: Vec<FrameCost>,
    received: Vec<Vec<Vec<u8>>>,
}

impl FrameLog {
    fn new(approach: &'static str, total: usize, warmup: usize, quiet: bool) -> FrameLog {
        FrameLog {
            approach,
            total,
            warmup,
            quiet,
            frames: Vec::new(),
            received: Vec::new(),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn record(
        &mut self,
        i: usize,
        spent: Duration,
        capture: Duration,
        wall: Duration,
        traffic: &Traffic,
        class: Option<usize>,
        got: Vec<Vec<u8>>,
    ) {
        let measured = i >= self.warmup;
        if measured {
            self.frames.push(FrameCost {
                cpu_us: spent.as_secs_f64() * 1e6,
                capture_cpu_us: capture.as_secs_f64() * 1e6,
                wall_ms: wall.as_secs_f64() * 1e3,
                bytes_sent: traffic.sent,
                bytes_received: traffic.received,
                class: class.unwrap_or(0),
            });
            self.received.push(got);
        }
        let device = if spent < Duration::from_millis(1) {
            format!("{:.1} µs", spent.as_secs_f64() * 1e6)
        } else {
            format!("{:.1} ms", spent.as_secs_f64() * 1e3)
        };
        progress(
            self.quiet,
            &format!(
                "{}: frame {}/{} ({}) device {device}, {:.1} ms wall, {} B sent, {} B received",
                self.approach,
                i + 1,
                self.total,
                if measured { "measured" } else { "warm-up" },
                wall.as_secs_f64() * 1e3,
                traffic.sent,
                traffic.received
            ),
        );
    }
}

/// What the veil run leaves for replaying the device's work.
pub struct VeilReplayState {
    pub config: DeviceConfig,
    pub sessions: Vec<DeviceSession>,
    pub current: Option<SessionId>,
}

/// Runs veil: servers A and B and the device, over the broker.
pub fn run_veil(
    broker: SocketAddr,
    model: &Model,
    inputs: &[Input],
    warmup: usize,
    quiet: bool,
) -> Result<(Run, VeilReplayState)> {
    let params = Params::default();
    let topology = Arc::new(model.topology().clone());
    progress(quiet, "veil: generating the servers' keys...");
    let key_a = Arc::new(SecretKey::generate(&mut rand::rng(), KeySize::Bits2048)?);
    let key_b = Arc::new(SecretKey::generate(&mut rand::rng(), KeySize::Bits2048)?);
    let public_b = key_b.public_key().clone();
    let mut rng = rand::rng();
    let a = ServerA::new(
        ServerAConfig {
            params: params.clone(),
            topology: Arc::clone(&topology),
            plan: Arc::new(model.plan().clone()),
            key: Arc::clone(&key_a),
            rounding_key: Seed::random(&mut rng),
        },
        PaillierPublic::new(
            public_b.clone(),
            pooled_noise(&public_b, 1024),
            rand::random(),
        ),
    )?;
    let b = ServerB::new(
        ServerBConfig {
            params: params.clone(),
            topology: Arc::clone(&topology),
            key: Arc::clone(&key_b),
        },
        PaillierSecret::new(
            Arc::clone(&key_b),
            pooled_noise(&public_b, 16384),
            rand::random(),
        ),
    )?;
    let server_b = ServerHandle::spawn(
        broker,
        "server-b",
        "server-b-bench",
        2,
        VeilB {
            node: ServerBNode::new(b, BOptions::default(), Vec::new()),
            precompute_due: true,
            started: Instant::now(),
            errors: Vec::new(),
        },
    )?;
    let server_a = ServerHandle::spawn(
        broker,
        "server-a",
        "server-a-bench",
        2,
        VeilA {
            node: ServerANode::new(
                a,
                AOptions {
                    worker: B_WORKER.into(),
                    ..AOptions::default()
                },
                Vec::new(),
            ),
            precompute_due: true,
            started: Instant::now(),
            errors: Vec::new(),
        },
    )?;
    progress(quiet, "veil: servers up, filling their noise pools...");
    wait_quiet(&[&server_a, &server_b])?;

    let config = DeviceConfig {
        device: DEVICE_USER.into(),
        params,
        topology,
        server_a: key_a.public_key().clone(),
        server_b: public_b,
    };
    let device_config = config.clone();
    let (setup, frames, received, sessions, sid, cost) = on_device_thread(|| {
        let mut device = Device::new(device_config)?;
        let mut link = Link::connect(broker, DEVICE_USER, &format!("{DEVICE_USER}-bench-veil"))?;
        link.subscribe(&[&topics::result(DEVICE_USER)])?;
        let before_setup = link.settle()?;

        // Session set-up: the two seed encryptions and their messages.
        let mut setup_cpu = Duration::ZERO;
        let started = Instant::now();
        let messages = device_work(&mut setup_cpu, || -> Result<Vec<(String, Vec<u8>)>> {
            let init = device.open_session(0, &mut rand::rng())?;
            init.into_iter()
                .map(|o| {
                    let server = if o.to == Peer::ServerA { 'a' } else { 'b' };
                    Ok((topics::session(DEVICE_USER, server), o.envelope.to_bytes()?))
                })
                .collect()
        })?;
        for (topic, payload) in messages {
            link.publish(&topic, payload, true)?;
        }
        while link.acked < link.published {
            link.poll(Duration::from_millis(20))?;
        }
        let setup_wall = started.elapsed();
        wait_quiet(&[&server_a, &server_b])?;
        let after_setup = link.settle()?;
        let setup_traffic = after_setup.since(&before_setup);
        let mut samples = vec![setup_cpu];
        for _ in 1..SETUP_SAMPLES {
            let mut scratch = Device::new(device.config().clone())?;
            let mut spent = Duration::ZERO;
            device_work(&mut spent, || -> Result<()> {
                for out in scratch.open_session(0, &mut rand::rng())? {
                    std::hint::black_box(out.envelope.to_bytes()?);
                }
                Ok(())
            })?;
            samples.push(spent);
        }
        let setup = setup_cost(&samples, setup_wall, setup_traffic);
        check_servers(&[&server_a, &server_b])?;
        let sid = device
            .current()
            .map(|s| s.sid)
            .ok_or_else(|| anyhow!("no session after opening one"))?;
        let sessions: Vec<DeviceSession> = device.sessions().cloned().collect();

        let mut log = FrameLog::new("veil", inputs.len(), warmup, quiet);
        let mut a_start = server_a.snapshot();
        let mut b_start = server_b.snapshot();
        let mut before = link.settle()?;
        let mut device = VeilDevice::new(device);
        for (i, input) in inputs.iter().enumerate() {
            if i == warmup {
                a_start = server_a.snapshot();
                b_start = server_b.snapshot();
            }
            let t = i as u64;
            let mut spent = Duration::ZERO;
            let started = Instant::now();
            let frame = device_work(&mut spent, || -> Result<&[u8]> {
                device.capture(&input.x_hat, t)
            })?
            .to_vec();
            let capture = spent;
            link.publish(&topics::frame(DEVICE_USER), frame, false)?;
            let mut got = Vec::new();
            let (class, wall) = loop {
                match link.poll(Duration::from_millis(50))? {
                    Polled::Message { topic, payload } if topic == topics::result(DEVICE_USER) => {
                        let (opened_t, class) =
                            device_work(&mut spent, || device.result(&payload))?;
                        let wall = started.elapsed();
                        got.push(payload);
                        if opened_t == t {
                            break (Some(class), wall);
                        }
                    }
                    Polled::Message { topic, .. } => bail!("unexpected message on {topic}"),
                    _ => {
                        check_servers(&[&server_a, &server_b])?;
                        if started.elapsed() > Duration::from_secs(1800) {
                            bail!("frame {t}: no result");
                        }
                    }
                }
            };
            wait_quiet(&[&server_a, &server_b])?;
            let after = link.settle()?;
            let traffic = after.since(&before);
            before = after;
            log.record(i, spent, capture, wall, &traffic, class, got);
        }
        // The session's end: the acknowledgement of its last result, which
        // no frame carries, goes on its own (the device node's timer).
        let mut end_cpu = Duration::ZERO;
        let acks = device_work(&mut end_cpu, || -> Result<Vec<Vec<u8>>> {
            device
                .take_acks()
                .into_iter()
                .map(|(sid, t)| Ok(device.device.ack(sid, t).envelope.to_device_bytes()?))
                .collect()
        })?;
        for ack in acks {
            link.publish(&topics::ack(DEVICE_USER), ack, false)?;
        }
        wait_quiet(&[&server_a, &server_b])?;
        let end = link.settle()?.since(&before);
        let setup = SetupCost {
            end_cpu_us: end_cpu.as_secs_f64() * 1e6,
            end_bytes_sent: end.sent,
            end_bytes_received: end.received,
            ..setup
        };
        check_servers(&[&server_a, &server_b])?;
        let FrameLog {
            frames, received, ..
        } = log;
        let n = frames.len();
        let cost = server_cost(
            server_a.snapshot().since(&a_start),
            Some(server_b.snapshot().since(&b_start)),
            n,
        );
        link.disconnect();
        Ok((setup, frames, received, sessions, sid, cost))
    })?;
    server_a.stop()?;
    server_b.stop()?;
    Ok((
        Run {
            report: ApproachReport::from_frames(setup, frames, cost),
            received,
        },
        VeilReplayState {
            config,
            sessions,
            current: Some(sid),
        },
    ))
}

/// Runs the conventional baseline: its server A and the device, over the
/// broker. Returns the run and the device's secret key (for replay).
pub fn run_conventional(
    broker: SocketAddr,
    model: &Model,
    inputs: &[Input],
    warmup: usize,
    quiet: bool,
) -> Result<(Run, SecretKey, SessionId)> {
    let topology: Arc<Topology> = Arc::new(model.topology().clone());
    let server = ConvServer::new(ConvServerConfig {
        topology: Arc::clone(&topology),
        plan: Arc::new(model.plan().clone()),
    })?;
    let server_a = ServerHandle::spawn(
        broker,
        "server-a",
        "server-a-bench-conv",
        2,
        ConvA { server },
    )?;
    let (setup, frames, received, cost, key, sid) = on_device_thread(|| {
        let mut device = ConvDevice::new(DEVICE_USER, Arc::clone(&topology), KeySize::Bits2048)?;
        let mut link = Link::connect(broker, DEVICE_USER, &format!("{DEVICE_USER}-bench-conv"))?;
        link.subscribe(&[&conv_down(DEVICE_USER)])?;
        let before_setup = link.settle()?;

        progress(quiet, "conventional: device generates its key pair...");
        let mut setup_cpu = Duration::ZERO;
        let started = Instant::now();
        let session = device_work(&mut setup_cpu, || -> Result<Vec<u8>> {
            Ok(device.open_session(&mut rand::rng())?.to_bytes()?)
        })?;
        link.publish(&conv_up(DEVICE_USER, "session"), session, true)?;
        while link.acked < link.published {
            link.poll(Duration::from_millis(20))?;
        }
        let setup_wall = started.elapsed();
        wait_quiet(&[&server_a])?;
        let after_setup = link.settle()?;
        let setup_traffic = after_setup.since(&before_setup);
        let mut samples = vec![setup_cpu];
        for _ in 1..SETUP_SAMPLES {
            let mut scratch =
                ConvDevice::new(DEVICE_USER, Arc::clone(&topology), KeySize::Bits2048)?;
            let mut spent = Duration::ZERO;
            device_work(&mut spent, || -> Result<()> {
                std::hint::black_box(scratch.open_session(&mut rand::rng())?.to_bytes()?);
                Ok(())
            })?;
            samples.push(spent);
        }
        let setup = setup_cost(&samples, setup_wall, setup_traffic);
        check_servers(&[&server_a])?;

        let mut log = FrameLog::new("conventional", inputs.len(), warmup, quiet);
        let mut a_start = server_a.snapshot();
        let mut before = link.settle()?;
        for (i, input) in inputs.iter().enumerate() {
            if i == warmup {
                a_start = server_a.snapshot();
            }
            let t = i as u64;
            let mut spent = Duration::ZERO;
            let started = Instant::now();
            let frame = device_work(&mut spent, || -> Result<Vec<u8>> {
                Ok(device
                    .start_frame(&input.x_hat, t, &mut rand::rng())?
                    .to_bytes()?)
            })?;
            let capture = spent;
            link.publish(&conv_up(DEVICE_USER, "data"), frame, false)?;
            let mut got = Vec::new();
            let (class, wall) = loop {
                match link.poll(Duration::from_millis(50))? {
                    Polled::Message { topic, payload } if topic == conv_down(DEVICE_USER) => {
                        let step = device_work(&mut spent, || -> Result<_> {
                            let envelope = ConvEnvelope::from_bytes(&payload)?;
                            Ok(match device.on_message(&envelope, &mut rand::rng())? {
                                ConvStep::Send(next) => Err(next.to_bytes()?),
                                ConvStep::Done { t, outputs } => Ok((t, argmax(&outputs))),
                            })
                        })?;
                        got.push(payload);
                        match step {
                            Err(next) => {
                                link.publish(&conv_up(DEVICE_USER, "data"), next, false)?
                            }
                            Ok((done_t, class)) if done_t == t => break (class, started.elapsed()),
                            Ok(_) => {}
                        }
                    }
                    Polled::Message { topic, .. } => bail!("unexpected message on {topic}"),
                    _ => {
                        check_servers(&[&server_a])?;
                        if started.elapsed() > Duration::from_secs(1800) {
                            bail!("frame {t}: no result");
                        }
                    }
                }
            };
            wait_quiet(&[&server_a])?;
            let after = link.settle()?;
            let traffic = after.since(&before);
            before = after;
            log.record(i, spent, capture, wall, &traffic, class, got);
        }
        check_servers(&[&server_a])?;
        let FrameLog {
            frames, received, ..
        } = log;
        let cost = server_cost(server_a.snapshot().since(&a_start), None, frames.len());
        link.disconnect();
        let sid = device
            .sid()
            .ok_or_else(|| anyhow!("no session after opening one"))?;
        let key_bytes = device
            .secret_key()
            .ok_or_else(|| anyhow!("no key after opening a session"))?
            .to_bytes();
        let key = SecretKey::from_bytes(&key_bytes)?;
        Ok((setup, frames, received, cost, key, sid))
    })?;
    server_a.stop()?;
    Ok((
        Run {
            report: ApproachReport::from_frames(setup, frames, cost),
            received,
        },
        key,
        sid,
    ))
}
