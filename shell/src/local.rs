//! What every shell reads or sets on its own machine: the wall clock in
//! the nodes' unit, and owner-only state folders.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the UNIX epoch: the clock the shipped shells give
/// their nodes (persisted times are compared after a restart). A clock
/// before 1970 reads as 0.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Makes a state folder the owner's alone (0700): it holds session secrets
/// and queued results. Best effort: a failure leaves the folder as the
/// umask made it.
pub fn restrict_dir(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700));
    }
    #[cfg(not(unix))]
    let _ = path;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_folder_becomes_the_owners_alone() {
        let dir = tempfile::tempdir().expect("scratch folder");
        restrict_dir(dir.path());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path())
                .expect("metadata")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o700);
        }
        assert!(now_ms() > 1_600_000_000_000);
    }
}
