//! What the agent is told at start.

use std::path::PathBuf;
use std::time::Duration;

use veil_link::MqttSettings;

/// The fingerprints (SHA-256, hex) the device trusts: both servers' keys
/// and the model's public topology. Nothing else is accepted.
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pins {
    /// Fingerprint of server A's public key.
    pub server_a: String,
    /// Fingerprint of server B's public key.
    pub server_b: String,
    /// Fingerprint of the model's public topology.
    pub topology: String,
}

/// How the agent runs: identity, broker, state, pins and its timings.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    /// The device id: its MQTT username and topic level.
    pub device: String,
    /// The broker and the device's credentials.
    pub mqtt: MqttSettings,
    /// Outbox, sessions, counter (owner-only).
    pub state_dir: PathBuf,
    /// The model to use, by name.
    pub model: String,
    /// What the device trusts.
    pub pins: Pins,
    /// A frame without a result after this long is sent again (and the
    /// device asks B for its queued results).
    pub resend_after: Duration,
    /// A frame without a result after this long is given up.
    pub frame_ttl: Duration,
    /// Frame counters reserved per write of the counter mark.
    pub counter_block: u64,
    /// How long to wait for the servers' public keys and the topology on
    /// the very first start (afterwards they are cached).
    pub provision_timeout: Duration,
}

impl AgentOptions {
    /// The defaults for `device`, with no pins (set them before starting).
    pub fn new(device: &str, mqtt: MqttSettings, state_dir: impl Into<PathBuf>) -> AgentOptions {
        AgentOptions {
            device: device.to_string(),
            mqtt,
            state_dir: state_dir.into(),
            model: "pima-mlp".into(),
            pins: Pins::default(),
            resend_after: Duration::from_secs(30),
            frame_ttl: Duration::from_secs(24 * 3600),
            counter_block: 64,
            provision_timeout: Duration::from_secs(60),
        }
    }
}
