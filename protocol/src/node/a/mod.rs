//! Server A's node: parks frames that arrive before their session, runs
//! one frame per session at a time, retries a frame whose round got no
//! answer (up to a limit), forgets a frame B already answered, and keeps a
//! frame durable until the broker has its output.

use super::sessions::{SessionBook, SessionLimits, StoredSession};
use super::{Input, Millis, Refusal, Transmit, reject_bytes};
use crate::backend::PublicOps;
use crate::messages::{Envelope, RejectCode};
use crate::prf::SessionId;
use crate::server_a::ServerA;
use crate::topics;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

mod lifecycle;
mod order;
mod wire;

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
    /// Sessions per device, their time to live and how fast a device may
    /// open them (see [`SessionLimits`]).
    pub sessions: SessionLimits,
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
            sessions: SessionLimits::default(),
        }
    }
}

/// What A's shell must do besides publishing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AEvent {
    /// Store an accepted session message (replayed by
    /// [`ServerANode::restore`]), opened and last used at `opened`.
    PersistSession {
        /// The session.
        sid: SessionId,
        /// The device that opened it.
        device: String,
        /// The device's session message, to decrypt again after a restart.
        envelope: Vec<u8>,
        /// When it was accepted (and last used).
        opened: Millis,
    },
    /// Store that the session was last used at `used` (at most once per
    /// share of the session TTL; see [`SessionLimits`]).
    TouchSession {
        /// The session.
        sid: SessionId,
        /// When it was used.
        used: Millis,
    },
    /// Delete a session: retired, expired, or not loadable.
    ForgetSession {
        /// The session.
        sid: SessionId,
    },
    /// Store a frame until its output is confirmed.
    PersistFrame {
        /// The frame's session.
        sid: SessionId,
        /// Its counter.
        t: u64,
        /// Its device.
        device: String,
        /// The frame message, replayed by [`ServerANode::restore`].
        envelope: Vec<u8>,
    },
    /// Delete a stored frame: its output is confirmed, or it was given up.
    ForgetFrame {
        /// The frame's session.
        sid: SessionId,
        /// Its counter.
        t: u64,
    },
    /// A message was refused: log and count it.
    Refused(Refusal),
    /// Something worth counting happened.
    Note(ANote),
}

/// Things worth counting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ANote {
    /// A session accepted.
    Session,
    /// A frame accepted.
    Frame,
    /// A copy of a frame already stored or finished.
    Duplicate,
    /// A frame dropped without a refusal (parking full).
    Dropped,
    /// A frame started over: B did not answer in time.
    Retry,
    /// A frame given up after its last retry.
    Abandoned,
    /// A frame's output sent to B.
    Output,
    /// A counter's first layer and corrections prepared ahead.
    Precomputed,
    /// A stored frame handed back in after a restart.
    Replayed,
    /// A message from B that no frame in flight expects (a late answer).
    Stale,
    /// A session retired because its device opened more than its quota.
    SessionRetired,
    /// A session unused for the session TTL, forgotten.
    SessionExpired,
    /// A stored session found dead at start, deleted without decrypting.
    SessionPruned,
    /// A new session refused: its device opened too many this minute.
    SessionThrottled,
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
    sessions: SessionBook,
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
            sessions: SessionBook::new(options.sessions.clone()),
            options,
            public,
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

    /// The wrapped state machine, for tests and audits that step outside
    /// the node's rules.
    pub fn machine_mut(&mut self) -> &mut ServerA<P> {
        &mut self.machine
    }

    /// Replays A's durable state after a start: the live sessions (dead
    /// ones, by [`triage`](super::sessions::triage), are deleted without
    /// decrypting their seeds), then every frame whose output the broker
    /// had not confirmed.
    pub fn restore(&mut self, now: Millis, sessions: Vec<StoredSession>, frames: Vec<Vec<u8>>) {
        self.restore_sessions(now, sessions);
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

    /// Feeds one input from the shell at time `now`; what it causes waits in
    /// [`ServerANode::poll_transmit`] and [`ServerANode::poll_event`].
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

    /// The next message to publish, oldest first.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next thing to persist, forget or count, oldest first.
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
        rounds
            .chain(parked)
            .chain(outputs)
            .chain(owed)
            .chain(self.sessions.next_expiry())
            .min()
    }

    /// Retries frames, gives up on parked messages and closes idle sessions
    /// whose time has come by `now`.
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
            self.refuse_unknown_session(now, &env.device, env.sid, env.t);
        }
        self.expire_sessions(now);
    }

    /// Refuses a frame whose session A does not hold; the device sends
    /// the session message again, then the frame, and the session's later
    /// frames wait for it.
    fn refuse_unknown_session(&mut self, now: Millis, device: &str, sid: SessionId, t: u64) {
        self.forget_stored(sid, t);
        self.owed.entry(sid).or_default().insert(t, now);
        let detail = format!("unknown session {sid}");
        self.refuse_device("frame", device, sid, t, RejectCode::UnknownSession, detail);
    }

    /// Whether a frame is held up by precomputation: do it before taking
    /// further messages, or a busy server starves the frame.
    pub fn has_urgent_work(&self) -> bool {
        self.machine.has_waiting_frame()
    }

    /// Whether precomputation is waiting that may be done now (do it when
    /// idle): not while a frame has a round out at B, unless a frame waits
    /// for it or a session has no masks ready for its next frame.
    ///
    /// A unit is a whole frame's offline work, tens of milliseconds
    /// (pima-mlp) to hundreds (mnist-mlp); started while B works on a
    /// round, it delays the reply's handling by all of that: through the
    /// broker, pima-mlp took 39.5 ms per frame against 10 ms in process,
    /// the difference one unit done between a frame's rounds (`veil bench
    /// device`, 2026-11-29). Under load some frame always has a round out:
    /// deferring every unit then left A idle while B worked and made each
    /// frame wait for its own (`veil load -k 8 -m 25`: 20 frames/s), so a
    /// session with nothing ready goes ahead.
    pub fn has_work(&self) -> bool {
        self.machine.has_waiting_frame()
            || (self.machine.has_offline_work()
                && (!self.machine.has_frame_in_round()
                    || self.machine.has_session_without_ready_masks()))
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
}
