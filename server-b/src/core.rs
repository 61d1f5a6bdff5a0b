//! The worker thread: owns the state machine and the store, and turns each
//! incoming message into durable state and outgoing messages.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use veil_link::{LinkHandle, Message};
use veil_model::Topology;
use veil_paillier::{FixedBaseNoise, NoisePool, NoiseSource, PoolFiller, SecretKey};
use veil_protocol::{
    Body, Envelope, Noise, Outgoing, PaillierSecret, Params, Peer, ProtocolError, RejectCode,
    ServerB, ServerBConfig, SessionId, topics,
};

use crate::store::{Store, now_ms, result_key};
use crate::{Options, ServerBError, Stats};

pub enum Input {
    Connected,
    Message(Message),
    Shutdown,
    Crash,
}

struct Parked {
    since: Instant,
    worker: String,
    envelope: Envelope,
}

pub struct Core {
    options: Options,
    machine: ServerB<PaillierSecret>,
    store: Store,
    link: LinkHandle,
    stats: Arc<Stats>,
    key_bytes: Vec<u8>,
    parked: Vec<Parked>,
    last_expiry: Instant,
}

fn noise_for(options: &Options, key: &Arc<SecretKey>) -> Noise {
    let mut rng = rand::rng();
    match options.noise {
        NoiseSource::Textbook => Noise::Textbook,
        NoiseSource::FixedBase => Noise::FixedBase(FixedBaseNoise::new(key.public_key(), &mut rng)),
        NoiseSource::Pool => {
            let threads = std::thread::available_parallelism().map_or(1, |n| n.get().div_ceil(2));
            Noise::Pool(NoisePool::new(
                PoolFiller::Secret(Arc::clone(key)),
                options.pool_capacity.max(16),
                threads,
            ))
        }
    }
}

impl Core {
    pub fn new(
        options: Options,
        key: Arc<SecretKey>,
        topology: Arc<Topology>,
        params: Params,
        store: Store,
        link: LinkHandle,
        stats: Arc<Stats>,
    ) -> Result<Core, ServerBError> {
        let backend = PaillierSecret::new(Arc::clone(&key), noise_for(&options, &key));
        let machine = ServerB::new(
            ServerBConfig {
                params,
                topology: Arc::clone(&topology),
                key: Arc::clone(&key),
            },
            backend,
        )?;
        let mut core = Core {
            options,
            machine,
            store,
            link,
            stats,
            key_bytes: key.public_key().to_bytes(),
            parked: Vec::new(),
            last_expiry: Instant::now(),
        };
        core.restore();
        let mut filters = vec![
            topics::filters::SESSIONS_B.to_string(),
            topics::filters::ACKS.to_string(),
        ];
        for worker in &core.options.a_workers {
            filters.push(topics::a_to_b(worker));
        }
        core.link.subscribe(filters);
        tracing::info!(
            key = %key.public_key().fingerprint_hex(),
            model = %topology.name,
            topology = %topology.fingerprint_hex(),
            queued = core.store.queued(),
            "server B ready"
        );
        Ok(core)
    }

    /// Sessions first, then what B finished of each: replays stay refused
    /// across a restart.
    fn restore(&mut self) {
        for (device, bytes) in self.store.sessions() {
            let accepted = Envelope::from_bytes(&bytes)
                .map_err(|e| e.to_string())
                .and_then(|env| {
                    let sid = env.sid;
                    self.machine
                        .handle(env)
                        .map(|_| sid)
                        .map_err(|e| e.to_string())
                });
            match accepted {
                Ok(_) => {
                    self.stats.sessions.fetch_add(1, Ordering::Relaxed);
                }
                Err(reason) => {
                    tracing::warn!(%device, %reason, "stored session no longer accepted; dropping it");
                    if let Ok(env) = Envelope::from_bytes(&bytes) {
                        self.store.remove_session(env.sid);
                    }
                }
            }
        }
        for (sid, t) in self.store.completed() {
            self.machine.mark_completed(sid, t);
        }
        self.stats
            .queued
            .store(self.store.queued(), Ordering::Relaxed);
    }

    pub fn run(&mut self, inputs: Receiver<Input>) {
        loop {
            match inputs.recv_timeout(Duration::from_millis(500)) {
                Ok(Input::Connected) => {
                    self.link
                        .publish(topics::server_key('b'), self.key_bytes.clone(), true);
                }
                Ok(Input::Message(message)) => self.on_message(message),
                Ok(Input::Shutdown) => {
                    let _ = self.store.flush();
                    return;
                }
                Ok(Input::Crash) | Err(RecvTimeoutError::Disconnected) => return,
                Err(RecvTimeoutError::Timeout) => {}
            }
            self.housekeeping();
        }
    }

