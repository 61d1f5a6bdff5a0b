//! One simulated run: the parties, their durable state, the broker, the
//! clock and the fault plan, stepped until the system is quiet.

use crate::broker::{Broker, NetFaults, Payload};
use crate::check::Checker;
use crate::fixture::{Fixture, fixture};
use crate::{Failure, Party, SimRng, WORKER, device_name};
use std::collections::BTreeMap;
use std::sync::Arc;
use veil_protocol::node::{
    AEvent, AOptions, BEvent, BOptions, DeviceDurable, DeviceEvent, DeviceNode, DeviceOptions,
    Input, Millis, Queued, ServerANode, ServerBNode, Transmit,
};
use veil_protocol::{
    DeviceConfig, Params, Plain, ServerA, ServerAConfig, ServerB, ServerBConfig, SessionId,
};

/// What one seed did.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub seed: u64,
    pub devices: usize,
    pub frames: usize,
    pub delivered: usize,
    pub lost: usize,
    pub steps: u64,
    pub sim_ms: u64,
    pub faults: usize,
    pub dropped: u64,
}

#[derive(Clone, Copy, Debug)]
enum Action {
    Capture(usize),
    Crash(Party, Millis),
    Disconnect(Party, Millis),
    Reconnect(Party),
    Restart(Party),
    StaleRestore(usize, Millis),
    ClockJump(i64),
}

#[derive(Default)]
struct ADurable {
    sessions: BTreeMap<SessionId, Vec<u8>>,
    frames: BTreeMap<(SessionId, u64), Vec<u8>>,
}

#[derive(Default)]
struct BDurable {
    sessions: BTreeMap<SessionId, Vec<u8>>,
    completed: BTreeMap<SessionId, u64>,
    progress: BTreeMap<(SessionId, u64), u64>,
    results: BTreeMap<(String, SessionId, u64), Queued>,
}

struct Dev {
    node: Option<DeviceNode>,
    durable: DeviceDurable,
    snapshots: Vec<DeviceDurable>,
    connected: bool,
    captured: usize,
}

const START: Millis = 1_700_000_000_000;
/// After the chaos phase the run must converge within this long.
const HEAL: Millis = 6 * 3600 * 1000;
const MAX_STEPS: u64 = 400_000;

struct World {
    trace: bool,
    now: Millis,
    rng: SimRng,
    params: Params,
    fx: &'static Fixture,
    faults: NetFaults,
    chaos_end: Millis,
    a: Option<ServerANode<Plain>>,
    a_durable: ADurable,
    a_connected: bool,
    a_buffer: Vec<Transmit>,
    b: Option<ServerBNode<Plain>>,
    b_durable: BDurable,
    b_connected: bool,
    b_buffer: Vec<Transmit>,
    devs: Vec<Dev>,
    broker: Broker,
    checker: Checker,
    actions: Vec<(Millis, u64, Action)>,
    action_seq: u64,
    summary: Summary,
}

/// Runs one seed to quiescence and checks every invariant.
pub fn run(seed: u64) -> Result<Summary, Failure> {
    let mut world = World::new(seed);
    world.start();
    world.step_all();
    let failure = world.checker.violations.first().cloned();
    match failure {
        Some(what) => Err(Failure {
            seed,
            at: world.now.saturating_sub(START),
            what,
        }),
        None => {
            let (frames, delivered, lost) = world.checker.totals();
            world.summary.frames = frames;
            world.summary.delivered = delivered;
            world.summary.lost = lost;
            world.summary.sim_ms = world.now.saturating_sub(START);
            Ok(world.summary)
        }
    }
}

