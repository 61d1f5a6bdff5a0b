//! The parties' lives: inputs, connections, crashes and restarts from
//! durable state only, and the fault plan's actions.

use super::*;

impl World {
    pub(super) fn handle(&mut self, party: Party, input: Input) {
        let now = self.now;
        match party {
            Party::A => {
                if let Some(node) = self.a.as_mut() {
                    node.handle(now, input);
                }
            }
            Party::B => {
                if let Some(node) = self.b.as_mut() {
                    node.handle(now, input);
                }
            }
            Party::Device(d) => {
                if let Some(node) = self.devs.get_mut(d).and_then(|dev| dev.node.as_mut()) {
                    node.handle(now, input);
                }
            }
        }
        self.drain(party);
    }

    pub(super) fn set_connected(&mut self, party: Party, on: bool) {
        match party {
            Party::A => self.a_connected = on,
            Party::B => self.b_connected = on,
            Party::Device(d) => {
                if let Some(dev) = self.devs.get_mut(d) {
                    dev.connected = on;
                }
            }
        }
    }

    pub(super) fn connect(&mut self, party: Party) {
        self.set_connected(party, true);
        self.broker.subscribed(party, self.now);
        let buffered = match party {
            Party::A => std::mem::take(&mut self.a_buffer),
            Party::B => std::mem::take(&mut self.b_buffer),
            Party::Device(_) => Vec::new(),
        };
        for t in buffered {
            self.publish(party, t);
        }
        self.handle(party, Input::Connected);
    }

    pub(super) fn disconnect(&mut self, party: Party) {
        self.set_connected(party, false);
        if let Party::Device(_) = party {
            self.broker.forget(party);
        }
        self.handle(party, Input::Disconnected);
    }

    pub(super) fn crash(&mut self, party: Party) {
        self.disconnect(party);
        match party {
            Party::A => {
                self.a = None;
                self.a_buffer.clear();
            }
            Party::B => {
                self.b = None;
                self.b_buffer.clear();
            }
            Party::Device(d) => {
                if let Some(dev) = self.devs.get_mut(d) {
                    dev.node = None;
                }
            }
        }
    }

    pub(super) fn restart(&mut self, party: Party) {
        let fx = self.fx;
        let params = self.params.clone();
        match party {
            Party::A => {
                let machine = ServerA::new(
                    ServerAConfig {
                        params,
                        topology: Arc::clone(&fx.topology),
                        plan: Arc::new(fx.model.plan().clone()),
                        key: Arc::clone(&fx.a_key),
                        rounding_key: fx.rounding_key.clone(),
                    },
                    Plain::default(),
                )
                .expect("the fixture configures server A");
                let options = AOptions {
                    worker: WORKER.into(),
                    sessions: self.sessions.clone(),
                    ..AOptions::default()
                };
                let mut node = ServerANode::new(machine, options, Vec::new());
                let sessions = self.a_durable.sessions.values().cloned().collect();
                let frames = self.a_durable.frames.values().cloned().collect();
                node.restore(self.now, sessions, frames);
                self.a = Some(node);
            }
            Party::B => {
                let machine = ServerB::new(
                    ServerBConfig {
                        params,
                        topology: Arc::clone(&fx.topology),
                        key: Arc::clone(&fx.b_key),
                    },
                    Plain::default(),
                )
                .expect("the fixture configures server B");
                let options = BOptions {
                    sessions: self.sessions.clone(),
                    ..BOptions::default()
                };
                let mut node = ServerBNode::new(machine, options, Vec::new());
                let store = &self.b_durable;
                node.restore(
                    self.now,
                    store.sessions.values().cloned().collect(),
                    store.completed.iter().map(|(s, t)| (*s, *t)).collect(),
                    store
                        .progress
                        .iter()
                        .map(|((s, t), stage)| (*s, *t, *stage))
                        .collect(),
                    store.results.values().cloned().collect(),
                );
                self.b = Some(node);
            }
            Party::Device(d) => {
                let seed = self.rng.seed32();
                let Some(dev) = self.devs.get_mut(d) else {
                    return;
                };
                let cfg = DeviceConfig {
                    device: device_name(d),
                    params,
                    topology: Arc::clone(&fx.topology),
                    server_a: fx.a_key.public_key().clone(),
                    server_b: fx.b_key.public_key().clone(),
                };
                let node =
                    DeviceNode::restore(cfg, DeviceOptions::default(), dev.durable.clone(), seed)
                        .expect("the fixture configures the device");
                dev.node = Some(node);
            }
        }
        self.drain(party);
        self.connect(party);
    }

    pub(super) fn act(&mut self, action: Action) {
        if self.trace {
            eprintln!("{} action {action:?}", self.now - START);
        }
        match action {
            Action::Capture(d) => self.capture(d),
            Action::Crash(party, down) => {
                if self.is_up(party) {
                    self.crash(party);
                    self.schedule(self.now + down, Action::Restart(party));
                }
            }
            Action::Disconnect(party, down) => {
                if self.ready(party) {
                    self.disconnect(party);
                    self.schedule(self.now + down, Action::Reconnect(party));
                }
            }
            Action::Reconnect(party) => {
                if self.is_up(party) {
                    self.connect(party);
                }
            }
            Action::Restart(party) => {
                if !self.is_up(party) {
                    self.restart(party);
                }
            }
            Action::StaleRestore(d, down) => {
                let party = Party::Device(d);
                if !self.is_up(party) {
                    return;
                }
                self.crash(party);
                let Some(dev) = self.devs.get_mut(d) else {
                    return;
                };
                let count = dev.snapshots.len() as u64;
                let pick = self.rng.below(count + 1) as usize;
                dev.durable = dev.snapshots.get(pick).cloned().unwrap_or_default();
                let kept: Vec<(SessionId, u64)> =
                    dev.durable.outbox.iter().map(|e| (e.sid, e.t)).collect();
                self.checker.restored_stale(d, &kept);
                self.schedule(self.now + down, Action::Restart(party));
            }
            Action::ClockJump(delta) => {
                self.now = if delta < 0 {
                    self.now.saturating_sub(delta.unsigned_abs())
                } else {
                    self.now.saturating_add(delta as u64)
                };
            }
        }
    }
}
