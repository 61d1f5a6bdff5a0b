//! A secret key file must be readable by its owner only.
//!
//! `veil keygen` writes keys 0600, but a copy made with `cp` or an archive
//! tool keeps whatever mode the umask gives (0644 on most systems), and a
//! key readable by every local user is a key shared with them. The servers
//! refuse such a file at start unless the operator overrides the check.

use std::path::{Path, PathBuf};

/// Why a secret file was refused.
#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    /// Group or others may read or write it.
    #[error(
        "{path} is readable or writable by group or others (mode {mode:04o}); \
         run `chmod 600 {path}`, or override with --allow-open-key-file"
    )]
    OpenMode {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Its metadata could not be read.
    #[error("cannot inspect {path}")]
    Stat {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Checks that `path` grants nothing to group or others.
pub fn check_owner_only(path: &Path) -> Result<(), SecretFileError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path).map_err(|source| SecretFileError::Stat {
            path: path.to_path_buf(),
            source,
        })?;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(SecretFileError::OpenMode {
                path: path.to_path_buf(),
                mode,
            });
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn only_owner_only_modes_pass() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server-a.key");
        std::fs::write(&path, b"k").unwrap();
        for (mode, ok) in [
            (0o600, true),
            (0o400, true),
            (0o640, false),
            (0o644, false),
            (0o602, false),
        ] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let outcome = check_owner_only(&path);
            assert_eq!(outcome.is_ok(), ok, "mode {mode:o}: {outcome:?}");
            if let Err(SecretFileError::OpenMode { mode: seen, .. }) = outcome {
                assert_eq!(seen, mode);
            }
        }
        assert!(matches!(
            check_owner_only(&dir.path().join("missing")),
            Err(SecretFileError::Stat { .. })
        ));
    }
}
