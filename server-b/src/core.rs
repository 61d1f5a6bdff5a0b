//! The worker thread: feeds MQTT input to B's node, applies its events to
//! the store, publishes its transmits and reads the clock for it.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use veil_link::LinkHandle;
use veil_model::Topology;
use veil_paillier::{FixedBaseNoise, NoisePool, NoiseSource, PoolFiller, SecretKey};
use veil_protocol::node::{BEvent, BNote, BOptions, Input as NodeInput, Queued, ServerBNode};
use veil_protocol::{Noise, PaillierSecret, Params, ServerB, ServerBConfig, SessionId, topics};

use crate::store::Store;
use crate::timing::Timing;
use crate::{Options, ServerBError, Stats};
use veil_shell::worker::{Input, Inputs};
use veil_shell::{Shard, now_ms};

pub struct Core {
    node: ServerBNode<PaillierSecret>,
    store: Store,
    link: LinkHandle,
    stats: Arc<Stats>,
    timing: Timing,
}

/// B's noise pool when `options` ask for one: one for every worker
/// thread, each drawing through [`NoisePool::share`] (fillers per worker
/// would take that many more cores from the frames while they fill).
pub fn noise_pool(options: &Options, key: &Arc<SecretKey>) -> Option<NoisePool> {
    (options.noise == NoiseSource::Pool).then(|| {
        let threads = veil_shell::shards::available_cores().div_ceil(2);
        NoisePool::new(
            PoolFiller::Secret(Arc::clone(key)),
            options.pool_capacity.max(16),
            threads,
            rand::random(),
        )
    })
}

