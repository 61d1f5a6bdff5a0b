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

#![warn(
    missing_docs,
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

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
    /// A state file or directory could not be read or written.
    #[error("state {path}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The outbox store failed.
    #[error(transparent)]
    Store(#[from] sled::Error),
    /// A state file does not decode.
    #[error("state file {path} is damaged: {reason}")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The protocol refused a step (a frame outside the model's input
    /// range, a session the servers do not serve, ...).
    #[error(transparent)]
    Protocol(#[from] veil_protocol::ProtocolError),
    /// The topology or a feature vector was refused.
    #[error(transparent)]
    Model(#[from] veil_model::ModelError),
    /// A server key or a session ciphertext was refused.
    #[error(transparent)]
    Paillier(#[from] veil_paillier::PaillierError),
    /// The MQTT link could not be set up.
    #[error(transparent)]
    Link(#[from] veil_link::LinkError),
    /// A published key or topology that is not the pinned one.
    #[error("{what} fingerprint {got} does not match the pinned {expected}; refusing to use it")]
    Pin {
        /// Which (`"server A key"`, `"topology"`, ...).
        what: &'static str,
        /// The pinned fingerprint.
        expected: String,
        /// The fingerprint received.
        got: String,
    },
    /// Both pins, or both servers' published keys, are one key: whoever
    /// holds its secret half could unmask everything the device sends.
    #[error(
        "server A's and server B's keys are the same key (fingerprint {fingerprint}); \
         refusing: the two servers must hold different keys"
    )]
    SameServerKeys {
        /// The one key's fingerprint.
        fingerprint: String,
    },
    /// A configuration value that cannot work.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The agent was asked for something after it stopped.
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
