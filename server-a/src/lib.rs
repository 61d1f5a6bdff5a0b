//! veil-server-a is the model server's runtime: a thin shell around the
//! protocol's [`veil_protocol::node::ServerANode`], run on a dedicated
//! thread (the state machine spreads its homomorphic work over every core
//! with rayon). The node owns every protocol rule (parking frames that
//! arrive before their session, one frame per session at a time, retries
//! with an attempt limit, refusals); the shell moves MQTT messages in and
//! out, applies the node's events to the sled store (sessions, and frames
//! until their output is confirmed, replayed after a restart), reads the
//! clock for the node's timers and precomputes when the node has work.
//!
//! # Worker threads
//!
//! One process runs `workers` nodes (by default one per available core),
//! each on a thread of its own and owning the devices hashed to it
//! ([`veil_shell::shards`]): a dispatcher routes every message (frames and
//! sessions by their topic, B's replies by the device their envelope
//! names) to its device's node, which precomputes for its own sessions
//! whenever its queue is empty. The nodes share the sled store, each
//! restoring the sessions and frames of its own devices. A node's state
//! is per device, so its rules (quotas, ordering, parking) are unchanged.
//!
//! # Several A workers
//!
//! Every A worker has its own `worker` name. Each subscribes to every
//! session (sessions are retained messages, so a new worker learns them
//! all), and to the frames through a shared subscription
//! (`$share/<group>/veil/v1/dev/+/frame`) so that each frame reaches one
//! worker (veil's broker admits a client to the group only when its ACL
//! names it: `topic read $share/<group>/veil/v1/dev/+/frame`). A worker
//! connects as `<username>-<worker>` unless a client id is configured. A
//! worker sends to B on `veil/v1/ab/<worker>` and B answers on
//! `veil/v1/ba/<worker>`, so replies come back to the worker that asked.
//! Because B finishes a session's frames in counter order, a device's
//! frames should stick to one worker: use the broker's topic-hash dispatch
//! for the shared group (EMQX: `shared_subscription_strategy = hash_topic`).

#![warn(
    missing_docs,
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

mod config;
mod core;
mod model_file;
mod store;

#[cfg(feature = "cli")]
pub mod cli;

pub use config::{Config, ConfigError};
pub use model_file::{DEFAULT_MARGIN, ModelFileError, ModelOptions};

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};
use veil_link::{Link, MqttSettings};
use veil_model::CompiledModel;
use veil_paillier::{NoiseSource, PublicKey, SecretKey};
pub use veil_protocol::node::SessionLimits;
use veil_protocol::{Params, Seed};
use veil_shell::{StartError, Worker};

/// Why the runtime could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerAError {
    /// The sled store at `path` could not be opened.
    #[error("state store {path}")]
    Store {
        /// The store's directory.
        path: PathBuf,
        /// Why.
        source: sled::Error,
    },
    /// Reading the store back failed.
    #[error(transparent)]
    StoreOp(#[from] sled::Error),
    /// The model or parameters do not fit the protocol.
    #[error(transparent)]
    Protocol(#[from] veil_protocol::ProtocolError),
    /// The MQTT link could not be set up.
    #[error(transparent)]
    Link(#[from] veil_link::LinkError),
    /// The state directory could not be created.
    #[error("creating {path}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The OS refused a thread.
    #[error("the worker thread could not start: {0}")]
    Thread(std::io::Error),
    /// A worker name that cannot be an MQTT topic level.
    #[error("invalid worker name {0:?} (letters, digits, '-', '_', '.')")]
    Worker(String),
    /// A would encrypt under its own key: A's secret key and the key given
    /// as B's are one key (a copied key file, or `b_key_file` pointing at
    /// A's own public key), so A could decrypt what only B may.
    #[error(
        "server A's key and the key given as server B's are the same key \
         (fingerprint {fingerprint}); each server needs its own (`veil keygen --role`)"
    )]
    SameKeys {
        /// The one key's fingerprint.
        fingerprint: String,
    },
}

