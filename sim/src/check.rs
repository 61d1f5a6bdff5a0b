//! The invariants, checked as the simulation goes and at quiescence:
//!
//! 1. every frame a device accepted (and still holds) gets exactly one
//!    result delivered to the application, equal to the integer reference,
//!    and no refusal or expiry; a stale copy of the device's state that
//!    brings back a frame already delivered (its acknowledgement, which
//!    waits for the next frame to ride on, not yet sent) may deliver it
//!    once more: the restored device cannot know it did;
//! 2. no counter is used twice under one session (two different frames
//!    with the same `(sid, t)`);
//! 3. B produces a frame's result once, ever: nothing is processed after
//!    the frame's session step closed it, across restarts;
//! 4. memory held per device stays bounded (outbox, settled set, frames
//!    parked at A);
//! 5. every party receives only the messages it may open: B never a frame,
//!    A never a result, a device only results and refusals.

use crate::Party;
use std::collections::{BTreeMap, HashMap};
use veil_protocol::{Body, Envelope, I256, Params, RejectCode, SessionId};

struct Captured {
    x_hat: Vec<i64>,
    /// Lost with a stale copy of the device's state.
    lost: bool,
    delivered: u32,
    /// Stale state copies that brought the frame back after its delivery.
    restored: u32,
    /// The reasons of the refusals it got.
    refusals: Vec<String>,
    expired: u32,
}

/// The invariants, checked as the world steps.
#[derive(Default)]
pub struct Checker {
    frames: BTreeMap<(usize, SessionId, u64), Captured>,
    published: HashMap<(SessionId, u64), Vec<u8>>,
    results_made: HashMap<(SessionId, u64), u32>,
    /// Every invariant broken so far, in words.
    pub violations: Vec<String>,
}

impl Checker {
    fn fail(&mut self, what: String) {
        self.violations.push(what);
    }

    /// A device accepted a frame: it must get exactly one result.
    pub fn captured(&mut self, device: usize, sid: SessionId, t: u64, x_hat: Vec<i64>) {
        let previous = self.frames.insert(
            (device, sid, t),
            Captured {
                x_hat,
                lost: false,
                delivered: 0,
                restored: 0,
                refusals: Vec::new(),
                expired: 0,
            },
        );
        if previous.is_some() {
            self.fail(format!("dev{device} captured ({sid}, {t}) twice"));
        }
    }

    /// Frames of `device` not in `kept` are gone with a stale state copy;
    /// delivered ones in `kept` are waiting again.
    pub fn restored_stale(&mut self, device: usize, kept: &[(SessionId, u64)]) {
        for ((d, sid, t), c) in self.frames.iter_mut() {
            if *d != device {
                continue;
            }
            let held = kept.contains(&(*sid, *t));
            if c.delivered == 0 && !held {
                c.lost = true;
            }
            if c.delivered > 0 && held {
                c.restored += 1;
            }
        }
    }

    /// A result reached a device's application: it must be the reference's, once.
    pub fn delivered(
        &mut self,
        params: &Params,
        device: usize,
        sid: SessionId,
        t: u64,
        values: &[I256],
    ) {
        let fixture = crate::fixture::fixture();
        let Some(c) = self.frames.get_mut(&(device, sid, t)) else {
            self.fail(format!(
                "dev{device} delivered ({sid}, {t}), never captured"
            ));
            return;
        };
        c.delivered += 1;
        let count = c.delivered;
        let expected = fixture.reference(params, &c.x_hat, sid, t);
        if count > 1 + c.restored {
            self.fail(format!("dev{device} delivered ({sid}, {t}) {count} times"));
        }
        if expected != values {
            self.fail(format!(
                "dev{device} delivered ({sid}, {t}) = {values:?}, reference {expected:?}"
            ));
        }
    }

