//! A's sessions: accepted (within the device's opening rate, before the
//! seed is decrypted), restored at start (live ones only), used by
//! frames, and retired by the quota or the TTL (see
//! [`crate::node::sessions`]).

use super::{AEvent, ANote, ServerANode};
use crate::backend::PublicOps;
use crate::messages::RejectCode;
use crate::node::sessions::{Admission, StoredSession, stored_envelope, triage};
use crate::node::{Bytes, Millis, session_envelope};
use crate::prf::SessionId;

impl<P: PublicOps> ServerANode<P> {
    /// Loads the live stored sessions and deletes the dead ones unread.
    pub(super) fn restore_sessions(&mut self, now: Millis, stored: Vec<StoredSession>) {
        let (live, dead) = triage(now, self.sessions.limits(), stored);
        for (sid, _) in dead {
            self.sessions.retire_stored(sid);
            self.events.push_back(AEvent::ForgetSession { sid });
            self.note(ANote::SessionPruned);
        }
        for s in live {
            let env = match stored_envelope(&s) {
                Ok(env) => env,
                Err((code, detail)) => {
                    self.refused("stored session", "store", code, detail);
                    self.events.push_back(AEvent::ForgetSession { sid: s.sid });
                    continue;
                }
            };
            match self.machine.handle(env) {
                Ok(out) => {
                    let retired = self.sessions.restore(s.sid, &s.device, s.used);
                    self.note(ANote::Session);
                    self.dispatch(now, out);
                    for (sid, device) in retired {
                        self.retire(now, sid, &device, ANote::SessionRetired);
                    }
                }
                Err(e) => {
                    self.refused("stored session", "store", e.code(), e.to_string());
                    self.events.push_back(AEvent::ForgetSession { sid: s.sid });
                }
            }
        }
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
                self.note(ANote::SessionThrottled);
                self.refused("session", device, RejectCode::TooManySessions, detail);
                return;
            }
        };
        match self.machine.handle(env) {
            Ok(out) => {
                if new {
                    self.events.push_back(AEvent::PersistSession {
                        sid,
                        device: device.to_string(),
                        envelope: payload.to_vec(),
                        opened: now,
                    });
                    self.note(ANote::Session);
                    let stored = &self.stored;
                    let busy = |s: &SessionId| stored.iter().any(|(of, _)| of == s);
                    let retired = self.sessions.open(now, sid, device, busy);
                    for (old, owner) in retired {
                        self.retire(now, old, &owner, ANote::SessionRetired);
                    }
                }
                self.dispatch(now, out);
                self.unpark(now, sid);
            }
            Err(e) => self.refuse_device("session", device, sid, t, e.code(), e.to_string()),
        }
    }

    /// A frame of `sid` arrived: the session is in use.
    pub(super) fn touch_session(&mut self, now: Millis, sid: SessionId) {
        if let Some(used) = self.sessions.touch(now, sid) {
            self.events.push_back(AEvent::TouchSession { sid, used });
        }
    }

    pub(super) fn expire_sessions(&mut self, now: Millis) {
        for (sid, device) in self.sessions.expire(now) {
            self.retire(now, sid, &device, ANote::SessionExpired);
        }
    }

    /// Forgets a session the book retired, with every frame A held for it;
    /// those frames are refused as of an unknown session, so the device
    /// sends the session again and then the frames.
    fn retire(&mut self, now: Millis, sid: SessionId, device: &str, why: ANote) {
        self.machine.forget_session(sid);
        self.active.remove(&sid);
        self.queued.remove(&sid);
        self.tracks.retain(|(s, _), _| *s != sid);
        self.owed.remove(&sid);
        let confirming: Vec<u64> = self
            .confirming
            .values()
            .filter(|c| c.key.0 == sid)
            .map(|c| c.key.1)
            .collect();
        let mut frames: Vec<u64> = self
            .stored
            .iter()
            .filter(|(s, t)| *s == sid && !confirming.contains(t))
            .map(|(_, t)| *t)
            .collect();
        frames.sort_unstable();
        if !frames.is_empty() {
            // The device is told: its session message is an answer.
            self.sessions.want(&sid);
        }
        for t in frames {
            self.refuse_unknown_session(now, device, sid, t);
        }
        self.events.push_back(AEvent::ForgetSession { sid });
        self.note(why);
    }
}
