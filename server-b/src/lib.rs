//! veil-server-b is the key server's runtime: a thin shell around the
//! protocol's [`veil_protocol::node::ServerBNode`], run on a dedicated
//! thread (the state machine spreads its decryptions over every core with
//! rayon). The node owns every protocol rule (the result queue kept until
//! the device acknowledges, `Sync` redelivery, result expiry, completion
//! marks, each frame's progress, parking, refusals and relaying A's); the
//! shell moves MQTT messages in and out, applies the node's events to the
//! sled store, restores it on start and reads the clock for the node.
//!
//! One process runs `workers` nodes (by default one per available core),
//! each on a thread of its own owning the devices hashed to it, as server
//! A does ([`veil_shell::shards`]): sessions and acknowledgements are
//! routed by their topic, A's messages by the device their envelope
//! names. Each restores its own devices' sessions, results and completion
//! marks from the shared store.

#![warn(
    missing_docs,
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

mod config;
mod core;
mod store;
mod timing;

#[cfg(feature = "cli")]
pub mod cli;

pub use config::{Config, ConfigError};

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use veil_link::{Link, MqttSettings};
use veil_model::Topology;
use veil_paillier::{NoiseSource, SecretKey};
use veil_protocol::Params;
pub use veil_protocol::node::SessionLimits;
use veil_shell::{StartError, Worker};

/// Why the runtime could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerBError {
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
    /// The configuration does not fit the protocol (parameters, topology).
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
}

/// How the runtime behaves (everything but the key and the model).
#[derive(Clone, Debug)]
pub struct Options {
    /// Worker threads, each with its own node owning the devices hashed to
    /// it (at least one).
    pub workers: usize,
    /// The broker and B's credentials.
    pub mqtt: MqttSettings,
    /// Directory of the sled store (results, sessions, completion marks).
    pub state_dir: PathBuf,
    /// Results not acknowledged after this long are dropped.
    pub result_ttl: Duration,
    /// How long a message for a session B has not seen yet waits for it.
    pub park_timeout: Duration,
    /// Where the Paillier noise `r^n` of B's encryptions comes from.
    pub noise: NoiseSource,
    /// Noise values kept ready when `noise` is a pool.
    pub pool_capacity: usize,
    /// A workers this B serves (`+` = all): B subscribes to
    /// `veil/v1/ab/<worker>` for each.
    pub a_workers: Vec<String>,
    /// Sessions per device, their time to live, and how many a device may
    /// open per minute.
    pub sessions: SessionLimits,
}

impl Options {
    /// The defaults: results kept a week, parked messages a minute,
    /// fixed-base noise, every A worker, the default session limits.
    pub fn new(mqtt: MqttSettings, state_dir: impl Into<PathBuf>) -> Options {
        Options {
            workers: veil_shell::shards::available_cores(),
            mqtt,
            state_dir: state_dir.into(),
            result_ttl: Duration::from_secs(7 * 24 * 3600),
            park_timeout: Duration::from_secs(60),
            noise: NoiseSource::FixedBase,
            pool_capacity: 4096,
            a_workers: vec!["+".into()],
            sessions: SessionLimits::default(),
        }
    }
}

/// Counters for logs, tests and the load command.
#[derive(Default, Debug)]
pub struct Stats {
    /// Sessions accepted.
    pub sessions: AtomicU64,
    /// Results produced (one per finished frame).
    pub results: AtomicU64,
    /// Results published again on a device's `Sync`.
    pub redelivered: AtomicU64,
    /// Results the device acknowledged, then forgotten.
    pub acked: AtomicU64,
    /// Results dropped unacknowledged after the result TTL.
    pub expired: AtomicU64,
    /// Messages refused, of any party.
    pub rejected: AtomicU64,
    /// Results waiting for an acknowledgement.
    pub queued: AtomicU64,
    /// Sessions retired by the per-device quota.
    pub sessions_retired: AtomicU64,
    /// Sessions forgotten after the session TTL unused.
    pub sessions_expired: AtomicU64,
    /// Stored sessions found dead at start, deleted without decrypting.
    pub sessions_pruned: AtomicU64,
    /// New sessions refused (`TooManySessions`): over the opening rate.
    pub sessions_throttled: AtomicU64,
    /// A round message taken to its answer handed to the link.
    pub round_latency: veil_shell::Latency,
    /// A frame's first round message taken to its result handed to the link.
    pub result_latency: veil_shell::Latency,
}

/// A plain copy of [`Stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Sessions accepted.
    pub sessions: u64,
    /// Results produced (one per finished frame).
    pub results: u64,
    /// Results published again on a device's `Sync`.
    pub redelivered: u64,
    /// Results the device acknowledged, then forgotten.
    pub acked: u64,
    /// Results dropped unacknowledged after the result TTL.
    pub expired: u64,
    /// Messages refused, of any party.
    pub rejected: u64,
    /// Results waiting for an acknowledgement.
    pub queued: u64,
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
            results: get(&self.results),
            redelivered: get(&self.redelivered),
            acked: get(&self.acked),
            expired: get(&self.expired),
            rejected: get(&self.rejected),
            queued: get(&self.queued),
            sessions_retired: get(&self.sessions_retired),
            sessions_expired: get(&self.sessions_expired),
            sessions_pruned: get(&self.sessions_pruned),
            sessions_throttled: get(&self.sessions_throttled),
        }
    }
}

/// A running server B.
pub struct ServerB {
    worker: Worker,
    stats: Arc<Stats>,
}

impl ServerB {
    /// Restores the state store, starts the worker thread and connects.
    pub async fn start(
        options: Options,
        key: Arc<SecretKey>,
        topology: Arc<Topology>,
        params: Params,
    ) -> Result<ServerB, ServerBError> {
        let stats = Arc::new(Stats::default());
        let store = store::Store::open(&options.state_dir)?;
        let link = Link::start(&options.mqtt)?;
        let handle = link.handle.clone();
        let core_stats = Arc::clone(&stats);
        let workers = options.workers;
        let serving = core::Serving {
            pool: core::noise_pool(&options, &key).map(Arc::new),
            key,
            topology,
            params,
        };
        let worker = Worker::start(
            link,
            "veil-server-b",
            workers,
            veil_protocol::route::message_device,
            move |shard| {
                core::Core::new(
                    options.clone(),
                    serving.clone(),
                    store.clone(),
                    handle.clone(),
                    Arc::clone(&core_stats),
                    shard,
                )
            },
            |mut core, rx| core.run(rx),
        )
        .await
        .map_err(|e| match e {
            StartError::Init(e) => e,
            StartError::Thread(e) => ServerBError::Thread(e),
        })?;
        Ok(ServerB { worker, stats })
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
