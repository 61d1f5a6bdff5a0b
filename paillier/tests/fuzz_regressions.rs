//! The fuzz targets' committed inputs (fuzz/regressions/<target>/: every
//! crash found, plus seeds) replayed through the same entry points on
//! stable.

use std::path::Path;

use veil_paillier::fuzzing;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/regressions")
        .join(target);
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no inputs in {}", dir.display());
    for path in paths {
        eprintln!("{}", path.display());
        run(&std::fs::read(&path).expect("readable input"));
    }
}

#[test]
fn public_keys() {
    replay("paillier_public_key", fuzzing::public_key);
}

#[test]
fn secret_keys() {
    replay("paillier_secret_key", fuzzing::secret_key);
}

#[test]
fn ciphertexts() {
    replay("paillier_ciphertext", fuzzing::ciphertext);
}
