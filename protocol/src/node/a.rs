//! Server A's node: parks frames that arrive before their session, runs
//! one frame per session at a time, retries a frame whose round got no
//! answer (up to a limit), forgets a frame B already answered, and keeps a
//! frame durable until the broker has its output.

use super::{Input, Millis, Refusal, Transmit, device_envelope, reject_bytes};
use crate::backend::PublicOps;
use crate::device::frame_fits;
use crate::messages::{Body, Envelope, Peer, RejectCode};
use crate::prf::SessionId;
use crate::server_a::ServerA;
use crate::topics;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

/// How A's node behaves.
#[derive(Clone, Debug)]
pub struct AOptions {
    /// This worker's name: B answers on `veil/v1/ba/<worker>`, A writes to
    /// `veil/v1/ab/<worker>`.
    pub worker: String,
    /// A round without B's answer after this long is started over.
    pub round_timeout: Millis,
    /// Refusals by B (other than "completed" and "unknown session") before
    /// a frame is given up.
    pub max_retries: u32,
    /// A frame B never answers is given up after this long (the device
    /// gives up at the same age). Silence alone does not spend attempts:
    /// B may have lost parked messages in a crash, or wait for a session
    /// longer than a round timeout, and a frame A gives up is lost for
    /// good (A then starts the session's next frame, and the given-up
    /// counter becomes a replay).
    pub frame_ttl: Millis,
    /// How long a frame waits for its session message.
    pub park_timeout: Millis,
    /// Frames one device may have parked: an honest device's session
    /// message arrives within moments of its frames, while a device
    /// inventing sessions would otherwise fill the parking lot.
    pub max_parked_per_device: usize,
}

impl Default for AOptions {
    fn default() -> AOptions {
        AOptions {
            worker: "a1".into(),
            round_timeout: 30_000,
            max_retries: 3,
            park_timeout: 60_000,
            frame_ttl: 24 * 3600 * 1000,
            max_parked_per_device: 64,
        }
    }
}

/// What A's shell must do besides publishing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AEvent {
    /// Store an accepted session message (replayed by [`ServerANode::restore`]).
    PersistSession {
        sid: SessionId,
        device: String,
        envelope: Vec<u8>,
    },
    ForgetSession {
        sid: SessionId,
    },
    /// Store a frame until its output is confirmed.
    PersistFrame {
        sid: SessionId,
        t: u64,
        device: String,
        envelope: Vec<u8>,
    },
    ForgetFrame {
        sid: SessionId,
        t: u64,
    },
    Refused(Refusal),
    Note(ANote),
}

/// Things worth counting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ANote {
    Session,
    Frame,
    /// A copy of a frame already stored or finished.
    Duplicate,
    /// A frame dropped without a refusal (parking full).
    Dropped,
    Retry,
    Abandoned,
    Output,
    Precomputed,
    /// A stored frame handed back in after a restart.
    Replayed,
    /// A message from B that no frame in flight expects (a late answer).
    Stale,
}

struct Track {
    started: Millis,
    since: Millis,
    attempts: u32,
}

struct Parked {
    since: Millis,
    envelope: Envelope,
}

/// An output the broker has not acknowledged: sent again after
/// `round_timeout` (B refuses a second copy as completed).
struct Confirming {
    key: (SessionId, u64),
    since: Millis,
    publish: Transmit,
}

