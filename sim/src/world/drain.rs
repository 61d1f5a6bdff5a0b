//! Applying what each node asks for: its events to its durable state and
//! the checker, its transmits to the broker.

use super::*;
use veil_protocol::node::{ANote, BNote};

fn stored_session(
    sid: SessionId,
    device: String,
    envelope: Vec<u8>,
    opened: Millis,
) -> StoredSession {
    StoredSession {
        sid,
        device,
        opened,
        used: opened,
        envelope,
    }
}

impl World {
    pub(super) fn drain(&mut self, party: Party) {
        match party {
            Party::A => self.drain_a(),
            Party::B => self.drain_b(),
            Party::Device(d) => self.drain_device(d),
        }
    }

    pub(super) fn drain_a(&mut self) {
        let mut out = Vec::new();
        if let Some(node) = self.a.as_mut() {
            while let Some(event) = node.poll_event() {
                let store = &mut self.a_durable;
                match event {
                    AEvent::PersistSession {
                        sid,
                        device,
                        envelope,
                        opened,
                    } => {
                        store
                            .sessions
                            .insert(sid, stored_session(sid, device, envelope, opened));
                    }
                    AEvent::TouchSession { sid, used } => {
                        if let Some(s) = store.sessions.get_mut(&sid) {
                            s.used = used;
                        }
                    }
                    AEvent::ForgetSession { sid } => {
                        store.sessions.remove(&sid);
                    }
                    AEvent::PersistFrame {
                        sid, t, envelope, ..
                    } => {
                        store.frames.insert((sid, t), envelope);
                    }
                    AEvent::ForgetFrame { sid, t } => {
                        store.frames.remove(&(sid, t));
                    }
                    AEvent::Refused(r) => {
                        if self.trace {
                            eprintln!(
                                "A refused {} from {}: {} {}",
                                r.what, r.from, r.code, r.detail
                            );
                        }
                    }
                    AEvent::Note(note @ (ANote::SessionRetired | ANote::SessionExpired)) => {
                        self.summary.sessions_forgotten += 1;
                        if self.trace {
                            eprintln!("{} A {note:?}", self.now);
                        }
                    }
                    AEvent::Note(note @ (ANote::SessionPruned | ANote::SessionThrottled)) => {
                        if self.trace {
                            eprintln!("{} A {note:?}", self.now);
                        }
                    }
                    AEvent::Note(_) => {}
                }
            }
            while let Some(t) = node.poll_transmit() {
                out.push(t);
            }
        }
        for t in out {
            if self.a_connected {
                self.publish(Party::A, t);
            } else {
                self.a_buffer.push(t);
            }
        }
    }

    pub(super) fn drain_b(&mut self) {
        let mut out = Vec::new();
        let mut made = Vec::new();
        if let Some(node) = self.b.as_mut() {
            while let Some(event) = node.poll_event() {
                let store = &mut self.b_durable;
                match event {
                    BEvent::PersistSession {
                        sid,
                        device,
                        envelope,
                        opened,
                    } => {
                        store
                            .sessions
                            .insert(sid, stored_session(sid, device, envelope, opened));
                    }
                    BEvent::TouchSession { sid, used } => {
                        if let Some(s) = store.sessions.get_mut(&sid) {
                            s.used = used;
                        }
                    }
                    BEvent::ForgetSession { sid } => {
                        store.sessions.remove(&sid);
                        store.progress.retain(|(s, _), _| *s != sid);
                    }
                    BEvent::ForgetCompletion { sid } => {
                        store.completed.remove(&sid);
                    }
                    BEvent::PersistResult {
                        result: q,
                        completed,
                    } => {
                        made.push((q.sid, q.t));
                        store.completed.insert(q.sid, completed);
                        store.results.insert((q.device.clone(), q.sid, q.t), q);
                    }
                    BEvent::PersistProgress { sid, t, stage } => {
                        store.progress.insert((sid, t), stage);
                    }
                    BEvent::ForgetProgress { sid, upto } => {
                        store.progress.retain(|(s, t), _| *s != sid || *t > upto);
                    }
                    BEvent::ForgetResult { device, sid, t } => {
                        store.results.remove(&(device, sid, t));
                    }
                    BEvent::Refused(r) => {
                        if self.trace {
                            eprintln!(
                                "B refused {} from {}: {} {}",
                                r.what, r.from, r.code, r.detail
                            );
                        }
                    }
                    BEvent::Note(note @ (BNote::SessionRetired | BNote::SessionExpired)) => {
                        self.summary.sessions_forgotten += 1;
                        if self.trace {
                            eprintln!("{} B {note:?}", self.now);
                        }
                    }
                    BEvent::Note(note @ (BNote::SessionPruned | BNote::SessionThrottled)) => {
                        if self.trace {
                            eprintln!("{} B {note:?}", self.now);
                        }
                    }
                    BEvent::Note(_) => {}
                }
            }
            while let Some(t) = node.poll_transmit() {
                out.push(t);
            }
        }
        for (sid, t) in made {
            self.checker.result_made(sid, t);
        }
        for t in out {
            if self.b_connected {
                self.publish(Party::B, t);
            } else {
                self.b_buffer.push(t);
            }
        }
    }

    pub(super) fn drain_device(&mut self, d: usize) {
        let now = self.now;
        let params = self.params.clone();
        let mut out = Vec::new();
        let Some(dev) = self.devs.get_mut(d) else {
            return;
        };
        let Some(node) = dev.node.as_mut() else {
            return;
        };
        while let Some(event) = node.poll_event() {
            let store = &mut dev.durable;
            match event {
                DeviceEvent::PersistCounter(mark) => store.counter_mark = mark,
                DeviceEvent::PersistSessions(sessions) => store.sessions = sessions,
                DeviceEvent::PersistOutbox { sid, t } => {
                    store.outbox.extend(node.outbox_entry(sid, t).cloned())
                }
                DeviceEvent::Settle { sid, t, how } => {
                    if self.trace {
                        eprintln!("{} dev{d} settled ({sid}, {t}) {how:?}", now - START);
                    }
                    store.outbox.retain(|e| (e.sid, e.t) != (sid, t));
                    store.settled.push((sid, t, now));
                    let excess = store.settled.len().saturating_sub(4096);
                    store.settled.drain(..excess);
                }
                DeviceEvent::Deliver { sid, t, values, .. } => {
                    self.checker.delivered(&params, d, sid, t, &values)
                }
                DeviceEvent::Refused {
                    sid,
                    t,
                    code,
                    detail,
                    ..
                } => self
                    .checker
                    .refused(d, sid, t, code, format!("{code}: {detail}")),
                DeviceEvent::Expired { sid, t, .. } => self.checker.expired(d, sid, t),
                DeviceEvent::Ignored { .. } => {}
            }
        }
        while let Some(t) = node.poll_transmit() {
            out.push(t);
        }
        let connected = dev.connected;
        for t in out {
            if connected {
                self.publish(Party::Device(d), t);
            }
        }
    }
}
