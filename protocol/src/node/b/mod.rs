//! Server B's node: the durable result queue (kept until the device
//! acknowledges, sent again on `Sync`, dropped after a time to live), the
//! completion mark of each session (so a finished frame is never worked on
//! again, across restarts), parking of A's messages that overtake their
//! session, and relaying A's refusals to devices.

use super::sessions::{SessionBook, SessionLimits};
use super::{Input, Millis, Refusal, Transmit, device_envelope, device_reject_bytes, reject_bytes};
use crate::backend::SecretOps;
use crate::messages::{Body, Envelope, Peer, RejectCode};
use crate::prf::SessionId;
use crate::server_b::ServerB;
use crate::topics;
use std::collections::{BTreeMap, HashMap, VecDeque};

mod lifecycle;

/// How B's node behaves.
#[derive(Clone, Debug)]
pub struct BOptions {
    /// Results not acknowledged after this long are dropped.
    pub result_ttl: Millis,
    /// How long a message for a session B has not seen yet waits for it.
    pub park_timeout: Millis,
    /// Most of A's messages parked at once.
    pub max_parked: usize,
    /// Sessions per device, their time to live and how fast a device may
    /// open them (see [`SessionLimits`]).
    pub sessions: SessionLimits,
}

impl Default for BOptions {
    fn default() -> BOptions {
        BOptions {
            result_ttl: 7 * 24 * 3600 * 1000,
            park_timeout: 60_000,
            max_parked: 4096,
            sessions: SessionLimits::default(),
        }
    }
}

/// A result waiting for its acknowledgement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Queued {
    /// The device the result is for.
    pub device: String,
    /// Its session.
    pub sid: SessionId,
    /// Its frame counter.
    pub t: u64,
    /// When B produced it: the result expires `result_ttl` later.
    pub stored_at: Millis,
    /// The result message as published on the device's result topic.
    pub envelope: Vec<u8>,
}

/// What B's shell must do besides publishing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BEvent {
    /// Store an accepted session message, opened and last used at
    /// `opened`.
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
    /// Delete a session (retired, expired, or not loadable) with its
    /// frames' progress; its completion mark stays (until
    /// `ForgetCompletion`), its queued results until acknowledged or
    /// expired.
    ForgetSession {
        /// The session.
        sid: SessionId,
    },
    /// Delete a forgotten session's completion mark.
    ForgetCompletion {
        /// The session.
        sid: SessionId,
    },
    /// Queue a result and store its session's completion mark (the
    /// highest finished counter, `completed` ≥ the result's `t`).
    PersistResult {
        /// The result.
        result: Queued,
        /// The session's completion mark.
        completed: u64,
    },
    /// Remember the stage frame `t` is at, so that a restarted B takes its
    /// next round or its output.
    PersistProgress {
        /// The frame's session.
        sid: SessionId,
        /// Its counter.
        t: u64,
        /// The stage it is at.
        stage: u64,
    },
    /// Frames up to `t` of the session finished: forget their progress.
    ForgetProgress {
        /// The session.
        sid: SessionId,
        /// The last finished counter.
        upto: u64,
    },
    /// Drop a queued result (acknowledged or expired).
    ForgetResult {
        /// The result's device.
        device: String,
        /// Its session.
        sid: SessionId,
        /// Its counter.
        t: u64,
    },
    /// A message was refused: log and count it.
    Refused(Refusal),
    /// Something worth counting happened.
    Note(BNote),
}

/// Things worth counting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BNote {
    /// A session accepted.
    Session,
    /// A result produced.
    Result,
    /// A result published again on a device's `Sync`.
    Redelivered,
    /// A result acknowledged by its device, then forgotten.
    Acked,
    /// A result dropped unacknowledged after its time to live.
    Expired,
    /// A session retired because its device opened more than its quota.
    SessionRetired,
    /// A session unused for the session TTL, forgotten.
    SessionExpired,
    /// A stored session found dead at start, deleted without decrypting.
    SessionPruned,
    /// A new session refused: its device opened too many this minute.
    SessionThrottled,
}

struct Parked {
    since: Millis,
    worker: String,
    envelope: Envelope,
}

