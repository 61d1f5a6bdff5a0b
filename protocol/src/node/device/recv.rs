//! What comes back to the device: results (opened and delivered once,
//! then acknowledged, usually on the next frame) and refusals (an unknown
//! session or a completed frame is recovered from before a refusal is
//! final).

use super::{DeviceEvent, DeviceNode, Pending, Settled};
use crate::messages::{Body, Envelope, RejectCode};
use crate::node::{Millis, Transmit};
use crate::prf::SessionId;
use crate::topics;
use crate::wire::{self, Kind};
use ethnum::I256;

impl DeviceNode {
    /// A server does not know the session of a waiting frame (its session
    /// message was lost, or overtaken for longer than the server waits):
    /// send the session messages again, then every waiting frame of the
    /// session, in counter order. Whether it did.
    #[cold]
    #[inline(never)]
    pub(super) fn recover_session(&mut self, now: Millis, sid: SessionId, t: u64) -> bool {
        if !self.try_recovery(sid, t) {
            return false;
        }
        if !self.republish_session(now, sid) {
            return false;
        }
        // Not this frame alone: the server refused or dropped the
        // session's earlier frames too, and one that came after a later
        // frame would be refused as already processed (seed 774 of the
        // simulator: frame 0 lost its refusal, frame 1 went first, and
        // frame 0 was then turned away for good). The frame in flight
        // keeps its resend timer: A parks it until the session message
        // comes, and one taken off the timer with its publish lost was
        // never sent again (seed 9831).
        let in_flight = self.inflight.map(|(_, frame)| frame);
        for slot in self.outbox.slots_mut() {
            let frame = (slot.entry.sid, slot.entry.t);
            if frame.0 == sid && Some(frame) != in_flight {
                slot.sent = None;
            }
        }
        self.send_new(now);
        self.ignored(sid, t, "unknown session: its messages sent again".into());
        true
    }

    /// Publishes a held session's messages again (retained), at most once
    /// per half resend period. Whether the session is held.
    #[cold]
    #[inline(never)]
    pub(super) fn republish_session(&mut self, now: Millis, sid: SessionId) -> bool {
        if let Some(at) = self.republished.get(&sid)
            && now < at.saturating_add(self.options.resend_after / 2)
        {
            return true;
        }
        let Ok([to_a, to_b]) = self.device.session_messages(sid, &mut self.rng) else {
            return false;
        };
        let (Ok(to_a), Ok(to_b)) = (to_a.envelope.to_bytes(), to_b.envelope.to_bytes()) else {
            return false;
        };
        self.republished.insert(sid, now);
        let device = self.device.config().device.clone();
        for (server, bytes) in [('a', to_a), ('b', to_b)] {
            let mut publish = Transmit::new(topics::session(&device, server), bytes);
            publish.retain = true;
            self.transmits.push_back(Pending::Owned(publish));
        }
        true
    }

    /// A says the frame was processed, and B had no result to send in
    /// its place: the result may still be on its way to B (the refusal
    /// overtook it), so ask B again on the next resends before giving up.
    /// Whether the frame stays waiting.
    #[cold]
    #[inline(never)]
    pub(super) fn await_completed(&mut self, now: Millis, sid: SessionId, t: u64) -> bool {
        if !self.try_recovery(sid, t) {
            return false;
        }
        self.sync(now);
        self.ignored(sid, t, "processed already: asking B for the result".into());
        true
    }

    /// Counts one more recovery of a waiting frame; whether it had tries
    /// left.
    fn try_recovery(&mut self, sid: SessionId, t: u64) -> bool {
        let limit = self.options.session_recoveries;
        let Some(slot) = self.outbox.get_mut(sid, t) else {
            return false;
        };
        if slot.recoveries >= limit {
            return false;
        }
        slot.recoveries += 1;
        true
    }

    /// A lone acknowledgement, written when the shell asks for it.
    pub(super) fn ack(&mut self, sid: SessionId, t: u64) {
        self.transmits.push_back(Pending::Ack { sid, t });
    }

