//! veil-attack: one authenticated device turned hostile, as the
//! hostile-client test and `veil load --attack` run it against a broker
//! and both servers. With the device's own valid password it:
//!
//! - floods its own topics with QoS 0 and with QoS 1 publishes as fast as
//!   the broker takes them, cycling through maximum-size payloads, garbage,
//!   frames with counters near `u64::MAX` or far ahead, new sessions (with
//!   the real fingerprints when [`Pins`] are given, so every one costs the
//!   servers a decryption), frames naming another device and bodies of the
//!   wrong kind;
//! - tries to connect under client ids of the servers and of other devices
//!   (taking over their sessions), and counts what the broker says;
//! - tries to join server A's shared subscription group and to read every
//!   device's frames.
//!
//! Everything it sees is counted in an [`AttackReport`]; what the servers
//! and the broker refused is counted on their side.

#![warn(
    missing_docs,
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

mod payloads;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rumqttc::{AsyncClient, ConnectionError, Event, MqttOptions, Packet, QoS, SubscribeReasonCode};
use tokio::task::JoinSet;
use veil_protocol::{Body, Envelope};

use payloads::{Arsenal, Kind};

/// The fingerprints a real device pins (with the model name), so that
/// forged sessions pass the cheap checks and reach decryption.
#[derive(Clone, Debug, Default)]
pub struct Pins {
    /// The model's name.
    pub model: String,
    /// SHA-256 fingerprint of the model's public topology.
    pub topology: [u8; 32],
    /// Fingerprint of the protocol parameters.
    pub params: [u8; 32],
    /// Fingerprint of server A's public key.
    pub server_a: [u8; 32],
    /// Fingerprint of server B's public key.
    pub server_b: [u8; 32],
}

/// Whom to attack, and as whom.
#[derive(Clone, Debug)]
pub struct Target {
    /// The broker's host.
    pub host: String,
    /// The broker's port (plain MQTT).
    pub port: u16,
    /// The attacker's own (valid) username; its device id is the username.
    pub username: String,
    /// The attacker's own (valid) password.
    pub password: String,
    /// Client ids to try to take over: the servers' and other devices'.
    pub victims: Vec<String>,
    /// Filters to try to subscribe to, e.g. A's `$share` group.
    pub forbidden_filters: Vec<String>,
    /// Largest payload the broker accepts (`max_payload_size`).
    pub max_payload: usize,
    /// The real pins; without them forged sessions fail the cheap checks.
    pub pins: Option<Pins>,
}

/// What the attacker did and what it heard back.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AttackReport {
    /// Publishes at QoS 0.
    pub qos0_published: u64,
    /// Publishes at QoS 1.
    pub qos1_published: u64,
    /// Payload bytes published.
    pub bytes_published: u64,
    /// Payloads at the broker's size limit.
    pub huge: u64,
    /// Payloads that are not valid veil messages.
    pub malformed: u64,
    /// Frames whose counter jumps far ahead.
    pub counter_jumps: u64,
    /// Session messages published.
    pub sessions: u64,
    /// Session messages carrying the real pins (each costs a decryption).
    pub forged: u64,
    /// Refusals the servers sent back on the attacker's result topic.
    pub rejects_heard: u64,
    /// Connections attempted under a victim's client id.
    pub takeovers_tried: u64,
    /// Of those, refused by the broker.
    pub takeovers_refused: u64,
    /// Connections under a victim's client id that the broker accepted:
    /// each is a successful takeover.
    pub takeovers_accepted: u64,
    /// Forbidden filters the broker refused.
    pub subscriptions_refused: u64,
    /// Forbidden filters the broker granted.
    pub subscriptions_granted: u64,
    /// Times a flooding connection was dropped (kicked or timed out).
    pub disconnects: u64,
}