/// Server A with its recovery rules; see the module documentation.
pub struct ServerANode<P: PublicOps> {
    machine: ServerA<P>,
    options: AOptions,
    /// Retained public material published on every connection.
    public: Vec<(String, Vec<u8>)>,
    sessions: HashSet<SessionId>,
    /// Frames stored and not yet finished.
    stored: HashSet<(SessionId, u64)>,
    /// The frame of each session now inside the state machine.
    active: HashMap<SessionId, u64>,
    /// Frames waiting for their session's active frame to finish.
    queued: HashMap<SessionId, BTreeMap<u64, Envelope>>,
    tracks: HashMap<(SessionId, u64), Track>,
    parked: Vec<Parked>,
    /// Frames refused for an unknown session, by session, with when: the
    /// device sends them again once it has sent the session again, and A
    /// keeps counters as a high-water mark, so a later frame of the
    /// session must not start before them (it would make them replays).
    /// Held for at most `park_timeout`: a device that gave up on a frame
    /// never sends it again.
    owed: HashMap<SessionId, BTreeMap<u64, Millis>>,
    /// Outputs sent but not yet acknowledged by the broker.
    confirming: HashMap<u64, Confirming>,
    next_token: u64,
    transmits: VecDeque<Transmit>,
    events: VecDeque<AEvent>,
}

