//! The worker thread: owns the state machine and the store, precomputes
//! when idle, and keeps each session's frames moving one at a time.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};

use veil_link::{LinkHandle, Message};
use veil_paillier::{FixedBaseNoise, NoisePool, NoiseSource, PoolFiller};
use veil_protocol::{
    Body, Envelope, Frame, Noise, Outgoing, PaillierPublic, Peer, ProtocolError, RejectCode,
    ServerA, ServerAConfig, SessionId, frame_width, topics,
};

use crate::store::Store;
use crate::{Options, ServerAError, Setup, Stats, rounding_key};

/// Frames one device may have parked (waiting for their session): an
/// honest device's session message arrives within moments of its frames,
/// while a device inventing sessions would otherwise fill the store and
/// the parking lot for as long as `park_timeout`.
const MAX_PARKED_PER_DEVICE: usize = 64;

pub enum Input {
    Connected,
    Message(Message),
    Confirmed(u64),
    Shutdown,
    Crash,
}

struct Track {
    since: Instant,
    attempts: u32,
}

struct Parked {
    since: Instant,
    envelope: Envelope,
}

pub struct Core {
    options: Options,
    machine: ServerA<PaillierPublic>,
    store: Store,
    link: LinkHandle,
    stats: Arc<Stats>,
    key_bytes: Vec<u8>,
    topology_bytes: Vec<u8>,
    model_name: String,
    sessions: HashSet<SessionId>,
    /// The frame of each session now inside the state machine.
    active: HashMap<SessionId, u64>,
    /// Frames waiting for their session's active frame to finish.
    queued: HashMap<SessionId, BTreeMap<u64, Envelope>>,
    tracks: HashMap<(SessionId, u64), Track>,
    parked: Vec<Parked>,
    /// Outputs sent but not yet acknowledged by the broker.
    confirming: HashMap<u64, (SessionId, u64)>,
    next_token: u64,
}

fn noise_for(options: &Options, b_key: &veil_paillier::PublicKey) -> Noise {
    let mut rng = rand::rng();
    match options.noise {
        NoiseSource::Textbook => Noise::Textbook,
        NoiseSource::FixedBase => Noise::FixedBase(FixedBaseNoise::new(b_key, &mut rng)),
        NoiseSource::Pool => {
            let table = Arc::new(FixedBaseNoise::new(b_key, &mut rng));
            Noise::Pool(NoisePool::new(PoolFiller::FixedBase(table), 4096, 1))
        }
    }
}

impl Core {
    pub fn new(
        options: Options,
        setup: Setup,
        store: Store,
        link: LinkHandle,
        stats: Arc<Stats>,
    ) -> Result<Core, ServerAError> {
        let Setup {
            key,
            b_key,
            model,
            params,
        } = setup;
        let topology = Arc::new(model.topology().clone());
        let backend = PaillierPublic::new(b_key.clone(), noise_for(&options, &b_key));
        let mut rng_seed = [0u8; 32];
        rand::fill(&mut rng_seed);
        let machine = ServerA::new(
            ServerAConfig {
                params,
                topology: Arc::clone(&topology),
                plan: Arc::new(model.plan().clone()),
                key: Arc::clone(&key),
                rounding_key: rounding_key(&key),
            },
            backend,
            rng_seed,
        )?;
        let frames_filter = match &options.shared_group {
            Some(group) => format!("$share/{group}/{}", topics::filters::FRAMES),
            None => topics::filters::FRAMES.to_string(),
        };
        link.subscribe(vec![
            topics::filters::SESSIONS_A.to_string(),
            frames_filter,
            topics::b_to_a(&options.worker),
        ]);
        tracing::info!(
            worker = %options.worker,
            key = %key.public_key().fingerprint_hex(),
            b_key = %b_key.fingerprint_hex(),
            model = %topology.name,
            topology = %topology.fingerprint_hex(),
            "server A ready"
        );
        let mut core = Core {
            key_bytes: key.public_key().to_bytes(),
            topology_bytes: topology.to_bytes(),
            model_name: topology.name.clone(),
            options,
            machine,
            store,
            link,
            stats,
            sessions: HashSet::new(),
            active: HashMap::new(),
            queued: HashMap::new(),
            tracks: HashMap::new(),
            parked: Vec::new(),
            confirming: HashMap::new(),
            next_token: 1,
        };
        core.restore();
        Ok(core)
    }

