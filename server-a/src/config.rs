//! Server A's configuration file (see `config/server-a.toml`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use veil_link::MqttSettings;
use veil_paillier::NoiseSource;

use crate::Options;

pub use veil_shell::ConfigError;

/// `server-a.toml`: what an operator sets, every field optional (the
/// defaults suit a single host); [`Config::options`] turns it into the
/// runtime's [`crate::Options`].
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The broker and A's credentials.
    pub mqtt: MqttSettings,
    /// Directory of the sled store (frames in progress, sessions).
    pub state_dir: PathBuf,
    /// A's secret key (mode 0600), as written by `veil keygen`.
    pub key_file: PathBuf,
    /// The model: a `.plan` file from `veil import`, or an `.onnx` file in
    /// builds with the `onnx` feature. Its weights never leave A.
    pub model_file: PathBuf,
    /// How an `.onnx` model_file without veil's metadata is imported
    /// (`[onnx]`: input_bounds, calibration, calibration_margin,
    /// calibration_rows, fixed_point); the command line's flags win.
    pub onnx: crate::ModelOptions,
    /// B's public key as a file (`server-b.pub` from `veil keygen`)...
    pub b_key_file: Option<PathBuf>,
    /// ...or its fingerprint (hex), to pin the key B publishes (retained).
    pub b_key_fingerprint: Option<String>,
    /// This worker's name: B answers on `veil/v1/ba/<worker>`.
    pub worker: String,
    /// The shared-subscription group for frames, when several workers run.
    pub shared_group: Option<String>,
    /// Threads of this process, each with its own node owning the devices
    /// hashed to it (0: one per available core).
    pub workers: usize,
    /// Seconds without progress before a frame is started over.
    pub round_timeout_secs: u64,
    /// Starts-over before a frame is given up.
    pub max_retries: u32,
    /// Seconds a frame waits for its session message.
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
    /// Where the Paillier noise of A's encryptions comes from.
    pub noise: NoiseSource,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            mqtt: MqttSettings {
                username: Some("server-a".into()),
                ..MqttSettings::default()
            },
            state_dir: "/var/lib/veil/server-a".into(),
            key_file: "/etc/veil/keys/server-a.key".into(),
            model_file: "/usr/share/veil/models/pima-mlp.plan".into(),
            onnx: crate::ModelOptions::default(),
            b_key_file: None,
            b_key_fingerprint: None,
            worker: "a1".into(),
            shared_group: None,
            workers: 0,
            round_timeout_secs: 30,
            max_retries: 3,
            park_timeout_secs: 60,
            max_sessions_per_device: 4,
            session_ttl_secs: 30 * 24 * 3600,
            max_session_opens_per_minute: 10,
            noise: NoiseSource::Pool,
        }
    }
}

impl Config {
    /// Reads the file (when given), then applies the environment: the
    /// `VEIL_` variables of [`MqttSettings::apply_env`] plus
    /// `VEIL_STATE_DIR`, `VEIL_KEY_FILE`, `VEIL_MODEL_FILE` and
    /// `VEIL_WORKER`. Relative paths
    /// in the file are taken relative to the file's directory.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let mut config = match path {
            Some(path) => {
                let mut c: Config = veil_shell::config::read_toml(path)?;
                let Config {
                    mqtt,
                    state_dir,
                    key_file,
                    model_file,
                    b_key_file,
                    onnx,
                    ..
                } = &mut c;
                let files = [state_dir, key_file, model_file]
                    .into_iter()
                    .chain(b_key_file.as_mut())
                    .chain(onnx.calibration.as_mut())
                    .chain(veil_shell::config::mqtt_files(mqtt));
                veil_shell::config::relative_to_file(path, files);
                // `input_bounds` is a list or a file; a file named
                // relatively is next to this one, like every other path.
                if let Some(bounds) = &mut onnx.input_bounds {
                    let mut file = [PathBuf::from(&*bounds)];
                    veil_shell::config::relative_to_file(path, file.iter_mut());
                    let [file] = file;
                    if file.is_file() {
                        *bounds = file.display().to_string();
                    }
                }
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
        if let Ok(v) = std::env::var("VEIL_MODEL_FILE") {
            config.model_file = v.into();
        }
        if let Ok(v) = std::env::var("VEIL_WORKER") {
            config.worker = v;
        }
        if config.b_key_file.is_none() && config.b_key_fingerprint.is_none() {
            return Err(ConfigError::Invalid(
                "set b_key_file, or b_key_fingerprint to pin the key B publishes".into(),
            ));
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
            worker: self.worker.clone(),
            shared_group: self.shared_group.clone(),
            round_timeout: Duration::from_secs(self.round_timeout_secs.max(1)),
            max_retries: self.max_retries,
            park_timeout: Duration::from_secs(self.park_timeout_secs.max(1)),
            sessions: crate::SessionLimits {
                max_per_device: self.max_sessions_per_device.max(1),
                ttl: self.session_ttl_secs.max(1).saturating_mul(1000),
                max_opens_per_minute: self.max_session_opens_per_minute,
            },
            noise: self.noise,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_configuration_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/server-a.toml");
        let config = Config::load(Some(&path)).expect("config/server-a.toml loads");
        assert_eq!(config.worker, "a1");
        assert_eq!(config.workers, 0);
        assert!(config.options().workers >= 1);
        assert_eq!(config.mqtt.username.as_deref(), Some("server-a"));
        assert_eq!(config.options().round_timeout, Duration::from_secs(30));
        assert!(config.b_key_file.is_some());
        assert_eq!(config.onnx, crate::ModelOptions::default());
    }

    #[test]
    fn import_options_are_read_and_their_files_follow_the_config() {
        let dir = tempfile::tempdir().expect("scratch folder");
        std::fs::write(dir.path().join("bounds.txt"), "0:1\n").expect("written");
        let path = dir.path().join("server-a.toml");
        std::fs::write(
            &path,
            "model_file = \"m.onnx\"\nb_key_file = \"b.pub\"\n\
             [onnx]\ninput_bounds = \"bounds.txt\"\ncalibration = \"train.csv\"\n\
             fixed_point = \"16,24\"\ncalibration_rows = 50\nweight_scale = \"uniform\"\n",
        )
        .expect("written");
        let config = Config::load(Some(&path)).expect("loads");
        let onnx = &config.onnx;
        let bounds = dir.path().join("bounds.txt").display().to_string();
        assert_eq!(onnx.input_bounds.as_deref(), Some(bounds.as_str()));
        assert_eq!(onnx.calibration, Some(dir.path().join("train.csv")));
        assert_eq!(onnx.rows(), 50);
        assert_eq!(
            onnx.fixed_point,
            Some(veil_model::FixedPoint {
                frac_bits: 16,
                weight_bits: 24
            })
        );
        assert_eq!(onnx.weight_scale, Some(veil_model::WeightScale::Uniform));
        // A list stays a list; flags win over the file.
        let flags = crate::ModelOptions {
            input_bounds: Some("0:2".into()),
            ..crate::ModelOptions::default()
        };
        let merged = flags.or(config.onnx.clone());
        assert_eq!(merged.input_bounds.as_deref(), Some("0:2"));
        assert_eq!(merged.bounds().expect("parses"), Some(vec![(0.0, 2.0)]));
        assert_eq!(merged.calibration, config.onnx.calibration);
        std::fs::write(
            &path,
            "b_key_file = \"b.pub\"\n[onnx]\nfixed_point = \"0,16\"\n",
        )
        .expect("written");
        assert!(matches!(
            Config::load(Some(&path)),
            Err(ConfigError::Toml { .. })
        ));
    }
}
