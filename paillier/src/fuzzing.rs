//! Entry points for the fuzz targets in `fuzz/` and for the regression
//! tests that replay their findings on stable. Each takes arbitrary bytes
//! and must return without panicking. Not part of the crate's API.

use crate::fixtures::key_2048_a;
use crate::keys::{PublicKey, SecretKey};

/// A public key file or message; what decodes re-encodes to a key with the
/// same fingerprint.
pub fn public_key(data: &[u8]) {
    if let Ok(key) = PublicKey::from_bytes(data) {
        let again = PublicKey::from_bytes(&key.to_bytes()).expect("a re-encoded key decodes");
        assert_eq!(again.fingerprint(), key.fingerprint());
    }
}

/// A secret key file.
pub fn secret_key(data: &[u8]) {
    if let Ok(key) = SecretKey::from_bytes(data) {
        let again = SecretKey::from_bytes(&key.to_bytes()).expect("a re-encoded key decodes");
        assert_eq!(
            again.public_key().fingerprint(),
            key.public_key().fingerprint()
        );
    }
}

/// Ciphertexts under a fixed 2048-bit key: the whole input as one, and its
/// 512-byte chunks as a batch. What decodes re-encodes to the same bytes.
pub fn ciphertext(data: &[u8]) {
    let public = key_2048_a().public_key();
    if let Ok(c) = public.ciphertext_from_bytes(data) {
        assert_eq!(c.to_bytes(), data);
    }
    let chunks: Vec<&[u8]> = data.chunks(public.ciphertext_len()).collect();
    if let Ok(cts) = public.ciphertexts_from_bytes(&chunks) {
        for (c, bytes) in cts.iter().zip(&chunks) {
            assert_eq!(c.to_bytes(), *bytes);
        }
    }
}