    /// Sessions, then every frame that had not reached B's output yet.
    fn restore(&mut self) {
        for (device, bytes) in self.store.sessions() {
            match Envelope::from_bytes(&bytes) {
                Ok(env) => {
                    let sid = env.sid;
                    match self.machine.handle(env) {
                        Ok(out) => {
                            self.sessions.insert(sid);
                            self.stats.sessions.fetch_add(1, Ordering::Relaxed);
                            self.dispatch(out);
                        }
                        Err(e) => {
                            tracing::warn!(%device, error = %e, "stored session no longer accepted; dropping it");
                            self.store.remove_session(sid);
                        }
                    }
                }
                Err(e) => tracing::warn!(%device, error = %e, "unreadable stored session"),
            }
        }
        for (device, bytes) in self.store.frames() {
            match Envelope::from_bytes(&bytes) {
                Ok(env) => {
                    self.stats.replayed.fetch_add(1, Ordering::Relaxed);
                    self.submit(env);
                }
                Err(e) => tracing::warn!(%device, error = %e, "unreadable stored frame"),
            }
        }
    }

    pub fn run(&mut self, inputs: Receiver<Input>) {
        let tick = Duration::from_millis(200);
        let mut last_tick = Instant::now();
        loop {
            // A frame held up by precomputation goes first, one step per
            // message taken; other precomputation whenever no message waits.
            let input = if self.machine.has_waiting_frame() {
                self.offline_step();
                match inputs.try_recv() {
                    Ok(input) => Some(input),
                    Err(TryRecvError::Empty) => None,
                    Err(TryRecvError::Disconnected) => return,
                }
            } else if self.machine.has_offline_work() {
                match inputs.try_recv() {
                    Ok(input) => Some(input),
                    Err(TryRecvError::Empty) => {
                        self.offline_step();
                        None
                    }
                    Err(TryRecvError::Disconnected) => return,
                }
            } else {
                match inputs.recv_timeout(tick) {
                    Ok(input) => Some(input),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            };
            match input {
                Some(Input::Connected) => self.publish_public(),
                Some(Input::Message(m)) => self.on_message(m),
                Some(Input::Confirmed(token)) => {
                    if let Some((sid, t)) = self.confirming.remove(&token) {
                        self.store.remove_frame(sid, t);
                    }
                }
                Some(Input::Shutdown) => {
                    let _ = self.store.flush();
                    return;
                }
                Some(Input::Crash) => return,
                None => {}
            }
            if last_tick.elapsed() >= tick {
                last_tick = Instant::now();
                self.timers();
            }
        }
    }

    fn publish_public(&self) {
        self.link
            .publish(topics::server_key('a'), self.key_bytes.clone(), true);
        self.link.publish(
            topics::topology(&self.model_name),
            self.topology_bytes.clone(),
            true,
        );
    }

    fn offline_step(&mut self) {
        match self.machine.offline_step() {
            Ok(out) => {
                self.stats.precomputed.fetch_add(1, Ordering::Relaxed);
                self.dispatch(out);
            }
            Err(e) => tracing::warn!(error = %e, "precomputation failed"),
        }
    }

    fn timers(&mut self) {
        let now = Instant::now();
        let overdue: Vec<(SessionId, u64)> = self
            .tracks
            .iter()
            .filter(|(_, tr)| now.duration_since(tr.since) >= self.options.round_timeout)
            .map(|(k, _)| *k)
            .collect();
        for (sid, t) in overdue {
            self.retry(sid, t, "no answer from B in time");
        }
        let timeout = self.options.park_timeout;
        let (expired, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.parked)
            .into_iter()
            .partition(|p| now.duration_since(p.since) >= timeout);
        self.parked = kept;
        for p in expired {
            let env = p.envelope;
            let reason = format!("unknown session {}", env.sid);
            self.refuse("frame", &env.device, &reason);
            self.store.remove_frame(env.sid, env.t);
            self.reject_to_device(
                &env.device,
                env.sid,
                env.t,
                RejectCode::UnknownSession,
                &reason,
            );
        }
    }

    /// Starts frame `t` over, or gives it up after too many attempts.
    fn retry(&mut self, sid: SessionId, t: u64, why: &str) {
        let attempts = self.tracks.get(&(sid, t)).map_or(0, |tr| tr.attempts);
        if attempts >= self.options.max_retries {
            tracing::error!(%sid, t, attempts, %why, "giving the frame up");
            self.stats.abandoned.fetch_add(1, Ordering::Relaxed);
            self.drop_frame(sid, t);
            return;
        }
        match self.machine.retry_frame(sid, t) {
            Ok(out) => {
                tracing::info!(%sid, t, attempt = attempts + 1, %why, "starting the frame over");
                self.stats.retries.fetch_add(1, Ordering::Relaxed);
                self.tracks.insert(
                    (sid, t),
                    Track {
                        since: Instant::now(),
                        attempts: attempts + 1,
                    },
                );
                self.dispatch(out);
            }
            Err(e) => {
                tracing::warn!(%sid, t, error = %e, "cannot start the frame over; giving it up");
                self.stats.abandoned.fetch_add(1, Ordering::Relaxed);
                self.drop_frame(sid, t);
            }
        }
    }

    /// Removes a frame from the state machine and the store, and lets the
    /// session's next frame go.
    fn drop_frame(&mut self, sid: SessionId, t: u64) {
        self.machine.forget_frame(sid, t);
        self.store.remove_frame(sid, t);
        self.finish(sid, t);
    }

    fn on_message(&mut self, message: Message) {
        let Message {
            topic,
            payload,
            ack,
            ..
        } = message;
        let from_b = topics::b_to_a(&self.options.worker);
        if topic == from_b {
            self.on_from_b(&payload);
        } else if let Some(device) = topics::device_of(&topic).map(str::to_string) {
            if topic == topics::frame(&device) {
                self.on_frame(&device, &payload);
            } else if topic == topics::session(&device, 'a') {
                if !payload.is_empty() {
                    self.on_session(&device, &payload);
                }
            } else {
                tracing::debug!(%topic, "message on an unexpected topic");
            }
        } else {
            tracing::debug!(%topic, "message on an unexpected topic");
        }
        // Frames and sessions are in the store by now.
        self.link.ack(ack);
    }

    fn refuse(&self, what: &str, from: &str, reason: &str) {
        self.stats.rejected.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%from, %reason, "rejected {what}");
    }