    fn housekeeping(&mut self) {
        let now = Instant::now();
        let timeout = self.options.park_timeout;
        let (expired, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.parked)
            .into_iter()
            .partition(|p| now.duration_since(p.since) >= timeout);
        self.parked = kept;
        for p in expired {
            tracing::warn!(device = %p.envelope.device, t = p.envelope.t, sid = %p.envelope.sid, "parked message expired");
            self.reject_to_a(&p.worker, &p.envelope, RejectCode::UnknownSession);
        }
        let every =
            (self.options.result_ttl / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
        if now.duration_since(self.last_expiry) >= every {
            self.last_expiry = now;
            self.expire();
        }
    }

    fn expire(&mut self) {
        let ttl_ms = self.options.result_ttl.as_millis() as u64;
        let now = now_ms();
        for queued in self.store.all_results() {
            if now.saturating_sub(queued.stored_at_ms) >= ttl_ms {
                self.store.remove_key(&queued.key);
                self.stats.expired.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    age_s = now.saturating_sub(queued.stored_at_ms) / 1000,
                    "result expired without an acknowledgement"
                );
            }
        }
        let _ = self.store.flush();
        self.stats
            .queued
            .store(self.store.queued(), Ordering::Relaxed);
    }

    fn on_message(&mut self, message: Message) {
        let Message {
            topic,
            payload,
            retain,
            ack,
        } = message;
        if let Some(worker) = topic.strip_prefix("veil/v1/ab/") {
            let worker = worker.to_string();
            self.on_from_a(&worker, &payload);
        } else if let Some(device) = topics::device_of(&topic).map(str::to_string) {
            if topic == topics::session(&device, 'b') {
                if !payload.is_empty() {
                    self.on_session(&device, &payload, retain);
                }
            } else if topic == topics::ack(&device) {
                self.on_ack(&device, &payload);
            } else {
                tracing::debug!(%topic, "message on an unexpected topic");
            }
        } else {
            tracing::debug!(%topic, "message on an unexpected topic");
        }
        // Everything above that must survive a crash is in the store.
        self.link.ack(ack);
    }