impl World {
    fn new(seed: u64) -> World {
        let mut rng = SimRng::new(seed);
        let fx = fixture();
        let mut params = Params::default();
        if rng.chance(300) {
            params.rekey_after = 2 + rng.below(3);
        }
        let faults = if rng.chance(700) {
            NetFaults {
                drop: rng.below(30),
                duplicate: rng.below(100),
                reorder: rng.below(100),
                delay: rng.below(50),
            }
        } else {
            NetFaults::default()
        };
        let devices = 1 + rng.below(3) as usize;
        let chaos_end = START + 60_000 + rng.below(120_000);
        let mut world = World {
            trace: std::env::var_os("VEIL_SIM_TRACE").is_some(),
            now: START,
            params,
            fx,
            faults,
            chaos_end,
            a: None,
            a_durable: ADurable::default(),
            a_connected: false,
            a_buffer: Vec::new(),
            b: None,
            b_durable: BDurable::default(),
            b_connected: false,
            b_buffer: Vec::new(),
            devs: (0..devices)
                .map(|_| Dev {
                    node: None,
                    durable: DeviceDurable::default(),
                    snapshots: Vec::new(),
                    connected: false,
                    captured: 0,
                })
                .collect(),
            broker: Broker::new(devices),
            checker: Checker::default(),
            actions: Vec::new(),
            action_seq: 0,
            summary: Summary {
                seed,
                devices,
                ..Summary::default()
            },
            rng,
        };
        world.plan(devices);
        world
    }

    fn plan(&mut self, devices: usize) {
        let span = self.chaos_end - START;
        for d in 0..devices {
            for _ in 0..1 + self.rng.below(5) {
                let at = START + self.rng.below(span);
                self.schedule(at, Action::Capture(d));
            }
        }
        let faults = self.rng.below(7);
        self.summary.faults = faults as usize;
        for _ in 0..faults {
            let at = START + self.rng.below(span);
            let down = 100 + self.rng.below(30_000);
            let party = match self.rng.below(3) {
                0 => Party::A,
                1 => Party::B,
                _ => Party::Device(self.rng.below(devices as u64) as usize),
            };
            let action = match self.rng.below(5) {
                0 => Action::Crash(party, down),
                1 => Action::Disconnect(party, down),
                2 => Action::StaleRestore(self.rng.below(devices as u64) as usize, down),
                3 if self.rng.chance(200) => Action::ClockJump(-(self.rng.below(10_000) as i64)),
                _ => Action::ClockJump(self.rng.below(300_000) as i64),
            };
            self.schedule(at, action);
        }
    }

    fn schedule(&mut self, at: Millis, action: Action) {
        self.action_seq += 1;
        self.actions.push((at, self.action_seq, action));
    }

    fn start(&mut self) {
        self.restart(Party::B);
        self.restart(Party::A);
        for d in 0..self.devs.len() {
            self.restart(Party::Device(d));
        }
    }

    fn net_faults(&self) -> NetFaults {
        if self.now < self.chaos_end {
            self.faults
        } else {
            NetFaults::default()
        }
    }

    fn ready(&self, party: Party) -> bool {
        match party {
            Party::A => self.a.is_some() && self.a_connected,
            Party::B => self.b.is_some() && self.b_connected,
            Party::Device(d) => self
                .devs
                .get(d)
                .is_some_and(|dev| dev.node.is_some() && dev.connected),
        }
    }

    fn publish(&mut self, from: Party, t: Transmit) {
        if self.trace {
            let kind = veil_protocol::Envelope::from_bytes(&t.payload)
                .map(|e| match &e.body {
                    veil_protocol::Body::Reject { code, detail } => {
                        format!("reject t={} {code} {detail}", e.t)
                    }
                    veil_protocol::Body::Round(r) => format!("round t={} stage {}", e.t, r.stage),
                    body => format!("{} t={}", body.kind(), e.t),
                })
                .unwrap_or_default();
            eprintln!("{} {from:?} -> {} {kind}", self.now - START, t.topic);
        }
        self.checker.published(from, &t.topic, &t.payload);
        let faults = self.net_faults();
        let devices = self.devs.len();
        let ready: Vec<bool> = (0..devices).map(|d| self.ready(Party::Device(d))).collect();
        let reachable = |p: Party| match p {
            Party::Device(d) => ready.get(d).copied().unwrap_or(false),
            // Persistent sessions: the broker keeps their messages.
            _ => true,
        };
        self.summary.dropped +=
            self.broker
                .publish(from, t, self.now, faults, &mut self.rng, &reachable);
    }

    fn drain(&mut self, party: Party) {
        match party {
            Party::A => self.drain_a(),
            Party::B => self.drain_b(),
            Party::Device(d) => self.drain_device(d),
        }
    }

