//! A's messages: from devices (session and frame topics, each checked
//! against the device its topic names), from B, and to B.

use super::{AEvent, ANote, Confirming, ServerANode};
use crate::backend::PublicOps;
use crate::device::frame_fits;
use crate::messages::{Body, Envelope, Peer, RejectCode};
use crate::node::{Bytes, Millis, Transmit, device_envelope};
use crate::topics;

impl<P: PublicOps> ServerANode<P> {
    pub(super) fn on_message(&mut self, now: Millis, topic: &str, payload: Bytes) {
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

    pub(super) fn device_message(
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

    pub(super) fn on_frame(&mut self, now: Millis, device: &str, payload: Bytes) {
        let Some(env) = self.device_message("frame", device, &payload) else {
            return;
        };
        let (sid, t) = (env.sid, env.t);
        let Body::Frame(frame) = &env.body else {
            let detail = format!("{} on the frame topic", env.body.kind());
            self.refuse_device("frame", device, sid, t, RejectCode::Malformed, detail);
            return;
        };
        // The device's acknowledgements ride on its frame: pass them on to
        // B, which holds the results (whatever becomes of the frame).
        let acks = frame.acks.clone();
        self.forward_acks(device, sid, &acks);
        if let Err(e) = frame_fits(frame, self.machine.frame_layout()) {
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
        if self.sessions.want(&sid) {
            // Not parked: no session message is on its way unless the
            // device is told. Its later frames park until it comes.
            self.refuse_unknown_session(now, device, sid, t);
            return;
        }
        self.touch_session(now, sid);
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
        // Stored as a whole envelope: the device's name is the topic's.
        let Ok(envelope) = env.to_bytes() else {
            self.refused("frame", device, RejectCode::Malformed, "unencodable".into());
            return;
        };
        self.events.push_back(AEvent::PersistFrame {
            sid,
            t,
            device: device.to_string(),
            envelope,
        });
        self.note(ANote::Frame);
        self.submit(now, env);
    }

    fn forward_acks(&mut self, device: &str, sid: crate::prf::SessionId, acks: &[u64]) {
        let topic = topics::a_to_b(&self.options.worker);
        for ack in acks {
            if let Ok(bytes) = Envelope::new(device, sid, *ack, Body::Ack).to_bytes() {
                self.transmits
                    .push_back(Transmit::new(topic.clone(), bytes));
            }
        }
    }

    pub(super) fn on_from_b(&mut self, now: Millis, payload: &[u8]) {
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

    pub(super) fn dispatch(&mut self, now: Millis, outgoing: Vec<crate::messages::Outgoing>) {
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
