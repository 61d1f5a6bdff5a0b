//! Server B's configuration file (see `config/server-b.toml`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use veil_link::MqttSettings;
use veil_paillier::NoiseSource;

use crate::Options;

pub use veil_shell::ConfigError;

/// `server-b.toml`: what an operator sets, every field optional (the
/// defaults suit a single host); [`Config::options`] turns it into the
/// runtime's [`Options`].
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The broker and B's credentials.
    pub mqtt: MqttSettings,
    /// Directory of the sled store (results, sessions, completion marks).
    pub state_dir: PathBuf,
    /// B's secret key (mode 0600), as written by `veil keygen`.
    pub key_file: PathBuf,
    /// The model served, by name (its topology is A's retained message
    /// `veil/v1/pub/models/<model>`).
    pub model: String,
    /// The model's topology as a file (`Topology::to_bytes`), instead of
    /// fetching A's retained message.
    pub topology_file: Option<PathBuf>,
    /// SHA-256 fingerprint (hex) the topology must have; required when it
    /// is fetched from the broker.
    pub topology_fingerprint: Option<String>,
    /// Seconds an unacknowledged result is kept.
    pub result_ttl_secs: u64,
    /// Seconds a message for a session B has not seen yet waits for it.
    pub park_timeout_secs: u64,
    /// Live sessions per device; opening one more retires the device's
    /// least recently used.
    pub max_sessions_per_device: usize,
    /// A session unused this long is forgotten (the device opens it again
    /// when it next sends a frame).
    pub session_ttl_secs: u64,
    /// New sessions a device may open per minute (0: no limit); more are
    /// refused before their seed is decrypted.
    pub max_session_opens_per_minute: usize,
    /// Where the Paillier noise of B's encryptions comes from.
    pub noise: NoiseSource,
    /// Noise values kept ready when `noise` is a pool.
    pub pool_capacity: usize,
    /// A workers this B serves (`+` = all).
    pub a_workers: Vec<String>,
    /// Threads of this process, each with its own node owning the devices
    /// hashed to it (0: one per available core).
    pub workers: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            mqtt: MqttSettings {
                username: Some("server-b".into()),
                ..MqttSettings::default()
            },
            state_dir: "/var/lib/veil/server-b".into(),
            key_file: "/etc/veil/keys/server-b.key".into(),
            model: "pima-mlp".into(),
            topology_file: None,
            topology_fingerprint: None,
            result_ttl_secs: 7 * 24 * 3600,
            park_timeout_secs: 60,
            max_sessions_per_device: 4,
            session_ttl_secs: 30 * 24 * 3600,
            max_session_opens_per_minute: 10,
            noise: NoiseSource::FixedBase,
            pool_capacity: 4096,
            a_workers: vec!["+".into()],
            workers: 0,
        }
    }
}

impl Config {
    /// Reads the file (when given), then applies the environment: the
    /// `VEIL_` variables of [`MqttSettings::apply_env`] plus
    /// `VEIL_STATE_DIR`, `VEIL_KEY_FILE` and `VEIL_MODEL`. Relative paths
    /// in the file are taken relative to the file's directory.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let mut config = match path {
            Some(path) => {
                let mut c: Config = veil_shell::config::read_toml(path)?;
                let Config {
                    mqtt,
                    state_dir,
                    key_file,
                    topology_file,
                    ..
                } = &mut c;
                let files = [state_dir, key_file]
                    .into_iter()
                    .chain(topology_file.as_mut())
                    .chain(veil_shell::config::mqtt_files(mqtt));
                veil_shell::config::relative_to_file(path, files);
                c
            }
            None => Config::default(),
        };
        config.mqtt.apply_env("VEIL_");
        if let Ok(v) = std::env::var("VEIL_STATE_DIR") {
            config.state_dir = v.into();
        }
        if let Ok(v) = std::env::var("VEIL_KEY_FILE") {
            config.key_file = v.into();
        }
        if let Ok(v) = std::env::var("VEIL_MODEL") {
            config.model = v;
        }
        if config.topology_file.is_none() && config.topology_fingerprint.is_none() {
            return Err(ConfigError::Invalid(
                "set topology_file, or topology_fingerprint to pin the topology fetched from the broker".into(),
            ));
        }
        if config.a_workers.is_empty() {
            return Err(ConfigError::Invalid("a_workers is empty".into()));
        }
        Ok(config)
    }

    /// The runtime options this configuration asks for.
    pub fn options(&self) -> Options {
        Options {
            workers: match self.workers {
                0 => veil_shell::shards::available_cores(),
                n => n,
            },
            mqtt: self.mqtt.clone(),
            state_dir: self.state_dir.clone(),
            result_ttl: Duration::from_secs(self.result_ttl_secs.max(1)),
            park_timeout: Duration::from_secs(self.park_timeout_secs.max(1)),
            sessions: crate::SessionLimits {
                max_per_device: self.max_sessions_per_device.max(1),
                ttl: self.session_ttl_secs.max(1).saturating_mul(1000),
                max_opens_per_minute: self.max_session_opens_per_minute,
            },
            noise: self.noise,
            pool_capacity: self.pool_capacity,
            a_workers: self.a_workers.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_configuration_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/server-b.toml");
        let config = Config::load(Some(&path)).expect("config/server-b.toml loads");
        assert_eq!(config.model, "pima-mlp");
        assert_eq!(config.options().result_ttl, Duration::from_secs(604_800));
        assert_eq!(config.a_workers, vec!["+".to_string()]);
    }
}
