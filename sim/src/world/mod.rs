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
    Input, Millis, Queued, ServerANode, ServerBNode, SessionLimits, StoredSession, Transmit,
};
use veil_protocol::{
    DeviceConfig, Params, Plain, ServerA, ServerAConfig, ServerB, ServerBConfig, SessionId,
};

mod drain;
mod party;

/// What one seed did.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    /// The run's seed.
    pub seed: u64,
    /// Devices simulated.
    pub devices: usize,
    /// Frames the devices accepted.
    pub frames: usize,
    /// Results delivered to the devices' applications.
    pub delivered: usize,
    /// Frames lost with a reason (refused or expired).
    pub lost: usize,
    /// Events processed.
    pub steps: u64,
    /// Simulated time, in ms.
    pub sim_ms: u64,
    /// Faults injected.
    pub faults: usize,
    /// Messages the broker model dropped.
    pub dropped: u64,
    /// Sessions the servers retired (quota) or let expire (TTL).
    pub sessions_forgotten: u64,
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
    sessions: BTreeMap<SessionId, StoredSession>,
    frames: BTreeMap<(SessionId, u64), Vec<u8>>,
}

#[derive(Default)]
struct BDurable {
    sessions: BTreeMap<SessionId, StoredSession>,
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
    sessions: SessionLimits,
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

/// The servers' session rules: the defaults for most seeds; for one in
/// four a TTL of 10 to 30 min (above every clock jump and timeout of the
/// run) and a quota of 2 sessions per device (4 when the device rekeys
/// every few frames and so holds several sessions with frames waiting).
/// A quota of 1 loses frames: a device restarted with frames waiting
/// holds two sessions, and the two servers retire each in turn until the
/// device's session recoveries run out (15 of 4,000 seeds). Drawn from a
/// stream of their own, so that every other draw of a seed stays as it
/// was before these rules existed.
fn session_limits(seed: u64, params: &Params) -> SessionLimits {
    let mut rng = SimRng::new(seed ^ 0x5e55_1015);
    if !rng.chance(250) {
        return SessionLimits::default();
    }
    SessionLimits {
        max_per_device: if params.rekey_after < 8 { 4 } else { 2 },
        ttl: 600_000 + rng.below(1_200_000),
        max_opens_per_minute: 0,
    }
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
            sessions: session_limits(seed, &params),
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
            let kind = veil_protocol::Envelope::from_topic(&t.topic, &t.payload)
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
                        self.checker.received(delivery.to, &topic, &payload);
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