    fn refuse(&self, what: &str, from: &str, reason: &str) {
        self.stats.rejected.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%from, %reason, "rejected {what}");
    }

    /// A device's own message was refused: tell it, on its result topic.
    fn reject_to_device(
        &self,
        device: &str,
        sid: SessionId,
        t: u64,
        code: RejectCode,
        detail: &str,
    ) {
        let envelope = Envelope::new(
            device,
            sid,
            t,
            Body::Reject {
                code,
                detail: detail.to_string(),
            },
        );
        if let Ok(bytes) = envelope.to_bytes() {
            self.link.publish(topics::result(device), bytes, false);
        }
    }

    /// The detail stays in B's log: A gets the coarse code only.
    fn reject_to_a(&self, worker: &str, about: &Envelope, code: RejectCode) {
        let envelope = Envelope::new(
            &about.device,
            about.sid,
            about.t,
            Body::Reject {
                code,
                detail: String::new(),
            },
        );
        if let Ok(bytes) = envelope.to_bytes() {
            self.link.publish(topics::b_to_a(worker), bytes, false);
        }
    }

    /// Decodes a device's message and checks that it names the device
    /// whose topic it came on (the broker's ACL vouches only for that).
    fn device_envelope(&self, device: &str, payload: &[u8], what: &str) -> Option<Envelope> {
        match Envelope::from_bytes(payload) {
            Ok(env) if env.device == device => Some(env),
            Ok(env) => {
                let reason = format!(
                    "message names device {:?} on device {device:?}'s topic",
                    env.device
                );
                self.refuse(what, device, &reason);
                self.reject_to_device(device, env.sid, env.t, RejectCode::WrongDevice, &reason);
                None
            }
            Err(e) => {
                let reason = e.to_string();
                self.refuse(what, device, &reason);
                self.reject_to_device(device, SessionId([0; 16]), 0, e.code(), &reason);
                None
            }
        }
    }

    fn on_session(&mut self, device: &str, payload: &[u8], retain: bool) {
        let Some(env) = self.device_envelope(device, payload, "session") else {
            return;
        };
        if !matches!(env.body, Body::SessionInit(_)) {
            let reason = format!("{} on the session topic", env.body.kind());
            self.refuse("session", device, &reason);
            self.reject_to_device(device, env.sid, env.t, RejectCode::Malformed, &reason);
            return;
        }
        let (sid, t) = (env.sid, env.t);
        let known = self.store.has_session(sid);
        match self.machine.handle(env) {
            Ok(_) => {
                if !known {
                    if let Err(e) = self.store.put_session(sid, device, payload) {
                        tracing::error!(error = %e, "could not store a session");
                    }
                    self.stats.sessions.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(%device, %sid, retained = retain, "session stored");
                }
                self.unpark(sid);
            }
            Err(e) => {
                let reason = e.to_string();
                self.refuse("session", device, &reason);
                self.reject_to_device(device, sid, t, e.code(), &reason);
            }
        }
    }

    fn on_ack(&mut self, device: &str, payload: &[u8]) {
        let Some(env) = self.device_envelope(device, payload, "ack") else {
            return;
        };
        match env.body {
            Body::Ack => {
                if self.store.remove_result(device, env.sid, env.t) {
                    self.stats.acked.fetch_add(1, Ordering::Relaxed);
                    self.stats
                        .queued
                        .store(self.store.queued(), Ordering::Relaxed);
                }
            }
            Body::Sync => self.redeliver(device),
            other => {
                let reason = format!("{} on the ack topic", other.kind());
                self.refuse("ack", device, &reason);
                self.reject_to_device(device, env.sid, env.t, RejectCode::Malformed, &reason);
            }
        }
    }

    /// Sends every result still queued for the device again.
    fn redeliver(&mut self, device: &str) {
        let queued = self.store.results_of(device);
        if !queued.is_empty() {
            tracing::info!(%device, results = queued.len(), "redelivering queued results");
        }
        for q in queued {
            self.stats.redelivered.fetch_add(1, Ordering::Relaxed);
            self.link.publish(topics::result(device), q.envelope, false);
        }
    }

    fn on_from_a(&mut self, worker: &str, payload: &[u8]) {
        let env = match Envelope::from_bytes(payload) {
            Ok(env) => env,
            Err(e) => {
                self.refuse("message from A", worker, &e.to_string());
                return;
            }
        };
        match &env.body {
            // A refused a device's message: pass the reason on to it.
            Body::Reject { code, detail } => {
                tracing::info!(device = %env.device, t = env.t, %code, %detail, "relaying A's refusal to the device");
                if let Ok(bytes) = env.to_bytes() {
                    self.link.publish(topics::result(&env.device), bytes, false);
                }
                return;
            }
            Body::MaskRequest { count } => {
                let last = env.t.saturating_add(u64::from(*count).saturating_sub(1));
                if self
                    .store
                    .completed_of(env.sid)
                    .is_some_and(|done| last <= done)
                {
                    self.reject_to_a(worker, &env, RejectCode::Completed);
                    return;
                }
            }
            _ => {}
        }
        self.handle_from_a(worker, env);
    }

    fn handle_from_a(&mut self, worker: &str, env: Envelope) {
        let kept = env.clone();
        match self.machine.handle(env) {
            Ok(outgoing) => self.dispatch(worker, outgoing),
            Err(ProtocolError::UnknownSession(sid)) => {
                tracing::debug!(%sid, t = kept.t, "message before its session; parking it");
                self.parked.push(Parked {
                    since: Instant::now(),
                    worker: worker.to_string(),
                    envelope: kept,
                });
            }
            Err(e) => {
                let reason = e.to_string();
                self.refuse(kept.body.kind(), worker, &reason);
                let code = match e {
                    ProtocolError::Replay { .. } => RejectCode::Completed,
                    e => e.code(),
                };
                self.reject_to_a(worker, &kept, code);
            }
        }
    }

    fn unpark(&mut self, sid: SessionId) {
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.parked)
            .into_iter()
            .partition(|p| p.envelope.sid == sid);
        self.parked = waiting;
        for p in ready {
            self.handle_from_a(&p.worker, p.envelope);
        }
    }

    fn dispatch(&mut self, worker: &str, outgoing: Vec<Outgoing>) {
        for out in outgoing {
            let env = out.envelope;
            let bytes = match env.to_bytes() {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(error = %e, "could not encode an outgoing message");
                    continue;
                }
            };
            match out.to {
                Peer::Device => {
                    // Durable first: the queue is what survives a crash.
                    if let Err(e) = self.store.put_result(&env.device, env.sid, env.t, &bytes) {
                        tracing::error!(error = %e, "could not queue a result");
                    }
                    self.stats.results.fetch_add(1, Ordering::Relaxed);
                    self.stats
                        .queued
                        .store(self.store.queued(), Ordering::Relaxed);
                    tracing::debug!(device = %env.device, t = env.t, key = ?result_key(&env.device, env.sid, env.t).len(), "result queued");
                    self.link.publish(topics::result(&env.device), bytes, false);
                }
                Peer::ServerA => self.link.publish(topics::b_to_a(worker), bytes, false),
                Peer::ServerB => {}
            }
        }
    }
}
