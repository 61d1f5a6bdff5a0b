//! veil-shell: what every veil process (the `veil` command, the servers'
//! and the edge agent's own binaries) does the same way, written once.
//!
//! # Contents
//! - [`logging`]: one subscriber for every binary, as text (colour only on
//!   a terminal) or JSON lines, to stderr (stdout carries results).
//! - [`wait_for_stop`]: SIGINT or SIGTERM, what systemd sends to stop a unit.
//! - [`secret_file`]: refuses a secret key file that others can read.
//! - [`metrics`]: a Prometheus endpoint with `/healthz` and `/readyz`.
//! - [`notify`]: systemd's READY and watchdog notifications.
//! - [`heartbeat`]: a protocol worker's proof of progress, for the watchdog.
//! - [`worker`] and [`shards`]: the servers' worker threads, one node per
//!   thread, each owning the devices hashed to it.
//! - [`scrape`]: a histogram read back from a metrics page (tests).
//! - [`exit_status`]: how a binary reports its outcome and exits.
//!
//! # Why a crate of its own
//! The servers and the agent each ship as a binary of their own as well
//! as inside `veil`; the edge agent must stay small (no tract, no ring),
//! so this crate depends on nothing the agent does not already build.

#![warn(
    missing_docs,
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

pub mod config;
mod exit;
pub mod heartbeat;
mod local;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod scrape;
pub mod secret_file;
pub mod shards;
mod signals;
pub mod worker;

pub use config::ConfigError;
pub use exit::exit_status;
pub use heartbeat::Heartbeat;
pub use local::{now_ms, restrict_dir};
pub use logging::{LogArgs, LogFormat};
pub use metrics::{Latency, Metrics, MetricsArgs};
pub use secret_file::{SecretFileError, check_owner_only};
pub use shards::Shard;
pub use signals::wait_for_stop;
pub use worker::{StartError, Worker};