impl<P: PublicOps> ServerANode<P> {
    /// `public` are the retained messages (topic, payload) A publishes on
    /// every connection: its key and the model topology.
    pub fn new(
        machine: ServerA<P>,
        options: AOptions,
        public: Vec<(String, Vec<u8>)>,
    ) -> ServerANode<P> {
        ServerANode {
            machine,
            options,
            public,
            sessions: HashSet::new(),
            stored: HashSet::new(),
            active: HashMap::new(),
            queued: HashMap::new(),
            tracks: HashMap::new(),
            parked: Vec::new(),
            owed: HashMap::new(),
            confirming: HashMap::new(),
            next_token: 1,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// The wrapped state machine (for configuration and audits).
    pub fn machine(&self) -> &ServerA<P> {
        &self.machine
    }

    pub fn machine_mut(&mut self) -> &mut ServerA<P> {
        &mut self.machine
    }

    /// Replays A's durable state after a start: sessions, then every frame
    /// whose output the broker had not confirmed.
    pub fn restore(&mut self, now: Millis, sessions: Vec<Vec<u8>>, frames: Vec<Vec<u8>>) {
        for bytes in sessions {
            let env = match Envelope::from_bytes(&bytes) {
                Ok(env) => env,
                Err(e) => {
                    self.refused("stored session", "store", e.code(), e.to_string());
                    continue;
                }
            };
            let sid = env.sid;
            match self.machine.handle(env) {
                Ok(out) => {
                    self.sessions.insert(sid);
                    self.note(ANote::Session);
                    self.dispatch(now, out);
                }
                Err(e) => {
                    self.refused("stored session", "store", e.code(), e.to_string());
                    self.events.push_back(AEvent::ForgetSession { sid });
                }
            }
        }
        for bytes in frames {
            match Envelope::from_bytes(&bytes) {
                Ok(env) => {
                    self.note(ANote::Replayed);
                    self.stored.insert((env.sid, env.t));
                    self.submit(now, env);
                }
                Err(e) => self.refused("stored frame", "store", e.code(), e.to_string()),
            }
        }
    }

    pub fn handle(&mut self, now: Millis, input: Input) {
        match input {
            Input::Connected => {
                for (topic, payload) in self.public.clone() {
                    let mut publish = Transmit::new(topic, payload);
                    publish.retain = true;
                    self.transmits.push_back(publish);
                }
            }
            Input::Disconnected => {}
            Input::Confirmed(token) => {
                if let Some(Confirming { key: (sid, t), .. }) = self.confirming.remove(&token) {
                    self.stored.remove(&(sid, t));
                    self.events.push_back(AEvent::ForgetFrame { sid, t });
                    self.finish(now, sid, t);
                }
            }
            Input::Message { topic, payload } => self.on_message(now, &topic, payload),
        }
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<AEvent> {
        self.events.pop_front()
    }

    /// When [`ServerANode::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Millis> {
        let rounds = self
            .tracks
            .values()
            .map(|tr| tr.since.saturating_add(self.options.round_timeout));
        let parked = self
            .parked
            .iter()
            .map(|p| p.since.saturating_add(self.options.park_timeout));
        let outputs = self
            .confirming
            .values()
            .map(|c| c.since.saturating_add(self.options.round_timeout));
        let owed = self
            .owed
            .values()
            .flat_map(BTreeMap::values)
            .map(|since| since.saturating_add(self.options.park_timeout));
        rounds.chain(parked).chain(outputs).chain(owed).min()
    }

    pub fn handle_timeout(&mut self, now: Millis) {
        let overdue: Vec<(SessionId, u64)> = self
            .tracks
            .iter()
            .filter(|(_, tr)| now >= tr.since.saturating_add(self.options.round_timeout))
            .map(|(k, _)| *k)
            .collect();
        for (sid, t) in overdue {
            self.retry(now, sid, t, false);
        }
        let round_timeout = self.options.round_timeout;
        for c in self.confirming.values_mut() {
            if now >= c.since.saturating_add(round_timeout) {
                c.since = now;
                self.transmits.push_back(c.publish.clone());
            }
        }
        let timeout = self.options.park_timeout;
        // A session's parked frames go together, in counter order: were
        // a later one kept, it would start as soon as the session arrives
        // and overtake the earlier ones the device sends again.
        let stale: HashSet<SessionId> = self
            .parked
            .iter()
            .filter(|p| now >= p.since.saturating_add(timeout))
            .map(|p| p.envelope.sid)
            .collect();
        let (mut expired, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.parked)
            .into_iter()
            .partition(|p| stale.contains(&p.envelope.sid));
        self.parked = kept;
        expired.sort_by_key(|p| p.envelope.t);
        self.expire_owed(now);
        for p in expired {
            let env = p.envelope;
            let detail = format!("unknown session {}", env.sid);
            self.forget_stored(env.sid, env.t);
            self.owed.entry(env.sid).or_default().insert(env.t, now);
            self.refuse_device(
                "frame",
                &env.device,
                env.sid,
                env.t,
                RejectCode::UnknownSession,
                detail,
            );
        }
    }

    /// Whether a frame is held up by precomputation: do it before taking
    /// further messages, or a busy server starves the frame.
    pub fn has_urgent_work(&self) -> bool {
        self.machine.has_waiting_frame()
    }

    /// Whether precomputation is waiting (do it when idle).
    pub fn has_work(&self) -> bool {
        self.machine.has_offline_work()
    }

    /// One unit of precomputation.
    pub fn work(&mut self, now: Millis) {
        match self.machine.offline_step() {
            Ok(out) => {
                self.note(ANote::Precomputed);
                self.dispatch(now, out);
            }
            Err(e) => self.refused("precomputation", "server-a", e.code(), e.to_string()),
        }
    }

    /// Sessions known, frames in flight, parked and queued (for logs).
    pub fn load(&self) -> (usize, usize, usize, usize) {
        let queued = self.queued.values().map(BTreeMap::len).sum();
        (
            self.sessions.len(),
            self.tracks.len(),
            self.parked.len(),
            queued,
        )
    }

    fn note(&mut self, note: ANote) {
        self.events.push_back(AEvent::Note(note));
    }

    fn refused(&mut self, what: &'static str, from: &str, code: RejectCode, detail: String) {
        self.events.push_back(AEvent::Refused(Refusal {
            what,
            from: from.to_string(),
            code,
            detail,
        }));
    }

    /// A device's message was refused. A may not write to devices, so B
    /// relays the refusal (a `Reject` on A's topic to B is always one).
    fn refuse_device(
        &mut self,
        what: &'static str,
        device: &str,
        sid: SessionId,
        t: u64,
        code: RejectCode,
        detail: String,
    ) {
        let bytes = reject_bytes(device, sid, t, code, &detail);
        self.transmits
            .push_back(Transmit::new(topics::a_to_b(&self.options.worker), bytes));
        self.refused(what, device, code, detail);
    }

    fn on_message(&mut self, now: Millis, topic: &str, payload: super::Bytes) {
        if topic == topics::b_to_a(&self.options.worker) {
            self.on_from_b(now, &payload);
            return;
        }
        let Some(device) = topics::device_of(topic).map(str::to_string) else {
            return;
        };
        if topic == topics::frame(&device) {
            self.on_frame(now, &device, payload);
        } else if topic == topics::session(&device, 'a') && !payload.is_empty() {
            self.on_session(now, &device, payload);
        }
    }

    fn device_message(
        &mut self,
        what: &'static str,
        device: &str,
        payload: &[u8],
    ) -> Option<Envelope> {
        match device_envelope(device, payload) {
            Ok(env) => Some(env),
            Err((sid, t, code, detail)) => {
                self.refuse_device(what, device, sid, t, code, detail);
                None
            }
        }
    }

    fn on_session(&mut self, now: Millis, device: &str, payload: super::Bytes) {
        let Some(env) = self.device_message("session", device, &payload) else {
            return;
        };
        if !matches!(env.body, Body::SessionInit(_)) {
            let detail = format!("{} on the session topic", env.body.kind());
            self.refuse_device(
                "session",
                device,
                env.sid,
                env.t,
                RejectCode::Malformed,
                detail,
            );
            return;
        }
        let (sid, t) = (env.sid, env.t);
        match self.machine.handle(env) {
            Ok(out) => {
                if self.sessions.insert(sid) {
                    self.events.push_back(AEvent::PersistSession {
                        sid,
                        device: device.to_string(),
                        envelope: payload.to_vec(),
                    });
                    self.note(ANote::Session);
                }
                self.dispatch(now, out);
                self.unpark(now, sid);
            }
            Err(e) => self.refuse_device("session", device, sid, t, e.code(), e.to_string()),
        }
    }

    fn on_frame(&mut self, now: Millis, device: &str, payload: super::Bytes) {
        let Some(env) = self.device_message("frame", device, &payload) else {
            return;
        };
        let (sid, t) = (env.sid, env.t);
        let Body::Frame(frame) = &env.body else {
            let detail = format!("{} on the frame topic", env.body.kind());
            self.refuse_device("frame", device, sid, t, RejectCode::Malformed, detail);
            return;
        };
        let config = self.machine.config();
        if let Err(e) = frame_fits(frame, &config.topology, &config.params) {
            // Refused before the store: every stored frame stays on disk
            // until its output is out.
            self.refuse_device(
                "frame",
                device,
                sid,
                t,
                RejectCode::Malformed,
                e.to_string(),
            );
            return;
        }
        if !self.sessions.contains(&sid)
            && self
                .parked
                .iter()
                .filter(|p| p.envelope.device == device)
                .count()
                >= self.options.max_parked_per_device
        {
            // Not refused: the device sends the frame again later, by
            // which time its session has arrived.
            self.note(ANote::Dropped);
            return;
        }
        if !self.stored.insert((sid, t)) {
            self.note(ANote::Duplicate);
            return;
        }
        if let Some(owed) = self.owed.get_mut(&sid) {
            owed.remove(&t);
            if owed.is_empty() {
                self.owed.remove(&sid);
            }
        }
        self.events.push_back(AEvent::PersistFrame {
            sid,
            t,
            device: device.to_string(),
            envelope: payload.to_vec(),
        });
        self.note(ANote::Frame);
        self.submit(now, env);
    }

    /// Hands a stored frame on: parked without its session, queued behind
    /// its session's frame in progress, or started.
    fn submit(&mut self, now: Millis, env: Envelope) {
        let sid = env.sid;
        if !self.sessions.contains(&sid) {
            self.parked.push(Parked {
                since: now,
                envelope: env,
            });
            return;
        }
        if self.active.contains_key(&sid) || self.owes_before(sid, env.t) {
            self.queued.entry(sid).or_default().insert(env.t, env);
            return;
        }
        self.start(now, env);
    }

    /// Whether a frame of `sid` below `t` was refused for an unknown
    /// session and has not come back yet.
    fn owes_before(&self, sid: SessionId, t: u64) -> bool {
        self.owed
            .get(&sid)
            .is_some_and(|owed| owed.range(..t).next().is_some())
    }

    /// Stops waiting for refused frames the device has not sent again
    /// within `park_timeout`, and lets their sessions' queued frames go.
    fn expire_owed(&mut self, now: Millis) {
        let timeout = self.options.park_timeout;
        let mut released = Vec::new();
        self.owed.retain(|sid, owed| {
            let before = owed.len();
            owed.retain(|_, since| now < since.saturating_add(timeout));
            if owed.len() != before {
                released.push(*sid);
            }
            !owed.is_empty()
        });
        released.sort_by_key(|sid| sid.0);
        for sid in released {
            self.start_next(now, sid);
        }
    }

    fn start(&mut self, now: Millis, env: Envelope) {
        let (sid, t, device) = (env.sid, env.t, env.device.clone());
        self.active.insert(sid, t);
        self.tracks.insert(
            (sid, t),
            Track {
                started: now,
                since: now,
                attempts: 0,
            },
        );
        match self.machine.handle(env) {
            Ok(out) => self.dispatch(now, out),
            Err(e) => {
                self.forget_stored(sid, t);
                if e.code() == RejectCode::Replay {
                    // A frame this worker already finished: B answers with
                    // the result if it still holds it, or else passes the
                    // refusal on (the result was acknowledged: a device
                    // restored from an old copy of its state).
                    self.note(ANote::Duplicate);
                    let detail = "frame already processed".to_string();
                    self.refuse_device("frame", &device, sid, t, RejectCode::Completed, detail);
                } else {
                    self.refuse_device("frame", &device, sid, t, e.code(), e.to_string());
                }
                self.finish(now, sid, t);
            }
        }
    }

    /// Starts frame `t` over, or gives it up after too many attempts.
    /// `refused`: B refused the round (an attempt spent), rather than
    /// leaving it unanswered.
    fn retry(&mut self, now: Millis, sid: SessionId, t: u64, refused: bool) {
        let (started, attempts) = self
            .tracks
            .get(&(sid, t))
            .map_or((now, 0), |tr| (tr.started, tr.attempts));
        let attempts = attempts + u32::from(refused);
        if attempts > self.options.max_retries
            || now >= started.saturating_add(self.options.frame_ttl)
        {
            self.note(ANote::Abandoned);
            self.drop_frame(now, sid, t);
            return;
        }
        match self.machine.retry_frame(sid, t) {
            Ok(out) => {
                self.note(ANote::Retry);
                self.tracks.insert(
                    (sid, t),
                    Track {
                        started,
                        since: now,
                        attempts,
                    },
                );
                self.dispatch(now, out);
            }
            Err(e) => {
                self.refused("retry", "server-a", e.code(), e.to_string());
                self.note(ANote::Abandoned);
                self.drop_frame(now, sid, t);
            }
        }
    }

    fn forget_stored(&mut self, sid: SessionId, t: u64) {
        if self.stored.remove(&(sid, t)) {
            self.events.push_back(AEvent::ForgetFrame { sid, t });
        }
    }

    /// Removes a frame from the machine and the store, and lets the
    /// session's next frame go.
    fn drop_frame(&mut self, now: Millis, sid: SessionId, t: u64) {
        self.machine.forget_frame(sid, t);
        self.forget_stored(sid, t);
        self.finish(now, sid, t);
    }

    /// The session's frame `t` left the machine: start its next one.
    fn finish(&mut self, now: Millis, sid: SessionId, t: u64) {
        self.tracks.remove(&(sid, t));
        if self.active.get(&sid) == Some(&t) {
            self.active.remove(&sid);
        }
        self.start_next(now, sid);
    }

    /// Starts the session's lowest queued frame, unless a frame is in
    /// progress or an earlier refused frame has yet to come back.
    fn start_next(&mut self, now: Millis, sid: SessionId) {
        if self.active.contains_key(&sid) {
            return;
        }
        let Some(first) = self.queued.get(&sid).and_then(|q| q.keys().next().copied()) else {
            return;
        };
        if self.owes_before(sid, first) {
            return;
        }
        let next = self.queued.get_mut(&sid).and_then(BTreeMap::pop_first);
        if self.queued.get(&sid).is_some_and(BTreeMap::is_empty) {
            self.queued.remove(&sid);
        }
        if let Some((_, env)) = next {
            self.start(now, env);
        }
    }

    fn unpark(&mut self, now: Millis, sid: SessionId) {
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.parked)
            .into_iter()
            .partition(|p| p.envelope.sid == sid);
        self.parked = waiting;
        let mut ready: Vec<Envelope> = ready.into_iter().map(|p| p.envelope).collect();
        ready.sort_by_key(|e| e.t);
        for env in ready {
            self.submit(now, env);
        }
    }

    fn on_from_b(&mut self, now: Millis, payload: &[u8]) {
        let env = match Envelope::from_bytes(payload) {
            Ok(env) => env,
            Err(e) => {
                self.refused("message from B", "server-b", e.code(), e.to_string());
                return;
            }
        };
        let key = (env.sid, env.t);
        if let Body::Reject { code, .. } = env.body {
            if !self.tracks.contains_key(&key) {
                // About a frame already finished or given up.
                return;
            }
            if code == RejectCode::Completed {
                self.drop_frame(now, env.sid, env.t);
            } else if code == RejectCode::UnknownSession {
                // B waits for the device to send its session again (B told
                // it): try again after a round timeout, spending no attempt.
                if let Some(track) = self.tracks.get_mut(&key) {
                    track.since = now;
                }
            } else {
                self.retry(now, env.sid, env.t, true);
            }
            return;
        }
        let kind = env.body.kind();
        match self.machine.handle(env) {
            Ok(out) => {
                if let Some(track) = self.tracks.get_mut(&key) {
                    track.since = now;
                }
                self.dispatch(now, out);
            }
            // Late answers to a round that was started over end here:
            // nothing to send back, A does not refuse B.
            Err(e) => {
                tracing::debug!(error = %e, "stale {kind} from B");
                self.note(ANote::Stale);
            }
        }
    }

    fn dispatch(&mut self, now: Millis, outgoing: Vec<crate::messages::Outgoing>) {
        let topic = topics::a_to_b(&self.options.worker);
        for out in outgoing {
            if out.to != Peer::ServerB {
                continue;
            }
            let env = out.envelope;
            let bytes = match env.to_bytes() {
                Ok(b) => b,
                Err(e) => {
                    self.refused("outgoing", "server-a", e.code(), e.to_string());
                    continue;
                }
            };
            let key = (env.sid, env.t);
            let mut publish = Transmit::new(topic.clone(), bytes);
            if matches!(env.body, Body::Output(_)) {
                // The frame stays stored until the broker has the output:
                // after a crash before that, it is replayed.
                let token = self.next_token;
                self.next_token += 1;
                publish.confirm = Some(token);
                self.confirming.insert(
                    token,
                    Confirming {
                        key,
                        since: now,
                        publish: publish.clone(),
                    },
                );
                self.transmits.push_back(publish);
                self.note(ANote::Output);
                // The session's next frame waits for the broker to have
                // this output: B finishes a session's frames in order.
                self.tracks.remove(&key);
            } else {
                if let Some(track) = self.tracks.get_mut(&key) {
                    track.since = now;
                }
                self.transmits.push_back(publish);
            }
        }
    }
}