    pub(super) fn on_result(&mut self, now: Millis, payload: &[u8]) {
        // A result is read in place, from its header on; anything else
        // on the topic (a refusal) is decoded whole.
        match wire::read_header(payload) {
            Ok((Kind::Result, sid, t, _)) => self.on_values(now, sid, t, payload),
            Ok(_) => self.on_other(now, payload),
            Err(e) => self.ignored(SessionId([0; 16]), 0, e.to_string()),
        }
    }

    fn on_values(&mut self, now: Millis, sid: SessionId, t: u64, payload: &[u8]) {
        if !self.outbox.contains(sid, t) {
            self.unwaited(sid, t);
            return;
        }
        if let Err(e) = self.device.read_result(payload, &mut self.outputs) {
            self.unreadable(sid, t, &e);
            return;
        }
        let values = self.outputs.iter().map(|v| I256::from(*v)).collect();
        if let Some(entry) = self.settle(now, sid, t, Settled::Result) {
            self.events.push_back(DeviceEvent::Deliver {
                sid,
                t,
                values,
                captured: entry.captured,
                label: entry.label,
                bytes: payload.len(),
            });
            self.outbox.recycle(entry.envelope);
        }
        // Rides on the session's next frame, or goes on its own after
        // `ack_delay`.
        let key = (sid, t);
        let at = self
            .acks_due
            .partition_point(|(s, due, _)| (*s, *due) < key);
        self.acks_due.insert(at, (sid, t, now));
        // The next frame's masks, unless its capture's predecessor did it.
        self.device.prepare(self.counter.peek());
    }

    /// A result no frame waits for: acknowledged so that B drops it.
    #[cold]
    #[inline(never)]
    fn unwaited(&mut self, sid: SessionId, t: u64) {
        self.ack(sid, t);
        if self.settled.contains(sid, t) {
            // Already handed over: B did not get the ack, or redelivered.
            self.ignored(sid, t, "duplicate result".into());
        } else {
            // A stale copy of the state, or a frame given up.
            self.ignored(sid, t, "result of no waiting frame".into());
        }
    }

    #[cold]
    #[inline(never)]
    fn unreadable(&mut self, sid: SessionId, t: u64, e: &crate::error::ProtocolError) {
        self.ack(sid, t);
        self.ignored(sid, t, format!("cannot open a result: {e}"));
    }

    #[cold]
    #[inline(never)]
    fn on_other(&mut self, now: Millis, payload: &[u8]) {
        let env = match Envelope::from_device_bytes(&self.device.config().device, payload) {
            Ok(env) => env,
            Err(e) => {
                self.ignored(SessionId([0; 16]), 0, e.to_string());
                return;
            }
        };
        let (sid, t) = (env.sid, env.t);
        let Body::Reject { code, detail } = env.body else {
            self.ack(sid, t);
            self.ignored(sid, t, format!("{} sent to a device", env.body.kind()));
            return;
        };
        let Some(label) = self.outbox.get(sid, t).map(|s| s.entry.label.clone()) else {
            // B could not serve A for a session it never got: A's
            // message names a counter, not necessarily a frame.
            if code == RejectCode::UnknownSession {
                self.republish_session(now, sid);
            }
            self.ignored(sid, t, format!("refusal ({code}) of no waiting frame"));
            return;
        };
        if code == RejectCode::UnknownSession && self.recover_session(now, sid, t) {
            return;
        }
        if code == RejectCode::Completed && self.await_completed(now, sid, t) {
            return;
        }
        if let Some(entry) = self.settle(now, sid, t, Settled::Rejected) {
            self.outbox.recycle(entry.envelope);
        }
        self.events.push_back(DeviceEvent::Refused {
            sid,
            t,
            code,
            detail,
            label,
        });
    }

    #[cold]
    #[inline(never)]
    pub(super) fn ignored(&mut self, sid: SessionId, t: u64, why: String) {
        self.events.push_back(DeviceEvent::Ignored { sid, t, why });
    }
}
