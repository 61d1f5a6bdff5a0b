//! Which frame runs when: parked until its session arrives, queued
//! behind its session's frame in progress or behind a frame A refused and
//! the device owes again, retried, finished.

use super::{AEvent, ANote, Parked, ServerANode, Track};
use crate::backend::PublicOps;
use crate::messages::{Envelope, RejectCode};
use crate::node::Millis;
use crate::prf::SessionId;
use std::collections::BTreeMap;

impl<P: PublicOps> ServerANode<P> {
    /// Hands a stored frame on: parked without its session, queued behind
    /// its session's frame in progress, or started.
    pub(super) fn submit(&mut self, now: Millis, env: Envelope) {
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
    pub(super) fn owes_before(&self, sid: SessionId, t: u64) -> bool {
        self.owed
            .get(&sid)
            .is_some_and(|owed| owed.range(..t).next().is_some())
    }

    /// Stops waiting for refused frames the device has not sent again
    /// within `park_timeout`, and lets their sessions' queued frames go.
    pub(super) fn expire_owed(&mut self, now: Millis) {
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

    pub(super) fn start(&mut self, now: Millis, env: Envelope) {
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
    pub(super) fn retry(&mut self, now: Millis, sid: SessionId, t: u64, refused: bool) {
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

    pub(super) fn forget_stored(&mut self, sid: SessionId, t: u64) {
        if self.stored.remove(&(sid, t)) {
            self.events.push_back(AEvent::ForgetFrame { sid, t });
        }
    }

    /// Removes a frame from the machine and the store, and lets the
    /// session's next frame go.
    pub(super) fn drop_frame(&mut self, now: Millis, sid: SessionId, t: u64) {
        self.machine.forget_frame(sid, t);
        self.forget_stored(sid, t);
        self.finish(now, sid, t);
    }

    /// The session's frame `t` left the machine: start its next one.
    pub(super) fn finish(&mut self, now: Millis, sid: SessionId, t: u64) {
        self.tracks.remove(&(sid, t));
        if self.active.get(&sid) == Some(&t) {
            self.active.remove(&sid);
        }
        self.start_next(now, sid);
    }

    /// Starts the session's lowest queued frame, unless a frame is in
    /// progress or an earlier refused frame has yet to come back.
    pub(super) fn start_next(&mut self, now: Millis, sid: SessionId) {
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

    pub(super) fn unpark(&mut self, now: Millis, sid: SessionId) {
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
}
