//! The fuzz targets' committed inputs (fuzz/regressions/<target>/: every
//! crash found, plus seeds) replayed through the same entry points on
//! stable.
#![allow(clippy::unwrap_used)] // a test: a panic is its failure report

#[path = "../../fuzz/regressions.rs"]
mod committed;

use committed::replay;
use veil_paillier::fuzzing;

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