/// Server B with its recovery rules; see the module documentation.
pub struct ServerBNode<S: SecretOps> {
    machine: ServerB<S>,
    options: BOptions,
    public: Vec<(String, Vec<u8>)>,
    sessions: SessionBook,
    completed: HashMap<SessionId, u64>,
    /// The furthest stage each frame in progress reached, in any attempt.
    reached: HashMap<(SessionId, u64), usize>,
    results: BTreeMap<(String, SessionId, u64), Queued>,
    parked: Vec<Parked>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<BEvent>,
}

impl<S: SecretOps> ServerBNode<S> {
    /// `public` are the retained messages (topic, payload) B publishes on
    /// every connection: its key.
    pub fn new(
        machine: ServerB<S>,
        options: BOptions,
        public: Vec<(String, Vec<u8>)>,
    ) -> ServerBNode<S> {
        ServerBNode {
            machine,
            sessions: SessionBook::new(options.sessions.clone()),
            options,
            public,
            completed: HashMap::new(),
            reached: HashMap::new(),
            results: BTreeMap::new(),
            parked: Vec::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// The wrapped state machine (its configuration and backend).
    pub fn machine(&self) -> &ServerB<S> {
        &self.machine
    }

    /// The wrapped state machine, for tests and audits that step outside
    /// the node's rules.
    pub fn machine_mut(&mut self) -> &mut ServerB<S> {
        &mut self.machine
    }

    /// Feeds one input from the shell at time `now`; what it causes waits in
    /// [`ServerBNode::poll_transmit`] and [`ServerBNode::poll_event`].
    pub fn handle(&mut self, now: Millis, input: Input) {
        match input {
            Input::Connected => {
                for (topic, payload) in self.public.clone() {
                    let mut publish = Transmit::new(topic, payload);
                    publish.retain = true;
                    self.transmits.push_back(publish);
                }
            }
            Input::Disconnected | Input::Confirmed(_) => {}
            Input::Message { topic, payload } => self.on_message(now, &topic, payload),
        }
    }

    /// The next message to publish, oldest first.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next thing to persist, forget or count, oldest first.
    pub fn poll_event(&mut self) -> Option<BEvent> {
        self.events.pop_front()
    }

    /// When [`ServerBNode::handle_timeout`] is next due: the first parked message
    /// to give up on, result to expire or session to close.
    pub fn poll_timeout(&self) -> Option<Millis> {
        let parked = self
            .parked
            .iter()
            .map(|p| p.since.saturating_add(self.options.park_timeout));
        let results = self
            .results
            .values()
            .map(|q| q.stored_at.saturating_add(self.options.result_ttl));
        parked
            .chain(results)
            .chain(self.sessions.next_expiry())
            .min()
    }

    /// Gives up on parked messages, expires results and closes idle
    /// sessions whose time has come by `now`.
    pub fn handle_timeout(&mut self, now: Millis) {
        let timeout = self.options.park_timeout;
        let (expired, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.parked)
            .into_iter()
            .partition(|p| now >= p.since.saturating_add(timeout));
        self.parked = kept;
        for p in expired {
            self.unknown_session(&p.worker, &p.envelope);
        }
        for (sid, _) in self.sessions.expire(now) {
            self.retire(sid, BNote::SessionExpired);
        }
        let ttl = self.options.result_ttl;
        let stale: Vec<_> = self
            .results
            .iter()
            .filter(|(_, q)| now >= q.stored_at.saturating_add(ttl))
            .map(|(k, _)| k.clone())
            .collect();
        for key in stale {
            self.results.remove(&key);
            let (device, sid, t) = key;
            self.events
                .push_back(BEvent::ForgetResult { device, sid, t });
            self.note(BNote::Expired);
        }
    }

    /// Results waiting for an acknowledgement.
    pub fn queued(&self) -> usize {
        self.results.len()
    }

    /// The results queued for one device (for checks).
    pub fn results_of(&self, device: &str) -> usize {
        self.results.keys().filter(|(d, _, _)| d == device).count()
    }

    fn note(&mut self, note: BNote) {
        self.events.push_back(BEvent::Note(note));
    }

    fn refused(&mut self, what: &'static str, from: &str, code: RejectCode, detail: String) {
        self.events.push_back(BEvent::Refused(Refusal {
            what,
            from: from.to_string(),
            code,
            detail,
        }));
    }

    /// Marks frame `t` finished; the session's completion mark.
    fn complete(&mut self, sid: SessionId, t: u64) -> u64 {
        self.machine.mark_completed(sid, t);
        let mark = self.completed.entry(sid).or_insert(t);
        *mark = (*mark).max(t);
        *mark
    }

    /// A device's own message was refused: tell it, on its result topic.
    fn refuse_device(
        &mut self,
        what: &'static str,
        device: &str,
        sid: SessionId,
        t: u64,
        code: RejectCode,
        detail: String,
    ) {
        let bytes = device_reject_bytes(device, sid, t, code, &detail);
        self.transmits
            .push_back(Transmit::new(topics::result(device), bytes));
        self.refused(what, device, code, detail);
    }

    /// Refuses one of A's messages. The detail stays in B's log: A gets
    /// the coarse code only, since detail could depend on plaintexts.
    fn refuse_a(&mut self, worker: &str, about: &Envelope, code: RejectCode) {
        let bytes = reject_bytes(&about.device, about.sid, about.t, code, "");
        self.transmits
            .push_back(Transmit::new(topics::b_to_a(worker), bytes));
    }

    fn on_message(&mut self, now: Millis, topic: &str, payload: super::Bytes) {
        if let Some(worker) = topic.strip_prefix("veil/v1/ab/") {
            let worker = worker.to_string();
            self.on_from_a(now, &worker, &payload);
            return;
        }
        let Some(device) = topics::device_of(topic).map(str::to_string) else {
            return;
        };
        if topic == topics::session(&device, 'b') {
            if !payload.is_empty() {
                self.on_session(now, &device, payload);
            }
        } else if topic == topics::ack(&device) {
            self.on_ack(&device, &payload);
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

    /// The device has result `(sid, t)`: forget it.
    fn acked(&mut self, device: &str, sid: SessionId, t: u64) {
        let key = (device.to_string(), sid, t);
        if self.results.remove(&key).is_some() {
            self.events.push_back(BEvent::ForgetResult {
                device: device.to_string(),
                sid,
                t,
            });
            self.note(BNote::Acked);
        }
    }

    fn on_ack(&mut self, device: &str, payload: &[u8]) {
        let Some(env) = self.device_message("ack", device, payload) else {
            return;
        };
        match env.body {
            Body::Ack => self.acked(device, env.sid, env.t),
            Body::Sync => self.redeliver(device),
            other => {
                let detail = format!("{} on the ack topic", other.kind());
                self.refuse_device("ack", device, env.sid, env.t, RejectCode::Malformed, detail);
            }
        }
    }

    /// Sends every result still queued for the device again.
    fn redeliver(&mut self, device: &str) {
        let queued: Vec<Vec<u8>> = self
            .results
            .iter()
            .filter(|((d, _, _), _)| d == device)
            .map(|(_, q)| q.envelope.clone())
            .collect();
        for envelope in queued {
            self.note(BNote::Redelivered);
            self.transmits
                .push_back(Transmit::new(topics::result(device), envelope));
        }
    }

    fn on_from_a(&mut self, now: Millis, worker: &str, payload: &[u8]) {
        let env = match Envelope::from_bytes(payload) {
            Ok(env) => env,
            Err(e) => {
                self.refused("message from A", worker, e.code(), e.to_string());
                return;
            }
        };
        match &env.body {
            // A refused a device's message: pass it on to the device, or
            // for a frame already answered, the answer if still queued.
            Body::Reject { code, detail } => {
                let key = (env.device.clone(), env.sid, env.t);
                let queued = (*code == RejectCode::Completed)
                    .then(|| self.results.get(&key))
                    .flatten()
                    .map(|q| q.envelope.clone());
                let bytes = match queued {
                    Some(result) => {
                        self.note(BNote::Redelivered);
                        result
                    }
                    None => device_reject_bytes(&env.device, env.sid, env.t, *code, detail),
                };
                self.transmits
                    .push_back(Transmit::new(topics::result(&env.device), bytes));
                return;
            }
            // An acknowledgement that rode on a frame, passed on by A.
            Body::Ack => {
                self.acked(&env.device, env.sid, env.t);
                return;
            }
            Body::MaskRequest { count } => {
                let last = env.t.saturating_add(u64::from(*count).saturating_sub(1));
                if self
                    .completed
                    .get(&env.sid)
                    .is_some_and(|done| last <= *done)
                {
                    self.refuse_a(worker, &env, RejectCode::Completed);
                    return;
                }
            }
            _ => {}
        }
        self.take_from_a(now, worker, env);
    }

    fn take_from_a(&mut self, now: Millis, worker: &str, env: Envelope) {
        if self.sessions.want(&env.sid) {
            // Not parked: B forgot this session and no session message is
            // on its way unless the device is told. Later messages for it
            // park until it comes.

            self.unknown_session(worker, &env);
            return;
        }
        if let Some(used) = self.sessions.touch(now, env.sid) {
            self.events
                .push_back(BEvent::TouchSession { sid: env.sid, used });
        }
        if !self.sessions.contains(&env.sid) {
            // A's mask request can overtake the device's session message
            // to B: keep it until the session arrives.
            if self.parked.len() >= self.options.max_parked {
                self.refuse_a(worker, &env, RejectCode::UnknownSession);
                return;
            }
            self.parked.push(Parked {
                since: now,
                worker: worker.to_string(),
                envelope: env,
            });
            return;
        }
        let (device, sid, t) = (env.device.clone(), env.sid, env.t);
        let kind = env.body.kind();
        let is_round = matches!(env.body, Body::Round(_));
        if matches!(env.body, Body::Output(_)) && self.reached.get(&(sid, t)) == Some(&usize::MAX) {
            // Every round of this frame was answered once. A late copy of
            // a retried first round set B back, while A went on with the
            // answers it had: the output is what those answers give, and
            // B decrypts nothing it had not agreed to.
            self.machine.restore_progress(sid, t, usize::MAX);
        }
        match self.machine.handle(env) {
            Ok(outgoing) => {
                if is_round && let Some(stage) = self.machine.progress_of(sid, t) {
                    let reached = self.reached.entry((sid, t)).or_insert(stage);
                    *reached = (*reached).max(stage);
                    let stage = u64::try_from(*reached).unwrap_or(u64::MAX);
                    self.events
                        .push_back(BEvent::PersistProgress { sid, t, stage });
                }
                self.dispatch(now, worker, outgoing)
            }
            Err(e) => {
                let code = match e.code() {
                    RejectCode::Replay => RejectCode::Completed,
                    code => code,
                };
                self.refused(kind, worker, e.code(), e.to_string());
                let about = Envelope::new(&device, sid, t, Body::Ack);
                self.refuse_a(worker, &about, code);
            }
        }
    }

    fn unpark(&mut self, now: Millis, sid: SessionId) {
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.parked)
            .into_iter()
            .partition(|p| p.envelope.sid == sid);
        self.parked = waiting;
        for p in ready {
            self.take_from_a(now, &p.worker, p.envelope);
        }
    }

    fn dispatch(&mut self, now: Millis, worker: &str, outgoing: Vec<crate::messages::Outgoing>) {
        for out in outgoing {
            let env = out.envelope;
            let encoded = match out.to {
                Peer::Device => env.to_device_bytes(),
                _ => env.to_bytes(),
            };
            let bytes = match encoded {
                Ok(b) => b,
                Err(e) => {
                    self.refused("outgoing", "server-b", e.code(), e.to_string());
                    continue;
                }
            };
            match out.to {
                Peer::Device => {
                    // Durable first: the queue is what survives a crash.
                    let queued = Queued {
                        device: env.device.clone(),
                        sid: env.sid,
                        t: env.t,
                        stored_at: now,
                        envelope: bytes.clone(),
                    };
                    let completed = self.complete(env.sid, env.t);
                    self.events.push_back(BEvent::ForgetProgress {
                        sid: env.sid,
                        upto: env.t,
                    });
                    self.reached.retain(|(s, t), _| *s != env.sid || *t > env.t);
                    self.results
                        .insert((env.device.clone(), env.sid, env.t), queued.clone());
                    self.events.push_back(BEvent::PersistResult {
                        result: queued,
                        completed,
                    });
                    self.note(BNote::Result);
                    self.transmits
                        .push_back(Transmit::new(topics::result(&env.device), bytes));
                }
                Peer::ServerA => self
                    .transmits
                    .push_back(Transmit::new(topics::b_to_a(worker), bytes)),
                Peer::ServerB => {}
            }
        }
    }
}