    fn drain_a(&mut self) {
        let mut out = Vec::new();
        if let Some(node) = self.a.as_mut() {
            while let Some(event) = node.poll_event() {
                let store = &mut self.a_durable;
                match event {
                    AEvent::PersistSession { sid, envelope, .. } => {
                        store.sessions.insert(sid, envelope);
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

    fn drain_b(&mut self) {
        let mut out = Vec::new();
        let mut made = Vec::new();
        if let Some(node) = self.b.as_mut() {
            while let Some(event) = node.poll_event() {
                let store = &mut self.b_durable;
                match event {
                    BEvent::PersistSession { sid, envelope, .. } => {
                        store.sessions.insert(sid, envelope);
                    }
                    BEvent::ForgetSession { sid } => {
                        store.sessions.remove(&sid);
                    }
                    BEvent::PersistResult(q) => {
                        made.push((q.sid, q.t));
                        let mark = store.completed.entry(q.sid).or_insert(q.t);
                        *mark = (*mark).max(q.t);
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

    fn drain_device(&mut self, d: usize) {
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
                DeviceEvent::PersistOutbox(entry) => store.outbox.push(entry),
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

    fn handle(&mut self, party: Party, input: Input) {
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

    fn set_connected(&mut self, party: Party, on: bool) {
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

    fn connect(&mut self, party: Party) {
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

    fn disconnect(&mut self, party: Party) {
        self.set_connected(party, false);
        if let Party::Device(_) = party {
            self.broker.forget(party);
        }
        self.handle(party, Input::Disconnected);
    }

    fn crash(&mut self, party: Party) {
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

    fn restart(&mut self, party: Party) {
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
                let mut node = ServerBNode::new(machine, BOptions::default(), Vec::new());
                let store = &self.b_durable;
                node.restore(
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

    fn act(&mut self, action: Action) {
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

    fn is_up(&self, party: Party) -> bool {
        match party {
            Party::A => self.a.is_some(),
            Party::B => self.b.is_some(),
            Party::Device(d) => self.devs.get(d).is_some_and(|dev| dev.node.is_some()),
        }
    }

    fn capture(&mut self, d: usize) {
        if !self.is_up(Party::Device(d)) {
            // The application waits for the device to come back.
            self.schedule(self.now + 1_000, Action::Capture(d));
            return;
        }
        let x_hat = self.fx.input(&mut self.rng);
        let now = self.now;
        let Some(dev) = self.devs.get_mut(d) else {
            return;
        };
        let Some(node) = dev.node.as_mut() else {
            return;
        };
        match node.capture(now, &x_hat, None) {
            Ok((sid, t)) => {
                dev.captured += 1;
                self.checker.captured(d, sid, t, x_hat);
            }
            Err(e) => self
                .checker
                .violations
                .push(format!("dev{d} capture failed: {e}")),
        }
        self.drain_device(d);
        if self.rng.chance(400)
            && let Some(dev) = self.devs.get_mut(d)
        {
            dev.snapshots.push(dev.durable.clone());
        }
    }

    fn timeouts(&self) -> Vec<(Party, Millis)> {
        let mut out = Vec::new();
        if let Some(at) = self.a.as_ref().and_then(ServerANode::poll_timeout) {
            out.push((Party::A, at));
        }
        if let Some(at) = self.b.as_ref().and_then(ServerBNode::poll_timeout) {
            out.push((Party::B, at));
        }
        for (d, dev) in self.devs.iter().enumerate() {
            if let Some(at) = dev.node.as_ref().and_then(DeviceNode::poll_timeout) {
                out.push((Party::Device(d), at));
            }
        }
        out
    }

    fn fire_timeout(&mut self, party: Party) {
        let now = self.now;
        match party {
            Party::A => {
                if let Some(node) = self.a.as_mut() {
                    node.handle_timeout(now);
                }
            }
            Party::B => {
                if let Some(node) = self.b.as_mut() {
                    node.handle_timeout(now);
                }
            }
            Party::Device(d) => {
                if let Some(node) = self.devs.get_mut(d).and_then(|dev| dev.node.as_mut()) {
                    node.handle_timeout(now);
                }
            }
        }
        self.drain(party);
    }

    fn check_bounds(&mut self) {
        let devices = self.devs.len();
        for (d, dev) in self.devs.iter().enumerate() {
            if let Some(node) = dev.node.as_ref() {
                let (pending, settled) = (node.pending(), node.settled_len());
                self.checker
                    .bounded(&format!("dev{d} outbox"), pending, dev.captured + 64);
                self.checker
                    .bounded(&format!("dev{d} settled set"), settled, 4096);
            }
        }
        if let Some(a) = self.a.as_ref() {
            let (_, _, parked, _) = a.load();
            self.checker
                .bounded("frames parked at A", parked, 64 * devices);
        }
    }

    fn quiet(&self) -> bool {
        let captures_left = self.actions.iter().any(|(_, _, a)| {
            matches!(
                a,
                Action::Capture(_) | Action::Restart(_) | Action::Reconnect(_)
            )
        });
        let all_ready = self.ready(Party::A)
            && self.ready(Party::B)
            && (0..self.devs.len()).all(|d| self.ready(Party::Device(d)));
        let outboxes_empty = self
            .devs
            .iter()
            .all(|dev| dev.node.as_ref().is_some_and(|n| n.pending() == 0));
        !captures_left && all_ready && outboxes_empty && self.broker.pending.is_empty()
    }

    fn step_all(&mut self) {
        let deadline = self.chaos_end + HEAL;
        while self.summary.steps < MAX_STEPS {
            self.summary.steps += 1;
            self.check_bounds();
            if !self.checker.violations.is_empty() {
                return;
            }
            // Precomputation is instant in simulated time.
            if let Some(a) = self.a.as_mut()
                && a.has_work()
            {
                a.work(self.now);
                self.drain_a();
                continue;
            }
            let ready: Vec<Party> = [Party::A, Party::B]
                .into_iter()
                .chain((0..self.devs.len()).map(Party::Device))
                .filter(|p| self.ready(*p))
                .collect();
            let is_ready = |p: Party| ready.contains(&p);
            if let Some(delivery) = self.broker.next_due(self.now, &is_ready) {
                match delivery.what {
                    Payload::Message { topic, payload } => {
                        if self.trace {
                            eprintln!("{} deliver {:?} {topic}", self.now - START, delivery.to);
                        }
                        self.checker.received(delivery.to, &payload);
                        self.handle(delivery.to, Input::Message { topic, payload });
                    }
                    Payload::Confirmed(token) => {
                        if self.trace {
                            eprintln!("{} confirm {:?} {token}", self.now - START, delivery.to);
                        }
                        self.handle(delivery.to, Input::Confirmed(token))
                    }
                }
                continue;
            }
            if let Some((party, _)) = self
                .timeouts()
                .into_iter()
                .filter(|(_, at)| *at <= self.now)
                .min_by_key(|(p, at)| (*at, *p))
            {
                self.fire_timeout(party);
                continue;
            }
            if let Some(index) = self
                .actions
                .iter()
                .enumerate()
                .filter(|(_, (at, _, _))| *at <= self.now)
                .min_by_key(|(_, (at, seq, _))| (*at, *seq))
                .map(|(i, _)| i)
            {
                let (_, _, action) = self.actions.swap_remove(index);
                self.act(action);
                continue;
            }
            if self.quiet() {
                self.checker.quiescent();
                return;
            }
            let next = [
                self.broker.next_time(&is_ready),
                self.timeouts().into_iter().map(|(_, at)| at).min(),
                self.actions.iter().map(|(at, _, _)| *at).min(),
            ]
            .into_iter()
            .flatten()
            .min();
            match next {
                Some(at) if at <= deadline => self.now = self.now.max(at),
                _ => {
                    self.checker.quiescent();
                    if self.checker.violations.is_empty() {
                        self.checker
                            .violations
                            .push("the run did not settle before its deadline".into());
                    }
                    return;
                }
            }
        }
        self.checker
            .violations
            .push(format!("no quiescence after {MAX_STEPS} steps"));
    }
}