/// How the runtime behaves (everything but keys and model).
#[derive(Clone, Debug)]
pub struct Options {
    /// Worker threads, each with its own node owning the devices hashed to
    /// it (at least one).
    pub workers: usize,
    /// The broker and A's credentials.
    pub mqtt: MqttSettings,
    /// Directory of the sled store (frames in progress, sessions).
    pub state_dir: PathBuf,
    /// This worker's name: B answers on `veil/v1/ba/<worker>`.
    pub worker: String,
    /// Join this shared-subscription group for frames (several workers).
    pub shared_group: Option<String>,
    /// A frame with no progress for this long is started over.
    pub round_timeout: Duration,
    /// Starts-over before a frame is given up.
    pub max_retries: u32,
    /// How long a frame waits for its session message.
    pub park_timeout: Duration,
    /// Where the Paillier noise `r^n` of A's encryptions comes from.
    pub noise: NoiseSource,
    /// Sessions per device, their time to live, and how many a device may
    /// open per minute.
    pub sessions: SessionLimits,
}

impl Options {
    /// The defaults for one worker named after the MQTT user.
    pub fn new(mqtt: MqttSettings, state_dir: impl Into<PathBuf>) -> Options {
        Options {
            workers: veil_shell::shards::available_cores(),
            mqtt,
            state_dir: state_dir.into(),
            worker: "a1".into(),
            shared_group: None,
            round_timeout: Duration::from_secs(30),
            max_retries: 3,
            park_timeout: Duration::from_secs(60),
            noise: NoiseSource::Pool,
            sessions: SessionLimits::default(),
        }
    }
}

/// A's truncation and tie-breaking secret, derived from A's key so that
/// every worker and every restart uses the same one (the integer reference
/// needs it to reproduce A's results exactly).
pub fn rounding_key(key: &SecretKey) -> Seed {
    let mut h = Sha256::new();
    h.update(b"veil/server-a/rounding/v1");
    h.update(key.to_bytes().as_slice());
    Seed::from_bytes(h.finalize().into())
}

/// Counters for logs, tests and the load command.
#[derive(Default, Debug)]
pub struct Stats {
    /// Sessions accepted.
    pub sessions: AtomicU64,
    /// Frames accepted.
    pub frames: AtomicU64,
    /// Outputs sent to B (frames finished on A's side).
    pub outputs: AtomicU64,
    /// Copies of a frame already stored or finished.
    pub duplicates: AtomicU64,
    /// Frames started over after B did not answer in time.
    pub retries: AtomicU64,
    /// Frames given up after the last retry.
    pub abandoned: AtomicU64,
    /// Messages refused, of any party.
    pub rejected: AtomicU64,
    /// Frames taken back up from the store at start.
    pub replayed: AtomicU64,
    /// Counters whose first layer and corrections were prepared ahead.
    pub precomputed: AtomicU64,
    /// Frames dropped unstored because their device had too many parked.
    pub dropped: AtomicU64,
    /// Sessions retired by the per-device quota.
    pub sessions_retired: AtomicU64,
    /// Sessions forgotten after the session TTL unused.
    pub sessions_expired: AtomicU64,
    /// Stored sessions found dead at start, deleted without decrypting.
    pub sessions_pruned: AtomicU64,
    /// New sessions refused (`TooManySessions`): over the opening rate.
    pub sessions_throttled: AtomicU64,
    /// Frame accepted (stored) to its output acknowledged by the broker.
    pub frame_latency: veil_shell::Latency,
}

/// A plain copy of [`Stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Sessions accepted.
    pub sessions: u64,
    /// Frames accepted.
    pub frames: u64,
    /// Outputs sent to B (frames finished on A's side).
    pub outputs: u64,
    /// Copies of a frame already stored or finished.
    pub duplicates: u64,
    /// Frames started over after B did not answer in time.
    pub retries: u64,
    /// Frames given up after the last retry.
    pub abandoned: u64,
    /// Messages refused, of any party.
    pub rejected: u64,
    /// Frames taken back up from the store at start.
    pub replayed: u64,
    /// Counters whose first layer and corrections were prepared ahead.
    pub precomputed: u64,
    /// Frames dropped unstored because their device had too many parked.
    pub dropped: u64,
    /// Sessions retired by the per-device quota.
    pub sessions_retired: u64,
    /// Sessions forgotten after the session TTL unused.
    pub sessions_expired: u64,
    /// Stored sessions found dead at start, deleted without decrypting.
    pub sessions_pruned: u64,
    /// New sessions refused (`TooManySessions`): over the opening rate.
    pub sessions_throttled: u64,
}