    /// A device's message was refused. A may not write to devices, so B
    /// relays the refusal (a `Reject` on A's topic to B is always one).
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
            self.link
                .publish(topics::a_to_b(&self.options.worker), bytes, false);
        }
    }

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

    fn on_session(&mut self, device: &str, payload: &[u8]) {
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
        match self.machine.handle(env) {
            Ok(out) => {
                if self.sessions.insert(sid) {
                    if let Err(e) = self.store.put_session(sid, device, payload) {
                        tracing::error!(error = %e, "could not store a session");
                    }
                    self.stats.sessions.fetch_add(1, Ordering::Relaxed);
                }
                self.dispatch(out);
                self.unpark(sid);
            }
            Err(e) => {
                let reason = e.to_string();
                self.refuse("session", device, &reason);
                self.reject_to_device(device, sid, t, e.code(), &reason);
            }
        }
    }

    fn on_frame(&mut self, device: &str, payload: &[u8]) {
        let Some(env) = self.device_envelope(device, payload, "frame") else {
            return;
        };
        if !matches!(env.body, Body::Frame(_)) {
            let reason = format!("{} on the frame topic", env.body.kind());
            self.refuse("frame", device, &reason);
            self.reject_to_device(device, env.sid, env.t, RejectCode::Malformed, &reason);
            return;
        }
        let (sid, t) = (env.sid, env.t);
        if let Body::Frame(frame) = &env.body
            && let Err(reason) = self.check_shape(frame)
        {
            // Refused before the store: every stored frame stays on disk
            // until its output is out.
            self.refuse("frame", device, &reason);
            self.reject_to_device(device, sid, t, RejectCode::Malformed, &reason);
            return;
        }
        if !self.sessions.contains(&sid)
            && self
                .parked
                .iter()
                .filter(|p| p.envelope.device == device)
                .count()
                >= MAX_PARKED_PER_DEVICE
        {
            // Not refused: the device sends the frame again later, by
            // which time its session has arrived.
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%device, %sid, t, "too many frames parked for this device; dropping one");
            return;
        }
        if self.store.has_frame(sid, t) {
            // A copy of a frame in progress (redelivery, or the device
            // sending again after a long wait).
            self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if let Err(e) = self.store.put_frame(sid, t, device, payload) {
            tracing::error!(error = %e, "could not store a frame");
        }
        self.stats.frames.fetch_add(1, Ordering::Relaxed);
        self.submit(env);
    }

    /// Does the frame fit the model (value count, width, byte length)?
    fn check_shape(&self, frame: &Frame) -> Result<(), String> {
        let config = self.machine.config();
        let inputs = config.topology.input_len;
        let width = frame_width(&config.topology, &config.params);
        let bytes = u64::try_from(inputs)
            .unwrap_or(u64::MAX)
            .saturating_mul(u64::from(width))
            .div_ceil(8);
        let fits = usize::try_from(frame.count).is_ok_and(|count| count == inputs)
            && u32::from(frame.width) == width
            && u64::try_from(frame.values.len()).is_ok_and(|len| len == bytes);
        if fits {
            Ok(())
        } else {
            Err(format!(
                "frame has {} values of {} bits in {} bytes; the model takes {inputs} of {width} bits",
                frame.count,
                frame.width,
                frame.values.len()
            ))
        }
    }

    /// Hands a stored frame on: parked without its session, queued behind
    /// its session's frame in progress, or started.
    fn submit(&mut self, env: Envelope) {
        let sid = env.sid;
        if !self.sessions.contains(&sid) {
            tracing::debug!(%sid, t = env.t, "frame before its session; parking it");
            self.parked.push(Parked {
                since: Instant::now(),
                envelope: env,
            });
            return;
        }
        if self.active.contains_key(&sid) {
            self.queued.entry(sid).or_default().insert(env.t, env);
            return;
        }
        self.start(env);
    }

    fn start(&mut self, env: Envelope) {
        let (sid, t, device) = (env.sid, env.t, env.device.clone());
        self.active.insert(sid, t);
        self.tracks.insert(
            (sid, t),
            Track {
                since: Instant::now(),
                attempts: 0,
            },
        );
        match self.machine.handle(env) {
            Ok(out) => self.dispatch(out),
            Err(ProtocolError::Replay { .. }) => {
                // A frame this worker already finished: its result waits in
                // B's queue for the device's next Sync.
                self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                self.store.remove_frame(sid, t);
                self.finish(sid, t);
            }
            Err(e) => {
                let reason = e.to_string();
                self.refuse("frame", &device, &reason);
                self.store.remove_frame(sid, t);
                self.reject_to_device(&device, sid, t, e.code(), &reason);
                self.finish(sid, t);
            }
        }
    }

    /// The session's frame `t` left the state machine: start its next one.
    fn finish(&mut self, sid: SessionId, t: u64) {
        self.tracks.remove(&(sid, t));
        if self.active.get(&sid) == Some(&t) {
            self.active.remove(&sid);
        }
        if self.active.contains_key(&sid) {
            return;
        }
        let next = self.queued.get_mut(&sid).and_then(|q| q.pop_first());
        if self.queued.get(&sid).is_some_and(BTreeMap::is_empty) {
            self.queued.remove(&sid);
        }
        if let Some((_, env)) = next {
            self.start(env);
        }
    }

    fn unpark(&mut self, sid: SessionId) {
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.parked)
            .into_iter()
            .partition(|p| p.envelope.sid == sid);
        self.parked = waiting;
        let mut ready: Vec<Envelope> = ready.into_iter().map(|p| p.envelope).collect();
        ready.sort_by_key(|e| e.t);
        for env in ready {
            self.submit(env);
        }
    }

    fn on_from_b(&mut self, payload: &[u8]) {
        let env = match Envelope::from_bytes(payload) {
            Ok(env) => env,
            Err(e) => {
                self.refuse("message from B", "server-b", &e.to_string());
                return;
            }
        };
        let (sid, t) = (env.sid, env.t);
        if let Body::Reject { code, .. } = &env.body {
            let code = *code;
            if !self.tracks.contains_key(&(sid, t)) {
                tracing::debug!(%sid, t, %code, "B refused a message of a finished frame");
                return;
            }
            if code == RejectCode::Completed {
                tracing::info!(%sid, t, "B already answered this frame; dropping it");
                self.drop_frame(sid, t);
            } else {
                tracing::warn!(%sid, t, %code, "B refused a message of this frame");
                self.retry(sid, t, "refused by B");
            }
            return;
        }
        let kind = env.body.kind();
        match self.machine.handle(env) {
            Ok(out) => {
                if let Some(track) = self.tracks.get_mut(&(sid, t)) {
                    track.since = Instant::now();
                }
                self.dispatch(out);
            }
            // Late answers to a round that was started over.
            Err(ProtocolError::Unexpected(reason)) | Err(ProtocolError::OutOfOrder(reason)) => {
                tracing::debug!(%sid, t, %reason, "stale {kind} from B");
            }
            Err(e) => self.refuse(kind, "server-b", &e.to_string()),
        }
    }

    fn dispatch(&mut self, outgoing: Vec<Outgoing>) {
        for out in outgoing {
            if out.to != Peer::ServerB {
                continue;
            }
            let env = out.envelope;
            let bytes = match env.to_bytes() {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(error = %e, "could not encode an outgoing message");
                    continue;
                }
            };
            let topic = topics::a_to_b(&self.options.worker);
            let key = (env.sid, env.t);
            if matches!(env.body, Body::Output(_)) {
                // The frame stays in the store until the broker has the
                // output: after a crash before that, it is replayed.
                let token = self.next_token;
                self.next_token += 1;
                self.confirming.insert(token, key);
                self.link.publish_confirmed(topic, bytes, false, token);
                self.stats.outputs.fetch_add(1, Ordering::Relaxed);
                self.finish(env.sid, env.t);
            } else {
                if let Some(track) = self.tracks.get_mut(&key) {
                    track.since = Instant::now();
                }
                self.link.publish(topic, bytes, false);
            }
        }
    }
}