#[derive(Default)]
struct Counts {
    qos0: AtomicU64,
    qos1: AtomicU64,
    bytes: AtomicU64,
    huge: AtomicU64,
    malformed: AtomicU64,
    jumps: AtomicU64,
    sessions: AtomicU64,
    forged: AtomicU64,
    rejects: AtomicU64,
    takeovers: AtomicU64,
    takeovers_refused: AtomicU64,
    takeovers_accepted: AtomicU64,
    subs_refused: AtomicU64,
    subs_granted: AtomicU64,
    disconnects: AtomicU64,
}

fn bump(a: &AtomicU64, n: u64) {
    a.fetch_add(n, Ordering::Relaxed);
}

impl Counts {
    fn report(&self) -> AttackReport {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        AttackReport {
            qos0_published: get(&self.qos0),
            qos1_published: get(&self.qos1),
            bytes_published: get(&self.bytes),
            huge: get(&self.huge),
            malformed: get(&self.malformed),
            counter_jumps: get(&self.jumps),
            sessions: get(&self.sessions),
            forged: get(&self.forged),
            rejects_heard: get(&self.rejects),
            takeovers_tried: get(&self.takeovers),
            takeovers_refused: get(&self.takeovers_refused),
            takeovers_accepted: get(&self.takeovers_accepted),
            subscriptions_refused: get(&self.subs_refused),
            subscriptions_granted: get(&self.subs_granted),
            disconnects: get(&self.disconnects),
        }
    }
}

/// A running attack; [`Attack::stop`] ends it and reports.
pub struct Attack {
    stop: Arc<AtomicBool>,
    counts: Arc<Counts>,
    tasks: JoinSet<()>,
}

impl Attack {
    /// Starts every kind of attack at once, each in its own task.
    pub fn start(target: Target) -> Attack {
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Counts::default());
        let arsenal = Arc::new(Arsenal::new(
            &target.username,
            target.max_payload,
            target.pins.clone(),
        ));
        let target = Arc::new(target);
        let mut tasks = JoinSet::new();
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
            tasks.spawn(flood(
                Arc::clone(&target),
                Arc::clone(&arsenal),
                qos,
                Arc::clone(&stop),
                Arc::clone(&counts),
            ));
        }
        tasks.spawn(takeovers(
            Arc::clone(&target),
            Arc::clone(&stop),
            Arc::clone(&counts),
        ));
        tasks.spawn(subscriptions(
            Arc::clone(&target),
            Arc::clone(&stop),
            Arc::clone(&counts),
        ));
        Attack {
            stop,
            counts,
            tasks,
        }
    }

    /// What the attack has done so far.
    pub fn report(&self) -> AttackReport {
        self.counts.report()
    }

    /// Ends every task and reports.
    pub async fn stop(mut self) -> AttackReport {
        self.stop.store(true, Ordering::Relaxed);
        if tokio::time::timeout(Duration::from_secs(5), async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await
        .is_err()
        {
            self.tasks.abort_all();
        }
        self.counts.report()
    }
}

impl Drop for Attack {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.tasks.abort_all();
    }
}

fn options(target: &Target, client_id: &str) -> MqttOptions {
    let mut o = MqttOptions::new(client_id, target.host.clone(), target.port);
    o.set_credentials(target.username.clone(), target.password.clone());
    let packet = target.max_payload.saturating_add(64 * 1024);
    o.set_max_packet_size(packet, packet);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_clean_session(true);
    o
}