impl Stats {
    /// The counters now (each read on its own: not one instant).
    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            sessions: get(&self.sessions),
            frames: get(&self.frames),
            outputs: get(&self.outputs),
            duplicates: get(&self.duplicates),
            retries: get(&self.retries),
            abandoned: get(&self.abandoned),
            rejected: get(&self.rejected),
            replayed: get(&self.replayed),
            precomputed: get(&self.precomputed),
            dropped: get(&self.dropped),
            sessions_retired: get(&self.sessions_retired),
            sessions_expired: get(&self.sessions_expired),
            sessions_pruned: get(&self.sessions_pruned),
            sessions_throttled: get(&self.sessions_throttled),
        }
    }
}

/// What A serves with: its key pair, B's public key (every ciphertext is
/// under it) and the model.
#[derive(Clone)]
pub struct Setup {
    /// A's key pair: devices encrypt their seeds for A under it.
    pub key: Arc<SecretKey>,
    /// B's public key: A's ciphertexts to B are under it.
    pub b_key: PublicKey,
    /// The model A serves (topology, plan and integer reference).
    pub model: Arc<CompiledModel>,
    /// The protocol parameters, as B has them.
    pub params: Params,
}

/// A running server A.
pub struct ServerA {
    worker: Worker,
    stats: Arc<Stats>,
}

impl ServerA {
    /// Restores the store, starts the worker threads and connects.
    pub async fn start(options: Options, setup: Setup) -> Result<ServerA, ServerAError> {
        veil_protocol::check_device_name(&options.worker)
            .map_err(|_| ServerAError::Worker(options.worker.clone()))?;
        if setup.key.public_key().fingerprint_hex() == setup.b_key.fingerprint_hex() {
            return Err(ServerAError::SameKeys {
                fingerprint: setup.b_key.fingerprint_hex(),
            });
        }
        let stats = Arc::new(Stats::default());
        let store = store::Store::open(&options.state_dir)?;
        let mut mqtt = options.mqtt.clone();
        if mqtt.client_id.is_empty()
            && let Some(user) = &mqtt.username
        {
            // Workers share a username; one client id between them would
            // have each connection take over the other's session.
            mqtt.client_id = format!("{user}-{}", options.worker);
        }
        let link = Link::start(&mqtt)?;
        let handle = link.handle.clone();
        let core_stats = Arc::clone(&stats);
        let workers = options.workers;
        // Lives as long as the workers: the closure holding it does.
        let pool = core::noise_pool(&options, &setup.b_key, setup.params.pack);
        let worker = Worker::start(
            link,
            "veil-server-a",
            workers,
            veil_protocol::route::message_device,
            move |shard| {
                core::Core::new(
                    options.clone(),
                    setup.clone(),
                    store.clone(),
                    handle.clone(),
                    Arc::clone(&core_stats),
                    shard,
                    pool.as_ref(),
                )
            },
            |mut core, rx| core.run(rx),
        )
        .await
        .map_err(|e| match e {
            StartError::Init(e) => e,
            StartError::Thread(e) => ServerAError::Thread(e),
        })?;
        Ok(ServerA { worker, stats })
    }

    /// The runtime's counters now.
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// The live statistics, for an exporter that reads them on its own.
    pub fn stats_handle(&self) -> Arc<Stats> {
        Arc::clone(&self.stats)
    }

    /// The worker thread's heartbeat: what the systemd watchdog follows.
    pub fn heartbeat(&self) -> veil_shell::Heartbeat {
        self.worker.heartbeat()
    }

    /// Stops cleanly: the worker finishes the message in hand, the store
    /// is flushed, the MQTT session is closed.
    pub async fn shutdown(self) {
        self.worker.shutdown().await;
    }

    /// Stops as a crash would: no DISCONNECT, nothing flushed beyond what
    /// the runtime had already made durable.
    pub async fn abort(self) {
        self.worker.abort().await;
    }
}
