//! Where the shipped models, data sets and example configuration are found.
//!
//! Never through a path compiled into the binary: a `veil` copied to a
//! gateway or installed from a package must find them where they were put.
//! In order: `$VEIL_SHARE_DIR/<what>`, `<executable>/../share/veil/<what>`
//! (a tree unpacked anywhere), `/usr/share/veil/<what>` (the package), and
//! the closest checkout above the working folder (`cargo run` from any
//! folder of the repository).

use anyhow::{Result, bail};
use std::path::{Path, PathBuf};

/// The folder holding `what` (`models`, `data` or `config`).
pub fn dir(what: &str) -> Result<PathBuf> {
    let candidates = candidates(what);
    if let Some(found) = candidates.iter().find(|p| p.is_dir()) {
        return Ok(found.clone());
    }
    let searched: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
    bail!(
        "cannot find veil's {what} folder; set VEIL_SHARE_DIR to the folder that holds \
         models/, data/ and config/ (searched: {})",
        searched.join(", ")
    )
}

fn candidates(what: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(root) = std::env::var_os("VEIL_SHARE_DIR") {
        out.push(Path::new(&root).join(what));
    }
    if let Ok(exe) = std::env::current_exe()
        && let Some(bin) = exe.parent()
    {
        out.push(bin.join("..").join("share").join("veil").join(what));
    }
    out.push(Path::new("/usr/share/veil").join(what));
    if let Ok(cwd) = std::env::current_dir() {
        // A checkout: the first ancestor with both models/ and data/.
        if let Some(root) = cwd
            .ancestors()
            .find(|a| a.join("models").is_dir() && a.join("data").is_dir())
        {
            out.push(root.join(what));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // Setting the environment is unsafe since Rust 2024.
    #[allow(unsafe_code)]
    #[test]
    fn the_environment_comes_first_and_a_missing_folder_says_what_was_searched() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("models")).unwrap();
        // SAFETY: this test is the only one in the crate that touches the
        // environment.
        unsafe { std::env::set_var("VEIL_SHARE_DIR", dir.path()) };
        assert_eq!(super::dir("models").unwrap(), dir.path().join("models"));
        let first = candidates("nothing-here").remove(0);
        assert_eq!(first, dir.path().join("nothing-here"));
        let error = super::dir("nothing-here").unwrap_err().to_string();
        assert!(error.contains("VEIL_SHARE_DIR"), "{error}");
        assert!(error.contains(&dir.path().join("nothing-here").display().to_string()));
        unsafe { std::env::remove_var("VEIL_SHARE_DIR") };
    }
}
