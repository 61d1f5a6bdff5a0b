//! Reads the fuzz targets' committed inputs (fuzz/regressions/<target>/:
//! every crash found, plus seeds) for the stable replay tests of broker,
//! paillier and protocol, which include this file by path (each crate sits
//! one folder below the workspace root).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// Every committed input of `target`, sorted by path; panics when there is
/// none, so that a moved folder cannot make a replay test pass empty.
pub fn regressions(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/regressions")
        .join(target);
    let mut inputs: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("directory entry").path();
            let bytes = std::fs::read(&path).expect("readable input");
            (path, bytes)
        })
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "no inputs in {}", dir.display());
    inputs
}

/// Runs every committed input of `target` through `run`.
pub fn replay(target: &str, run: fn(&[u8])) {
    for (path, bytes) in regressions(target) {
        eprintln!("{}", path.display());
        run(&bytes);
    }
}
