//! A worker thread: feeds MQTT input about its devices to its node,
//! applies its events to the store, publishes its transmits, reads the
//! clock for it, and precomputes when the node says so.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};
use veil_shell::now_ms;

use veil_link::LinkHandle;
use veil_paillier::{FixedBaseNoise, NoisePool, NoiseSource, PoolFiller};
use veil_protocol::node::{AEvent, ANote, AOptions, Input as NodeInput, Millis, ServerANode};
use veil_protocol::{Noise, PaillierPublic, ServerA, ServerAConfig, SessionId, topics};

use crate::store::Store;
use crate::{Options, ServerAError, Setup, Stats, rounding_key};
use veil_shell::Shard;
use veil_shell::worker::{Input, Inputs};

fn millis(d: Duration) -> Millis {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

pub struct Core {
    node: ServerANode<PaillierPublic>,
    store: Store,
    link: LinkHandle,
    stats: Arc<Stats>,
    /// When this run accepted each frame still stored: the start of its
    /// latency (frame in to output at the broker).
    accepted: HashMap<(SessionId, u64), Instant>,
    /// The input of this loop turn is the broker confirming an output.
    confirming: bool,
    /// Which of the process's workers this is.
    shard: Shard,
}

/// Frames timed at once at most: a bound on `Core::accepted` should
/// frames be forgotten by a path that emits no `ForgetFrame`.
const TIMED_FRAMES: usize = 65_536;

/// A's noise pool when `options` ask for one: one pool for every worker
/// thread, each drawing through [`NoisePool::share`].
///
/// Textbook r^N, not fixed-base values: A re-randomizes what it sends to
/// B, the key holder, who knows φ(N), chose p and q, and could take
/// discrete logarithms of short fixed-base exponents to strip the
/// re-randomization. One background thread; each value is a full
/// exponentiation, made while A waits for frames. 8,192 values: more than
/// one CNN frame sends to B (about 5,000). One pool, not one per worker:
/// filling 8,192 values costs about 8 s of a core (`veil load`'s thread
/// clocks), and a filler per worker took that many more cores' share
/// from the frames while it lasted.
///
/// With packing on (`pack`, the default) there is no pool: every
/// ciphertext A sends is packed, and its textbook noise is made with the
/// packing, whose squarings it shares (`PublicKey::pack_noised`), so a
/// pooled value would cost a second exponentiation.
pub fn noise_pool(
    options: &Options,
    b_key: &veil_paillier::PublicKey,
    pack: bool,
) -> Option<NoisePool> {
    (options.noise == NoiseSource::Pool && !pack)
        .then(|| NoisePool::new(PoolFiller::Public(b_key.clone()), 8192, 1, rand::random()))
}

fn noise_for(
    options: &Options,
    b_key: &veil_paillier::PublicKey,
    pool: Option<&NoisePool>,
    pack: bool,
) -> Noise {
    let mut rng = rand::rng();
    match options.noise {
        NoiseSource::Textbook => Noise::Textbook,
        NoiseSource::FixedBase => Noise::FixedBase(FixedBaseNoise::new(b_key, &mut rng)),
        // See `noise_pool`.
        NoiseSource::Pool if pack => Noise::Textbook,
        NoiseSource::Pool => Noise::Pool(match pool {
            Some(pool) => pool.share(),
            None => NoisePool::new(PoolFiller::Public(b_key.clone()), 8192, 1, rand::random()),
        }),
    }
}

impl Core {
    pub fn new(
        options: Options,
        setup: Setup,
        store: Store,
        link: LinkHandle,
        stats: Arc<Stats>,
        shard: Shard,
        pool: Option<&NoisePool>,
    ) -> Result<Core, ServerAError> {
        let Setup {
            key,
            b_key,
            model,
            params,
        } = setup;
        let topology = Arc::new(model.topology().clone());
        let backend = PaillierPublic::new(
            b_key.clone(),
            noise_for(&options, &b_key, pool, params.pack),
            rand::random(),
        );
        let machine = ServerA::new(
            ServerAConfig {
                params,
                topology: Arc::clone(&topology),
                plan: Arc::new(model.plan().clone()),
                key: Arc::clone(&key),
                rounding_key: rounding_key(&key),
            },
            backend,
        )?;
        let frames_filter = match &options.shared_group {
            Some(group) => format!("$share/{group}/{}", topics::filters::FRAMES),
            None => topics::filters::FRAMES.to_string(),
        };
        // The link's subscriptions are the process's: the first worker
        // sets them, the dispatcher shares out what they bring.
        if shard.index == 0 {
            link.subscribe(vec![
                topics::filters::SESSIONS_A.to_string(),
                frames_filter,
                topics::b_to_a(&options.worker),
            ]);
        }
        tracing::info!(
            worker = %options.worker,
            thread = shard.index,
            threads = shard.count,
            key = %key.public_key().fingerprint_hex(),
            b_key = %b_key.fingerprint_hex(),
            model = %topology.name,
            topology = %topology.fingerprint_hex(),
            "server A ready"
        );
        let public = vec![
            (topics::server_key('a'), key.public_key().to_bytes()),
            (topics::topology(&topology.name), topology.to_bytes()),
        ];
        let node_options = AOptions {
            worker: options.worker.clone(),
            round_timeout: millis(options.round_timeout),
            max_retries: options.max_retries,
            park_timeout: millis(options.park_timeout),
            sessions: options.sessions.clone(),
            ..AOptions::default()
        };
        let mut node = ServerANode::new(machine, node_options, public);
        let now = now_ms();
        let frames = store
            .frames()
            .into_iter()
            .filter(|(device, _)| shard.owns(device))
            .map(|(_, b)| b)
            .collect();
        let sessions = store
            .sessions(now)
            .into_iter()
            .filter(|s| shard.owns(&s.device))
            .collect();
        node.restore(now, sessions, frames);
        let mut core = Core {
            node,
            store,
            link,
            stats,
            accepted: HashMap::new(),
            confirming: false,
            shard,
        };
        core.drain();
        let (live, ..) = core.node.load();
        tracing::info!(
            thread = shard.index,
            live,
            pruned = core.stats.sessions_pruned.load(Ordering::Relaxed),
            "sessions restored: the dead ones deleted without decrypting"
        );
        Ok(core)
    }

    pub fn run(&mut self, inputs: Inputs) {
        loop {
            // A frame held up by precomputation goes first, one step per
            // message taken; other precomputation whenever no message waits.
            let input = if self.node.has_urgent_work() {
                self.node.work(now_ms());
                match inputs.try_recv() {
                    Ok(input) => Some(input),
                    Err(TryRecvError::Empty) => None,
                    Err(TryRecvError::Disconnected) => return,
                }
            } else if self.node.has_work() {
                match inputs.try_recv() {
                    Ok(input) => Some(input),
                    Err(TryRecvError::Empty) => {
                        self.node.work(now_ms());
                        None
                    }
                    Err(TryRecvError::Disconnected) => return,
                }
            } else {
                let wait = self
                    .node
                    .poll_timeout()
                    .map_or(Duration::from_secs(1), |at| {
                        Duration::from_millis(at.saturating_sub(now_ms()))
                    });
                match inputs.recv_timeout(wait.min(Duration::from_secs(1))) {
                    Ok(input) => Some(input),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            };
            let mut ack = None;
            match input {
                Some(Input::Connected) => self.node.handle(now_ms(), NodeInput::Connected),
                Some(Input::Message(m)) => {
                    ack = Some(m.ack);
                    let input = NodeInput::Message {
                        topic: m.topic,
                        payload: m.payload,
                    };
                    self.node.handle(now_ms(), input);
                }
                Some(Input::Confirmed(token)) => {
                    // Drained at once: the confirmed frame's ForgetFrame is
                    // then the first event of this drain (see `apply`).
                    self.confirming = true;
                    self.node.handle(now_ms(), NodeInput::Confirmed(token));
                    self.drain();
                }
                Some(Input::Shutdown) => {
                    let _ = self.store.flush();
                    return;
                }
                Some(Input::Crash) => return,
                None => {}
            }
            let now = now_ms();
            if self.node.poll_timeout().is_some_and(|at| at <= now) {
                self.node.handle_timeout(now);
            }
            self.drain();
            // Frames and sessions are in the store by now.
            if let Some(ack) = ack {
                inputs.ack(ack);
            }
        }
    }

    /// Applies the node's events, then publishes what it sends.
    fn drain(&mut self) {
        while let Some(event) = self.node.poll_event() {
            self.apply(event);
        }
        self.confirming = false;
        while let Some(t) = self.node.poll_transmit() {
            match t.confirm {
                Some(token) => self.link.publish_confirmed(
                    t.topic,
                    t.payload,
                    t.retain,
                    self.shard.confirm_token(token),
                ),
                None => self.link.publish(t.topic, t.payload, t.retain),
            }
        }
    }

    fn apply(&mut self, event: AEvent) {
        let stats = &self.stats;
        let bump = |counter: &AtomicU64| {
            counter.fetch_add(1, Ordering::Relaxed);
        };
        match event {
            AEvent::PersistSession {
                sid,
                device,
                envelope,
                opened,
            } => {
                if let Err(e) = self.store.put_session(sid, &device, &envelope, opened) {
                    tracing::error!(error = %e, "could not store a session");
                }
            }
            AEvent::TouchSession { sid, used } => {
                if let Err(e) = self.store.touch_session(sid, used) {
                    tracing::error!(error = %e, "could not store a session's last use");
                }
            }
            AEvent::ForgetSession { sid } => self.store.remove_session(sid),
            AEvent::PersistFrame {
                sid,
                t,
                device,
                envelope,
            } => {
                if let Err(e) = self.store.put_frame(sid, t, &device, &envelope) {
                    tracing::error!(error = %e, "could not store a frame");
                }
                if self.accepted.len() < TIMED_FRAMES {
                    self.accepted.insert((sid, t), Instant::now());
                }
            }
            AEvent::ForgetFrame { sid, t } => {
                self.store.remove_frame(sid, t);
                let accepted = self.accepted.remove(&(sid, t));
                // A confirmation forgets the confirmed frame first; what
                // follows in the same drain (the session's next frame
                // failing) and every other forgetting is a drop, not a
                // finished frame.
                if std::mem::take(&mut self.confirming)
                    && let Some(at) = accepted
                {
                    stats.frame_latency.observe(at.elapsed());
                }
            }
            AEvent::Refused(r) => {
                bump(&stats.rejected);
                tracing::warn!(from = %r.from, code = %r.code, reason = %r.detail, "rejected {}", r.what);
            }
            AEvent::Note(ANote::Stale) => {}
            AEvent::Note(note) => bump(match note {
                ANote::Session => &stats.sessions,
                ANote::Frame => &stats.frames,
                ANote::Duplicate => &stats.duplicates,
                ANote::Dropped => &stats.dropped,
                ANote::Retry => &stats.retries,
                ANote::Abandoned => &stats.abandoned,
                ANote::Output => &stats.outputs,
                ANote::Precomputed => &stats.precomputed,
                ANote::Replayed | ANote::Stale => &stats.replayed,
                ANote::SessionRetired => &stats.sessions_retired,
                ANote::SessionExpired => &stats.sessions_expired,
                ANote::SessionPruned => &stats.sessions_pruned,
                ANote::SessionThrottled => &stats.sessions_throttled,
            }),
        }
    }
}