/// One flooding connection: publishes the arsenal round-robin at `qos`,
/// reconnecting whenever the broker drops it, and listens for refusals on
/// its own result topic.
async fn flood(
    target: Arc<Target>,
    arsenal: Arc<Arsenal>,
    qos: QoS,
    stop: Arc<AtomicBool>,
    counts: Arc<Counts>,
) {
    let id = format!("{}-flood{}", target.username, qos as u8);
    let (client, mut eventloop) = AsyncClient::new(options(&target, &id), 64);
    let result_topic = format!("veil/v1/dev/{}/result", target.username);
    // Queued ahead of every publish, so it goes out right after CONNECT.
    let _ = client
        .subscribe(result_topic.clone(), QoS::AtLeastOnce)
        .await;
    let listener = {
        let counts = Arc::clone(&counts);
        let stop = Arc::clone(&stop);
        let client = client.clone();
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = client.try_subscribe(result_topic.clone(), QoS::AtLeastOnce);
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if let Ok(env) = Envelope::from_topic(&p.topic, &p.payload)
                            && matches!(env.body, Body::Reject { .. })
                        {
                            bump(&counts.rejects, 1);
                        }
                    }
                    Ok(_) => {}
                    Err(_) => {
                        bump(&counts.disconnects, 1);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        })
    };
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let shot = arsenal.shot(n);
        n = n.wrapping_add(1);
        let len = shot.payload.len() as u64;
        // Bounded by rumqttc's request queue: this waits exactly as long
        // as the broker holds the connection back. Counted once queued.
        let sent = tokio::time::timeout(
            Duration::from_millis(500),
            client.publish_bytes(shot.topic, qos, false, shot.payload),
        )
        .await;
        if !matches!(sent, Ok(Ok(()))) {
            continue;
        }
        bump(
            if qos == QoS::AtMostOnce {
                &counts.qos0
            } else {
                &counts.qos1
            },
            1,
        );
        bump(&counts.bytes, len);
        bump(
            match shot.kind {
                Kind::Huge => &counts.huge,
                Kind::Malformed => &counts.malformed,
                Kind::CounterJump => &counts.jumps,
                Kind::Session => &counts.sessions,
                Kind::Forged => &counts.forged,
            },
            1,
        );
    }
    let _ = client.try_disconnect();
    listener.abort();
}

/// How a connection attempt ended.
async fn connect_once(options: MqttOptions) -> Result<(), ConnectionError> {
    let (client, mut eventloop) = AsyncClient::new(options, 4);
    let outcome = loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => break Ok(()),
            Ok(_) => {}
            Err(e) => break Err(e),
        }
    };
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_millis(100), eventloop.poll()).await;
    outcome
}

/// Connects under each victim's client id in turn, with the attacker's
/// credentials.
async fn takeovers(target: Arc<Target>, stop: Arc<AtomicBool>, counts: Arc<Counts>) {
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) && !target.victims.is_empty() {
        let victim = &target.victims[i % target.victims.len()];
        i = i.wrapping_add(1);
        bump(&counts.takeovers, 1);
        match tokio::time::timeout(
            Duration::from_secs(5),
            connect_once(options(&target, victim)),
        )
        .await
        {
            Ok(Ok(())) => {
                tracing::error!(victim, "takeover: the broker accepted a victim's client id");
                bump(&counts.takeovers_accepted, 1);
            }
            Ok(Err(ConnectionError::ConnectionRefused(_))) => bump(&counts.takeovers_refused, 1),
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Subscribes to each forbidden filter on a fresh connection, again and
/// again (the broker disconnects a client after enough violations).
async fn subscriptions(target: Arc<Target>, stop: Arc<AtomicBool>, counts: Arc<Counts>) {
    let id = format!("{}-share", target.username);
    while !stop.load(Ordering::Relaxed) && !target.forbidden_filters.is_empty() {
        let (client, mut eventloop) = AsyncClient::new(options(&target, &id), 16);
        let session = async {
            while !stop.load(Ordering::Relaxed) {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        for filter in &target.forbidden_filters {
                            let _ = client.try_subscribe(filter.clone(), QoS::AtLeastOnce);
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(ack))) => {
                        for code in ack.return_codes {
                            match code {
                                SubscribeReasonCode::Failure => bump(&counts.subs_refused, 1),
                                SubscribeReasonCode::Success(_) => {
                                    tracing::error!("the broker granted a forbidden filter");
                                    bump(&counts.subs_granted, 1)
                                }
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        for filter in &target.forbidden_filters {
                            let _ = client.try_subscribe(filter.clone(), QoS::AtLeastOnce);
                        }
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(10), session).await;
        let _ = client.try_disconnect();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
