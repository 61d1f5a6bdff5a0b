//! B's sessions: accepted (within the device's opening rate, before the
//! seed is decrypted), restored at start (live ones only), used by A's
//! messages, and retired by the quota or the TTL (see
//! [`crate::node::sessions`]).

use super::{BEvent, BNote, Queued, ServerBNode};
use crate::backend::SecretOps;
use crate::messages::{Envelope, RejectCode};
use crate::node::sessions::{Admission, StoredSession, stored_envelope, triage};
use crate::node::{Bytes, Millis, Transmit, device_reject_bytes, session_envelope};
use crate::prf::SessionId;
use crate::topics;

impl<S: SecretOps> ServerBNode<S> {
    /// Replays B's durable state after a start: the live sessions (dead
    /// ones, by [`triage`], are deleted without decrypting their seeds),
    /// their completion marks and progress, and the result queue.
    pub fn restore(
        &mut self,
        now: Millis,
        sessions: Vec<StoredSession>,
        completed: Vec<(SessionId, u64)>,
        progress: Vec<(SessionId, u64, u64)>,
        results: Vec<Queued>,
    ) {
        let (live, dead) = triage(now, self.sessions.limits(), sessions);
        for (sid, _) in dead {
            self.sessions.retire_stored(sid);
            self.events.push_back(BEvent::ForgetSession { sid });
            self.note(BNote::SessionPruned);
        }
        for s in live {
            let env = match stored_envelope(&s) {
                Ok(env) => env,
                Err((code, detail)) => {
                    self.refused("stored session", "store", code, detail);
                    self.events.push_back(BEvent::ForgetSession { sid: s.sid });
                    continue;
                }
            };
            match self.machine.handle(env) {
                Ok(_) => {
                    let retired = self.sessions.restore(s.sid, &s.device, s.used);
                    self.note(BNote::Session);
                    for (sid, _) in retired {
                        self.retire(sid, BNote::SessionRetired);
                    }
                }
                Err(e) => {
                    self.refused("stored session", "store", e.code(), e.to_string());
                    self.events.push_back(BEvent::ForgetSession { sid: s.sid });
                }
            }
        }
        for (sid, t) in completed {
            if self.sessions.contains(&sid) {
                self.complete(sid, t);
            } else {
                // A forgotten session's mark is kept while its id is
                // remembered (a bounded number): the session may come
                // back, and what it finished must stay finished.
                self.sessions.retire_stored(sid);
                self.completed.insert(sid, t);
            }
        }
        self.drop_forgotten_marks();
        for (sid, t, stage) in progress {
            if !self.sessions.contains(&sid) {
                continue;
            }
            let stage = usize::try_from(stage).unwrap_or(usize::MAX);
            self.machine.restore_progress(sid, t, stage);
            self.reached.insert((sid, t), stage);
        }
        for q in results {
            self.complete(q.sid, q.t);
            self.results.insert((q.device.clone(), q.sid, q.t), q);
        }
    }

    /// Forgets a session the book retired: its seeds and progress (a
    /// device that still has frames under it sends the session again,
    /// which starts it afresh). Its completion mark stays while the id is
    /// remembered.
    pub(super) fn retire(&mut self, sid: SessionId, why: BNote) {
        self.machine.forget_session(sid);
        self.reached.retain(|(s, _), _| *s != sid);
        self.events.push_back(BEvent::ForgetSession { sid });
        self.note(why);
        self.drop_forgotten_marks();
    }

    /// Completion marks of sessions no longer remembered as retired go.
    pub(super) fn drop_forgotten_marks(&mut self) {
        for sid in self.sessions.take_forgotten() {
            if !self.sessions.contains(&sid) && self.completed.remove(&sid).is_some() {
                self.events.push_back(BEvent::ForgetCompletion { sid });
            }
        }
    }

    /// Refuses one of A's messages for a session B does not hold, to A
    /// and to the device: only the device can send the session again.
    pub(super) fn unknown_session(&mut self, worker: &str, env: &Envelope) {
        self.refuse_a(worker, env, RejectCode::UnknownSession);
        let detail = "B has not received this session".to_string();
        let bytes = device_reject_bytes(
            &env.device,
            env.sid,
            env.t,
            RejectCode::UnknownSession,
            &detail,
        );
        self.transmits
            .push_back(Transmit::new(topics::result(&env.device), bytes));
    }

    pub(super) fn on_session(&mut self, now: Millis, device: &str, payload: Bytes) {
        let env = match session_envelope(device, &payload) {
            Ok(env) => env,
            Err((sid, t, code, detail)) => {
                self.refuse_device("session", device, sid, t, code, detail);
                return;
            }
        };
        let (sid, t) = (env.sid, env.t);
        let new = match self.sessions.admission(now, &sid, device) {
            Admission::Known => false,
            Admission::New => true,
            Admission::Stale => {
                tracing::debug!(%sid, %device, "retained copy of a retired session; ignored");
                return;
            }
            Admission::Throttled(detail) => {
                self.note(BNote::SessionThrottled);
                self.refused("session", device, RejectCode::TooManySessions, detail);
                return;
            }
        };
        match self.machine.handle(env) {
            Ok(_) => {
                if new {
                    self.events.push_back(BEvent::PersistSession {
                        sid,
                        device: device.to_string(),
                        envelope: payload.to_vec(),
                        opened: now,
                    });
                    self.note(BNote::Session);
                    if let Some(mark) = self.completed.get(&sid).copied() {
                        // A retired session back: what it finished stays
                        // finished.
                        self.machine.mark_completed(sid, mark);
                    }
                    let reached = &self.reached;
                    let busy = |s: &SessionId| reached.keys().any(|(of, _)| of == s);
                    for (old, _) in self.sessions.open(now, sid, device, busy) {
                        self.retire(old, BNote::SessionRetired);
                    }
                }
                self.unpark(now, sid);
            }
            Err(e) => self.refuse_device("session", device, sid, t, e.code(), e.to_string()),
        }
    }
}