    /// A frame was refused with a code.
    pub fn refused(
        &mut self,
        device: usize,
        sid: SessionId,
        t: u64,
        code: RejectCode,
        why: String,
    ) {
        match self.frames.get_mut(&(device, sid, t)) {
            // A device restored from an old copy of its state sends a frame
            // whose result it had already delivered and acknowledged.
            Some(c) if code == RejectCode::Completed && c.delivered > 0 => {}
            Some(c) => c.refusals.push(why),
            None => self.fail(format!("dev{device} refused unknown ({sid}, {t}): {why}")),
        }
    }

    /// A frame expired before its result.
    pub fn expired(&mut self, device: usize, sid: SessionId, t: u64) {
        if let Some(c) = self.frames.get_mut(&(device, sid, t)) {
            c.expired += 1;
        }
    }

    /// B queued a result for `(sid, t)`.
    pub fn result_made(&mut self, sid: SessionId, t: u64) {
        let n = self.results_made.entry((sid, t)).or_insert(0);
        *n += 1;
        let n = *n;
        if n > 1 {
            self.fail(format!("B produced the result of ({sid}, {t}) {n} times"));
        }
    }

    /// A message a party publishes.
    pub fn published(&mut self, from: Party, topic: &str, payload: &[u8]) {
        if !matches!(from, Party::Device(_)) || !topic.ends_with("/frame") {
            return;
        }
        let Ok(env) = Envelope::from_topic(topic, payload) else {
            return;
        };
        let key = (env.sid, env.t);
        match self.published.get(&key) {
            Some(first) if first.as_slice() != payload => {
                let what = format!(
                    "counter {} of session {} used for two frames",
                    env.t, env.sid
                );
                self.fail(what);
            }
            Some(_) => {}
            None => {
                self.published.insert(key, payload.to_vec());
            }
        }
    }

    /// A message a party receives.
    pub fn received(&mut self, to: Party, topic: &str, payload: &[u8]) {
        let Ok(env) = Envelope::from_topic(topic, payload) else {
            return;
        };
        let allowed = match (&to, &env.body) {
            (_, Body::Reject { .. }) => true,
            (Party::A, body) => matches!(
                body,
                Body::SessionInit(_)
                    | Body::Frame(_)
                    | Body::MaskSupply { .. }
                    | Body::RoundReply { .. }
            ),
            (Party::B, body) => matches!(
                body,
                Body::SessionInit(_)
                    | Body::MaskRequest { .. }
                    | Body::Round(_)
                    | Body::Output(_)
                    | Body::Ack
                    | Body::Sync
            ),
            (Party::Device(_), body) => matches!(body, Body::Result(_)),
        };
        if !allowed {
            let what = format!("{to:?} received a {} message", env.body.kind());
            self.fail(what);
        }
    }

    /// Checks a memory bound.
    pub fn bounded(&mut self, what: &str, value: usize, bound: usize) {
        if value > bound {
            self.fail(format!("{what}: {value} exceeds its bound {bound}"));
        }
    }

    /// At quiescence: every frame still held got exactly one result (one
    /// more for each stale state copy that brought it back delivered).
    pub fn quiescent(&mut self) {
        let mut missing = Vec::new();
        for ((d, sid, t), c) in &self.frames {
            if c.lost {
                continue;
            }
            let delivered = c.delivered >= 1 && c.delivered <= 1 + c.restored;
            if !delivered || !c.refusals.is_empty() || c.expired != 0 {
                missing.push(format!(
                    "dev{d} ({sid}, {t}): {} results, {} refusals {:?}, {} expiries",
                    c.delivered,
                    c.refusals.len(),
                    c.refusals,
                    c.expired
                ));
            }
        }
        for m in missing {
            self.fail(m);
        }
    }

    /// (frames, delivered, lost)
    pub fn totals(&self) -> (usize, usize, usize) {
        let delivered = self.frames.values().filter(|c| c.delivered > 0).count();
        let lost = self.frames.values().filter(|c| c.lost).count();
        (self.frames.len(), delivered, lost)
    }
}