fn noise_for(options: &Options, key: &Arc<SecretKey>, pool: Option<&NoisePool>) -> Noise {
    let mut rng = rand::rng();
    match options.noise {
        NoiseSource::Textbook => Noise::Textbook,
        NoiseSource::FixedBase => Noise::FixedBase(FixedBaseNoise::new(key.public_key(), &mut rng)),
        NoiseSource::Pool => Noise::Pool(match pool {
            Some(pool) => pool.share(),
            None => NoisePool::new(
                PoolFiller::Secret(Arc::clone(key)),
                options.pool_capacity.max(16),
                1,
                rand::random(),
            ),
        }),
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// What every worker serves with: B's key, the topology, the parameters
/// and the noise pool they share.
#[derive(Clone)]
pub struct Serving {
    pub key: Arc<SecretKey>,
    pub topology: Arc<Topology>,
    pub params: Params,
    pub pool: Option<Arc<NoisePool>>,
}

impl Core {
    pub fn new(
        options: Options,
        serving: Serving,
        store: Store,
        link: LinkHandle,
        stats: Arc<Stats>,
        shard: Shard,
    ) -> Result<Core, ServerBError> {
        let Serving {
            key,
            topology,
            params,
            pool,
        } = serving;
        let backend = PaillierSecret::new(
            Arc::clone(&key),
            noise_for(&options, &key, pool.as_deref()),
            rand::random(),
        );
        let machine = ServerB::new(
            ServerBConfig {
                params,
                topology: Arc::clone(&topology),
                key: Arc::clone(&key),
            },
            backend,
        )?;
        let public = vec![(topics::server_key('b'), key.public_key().to_bytes())];
        let node_options = BOptions {
            result_ttl: millis(options.result_ttl),
            park_timeout: millis(options.park_timeout),
            sessions: options.sessions.clone(),
            ..BOptions::default()
        };
        let mut node = ServerBNode::new(machine, node_options, public);
        let now = now_ms();
        // This worker's devices only. A mark that does not name its
        // device (written before marks did) goes to its session's device
        // where the session is stored, else to every worker: each then
        // keeps it while it remembers the id, as one worker would.
        let all_sessions = store.sessions(now);
        let devices: std::collections::HashMap<SessionId, String> = all_sessions
            .iter()
            .map(|s| (s.sid, s.device.clone()))
            .collect();
        let completed = store
            .completed()
            .into_iter()
            .filter(|(sid, _, device)| {
                device
                    .as_ref()
                    .or_else(|| devices.get(sid))
                    .is_none_or(|device| shard.owns(device))
            })
            .map(|(sid, t, _)| (sid, t))
            .collect();
        let sessions: Vec<_> = all_sessions
            .into_iter()
            .filter(|s| shard.owns(&s.device))
            .collect();
        // Progress of sessions another worker holds is skipped by the node.
        let results = store
            .all_results()
            .into_iter()
            .filter_map(|q| {
                let (device, sid, t) = crate::store::split_result_key(&q.key)?;
                if !shard.owns(&device) {
                    return None;
                }
                Some(Queued {
                    device,
                    sid,
                    t,
                    stored_at: q.stored_at_ms,
                    envelope: q.envelope,
                })
            })
            .collect();
        node.restore(now, sessions, completed, store.progress(), results);
        let mut filters = vec![
            topics::filters::SESSIONS_B.to_string(),
            topics::filters::ACKS.to_string(),
        ];
        for worker in &options.a_workers {
            filters.push(topics::a_to_b(worker));
        }
        // The link's subscriptions are the process's: the first worker
        // sets them, the dispatcher shares out what they bring.
        if shard.index == 0 {
            link.subscribe(filters);
        }
        tracing::info!(
            thread = shard.index,
            threads = shard.count,
            key = %key.public_key().fingerprint_hex(),
            model = %topology.name,
            topology = %topology.fingerprint_hex(),
            queued = store.queued(),
            "server B ready"
        );
        let mut core = Core {
            node,
            store,
            link,
            stats,
            timing: Timing::default(),
        };
        core.drain();
        // The counters are the process's: with several workers, each
        // logs the total of those restored so far.
        tracing::info!(
            thread = shard.index,
            decrypted = core.stats.sessions.load(Ordering::Relaxed),
            pruned = core.stats.sessions_pruned.load(Ordering::Relaxed),
            "sessions restored: the dead ones deleted without decrypting"
        );
        Ok(core)
    }

    pub fn run(&mut self, inputs: Inputs) {
        loop {
            let wait = self
                .node
                .poll_timeout()
                .map_or(Duration::from_secs(1), |at| {
                    Duration::from_millis(at.saturating_sub(now_ms()))
                });
            let mut ack = None;
            match inputs.recv_timeout(wait.min(Duration::from_secs(1))) {
                Ok(Input::Connected) => self.node.handle(now_ms(), NodeInput::Connected),
                Ok(Input::Confirmed(token)) => {
                    self.node.handle(now_ms(), NodeInput::Confirmed(token));
                }
                Ok(Input::Message(m)) => {
                    self.timing.message(Instant::now());
                    ack = Some(m.ack);
                    let input = NodeInput::Message {
                        topic: m.topic,
                        payload: m.payload,
                    };
                    self.node.handle(now_ms(), input);
                }
                Ok(Input::Shutdown) => {
                    let _ = self.store.flush();
                    return;
                }
                Ok(Input::Crash) | Err(RecvTimeoutError::Disconnected) => return,
                Err(RecvTimeoutError::Timeout) => {}
            }
            let now = now_ms();
            if self.node.poll_timeout().is_some_and(|at| at <= now) {
                self.node.handle_timeout(now);
            }
            self.drain();
            // Everything that must survive a crash is in the store by now.
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
        while let Some(t) = self.node.poll_transmit() {
            self.link.publish(t.topic, t.payload, t.retain);
        }
        self.timing
            .end_turn(&self.stats.round_latency, &self.stats.result_latency);
        self.stats
            .queued
            .store(self.store.queued(), Ordering::Relaxed);
    }

    fn apply(&mut self, event: BEvent) {
        let stats = &self.stats;
        match event {
            BEvent::PersistSession {
                sid,
                device,
                envelope,
                opened,
            } => {
                if let Err(e) = self.store.put_session(sid, &device, &envelope, opened) {
                    tracing::error!(error = %e, "could not store a session");
                }
            }
            BEvent::TouchSession { sid, used } => {
                if let Err(e) = self.store.touch_session(sid, used) {
                    tracing::error!(error = %e, "could not store a session's last use");
                }
            }
            BEvent::ForgetSession { sid } => {
                self.timing.forget_session(sid);
                self.store.remove_session(sid);
            }
            BEvent::ForgetCompletion { sid } => self.store.remove_completion(sid),
            BEvent::PersistResult {
                result: q,
                completed,
            } => {
                self.timing.result(q.sid, q.t);
                if let Err(e) = self.store.put_result(&q, completed) {
                    tracing::error!(error = %e, "could not queue a result");
                }
            }
            BEvent::PersistProgress { sid, t, stage } => {
                self.timing.progress(sid, t);
                if let Err(e) = self.store.put_progress(sid, t, stage) {
                    tracing::error!(error = %e, "could not store a frame's progress");
                }
            }
            BEvent::ForgetProgress { sid, upto } => {
                self.timing.forget(sid, upto);
                self.store.forget_progress(sid, upto);
            }
            BEvent::ForgetResult { device, sid, t } => {
                self.forget_result(&device, sid, t);
            }
            BEvent::Refused(r) => {
                stats.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(from = %r.from, code = %r.code, reason = %r.detail, "rejected {}", r.what);
            }
            BEvent::Note(note) => {
                let counter = match note {
                    BNote::Session => &stats.sessions,
                    BNote::Result => &stats.results,
                    BNote::Redelivered => &stats.redelivered,
                    BNote::Acked => &stats.acked,
                    BNote::Expired => &stats.expired,
                    BNote::SessionRetired => &stats.sessions_retired,
                    BNote::SessionExpired => &stats.sessions_expired,
                    BNote::SessionPruned => &stats.sessions_pruned,
                    BNote::SessionThrottled => &stats.sessions_throttled,
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn forget_result(&self, device: &str, sid: SessionId, t: u64) {
        self.store.remove_result(device, sid, t);
    }
}
