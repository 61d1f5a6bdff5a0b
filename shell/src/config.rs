//! The servers' configuration files: TOML read with the file named in
//! every error, and paths in the file taken relative to its folder.

use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};
use veil_link::MqttSettings;

/// Why a role's configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this role.
    #[error("{path}")]
    Toml {
        /// The file.
        path: PathBuf,
        /// What the parser reported (line and column).
        source: Box<toml::de::Error>,
    },
    /// A setting that cannot work (an override that does not parse, a
    /// secret file that cannot be read).
    #[error("{0}")]
    Invalid(String),
}

/// Reads and parses the TOML file at `path`.
pub fn read_toml<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| ConfigError::Toml {
        path: path.to_path_buf(),
        source: Box::new(source),
    })
}

/// Takes the relative ones of `paths`, read from the file at `file`,
/// relative to that file's folder.
pub fn relative_to_file<'a>(file: &Path, paths: impl IntoIterator<Item = &'a mut PathBuf>) {
    let base = file.parent().unwrap_or(Path::new(""));
    for p in paths {
        if p.is_relative() {
            *p = base.join(&*p);
        }
    }
}

/// The files an `[mqtt]` table may name.
pub fn mqtt_files(mqtt: &mut MqttSettings) -> impl Iterator<Item = &mut PathBuf> {
    [
        &mut mqtt.password_file,
        &mut mqtt.ca_file,
        &mut mqtt.client_cert_file,
        &mut mqtt.client_key_file,
    ]
    .into_iter()
    .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_follow_the_file_and_errors_name_it() {
        let mut paths = [PathBuf::from("state"), PathBuf::from("/abs/key")];
        relative_to_file(Path::new("/etc/veil/a.toml"), paths.iter_mut());
        assert_eq!(paths[0], PathBuf::from("/etc/veil/state"));
        assert_eq!(paths[1], PathBuf::from("/abs/key"));
        let missing = read_toml::<toml::Table>(Path::new("/nonexistent/veil.toml"));
        assert!(
            matches!(missing, Err(ConfigError::Read { ref path, .. }) if path.ends_with("veil.toml"))
        );
    }
}
