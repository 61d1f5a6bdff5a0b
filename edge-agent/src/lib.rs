//! veil-edge-agent is the device runtime: the part of veil that runs on a
//! Raspberry-Pi-class gateway. It owns capture (an embedding program calls
//! [`EdgeAgent::capture`]; the command line replays a CSV file or reads
//! lines on stdin), masking each frame at capture time with the protocol's
//! [`veil_protocol::Device`], a sled outbox that keeps every frame until its
//! result has arrived (so frames captured while the broker is unreachable go
//! out when it comes back, and survive a reboot), the session secrets and
//! the frame-counter mark persisted with mode 0600 (so that results for old
//! frames can still be unmasked and no counter is ever used twice; every
//! start opens a fresh session, so even a restored snapshot of the state
//! folder never reuses a (seed, counter) pair), pinning
//! the servers' keys and the model topology, and the MQTT side. Every
//! delivery rule (resending, one frame publish in flight, `Sync` on every
//! connection, session recovery, acknowledgements, de-duplication so that
//! the application sees each result once) is the protocol's
//! [`veil_protocol::node::DeviceNode`]; this crate moves its bytes, writes
//! its events to disk and reads the clock. Capture
//! never waits for the network.

mod agent;
pub mod local;
mod net;
mod options;
mod output;
mod shared;
mod state;

#[cfg(feature = "cli")]
pub mod cli;
#[cfg(feature = "cli")]
pub mod input;

pub use agent::{AgentStats, EdgeAgent};
pub use options::{AgentOptions, Pins};
pub use output::{FrameOutput, Output, decode_logits, predicted_class};

use std::path::PathBuf;

/// Why the agent could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("state {path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] sled::Error),
    #[error("state file {path} is damaged: {reason}")]
    Damaged { path: PathBuf, reason: String },
    #[error(transparent)]
    Protocol(#[from] veil_protocol::ProtocolError),
    #[error(transparent)]
    Model(#[from] veil_model::ModelError),
    #[error(transparent)]
    Paillier(#[from] veil_paillier::PaillierError),
    #[error(transparent)]
    Link(#[from] veil_link::LinkError),
    #[error("{what} fingerprint {got} does not match the pinned {expected}; refusing to use it")]
    Pin {
        what: &'static str,
        expected: String,
        got: String,
    },
    /// Both pins, or both servers' published keys, are one key: whoever
    /// holds its secret half could unmask everything the device sends.
    #[error(
        "server A's and server B's keys are the same key (fingerprint {fingerprint}); \
         refusing: the two servers must hold different keys"
    )]
    SameServerKeys { fingerprint: String },
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("the agent has stopped")]
    Stopped,
}

/// An error and its causes on one line, for log fields (`Display` of a
/// variant names only its own step; the cause is its `source`).
pub(crate) fn chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}
